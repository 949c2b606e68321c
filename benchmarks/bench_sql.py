"""InterCode-SQL backend speed, in one run.

  python benchmarks/bench_sql.py [--quick]

Prints: local server cold start (datadir init + start + dump load + ANALYZE) in a fresh cache dir,
warm start (datadir and data reused), oracle episodes/s over the dev set (one process), and agent
statement latency p50/p99 over the oracle's statements.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="first 200 dev tasks only")
    args = ap.parse_args(argv)
    from hpl_envs.data import require
    from hpl_envs.intercode_sql.servers import LocalServer

    dump = require("intercode_sql/ic_spider_dbs.sql", "intercode-sql")
    with tempfile.TemporaryDirectory(prefix="hpl-bench-sql-") as tmp:
        server = LocalServer(dump, base_dir=os.path.join(tmp, "srv"))
        t0 = time.perf_counter()
        server.acquire()
        cold = time.perf_counter() - t0
        server.release()
        server2 = LocalServer(dump, base_dir=os.path.join(tmp, "srv"))
        t0 = time.perf_counter()
        server2.acquire()
        warm = time.perf_counter() - t0
        server2.release()
    print(f"local server: cold start {cold:.2f}s (init datadir, start, load {dump.stat().st_size / 1e3:.0f} kB dump, "
          f"analyze) | warm start {warm:.2f}s (datadir reused)")

    from hpl_envs import make_env
    from hpl_envs.agents import make_agent

    env = make_env("intercode-sql")
    tasks = env.task_ids("dev")[: 200 if args.quick else None]
    agent = make_agent("intercode-sql", "oracle")
    env.reset(options={"task_id": tasks[0]})
    latencies, steps, wins = [], 0, 0
    t0 = time.perf_counter()
    for tid in tasks:
        obs, info = env.reset(options={"task_id": tid})
        agent.reset(env, obs, info)
        done = False
        while not done:
            action = agent.act(obs, info)
            s = time.perf_counter()
            obs, r, term, trunc, info = env.step(action)
            if action != "submit":
                latencies.append(time.perf_counter() - s)
            steps += 1
            done = term or trunc
        wins += r == 1.0
    wall = time.perf_counter() - t0
    latencies.sort()
    print(f"oracle over {len(tasks)} dev tasks: {len(tasks) / wall:.0f} episodes/s, {steps / wall:.0f} steps/s, "
          f"{wins} solved")
    print(f"agent statement latency: p50 {1e3 * statistics.median(latencies):.2f} ms, "
          f"p99 {1e3 * latencies[int(0.99 * len(latencies))]:.2f} ms ({len(latencies)} statements)")
    env.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
