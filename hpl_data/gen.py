"""Preference-data generation as a pipeline of typed stages (what ``hpl-gen`` runs).

::

    GenConfig ─▶ plan (task ids, expert, manifest)
                  │
                  ├─▶ collect-experts ─▶ trajectories_expert.parquet ─┐
                  ├─▶ collect-policy  ─▶ trajectories_policy.parquet ─┴─▶ traj pairs ─▶ traj_pairs.parquet
                  │
                  └─▶ segment (fixed / uncertainty: entropy / semantic: LLM)
                        └─▶ label (MC rollouts on the engine) ─▶ step_pairs.parquet, group_pairs.parquet
                                                                   └─▶ manifest.json (config, counters)

Every stage writes one shard per finished task (:class:`hpl_data.shards.ShardStore`), so a killed
run resumes where it stopped. The MC stage runs every task's labelling as a coroutine on one
:class:`hpl_data.engine.RolloutEngine`: env steps go to ``workers`` processes, and all rollouts
share one ``concurrency`` budget, so an LLM reference policy (``vllm:`` in-process, ``openai:``)
keeps hundreds of requests in flight. Python users call ``Generation(GenConfig(...)).run()``.
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
import time
from collections import Counter
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from hpl_data import parquet
from hpl_data.conversation import trajectory_rows
from hpl_data.experts import keep_expert
from hpl_data.protocol import compute as compute_protocol
from hpl_data.protocol import describe as describe_protocol
from hpl_data.protocol import differences as protocol_differences
from hpl_data.shards import ShardStore
from hpl_data.storage import Output, is_uri, remove_stale_temp_files
from hpl_envs.registry import canonical, make_env, profile

if TYPE_CHECKING:
    from hpl_data.mc import PairRows

LEVELS = ("traj", "step", "group")
# may differ between a run and its resumption; "out" too: a folder copied or moved elsewhere resumes
RUNTIME_ONLY = ("out", "workers", "concurrency", "overwrite", "progress", "ray", "ray_cpus_per_worker")
# openai: client options that change how requests travel, not what is sampled
TRANSPORT_POLICY_ARGS = ("concurrency", "request_timeout", "call_timeout_s", "max_retries", "backoff_s",
                         "backoff_max_s", "eject_after", "eject_s", "eject_max_s", "api_key")
TABLE_NAMES = ("trajectories_expert", "trajectories_policy", "traj_pairs", "step_pairs", "group_pairs")


class GenError(ValueError):
    """A configuration or input problem, reported in one line (``hpl-gen`` exits with 2)."""


@dataclass(frozen=True)
class GenConfig:
    """Everything that decides what ``hpl-gen`` writes (and a few runtime knobs)."""

    env: str
    out: Path | str  # a folder, or a pyarrow.fs URI (s3://bucket/prefix, file:///...): hpl_data.storage
    policy: str = "heuristic"
    policy_temperature: float = 1.0
    policy_max_tokens: int = 256
    policy_args: dict = field(default_factory=dict)  # chat backend options (vllm: max_model_len, ...)
    max_turns: int | None = None
    env_args: dict = field(default_factory=dict)  # env constructor arguments (--env-arg key=value)
    expert: str = "oracle"
    levels: tuple[str, ...] = LEVELS
    segmenter: str = "fixed-k:3"
    mc_rollouts: int = 3
    mc_adaptive: bool = False
    mc_min_rollouts: int = 2
    mc_confidence: float = 0.8
    mc_curtail: bool = False  # adaptive: also stop a pair once its fixed-M decision is certain
    mc_share_rollouts: bool = True  # chat policies: rollout 0 from an expert state also gives its plays
    entropy_samples: int = 8
    split: str = "train"
    limit: int | None = None
    seed: int = 0
    workers: int = 1
    concurrency: int = 256  # rollouts (and LLM requests) in flight
    ray: str | None = None  # env workers as Ray actors on this cluster ("auto" or an address); None: local
    ray_cpus_per_worker: float = 1.0
    prompts: str = "default"
    overwrite: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "out", self.out if is_uri(self.out) else Path(self.out))
        object.__setattr__(self, "levels", tuple(self.levels))

    @property
    def env_kwargs(self) -> dict:
        return {**self.env_args, **({"max_turns": self.max_turns} if self.max_turns else {})}

    @property
    def mc_levels(self) -> set[str]:
        return {lv for lv in self.levels if lv in ("step", "group")}

    def validate(self) -> tuple[str, float | str | None]:
        """Raise :class:`GenError` for a bad combination; returns the parsed segmenter."""
        from hpl_data.policies import check_model_available, check_policy_options
        from hpl_data.policies import parse_spec as parse_policy
        from hpl_data.segmenters import parse_spec

        unknown = [lv for lv in self.levels if lv not in LEVELS]
        if unknown or not self.levels:
            raise GenError(f"unknown levels {unknown}; use traj, step, group")
        try:
            seg = parse_spec(self.segmenter)
            if seg[0] == "semantic" and parse_policy(str(seg[1])).is_agent:
                raise GenError(f"segmenter semantic needs an LLM policy (vllm:, openai:, hf:), got {seg[1]!r}")
            check_model_available(parse_policy(self.policy))
            check_policy_options(self.policy, self.policy_args)  # before any episode, not when the policy is built
            if seg[0] == "semantic":
                check_model_available(parse_policy(str(seg[1])))
            if self.expert.startswith("teacher:"):
                check_model_available(parse_policy(self.expert[len("teacher:"):]))
        except GenError:
            raise
        except ValueError as e:
            raise GenError(str(e)) from e
        if self.mc_rollouts < 1:
            raise GenError("--mc-rollouts must be >= 1")
        if not 0 < self.mc_confidence < 1 or self.mc_min_rollouts < 1:
            raise GenError("--mc-confidence must be in (0, 1) and --mc-min-rollouts >= 1")
        if self.mc_curtail and not self.mc_adaptive:
            raise GenError("--mc-curtail is a stopping rule of adaptive MC; add --mc-adaptive")
        if self.workers < 1 or self.concurrency < 1:
            raise GenError("--workers and --concurrency must be >= 1")
        if self.ray is not None:
            from hpl_data.workers.ray import RayUnavailableError, require_ray

            try:
                require_ray()
            except RayUnavailableError as e:
                raise GenError(str(e)) from e
        return seg

    def as_dict(self) -> dict:
        return {f.name: (str(v) if isinstance(v, Path) else list(v) if isinstance(v, tuple) else v)
                for f in fields(self) for v in [getattr(self, f.name)]}


def data_identity(config: dict) -> dict:
    """What must be equal for a run to resume another: its config without the runtime settings,
    the transport options, and the address of an OpenAI-compatible server that names its model
    (``openai:URL#model`` -> ``openai:#model``: a restarted server on another port serves the same
    data). Keys a config written by an older release lacks take their defaults."""
    defaults = {f.name: list(f.default) if isinstance(f.default, tuple) else f.default
                for f in fields(GenConfig) if f.default is not MISSING}
    d = {k: v for k, v in {**defaults, **config}.items() if k not in RUNTIME_ONLY}
    d = {k: re.sub(r"openai:[^#\s]+#", "openai:#", v) if isinstance(v, str) else v for k, v in d.items()}
    d["policy_args"] = {k: v for k, v in (d.get("policy_args") or {}).items() if k not in TRANSPORT_POLICY_ARGS}
    return d


def run_metadata(config: GenConfig) -> dict:
    """What goes into manifest.json and every table's Parquet metadata (add provenance here)."""
    return {"config": config.as_dict(), "versions": parquet.versions(), "git_revision": parquet.git_revision(),
            "curriculum": profile(config.env).curriculum()}


def resolve_expert(expert: str) -> tuple[str, str]:
    """(kind, spec): builtin (an agent name), file (``file:PATH``) or teacher (a chat policy spec)."""
    from hpl_data.policies import BUILTIN_AGENTS
    from hpl_data.policies import parse_spec as parse_policy

    if expert.startswith("teacher:"):
        spec = expert[len("teacher:"):]
        if parse_policy(spec).is_agent:
            raise GenError(f"--expert teacher: needs an LLM policy (vllm:, openai:, hf:), got {spec!r}")
        return "teacher", spec
    if expert.startswith("file:") or Path(expert).exists():
        path = expert[5:] if expert.startswith("file:") else expert
        if not Path(path).exists():
            raise GenError(f"--expert {expert}: no such file")
        return "file", f"file:{Path(path).resolve()}"
    if expert in BUILTIN_AGENTS or ":" in expert:
        return "builtin", expert
    raise GenError(f"--expert {expert!r}: use oracle, file:PATH or teacher:POLICY")


def traj_pairs(expert: list[dict], policy: list[dict], expert_id: str, policy_id: str) -> list[dict]:
    """ETO pairs: the expert's trajectory over the policy's, where the policy did worse."""
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


@dataclass
class GenResult:
    out: Path
    tables: dict[str, str]
    counters: dict[str, Any]


@dataclass(frozen=True)
class Plan:
    """What a run works on: its task ids (validated against the env's data and the expert) and the
    expert, as :func:`resolve_expert` gives it (kind builtin | file | teacher, and its spec)."""

    task_ids: list[str]
    expert_kind: str
    expert_spec: str


@dataclass(frozen=True)
class Segmentation:
    """What the segment stage decided: groups per task (semantic), or the policy's entropy at every
    expert state and the threshold over them (uncertainty); fixed segmenters need neither."""

    groups: dict[str, list[tuple[int, int]]] = field(default_factory=dict)
    entropies: dict[str, list[float]] = field(default_factory=dict)
    threshold: float | None = None

    def groups_of(self, segmenter: tuple[str, float | str | None], task_id: str,
                  length: int) -> list[tuple[int, int]]:
        """The groups of a task whose expert took ``length`` actions."""
        from hpl_data.mc import segment

        kind, arg = segmenter
        if kind == "semantic":  # groups came from the LLM (validated, or Fixed-K after a counted fallback)
            given = self.groups.get(task_id)
            return given if given and given[-1][1] == length else segment("fixed-k", 3, length, None, None)
        return segment(kind, arg, length, self.entropies.get(task_id), self.threshold)


class Generation:
    """The stages of one ``hpl-gen`` run, sharing the config, the counters and (for an LLM
    reference policy) one chat policy, so an in-process vLLM engine is built once.

    Each stage takes what it uses and returns what the next one needs: :meth:`plan` gives a
    :class:`Plan`, :meth:`collect` a trajectories table's rows, :meth:`segment_stage` a
    :class:`Segmentation`, :meth:`label_stage` the :class:`~hpl_data.mc.PairRows` of the MC tables.
    """

    def __init__(self, config: GenConfig, console: Console | None = None) -> None:
        self.config = config
        self.console = console or Console(stderr=True, soft_wrap=True)
        self.segmenter = config.validate()
        self.env_name = canonical(config.env)
        self.profile = profile(self.env_name)
        self.counters: dict[str, Any] = {}
        self.meta = run_metadata(config)
        self.output = Output(config.out)
        self._policy = None  # the shared chat policy, built on the run's event loop
        self._engine = None  # the MC stages' engine (entropy, label): env workers started once

    # ------------------------------------------------------------------ plan
    def plan(self) -> Plan:
        """Task ids (validated against the env's data and the expert) and the manifest."""
        c = self.config
        task_ids = make_env(self.env_name, **c.env_kwargs).task_ids(c.split)
        expert_kind, expert_spec = resolve_expert(c.expert)
        if expert_kind == "file":
            from hpl_data.experts import load_expert_file

            recorded = load_expert_file(expert_spec[5:], self.profile.multiline_actions)
            task_ids = [t for t in task_ids if t in recorded]
            if not task_ids:
                raise GenError(f"{expert_spec[5:]} has no trajectory for any {c.split} task of {self.env_name}")
        task_ids = task_ids[: c.limit] if c.limit is not None else task_ids
        self.meta["protocol"] = compute_protocol(self.env_name, c.env_kwargs, c.split, task_ids)
        self._open_manifest()
        return Plan(task_ids, expert_kind, expert_spec)

    def _open_manifest(self) -> None:
        c, out = self.config, self.output
        out.makedirs()
        if out.local is not None:  # the manifest's or a table's, left by a writer that was killed
            remove_stale_temp_files(out.local, ".*.tmp")
        manifest = out.read_json("manifest.json") if out.exists("manifest.json") and not c.overwrite else {}

        if manifest.get("config") is not None and data_identity(manifest["config"]) != data_identity(self.meta["config"]):
            raise GenError("--out holds data from a different config; use --overwrite or another --out")
        changed = protocol_differences(manifest.get("protocol"), self.meta["protocol"]) if manifest.get("protocol") else []
        if changed and not c.overwrite:  # same flags, other data files/versions: shards would mix protocols
            raise GenError(f"--out was written under another protocol ({describe_protocol(changed)}); "
                           "use --overwrite or another --out")
        if c.overwrite:
            out.remove(".shards")
            for name in out.names():
                if name.endswith(".parquet"):
                    out.remove(name)
        self.counters.clear()
        self.counters.update(manifest.get("counters", {}))
        if not manifest:  # record the config first, so a killed run is resumed only with the same one
            self._write_manifest({"config": self.meta["config"], "finished": False, **self.meta})

    def shards(self, stage: str) -> ShardStore:
        """The shard store of a stage; a damaged shard it finds is named on the console, in one line."""
        return ShardStore(self.output, stage, warn=lambda msg: self.console.print(
            f"hpl-gen: {msg}", style="yellow", markup=False, highlight=False))

    def _write_manifest(self, manifest: dict) -> None:
        self.output.write_text("manifest.json", json.dumps(manifest, indent=1, default=str))

    def write_table(self, rows: list[dict], schema, name: str) -> str:
        """One final table, written whole to the output (local folder or URI); its address."""
        self.output.write_table(name, parquet.build_table(rows, schema, {**self.meta, "counters": self.counters}))
        return self.output.uri(name)

    def progress(self) -> Progress:
        return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        TimeRemainingColumn(), console=self.console, disable=not self.config.progress,
                        transient=False)

    # ------------------------------------------------------------------ run
    def run(self) -> GenResult:
        return asyncio.run(self.run_async())

    async def run_async(self) -> GenResult:
        c = self.config
        plan = self.plan()
        start = time.perf_counter()
        try:
            expert_rows = await self.collect("expert", plan.task_ids, plan.expert_spec)
            policy_rows = await self.collect("policy", plan.task_ids, c.policy)
            written = self.traj_stage(expert_rows, policy_rows)
            levels = c.mc_levels
            retry_failed = self.counters.get("mc_failed_tasks", 0) > 0  # tables written without those tasks' pairs
            if levels and (retry_failed or not all(self.output.exists(f"{lv}_pairs.parquet") for lv in levels)):
                kept = {r["task_id"] for r in expert_rows if not r["error"] and keep_expert(self.env_name, r["reward"])}
                mc_tasks = [t for t in plan.task_ids if t in kept]
                expert = self.mc_expert(plan)
                segmentation = await self.segment_stage(mc_tasks, expert_rows, expert)
                rows = await self.label_stage(mc_tasks, segmentation, expert)
                for lv in sorted(levels):
                    table = rows.step if lv == "step" else rows.group
                    path = self.write_table(table, parquet.MC_PAIRS, f"{lv}_pairs.parquet")
                    self.console.print(f"{len(table)} {lv} pairs -> {path}")
            written.update({f"{lv}_pairs": f"{lv}_pairs.parquet" for lv in sorted(levels)})
        finally:
            if self._engine is not None:
                await self._engine.close()
            if self._policy is not None:
                await self._policy.close()
        self.counters["wall_seconds"] = self.counters.get("wall_seconds", 0) + time.perf_counter() - start
        self._write_manifest({"config": self.meta["config"], "counters": self.counters, "tables": written,
                              "finished": True, **{k: v for k, v in self.meta.items() if k != "config"}})
        return GenResult(c.out, written, self.counters)

    def chat_policy(self):
        """The reference policy as one chat policy object (None for an agent)."""
        from hpl_data.policies import make_chat_policy, parse_spec

        if parse_spec(self.config.policy).is_agent:
            return None
        if self._policy is None:
            options = dict(self.config.policy_args)
            if parse_spec(self.config.policy).kind == "openai":  # one request per rollout in flight
                options.setdefault("concurrency", self.config.concurrency)
            self._policy = make_chat_policy(self.config.policy, **options)
        return self._policy

    # ------------------------------------------------------------------ stages
    async def collect(self, role: str, task_ids: list[str], spec: str) -> list[dict]:
        """collect-experts / collect-policy: one episode per task (``spec`` plays it), as a
        trajectories table."""
        c = self.config
        name = f"trajectories_{role}.parquet"
        if self.output.exists(name):
            self.console.print(f"reusing {self.output.uri(name)}")
            return self.output.read_table(name).to_pylist()
        t0 = time.perf_counter()
        store = self.shards(f"trajectories_{role}")
        todo = store.pending(task_ids)
        if len(todo) < len(task_ids):
            self.console.print(f"{role}: resuming, {len(task_ids) - len(todo)} of {len(task_ids)} tasks already done")
        with self.progress() as bar:
            job = bar.add_task(f"collect {role} episodes", total=len(todo))

            def save(episode: dict) -> None:
                store.put(episode["task_id"], {"rows": trajectory_rows(self.env_name, c.split, role, [episode],
                                                                       c.prompts),
                                               "env_steps": len(episode["steps"]), "failed": bool(episode["error"])})
                bar.advance(job)

            if todo:
                await self._episodes(role, spec, todo, save)
        shards = [store.get(t) for t in task_ids]
        rows = [r for sh in shards for r in sh["rows"]]
        self.counters[f"{role}_env_steps"] = sum(sh["env_steps"] for sh in shards)
        self.counters[f"{role}_episodes"] = len(rows)
        self.counters[f"{role}_failed"] = sum(sh["failed"] for sh in shards)
        self.counters[f"{role}_seconds"] = time.perf_counter() - t0
        path = self.write_table(rows, parquet.TRAJECTORIES, name)
        self.console.print(f"{role}: {len(rows)} episodes, avg reward "
                           f"{sum(r['reward'] for r in rows) / max(len(rows), 1):.3f} -> {path}")
        return rows

    async def _episodes(self, role: str, spec: str, task_ids: list[str], on_episode) -> None:
        """One episode per task on a rollout engine (agent or chat policy, local or Ray workers);
        agent episodes are recorded as the trajectory tables always had them (the agent's name, no
        stop reason)."""
        from hpl_data.engine import EngineConfig, RolloutEngine
        from hpl_data.policies import SamplingParams, parse_spec

        c = self.config
        is_agent = parse_spec(spec).is_agent
        temp = c.policy_temperature if role == "policy" else 0.0
        # an agent's episodes are CPU-bound: two per worker keep the workers busy
        cfg = EngineConfig(workers=c.workers, seed=c.seed, prompts=c.prompts,
                           concurrency=min(c.concurrency, 2 * c.workers) if is_agent else c.concurrency,
                           sampling=SamplingParams(temperature=temp, max_tokens=c.policy_max_tokens),
                           ray=c.ray, ray_cpus_per_worker=c.ray_cpus_per_worker,
                           # agents fork, as the local runner's process pool did; a chat policy's workers spawn
                           start_method=self._start_method(spec) if is_agent else "spawn",
                           release_agent_records=True)
        policy = self.chat_policy() if role == "policy" and not is_agent else spec  # a teacher: its own
        async with RolloutEngine(self.env_name, policy, env_kwargs=c.env_kwargs, config=cfg) as eng:
            await eng.run(task_ids, on_episode)
            self._add_engine_counters(eng.counters, f"{role}_")
            self.counters[f"{role}_episode_restarts"] = (self.counters.get(f"{role}_episode_restarts", 0)
                                                         + eng.counters.episode_restarts)

    def _start_method(self, *specs: str, torch_loaded: bool | None = None) -> str:
        """Env workers fork (sharing the env data this process already loaded), never next to a
        model: the run's policy or one of ``specs`` in this process, or (MC stages) torch loaded."""
        from hpl_data.policies import parse_spec

        in_process = any(parse_spec(sp).kind in ("vllm", "hf") for sp in (self.config.policy, *specs))
        return "spawn" if in_process or torch_loaded else "fork"

    def traj_stage(self, expert_rows: list[dict], policy_rows: list[dict]) -> dict[str, str]:
        c = self.config
        kept = [r for r in expert_rows if not r["error"] and keep_expert(self.env_name, r["reward"])]
        self.counters["expert_kept"], self.counters["expert_filtered"] = len(kept), len(expert_rows) - len(kept)
        pairs = traj_pairs(kept, policy_rows, c.expert, c.policy)
        self.counters["traj_pairs"] = len(pairs)
        path = self.write_table(pairs, parquet.TRAJ_PAIRS, "traj_pairs.parquet")
        self.console.print(f"[green]{len(pairs)} trajectory pairs -> {path}[/green]")
        return {"trajectories_expert": "trajectories_expert.parquet",
                "trajectories_policy": "trajectories_policy.parquet", "traj_pairs": "traj_pairs.parquet"}

    async def segment_stage(self, task_ids: list[str], expert_rows: list[dict], expert: str) -> Segmentation:
        """Group boundaries per task: fixed ones are computed at labelling; the uncertainty
        segmenter needs the policy's entropy at every expert state (``expert`` replays them), the
        semantic one an LLM."""
        kind, arg = self.segmenter
        if kind == "semantic" and "group" in self.config.mc_levels:
            groups = await self.semantic_stage(task_ids, expert_rows, str(arg))
            self.console.print(f"semantic segmenter: {self.counters['semantic_calls']} trajectories, "
                               f"{self.counters['semantic_fallbacks']} fell back to Fixed-K:3")
            return Segmentation(groups=groups)
        if kind != "uncertainty":
            return Segmentation()
        from hpl_data.mc import expert_entropies
        from hpl_data.segmenters import percentile

        store = self.shards("entropy")

        async def entropies_of_task(lab, t: str) -> None:
            store.put(t, {"entropies": await expert_entropies(lab, expert, t, self.config.entropy_samples)})

        await self._on_engine("entropy of policy actions", store.pending(task_ids), entropies_of_task)
        entropies = {t: store.get(t)["entropies"] for t in task_ids}
        threshold = percentile([h for t in task_ids for h in entropies[t]], arg if arg is not None else 80.0)
        self.counters["uncertainty_threshold"] = threshold
        return Segmentation(entropies=entropies, threshold=threshold)

    async def semantic_stage(self, task_ids: list[str], expert_rows: list[dict],
                             spec: str) -> dict[str, list[tuple[int, int]]]:
        """Groups of every expert trajectory from an LLM (all requests in flight together), sharded."""
        from hpl_data.policies import make_chat_policy
        from hpl_data.segmenters import semantic_groups

        store = self.shards("semantic")
        by_task = {r["task_id"]: r for r in expert_rows if not r["error"] and r["actions"]}
        todo = [t for t in store.pending(task_ids) if t in by_task]
        if todo:
            policy = make_chat_policy(spec)
            try:
                async def groups_of_task(t: str) -> None:
                    r = by_task[t]
                    groups, fell_back = await semantic_groups(policy, r["instruction"], r["actions"],
                                                              r["observations"][1:])
                    store.put(t, {"groups": groups, "fallback": fell_back})
                await asyncio.gather(*(groups_of_task(t) for t in todo))
            finally:
                await policy.close()
        shards = {t: store.get(t) for t in task_ids if t in by_task}
        self.counters["semantic_calls"] = len(shards)
        self.counters["semantic_fallbacks"] = sum(sh["fallback"] for sh in shards.values())
        return {t: [tuple(g) for g in sh["groups"]] for t, sh in shards.items()}

    def mc_expert(self, plan: Plan) -> str:
        """MC labelling replays the kept expert trajectories (exact: the envs are deterministic)."""
        if plan.expert_kind == "builtin":
            return plan.expert_spec
        return f"file:{self.output.uri('trajectories_expert.parquet')}"

    async def label_stage(self, task_ids: list[str], segmentation: Segmentation, expert: str) -> PairRows:
        """Monte-Carlo labelled step/group pairs, every task a coroutine on one engine (``expert``
        replays each task's expert trajectory)."""
        from hpl_data.mc import PairRows, TaskPlan

        c = self.config
        store = self.shards("mc_" + "_".join(sorted(c.mc_levels)))
        failed: dict[str, str] = {}

        async def label_task(lab, t: str) -> None:
            ex = await lab.expert_pass(expert, t)
            n = len(ex["steps"])
            task = TaskPlan(lab, c.split, ex, expert=c.expert, levels=c.mc_levels,
                            groups=segmentation.groups_of(self.segmenter, t, n), segmenter=c.segmenter)
            pairs = await task.pairs()
            lab.counters["expert_env_steps_mc"] += n
            store.put(t, {"step": pairs.step, "group": pairs.group, "counters": dict(lab.counters)})

        t0 = time.perf_counter()
        engine_counters = await self._on_engine("label (MC rollouts)", store.pending(task_ids), label_task, failed)
        self.counters["mc_failed_tasks"] = len(failed)
        if failed:
            first = next(iter(failed.items()))
            self.console.print(f"[yellow]hpl-gen: MC labelling failed for {len(failed)} task(s), e.g. {first[0]}: "
                               f"{first[1][:300]} (rerun with the same --out to retry them)[/yellow]")
        rows = PairRows([], [])
        totals: Counter = Counter()
        for t in task_ids:
            if t in failed:
                continue
            sh = store.get(t)
            rows.step += sh["step"]
            rows.group += sh["group"]
            totals.update(sh["counters"])
        self.counters.update(totals)  # summed over every task's shard, this run's and earlier runs'
        if engine_counters is not None:
            self._add_engine_counters(engine_counters, "mc_")
        self.counters["mc_seconds"] = time.perf_counter() - t0
        return rows

    # ------------------------------------------------------------------ the engine under the MC stages
    async def _on_engine(self, title: str, todo: list[str], work, failed: dict | None = None):
        """Run ``work(labeler, task_id)`` for every task on one engine; the rollouts of all tasks
        in flight share ``concurrency``. Returns the engine's counters."""
        if not todo:
            return None
        from hpl_data.mc import TaskLabeler

        eng = await self._mc_engine()
        settings = self._mc_settings()
        slots = asyncio.Semaphore(self.config.concurrency)
        gate = asyncio.Semaphore(self._tasks_in_flight())
        live: Counter = Counter()  # run-wide rollouts done / in flight, for the bar
        wall0 = eng.counters.wall_s
        t_start = time.perf_counter()
        with self.progress() as bar:
            job = bar.add_task(title, total=len(todo))

            def describe() -> str:
                k, secs = eng.counters, max(time.perf_counter() - t_start, 1e-9)
                text = f"{title} | rollouts {live['rollouts_done']} done, {live['rollouts_in_flight']} in flight"
                if k.llm_calls:
                    text += f" | LLM calls {k.llm_calls} ({k.llm_calls / secs:.1f}/s, {k.inflight} in flight)"
                return text

            async def refresh() -> None:  # few long tasks: the bar must move between task completions
                while True:
                    await asyncio.sleep(0.5)
                    bar.update(job, description=describe())

            async def task_on_engine(t: str) -> None:
                async with gate:
                    await self._with_retries(lambda: TaskLabeler(eng, settings, slots, Counter(), live), work, t,
                                             eng.config.max_restarts, failed)
                bar.update(job, advance=1, description=describe())

            ticker = asyncio.ensure_future(refresh()) if self.config.progress else None
            try:
                await asyncio.gather(*(task_on_engine(t) for t in todo))
            finally:
                if ticker is not None:
                    ticker.cancel()
        eng.counters.wall_s = wall0 + time.perf_counter() - t_start
        return eng.counters

    async def _with_retries(self, labeler, work, task_id: str, max_restarts: int, failed: dict | None) -> None:
        """``work(labeler(), task_id)``, again with a new labeler after a worker death (the task's
        expert snapshots died with it); a failure is recorded in ``failed`` (None: raised)."""
        from hpl_data.engine import WorkerDied

        for attempt in range(1 + max_restarts):
            lab = labeler()
            try:
                await work(lab, task_id)
                return
            except WorkerDied:  # its worker (or node) died, and its expert snapshots with it: label it again
                if attempt == max_restarts:
                    if failed is None:
                        raise
                    failed[task_id] = f"WorkerDied {attempt + 1} times"
                else:
                    self.counters["mc_task_retries"] = self.counters.get("mc_task_retries", 0) + 1
            except Exception as e:  # noqa: BLE001 - recorded and counted; a rerun retries the task
                if failed is None:
                    raise
                failed[task_id] = f"{type(e).__name__}: {e}"
                return
            finally:
                await lab.close()

    def _mc_settings(self):
        from hpl_data.mc import MCSettings

        c = self.config
        return MCSettings(policy=c.policy, rollouts=c.mc_rollouts, seed=c.seed, adaptive=c.mc_adaptive,
                          min_rollouts=c.mc_min_rollouts, confidence=c.mc_confidence,
                          outcome_range=self.profile.outcome_range(c.env_kwargs),
                          outcome_low=self.profile.outcome_bounds(c.env_kwargs)[0], curtail=c.mc_curtail,
                          share_rollouts=c.mc_share_rollouts, prompts=c.prompts,
                          temperature=c.policy_temperature, max_tokens=c.policy_max_tokens)

    def _tasks_in_flight(self) -> int:
        """Enough tasks to fill ``concurrency`` with an LLM policy; an agent's rollouts are
        CPU-bound, two tasks per worker keep the workers busy."""
        from hpl_data.policies import parse_spec

        c = self.config
        return 2 * c.workers if parse_spec(c.policy).is_agent else max(2 * c.workers, c.concurrency // c.mc_rollouts)

    async def _mc_engine(self):
        """The MC stages' engine (entropy, label), started once."""
        from hpl_data.engine import EngineConfig, RolloutEngine

        c = self.config
        if self._engine is None:
            cfg = EngineConfig(concurrency=self._tasks_in_flight(), workers=c.workers, seed=c.seed, prompts=c.prompts,
                               start_method=self._start_method(torch_loaded="torch" in sys.modules), ray=c.ray,
                               ray_cpus_per_worker=c.ray_cpus_per_worker)
            self._engine = RolloutEngine(self.env_name, self.chat_policy() or c.policy, env_kwargs=c.env_kwargs,
                                         config=cfg)
            await self._engine.start()
        return self._engine

    def _add_engine_counters(self, k, prefix: str) -> None:
        d = k.as_dict()
        for name in ("llm_calls", "llm_errors", "prompt_tokens", "completion_tokens", "worker_restarts"):
            self.counters[prefix + name] = self.counters.get(prefix + name, 0) + d[name]
        self.counters[prefix + "llm_peak_in_flight"] = max(self.counters.get(prefix + "llm_peak_in_flight", 0),
                                                           d["peak_inflight"])
        self.counters[prefix + "outside_llm_fraction"] = d["outside_llm_fraction"]
        self.counters[prefix + "llm_mean_in_flight"] = d["mean_inflight"]
        self.counters[prefix + "llm_calls_per_s"] = d["llm_calls"] / d["wall_s"] if d["wall_s"] else None
        for url, stats in (d.get("llm_endpoints") or {}).items():  # openai: calls, errors, ejections per server
            mine = self.counters.setdefault(prefix + "llm_endpoints", {}).setdefault(url, {})
            for k, v in stats.items():
                mine[k] = mine.get(k, 0) + v


def generate(**kwargs: Any) -> GenResult:
    """``generate(env="webshop", out="data/ws", limit=20)``: the whole pipeline from Python."""
    return Generation(GenConfig(**kwargs)).run()

