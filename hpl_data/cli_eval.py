"""``hpl-eval``: run any policy (built-in agent, user agent, vLLM, OpenAI-compatible server, HF) on
env splits through the async engine; report reward, success, speed and cost.

    hpl-eval --env webshop --agent heuristic --split test --limit 100 --out runs/heuristic.json
    hpl-eval --env alfworld,webshop,intercode-sql --agent vllm:/models/qwen --out runs/qwen/
    hpl-eval compare runs/heuristic/summary.json runs/qwen/summary.json --png table.png
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from hpl_data.cli_common import (
    CliError,
    CliParser,
    add_ray_flags,
    check_output,
    check_ray,
    concurrency,
    positive_float,
    positive_int,
    run_cli,
    worker_count,
)
from hpl_data.engine import EngineConfig, RolloutEngine
from hpl_data.policies import (
    PolicyArgumentError,
    PolicyError,
    SamplingParams,
    check_model_available,
    make_chat_policy,
    parse_spec,
)
from hpl_data.rollout import summarize
from hpl_envs import canonical, make_env
from hpl_envs.core import EnvUnavailableError, TaskNotFoundError
from hpl_envs.registry import EnvArgumentError, profile


def build_parser() -> argparse.ArgumentParser:
    p = CliParser(prog="hpl-eval", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--env", required=True, help="webshop | alfworld | intercode-sql, or several comma-separated")
    p.add_argument("--agent", "--policy", dest="agent", required=True,
                   help="oracle | heuristic | random | vllm:MODEL | openai:URL[,URL2...][#model] | openai:@FILE[#model] | hf:MODEL | "
                        "package.module:factory")
    p.add_argument("--split", default=None, help="split(s), comma-separated; default: the paper's eval split per env")
    p.add_argument("--limit", type=positive_int, default=None, help="first N tasks of each split")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=worker_count, default=2, help="env worker processes (Ray actors with --ray)")
    add_ray_flags(p)
    p.add_argument("--concurrency", type=concurrency, default=64, help="episodes in flight")
    p.add_argument("--max-turns", type=positive_int, default=None)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--max-tokens", type=positive_int, default=256, help="per model turn")
    p.add_argument("--prompts", default="default", choices=["default", "ipr", "eto"],
                   help="instruction + worked example shown to LLM policies")
    p.add_argument("--episode-timeout", type=positive_float, default=None, help="seconds; a slower episode is recorded as failed")
    p.add_argument("--out", type=Path, default=None,
                   help="one run: summary JSON path (trajectories go beside it as .parquet); several: a directory")
    p.add_argument("--env-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="extra env constructor argument (JSON value), e.g. catalog=\"full\"")
    p.add_argument("--policy-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="extra backend option (JSON value), e.g. max_model_len=8192, concurrency=32")
    p.add_argument("--quiet", action="store_true")
    return p


def parse_kv(pairs: list[str], flag: str = "--env-arg") -> dict:
    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise ValueError(f"{flag} expects KEY=VALUE, got {pair!r}")
        k, v = pair.split("=", 1)
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            out[k] = v
    return out


def plan_runs(args) -> list[tuple[str, str, list[str]]]:
    """[(env, split, task ids)]; validates envs, splits and data before anything starts."""
    runs = []
    for name in [e.strip() for e in args.env.split(",") if e.strip()]:
        env_name = canonical(name)
        env = make_env(env_name, **args.env_kwargs)
        for split in (args.split.split(",") if args.split else profile(env_name).eval_splits):
            ids = env.task_ids(split.strip())
            runs.append((env_name, split.strip(), ids[: args.limit] if args.limit is not None else ids))
        env.close()
    return runs


def check_agent(env_name: str, spec) -> None:
    """Fail before starting workers when a built-in agent does not exist for the env."""
    from hpl_data.policies import make_agent_from_spec

    if spec.is_agent:
        make_agent_from_spec(env_name, spec, seed=0)


async def run_all(args, runs, console: Console) -> list[tuple[dict, list[dict]]]:
    spec = parse_spec(args.agent)
    try:
        policy = None if spec.is_agent else make_chat_policy(spec, **args.policy_kwargs)  # one model for every run
    except PolicyArgumentError as e:
        raise CliError(f"{e}; check --policy-arg") from e
    sampling = SamplingParams(temperature=args.temperature, top_p=args.top_p, max_tokens=args.max_tokens)
    out = []
    try:
        for env_name, split, ids in runs:
            config = EngineConfig(concurrency=args.concurrency, workers=args.workers, seed=args.seed,
                                  episode_timeout_s=args.episode_timeout, prompts=args.prompts, sampling=sampling,
                                  ray=args.ray, ray_cpus_per_worker=args.ray_cpus_per_worker)
            from hpl_data.protocol import compute as compute_protocol

            protocol = compute_protocol(env_name, args.env_kwargs, split, ids)  # before workers share the env's server
            engine = RolloutEngine(env_name, policy or args.agent, env_kwargs=args.env_kwargs, config=config)
            try:
                await engine.start()  # a failed start closes what it had started
            except RuntimeError as e:  # env workers that could not start: one line; later errors are bugs
                raise CliError(str(e)) from e
            try:
                episodes = await _with_progress(engine, ids, f"{env_name}/{split}", console, args.quiet)
            finally:
                await engine.close()
            summary = summarize(env_name, split, str(spec), episodes, engine.counters.wall_s)
            summary["counters"] = engine.counters.as_dict()
            summary["protocol"] = protocol
            summary["config"] = {"seed": args.seed, "temperature": args.temperature, "top_p": args.top_p,
                                 "max_tokens": args.max_tokens, "max_turns": args.max_turns, "prompts": args.prompts,
                                 "concurrency": args.concurrency, "workers": args.workers, "limit": args.limit,
                                 "ray": args.ray}
            summary["per_episode"] = [
                {"task_id": e["task_id"], "task_type": e["task_type"], "reward": e["reward"], "won": e["won"],
                 "success": profile(env_name).succeeded(e), "steps": len(e["steps"]), "error": e["error"],
                 "stop_reason": e["stop_reason"], "reward_parts": e["reward_parts"],
                 "actions": [s["action"] for s in e["steps"]]}
                for e in episodes
            ]
            out.append((summary, episodes))
    finally:
        if policy is not None:
            await policy.close()
    return out


async def _with_progress(engine: RolloutEngine, ids: list[str], label: str, console: Console, quiet: bool):
    c = engine.counters
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TimeRemainingColumn(), TextColumn("{task.fields[rates]}"), console=console, disable=quiet,
                  refresh_per_second=4) as progress:
        bar = progress.add_task(label, total=len(ids), rates="")
        t0 = time.perf_counter()

        def rates() -> str:
            dt = max(1e-9, time.perf_counter() - t0)
            s = f"{c.env_steps / dt:,.0f} steps/s"
            if c.llm_calls:
                s += f" | {c.llm_calls / dt:,.1f} LLM calls/s | {(c.prompt_tokens + c.completion_tokens) / dt:,.0f} tok/s"
            return s + (f" | failed {c.failed_episodes}" if c.failed_episodes else "")

        async def ticker():
            while True:
                progress.update(bar, rates=rates())
                await asyncio.sleep(0.5)

        tick = asyncio.create_task(ticker())
        try:
            episodes = await engine.run(ids, on_episode=lambda _: progress.advance(bar))
        finally:
            tick.cancel()
        progress.update(bar, rates=rates())
    return episodes


def write_outputs(out: Path, results: list[tuple[dict, list[dict]]], console: Console) -> None:
    from hpl_data.conversation import trajectory_rows
    from hpl_data.parquet import TRAJECTORIES, git_revision, versions, write_table
    from hpl_data.storage import write_atomically

    def one(summary: dict, episodes: list[dict], json_path: Path) -> None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        meta = {"summary": {k: v for k, v in summary.items() if k != "per_episode"}, "versions": versions(),
                "git_revision": git_revision(), "protocol": summary.get("protocol")}
        rows = trajectory_rows(summary["env"], summary["split"], "eval", episodes, summary["config"]["prompts"])
        pq_path = write_table(rows, TRAJECTORIES, json_path.with_suffix(".trajectories.parquet"), meta)
        summary["trajectories"] = pq_path.name
        write_atomically(json_path, json.dumps(summary, indent=1))
        console.print(f"wrote {json_path} and {pq_path.name}")

    if len(results) == 1 and out.suffix == ".json":
        one(*results[0], out)
        return
    out.mkdir(parents=True, exist_ok=True)
    for summary, episodes in results:
        one(summary, episodes, out / f"{summary['env']}_{summary['split']}.json")
    combined = {"agent": results[0][0]["agent"], "runs": [{k: v for k, v in s.items() if k != "per_episode"}
                                                          for s, _ in results]}
    write_atomically(out / "summary.json", json.dumps(combined, indent=1))
    console.print(f"wrote {out / 'summary.json'}")


def main(argv: list[str] | None = None) -> int:
    return run_cli("hpl-eval", _main, argv, expected=(PolicyError, EnvUnavailableError, TaskNotFoundError))


def _main(argv: list[str]) -> int:
    if argv and argv[0] == "compare":
        from hpl_data.compare import main as compare_main

        return compare_main(argv[1:])
    args = build_parser().parse_args(argv)
    check_ray(args)
    console = Console(stderr=True, quiet=args.quiet, soft_wrap=True)
    args.env_kwargs = parse_kv(args.env_arg)
    args.policy_kwargs = parse_kv(args.policy_arg, "--policy-arg")
    if args.max_turns:
        args.env_kwargs["max_turns"] = args.max_turns
    spec = parse_spec(args.agent)
    check_model_available(spec)
    try:
        runs = plan_runs(args)
    except EnvArgumentError as e:
        raise CliError(f"{e}; check --env-arg") from e
    for env_name in {r[0] for r in runs}:
        check_agent(env_name, spec)
    if args.out is not None:  # before the run, so that its results cannot be lost
        check_output(args.out, "file" if len(runs) == 1 and args.out.suffix == ".json" else "dir")
    results = asyncio.run(run_all(args, runs, console))
    for summary, _ in results:
        print_summary(Console(), summary)
    if len(results) > 1:
        from hpl_data.compare import print_table

        print_table(Console(), [{"agent": results[0][0]["agent"], "runs": [s for s, _ in results]}])
    if args.out:
        write_outputs(args.out, results, console)
    return 0


def print_summary(console: Console, s: dict) -> None:
    table = Table(title=f"{s['env']} / {s['split']} / {s['agent']}")
    table.add_column("task type")
    for col in ("episodes", "avg reward [95% CI]", "success [95% CI]"):
        table.add_column(col, justify="right", no_wrap=col != "episodes")

    def cells(v: dict) -> tuple[str, str]:
        return (f"{v['avg_reward']:.4f} {interval(v.get('avg_reward_ci95'), 3)}",
                f"{v['success_rate']:.3f} {interval(v.get('success_rate_ci95'), 3)}")

    for k, v in s["by_task_type"].items():
        table.add_row(k, str(v["episodes"]), *cells(v))
    table.add_row("[b]all[/b]", str(s["episodes"]), *(f"[b]{c}[/b]" for c in cells(s)))
    console.print(table)
    if s.get("ci95_method"):
        console.print(f"95% CI: {s['ci95_method']}")
    c = s.get("counters", {})
    line = (f"avg steps {s['avg_steps']:.2f} | env steps/s {s['env_steps_per_s']:.0f} | "
            f"failed episodes {s['failed_episodes']} | wall {s['wall_s']:.1f}s")
    if c.get("llm_calls"):
        line += (f" | LLM calls {c['llm_calls']} | tokens {c['prompt_tokens']}+{c['completion_tokens']}"
                 f" | outside LLM {c['outside_llm_fraction']:.1%}")
    console.print(line)
    endpoints = c.get("llm_endpoints") or {}
    if len(endpoints) > 1:
        for url, e in endpoints.items():
            console.print(f"  endpoint {url}: {e['calls']} requests, {e['errors']} errors, "
                          f"{e['ejections']} ejections, {e['recoveries']} recoveries")
    reasons: dict[str, int] = {}
    for e in s.get("per_episode", []):
        if e["error"]:
            key = e["error"].splitlines()[0][:120]
            reasons[key] = reasons.get(key, 0) + 1
    for r, n in sorted(reasons.items(), key=lambda kv: -kv[1])[:5]:
        console.print(f"  failed x{n}: {r}")


def interval(ci: list[float] | None, digits: int) -> str:
    """``[low, high]`` of a summary's ``*_ci95`` field; empty for summaries written before intervals."""
    return "" if not ci else f"[{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]"


if __name__ == "__main__":
    sys.exit(main())
