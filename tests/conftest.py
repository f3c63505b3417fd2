"""The test environment and the shared fixtures: tiny models built from a config and tokenizers trained on the spot
(by `ple_trl.testing`, which the benchmarks use too), saved to a temp dir and passed by path, like a user passes hub
ids. Nothing here touches a hub. Shared helpers live in `tests/helpers.py`."""

import os

# Before ple_trl (and so trl and the hub client) is imported.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from ple_trl.testing import build_tiny_causal_lm, build_tiny_reward_model, build_tiny_vlm  # noqa: E402

from helpers import positivity_reward  # noqa: E402

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


@pytest.fixture
def positivity():
    """`helpers.positivity_reward`: a reward function with a known value."""
    return positivity_reward
