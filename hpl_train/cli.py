"""``hpl-train``: not built yet. The trainer (BC + trajectory/step/group DPO with the curriculum)
is tracked as its own issue; until it lands this command says so and exits non-zero."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    print("hpl-train: the trainer is not implemented in this release; the datasets written by "
          "`hpl-gen` (traj_pairs.parquet) load in TRL's DPOTrainer meanwhile.", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
