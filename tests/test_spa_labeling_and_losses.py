"""Hand-computed checks of SPA's maths (`ple_trl.spa.labeling`, `ple_trl.spa.losses`): best/worst labelling, the margin
history and its confidence threshold, the refinement warm-up, the self-refined DPO loss and the de-coupled logits.
The implicit reward's maths: `tests/test_implicit_reward.py`."""

import json
import math
import random

import pytest
import torch

from ple_trl.ple import losses
from ple_trl.spa import labeling as spa_labeling
from ple_trl.spa import losses as spa


def softplus(x):
    return math.log(1 + math.exp(x))


# -- labelling ------------------------------------------------------------------------------------------------------


def test_label_pairs_best_is_chosen_and_ties_and_non_finite_are_invalid():
    rewards_a = torch.tensor([1.0, 0.0, 2.0, float("nan"), 1.0])
    rewards_b = torch.tensor([0.0, 1.5, 2.0, 0.0, float("-inf")])
    chosen_is_a, chosen_index, margin, valid = spa_labeling.label_pairs(rewards_a, rewards_b)
    # A tie (pair 2) prefers neither answer: invalid like a non-finite reward, never a label.
    assert valid.tolist() == [True, True, False, False, False]
    assert chosen_is_a[:2].tolist() == [True, False] and chosen_index[:2].tolist() == [0, 1]
    assert margin[:2].tolist() == [1.0, 1.5]
    assert all(math.isnan(value) for value in margin[2:].tolist())


def test_select_chosen_rejected_reorders_rows():
    ids_a = torch.tensor([[1, 1], [2, 2]])
    ids_b = torch.tensor([[3, 3], [4, 4]])
    chosen, rejected = spa_labeling.select_chosen_rejected(ids_a, ids_b, torch.tensor([True, False]))
    assert chosen.tolist() == [[1, 1], [4, 4]]
    assert rejected.tolist() == [[3, 3], [2, 2]]


def test_logratio_margin_by_hand():
    h = spa.logratio_margin(torch.tensor([-2.0]), torch.tensor([-3.0]), torch.tensor([-2.5]), torch.tensor([-2.0]))
    assert h.item() == (-2.0 + 2.5) - (-3.0 + 2.0)  # 1.5


# -- threshold and margin history ----------------------------------------------------------------------------------


def test_spa_threshold_is_the_midpoint_rule_not_torch_quantile():
    values = list(range(50))
    random.Random(0).shuffle(values)
    buffer = torch.tensor(values, dtype=torch.float32)
    # sorted s[i] = i; d = int(50 * 0.1) = 5 -> (s[5] + s[6]) / 2
    assert spa.spa_threshold(buffer, 0.1) == 5.5
    # torch.quantile's linear interpolation would give s[4.9] = 4.9: SPA's rule is a different one.
    assert torch.quantile(buffer, 0.1).item() == pytest.approx(4.9)
    # d + 1 is clipped to the last value
    assert spa.spa_threshold(torch.tensor([3.0, 1.0]), 0.9) == 3.0


@pytest.mark.parametrize("quantile", [-0.1, 1.0])
def test_spa_threshold_rejects_bad_quantile(quantile):
    with pytest.raises(ValueError, match="quantile"):
        spa.spa_threshold(torch.ones(3), quantile)


def test_margin_history_threshold_waits_for_a_full_buffer():
    history = spa.MarginHistory(size=50, quantile=0.1)
    for value in range(49, 0, -1):  # 49 values: 49, 48, ..., 1
        history.update(torch.tensor([float(value)]))
    assert len(history) == 49 and not history.is_full
    assert history.threshold == 0.0  # the authors' initial threshold
    history.update(torch.tensor([0.0]))
    assert history.is_full
    assert history.threshold == 5.5


def test_margin_history_appends_the_batch_mean_or_every_pair():
    history = spa.MarginHistory(size=5)
    history.update(torch.tensor([1.0, 3.0]))
    assert history.values == [2.0]
    per_pair = spa.MarginHistory(size=5, per_pair=True)
    per_pair.update(torch.tensor([1.0, 3.0]))
    assert per_pair.values == [1.0, 3.0]


def test_margin_history_keeps_only_the_last_n_and_counts_non_finite():
    history = spa.MarginHistory(size=3, per_pair=True)
    for value in [1.0, 2.0, 3.0, 4.0]:
        history.update(torch.tensor([value]))
    assert history.values == [2.0, 3.0, 4.0]
    assert history.update(torch.tensor([5.0, float("nan"), float("inf")])) == 2
    assert history.values == [3.0, 4.0, 5.0]
    # sorted [3, 4, 5], d = int(3 * 0.1) = 0 -> (3 + 4) / 2
    assert history.threshold == 3.5


def test_margin_history_detaches():
    margins = torch.tensor([1.0, 2.0], requires_grad=True)
    history = spa.MarginHistory(size=1)
    history.update(margins * 2)
    assert history.values == [3.0]


def test_margin_history_state_round_trips_through_json():
    history = spa.MarginHistory(size=4, quantile=0.25, initial_threshold=-1.0, per_pair=True)
    history.update(torch.tensor([4.0, 1.0, 3.0, 2.0]))
    state = json.loads(json.dumps(history.state_dict()))
    restored = spa.MarginHistory()
    restored.load_state_dict(state)
    assert restored.values == [4.0, 1.0, 3.0, 2.0]
    assert (restored.size, restored.quantile, restored.initial_threshold, restored.per_pair) == (4, 0.25, -1.0, True)
    # sorted [1, 2, 3, 4], d = int(4 * 0.25) = 1 -> (2 + 3) / 2
    assert restored.threshold == history.threshold == 2.5
    restored.update(torch.tensor([9.0]))
    assert restored.values == [1.0, 3.0, 2.0, 9.0]


def test_margin_history_load_rejects_incomplete_state():
    with pytest.raises(ValueError, match="missing"):
        spa.MarginHistory().load_state_dict({"values": [1.0]})


@pytest.mark.parametrize("kwargs", [{"size": 0}, {"size": 2.5}, {"quantile": 1.0}, {"initial_threshold": math.nan}])
def test_margin_history_rejects_bad_settings(kwargs):
    with pytest.raises(ValueError):
        spa.MarginHistory(**kwargs)


# -- confidence, warm-up and the refined loss ----------------------------------------------------------------------


def test_confidence_is_strictly_above_the_threshold():
    margins = torch.tensor([-1.0, 0.5, 0.6, 2.0], requires_grad=True)
    z = spa.confidence(margins, 0.5)
    assert z.tolist() == [0.0, 0.0, 1.0, 1.0]
    assert z.dtype == margins.dtype and not z.requires_grad


def test_refinement_is_off_during_the_first_20_percent_of_steps():
    assert [spa.refinement_strength(step, 10) for step in range(4)] == [0.0, 0.0, 0.1, 0.1]
    # 7 * 0.2 = 1.4: steps 0 and 1 are warm-up
    assert [spa.refinement_strength(step, 7, alpha=0.3) for step in range(3)] == [0.0, 0.0, 0.3]
    assert spa.refinement_strength(0, 10, warmup_ratio=0.0) == 0.1


@pytest.mark.parametrize("kwargs", [{"alpha": 0.6}, {"alpha": -0.1}, {"warmup_ratio": 1.5}])
def test_refinement_strength_rejects_bad_values(kwargs):
    with pytest.raises(ValueError):
        spa.refinement_strength(0, 10, **kwargs)


def test_self_refined_loss_by_hand():
    # beta * h = 0.5 * 2 = 1
    h = torch.tensor([2.0, 2.0])
    z = torch.tensor([1.0, 0.0])
    loss = spa.self_refined_dpo_loss(h, z, beta=0.5, alpha=0.1)
    plain = softplus(-1.0)  # -logsigmoid(1) = 0.3132616875...
    assert loss[0].item() == pytest.approx(plain)
    # z = 0: -(0.9) * logsigmoid(1) - 0.1 * logsigmoid(-1)
    assert loss[1].item() == pytest.approx(0.9 * softplus(-1.0) + 0.1 * softplus(1.0))
    assert loss[1].item() == pytest.approx(0.41326168751822286)


def test_self_refined_loss_without_refinement_is_plain_dpo():
    chosen, rejected = torch.tensor([-2.0, -1.0]), torch.tensor([-3.0, -4.0])
    ref_chosen, ref_rejected = torch.tensor([-2.5, -1.0]), torch.tensor([-2.0, -2.0])
    h = spa.logratio_margin(chosen, rejected, ref_chosen, ref_rejected)
    refined = spa.self_refined_dpo_loss(h, torch.zeros(2), beta=0.1, alpha=0.0)
    dpo = losses.ranking_loss(chosen, rejected, "dpo", 0.1, ref_chosen, ref_rejected)
    torch.testing.assert_close(refined, dpo)


def test_self_refined_loss_gradient_flows_through_h_only():
    h = torch.tensor([1.0], requires_grad=True)
    z = torch.tensor([0.0], requires_grad=True)
    loss = spa.self_refined_dpo_loss(h, z, beta=1.0, alpha=0.1)
    loss.sum().backward()
    # d/dx [softplus(-x) + 0.1 x] at x = 1: -sigmoid(-1) + 0.1
    assert h.grad.item() == pytest.approx(-1 / (1 + math.e) + 0.1)
    assert z.grad is None


@pytest.mark.parametrize("kwargs", [{"beta": 0.0}, {"alpha": 0.7}])
def test_self_refined_loss_rejects_bad_values(kwargs):
    with pytest.raises(ValueError):
        spa.self_refined_dpo_loss(torch.zeros(1), torch.zeros(1), **kwargs)


# -- de-coupled noise detection -------------------------------------------------------------------------------------


def test_decoupled_logits_extrapolate_away_from_the_reference():
    policy = torch.tensor([[[2.0, 0.0]]], requires_grad=True)
    reference = torch.tensor([[[1.0, 1.0]]])
    mixed = spa.decoupled_logits(policy, reference, 0.5)
    assert mixed.tolist() == [[[2.5, -0.5]]]  # 1.5 * [2, 0] - 0.5 * [1, 1]
    assert not mixed.requires_grad
    assert spa.decoupled_logits(policy, reference, 0.0).tolist() == [[[2.0, 0.0]]]
    with pytest.raises(ValueError, match="decouple_lambda"):
        spa.decoupled_logits(policy, reference, -1.0)


def test_decoupled_sequence_logps_by_hand():
    policy = torch.tensor([[[2.0, 0.0], [0.0, 0.0]]])
    reference = torch.tensor([[[0.0, 0.0], [0.0, 5.0]]])
    ids = torch.tensor([[0, 1]])
    mask = torch.tensor([[1, 0]])  # the second token is padding
    # lambda = 1: mixed logits [4, 0] -> log p(token 0) = -softplus(-4)
    logps = spa.decoupled_sequence_logps(policy, reference, ids, mask, 1.0)
    assert logps.item() == pytest.approx(-softplus(-4.0), rel=1e-5)  # float32
    # lambda = 0: the policy's own log-prob, -softplus(-2)
    own = spa.decoupled_sequence_logps(policy, reference, ids, mask, 0.0)
    assert own.item() == pytest.approx(-softplus(-2.0), rel=1e-5)
