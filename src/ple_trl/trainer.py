import copy
import json
import logging
import numbers
import os
import random
import textwrap

import numpy as np
import torch
from accelerate.utils import gather_object, is_peft_model
from datasets import IterableDataset
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id
from torch import nn
from trl import GRPOTrainer
from trl.data_utils import is_conversational
from trl.models import prepare_deepspeed, prepare_fsdp
from trl.models.utils import disable_gradient_checkpointing
from trl.trainer.utils import (
    add_fused_lm_head,
    create_model_from_path,
    disable_dropout_in_model,
    is_async_callable,
    pad,
    use_adapter,
)

from . import labeling, losses
from .config import PLEConfig
from .data import check_generation_round, prepare_prompt_dataset, prompt_is_empty
from .device import apply_model_init_overrides
from .principles import truncate_pair, wrap
from .rewards.model import LeftTruncatingRewardModel, reward_model_max_length

logger = logging.getLogger(__name__)

ROUTE_NAMES = {True: "rank", False: "wsft"}


def _check_model_path(value: str, argument: str):
    # A string that cannot be a Hub id is meant as a local path: say that it is missing, not that it is a bad repo id.
    if os.path.exists(value):
        return
    try:
        validate_repo_id(value)
    except HFValidationError:
        hint = " (`~` is not expanded: give the full path)" if value.startswith("~") else ""
        raise ValueError(
            f"`{argument}`: the path {value!r} does not exist{hint}. Give an existing local model folder, or a Hub id "
            "such as 'org/name'."
        ) from None


def _is_reward_value(value) -> bool:
    if value is None or isinstance(value, numbers.Real):
        return True
    if isinstance(value, torch.Tensor):
        return value.numel() == 1 and not value.is_complex()
    if isinstance(value, (np.ndarray, np.generic)):
        return value.size == 1 and value.dtype.kind in "biuf"
    return False


def _checked_reward_function(reward_func, name: str):
    """Wrap a reward function so that a value torch cannot read fails with the function's name, not torch's words."""

    def check(rewards):
        try:
            values = list(rewards)
        except TypeError:
            raise ValueError(
                f"The reward function {name!r} returned {rewards!r} (a {type(rewards).__name__}); it must return a "
                "list with one float (or None for an answer it cannot score) per completion."
            ) from None
        for value in values:
            if not _is_reward_value(value):
                raise ValueError(
                    f"The reward function {name!r} returned {value!r} (a {type(value).__name__}) as a reward; it must "
                    "return one float (or None for an answer it cannot score) per completion."
                )
        return values

    if is_async_callable(reward_func):

        async def checked(*args, **kwargs):
            return check(await reward_func(*args, **kwargs))

    else:

        def checked(*args, **kwargs):
            return check(reward_func(*args, **kwargs))

    checked.__name__ = checked.__qualname__ = name
    checked.__wrapped__ = reward_func
    return checked


class PLETrainer(GRPOTrainer):
    """
    Trainer for Progressively Label Enhancement (PLE), from [Progressively Label Enhancement for Large Language Model
    Alignment](https://huggingface.co/papers/2408.02599) (Liu, Xu & Geng, ICML 2025).

    For each prompt the model answers twice, to the plain prompt and to the prompt guided by a principle. The reward
    scores both answers against the plain prompt. A pair whose principled answer beats the plain one by more than the
    threshold `tau` is trained with a ranking loss (principled preferred); the others are trained with an SFT loss
    weighted by their rewards. Both answers are conditioned on the plain prompt, so the principle is distilled into
    the model's unguided behaviour. `tau` starts at `tau0` and decays by `alpha` every PLE iteration.

    `PLETrainer` is a [`~trl.GRPOTrainer`]: model loading, PEFT, reward models and functions, generation (transformers or
    vLLM), buffering across gradient accumulation, DeepSpeed/FSDP and NPU support are inherited. It overrides the
    sampling (`_generate_and_score_completions`) and the loss (`_compute_loss`).

    Example:

    ```python
    >>> from datasets import Dataset
    >>> from ple_trl import PLEConfig, PLETrainer

    >>> def positivity(completions, **kwargs):
    ...     return [float("good" in c) for c in completions]

    >>> dataset = Dataset.from_dict({"prompt": ["Write a review of the movie:", "Tell me about your day:"]})
    >>> args = PLEConfig(output_dir="ple-out", principle="Be positive.", per_device_train_batch_size=2, max_steps=2)
    >>> trainer = PLETrainer(model="path/to/model", reward_funcs=positivity, args=args, train_dataset=dataset)
    >>> trainer.train()
    ```

    Args:
        model (`str`, [`~transformers.PreTrainedModel`] or [`~peft.PeftModel`]):
            The policy, as for [`~trl.GRPOTrainer`]: a path or hub id, or a causal language model.
        reward_funcs (`RewardFunc` or `list[RewardFunc]`, *optional*):
            Reward functions and/or reward models, as for [`~trl.GRPOTrainer`]; summed with `args.reward_weights`.
            `args.reward_model_name_or_path` adds a reward model. At least one reward is required.
        args ([`PLEConfig`], *optional*):
            Configuration. `per_device_train_batch_size` counts pairs (prompts).
        train_dataset ([`~datasets.Dataset`], [`~datasets.IterableDataset`] or `list[dict]`):
            Prompt-only (`prompt`), SFT (`messages`) or preference (`prompt`/`chosen`/`rejected`, or implicit prompt)
            data; only the prompts are used. An optional `principle` column overrides the configured principle (its
            empty rows use the configured one). Every row is checked at construction (a stream's rows as they come):
            empty prompts, and a dataset smaller than one generation round, are errors.
        eval_dataset ([`~datasets.Dataset`], `list[dict]` or `dict[str, Dataset]`, *optional*):
            Same formats as `train_dataset`, here and in [`~PLETrainer.evaluate`].
        processing_class ([`~transformers.PreTrainedTokenizerBase`], *optional*):
            The policy's tokenizer; loaded from the model when `None`.
        reward_processing_classes ([`~transformers.PreTrainedTokenizerBase`] or `list`, *optional*):
            Tokenizers of the reward models, as for [`~trl.GRPOTrainer`]. For chat prompts they need a chat template.
        callbacks (`list[TrainerCallback]`, *optional*):
            Extra callbacks.
        optimizers (`tuple`, *optional*, defaults to `(None, None)`):
            Optimizer and scheduler.
        peft_config ([`~peft.PeftConfig`], *optional*):
            Trains an adapter; the adapter-disabled model is then the reference when `beta > 0`.
        ref_model (`str` or [`~transformers.PreTrainedModel`], *optional*):
            Reference model for the `"dpo"`/`"ipo"` ranking losses (`beta > 0`), as for [`~trl.DPOTrainer`]. Default:
            the adapter-disabled model under PEFT, else a frozen copy of the initial policy.
        quantization_config ([`~transformers.BitsAndBytesConfig`], *optional*):
            Quantization of a model loaded from a path (QLoRA with `peft_config`).
    """

    _tag_names = ["trl", "ple"]
    _name = "PLE"
    _paper = {
        "title": "Progressively Label Enhancement for Large Language Model Alignment",
        "id": "2408.02599",
        # docstyle-ignore
        "citation": textwrap.dedent("""\
            @inproceedings{liu2025progressively,
                title        = {{Progressively Label Enhancement for Large Language Model Alignment}},
                author       = {Biao Liu and Ning Xu and Xin Geng},
                year         = 2025,
                booktitle    = {Proceedings of the 42nd International Conference on Machine Learning},
                eprint       = {arXiv:2408.02599},
            }"""),
    }

    def __init__(
        self,
        model,
        reward_funcs=None,
        args: PLEConfig | None = None,
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
        if args is None:
            model_name = model if isinstance(model, str) else model.config._name_or_path
            args = PLEConfig(f"{(model_name or 'model').split('/')[-1]}-PLE")
        elif not isinstance(args, PLEConfig):
            raise TypeError(
                f"`args` is a {type(args).__name__}; PLETrainer needs a `PLEConfig`. Build one with the same fields, "
                "e.g. `PLEConfig(**your_args.to_dict())` minus the fields of your former method."
            )
        reward_funcs = (
            [] if reward_funcs is None else list(reward_funcs) if isinstance(reward_funcs, list) else [reward_funcs]
        )
        named = [("model", model), ("ref_model", ref_model)] + [("reward_funcs", func) for func in reward_funcs]
        for argument, value in named:
            if isinstance(value, str):
                _check_model_path(value, argument)
        if args.reward_model_name_or_path is not None:
            _check_model_path(args.reward_model_name_or_path, "reward_model_name_or_path")
            reward_funcs.append(args.reward_model_name_or_path)
            if reward_processing_classes is not None and not isinstance(reward_processing_classes, list):
                reward_processing_classes = [reward_processing_classes]
            if reward_processing_classes is not None:
                reward_processing_classes = [*reward_processing_classes, None]
        if not reward_funcs:
            raise ValueError(
                "PLE needs a reward to compare the plain and principled answers, and none was given. Pass "
                "`reward_funcs=` (reward functions, reward models or their paths) or set "
                "`PLEConfig(reward_model_name_or_path=...)`."
            )
        if train_dataset is None:
            raise ValueError("`train_dataset` is required: PLE generates answers for its prompts.")
        principle_configured = args.principle is not None or args.principles is not None
        train_dataset = prepare_prompt_dataset(train_dataset, "train_dataset", principle_configured)
        eval_dataset = self._prepare_eval_dataset(eval_dataset, principle_configured)
        first_row = next(iter(train_dataset))
        if not principle_configured and not first_row.get("principle"):
            raise ValueError(
                "No principle: PLE needs one to build the principle-guided prompt. Set `PLEConfig(principle=...)`, "
                "`PLEConfig(principles=[...])`, or add a `principle` column to the dataset."
            )
        if args.iteration_unit == "epoch" and isinstance(train_dataset, IterableDataset):
            raise ValueError(
                "`iteration_unit='epoch'` needs a dataset with a length, but `train_dataset` is an IterableDataset. "
                "Set `iteration_unit='steps'` with `steps_per_iteration`."
            )
        if not isinstance(train_dataset, IterableDataset):
            check_generation_round(
                len(train_dataset), args.per_device_train_batch_size, args.steps_per_generation, args.world_size
            )
        if isinstance(model, nn.Module) and isinstance(ref_model, nn.Module):
            policy_parameters = {id(p) for p in model.parameters()}
            if ref_model is model or any(id(p) in policy_parameters for p in ref_model.parameters()):
                # Freezing the reference would freeze the policy: training would "succeed" with nothing trained.
                raise ValueError(
                    "`model` and `ref_model` cannot be the same object (or share parameters): the reference is frozen, "
                    "so the policy would be too. Leave `ref_model=None` (PLE then makes a frozen copy of the initial "
                    "policy, or uses the adapter-disabled model under PEFT), or pass a copy (`copy.deepcopy(model)`)."
                )
        if ref_model is not None and args.beta == 0:
            raise ValueError(
                "A `ref_model` was passed but `beta=0`, so it would never be used. Set `beta > 0` with "
                "`ranking_loss_type='dpo'` or `'ipo'`, or drop `ref_model`."
            )
        if (
            args.beta > 0
            and ref_model is None
            and peft_config is None
            and (isinstance(model, str) or not is_peft_model(model))
        ):
            # The reference is the initial policy: reload it from its path, or copy it before training touches it.
            ref_model = model if isinstance(model, str) else copy.deepcopy(model)

        # Every multi-process run loads one full copy per process (TRL forces this only for multi-GPU and DeepSpeed).
        args.model_init_kwargs = apply_model_init_overrides(args.model_init_kwargs, args.distributed_state)
        # GRPO builds its own reference (by reloading the policy from its name, which fails for in-memory models) when
        # beta > 0. PLE's reference is set up below instead.
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
        # GRPO's fused LM head scores at the sampling temperature and computes the entropy on every call; PLE's losses
        # are on the model's own probabilities and need no entropy, so the head is re-patched to log-probs only.
        add_fused_lm_head(unwrapped, temperature=1.0, cast_lm_head_to_fp32=args.cast_lm_head_to_fp32)
        self.ref_model = self._prepare_reference(ref_model, args)

        conversational = is_conversational({"prompt": first_row["prompt"]})
        for i, (reward_func, reward_tokenizer) in enumerate(zip(self.reward_funcs, self.reward_processing_classes)):
            if not isinstance(reward_func, nn.Module):
                self.reward_funcs[i] = _checked_reward_function(reward_func, self.reward_func_names[i])
                continue
            if conversational and getattr(reward_tokenizer, "chat_template", None) is None:
                name = self.reward_func_names[i]
                raise ValueError(
                    f"The reward model {name!r} has a tokenizer with no chat template, but the prompts are "
                    "conversations, which must be rendered with it. Pass `reward_processing_classes=` with a "
                    "tokenizer that has a `chat_template`, or set `tokenizer.chat_template` before passing it."
                )
            max_length = reward_model_max_length(reward_tokenizer, reward_func)
            if max_length is not None:  # long dialogues lose their start, never overflow the reward model
                self.reward_funcs[i] = LeftTruncatingRewardModel(reward_func, max_length)

        self._principle_rng = random.Random(args.seed)
        self._skipped_pairs_total = 0
        self._steps_per_epoch = None

    def _prepare_reference(self, ref_model, args):
        if self.beta == 0 or ref_model is None:
            return None  # no reference, or the adapter-disabled policy under PEFT
        if isinstance(ref_model, str):
            init_kwargs = dict(args.model_init_kwargs or {})
            init_kwargs.setdefault("dtype", self.model.dtype)
            ref_model = create_model_from_path(ref_model, **init_kwargs)
        ref_model.requires_grad_(False)
        if args.disable_dropout:
            disable_dropout_in_model(ref_model)
        add_fused_lm_head(ref_model, temperature=1.0, cast_lm_head_to_fp32=args.cast_lm_head_to_fp32)
        if self.is_deepspeed_enabled:
            return prepare_deepspeed(ref_model, self.accelerator)
        if self.is_fsdp_enabled:
            return prepare_fsdp(ref_model, self.accelerator)
        return self.accelerator.prepare_model(ref_model, evaluation_mode=True)

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
        principle_configured = self.args.principle is not None or self.args.principles is not None
        eval_dataset = self._prepare_eval_dataset(eval_dataset, principle_configured)
        return super().evaluate(
            eval_dataset=eval_dataset, ignore_keys=ignore_keys, metric_key_prefix=metric_key_prefix
        )

    # --- threshold schedule -------------------------------------------------------------------------------------

    def set_initial_training_values(self, args, dataloader):
        values = super().set_initial_training_values(args, dataloader)
        # transformers' own count of optimizer steps per epoch (rounded up when gradient accumulation does not divide
        # the micro-steps): one PLE iteration in `iteration_unit="epoch"`.
        self._steps_per_epoch = values[1]
        return values

    def completed_iterations(self) -> int:
        """Number of completed PLE iterations, derived from `state.global_step` (so a resumed run continues)."""
        if self.args.iteration_unit == "steps":
            return self.state.global_step // self.args.steps_per_iteration
        if self._steps_per_epoch is None:
            if self.state.global_step == 0:
                return 0
            # Not in `train()` (e.g. `evaluate()` after loading a state): count as `train()` would.
            self.set_initial_training_values(self.args, self.get_train_dataloader())
        return self.state.global_step // self._steps_per_epoch

    @property
    def tau(self) -> float:
        """The current threshold `max(tau_min, tau0 * alpha**k)`, k = completed PLE iterations."""
        return labeling.tau_at(self.completed_iterations(), self.args.tau0, self.args.alpha, self.args.tau_min)

    # --- sampling -----------------------------------------------------------------------------------------------

    def _principle_for(self, example):
        # A stream cannot be checked up front (see `data.prepare_prompt_dataset`): its rows are checked here.
        if prompt_is_empty(example.get("prompt")):
            raise ValueError(
                f"A row has an empty or missing `prompt`: {example.get('prompt')!r}. Remove such rows, e.g. "
                "`dataset.filter(lambda row: row['prompt'])`."
            )
        principle = example.get("principle")
        if isinstance(principle, str) and principle.strip():
            return principle
        if self.args.principle is not None:
            return self.args.principle
        if self.args.principles is not None:
            return self._principle_rng.choice(self.args.principles)
        raise ValueError(
            f"A row has an empty `principle` ({principle!r}) and no principle is configured to fall back on; its "
            f"prompt is {example.get('prompt')!r}. Fill the row's `principle`, or set `PLEConfig(principle=...)` or "
            "`PLEConfig(principles=[...])`."
        )

    def _tokenize_prompts(self, prompts):
        # Called by `_generate` on PLE's pair layout: the plain prompts, then their principled versions, in order.
        prompt_ids, images, multimodal_fields = super()._tokenize_prompts(prompts)
        if self.args.max_prompt_length is not None:
            num_pairs = len(prompt_ids) // 2
            pairs = [
                truncate_pair(plain, principled, self.args.max_prompt_length)
                for plain, principled in zip(prompt_ids[:num_pairs], prompt_ids[num_pairs:], strict=True)
            ]
            prompt_ids = [plain for plain, _ in pairs] + [principled for _, principled in pairs]
        return prompt_ids, images, multimodal_fields

    def _score(self, inputs, prompts, completions, completion_ids):
        """Weighted rewards of every answer of every process, `(num_processes * len(prompts),)`, NaN if unscorable,
        and the rewards of each function."""
        chunk = self.args.reward_batch_size or len(prompts)
        parts = []
        for start in range(0, len(prompts), chunk):
            end = start + chunk
            per_func = self._calculate_rewards(
                inputs[start:end], prompts[start:end], completions[start:end], completion_ids[start:end]
            )
            parts.append(per_func.view(self.accelerator.num_processes, -1, per_func.size(-1)))
        rewards_per_func = torch.cat(parts, dim=1).flatten(0, 1)
        rewards = (rewards_per_func * self.reward_weights.to(rewards_per_func.device)).nansum(dim=1)
        return torch.where(torch.isnan(rewards_per_func).all(dim=1), torch.nan, rewards), rewards_per_func

    def _generate_and_score_completions(self, inputs):
        device = self.accelerator.device
        mode = "train" if self.model.training else "eval"
        num_pairs = len(inputs)
        plain_prompts = [example["prompt"] for example in inputs]
        principles = [self._principle_for(example) for example in inputs]
        principled_prompts = [
            wrap(prompt, principle, self.args.principle_template, self.args.principle_placement)
            for prompt, principle in zip(plain_prompts, principles, strict=True)
        ]

        # One generation call for both halves: plain answers first, principle-guided answers second.
        prompt_ids_list, completion_ids_list, _, completions, _, _, _, _ = self._generate(
            plain_prompts + principled_prompts
        )

        # Both answers are scored against the plain prompt: the reward never sees the principle.
        rewards, rewards_per_func = self._score(
            inputs + inputs, plain_prompts + plain_prompts, completions, completion_ids_list
        )
        for name, mean in zip(self.reward_func_names, torch.nanmean(rewards_per_func, dim=0).tolist(), strict=True):
            self._metrics[mode][f"rewards/{name}/mean"].append(mean)
        rewards = rewards.view(self.accelerator.num_processes, 2, num_pairs)
        reward_plain, reward_principled = rewards[:, 0].flatten(), rewards[:, 1].flatten()

        # Label enhancement on the rewards of every process, so every process takes the same decisions.
        tau = self.tau
        transformed = labeling.transform_rewards(
            torch.stack([reward_plain, reward_principled]), self.args.reward_transform
        )
        rank_mask, principled_preferred, valid = labeling.route_pairs(
            transformed[0], transformed[1], tau, self.args.gap_mode, self.args.routing
        )
        weight_principled = labeling.soft_label_weights(
            transformed[0], transformed[1], self.args.sft_weighting, self.args.sft_temperature
        )
        self._log_round(mode, tau, reward_plain, reward_principled, transformed, rank_mask, weight_principled, valid)
        if self.args.save_enhanced_labels and mode == "train":
            self._save_labels(
                plain_prompts, principles, completions, reward_plain, reward_principled, rank_mask,
                principled_preferred, weight_principled, valid, tau,
            )  # fmt: skip

        local = slice(self.accelerator.process_index * num_pairs, (self.accelerator.process_index + 1) * num_pairs)
        prompt_ids = pad(
            [torch.tensor(ids) for ids in prompt_ids_list[:num_pairs]],
            padding_value=self._tokenizer.pad_token_id,
            padding_side="left",
            pad_to_multiple_of=self.pad_to_multiple_of,
        ).to(device)
        prompt_mask = (
            pad(
                [torch.ones(len(ids), dtype=torch.long) for ids in prompt_ids_list[:num_pairs]],
                padding_value=0,
                padding_side="left",
                pad_to_multiple_of=self.pad_to_multiple_of,
            )
        ).to(device)
        completion_ids = pad(
            [torch.tensor(ids, dtype=torch.long) for ids in completion_ids_list],
            padding_value=self._tokenizer.pad_token_id,
            padding_side="right",
            pad_to_multiple_of=self.pad_to_multiple_of,
        ).to(device)
        completion_mask = pad(
            [torch.ones(len(ids), dtype=torch.long) for ids in completion_ids_list],
            padding_value=0,
            padding_side="right",
            pad_to_multiple_of=self.pad_to_multiple_of,
        ).to(device)
        # (2 * pairs, length) -> (pairs, 2, length): a pair's answers travel together through shuffling and splitting.
        output = {
            "prompt_ids": prompt_ids,
            "prompt_mask": prompt_mask,
            "completion_ids": completion_ids.view(2, num_pairs, -1).transpose(0, 1),
            "completion_mask": completion_mask.view(2, num_pairs, -1).transpose(0, 1),
            "rank_mask": rank_mask[local],
            "principled_preferred": principled_preferred[local],
            "weight_principled": weight_principled[local],
            "valid": valid[local],
        }
        if self.beta > 0:
            with torch.no_grad():
                output["ref_logps"] = self._reference_logps(output)
        return output

    def _pair_logps(self, model, inputs):
        """One forward pass over both answers of every pair, conditioned on the plain prompt."""
        num_pairs = inputs["prompt_ids"].size(0)
        prompt_ids = inputs["prompt_ids"].repeat(2, 1)
        prompt_mask = inputs["prompt_mask"].repeat(2, 1)
        completion_ids = inputs["completion_ids"].transpose(0, 1).flatten(0, 1)  # plain rows, then principled rows
        completion_mask = inputs["completion_mask"].transpose(0, 1).flatten(0, 1)
        per_token_logps, _, _ = self._get_per_token_logps_and_entropies(
            model,
            torch.cat([prompt_ids, completion_ids], dim=1),
            torch.cat([prompt_mask, completion_mask], dim=1),
            completion_ids.size(1),
        )
        sums = losses.sequence_logps(per_token_logps, completion_mask)
        means = losses.sequence_logps(per_token_logps, completion_mask, length_normalize=True)
        return sums.view(2, num_pairs), means.view(2, num_pairs)

    def _reference_logps(self, inputs):
        with disable_gradient_checkpointing(self.model, self.args.gradient_checkpointing_kwargs):
            if self.ref_model is not None:
                sums, means = self._pair_logps(self.ref_model, inputs)
            else:
                with use_adapter(self.accelerator.unwrap_model(self.model), adapter_name=None):
                    sums, means = self._pair_logps(self.model, inputs)
        ranked_on = means if losses.ranks_on_mean(self.args.ranking_loss_type, self.args.length_normalize) else sums
        return ranked_on.transpose(0, 1)  # (pairs, 2)

    def _log_round(self, mode, tau, reward_plain, reward_principled, transformed, rank_mask, weight_principled, valid):
        metrics = self._metrics[mode]
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
                (transformed[1] - transformed[0])[valid].mean(),
                weight_principled[wsft].mean() if wsft.any() else torch.tensor(torch.nan, device=valid.device),
            ]
        ).tolist()  # one device sync for all of them
        for name, value in zip(
            ("rank_fraction", "reward_plain", "reward_principled", "reward_gap", "sft_weight_principled"), stats
        ):
            metrics[f"ple/{name}"].append(value)

    def _save_labels(self, prompts, principles, completions, reward_plain, reward_principled, rank_mask,
                     principled_preferred, weight_principled, valid, tau):  # fmt: skip
        num_pairs = len(prompts)
        texts = gather_object(
            [
                (prompt, principle, completions[i], completions[num_pairs + i])
                for i, (prompt, principle) in enumerate(zip(prompts, principles, strict=True))
            ]
        )
        if not self.accelerator.is_main_process:
            return
        columns = torch.stack(
            [
                reward_plain,
                reward_principled,
                rank_mask.float(),
                principled_preferred.float(),
                weight_principled,
                valid.float(),
            ]  # fmt: skip
        ).T.tolist()
        path = os.path.join(self.args.output_dir, "enhanced_labels.jsonl")
        os.makedirs(self.args.output_dir, exist_ok=True)
        with open(path, "a") as f:
            for (prompt, principle, plain, principled), (r, r_p, rank, preferred, w_p, ok) in zip(texts, columns):
                route = "skipped" if not ok else ROUTE_NAMES[bool(rank)]
                record = {
                    "step": self.state.global_step,
                    "tau": tau,
                    "prompt": prompt,
                    "principle": principle,
                    "plain": plain,
                    "principled": principled,
                    "reward_plain": r if ok else None,
                    "reward_principled": r_p if ok else None,
                    "route": route,
                    "preferred": ("principled" if preferred else "plain") if route == "rank" else None,
                    "weight_principled": w_p if ok else None,
                    "weight_plain": 1 - w_p if ok else None,
                }
                f.write(json.dumps(record) + "\n")

    # --- loss ---------------------------------------------------------------------------------------------------

    def _compute_loss(self, model, inputs):
        mode = "train" if self.model.training else "eval"
        sums, means = self._pair_logps(model, inputs)
        ref_logps = inputs.get("ref_logps")
        loss, rank_losses, wsft_losses = losses.ple_loss(
            plain_logps=sums[0],
            principled_logps=sums[1],
            plain_mean_logps=means[0],
            principled_mean_logps=means[1],
            rank_mask=inputs["rank_mask"],
            principled_preferred=inputs["principled_preferred"],
            weight_principled=inputs["weight_principled"],
            valid=inputs["valid"],
            ranking_loss_type=self.args.ranking_loss_type,
            length_normalize=self.args.length_normalize,
            rank_coef=self.args.rank_coef,
            wsft_coef=self.args.wsft_coef,
            rank_sft_coef=self.args.rank_sft_coef,
            beta=self.beta,
            ref_plain_logps=None if ref_logps is None else ref_logps[:, 0],
            ref_principled_logps=None if ref_logps is None else ref_logps[:, 1],
        )
        # Global means of each branch's loss over the pairs it applies to (one reduction for the four numbers).
        rank_mask = inputs["rank_mask"] & inputs["valid"]
        wsft_mask = inputs["valid"] & ~inputs["rank_mask"]
        totals = self.accelerator.reduce(
            torch.stack([rank_losses.sum(), rank_mask.sum(), wsft_losses.sum(), wsft_mask.sum()]).detach().float(),
            reduction="sum",
        ).tolist()
        if totals[1]:
            self._metrics[mode]["ple/loss_rank"].append(totals[0] / totals[1])
        if totals[3]:
            self._metrics[mode]["ple/loss_wsft"].append(totals[2] / totals[3])
        # Loss scaled for gradient accumulation here, as GRPO does (`loss_is_scaled_for_ga`).
        return loss / self.current_gradient_accumulation_steps if mode == "train" else loss
