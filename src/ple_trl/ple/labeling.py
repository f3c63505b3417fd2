"""PLE's label enhancement: the threshold schedule, the reward transform, routing and soft-label weights.

Pure tensor-in, tensor-out functions, with no trainer in them. The trainer calls [`enhance`] once per generation
round, on rewards gathered from every process, so every process takes the same decisions.
"""

import math
from typing import NamedTuple

import torch

REWARD_TRANSFORMS = ("none", "sigmoid", "zscore")
GAP_MODES = ("signed", "absolute")
SFT_WEIGHTINGS = ("softmax", "linear", "equal")
ROUTINGS = ("threshold", "rank_all", "wsft_all")


def tau_at(iteration: int, tau0: float, alpha: float, tau_min: float = 0.0) -> float:
    """
    Threshold after `iteration` completed PLE iterations: `max(tau_min, tau0 * alpha**iteration)`.

    Args:
        iteration (`int`):
            Number of completed PLE iterations (0 before the first one ends).
        tau0 (`float`):
            Initial threshold (0.2 in the paper).
        alpha (`float`):
            Decay factor in (0, 1] (0.9 in the paper).
        tau_min (`float`, *optional*, defaults to `0.0`):
            Floor under which tau never decays.

    Returns:
        `float`: the threshold.
    """
    if iteration < 0:
        raise ValueError(f"`iteration` must be >= 0, got {iteration}.")
    return max(tau_min, tau0 * alpha**iteration)


def transform_rewards(rewards: torch.Tensor, transform: str = "none") -> torch.Tensor:
    """
    Put rewards on the scale tau is read on. A non-finite reward (NaN for an unscorable answer, or +-inf) becomes NaN,
    whatever the transform, so its pair is skipped; `zscore` computes its mean and spread over the finite rewards only.

    Args:
        rewards (`torch.Tensor`):
            Rewards of every answer of the generation round, any shape.
        transform (`str`, *optional*, defaults to `"none"`):
            `"none"` keeps them, `"sigmoid"` maps them to (0, 1), `"zscore"` standardises them over the round (mean 0,
            standard deviation 1; a round with one finite reward or no spread gives zeros).

    Returns:
        `torch.Tensor`: transformed rewards, same shape.
    """
    if transform not in REWARD_TRANSFORMS:
        raise ValueError(f"Unknown `reward_transform={transform!r}`; use one of {REWARD_TRANSFORMS}.")
    finite_mask = torch.isfinite(rewards)
    # One infinite reward would turn a z-score's mean and spread, so the whole round, into NaN: keep it out.
    rewards = torch.where(finite_mask, rewards, torch.nan)
    if transform == "none":
        return rewards
    if transform == "sigmoid":
        return torch.sigmoid(rewards)  # NaN stays NaN (an infinite reward would have become a finite 0 or 1)
    finite = rewards[finite_mask]
    if finite.numel() < 2:
        return rewards * 0.0
    std = finite.std()
    centred = rewards - finite.mean()
    return centred / std if std > 0 else centred * 0.0


def reward_gap(reward_plain: torch.Tensor, reward_principled: torch.Tensor, gap_mode: str = "signed") -> torch.Tensor:
    """
    Gap between the two answers of each pair: `r_p - r` (`"signed"`) or `|r_p - r|` (`"absolute"`).

    Args:
        reward_plain (`torch.Tensor`): rewards of the plain answers, shape `(num_pairs,)`.
        reward_principled (`torch.Tensor`): rewards of the principle-guided answers, shape `(num_pairs,)`.
        gap_mode (`str`, *optional*, defaults to `"signed"`): `"signed"` or `"absolute"`.

    Returns:
        `torch.Tensor`: the gap, shape `(num_pairs,)`.
    """
    if gap_mode == "signed":
        return reward_principled - reward_plain
    if gap_mode == "absolute":
        return (reward_principled - reward_plain).abs()
    raise ValueError(f"Unknown `gap_mode={gap_mode!r}`; use one of {GAP_MODES}.")


def route_pairs(
    reward_plain: torch.Tensor,
    reward_principled: torch.Tensor,
    tau: float,
    gap_mode: str = "signed",
    routing: str = "threshold",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """
    Decide, for each pair, between the ranking loss and the weighted SFT loss.

    With `routing="threshold"` (PLE), a pair is ranked when its gap is strictly greater than `tau`. With `"signed"`
    gaps the principled answer is always the preferred one of a ranked pair; with `"absolute"` gaps the answer with the
    higher reward is preferred. The two ablations ignore `tau` and `gap_mode`: `"rank_all"` ranks every pair,
    preferring the answer with the higher reward (the principled one on a tie), so that it ranks what the reward says
    is better; `"wsft_all"` ranks none. A pair with a non-finite reward is neither ranked nor valid: it is skipped for
    this round.

    Args:
        reward_plain (`torch.Tensor`): rewards of the plain answers, shape `(num_pairs,)`.
        reward_principled (`torch.Tensor`): rewards of the principle-guided answers, shape `(num_pairs,)`.
        tau (`float`): current threshold.
        gap_mode (`str`, *optional*, defaults to `"signed"`): `"signed"` or `"absolute"`.
        routing (`str`, *optional*, defaults to `"threshold"`): `"threshold"`, `"rank_all"` or `"wsft_all"`.

    Returns:
        `tuple[torch.Tensor, torch.Tensor, torch.Tensor]`: boolean tensors of shape `(num_pairs,)`:
        `rank_mask` (ranking loss), `principled_preferred` (which answer a ranked pair prefers) and `valid` (both
        rewards are finite).
    """
    if routing not in ROUTINGS:
        raise ValueError(f"Unknown `routing={routing!r}`; use one of {ROUTINGS}.")
    valid = torch.isfinite(reward_plain) & torch.isfinite(reward_principled)
    gap = reward_gap(reward_plain, reward_principled, gap_mode)
    higher_is_principled = reward_principled >= reward_plain
    if routing == "rank_all":
        return valid.clone(), higher_is_principled, valid
    if routing == "wsft_all":
        return torch.zeros_like(valid), torch.ones_like(valid), valid
    rank_mask = valid & (gap > tau)
    principled_preferred = higher_is_principled if gap_mode == "absolute" else torch.ones_like(valid)
    return rank_mask, principled_preferred, valid


def soft_label_weights(
    reward_plain: torch.Tensor,
    reward_principled: torch.Tensor,
    weighting: str = "softmax",
    temperature: float = 1.0,
) -> torch.Tensor:
    """
    Weight of the principle-guided answer in the weighted SFT loss; the plain answer gets `1 - w_p`.

    - `"softmax"`: `w_p = exp(r_p/T) / (exp(r_p/T) + exp(r/T))`, i.e. `sigmoid((r_p - r) / T)`;
    - `"linear"`: `w_p = r_p / (r_p + r)`, which needs positive rewards;
    - `"equal"`: `w_p = 0.5`.

    The weights are labels, not parameters: they carry no gradient. NaN rewards give NaN weights (skipped pairs).

    Args:
        reward_plain (`torch.Tensor`): rewards of the plain answers, shape `(num_pairs,)`.
        reward_principled (`torch.Tensor`): rewards of the principle-guided answers, shape `(num_pairs,)`.
        weighting (`str`, *optional*, defaults to `"softmax"`): `"softmax"`, `"linear"` or `"equal"`.
        temperature (`float`, *optional*, defaults to `1.0`): softmax temperature `T` (> 0).

    Returns:
        `torch.Tensor`: `w_p`, shape `(num_pairs,)`.
    """
    reward_plain, reward_principled = reward_plain.detach(), reward_principled.detach()
    if weighting == "softmax":
        if temperature <= 0:
            raise ValueError(f"`sft_temperature` must be > 0, got {temperature}.")
        return torch.sigmoid((reward_principled - reward_plain) / temperature)
    if weighting == "linear":
        finite = torch.isfinite(reward_plain) & torch.isfinite(reward_principled)
        if ((reward_plain[finite] <= 0) | (reward_principled[finite] <= 0)).any():
            raise ValueError(
                "`sft_weighting='linear'` needs strictly positive rewards, but a reward <= 0 was seen. Use "
                "`reward_transform='sigmoid'` to map rewards to (0, 1), or `sft_weighting='softmax'`."
            )
        return reward_principled / (reward_principled + reward_plain)
    if weighting == "equal":
        weights = torch.full_like(reward_plain, 0.5)
        return torch.where(torch.isfinite(reward_plain) & torch.isfinite(reward_principled), weights, math.nan)
    raise ValueError(f"Unknown `sft_weighting={weighting!r}`; use one of {SFT_WEIGHTINGS}.")


DISTILL_PAIRS = ("ranked", "all")


def distill_mask(labels: "EnhancedLabels", pairs: str = "ranked") -> torch.Tensor:
    """
    The pairs whose plain answer is trained to the principle-guided teacher's distributions: `"ranked"` where the
    reward says the principle helped by more than tau (ranked pairs that prefer the principled answer), `"all"` every
    valid pair (SDFT's choice, an ablation: the principle is distilled whatever the reward says).

    Args:
        labels ([`EnhancedLabels`]): the round's labels.
        pairs (`str`, *optional*, defaults to `"ranked"`): `"ranked"` or `"all"`.

    Returns:
        `torch.Tensor`: boolean, `(num_pairs,)`.
    """
    if pairs == "all":
        return labels.valid.bool()
    if pairs == "ranked":
        return labels.rank_mask & labels.principled_preferred & labels.valid.bool()
    raise ValueError(f"Unknown `distill_pairs={pairs!r}`; use one of {DISTILL_PAIRS}.")


class EnhancedLabels(NamedTuple):
    """
    The enhanced labels of a batch of pairs, from [`enhance`]; every field has shape `(num_pairs,)`.

    Attributes:
        rank_mask (`torch.Tensor`): `True` where the pair is trained with the ranking loss.
        principled_preferred (`torch.Tensor`): `True` where a ranked pair prefers the principle-guided answer.
        weight_principled (`torch.Tensor`): `w_p` of the weighted SFT loss (NaN for an invalid pair).
        valid (`torch.Tensor`): `True` where both rewards are finite; the other pairs are skipped.
        gap (`torch.Tensor`): signed gap `r_p - r` of the transformed rewards (the scale tau is read on), whatever
            `gap_mode` is; NaN for an invalid pair.
    """

    rank_mask: torch.Tensor
    principled_preferred: torch.Tensor
    weight_principled: torch.Tensor
    valid: torch.Tensor
    gap: torch.Tensor

    def select(self, index) -> "EnhancedLabels":
        """The labels of the pairs `index` picks (a slice, an index tensor or a mask)."""
        return EnhancedLabels(*(field[index] for field in self))


def enhance(
    reward_plain: torch.Tensor,
    reward_principled: torch.Tensor,
    tau: float,
    *,
    gap_mode: str = "signed",
    reward_transform: str = "none",
    routing: str = "threshold",
    sft_weighting: str = "softmax",
    sft_temperature: float = 1.0,
) -> EnhancedLabels:
    """
    PLE's label enhancement of one generation round: transform the rewards ([`transform_rewards`], over the plain and
    principled rewards together), route each pair ([`route_pairs`]) and weight its answers ([`soft_label_weights`]).

    Args:
        reward_plain (`torch.Tensor`): rewards of the plain answers (NaN if unscorable), shape `(num_pairs,)`.
        reward_principled (`torch.Tensor`): rewards of the principle-guided answers, shape `(num_pairs,)`.
        tau (`float`): current threshold.
        gap_mode (`str`, *optional*, defaults to `"signed"`): `"signed"` or `"absolute"`.
        reward_transform (`str`, *optional*, defaults to `"none"`): `"none"`, `"sigmoid"` or `"zscore"`.
        routing (`str`, *optional*, defaults to `"threshold"`): `"threshold"`, `"rank_all"` or `"wsft_all"`.
        sft_weighting (`str`, *optional*, defaults to `"softmax"`): `"softmax"`, `"linear"` or `"equal"`.
        sft_temperature (`float`, *optional*, defaults to `1.0`): softmax temperature.

    Returns:
        [`EnhancedLabels`]: the routing, preferred side, soft-label weights, validity and gap of each pair.
    """
    plain, principled = transform_rewards(torch.stack([reward_plain, reward_principled]), reward_transform)
    rank_mask, principled_preferred, valid = route_pairs(plain, principled, tau, gap_mode, routing)
    weight_principled = soft_label_weights(plain, principled, sft_weighting, sft_temperature)
    return EnhancedLabels(rank_mask, principled_preferred, weight_principled, valid, principled - plain)
