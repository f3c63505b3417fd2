"""The ledger of `GRPOConfig` fields: every field GRPO adds to `TrainingArguments` is honoured by PLE, refused with an
error, or ignored on purpose (and documented), and none is left out when TRL adds one."""

import dataclasses
import re
from pathlib import Path

import pytest
from datasets import Dataset
from transformers import TrainerCallback, TrainingArguments
from trl import GRPOConfig

from ple_trl import PLEConfig, PLETrainer
from ple_trl.pairs.ledger import ledger_markdown
from ple_trl.pairs.grpo_fields import GRPO_FIELDS_HONOURED, GRPO_FIELDS_IGNORED, GRPO_ONLY_FIELDS

from helpers import PROMPTS, by_position, make_args, read_labels

DOC = Path(__file__).resolve().parents[1] / "docs" / "grpo_config_fields.md"
TRAINING_ARGUMENTS = {f.name for f in dataclasses.fields(TrainingArguments)}
GRPO_FIELDS = {f.name: f for f in dataclasses.fields(GRPOConfig) if f.name not in TRAINING_ARGUMENTS}
PLE_DEFAULTS = {f.name: f.default for f in dataclasses.fields(PLEConfig)}
TABLES = {"honoured": GRPO_FIELDS_HONOURED, "refused": GRPO_ONLY_FIELDS, "ignored": GRPO_FIELDS_IGNORED}


def short_args(tmp_path, **kwargs):
    """`helpers.make_args` with 4-token answers."""
    return make_args(tmp_path, **{"max_completion_length": 4, **kwargs})


def test_every_grpo_field_is_classified_exactly_once():
    classified = [name for table in TABLES.values() for name in table]
    unclassified = sorted(set(GRPO_FIELDS) - set(classified))
    assert not unclassified, (
        f"GRPOConfig fields that PLE neither honours, refuses nor ignores on purpose: {unclassified}. Add each to "
        "GRPO_FIELDS_HONOURED, GRPO_ONLY_FIELDS or GRPO_FIELDS_IGNORED in src/ple_trl/pairs/grpo_fields.py, and "
        "regenerate docs/grpo_config_fields.md (python -m ple_trl.pairs.ledger)."
    )
    assert sorted(set(classified) - set(GRPO_FIELDS)) == [], "classified fields that GRPOConfig does not have"
    duplicates = sorted({name for name in classified if classified.count(name) > 1})
    assert duplicates == [], f"fields in more than one table: {duplicates}"
    assert all(isinstance(text, str) and text for table in TABLES.values() for text in table.values())


def non_default_value(name):
    """A valid value of the field that differs from PLE's default."""
    choices = {
        "loss_type": "grpo",
        "importance_sampling_level": "sequence",
        "scale_rewards": "batch",
        "multi_objective_aggregation": "normalize_then_sum",
        "vllm_importance_sampling_mode": "token_truncate",
    }
    if name in choices:
        return choices[name]
    default = PLE_DEFAULTS[name]
    if isinstance(default, bool):
        return not default
    if isinstance(default, (int, float)):
        return default + 1
    if default is None:
        annotation = str(GRPO_FIELDS[name].type)
        if "float" in annotation:
            return 0.5
        if "int" in annotation:
            return 3
    raise AssertionError(f"no non-default value for {name}={default!r} ({GRPO_FIELDS[name].type}): add one here")


@pytest.mark.parametrize("name", sorted(GRPO_ONLY_FIELDS))
def test_refused_fields_raise_naming_the_field_and_the_reason(tmp_path, name):
    value = non_default_value(name)
    assert value != PLE_DEFAULTS[name]
    with pytest.raises(ValueError, match=re.escape(f"`{name}={value!r}`")) as error:
        short_args(tmp_path, **{name: value})
    assert GRPO_ONLY_FIELDS[name] in str(error.value)


def test_refused_fields_accept_their_default(tmp_path):
    args = short_args(tmp_path, **{name: PLE_DEFAULTS[name] for name in GRPO_ONLY_FIELDS})
    assert args.ref_model_sync_steps == GRPOConfig.ref_model_sync_steps


def test_the_doc_is_the_ledger_written_from_the_tables():
    # Generated, not mirrored: `python -m ple_trl.pairs.ledger > docs/grpo_config_fields.md` after changing a table.
    assert DOC.read_text() == ledger_markdown(), "docs/grpo_config_fields.md is stale: regenerate it"
    sections, current = {}, None
    for line in DOC.read_text().splitlines():
        if line.startswith("## "):
            current = re.match(r"## (\w+)", line).group(1).lower()
            sections[current] = set()
        elif current and line.startswith("| `"):
            sections[current].add(line.split("`")[1])
    for kind, table in TABLES.items():
        assert sections.get(kind) == set(table), kind


@pytest.mark.parametrize("num_iterations", [1, 2])
def test_num_iterations_reuses_each_round(tmp_path, tiny_model_path, num_iterations):
    """`num_iterations` passes over a round's pairs: 2 optimizer steps take 2 rounds, or 1 round trained twice."""
    trainer = PLETrainer(
        model=tiny_model_path,
        reward_funcs=by_position(0.0, 1.0),
        args=short_args(
            tmp_path, num_iterations=num_iterations, max_completion_length=3, reward_weights=[2.0],
            save_enhanced_labels=True,
        ),
        train_dataset=Dataset.from_dict({"prompt": PROMPTS}),
    )  # fmt: skip
    trainer.train()
    assert trainer.state.global_step == 2
    # The audit log has one record per pair of each generated round, stamped with the step it was generated at: 2
    # pairs at steps 0 and 1 (a round per step), or 2 pairs at step 0 only (the round trained again at step 1).
    records = read_labels(tmp_path)
    assert [record["step"] for record in records] == ([0, 0, 1, 1] if num_iterations == 1 else [0, 0])
    history = trainer.state.log_history
    # `reward_weights` scales the reward (1.0 -> 2.0); `max_completion_length` bounds every answer.
    assert [record["reward_principled"] for record in records] == [2.0] * len(records)
    assert [entry["ple/reward_principled"] for entry in history if "ple/reward_principled" in entry][0] == 2.0
    assert max(entry["completions/max_length"] for entry in history if "completions/max_length" in entry) == 3


def test_shuffle_dataset_orders_the_prompts(tmp_path, tiny_model_path, positivity):
    prompts = [f"tell me about your day {i}" for i in range(8)]
    orders = {}
    for shuffle in (False, True):
        trainer = PLETrainer(
            model=tiny_model_path, reward_funcs=positivity, train_dataset=Dataset.from_dict({"prompt": prompts}),
            args=short_args(tmp_path / str(shuffle), shuffle_dataset=shuffle, per_device_train_batch_size=4),
        )  # fmt: skip
        # The prompts the training dataloader serves, in order.
        orders[shuffle] = [prompts.index(row["prompt"]) for batch in trainer.get_train_dataloader() for row in batch]
    assert orders[False] == list(range(8))
    assert sorted(orders[True]) == list(range(8)) and orders[True] != list(range(8))


def test_trust_remote_code_reaches_the_reference_loaded_from_a_path(
    tmp_path, tiny_model_path, positivity, monkeypatch
):
    import ple_trl.pairs.models as trainer_module

    loads = []
    create_model_from_path = trainer_module.create_model_from_path

    def spy(path, **kwargs):
        loads.append((path, kwargs))
        return create_model_from_path(path, **kwargs)

    monkeypatch.setattr(trainer_module, "create_model_from_path", spy)
    PLETrainer(
        model=tiny_model_path, ref_model=tiny_model_path, reward_funcs=positivity,
        args=short_args(tmp_path, trust_remote_code=True, beta=0.1, ranking_loss_type="dpo"),
        train_dataset=Dataset.from_dict({"prompt": PROMPTS}),
    )  # fmt: skip
    assert [(path, kwargs.get("trust_remote_code")) for path, kwargs in loads] == [(tiny_model_path, True)]


class ReportToAtStepEnd(TrainerCallback):
    """Adds a tracker to `report_to` at the end of each step: after the round's generation and scoring, before the
    step's log."""

    def __init__(self, tracker):
        self.tracker = tracker

    def on_step_end(self, args, state, control, **kwargs):
        args.report_to = [self.tracker]


@pytest.mark.parametrize("unique", [False, True])
def test_log_unique_prompts_drops_repeated_prompts_from_the_tracker_table(
    tmp_path, tiny_model_path, positivity, monkeypatch, unique
):
    """The trainer honours `log_unique_prompts` (the ledger and the doc say so): the table sent to trackio keeps one
    row per prompt, while the parquet file keeps every row."""
    import importlib.machinery
    import sys
    import types

    import pandas as pd

    assert "log_unique_prompts" in GRPO_FIELDS_HONOURED and "log_unique_prompts" not in GRPO_FIELDS_IGNORED
    logged = []
    trackio = types.ModuleType("trackio")  # a stand-in tracker: its table is the data frame it is given
    trackio.__spec__ = importlib.machinery.ModuleSpec("trackio", None)
    trackio.Table, trackio.log = (lambda dataframe: dataframe), (lambda data: logged.append(data))
    monkeypatch.setitem(sys.modules, "trackio", trackio)
    # One round of 4 pairs whose prompts come twice: p0, p1, p0, p1.
    trainer = PLETrainer(
        model=tiny_model_path, reward_funcs=positivity, train_dataset=Dataset.from_dict({"prompt": PROMPTS[:2] * 2}),
        args=short_args(
            tmp_path, max_steps=1, log_completions=True, log_unique_prompts=unique, num_completions_to_print=0,
            per_device_train_batch_size=4, shuffle_dataset=False,
        ),
    )  # fmt: skip
    # trackio is not installed: the run reports to it from the end of its step on, for the table written at the log.
    trainer.add_callback(ReportToAtStepEnd("trackio"))
    trainer.train()
    parquet = pd.read_parquet(tmp_path / "completions" / "completions_00001.parquet")
    rows = list(zip(parquet["prompt"], parquet["plain"], strict=True))
    assert [prompt for prompt, _ in rows] == PROMPTS[:2] * 2  # every row of the round
    assert len(logged) == 1
    table = logged[0]["completions"]
    # With `log_unique_prompts`, the first row of each prompt.
    assert list(zip(table["prompt"], table["plain"], strict=True)) == (rows[:2] if unique else rows)
