"""``hpl-gen``: build preference datasets from env episodes.

Levels:
  traj   expert trajectory (``oracle``) vs the reference policy's own trajectory, kept when the
         policy's outcome is lower (ETO)
  step   at each expert step, the policy's alternative action vs the expert's, both valued by M
         Monte-Carlo policy rollouts from the restored env snapshot (IPR)
  group  expert action groups (``--segmenter``) vs same-length policy groups from the same state,
         r(G) = mean outcome of M rollouts after the group (HPL)

Output folder:
  trajectories_{expert,policy}.parquet   every episode, with its chat messages
  traj_pairs.parquet, step_pairs.parquet, group_pairs.parquet   TRL-style prompt/chosen/rejected
  manifest.json                           config, counters, versions, what is finished

Crash-safe: every finished task is written as a shard (``.shards/``, atomic) and a rerun with the
same ``--out`` and config resumes, skipping finished tasks; tables are assembled atomically at
the end. ``--overwrite`` starts over.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path

from rich.console import Console

from hpl_data import parquet
from hpl_data.cli_common import CliParser, check_output, positive_int, run_cli, worker_count
from hpl_data.conversation import episode_messages, trajectory_rows
from hpl_data.experts import keep_expert
from hpl_data.mc import empirical_entropy, expert_pass, label_task, segment
from hpl_data.protocol import compute as compute_protocol
from hpl_data.rollout import run_episodes
from hpl_data.segmenters import parse_spec, percentile
from hpl_data.shards import ShardStore
from hpl_envs import canonical, make_env
from hpl_envs.core import EnvUnavailableError
from hpl_envs.data import DataCorruptError, DataMissingError


def build_parser() -> argparse.ArgumentParser:
    p = CliParser(prog="hpl-gen", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--env", required=True)
    p.add_argument("--policy", default="heuristic",
                   help="reference policy: heuristic | random | package.module:factory | openai:URL[#model] | hf:MODEL "
                        "(an LLM is served to the MC workers; for vLLM start its OpenAI server and use openai:)")
    p.add_argument("--policy-temperature", type=float, default=1.0, help="LLM reference policy sampling temperature")
    p.add_argument("--policy-max-tokens", type=int, default=256, help="LLM reference policy tokens per turn")
    p.add_argument("--max-turns", type=int, default=None, help="episode length cap (default: the env's)")
    p.add_argument("--expert", default="oracle",
                   help="oracle | file:PATH (InterCode results JSON, ETO/IPR conversation JSON, hpl trajectories "
                        "Parquet) | teacher:POLICY (e.g. teacher:openai:URL#gpt-4o); filtered by the paper's rule")
    p.add_argument("--levels", default="traj,step,group", help="comma list of traj, step, group")
    p.add_argument("--segmenter", default="fixed-k:3",
                   help="fixed-n:N | fixed-k:K | uncertainty[:pP] | semantic:POLICY (e.g. semantic:openai:URL#model)")
    p.add_argument("--mc-rollouts", type=int, default=3, help="Monte-Carlo rollouts per state (M)")
    p.add_argument("--mc-adaptive", action="store_true",
                   help="stop a pair's rollouts once a Hoeffding bound settles the sign of ΔR (M is the maximum)")
    p.add_argument("--mc-min-rollouts", type=int, default=2, help="adaptive: rollouts per side before testing")
    p.add_argument("--mc-confidence", type=float, default=0.8, help="adaptive: confidence of the bound (1 - δ)")
    p.add_argument("--entropy-samples", type=int, default=8,
                   help="policy samples per state to estimate action entropy (uncertainty segmenter)")
    p.add_argument("--split", default="train")
    p.add_argument("--limit", type=positive_int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=worker_count, default=1)
    p.add_argument("--prompts", default="default", choices=["default", "ipr", "eto"])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--overwrite", action="store_true")
    return p


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


_MC: dict = {}


def _mc_init(env_name: str, env_kwargs: dict | None = None) -> None:
    import os

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    _MC["env"] = make_env(env_name, **(env_kwargs or {}))
    _MC["name"] = env_name


def _mc_entropies(job: tuple) -> list[float]:
    task_id, policy, expert, seed, samples, prompts = job
    env, name = _MC["env"], _MC["name"]
    ex = expert_pass(env, name, expert, task_id, seed)
    msgs = episode_messages(name, ex, prompts)
    return [empirical_entropy(env, name, policy, ex["states"][t], ex["steps"][t]["observation"], ex["infos"][t],
                              samples, seed, (task_id, t), msgs[: 1 + 2 * t]) for t in range(len(ex["steps"]))]


def _mc_label(job: tuple) -> tuple[list[dict], list[dict], dict] | str:
    """One task's step/group pairs, or the error text when labelling failed (e.g. a dead LLM server):
    the task is then left unfinished, so a rerun retries it."""
    try:
        return _mc_label_task(job)
    except Exception as e:  # noqa: BLE001 - recorded and counted, never fatal for the run
        return f"{type(e).__name__}: {e}"


def _mc_label_task(job: tuple) -> tuple[list[dict], list[dict], dict]:
    task_id, split, args_d, levels, seg, threshold, given_groups = job
    env, name = _MC["env"], _MC["name"]
    counters: Counter = Counter()
    ex = expert_pass(env, name, args_d["expert"], task_id, args_d["seed"])
    entropies = None
    if seg[0] == "uncertainty":
        entropies = [empirical_entropy(env, name, args_d["policy"], ex["states"][t], ex["steps"][t]["observation"],
                                       ex["infos"][t], args_d["entropy_samples"], args_d["seed"], (task_id, t))
                     for t in range(len(ex["steps"]))]
    if seg[0] == "semantic":  # groups came from the LLM (validated, or Fixed-K after a counted fallback)
        groups = given_groups if given_groups and given_groups[-1][1] == len(ex["steps"]) else \
            segment("fixed-k", 3, len(ex["steps"]), None, None)
    else:
        groups = segment(seg[0], seg[1], len(ex["steps"]), entropies, threshold)
    steps, grps = label_task(env, name, split, ex, policy=args_d["policy"], expert=args_d["expert"],
                             rollouts=args_d["mc_rollouts"], seed=args_d["seed"], levels=levels, groups=groups,
                             segmenter=args_d["segmenter"], prompts=args_d["prompts"], counters=counters,
                             adaptive=args_d["mc_adaptive"], min_rollouts=args_d["mc_min_rollouts"],
                             confidence=args_d["mc_confidence"],
                             policy_options={"temperature": args_d["policy_temperature"],
                                             "max_tokens": args_d["policy_max_tokens"], "prompts": args_d["prompts"]}
                             if not parse_policy_spec(args_d["policy"]).is_agent else None)
    counters["expert_env_steps_mc"] += len(ex["steps"])
    return steps, grps, dict(counters)


def env_kwargs(args) -> dict:
    return {"max_turns": args.max_turns} if args.max_turns else {}


def parse_policy_spec(spec: str):
    from hpl_data.policies import parse_spec as parse_policy

    return parse_policy(spec)


def resolve_expert(env_name: str, expert: str) -> tuple[str, str]:
    """(kind, spec): builtin (an agent name), file (``file:PATH``) or teacher (a chat policy spec)."""
    from hpl_data.policies import BUILTIN_AGENTS
    from hpl_data.policies import parse_spec as parse_policy

    if expert.startswith("teacher:"):
        spec = expert[len("teacher:"):]
        if parse_policy(spec).is_agent:
            raise ValueError(f"--expert teacher: needs an LLM policy (vllm:, openai:, hf:), got {spec!r}")
        return "teacher", spec
    if expert.startswith("file:") or Path(expert).exists():
        path = expert[5:] if expert.startswith("file:") else expert
        if not Path(path).exists():
            raise ValueError(f"--expert {expert}: no such file")
        return "file", f"file:{Path(path).resolve()}"
    if expert in BUILTIN_AGENTS or ":" in expert:
        return "builtin", expert
    raise ValueError(f"--expert {expert!r}: use oracle, file:PATH or teacher:POLICY")


def semantic_stage(out: Path, task_ids: list[str], expert_rows: list[dict], spec: str, counters: dict) -> dict:
    """Groups of every expert trajectory from an LLM (all requests in flight together), sharded."""
    import asyncio

    from hpl_data.policies import make_chat_policy
    from hpl_data.segmenters import semantic_groups

    store = ShardStore(out, "semantic")
    by_task = {r["task_id"]: r for r in expert_rows if not r["error"] and r["actions"]}
    todo = [t for t in store.pending(task_ids) if t in by_task]

    async def run() -> None:
        policy = make_chat_policy(spec)
        try:
            async def one(t: str) -> None:
                r = by_task[t]
                groups, fell_back = await semantic_groups(policy, r["instruction"], r["actions"], r["observations"][1:])
                store.put(t, {"groups": groups, "fallback": fell_back})
            await asyncio.gather(*(one(t) for t in todo))
        finally:
            await policy.close()

    if todo:
        asyncio.run(run())
    shards = {t: store.get(t) for t in task_ids if t in by_task}
    counters["semantic_calls"] = len(shards)
    counters["semantic_fallbacks"] = sum(sh["fallback"] for sh in shards.values())
    return {t: [tuple(g) for g in sh["groups"]] for t, sh in shards.items()}


def mc_stage(env_name: str, split: str, task_ids: list[str], args, levels: set[str], seg: tuple,
             counters: dict, semantic: dict | None = None, expert: str | None = None) -> dict[str, list[dict]]:
    """Monte-Carlo labelled step/group pairs, tasks spread over worker processes."""
    from concurrent.futures import ProcessPoolExecutor

    args_d = {k: getattr(args, k) for k in ("expert", "policy", "seed", "mc_rollouts", "segmenter", "prompts",
                                            "entropy_samples", "mc_adaptive", "mc_min_rollouts", "mc_confidence",
                                            "policy_temperature", "policy_max_tokens")}
    args_d["expert"] = expert or args.expert
    make_env(env_name, **env_kwargs(args)).warm_caches()
    threshold = None
    out = args.out
    with ProcessPoolExecutor(max(1, args.workers), initializer=_mc_init, initargs=(env_name, env_kwargs(args))) as pool:
        if seg[0] == "uncertainty":
            ent = ShardStore(out, "entropy")
            jobs = [(t, args.policy, args_d["expert"], args.seed, args.entropy_samples, args.prompts)
                    for t in ent.pending(task_ids)]
            for job, hs in zip(jobs, pool.map(_mc_entropies, jobs)):
                ent.put(job[0], {"entropies": hs})
            all_h = [h for t in task_ids for h in ent.get(t)["entropies"]]
            threshold = percentile(all_h, seg[1] if seg[1] is not None else 80.0)
            counters["uncertainty_threshold"] = threshold
        store = ShardStore(out, "mc_" + "_".join(sorted(levels)))
        jobs = [(t, split, args_d, levels, seg, threshold, (semantic or {}).get(t)) for t in store.pending(task_ids)]
        failed: dict[str, str] = {}
        for job, res in zip(jobs, pool.map(_mc_label, jobs)):
            if isinstance(res, str):
                failed[job[0]] = res
                continue
            steps, grps, c = res
            store.put(job[0], {"step": steps, "group": grps, "counters": c})
    counters["mc_failed_tasks"] = len(failed)
    if failed:
        first = next(iter(failed.items()))
        Console(stderr=True, soft_wrap=True).print(
            f"[yellow]hpl-gen: MC labelling failed for {len(failed)} task(s), e.g. {first[0]}: {first[1][:300]} "
            "(rerun with the same --out to retry them)[/yellow]")
    rows: dict[str, list[dict]] = {"step": [], "group": []}
    for t in task_ids:
        if t in failed:
            continue
        sh = store.get(t)
        rows["step"] += sh["step"]
        rows["group"] += sh["group"]
        for k, v in sh["counters"].items():
            counters[k] = counters.get(k, 0) + v
    return rows


def main(argv: list[str] | None = None) -> int:
    return run_cli("hpl-gen", _main, argv, expected=(EnvUnavailableError,))


def _main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    check_output(args.out, "dir")
    console = Console(stderr=True, soft_wrap=True)
    levels = [lv.strip() for lv in args.levels.split(",") if lv.strip()]
    unsupported = [lv for lv in levels if lv not in ("traj", "step", "group")]
    if unsupported or not levels:
        console.print(f"[red]hpl-gen: unknown levels {unsupported}; use traj, step, group[/red]")
        return 2
    try:
        seg_kind, seg_arg = parse_spec(args.segmenter)
        if seg_kind == "semantic":
            from hpl_data.policies import parse_spec as parse_policy

            if parse_policy(str(seg_arg)).is_agent:
                raise ValueError(f"segmenter semantic needs an LLM policy (vllm:, openai:, hf:), got {seg_arg!r}")
        if args.mc_rollouts < 1:
            raise ValueError("--mc-rollouts must be >= 1")
        if not 0 < args.mc_confidence < 1 or args.mc_min_rollouts < 1:
            raise ValueError("--mc-confidence must be in (0, 1) and --mc-min-rollouts >= 1")
        from hpl_data.llm_agent import check_rollout_policy

        check_rollout_policy(args.policy)
    except ValueError as e:
        console.print(f"[red]hpl-gen: {e}[/red]")
        return 2
    try:
        env_name = canonical(args.env)
        task_ids = make_env(env_name).task_ids(args.split)
    except (DataMissingError, DataCorruptError, EnvUnavailableError, ValueError) as e:
        console.print(f"[red]hpl-gen: {e}[/red]")
        return 2
    try:
        expert_kind, expert_spec = resolve_expert(env_name, args.expert)
        if expert_kind == "file":
            from hpl_data.experts import load_expert_file

            recorded = load_expert_file(expert_spec[5:], env_name == "intercode-sql")
            task_ids = [t for t in task_ids if t in recorded]
            if not task_ids:
                raise ValueError(f"{expert_spec[5:]} has no trajectory for any {args.split} task of {env_name}")
    except ValueError as e:
        console.print(f"[red]hpl-gen: {e}[/red]")
        return 2
    if args.limit is not None:
        task_ids = task_ids[: args.limit]
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    meta = {"config": config, "versions": parquet.versions(), "git_revision": parquet.git_revision(),
            "protocol": compute_protocol(env_name, env_kwargs(args), args.split, task_ids)}
    manifest_path = out / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() and not args.overwrite else {}
    runtime_only = ("workers", "overwrite")  # may differ between a run and its resumption

    def same_data(a: dict | None, b: dict) -> bool:
        return a is None or {k: v for k, v in a.items() if k not in runtime_only} == \
            {k: v for k, v in b.items() if k not in runtime_only}

    if not same_data(manifest.get("config"), config) and not args.overwrite:
        console.print("[red]hpl-gen: --out holds data from a different config; use --overwrite or another --out[/red]")
        return 2
    if args.overwrite:
        import shutil

        shutil.rmtree(out / ".shards", ignore_errors=True)
        for f in out.glob("*.parquet"):
            f.unlink()
    if not manifest:  # record the config first, so a killed run is resumed only with the same one
        tmp = manifest_path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"config": config, "finished": False, **meta}, indent=1, default=str))
        tmp.replace(manifest_path)
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
        store = ShardStore(out, f"trajectories_{role}")
        todo = store.pending(task_ids)
        if len(todo) < len(task_ids):
            console.print(f"{role}: resuming, {len(task_ids) - len(todo)} of {len(task_ids)} tasks already done")

        def save(episode: dict, store=store, role=role) -> None:
            store.put(episode["task_id"], {"rows": trajectory_rows(env_name, args.split, role, [episode], args.prompts),
                                           "env_steps": len(episode["steps"]), "failed": bool(episode["error"])})

        try:
            spec = expert_spec if role == "expert" else agent
            if todo and not parse_policy_spec(spec).is_agent:  # an LLM (teacher or reference policy)
                from hpl_data.engine import EngineConfig, run_rollouts
                from hpl_data.policies import SamplingParams

                temp = args.policy_temperature if role == "policy" else 0.0
                run_rollouts(env_name, todo, spec, env_kwargs=env_kwargs(args), on_episode=save,
                             config=EngineConfig(workers=args.workers, seed=args.seed, prompts=args.prompts,
                                                 sampling=SamplingParams(temperature=temp,
                                                                         max_tokens=args.policy_max_tokens)))
            elif todo:
                run_episodes(env_name, todo, spec, env_kwargs=env_kwargs(args), seed=args.seed,
                             workers=args.workers, on_episode=save)
        except (ValueError, EnvUnavailableError, RuntimeError) as e:
            console.print(f"[red]hpl-gen: {e}[/red]")
            return 2
        shards = [store.get(t) for t in task_ids]
        rows = [r for sh in shards for r in sh["rows"]]
        counters[f"{role}_env_steps"] = sum(sh["env_steps"] for sh in shards)
        counters[f"{role}_episodes"] = len(rows)
        counters[f"{role}_failed"] = sum(sh["failed"] for sh in shards)
        counters[f"{role}_seconds"] = time.perf_counter() - t0
        parquet.write_table(rows, parquet.TRAJECTORIES, path, {**meta, "counters": counters})
        tables[role] = rows
        console.print(f"{role}: {len(rows)} episodes, avg reward "
                      f"{sum(r['reward'] for r in rows) / max(len(rows), 1):.3f} -> {path}")
    kept = [r for r in tables["expert"] if not r["error"] and keep_expert(env_name, r["reward"])]
    counters["expert_kept"], counters["expert_filtered"] = len(kept), len(tables["expert"]) - len(kept)
    pairs = traj_pairs(kept, tables["policy"], args.expert, args.policy)
    counters["traj_pairs"] = len(pairs)
    pair_path = parquet.write_table(pairs, parquet.TRAJ_PAIRS, out / "traj_pairs.parquet", {**meta, "counters": counters})
    written = {"trajectories_expert": "trajectories_expert.parquet", "trajectories_policy": "trajectories_policy.parquet",
               "traj_pairs": "traj_pairs.parquet"}
    mc_levels = {lv for lv in levels if lv in ("step", "group")}
    if mc_levels and not all((out / f"{lv}_pairs.parquet").exists() for lv in mc_levels):
        t0 = time.perf_counter()
        try:
            semantic = None
            if seg_kind == "semantic" and "group" in mc_levels:
                semantic = semantic_stage(out, task_ids, tables["expert"], str(seg_arg), counters)
                console.print(f"semantic segmenter: {counters['semantic_calls']} trajectories, "
                              f"{counters['semantic_fallbacks']} fell back to Fixed-K:3")
            # Monte-Carlo labelling replays the kept expert trajectories (exact: the envs are deterministic)
            mc_expert = expert_spec if expert_kind == "builtin" else f"file:{out / 'trajectories_expert.parquet'}"
            mc_tasks = [t for t in task_ids if t in {r["task_id"] for r in kept}]
            rows = mc_stage(env_name, args.split, mc_tasks, args, mc_levels, (seg_kind, seg_arg), counters, semantic,
                            expert=mc_expert)
        except (ValueError, EnvUnavailableError) as e:
            console.print(f"[red]hpl-gen: {e}[/red]")
            return 2
        counters["mc_seconds"] = time.perf_counter() - t0
        for lv in sorted(mc_levels):
            path = parquet.write_table(rows[lv], parquet.MC_PAIRS, out / f"{lv}_pairs.parquet",
                                       {**meta, "counters": counters})
            console.print(f"{len(rows[lv])} {lv} pairs -> {path}")
    for lv in sorted(mc_levels):
        written[f"{lv}_pairs"] = f"{lv}_pairs.parquet"
    counters["wall_seconds"] = counters.get("wall_seconds", 0) + time.perf_counter() - start
    manifest = {"config": config, "counters": counters, "tables": written, "finished": True, **meta}
    tmp = manifest_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(manifest, indent=1, default=str))
    tmp.replace(manifest_path)
    console.print(f"[green]{len(pairs)} trajectory pairs -> {pair_path}[/green]")
    console.print(f"load with: datasets.load_dataset('parquet', data_files='{pair_path}')"
                  f"  or  pandas.read_parquet('{pair_path}')")
    return 0


if __name__ == "__main__":
    sys.exit(main())
