"""A recorded run, in torchtune's manner: a 4-step tiny-model run whose logged loss, `ple/tau` and
`ple/rank_fraction` are compared with values recorded once, so that any change in PLE's maths shows as a diff.

To re-record (only after a change in the maths that is meant): run this file with `RECORD=1` in the environment; it
prints the new values instead of comparing them. Paste them into `RECORDED` and say why in the commit message.
The values were recorded on CPU (float32) with torch's default deterministic kernels.
"""

import os

import pytest
from datasets import Dataset

from ple_trl import PLETrainer

from helpers import PROMPTS, make_args

# The principled answer beats the plain one (reward 0) by these gaps, pair by pair: with tau = 0.2, 0.1, 0.05, 0.025
# the routing changes from step to step.
GAPS = [0.3, 0.15, 0.075, 0.01]


def known_gaps(prompts, completions, **kwargs):
    # PLE scores the plain answers first, then the principled ones; each prompt keeps its gap.
    half = len(completions) // 2
    gaps = [GAPS[PROMPTS.index(prompt)] for prompt in prompts[half:]]
    return [0.0] * half + gaps


CONFIGS = {
    "sigmoid_signed": dict(),
    "ipo_reference_sigmoid": dict(
        ranking_loss_type="ipo", beta=0.1, gap_mode="absolute", reward_transform="sigmoid", sft_weighting="equal"
    ),
}

# Per step, (loss, ple/tau, ple/rank_fraction).
RECORDED = {
    "sigmoid_signed": [
        (2.1434764862060547, 0.2, 0.5),
        (4.261326789855957, 0.1, 0.0),
        (6.240163326263428, 0.05, 0.5),
        (0.6032122373580933, 0.025, 1.0),
    ],
    "ipo_reference_sigmoid": [
        (4.286382675170898, 0.2, 0.0),
        (4.222934722900391, 0.1, 0.0),
        (4.341378688812256, 0.05, 0.0),
        (13.93808364868164, 0.025, 0.5),
    ],
}


def recorded_run(tmp_path, model_path, **overrides):
    args = make_args(
        tmp_path,
        max_steps=4,
        tau0=0.2,
        alpha=0.5,
        iteration_unit="steps",
        steps_per_iteration=1,
        gradient_checkpointing=True,  # GRPO's default, under which the values were recorded
        **overrides,
    )
    trainer = PLETrainer(
        model=model_path,
        reward_funcs=known_gaps,
        args=args,
        train_dataset=Dataset.from_dict({"prompt": PROMPTS}),
    )
    trainer.train()
    return [
        (entry["loss"], entry["ple/tau"], entry["ple/rank_fraction"])
        for entry in trainer.state.log_history
        if "ple/tau" in entry
    ]


@pytest.mark.parametrize("name", list(CONFIGS))
def test_four_steps_reproduce_the_recorded_loss_tau_and_rank_fraction(tmp_path, tiny_model_path, name):
    steps = recorded_run(tmp_path, tiny_model_path, **CONFIGS[name])
    if os.environ.get("RECORD"):
        print(f"\n{name!r}: {steps!r},")
        return
    recorded = RECORDED[name]
    assert len(steps) == len(recorded) == 4
    for step, (got, expected) in enumerate(zip(steps, recorded), start=1):
        assert got == pytest.approx(expected, abs=1e-5), f"{name}, step {step}"
