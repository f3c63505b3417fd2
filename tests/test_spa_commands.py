"""SPA from the command line: its shipped recipe, `ple-trl train --method spa` (the seed DPO stage, then SPA; PLE's
reward flags refused) and `ple-trl demo --method spa` with its shipped seed set."""

import json

import pytest

from ple_trl import SPAConfig, SPATrainer
from ple_trl.pairs.audit_log import AUDIT_LOG_NAME
from ple_trl.scripts.launch import recipe_path

from helpers import SPA_PROMPTS

SPA_RECIPE = recipe_path("spa")  # shipped in the package, like the PLE recipes
SEED_ROWS = [
    {"prompt": f"tell me about your {thing} :", "chosen": f" it was good and {word} .", "rejected": " bad ."}
    for thing, word in [("day", "warm"), ("city", "nice"), ("food", "great"), ("friend", "kind")]
]


def test_spa_recipe_parses_as_spa():
    from ple_trl.scripts.ple import parse_args

    script_args, training_args, model_args = parse_args([SPA_RECIPE])
    assert script_args.method == "spa" and isinstance(training_args, SPAConfig)
    assert script_args.has_seed_stage and script_args.seed_dataset_train_split == "train[:2000]"
    assert script_args.dataset_train_split == "train[2000:]"
    assert (training_args.temperature, training_args.beta, training_args.refinement_alpha) == (0.7, 0.1, 0.1)
    assert (training_args.refinement_warmup_ratio, training_args.confidence_quantile) == (0.2, 0.1)
    assert training_args.margin_history_size == 50 and training_args.steps_per_iteration == 500
    assert model_args.use_peft is True


def test_method_spa_refuses_rewards_and_ple_knobs(tmp_path, tiny_model_path):
    from ple_trl.scripts.ple import main, parse_args

    data = str(tmp_path / "prompts.jsonl")
    with open(data, "w") as f:
        f.writelines(json.dumps({"prompt": p}) + "\n" for p in SPA_PROMPTS)
    base = ["--method", "spa", "--model_name_or_path", tiny_model_path, "--dataset_name", data, "--output_dir",
            str(tmp_path / "out"), "--use_cpu", "True", "--bf16", "False"]  # fmt: skip
    with pytest.raises(ValueError, match="`--method spa` labels its answers with the model's implicit reward"):
        main(*parse_args([*base, "--reward_funcs", "vader_sentiment"]))
    with pytest.raises(ValueError, match=r"not used by the HfArgumentParser: \['--tau0', '0.5'\]"):
        parse_args([*base, "--tau0", "0.5"])  # SPA's config has no PLE field
    with pytest.raises(ValueError, match="add `--method spa`"):
        parse_args(["--model_name_or_path", tiny_model_path, "--seed_dataset_name", data, "--principle", "x"])


def test_method_spa_runs_seed_stage_then_spa(tmp_path, tiny_model_path):
    from ple_trl.scripts.ple import main, parse_args

    seed_data = str(tmp_path / "seed.jsonl")
    with open(seed_data, "w") as f:
        f.writelines(json.dumps(row) + "\n" for row in SEED_ROWS)
    prompts = str(tmp_path / "prompts.jsonl")
    with open(prompts, "w") as f:
        f.writelines(json.dumps({"prompt": p}) + "\n" for p in SPA_PROMPTS)
    output_dir = tmp_path / "out"
    argv = [
        SPA_RECIPE,
        "--model_name_or_path", tiny_model_path,
        "--seed_dataset_name", seed_data,
        "--seed_dataset_train_split", "train",
        "--seed_steps", "2",
        "--seed_learning_rate", "0.01",
        "--dataset_name", prompts,
        "--dataset_train_split", "train",
        "--output_dir", str(output_dir),
        "--max_steps", "2",
        "--steps_per_iteration", "1",
        "--per_device_train_batch_size", "2",
        "--gradient_accumulation_steps", "1",
        "--max_completion_length", "4",
        "--logging_steps", "1",
        "--save_strategy", "no",
        "--report_to", "none",
        "--dtype", "float32",
        "--bf16", "False",
        "--use_cpu", "True",
        "--gradient_checkpointing", "False",
    ]  # fmt: skip
    trainer = main(*parse_args(argv))
    assert isinstance(trainer, SPATrainer) and trainer.state.global_step == 2
    # The seed stage (TRL's DPOTrainer) left a merged model, which SPA trained; pi_init is the model it started from.
    seed_dir = output_dir / "seed"
    assert (seed_dir / "config.json").exists() and not (seed_dir / "adapter_config.json").exists()
    assert trainer.model.base_model.model.config._name_or_path == str(seed_dir)
    assert trainer.ref_model.config._name_or_path == tiny_model_path
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert [entry["spa/iteration"] for entry in logs] == [0.0, 1.0]
    # The seed model differs from pi_init, so the implicit rewards of the first iteration are not all zero.
    assert logs[0]["reward_std"] > 0
    labels = [json.loads(line) for line in (output_dir / AUDIT_LOG_NAME).read_text().splitlines()]
    assert len(labels) == 2 * 2 and {r["prompt"] for r in labels} <= set(SPA_PROMPTS)


# --- `ple-trl demo --method spa` ------------------------------------------------------------------------------------


def test_spa_seed_set_is_shipped_and_apart_from_the_demo_prompts():
    from ple_trl.tasks import load_prompts as load_demo_prompts
    from ple_trl.tasks import load_spa_seed

    rows = load_spa_seed()
    assert len(rows) == 36
    prompts = {row["prompt"][-1]["content"] for row in rows}
    assert len(prompts) == 36 and not prompts & set(load_demo_prompts())
    for row in rows:
        assert row["chosen"][0]["role"] == row["rejected"][0]["role"] == "assistant"
        assert len(row["chosen"][0]["content"]) > len(row["rejected"][0]["content"])  # warm and full, against curt


def test_demo_method_spa_runs_seed_stage_then_spa(tmp_path, tiny_model_path, capsys):
    from ple_trl import cli

    out = tmp_path / "spa-demo"
    argv = [
        "demo", "--method", "spa", "--model", tiny_model_path, "--output-dir", str(out), "--steps", "2",
        "--batch-size", "2", "--num-heldout", "2", "--max-completion-length", "4", "--num-train-prompts", "4",
        "--steps-per-iteration", "1", "--seed-steps", "2", "--seed", "0", "--threads", "1", "--quiet",
    ]  # fmt: skip
    assert cli.main(argv) == 0
    stdout = capsys.readouterr().out
    assert "plain prompt: reward" in stdout and "After the seed DPO stage alone" in stdout
    results = json.loads((out / "demo_results.json").read_text())
    assert results["settings"]["method"] == "spa" and results["settings"]["seed_steps"] == 2
    assert "principle" not in results["settings"]
    for moment in ("before", "after_seed", "after"):
        assert len(results[moment]["plain"]["answers"]) == 2
    # The seed stage saved a merged model; SPA trained 2 steps of 2 pairs and logged its metrics.
    assert (out / "seed" / "config.json").is_file() and not (out / "seed" / "adapter_config.json").exists()
    state = json.loads((out / "trainer_state.json").read_text())
    logged = [entry for entry in state["log_history"] if "loss" in entry]
    assert state["global_step"] == 2 and all("spa/margin" in entry for entry in logged)
    labels = [json.loads(line) for line in (out / AUDIT_LOG_NAME).read_text().splitlines()]
    assert len(labels) == 4 and all("chosen" in row and "rejected" in row for row in labels)
