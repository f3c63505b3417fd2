"""What PLE logs: GRPO's reward metrics for pairs, what reward functions log with
`log_metric` / `log_extra`, PLE's own completions table, tau at the logged step, and the README's minimal example."""

import json
import logging
import math
import os
import re

import pandas as pd
import pytest
from datasets import Dataset

from ple_trl import PLETrainer

from helpers import PROMPTS, README, logged, make_args


def per_pair_reward(plain_values, principled_values, calls=None):
    """A reward with known values per pair: PLE scores the plain answers of the round, then the principled ones."""

    def reward(prompts, completions, log_metric, log_extra, **kwargs):
        half = len(completions) // 2
        if calls is not None:
            calls.append(len(calls))
            log_metric("my_metric", float(2 * len(calls) - 1))  # 1.0 in the first round, 3.0 in the second
            log_extra("my_col", [f"plain-{i}" for i in range(half)] + [f"principled-{i}" for i in range(half)])
        return plain_values[:half] + principled_values[:half]

    return reward


def test_reward_metrics_of_grpo_are_logged_for_pairs(tmp_path, tiny_model_path):
    # pair 0: both answers 0.5 (no reward spread), pair 1: plain 0.0, principled 1.0
    trainer = PLETrainer(
        model=tiny_model_path,
        reward_funcs=per_pair_reward([0.5, 0.0], [0.5, 1.0]),
        args=make_args(tmp_path, max_steps=1),
        train_dataset=Dataset.from_dict({"prompt": PROMPTS}),
    )
    trainer.train()
    # the four rewards of the round: 0.5, 0.0, 0.5, 1.0 -> mean 0.5, sample std sqrt(0.5 / 3)
    assert logged(trainer, "reward") == [pytest.approx(0.5)]
    assert logged(trainer, "reward_std") == [pytest.approx(math.sqrt(0.5 / 3))]
    assert logged(trainer, "rewards/reward/mean") == [pytest.approx(0.5)]
    assert logged(trainer, "rewards/reward/std") == [pytest.approx(math.sqrt(0.5 / 3))]
    assert logged(trainer, "frac_reward_zero_std") == [pytest.approx(0.5)]  # pair 0 of 2


def test_log_metric_and_log_extra_reach_the_logs_and_the_completions_table(tmp_path, tiny_model_path, capsys, caplog):
    calls = []
    trainer = PLETrainer(
        model=tiny_model_path,
        reward_funcs=per_pair_reward([0.0, 0.25], [1.0, 0.25], calls=calls),
        args=make_args(tmp_path, max_steps=2, log_completions=True),
        train_dataset=Dataset.from_dict({"prompt": PROMPTS}),
    )
    with caplog.at_level(logging.WARNING, logger="ple_trl"):
        trainer.train()
    assert calls == [0, 1]
    # What reward functions log is flushed every round: the second step logs 3.0 (not the mean 2.0 of both rounds),
    # and its table holds this round's 2 `log_extra` values per column (a pile of 4 would be refused with a warning and
    # leave the column empty).
    assert logged(trainer, "my_metric") == [1.0, 3.0]
    assert "log_extra('my_col', ...)" not in caplog.text

    printed = capsys.readouterr().out
    assert "Step 2" in printed and "Advantage" not in printed
    for step in (1, 2):
        table = pd.read_parquet(tmp_path / "completions" / f"completions_{step:05d}.parquet")
        assert list(table.columns) == [
            "step", "prompt", "principle", "plain", "principled", "reward_plain", "reward_principled", "route",
            "weight_principled", "tau", "my_col_plain", "my_col_principled",
        ]  # fmt: skip
        assert len(table) == 2  # one row per pair of the round
        assert table["step"].tolist() == [step - 1] * 2  # the step the pairs were generated at
        assert set(table["prompt"]) <= set(PROMPTS) and set(table["principle"]) == {"be positive and kind"}
        assert table["reward_plain"].tolist() == [0.0, 0.25]
        assert table["reward_principled"].tolist() == [1.0, 0.25]
        assert table["route"].tolist() == ["rank", "wsft"]  # gap 1.0 > tau 0.2; gap 0 is not
        assert table["weight_principled"].tolist() == pytest.approx([1 / (1 + math.exp(-1.0)), 0.5])
        assert table["tau"].tolist() == pytest.approx([0.2, 0.2])
        assert table["my_col_plain"].tolist() == ["plain-0", "plain-1"]
        assert table["my_col_principled"].tolist() == ["principled-0", "principled-1"]
        assert all(isinstance(answer, str) for answer in table["plain"].tolist() + table["principled"].tolist())


def test_tau_is_logged_at_the_step_not_averaged_over_the_window(tmp_path, tiny_model_path, positivity):
    trainer = PLETrainer(
        model=tiny_model_path,
        reward_funcs=positivity,
        args=make_args(
            tmp_path, max_steps=4, logging_steps=2, iteration_unit="steps", steps_per_iteration=1, alpha=0.5
        ),
        train_dataset=Dataset.from_dict({"prompt": PROMPTS * 2}),
    )
    trainer.train()
    # tau at the four rounds: 0.2, 0.1, 0.05, 0.025; logged at steps 2 and 4: the value of the window's last round
    assert logged(trainer, "ple/tau") == pytest.approx([0.1, 0.025])


def readme_minimal_example():
    text = open(README).read()
    section = text.split("## A minimal example", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_minimal_example_runs_and_leaves_something_to_look_at(tmp_path, tiny_model_path, monkeypatch, capsys):
    code = readme_minimal_example()
    assert '"HuggingFaceTB/SmolLM2-135M-Instruct"' in code
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(code.replace('"HuggingFaceTB/SmolLM2-135M-Instruct"', repr(tiny_model_path)), namespace)
    trainer, args = namespace["trainer"], namespace["args"]

    assert args.logging_steps == 1 and args.save_enhanced_labels
    steps = args.max_steps
    assert len(logged(trainer, "loss")) == steps
    # 2 prompts, 2 pairs per step: every step is an epoch, so tau decays at every step
    assert logged(trainer, "ple/tau") == pytest.approx([0.2 * 0.9**k for k in range(steps)])
    # the adapter moved: LoRA's B matrices start at zero
    lora_b = [p for name, p in trainer.model.named_parameters() if "lora_B" in name]
    assert lora_b and all(p.abs().max() > 1e-3 for p in lora_b)
    assert os.path.isfile(tmp_path / "ple-out" / "adapter_model.safetensors")
    records = [json.loads(line) for line in open(tmp_path / "ple-out" / "enhanced_labels.jsonl")]
    assert len(records) == steps * args.per_device_train_batch_size  # one per trained pair
    assert "ple-out/enhanced_labels.jsonl" in capsys.readouterr().out
