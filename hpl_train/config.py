"""Training configuration: one dataclass, YAML files, ``key=value`` overrides.

Defaults follow the HPL paper: β = 0.3, batch 32, 1 epoch of DPO at lr 3e-6 (1e-6 for the 7B
model), SFT 3 epochs at 1e-5 (``configs/sft.yaml``), AdamW, cosine schedule with warmup.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hpl_train.curriculum import DELTA_THRESHOLDS


class ConfigError(ValueError):
    """A bad training configuration (a YAML file, a key=value override, a value out of range):
    ``hpl-train`` reports it in one line and exits with 2."""


CONFIG_DIR = Path(__file__).resolve().parent / "configs"


@dataclass
class TrainConfig:
    model: str = ""  # path or hub id of the starting (and reference) model
    data: list[str] = field(default_factory=list)  # hpl-gen output dirs or TRL-style preference Parquet files
    output_dir: str = "runs/hpl"
    env: str | None = None  # the data's env, for the record; default: the data's env column
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
    # None: hpl-gen's length_bucket column, else the thresholds its table records (its env profile's);
    # pairs of other origin need them set here, e.g. [0, 2, 4]
    length_thresholds: list[int] | None = None
    delta_thresholds: list[float] = field(default_factory=lambda: list(DELTA_THRESHOLDS))
    # held-out evaluation (hpl_train.evaluate): tasks split off the data, or a separate hpl-gen output
    eval_fraction: float = 0.1  # share of the data's tasks held out (0: none); ignored with eval_data
    eval_data: list[str] = field(default_factory=list)  # held-out hpl-gen dirs or Parquet files
    eval_every: int = 0  # optimizer steps between evaluations; 0: only at step 0 and at the end
    eval_levels: list[str] = field(default_factory=lambda: ["traj", "step", "group"])  # held-out pair levels scored
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
            raise ConfigError("config: 'model' is required (a path or hub id)")
        if not self.data:
            raise ConfigError("config: 'data' is required (hpl-gen output dirs or preference Parquet files)")
        if self.curriculum not in MODES:
            raise ConfigError(f"config: curriculum must be one of {MODES}, got {self.curriculum!r}")
        if self.bc_source not in ("expert", "policy-success", "both"):
            raise ConfigError(f"config: bc_source must be expert, policy-success or both, got {self.bc_source!r}")
        if self.batch_size < 1 or self.max_row_tokens < 16 or self.beta <= 0:
            raise ConfigError("config: batch_size >= 1, max_row_tokens >= 16 and beta > 0 are required")
        if len(self.phase_boundaries) != 2 or not 0 <= self.phase_boundaries[0] <= self.phase_boundaries[1] <= 1:
            raise ConfigError(f"config: phase_boundaries must be two fractions a <= b in [0, 1], got {self.phase_boundaries}")
        if not 0 <= self.eval_fraction < 1 or self.eval_every < 0:
            raise ConfigError(f"config: eval_fraction must be in [0, 1) and eval_every >= 0, got "
                             f"{self.eval_fraction} and {self.eval_every}")
        if not set(self.eval_levels) <= {"traj", "step", "group"}:
            raise ConfigError(f"config: eval_levels must be a subset of traj, step, group, got {self.eval_levels}")
        if self.length_thresholds is not None and not _cuts(self.length_thresholds, ascending=True):
            raise ConfigError(f"config: length_thresholds must be three numbers t0 <= t1 <= t2, got {self.length_thresholds}")
        if not _cuts(self.delta_thresholds, ascending=False):
            raise ConfigError(f"config: delta_thresholds must be three numbers d0 >= d1 >= d2, got {self.delta_thresholds}")
        if all(w == 0 for w in (self.bc_weight, self.traj_weight, self.step_weight, self.group_weight)):
            raise ConfigError("config: every loss weight is 0")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)



def _cuts(values: list, ascending: bool) -> bool:
    """Three bucket thresholds in order (the curriculum's length or ΔR cuts)."""
    if len(values) != 3 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return False
    a, b, c = values if ascending else values[::-1]
    return a <= b <= c

def _coerce(name: str, value: Any, current: Any) -> Any:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            pass
    if name in ("data", "eval_data") and isinstance(value, str):
        value = [v for v in value.split(",") if v]
    if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    return value


def _file_values(path: str | Path, chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Options of a YAML config, after those of the config it names as ``base``."""
    import yaml

    p = Path(path)
    if chain and not p.is_absolute() and (chain[-1].parent / p).exists():
        p = chain[-1].parent / p  # a base beside the config that names it
    elif not p.exists() and (CONFIG_DIR / f"{path}.yaml").exists():
        p = CONFIG_DIR / f"{path}.yaml"
    if p.resolve() in chain:
        cycle = " -> ".join(str(c) for c in (*chain, p.resolve()))
        raise ConfigError(f"config {path}: 'base:' chain comes back to itself ({cycle}); remove the cycle")
    try:
        loaded = yaml.safe_load(p.read_text()) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise ConfigError(f"config {path}: cannot read ({one_line(e)})") from e
    if not isinstance(loaded, dict):
        raise ConfigError(f"config {path}: expected a mapping of options, got {type(loaded).__name__}")
    base = loaded.pop("base", None)
    if base is not None and not isinstance(base, str):
        raise ConfigError(f"config {path}: 'base' must name a config file or shipped config, got {base!r}")
    values = _file_values(base, (*chain, p.resolve())) if base else {}
    values.update({k: (v, f"config {p}") for k, v in loaded.items()})  # (value, where it was set)
    return values


def one_line(e: BaseException) -> str:
    return " ".join(str(e).split())


_TYPE_WORDS = {bool: "true or false", int: "a whole number", float: "a number", str: "a string",
               type(None): "null"}


def _conforms(value: Any, hint: Any) -> tuple[bool, Any]:
    """(value fits the annotation, the value converted: int -> float, integral float -> int)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        for arg in args:
            ok, converted = _conforms(value, arg)
            if ok:
                return True, converted
        return False, value
    if origin is list:
        if not isinstance(value, list):
            return False, value
        items = [_conforms(v, args[0]) for v in value]
        return all(ok for ok, _ in items), [v for _, v in items]
    if hint is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        return ok, float(value) if ok else value
    if hint is int:
        if isinstance(value, float) and value.is_integer():
            return True, int(value)
        return isinstance(value, int) and not isinstance(value, bool), value
    if hint is type(None):
        return value is None, value
    if hint is str and isinstance(value, os.PathLike):  # paths from Python callers
        return True, os.fspath(value)
    return isinstance(value, hint), value


def _describe_type(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe_type(a) for a in args)
    if origin is list:
        return f"a list of ({_describe_type(args[0])})"
    return _TYPE_WORDS.get(hint, getattr(hint, "__name__", str(hint)))


def _typed(name: str, value: Any, source: str) -> Any:
    hint = typing.get_type_hints(TrainConfig)[name]
    ok, converted = _conforms(value, hint)
    if not ok:
        raise ConfigError(f"{source}: {name} must be {_describe_type(hint)}, got {value!r}")
    return converted


def load_config(path: str | Path | None = None, overrides: list[str] | None = None, **kwargs: Any) -> TrainConfig:
    """A config from a YAML file (a bare name like ``hpl`` means ``hpl_train/configs/hpl.yaml``),
    then ``key=value`` overrides, then keyword arguments."""
    sourced: dict[str, tuple[Any, str]] = _file_values(path) if path else {}
    names = {f.name: f for f in dataclasses.fields(TrainConfig)}
    default = TrainConfig()
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key=value")
        k, v = item.split("=", 1)
        k = k.strip().replace("-", "_")
        if k not in names:
            raise ConfigError(f"unknown option {k!r}; options: {', '.join(sorted(names))}")
        sourced[k] = (_coerce(k, v, getattr(default, k)), f"override {item!r}")
    sourced.update({k: (v, f"--{k.replace('_', '-')}") for k, v in kwargs.items() if v is not None})
    unknown = set(sourced) - set(names)
    if unknown:
        raise ConfigError(f"unknown option(s) {sorted(unknown)}; options: {', '.join(sorted(names))}")
    values = {}
    for k, (v, source) in sourced.items():
        if k in ("data", "eval_data") and isinstance(v, str):
            v = [v]
        values[k] = _typed(k, v, source)
    cfg = TrainConfig(**values)
    cfg.validate()
    return cfg
