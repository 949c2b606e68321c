"""hpl-serve vs in-process: WebShop oracle and heuristic agents through the server (OpenEnv's async
EnvClient over WebSocket) at 1, 16 and 64 concurrent sessions, against the same agents on an env in
this process; then the server's memory over many episodes.

  python benchmarks/bench_serve.py [--workers 2] [--episodes 200] [--leak-episodes 10000] [--quick]

Prints a markdown table: steps/s, p50/p99 step latency for search and non-search steps, and the
server's RSS (its process plus its env workers) before and after ``--leak-episodes`` oracle episodes.
The oracle's actions are planned in this process first (it reads the goal from a local env), so the
load generator only sends actions; the heuristic acts on the observations the server returns.
Goals (issue #23): >= 50 % of in-process steps/s at 64 sessions with 2 workers; p99 <= 20 ms for
non-search steps. The clients run on this machine too: they share its cores with the server.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import httpx  # noqa: E402
import psutil  # noqa: E402

from hpl_data.serve.client import HplEnvClient  # noqa: E402
from hpl_envs import make_env  # noqa: E402
from hpl_envs.agents import play  # noqa: E402
from hpl_envs.webshop.agents import WebShopHeuristic, WebShopOracle  # noqa: E402

MAX_ACTIONS = 15


def oracle_plans(env, task_ids: list[str]) -> dict[str, list[str]]:
    return {t: play(env, WebShopOracle(), t)[3] for t in task_ids}


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


class Tally:
    def __init__(self) -> None:
        self.search: list[float] = []
        self.other: list[float] = []
        self.steps = 0

    def add(self, action: str, seconds: float) -> None:
        (self.search if action.startswith("search[") else self.other).append(seconds)
        self.steps += 1


# --- in process
def run_in_process(env, agent_name: str, plans: dict[str, list[str]], episodes: int) -> tuple[Tally, float]:
    tally, tasks = Tally(), list(plans)
    start = time.perf_counter()
    for i in range(episodes):
        task = tasks[i % len(tasks)]
        obs, info = env.reset(options={"task_id": task})
        agent = WebShopHeuristic(seed=i) if agent_name == "heuristic" else None
        if agent:
            agent.reset(None, obs, info)
        for k in range(MAX_ACTIONS):
            action = agent.act(obs, info) if agent else plans[task][k]
            t = time.perf_counter()
            obs, _, terminated, truncated, info = env.step(action)
            tally.add(action, time.perf_counter() - t)
            if terminated or truncated or (not agent and k + 1 == len(plans[task])):
                break
    return tally, time.perf_counter() - start


# --- through the server
async def session_loop(url: str, agent_name: str, plans: dict[str, list[str]], episodes: list[int],
                       tally: Tally) -> None:
    tasks = list(plans)
    async with HplEnvClient(base_url=url, message_timeout_s=300) as env:
        for i in episodes:
            task = tasks[i % len(tasks)]
            obs = (await env.reset(task_id=task)).observation
            agent = WebShopHeuristic(seed=i) if agent_name == "heuristic" else None
            if agent:
                agent.reset(None, obs.text, obs.info)
            for k in range(MAX_ACTIONS):
                action = agent.act(obs.text, obs.info) if agent else plans[task][k]
                t = time.perf_counter()
                result = await env.step(action)
                tally.add(action, time.perf_counter() - t)
                obs = result.observation
                if result.done or (not agent and k + 1 == len(plans[task])):
                    break


async def run_served(url: str, agent_name: str, plans: dict[str, list[str]], episodes: int,
                     sessions: int) -> tuple[Tally, float]:
    tally = Tally()
    start = time.perf_counter()
    await asyncio.gather(*(session_loop(url, agent_name, plans, list(range(s, episodes, sessions)), tally)
                           for s in range(sessions)))
    return tally, time.perf_counter() - start


def server_rss_mb(pid: int) -> float:
    proc = psutil.Process(pid)
    return sum(p.memory_info().rss for p in [proc, *proc.children(recursive=True)]) / 2**20


def start_server(workers: int, max_sessions: int) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "hpl_data.cli_serve", "--env", "webshop", "--workers", str(workers),
                             "--port", str(port), "--max-sessions", str(max_sessions)])
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            httpx.get(f"{url}/health", timeout=2)
            return proc, url
        except httpx.TransportError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("hpl-serve did not start")


def row(label: str, tally: Tally, seconds: float, base: float | None) -> str:
    rate = tally.steps / seconds
    ratio = f"{rate / base:.0%}" if base else "—"
    ms = [1000 * percentile(v, q) for v in (tally.search, tally.other) for q in (0.5, 0.99)]
    return f"| {label} | {tally.steps} | {rate:,.0f} | {ratio} | {ms[0]:.1f} / {ms[1]:.1f} | {ms[2]:.1f} / {ms[3]:.1f} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--episodes", type=int, default=200, help="episodes per agent and concurrency")
    parser.add_argument("--leak-episodes", type=int, default=10_000)
    parser.add_argument("--sessions", default="1,16,64")
    parser.add_argument("--quick", action="store_true", help="40 episodes, 1,000 for the memory check")
    args = parser.parse_args()
    if args.quick:
        args.episodes, args.leak_episodes = 40, 1000
    concurrency = [int(x) for x in args.sessions.split(",")]
    env = make_env("webshop")
    plans = oracle_plans(env, env.task_ids("test")[:100])
    proc, url = start_server(args.workers, max(concurrency) + 4)
    try:
        print(f"load before: {os.getloadavg()[0]:.2f}; workers {args.workers}; {args.episodes} episodes per row")
        print("| agent, sessions | steps | steps/s | vs in-process | search p50 / p99 ms | other p50 / p99 ms |")
        print("|---|---|---|---|---|---|")
        for agent in ("oracle", "heuristic"):
            base_tally, base_s = run_in_process(env, agent, plans, args.episodes)
            base = base_tally.steps / base_s
            print(row(f"{agent}, in-process", base_tally, base_s, None), flush=True)
            for n in concurrency:
                tally, seconds = asyncio.run(run_served(url, agent, plans, args.episodes, n))
                print(row(f"{agent}, {n} via hpl-serve", tally, seconds, base), flush=True)
        rss0 = server_rss_mb(proc.pid)
        t = time.perf_counter()
        tally, _ = asyncio.run(run_served(url, "oracle", plans, args.leak_episodes, 16))
        rss1 = server_rss_mb(proc.pid)
        stats = httpx.get(f"{url}/hpl/stats").json()
        print(f"\nserver RSS (server + {args.workers} workers): {rss0:.0f} MB before, {rss1:.0f} MB after "
              f"{args.leak_episodes} more oracle episodes ({tally.steps} steps, {time.perf_counter() - t:.0f} s, "
              f"16 sessions): {100 * (rss1 - rss0) / rss0:+.1f} %; sessions open after: {stats['sessions']}, "
              f"worker restarts: {stats['worker_restarts']}; load after: {os.getloadavg()[0]:.2f}")
    finally:
        proc.terminate()
        proc.wait(timeout=30)


if __name__ == "__main__":
    main()
