"""How PLE routes each pair and when its threshold moves: a pair whose principled answer beats the plain one by more
than `tau` is ranked, the others get weighted SFT, `rank_all` ranks the better answer of every pair, unscorable pairs
are skipped and counted; `tau` decays once per PLE iteration (an epoch of optimizer steps by default, or
`steps_per_iteration`) and resumes where it was."""

import math

import pytest
import torch
from datasets import Dataset

from ple_trl import PLETrainer

from helpers import PROMPTS, by_position, logged, make_args, read_labels, snapshot

SIX_PROMPTS = PROMPTS + ["tell me a story .", "hello friend , how is the weather ?"]


# --- routing --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("gap,expected", [(0.3, 1.0), (0.1, 0.0), (-0.5, 0.0)])
def test_routing_for_a_known_reward_gap(tmp_path, tiny_model_path, gap, expected):
    trainer = PLETrainer(
        model=tiny_model_path,
        reward_funcs=by_position(0.0, gap),
        args=make_args(tmp_path, max_steps=1, save_enhanced_labels=True),
        train_dataset=Dataset.from_dict({"prompt": PROMPTS}),
    )
    trainer.train()
    assert logged(trainer, "ple/rank_fraction") == [expected]
    assert logged(trainer, "ple/reward_gap") == [pytest.approx(gap)]
    labels = read_labels(tmp_path)
    assert len(labels) == 2  # one generation round of two pairs
    assert {label["route"] for label in labels} == {"rank" if expected else "wsft"}
    assert all(label["prompt"] in PROMPTS and label["principle"] == "be positive and kind" for label in labels)
    if not expected:  # softmax soft labels over the two rewards
        assert labels[0]["weight_principled"] == pytest.approx(1 / (1 + math.exp(-gap)))
        assert trainer.state.log_history[0]["ple/sft_weight_principled"] == pytest.approx(1 / (1 + math.exp(-gap)))


def test_rank_all_prefers_the_plain_answer_when_it_scored_higher(tmp_path, tiny_model_path):
    trainer = PLETrainer(
        model=tiny_model_path, reward_funcs=by_position(1.0, 0.0),
        train_dataset=Dataset.from_dict({"prompt": PROMPTS}),
        args=make_args(tmp_path, max_steps=1, routing="rank_all", save_enhanced_labels=True),
    )  # fmt: skip
    trainer.train()
    labels = read_labels(tmp_path)
    assert [(label["route"], label["preferred"]) for label in labels] == [("rank", "plain"), ("rank", "plain")]


def test_zscore_with_an_infinite_reward_skips_only_its_pair(tmp_path, tiny_model_path):
    def reward(completions, **kwargs):
        # plain answers 0, 0; principled answers 1, inf: only the second pair is unscorable
        return [0.0, 0.0, 1.0, math.inf]

    trainer = PLETrainer(
        model=tiny_model_path, reward_funcs=reward, train_dataset=Dataset.from_dict({"prompt": PROMPTS}),
        args=make_args(tmp_path, max_steps=1, reward_transform="zscore", save_enhanced_labels=True),
    )  # fmt: skip
    trainer.train()
    assert logged(trainer, "ple/skipped_pairs") == [1.0]
    # finite rewards 0, 0, 1: mean 1/3, sample std sqrt(1/3); pair 0's z-scored gap is 1 / sqrt(1/3) = sqrt(3) > tau
    assert logged(trainer, "ple/reward_gap") == [pytest.approx(math.sqrt(3), rel=1e-5)]
    labels = read_labels(tmp_path)
    assert sorted(label["route"] for label in labels) == ["rank", "skipped"]


def test_nan_and_none_rewards_skip_pairs_and_are_counted(tmp_path, tiny_model_path):
    def reward(prompts, completions, **kwargs):
        half = len(completions) // 2
        return [None] * half + [1.0] * half  # every plain answer unscorable: every pair skipped

    trainer = PLETrainer(
        model=tiny_model_path, reward_funcs=reward,
        args=make_args(tmp_path, max_steps=1, save_enhanced_labels=True, weight_decay=0.0),
        train_dataset=Dataset.from_dict({"prompt": PROMPTS}),
    )  # fmt: skip
    before = snapshot(trainer.model)
    trainer.train()
    assert logged(trainer, "ple/skipped_pairs") == [2.0]
    for name, param in trainer.model.named_parameters():
        assert torch.equal(param, before[name]), f"{name} was trained on a skipped pair"
    labels = read_labels(tmp_path)
    assert [label["route"] for label in labels] == ["skipped", "skipped"]


# --- tau ------------------------------------------------------------------------------------------------------------


def test_tau_decays_once_per_epoch_by_default(tmp_path, tiny_model_path, positivity):
    trainer = PLETrainer(
        model=tiny_model_path,
        reward_funcs=positivity,
        args=make_args(tmp_path, max_steps=4),  # 4 prompts, 2 pairs per step: 2 steps per epoch
        train_dataset=Dataset.from_dict({"prompt": PROMPTS}),
    )
    trainer.train()
    assert logged(trainer, "ple/tau") == pytest.approx([0.2, 0.2, 0.18, 0.18])


def test_tau_decays_once_per_epoch_when_accumulation_does_not_divide_the_rounds(tmp_path, tiny_model_path, positivity):
    # 6 prompts, 2 pairs per generation round (steps_per_generation=1): 3 rounds = 3 micro-steps per epoch. With
    # gradient accumulation 2, transformers makes 2 optimizer steps of them (2 micro-steps, then 1), i.e. 6 steps in 3
    # epochs; tau decays after each epoch's second step, not after every step.
    trainer = PLETrainer(
        model=tiny_model_path, reward_funcs=positivity, train_dataset=Dataset.from_dict({"prompt": SIX_PROMPTS}),
        args=make_args(tmp_path, max_steps=-1, num_train_epochs=3, gradient_accumulation_steps=2,
                       steps_per_generation=1),
    )  # fmt: skip
    trainer.train()
    assert trainer.state.global_step == 6
    assert logged(trainer, "ple/tau") == pytest.approx([0.2, 0.2, 0.18, 0.18, 0.162, 0.162])


def test_tau_decays_per_iteration_and_resumes(tmp_path, tiny_model_path, positivity):
    dataset = Dataset.from_dict({"prompt": PROMPTS * 2})
    common = dict(iteration_unit="steps", steps_per_iteration=1, alpha=0.5, max_steps=4)
    trainer = PLETrainer(
        model=tiny_model_path, reward_funcs=positivity, train_dataset=dataset,
        args=make_args(tmp_path / "full", **common, save_strategy="steps", save_steps=2),
    )  # fmt: skip
    trainer.train()
    expected = [0.2 * 0.5**k for k in range(4)]  # tau used at steps 1..4 is tau0 * alpha^(completed iterations)
    assert logged(trainer, "ple/tau") == pytest.approx(expected)

    resumed = PLETrainer(
        model=tiny_model_path, reward_funcs=positivity, train_dataset=dataset,
        args=make_args(tmp_path / "resumed", **common),
    )  # fmt: skip
    resumed.train(resume_from_checkpoint=str(tmp_path / "full" / "checkpoint-2"))
    assert logged(resumed, "ple/tau")[-2:] == pytest.approx(expected[2:])
