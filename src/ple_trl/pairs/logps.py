"""Per-sequence log-probabilities of answers, from per-token ones: the sums `l(y|x)` and means `lbar(y|x)` every pair
loss compares."""

import torch


def sequence_logps(per_token_logps: torch.Tensor, mask: torch.Tensor, length_normalize: bool = False) -> torch.Tensor:
    """
    Per-sequence log-probability from per-token log-probabilities.

    Args:
        per_token_logps (`torch.Tensor`): shape `(batch, length)`.
        mask (`torch.Tensor`): 1 on answer tokens, 0 on padding; shape `(batch, length)`.
        length_normalize (`bool`, *optional*, defaults to `False`): mean over answer tokens (`lbar`) instead of the
            sum (`l`). An empty answer has mean 0.

    Returns:
        `torch.Tensor`: shape `(batch,)`.
    """
    mask = mask.to(per_token_logps.dtype)
    total = (per_token_logps * mask).sum(-1)
    return total / mask.sum(-1).clamp(min=1.0) if length_normalize else total
