"""Training configuration: one dataclass, YAML files, ``key=value`` overrides.

Defaults follow the HPL paper: β = 0.3, batch 32, 1 epoch of DPO at lr 3e-6 (1e-6 for the 7B
model), SFT 3 epochs at 1e-5 (``configs/sft.yaml``), AdamW, cosine schedule with warmup.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CONFIG_DIR = Path(__file__).resolve().parent / "configs"


@dataclass
class TrainConfig:
    model: str = ""  # path or hub id of the starting (and reference) model
    data: list[str] = field(default_factory=list)  # hpl-gen output dirs or TRL-style preference Parquet files
    output_dir: str = "runs/hpl"
    env: str | None = None  # for the curriculum's length thresholds; default: the data's env column
    # objective
    bc_weight: float = 1.0
    traj_weight: float = 1.0
    step_weight: float = 1.0
    group_weight: float = 1.0
    bc_source: str = "expert"  # expert | policy-success (RFT) | both
    beta: float = 0.3
    # curriculum over group pairs
    curriculum: str = "hpl"  # hpl | static | length-only | difficulty-only
    phase_boundaries: list[float] = field(default_factory=lambda: [1 / 3, 2 / 3])
    length_thresholds: list[int] | None = None  # default per env: ALFWorld (0,3,6), WebShop/SQL (0,2,4)
    delta_thresholds: list[float] = field(default_factory=lambda: [1.0, 0.7, 0.4])
    # optimisation
    lr: float = 3e-6
    weight_decay: float = 0.0
    warmup_ratio: float = 0.1
    max_grad_norm: float = 1.0
    batch_size: int = 32  # samples of each active loss per optimizer step (all processes together)
    epochs: float = 1.0  # over the largest active dataset
    max_steps: int | None = None
    seed: int = 0
    mixed_precision: str = "no"  # no | bf16 | fp16
    gradient_checkpointing: bool = False
    # efficiency
    packing: bool = True  # padding-free rows of several samples
    share_prefix: bool = True  # chosen and rejected share one forward pass over their common prefix
    max_row_tokens: int = 8192
    micro_batch: int = 4  # rows per forward when packing is off (padded)
    ref_cache_dir: str | None = None  # default: beside the data
    # LoRA (peft); r = 0 trains all weights
    lora_r: int = 0
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    lora_target_modules: str | list[str] = "all-linear"
    # bookkeeping
    save_every: int = 0  # optimizer steps; 0 = only at the end
    resume_from: str | None = None  # a checkpoint dir or "latest"
    report_to: str = "tensorboard"  # tensorboard | none
    log_every: int = 1
    fixed_batch: bool = False  # debug: train on the first batch every step (loss must fall)
    save_model: bool = True

    def validate(self) -> None:
        from hpl_train.curriculum import MODES

        if not self.model:
            raise ValueError("config: 'model' is required (a path or hub id)")
        if not self.data:
            raise ValueError("config: 'data' is required (hpl-gen output dirs or preference Parquet files)")
        if self.curriculum not in MODES:
            raise ValueError(f"config: curriculum must be one of {MODES}, got {self.curriculum!r}")
        if self.bc_source not in ("expert", "policy-success", "both"):
            raise ValueError(f"config: bc_source must be expert, policy-success or both, got {self.bc_source!r}")
        if self.batch_size < 1 or self.max_row_tokens < 16 or self.beta <= 0:
            raise ValueError("config: batch_size >= 1, max_row_tokens >= 16 and beta > 0 are required")
        if len(self.phase_boundaries) != 2 or not 0 <= self.phase_boundaries[0] <= self.phase_boundaries[1] <= 1:
            raise ValueError(f"config: phase_boundaries must be two fractions a <= b in [0, 1], got {self.phase_boundaries}")
        if all(w == 0 for w in (self.bc_weight, self.traj_weight, self.step_weight, self.group_weight)):
            raise ValueError("config: every loss weight is 0")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _coerce(name: str, value: Any, current: Any) -> Any:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            pass
    if name == "data" and isinstance(value, str):
        value = [v for v in value.split(",") if v]
    if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    return value


def _file_values(path: str | Path) -> dict[str, Any]:
    """Options of a YAML config, after those of the config it names as ``base``."""
    import yaml

    p = Path(path)
    if not p.exists() and (CONFIG_DIR / f"{path}.yaml").exists():
        p = CONFIG_DIR / f"{path}.yaml"
    try:
        loaded = yaml.safe_load(p.read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise ValueError(f"config {path}: cannot read ({e})") from e
    if not isinstance(loaded, dict):
        raise ValueError(f"config {path}: expected a mapping of options")
    base = loaded.pop("base", None)
    values = _file_values(base) if base else {}
    values.update(loaded)
    return values


def load_config(path: str | Path | None = None, overrides: list[str] | None = None, **kwargs: Any) -> TrainConfig:
    """A config from a YAML file (a bare name like ``hpl`` means ``hpl_train/configs/hpl.yaml``),
    then ``key=value`` overrides, then keyword arguments."""
    values: dict[str, Any] = _file_values(path) if path else {}
    names = {f.name: f for f in dataclasses.fields(TrainConfig)}
    default = TrainConfig()
    for item in overrides or []:
        if "=" not in item:
            raise ValueError(f"override {item!r}: expected key=value")
        k, v = item.split("=", 1)
        k = k.strip().replace("-", "_")
        if k not in names:
            raise ValueError(f"unknown option {k!r}; options: {', '.join(sorted(names))}")
        values[k] = _coerce(k, v, getattr(default, k))
    values.update({k: v for k, v in kwargs.items() if v is not None})
    unknown = set(values) - set(names)
    if unknown:
        raise ValueError(f"unknown option(s) {sorted(unknown)}; options: {', '.join(sorted(names))}")
    if isinstance(values.get("data"), str):
        values["data"] = [values["data"]]
    cfg = TrainConfig(**values)
    cfg.validate()
    return cfg
