"""Does training on hpl's data make a real agent better? The whole study on WebShop with SmolLM2, in one invocation.

    python benchmarks/learning_check.py --quick --work runs/lc     # 2-core CPU machine, from an empty folder
    python benchmarks/learning_check.py --size gpu --reference sft  # one GPU: the paper's on-policy reference

1. ``hpl-data model smollm2``: SmolLM2-135M-Instruct as an HF folder (the base model).
2. ``hpl-gen --expert oracle --policy heuristic --levels traj,step,group`` on train tasks: oracle expert
   trajectories and preference pairs against the built-in heuristic policy as the reference policy
   (off-policy pairs: cheap, no LLM calls). ``eval_fraction`` of these tasks is held out by both
   trainings below (``hpl_train.evaluate.split_by_task``: the same tasks for both).
3. ``hpl-train --config sft`` with LoRA: behaviour cloning (SFT) on the other tasks' expert
   trajectories; it reports held-out preference accuracy of SFT against the base model.
4. ``--reference sft`` only: ``hpl-gen --policy openai:<SFT served by vLLM>`` on the same tasks: the
   paper's on-policy pairs (the SFT model's Monte-Carlo rollouts; costly on a CPU).
5. ``hpl-train --config hpl`` with LoRA from the SFT model (also the DPO reference): BC + trajectory/
   step/group DPO with the curriculum; held-out preference accuracy of HPL against SFT.
6. The control, ``bc``: the same HPL training with the three DPO weights at 0, so only its BC term is
   left (same data, steps, learning rate and start). HPL minus ``bc`` is what the preference pairs add;
   HPL minus SFT alone would also count the extra BC steps.
7. ``hpl-eval`` of base, SFT, HPL and the control on the same test tasks (greedy): average reward and
   success with 95 % bootstrap intervals over tasks (hpl-eval's ``*_ci95``), share of valid actions; with
   the tokens trained and the wall time of each stage, and each trained model's held-out preference
   accuracy per level with a 95 % bootstrap interval over the held-out pairs. Then the paired
   differences (``hpl-eval compare``'s statistics): HPL - SFT, control - SFT and HPL - control.

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
    gen_tasks: int  # train tasks for hpl-gen: expert trajectories (SFT) and pairs (HPL), eval_fraction held out
    test_tasks: int
    max_turns: int  # evaluation episodes
    gen_max_turns: int  # hpl-gen episodes and MC rollouts
    max_tokens: int  # per model turn, eval and generation: a search copies the instruction (up to ~70 tokens)
    mc_rollouts: int
    eval_fraction: float  # of gen_tasks, held out of both trainings
    sft_steps: int
    hpl_steps: int
    batch_size: int  # SFT
    hpl_batch_size: int  # samples of each loss (BC, traj, step, group) per HPL step
    lora_r: int
    lora_alpha: int
    max_row_tokens: int  # packed row length: a row's fp32 logits (x 49,152 vocab) bound peak memory
    sft_lr: float
    hpl_lr: float
    beta: float
    backend: str  # hf | vllm, for evaluation
    gen_concurrency: int  # hpl-gen's LLM requests in flight (--reference sft)
    eval_levels: str = "traj,step,group"  # held-out pair levels scored by both trainings
    gradient_checkpointing: bool = True  # both trainings: a packed ~7k-token row took 17.8 GB without it
    precision: str = "no"  # hpl-train mixed_precision
    train_threads: int = 0  # torch threads for training stages; 0: torch's default (every core)
    cpu_kv_cache_gb: int = 6  # vLLM on CPU (VLLM_CPU_KVCACHE_SPACE): hpl's 1 GB default thrashes at 32 episodes


SIZES = {
    # 2-core CPU: 43 min from an empty folder on an idle machine (a46a52d). SmolLM2 trains at ~125 tokens/s
    # here (LoRA, forward + backward, 2 threads; ~80 with gradient checkpointing) and scores ~1,000 prompt
    # tokens/s in vLLM; a WebShop sample is 1.7-3.4k tokens of which ~3 % are action tokens. Checkpointing
    # is on: a 2.4k-token row took 10 GB without it (the dense 4-D mask's attention is materialised), so a
    # 3.5k-token row would not fit beside the OS in 24 GB (4.4 GB with it). SFT sees 32 of the 38 training
    # tasks' expert trajectories one at a time (more optimizer steps per CPU minute than batches of 2): 11 min;
    # HPL gets 6 steps of one sample per loss (11 min, most of it the reference log-probs and held-out
    # passes), the BC-only control the same 6 steps (3 min). Evaluation (50 tasks x 4 models, 4-5 min each
    # with a 6 GB vLLM KV cache; the 1 GB default thrashed: 432 s instead of 254 s for 20 tasks) gets 6 turns
    # per episode (an oracle needs 4-5). 40 hpl-gen tasks give ~160 step+group pairs; 2 tasks are held out
    # and scored on their step and group pairs (2 traj pairs say little).
    "quick": Size(gen_tasks=40, test_tasks=50, max_turns=6, gen_max_turns=6, max_tokens=80, mc_rollouts=3,
                  eval_fraction=0.05, sft_steps=32, hpl_steps=6, batch_size=1, hpl_batch_size=1, lora_r=16,
                  lora_alpha=32, max_row_tokens=3584, sft_lr=1e-3, hpl_lr=3e-4, beta=0.3, backend="vllm",
                  gen_concurrency=6, eval_levels="step,group", gradient_checkpointing=True),
    # one GPU (H100/H200): bf16 training, vLLM for evaluation and for hpl-gen's reference policy.
    "gpu": Size(gen_tasks=1000, test_tasks=200, max_turns=15, gen_max_turns=15, max_tokens=128, mc_rollouts=3,
                eval_fraction=0.1, sft_steps=200, hpl_steps=200, batch_size=16, hpl_batch_size=16, lora_r=32,
                lora_alpha=64, max_row_tokens=8192, sft_lr=5e-4, hpl_lr=5e-5, beta=0.3, backend="vllm",
                gen_concurrency=256, precision="bf16"),
    # seconds, for tests of this script: pass --base-model (the tiny random model) and --backend hf
    "smoke": Size(gen_tasks=10, test_tasks=2, max_turns=3, gen_max_turns=4, max_tokens=16, mc_rollouts=1,
                  eval_fraction=0.2, sft_steps=1, hpl_steps=1, batch_size=1, hpl_batch_size=1, lora_r=4,
                  lora_alpha=8, max_row_tokens=4096, sft_lr=1e-3, hpl_lr=1e-3, beta=0.3, backend="hf",
                  gen_concurrency=2),
}


def run(cmd: list[str], log: Path, env: dict[str, str] | None = None) -> float:
    """Run one CLI stage, its output into ``log``; the wall time in seconds."""
    print("$ " + shlex.join(cmd), flush=True)
    start = time.monotonic()
    with open(log, "w") as f:
        p = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
    if p.returncode != 0:
        tail = log.read_text(errors="replace")[-3000:]
        raise SystemExit(f"stage failed (exit {p.returncode}): {shlex.join(cmd)}\n{tail}")
    return time.monotonic() - start


def cli(module: str) -> list[str]:
    return [sys.executable, "-m", module]


def stage(work: Path, name: str, done: Path, cmd: list[str], times: dict[str, float],
          env: dict[str, str] | None = None) -> None:
    """Run ``cmd`` unless its output ``done`` exists (a rerun resumes); record the wall time."""
    stamp = work / f"{name}.time"
    if done.exists() and stamp.exists():
        times[name] = float(stamp.read_text())
        print(f"[{name}] reused {done}", flush=True)
        return
    times[name] = run(cmd, work / f"{name}.log", env)
    stamp.write_text(f"{times[name]:.1f}")


def eval_stats(summary_path: Path) -> dict:
    """Reward and success (with hpl-eval's 95 % intervals) and valid-action share of an evaluation."""
    import pyarrow.parquet as pq

    summary = json.loads(summary_path.read_text())
    rows = pq.read_table(summary_path.parent / summary["trajectories"]).to_pylist()
    valid = [v for r in rows for v in r["action_valid"]]
    return {"tasks": summary["episodes"], "avg_reward": summary["avg_reward"],
            "avg_reward_ci95": summary.get("avg_reward_ci95"), "success": summary["success_rate"],
            "success_ci95": summary.get("success_rate_ci95"), "valid": sum(valid) / len(valid) if valid else 0.0,
            "steps": summary["avg_steps"], "failed": summary["failed_episodes"]}


def tokens_trained(run_dir: Path) -> int:
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    return int(sum(r.get("tokens", 0) for r in rows))


def heldout_accuracy(run_dir: Path) -> dict:
    """Per level: accuracy on the held-out pairs at the end of training (margin > 0 against the run's
    reference), its 95 % bootstrap interval over pairs, the pair count and the mean margin."""
    from hpl_data.stats import mean_ci
    from hpl_train.evaluate import TIE

    path = run_dir / "eval_margins.json"
    if not path.exists():
        return {}
    margins = json.loads(path.read_text())["margins"]
    out = {}
    for level, values in margins.items():
        wins = [float(m > TIE) for m in values]
        out[level] = {"accuracy": sum(wins) / len(wins) if wins else None, "ci95": mean_ci(wins),
                      "pairs": len(wins), "margin": sum(values) / len(values) if values else None}
    return out


def mc_failed_tasks(gen: Path) -> int:
    """Tasks whose Monte-Carlo labelling failed in hpl-gen's last run (their step/group pairs are missing)."""
    manifest = gen / "manifest.json"
    if not manifest.exists():
        return 0
    return int(json.loads(manifest.read_text()).get("counters", {}).get("mc_failed_tasks", 0))


def pair_counts(gen: Path) -> dict:
    """Pairs of each level that hpl-gen wrote."""
    import pyarrow.parquet as pq

    return {level: pq.read_metadata(gen / f"{level}_pairs.parquet").num_rows
            for level in ("traj", "step", "group") if (gen / f"{level}_pairs.parquet").exists()}


def interval(ci: list[float] | None, sign: str = "") -> str:
    return f" [{ci[0]:{sign}.3f}, {ci[1]:{sign}.3f}]" if ci else ""


MODELS = ("base", "sft", "hpl", "bc")
# (b, a): b - a on the tasks both evaluations ran
COMPARISONS = (("hpl", "sft"), ("bc", "sft"), ("hpl", "bc"))


def paired_differences(summaries: dict[str, Path]) -> dict[str, dict]:
    """``hpl-eval compare``'s paired statistics for each of :data:`COMPARISONS`, keyed ``"b - a"``."""
    from hpl_data.compare import load, paired_comparisons

    out = {}
    for b, a in COMPARISONS:
        (comparison,), _ = paired_comparisons(load([summaries[a], summaries[b]]))
        out[f"{b} - {a}"] = {"reward": comparison.reward.as_dict(), "success": comparison.success.as_dict()}
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="the CPU size (same as --size quick)")
    p.add_argument("--size", choices=sorted(SIZES), default="quick")
    p.add_argument("--work", type=Path, default=Path("runs/learning_check"))
    p.add_argument("--backend", choices=["hf", "vllm"], default=None, help="evaluation back-end (default: per size)")
    p.add_argument("--reference", choices=["heuristic", "sft"], default="heuristic",
                   help="HPL pairs' reference policy: the built-in heuristic (off-policy, cheap) or the SFT model "
                        "served by vLLM (the paper's on-policy pairs)")
    p.add_argument("--base-model", type=Path, default=None,
                   help="an HF model folder instead of converting SmolLM2 (e.g. `hpl-data model tiny`, for smoke runs)")
    p.add_argument("--json", type=Path, default=None, help="also write the table here")
    args = p.parse_args(argv)
    size_name = "quick" if args.quick else args.size
    size = SIZES[size_name]
    backend = args.backend or size.backend
    work = args.work / size_name
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    times: dict[str, float] = {}
    wall_start, load_start = time.monotonic(), os.getloadavg()
    base = args.base_model or work / "base"
    data, sft, sft_data, hpl, control = (work / n for n in ("data", "sft", "sft_data", "hpl", "bc"))
    turns = ["--max-turns", str(size.max_turns)]

    def evaluate(name: str, model: Path) -> dict:
        out = work / f"eval_{name}" / "summary.json"
        stage(work, f"eval_{name}", out,
              [*cli("hpl_data.cli_eval"), "--env", "webshop", "--agent", f"{backend}:{model}", "--split", "test",
               "--limit", str(size.test_tasks), *turns, "--max-tokens", str(size.max_tokens), "--temperature", "0",
               "--quiet", "--out", str(out)], times,
              env={"VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", str(size.cpu_kv_cache_gb))})
        stats = eval_stats(out)
        print(f"[eval {name}] {json.dumps(stats)}", flush=True)
        return stats

    def train(name: str, config: str, model: Path, pairs: Path, out: Path, *extra: str) -> None:
        stage(work, name, out / "final" / "config.json",
              [*cli("hpl_train"), "--config", config, "--model", str(model), "--data", str(pairs),
               "--output-dir", str(out), "report_to=none", f"lora_r={size.lora_r}", f"lora_alpha={size.lora_alpha}",
               f"max_row_tokens={size.max_row_tokens}", f"mixed_precision={size.precision}",
               f"eval_fraction={size.eval_fraction}", f"eval_levels={json.dumps(size.eval_levels.split(','))}",
               f"gradient_checkpointing={str(size.gradient_checkpointing).lower()}", "log_every=1", *extra], times,
              env={"OMP_NUM_THREADS": str(size.train_threads or os.cpu_count() or 1)})

    if args.base_model:
        times["model"] = 0.0
    else:
        stage(work, "model", base / "hpl_model.json",
              [*cli("hpl_data.cli_data"), "model", "smollm2", "--out", str(base)], times)
    gen = [*cli("hpl_data.cli_gen"), "--env", "webshop", "--expert", "oracle", "--levels", "traj,step,group",
           "--mc-rollouts", str(size.mc_rollouts), "--max-turns", str(size.gen_max_turns), "--split", "train",
           "--limit", str(size.gen_tasks), "--no-progress"]
    stage(work, "data", data / "manifest.json", [*gen, "--policy", "heuristic", "--out", str(data)], times)
    train("sft", "sft", base, data, sft, f"batch_size={size.batch_size}", f"lr={size.sft_lr}",
          f"max_steps={size.sft_steps}")
    hpl_pairs = data
    if args.reference == "sft":
        hpl_pairs = sft_data
        sft_gen = [*gen, "--policy-max-tokens", str(size.max_tokens), "--concurrency", str(size.gen_concurrency),
                   "--policy-arg", "call_timeout_s=1800", "--out", str(sft_data)]
        if mc_failed_tasks(sft_data):  # redo the data and what was trained on it
            for later in ("sft_gen", "hpl", "eval_hpl"):
                (work / f"{later}.time").unlink(missing_ok=True)
        if not (work / "sft_gen.time").exists() and (sft_data / "manifest.json").exists():
            sft_gen.append("--overwrite")  # a fresh server's URL: hpl-gen would refuse to resume on this --out
        if backend == "vllm" and not (work / "sft_gen.time").exists():
            from hpl_data.policies.vllm_server import VLLMServer

            with VLLMServer(sft / "final", log_path=work / "sft_gen_vllm.log") as srv:
                stage(work, "sft_gen", sft_data / "manifest.json", [*sft_gen, "--policy", f"openai:{srv.url}"], times)
        else:
            stage(work, "sft_gen", sft_data / "manifest.json", [*sft_gen, "--policy", f"hf:{sft / 'final'}"], times)
        if mc_failed_tasks(sft_data):
            raise SystemExit(f"hpl-gen: Monte-Carlo labelling failed for {mc_failed_tasks(sft_data)} task(s) (see "
                             f"{work / 'sft_gen.log'}); rerun to retry them")
    hpl_args = [f"batch_size={size.hpl_batch_size}", f"lr={size.hpl_lr}", f"max_steps={size.hpl_steps}",
                f"beta={size.beta}"]
    train("hpl", "hpl", sft / "final", hpl_pairs, hpl, *hpl_args)
    train("bc", "hpl", sft / "final", hpl_pairs, control, *hpl_args, "traj_weight=0", "step_weight=0",
          "group_weight=0")
    results = {"base": evaluate("base", base), "sft": evaluate("sft", sft / "final"),
               "hpl": evaluate("hpl", hpl / "final"), "bc": evaluate("bc", control / "final")}

    trained = {"base": 0, "sft": tokens_trained(sft), "hpl": tokens_trained(hpl), "bc": tokens_trained(control)}
    heldout = {"sft": heldout_accuracy(sft), "hpl": heldout_accuracy(hpl), "bc": heldout_accuracy(control)}
    build = {"base": times["model"], "sft": times["data"] + times["sft"],
             "hpl": times.get("sft_gen", 0.0) + times["hpl"], "bc": times.get("sft_gen", 0.0) + times["bc"]}
    differences = paired_differences({name: work / f"eval_{name}" / "summary.json" for name in results})
    machine = {"cpus": os.cpu_count(), "load_start": load_start, "load_end": os.getloadavg(),
               "wall_s": round(time.monotonic() - wall_start, 1), "stages_s": round(sum(times.values()), 1)}
    reference = ("the built-in heuristic policy (off-policy pairs)" if args.reference == "heuristic"
                 else "the SFT model served by vLLM (on-policy pairs)")
    print(f"\nWebShop test (first {size.test_tasks} tasks), {base.name if args.base_model else 'SmolLM2-135M-Instruct'}, "
          f"size {size_name}, eval {backend}: greedy, max {size.max_turns} turns x {size.max_tokens} tokens; "
          f"{machine['cpus']} CPUs, load average {load_start[0]:.1f} at start, {machine['load_end'][0]:.1f} at end; "
          f"wall {machine['wall_s']:.0f} s (stages {machine['stages_s']:.0f} s). 95 % intervals: percentile "
          f"bootstrap over tasks (rewards) or held-out pairs (accuracy). HPL pairs' reference policy: {reference}.\n")
    print("| model | tasks | avg reward [95 % CI] | success [95 % CI] | valid actions | avg steps | tokens trained | "
          "build s | eval s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name in MODELS:
        r = results[name]
        print(f"| {name} | {r['tasks']} | {r['avg_reward']:.3f}{interval(r['avg_reward_ci95'])} | "
              f"{r['success']:.3f}{interval(r['success_ci95'])} | {r['valid']:.3f} | {r['steps']:.1f} | "
              f"{trained[name]:,} | {build[name]:.0f} | {times[f'eval_{name}']:.0f} |")
    print(f"\nHeld-out preference accuracy (pairs of the {size.eval_fraction:.0%} of hpl-gen tasks neither model trained "
          f"on; margin > 0 of the policy's log-ratio against its reference: SFT against the base model, HPL "
          f"and the BC-only control against SFT):\n")
    print("| model | traj [95 % CI] (pairs) | step [95 % CI] (pairs) | group [95 % CI] (pairs) |")
    print("|---|---|---|---|")
    for name in ("sft", "hpl", "bc"):
        cells = []
        for level in ("traj", "step", "group"):
            h = heldout[name].get(level)
            cells.append(f"{h['accuracy']:.3f}{interval(h['ci95'])} ({h['pairs']})" if h and h["pairs"] else "-")
        print(f"| {name} | " + " | ".join(cells) + " |")
    print("\nPaired differences on the same test tasks (b - a; 95 % paired bootstrap interval, two-sided paired "
          "sign-flip p-value, as hpl-eval compare):\n")
    print("| b - a | tasks | avg reward [95 % CI] | p | success [95 % CI] | p |")
    print("|---|---|---|---|---|---|")
    for key, d in differences.items():
        r, s = d["reward"], d["success"]
        print(f"| {key} | {r['tasks']} | {r['difference']:+.3f}{interval(r['ci95'], '+')} | {r['p_value']:.3g} | "
              f"{s['difference']:+.3f}{interval(s['ci95'], '+')} | {s['p_value']:.3g} |")
    counts = {"data": pair_counts(data), **({"sft_data": pair_counts(sft_data)} if args.reference == "sft" else {})}
    table = {"size": size.__dict__, "backend": backend, "reference": args.reference, "results": results,
             "heldout_accuracy": heldout, "paired_differences": differences, "tokens_trained": trained, "times_s": times, "machine": machine,
             "pairs": counts}
    print(f"\npairs written by hpl-gen (before the held-out split): {json.dumps(counts)}")
    (work / "table.json").write_text(json.dumps(table, indent=1))
    if args.json:
        args.json.write_text(json.dumps(table, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
