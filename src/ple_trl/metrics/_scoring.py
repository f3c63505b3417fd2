# Copyright 2026 The ple-trl authors. Licensed under the Apache License, Version 2.0.
"""Reward scoring shared by the `reward_score` and `win_rate` metrics: a TRL-style reward function, or a local
sequence-classification reward model (batched, truncated to its maximum length)."""

import os

import torch
from accelerate import PartialState
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from ple_trl.rewards.model import reward_model_max_length


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
        max_length = reward_model_max_length(tokenizer, model)
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
