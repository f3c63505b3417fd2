"""
What [`PLETrainer`] logs: PLE's `ple/*` metrics of each generation round, GRPO's reward metrics computed for pairs,
and the completions table (one row per pair), written to parquet, printed with rich and sent to wandb/trackio.
"""

import logging
import math
import os

import torch
from accelerate.utils import gather_object
from transformers.utils import is_rich_available
from trl.trainer.utils import nanstd, strip_images_from_messages


# The trainer's logger, so that log filters set on `ple_trl.trainer` keep applying to these messages.
logger = logging.getLogger("ple_trl.trainer")

ROUTE_NAMES = {True: "rank", False: "wsft"}


def _as_text(value) -> str:
    if isinstance(value, list):  # a conversation
        return "\n".join(f"{message.get('role', '')}: {message.get('content', '')}" for message in value)
    return str(value)


class CompletionsLoggingMixin:
    """Metrics and the completions table; mixed into [`PLETrainer`] before [`~trl.GRPOTrainer`], whose `log` its
    `log` extends."""

    def _log_round(self, mode, tau, reward_plain, reward_principled, labels):
        metrics = self._metrics[mode]
        rank_mask, valid = labels.rank_mask, labels.valid
        num_valid = valid.sum()
        skipped = int((~valid).sum())
        metrics["ple/tau"].append(tau)
        metrics["ple/skipped_pairs"].append(float(skipped))
        if skipped:
            self._skipped_pairs_total += skipped
            logger.warning(
                f"{skipped} pair(s) had a NaN/None reward and are skipped this round ({self._skipped_pairs_total} so "
                "far); they are not trained on."
            )
        if num_valid == 0:
            return
        wsft = valid & ~rank_mask
        stats = torch.stack(
            [
                rank_mask.sum() / num_valid,
                reward_plain[valid].mean(),
                reward_principled[valid].mean(),
                labels.gap[valid].mean(),
                labels.weight_principled[wsft].mean() if wsft.any() else torch.tensor(torch.nan, device=valid.device),
            ]
        ).tolist()  # one device sync for all of them
        for name, value in zip(
            ("rank_fraction", "reward_plain", "reward_principled", "reward_gap", "sft_weight_principled"), stats
        ):
            metrics[f"ple/{name}"].append(value)

    def _log_rewards(self, mode, rewards, rewards_per_func, num_pairs):
        """GRPO's reward metrics for pairs, and the flush of what reward functions logged with `log_metric` and
        `log_extra`. GRPO does this inside its sampling method, which PLE replaces: this is the pair version of that
        block. Returns the `log_extra` columns as one `(plain, principled)` tuple per pair of every process."""
        metrics = self._metrics[mode]
        for i, name in enumerate(self.reward_func_names):
            metrics[f"rewards/{name}/mean"].append(torch.nanmean(rewards_per_func[:, i]).item())
            metrics[f"rewards/{name}/std"].append(nanstd(rewards_per_func[:, i]).item())
        metrics["reward"].append(torch.nanmean(rewards).item())
        metrics["reward_std"].append(nanstd(rewards).item())
        # A pair is GRPO's group of two: its reward std is zero when both answers got the same reward.
        pairs = rewards.view(self.accelerator.num_processes, 2, num_pairs)
        plain, principled = pairs[:, 0].flatten(), pairs[:, 1].flatten()
        scored = ~(torch.isnan(plain) | torch.isnan(principled))
        same = torch.isclose(plain[scored], principled[scored]).float()
        metrics["frac_reward_zero_std"].append(same.mean().item() if scored.any() else math.nan)

        # Keys sorted so that every process gathers in the same order (as GRPO does).
        extra_columns = {}
        for column in sorted(set(gather_object(list(self._pending_extra_logs)))):
            values = list(self._pending_extra_logs.get(column, []))
            if len(values) != 2 * num_pairs:
                logger.warning(
                    f"`log_extra({column!r}, ...)` got {len(values)} values this round, but the reward functions "
                    f"scored {2 * num_pairs} answers (one per answer is expected): the column is empty this round."
                )
                values = [None] * (2 * num_pairs)
            extra_columns[column] = gather_object(list(zip(values[:num_pairs], values[num_pairs:], strict=True)))
        self._pending_extra_logs.clear()
        for name in sorted(set(gather_object(list(self._pending_metrics)))):
            values = self._pending_metrics.get(name, [])
            local = torch.tensor([sum(values), len(values)], dtype=torch.float32, device=self.accelerator.device)
            total, count = self.accelerator.gather(local).view(-1, 2).sum(dim=0).tolist()
            metrics[name].append(total / count)
        self._pending_metrics.clear()
        return extra_columns

    def _add_completion_rows(self, texts, pair_rewards, rewards_per_func, labels, tau, extra_columns):
        """Rows of the completions table: `texts` holds `(prompt, principle, plain, principled)` of every pair of every
        process, `pair_rewards` their rewards `(2, pairs)`."""
        if not self.accelerator.is_main_process:
            return
        columns = torch.stack(
            [*pair_rewards, labels.rank_mask.float(), labels.weight_principled, labels.valid.float()]
        ).T.tolist()
        per_func = rewards_per_func.view(self.accelerator.num_processes, 2, -1, rewards_per_func.size(-1))
        per_func_plain = per_func[:, 0].flatten(0, 1).tolist()
        per_func_principled = per_func[:, 1].flatten(0, 1).tolist()
        for j, ((prompt, principle, plain, principled), (r, r_p, rank, w_p, ok)) in enumerate(zip(texts, columns)):
            row = {
                "step": self.state.global_step,
                "prompt": strip_images_from_messages(prompt),
                "principle": principle,
                "plain": strip_images_from_messages(plain),
                "principled": strip_images_from_messages(principled),
                "reward_plain": r if ok else None,
                "reward_principled": r_p if ok else None,
                "route": "skipped" if not ok else ROUTE_NAMES[bool(rank)],
                "weight_principled": w_p if ok else None,
                "tau": tau,
            }
            if len(self.reward_func_names) > 1:
                for i, name in enumerate(self.reward_func_names):
                    row[f"{name}_plain"] = per_func_plain[j][i]
                    row[f"{name}_principled"] = per_func_principled[j][i]
            for column, values in extra_columns.items():
                row[f"{column}_plain"], row[f"{column}_principled"] = values[j]
            self._completion_rows.append(row)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        mode = "train" if self.model.training else "eval"
        # tau is a schedule, not a measurement: log its value at this step (the last round's), not the window's mean.
        taus = self._metrics[mode].get("ple/tau")
        if taus:
            self._metrics[mode]["ple/tau"] = taus[-1:]
        # GRPO's completions table (one completion, its advantage) has no meaning for pairs: PLE writes its own.
        log_completions, self.log_completions = self.log_completions, False
        try:
            super().log(logs, start_time)
        finally:
            self.log_completions = log_completions
        # The end-of-training summary repeats the last step, whose table is already written.
        end_of_training = "train_runtime" in logs
        if self.log_completions and self.accelerator.is_main_process and self._completion_rows and not end_of_training:
            self._write_completions()

    def _write_completions(self):
        import pandas as pd

        rows = list(self._completion_rows)
        step = self.state.global_step
        shown = rows if self.num_completions_to_print is None else rows[: self.num_completions_to_print]
        if is_rich_available() and shown:
            self._print_completions(shown, step, self._completion_columns)
        frame = pd.DataFrame(rows)
        folder = os.path.join(self.args.output_dir, "completions")
        os.makedirs(folder, exist_ok=True)
        frame.to_parquet(os.path.join(folder, f"completions_{step:05d}.parquet"))

        report_to = self.args.report_to or []
        backends = []
        if "wandb" in report_to:
            import wandb

            if wandb.run is not None:
                backends.append(wandb)
        if "trackio" in report_to:
            import trackio

            backends.append(trackio)
        if self.log_unique_prompts:
            frame = frame[~frame["prompt"].astype(str).duplicated()]
        for backend in backends:
            backend.log({"completions": backend.Table(dataframe=frame)})

    @staticmethod
    def _print_completions(rows, step, fixed):
        from rich.console import Console
        from rich.panel import Panel
        from rich.table import Table

        table = Table(show_header=True, header_style="bold white", expand=True)
        extra = [key for key in rows[0] if key not in fixed and key != "step"]
        for column in (*fixed, *extra):
            numeric = column.startswith(("reward", "weight")) or column == "tau"
            table.add_column(column, justify="right" if numeric else "left")
        for row in rows:
            cells = []
            for column in (*fixed, *extra):
                value = row.get(column)
                cells.append(f"{value:.3f}" if isinstance(value, float) else _as_text(value))
            table.add_row(*cells)
            table.add_section()
        Console().print(Panel(table, expand=False, title=f"Step {step}", border_style="bold white"))
