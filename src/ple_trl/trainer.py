import copy
import json
import logging
import os
import random
import textwrap

import torch
from accelerate.utils import gather_object, is_peft_model
from datasets import IterableDataset
from torch import nn
from trl import GRPOTrainer
from trl.data_utils import apply_chat_template, is_conversational, prepare_multimodal_messages
from trl.models import prepare_deepspeed, prepare_fsdp
from trl.models.utils import disable_gradient_checkpointing
from trl.trainer.utils import add_fused_lm_head, create_model_from_path, disable_dropout_in_model, pad, use_adapter

from . import labeling, losses
from .config import PLEConfig
from .data import to_prompt_dataset
from .device import apply_model_init_overrides
from .principles import truncate_pair, wrap
from .rewards.model import LeftTruncatingRewardModel, reward_model_max_length

logger = logging.getLogger(__name__)

ROUTE_NAMES = {True: "rank", False: "wsft"}
# The processor outputs of vision-language models that the pair forward repeats for both answers of a pair.
MULTIMODAL_FIELDS = (
    "pixel_values",
    "image_grid_thw",
    "pixel_attention_mask",
    "image_sizes",
    "image_position_ids",
    "token_type_ids",
    "mm_token_type_ids",
)
# Vision-language families whose processor cuts an image into a variable number of tiles: not supported yet.
TILED_MODEL_TYPES = ("lfm2_vl", "internvl")
PLAIN_TEXT_IMAGES_ERROR = (
    "The dataset has images but its prompts are plain text: multimodal training needs conversational prompts (e.g. "
    "`[{'role': 'user', 'content': 'What is in the picture?'}]`) so that the processor can place the images. Do not "
    "apply the chat template before passing the dataset."
)


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
        train_dataset ([`~datasets.Dataset`] or [`~datasets.IterableDataset`]):
            Prompt-only (`prompt`), SFT (`messages`) or preference (`prompt`/`chosen`/`rejected`, or implicit prompt)
            data; only the prompts are used. An optional `principle` column overrides the configured principle. For a
            vision-language policy, an `image` or `images` column (with conversational prompts) reaches generation
            and the loss as in [`~trl.GRPOTrainer`]; both answers of a pair see the same images.
        eval_dataset ([`~datasets.Dataset`] or `dict[str, Dataset]`, *optional*):
            Same formats as `train_dataset`.
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
        if args.reward_model_name_or_path is not None:
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
        train_dataset = to_prompt_dataset(train_dataset)
        if isinstance(eval_dataset, dict):
            eval_dataset = {name: to_prompt_dataset(ds) for name, ds in eval_dataset.items()}
        elif eval_dataset is not None:
            eval_dataset = to_prompt_dataset(eval_dataset)
        first_row = next(iter(train_dataset))
        if args.principle is None and args.principles is None and not first_row.get("principle"):
            raise ValueError(
                "No principle: PLE needs one to build the principle-guided prompt. Set `PLEConfig(principle=...)`, "
                "`PLEConfig(principles=[...])`, or add a `principle` column to the dataset."
            )
        if args.iteration_unit == "epoch" and isinstance(train_dataset, IterableDataset):
            raise ValueError(
                "`iteration_unit='epoch'` needs a dataset with a length, but `train_dataset` is an IterableDataset. "
                "Set `iteration_unit='steps'` with `steps_per_iteration`."
            )
        if ref_model is not None and args.beta == 0:
            raise ValueError(
                "A `ref_model` was passed but `beta=0`, so it would never be used. Set `beta > 0` with "
                "`ranking_loss_type='dpo'` or `'ipo'`, or drop `ref_model`."
            )
        if args.beta > 0 and ref_model is None and peft_config is None and not is_peft_model(model):
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
        self._check_images(train_dataset, eval_dataset)

    def _check_images(self, train_dataset, eval_dataset):
        # Images are refused here, before training, where PLE cannot give them to the policy.
        datasets = [train_dataset, *(eval_dataset.values() if isinstance(eval_dataset, dict) else [eval_dataset])]
        for dataset in datasets:
            if dataset is None:
                continue
            columns = dataset.column_names or list(next(iter(dataset)).keys())
            image_columns = [c for c in ("image", "images") if c in columns]
            if not image_columns:
                continue
            if not self._is_vlm:
                raise ValueError(
                    f"The dataset has an {image_columns[0]!r} column, but the policy's processing class is a "
                    f"{type(self.processing_class).__name__}, not a processor: the images could never reach the "
                    "model. Pass a vision-language model (its processor is loaded with it), or remove the column."
                )
            model_type = self.accelerator.unwrap_model(self.model).config.model_type
            if model_type in TILED_MODEL_TYPES:
                raise ValueError(
                    f"Vision-language models of type {model_type!r} cut images into tiles, which PLE's pair layout "
                    "does not support. Use a model with one pixel block per image (e.g. LLaVA, Qwen2-VL, Gemma 3)."
                )
            if not is_conversational({"prompt": next(iter(dataset))["prompt"]}):
                raise ValueError(PLAIN_TEXT_IMAGES_ERROR)

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

    # --- threshold schedule -------------------------------------------------------------------------------------

    def completed_iterations(self) -> int:
        """Number of completed PLE iterations, derived from `state.global_step` (so a resumed run continues)."""
        if self.args.iteration_unit == "steps":
            return self.state.global_step // self.args.steps_per_iteration
        if self._steps_per_epoch is None:
            rounds = len(self.train_dataset) // self.args.generation_batch_size
            micro_steps = rounds * self.args.steps_per_generation * self.args.num_iterations
            self._steps_per_epoch = max(1, micro_steps // self.args.gradient_accumulation_steps)
        return self.state.global_step // self._steps_per_epoch

    @property
    def tau(self) -> float:
        """The current threshold `max(tau_min, tau0 * alpha**k)`, k = completed PLE iterations."""
        return labeling.tau_at(self.completed_iterations(), self.args.tau0, self.args.alpha, self.args.tau_min)

    # --- sampling -----------------------------------------------------------------------------------------------

    def _principle_for(self, example):
        if example.get("principle"):
            return example["principle"]
        if self.args.principle is not None:
            return self.args.principle
        return self._principle_rng.choice(self.args.principles)

    def _tokenize_prompts(self, prompts):
        # Called by `_generate` on PLE's pair layout: the plain prompts, then their principled versions, in order.
        prompt_ids, images, multimodal_fields = super()._tokenize_prompts(prompts)
        if self.args.max_prompt_length is not None:
            num_pairs = len(prompt_ids) // 2
            longest = max(len(ids) for ids in prompt_ids[:num_pairs])
            if images is not None and longest > self.args.max_prompt_length:
                # Cutting a multimodal prompt would cut image tokens, which must match the image features.
                raise ValueError(
                    f"A prompt with images has {longest} tokens (image tokens included), more than "
                    f"`max_prompt_length={self.args.max_prompt_length}`, and multimodal prompts cannot be truncated "
                    f"without losing image tokens. Set `max_prompt_length` to at least {longest}, or to `None`."
                )
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
        # With images, the model sees the plain prompt as GRPO builds it (the images as typed parts of the first user
        # turn); its principled version wraps that, so both answers of a pair see the same images.
        images = self._dataset_images(inputs)
        model_prompts = plain_prompts
        if images is not None:
            model_prompts = [
                prepare_multimodal_messages(prompt, images=image_list)
                for prompt, image_list in zip(plain_prompts, images, strict=True)
            ]
        principled_prompts = [
            wrap(prompt, principle, self.args.principle_template, self.args.principle_placement)
            for prompt, principle in zip(model_prompts, principles, strict=True)
        ]

        # One generation call for both halves: plain answers first, principle-guided answers second.
        prompt_ids_list, completion_ids_list, _, completions, _, _, _, _ = self._generate(
            model_prompts + principled_prompts
        )

        # Both answers are scored against the plain prompt: the reward never sees the principle.
        rewards, rewards_per_func = self._score(
            inputs + inputs, model_prompts + model_prompts, completions, completion_ids_list
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
            transformed[0], transformed[1], tau, self.args.gap_mode
        )
        if self.args.routing == "rank_all":
            rank_mask = valid.clone()
        elif self.args.routing == "wsft_all":
            rank_mask = torch.zeros_like(valid)
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
        if images is not None:
            output.update(self._multimodal_forward_kwargs(model_prompts, images))
        if self.beta > 0:
            with torch.no_grad():
                output["ref_logps"] = self._reference_logps(output)
        return output

    @staticmethod
    def _dataset_images(inputs):
        # The `images` (a list per row) or `image` (one per row) column, as GRPO reads it.
        if "images" in inputs[0]:
            images = [example.get("images") for example in inputs]
        elif "image" in inputs[0]:
            images = [[example["image"]] if example.get("image") is not None else None for example in inputs]
        else:
            return None
        if all(not image_list for image_list in images):  # the processors need at least one image in the batch
            return None
        if not is_conversational({"prompt": inputs[0]["prompt"]}):
            raise ValueError(PLAIN_TEXT_IMAGES_ERROR)
        return images

    def _multimodal_forward_kwargs(self, prompts, images):
        """The processor's image fields for the plain prompts, one entry per pair, as GRPO computes them for its loss
        forward, plus `num_images`."""
        prompts_text = [
            apply_chat_template({"prompt": prompt}, self.processing_class, **self.chat_template_kwargs)["prompt"]
            for prompt in prompts
        ]
        prompt_inputs = self.processing_class(images=images, text=prompts_text, padding=True, return_tensors="pt")
        # Trainer's `_prepare_inputs` (device placement), not GRPO's, which generates and buffers.
        prompt_inputs = super(GRPOTrainer, self)._prepare_inputs(prompt_inputs)
        num_images = [len(image_list) if image_list else 0 for image_list in images]
        pixel_values = prompt_inputs.get("pixel_values")
        tiled = "spatial_shapes" in prompt_inputs or (
            pixel_values is not None
            and pixel_values.ndim == 4
            and "image_grid_thw" not in prompt_inputs
            and pixel_values.size(0) != sum(num_images)
        )
        if tiled:  # the known families are refused at construction; this catches the others
            raise ValueError(
                f"The processor {type(self.processing_class).__name__} cuts images into tiles (LFM2-VL/InternVL "
                "style), which PLE's pair layout does not support. Use a vision-language model with one pixel block "
                "per image (e.g. LLaVA, Qwen2-VL, Gemma 3, Idefics)."
            )
        # The fields GRPO's loss forward takes; the text ids come from generation, as in GRPO.
        fields = {k: v for k, v in prompt_inputs.items() if k in MULTIMODAL_FIELDS}
        return {**fields, "num_images": num_images}

    def _pair_logps(self, model, inputs, compute_aux_loss=False):
        """One forward pass over both answers of every pair, conditioned on the plain prompt (and its images).

        Returns the per-answer sums and means of the log-probs, `(2, pairs)` each, and the MoE load-balancing loss of
        this forward (`None` unless `compute_aux_loss`)."""
        num_pairs = inputs["prompt_ids"].size(0)
        prompt_ids = inputs["prompt_ids"].repeat(2, 1)
        prompt_mask = inputs["prompt_mask"].repeat(2, 1)
        completion_ids = inputs["completion_ids"].transpose(0, 1).flatten(0, 1)  # plain rows, then principled rows
        completion_mask = inputs["completion_mask"].transpose(0, 1).flatten(0, 1)
        per_token_logps, _, aux_loss = self._get_per_token_logps_and_entropies(
            model,
            torch.cat([prompt_ids, completion_ids], dim=1),
            torch.cat([prompt_mask, completion_mask], dim=1),
            completion_ids.size(1),
            compute_aux_loss=compute_aux_loss,
            **self._pair_forward_kwargs(inputs, completion_ids.size(1)),
        )
        sums = losses.sequence_logps(per_token_logps, completion_mask)
        means = losses.sequence_logps(per_token_logps, completion_mask, length_normalize=True)
        return sums.view(2, num_pairs), means.view(2, num_pairs), aux_loss

    @staticmethod
    def _pair_forward_kwargs(inputs, completion_length):
        # The multimodal fields are stored once per pair (for the plain prompt). The pair forward runs over
        # [plain prompts + y ; plain prompts + y_p], so both halves get the same images, in the same order.
        kwargs = {}
        if inputs.get("num_images") is not None:
            kwargs["num_images"] = list(inputs["num_images"]) * 2
        for key in ("pixel_values", "image_grid_thw", "pixel_attention_mask", "image_sizes", "image_position_ids"):
            if inputs.get(key) is not None:
                kwargs[key] = torch.cat([inputs[key], inputs[key]])
        for key in ("token_type_ids", "mm_token_type_ids"):
            if inputs.get(key) is not None:
                # Prompt-only ids: left-padded to the prompt width, zeros over the answer (as GRPO extends them).
                type_ids = inputs[key]
                type_ids = nn.functional.pad(type_ids, (inputs["prompt_ids"].size(1) - type_ids.size(1), 0))
                type_ids = nn.functional.pad(type_ids, (0, completion_length))
                kwargs[key] = type_ids.repeat(2, 1)
        return kwargs

    def _reference_logps(self, inputs):
        with disable_gradient_checkpointing(self.model, self.args.gradient_checkpointing_kwargs):
            if self.ref_model is not None:
                sums, means, _ = self._pair_logps(self.ref_model, inputs)
            else:
                with use_adapter(self.accelerator.unwrap_model(self.model), adapter_name=None):
                    sums, means, _ = self._pair_logps(self.model, inputs)
        ranked_on = means if self.args.length_normalize or self.args.ranking_loss_type == "hinge" else sums
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
        # The MoE load-balancing loss only in the policy's trained forward, as GRPO (not in the reference pass).
        sums, means, aux_loss = self._pair_logps(model, inputs, compute_aux_loss=self.aux_loss_enabled)
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
        normalizer = self.current_gradient_accumulation_steps if mode == "train" else 1
        loss = loss / normalizer
        if self.aux_loss_enabled:  # GRPO's MoE term: `router_aux_loss_coef` (or the model's own) times the router loss
            loss = loss + self.router_aux_loss_coef * aux_loss / normalizer
            self._metrics[mode]["aux_loss"].append(self.accelerator.gather_for_metrics(aux_loss).mean().item())
        return loss
