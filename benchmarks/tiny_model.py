"""A tiny causal LM built on the fly for the benchmarks: a randomly initialised 4-layer Llama and a word-level
tokenizer, saved to a folder and passed by path like a hub id. Nothing is downloaded.

It is the test suite's builder (`ple_trl.testing`), made deeper and wider so that a step costs more than its overhead.
"""

from ple_trl.testing import NEGATIVE_WORDS, POSITIVE_WORDS, build_tiny_causal_lm  # noqa: F401  (used by step_cost.py)


def build_tiny_llama(path, seed=0, num_hidden_layers=4, hidden_size=64):
    """Save a randomly initialised tiny Llama (4 layers by default) and its tokenizer under `path`; return the path."""
    return build_tiny_causal_lm(
        path,
        seed=seed,
        num_hidden_layers=num_hidden_layers,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
