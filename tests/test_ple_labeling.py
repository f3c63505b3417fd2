"""Hand-computed checks of PLE's label enhancement (`ple_trl.ple.labeling`): the tau schedule, the reward transform,
the routing of each pair and the soft-label weights."""

import math

import pytest
import torch

from ple_trl.ple import labeling


@pytest.mark.parametrize("k", [0, 1, 2, 5, 10])
def test_tau_is_tau0_times_alpha_to_the_k(k):
    assert labeling.tau_at(k, 0.2, 0.9) == pytest.approx(0.2 * 0.9**k)


def test_tau_never_goes_below_its_floor():
    assert labeling.tau_at(100, 0.2, 0.9, tau_min=0.05) == 0.05
    assert labeling.tau_at(1, 0.2, 0.9, tau_min=0.05) == pytest.approx(0.18)


def test_tau_rejects_negative_iterations():
    with pytest.raises(ValueError, match="iteration"):
        labeling.tau_at(-1, 0.2, 0.9)


def test_reward_transforms_by_hand():
    rewards = torch.tensor([0.0, 2.0, 4.0, math.nan])
    assert torch.allclose(labeling.transform_rewards(rewards, "none")[:3], rewards[:3])
    sigmoid = labeling.transform_rewards(rewards, "sigmoid")
    assert sigmoid[0].item() == pytest.approx(0.5)
    assert sigmoid[1].item() == pytest.approx(1 / (1 + math.exp(-2)))
    zscore = labeling.transform_rewards(rewards, "zscore")
    # mean 2, sample std 2 over the finite rewards; NaN stays NaN
    assert zscore[:3].tolist() == pytest.approx([-1.0, 0.0, 1.0])
    assert math.isnan(zscore[3].item())


def test_zscore_of_a_round_without_spread_is_zero():
    assert labeling.transform_rewards(torch.tensor([3.0, 3.0]), "zscore").tolist() == [0.0, 0.0]


def test_unknown_transform_names_the_knob():
    with pytest.raises(ValueError, match="reward_transform='tanh'"):
        labeling.transform_rewards(torch.zeros(2), "tanh")


def test_reward_gap_signed_and_absolute():
    plain, principled = torch.tensor([1.0, 0.5]), torch.tensor([0.5, 1.0])
    assert labeling.reward_gap(plain, principled, "signed").tolist() == [-0.5, 0.5]
    assert labeling.reward_gap(plain, principled, "absolute").tolist() == [0.5, 0.5]


def test_routing_for_known_gaps():
    plain = torch.tensor([0.0, 0.0, 0.5, 0.0, math.nan])
    principled = torch.tensor([0.3, 0.1, 0.0, 0.2, 1.0])
    rank, preferred, valid = labeling.route_pairs(plain, principled, tau=0.2, gap_mode="signed")
    # gap 0.3 > 0.2 ranked; 0.1 not; -0.5 not; 0.2 is not *more* than tau; NaN skipped
    assert rank.tolist() == [True, False, False, False, False]
    assert valid.tolist() == [True, True, True, True, False]
    assert preferred.all()


def test_absolute_routing_prefers_the_better_answer():
    plain, principled = torch.tensor([0.9, 0.0]), torch.tensor([0.0, 0.9])
    rank, preferred, _ = labeling.route_pairs(plain, principled, tau=0.2, gap_mode="absolute")
    assert rank.tolist() == [True, True]
    assert preferred.tolist() == [False, True]


def test_softmax_weights_by_hand():
    plain, principled = torch.tensor([0.0, 1.0]), torch.tensor([1.0, 1.0])
    weights = labeling.soft_label_weights(plain, principled, "softmax", temperature=1.0)
    expected = math.exp(1) / (math.exp(1) + math.exp(0))
    assert weights.tolist() == pytest.approx([expected, 0.5])
    weights_t2 = labeling.soft_label_weights(plain, principled, "softmax", temperature=2.0)
    assert weights_t2[0].item() == pytest.approx(math.exp(0.5) / (math.exp(0.5) + 1))


def test_linear_and_equal_weights():
    plain, principled = torch.tensor([1.0, 3.0]), torch.tensor([3.0, 1.0])
    assert labeling.soft_label_weights(plain, principled, "linear").tolist() == [0.75, 0.25]
    assert labeling.soft_label_weights(plain, principled, "equal").tolist() == [0.5, 0.5]


def test_linear_weights_need_positive_rewards():
    with pytest.raises(ValueError, match="reward_transform='sigmoid'"):
        labeling.soft_label_weights(torch.tensor([-1.0]), torch.tensor([1.0]), "linear")


def test_weights_carry_no_gradient():
    principled = torch.tensor([1.0], requires_grad=True)
    assert not labeling.soft_label_weights(torch.tensor([0.0]), principled).requires_grad


@pytest.mark.parametrize("transform", ["none", "sigmoid", "zscore"])
def test_non_finite_rewards_become_nan_and_leave_the_others_alone(transform):
    rewards = torch.tensor([0.0, 2.0, 4.0, math.inf, -math.inf, math.nan])
    transformed = labeling.transform_rewards(rewards, transform)
    assert torch.isnan(transformed[3:]).all()
    finite = {"none": [0.0, 2.0, 4.0], "sigmoid": [0.5, 1 / (1 + math.exp(-2)), 1 / (1 + math.exp(-4))],
              "zscore": [-1.0, 0.0, 1.0]}[transform]  # fmt: skip
    assert transformed[:3].tolist() == pytest.approx(finite)


def test_zscore_with_an_infinite_reward_routes_the_finite_pairs():
    plain = torch.tensor([0.0, 0.0, 1.0])
    principled = torch.tensor([2.0, math.inf, 1.0])
    transformed = labeling.transform_rewards(torch.stack([plain, principled]), "zscore")
    rank, _, valid = labeling.route_pairs(transformed[0], transformed[1], tau=0.2)
    # finite rewards 0, 0, 1, 2, 1: mean 0.8, sample std sqrt(0.7); pair 0's gap 2 / sqrt(0.7) > 0.2
    assert valid.tolist() == [True, False, True]
    assert rank.tolist() == [True, False, False]
    assert (transformed[1, 0] - transformed[0, 0]).item() == pytest.approx(2 / math.sqrt(0.7), rel=1e-5)


def test_routing_choices_are_defined_with_the_routing_rule():
    assert labeling.ROUTINGS == ("threshold", "rank_all", "wsft_all")
    with pytest.raises(ValueError, match="routing='always'"):
        labeling.route_pairs(torch.zeros(1), torch.zeros(1), 0.2, routing="always")


@pytest.mark.parametrize("gap_mode", ["signed", "absolute"])
def test_rank_all_ranks_every_valid_pair_and_prefers_the_higher_reward(gap_mode):
    plain = torch.tensor([0.9, 0.0, 0.5, math.nan])
    principled = torch.tensor([0.0, 0.9, 0.5, 1.0])
    rank, preferred, valid = labeling.route_pairs(plain, principled, tau=0.2, gap_mode=gap_mode, routing="rank_all")
    assert rank.tolist() == [True, True, True, False]
    assert preferred[:3].tolist() == [
        False,
        True,
        True,
    ]  # the plain answer wins where it scored higher; ties: principled
    assert valid.tolist() == [True, True, True, False]


def test_wsft_all_ranks_no_pair():
    rank, _, valid = labeling.route_pairs(
        torch.tensor([0.0, 0.0]), torch.tensor([5.0, math.nan]), 0.2, routing="wsft_all"
    )
    assert rank.tolist() == [False, False] and valid.tolist() == [True, False]


def test_enhance_routes_weights_and_gaps_by_hand():
    plain = torch.tensor([0.0, 0.0, 1.0, math.nan])
    principled = torch.tensor([0.5, 0.1, 0.0, 1.0])
    labels = labeling.enhance(plain, principled, 0.2)
    assert labels.rank_mask.tolist() == [True, False, False, False]  # gaps 0.5 > 0.2; 0.1 and -1 are not
    assert labels.principled_preferred.tolist() == [True, True, True, True]
    assert labels.valid.tolist() == [True, True, True, False]
    sigmoid = [1 / (1 + math.exp(-gap)) for gap in (0.5, 0.1, -1.0)]
    assert labels.weight_principled[:3].tolist() == pytest.approx(sigmoid)
    assert math.isnan(labels.weight_principled[3].item())
    assert labels.gap[:3].tolist() == pytest.approx([0.5, 0.1, -1.0])


def test_enhance_transforms_the_rewards_before_routing_and_weighting():
    # sigmoid(0.5) - sigmoid(0) = 0.1225 < 0.2: ranked on raw rewards, not on transformed ones.
    labels = labeling.enhance(torch.tensor([0.0]), torch.tensor([0.5]), 0.2, reward_transform="sigmoid")
    assert labels.rank_mask.tolist() == [False]
    gap = 1 / (1 + math.exp(-0.5)) - 0.5
    assert labels.gap.item() == pytest.approx(gap)
    assert labels.weight_principled.item() == pytest.approx(1 / (1 + math.exp(-gap)))


def test_enhance_with_absolute_gaps_prefers_the_higher_reward():
    labels = labeling.enhance(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 0.1]), 0.2, gap_mode="absolute")
    assert labels.rank_mask.tolist() == [True, False]
    assert labels.principled_preferred.tolist() == [False, True]
    assert labels.gap.tolist() == pytest.approx([-1.0, 0.1])  # the logged gap stays signed


@pytest.mark.parametrize("routing,ranked", [("rank_all", [True, True]), ("wsft_all", [False, False])])
def test_enhance_applies_the_routing_ablations(routing, ranked):
    labels = labeling.enhance(torch.tensor([0.0, 0.9]), torch.tensor([0.9, 0.0]), 0.2, routing=routing)
    assert labels.rank_mask.tolist() == ranked
    if routing == "rank_all":
        assert labels.principled_preferred.tolist() == [True, False]


def test_enhance_weights_follow_sft_weighting_and_temperature():
    plain, principled = torch.tensor([0.25]), torch.tensor([0.75])
    assert labeling.enhance(plain, principled, 0.9, sft_weighting="linear").weight_principled.item() == 0.75
    assert labeling.enhance(plain, principled, 0.9, sft_weighting="equal").weight_principled.item() == 0.5
    soft = labeling.enhance(plain, principled, 0.9, sft_temperature=0.5).weight_principled.item()
    assert soft == pytest.approx(1 / (1 + math.exp(-1.0)))


def test_enhanced_labels_select_picks_the_same_pairs_in_every_field():
    labels = labeling.enhance(torch.tensor([0.0, 0.0, 0.0]), torch.tensor([0.5, 0.1, 0.3]), 0.2)
    local = labels.select(slice(1, 3))
    assert local.rank_mask.tolist() == [False, True]
    assert local.gap.tolist() == pytest.approx([0.1, 0.3])
    assert all(field.shape == (2,) for field in local)
