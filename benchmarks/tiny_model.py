"""Tiny models built on the fly for the benchmarks: a randomly initialised 4-layer Llama policy and a small Llama
classifier reward model, with word-level tokenizers, saved to a folder and passed by path like a hub id. Nothing is
downloaded.

They are the test suite's builders (`ple_trl.testing`), made deeper and wider so that a step costs more than its
overhead.
"""

from ple_trl.testing import NEGATIVE_WORDS, POSITIVE_WORDS, WORDS, build_tiny_causal_lm  # noqa: F401 (step_cost.py)
from ple_trl.testing import build_tiny_reward_model as _build_reward_model


def _sizes(num_hidden_layers, hidden_size, max_position_embeddings):
    return dict(
        num_hidden_layers=num_hidden_layers,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=max_position_embeddings,
    )


def build_tiny_llama(path, seed=0, num_hidden_layers=4, hidden_size=64, max_position_embeddings=256):
    """Save a randomly initialised tiny Llama (4 layers by default) and its tokenizer under `path`; return the path."""
    return build_tiny_causal_lm(path, seed=seed, **_sizes(num_hidden_layers, hidden_size, max_position_embeddings))


def build_tiny_reward_model(path, seed=0, num_hidden_layers=2, hidden_size=64, max_position_embeddings=1024):
    """Save a randomly initialised tiny Llama classifier (one reward logit) and its tokenizer under `path`: the size of
    a small classifier reward model, so its cost is a small, equal share of every trainer's step."""
    return _build_reward_model(path, seed=seed, **_sizes(num_hidden_layers, hidden_size, max_position_embeddings))
