# Copyright 2026 The ple-trl authors. Licensed under the Apache License, Version 2.0.
"""Reward score: the mean (and per-sample) reward of (prompt, completion) pairs under a reward function or model.

This script is an `evaluate` module (its reward scoring lives in `ple_trl.metrics._scoring`): load it with
`evaluate.load(<path of this folder>)`, or with `ple_trl.metrics.load("reward_score")`. It never touches the Hugging
Face Hub.
"""

import math
from typing import Any, Callable, Optional

import datasets
import evaluate

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
  tokenized without extra special tokens and padded on the right; a text longer than the tokenizer's
  `model_max_length` (or the model's `max_position_embeddings` when the tokenizer sets no limit) loses its first
  tokens, as in training, so the completion is always scored (`ple_trl.rewards.RewardModelScorer`).
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
        Longest text in tokens for the reward model; longer ones lose their start. Defaults to the tokenizer's
        `model_max_length`, or the model's `max_position_embeddings` when the tokenizer has no limit.
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


from ple_trl.metrics._scoring import (
    _check_columns,
    _make_scorer,
)

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
        """Add a batch of inputs (`prompts` and `completions`) to the stack after checking them."""
        # Validate before `evaluate` encodes the batch: its own error for a format mismatch is a KeyError.
        if predictions is not None or references is not None:
            raise ValueError("reward_score takes `prompts=` and `completions=`, not `predictions=`/`references=`.")
        _check_columns(prompts=kwargs.get("prompts"), completions=kwargs.get("completions"))
        return super().add_batch(**kwargs)

    def add(self, *, prediction=None, reference=None, **kwargs):
        """Add one example (`prompts` and `completions`) to the stack after checking it."""
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
