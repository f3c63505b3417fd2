"""Hand-computed checks of PLE's losses (`ple_trl.ple.losses`): the ranking losses and the weighted SFT on per-sequence
log-probs, and the routed loss of a batch."""

import math

import pytest
import torch

from ple_trl.pairs.logps import sequence_logps
from ple_trl.ple import losses
from ple_trl.ple.labeling import EnhancedLabels


def log_sigmoid(x):
    return -math.log(1 + math.exp(-x))


def test_sequence_logps_sum_and_mean():
    per_token = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, -0.5, -9.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    assert sequence_logps(per_token, mask).tolist() == [-6.0, -1.0]
    assert sequence_logps(per_token, mask, length_normalize=True).tolist() == [-2.0, -0.5]


def test_sigmoid_ranking_loss_by_hand():
    loss = losses.ranking_loss(torch.tensor([-2.0]), torch.tensor([-3.0]), "sigmoid")
    assert loss.item() == pytest.approx(-log_sigmoid(1.0))


def test_hinge_ranking_loss_by_hand():
    loss = losses.ranking_loss(torch.tensor([-2.0, -3.0]), torch.tensor([-3.0, -2.0]), "hinge")
    assert loss.tolist() == [0.0, 1.0]


def test_dpo_and_ipo_by_hand():
    chosen, rejected = torch.tensor([-2.0]), torch.tensor([-3.0])
    ref_chosen, ref_rejected = torch.tensor([-2.5]), torch.tensor([-2.5])
    margin = (-2.0 + 2.5) - (-3.0 + 2.5)  # 1.0
    dpo = losses.ranking_loss(chosen, rejected, "dpo", 0.1, ref_chosen, ref_rejected)
    assert dpo.item() == pytest.approx(-log_sigmoid(0.1 * margin))
    ipo = losses.ranking_loss(chosen, rejected, "ipo", 0.1, ref_chosen, ref_rejected)
    assert ipo.item() == pytest.approx((margin - 1 / 0.2) ** 2)


def test_reference_losses_need_beta_and_reference():
    with pytest.raises(ValueError, match="beta"):
        losses.ranking_loss(torch.zeros(1), torch.zeros(1), "dpo", 0.0)


def test_unknown_ranking_loss_names_the_knob():
    with pytest.raises(ValueError, match="ranking_loss_type='kto'"):
        losses.ranking_loss(torch.zeros(1), torch.zeros(1), "kto")


def test_weighted_sft_loss_by_hand():
    loss = losses.weighted_sft_loss(torch.tensor([-2.0]), torch.tensor([-1.0]), torch.tensor([0.75]))
    assert loss.item() == pytest.approx(0.75 * 1.0 + 0.25 * 2.0)


def pairs(sums, means, reference=None):
    """`PairLogps` from per-answer lists: `sums` and `means` are `(plain, principled)` lists of per-pair values."""
    reference = None if reference is None else torch.tensor(reference)
    return losses.PairLogps(torch.tensor(sums), torch.tensor(means), reference)


def labels(rank_mask, principled_preferred, weight_principled, valid):
    return EnhancedLabels(
        torch.tensor(rank_mask),
        torch.tensor(principled_preferred),
        torch.tensor(weight_principled),
        torch.tensor(valid),
        torch.zeros(len(valid)),  # the gap: not read by the loss
    )


def test_ple_loss_routes_each_pair_and_averages_over_valid_pairs():
    result = losses.ple_loss(
        labels([True, False, False], [True, True, True], [0.9, 0.75, math.nan], [True, True, False]),
        pairs(sums=[[-6.0, -4.0, -5.0], [-3.0, -2.0, -1.0]], means=[[-2.0, -1.0, -1.0], [-1.0, -0.5, -0.2]]),
    )
    rank = -log_sigmoid(-3.0 - (-6.0))  # pair 0: ranked on summed log-probs
    wsft = -(0.75 * -0.5 + 0.25 * -1.0)  # pair 1: weighted SFT on mean log-probs
    assert result.rank_losses.tolist() == pytest.approx([rank, 0.0, 0.0])
    assert result.wsft_losses.tolist() == pytest.approx([0.0, wsft, 0.0])
    assert result.loss.item() == pytest.approx((rank + wsft) / 2)  # pair 2 (NaN reward) is skipped
    # The masks the trainer logs each branch's mean over: the invalid pair is in neither.
    assert result.rank_mask.tolist() == [True, False, False]
    assert result.wsft_mask.tolist() == [False, True, False]


def test_ple_loss_masks_drop_a_ranked_pair_that_is_not_valid():
    result = losses.ple_loss(
        labels([True, True], [True, True], [0.5, 0.5], [True, False]),
        pairs(sums=[[-2.0, -2.0], [-1.0, -1.0]], means=[[-2.0, -2.0], [-1.0, -1.0]]),
    )
    assert result.rank_mask.tolist() == [True, False]
    assert result.wsft_mask.tolist() == [False, False]
    assert result.loss.item() == pytest.approx(-log_sigmoid(1.0))


def test_ple_loss_coefficients_length_normalisation_and_rank_sft():
    result = losses.ple_loss(
        labels([True], [True], [0.5], [True]),
        pairs(sums=[[-6.0], [-3.0]], means=[[-2.0], [-1.0]]),
        length_normalize=True,
        rank_coef=2.0,
        rank_sft_coef=0.5,
    )
    assert result.loss.item() == pytest.approx(2.0 * (-log_sigmoid(-1.0 + 2.0) + 0.5 * 1.0))


def test_ple_loss_prefers_the_plain_answer_when_told():
    result = losses.ple_loss(
        labels([True], [False], [0.5], [True]), pairs(sums=[[-1.0], [-4.0]], means=[[-1.0], [-4.0]])
    )
    assert result.loss.item() == pytest.approx(-log_sigmoid(3.0))


def test_ple_loss_with_no_valid_pair_is_zero_but_differentiable():
    logps = torch.tensor([-1.0], requires_grad=True)
    both = torch.stack([logps, logps])
    result = losses.ple_loss(labels([False], [True], [math.nan], [False]), losses.PairLogps(both, both))
    result.loss.backward()
    assert result.loss.item() == 0.0
    assert logps.grad is not None and logps.grad.item() == 0.0


def test_ple_loss_gradient_pushes_principled_up_and_plain_down_when_ranked():
    plain = torch.tensor([-3.0], requires_grad=True)
    principled = torch.tensor([-3.0], requires_grad=True)
    sums = torch.stack([plain, principled])
    result = losses.ple_loss(labels([True], [True], [0.5], [True]), losses.PairLogps(sums, sums / 3))
    result.loss.backward()
    assert principled.grad.item() == pytest.approx(-0.5)
    assert plain.grad.item() == pytest.approx(0.5)


@pytest.mark.parametrize(
    "loss_type,length_normalize,expected",
    [("sigmoid", False, False), ("sigmoid", True, True), ("dpo", False, False), ("dpo", True, True),
     ("hinge", False, True), ("ipo", False, True)],
)  # fmt: skip
def test_ranks_on_mean_is_the_one_rule_for_sums_or_means(loss_type, length_normalize, expected):
    assert losses.ranks_on_mean(loss_type, length_normalize) is expected


@pytest.mark.parametrize(
    "loss_type,length_normalize,expected_row",
    [("sigmoid", False, "sums"), ("sigmoid", True, "means"), ("hinge", False, "means"), ("ipo", False, "means")],
)
def test_ranking_logps_picks_sums_or_means_by_the_rule(loss_type, length_normalize, expected_row):
    logps = pairs(sums=[[-6.0], [-3.0]], means=[[-2.0], [-1.0]])
    picked = losses.ranking_logps(logps, loss_type, length_normalize)
    assert torch.equal(picked, getattr(logps, expected_row))


@pytest.mark.parametrize("length", [3, 6])
def test_ipo_does_not_grow_with_the_answer_length(length):
    # per-token log-probs constant: policy -1 (chosen) and -2 (rejected), reference -1.5 for both. IPO on per-token
    # means, as TRL's DPO trainer does: margin = (-1 + 1.5) - (-2 + 1.5) = 1, loss (1 - 1 / (2 * 0.1))**2 = 16,
    # whatever the length (on sums it would be (length - 5)**2).
    result = losses.ple_loss(
        labels([True], [True], [0.5], [True]),
        pairs(sums=[[-2.0 * length], [-1.0 * length]], means=[[-2.0], [-1.0]], reference=[[-1.5], [-1.5]]),
        ranking_loss_type="ipo",
        beta=0.1,
    )
    assert result.loss.item() == pytest.approx(16.0)
