"""Fails loudly when the private TRL methods that PLETrainer overrides or calls change.

PLETrainer reuses GRPOTrainer's machinery through these private methods. A TRL release that renames one, changes
its parameters or its return shape must break here, with the method's name, not deep inside a training run.
"""

import inspect
from importlib.metadata import version

import pytest
from packaging.version import Version
from trl import GRPOTrainer

from ple_trl import PLETrainer

# method -> the leading parameters (after self) PLETrainer relies on, in order
CONTRACT = {
    "_generate_and_score_completions": ["inputs"],  # overridden
    "_compute_loss": ["model", "inputs"],  # overridden
    "_tokenize_prompts": ["prompts"],  # overridden (prompt truncation), calls super
    "_generate": ["prompts"],  # called: generation for plain + principled prompts in one call
    "_calculate_rewards": ["inputs", "prompts", "completions", "completion_ids_list"],  # called: reward plumbing
    "_get_per_token_logps_and_entropies": ["model", "input_ids", "attention_mask", "logits_to_keep"],  # called
    # overridden: generation from the pairs' shared prompt prefix, calls super
    "_generate_single_turn": ["prompt_ids", "images", "multimodal_fields", "num_generations", "has_tool_images"],
}


def test_trl_version_is_in_the_tested_range():
    assert Version("1.16") <= Version(version("trl")) < Version("1.17"), (
        "ple-trl is tested against trl>=1.16,<1.17; run this contract test against the new release before "
        "widening the pin in setup.cfg."
    )


@pytest.mark.parametrize("name", list(CONTRACT))
def test_private_grpo_methods_keep_their_signature(name):
    assert hasattr(GRPOTrainer, name), f"GRPOTrainer.{name} no longer exists: PLETrainer depends on it"
    parameters = list(inspect.signature(getattr(GRPOTrainer, name)).parameters)
    expected = ["self", *CONTRACT[name]]
    assert parameters[: len(expected)] == expected, f"GRPOTrainer.{name}{parameters} changed signature"


def test_generate_returns_the_eight_fields_pletrainer_unpacks():
    source = inspect.getsource(GRPOTrainer._generate)
    assert (
        "return prompt_ids, completion_ids, tool_mask, completions, logprobs, extra_fields, images, tool_images"
        in source
    ), "GRPOTrainer._generate's return tuple changed: update PLETrainer._generate_and_score_completions"


def test_transformers_generation_calls_generate_on_the_unwrapped_model():
    # The shared-prefix generation (`_generation_prefix`) replaces `generate` on the unwrapped model for one call and
    # returns the prompt columns it was given, which GRPO cuts off by the width of its own padded prompts.
    source = inspect.getsource(GRPOTrainer._generate_single_turn)
    assert "unwrapped_model.generate(" in source, "GRPO's transformers path no longer calls `unwrapped_model.generate`"
    assert 'prompt_length = generate_inputs["input_ids"].size(1)' in source, "GRPO cuts the answers off differently"


def test_calculate_rewards_gathers_across_processes():
    # PLETrainer slices the local part of the rewards itself, so it relies on GRPO returning the gathered tensor.
    assert "gather(rewards_per_func)" in inspect.getsource(GRPOTrainer._calculate_rewards)


def test_pletrainer_overrides_are_its_own():
    for name in ("_generate_and_score_completions", "_compute_loss"):
        assert getattr(PLETrainer, name) is not getattr(GRPOTrainer, name)
    assert PLETrainer.loss_is_scaled_for_ga is True  # PLETrainer divides by gradient accumulation itself
