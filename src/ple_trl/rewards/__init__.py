"""Reward sources beyond TRL's, in TRL's reward-function signature `f(prompts, completions, **kwargs) -> list[float]`."""

from .lexicon import completion_text, profanity_penalty, vader_sentiment
from .model import LeftTruncatingRewardModel, reward_model_max_length
from .scorer import RewardModelScorer

__all__ = [
    "LeftTruncatingRewardModel",
    "RewardModelScorer",
    "completion_text",
    "profanity_penalty",
    "reward_model_max_length",
    "vader_sentiment",
]
