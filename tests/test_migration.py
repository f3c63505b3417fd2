"""Coming from `DPOTrainer`/`SFTTrainer`: `DPOConfig`/`SFTConfig` names with a PLE meaning are mapped, the others are
refused with the PLE knob to use, a DPO config ported by `to_dict()` trains, and so does a `DPOTrainer` script with the
class renamed."""

import dataclasses
import os

import pytest
from datasets import Dataset
from peft import LoraConfig
from transformers import AutoTokenizer
from trl import DPOConfig, GRPOConfig, SFTConfig

from ple_trl import PLEConfig, PLETrainer
from ple_trl.pairs.grpo_fields import MIGRATED_FIELDS

from helpers import DATASET_FORMATS, logged, make_args

GRPO_LOSS_TYPE = next(f.default for f in dataclasses.fields(GRPOConfig) if f.name == "loss_type")
COMMON = dict(bf16=False, report_to="none", use_cpu=True, save_strategy="no", gradient_checkpointing=False)


def ported_args(tmp_path, **kwargs):
    """A `PLEConfig` as a DPO/SFT user writes it: their fields, no tiny-run settings."""
    return PLEConfig(output_dir=str(tmp_path), principle="be positive and kind", **{**COMMON, **kwargs})


# --- loss_type ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "loss_type, expected",
    [("sigmoid", "dpo"), (["sigmoid"], "dpo"), ("ipo", "ipo"), (["ipo"], "ipo")],
)
def test_dpo_loss_types_with_a_ple_meaning_are_mapped(tmp_path, loss_type, expected):
    args = ported_args(tmp_path, loss_type=loss_type, beta=0.1)
    assert args.ranking_loss_type == expected and args.beta == 0.1
    assert args.loss_type == GRPO_LOSS_TYPE  # GRPO's own knob is left at its (unused) default


def test_dpo_loss_type_and_the_same_ranking_loss_type_agree(tmp_path):
    assert ported_args(tmp_path, loss_type="sigmoid", ranking_loss_type="dpo", beta=0.2).ranking_loss_type == "dpo"


@pytest.mark.parametrize("loss_type", ["hinge", "robust", "nll", ["sigmoid", "sft"], ["apo_zero"]])
def test_dpo_and_sft_loss_types_without_a_ple_meaning_are_refused(tmp_path, loss_type):
    with pytest.raises(ValueError, match=r"`loss_type=.*` has no PLE equivalent.*`ranking_loss_type`.*sft_weighting"):
        ported_args(tmp_path, loss_type=loss_type, beta=0.1)


def test_dpo_sigmoid_needs_beta(tmp_path):
    with pytest.raises(ValueError, match=r"loss_type='sigmoid'.*ranking_loss_type='dpo'.*beta > 0.*got `beta=0.0`"):
        ported_args(tmp_path, loss_type="sigmoid")


def test_dpo_loss_type_conflicting_with_ranking_loss_type_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"means `ranking_loss_type='dpo'`, but `ranking_loss_type='ipo'`"):
        ported_args(tmp_path, loss_type="sigmoid", ranking_loss_type="ipo", beta=0.1)


def test_a_grpo_loss_type_keeps_the_grpo_refusal(tmp_path):
    with pytest.raises(ValueError, match="`loss_type='grpo'` is a GRPO setting that PLE does not use"):
        ported_args(tmp_path, loss_type="grpo")


# --- max_length -----------------------------------------------------------------------------------------------------


def test_max_length_is_accepted_when_the_ple_caps_keep_within_it(tmp_path):
    # 512 + 24 = 536 tokens at most: DPO/SFT would never truncate, so the value asks for nothing more.
    ported_args(tmp_path, max_length=536, max_prompt_length=512, max_completion_length=24)
    ported_args(tmp_path, max_length=None)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(max_length=535, max_prompt_length=512, max_completion_length=24), r"longer than 535 tokens"),
        (dict(max_length=1024, max_prompt_length=None, max_completion_length=24), r"max_prompt_length=None"),
    ],
)
def test_max_length_that_would_truncate_points_to_the_two_ple_caps(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=rf"`max_length={kwargs['max_length']}`.*max_prompt_length.*{match}"):
        ported_args(tmp_path, **kwargs)


# --- the other DPO/SFT fields ---------------------------------------------------------------------------------------

REFUSED = {
    "truncation_mode": ("keep_end", "max_prompt_length"),
    "label_smoothing": (0.1, "sft_weighting"),
    "loss_weights": ([0.8, 0.2], "rank_coef"),
    "ld_alpha": (0.5, "length_normalize"),
    "use_weighting": (True, "sft_weighting"),
    "f_divergence_type": ("js_divergence", "beta"),
    "f_alpha_divergence_coef": (0.3, "beta"),
    "discopop_tau": (0.1, "ranking_loss_type"),
    "precompute_ref_log_probs": (True, "new answers every round"),
    "precompute_ref_batch_size": (8, "new answers every round"),
    "padding_free": (True, "pad_to_multiple_of"),
    "pad_token": ("<pad>", "tokenizer.pad_token"),
    "eos_token": ("</s>", "eos_token_id"),
    "chat_template_path": ("template.jinja", "tokenizer.chat_template"),
    "dataset_num_proc": (4, "generation round"),
    "dataset_kwargs": ({"skip_prepare_dataset": True}, "prepare the dataset"),
    "dataset_text_field": ("content", "`prompt` column"),
    "packing": (True, "cannot be packed"),
    "packing_strategy": ("wrapped", "cannot be packed"),
    "eval_packing": (True, "cannot be packed"),
    "completion_only_loss": (False, "answers only"),
    "assistant_only_loss": (True, "generated answer only"),
    "activation_offloading": (True, "gradient_checkpointing"),
}


def test_every_migrated_field_has_a_refusal_test():
    assert set(REFUSED) | {"max_length"} == set(MIGRATED_FIELDS)


@pytest.mark.parametrize("name", list(REFUSED))
def test_dpo_sft_fields_are_refused_with_the_ple_knob(tmp_path, name):
    value, pointer = REFUSED[name]
    with pytest.raises(ValueError, match=rf"`{name}=.*` is a DPO/SFT setting that PLE does not have: .*{pointer}"):
        ported_args(tmp_path, **{name: value})


@pytest.mark.parametrize("name", list(REFUSED))
def test_dpo_sft_defaults_and_none_are_accepted(tmp_path, name):
    for value in MIGRATED_FIELDS[name][0]:
        ported_args(tmp_path, **{name: value})


def test_migrated_names_are_not_ple_settings(tmp_path):
    args = ported_args(tmp_path, packing=False, label_smoothing=0.0)
    names = {f.name for f in dataclasses.fields(PLEConfig)}
    assert not names & set(MIGRATED_FIELDS)  # not listed by `ple-trl train --help`
    assert not set(args.to_dict()) & set(MIGRATED_FIELDS)  # nor saved with the run's arguments


# --- whole configs ported with to_dict() -----------------------------------------------------------------------------


def test_sft_config_ported_by_to_dict_refuses_only_its_loss(tmp_path):
    sft = SFTConfig(output_dir=str(tmp_path), **COMMON).to_dict()
    with pytest.raises(ValueError, match="`loss_type='nll'` has no PLE equivalent"):
        PLEConfig(principle="be kind", **sft)
    del sft["loss_type"]
    args = PLEConfig(principle="be kind", **sft)
    assert args.learning_rate == 2e-5 and args.ranking_loss_type == "sigmoid"  # SFT's learning rate is carried


def test_dpo_config_ported_by_to_dict_trains(tmp_path, tiny_model_path, positivity):
    dpo = DPOConfig(
        output_dir=str(tmp_path), per_device_train_batch_size=2, max_steps=1, learning_rate=1e-2, logging_steps=1,
        seed=0, **COMMON,
    )  # fmt: skip
    # DPO has one `max_length` (1024 by default); PLE caps answers separately, here short for a fast test.
    args = PLEConfig(principle="be positive and kind", **{**dpo.to_dict(), "max_completion_length": 6})
    # DPO's default loss (`["sigmoid"]`, beta 0.1, with a reference model) is PLE's reference-anchored "dpo".
    assert (args.ranking_loss_type, args.beta) == ("dpo", 0.1)
    dataset = Dataset.from_dict(
        {"prompt": ["write a review of the movie"] * 4, "chosen": ["good"] * 4, "rejected": ["bad"] * 4}
    )
    trainer = PLETrainer(model=tiny_model_path, reward_funcs=positivity, args=args, train_dataset=dataset)
    assert trainer.ref_model is not None
    trainer.train()
    assert trainer.state.global_step == 1
    assert any("loss" in entry for entry in trainer.state.log_history)


def test_dpo_script_runs_after_renaming_the_class(tmp_path, tiny_model_path, positivity):
    """What a `DPOTrainer(model=..., args=..., train_dataset=..., processing_class=..., peft_config=...)` script
    becomes."""
    dataset = Dataset.from_dict(DATASET_FORMATS["preference"])
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    trainer = PLETrainer(
        model=tiny_model_path,
        args=make_args(tmp_path, max_steps=1),
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", task_type="CAUSAL_LM"),
        reward_funcs=positivity,
    )
    trainer.train()
    assert logged(trainer, "loss")
    trainer.create_model_card(model_name="ple-model")
    card = open(os.path.join(tmp_path, "README.md")).read()
    assert "2408.02599" in card and "PLE" in card
