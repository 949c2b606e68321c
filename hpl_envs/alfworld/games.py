"""ALFWorld game files: discovery, splits and task types (no ``traj_data.json`` needed)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from hpl_envs.data import DataMissingError, data_root

TASK_TYPES = ("pick_and_place_simple", "look_at_obj_in_light", "pick_clean_then_place_in_recep",
              "pick_heat_then_place_in_recep", "pick_cool_then_place_in_recep", "pick_two_obj_and_place")
SPLITS = ("train", "valid_seen", "valid_unseen")
# ETO/IPR call valid_seen "dev" (in-distribution) and valid_unseen "test" (out-of-distribution).
SPLIT_ALIASES = {"dev": "valid_seen", "test": "valid_unseen"}


@dataclass(frozen=True)
class Game:
    task_id: str  # "<split>/<task dir>/<trial>"
    path: Path
    split: str
    task_type: str


def task_type_of(task_dir: str) -> str:
    """``pick_clean_then_place_in_recep-Cloth-None-BathtubBasin-413`` -> ``pick_clean_then_place_in_recep``."""
    prefix = task_dir.split("-", 1)[0]
    if prefix not in TASK_TYPES:
        raise ValueError(f"alfworld: unknown task type in folder name {task_dir!r}")
    return prefix


@lru_cache(maxsize=4)
def discover(root: Path | None = None) -> dict[str, list[Game]]:
    base = (root or data_root()) / "alfworld" / "json_2.1.1"
    if not base.exists():
        raise DataMissingError(f"alfworld: no games under {base}.\n  Set HPL_DATA_DIR, or run "
                               "`hpl-data download alfworld` on a machine with internet access.")
    games: dict[str, list[Game]] = {}
    for split in SPLITS:
        found = []
        for path in sorted((base / split).glob("*/*/game.tw-pddl")):
            task_dir, trial = path.parent.parent.name, path.parent.name
            found.append(Game(f"{split}/{task_dir}/{trial}", path, split, task_type_of(task_dir)))
        games[split] = found
    return games
