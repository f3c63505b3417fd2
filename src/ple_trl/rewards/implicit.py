"""
The implicit reward `beta_judge * (log pi_judge(y|x) - log pi_init(y|x))` (SPA's self-judging reward, PLE's with
`reward_source="implicit"`): the maths, and the placeholder that names it in GRPO's list of reward sources.
"""

import math

import torch


def implicit_reward(
    policy_logps: torch.Tensor, reference_logps: torch.Tensor, beta_judge: float = 1.0
) -> torch.Tensor:
    """
    SPA's implicit reward `r(x, y) = beta_judge * (log pi_judge(y|x) - log pi_init(y|x))`, without gradient.

    The caller chooses the length convention: pass sequence sums (SPA's choice) or means (see
    [`implicit_reward_from_tokens`], which does both from per-token log-probs). The result is detached: it only labels
    pairs, it is never trained through.

    Args:
        policy_logps (`torch.Tensor`):
            Per-sequence log-probs under the judge `pi_judge` (the model at the start of the iteration, or the current
            policy), shape `(batch,)`.
        reference_logps (`torch.Tensor`):
            Per-sequence log-probs under the initial model `pi_init`, same shape.
        beta_judge (`float`, *optional*, defaults to `1.0`):
            Scale of the reward, > 0. It does not change which answer is preferred, only the size of the margins.

    Returns:
        `torch.Tensor`: shape `(batch,)`, detached.
    """
    if not beta_judge > 0 or not math.isfinite(beta_judge):
        raise ValueError(
            f"`beta_judge` must be a finite number > 0, got {beta_judge}; a negative scale would flip every label. "
            "Use e.g. `beta_judge=1.0`."
        )
    if policy_logps.shape != reference_logps.shape:
        raise ValueError(
            f"`policy_logps` and `reference_logps` must have the same shape, got {tuple(policy_logps.shape)} and "
            f"{tuple(reference_logps.shape)}; pass one log-prob per sequence for both models."
        )
    return (beta_judge * (policy_logps - reference_logps)).detach()


def implicit_reward_column(*args, **kwargs):
    """Stands for the implicit reward in GRPO's list of reward sources (which must not be empty) and names its column
    (`implicit_reward`); the trainer computes the implicit reward itself, from the model, which reward functions never
    see."""
    raise RuntimeError("The implicit reward is computed by the trainer, not called as a reward function.")


implicit_reward_column.__name__ = implicit_reward_column.__qualname__ = "implicit_reward"
