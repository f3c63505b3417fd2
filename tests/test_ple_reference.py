"""PLE's reference-anchored ranking (`beta > 0` with the `dpo` or `ipo` ranking loss): the reference is a frozen
copy of the initial policy (loaded again when the policy is given as a path, the adapter-disabled model under PEFT)
or an explicit `ref_model`, it never moves, and IPO ranks on its mean token log-probs."""

import math

import pytest
import torch
from datasets import Dataset
from peft import LoraConfig
from transformers import AutoModelForCausalLM, AutoTokenizer

from ple_trl import PLETrainer

from helpers import PROMPTS, by_position, logged, make_args, snapshot, snapshot_all


@pytest.mark.parametrize("peft", [False, True], ids=["frozen-copy", "adapter-disabled"])
def test_reference_anchored_ranking(tmp_path, tiny_model_path, peft):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_path)  # in memory: GRPO could not reload it by name
    model.config._name_or_path = ""
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    trainer = PLETrainer(
        model=model,
        reward_funcs=by_position(0.0, 1.0),
        args=make_args(tmp_path, beta=0.1, ranking_loss_type="dpo"),
        train_dataset=Dataset.from_dict({"prompt": PROMPTS}),
        processing_class=tokenizer,
        peft_config=LoraConfig(r=4, target_modules="all-linear", task_type="CAUSAL_LM") if peft else None,
    )
    assert (trainer.ref_model is None) == peft
    trainer.train()
    # The first step's loss is computed before any update, while the policy is the reference: every pair is ranked
    # (gap 1 > tau), its DPO margin is 0, and its loss is log 2.
    assert logged(trainer, "ple/rank_fraction")[0] == 1.0
    assert logged(trainer, "ple/loss_rank")[0] == pytest.approx(math.log(2), abs=1e-4)
    assert logged(trainer, "loss")[0] == pytest.approx(math.log(2), abs=1e-4)
    assert len(logged(trainer, "ple/loss_rank")) == 2


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


def test_explicit_ref_model(tmp_path, tiny_model_path):
    trainer = PLETrainer(
        model=tiny_model_path,
        ref_model=tiny_model_path,
        reward_funcs=by_position(0.0, 1.0),
        args=make_args(tmp_path, beta=0.1, ranking_loss_type="ipo", max_steps=1),
        train_dataset=Dataset.from_dict({"prompt": PROMPTS}),
    )
    assert trainer.ref_model is not None and not any(p.requires_grad for p in trainer.ref_model.parameters())
    trainer.train()
    assert logged(trainer, "ple/rank_fraction") == [1.0]


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
