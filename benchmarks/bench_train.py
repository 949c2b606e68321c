"""hpl-train vs TRL's DPOTrainer: training tokens/s and peak RSS, same machine, model and pairs.

Both train DPO (β = 0.3) for one epoch over the same preference pairs (hpl-gen's traj, step and
group pairs of WebShop), with precomputed reference log-probs, the same batch size and learning
rate; each variant runs in its own process (clean peak RSS). Speed counts the same logical tokens
for everyone (prompt+chosen and prompt+rejected of every pair) over the time of the optimizer steps
(reference precomputation excluded for both). hpl variants isolate each speed-up:

* ``hpl-padded``: padded micro-batches of whole sequences (what TRL does), hpl's masking;
* ``hpl-packed``: padding-free packed rows;
* ``hpl-shared``: packed rows + chosen/rejected sharing one forward over their common prefix (default).

    python benchmarks/bench_train.py [--quick] [--data DIR] [--model DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

VARIANTS = {"hpl-padded": ["packing=false", "share_prefix=false"], "hpl-packed": ["packing=true", "share_prefix=false"],
            "hpl-shared": ["packing=true", "share_prefix=true"]}


def logical_tokens(model: str, pairs_file: Path) -> int:
    import pyarrow.parquet as pq
    from transformers import AutoTokenizer

    from hpl_train.tokenize import tokenize_pair

    tok = AutoTokenizer.from_pretrained(model)
    total = 0
    for r in pq.read_table(pairs_file).to_pylist():
        c, rj = tokenize_pair(tok, r["prompt"], r["chosen"], r["rejected"])
        total += len(c.ids) + len(rj.ids)
    return total


def run_trl(model: str, pairs_file: Path, batch: int, lr: float, out: Path) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    from datasets import load_dataset

    ds = load_dataset("parquet", data_files=str(pairs_file), split="train").select_columns(["prompt", "chosen", "rejected"])
    steps = len(ds) // batch
    times: list[float] = []

    class Timer(TrainerCallback):
        def on_step_begin(self, *a, **k):
            self.t0 = time.perf_counter()

        def on_step_end(self, *a, **k):
            times.append(time.perf_counter() - self.t0)

    args = DPOConfig(output_dir=str(out), per_device_train_batch_size=batch, max_steps=steps, learning_rate=lr, beta=0.3,
                     precompute_ref_log_probs=True, max_length=None, report_to="none", use_cpu=True,
                     logging_steps=1, save_strategy="no", lr_scheduler_type="cosine", warmup_steps=0.1,
                     dataloader_num_workers=0, seed=0)
    trainer = DPOTrainer(model=AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32), args=args,
                         train_dataset=ds, processing_class=AutoTokenizer.from_pretrained(model), callbacks=[Timer()])
    trainer.train()
    return {"steps": len(times), "train_s": sum(times), "pairs": steps * batch}


def run_hpl(model: str, pairs_file: Path, batch: int, lr: float, out: Path, extra: list[str]) -> dict:
    from hpl_train.config import load_config
    from hpl_train.recipe import train

    cfg = load_config("eto", ["bc_weight=0", f"batch_size={batch}", f"lr={lr}", "report_to=none", "save_model=false",
                              "curriculum=static", f"ref_cache_dir={out}", *extra],
                      model=model, data=[str(pairs_file)], output_dir=str(out))
    hist = train(cfg)
    return {"steps": len(hist), "train_s": sum(m["step_s"] for m in hist), "pairs": len(hist) * batch}


def worker(args) -> int:
    out = Path(tempfile.mkdtemp(prefix=f"bench-{args.worker}-"))
    if args.worker == "trl":
        res = run_trl(args.model, args.pairs, args.batch, args.lr, out)
    else:
        res = run_hpl(args.model, args.pairs, args.batch, args.lr, out, VARIANTS[args.worker])
    res["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps(res), flush=True)
    return 0


def prepare(args) -> tuple[str, Path]:
    """The model (tiny Qwen2 unless given) and one Parquet file with every pair as a trajectory-level pair."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    work = Path(tempfile.mkdtemp(prefix="hpl-bench-train-"))
    model = args.model
    if model is None:
        from hpl_data.tiny_model import build_tiny_model

        model = str(build_tiny_model(work / "tiny"))
    data = Path(args.data) if args.data else None
    if data is None:
        data = work / "gen"
        subprocess.run([sys.executable, "-m", "hpl_data.cli_gen", "--env", "webshop", "--expert", "oracle", "--policy",
                        "heuristic", "--split", "train", "--limit", str(args.tasks), "--out", str(data)], check=True,
                       capture_output=True)
    rows = []
    for name in ("traj_pairs", "step_pairs", "group_pairs"):
        f = data / f"{name}.parquet"
        if f.exists():
            rows += pq.read_table(f).select(["prompt", "chosen", "rejected"]).to_pylist()
    n = (min(len(rows), args.pairs) // args.batch) * args.batch
    if n == 0:
        raise SystemExit("no pairs to train on")
    pairs = work / "pairs.parquet"
    pq.write_table(pa.Table.from_pylist(rows[:n]), pairs)
    return model, pairs


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="a small run (under a minute here)")
    p.add_argument("--data", default=None, help="an hpl-gen output dir (default: generate WebShop pairs)")
    p.add_argument("--model", default=None, help="default: a tiny local Qwen2")
    p.add_argument("--tasks", type=int, default=20)
    p.add_argument("--pairs", type=int, default=64)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--pairs-file", dest="pairs", type=Path, default=None, help=argparse.SUPPRESS)
    args, _ = p.parse_known_args()
    if args.worker:
        return worker(args)
    if args.quick:
        args.tasks, args.pairs, args.batch = 3, 4, 2
    model, pairs = prepare(args)
    tokens = logical_tokens(model, pairs)
    print(f"model {model}; {pairs} ({tokens:,} logical tokens); batch {args.batch}; lr {args.lr}")
    results = {}
    names = ("trl", "hpl-shared") if args.quick else ("trl", *VARIANTS)  # --quick: the headline only
    for name in names:
        cmd = [sys.executable, __file__, "--worker", name, "--pairs-file", str(pairs), "--model", model,
               "--batch", str(args.batch), "--lr", str(args.lr)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
        if proc.returncode or line is None:
            print(f"{name}: failed\n{proc.stderr[-3000:]}")
            return 1
        res = json.loads(line[7:])
        res["tokens_per_s"] = tokens * res["pairs"] / max(1, _pairs(pairs)) / res["train_s"]
        results[name] = res
        print(f"{name:<11} {res['steps']:>3} steps  {res['train_s']:7.2f} s  {res['tokens_per_s']:9,.0f} tok/s  "
              f"peak RSS {res['peak_rss_mb']:7,.0f} MB")
    trl = results["trl"]
    for name in names[1:]:
        r = results[name]
        print(f"{name:<11} vs TRL: {r['tokens_per_s'] / trl['tokens_per_s']:.2f}x tokens/s, "
              f"RSS {r['peak_rss_mb'] / trl['peak_rss_mb']:.2f}x")
    if not args.quick:
        print(f"packing alone: {results['hpl-packed']['tokens_per_s'] / results['hpl-padded']['tokens_per_s']:.2f}x; "
              f"prefix sharing on top: {results['hpl-shared']['tokens_per_s'] / results['hpl-packed']['tokens_per_s']:.2f}x")
    print(f"speedup vs TRL: {results['hpl-shared']['tokens_per_s'] / trl['tokens_per_s']:.2f}")
    return 0


def _pairs(path: Path) -> int:
    import pyarrow.parquet as pq

    return pq.read_metadata(path).num_rows


if __name__ == "__main__":
    sys.exit(main())
