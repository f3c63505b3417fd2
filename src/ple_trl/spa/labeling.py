"""SPA's labels: of two sampled answers, the one with the higher implicit reward is chosen, the other rejected."""

import torch


def label_pairs(
    rewards_a: torch.Tensor, rewards_b: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """
    Best = chosen, worst = rejected, for two sampled answers `a` and `b` per prompt.

    A tie (two equal rewards) carries no preference, and a pair where either reward is NaN or infinite has none either:
    both are marked invalid (margin NaN; `chosen_is_a` is `True`, a placeholder); the caller must count and skip them,
    never train on them.

    Args:
        rewards_a (`torch.Tensor`): implicit rewards of the first answers, shape `(num_pairs,)`.
        rewards_b (`torch.Tensor`): implicit rewards of the second answers, same shape.

    Returns:
        `tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]`:
            - `chosen_is_a` (`bool`): `True` where `a` is the chosen answer;
            - `chosen_index` (`long`): 0 where `a` is chosen, 1 where `b` is (index into the pair);
            - `margin` (`float`): `r_chosen - r_rejected >= 0`, NaN on invalid pairs;
            - `valid` (`bool`): both rewards are finite and differ.
    """
    if rewards_a.shape != rewards_b.shape:
        raise ValueError(
            f"`rewards_a` and `rewards_b` must have the same shape, got {tuple(rewards_a.shape)} and "
            f"{tuple(rewards_b.shape)}; pass one reward per prompt for each of the two samples."
        )
    valid = torch.isfinite(rewards_a) & torch.isfinite(rewards_b) & (rewards_a != rewards_b)
    chosen_is_a = (rewards_a > rewards_b) | ~valid
    chosen_index = (~chosen_is_a).long()
    margin = (rewards_a - rewards_b).abs()
    margin = torch.where(valid, margin, torch.full_like(margin, float("nan")))
    return chosen_is_a, chosen_index, margin, valid


def select_chosen_rejected(
    values_a: torch.Tensor, values_b: torch.Tensor, chosen_is_a: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """
    Reorder any per-sample tensor (log-probs, token ids, masks) of a pair into `(chosen, rejected)`.

    Args:
        values_a (`torch.Tensor`): values of the first answers, shape `(num_pairs, ...)`.
        values_b (`torch.Tensor`): values of the second answers, same shape.
        chosen_is_a (`torch.Tensor`): from [`label_pairs`], shape `(num_pairs,)`.

    Returns:
        `tuple[torch.Tensor, torch.Tensor]`: `(chosen, rejected)`, each shaped like `values_a`.
    """
    pick_a = chosen_is_a.reshape(chosen_is_a.shape + (1,) * (values_a.dim() - 1))
    return torch.where(pick_a, values_a, values_b), torch.where(pick_a, values_b, values_a)
