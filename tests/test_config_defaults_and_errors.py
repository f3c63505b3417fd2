"""`PLEConfig` and `SPAConfig`: their defaults (the papers'), their checks (a bad value is refused with the field and
the value), and the config each trainer takes (its own by default, another method's refused with the fix)."""

import os

import pytest
from datasets import Dataset
from trl import GRPOConfig

from ple_trl import PLEConfig, PLETrainer, SPAConfig, SPATrainer

from helpers import NUMBERED_PROMPTS, PROMPTS, SPA_PROMPTS, ple_config


def test_defaults_follow_the_paper():
    args = ple_config()
    assert isinstance(args, GRPOConfig)
    assert (args.tau0, args.alpha, args.beta) == (0.2, 0.9, 0.0)
    assert args.ranking_loss_type == "sigmoid" and args.sft_weighting == "softmax"
    assert args.num_generations == 2


@pytest.mark.parametrize("pairs,accumulation", [(1, 1), (3, 1), (2, 2)])
def test_batch_sizes_count_pairs(pairs, accumulation):
    args = ple_config(per_device_train_batch_size=pairs, gradient_accumulation_steps=accumulation)
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
        ple_config(**kwargs)


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
        ple_config(**{name: value})


def test_ple_iterations_spread_over_max_steps():
    args = ple_config(iteration_unit="steps", ple_iterations=4, max_steps=20)
    assert args.steps_per_iteration == 5


# --- the implicit reward and SPA ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("config_class", "kwargs", "match"),
    [
        (PLEConfig, {"reward_source": "rm"}, "Unknown `reward_source='rm'`"),
        (PLEConfig, {"implicit_reward_judge": "seed"}, "Unknown `implicit_reward_judge='seed'`"),
        (PLEConfig, {"beta_judge": 0.0}, "`beta_judge=0.0` must be a finite number > 0"),
        (SPAConfig, {"beta": 0.0}, "`beta=0.0` must be > 0"),
        (SPAConfig, {"refinement_alpha": 0.6}, r"`refinement_alpha=0.6` must lie in \[0, 0.5\]"),
        (SPAConfig, {"refinement_warmup_ratio": 1.5}, r"`refinement_warmup_ratio=1.5` must lie in \[0, 1\]"),
        (SPAConfig, {"confidence_quantile": 1.0}, r"`confidence_quantile=1.0` must lie in \[0, 1\)"),
        (SPAConfig, {"margin_history_size": 0}, "`margin_history_size=0` must be an integer >= 1"),
        (SPAConfig, {"decouple_lambda": -0.1}, "`decouple_lambda=-0.1` must be >= 0"),
        (SPAConfig, {"sync_ref_model": True}, "`sync_ref_model=True` is a GRPO setting"),
    ],
)
def test_config_errors(tmp_path, config_class, kwargs, match):
    with pytest.raises(ValueError, match=match):
        config_class(output_dir=str(tmp_path), use_cpu=True, bf16=False, **kwargs)


@pytest.mark.parametrize("field", ["principle", "tau0", "reward_source", "ranking_loss_type"])
def test_spa_config_has_no_ple_field(tmp_path, field):
    with pytest.raises(TypeError, match=f"unexpected keyword argument '{field}'"):
        SPAConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, **{field: "x"})


def test_spa_config_defaults(tmp_path):
    args = SPAConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False)
    assert (args.temperature, args.beta, args.refinement_alpha, args.refinement_warmup_ratio) == (0.7, 0.1, 0.1, 0.2)
    assert (args.confidence_quantile, args.margin_history_size, args.implicit_reward_judge) == (0.1, 50, "iteration")
    assert args.num_generations == 2


# --- the config a trainer takes -------------------------------------------------------------------------------------


def test_spa_trainer_needs_spa_config(tmp_path, tiny_model_path):
    args = PLEConfig(output_dir=str(tmp_path), principle="be kind", use_cpu=True, bf16=False)
    with pytest.raises(TypeError, match="SPATrainer needs an `SPAConfig`"):
        SPATrainer(model=tiny_model_path, args=args, train_dataset={"prompt": SPA_PROMPTS})


def test_default_args_are_the_trainers_own_config(tmp_path, tiny_model_path, init_model_path, positivity, monkeypatch):
    """`args=None` gives the trainer's own config, saved to `<model name>-<method>` (the last part of the model's
    path or hub id, as TRL names its default `output_dir`)."""
    monkeypatch.chdir(tmp_path)
    name = os.path.basename(tiny_model_path)
    # 8 pairs: one round of the default batch size
    dataset = Dataset.from_dict({"prompt": NUMBERED_PROMPTS, "principle": ["be kind"] * len(NUMBERED_PROMPTS)})
    spa = SPATrainer(model=tiny_model_path, ref_model=init_model_path, train_dataset=dataset)
    assert (type(spa.args), spa.args.output_dir, spa.args.temperature) == (SPAConfig, f"{name}-SPA", 0.7)
    ple = PLETrainer(model=tiny_model_path, reward_funcs=positivity, train_dataset=dataset)
    assert (type(ple.args), ple.args.output_dir) == (PLEConfig, f"{name}-PLE")


def test_args_of_another_method_are_an_early_error(tmp_path, tiny_model_path, positivity):
    with pytest.raises(TypeError, match="`args` is a GRPOConfig; PLETrainer needs a `PLEConfig`"):
        PLETrainer(
            model=tiny_model_path, reward_funcs=positivity, args=GRPOConfig(output_dir=str(tmp_path), bf16=False),
            train_dataset=Dataset.from_dict({"prompt": PROMPTS}),
        )  # fmt: skip
