"""`SPATrainer`: SPA's self-generated preference loop on PLE's pair machinery."""

import json
import logging
import os
import textwrap

import torch
from accelerate.utils import gather_object
from trl import GRPOTrainer
from trl.trainer.utils import strip_images_from_messages, use_adapter

from . import spa
from .config import SPAConfig
from .data import prompt_is_empty
from .stages import save_merged_model
from .trainer import AUDIT_LOG_NAME, PLETrainer

logger = logging.getLogger(__name__)


class SPATrainer(PLETrainer):
    """
    Trainer for SPA, from [Aligning Large Language Models with Self-generated Preference
    Data](https://huggingface.co/papers/2406.04412) (Kim et al., ICLR 2025).

    For each prompt the model samples two plain answers. Its implicit reward
    `beta_judge * (log pi_judge(y|x) - log pi_init(y|x))` labels the better one chosen and the other rejected, with no
    reward function or model. The pairs are trained with DPO (`beta`) against the model as it was at the start of the
    current iteration; after a warm-up, SPA's self-refinement smooths the labels of the pairs whose margin `beta * h`
    is below the `confidence_quantile` of the last `margin_history_size` margins.

    `SPATrainer` is a [`PLETrainer`] (itself a [`~trl.GRPOTrainer`]): generation, the pair layout (a pair's two answers
    travel together through buffering and gradient accumulation), the one forward over both answers, the reference
    handling, the audit log and the resume hooks are PLE's. SPA replaces the labeller (the implicit reward instead of
    reward functions and principles) and the loss.

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
            As for [`PLETrainer`].
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
    _uses_principles = False
    _completion_columns = ("prompt", "chosen", "rejected", "reward_chosen", "reward_rejected", "route")
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
        super().__init__(
            model=model,
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
        args = self.args  # `None` became SPA's defaults in `_resolve_args`
        self._tied_pairs_total = 0
        self._margin_history = spa.MarginHistory(
            args.margin_history_size, args.confidence_quantile, per_pair=args.margin_history_per_pair
        )

    @staticmethod
    def _uses_iteration_snapshot(args) -> bool:
        return True  # the DPO reference is the previous iteration's model, whatever judges the pairs

    # --- sampling -----------------------------------------------------------------------------------------------

    def _tokenize_prompts(self, prompts):
        # Both halves are the same plain prompts: truncate each from the left, as TRL truncates prompts.
        prompt_ids, images, multimodal_fields = GRPOTrainer._tokenize_prompts(self, prompts)
        max_length = self.args.max_prompt_length
        if max_length is not None and any(len(ids) > max_length for ids in prompt_ids):
            if images is not None:
                raise ValueError(
                    f"A prompt with images has more than `max_prompt_length={max_length}` tokens (image tokens "
                    "included), and multimodal prompts cannot be truncated without losing image tokens. Raise "
                    "`max_prompt_length`, or set it to `None`."
                )
            prompt_ids = [list(ids)[-max_length:] for ids in prompt_ids]
        return prompt_ids, images, multimodal_fields

    def _generate_and_score_completions(self, inputs):
        mode = "train" if self.model.training else "eval"
        num_pairs = len(inputs)
        for example in inputs:  # a stream's rows are checked as they come (see `data.prepare_prompt_dataset`)
            if prompt_is_empty(example.get("prompt")):
                raise ValueError(
                    f"A row has an empty or missing `prompt`: {example.get('prompt')!r}. Remove such rows, e.g. "
                    "`dataset.filter(lambda row: row['prompt'])`."
                )
        prompts = [example["prompt"] for example in inputs]
        images = self._dataset_images(inputs)
        model_prompts = self._with_images(prompts, images)
        if mode == "train":
            self._maybe_refresh_snapshot()

        # Two plain samples per prompt, in one generation call: the first samples, then the second samples.
        generated = self._generate(model_prompts + model_prompts)
        prompt_ids_list, completion_ids_list, completions = generated[0], generated[1], generated[3]
        output = self._pair_batch(prompt_ids_list, completion_ids_list, model_prompts, images)

        # One forward of the snapshot gives both the DPO reference and, with `implicit_reward_judge="iteration"`,
        # the judge's log-probs.
        snapshot_logps = self._frozen_pair_logps("snapshot", output)
        judge_logps = snapshot_logps if self.args.implicit_reward_judge == "iteration" else None
        rewards = self._gather_pair_rewards(self._implicit_rewards(output, judge_logps))
        self._log_rewards(mode, rewards, rewards.unsqueeze(1), num_pairs)
        rewards = rewards.view(self.accelerator.num_processes, 2, num_pairs)
        rewards_a, rewards_b = rewards[:, 0].flatten(), rewards[:, 1].flatten()
        # Labels from the rewards of every process, so every process takes the same decisions.
        chosen_is_a, _, margin, valid = spa.label_pairs(rewards_a, rewards_b)
        reward_chosen, reward_rejected = spa.select_chosen_rejected(rewards_a, rewards_b, chosen_is_a)
        tied = torch.isfinite(rewards_a) & (rewards_a == rewards_b)
        self._log_spa_round(mode, reward_chosen, reward_rejected, margin, valid, tied)

        save_labels = self.args.save_enhanced_labels and mode == "train"
        if save_labels or self.log_completions:
            texts = gather_object(
                [(prompt, completions[i], completions[num_pairs + i]) for i, prompt in enumerate(prompts)]
            )
            records = self._spa_records(texts, rewards_a, rewards_b, chosen_is_a, valid)
            if save_labels:
                self._save_spa_labels(records)
            if self.log_completions and self.accelerator.is_main_process:
                columns = ("step", *self._completion_columns)
                self._completion_rows.extend({key: record[key] for key in columns} for record in records)

        local = slice(self.accelerator.process_index * num_pairs, (self.accelerator.process_index + 1) * num_pairs)
        pick_a = chosen_is_a[local]
        # Reorder every pair into (chosen, rejected): the loss reads index 0 as chosen.
        for key in ("completion_ids", "completion_mask"):
            chosen, rejected = spa.select_chosen_rejected(output[key][:, 0], output[key][:, 1], pick_a)
            output[key] = torch.stack([chosen, rejected], dim=1)
        ref = snapshot_logps[1 if self.args.length_normalize else 0]  # (2, pairs)
        ref_chosen, ref_rejected = spa.select_chosen_rejected(ref[0], ref[1], pick_a)
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

    def _save_spa_labels(self, records):
        """Append the round's SPA labels to the audit log, one record per pair of every process."""
        if not self.accelerator.is_main_process:
            return
        path = os.path.join(self.args.output_dir, AUDIT_LOG_NAME)
        os.makedirs(self.args.output_dir, exist_ok=True)
        with open(path, "a") as f:
            f.writelines(json.dumps(record) + "\n" for record in records)

    # --- loss ---------------------------------------------------------------------------------------------------

    def refinement_strength(self) -> float:
        """SPA's smoothing strength `a` now: 0 during the warm-up (a fraction of the run's optimizer steps)."""
        return spa.refinement_strength(
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
        h = spa.logratio_margin(policy[0], policy[1], ref[:, 0], ref[:, 1])
        a = self.refinement_strength()
        threshold = self._margin_history.threshold
        if self.args.decouple_lambda > 0:
            # The confidence is judged on the policy extrapolated away from the reference (de-coupled noise detection).
            mixed = self._decoupled_logps(model, inputs)
            h_judged = spa.logratio_margin(mixed[0], mixed[1], ref[:, 0], ref[:, 1])
        else:
            h_judged = h
        margins = self.beta * h_judged.detach()
        z = spa.confidence(margins, threshold)
        per_pair = spa.self_refined_dpo_loss(h, z, self.beta, a)
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

        normalizer = self.current_gradient_accumulation_steps if mode == "train" else 1
        loss = loss / normalizer
        if self.aux_loss_enabled:  # GRPO's MoE term, as in PLE
            loss = loss + self.router_aux_loss_coef * aux_loss / normalizer
            self._metrics[mode]["aux_loss"].append(self.accelerator.gather_for_metrics(aux_loss).mean().item())
        return loss

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

        unwrapped = self.accelerator.unwrap_model(self.model)
        with torch.no_grad():
            policy_logits = completion_logits(model)
            if self._snapshot_model is not None:
                reference_logits = completion_logits(self._snapshot_model)
            else:
                with use_adapter(unwrapped, adapter_name=self._snapshot_adapter):
                    reference_logits = completion_logits(model)
        logps = spa.decoupled_sequence_logps(
            policy_logits,
            reference_logits,
            completion_ids,
            completion_mask,
            self.args.decouple_lambda,
            self.args.length_normalize,
        )
        return logps.view(2, num_pairs)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        mode = "train" if self.model.training else "eval"
        # The iteration and the threshold are states, not measurements: log their values at this step.
        for name in ("spa/iteration", "spa/confidence_threshold"):
            values = self._metrics[mode].get(name)
            if values:
                self._metrics[mode][name] = values[-1:]
        super().log(logs, start_time)

    # --- checkpoints --------------------------------------------------------------------------------------------

    def _extra_state(self) -> dict:
        return {**super()._extra_state(), "margin_history": self._margin_history.state_dict()}

    def _load_extra_state(self, state: dict, checkpoint: str):
        super()._load_extra_state(state, checkpoint)
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


def run_seed_dpo(model, train_dataset, output_dir: str, peft_config=None, processing_class=None, **dpo_kwargs) -> str:
    """
    SPA's seed stage: TRL's [`~trl.DPOTrainer`] on a small human-labelled preference set (the paper: 2,000
    UltraFeedback pairs, 3.3%), before the SPA iterations. A LoRA adapter is merged, so that SPA starts from a plain
    model; pass the model the seed stage started from to [`SPATrainer`] as `ref_model` (`pi_init`).

    Args:
        model (`str` or [`~transformers.PreTrainedModel`]): the model to train (path, Hub id or model).
        train_dataset: preference data (`prompt`/`chosen`/`rejected`, or implicit prompt), as for `DPOTrainer`.
        output_dir (`str`): where the seed model is saved.
        peft_config ([`~peft.PeftConfig`], *optional*): train an adapter (merged before saving).
        processing_class (*optional*): the tokenizer; loaded from the model when `None`.
        **dpo_kwargs: fields of [`~trl.DPOConfig`] (`beta`, `learning_rate`, `max_steps`, batch sizes, precision...).

    Returns:
        `str`: `output_dir`, holding the seed model and its tokenizer.
    """
    from trl import DPOConfig, DPOTrainer

    dpo_kwargs.setdefault("save_strategy", "no")
    dpo_kwargs.setdefault("report_to", "none")
    trainer = DPOTrainer(
        model=model,
        args=DPOConfig(output_dir=output_dir, **dpo_kwargs),
        train_dataset=train_dataset,
        processing_class=processing_class,
        peft_config=peft_config,
    )
    trainer.train()
    save_merged_model(trainer, output_dir, "SPA seed stage (DPO)")
    del trainer
    return output_dir
