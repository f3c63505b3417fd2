"""Training that crashed or trained the wrong thing (issue 9: items 1, 6, 7, 8, 9, 11), on tiny models."""

import math

import pytest
import torch
from datasets import Dataset
from test_trainer import FORMATS
from transformers import AutoModelForCausalLM

from ple_trl import PLETrainer

from helpers import PROMPTS, by_position, logged, make_args, read_labels, snapshot, snapshot_all

SIX_PROMPTS = PROMPTS + ["tell me a story .", "hello friend , how is the weather ?"]


# --- item 1: beta > 0 with the policy given as a path ------------------------------------------------------------


def test_reference_anchored_ranking_with_the_model_given_as_a_path(tmp_path, tiny_model_path):
    trainer = PLETrainer(
        model=tiny_model_path, reward_funcs=by_position(0.0, 1.0),
        args=make_args(tmp_path, beta=0.1, ranking_loss_type="dpo"),
        train_dataset=Dataset.from_dict({"prompt": PROMPTS}),
    )  # fmt: skip
    reference = trainer.accelerator.unwrap_model(trainer.ref_model)
    assert reference is not trainer.model
    policy_ids = {id(p) for p in trainer.model.parameters()}
    assert not any(id(p) in policy_ids for p in reference.parameters())  # a separate copy, loaded from the path
    assert not any(p.requires_grad for p in reference.parameters())
    reference_before, policy_before = snapshot_all(reference), snapshot(trainer.model)
    trainer.train()
    assert logged(trainer, "ple/rank_fraction") == [1.0, 1.0]
    assert all(torch.equal(p, reference_before[n]) for n, p in reference.named_parameters())
    assert any(not torch.equal(p, policy_before[n]) for n, p in trainer.model.named_parameters())


# --- item 6: one PLE iteration is the trainer's own epoch --------------------------------------------------------


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


# --- item 7: z-scored rewards with one infinite reward -----------------------------------------------------------


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


# --- item 8: rank_all ranks the better answer of every pair ------------------------------------------------------


def test_rank_all_prefers_the_plain_answer_when_it_scored_higher(tmp_path, tiny_model_path):
    trainer = PLETrainer(
        model=tiny_model_path, reward_funcs=by_position(1.0, 0.0),
        train_dataset=Dataset.from_dict({"prompt": PROMPTS}),
        args=make_args(tmp_path, max_steps=1, routing="rank_all", save_enhanced_labels=True),
    )  # fmt: skip
    trainer.train()
    labels = read_labels(tmp_path)
    assert [(label["route"], label["preferred"]) for label in labels] == [("rank", "plain"), ("rank", "plain")]


# --- item 9: IPO ranks on mean token log-probs -------------------------------------------------------------------


def answer_log_probs_by_hand(model, batch):
    """`(pairs, 2)` sums and means of the log-probs of each answer's tokens under `model`, from its logits on the
    unpadded `[prompt + answer]` of each answer (right-padded into one batch: causal attention never sees the pads)."""
    num_pairs = batch["prompt_ids"].size(0)
    rows = []  # (prompt, answer) token ids, without padding, pair by pair, plain answer first
    for i in range(num_pairs):
        prompt = batch["prompt_ids"][i][batch["prompt_mask"][i].bool()]
        rows += [(prompt, batch["completion_ids"][i, j][batch["completion_mask"][i, j].bool()]) for j in range(2)]
    length = max(len(prompt) + len(answer) for prompt, answer in rows)
    input_ids = torch.zeros(len(rows), length, dtype=torch.long)
    attention_mask = torch.zeros(len(rows), length, dtype=torch.long)
    for row, (prompt, answer) in enumerate(rows):
        input_ids[row, : len(prompt) + len(answer)] = torch.cat([prompt, answer])
        attention_mask[row, : len(prompt) + len(answer)] = 1
    with torch.no_grad():
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
    sums, means = torch.zeros(num_pairs * 2), torch.zeros(num_pairs * 2)
    for row, (prompt, answer) in enumerate(rows):
        # The logit at position t predicts token t + 1: the answer's tokens from the prompt's last position on.
        log_probs = torch.log_softmax(logits[row, len(prompt) - 1 : len(prompt) + len(answer) - 1].double(), dim=-1)
        token_log_probs = log_probs.gather(-1, answer[:, None]).squeeze(-1)
        sums[row], means[row] = token_log_probs.sum(), token_log_probs.mean()
    return sums.view(num_pairs, 2), means.view(num_pairs, 2)


def test_ipo_reference_log_probs_are_per_token_means(tmp_path, tiny_model_path):
    trainer = PLETrainer(
        model=tiny_model_path, ref_model=tiny_model_path, reward_funcs=by_position(0.0, 1.0),
        args=make_args(tmp_path, beta=0.1, ranking_loss_type="ipo", max_completion_length=5),
        train_dataset=Dataset.from_dict({"prompt": PROMPTS}),
    )  # fmt: skip
    batch = trainer._generate_and_score_completions([{"prompt": PROMPTS[0]}, {"prompt": PROMPTS[1]}])
    # The reference is the model at the path: its log-probs by hand, from a copy loaded here.
    sums, means = answer_log_probs_by_hand(AutoModelForCausalLM.from_pretrained(tiny_model_path).eval(), batch)
    assert batch["ref_logps"].shape == (2, 2)  # (pairs, [plain answer, principled answer])
    torch.testing.assert_close(batch["ref_logps"], means, rtol=0, atol=1e-5)
    assert not torch.allclose(sums, means, atol=1e-3)  # answers longer than one token: sums would be told apart


# --- item 11: evaluate() converts the formats it is given --------------------------------------------------------


@pytest.mark.parametrize("name", ["messages", "preference"])
def test_evaluate_accepts_every_training_format(tmp_path, tiny_model_path, name):
    trainer = PLETrainer(
        model=tiny_model_path, reward_funcs=by_position(0.0, 1.0),
        train_dataset=Dataset.from_dict({"prompt": PROMPTS}),
        args=make_args(tmp_path, per_device_eval_batch_size=2),
    )  # fmt: skip
    metrics = trainer.evaluate(eval_dataset=Dataset.from_dict(FORMATS[name]))
    assert metrics["eval_ple/rank_fraction"] == 1.0
    assert metrics["eval_ple/reward_gap"] == pytest.approx(1.0)
    by_name = trainer.evaluate(eval_dataset={"held_out": Dataset.from_dict(FORMATS[name])})
    assert "eval_held_out_loss" in by_name
    assert by_name["eval_ple/rank_fraction"] == 1.0  # GRPO's `log` prefixes its metrics with `eval_` only
