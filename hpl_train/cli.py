"""``hpl-train``: train a policy on hpl-gen data with BC + trajectory/step/group DPO.

    hpl-train --config hpl model=/models/qwen data=out/webshop output_dir=runs/hpl-webshop
    accelerate launch --config_file hpl_train/accelerate/zero3.yaml -m hpl_train --config hpl ...

``--config`` takes a YAML file or a shipped name (sft, rft, eto, ipr, hpl, hpl_wo_group, ...);
``key=value`` arguments override it (JSON values: lr=1e-6, phase_boundaries=[0.2,0.5]).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from hpl_data.cli_common import CliError, CliParser, check_output, run_cli
from hpl_train.config import CONFIG_DIR, ConfigError, load_config

TRAIN_EXTRAS = {"torch", "transformers", "accelerate", "peft", "tensorboard", "yaml"}  # pyproject's train extra


def main(argv: list[str] | None = None) -> int:
    return run_cli("hpl-train", _main, argv, expected=(ConfigError,))


def build_parser() -> argparse.ArgumentParser:
    """The ``hpl-train`` parser (also read by the docs' CLI reference)."""
    p = CliParser(prog="hpl-train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=None, help=f"YAML file or one of: {', '.join(sorted(f.stem for f in CONFIG_DIR.glob('*.yaml')))}")
    p.add_argument("--model", default=None)
    p.add_argument("--data", default=None, help="comma-separated hpl-gen dirs or Parquet files")
    p.add_argument("--eval-data", default=None,
                   help="comma-separated held-out hpl-gen dirs or Parquet files (default: eval_fraction of the tasks)")
    p.add_argument("--output-dir", default=None)
    p.add_argument("--resume", default=None, help="a checkpoint dir or 'latest'")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    return p


def _main(argv: list[str]) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    cfg = load_config(args.config, args.overrides, model=args.model,
                      data=args.data.split(",") if args.data else None,
                      eval_data=args.eval_data.split(",") if args.eval_data else None, output_dir=args.output_dir,
                      resume_from=args.resume)
    check_output(Path(cfg.output_dir), "dir", "output_dir")
    try:
        from hpl_train.data import check_tables
        check_tables(cfg.data + cfg.eval_data)  # before a model is loaded: bad data fails in a second, not minutes
        from hpl_train.recipe import train
    except ModuleNotFoundError as e:  # a missing extra is the user's to install; any other ImportError is a bug
        if (e.name or "").partition(".")[0] not in TRAIN_EXTRAS:
            raise
        raise CliError(f"needs the training extras: pip install 'hpl[train]' ({e})") from e
    history = train(cfg)
    if history:
        print(f"done: {len(history)} steps, final loss {history[-1]['loss']:.4f}; outputs in {cfg.output_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
