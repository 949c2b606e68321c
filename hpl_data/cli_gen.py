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
the end. ``--overwrite`` starts over. The stages live in :mod:`hpl_data.gen`.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import fields
from pathlib import Path

from rich.console import Console

from hpl_data.cli_common import (
    CliParser,
    add_ray_flags,
    check_output,
    check_ray,
    concurrency,
    out_location,
    positive_int,
    run_cli,
    worker_count,
)
from hpl_data.cli_eval import parse_kv
from hpl_data.gen import GenConfig, Generation, GenError
from hpl_data.policies import PolicyArgumentError, PolicyError
from hpl_envs.core import EnvUnavailableError
from hpl_envs.data import DataCorruptError, DataMissingError
from hpl_envs.registry import EnvArgumentError

# Expected failures (a bad flag value or env/policy argument, missing data, an unreachable server):
# one line, exit 2. Anything else (a TypeError included) is a bug: "internal error", exit 1.
KNOWN_ERRORS = (GenError, EnvArgumentError, PolicyArgumentError, DataMissingError, DataCorruptError,
                EnvUnavailableError, PolicyError)


def build_parser() -> argparse.ArgumentParser:
    p = CliParser(prog="hpl-gen", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--env", required=True)
    p.add_argument("--env-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="env constructor argument (JSON value), repeatable, e.g. split_mode=product, "
                        "backend=\"local\", server=\"mysql://u:p@127.0.0.1:3306\"")
    p.add_argument("--policy", default="heuristic",
                   help="reference policy: heuristic | random | package.module:factory | vllm:MODEL (in-process) | "
                        "openai:URL[,URL2...][#model] | openai:@FILE[#model] | hf:MODEL")
    p.add_argument("--policy-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="chat backend option (JSON value), e.g. max_model_len=4096, concurrency=256")
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
    p.add_argument("--mc-curtail", action="store_true",
                   help="adaptive: also stop a pair once no remaining rollout can change whether ΔR > 0 at M")
    p.add_argument("--no-mc-share-rollouts", dest="mc_share_rollouts", action="store_false",
                   help="LLM policies: draw step alternatives and group plays separately (IPR style) instead of "
                        "taking them from rollout 0 of the expert state's value")
    p.add_argument("--entropy-samples", type=int, default=8,
                   help="policy samples per state to estimate action entropy (uncertainty segmenter)")
    p.add_argument("--split", default="train")
    p.add_argument("--limit", type=positive_int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=worker_count, default=1, help="env worker processes (Ray actors with --ray)")
    add_ray_flags(p)
    p.add_argument("--concurrency", type=concurrency, default=256, help="MC rollouts (LLM requests) in flight")
    p.add_argument("--prompts", default="default", choices=["default", "ipr", "eto"])
    p.add_argument("--out", type=out_location, required=True,
                   help="a folder (local or NFS) or a pyarrow.fs URI: s3://bucket/prefix, file:///path, gs://...")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    return p


def config_from_args(args: argparse.Namespace) -> GenConfig:
    """Flags named like a :class:`GenConfig` field pass through; the rest are parsed here."""
    parsed = dict(policy_args=parse_kv(args.policy_arg, "--policy-arg"), env_args=parse_kv(args.env_arg),
                  levels=tuple(lv.strip() for lv in args.levels.split(",") if lv.strip()))
    same = {f.name: getattr(args, f.name) for f in fields(GenConfig) if f.name not in parsed and hasattr(args, f.name)}
    return GenConfig(**same, **parsed)


def main(argv: list[str] | None = None) -> int:
    return run_cli("hpl-gen", _main, argv, expected=KNOWN_ERRORS)


def _main(argv: list[str]) -> int:
    from hpl_data.storage import Output

    args = build_parser().parse_args(argv)
    check_ray(args)
    if isinstance(args.out, Path):
        check_output(args.out, "dir")
    console = Console(stderr=True, soft_wrap=True)
    result = Generation(config_from_args(args), console).run()
    pairs = Output(result.out).uri("traj_pairs.parquet")
    console.print(f"load with: datasets.load_dataset('parquet', data_files='{pairs}')  or  pandas.read_parquet('{pairs}')")
    failed = result.counters.get("mc_failed_tasks", 0)
    if failed:  # the tables lack those tasks' pairs: a script must not take this run for a complete one
        print(f"hpl-gen: MC labelling failed for {failed} task(s); the tables lack their pairs; "
              "rerun the same command to retry them", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
