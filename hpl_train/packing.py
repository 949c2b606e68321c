"""Padding-free packing with a shared prefix for chosen/rejected, and sequence log-probs.

A *segment* is one training unit: a shared prefix and one branch (BC) or two branches (chosen,
rejected). Segments are packed into rows without padding; one 4-D attention mask lets every
token see only its own segment, and a branch token see the prefix and its own branch, never the
other branch. Position ids restart per segment and both branches continue from the prefix, so
each branch is computed exactly as if it were the only continuation of the prefix. Step and group
pairs share long contexts (the whole expert prefix), so the prefix is computed once instead of
twice. Logits are produced only at positions that predict a trainable token.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from hpl_train.tokenize import TokenizedConversation


@dataclass
class Segment:
    kind: str  # bc | traj | step | group
    index: int  # row of its table
    prefix: list[int]
    prefix_trainable: list[bool]
    branches: list[tuple[list[int], list[bool]]]
    meta: dict = field(default_factory=dict)

    @property
    def n_tokens(self) -> int:
        return len(self.prefix) + sum(len(b[0]) for b in self.branches)


def longest_common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def make_segment(kind: str, index: int, chosen: TokenizedConversation, rejected: TokenizedConversation | None = None,
                 *, share_prefix: bool = True, meta: dict | None = None) -> Segment:
    if rejected is None:
        return Segment(kind, index, [], [], [(chosen.ids, chosen.trainable)], meta or {})
    if not share_prefix:
        return Segment(kind, index, [], [], [(chosen.ids, chosen.trainable), (rejected.ids, rejected.trainable)],
                       meta or {})
    k = longest_common_prefix(chosen.ids, rejected.ids)
    k = max(0, min(k, len(chosen.ids) - 1, len(rejected.ids) - 1))
    if chosen.trainable[:k] != rejected.trainable[:k]:
        k = longest_common_prefix(chosen.trainable[:k], rejected.trainable[:k])
    return Segment(kind, index, chosen.ids[:k], chosen.trainable[:k],
                   [(chosen.ids[k:], chosen.trainable[k:]), (rejected.ids[k:], rejected.trainable[k:])], meta or {})


def pack(segments: list[Segment], max_row_tokens: int) -> list[list[Segment]]:
    """Greedy first-fit-decreasing into rows of at most ``max_row_tokens`` (a longer segment gets a row)."""
    rows: list[list[Segment]] = []
    sizes: list[int] = []
    for seg in sorted(segments, key=lambda s: -s.n_tokens):
        for i, used in enumerate(sizes):
            if used + seg.n_tokens <= max_row_tokens:
                rows[i].append(seg)
                sizes[i] += seg.n_tokens
                break
        else:
            rows.append([seg])
            sizes.append(seg.n_tokens)
    return rows


@dataclass
class PackedBatch:
    input_ids: torch.Tensor  # [B, L]
    position_ids: torch.Tensor  # [B, L]
    attention_mask: torch.Tensor  # [B, 1, L, L] bool (True = attend) or additive float
    logit_positions: torch.Tensor  # [N] flat indices b*L + t of positions that predict a target
    targets: torch.Tensor  # [N]
    owners: torch.Tensor  # [N] index into sums: 3 * segment + (0 shared prefix, 1 branch 0, 2 branch 1)
    segments: list[Segment]
    n_tokens: int  # real (non-pad) tokens


def collate(rows: list[list[Segment]], *, additive_mask: bool = False, dtype: torch.dtype = torch.float32,
            pad_id: int = 0) -> PackedBatch:
    """Rows of segments -> tensors. Several rows are padded to the longest (padding costs compute;
    pass one row per call for padding-free training). The mask is filled block by block, so its
    cost is the sum of the squared segment lengths, not the squared row length."""
    length = max(sum(s.n_tokens for s in row) for row in rows)
    B = len(rows)
    ids = torch.full((B, length), pad_id, dtype=torch.long)
    pos = torch.zeros((B, length), dtype=torch.long)
    allowed = torch.zeros((B, length, length), dtype=torch.bool)
    real = torch.zeros((B, length), dtype=torch.bool)
    logit_pos, targets, owners, segments = [], [], [], []

    def add_targets(b: int, toks: list[int], train: list[bool], start: int, first_pred: int | None, owner: int):
        tr = torch.tensor(train, dtype=torch.bool)
        tr[0] = tr[0] and first_pred is not None
        j = torch.nonzero(tr).squeeze(-1)
        if len(j) == 0:
            return
        pred = start + j - 1
        if first_pred is not None:
            pred[j == 0] = first_pred
        logit_pos.append(b * length + pred)
        targets.append(torch.tensor(toks, dtype=torch.long)[j])
        owners.append(torch.full((len(j),), owner, dtype=torch.long))

    for b, row in enumerate(rows):
        t = 0
        for seg in row:
            si = len(segments)
            segments.append(seg)
            k = len(seg.prefix)
            if k:
                ids[b, t:t + k] = torch.tensor(seg.prefix, dtype=torch.long)
                pos[b, t:t + k] = torch.arange(k)
                allowed[b, t:t + k, t:t + k] = torch.ones(k, k, dtype=torch.bool).tril()
                add_targets(b, seg.prefix, seg.prefix_trainable, t, None, 3 * si)
            prefix_start, prefix_end = t, t + k
            t += k
            for bi, (toks, train) in enumerate(seg.branches):
                n = len(toks)
                ids[b, t:t + n] = torch.tensor(toks, dtype=torch.long)
                pos[b, t:t + n] = torch.arange(k, k + n)
                allowed[b, t:t + n, prefix_start:prefix_end] = True
                allowed[b, t:t + n, t:t + n] = torch.ones(n, n, dtype=torch.bool).tril()
                add_targets(b, toks, train, t, prefix_end - 1 if k else None, 3 * si + 1 + bi)
                t += n
            real[b, prefix_start:t] = True
    idx = torch.arange(length)
    allowed[:, idx, idx] = True  # padding attends to itself (no NaN rows)
    mask = allowed.unsqueeze(1)
    if additive_mask:
        mask = torch.zeros(mask.shape, dtype=dtype).masked_fill(~mask, torch.finfo(dtype).min)
    cat = (lambda xs: torch.cat(xs)) if logit_pos else (lambda xs: torch.zeros(0, dtype=torch.long))
    return PackedBatch(ids, pos, mask, cat(logit_pos), cat(targets), cat(owners), segments, int(real.sum()))


def sequence_logps(model, batch: PackedBatch, device: torch.device | str = "cpu") -> torch.Tensor:
    """[n_segments, 2]: summed log-probs of each segment's trainable tokens per branch (branch 1 is
    0 for single-branch segments). Shared-prefix trainable tokens count in both branches."""
    n_seg = len(batch.segments)
    if len(batch.targets) == 0:
        return torch.zeros((n_seg, 2), device=device)
    B, L = batch.input_ids.shape
    logits = model(input_ids=batch.input_ids.to(device), position_ids=batch.position_ids.to(device),
                   attention_mask=batch.attention_mask.to(device), use_cache=False,
                   logits_to_keep=batch.logit_positions.to(device) % L if B == 1 else 0).logits
    if B == 1:
        flat = logits[0]
    else:
        flat = logits.reshape(B * L, -1)[batch.logit_positions.to(device)]
    logp = torch.log_softmax(flat.float(), dim=-1).gather(-1, batch.targets.to(device).unsqueeze(-1)).squeeze(-1)
    sums = torch.zeros(3 * n_seg, device=device, dtype=logp.dtype).index_add(0, batch.owners.to(device), logp)
    sums = sums.view(n_seg, 3)
    return torch.stack([sums[:, 0] + sums[:, 1], sums[:, 0] + sums[:, 2]], dim=1)
