"""Held-out evaluation: does training generalise to pairs of tasks it never saw?

The pair tables are split by *task* (never a task on both sides): a pair of a held-out task shares
its instruction and usually most of its prefix with that task's other pairs, so a split by row would
measure memory, not preference learning. Each evaluation reports, per level, the share of held-out
pairs whose policy log-ratio margin is positive (TRL's "reward accuracy": the policy moved towards
the chosen side relative to the reference), the mean margin β[(πθ - π_ref)(chosen) - (...)(rejected)],
and the BC loss on held-out expert actions. Every process scores its share of the segments and the
per-pair values are summed across processes, so one process and N give the same numbers.
"""

from __future__ import annotations

import zlib

import torch

from hpl_train.data import PAIR_KINDS, TrainData
from hpl_train.packing import Segment, collate, pack, sequence_logps

# a margin within float noise of 0 is a tie, not a win: at step 0 policy and reference are one model,
# and its log-probs differ from the cached ones by ~1e-7 (other rows, other summation order)
TIE = 1e-5


def task_key(seg: Segment) -> str:
    """The task a segment belongs to: hpl-gen's ``task_id``, else its instruction (the first user
    message), which identifies the task in preference files of other origin."""
    return str(seg.meta.get("task_id") or seg.meta.get("instruction") or f"{seg.kind}:{seg.index}")


def split_by_task(data: TrainData, fraction: float, seed: int) -> tuple[TrainData, TrainData, list[str]]:
    """(training part, held-out part, held-out task keys): ``round(fraction * tasks)`` tasks (at
    least one, and never all) chosen by a hash of (seed, task), so the same tasks are held out
    whichever tables or loss weights a run uses: an SFT run and an HPL run on one hpl-gen output
    evaluate on the same pairs."""
    tasks = sorted(task_keys(data))
    if fraction <= 0 or len(tasks) < 2:
        return data, TrainData(files=data.files, env=data.env), []
    n_eval = min(len(tasks) - 1, max(1, round(fraction * len(tasks))))
    held = set(sorted(tasks, key=lambda t: zlib.crc32(f"{seed}:{t}".encode()))[:n_eval])
    train = TrainData(skipped=data.skipped, truncated=data.truncated, max_row_tokens=data.max_row_tokens,
                      examples=data.examples, files=data.files, env=data.env)
    heldout = TrainData(files=data.files, env=data.env)
    for kind, segs in data.segments.items():
        train.segments[kind] = [s for s in segs if task_key(s) not in held]
        heldout.segments[kind] = [s for s in segs if task_key(s) in held]
    return train, heldout, sorted(held)


@torch.no_grad()
def score_heldout(model, heldout: TrainData, ref: dict[str, torch.Tensor], accelerator, *, beta: float,
                  max_row_tokens: int, additive_mask: bool, pairs: bool = True) -> tuple[dict, dict[str, list[float]]]:
    """(metrics, per-pair margins by level) on the held-out segments.

    ``ref[kind][seg.index]`` holds the reference (chosen, rejected) log-probs. Segment i of a kind
    is scored by process ``i % world``; each process writes its values at their positions in
    zero vectors that are then summed over processes, so every process ends with all of them.
    ``pairs=False``: the policy is known to be the reference; pair margins are 0 without a forward."""
    acc = accelerator
    world, rank = acc.num_processes, acc.process_index
    was_training = model.training
    model.eval()
    kinds = [k for k in (*PAIR_KINDS, "bc") if heldout.segments.get(k)]
    values = {k: torch.zeros(len(heldout.segments[k]), 2, device=acc.device) for k in kinds}
    position = {}
    local = []
    for kind in kinds:
        for i, seg in enumerate(heldout.segments[kind]):
            if i % world == rank and (pairs or kind == "bc"):
                position[id(seg)] = (kind, i)
                local.append(seg)
    # rows no longer than the longest sample, as in training: the dense mask costs the square of a row
    for row in pack(local, min(max_row_tokens, max((s.n_tokens for s in local), default=1))):
        batch = collate([row], additive_mask=additive_mask)
        with acc.autocast():
            logps = sequence_logps(model, batch, acc.device).float()
        for j, seg in enumerate(batch.segments):
            kind, i = position[id(seg)]
            if kind == "bc":  # summed log-prob of the expert action tokens, and their number
                values[kind][i] = torch.stack([logps[j, 0], torch.tensor(float(sum(seg.branches[0][1][1:])),
                                                                          device=acc.device)])
            else:
                r = ref[kind][seg.index].to(acc.device)
                values[kind][i, 0] = beta * ((logps[j, 0] - r[0]) - (logps[j, 1] - r[1]))
    if world > 1:
        values = {k: acc.reduce(v, reduction="sum") for k, v in values.items()}
    if was_training:
        model.train()
    metrics: dict = {}
    margins: dict[str, list[float]] = {}
    for kind in kinds:
        v = values[kind].cpu()
        if kind == "bc":
            tokens = float(v[:, 1].sum())
            metrics["eval/bc_loss"] = float(-v[:, 0].sum() / max(1.0, tokens))
            metrics["eval/bc/samples"] = len(v)
            metrics["eval/bc/tokens"] = int(tokens)
            continue
        m = v[:, 0]
        margins[kind] = m.tolist()
        metrics[f"eval/{kind}/accuracy"] = float((m > TIE).float().mean())
        metrics[f"eval/{kind}/margin"] = float(m.mean())
        metrics[f"eval/{kind}/pairs"] = len(m)
    return metrics, margins


def task_keys(data: TrainData) -> set[str]:
    return {task_key(s) for segs in data.segments.values() for s in segs}
