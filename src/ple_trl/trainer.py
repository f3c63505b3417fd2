"""
[`PLETrainer`]: PLE's core on top of [`~trl.GRPOTrainer`] (construction and its checks, the threshold schedule, the
pair sampling and labelling, the reference, the loss). The rest lives in mixins, listed before `GRPOTrainer` so that
their overrides win and their `super()` calls reach GRPO: `_logging` (metrics, completions table), `_checkpointing`
(checkpoints, resume, audit log), `_snapshot` (implicit reward, iteration snapshot), `_pair_forward` (the pair's
log-probs, prefix sharing, multimodal inputs), `_model_card`; `_inputs` holds the input checks.
"""

import copy
import random
import textwrap
from collections import deque

import torch
from accelerate.utils import gather_object, is_peft_model
from datasets import IterableDataset
from torch import nn
from trl import GRPOTrainer
from trl.data_utils import is_conversational, prepare_multimodal_messages
from trl.models import prepare_deepspeed, prepare_fsdp
from trl.trainer.utils import (
    add_fused_lm_head,
    create_model_from_path,
    disable_dropout_in_model,
    pad,
)

from . import labeling, losses

# Names re-exported from their new modules: `ple_trl.trainer` is where users, tests and `spa_trainer` import them.
from ._checkpointing import (  # noqa: F401
    _CHECKPOINT_RE,
    AUDIT_LOG_NAME,
    PLE_STATE_NAME,
    SNAPSHOT_NAME,
    TRAINER_STATE_NAME,
    EpochSeededRepeatSampler,
    ResumableAuditMixin,
    _is_disk_full,
    _SamplerEpochCallback,
)
from ._generation_prefix import SharedPrefixGenerationMixin
from ._inputs import (  # noqa: F401
    _check_model_path,
    _checked_reward_function,
    _implicit_reward_placeholder,
    _is_reward_value,
)
from ._logging import ROUTE_NAMES, CompletionsLoggingMixin, _as_text  # noqa: F401
from ._model_card import ModelCardMixin
from ._pair_forward import (  # noqa: F401
    MULTIMODAL_FIELDS,
    PLAIN_TEXT_IMAGES_ERROR,
    TILED_MODEL_TYPES,
    PairForwardMixin,
)
from ._snapshot import IterationSnapshotMixin
from .config import PLEConfig, SPAConfig
from .data import check_generation_round, prepare_prompt_dataset, prompt_is_empty
from .device import apply_model_init_overrides
from .principles import truncate_pair, wrap
from .rewards.model import LeftTruncatingRewardModel, reward_model_max_length


class PLETrainer(
    CompletionsLoggingMixin,
    ResumableAuditMixin,
    IterationSnapshotMixin,
    PairForwardMixin,
    SharedPrefixGenerationMixin,
    ModelCardMixin,
    GRPOTrainer,
):
    """
    Trainer for Progressively Label Enhancement (PLE), from [Progressively Label Enhancement for Large Language Model
    Alignment](https://huggingface.co/papers/2408.02599) (Liu, Xu & Geng, ICML 2025).

    For each prompt the model answers twice, to the plain prompt and to the prompt guided by a principle. The reward
    scores both answers against the plain prompt. A pair whose principled answer beats the plain one by more than the
    threshold `tau` is trained with a ranking loss (principled preferred); the others are trained with an SFT loss
    weighted by their rewards. Both answers are conditioned on the plain prompt, so the principle is distilled into
    the model's unguided behaviour. `tau` starts at `tau0` and decays by `alpha` every PLE iteration.

    `PLETrainer` is a [`~trl.GRPOTrainer`]: model loading, PEFT, reward models and functions, generation (transformers
    or vLLM), buffering across gradient accumulation, DeepSpeed/FSDP and NPU support are inherited. It overrides the
    sampling (`_generate_and_score_completions`) and the loss (`_compute_loss`); with transformers generation, the
    tokens a pair's two prompts start with (a dialogue's earlier turns, a default system prompt) run once per pair.

    Logged metrics: PLE's `ple/*` (means over the logging window, except `ple/tau`, the threshold at the logged step)
    and GRPO's reward metrics for pairs (`reward`, `reward_std`, `rewards/<function>/mean` and `/std`,
    `frac_reward_zero_std`, reward functions' `log_metric` values). `log_completions=True` writes one row per pair.

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
            `args.reward_model_name_or_path` adds a reward model. At least one reward is required, unless
            `args.reward_source="implicit"`: then none may be given, and the model's own implicit reward scores the
            answers (logged as the reward `implicit_reward`; see [`PLEConfig`]).
        args ([`PLEConfig`], *optional*):
            Configuration. `per_device_train_batch_size` counts pairs (prompts).
        train_dataset ([`~datasets.Dataset`], [`~datasets.IterableDataset`] or `list[dict]`):
            Prompt-only (`prompt`), SFT (`messages`) or preference (`prompt`/`chosen`/`rejected`, or implicit prompt)
            data; only the prompts are used. An optional `principle` column overrides the configured principle (its
            empty rows use the configured one). Every row is checked at construction (a stream's rows as they come):
            empty prompts, and a dataset smaller than one generation round, are errors. For a vision-language policy,
            an `image` or `images` column (with conversational prompts) reaches generation and the loss as in
            [`~trl.GRPOTrainer`]; both answers of a pair see the same images.
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
            Reference model for the `"dpo"`/`"ipo"` ranking losses (`beta > 0`), as for [`~trl.DPOTrainer`], and
            `pi_init` of the implicit reward (`reward_source="implicit"`). Default: the adapter-disabled model under
            PEFT, else a frozen copy of the initial policy.
        quantization_config ([`~transformers.BitsAndBytesConfig`], *optional*):
            Quantization of a model loaded from a path (QLoRA with `peft_config`).
    """

    _tag_names = ["trl", "ple"]
    _name = "PLE"
    # PLE builds a principle-guided prompt beside each plain one; SPA samples two plain answers.
    _uses_principles = True
    # The columns printed first in the completions table.
    _completion_columns = ("prompt", "principle", "plain", "principled", "reward_plain", "reward_principled", "route",
                           "weight_principled", "tau")  # fmt: skip
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

    # What `args` must be, and what the error says when it is not: a subclass with its own config (SPA) sets both.
    _config_class = PLEConfig
    _config_hint = (
        "PLETrainer needs a `PLEConfig`. Build one with the same fields, e.g. `PLEConfig(**your_args.to_dict())` "
        "minus the fields of your former method."
    )

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
        args = self._resolve_args(model, args)
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
        implicit = args.reward_source == "implicit"
        if implicit and reward_funcs:
            raise ValueError(
                f"`reward_source='implicit'` labels the pairs with the model's own implicit reward, but "
                f"{len(reward_funcs)} reward function(s)/model(s) were passed too. Drop `reward_funcs`, or set "
                "`reward_source='reward_funcs'` to use them."
            )
        if implicit:
            # GRPO wants one reward source; this one only names the reward column, `_score` is never called with it.
            reward_funcs = [_implicit_reward_placeholder]
        if not reward_funcs:
            raise ValueError(
                "PLE needs a reward to compare the plain and principled answers, and none was given. Pass "
                "`reward_funcs=` (reward functions, reward models or their paths), set "
                "`PLEConfig(reward_model_name_or_path=...)`, or use the model's own implicit reward with "
                "`PLEConfig(reward_source='implicit')`."
            )
        if train_dataset is None:
            raise ValueError("`train_dataset` is required: PLE generates answers for its prompts.")
        principle_configured = not self._uses_principles or args.principle is not None or args.principles is not None
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
                    "`model` and `ref_model` cannot be the same object (or share parameters): the reference is "
                    "frozen, so the policy would be too. Leave `ref_model=None` (PLE then makes a frozen copy of the "
                    "initial policy, or uses the adapter-disabled model under PEFT), or pass a copy "
                    "(`copy.deepcopy(model)`)."
                )
        fresh_policy = peft_config is not None or not (isinstance(model, nn.Module) and is_peft_model(model))
        if implicit and fresh_policy and (ref_model is None or (isinstance(ref_model, str) and ref_model == model)):
            # pi_init would be the initial policy itself: every implicit reward is exactly 0 until the policy moves,
            # so every label is a tie (SPA would then never move: its tied pairs are not trained).
            raise ValueError(
                "The implicit reward `beta_judge * (log pi_judge - log pi_init)` needs a `pi_init` other than the "
                "initial policy, and here it would be the policy itself: with no `ref_model`, a copy of the policy "
                "(or, with `peft_config`, the base model, which a fresh adapter starts as), so every answer would get "
                "a reward of exactly 0 and every label would be a tie. Pass `ref_model=` (the model before your SFT "
                "or seed-DPO stage), or pass a `PeftModel` whose trained adapter is the policy (its adapter-disabled "
                "model is then `pi_init`)."
            )
        if ref_model is not None and args.beta == 0 and not implicit:
            raise ValueError(
                "A `ref_model` was passed but `beta=0`, so it would never be used. Set `beta > 0` with "
                "`ranking_loss_type='dpo'` or `'ipo'`, or drop `ref_model`."
            )
        if (
            (args.beta > 0 or implicit)
            and ref_model is None
            and peft_config is None
            and (isinstance(model, str) or not is_peft_model(model))
        ):
            # The reference is the initial policy: reload it from its path, or copy it before training touches it.
            ref_model = model if isinstance(model, str) else copy.deepcopy(model)
        # The snapshot of the policy at the start of each iteration (SPA's reference and `pi_judge`), taken here for
        # full models, before GRPO patches the policy's forward (a deep copy would share the patched closure).
        snapshot = None
        if self._uses_iteration_snapshot(args) and (isinstance(model, str) or not is_peft_model(model)):
            if peft_config is None:
                snapshot = model if isinstance(model, str) else copy.deepcopy(model)

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
        if self._uses_iteration_snapshot(args):
            self._check_snapshot_backend()
        self._snapshot_model = None if snapshot is None else self._prepare_frozen_model(snapshot, args)
        self._snapshot_adapter = None
        if self._uses_iteration_snapshot(args) and snapshot is None:
            self._snapshot_adapter = self._add_snapshot_adapter()
        self._snapshot_iteration = 0

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

        # Each process draws its own principles (independent streams, saved per process in checkpoints).
        self._principle_rng = random.Random(args.seed + self.accelerator.process_index)
        self._skipped_pairs_total = 0
        self._steps_per_epoch = None
        # PLE's completions table: one row per pair of the latest generation round(s), like GRPO's `_logs`.
        self._completion_rows = deque(maxlen=args.generation_batch_size)
        self._ple_train_sampler = None
        self.add_callback(_SamplerEpochCallback(self))
        self._check_images(train_dataset, eval_dataset)
        self._check_required_prefix_sharing(
            [train_dataset, *(eval_dataset.values() if isinstance(eval_dataset, dict) else [eval_dataset])]
        )

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
        if (self.beta == 0 and args.reward_source != "implicit") or ref_model is None:
            return None  # no reference, or the adapter-disabled policy under PEFT
        return self._prepare_frozen_model(ref_model, args)

    def _prepare_frozen_model(self, ref_model, args):
        """A frozen, evaluation-mode model (from a path or a module), prepared like the policy for its backend."""
        if isinstance(ref_model, str):
            init_kwargs = dict(args.model_init_kwargs or {})
            init_kwargs.setdefault("dtype", self.model.dtype)
            init_kwargs.setdefault("trust_remote_code", args.trust_remote_code)  # as GRPO loads the policy
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

    @staticmethod
    def _with_images(prompts, images):
        """The prompts as GRPO builds them for the model: with images, as typed parts of the first user turn."""
        if images is None:
            return prompts
        return [
            prepare_multimodal_messages(prompt, images=image_list)
            for prompt, image_list in zip(prompts, images, strict=True)
        ]

    def _pair_batch(self, prompt_ids_list, completion_ids_list, model_prompts, images):
        """
        A generation round laid out as pairs: the plain prompts (the first half of `prompt_ids_list`; both answers of a
        pair are trained on the plain prompt) and the answers as `(pairs, 2, length)`, the first half of
        `completion_ids_list` at index 0 and the second at index 1.
        """
        num_pairs = len(model_prompts)
        prompt_ids, prompt_mask = self._pad_ids(prompt_ids_list[:num_pairs], padding_side="left")
        completion_ids, completion_mask = self._pad_ids(completion_ids_list, padding_side="right")
        # (2 * pairs, length) -> (pairs, 2, length): a pair's answers travel together through shuffling and splitting.
        output = {
            "prompt_ids": prompt_ids,
            "prompt_mask": prompt_mask,
            "completion_ids": completion_ids.view(2, num_pairs, -1).transpose(0, 1),
            "completion_mask": completion_mask.view(2, num_pairs, -1).transpose(0, 1),
        }
        if images is not None:
            output.update(self._multimodal_forward_kwargs(model_prompts, images))
        return output

    def _generate_and_score_completions(self, inputs):
        mode = "train" if self.model.training else "eval"
        num_pairs = len(inputs)
        plain_prompts = [example["prompt"] for example in inputs]
        principles = [self._principle_for(example) for example in inputs]
        # With images, the model sees the plain prompt as GRPO builds it (the images as typed parts of the first user
        # turn); its principled version wraps that, so both answers of a pair see the same images.
        images = self._dataset_images(inputs)
        model_prompts = self._with_images(plain_prompts, images)
        principled_prompts = [
            wrap(prompt, principle, self.args.principle_template, self.args.principle_placement)
            for prompt, principle in zip(model_prompts, principles, strict=True)
        ]

        # One generation call for both halves: plain answers first, principle-guided answers second.
        prompt_ids_list, completion_ids_list, _, completions, _, _, _, _ = self._generate(
            model_prompts + principled_prompts
        )

        output = self._pair_batch(prompt_ids_list, completion_ids_list, model_prompts, images)
        # Both answers are scored against the plain prompt: the reward never sees the principle.
        if self.args.reward_source == "implicit":
            if mode == "train":
                self._maybe_refresh_snapshot()
            rewards = self._gather_pair_rewards(self._implicit_rewards(output))
            rewards_per_func = rewards.unsqueeze(1)
        else:
            rewards, rewards_per_func = self._score(
                inputs + inputs, model_prompts + model_prompts, completions, completion_ids_list
            )
        extra_columns = self._log_rewards(mode, rewards, rewards_per_func, num_pairs)
        rewards = rewards.view(self.accelerator.num_processes, 2, num_pairs)
        reward_plain, reward_principled = rewards[:, 0].flatten(), rewards[:, 1].flatten()

        # Label enhancement on the rewards of every process, so every process takes the same decisions.
        tau = self.tau
        labels = labeling.enhance(
            reward_plain,
            reward_principled,
            tau,
            gap_mode=self.args.gap_mode,
            reward_transform=self.args.reward_transform,
            routing=self.args.routing,
            sft_weighting=self.args.sft_weighting,
            sft_temperature=self.args.sft_temperature,
        )
        self._log_round(mode, tau, reward_plain, reward_principled, labels)
        save_labels = self.args.save_enhanced_labels and mode == "train"
        if save_labels or self.log_completions:
            texts = gather_object(
                [
                    (prompt, principle, completions[i], completions[num_pairs + i])
                    for i, (prompt, principle) in enumerate(zip(plain_prompts, principles, strict=True))
                ]
            )
            pair_rewards = torch.stack([reward_plain, reward_principled])
            if save_labels:
                self._save_labels(texts, pair_rewards, labels, tau)
            if self.log_completions:
                self._add_completion_rows(texts, pair_rewards, rewards_per_func, labels, tau, extra_columns)

        local = slice(self.accelerator.process_index * num_pairs, (self.accelerator.process_index + 1) * num_pairs)
        output.update(labels.select(local)._asdict())
        if self.beta > 0:
            with torch.no_grad():
                output["ref_logps"] = self._reference_logps(output)
        return output

    def _pad_ids(self, id_lists, padding_side):
        """Pad token id lists into `(ids, mask)` tensors on the device, as GRPO pads its prompts and completions."""
        ids = [torch.tensor(ids, dtype=torch.long) for ids in id_lists]
        masks = [torch.ones(len(row), dtype=torch.long) for row in ids]
        kwargs = {"padding_side": padding_side, "pad_to_multiple_of": self.pad_to_multiple_of}
        device = self.accelerator.device
        return pad(ids, padding_value=self._tokenizer.pad_token_id, **kwargs).to(device), pad(
            masks, padding_value=0, **kwargs
        ).to(device)

    def _reference_logps(self, inputs):
        sums, means = self._frozen_pair_logps("init", inputs)
        ranked_on = losses.ranking_logps(
            losses.PairLogps(sums, means), self.args.ranking_loss_type, self.args.length_normalize
        )
        return ranked_on.transpose(0, 1)  # (pairs, 2): a pair's two values travel together, like its answers

    # --- loss ---------------------------------------------------------------------------------------------------

    def _compute_loss(self, model, inputs):
        mode = "train" if self.model.training else "eval"
        # The MoE load-balancing loss only in the policy's trained forward, as GRPO (not in the reference pass).
        sums, means, aux_loss = self._pair_logps(model, inputs, compute_aux_loss=self.aux_loss_enabled)
        ref_logps = inputs.get("ref_logps")
        result = losses.ple_loss(
            labeling.EnhancedLabels(*(inputs[name] for name in labeling.EnhancedLabels._fields)),
            losses.PairLogps(sums, means, None if ref_logps is None else ref_logps.transpose(0, 1)),
            ranking_loss_type=self.args.ranking_loss_type,
            length_normalize=self.args.length_normalize,
            rank_coef=self.args.rank_coef,
            wsft_coef=self.args.wsft_coef,
            rank_sft_coef=self.args.rank_sft_coef,
            beta=self.beta,
        )
        loss = result.loss
        # Global means of each branch's loss over the pairs it applies to (one reduction for the four numbers).
        totals = self.accelerator.reduce(
            torch.stack(
                [result.rank_losses.sum(), result.rank_mask.sum(), result.wsft_losses.sum(), result.wsft_mask.sum()]
            ).detach().float(),
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
