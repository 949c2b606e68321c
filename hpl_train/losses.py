"""The HPL objective: BC + trajectory-, step- and group-level DPO (paper Eq. 3-5, one form).

Each DPO term is -log σ(β [(log πθ(y_w|x) - log π_ref(y_w|x)) - (log πθ(y_l|x) - log π_ref(y_l|x))])
over its own pairs: whole trajectories (Eq. 3), single actions with their continuations (Eq. 4),
action groups (Eq. 5). Sequence log-probs are sums over the action tokens only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
             ref_rejected: torch.Tensor, beta: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pair losses and implicit rewards (chosen, rejected): β (log πθ - log π_ref)."""
    chosen_reward = beta * (policy_chosen - ref_chosen)
    rejected_reward = beta * (policy_rejected - ref_rejected)
    return -F.logsigmoid(chosen_reward - rejected_reward), chosen_reward.detach(), rejected_reward.detach()


def bc_loss(token_logp_sum: torch.Tensor, n_tokens: int | float) -> torch.Tensor:
    """Negative log-likelihood per expert action token."""
    return -token_logp_sum / max(1.0, float(n_tokens))
