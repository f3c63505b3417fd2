# Copyright 2026 The ple-trl authors. Licensed under the Apache License, Version 2.0.
"""Win rate: how often model A's completions beat model B's under a reward or a pairwise judge.

This script is an `evaluate` module (its reward scoring lives in `ple_trl.metrics._scoring`): load it with
`evaluate.load(<path of this folder>)`, or with `ple_trl.metrics.load("win_rate")`. It never touches the Hugging Face
Hub.
"""

import math
import numbers
from typing import Any, Callable, Optional

import datasets
import evaluate

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
        Longest reward-model text in tokens; longer ones lose their start (defaults to the tokenizer's
        `model_max_length`).
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


from ple_trl.errors import preview
from ple_trl.metrics._scoring import _check_columns, _make_scorer

_MESSAGES = [{"role": datasets.Value("string"), "content": datasets.Value("string")}]
_WINNER_A, _WINNER_B = "a", "b"


def _judge_winner(judge, prompt, first, second, first_is_a):
    """Ask `judge` about one ordering and return the winner, `"a"`, `"b"` or `None` (tie)."""
    verdict = judge(prompt, first, second)
    if verdict is None:
        return None
    if isinstance(verdict, bool) or not isinstance(verdict, numbers.Integral) or int(verdict) not in (0, 1):
        raise ValueError(
            f"`judge` returned {preview(verdict)}; a pairwise judge must return 0 (the first completion is "
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
        """Add a batch of inputs (`prompts`, `completions_a` and `completions_b`) to the stack after checking them."""
        # Validate before `evaluate` encodes the batch: its own error for a format mismatch is a KeyError.
        if predictions is not None or references is not None:
            raise ValueError(
                "win_rate takes `prompts=`, `completions_a=` and `completions_b=`, not `predictions=`/`references=`."
            )
        _check_columns(**{name: kwargs.get(name) for name in ("prompts", "completions_a", "completions_b")})
        return super().add_batch(**kwargs)

    def add(self, *, prediction=None, reference=None, **kwargs):
        """Add one example (`prompts`, `completions_a` and `completions_b`) to the stack after checking it."""
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
            raise ValueError(f"`swap_positions`={preview(swap_positions)} must be True, False or None (default).")
        prompts, completions_a, completions_b = list(prompts), list(completions_a), list(completions_b)

        if judge is not None:
            if reward_fn is not None or reward_model is not None:
                raise ValueError("Pass either `judge` or a reward (`reward_fn`/`reward_model`), not both.")
            if not callable(judge):
                raise ValueError(
                    f"`judge`={preview(judge)} is not callable; pass `judge(prompt, first, second) -> 0 | 1 | None`."
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
                raise ValueError(f"`tie_tolerance`={preview(tie_tolerance)} must be a number >= 0, e.g. 0.0.")
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
