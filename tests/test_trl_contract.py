"""Fails loudly when a private TRL method that PLETrainer overrides or calls, or a TRL helper it uses, changes.

PLETrainer reuses GRPOTrainer's machinery through these private methods. A TRL release that renames one, changes
its parameters or its return shape must break here, with the method's name, not deep inside a training run.
"""

import inspect
from importlib.metadata import version

import pytest
import torch
from datasets import Dataset
from packaging.version import Version
from trl import GRPOTrainer

from ple_trl import PLETrainer

from helpers import PROMPTS, make_args

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
    assert hasattr(GRPOTrainer, name), f"GRPOTrainer.{name} does not exist: PLETrainer depends on it"
    parameters = list(inspect.signature(getattr(GRPOTrainer, name)).parameters)
    expected = ["self", *CONTRACT[name]]
    assert parameters[: len(expected)] == expected, f"GRPOTrainer.{name}{parameters} changed signature"


@pytest.fixture
def trainer(tmp_path, tiny_model_path):
    return PLETrainer(
        model=tiny_model_path,
        reward_funcs=lambda completions, **kwargs: [float(len(c.split())) for c in completions],
        args=make_args(tmp_path),
        train_dataset=Dataset.from_dict({"prompt": PROMPTS}),
    )


def test_generate_returns_the_eight_fields_pletrainer_unpacks(trainer):
    prompts = PROMPTS[:2]
    fields = GRPOTrainer._generate(trainer, prompts)
    assert len(fields) == 8, "GRPOTrainer._generate's return tuple changed: update PLE's sampling"
    prompt_ids, completion_ids, _, completions, _, _, images, _ = fields
    tokenizer = trainer.processing_class
    assert prompt_ids == [tokenizer(prompt)["input_ids"] for prompt in prompts]
    assert completions == [tokenizer.decode(ids, skip_special_tokens=True) for ids in completion_ids]
    assert images is None


def test_transformers_generation_calls_generate_on_the_unwrapped_model(trainer):
    # The shared-prefix generation replaces `generate` on the unwrapped model for one call and returns the prompt
    # columns it was given, which GRPO cuts off by the width of its own padded prompts.
    answer = trainer.processing_class("good day", add_special_tokens=False)["input_ids"]
    seen = []

    def generate(input_ids, attention_mask=None, **kwargs):
        seen.append(input_ids.tolist())
        return torch.cat([input_ids, torch.tensor([answer] * input_ids.size(0))], dim=1)

    model = trainer.accelerator.unwrap_model(trainer.model_wrapped)
    model.generate = generate
    prompt_ids = [[10, 11, 12], [13]]
    try:
        completion_ids, _ = GRPOTrainer._generate_single_turn(trainer, prompt_ids, None, {}, 1)
    finally:
        del model.generate
    pad = trainer.processing_class.pad_token_id
    assert seen == [[[10, 11, 12], [pad, pad, 13]]]  # left-padded, on the unwrapped model's `generate`
    assert completion_ids == [answer, answer]  # cut at the padded prompt width


def test_calculate_rewards_returns_every_answer_per_function(trainer):
    # PLETrainer slices the local part of the rewards itself (the gather across processes: tests/test_multiprocess.py).
    completions = ["good", "good day", "a b c", ""]
    rewards = GRPOTrainer._calculate_rewards(
        trainer, [{"prompt": p} for p in PROMPTS], PROMPTS, completions, [[1]] * 4
    )
    assert rewards.tolist() == [[1.0], [2.0], [3.0], [0.0]]


def test_pletrainer_overrides_are_its_own():
    for name in ("_generate_and_score_completions", "_compute_loss"):
        assert getattr(PLETrainer, name) is not getattr(GRPOTrainer, name)
    assert PLETrainer.loss_is_scaled_for_ga is True  # PLETrainer divides by gradient accumulation itself


def test_trl_reference_syncing_contract():
    # The iteration snapshot is refreshed with TRL's `SyncRefModelCallback.sync_target_model(model, target_model,
    # alpha)`.
    from trl.trainer.callbacks import SyncRefModelCallback

    assert list(inspect.signature(SyncRefModelCallback.sync_target_model).parameters) == [
        "model",
        "target_model",
        "alpha",
    ]
    source = torch.nn.Linear(2, 2)
    target = torch.nn.Linear(2, 2)
    SyncRefModelCallback.sync_target_model(source, target, 1.0)
    assert torch.equal(source.weight, target.weight) and torch.equal(source.bias, target.bias)
