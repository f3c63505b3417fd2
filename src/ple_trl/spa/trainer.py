"""[`SPATrainer`]: SPA's generation round (two plain samples labelled by the implicit reward) and its self-refined DPO
loss, on the pair machinery of [`PairTrainer`]."""

import logging
import textwrap

import torch
from accelerate.utils import gather_object
from trl.trainer.utils import strip_images_from_messages

from ..pairs.trainer import PairTrainer
from ..rewards.implicit import implicit_reward_column
from . import labeling, losses
from .config import SPAConfig

logger = logging.getLogger(__name__)


class SPATrainer(PairTrainer):
    """
    Trainer for SPA, from [Aligning Large Language Models with Self-generated Preference
    Data](https://huggingface.co/papers/2406.04412) (Kim et al., ICLR 2025).

    For each prompt the model samples two plain answers. Its implicit reward
    `beta_judge * (log pi_judge(y|x) - log pi_init(y|x))` labels the better one chosen and the other rejected, with no
    reward function or model. The pairs are trained with DPO (`beta`) against the model as it was at the start of the
    current iteration; after a warm-up, SPA's self-refinement smooths the labels of the pairs whose margin `beta * h`
    is below the `confidence_quantile` of the last `margin_history_size` margins.

    `SPATrainer` is a [`PairTrainer`] (itself a [`~trl.GRPOTrainer`]), like [`PLETrainer`]: generation, the pair
    layout (a pair's two answers travel together through buffering and gradient accumulation), the one forward over
    both answers, the reference handling, the audit log and the resume hooks are the pair trainer's. This class builds
    SPA's round (two plain samples labelled by the implicit reward) and its loss.

    Models: `model` is the policy, normally the seed-DPO model. `pi_init` is `ref_model` (the model the seed DPO
    started from), or, for a `PeftModel` whose trained adapter is the policy, its adapter-disabled model. Without
    either, `pi_init` would be the initial policy itself, every implicit reward 0 and every pair a tie: that is an
    error. A pair whose two rewards are equal is not trained (counted in `spa/tied_pairs`). The DPO reference is
    the policy at the start of the iteration: under PEFT a copy of the adapter (a second adapter named `"ref"`), else a
    frozen copy of the model, refreshed in place at each iteration boundary with TRL's `SyncRefModelCallback`
    syncing, saved in every checkpoint and restored on resume.

    Logged metrics: `spa/implicit_reward_chosen`, `spa/implicit_reward_rejected`, `spa/margin` (reward margin of the
    chosen over the rejected answer), `spa/refined_fraction` (share of pairs smoothed), `spa/confidence_threshold`,
    `spa/iteration`, `spa/skipped_pairs` (a non-finite reward), `spa/tied_pairs` (two equal rewards: no preference,
    not trained), and GRPO's `reward`/`rewards/implicit_reward/*`.

    Example:

    ```python
    >>> from datasets import Dataset
    >>> from ple_trl import SPAConfig, SPATrainer

    >>> dataset = Dataset.from_dict({"prompt": ["Write a review of the movie:", "Tell me about your day:"]})
    >>> args = SPAConfig(output_dir="spa-out", per_device_train_batch_size=2, max_steps=4, steps_per_iteration=2,
    ...                  iteration_unit="steps")
    >>> trainer = SPATrainer(model="path/to/seed-dpo-model", ref_model="path/to/sft-model", args=args,
    ...                      train_dataset=dataset)
    >>> trainer.train()
    ```

    Args:
        model (`str`, [`~transformers.PreTrainedModel`] or [`~peft.PeftModel`]):
            The policy, as for [`~trl.GRPOTrainer`].
        args ([`SPAConfig`], *optional*):
            Configuration. `per_device_train_batch_size` counts pairs (prompts).
        train_dataset, eval_dataset, processing_class, callbacks, optimizers, peft_config, quantization_config:
            As for [`PLETrainer`] (the datasets need no `principle`).
        ref_model (`str` or [`~transformers.PreTrainedModel`], *optional*):
            `pi_init` of the implicit reward (see above).
    """

    _tag_names = ["trl", "spa"]
    _name = "SPA"
    _config_class = SPAConfig
    _config_hint = (
        "SPATrainer needs an `SPAConfig` (SPA's knobs and defaults: temperature 0.7, beta 0.1, self-refinement). "
        "Build one with the same model, generation and training fields."
    )
    _completion_columns = ("prompt", "chosen", "rejected", "reward_chosen", "reward_rejected", "route")
    _metrics_at_step = ("spa/iteration", "spa/confidence_threshold")
    _paper = {
        "title": "Aligning Large Language Models with Self-generated Preference Data",
        "id": "2406.04412",
        # docstyle-ignore
        "citation": textwrap.dedent("""\
            @inproceedings{kim2025spa,
                title        = {{Aligning Large Language Models with Self-generated Preference Data}},
                author       = {Dongyoung Kim and Kimin Lee and Jinwoo Shin and Jaehyung Kim},
                year         = 2025,
                booktitle    = {The Thirteenth International Conference on Learning Representations},
                eprint       = {arXiv:2406.04412},
            }"""),
    }

    def __init__(
        self,
        model,
        args: SPAConfig | None = None,
        train_dataset=None,
        eval_dataset=None,
        processing_class=None,
        callbacks=None,
        optimizers=(None, None),
        peft_config=None,
        ref_model=None,
        quantization_config=None,
    ):
        args = self._resolve_args(model, args)
        super().__init__(
            model=model,
            # GRPO wants one reward source; this one only names the reward column: the implicit reward labels.
            reward_funcs=[implicit_reward_column],
            args=args,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            callbacks=callbacks,
            optimizers=optimizers,
            peft_config=peft_config,
            ref_model=ref_model,
            quantization_config=quantization_config,
        )
        self._skipped_pairs_total = self._tied_pairs_total = 0
        self._margin_history = losses.MarginHistory(
            args.margin_history_size, args.confidence_quantile, per_pair=args.margin_history_per_pair
        )

    # --- the pair trainer's hooks: the implicit reward labels, and the DPO reference is the iteration snapshot -----

    def _uses_implicit_reward(self, args) -> bool:
        return True

    def _uses_iteration_snapshot(self, args) -> bool:
        return True  # the DPO reference is the previous iteration's model, whatever judges the pairs

    # --- sampling -----------------------------------------------------------------------------------------------

    def _generate_and_score_completions(self, inputs):
        mode = "train" if self.model.training else "eval"
        num_pairs = len(inputs)
        prompts, images, model_prompts = self._round_prompts(inputs)
        if mode == "train":
            self._snapshot.refresh(self.completed_iterations())
        # Two plain samples per prompt, in one generation call: the first samples, then the second samples.
        output, completions, _ = self._generate_round(model_prompts, model_prompts, images)

        # One forward of the snapshot gives both the DPO reference and, with `implicit_reward_judge="iteration"`,
        # the judge's log-probs.
        snapshot_logps = self._frozen_pair_logps("snapshot", output)
        judge_logps = snapshot_logps if self.args.implicit_reward_judge == "iteration" else None
        rewards = self._gather_pair_rewards(self._implicit_rewards(output, judge_logps))
        self._log_rewards(mode, rewards, rewards.unsqueeze(1), num_pairs)
        rewards = rewards.view(self.accelerator.num_processes, 2, num_pairs)
        rewards_a, rewards_b = rewards[:, 0].flatten(), rewards[:, 1].flatten()
        # Labels from the rewards of every process, so every process takes the same decisions.
        chosen_is_a, _, margin, valid = labeling.label_pairs(rewards_a, rewards_b)
        reward_chosen, reward_rejected = labeling.select_chosen_rejected(rewards_a, rewards_b, chosen_is_a)
        tied = torch.isfinite(rewards_a) & (rewards_a == rewards_b)
        self._log_spa_round(mode, reward_chosen, reward_rejected, margin, valid, tied)

        save_labels = self.args.save_enhanced_labels and mode == "train"
        if save_labels or self.log_completions:
            texts = gather_object(
                [(prompt, completions[i], completions[num_pairs + i]) for i, prompt in enumerate(prompts)]
            )
            records = self._spa_records(texts, rewards_a, rewards_b, chosen_is_a, valid)
            if save_labels:
                self._audit(records)
            if self.log_completions:
                columns = ("step", *self._completion_columns)
                self._add_completion_rows([{key: record[key] for key in columns} for record in records])

        local = self._local(num_pairs)
        pick_a = chosen_is_a[local]
        # Reorder every pair into (chosen, rejected): the loss reads index 0 as chosen.
        for key in ("completion_ids", "completion_mask"):
            chosen, rejected = labeling.select_chosen_rejected(output[key][:, 0], output[key][:, 1], pick_a)
            output[key] = torch.stack([chosen, rejected], dim=1)
        ref = snapshot_logps[1 if self.args.length_normalize else 0]  # (2, pairs)
        ref_chosen, ref_rejected = labeling.select_chosen_rejected(ref[0], ref[1], pick_a)
        output["ref_logps"] = torch.stack([ref_chosen, ref_rejected], dim=1)
        output["valid"] = valid[local]
        return output

    def _log_spa_round(self, mode, reward_chosen, reward_rejected, margin, valid, tied):
        metrics = self._metrics[mode]
        num_tied = int(tied.sum())
        skipped = int((~valid).sum()) - num_tied
        metrics["spa/skipped_pairs"].append(float(skipped))
        metrics["spa/tied_pairs"].append(float(num_tied))
        metrics["spa/iteration"].append(float(self.completed_iterations()))
        if skipped:
            self._skipped_pairs_total += skipped
            logger.warning(
                f"{skipped} pair(s) had a non-finite implicit reward and are skipped this round "
                f"({self._skipped_pairs_total} so far); they are not trained on."
            )
        if num_tied:
            self._tied_pairs_total += num_tied
            logger.warning(
                f"{num_tied} pair(s) had two equal implicit rewards, which prefer neither answer: they are not "
                f"trained on this round ({self._tied_pairs_total} so far)."
            )
        if not valid.any():
            return
        stats = torch.stack([reward_chosen[valid].mean(), reward_rejected[valid].mean(), margin[valid].mean()])
        for name, value in zip(("implicit_reward_chosen", "implicit_reward_rejected", "margin"), stats.tolist()):
            metrics[f"spa/{name}"].append(value)

    def _spa_records(self, texts, rewards_a, rewards_b, chosen_is_a, valid) -> list[dict]:
        """One record per pair of every process: `texts` holds `(prompt, first answer, second answer)`."""
        columns = torch.stack([rewards_a, rewards_b, chosen_is_a.float(), valid.float()]).T.tolist()
        iteration = self.completed_iterations()
        records = []
        for (prompt, answer_a, answer_b), (r_a, r_b, a_chosen, ok) in zip(texts, columns, strict=True):
            chosen, rejected = (answer_a, answer_b) if a_chosen else (answer_b, answer_a)
            r_c, r_r = (r_a, r_b) if a_chosen else (r_b, r_a)
            records.append(
                {
                    "step": self.state.global_step,
                    "iteration": iteration,
                    "prompt": strip_images_from_messages(prompt),
                    "chosen": strip_images_from_messages(chosen),
                    "rejected": strip_images_from_messages(rejected),
                    "reward_chosen": r_c if ok else None,
                    "reward_rejected": r_r if ok else None,
                    "margin": r_c - r_r if ok else None,
                    "chosen_sample": ("first" if a_chosen else "second") if ok else None,
                    "route": "dpo" if ok else "tied" if r_a == r_b else "skipped",
                }
            )
        return records

    # --- loss ---------------------------------------------------------------------------------------------------

    def refinement_strength(self) -> float:
        """SPA's smoothing strength `a` now: 0 during the warm-up (a fraction of the run's optimizer steps)."""
        return losses.refinement_strength(
            self.state.global_step,
            self.state.max_steps,
            self.args.refinement_alpha,
            self.args.refinement_warmup_ratio,
        )

    def _compute_loss(self, model, inputs):
        mode = "train" if self.model.training else "eval"
        sums, means, aux_loss = self._pair_logps(model, inputs, compute_aux_loss=self.aux_loss_enabled)
        policy = means if self.args.length_normalize else sums  # (2, pairs): chosen, rejected
        ref = inputs["ref_logps"]  # (pairs, 2)
        valid = inputs["valid"]
        h = losses.logratio_margin(policy[0], policy[1], ref[:, 0], ref[:, 1])
        a = self.refinement_strength()
        threshold = self._margin_history.threshold
        if self.args.decouple_lambda > 0:
            # The confidence is judged on the policy extrapolated away from the reference (de-coupled noise detection).
            mixed = self._decoupled_logps(model, inputs)
            h_judged = losses.logratio_margin(mixed[0], mixed[1], ref[:, 0], ref[:, 1])
        else:
            h_judged = h
        margins = self.beta * h_judged.detach()
        z = losses.confidence(margins, threshold)
        per_pair = losses.self_refined_dpo_loss(h, z, self.beta, a)
        # Skipped (non-finite) pairs weigh 0; with none skipped this is the batch mean.
        weights = valid.to(per_pair.dtype)
        loss = (per_pair * weights).sum() / weights.sum().clamp(min=1)

        refined = ((z == 0) & valid).float() if a > 0 else torch.zeros_like(weights)
        totals = self.accelerator.reduce(
            torch.stack([refined.sum(), weights.sum()]).detach().float(), reduction="sum"
        ).tolist()
        if totals[1]:
            self._metrics[mode]["spa/refined_fraction"].append(totals[0] / totals[1])
        self._metrics[mode]["spa/confidence_threshold"].append(threshold)
        if mode == "train":
            # Every process's margins, so the threshold is the same on every process.
            all_margins = self.accelerator.gather(torch.where(valid, margins, torch.full_like(margins, float("nan"))))
            self._margin_history.update(all_margins)

        return self._scaled_loss(loss, aux_loss, mode)

    def _decoupled_logps(self, model, inputs):
        """Per-answer log-probs `(2, pairs)` under the mixed logits `(1 + lambda) * z_theta - lambda * z_ref`
        (`z_ref`: the iteration snapshot), without gradient; sums, or means with `length_normalize`."""
        if any(inputs.get(key) is not None for key in ("pixel_values", "num_images")):
            raise ValueError(
                "`decouple_lambda > 0` is supported for text-only models: the mixed logits are computed without the "
                "images. Set `decouple_lambda=0` for a vision-language policy."
            )
        num_pairs = inputs["prompt_ids"].size(0)
        completion_ids = inputs["completion_ids"].transpose(0, 1).flatten(0, 1)
        completion_mask = inputs["completion_mask"].transpose(0, 1).flatten(0, 1)
        input_ids = torch.cat([inputs["prompt_ids"].repeat(2, 1), completion_ids], dim=1)
        attention_mask = torch.cat([inputs["prompt_mask"].repeat(2, 1), completion_mask], dim=1)
        length = completion_ids.size(1)

        def completion_logits(net):
            # Plain forward (not the fused log-prob head): the logits that predict each answer token.
            return net(input_ids=input_ids, attention_mask=attention_mask).logits[:, -length - 1 : -1].float()

        with torch.no_grad():
            policy_logits = completion_logits(model)
            with self._snapshot.forward_with(model) as snapshot:
                reference_logits = completion_logits(snapshot)
        logps = losses.decoupled_sequence_logps(
            policy_logits,
            reference_logits,
            completion_ids,
            completion_mask,
            self.args.decouple_lambda,
            self.args.length_normalize,
        )
        return logps.view(2, num_pairs)

    def _extra_state(self) -> dict:
        return {"margin_history": self._margin_history.state_dict()}

    def _load_extra_state(self, state: dict, checkpoint: str):
        if "margin_history" in state:
            self._margin_history.load_state_dict(state["margin_history"])
        else:
            logger.warning(
                f"{checkpoint} has no saved SPA margin history: the confidence threshold restarts from its initial "
                "value until the history is full again."
            )

    def _ple_settings_section(self) -> str:
        args = self.args
        iteration = (
            f"{args.steps_per_iteration} optimizer step(s)" if args.iteration_unit == "steps" else "one epoch"
        )
        lines = [
            "### SPA settings",
            "",
            f"- Sampling: two plain answers per prompt, temperature={args.temperature}",
            f"- Implicit reward: beta_judge={args.beta_judge}, judge={args.implicit_reward_judge}, "
            f"length_normalize={args.implicit_reward_length_normalize}",
            f"- DPO: beta={args.beta} against the model at the start of each iteration (one iteration = {iteration})",
            f"- Self-refinement: refinement_alpha={args.refinement_alpha}, warm-up {args.refinement_warmup_ratio} of "
            f"the steps, confidence_quantile={args.confidence_quantile}, margin_history_size="
            f"{args.margin_history_size}",
            "",
        ]
        return "\n".join(lines)


