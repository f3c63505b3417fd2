"""
[`PairTrainer`]: a [`~trl.GRPOTrainer`] whose unit is the pair, two answers per prompt travelling together through
generation, buffering and gradient accumulation and trained by one forward over both. [`PLETrainer`] and
[`SPATrainer`] are its two methods: each builds its round (which two prompts, which label) and its loss; this class
runs everything around them, with the techniques of this package: [`prefix_sharing`], [`snapshot`], [`audit_log`],
[`checkpoints`], [`completions`], [`multimodal`].
"""

import contextlib
import logging
import os
from collections import deque

import torch
from accelerate.utils import is_peft_model
from datasets import IterableDataset
from transformers import Trainer
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from trl import GRPOTrainer
from trl.models.utils import disable_gradient_checkpointing
from trl.trainer.utils import (
    add_fused_lm_head,
    pad,
    use_adapter,
)

from ..data import check_generation_round, prepare_prompt_dataset, prompt_is_empty
from ..device import apply_model_init_overrides
from ..hub import check_model_path
from ..rewards.implicit import implicit_reward
from . import audit_log, checkpoints, completions, models, multimodal, prefix_sharing, reward_metrics
from .logps import sequence_logps
from .snapshot import IterationSnapshot

logger = logging.getLogger(__name__)


class PairTrainer(GRPOTrainer):
    """
    The trainer of [`PLETrainer`] and [`SPATrainer`]: see those for use. A subclass sets `_config_class`,
    `_config_hint`, `_name`, `_paper`, `_tag_names` and `_completion_columns`, overrides the hooks below as needed,
    and implements `_generate_and_score_completions` (with [`_round_prompts`], [`_generate_round`]) and
    `_compute_loss` (with [`_pair_logps`] and [`_scaled_loss`]).

    Args: as [`PLETrainer`]'s; `reward_funcs` as resolved by the subclass (GRPO wants at least one source).
    """

    _config_class = None
    _config_hint = ""
    # The columns printed first in the completions table, and the metrics logged at their value at the step (states,
    # not measurements) instead of their mean over the logging window.
    _completion_columns = ()
    _metrics_at_step = ()

    # --- hooks --------------------------------------------------------------------------------------------------

    def _principle_configured(self, args) -> bool:
        """Whether rows may leave their `principle` column empty (a configured principle to fall back on)."""
        return True

    def _needs_reference(self, args) -> bool:
        """Whether a frozen `pi_init`/reference model is used (by the loss or the implicit reward)."""
        return self._uses_implicit_reward(args)

    def _uses_implicit_reward(self, args) -> bool:
        return False

    def _uses_iteration_snapshot(self, args) -> bool:
        """Whether the policy as at the start of the iteration is kept (SPA's reference, the implicit judge)."""
        return self._uses_implicit_reward(args) and args.implicit_reward_judge == "iteration"

    def _check_first_row(self, row, args):
        """Checks of the training set's first row that the method needs (PLE: a principle to use)."""

    # The method's resumable state: common to every process (JSON), and this process's own; restored as saved.
    def _extra_state(self) -> dict:
        return {}

    def _load_extra_state(self, state: dict, checkpoint: str):
        """`state` is empty for a checkpoint saved without it."""

    def _extra_rank_state(self) -> dict:
        return {}

    def _load_extra_rank_state(self, state: dict):
        pass

    def _settings_section(self) -> str:
        """The model card's section on the method's settings."""
        return ""

    # --- construction -------------------------------------------------------------------------------------------

    @classmethod
    def _resolve_args(cls, model, args):
        """
        The trainer's configuration: `args` when it is a `_config_class`; its defaults when `None`, saved to
        `<model name>-<_name>` as TRL names its default `output_dir`; else a `TypeError` that says how to build one.
        """
        if args is None:
            model_name = model if isinstance(model, str) else model.config._name_or_path
            return cls._config_class(f"{(model_name or 'model').split('/')[-1]}-{cls._name}")
        if not isinstance(args, cls._config_class):
            raise TypeError(f"`args` is a {type(args).__name__}; {cls._config_hint}")
        return args

    def __init__(
        self,
        model,
        reward_funcs,
        args,
        train_dataset=None,
        eval_dataset=None,
        processing_class=None,
        reward_processing_classes=None,
        callbacks=None,
        optimizers=(None, None),
        peft_config=None,
        ref_model=None,
        quantization_config=None,
    ):
        for argument, value in [("model", model), ("ref_model", ref_model)]:
            if isinstance(value, str):
                check_model_path(value, argument)
        if train_dataset is None:
            raise ValueError(f"`train_dataset` is required: {self._name} generates answers for its prompts.")
        principle_configured = self._principle_configured(args)
        train_dataset = prepare_prompt_dataset(train_dataset, "train_dataset", principle_configured)
        eval_dataset = self._prepare_eval_dataset(eval_dataset, principle_configured)
        self._check_first_row(next(iter(train_dataset)), args)
        if args.iteration_unit == "epoch" and isinstance(train_dataset, IterableDataset):
            raise ValueError(
                "`iteration_unit='epoch'` needs a dataset with a length, but `train_dataset` is an IterableDataset. "
                "Set `iteration_unit='steps'` with `steps_per_iteration`."
            )
        if not isinstance(train_dataset, IterableDataset):
            check_generation_round(
                len(train_dataset), args.per_device_train_batch_size, args.steps_per_generation, args.world_size
            )
        models.check_models(model, ref_model, peft_config, implicit_reward=self._uses_implicit_reward(args))
        # The copies of a full model are taken here, before GRPO patches the policy's forward (a deep copy would share
        # the patched closure).
        ref_model, snapshot_model = models.initial_copies(
            model, ref_model, peft_config, self._needs_reference(args), self._uses_iteration_snapshot(args)
        )

        # Every multi-process run loads one full copy per process (TRL forces this only for multi-GPU and DeepSpeed).
        args.model_init_kwargs = apply_model_init_overrides(args.model_init_kwargs, args.distributed_state)
        # GRPO builds its own reference (by reloading the policy from its name, which fails for in-memory models) when
        # beta > 0. The pair trainer's reference is set up below instead.
        beta, args.beta = args.beta, 0.0
        try:
            super().__init__(
                model=model,
                reward_funcs=reward_funcs,
                args=args,
                train_dataset=train_dataset,
                eval_dataset=eval_dataset,
                processing_class=processing_class,
                reward_processing_classes=reward_processing_classes,
                callbacks=callbacks,
                optimizers=optimizers,
                quantization_config=quantization_config,
                peft_config=peft_config,
            )
        finally:
            args.beta = beta
        self.beta = beta
        # One dataset row is one pair: the sampler must not repeat prompts as it does for GRPO's groups.
        self.num_generations = self.num_generations_eval = 1

        unwrapped = self.model.get_base_model() if is_peft_model(self.model) else self.model
        # GRPO's fused LM head scores at the sampling temperature and computes the entropy on every call; the pair
        # losses are on the model's own probabilities and need no entropy, so the head is re-patched to log-probs only.
        add_fused_lm_head(unwrapped, temperature=1.0, cast_lm_head_to_fp32=args.cast_lm_head_to_fp32)
        uses_reference = self._needs_reference(args) and ref_model is not None
        self.ref_model = self._prepare_frozen_model(ref_model, args) if uses_reference else None
        self._snapshot = None
        if self._uses_iteration_snapshot(args):
            models.check_snapshot_backend(self.accelerator.state, self.is_fsdp_enabled)
            frozen = None if snapshot_model is None else self._prepare_frozen_model(snapshot_model, args)
            self._snapshot = IterationSnapshot(lambda: self.accelerator.unwrap_model(self.model), self._unwrap, frozen)

        self._steps_per_epoch = None
        # The completions table: one row per pair of the latest generation round(s), like GRPO's `_logs`.
        self._completion_rows = deque(maxlen=args.generation_batch_size)
        self._train_sampler = None
        self.add_callback(checkpoints.SamplerEpochCallback(lambda: self._train_sampler))
        datasets = [train_dataset, *(eval_dataset.values() if isinstance(eval_dataset, dict) else [eval_dataset])]
        policy = self.accelerator.unwrap_model(self.model)
        multimodal.check_image_datasets(datasets, self.processing_class, self._is_vlm, policy.config.model_type)
        self._check_required_prefix_sharing(datasets)

    def _unwrap(self, model):
        return self.accelerator.unwrap_model(model)

    def _prepare_frozen_model(self, model, args):
        """A frozen, evaluation-mode model (from a path or a module), prepared like the policy for its backend."""
        return models.prepare_frozen_model(
            model, args, self.accelerator, self.model.dtype, self.is_deepspeed_enabled, self.is_fsdp_enabled
        )

    @staticmethod
    def _prepare_eval_dataset(eval_dataset, principle_configured):
        if isinstance(eval_dataset, dict):
            return {
                name: prepare_prompt_dataset(dataset, f"eval_dataset[{name!r}]", principle_configured)
                for name, dataset in eval_dataset.items()
            }
        if eval_dataset is None or isinstance(eval_dataset, str):  # a name of the datasets given at construction
            return eval_dataset
        return prepare_prompt_dataset(eval_dataset, "eval_dataset", principle_configured)

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix="eval"):
        # Datasets passed here get the same conversion as at construction (`messages`, preference data, row lists).
        eval_dataset = self._prepare_eval_dataset(eval_dataset, self._principle_configured(self.args))
        return super().evaluate(
            eval_dataset=eval_dataset, ignore_keys=ignore_keys, metric_key_prefix=metric_key_prefix
        )

    # --- iterations ---------------------------------------------------------------------------------------------

    def set_initial_training_values(self, args, dataloader):
        values = super().set_initial_training_values(args, dataloader)
        # transformers' own count of optimizer steps per epoch (rounded up when gradient accumulation does not divide
        # the micro-steps): one iteration in `iteration_unit="epoch"`.
        self._steps_per_epoch = values[1]
        return values

    def completed_iterations(self) -> int:
        """Number of completed iterations, derived from `state.global_step` (so a resumed run continues)."""
        if self.args.iteration_unit == "steps":
            return self.state.global_step // self.args.steps_per_iteration
        if self._steps_per_epoch is None:
            if self.state.global_step == 0:
                return 0
            # Not in `train()` (e.g. `evaluate()` after loading a state): count as `train()` would.
            self.set_initial_training_values(self.args, self.get_train_dataloader())
        return self.state.global_step // self._steps_per_epoch

    # --- a generation round -------------------------------------------------------------------------------------

    def _tokenize_prompts(self, prompts):
        # GRPO's tokenization of the round's two halves, then `max_prompt_length` (TRL 1.16 has no prompt truncation).
        prompt_ids, images, multimodal_fields = super()._tokenize_prompts(prompts)
        if self.args.max_prompt_length is not None:
            prompt_ids = self._truncate_prompts(prompt_ids, images)
        return prompt_ids, images, multimodal_fields

    def _truncate_prompts(self, prompt_ids, images):
        """Each prompt truncated from the left to `max_prompt_length`, as TRL truncates prompts."""
        max_length = self.args.max_prompt_length
        if any(len(ids) > max_length for ids in prompt_ids):
            if images is not None:
                raise ValueError(
                    f"A prompt with images has more than `max_prompt_length={max_length}` tokens (image tokens "
                    "included), and multimodal prompts cannot be truncated without losing image tokens. Raise "
                    "`max_prompt_length`, or set it to `None`."
                )
            prompt_ids = [list(ids)[-max_length:] for ids in prompt_ids]
        return prompt_ids

    def _round_prompts(self, inputs):
        """The round's plain prompts (checked: a stream's rows are checked as they come, see
        `data.prepare_prompt_dataset`), their images, and the prompts as the model sees them (with the images)."""
        for example in inputs:
            if prompt_is_empty(example.get("prompt")):
                raise ValueError(
                    f"A row has an empty or missing `prompt`: {example.get('prompt')!r}. Remove such rows, e.g. "
                    "`dataset.filter(lambda row: row['prompt'])`."
                )
        prompts = [example["prompt"] for example in inputs]
        images = multimodal.dataset_images(inputs)
        return prompts, images, multimodal.with_images(prompts, images)

    def _generate_round(self, model_prompts, second_prompts, images, keep_second_prompts=False):
        """
        Generate a round in one call, `model_prompts` (the plain prompts) then `second_prompts`, and lay it out as
        pairs: the plain prompts (both answers are trained on them) and the answers `(pairs, 2, length)`; with
        `keep_second_prompts`, the second prompts too (`second_prompt_ids`, `second_prompt_mask`, left-padded).

        Returns:
            `tuple`: the pair batch (`prompt_ids`, `prompt_mask`, `completion_ids`, `completion_mask`, image fields),
            the answers' texts and their token ids (first answers, then second answers).
        """
        generated = self._generate(model_prompts + second_prompts)
        prompt_ids_list, completion_ids_list, completions = generated[0], generated[1], generated[3]
        num_pairs = len(model_prompts)
        prompt_ids, prompt_mask = self._pad_ids(prompt_ids_list[:num_pairs], padding_side="left")
        completion_ids, completion_mask = self._pad_ids(completion_ids_list, padding_side="right")
        # (2 * pairs, length) -> (pairs, 2, length): a pair's answers travel together through shuffling and splitting.
        batch = {
            "prompt_ids": prompt_ids,
            "prompt_mask": prompt_mask,
            "completion_ids": completion_ids.view(2, num_pairs, -1).transpose(0, 1),
            "completion_mask": completion_mask.view(2, num_pairs, -1).transpose(0, 1),
        }
        if keep_second_prompts:
            batch["second_prompt_ids"], batch["second_prompt_mask"] = self._pad_ids(
                prompt_ids_list[num_pairs:], padding_side="left"
            )
        if images is not None:
            batch.update(
                multimodal.processor_fields(
                    self.processing_class, model_prompts, images, self.chat_template_kwargs,
                    lambda fields: Trainer._prepare_inputs(self, fields),  # device placement, not GRPO's sampling
                )
            )  # fmt: skip
        return batch, completions, completion_ids_list

    def _pad_ids(self, id_lists, padding_side):
        """Pad token id lists into `(ids, mask)` tensors on the device, as GRPO pads its prompts and completions."""
        ids = [torch.tensor(ids, dtype=torch.long) for ids in id_lists]
        masks = [torch.ones(len(row), dtype=torch.long) for row in ids]
        kwargs = {"padding_side": padding_side, "pad_to_multiple_of": self.pad_to_multiple_of}
        device = self.accelerator.device
        return pad(ids, padding_value=self._tokenizer.pad_token_id, **kwargs).to(device), pad(
            masks, padding_value=0, **kwargs
        ).to(device)

    def _local(self, num_pairs: int) -> slice:
        """This process's pairs among the pairs of every process (gathered in process order)."""
        return slice(self.accelerator.process_index * num_pairs, (self.accelerator.process_index + 1) * num_pairs)

    def _gather_pair_rewards(self, local):
        """`(2, pairs)` rewards of this process -> `(num_processes * 2 * pairs,)`, first answers then second answers
        of each process, in process order (the order GRPO's reward plumbing returns)."""
        return self.accelerator.gather(local.reshape(-1))

    def _audit(self, records: list[dict]):
        """Append one round's records (one per pair of every process) to the audit log."""
        if self.accelerator.is_main_process:
            audit_log.append(self.args.output_dir, records)

    # --- the pair forward ---------------------------------------------------------------------------------------

    def _pair_logps(self, model, inputs, compute_aux_loss=False):
        """One forward pass over both answers of every pair, conditioned on the plain prompt (and its images).

        Returns the per-answer sums and means of the log-probs, `(2, pairs)` each, and the MoE load-balancing loss of
        this forward (`None` unless `compute_aux_loss`)."""
        blocker = self._prefix_sharing_blocker(model, inputs, compute_aux_loss)
        said = self.__dict__.setdefault("_loss_pass_said", set())
        if blocker not in said:  # once per path (and per reason): which layout the loss pass takes, and why
            said.add(blocker)
            if blocker is None:
                logger.info("The loss pass runs each pair's plain prompt once, shared by its two answers")
            else:
                logger.info(f"The loss pass runs each plain prompt once per answer (no prefix sharing): {blocker}")
        if blocker is None:
            with self.accelerator.autocast():
                config = self.accelerator.unwrap_model(model).config
                per_token_logps, aux_loss = prefix_sharing.shared_prompt_logps(model, config, inputs), None
        else:
            per_token_logps, aux_loss = self._separate_prompt_logps(model, inputs, compute_aux_loss)
        num_pairs = inputs["prompt_ids"].size(0)
        completion_mask = inputs["completion_mask"].transpose(0, 1).flatten(0, 1)
        sums = sequence_logps(per_token_logps, completion_mask)
        means = sequence_logps(per_token_logps, completion_mask, length_normalize=True)
        return sums.view(2, num_pairs), means.view(2, num_pairs), aux_loss

    def _separate_prompt_logps(self, model, inputs, compute_aux_loss=False):
        # GRPO's layout: [plain prompt + y ; plain prompt + y_p], the prompt run once per answer.
        prompt_ids = inputs["prompt_ids"].repeat(2, 1)
        prompt_mask = inputs["prompt_mask"].repeat(2, 1)
        completion_ids = inputs["completion_ids"].transpose(0, 1).flatten(0, 1)  # first answers, then second
        completion_mask = inputs["completion_mask"].transpose(0, 1).flatten(0, 1)
        per_token_logps, _, aux_loss = self._get_per_token_logps_and_entropies(
            model,
            torch.cat([prompt_ids, completion_ids], dim=1),
            torch.cat([prompt_mask, completion_mask], dim=1),
            completion_ids.size(1),
            compute_aux_loss=compute_aux_loss,
            **multimodal.pair_forward_kwargs(inputs, completion_ids.size(1)),
        )
        return per_token_logps, aux_loss

    def _prefix_sharing_blocker(self, model, inputs, compute_aux_loss):
        """Why the pair's shared plain prompt cannot be run once in the loss pass, or `None` when it can."""
        if self.args.share_prompt_prefix is False:
            return "share_prompt_prefix=False"
        return prefix_sharing.loss_pass_blocker(self.accelerator.unwrap_model(model), inputs, compute_aux_loss)

    def _check_required_prefix_sharing(self, datasets):
        """With `share_prompt_prefix=True`, the reason the run could not share its prompts (the model, the MoE loss, a
        generation setting, images), as an error at construction."""
        if not self.args.share_prompt_prefix:
            return
        policy = self.accelerator.unwrap_model(self.model)
        reason = prefix_sharing.prefix_sharing_blocker(policy, training=True)
        if reason is None and self.aux_loss_enabled:
            reason = "the MoE load-balancing loss of the trained pass reads a 2D padding mask"
        if reason is None and any(
            dataset is not None and not isinstance(dataset, str) and multimodal.image_column(dataset)
            for dataset in datasets
        ):
            reason = "multimodal prompts place their image features by position"
        if reason is None and not self.use_vllm:
            reason = self._generation_settings_blocker(training=True)
        if reason is not None:
            raise ValueError(
                f"`share_prompt_prefix=True`, but this run cannot run a pair's shared prompt once: {reason}. Set "
                "`share_prompt_prefix=None` (share where it is proven exact, the default) or `False`."
            )

    @contextlib.contextmanager
    def _frozen_initial_model(self):
        """Yield `pi_init` to run a forward with: the reference model, or the policy with its adapter disabled."""
        if self.ref_model is not None:
            yield self.ref_model
        else:
            with use_adapter(self.accelerator.unwrap_model(self.model), adapter_name=None):
                yield self.model

    def _frozen_pair_logps(self, which, inputs):
        """`(sums, means)` of the log-probs of both answers of every pair, `(2, pairs)` each, without gradient, under
        `which`: `"init"` (`pi_init`: the reference model, or the adapter-disabled policy under PEFT), `"snapshot"`
        (the policy as at the start of the iteration) or `"policy"` (the current policy)."""
        with torch.no_grad(), disable_gradient_checkpointing(self.model, self.args.gradient_checkpointing_kwargs):
            if which == "init":
                with self._frozen_initial_model() as model:
                    sums, means, _ = self._pair_logps(model, inputs)
            elif which == "snapshot":
                with self._snapshot.forward_with(self.model) as model:
                    sums, means, _ = self._pair_logps(model, inputs)
            else:
                sums, means, _ = self._pair_logps(self.model, inputs)
        return sums, means

    def _implicit_rewards(self, inputs, judge_logps=None):
        """The implicit rewards `beta_judge * (log pi_judge(y|x) - log pi_init(y|x))` of this process's answers,
        `(2, pairs)`, detached. `judge_logps` (`(sums, means)`) skips the judge's forward when the caller has it."""
        if judge_logps is None:
            judge = "snapshot" if self.args.implicit_reward_judge == "iteration" else "policy"
            judge_logps = self._frozen_pair_logps(judge, inputs)
        init_logps = self._frozen_pair_logps("init", inputs)
        index = 1 if self.args.implicit_reward_length_normalize else 0
        return implicit_reward(judge_logps[index], init_logps[index], self.args.beta_judge)

    def _scaled_loss(self, loss, aux_loss, mode):
        """The loss scaled for gradient accumulation, as GRPO does (`loss_is_scaled_for_ga`), plus GRPO's MoE term:
        `router_aux_loss_coef` (or the model's own) times the router loss of the trained forward."""
        normalizer = self.current_gradient_accumulation_steps if mode == "train" else 1
        loss = loss / normalizer
        if self.aux_loss_enabled:
            loss = loss + self.router_aux_loss_coef * aux_loss / normalizer
            self._metrics[mode]["aux_loss"].append(self.accelerator.gather_for_metrics(aux_loss).mean().item())
        return loss

    # --- generation from a shared prefix ------------------------------------------------------------------------

    def _generate_single_turn(self, prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False):
        layout, reason = self._generation_prefix_plan(prompt_ids, images, multimodal_fields)
        # Said once each: the first round that shares, and the first that does not (with why).
        logged = self.__dict__.setdefault("_generation_prefix_logged", set())
        if (layout is not None) not in logged:
            logged.add(layout is not None)
            if layout is not None:
                mean = sum(layout.shared) / len(layout.shared)
                logger.info(f"Generation runs each pair's common prompt prefix once ({mean:.0f} tokens per pair)")
            else:
                logger.info(f"Generation runs every prompt token of both answers (no shared prefix): {reason}")
        arguments = (prompt_ids, images, multimodal_fields, num_generations, has_tool_images)
        model = self.accelerator.unwrap_model(self.model_wrapped)
        router = {} if self.use_vllm else prefix_sharing.without_router_logits(model.config)
        if layout is None and not router:
            return super()._generate_single_turn(*arguments)
        # GRPO's transformers path calls `generate` on the unwrapped model: for this call, that `generate` continues
        # from the prefix cache (and leaves out an MoE model's router logits); GRPO's own handling (unwrapping,
        # DeepSpeed gathering, EOS masking) is unchanged.
        with prefix_sharing.patched_generate(model, layout, router):
            return super()._generate_single_turn(*arguments)

    def _generation_settings_blocker(self, training: bool | None = None):
        """Why the model or the generation settings keep the transformers path from generating a pair's answers from
        their shared prompt prefix, or `None`."""
        if self.use_transformers_continuous_batching:
            return "continuous batching: its paged cache is managed by transformers"
        model = self.accelerator.unwrap_model(self.model_wrapped)
        return prefix_sharing.prefix_sharing_blocker(model, training) or prefix_sharing.generation_settings_blocker(
            self.generation_config
        )

    def _generation_prefix_plan(self, prompt_ids, images, multimodal_fields):
        """The [`SharedPrefix`] layout of this round and `None`, or `None` and why the prefix is not shared."""
        if self.args.share_prompt_prefix is False:
            return None, "share_prompt_prefix=False"
        if self.use_vllm:
            return None, "vLLM: its automatic prefix caching shares prefixes itself"
        if images is not None or multimodal_fields:
            return None, "multimodal prompts: image features are placed by position"
        blocker = self._generation_settings_blocker()
        if blocker is not None:
            return None, blocker
        return prefix_sharing.plan_shared_prefix(
            prompt_ids, self._tokenizer.pad_token_id, required=bool(self.args.share_prompt_prefix)
        )

    # --- logging ------------------------------------------------------------------------------------------------

    def _log_rewards(self, mode, rewards, rewards_per_func, num_pairs):
        """GRPO's reward metrics for pairs (see [`reward_metrics.log_rewards`]); returns the `log_extra` columns."""
        return reward_metrics.log_rewards(
            self._metrics[mode], rewards, rewards_per_func, num_pairs, self.reward_func_names, self.accelerator,
            self._pending_metrics, self._pending_extra_logs,
        )  # fmt: skip

    def _add_completion_rows(self, rows: list[dict]):
        """Keep a round's rows for the completions table (the latest `generation_batch_size` pairs)."""
        if self.log_completions and self.accelerator.is_main_process:
            self._completion_rows.extend(rows)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        mode = "train" if self.model.training else "eval"
        for name in self._metrics_at_step:  # a state, not a measurement: its value at this step, not the mean
            values = self._metrics[mode].get(name)
            if values:
                self._metrics[mode][name] = values[-1:]
        # GRPO's completions table (one completion, its advantage) has no meaning for pairs: the pair table instead.
        log_completions, self.log_completions = self.log_completions, False
        try:
            super().log(logs, start_time)
        finally:
            self.log_completions = log_completions
        # The end-of-training summary repeats the last step, whose table is already written.
        end_of_training = "train_runtime" in logs
        if self.log_completions and self.accelerator.is_main_process and self._completion_rows and not end_of_training:
            completions.write(list(self._completion_rows), self.state.global_step, self.args, self._completion_columns)

    def create_model_card(self, model_name=None, dataset_name=None, tags=None):
        """TRL's model card (see [`~trl.GRPOTrainer.create_model_card`]), with a section on the method's settings."""
        super().create_model_card(model_name=model_name, dataset_name=dataset_name, tags=tags)
        path = os.path.join(self.args.output_dir, "README.md")
        if not self.is_world_process_zero() or not os.path.isfile(path):
            return
        with open(path) as f:
            card = f.read()
        section, marker = self._settings_section(), "### Framework versions"
        # Under "Training procedure", before the versions; at the end if TRL's template changes.
        card = card.replace(marker, f"{section}\n{marker}", 1) if marker in card else f"{card.rstrip()}\n\n{section}"
        with open(path, "w") as f:
            f.write(card)

    # --- checkpoints and resume ---------------------------------------------------------------------------------

    def _get_train_sampler(self, dataset=None):
        # GRPO's sampler with GRPO's arguments, made to give each epoch the same order in a resumed run.
        self._train_sampler = checkpoints.EpochSeededRepeatSampler.like(super()._get_train_sampler(dataset))
        return self._train_sampler

    def train(self, resume_from_checkpoint=None, *args, **kwargs):
        """
        [`~transformers.Trainer.train`], with two additions. `resume_from_checkpoint=True` resumes from the last
        *complete* checkpoint of `output_dir` (one that an interrupted save, e.g. on a full disk, left incomplete is
        skipped with a warning). With `save_enhanced_labels=True`, a fresh run starts a fresh audit log, and a resumed
        run drops the records generated after its checkpoint (they are generated again), so the log holds exactly one
        record per trained pair.
        """
        if isinstance(resume_from_checkpoint, bool) and resume_from_checkpoint:
            resume_from_checkpoint = checkpoints.last_complete_checkpoint(self.args.output_dir)
        if self.args.save_enhanced_labels and self.accelerator.is_main_process and resume_from_checkpoint is not True:
            audit_log.start(self.args.output_dir, resume_from_checkpoint)
        return super().train(resume_from_checkpoint, *args, **kwargs)

    def _save_checkpoint(self, model, trial):
        folder = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        checkpoint = os.path.join(self._get_output_dir(trial=trial), folder)
        try:
            # Written before transformers' files, so that a checkpoint with trainer_state.json (written last) has
            # them too. Every process writes its own state, as transformers writes its RNG states.
            inside_round = self._step % (self.args.steps_per_generation * self.num_iterations) != 0
            rank_state = {"step": self._step, "buffered_inputs": self._buffered_inputs if inside_round else None}
            rank_state.update(self._extra_rank_state())
            checkpoints.save_rank_state(checkpoint, self.args.process_index, rank_state)
            if self.args.should_save:
                state = self._extra_state()
                if self._snapshot is not None:
                    state["snapshot_iteration"] = self._snapshot.iteration
                    self._snapshot.save(checkpoint)
                checkpoints.save_trainer_state(checkpoint, state)
            super()._save_checkpoint(model, trial)
        except Exception as error:
            if checkpoints.is_disk_full(error):
                raise checkpoints.disk_full_error(checkpoint, error) from error
            raise

    def _load_optimizer_and_scheduler(self, checkpoint):
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is None:
            return
        rank_state = checkpoints.load_rank_state(checkpoint, self.args.process_index, self.accelerator.device)
        if rank_state is not None:
            # Inside a round, its remaining micro-batches are trained as saved, not generated again: exactly the
            # pairs, labels and order of the uninterrupted run. At a round boundary the next round is generated.
            self._step, self._buffered_inputs = rank_state["step"], rank_state["buffered_inputs"]
            self._load_extra_rank_state(rank_state)
        state = checkpoints.load_trainer_state(checkpoint)
        if self._snapshot is not None:
            self._snapshot.load(checkpoint, state, self.completed_iterations())
        self._load_extra_state(state, checkpoint)
