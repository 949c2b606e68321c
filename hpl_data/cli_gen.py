"""``hpl-gen``: build preference datasets from env episodes.

This release builds the trajectory level (ETO-style pairs): an expert trajectory per task
(the ``oracle`` agent) against the reference policy's own trajectory (a built-in agent),
kept when the policy's outcome reward is lower. Step- and group-level pairs with
Monte-Carlo labels build on these tables (see the project issues). Output folder:

  trajectories.parquet   every episode (expert and policy), with its chat messages
  traj_pairs.parquet     TRL-compatible ``prompt`` / ``chosen`` / ``rejected`` rows
  manifest.json          config, counters, versions, what is finished

Writes are atomic; rerunning with the same ``--out`` reuses finished tables unless
``--overwrite`` is given.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from rich.console import Console

from hpl_data import parquet
from hpl_data.conversation import episode_messages
from hpl_data.rollout import run_episodes
from hpl_envs import canonical, make_env
from hpl_envs.core import EnvUnavailableError
from hpl_envs.data import DataCorruptError, DataMissingError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hpl-gen", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--env", required=True)
    p.add_argument("--policy", default="heuristic", help="reference policy: a built-in agent (heuristic, random)")
    p.add_argument("--expert", default="oracle", help="expert: a built-in agent (oracle)")
    p.add_argument("--levels", default="traj", help="comma list; this release builds: traj")
    p.add_argument("--split", default="train")
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--prompts", default="default", choices=["default", "ipr", "eto"])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--overwrite", action="store_true")
    return p


def trajectory_rows(env_name: str, split: str, role: str, episodes: list[dict], prompts: str) -> list[dict]:
    rows = []
    for e in episodes:
        rows.append({
            "env": env_name, "split": split, "task_id": e["task_id"], "task_type": e["task_type"],
            "instruction": e["instruction"], "role": role, "agent": e["agent"], "seed": e["seed"],
            "reward": e["reward"], "won": e["won"], "n_steps": len(e["steps"]), "truncated": e["truncated"],
            "error": e["error"], "messages": episode_messages(env_name, e, prompts) if not e["error"] else [],
            "actions": [s["action"] for s in e["steps"]],
            "observations": [s["observation"] for s in e["steps"]] + [e["final_observation"]],
            "action_valid": [s["action_valid"] for s in e["steps"]],
        })
    return rows


def traj_pairs(expert: list[dict], policy: list[dict], expert_id: str, policy_id: str) -> list[dict]:
    by_task = {r["task_id"]: r for r in policy if not r["error"] and r["messages"]}
    pairs = []
    for ex in expert:
        po = by_task.get(ex["task_id"])
        if ex["error"] or not ex["messages"] or po is None or not po["reward"] < ex["reward"]:
            continue
        if ex["messages"][0] != po["messages"][0]:
            raise AssertionError(f"task {ex['task_id']}: expert and policy saw different first prompts")
        pairs.append({
            "prompt": ex["messages"][:1], "chosen": ex["messages"][1:], "rejected": po["messages"][1:],
            "env": ex["env"], "split": ex["split"], "task_id": ex["task_id"], "task_type": ex["task_type"],
            "level": "traj", "chosen_reward": ex["reward"], "rejected_reward": po["reward"],
            "delta_r": ex["reward"] - po["reward"], "policy_id": policy_id, "expert_id": expert_id,
            "seed": po["seed"],
        })
    return pairs


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    console = Console(stderr=True)
    levels = [lv.strip() for lv in args.levels.split(",") if lv.strip()]
    unsupported = [lv for lv in levels if lv != "traj"]
    if unsupported:
        console.print(f"[red]hpl-gen: levels {unsupported} are not built by this release (only 'traj')[/red]")
        return 2
    try:
        env_name = canonical(args.env)
        task_ids = make_env(env_name).task_ids(args.split)
    except (DataMissingError, DataCorruptError, EnvUnavailableError, ValueError) as e:
        console.print(f"[red]hpl-gen: {e}[/red]")
        return 2
    if args.limit is not None:
        task_ids = task_ids[: args.limit]
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    meta = {"config": config, "versions": parquet.versions(), "git_revision": parquet.git_revision()}
    manifest_path = out / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() and not args.overwrite else {}
    if manifest.get("config") not in (None, config) and not args.overwrite:
        console.print("[red]hpl-gen: --out holds data from a different config; use --overwrite or another --out[/red]")
        return 2
    counters: dict[str, float] = manifest.get("counters", {})
    tables: dict[str, list[dict]] = {}
    start = time.perf_counter()
    for role, agent in (("expert", args.expert), ("policy", args.policy)):
        path = out / f"trajectories_{role}.parquet"
        if path.exists() and not args.overwrite:
            import pyarrow.parquet as pq

            tables[role] = pq.read_table(path).to_pylist()
            console.print(f"reusing {path}")
            continue
        t0 = time.perf_counter()
        try:
            episodes = run_episodes(env_name, task_ids, agent, seed=args.seed, workers=args.workers)
        except (ValueError, EnvUnavailableError) as e:
            console.print(f"[red]hpl-gen: {e}[/red]")
            return 2
        rows = trajectory_rows(env_name, args.split, role, episodes, args.prompts)
        counters[f"{role}_env_steps"] = sum(len(e["steps"]) for e in episodes)
        counters[f"{role}_episodes"] = len(episodes)
        counters[f"{role}_failed"] = sum(1 for e in episodes if e["error"])
        counters[f"{role}_seconds"] = time.perf_counter() - t0
        parquet.write_table(rows, parquet.TRAJECTORIES, path, {**meta, "counters": counters})
        tables[role] = rows
        console.print(f"{role}: {len(rows)} episodes, avg reward "
                      f"{sum(r['reward'] for r in rows) / max(len(rows), 1):.3f} -> {path}")
    pairs = traj_pairs(tables["expert"], tables["policy"], args.expert, args.policy)
    counters["traj_pairs"] = len(pairs)
    counters["wall_seconds"] = counters.get("wall_seconds", 0) + time.perf_counter() - start
    pair_path = parquet.write_table(pairs, parquet.TRAJ_PAIRS, out / "traj_pairs.parquet", {**meta, "counters": counters})
    manifest = {"config": config, "counters": counters, "tables": {
        "trajectories_expert": "trajectories_expert.parquet", "trajectories_policy": "trajectories_policy.parquet",
        "traj_pairs": "traj_pairs.parquet"}, "finished": True, **meta}
    tmp = manifest_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(manifest, indent=1, default=str))
    tmp.replace(manifest_path)
    console.print(f"[green]{len(pairs)} trajectory pairs -> {pair_path}[/green]")
    console.print(f"load with: datasets.load_dataset('parquet', data_files='{pair_path}')"
                  f"  or  pandas.read_parquet('{pair_path}')")
    return 0


if __name__ == "__main__":
    sys.exit(main())
