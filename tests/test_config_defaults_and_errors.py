import pytest
from trl import GRPOConfig

from ple_trl import PLEConfig


def make(**kwargs):
    kwargs.setdefault("output_dir", "unused")
    kwargs.setdefault("report_to", "none")
    kwargs.setdefault("bf16", False)
    return PLEConfig(**kwargs)


def test_defaults_follow_the_paper():
    args = make()
    assert isinstance(args, GRPOConfig)
    assert (args.tau0, args.alpha, args.beta) == (0.2, 0.9, 0.0)
    assert args.ranking_loss_type == "sigmoid" and args.sft_weighting == "softmax"
    assert args.num_generations == 2


@pytest.mark.parametrize("pairs,accumulation", [(1, 1), (3, 1), (2, 2)])
def test_batch_sizes_count_pairs(pairs, accumulation):
    args = make(per_device_train_batch_size=pairs, gradient_accumulation_steps=accumulation)
    assert args.per_device_train_batch_size == pairs
    assert args.steps_per_generation == accumulation
    assert args.generation_batch_size == pairs * accumulation  # one process


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(tau0=-0.1), "tau0=-0.1"),
        (dict(alpha=0.0), "alpha=0.0"),
        (dict(alpha=1.5), "alpha=1.5"),
        (dict(principle_template="{principle} only"), "principle_template"),
        (dict(principle_template="{prompt} {oops}"), "principle_template"),
        (dict(ranking_loss_type="kto"), "ranking_loss_type='kto'"),
        (dict(sft_weighting="max"), "sft_weighting='max'"),
        (dict(gap_mode="ratio"), "gap_mode='ratio'"),
        (dict(reward_transform="tanh"), "reward_transform='tanh'"),
        (dict(ranking_loss_type="dpo"), "beta"),
        (dict(principle="a", principles=["b"]), "principles"),
        (dict(iteration_unit="steps"), "steps_per_iteration"),
        (dict(num_generations=4), "num_generations=4"),
        (dict(sft_temperature=0.0), "sft_temperature=0.0"),
        (dict(reward_batch_size=0), "reward_batch_size=0"),
    ],
)
def test_bad_values_are_rejected_with_the_field_and_value(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("[", r"\[")):
        make(**kwargs)


@pytest.mark.parametrize(
    "name,value",
    [
        ("loss_type", "grpo"),
        ("epsilon", 0.3),
        ("scale_rewards", "batch"),
        ("entropy_coef", 0.1),
        ("vllm_importance_sampling_correction", True),
    ],  # fmt: skip
)
def test_grpo_only_knobs_are_rejected_not_ignored(name, value):
    with pytest.raises(ValueError, match=f"`{name}={value!r}` is a GRPO setting that PLE does not use"):
        make(**{name: value})


def test_ple_iterations_spread_over_max_steps():
    args = make(iteration_unit="steps", ple_iterations=4, max_steps=20)
    assert args.steps_per_iteration == 5
