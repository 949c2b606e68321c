"""HPL training recipe: BC + trajectory-, step- and group-level DPO with the 2-D curriculum.

Read it top to bottom: :meth:`HPLRecipe.setup` builds everything, :meth:`HPLRecipe.train` is the
loop. Baselines are configs (``hpl_train/configs``): SFT = BC only; RFT = BC on the policy's
successful trajectories; ETO = BC + traj; IPR = BC + traj + step; HPL = all four + curriculum.

Assumptions, stated honestly:

* The reference model is the starting model. Its log-probs are computed once, before training,
  with the same tokenization and masks, and cached beside the data (or in ``output_dir``); the
  trainer then holds one model. LoRA adapters start at zero, so the base model is the reference.
* Each optimizer step draws ``batch_size`` samples (fewer if the set is smaller) for every active
  loss; the group loss draws only from the buckets its curriculum phase allows. The draw is a pure
  function of (seed, step), so a resumed run sees the same batches as an uninterrupted one.
* The samples of a step are split over processes, packed into padding-free rows, and each row is
  one forward/backward (gradient accumulation). DPO terms are means over the step's pairs, BC a
  mean over the step's expert action tokens, both exact under data parallelism.
* Only assistant tokens count (see :mod:`hpl_train.tokenize`); samples whose template cannot be
  split into turns are skipped and reported at startup, never trained with a wrong mask.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import resource
import socket
import time
import zlib
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from hpl_train.config import TrainConfig
from hpl_train.curriculum import allowed, phase_at
from hpl_train.data import PAIR_KINDS, TrainData, fingerprint, load_train_data
from hpl_train.evaluate import score_heldout, split_by_task, task_key, task_keys
from hpl_train.losses import bc_loss, dpo_loss
from hpl_train.packing import Segment, collate, pack, sequence_logps

KINDS = ("bc", *PAIR_KINDS)


class HPLRecipe:
    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg = cfg
        self.out = Path(cfg.output_dir)
        self._perms: dict[tuple, np.ndarray] = {}

    # ------------------------------------------------------------------ setup
    def setup(self) -> None:
        from accelerate import Accelerator
        from accelerate.utils import set_seed
        from transformers import AutoModelForCausalLM, AutoTokenizer, get_cosine_schedule_with_warmup

        cfg = self.cfg
        self.accelerator = Accelerator(
            mixed_precision=cfg.mixed_precision, step_scheduler_with_optimizer=False,
            log_with=None if cfg.report_to == "none" else cfg.report_to, project_dir=str(self.out))
        acc = self.accelerator
        set_seed(cfg.seed)
        self.out.mkdir(parents=True, exist_ok=True)
        self.tokenizer = AutoTokenizer.from_pretrained(cfg.model)
        if self.tokenizer.chat_template is None:
            raise ValueError(f"{cfg.model}: the tokenizer has no chat template; hpl-train needs one to find turns")
        self.data, self.heldout = self._setup_data()
        self.weights = {"bc": cfg.bc_weight, "traj": cfg.traj_weight, "step": cfg.step_weight, "group": cfg.group_weight}
        self.active = [k for k in KINDS if self.weights[k] > 0 and self.data.segments.get(k)]
        if not self.active:
            raise ValueError("no training data for any loss with a non-zero weight:\n" + self.data.report())
        acc.print(self.data.report())

        model = AutoModelForCausalLM.from_pretrained(cfg.model, dtype=torch.float32)
        self.additive_mask = model.config._attn_implementation == "eager"
        self.total_steps = self._total_steps()
        self.ref = self._reference_logps(model, self._drawn_pairs())
        self.heldout_ref = self._reference_logps(model, {k: v for k, v in self.heldout.segments.items()
                                                         if k in PAIR_KINDS and v}, tag="heldout")
        if cfg.lora_r > 0:
            from peft import LoraConfig, get_peft_model

            model = get_peft_model(model, LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha,
                                                     lora_dropout=cfg.lora_dropout, task_type="CAUSAL_LM",
                                                     target_modules=cfg.lora_target_modules))
        if cfg.gradient_checkpointing:
            model.gradient_checkpointing_enable()
            model.config.use_cache = False
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        scheduler = get_cosine_schedule_with_warmup(optimizer, int(cfg.warmup_ratio * self.total_steps),
                                                    self.total_steps)
        self.model, self.optimizer, self.scheduler = acc.prepare(model, optimizer, scheduler)
        self.start_step = 0
        if cfg.resume_from:
            self.start_step = self._resume(cfg.resume_from)
        if cfg.report_to != "none":
            acc.init_trackers("hpl", config={k: (v if isinstance(v, (int, float, str, bool)) else str(v))
                                             for k, v in cfg.to_dict().items()})

    def _setup_data(self) -> tuple[TrainData, TrainData]:
        """(training data, held-out data): ``eval_data`` when given, else ``eval_fraction`` of the
        tasks split off (every table, so no task is on both sides). Held-out data has every level,
        whatever the loss weights, so an SFT run reports preference accuracy too."""
        cfg, acc = self.cfg, self.accelerator
        evaluating = bool(cfg.eval_data) or cfg.eval_fraction > 0

        def load(paths: list[str], kinds: set[str] | None) -> TrainData:
            return load_train_data(self.tokenizer, paths, bc_source=cfg.bc_source, share_prefix=cfg.share_prefix,
                                   env=cfg.env, length_thresholds=cfg.length_thresholds,
                                   delta_thresholds=cfg.delta_thresholds, kinds=kinds,
                                   max_row_tokens=cfg.max_row_tokens)

        if cfg.eval_data:
            heldout = load(cfg.eval_data, {"bc", *cfg.eval_levels})
            acc.print(f"held-out data ({', '.join(cfg.eval_data)}): {heldout.report()}")
            return load(cfg.data, self._wanted_kinds()), heldout
        data = load(cfg.data, None if evaluating else self._wanted_kinds())
        train, heldout, tasks = split_by_task(data, cfg.eval_fraction, cfg.seed)
        heldout.segments = {k: v for k, v in heldout.segments.items() if k == "bc" or k in cfg.eval_levels}
        if evaluating and not tasks:
            acc.print("eval_fraction: fewer than 2 tasks in the data, nothing held out (pass --eval-data)")
        elif tasks:
            counts = ", ".join(f"{k}: {len(v)}" for k, v in heldout.segments.items())
            acc.print(f"held out {len(tasks)} task(s) of {len(tasks) + len(task_keys(train))} ({counts})")
        return train, heldout

    def _wanted_kinds(self) -> set[str]:
        c = self.cfg
        return {k for k, w in (("bc", c.bc_weight), ("traj", c.traj_weight), ("step", c.step_weight),
                               ("group", c.group_weight)) if w > 0}

    def _total_steps(self) -> int:
        if self.cfg.max_steps:
            return int(self.cfg.max_steps)
        pair_kinds = [k for k in self.active if k != "bc"] or self.active
        largest = max(len(self.data.segments[k]) for k in pair_kinds)
        return max(1, math.ceil(self.cfg.epochs * largest / self.cfg.batch_size))

    def _drawn_pairs(self) -> dict[str, list[Segment]]:
        """The pairs the run's steps will draw (a pure function of seed and step): a run shorter than
        an epoch needs the reference log-probs of those only, not of every pair in the data."""
        drawn: dict[str, dict[int, Segment]] = {}
        for kind in (k for k in PAIR_KINDS if k in self.active):
            for step in range(self.total_steps):
                phase = phase_at(step, self.total_steps, tuple(self.cfg.phase_boundaries))
                drawn.setdefault(kind, {}).update((id(s), s) for s in self.draw(kind, step, phase))
        return {k: sorted(v.values(), key=lambda s: s.index) for k, v in drawn.items()}

    # ------------------------------------------------------------------ reference log-probs
    def _reference_logps(self, model, segments: dict[str, list[Segment]], tag: str = "") -> dict[str, torch.Tensor]:
        """[rows, 2] reference log-probs per pair kind (by table row), computed once and cached on
        disk beside the data, keyed by the model, the template, the files and the rows used."""
        kinds = list(segments)
        if not kinds:
            return {}
        cfg, acc = self.cfg, self.accelerator
        files = self.heldout.files if tag == "heldout" else self.data.files
        template = str(self.tokenizer.chat_template)
        model_id = cfg.model + json.dumps(model.config.to_dict(), sort_keys=True, default=str)
        rows = json.dumps({k: [s.index for s in v] for k, v in sorted(segments.items())})
        key = zlib.crc32((model_id + template + fingerprint(files) + rows).encode()) & 0xFFFFFFFF
        cache_dir = Path(cfg.ref_cache_dir) if cfg.ref_cache_dir else files[0].parent
        if not os.access(cache_dir, os.W_OK):
            cache_dir = self.out
        path = cache_dir / f"ref_logps{'-' + tag if tag else ''}-{key:08x}.pt"
        # one process per machine computes them: the cache folder need not be shared between
        # machines (on a shared one the first finished writes it, the others find it or write the
        # same bytes again under an atomic rename)
        if acc.is_local_main_process and not path.exists():
            model.to(acc.device).eval()
            out = {}
            with torch.no_grad():
                for kind in kinds:
                    segs = segments[kind]
                    vals = torch.zeros(max(s.index for s in segs) + 1, 2)  # by table row
                    for row in pack(segs, cfg.max_row_tokens):
                        batch = collate([row], additive_mask=self.additive_mask)
                        lp = sequence_logps(model, batch, acc.device).cpu()
                        for j, seg in enumerate(batch.segments):
                            vals[seg.index] = lp[j]
                    out[kind] = vals
            tmp = path.with_name(path.name + f".{socket.gethostname()}.{os.getpid()}.tmp")
            torch.save(out, tmp)
            tmp.replace(path)
            model.train()
        acc.wait_for_everyone()
        if not tag:
            self.ref_cache_path = path
        return torch.load(path)

    # ------------------------------------------------------------------ batches
    def _perm(self, key: tuple, n: int) -> np.ndarray:
        if key not in self._perms:
            seed = zlib.crc32(":".join(map(str, (self.cfg.seed, *key))).encode())
            self._perms[key] = np.random.default_rng(seed).permutation(n)
        return self._perms[key]

    def pool(self, kind: str, phase: int) -> list[Segment]:
        """The samples a loss may draw from in a phase. When a phase's buckets hold no group pair
        at all, the next phase's buckets are used, so the curriculum never silences the group loss."""
        segs = self.data.segments[kind]
        if kind != "group":
            return segs
        for p in range(phase, 4):
            ok = allowed(p, self.cfg.curriculum)
            chosen = [s for s in segs if s.meta["bucket"] in ok]
            if chosen:
                return chosen
        return []

    def draw(self, kind: str, step: int, phase: int) -> list[Segment]:
        """The step's samples of one loss: a deterministic function of (seed, kind, phase, step)."""
        segs = self.pool(kind, phase)
        n = len(segs)
        if n == 0:
            return []
        bs = min(self.cfg.batch_size, n)
        s = 0 if self.cfg.fixed_batch else step
        out = []
        for i in range(s * bs, s * bs + bs):
            epoch, j = divmod(i, n)
            out.append(segs[self._perm((kind, phase, epoch), n)[j]])
        return out

    # ------------------------------------------------------------------ one optimizer step
    def train_step(self, step: int) -> dict:
        cfg, acc = self.cfg, self.accelerator
        phase = phase_at(step, self.total_steps, tuple(cfg.phase_boundaries))
        batch = {k: self.draw(k, step, phase) for k in self.active}
        world, rank = acc.num_processes, acc.process_index
        n_pairs = {k: len(v) for k, v in batch.items()}
        bc_tokens = sum(sum(t for t in s.branches[0][1][1:]) for s in batch.get("bc", []))
        rows = self._micro_batches([s for k in self.active for s in batch[k][rank::world]])
        stats = torch.zeros(len(KINDS), 4, device=acc.device)  # loss sum, correct, margin sum, count
        bucket_stats: dict[tuple, list[float]] = defaultdict(lambda: [0.0, 0.0])
        tokens = 0
        t0 = time.perf_counter()
        self.model.train()
        for i, row in enumerate(rows):
            packed = collate(row, additive_mask=self.additive_mask)
            tokens += packed.n_tokens
            sync = i == len(rows) - 1
            with contextlib.nullcontext() if sync else acc.no_sync(self.model), acc.autocast():
                logps = sequence_logps(self.model, packed, acc.device)
                loss = torch.zeros((), device=acc.device)
                for j, seg in enumerate(packed.segments):
                    ki = KINDS.index(seg.kind)
                    if seg.kind == "bc":
                        term = bc_loss(logps[j, 0], bc_tokens)
                        stats[ki, 0] += term.detach() * bc_tokens
                        stats[ki, 3] += sum(seg.branches[0][1][1:])
                    else:
                        ref = self.ref[seg.kind][seg.index].to(acc.device)
                        term, rc, rr = dpo_loss(logps[j, 0], logps[j, 1], ref[0], ref[1], cfg.beta)
                        term = term / n_pairs[seg.kind]
                        correct = float(rc > rr)
                        stats[ki] += torch.stack([term.detach() * n_pairs[seg.kind], torch.tensor(correct, device=acc.device),
                                                  (rc - rr), torch.tensor(1.0, device=acc.device)])
                        if seg.kind == "group":
                            bucket_stats[seg.meta["bucket"]][0] += correct
                            bucket_stats[seg.meta["bucket"]][1] += 1
                    loss = loss + self.weights[seg.kind] * term * world
                acc.backward(loss)
        if cfg.max_grad_norm and cfg.max_grad_norm > 0:
            acc.clip_grad_norm_(self.model.parameters(), cfg.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        stats = acc.reduce(stats, reduction="sum")
        tok = acc.reduce(torch.tensor(float(tokens), device=acc.device), reduction="sum").item()
        return self._step_metrics(step, phase, stats, tok, time.perf_counter() - t0, len(rows), bucket_stats)

    def _micro_batches(self, local: list[Segment]) -> list[list[list[Segment]]]:
        """This process's samples as forward passes: packed rows, or padded micro-batches."""
        cfg = self.cfg
        if cfg.packing:
            # rows no longer than the step's longest sample: a dense attention mask costs the
            # square of the row length, so longer rows would cost more than padding saves
            cap = min(cfg.max_row_tokens, max((s.n_tokens for s in local), default=1))
            return [[r] for r in pack(local, cap)]
        ordered = sorted(local, key=lambda s: s.n_tokens)
        return [[[s] for s in ordered[i:i + cfg.micro_batch]] for i in range(0, len(ordered), cfg.micro_batch)]

    def _step_metrics(self, step: int, phase: int, stats: torch.Tensor, tok: float, dt: float, n_rows: int,
                      bucket_stats: dict[tuple, list[float]]) -> dict:
        """The logged metrics of one optimizer step from its reduced loss/accuracy sums."""
        acc = self.accelerator
        m: dict = {"step": step + 1, "phase": phase, "lr": self.scheduler.get_last_lr()[0], "tokens": tok,
                   "tokens_per_s": tok / dt if dt > 0 else 0.0, "step_s": dt, "rows": n_rows}
        total = torch.zeros((), device=acc.device)
        for ki, kind in enumerate(KINDS):
            if kind not in self.active or stats[ki, 3] == 0:
                continue
            if kind == "bc":
                m["loss/bc"] = (stats[ki, 0] / stats[ki, 3]).item()
            else:
                n = stats[ki, 3]
                m[f"loss/{kind}"] = (stats[ki, 0] / n).item()
                m[f"reward_acc/{kind}"] = (stats[ki, 1] / n).item()
                m[f"margin/{kind}"] = (stats[ki, 2] / n).item()
            total += self.weights[kind] * m[f"loss/{kind}"]
        m["loss"] = total.item()
        m["group_pool"] = len(self.pool("group", phase)) if "group" in self.active else 0
        for (li, dj), (c, n) in sorted(bucket_stats.items()):
            m[f"bucket_acc/B{li}{dj}"] = c / n  # this process's share (rank 0 logs)
        m["peak_mem_mb"] = _peak_memory_mb(acc.device)
        if step == self.start_step:  # what the data loading kept, truncated and skipped, once per run
            m.update(self.data.metrics())
        return m

    # ------------------------------------------------------------------ loop
    def train(self) -> list[dict]:
        acc, cfg = self.accelerator, self.cfg
        history = []
        metrics_path = self.out / "metrics.jsonl"
        if acc.is_main_process and self.start_step == 0 and metrics_path.exists():
            metrics_path.unlink()
        if self.start_step == 0:
            self.evaluate(0)
        for step in range(self.start_step, self.total_steps):
            m = self.train_step(step)
            history.append(m)
            if acc.is_main_process:
                with open(metrics_path, "a") as f:
                    f.write(json.dumps(m) + "\n")
                if cfg.report_to != "none":
                    acc.log({k: v for k, v in m.items() if isinstance(v, (int, float))}, step=m["step"])
                if cfg.log_every and (step + 1) % cfg.log_every == 0:
                    losses = " ".join(f"{k[5:]}={v:.4f}" for k, v in m.items() if k.startswith("loss/"))
                    acc.print(f"step {m['step']}/{self.total_steps} phase {m['phase']} loss {m['loss']:.4f} "
                              f"[{losses}] {m['tokens_per_s']:.0f} tok/s")
            if cfg.eval_every and (step + 1) % cfg.eval_every == 0 and step + 1 < self.total_steps:
                self.evaluate(step + 1)
            if cfg.save_every and (step + 1) % cfg.save_every == 0 and step + 1 < self.total_steps:
                self.save_checkpoint(step + 1)
        self.evaluate(self.total_steps, final=True)
        self.save_checkpoint(self.total_steps)
        if cfg.save_model:
            self.save_model()
        if acc.is_main_process:
            with contextlib.suppress(ImportError):
                from hpl_train.plots import plot_training

                plot_training(metrics_path, self.out / "training.png", cfg.phase_boundaries, self.total_steps)
        acc.end_training()
        return history

    # ------------------------------------------------------------------ held-out evaluation
    def evaluate(self, step: int, final: bool = False) -> dict:
        """Score the held-out pairs and expert actions; a ``metrics.jsonl`` row of ``eval/`` keys
        (and tensorboard). The last evaluation also writes every pair's margin to
        ``eval_margins.json`` (for intervals over pairs or tasks)."""
        if not any(self.heldout.segments.values()):
            return {}
        acc, cfg = self.accelerator, self.cfg
        t0 = time.perf_counter()
        # before the first step the policy is the reference model, so every margin is 0 (a tie):
        # only the BC loss needs a forward pass
        metrics, margins = score_heldout(self.model, self.heldout, self.heldout_ref, acc, beta=cfg.beta,
                                         max_row_tokens=cfg.max_row_tokens, additive_mask=self.additive_mask,
                                         pairs=step > 0)
        m = {"step": step, **metrics, "eval/seconds": round(time.perf_counter() - t0, 2)}
        if acc.is_main_process:
            with open(self.out / "metrics.jsonl", "a") as f:
                f.write(json.dumps(m) + "\n")
            if cfg.report_to != "none":
                acc.log({k: v for k, v in m.items() if k != "step"}, step=step)
            if final:
                tasks = {k: [task_key(s) for s in self.heldout.segments.get(k, [])] for k in margins}
                (self.out / "eval_margins.json").write_text(json.dumps(
                    {"step": step, "beta": cfg.beta, "margins": margins, "tasks": tasks}))
            accs = " ".join(f"{k}={m[f'eval/{k}/accuracy']:.3f}(n={m[f'eval/{k}/pairs']})"
                            for k in PAIR_KINDS if f"eval/{k}/accuracy" in m)
            bc = f" bc_loss={m['eval/bc_loss']:.4f}" if "eval/bc_loss" in m else ""
            acc.print(f"eval step {step}: accuracy {accs}{bc} ({m['eval/seconds']:.1f} s)")
        return m

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self, step: int) -> Path:
        path = self.out / "checkpoints" / f"step-{step:06d}"
        self.accelerator.save_state(str(path))
        if self.accelerator.is_main_process:
            (path / "hpl_state.json").write_text(json.dumps({"step": step, "total_steps": self.total_steps,
                                                             "config": self.cfg.to_dict()}, indent=1))
        self.accelerator.wait_for_everyone()
        return path

    def _resume(self, where: str) -> int:
        if where == "latest":
            ckpts = sorted((self.out / "checkpoints").glob("step-*"))
            if not ckpts:
                raise ValueError(f"resume_from=latest: no checkpoint under {self.out / 'checkpoints'}")
            path = ckpts[-1]
        else:
            path = Path(where)
        state_file = path / "hpl_state.json"
        if not state_file.exists():
            raise ValueError(f"{path}: not an hpl-train checkpoint (no hpl_state.json)")
        state = json.loads(state_file.read_text())
        if state["total_steps"] != self.total_steps:
            raise ValueError(f"{path}: saved for {state['total_steps']} steps, this config makes {self.total_steps}")
        self.accelerator.load_state(str(path))
        self.accelerator.print(f"resumed from {path} at step {state['step']}")
        return int(state["step"])

    def save_model(self) -> Path:
        """``final/``: a full model that ``vllm:``/``hf:`` policies load directly. With LoRA the
        adapter goes to ``final/adapter`` and the merged weights to ``final/`` (merging needs the
        whole model on one process; under ZeRO-3/FSDP only the adapter is written)."""
        acc = self.accelerator
        path = self.out / "final"
        acc.wait_for_everyone()
        model = acc.unwrap_model(self.model)
        sharded = acc.distributed_type.name in ("DEEPSPEED", "FSDP")
        state_dict = acc.get_state_dict(self.model)
        if self.cfg.lora_r > 0:
            model.save_pretrained(path / "adapter", state_dict=state_dict, is_main_process=acc.is_main_process,
                                  save_function=acc.save)
            if not sharded and acc.is_main_process:
                model.merge_and_unload().save_pretrained(path, safe_serialization=True)
        else:
            model.save_pretrained(path, state_dict=state_dict, is_main_process=acc.is_main_process,
                                  save_function=acc.save, safe_serialization=True)
        if acc.is_main_process:
            self.tokenizer.save_pretrained(path)
        acc.wait_for_everyone()
        return path


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def train(cfg: TrainConfig) -> list[dict]:
    recipe = HPLRecipe(cfg)
    recipe.setup()
    return recipe.train()
