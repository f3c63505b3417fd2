"""GRPO's reward metrics, computed for pairs: GRPO logs them inside its sampling method, which the pair trainers
replace, so this is the pair version of that block (rewards per function, the pair's reward spread, and the flush of
what reward functions logged with `log_metric` and `log_extra`)."""

import logging

import torch
from accelerate.utils import gather_object
from trl.trainer.utils import nanstd

logger = logging.getLogger(__name__)


def log_rewards(metrics, rewards, rewards_per_func, num_pairs, reward_func_names, accelerator, pending_metrics,
                pending_extra_logs) -> dict:  # fmt: skip
    """
    Append a round's reward metrics to `metrics` (the trainer's metrics of the mode) and flush the reward functions'
    pending `log_metric` values (global means) and `log_extra` columns.

    Args:
        rewards (`torch.Tensor`): the weighted rewards of every answer of every process, `(processes * 2 * pairs,)`,
            each process's first answers then its second answers.
        rewards_per_func (`torch.Tensor`): the same per reward function, `(processes * 2 * pairs, functions)`.
        num_pairs (`int`): pairs per process.

    Returns:
        `dict`: the `log_extra` columns, one `(first, second)` tuple per pair of every process.
    """
    for i, name in enumerate(reward_func_names):
        metrics[f"rewards/{name}/mean"].append(torch.nanmean(rewards_per_func[:, i]).item())
        metrics[f"rewards/{name}/std"].append(nanstd(rewards_per_func[:, i]).item())
    metrics["reward"].append(torch.nanmean(rewards).item())
    metrics["reward_std"].append(nanstd(rewards).item())
    # A pair is GRPO's group of two: its reward std is zero when both answers got the same reward.
    pairs = rewards.view(accelerator.num_processes, 2, num_pairs)
    first, second = pairs[:, 0].flatten(), pairs[:, 1].flatten()
    scored = ~(torch.isnan(first) | torch.isnan(second))
    same = torch.isclose(first[scored], second[scored]).float()
    metrics["frac_reward_zero_std"].append(same.mean().item() if scored.any() else float("nan"))

    # Keys sorted so that every process gathers in the same order (as GRPO does).
    extra_columns = {}
    for column in sorted(set(gather_object(list(pending_extra_logs)))):
        values = list(pending_extra_logs.get(column, []))
        if len(values) != 2 * num_pairs:
            logger.warning(
                f"`log_extra({column!r}, ...)` got {len(values)} values this round, but the reward functions "
                f"scored {2 * num_pairs} answers (one per answer is expected): the column is empty this round."
            )
            values = [None] * (2 * num_pairs)
        extra_columns[column] = gather_object(list(zip(values[:num_pairs], values[num_pairs:], strict=True)))
    pending_extra_logs.clear()
    for name in sorted(set(gather_object(list(pending_metrics)))):
        values = pending_metrics.get(name, [])
        local = torch.tensor([sum(values), len(values)], dtype=torch.float32, device=accelerator.device)
        total, count = accelerator.gather(local).view(-1, 2).sum(dim=0).tolist()
        metrics[name].append(total / count)
    pending_metrics.clear()
    return extra_columns
