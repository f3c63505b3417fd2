"""Reward sources beyond TRL's, in TRL's reward-function signature `f(prompts, completions, **kwargs) -> list[float]`."""

from .lexicon import completion_text, profanity_penalty, vader_sentiment


__all__ = ["completion_text", "profanity_penalty", "vader_sentiment"]
