"""Env workers as local processes vs Ray actors (1 and 2 nodes), in one run on this machine.

  python benchmarks/bench_ray.py [--tasks 300] [--repeats 3] [--workers 2] [--pings 500] [--llm]

For each back-end the same engine (:class:`hpl_data.engine.RolloutEngine`) runs the built-in
heuristic agent on WebShop test tasks; printed: env steps/s (engine wall time of the median of
``--repeats`` passes, worker start not included), the start time of the workers, and the round trip of one empty worker call (``ping``),
which is the overhead the back-end adds per batch of env calls. ``--llm`` adds LLM calls/s with a
tiny model served by vLLM's OpenAI server (as ``bench_gen.py --llm-throughput``), chat episodes
whose env steps go to the workers.

The Ray clusters are real (``ray.cluster_utils.Cluster``: a GCS and one raylet per node, all on
127.0.0.1): "1 node" is one raylet with ``--workers`` CPUs, "2 nodes" a CPU-less head plus two
raylets that the actors are spread over. On one machine, 2 nodes share the same cores, so this
shows Ray's overhead and that the code path scales out, not a speed-up; see README "Running on a
cluster" for what the numbers say about a real cluster.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # keep Ray on 127.0.0.1
NODE = {"node_ip_address": "127.0.0.1", "object_store_memory": 100 * 2**20, "include_dashboard": False}


async def measure(policy_factory, tasks: list[str], workers: int, pings: int, ray: str | None, concurrency: int,
                  repeats: int, max_tokens: int = 32) -> dict:
    """Median of ``repeats`` passes over the tasks on one started engine."""
    from hpl_data.engine import EngineConfig, RolloutEngine
    from hpl_data.policies import SamplingParams

    cfg = EngineConfig(workers=workers, concurrency=concurrency, ray=ray,
                       sampling=SamplingParams(temperature=1.0, max_tokens=max_tokens))
    policy = policy_factory()
    eng = RolloutEngine("webshop", policy, config=cfg)
    t0 = time.perf_counter()
    await eng.start()
    started = time.perf_counter() - t0
    try:
        w = eng.pool.workers[0]
        await eng.pool.call(w, "ping", 0)
        t0 = time.perf_counter()
        for _ in range(pings):
            await eng.pool.call(w, "ping", 0)
        ping_us = (time.perf_counter() - t0) / pings * 1e6
        passes = []
        for _ in range(repeats):
            before = eng.counters.as_dict()
            eps = await eng.run(tasks)
            k = eng.counters.as_dict()
            passes.append({key: k[key] - before[key] for key in ("env_steps", "llm_calls", "wall_s")})
        k = sorted(passes, key=lambda d: d["wall_s"])[len(passes) // 2]
    finally:
        await eng.close()
        if not isinstance(policy, str):
            await policy.close()
    assert not any(e["error"] for e in eps), [e["error"] for e in eps if e["error"]][:1]
    return {"start_s": started, "ping_us": ping_us, "steps_per_s": k["env_steps"] / k["wall_s"],
            "llm_calls_per_s": k["llm_calls"] / k["wall_s"], "wall_s": k["wall_s"], "env_steps": k["env_steps"],
            "llm_calls": k["llm_calls"], "rewards": [e["reward"] for e in eps],
            "nodes": len(set(getattr(eng.pool, "nodes", lambda: [])()))}


def start_cluster(head_cpus: int, node_cpus: list[int], attempts: int = 3):
    """A local multi-raylet cluster; started again when a raylet misses Ray's fixed 30 s start
    deadline (it does on a heavily loaded machine)."""
    from ray.cluster_utils import Cluster

    for attempt in range(attempts):
        c = Cluster()
        try:
            c.add_node(**NODE, num_cpus=head_cpus)
            for cpus in node_cpus:
                c.add_node(**NODE, num_cpus=cpus)
            return c
        except Exception:  # noqa: BLE001 - "The current node timed out during startup"
            c.shutdown()
            if attempt == attempts - 1:
                raise


def clusters(workers: int):
    """(name, address or None): local processes, then a 1-node and a 2-node Ray cluster."""
    import ray

    yield "local processes", None
    for n_nodes in (1, 2):
        c = start_cluster(workers, []) if n_nodes == 1 else start_cluster(0, [-(-workers // 2)] * 2)
        try:
            yield f"Ray, {n_nodes} node{'s' * (n_nodes > 1)}", c.address
        finally:
            ray.shutdown()
            c.shutdown()


def run_all(policy_factory, tasks: list[str], args, label: str, concurrency: int) -> None:
    results = {}
    for name, address in clusters(args.workers):
        r = asyncio.run(measure(policy_factory, tasks, args.workers, args.pings, address, concurrency, args.repeats))
        results[name] = r
        rate = f"{r['llm_calls_per_s']:.1f} LLM calls/s ({r['llm_calls']} calls), " if r["llm_calls"] else ""
        print(f"{label:9s} {name:16s} {rate}{r['steps_per_s']:7.1f} env steps/s ({r['env_steps']} steps in "
              f"{r['wall_s']:.1f}s) | worker start {r['start_s']:.1f}s | one worker call {r['ping_us']:.0f} us"
              + (f" | actors on {r['nodes']} node(s)" if address else ""), flush=True)
    base = results["local processes"]
    for name, r in results.items():
        if name != "local processes":
            key = "llm_calls_per_s" if base["llm_calls"] else "steps_per_s"
            if not base["llm_calls"]:  # built-in agents: exactly the local run's episodes
                assert r["rewards"] == base["rewards"], f"{name}: other rewards than the local run"
            same = sum(a == b for a, b in zip(r["rewards"], base["rewards"]))
            print(f"{label:9s} {name}/local {key.replace('_per_s', '/s')} ratio {r[key] / base[key]:.2f}, "
                  f"added per worker call {r['ping_us'] - base['ping_us']:.0f} us, "
                  f"same reward as local in {same}/{len(base['rewards'])} episodes")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", type=int, default=300, help="WebShop test tasks per pass (heuristic agent)")
    p.add_argument("--repeats", type=int, default=3, help="passes per back-end; the median pass is reported")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--pings", type=int, default=500)
    p.add_argument("--llm", action="store_true", help="also LLM calls/s with a tiny vLLM-served model")
    p.add_argument("--llm-tasks", type=int, default=16)
    p.add_argument("--concurrency", type=int, default=32)
    args = p.parse_args(argv)

    from hpl_envs import make_env

    tasks = make_env("webshop").task_ids("test")[: args.tasks]
    run_all(lambda: "heuristic", tasks, args, "heuristic", concurrency=2 * args.workers)
    if args.llm:
        from hpl_data.policies import make_chat_policy
        from hpl_data.policies.vllm_server import VLLMServer
        from hpl_data.tiny_model import build_tiny_model

        tmp = Path(tempfile.mkdtemp(prefix="hpl-bench-ray-"))
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
        os.environ.setdefault("VLLM_CACHE_ROOT", str(tmp / "vllm-cache"))
        try:
            model = build_tiny_model(tmp / "tiny")
            with VLLMServer(model, log_path=tmp / "vllm.log") as srv:
                run_all(lambda: make_chat_policy(f"openai:{srv.url}", concurrency=args.concurrency),
                        tasks[: args.llm_tasks], args, "tiny LLM", concurrency=args.concurrency)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
