import copy
import errno
import json
import logging
import math
import numbers
import os
import random
import re
import textwrap
from collections import deque

import numpy as np
import torch
from accelerate.utils import gather_object, is_peft_model
from datasets import IterableDataset
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from transformers.utils import is_rich_available
from trl import GRPOTrainer
from trl.data_utils import apply_chat_template, is_conversational, prepare_multimodal_messages
from trl.models import prepare_deepspeed, prepare_fsdp
from trl.models.utils import disable_gradient_checkpointing
from trl.trainer.callbacks import SyncRefModelCallback
from trl.trainer.utils import (
    RepeatSampler,
    add_fused_lm_head,
    create_model_from_path,
    disable_dropout_in_model,
    is_async_callable,
    nanstd,
    pad,
    strip_images_from_messages,
    use_adapter,
)

from . import labeling, losses, spa
from .config import PLEConfig, SPAConfig
from .data import check_generation_round, prepare_prompt_dataset, prompt_is_empty
from .device import apply_model_init_overrides
from .principles import truncate_pair, wrap
from .rewards.model import LeftTruncatingRewardModel, reward_model_max_length

logger = logging.getLogger(__name__)

ROUTE_NAMES = {True: "rank", False: "wsft"}
AUDIT_LOG_NAME = "enhanced_labels.jsonl"
# PLE's own resumable state (the principle draws), saved in every checkpoint before transformers' trainer_state.json.
PLE_STATE_NAME = "ple_state.json"
# transformers writes trainer_state.json last when it saves a checkpoint: a checkpoint folder without it is incomplete.
TRAINER_STATE_NAME = "trainer_state.json"
# The weights of the policy as at the start of the current iteration (SPA's reference, the implicit reward's judge):
# the policy has moved on since, so they are saved with every checkpoint and restored on resume.
SNAPSHOT_NAME = "iteration_snapshot.safetensors"
_CHECKPOINT_RE = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")
# How a full disk shows up when the error is not a plain `OSError` (safetensors and torch.save wrap it).
_DISK_FULL_MARKERS = ("no space left on device", "storagefull", "disk quota exceeded", "os error 28", "os error 122")


class EpochSeededRepeatSampler(RepeatSampler):
    """
    TRL's `RepeatSampler` whose order in epoch `e` is a pure function of `(seed, e)`.

    `RepeatSampler` draws each epoch's permutation from one generator seeded once, so a process resumed at epoch `e`
    starts that generator afresh and replays epoch 0's order. Reseeding with `seed + epoch` at every pass makes a
    resumed run see the prompts in the order the uninterrupted run saw them; epoch 0 keeps `RepeatSampler`'s order.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.epoch = 0

    def set_epoch(self, epoch: int):
        self.epoch = epoch

    def __iter__(self):
        if self.shuffle:
            self.generator.manual_seed((self.seed or 0) + self.epoch)
        return super().__iter__()


class _SamplerEpochCallback(TrainerCallback):
    # transformers and accelerate forward `set_epoch` to the sampler, except through the dataloader that skips the
    # trained batches of a multi-process resume (its batch sampler hides ours); set the epoch here too.
    def __init__(self, trainer):
        self.trainer = trainer

    def on_epoch_begin(self, args, state, control, **kwargs):
        sampler = getattr(self.trainer, "_ple_train_sampler", None)
        if sampler is not None:
            sampler.set_epoch(int(state.epoch or 0))


def _is_disk_full(error: BaseException) -> bool:
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if any(marker in str(error).lower() for marker in _DISK_FULL_MARKERS):
            return True
        error = error.__cause__ or error.__context__
    return False


def _as_text(value) -> str:
    if isinstance(value, list):  # a conversation
        return "\n".join(f"{message.get('role', '')}: {message.get('content', '')}" for message in value)
    return str(value)


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


def _implicit_reward_placeholder(*args, **kwargs):
    # Stands for the implicit reward in GRPO's list of reward sources (which must not be empty) and names its column;
    # the trainer computes the implicit reward itself, from the model, which reward functions never see.
    raise RuntimeError("The implicit reward is computed by the trainer, not called as a reward function.")


_implicit_reward_placeholder.__name__ = _implicit_reward_placeholder.__qualname__ = "implicit_reward"


class PLETrainer(GRPOTrainer):
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
    sampling (`_generate_and_score_completions`) and the loss (`_compute_loss`).

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

        self._principle_rng = random.Random(args.seed)
        self._skipped_pairs_total = 0
        self._steps_per_epoch = None
        # PLE's completions table: one row per pair of the latest generation round(s), like GRPO's `_logs`.
        self._completion_rows = deque(maxlen=args.generation_batch_size)
        self._ple_train_sampler = None
        self.add_callback(_SamplerEpochCallback(self))
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
        blocker = self._prefix_sharing_blocker(model, inputs, compute_aux_loss)
        if blocker is None:
            per_token_logps, aux_loss = self._shared_prompt_logps(model, inputs), None
        else:
            warned = self.__dict__.setdefault("_prefix_sharing_warned", set())
            if blocker not in warned:
                warned.add(blocker)
                logger.warning(f"The loss pass runs each plain prompt once per answer (no prefix sharing): {blocker}")
            per_token_logps, aux_loss = self._separate_prompt_logps(model, inputs, compute_aux_loss)
        num_pairs = inputs["prompt_ids"].size(0)
        completion_mask = inputs["completion_mask"].transpose(0, 1).flatten(0, 1)
        sums = losses.sequence_logps(per_token_logps, completion_mask)
        means = losses.sequence_logps(per_token_logps, completion_mask, length_normalize=True)
        return sums.view(2, num_pairs), means.view(2, num_pairs), aux_loss

    def _separate_prompt_logps(self, model, inputs, compute_aux_loss=False):
        # GRPO's layout: [plain prompt + y ; plain prompt + y_p], the prompt run once per answer.
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
        return per_token_logps, aux_loss

    def _prefix_sharing_blocker(self, model, inputs, compute_aux_loss):
        """Why the pair's shared plain prompt cannot be run once in the loss pass, or `None` when it can."""
        if compute_aux_loss:
            return "the MoE load-balancing loss reads a 2D padding mask"
        if any(inputs.get(key) is not None for key in ("num_images", "token_type_ids", "mm_token_type_ids")):
            return "multimodal prompts place their image features by position"
        config = self.accelerator.unwrap_model(model).config
        implementation = getattr(config, "_attn_implementation", None)
        if implementation not in ("sdpa", "eager"):
            return f"attention implementation {implementation!r} takes no custom 4D mask (sdpa and eager do)"
        text_config = config.get_text_config()
        layer_types = getattr(text_config, "layer_types", None) or ()
        windowed = getattr(text_config, "sliding_window", None) and getattr(text_config, "use_sliding_window", True)
        if windowed or any(kind != "full_attention" for kind in layer_types):
            return "the model has sliding-window or non-attention layers, which a custom mask would not reproduce"
        if inputs["prompt_ids"].size(1) == 0 or not bool(inputs["prompt_mask"][:, -1].all()):
            return "a prompt is empty or not left-padded"
        return None

    def _shared_prompt_logps(self, model, inputs):
        """Per-token log-probs of both answers of every pair, `(2 * pairs, completion length)`, from one row per pair.

        A row is `[prompt[:-1] | prompt[-1], y | prompt[-1], y_p]`: each branch attends the shared prefix and itself
        only (a 4D mask), at the positions the answer has after its prompt, so every answer token sees exactly what
        it sees in `[prompt + y]`. The prompt's last token is repeated at the head of each branch because its output
        predicts the first token of each answer, and one position carries one label in the fused LM head."""
        prompt_ids, prompt_mask = inputs["prompt_ids"], inputs["prompt_mask"]
        completion_ids, completion_mask = inputs["completion_ids"], inputs["completion_mask"]  # (pairs, 2, length)
        num_pairs, prompt_length = prompt_ids.shape
        length = completion_ids.size(2)
        device = prompt_ids.device
        last = prompt_ids[:, -1:]
        input_ids = torch.cat([prompt_ids[:, :-1], last, completion_ids[:, 0], last, completion_ids[:, 1]], dim=1)
        ones = prompt_mask.new_ones(num_pairs, 1)
        key_valid = torch.cat([prompt_mask[:, :-1], ones, completion_mask[:, 0], ones, completion_mask[:, 1]], dim=1)
        branch = torch.cat(
            [torch.zeros(prompt_length - 1), torch.ones(length + 1), torch.full((length + 1,), 2)]
        ).to(device)
        # The unshared forward numbers `prompt + y` 0, 1, ... (its default position ids); each branch repeats them.
        positions = torch.arange(prompt_length - 1 + length + 1, device=device)
        position_ids = torch.cat([positions, positions[prompt_length - 1 :]]).expand(num_pairs, -1)
        index = torch.arange(input_ids.size(1), device=device)
        visible = (index[None, :] <= index[:, None]) & ((branch[None, :] == 0) | (branch[None, :] == branch[:, None]))
        attend = visible[None] & key_valid[:, None, :].bool()
        # A padding query attends itself alone: no row of the mask is empty (an empty row is NaN in sdpa).
        attend = (attend | torch.eye(index.size(0), dtype=torch.bool, device=device))[:, None]
        config = self.accelerator.unwrap_model(model).config
        if config._attn_implementation == "eager":  # eager adds the mask to the scores
            attend = torch.zeros(attend.shape, device=device).masked_fill(~attend, torch.finfo(torch.float32).min)

        # Labels for the fused LM head, already shifted: a branch's position t is scored on the answer's token t.
        no_label = completion_ids.new_full((num_pairs, 1), -100)
        answer_labels = completion_ids.masked_fill(completion_mask == 0, -100)
        shift_labels = torch.cat(
            [
                completion_ids.new_full((num_pairs, prompt_length - 1), -100),
                answer_labels[:, 0],
                no_label,
                answer_labels[:, 1],
                no_label,
            ],
            dim=1,
        )
        with self.accelerator.autocast():
            outputs = model(
                input_ids=input_ids,
                attention_mask=attend,
                position_ids=position_ids,
                shift_labels=shift_labels,
                fused_lm_head=True,
            )
        log_probs = outputs.log_probs
        first = prompt_length - 1
        second = first + length + 1
        # (2 * pairs, length): plain rows, then principled rows, as in the unshared layout.
        return torch.cat([log_probs[:, first : first + length], log_probs[:, second : second + length]], dim=0)

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
        sums, means = self._frozen_pair_logps("init", inputs)
        ranked_on = losses.ranking_logps(
            losses.PairLogps(sums, means), self.args.ranking_loss_type, self.args.length_normalize
        )
        return ranked_on.transpose(0, 1)  # (pairs, 2): a pair's two values travel together, like its answers

    # --- implicit reward and the iteration snapshot -----------------------------------------------------------------

    @staticmethod
    def _uses_iteration_snapshot(args) -> bool:
        # PLE keeps the policy as at the start of the iteration only to judge with it; SPA always (its reference).
        return args.reward_source == "implicit" and args.implicit_reward_judge == "iteration"

    def _add_snapshot_adapter(self):
        # Under PEFT the snapshot is a copy of the adapter, not of the model: a second adapter named "ref", as GRPO's
        # reference adapter of a PEFT policy, frozen.
        model = self.accelerator.unwrap_model(self.model)
        if not is_peft_model(model):
            raise ValueError("The iteration snapshot needs a PEFT policy or a full model to copy.")
        if "ref" not in model.peft_config:
            model.add_adapter("ref", model.peft_config["default"])
        self._copy_adapter(model, "default", "ref")
        return "ref"

    @staticmethod
    def _copy_adapter(model, source, target):
        with torch.no_grad():
            for name, param in model.named_parameters():
                if f".{source}." in name:
                    target_param = model.get_parameter(name.replace(f".{source}.", f".{target}."))
                    target_param.data.copy_(param.data)
                    target_param.requires_grad_(False)

    def _snapshot_parameters(self) -> dict:
        """The snapshot's parameters by name (those of the "ref" adapter under PEFT); empty when there is none."""
        if self._snapshot_model is not None:
            return dict(self.accelerator.unwrap_model(self._snapshot_model).named_parameters())
        if self._snapshot_adapter is not None:
            model = self.accelerator.unwrap_model(self.model)
            return {n: p for n, p in model.named_parameters() if f".{self._snapshot_adapter}." in n}
        return {}

    def _maybe_refresh_snapshot(self):
        """At the first generation round of a new iteration, copy the policy into the snapshot. The iteration is
        derived from `state.global_step` (like tau), so a resumed run refreshes where the uninterrupted run did."""
        if self._snapshot_model is None and self._snapshot_adapter is None:
            return
        iteration = self.completed_iterations()
        if iteration == self._snapshot_iteration:
            return
        self._copy_policy_into_snapshot()
        self._snapshot_iteration = iteration

    def _copy_policy_into_snapshot(self):
        policy = self.accelerator.unwrap_model(self.model)
        if self._snapshot_model is not None:
            # TRL's reference syncing (what `sync_ref_model` runs, ZeRO-3 included), as a full copy: alpha = 1.
            SyncRefModelCallback.sync_target_model(policy, self.accelerator.unwrap_model(self._snapshot_model), 1.0)
        else:
            self._copy_adapter(policy, "default", self._snapshot_adapter)

    def _frozen_pair_logps(self, which, inputs):
        """`(sums, means)` of the log-probs of both answers of every pair, `(2, pairs)` each, without gradient, under
        `which`: `"init"` (`pi_init`: the reference model, or the adapter-disabled policy under PEFT), `"snapshot"`
        (the policy as at the start of the iteration) or `"policy"` (the current policy)."""
        unwrapped = self.accelerator.unwrap_model(self.model)
        with torch.no_grad(), disable_gradient_checkpointing(self.model, self.args.gradient_checkpointing_kwargs):
            if which == "init" and self.ref_model is not None:
                sums, means, _ = self._pair_logps(self.ref_model, inputs)
            elif which == "init":
                with use_adapter(unwrapped, adapter_name=None):
                    sums, means, _ = self._pair_logps(self.model, inputs)
            elif which == "snapshot" and self._snapshot_model is not None:
                sums, means, _ = self._pair_logps(self._snapshot_model, inputs)
            elif which == "snapshot":
                with use_adapter(unwrapped, adapter_name=self._snapshot_adapter):
                    sums, means, _ = self._pair_logps(self.model, inputs)
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
        return spa.implicit_reward(judge_logps[index], init_logps[index], self.args.beta_judge)

    def _gather_pair_rewards(self, local):
        """`(2, pairs)` rewards of this process -> `(num_processes * 2 * pairs,)`, in the order `_score` returns."""
        return self.accelerator.gather(local.reshape(-1))

    def _extra_state(self) -> dict:
        """Resumable state saved with the principle draws; subclasses add theirs."""
        return {"snapshot_iteration": self._snapshot_iteration}

    def _load_extra_state(self, state: dict, checkpoint: str):
        parameters = self._snapshot_parameters()
        if not parameters:
            return
        path = os.path.join(checkpoint, SNAPSHOT_NAME)
        if "snapshot_iteration" not in state or not os.path.isfile(path):
            logger.warning(
                f"{checkpoint} has no saved iteration snapshot ({SNAPSHOT_NAME}): the snapshot is the resumed policy "
                "from here on, until the next iteration boundary refreshes it."
            )
            self._copy_policy_into_snapshot()
            self._snapshot_iteration = self.completed_iterations()
            return
        self._snapshot_iteration = int(state["snapshot_iteration"])
        saved = load_file(path)
        with torch.no_grad():
            for name, param in parameters.items():
                param.data.copy_(saved[name].to(device=param.device, dtype=param.dtype))

    def _save_snapshot(self, checkpoint):
        parameters = self._snapshot_parameters()
        if parameters:
            tensors = {name: param.detach().cpu().contiguous() for name, param in parameters.items()}
            save_file(tensors, os.path.join(checkpoint, SNAPSHOT_NAME))

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

    def _save_labels(self, texts, pair_rewards, labels, tau):
        """Append the round's labels to the audit log; `texts` and `pair_rewards` as in `_add_completion_rows`."""
        if not self.accelerator.is_main_process:
            return
        columns = torch.stack(
            [
                *pair_rewards,
                labels.rank_mask.float(),
                labels.principled_preferred.float(),
                labels.weight_principled,
                labels.valid.float(),
            ]  # fmt: skip
        ).T.tolist()
        path = os.path.join(self.args.output_dir, AUDIT_LOG_NAME)
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

    # --- checkpoints and resume --------------------------------------------------------------------------------

    def _get_train_sampler(self, dataset=None):
        # GRPO's sampler with GRPO's arguments, made to give each epoch the same order in a resumed run.
        base = super()._get_train_sampler(dataset)
        self._ple_train_sampler = EpochSeededRepeatSampler(
            data_source=base.data_source,
            mini_repeat_count=base.mini_repeat_count,
            batch_size=base.batch_size,
            repeat_count=base.repeat_count,
            shuffle=base.shuffle,
            seed=base.seed,
        )
        return self._ple_train_sampler

    def train(self, resume_from_checkpoint=None, *args, **kwargs):
        """
        [`~transformers.Trainer.train`], with two additions. `resume_from_checkpoint=True` resumes from the last
        *complete* checkpoint of `output_dir` (one that an interrupted save, e.g. on a full disk, left incomplete is
        skipped with a warning). With `save_enhanced_labels=True`, a fresh run starts a fresh audit log, and a resumed
        run drops the records generated after its checkpoint (they are generated again), so the log holds exactly one
        record per trained pair.
        """
        if isinstance(resume_from_checkpoint, bool) and resume_from_checkpoint:
            resume_from_checkpoint = self._last_complete_checkpoint()
        self._start_audit_log(resume_from_checkpoint)
        return super().train(resume_from_checkpoint, *args, **kwargs)

    def _last_complete_checkpoint(self):
        output_dir = self.args.output_dir
        names = os.listdir(output_dir) if os.path.isdir(output_dir) else []
        checkpoints = sorted(
            (int(match.group(1)), os.path.join(output_dir, name))
            for name in names
            if (match := _CHECKPOINT_RE.match(name)) and os.path.isdir(os.path.join(output_dir, name))
        )
        if not checkpoints:
            return True  # transformers raises its own "No valid checkpoint found" error
        for _, checkpoint in reversed(checkpoints):
            if os.path.isfile(os.path.join(checkpoint, TRAINER_STATE_NAME)):
                return checkpoint
            logger.warning(
                f"Checkpoint {checkpoint} is incomplete (no {TRAINER_STATE_NAME}, which is written last: its save was "
                "interrupted, e.g. by a full disk or a killed process), so it is skipped. Delete it once you no "
                "longer need it."
            )
        logger.warning(
            f"No complete checkpoint in {output_dir}: `resume_from_checkpoint=True` starts training from scratch."
        )
        return None

    def _start_audit_log(self, checkpoint):
        if not self.args.save_enhanced_labels or not self.accelerator.is_main_process or checkpoint is True:
            return
        path = os.path.join(self.args.output_dir, AUDIT_LOG_NAME)
        if not os.path.exists(path):
            return
        if checkpoint is None:  # a fresh run: the log describes this run only
            os.remove(path)
            return
        state_path = os.path.join(checkpoint, TRAINER_STATE_NAME)
        if not os.path.isfile(state_path):
            return  # not a checkpoint transformers can resume from: it raises its own error
        with open(state_path) as f:
            resumed_step = json.load(f)["global_step"]
        kept, dropped, unreadable = [], 0, 0
        with open(path) as f:
            for line in f:
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:  # a line cut by a killed process
                    unreadable += 1
                    continue
                if record["step"] < resumed_step:
                    kept.append(line if line.endswith("\n") else line + "\n")
                else:
                    dropped += 1
        with open(path + ".tmp", "w") as f:
            f.writelines(kept)
        os.replace(path + ".tmp", path)
        if dropped:
            logger.info(
                f"Resuming from step {resumed_step}: dropped {dropped} record(s) of {path} written after that step; "
                "their pairs are generated and trained again."
            )
        if unreadable:
            logger.warning(f"Dropped {unreadable} unreadable line(s) of {path} (cut short when the run stopped).")

    def _save_checkpoint(self, model, trial):
        folder = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        checkpoint = os.path.join(self._get_output_dir(trial=trial), folder)
        try:
            if self.args.should_save:
                # Written before transformers' files, so that a checkpoint with trainer_state.json (written last) has
                # it too.
                os.makedirs(checkpoint, exist_ok=True)
                version, internal, gauss_next = self._principle_rng.getstate()
                with open(os.path.join(checkpoint, PLE_STATE_NAME), "w") as f:
                    json.dump({"principle_rng_state": [version, list(internal), gauss_next], **self._extra_state()}, f)
                self._save_snapshot(checkpoint)
            super()._save_checkpoint(model, trial)
        except Exception as error:
            if _is_disk_full(error):
                raise OSError(
                    errno.ENOSPC,
                    f"The disk is full: checkpoint {checkpoint} could not be written ({error}). That folder is "
                    "incomplete: delete it, free disk space (or lower `save_total_limit`, save less often) and "
                    "resume; `resume_from_checkpoint=True` skips an incomplete checkpoint.",
                ) from error
            raise

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

    def _load_optimizer_and_scheduler(self, checkpoint):
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is None:
            return
        path = os.path.join(checkpoint, PLE_STATE_NAME)
        state = {}
        if os.path.isfile(path):
            with open(path) as f:
                state = json.load(f)
            version, internal, gauss_next = state["principle_rng_state"]
            self._principle_rng.setstate((version, tuple(internal), gauss_next))
        elif self.args.principles is not None:
            logger.warning(
                f"{checkpoint} has no {PLE_STATE_NAME} (saved by an older ple-trl): the principle draws restart from "
                "`seed` instead of continuing where the run stopped."
            )
        self._load_extra_state(state, checkpoint)

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
