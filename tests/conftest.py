"""Shared fixtures: tiny models built from a config and tokenizers trained on the spot (by `ple_trl.testing`, which the
benchmarks use too), saved to a temp dir and passed by path, like a user passes hub ids. Nothing here touches a hub."""

import os

# Before ple_trl (and so trl and the hub client) is imported.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from ple_trl.testing import (  # noqa: E402, F401  (re-exported: test modules import them from conftest)
    CHAT_TEMPLATE,
    NEGATIVE_WORDS,
    POLICY_SPECIAL,
    POSITIVE_WORDS,
    REWARD_CHAT_TEMPLATE,
    REWARD_SPECIAL,
    WORDS,
    build_tiny_causal_lm,
    build_tiny_reward_model,
    build_tiny_vlm,
    make_policy_tokenizer,
    make_reward_tokenizer,
    make_word_tokenizer,
    tiny_llama_config,
)

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory):
    """Path of a randomly initialised 2-layer Llama with a word-level tokenizer and a chat template."""
    return build_tiny_causal_lm(tmp_path_factory.mktemp("tiny-causal-lm"))


@pytest.fixture(scope="session")
def init_model_path(tmp_path_factory):
    """A second tiny Llama (other weights, the same tokenizer): `pi_init` of the implicit reward, as the model an SFT
    or seed-DPO stage started from."""
    return build_tiny_causal_lm(tmp_path_factory.mktemp("tiny-init-lm"), seed=1)


@pytest.fixture(scope="session")
def tiny_vlm_path(tmp_path_factory):
    """Path of a LLaVA with a 1-layer CLIP vision tower on 8x8 images and a 2-layer Llama, with its processor."""
    return build_tiny_vlm(tmp_path_factory.mktemp("tiny-llava"))


@pytest.fixture(scope="session")
def tiny_reward_model_path(tmp_path_factory):
    """Path of a tiny sequence-classification reward model whose tokenizer differs from the policy's."""
    return build_tiny_reward_model(tmp_path_factory.mktemp("tiny-reward-model"))


@pytest.fixture(scope="session")
def tiny_reward_model_no_template_path(tmp_path_factory):
    """Same as `tiny_reward_model_path`, but its tokenizer has no chat template."""
    return build_tiny_reward_model(tmp_path_factory.mktemp("tiny-reward-model-no-template"), chat_template=False)


def positive_fraction(text):
    """Fraction of the words of `text` that are positive minus the fraction that are negative (in [-1, 1])."""
    words = text.split()
    if not words:
        return 0.0
    return (sum(w in POSITIVE_WORDS for w in words) - sum(w in NEGATIVE_WORDS for w in words)) / len(words)


def completion_text(completion):
    return completion[-1]["content"] if isinstance(completion, list) else completion


def positivity_reward(completions, **kwargs):
    """A reward function with a known value: positive minus negative word fraction of the answer."""
    return [positive_fraction(completion_text(c)) for c in completions]


@pytest.fixture
def positivity():
    return positivity_reward
