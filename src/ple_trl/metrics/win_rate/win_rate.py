# Copyright 2026 The ple-trl authors. Licensed under the Apache License, Version 2.0.
"""Win rate: how often model A's completions beat model B's under a reward or a pairwise judge.

This script is a self-contained `evaluate` module: load it with `evaluate.load(<path of this folder>)`, or with
`ple_trl.metrics.load("win_rate")`. It never touches the Hugging Face Hub.
"""

import math
import numbers
import os
from typing import Any, Callable, Optional

import datasets
import evaluate
import torch
from accelerate import PartialState
from transformers import AutoModelForSequenceClassification, AutoTokenizer


_CITATION = ""

_DESCRIPTION = """\
Pairwise win rate of model A's completions over model B's completions for the same prompts.

Each pair (prompt, completion_a, completion_b) is decided by one of:

- a reward (the default kind of judge): a TRL-style reward function `reward_fn(prompts=..., completions=...)` or a
  local sequence-classification reward model (path or instance, plus its tokenizer). Both completions are scored
  on their own; the higher reward wins, and rewards within `tie_tolerance` of each other (equal ones by default)
  are a tie, as is a pair where either reward is NaN (`None`). A reward does not see positions, so
  `swap_positions` has no effect on it.
- a callable judge `judge(prompt, first, second) -> 0 | 1 | None`, e.g. an LLM judge, returning the position of
  the better completion (0: `first`, 1: `second`) or `None` for a tie. Such judges are often biased towards one
  position, so by default (`swap_positions=True`) every pair is judged twice, once as (a, b) and once as (b, a):
  a completion wins only when both orders pick it; any disagreement (including a win and a tie) is a tie.

The score is `win_rate = (wins + 0.5 * ties) / n`, from model A's point of view.
"""

_KWARGS_DESCRIPTION = """
Args:
    prompts (`list[str]` or `list[list[dict]]`):
        The prompts, as strings or as lists of `{"role", "content"}` messages.
    completions_a (`list[str]` or `list[list[dict]]`):
        Model A's completions, one per prompt, in the same format as `prompts`.
    completions_b (`list[str]` or `list[list[dict]]`):
        Model B's completions, one per prompt, in the same format as `prompts`.
    reward_fn (`Callable`, *optional*):
        A reward function `reward_fn(prompts=..., completions=..., **reward_kwargs) -> list[float | None]` (any TRL
        reward function). Exactly one of `reward_fn`, `reward_model` and `judge` must be given.
    reward_model (`str`, `os.PathLike` or `transformers.PreTrainedModel`, *optional*):
        A sequence-classification reward model with one label, or its path. Texts are built, batched and truncated
        as in the `reward_score` metric.
    reward_tokenizer (`str` or `transformers.PreTrainedTokenizerBase`, *optional*):
        The reward model's tokenizer or its path; defaults to the one saved with a `reward_model` path.
    judge (`Callable`, *optional*):
        A pairwise judge `judge(prompt, first, second) -> 0 | 1 | None`, called once per pair and order.
    swap_positions (`bool`, *optional*):
        Judge every pair in both orders and count a win only if both agree. Defaults to `True` for `judge`; has no
        effect on rewards.
    tie_tolerance (`float`, *optional*, defaults to 0.0):
        With a reward, pairs whose rewards differ by at most this much are ties.
    reward_kwargs (`dict`, *optional*):
        Extra keyword arguments passed to `reward_fn`.
    batch_size (`int`, *optional*, defaults to 8):
        Number of completions per reward-model forward pass.
    max_length (`int`, *optional*):
        Reward-model truncation length in tokens (defaults to the tokenizer's `model_max_length`).
    device (`str` or `torch.device`, *optional*):
        Device for a reward model loaded from a path (defaults to `accelerate.PartialState().device`).

Returns:
    `dict`:
        - **win_rate** (`float`): `(wins + 0.5 * ties) / n`, in [0, 1]; 0.5 means no difference.
        - **wins** (`int`): pairs where model A's completion won.
        - **ties** (`int`): pairs judged a tie (or on which the two orders disagreed).
        - **losses** (`int`): pairs where model B's completion won.
        - **outcomes** (`list[str]`): `"win"`, `"tie"` or `"loss"` for every pair, from model A's point of view.

Examples:

    >>> import evaluate
    >>> from ple_trl.metrics import metric_path
    >>> win_rate = evaluate.load(metric_path("win_rate"))
    >>> def length_reward(prompts, completions, **kwargs):
    ...     return [float(len(c.split())) for c in completions]
    >>> results = win_rate.compute(
    ...     prompts=["Hi.", "Hi.", "Hi."],
    ...     completions_a=["hello there", "hello", "hi"],
    ...     completions_b=["hello", "hello", "hi you"],
    ...     reward_fn=length_reward,
    ... )
    >>> results["win_rate"], results["wins"], results["ties"], results["losses"]
    (0.5, 1, 1, 1)

    With an (order-sensitive) LLM judge, each pair is judged in both orders:

    >>> results = win_rate.compute(prompts=prompts, completions_a=a, completions_b=b, judge=my_llm_judge)
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
_WINNER_A, _WINNER_B = "a", "b"


def _judge_winner(judge, prompt, first, second, first_is_a):
    """Ask `judge` about one ordering and return the winner, `"a"`, `"b"` or `None` (tie)."""
    verdict = judge(prompt, first, second)
    if verdict is None:
        return None
    if isinstance(verdict, bool) or not isinstance(verdict, numbers.Integral) or int(verdict) not in (0, 1):
        raise ValueError(
            f"`judge` returned {_preview(verdict)}; a pairwise judge must return 0 (the first completion is "
            "better), 1 (the second is better) or None (tie)."
        )
    first_wins = int(verdict) == 0
    return _WINNER_A if first_wins == first_is_a else _WINNER_B


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class WinRate(evaluate.Metric):
    def _info(self):
        string = datasets.Value("string")
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=[
                datasets.Features({"prompts": string, "completions_a": string, "completions_b": string}),
                datasets.Features({"prompts": _MESSAGES, "completions_a": _MESSAGES, "completions_b": _MESSAGES}),
            ],
        )

    def add_batch(self, *, predictions=None, references=None, **kwargs):
        """Add a batch of inputs (`prompts`, `completions_a` and `completions_b`) to the stack after checking them.
        """
        # Validate before `evaluate` encodes the batch: its own error for a format mismatch is a KeyError.
        if predictions is not None or references is not None:
            raise ValueError(
                "win_rate takes `prompts=`, `completions_a=` and `completions_b=`, not `predictions=`/`references=`."
            )
        _check_columns(**{name: kwargs.get(name) for name in ("prompts", "completions_a", "completions_b")})
        return super().add_batch(**kwargs)

    def add(self, *, prediction=None, reference=None, **kwargs):
        """Add one example (`prompts`, `completions_a` and `completions_b`) to the stack after checking it.
        """
        if prediction is not None or reference is not None:
            raise ValueError(
                "win_rate takes `prompts=`, `completions_a=` and `completions_b=`, not `prediction=`/`reference=`."
            )
        _check_columns(**{name: [kwargs.get(name)] for name in ("prompts", "completions_a", "completions_b")})
        return super().add(**kwargs)

    def _compute(
        self,
        prompts,
        completions_a,
        completions_b,
        reward_fn: Optional[Callable[..., list]] = None,
        reward_model: Any = None,
        reward_tokenizer: Any = None,
        judge: Optional[Callable[[Any, Any, Any], Optional[int]]] = None,
        swap_positions: Optional[bool] = None,
        tie_tolerance: float = 0.0,
        reward_kwargs: Optional[dict] = None,
        batch_size: int = 8,
        max_length: Optional[int] = None,
        device: Any = None,
    ):
        n = len(prompts)
        if n == 0:
            raise ValueError("`prompts` is empty: pass at least one (prompt, completion_a, completion_b) triple.")
        if swap_positions is not None and not isinstance(swap_positions, bool):
            raise ValueError(f"`swap_positions`={_preview(swap_positions)} must be True, False or None (default).")
        prompts, completions_a, completions_b = list(prompts), list(completions_a), list(completions_b)

        if judge is not None:
            if reward_fn is not None or reward_model is not None:
                raise ValueError("Pass either `judge` or a reward (`reward_fn`/`reward_model`), not both.")
            if not callable(judge):
                raise ValueError(
                    f"`judge`={_preview(judge)} is not callable; pass `judge(prompt, first, second) -> 0 | 1 | None`."
                )
            swap = True if swap_positions is None else swap_positions
            winners = []
            for prompt, a, b in zip(prompts, completions_a, completions_b):
                winner = _judge_winner(judge, prompt, a, b, first_is_a=True)
                if swap and _judge_winner(judge, prompt, b, a, first_is_a=False) != winner:
                    winner = None  # the two orders disagree: count a tie
                winners.append(winner)
        else:
            if isinstance(tie_tolerance, bool) or not isinstance(tie_tolerance, numbers.Real) or tie_tolerance < 0:
                raise ValueError(f"`tie_tolerance`={_preview(tie_tolerance)} must be a number >= 0, e.g. 0.0.")
            score = _make_scorer(
                reward_fn, reward_model, reward_tokenizer, reward_kwargs, batch_size, max_length, device
            )
            rewards_a, rewards_b = score(prompts, completions_a), score(prompts, completions_b)
            winners = []
            for reward_a, reward_b in zip(rewards_a, rewards_b):
                if math.isnan(reward_a) or math.isnan(reward_b) or abs(reward_a - reward_b) <= tie_tolerance:
                    winners.append(None)
                else:
                    winners.append(_WINNER_A if reward_a > reward_b else _WINNER_B)

        outcomes = ["win" if w == _WINNER_A else "loss" if w == _WINNER_B else "tie" for w in winners]
        wins, ties, losses = outcomes.count("win"), outcomes.count("tie"), outcomes.count("loss")
        return {
            "win_rate": (wins + 0.5 * ties) / n,
            "wins": wins,
            "ties": ties,
            "losses": losses,
            "outcomes": outcomes,
        }
