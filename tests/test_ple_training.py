"""`PLETrainer` trains on tiny models: every parameter moves (LoRA: the adapter only), PLE's metrics are logged,
reward models and functions are combined, gradient accumulation keeps a pair whole, every dataset format TRL users
have trains and evaluates, the reward sees the plain prompt while generation sees the principle, and a long prompt is
cut from the left without losing the principle."""

import math
import os

import pytest
import torch
from datasets import Dataset
from peft import LoraConfig
from trl import GRPOTrainer

from ple_trl import PLETrainer

from helpers import (
    CHAT_PROMPTS,
    DATASET_FORMATS,
    PROMPTS,
    assert_all_changed,
    by_position,
    logged,
    make_args,
    read_labels,
    snapshot,
)


def test_is_a_grpo_trainer():
    assert issubclass(PLETrainer, GRPOTrainer)


@pytest.mark.parametrize("prompts", [PROMPTS, CHAT_PROMPTS], ids=["plain", "chat"])
def test_training_changes_every_parameter_and_logs_ple_metrics(tmp_path, tiny_model_path, positivity, prompts):
    trainer = PLETrainer(
        model=tiny_model_path,
        reward_funcs=positivity,
        args=make_args(tmp_path),
        train_dataset=Dataset.from_dict({"prompt": prompts}),
    )
    before = snapshot(trainer.model)
    trainer.train()
    assert_all_changed(trainer, before)
    assert logged(trainer, "loss") and all(math.isfinite(v) for v in logged(trainer, "loss"))
    for key in ["ple/tau", "ple/rank_fraction", "ple/reward_plain", "ple/reward_principled", "ple/reward_gap",
                "ple/skipped_pairs"]:  # fmt: skip
        assert len(logged(trainer, key)) == 2, key


def test_reward_model_with_its_own_tokenizer_and_a_reward_function(tmp_path, tiny_model_path, tiny_reward_model_path):
    trainer = PLETrainer(
        model=tiny_model_path,
        reward_funcs=[tiny_reward_model_path, by_position(0.0, 1.0)],
        args=make_args(tmp_path, max_steps=1, reward_weights=[1.0, 0.5]),
        train_dataset=Dataset.from_dict({"prompt": CHAT_PROMPTS}),
    )
    assert trainer.reward_processing_classes[0].pad_token == "[PAD]"  # the reward model's own tokenizer
    trainer.train()
    plain, principled = logged(trainer, "ple/reward_plain")[0], logged(trainer, "ple/reward_principled")[0]
    reward_model_mean = logged(trainer, f"rewards/{os.path.basename(tiny_reward_model_path)}/mean")[0]
    # mean of (rm + 0.5 * positional) over both halves = rm mean + 0.5 * mean(0, 1)
    assert (plain + principled) / 2 == pytest.approx(reward_model_mean + 0.25, abs=1e-5)


def test_reward_model_from_config_path(tmp_path, tiny_model_path, tiny_reward_model_path):
    trainer = PLETrainer(
        model=tiny_model_path,
        args=make_args(tmp_path, max_steps=1, reward_model_name_or_path=tiny_reward_model_path),
        train_dataset=Dataset.from_dict({"prompt": PROMPTS}),
    )
    trainer.train()
    assert len(trainer.reward_funcs) == 1 and isinstance(trainer.reward_funcs[0], torch.nn.Module)
    assert math.isfinite(logged(trainer, "ple/reward_plain")[0])


def test_lora_trains_only_the_adapter(tmp_path, tiny_model_path, positivity):
    trainer = PLETrainer(
        model=tiny_model_path,
        reward_funcs=positivity,
        args=make_args(tmp_path),
        train_dataset=Dataset.from_dict({"prompt": PROMPTS}),
        peft_config=LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", task_type="CAUSAL_LM"),
    )
    before = snapshot(trainer.model)
    assert before and all("lora" in name for name in before)
    trainer.train()
    changed = [n for n, p in trainer.model.named_parameters() if n in before and not torch.equal(p, before[n])]
    assert any("lora_B" in name for name in changed)


def test_gradient_accumulation_keeps_pairs_whole(tmp_path, tiny_model_path, positivity):
    trainer = PLETrainer(
        model=tiny_model_path,
        reward_funcs=positivity,
        args=make_args(tmp_path, gradient_accumulation_steps=2, max_steps=1, save_enhanced_labels=True),
        train_dataset=Dataset.from_dict({"prompt": PROMPTS}),
    )
    before = snapshot(trainer.model)
    trainer.train()
    assert_all_changed(trainer, before)
    micro_batches = trainer._buffered_inputs
    assert len(micro_batches) == 2
    for batch in micro_batches:
        assert batch["prompt_ids"].shape[0] == 2 and batch["completion_ids"].shape[:2] == (2, 2)
        assert batch["rank_mask"].shape == batch["weight_principled"].shape == (2,)
    # one generation round for both micro-steps, every pair labelled once
    labels = read_labels(tmp_path)
    assert sorted(label["prompt"] for label in labels) == sorted(PROMPTS)


@pytest.mark.parametrize("name", list(DATASET_FORMATS))
def test_dataset_formats(tmp_path, tiny_model_path, name):
    seen = []

    def reward(prompts, completions, **kwargs):
        seen.extend(prompts)
        return [0.0] * len(prompts)

    trainer = PLETrainer(
        model=tiny_model_path, reward_funcs=reward, args=make_args(tmp_path, max_steps=1),
        train_dataset=Dataset.from_dict(DATASET_FORMATS[name]),
    )  # fmt: skip
    trainer.train()
    texts = [p if isinstance(p, str) else p[-1]["content"] for p in seen]
    assert len(texts) == 4 and set(texts) <= set(PROMPTS)  # the plain prompts, never the principle


@pytest.mark.parametrize("name", ["messages", "preference"])
def test_evaluate_accepts_every_training_format(tmp_path, tiny_model_path, name):
    trainer = PLETrainer(
        model=tiny_model_path, reward_funcs=by_position(0.0, 1.0),
        train_dataset=Dataset.from_dict({"prompt": PROMPTS}),
        args=make_args(tmp_path, per_device_eval_batch_size=2),
    )  # fmt: skip
    metrics = trainer.evaluate(eval_dataset=Dataset.from_dict(DATASET_FORMATS[name]))
    assert metrics["eval_ple/rank_fraction"] == 1.0
    assert metrics["eval_ple/reward_gap"] == pytest.approx(1.0)
    by_name = trainer.evaluate(eval_dataset={"held_out": Dataset.from_dict(DATASET_FORMATS[name])})
    assert "eval_held_out_loss" in by_name
    assert by_name["eval_ple/rank_fraction"] == 1.0  # GRPO's `log` prefixes its metrics with `eval_` only


def test_reward_never_sees_the_principle_and_principle_column_overrides(tmp_path, tiny_model_path):
    seen = []

    def reward(prompts, completions, principle, **kwargs):
        seen.append((prompts, principle))
        return [0.0] * len(prompts)

    trainer = PLETrainer(
        model=tiny_model_path, reward_funcs=reward, args=make_args(tmp_path, max_steps=1, save_enhanced_labels=True),
        train_dataset=Dataset.from_dict({"prompt": PROMPTS, "principle": ["be kind"] * 4}),
    )  # fmt: skip
    trainer.train()
    prompts, principles = seen[0]
    assert all("kind" not in p for p in prompts)
    labels = read_labels(tmp_path)
    assert {label["principle"] for label in labels} == {"be kind"}


def test_principled_prompt_reaches_generation_but_not_the_loss(tmp_path, tiny_model_path, positivity):
    trainer = PLETrainer(
        model=tiny_model_path, reward_funcs=positivity, args=make_args(tmp_path, max_steps=1),
        train_dataset=Dataset.from_dict({"prompt": PROMPTS}),
    )  # fmt: skip
    generated = []
    original = trainer._generate

    def spy(prompts):
        generated.extend(prompts)
        return original(prompts)

    trainer._generate = spy
    batch = trainer._generate_and_score_completions([{"prompt": PROMPTS[0]}, {"prompt": PROMPTS[1]}])
    assert generated == [
        PROMPTS[0],
        PROMPTS[1],
        "be positive and kind\n\n" + PROMPTS[0],
        "be positive and kind\n\n" + PROMPTS[1],
    ]
    tokenizer = trainer.processing_class
    loss_prompts = tokenizer.batch_decode(batch["prompt_ids"], skip_special_tokens=True)
    assert [p.strip() for p in loss_prompts] == [PROMPTS[0], PROMPTS[1]]


def test_long_prompts_are_truncated_without_losing_the_principle(tmp_path, tiny_model_path, positivity, monkeypatch):
    trainer = PLETrainer(
        model=tiny_model_path, reward_funcs=positivity,
        args=make_args(tmp_path, max_prompt_length=3, max_steps=1, shuffle_dataset=False, share_prompt_prefix=False),
        train_dataset=Dataset.from_dict({"prompt": PROMPTS}),
    )  # fmt: skip
    generated = []
    generate = trainer.model.generate

    def spy_generate(*args, **kwargs):  # the prompt tokens `generate` gets, padding left out
        ids, mask = kwargs["input_ids"], kwargs["attention_mask"]
        generated.extend(row[row_mask.bool()].tolist() for row, row_mask in zip(ids, mask, strict=True))
        return generate(*args, **kwargs)

    monkeypatch.setattr(trainer.model, "generate", spy_generate)
    trainer.train()
    tokenizer = trainer.processing_class
    # The round's two pairs, plain prompts first: each cut to its last 3 tokens ("write a review of the movie :" ->
    # "the movie :"), the principle kept whole before them.
    assert [tokenizer.decode(ids) for ids in generated] == [
        "the movie :", "your day :", "be positive and kind the movie :", "be positive and kind your day :"
    ]  # fmt: skip
