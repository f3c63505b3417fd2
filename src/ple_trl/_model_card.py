"""The model card of [`PLETrainer`]: TRL's card plus a "PLE settings" section."""

import os
import textwrap


class ModelCardMixin:
    """The model card; mixed into [`PLETrainer`] before [`~trl.GRPOTrainer`], whose `create_model_card` it extends."""

    def create_model_card(self, model_name=None, dataset_name=None, tags=None):
        """
        TRL's model card (see [`~trl.GRPOTrainer.create_model_card`]), with a "PLE settings" section: the principles,
        the threshold schedule, the routing, the losses and the rewards the model was trained with.
        """
        super().create_model_card(model_name=model_name, dataset_name=dataset_name, tags=tags)
        path = os.path.join(self.args.output_dir, "README.md")
        if not self.is_world_process_zero() or not os.path.isfile(path):
            return
        with open(path) as f:
            card = f.read()
        section = self._ple_settings_section()
        marker = "### Framework versions"
        # Under "Training procedure", before the versions; at the end if TRL's template changes.
        card = card.replace(marker, f"{section}\n{marker}", 1) if marker in card else f"{card.rstrip()}\n\n{section}"
        with open(path, "w") as f:
            f.write(card)

    def _ple_settings_section(self) -> str:
        args = self.args

        def short(text, width=80):
            return textwrap.shorten(" ".join(str(text).split()), width=width, placeholder="...")

        if args.principles is not None:
            principles = "; ".join(f'"{short(p, 60)}"' for p in args.principles[:5])
            if len(args.principles) > 5:
                principles += f" (and {len(args.principles) - 5} more)"
            principles = f"{len(args.principles)}, one drawn per prompt: {principles}"
        elif args.principle is not None:
            principles = f'"{short(args.principle)}"'
        else:
            principles = "from the dataset's `principle` column"
        if args.iteration_unit == "steps":
            iteration = f"{args.steps_per_iteration} optimizer step(s)"
        else:
            iteration = "one epoch"
        reference = f", beta={args.beta}" if self.beta > 0 else " (no reference model)"
        weights = zip(self.reward_func_names, self.reward_weights.tolist(), strict=True)
        rewards = ", ".join(f"`{name}` (weight {weight:g})" for name, weight in weights)
        lines = [
            "### PLE settings",
            "",
            f"- Principle(s): {principles}",
            f"- Threshold: tau0={args.tau0}, alpha={args.alpha}, tau_min={args.tau_min}; one PLE iteration = "
            f"{iteration}",
            f"- Routing: {args.routing} (gap_mode={args.gap_mode}, reward_transform={args.reward_transform})",
            f"- Ranking loss: {args.ranking_loss_type}{reference}, length_normalize={args.length_normalize}, "
            f"rank_coef={args.rank_coef}, rank_sft_coef={args.rank_sft_coef}",
            f"- Weighted SFT: sft_weighting={args.sft_weighting}, sft_temperature={args.sft_temperature}, "
            f"wsft_coef={args.wsft_coef}",
            f"- Rewards: {rewards}",
            "",
        ]
        return "\n".join(lines)
