"""GPU check: the learning check's HPL leg at a larger size on one lent GPU (bf16): tokens/s, peak memory.

The lent machine has torch, transformers, accelerate and peft, but no vLLM, no network, and each call
carries at most 64 MiB of working tree, while SmolLM2's GGUF is 94 MB. So the bundle is prepared here
and sent in two calls to one warm machine (``runs/`` is git-ignored: its parts travel by ``carry``):

    # 1. here (CPU, ~2 min): the GGUF in two halves, the hpl-gen pairs (heuristic reference, 200 tasks)
    #    and the pure-Python ``gguf`` package that transformers needs to read the GGUF
    python benchmarks/gpu_check.py prepare --bundle runs/gpu_bundle
    # 2. device call 1, carry ["runs/gpu_bundle/part0"]: keep half 1 on the machine (seconds)
    python benchmarks/gpu_check.py stash --bundle runs/gpu_bundle
    # 3. device call 2 (same warm machine), carry ["runs/gpu_bundle/part1", "runs/gpu_bundle/data",
    #    "runs/gpu_bundle/site"]: reassemble, convert, train the HPL leg, print the table (<= 9 min)
    python benchmarks/gpu_check.py run --bundle runs/gpu_bundle --out $OUT/gpu_check

    # CPU smoke of step 3's code path on the tiny random model (no bundle): seconds
    python benchmarks/gpu_check.py run --tiny --data runs/some_hpl_gen_output --steps 2 --max-row-tokens 1024 --out /tmp/gc

The HPL leg starts from the base model (no SFT model exists on the machine; the base model is also
the DPO reference), trains all weights (a GPU has the memory; LoRA was for the CPU) with BC +
trajectory/step/group DPO and the curriculum, and evaluates on held-out tasks at the start and end.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
STASH = Path("/tmp/hpl_gpu_check")  # on the device: survives between calls to one warm machine


def prepare(bundle: Path, tasks: int) -> None:
    """GGUF halves, hpl-gen data and the gguf package, each under its own folder of ``bundle``."""
    import gguf

    from hpl_data.models import MODELS, packaged_file

    source = packaged_file(MODELS["smollm2"])
    blob = source.read_bytes()
    half = len(blob) // 2
    for i, part in enumerate((blob[:half], blob[half:])):
        (bundle / f"part{i}").mkdir(parents=True, exist_ok=True)
        (bundle / f"part{i}" / f"{GGUF_NAME}.{i}").write_bytes(part)
    site = bundle / "site"
    shutil.rmtree(site, ignore_errors=True)
    shutil.copytree(Path(gguf.__file__).parent, site / "gguf", ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "hpl_data.cli_gen", "--env", "webshop", "--expert", "oracle", "--policy",
                    "heuristic", "--levels", "traj,step,group", "--mc-rollouts", "3", "--max-turns", "10", "--split",
                    "train", "--limit", str(tasks), "--no-progress", "--overwrite", "--out", str(bundle / "data")],
                   check=True)
    for p in bundle.rglob("ref_logps*"):
        p.unlink()
    sizes = {d.name: sum(f.stat().st_size for f in d.rglob("*") if f.is_file()) / 2**20 for d in bundle.iterdir()}
    print("bundle (MiB): " + ", ".join(f"{k} {v:.1f}" for k, v in sorted(sizes.items())))


def stash(bundle: Path) -> None:
    STASH.mkdir(parents=True, exist_ok=True)
    part = bundle / "part0" / f"{GGUF_NAME}.0"
    shutil.copy(part, STASH / part.name)
    print(f"stashed {part.name} ({part.stat().st_size / 2**20:.1f} MiB) in {STASH}")


def base_model(bundle: Path) -> Path:
    """SmolLM2 as an HF folder from the two GGUF halves (the second here, the first stashed)."""
    sys.path.insert(0, str((bundle / "site").resolve()))  # gguf, for transformers' GGUF reader
    folder = STASH / "smollm2"
    if (folder / "config.json").exists():
        return folder
    first = STASH / f"{GGUF_NAME}.0"
    if not first.exists():
        raise SystemExit(f"{first} missing: run `gpu_check.py stash` first on this warm machine")
    gguf_dir = STASH / "gguf"
    gguf_dir.mkdir(parents=True, exist_ok=True)
    with open(gguf_dir / GGUF_NAME, "wb") as out:
        out.write(first.read_bytes())
        out.write((bundle / "part1" / f"{GGUF_NAME}.1").read_bytes())
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=GGUF_NAME)
    loaded = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=GGUF_NAME, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    model.save_pretrained(folder, safe_serialization=True)
    tok.save_pretrained(folder)
    return folder


def run(args: argparse.Namespace) -> dict:
    import torch

    from hpl_train.config import load_config
    from hpl_train.recipe import train

    out = Path(args.out)
    if args.tiny:
        from hpl_data.tiny_model import write_tiny_model

        model, data = write_tiny_model(out / "tiny"), Path(args.data)
    else:
        model, data = base_model(Path(args.bundle)), Path(args.bundle) / "data"
    gpu = torch.cuda.is_available()
    device = torch.cuda.get_device_name(0) if gpu else f"CPU ({os.cpu_count()} cores)"
    overrides = ["report_to=none", f"max_steps={args.steps}", f"batch_size={args.batch_size}", f"lr={args.lr}",
                 f"beta={args.beta}", "eval_fraction=0.1", f"max_row_tokens={args.max_row_tokens}",
                 f"mixed_precision={'bf16' if gpu else 'no'}", "warmup_ratio=0.1", "save_model=false",
                 f"log_every={max(1, args.steps // 10)}"]
    start = time.monotonic()
    history = train(load_config("hpl", overrides, model=str(model), data=[str(data)],
                                output_dir=str(out / "hpl")))
    wall = time.monotonic() - start
    rows = [json.loads(x) for x in (out / "hpl" / "metrics.jsonl").read_text().splitlines() if x.strip()]
    evals = [r for r in rows if "eval/bc_loss" in r]
    tokens = sum(r["tokens"] for r in history)
    step_s = sum(r["step_s"] for r in history)
    result = {"device": device, "model": model.name, "steps": len(history), "batch_size": args.batch_size,
              "tokens": int(tokens), "tokens_per_s": tokens / step_s if step_s else 0.0,
              "peak_mem_mb": max(r["peak_mem_mb"] for r in history), "wall_s": round(wall, 1),
              "heldout_start": evals[0] if evals else {}, "heldout_end": evals[-1] if evals else {}}
    print(f"\n{device}: HPL leg (BC + traj/step/group DPO, curriculum, {'bf16' if gpu else 'fp32'}, all weights) "
          f"from {model.name}, {len(history)} steps x {args.batch_size} samples per loss")
    print("| device | steps | tokens trained | tokens/s (training steps) | peak memory MiB | wall s |")
    print("|---|---|---|---|---|---|")
    print(f"| {device} | {len(history)} | {tokens:,.0f} | {result['tokens_per_s']:,.0f} | "
          f"{result['peak_mem_mb']:,.0f} | {wall:.0f} |")
    for name, e in (("start", result["heldout_start"]), ("end", result["heldout_end"])):
        accs = ", ".join(f"{k} {e[f'eval/{k}/accuracy']:.3f} (n={e[f'eval/{k}/pairs']})"
                         for k in ("traj", "step", "group") if f"eval/{k}/accuracy" in e)
        if e:
            print(f"held-out at the {name}: accuracy {accs}; BC loss {e['eval/bc_loss']:.4f}")
    (out / "gpu_check.json").write_text(json.dumps(result, indent=1))
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    pre = sub.add_parser("prepare", help="here: GGUF halves, hpl-gen data and the gguf package")
    pre.add_argument("--bundle", type=Path, default=Path("runs/gpu_bundle"))
    pre.add_argument("--tasks", type=int, default=200)
    st = sub.add_parser("stash", help="device call 1: keep the first GGUF half on the warm machine")
    st.add_argument("--bundle", type=Path, default=Path("runs/gpu_bundle"))
    r = sub.add_parser("run", help="device call 2 (or --tiny on a CPU): convert and train the HPL leg")
    r.add_argument("--bundle", type=Path, default=Path("runs/gpu_bundle"))
    r.add_argument("--tiny", action="store_true", help="the tiny random model, for a CPU smoke run")
    r.add_argument("--data", default=None, help="with --tiny: an hpl-gen output folder")
    r.add_argument("--out", default="runs/gpu_check")
    r.add_argument("--steps", type=int, default=60)
    r.add_argument("--batch-size", type=int, default=16)
    r.add_argument("--lr", type=float, default=5e-6)
    r.add_argument("--beta", type=float, default=0.3)
    r.add_argument("--max-row-tokens", type=int, default=8192)
    args = p.parse_args(argv)
    if args.cmd == "prepare":
        prepare(args.bundle, args.tasks)
    elif args.cmd == "stash":
        stash(args.bundle)
    else:
        if args.tiny and not args.data:
            p.error("--tiny needs --data (an hpl-gen output folder)")
        run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
