"""Reward sources beyond TRL's, in TRL's reward-function signature
`f(prompts, completions, **kwargs) -> list[float]`."""

from .lexicon import completion_text, profanity_penalty, vader_sentiment
from .model import LeftTruncatingRewardModel, reward_model_max_length
from .registry import load_reward_func, resolve_reward_funcs, reward_funcs_registry
from .scorer import RewardModelScorer

__all__ = [
    "LeftTruncatingRewardModel",
    "RewardModelScorer",
    "completion_text",
    "load_reward_func",
    "profanity_penalty",
    "resolve_reward_funcs",
    "reward_funcs_registry",
    "reward_model_max_length",
    "vader_sentiment",
]
