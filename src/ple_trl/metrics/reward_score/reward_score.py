# Copyright 2026 The ple-trl authors. Licensed under the Apache License, Version 2.0.
"""Reward score: the mean (and per-sample) reward of (prompt, completion) pairs under a reward function or model.

This script is a self-contained `evaluate` module: load it with `evaluate.load(<path of this folder>)`, or with
`ple_trl.metrics.load("reward_score")`. It never touches the Hugging Face Hub.
"""

import math
import os
from typing import Any, Callable, Optional

import datasets
import evaluate
import torch
from accelerate import PartialState
from transformers import AutoModelForSequenceClassification, AutoTokenizer


_CITATION = ""

_DESCRIPTION = """\
Scores (prompt, completion) pairs with a reward and reports the mean reward and the reward of every pair.

The reward is either:

- a reward function with TRL's reward-function signature, `reward_fn(prompts=..., completions=..., **kwargs)`
  returning one `float` (or `None`, read as "not applicable" and stored as NaN, like TRL does) per completion; or
- a local sequence-classification reward model with a single output (`num_labels=1`), given as a path or an
  instance, and its tokenizer. Pairs are scored in batches; the text of a pair is `prompt + completion` for
  standard (string) inputs and the reward tokenizer's chat template applied to `prompt + completion` for
  conversational inputs (lists of `{"role", "content"}` messages), as TRL's `GRPOTrainer` does. Texts are
  tokenized without extra special tokens, padded on the right and truncated to the tokenizer's
  `model_max_length` (or to the model's `max_position_embeddings` when the tokenizer sets no limit).
"""

_KWARGS_DESCRIPTION = """
Args:
    prompts (`list[str]` or `list[list[dict]]`):
        The prompts, as strings (standard format) or as lists of `{"role", "content"}` messages
        (conversational format).
    completions (`list[str]` or `list[list[dict]]`):
        The completions, one per prompt, in the same format as `prompts`.
    reward_fn (`Callable`, *optional*):
        A reward function `reward_fn(prompts=..., completions=..., **reward_kwargs) -> list[float | None]`, e.g. any
        TRL reward function. Exactly one of `reward_fn` and `reward_model` must be given.
    reward_model (`str`, `os.PathLike` or `transformers.PreTrainedModel`, *optional*):
        A sequence-classification reward model with one label, or the path of one (loaded with
        `AutoModelForSequenceClassification.from_pretrained`).
    reward_tokenizer (`str` or `transformers.PreTrainedTokenizerBase`, *optional*):
        The reward model's tokenizer or its path. Defaults to the tokenizer saved with `reward_model` when
        `reward_model` is a path; required when `reward_model` is an instance.
    reward_kwargs (`dict`, *optional*):
        Extra keyword arguments passed to `reward_fn` (e.g. dataset columns it needs).
    batch_size (`int`, *optional*, defaults to 8):
        Number of pairs per reward-model forward pass.
    max_length (`int`, *optional*):
        Truncation length in tokens for the reward model. Defaults to the tokenizer's `model_max_length`, or the
        model's `max_position_embeddings` when the tokenizer has no limit.
    device (`str` or `torch.device`, *optional*):
        Device to place a reward model loaded from a path on. Defaults to `accelerate.PartialState().device`. A
        model instance is used on its own device and never moved.

Returns:
    `dict`:
        - **mean_reward** (`float`): mean reward over the pairs, ignoring NaN (`None`) rewards; NaN if all are NaN.
        - **std_reward** (`float`): population standard deviation of the rewards, ignoring NaN.
        - **rewards** (`list[float]`): reward of every pair, in input order (NaN where `reward_fn` returned `None`).

Examples:

    >>> import evaluate
    >>> from ple_trl.metrics import metric_path
    >>> reward_score = evaluate.load(metric_path("reward_score"))
    >>> def length_reward(prompts, completions, **kwargs):
    ...     return [float(len(c.split())) for c in completions]
    >>> reward_score.compute(prompts=["Hi.", "Hi."], completions=["hello", "hello there"], reward_fn=length_reward)
    {'mean_reward': 1.5, 'std_reward': 0.5, 'rewards': [1.0, 2.0]}

    With a local reward model (path or instance plus tokenizer):

    >>> reward_score.compute(prompts=prompts, completions=completions, reward_model="path/to/reward-model")
"""


# ------------------------------------------------------------------------------------------------------------------
# Shared reward scoring. This block is identical in reward_score.py and win_rate.py (each evaluate module must be a
# self-contained script); tests/test_metrics.py checks that the two copies do not drift apart.
# ------------------------------------------------------------------------------------------------------------------
_NO_LIMIT = 1_000_000  # tokenizers without a length limit report a huge `model_max_length` (int(1e30))


def _preview(value, limit=80):
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _input_format(name, column):
    """Check one input column and return its format, "standard" or "conversational"."""
    if column is None:
        raise ValueError(f"`{name}` is required but was not given: pass a list with one entry per pair.")
    if isinstance(column, (str, dict)) or not hasattr(column, "__len__"):
        raise ValueError(f"`{name}`={_preview(column)} must be a list with one entry per pair, not {type(column)}.")
    formats = set()
    for i, item in enumerate(column):
        if isinstance(item, str):
            formats.add("standard")
        elif isinstance(item, (list, tuple)) and all(
            isinstance(m, dict) and set(m) == {"role", "content"} and isinstance(m["content"], str) for m in item
        ):
            formats.add("conversational")
        else:
            raise ValueError(
                f"`{name}[{i}]`={_preview(item)} is neither a string nor a list of {{'role': ..., 'content': str}} "
                "messages. Pass strings (standard format) or lists of such messages (conversational format)."
            )
    if len(formats) > 1:
        raise ValueError(f"`{name}` mixes strings and message lists; convert all entries to one format.")
    return formats.pop() if formats else None


def _check_columns(**columns):
    """Raise a clear `ValueError` for missing, malformed, mixed-format or unequal-length input columns."""
    formats = {name: _input_format(name, column) for name, column in columns.items()}
    lengths = {name: len(column) for name, column in columns.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"The inputs must have one entry per pair, but their lengths differ: {lengths}.")
    if len(set(f for f in formats.values() if f is not None)) > 1:
        raise ValueError(
            f"The inputs mix formats: {formats}. Pass all of them as strings or all as lists of messages."
        )


def _check_positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"`{name}`={_preview(value)} must be a positive integer, e.g. {name}=8.")


def _reward_fn_scores(reward_fn, prompts, completions, reward_kwargs):
    rewards = reward_fn(prompts=prompts, completions=completions, **reward_kwargs)
    if rewards is None or not hasattr(rewards, "__len__") or len(rewards) != len(completions):
        raise ValueError(
            f"`reward_fn` must return one reward per completion ({len(completions)}), but returned "
            f"{_preview(rewards)}. Return a list of floats (or None for 'not applicable')."
        )
    scores = []
    for i, reward in enumerate(rewards):
        if reward is None:
            scores.append(float("nan"))
            continue
        try:
            scores.append(float(reward))
        except (TypeError, ValueError):
            raise ValueError(
                f"`reward_fn` returned {_preview(reward)} for completion {i}; a reward must be a number or None."
            ) from None
    return scores


def _load_reward_model(reward_model, reward_tokenizer, device):
    if isinstance(reward_model, (str, os.PathLike)):
        path = os.fspath(reward_model)
        model = AutoModelForSequenceClassification.from_pretrained(path)
        model.to(device if device is not None else PartialState().device)
        if reward_tokenizer is None:
            reward_tokenizer = path
    elif isinstance(reward_model, torch.nn.Module):
        model = reward_model
        if reward_tokenizer is None:
            raise ValueError(
                "`reward_tokenizer`=None, but `reward_model` is a model instance: pass its tokenizer as "
                "`reward_tokenizer=` (or pass the model's path as `reward_model=` to load both)."
            )
    else:
        raise ValueError(
            f"`reward_model`={_preview(reward_model)} must be a path to a sequence-classification model or a "
            "`PreTrainedModel` instance."
        )
    if isinstance(reward_tokenizer, (str, os.PathLike)):
        reward_tokenizer = AutoTokenizer.from_pretrained(os.fspath(reward_tokenizer))
    if not callable(getattr(reward_tokenizer, "apply_chat_template", None)):
        raise ValueError(
            f"`reward_tokenizer`={_preview(reward_tokenizer)} is not a tokenizer; pass a "
            "`PreTrainedTokenizerBase` or its path."
        )
    num_labels = getattr(model.config, "num_labels", None)
    if num_labels != 1:
        raise ValueError(
            f"`reward_model` has num_labels={num_labels}, but a reward model must output one score per sequence; "
            "use a model loaded with `num_labels=1`."
        )
    if reward_tokenizer.pad_token_id is None:
        raise ValueError(
            "`reward_tokenizer` has no pad token (pad_token=None), so pairs cannot be batched; set one first, e.g. "
            "`reward_tokenizer.pad_token = reward_tokenizer.eos_token`."
        )
    if getattr(model.config, "pad_token_id", None) is None:
        raise ValueError(
            "`reward_model.config.pad_token_id` is None, so the model cannot find the last token of a padded "
            "sequence; set `reward_model.config.pad_token_id = reward_tokenizer.pad_token_id`."
        )
    return model, reward_tokenizer


@torch.no_grad()
def _reward_model_scores(model, tokenizer, prompts, completions, batch_size, max_length):
    texts = []
    for prompt, completion in zip(prompts, completions):
        if isinstance(completion, str):
            texts.append(prompt + completion)
        else:
            if not getattr(tokenizer, "chat_template", None):
                raise ValueError(
                    "The inputs are conversational but `reward_tokenizer` has no chat template (chat_template=None); "
                    "set `reward_tokenizer.chat_template` or pass prompts and completions as strings."
                )
            texts.append(tokenizer.apply_chat_template(list(prompt) + list(completion), tokenize=False))
    if max_length is None:
        max_length = tokenizer.model_max_length
        if max_length is None or max_length >= _NO_LIMIT:
            max_length = getattr(model.config, "max_position_embeddings", None)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    scores = []
    try:
        for start in range(0, len(texts), batch_size):
            batch = tokenizer(
                texts[start : start + batch_size],
                padding=True,
                padding_side="right",
                truncation=max_length is not None,
                max_length=max_length,
                add_special_tokens=False,
                return_tensors="pt",
            )
            empty = (batch["attention_mask"].sum(dim=-1) == 0).nonzero().flatten().tolist()
            if empty:
                raise ValueError(
                    f"Pair {start + empty[0]} is empty after tokenization (text "
                    f"{_preview(texts[start + empty[0]])}); give every pair some text to score."
                )
            logits = model(
                input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device)
            ).logits
            scores.extend(logits[:, 0].float().cpu().tolist())
    finally:
        model.train(was_training)
    return scores


def _make_scorer(reward_fn, reward_model, reward_tokenizer, reward_kwargs, batch_size, max_length, device):
    """Return `score(prompts, completions) -> list[float]` for a reward function or a reward model."""
    if reward_fn is not None and reward_model is not None:
        raise ValueError("Both `reward_fn` and `reward_model` were given; pass only one of them.")
    if reward_fn is None and reward_model is None:
        raise ValueError(
            "No reward given: pass `reward_fn=` (a TRL-style reward function) or `reward_model=` (a reward model "
            "or its path, with `reward_tokenizer=` for an instance)."
        )
    if reward_kwargs is not None and not isinstance(reward_kwargs, dict):
        raise ValueError(f"`reward_kwargs`={_preview(reward_kwargs)} must be a dict of keyword arguments or None.")
    if reward_fn is not None:
        if not callable(reward_fn):
            raise ValueError(
                f"`reward_fn`={_preview(reward_fn)} is not callable; pass a function "
                "`reward_fn(prompts=..., completions=..., **kwargs) -> list[float]`."
            )
        if reward_tokenizer is not None:
            raise ValueError("`reward_tokenizer` is only used with `reward_model`; drop it when passing `reward_fn`.")
        return lambda prompts, completions: _reward_fn_scores(reward_fn, prompts, completions, reward_kwargs or {})
    _check_positive_int("batch_size", batch_size)
    if max_length is not None:
        _check_positive_int("max_length", max_length)
    if reward_kwargs:
        raise ValueError("`reward_kwargs` are only passed to `reward_fn`; drop them when using `reward_model`.")
    model, tokenizer = _load_reward_model(reward_model, reward_tokenizer, device)
    return lambda prompts, completions: _reward_model_scores(
        model, tokenizer, prompts, completions, batch_size, max_length
    )


# ------------------------------------------------------------------------------------------------------------------
# End of the shared reward scoring block.
# ------------------------------------------------------------------------------------------------------------------


_MESSAGES = [{"role": datasets.Value("string"), "content": datasets.Value("string")}]


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class RewardScore(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=[
                datasets.Features({"prompts": datasets.Value("string"), "completions": datasets.Value("string")}),
                datasets.Features({"prompts": _MESSAGES, "completions": _MESSAGES}),
            ],
        )

    def add_batch(self, *, predictions=None, references=None, **kwargs):
        """Add a batch of inputs (`prompts` and `completions`) to the stack after checking them.
        """
        # Validate before `evaluate` encodes the batch: its own error for a format mismatch is a KeyError.
        if predictions is not None or references is not None:
            raise ValueError(
                "reward_score takes `prompts=` and `completions=`, not `predictions=`/`references=`."
            )
        _check_columns(prompts=kwargs.get("prompts"), completions=kwargs.get("completions"))
        return super().add_batch(**kwargs)

    def add(self, *, prediction=None, reference=None, **kwargs):
        """Add one example (`prompts` and `completions`) to the stack after checking it.
        """
        if prediction is not None or reference is not None:
            raise ValueError("reward_score takes `prompts=` and `completions=`, not `prediction=`/`reference=`.")
        _check_columns(prompts=[kwargs.get("prompts")], completions=[kwargs.get("completions")])
        return super().add(**kwargs)

    def _compute(
        self,
        prompts,
        completions,
        reward_fn: Optional[Callable[..., list]] = None,
        reward_model: Any = None,
        reward_tokenizer: Any = None,
        reward_kwargs: Optional[dict] = None,
        batch_size: int = 8,
        max_length: Optional[int] = None,
        device: Any = None,
    ):
        if len(completions) == 0:
            raise ValueError("`completions` is empty: pass at least one (prompt, completion) pair to score.")
        score = _make_scorer(reward_fn, reward_model, reward_tokenizer, reward_kwargs, batch_size, max_length, device)
        rewards = score(list(prompts), list(completions))
        valid = [r for r in rewards if not math.isnan(r)]
        if valid:
            mean = sum(valid) / len(valid)
            std = math.sqrt(sum((r - mean) ** 2 for r in valid) / len(valid))
        else:
            mean = std = float("nan")
        return {"mean_reward": mean, "std_reward": std, "rewards": rewards}
