"""Bad input is refused early, with an error that names the argument, the bad value and the fix: the models, the
rewards, the principles, the datasets and the config's numbers. Nothing here trains for more than one or two steps."""

import logging
import math
import re

import pytest
from datasets import Dataset, DatasetDict, IterableDataset
from transformers import AutoModelForCausalLM
from trl import GRPOConfig

from ple_trl import PLETrainer
from ple_trl.data import check_generation_round, prepare_prompt_dataset, prompt_is_empty

from helpers import CHAT_PROMPTS, PROMPTS, by_position, logged, make_args, ple_config, read_labels


# --- models and rewards ---------------------------------------------------------------------------------------------


def test_ref_model_that_is_the_policy_object_is_refused(tmp_path, tiny_model_path, positivity):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_path)
    with pytest.raises(ValueError, match="`model` and `ref_model` cannot be the same object"):
        PLETrainer(
            model=model, ref_model=model, reward_funcs=positivity, processing_class=None,
            args=make_args(tmp_path, beta=0.1, ranking_loss_type="dpo"),
            train_dataset=Dataset.from_dict({"prompt": PROMPTS}),
        )  # fmt: skip
    assert all(p.requires_grad for p in model.parameters())  # refused before anything was frozen


def test_no_reward_is_an_early_error(tmp_path, tiny_model_path):
    with pytest.raises(ValueError, match="reward_model_name_or_path"):
        PLETrainer(
            model=tiny_model_path, args=make_args(tmp_path), train_dataset=Dataset.from_dict({"prompt": PROMPTS})
        )


def test_reward_tokenizer_without_chat_template_is_an_early_error(
    tmp_path, tiny_model_path, tiny_reward_model_no_template_path
):
    with pytest.raises(ValueError, match="no chat template"):
        PLETrainer(
            model=tiny_model_path, reward_funcs=tiny_reward_model_no_template_path, args=make_args(tmp_path),
            train_dataset=Dataset.from_dict({"prompt": CHAT_PROMPTS}),
        )  # fmt: skip


def test_reward_function_with_wrong_number_of_values(tmp_path, tiny_model_path):
    trainer = PLETrainer(
        model=tiny_model_path, reward_funcs=lambda completions, **kw: [1.0], args=make_args(tmp_path),
        train_dataset=Dataset.from_dict({"prompt": PROMPTS}),
    )  # fmt: skip
    with pytest.raises(ValueError, match="returned 1 rewards, but 4 were expected"):
        trainer.train()


def test_ref_model_without_beta_is_an_early_error(tmp_path, tiny_model_path, positivity):
    with pytest.raises(ValueError, match="beta=0"):
        PLETrainer(
            model=tiny_model_path, ref_model=tiny_model_path, reward_funcs=positivity, args=make_args(tmp_path),
            train_dataset=Dataset.from_dict({"prompt": PROMPTS}),
        )  # fmt: skip


# --- beta with a ranking loss that has no reference -----------------------------------------------------------------


@pytest.mark.parametrize("loss_type", ["sigmoid", "hinge"])
def test_beta_with_a_reference_free_ranking_loss_is_refused(loss_type):
    with pytest.raises(ValueError, match=rf"`beta=0.04`.*`ranking_loss_type='{loss_type}'`.*'dpo'.*`beta=0`"):
        ple_config(beta=0.04, ranking_loss_type=loss_type)


def test_a_ported_grpo_config_with_a_kl_coefficient_is_refused():
    grpo = GRPOConfig(output_dir="unused", beta=0.04, bf16=False, report_to="none")
    with pytest.raises(ValueError, match="PLE has no GRPO-style KL term"):
        ple_config(beta=grpo.beta)


# --- a principle column is checked on every row ---------------------------------------------------------------------


def test_an_empty_principle_row_without_a_fallback_is_named_at_construction(tmp_path, tiny_model_path, positivity):
    dataset = Dataset.from_dict({"prompt": PROMPTS, "principle": ["be kind", "be kind", None, "  "]})
    with pytest.raises(ValueError, match=r"`principle` column is empty in rows \[2, 3\]"):
        PLETrainer(
            model=tiny_model_path, reward_funcs=positivity, args=make_args(tmp_path, principle=None),
            train_dataset=dataset,
        )  # fmt: skip


def test_an_empty_principle_row_falls_back_to_the_configured_principle(tmp_path, tiny_model_path, positivity):
    dataset = Dataset.from_dict({"prompt": PROMPTS, "principle": ["be kind", "be kind", None, "be kind"]})
    trainer = PLETrainer(
        model=tiny_model_path, reward_funcs=positivity, train_dataset=dataset,
        args=make_args(tmp_path, principle="be positive", save_enhanced_labels=True),
    )  # fmt: skip
    trainer.train()  # 2 steps of 2 pairs: every row once
    labels = read_labels(tmp_path)
    principle_of = {label["prompt"]: label["principle"] for label in labels}
    assert principle_of == {PROMPTS[0]: "be kind", PROMPTS[1]: "be kind", PROMPTS[2]: "be positive",
                            PROMPTS[3]: "be kind"}  # fmt: skip


def test_an_empty_principle_in_a_stream_is_a_clear_error(tmp_path, tiny_model_path, positivity):
    rows = [{"prompt": p, "principle": "" if i == 1 else "be kind"} for i, p in enumerate(PROMPTS)]
    stream = IterableDataset.from_generator(lambda: iter(rows))
    trainer = PLETrainer(
        model=tiny_model_path, reward_funcs=positivity, train_dataset=stream,
        args=make_args(tmp_path, principle=None, iteration_unit="steps", steps_per_iteration=1),
    )  # fmt: skip
    with pytest.raises(ValueError, match=r"empty `principle` .*tell me about your day"):
        trainer.train()


def test_no_principle_is_an_early_error(tmp_path, tiny_model_path, positivity):
    with pytest.raises(ValueError, match="No principle"):
        PLETrainer(
            model=tiny_model_path, reward_funcs=positivity, args=make_args(tmp_path, principle=None),
            train_dataset=Dataset.from_dict({"prompt": PROMPTS}),
        )  # fmt: skip


# --- datasets too small, empty, with empty prompts, or of the wrong type --------------------------------------------


@pytest.mark.parametrize(
    "num_prompts,kwargs,needed",
    [(1, dict(per_device_train_batch_size=2), 2), (4, dict(gradient_accumulation_steps=8), 16)],
    ids=["one-prompt", "accumulation-8"],
)
def test_a_dataset_smaller_than_one_generation_round_is_refused(
    tmp_path, tiny_model_path, positivity, num_prompts, kwargs, needed
):
    with pytest.raises(ValueError, match=rf"has {num_prompts} prompts?, but one generation round needs {needed}"):
        PLETrainer(
            model=tiny_model_path, reward_funcs=positivity, args=make_args(tmp_path, **kwargs),
            train_dataset=Dataset.from_dict({"prompt": PROMPTS[:num_prompts]}),
        )  # fmt: skip


def test_dataset_without_prompt_is_an_early_error(tmp_path, tiny_model_path, positivity):
    with pytest.raises(ValueError, match="no usable prompt"):
        PLETrainer(
            model=tiny_model_path, reward_funcs=positivity, args=make_args(tmp_path),
            train_dataset=Dataset.from_dict({"text": PROMPTS}),
        )  # fmt: skip


def test_an_empty_dataset_is_a_clear_error(tmp_path, tiny_model_path, positivity):
    with pytest.raises(ValueError, match="`train_dataset` is empty"):
        PLETrainer(
            model=tiny_model_path, reward_funcs=positivity, args=make_args(tmp_path),
            train_dataset=Dataset.from_dict({"prompt": []}),
        )  # fmt: skip


@pytest.mark.parametrize(
    "prompts,rows",
    [
        (["write a review :", "", None, "   "], "[1, 2, 3]"),
        ([[{"role": "user", "content": "hello"}], [], [{"role": "user", "content": " "}]], "[1, 2]"),
    ],
    ids=["text", "chat"],
)
def test_empty_prompts_are_named_at_construction(tmp_path, tiny_model_path, positivity, prompts, rows):
    with pytest.raises(ValueError, match="empty or missing `prompt` in rows " + re.escape(rows)):
        PLETrainer(
            model=tiny_model_path, reward_funcs=positivity, args=make_args(tmp_path),
            train_dataset=Dataset.from_dict({"prompt": prompts}),
        )  # fmt: skip


def test_an_empty_prompt_in_a_stream_is_a_clear_error(tmp_path, tiny_model_path, positivity):
    rows = [{"prompt": "" if i == 1 else p} for i, p in enumerate(PROMPTS)]
    trainer = PLETrainer(
        model=tiny_model_path, reward_funcs=positivity,
        train_dataset=IterableDataset.from_generator(lambda: iter(rows)),
        args=make_args(tmp_path, iteration_unit="steps", steps_per_iteration=1),
    )  # fmt: skip
    with pytest.raises(ValueError, match="empty or missing `prompt`: ''"):
        trainer.train()


def test_a_list_of_rows_is_accepted_as_a_dataset(tmp_path, tiny_model_path, positivity):
    trainer = PLETrainer(
        model=tiny_model_path, reward_funcs=by_position(0.0, 1.0), args=make_args(tmp_path, max_steps=1),
        train_dataset=[{"prompt": p} for p in PROMPTS], eval_dataset=[{"prompt": p} for p in PROMPTS[:2]],
    )  # fmt: skip
    assert isinstance(trainer.train_dataset, Dataset) and trainer.train_dataset["prompt"] == PROMPTS
    trainer.train()
    assert logged(trainer, "ple/rank_fraction") == [1.0]


@pytest.mark.parametrize("bad", [PROMPTS, {"prompt": PROMPTS}], ids=["list-of-str", "dict"])
def test_other_dataset_types_are_refused_with_the_fix(tmp_path, tiny_model_path, positivity, bad):
    with pytest.raises(TypeError, match=rf"`train_dataset` is a {type(bad).__name__}.*Dataset.from_dict"):
        PLETrainer(model=tiny_model_path, reward_funcs=positivity, args=make_args(tmp_path), train_dataset=bad)


# --- principles, template and non-finite numbers --------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(principle=""), "`principle=''`"),
        (dict(principle="   "), "`principle='   '`"),
        (dict(principles=["be kind", " "]), r"`principles=\['be kind', ' '\]`"),
        (dict(principle_template="{prompt}"), "no `{principle}` placeholder"),
        (dict(tau0=math.nan), "`tau0=nan`"),
        (dict(tau0=math.inf), "`tau0=inf`"),
        (dict(alpha=math.nan), "`alpha=nan`"),
        (dict(tau_min=math.nan), "`tau_min=nan`"),
        (dict(sft_temperature=math.inf), "`sft_temperature=inf`"),
        (dict(rank_coef=math.nan), "`rank_coef=nan`"),
        (dict(wsft_coef=math.inf), "`wsft_coef=inf`"),
        (dict(rank_sft_coef=math.nan), "`rank_sft_coef=nan`"),
        (dict(beta=math.nan, ranking_loss_type="dpo"), "`beta=nan`"),
    ],
)
def test_empty_principles_templates_without_principle_and_non_finite_numbers_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ple_config(**kwargs)


# --- batch sizes, reward values and model paths ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(per_device_train_batch_size=0), "`per_device_train_batch_size=0` must be >= 1"),
        (dict(per_device_eval_batch_size=0), "`per_device_eval_batch_size=0` must be >= 1"),
        (dict(max_completion_length=0), "`max_completion_length=0` must be >= 1"),
        (dict(max_completion_length=-3), "`max_completion_length=-3` must be >= 1"),
    ],
)
def test_batch_and_completion_sizes_are_checked_in_the_config(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ple_config(**kwargs)


def test_a_reward_function_returning_strings_is_named(tmp_path, tiny_model_path):
    def verdict(completions, **kwargs):
        return ["good"] * len(completions)

    trainer = PLETrainer(
        model=tiny_model_path, reward_funcs=verdict, args=make_args(tmp_path, max_steps=1),
        train_dataset=Dataset.from_dict({"prompt": PROMPTS}),
    )  # fmt: skip
    with pytest.raises(ValueError, match=r"reward function 'verdict' returned 'good' \(a str\).*float.*None"):
        trainer.train()


def test_a_reward_function_returning_numbers_of_other_types_is_accepted(tmp_path, tiny_model_path):
    import numpy as np
    import torch

    def mixed(completions, **kwargs):
        values = [1, np.float32(0.5), torch.tensor(0.25), None]
        return [values[i % 4] for i in range(len(completions))]

    trainer = PLETrainer(
        model=tiny_model_path, reward_funcs=mixed, args=make_args(tmp_path, max_steps=1),
        train_dataset=Dataset.from_dict({"prompt": PROMPTS}),
    )  # fmt: skip
    trainer.train()
    # answers 0..3 = plain 0, plain 1, principled 0, principled 1: rewards 1, 0.5, 0.25, None -> pair 1 is skipped
    assert logged(trainer, "ple/skipped_pairs") == [1.0]
    assert logged(trainer, "ple/reward_plain") == [1.0] and logged(trainer, "ple/reward_principled") == [0.25]


@pytest.mark.parametrize("argument", ["model", "ref_model", "reward_funcs", "reward_model_name_or_path"])
def test_a_local_path_that_does_not_exist_is_named(tmp_path, tiny_model_path, positivity, argument):
    missing = str(tmp_path / "no-such-model")
    kwargs = dict(model=tiny_model_path, reward_funcs=positivity, args=make_args(tmp_path / "out"))
    if argument == "reward_model_name_or_path":
        kwargs["args"] = make_args(tmp_path / "out", reward_model_name_or_path=missing)
    elif argument == "ref_model":
        kwargs.update(ref_model=missing, args=make_args(tmp_path / "out", beta=0.1, ranking_loss_type="dpo"))
    else:
        kwargs[argument] = missing
    with pytest.raises(ValueError, match=rf"`{argument}`.*the path '{missing}' does not exist"):
        PLETrainer(**kwargs, train_dataset=Dataset.from_dict({"prompt": PROMPTS}))


def test_a_hub_id_is_not_mistaken_for_a_missing_path(tmp_path, positivity):
    # offline: transformers' own error, not ours (a hub id is not a local path)
    with pytest.raises(OSError):
        PLETrainer(
            model="some-org/some-model", reward_funcs=positivity, args=make_args(tmp_path),
            train_dataset=Dataset.from_dict({"prompt": PROMPTS}),
        )  # fmt: skip


def test_an_async_reward_function_stays_async_under_the_check(tmp_path, tiny_model_path):
    async def async_position(completions, **kwargs):
        half = len(completions) // 2
        return [0.0] * half + [1.0] * half

    trainer = PLETrainer(
        model=tiny_model_path, reward_funcs=async_position, args=make_args(tmp_path, max_steps=1),
        train_dataset=Dataset.from_dict({"prompt": PROMPTS}),
    )  # fmt: skip
    assert trainer.reward_func_names == ["async_position"]
    trainer.train()
    assert logged(trainer, "ple/rank_fraction") == [1.0]


# --- the data checks themselves ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "prompt,empty",
    [
        (None, True), ("", True), (" \n", True), ([], True), ([{"role": "user", "content": "  "}], True),
        ("hi", False), ([{"role": "system", "content": ""}, {"role": "user", "content": "hi"}], False),
        ([{"role": "user", "content": [{"type": "image"}]}], False),  # an image alone is something to answer
    ],
)  # fmt: skip
def test_prompt_is_empty_by_hand(prompt, empty):
    assert prompt_is_empty(prompt) is empty


def test_prompts_left_over_by_the_last_round_are_logged(caplog):
    with caplog.at_level(logging.WARNING, logger="ple_trl.data"):
        check_generation_round(num_prompts=7, per_device_pairs=2, steps_per_generation=1, num_processes=1)
    assert "each epoch trains on 6 of them and leaves 1 out" in caplog.text


def test_a_dataset_dict_names_its_splits():
    splits = DatasetDict({"train": Dataset.from_dict({"prompt": PROMPTS})})
    with pytest.raises(TypeError, match=r"splits \['train'\].*`train_dataset=dataset\['train'\]`"):
        prepare_prompt_dataset(splits)
