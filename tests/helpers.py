"""Helpers shared by the test modules and by the subprocess scripts of `tests/scripts/` (which put `tests/` on
`sys.path` themselves): the tiny-run configs, reward functions with known values, and the parameter checks. Kept apart
from `conftest.py` so that the scripts can import it without pytest; test modules import it as `from helpers import`.
"""

import contextlib
import json
import os

import torch

from ple_trl import PLEConfig

PRINCIPLE = "be positive and kind"
PROMPTS = ["write a review of the movie :", "tell me about your day :", "what is the food ?", "how is the city ?"]
PRINCIPLES = ["be positive", "be kind", "be very short"]

# A tiny CPU run: 2 pairs per step, 2 steps, no saving, no reporting.
TINY_RUN = dict(
    per_device_train_batch_size=2,
    max_completion_length=6,
    max_steps=2,
    learning_rate=1e-2,
    logging_steps=1,
    bf16=False,
    gradient_checkpointing=False,
    report_to="none",
    save_strategy="no",
    use_cpu=True,
    seed=0,
)

# The checkpointed run of `tests/test_resume.py` and `tests/scripts/ple_kill_resume.py`: a checkpoint every 2 steps,
# 3 principles drawn at random, the audit log on.
KILL_RESUME_RUN = dict(
    principles=PRINCIPLES,
    max_completion_length=4,
    save_strategy="steps",
    save_steps=2,
    save_enhanced_labels=True,
)


def tiny_args(output_dir, config_class=PLEConfig, **kwargs):
    """`config_class` with the `TINY_RUN` settings, `output_dir`, and `kwargs` over them (no principle)."""
    return config_class(**{**TINY_RUN, "output_dir": str(output_dir), **kwargs})


def make_args(output_dir, **kwargs):
    """A tiny PLE run guided by `PRINCIPLE`, `kwargs` over the defaults."""
    return tiny_args(output_dir, **{"principle": PRINCIPLE, **kwargs})


@contextlib.contextmanager
def counting_prefix_prefills():
    """Count the rounds generated from a pair's shared prompt prefix (one prefill of the prefixes per round): yields
    the list that gets one item per prefill."""
    from ple_trl.pairs import prefix_sharing

    calls = []
    prefill = prefix_sharing.prefill_shared_prefix

    def counting_prefill(*args, **kwargs):
        calls.append(1)
        return prefill(*args, **kwargs)

    prefix_sharing.prefill_shared_prefix = counting_prefill
    try:
        yield calls
    finally:
        prefix_sharing.prefill_shared_prefix = prefill


def by_position(plain_value, principled_value):
    """A reward with a known gap: PLE scores the plain answers first, then the principled ones, in one call."""

    def reward(prompts, completions, **kwargs):
        half = len(completions) // 2
        return [plain_value] * half + [principled_value] * half

    return reward


def logged(trainer, key):
    return [entry[key] for entry in trainer.state.log_history if key in entry]


def snapshot(model):
    """Copies of the trainable parameters."""
    return {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}


def snapshot_all(model):
    """Copies of all the parameters, frozen ones included."""
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def assert_all_changed(trainer, before):
    for name, param in trainer.model.named_parameters():
        if name in before:
            assert not torch.equal(param, before[name]), f"{name} did not change"


def read_labels(output_dir):
    """The records of the audit log (`save_enhanced_labels=True`) of the run in `output_dir`."""
    with open(os.path.join(output_dir, "enhanced_labels.jsonl")) as f:
        return [json.loads(line) for line in f]
