"""Lexicon rewards for the demo: sentiment from VADER, a penalty for profanity from better-profanity.

Both are real third-party scorers whose word lists ship inside their wheels, so they run offline, in microseconds,
with no model. They follow TRL's reward-function signature `f(prompts, completions, **kwargs) -> list[float]`, so they
work with [`PLETrainer`] and with TRL's own trainers. A completion is a string (plain prompts) or a list of messages
(chat prompts), of which the last message's content is scored.

```python
from ple_trl.rewards import profanity_penalty, vader_sentiment

vader_sentiment(prompts=["Review the film."], completions=["A wonderful, warm film."])  # [0.68]
profanity_penalty(prompts=["Review the film."], completions=["A damn boring film."])    # [-1.0]
```
"""

from functools import lru_cache

__all__ = ["completion_text", "profanity_penalty", "vader_sentiment"]


def completion_text(completion) -> str:
    """
    The text of a completion in any of TRL's formats.

    Args:
        completion (`str`, `dict` or `list[dict]`):
            A plain-text completion, one message, or a list of messages (the last one is the answer).

    Returns:
        `str`: the answer's text.
    """
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        return str(completion.get("content", ""))
    if isinstance(completion, (list, tuple)):
        return completion_text(completion[-1]) if completion else ""
    raise TypeError(
        f"A completion must be a string or a list of `{{'role', 'content'}}` messages, got "
        f"{type(completion).__name__}: {completion!r:.80}."
    )


def _score_each(completions, score) -> list[float]:
    if completions is None:
        raise ValueError("`completions=None`: pass the answers to score as `completions=[...]`.")
    return [float(score(completion_text(completion))) for completion in completions]


@lru_cache(maxsize=1)
def _vader():
    try:
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer
    except ImportError:
        raise ImportError(
            "`vader_sentiment` needs the `vaderSentiment` package. Install it with `pip install vaderSentiment` "
            "(or `pip install ple-trl[demo]`)."
        ) from None
    return SentimentIntensityAnalyzer()


@lru_cache(maxsize=1)
def _profanity():
    try:
        from better_profanity.better_profanity import Profanity
    except ImportError:
        raise ImportError(
            "`profanity_penalty` needs the `better-profanity` package. Install it with `pip install better-profanity` "
            "(or `pip install ple-trl[demo]`)."
        ) from None
    return Profanity()  # its own instance: the package-level `profanity` object is global, mutable state


def vader_sentiment(prompts=None, completions=None, **kwargs) -> list[float]:
    """
    VADER's compound sentiment of each answer, in [-1, 1] (1: very positive, 0: neutral or empty).

    Args:
        prompts (`list`, *optional*):
            The prompts; not used (the answer alone is scored), accepted for TRL's signature.
        completions (`list[str]` or `list[list[dict]]`):
            The answers.
        **kwargs:
            Other dataset columns TRL passes; ignored.

    Returns:
        `list[float]`: one score per completion.
    """
    analyzer = _vader()
    return _score_each(completions, lambda text: analyzer.polarity_scores(text)["compound"])


def profanity_penalty(prompts=None, completions=None, **kwargs) -> list[float]:
    """
    `-1.0` for an answer that contains a word of better-profanity's list (letter substitutions such as `sh1t`
    included), `0.0` otherwise.

    Args:
        prompts (`list`, *optional*):
            The prompts; not used, accepted for TRL's signature.
        completions (`list[str]` or `list[list[dict]]`):
            The answers.
        **kwargs:
            Other dataset columns TRL passes; ignored.

    Returns:
        `list[float]`: one penalty per completion.
    """
    checker = _profanity()
    return _score_each(completions, lambda text: -1.0 if checker.contains_profanity(text) else 0.0)
