# Copyright 2026 The ple-trl authors. Licensed under the Apache License, Version 2.0.
"""Input checks and reward scoring shared by the `reward_score` and `win_rate` metrics: a TRL-style reward function, or
a local sequence-classification reward model scored by [`ple_trl.rewards.RewardModelScorer`] (batched, long texts
truncated on the left as in training)."""

from ple_trl.errors import preview
from ple_trl.rewards.scorer import RewardModelScorer


def _input_format(name, column):
    """Check one input column and return its format, "standard" or "conversational"."""
    if column is None:
        raise ValueError(f"`{name}` is required but was not given: pass a list with one entry per pair.")
    if isinstance(column, (str, dict)) or not hasattr(column, "__len__"):
        raise ValueError(f"`{name}`={preview(column)} must be a list with one entry per pair, not {type(column)}.")
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
                f"`{name}[{i}]`={preview(item)} is neither a string nor a list of {{'role': ..., 'content': str}} "
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


def _reward_fn_scores(reward_fn, prompts, completions, reward_kwargs):
    rewards = reward_fn(prompts=prompts, completions=completions, **reward_kwargs)
    if rewards is None or not hasattr(rewards, "__len__") or len(rewards) != len(completions):
        raise ValueError(
            f"`reward_fn` must return one reward per completion ({len(completions)}), but returned "
            f"{preview(rewards)}. Return a list of floats (or None for 'not applicable')."
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
                f"`reward_fn` returned {preview(reward)} for completion {i}; a reward must be a number or None."
            ) from None
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
        raise ValueError(f"`reward_kwargs`={preview(reward_kwargs)} must be a dict of keyword arguments or None.")
    if reward_fn is not None:
        if not callable(reward_fn):
            raise ValueError(
                f"`reward_fn`={preview(reward_fn)} is not callable; pass a function "
                "`reward_fn(prompts=..., completions=..., **kwargs) -> list[float]`."
            )
        if reward_tokenizer is not None:
            raise ValueError("`reward_tokenizer` is only used with `reward_model`; drop it when passing `reward_fn`.")
        return lambda prompts, completions: _reward_fn_scores(reward_fn, prompts, completions, reward_kwargs or {})
    if reward_kwargs:
        raise ValueError("`reward_kwargs` are only passed to `reward_fn`; drop them when using `reward_model`.")
    return RewardModelScorer(
        reward_model, reward_tokenizer, batch_size=batch_size, max_length=max_length, device=device
    )
