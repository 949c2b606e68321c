"""``hpl-eval``: run an agent on an env split and report reward, success and speed."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from hpl_data.rollout import run_episodes, summarize
from hpl_envs import canonical, make_env
from hpl_envs.core import EnvUnavailableError
from hpl_envs.data import DataCorruptError, DataMissingError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hpl-eval", description=__doc__)
    p.add_argument("--env", required=True, help="webshop")
    p.add_argument("--agent", required=True, help="oracle | heuristic | random")
    p.add_argument("--split", default="test")
    p.add_argument("--limit", type=int, default=None, help="first N tasks of the split")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--max-turns", type=int, default=None)
    p.add_argument("--out", type=Path, default=None, help="write the summary JSON here")
    p.add_argument("--env-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="extra env constructor argument (JSON value), e.g. catalog=\"full\"")
    p.add_argument("--quiet", action="store_true")
    return p


def parse_kv(pairs: list[str]) -> dict:
    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise SystemExit(f"hpl-eval: --env-arg expects KEY=VALUE, got {pair!r}")
        k, v = pair.split("=", 1)
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            out[k] = v
    return out


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    console = Console(stderr=True, quiet=args.quiet)
    try:
        env_name = canonical(args.env)
        env_kwargs = parse_kv(args.env_arg)
        if args.max_turns:
            env_kwargs["max_turns"] = args.max_turns
        env = make_env(env_name, **env_kwargs)
        task_ids = env.task_ids(args.split)
    except (DataMissingError, DataCorruptError, EnvUnavailableError, ValueError, TypeError) as e:
        console.print(f"[red]hpl-eval: {e}[/red]")
        return 2
    if args.limit is not None:
        task_ids = task_ids[: args.limit]
    del env
    start = time.perf_counter()
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=console, disable=args.quiet) as progress:
        bar = progress.add_task(f"{env_name}/{args.split} {args.agent}", total=len(task_ids))
        try:
            episodes = run_episodes(env_name, task_ids, args.agent, env_kwargs=env_kwargs, seed=args.seed,
                                    workers=args.workers, on_episode=lambda _: progress.advance(bar))
        except (ValueError, EnvUnavailableError) as e:
            console.print(f"[red]hpl-eval: {e}[/red]")
            return 2
    summary = summarize(env_name, args.split, args.agent, episodes, time.perf_counter() - start)
    summary["per_episode"] = [
        {"task_id": e["task_id"], "task_type": e["task_type"], "reward": e["reward"], "won": e["won"],
         "steps": len(e["steps"]), "error": e["error"], "reward_parts": e["reward_parts"],
         "actions": [s["action"] for s in e["steps"]]}
        for e in episodes
    ]
    print_summary(Console(), summary)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.out.with_suffix(args.out.suffix + ".tmp")
        tmp.write_text(json.dumps(summary, indent=1))
        tmp.replace(args.out)
        console.print(f"wrote {args.out}")
    return 0


def print_summary(console: Console, s: dict) -> None:
    table = Table(title=f"{s['env']} / {s['split']} / {s['agent']}")
    for col in ("task type", "episodes", "avg reward", "success"):
        table.add_column(col, justify="right" if col != "task type" else "left")
    for k, v in s["by_task_type"].items():
        table.add_row(k, str(v["episodes"]), f"{v['avg_reward']:.4f}", f"{v['success_rate']:.3f}")
    table.add_row("[b]all[/b]", str(s["episodes"]), f"[b]{s['avg_reward']:.4f}[/b]", f"[b]{s['success_rate']:.3f}[/b]")
    console.print(table)
    console.print(f"avg steps {s['avg_steps']:.2f} | env steps/s {s['env_steps_per_s']:.0f} | "
                  f"failed episodes {s['failed_episodes']} | wall {s['wall_s']:.1f}s")


if __name__ == "__main__":
    sys.exit(main())
