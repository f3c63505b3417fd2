import math

import pytest
import torch

from ple_trl import labeling


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
