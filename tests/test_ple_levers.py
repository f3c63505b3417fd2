"""PLE's anchor and its distillation of the principle (`plain_sft_coef`, `distill_*`): the maths against
values computed by hand, the pairs the routing sends to the distillation, and the trainer's loss against a
by-hand forward of the policy and of its frozen teacher."""

import math

import pytest
import torch
from datasets import Dataset

from ple_trl import PLEConfig, PLETrainer
from ple_trl.ple import labeling, losses

from helpers import PROMPTS, by_position, make_args


def test_distillation_loss_is_the_divergence_of_the_token_distributions_by_hand():
    # One answer of 2 tokens (the second is padding) over a vocabulary of 2.
    student = torch.tensor([[[0.0, math.log(3.0)], [5.0, 0.0]]])  # p = (1/4, 3/4)
    teacher = torch.tensor([[[0.0, 0.0], [0.0, 5.0]]])  # q = (1/2, 1/2)
    mask = torch.tensor([[1, 0]])
    p, q = torch.tensor([0.25, 0.75]), torch.tensor([0.5, 0.5])
    forward_kl = (q * (q / p).log()).sum()  # alpha 0: KL(teacher || student)
    reverse_kl = (p * (p / q).log()).sum()  # alpha 1: KL(student || teacher)
    torch.testing.assert_close(losses.distillation_loss(student, teacher, mask, topk=2, alpha=0.0), forward_kl[None])
    torch.testing.assert_close(losses.distillation_loss(student, teacher, mask, topk=2, alpha=1.0), reverse_kl[None])
    # alpha 0.5: the generalised Jensen-Shannon divergence against the mixture m = (p + q) / 2
    m = (p + q) / 2
    jsd = 0.5 * (p * (p / m).log()).sum() + 0.5 * (q * (q / m).log()).sum()
    torch.testing.assert_close(losses.distillation_loss(student, teacher, mask, topk=2, alpha=0.5), jsd[None])
    # top-1: the student's most likely token alone, renormalised on both sides: no divergence left.
    assert losses.distillation_loss(student, teacher, mask, topk=1, alpha=0.0).item() == pytest.approx(0.0, abs=1e-6)


def labels_of(rank, preferred, valid, weight=0.5):
    n = len(rank)
    return labeling.EnhancedLabels(
        torch.tensor(rank), torch.tensor(preferred), torch.full((n,), weight), torch.tensor(valid), torch.zeros(n)
    )


def test_the_routing_decides_which_pairs_are_distilled():
    labels = labels_of([True, True, False, False], [True, False, True, True], [True, True, True, False])
    # ranked and preferring the principled answer: the principle helped by more than tau
    assert labeling.distill_mask(labels, "ranked").tolist() == [True, False, False, False]
    assert labeling.distill_mask(labels, "all").tolist() == [True, True, True, False]
    with pytest.raises(ValueError, match="distill_pairs='some'"):
        labeling.distill_mask(labels, "some")


def test_ple_loss_adds_the_plain_answer_anchor_and_the_distillation_by_hand():
    # Pair 0 ranked, pair 1 weighted SFT, pair 2 skipped (a NaN reward).
    labels = labels_of([True, False, False], [True, True, True], [True, True, False])
    sums = torch.tensor([[-4.0, -6.0, -1.0], [-2.0, -8.0, -1.0]])  # rows: plain, principled
    means = torch.tensor([[-1.0, -2.0, -0.5], [-0.5, -4.0, -0.5]])
    distill = torch.tensor([0.3, 0.0, 7.0])
    result = losses.ple_loss(
        labels, losses.PairLogps(sums, means), plain_sft_coef=0.1, distill_losses=distill, distill_coef=2.0
    )
    rank = -math.log(1 / (1 + math.exp(-(-2.0 - -4.0))))  # -log sigmoid(l(y_p) - l(y))
    wsft = -(0.5 * -4.0 + 0.5 * -2.0)
    expected = ((rank + 0.1 * 1.0 + 2.0 * 0.3) + (wsft + 0.1 * 2.0)) / 2  # the skipped pair counts for nothing
    assert result.loss.item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"distill_alpha": 1.5}, r"`distill_alpha=1.5` must lie in \[0, 1\]"),
        ({"distill_topk": 0}, "`distill_topk=0` must be an integer >= 1"),
        ({"distill_pairs": "some"}, "Unknown `distill_pairs='some'`"),
        ({"distill_coef": -1.0}, "`distill_coef=-1.0` must be >= 0"),
        ({"plain_sft_coef": -0.1}, "`plain_sft_coef=-0.1` must be >= 0"),
    ],
)
def test_lever_settings_are_checked(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_args(tmp_path, **kwargs)


def by_hand_distillation(trainer, output, tokenizer_pad):
    """Each pair's distillation loss from the policy's and the frozen teacher's own logits (alpha 0, the whole
    vocabulary): KL(teacher shown the principled prompt || policy shown the plain prompt) per plain-answer token."""
    per_pair = []
    for i in range(output["prompt_ids"].size(0)):
        answer = output["completion_ids"][i, 0][output["completion_mask"][i, 0].bool()]
        plain = output["prompt_ids"][i][output["prompt_mask"][i].bool()]
        principled = output["second_prompt_ids"][i][output["second_prompt_mask"][i].bool()]
        with torch.no_grad():
            student = trainer.model(input_ids=torch.cat([plain, answer])[None]).logits[0, len(plain) - 1 : -1]
            teacher = trainer.ref_model(input_ids=torch.cat([principled, answer])[None]).logits[0]
        teacher = teacher[len(principled) - 1 : -1]
        q, log_p = teacher.log_softmax(-1), student.log_softmax(-1)
        per_pair.append((q.exp() * (q - log_p)).sum(-1).mean())
    return torch.stack(per_pair)


def test_the_trained_loss_distils_the_principled_teacher_on_the_pairs_the_principle_helped(tmp_path, tiny_model_path):
    # Only the distillation (rank and weighted SFT off), over the whole vocabulary, KL(teacher || student).
    vocab = 80
    trainer = PLETrainer(
        model=tiny_model_path, reward_funcs=by_position(0.0, 1.0),  # gap 1 > tau: every pair ranked, principled won
        args=make_args(tmp_path, distill_coef=1.0, distill_topk=vocab, distill_alpha=0.0, rank_coef=0.0,
                       wsft_coef=0.0, max_completion_length=5),
        train_dataset=Dataset.from_dict({"prompt": PROMPTS}),
    )  # fmt: skip
    assert trainer.ref_model is not None  # the teacher: a frozen copy of the initial policy
    trainer.model.eval()
    output = trainer._generate_and_score_completions([{"prompt": p} for p in PROMPTS[:2]])
    assert output["distill_mask"].tolist() == [True, True]
    trainer.current_gradient_accumulation_steps = 1
    loss = trainer._compute_loss(trainer.model, output)
    expected = by_hand_distillation(trainer, output, trainer.processing_class.pad_token_id).mean()
    torch.testing.assert_close(loss.detach(), expected, atol=1e-5, rtol=1e-4)
    # The same round where the principle did not help by more than tau: nothing is distilled, the loss is 0.
    trainer.args.tau0 = 5.0
    output = trainer._generate_and_score_completions([{"prompt": p} for p in PROMPTS[:2]])
    assert output["distill_mask"].tolist() == [False, False]
    assert trainer._compute_loss(trainer.model, output).item() == 0.0


def test_distillation_trains_and_logs(tmp_path, tiny_model_path):
    args = make_args(tmp_path, distill_coef=1.0, plain_sft_coef=0.1, max_steps=2, max_completion_length=4)
    trainer = PLETrainer(
        model=tiny_model_path, reward_funcs=by_position(0.0, 1.0), args=args,
        train_dataset=Dataset.from_dict({"prompt": PROMPTS}),
    )  # fmt: skip
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(logs) == 2
    assert all(entry["ple/distill_fraction"] == 1.0 and entry["ple/loss_distill"] > 0 for entry in logs)


def test_ple_config_keeps_the_levers_off_by_default(tmp_path):
    args = PLEConfig(output_dir=str(tmp_path), principle="be kind", use_cpu=True, bf16=False)
    assert (args.plain_sft_coef, args.distill_coef, args.distill_pairs) == (0.0, 0.0, "ranked")
    assert (args.distill_topk, args.distill_alpha) == (100, 0.5)
