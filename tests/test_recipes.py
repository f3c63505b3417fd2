"""The recipes shipped in the package (`ple_trl/recipes/`, named `hh`, `imdb`, `tldr`): they carry the paper's
settings, parse through the script's `TrlParser`, and each runs end to end (SFT stage, then two PLE steps) once its
model, datasets and reward are swapped for local tiny ones. The recipe's own column mapping, prompt cutting, LoRA
settings and principles are kept: they are what is tested.
"""

import json
import os
from pathlib import Path

import pytest
import torch
from transformers import LlamaForSequenceClassification

from ple_trl.ple.principles import PRINCIPLES
from ple_trl.scripts.launch import recipe_path
from ple_trl.scripts.ple import main, parse_args
from ple_trl.testing import make_reward_tokenizer, tiny_llama_config

RECIPES = ["hh", "imdb", "tldr"]
ALL_LINEAR = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}

# What the paper's datasets need: hub id and the columns mapped onto PLE's formats.
EXPECTED_DATA = {
    "hh": {
        "dataset_name": "Anthropic/hh-rlhf",
        "chosen_column": "chosen",
        "rejected_column": "rejected",
        "prompt_end_marker": "\n\nAssistant:",
    },
    "imdb": {"dataset_name": "stanfordnlp/imdb", "prompt_column": "text", "prompt_max_words": 8},
    "tldr": {"dataset_name": "trl-lib/tldr", "prompt_column": "prompt"},
}

HH_ROWS = [
    {
        "chosen": f"\n\nHuman: tell me about your {thing} please\n\nAssistant: it was good and {word}",
        "rejected": f"\n\nHuman: tell me about your {thing} please\n\nAssistant: it was bad",
    }
    for thing, word in [("day", "warm"), ("city", "nice"), ("food", "great"), ("friend", "kind")]
]
IMDB_ROWS = [
    {"text": f"i think the movie was very {word} and the story was {word} so i tell you {word} {word}", "label": i % 2}
    for i, word in enumerate(["good", "bad", "great", "sad"])
]
TLDR_ROWS = [
    {"prompt": f"POST: the {thing} was very {word} today . TL;DR:", "completion": f" {thing} {word}"}
    for thing, word in [("food", "good"), ("weather", "cold"), ("city", "nice"), ("film", "awful")]
]
ROWS = {"hh": HH_ROWS, "imdb": IMDB_ROWS, "tldr": TLDR_ROWS}


def write_jsonl(path, rows):
    with open(path, "w") as f:
        f.writelines(json.dumps(row) + "\n" for row in rows)
    return str(path)


@pytest.fixture(scope="module")
def tiny_classifier_path(tmp_path_factory):
    """A tiny two-label (NEGATIVE/POSITIVE) sequence classifier, the shape of IMDb's sentiment classifier."""
    path = tmp_path_factory.mktemp("tiny-classifier")
    torch.manual_seed(0)
    tokenizer = make_reward_tokenizer()
    config = tiny_llama_config(
        len(tokenizer),
        num_labels=2,
        id2label={0: "NEGATIVE", 1: "POSITIVE"},
        label2id={"NEGATIVE": 0, "POSITIVE": 1},
        pad_token_id=tokenizer.pad_token_id,
    )
    LlamaForSequenceClassification(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_has_paper_settings(recipe):
    script_args, training_args, model_args = parse_args([recipe])
    # Precision is left to the device (bf16 where supported, fp32 on this CPU): no recipe forces bf16.
    assert training_args.bf16 is False or training_args.distributed_state.device.type != "cpu"
    # Paper (confirmed): LoRA r=8, alpha=16, all linear modules; tau0=0.2, alpha=0.9.
    assert model_args.use_peft is True
    assert (model_args.lora_r, model_args.lora_alpha) == (8, 16)
    assert model_args.lora_target_modules == "all-linear"
    assert (training_args.tau0, training_args.alpha) == (0.2, 0.9)
    # Algorithm 1 has I iterations: tau must actually decay within the run.
    assert training_args.iteration_unit == "steps" and training_args.ple_iterations >= 2
    assert training_args.steps_per_iteration == training_args.max_steps // training_args.ple_iterations
    assert training_args.principles == PRINCIPLES[recipe]
    for name, value in EXPECTED_DATA[recipe].items():
        assert getattr(script_args, name) == value, name
    assert script_args.has_sft_stage and script_args.sft_steps >= 1
    # Every recipe names a reward on the Hub, never a local path.
    reward = training_args.reward_model_name_or_path or script_args.reward_classifier_name_or_path
    assert reward is not None and not os.path.exists(reward) and "/" in reward


def test_recipe_unknown_key_is_an_error(tmp_path):
    recipe = tmp_path / "typo.yaml"
    recipe.write_text(Path(recipe_path("tldr")).read_text() + "\ntau_zero: 0.3\n")
    with pytest.raises(ValueError, match="tau_zero"):
        parse_args([str(recipe), "--bf16", "False"])


@pytest.mark.slow
@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_runs_two_steps(recipe, tmp_path, tiny_model_path, tiny_reward_model_path, tiny_classifier_path):
    data = write_jsonl(tmp_path / f"{recipe}.jsonl", ROWS[recipe])
    output_dir = tmp_path / "out"
    reward = (
        ["--reward_classifier_name_or_path", tiny_classifier_path]
        if recipe == "imdb"
        else ["--reward_model_name_or_path", tiny_reward_model_path]
    )
    argv = [
        recipe,
        "--model_name_or_path", tiny_model_path,
        "--dataset_name", data,
        "--sft_dataset_name", data,
        "--sft_steps", "1",
        *reward,
        "--output_dir", str(output_dir),
        "--max_steps", "2",
        "--per_device_train_batch_size", "2",
        "--gradient_accumulation_steps", "1",
        "--max_completion_length", "8",
        "--logging_steps", "1",
        "--save_strategy", "no",
        "--report_to", "none",
        "--save_enhanced_labels", "True",
        "--dtype", "float32",
        "--bf16", "False",
        "--gradient_checkpointing", "False",
    ]  # fmt: skip
    script_args, training_args, model_args = parse_args(argv)
    trainer = main(script_args, training_args, model_args)

    assert trainer.state.global_step == 2
    logs = trainer.state.log_history
    assert any("loss" in log for log in logs)
    ple_logs = [log for log in logs if "ple/tau" in log]
    assert ple_logs and all(log["ple/tau"] <= 0.2 + 1e-9 for log in ple_logs)
    # ple_iterations=10 over max_steps=2 gives one step per iteration: tau has decayed by the second step.
    assert ple_logs[-1]["ple/tau"] == pytest.approx(0.2 * 0.9)

    # The SFT stage ran and left a merged, plain model that PLE started from.
    sft_dir = output_dir / "sft"
    assert (sft_dir / "config.json").exists() and not (sft_dir / "adapter_config.json").exists()
    # PLE trained and saved a LoRA adapter with the paper's settings on every linear module.
    adapter = json.loads((output_dir / "adapter_config.json").read_text())
    assert (adapter["r"], adapter["lora_alpha"]) == (8, 16)
    assert ALL_LINEAR <= {name.split(".")[-1] for name in adapter["target_modules"]}

    # The recipe's dataset mapping reached the trainer.
    labels = [json.loads(line) for line in (output_dir / "enhanced_labels.jsonl").read_text().splitlines()]
    assert labels and all(label["principle"] in PRINCIPLES[recipe] for label in labels)
    prompts = {label["prompt"] for label in labels}
    if recipe == "hh":  # implicit prompt: the dialogue up to the answer, never the words both answers start with
        dialogues = {row["chosen"].split("\n\nAssistant:")[0] + "\n\nAssistant:" for row in HH_ROWS}
        assert prompts <= dialogues
    elif recipe == "imdb":  # the first 8 words of a review
        reviews = {" ".join(row["text"].split()[:8]) for row in IMDB_ROWS}
        assert prompts <= reviews
    else:
        assert prompts <= {row["prompt"] for row in TLDR_ROWS}
