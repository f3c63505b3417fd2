"""`ple-trl train` through `accelerate launch`, as `trl grpo` does: the launch command that `--num_processes` and
`--accelerate_config NAME` build (checked through accelerate's own parser, nothing launched), recipes by name, the
module entry point (`python -m ple_trl.scripts.ple`, what `accelerate launch -m` runs), and one real launch."""

import importlib.resources
import subprocess
import sys
from pathlib import Path

import pytest
from accelerate.commands.launch import _validate_launch_command, launch_command_parser

import ple_trl
from ple_trl import cli
from ple_trl.scripts.launch import recipe_names, recipe_path
from ple_trl.scripts.ple import launch_command, parse_args

from helpers import OFFLINE_ENV

PACKAGE = Path(ple_trl.__file__).parent
TRL_ZERO2 = str(importlib.resources.files("trl.accelerate_configs").joinpath("zero2.yaml"))
SCRIPT_ARGS = ["--max_steps", "2", "--output_dir", "out", "--bf16", "False"]


def test_recipes_ship_in_the_package_and_load_by_name():
    assert recipe_names() == ["hh", "imdb", "spa", "tldr"]  # spa: SPA's recipe ships with PLE's
    for name in recipe_names():
        assert Path(recipe_path(name)) == PACKAGE / "recipes" / f"{name}.yaml"
        assert recipe_path(f"{name}.yaml") == recipe_path(name)
    script_args, training_args, _ = parse_args(["imdb", "--bf16", "False"])
    assert script_args.dataset_name == "stanfordnlp/imdb" and training_args.output_dir == "Qwen2.5-0.5B-PLE-imdb"
    assert parse_args(["--config", "tldr", "--bf16", "False"])[0].dataset_name == "trl-lib/tldr"
    with pytest.raises(ValueError, match=r"no such recipe.*hh, imdb, spa, tldr"):
        parse_args(["imbd"])


def test_launch_command_of_num_processes_and_a_named_config():
    command = launch_command(["imdb", "--num_processes", "2", "--accelerate_config", "zero2", *SCRIPT_ARGS])
    imdb = str(PACKAGE / "recipes" / "imdb.yaml")
    assert command == [
        "--config_file", TRL_ZERO2, "--num_processes", "2", "--mixed_precision", "no",
        "--module", "ple_trl.scripts.ple", "--config", imdb, *SCRIPT_ARGS,
    ]  # fmt: skip
    # What accelerate makes of it: 2 DeepSpeed ZeRO-2 processes running the module, precision left to PLEConfig.
    args, _, _ = _validate_launch_command(launch_command_parser().parse_args(command))
    assert (args.num_processes, args.use_deepspeed, args.zero_stage, args.mixed_precision) == (2, True, 2, "no")
    assert args.module and args.training_script == "ple_trl.scripts.ple"
    assert args.training_script_args == ["--config", imdb, *SCRIPT_ARGS]


def test_launch_command_keeps_an_explicit_precision_and_uses_ple_configs_first():
    command = launch_command(["tldr", "--accelerate_config", "zero2", "--mixed_precision", "fp16", *SCRIPT_ARGS])
    assert command[:4] == ["--config_file", TRL_ZERO2, "--mixed_precision", "fp16"]
    assert command.count("--mixed_precision") == 1
    command = launch_command(["tldr", "--accelerate_config", "multi_npu", "--gpu_ids", "0,1", *SCRIPT_ARGS])
    assert command[:5] == ["--config_file", str(PACKAGE / "accelerate_configs" / "multi_npu.yaml"), "--gpu_ids", "0,1",
                           "--module"]  # fmt: skip
    # No launch option: `ple-trl train` trains in its own process.
    assert launch_command(["tldr", *SCRIPT_ARGS]) is None


def test_train_command_launches_through_accelerate(monkeypatch, capsys):
    launched = []
    monkeypatch.setattr("accelerate.commands.launch.launch_command", launched.append)
    argv = ["train", "tldr", "--num_processes", "2", "--accelerate_config", "multi_gpu", *SCRIPT_ARGS]
    assert cli.main(argv) == 0
    (args,) = launched
    assert (args.num_processes, args.module, args.training_script) == (2, True, "ple_trl.scripts.ple")
    assert args.training_script_args == ["--config", str(PACKAGE / "recipes" / "tldr.yaml"), *SCRIPT_ARGS]
    assert "accelerate launch --config_file" in capsys.readouterr().out

    def failing(args):
        raise subprocess.CalledProcessError(3, ["python", "-m", "ple_trl.scripts.ple"])

    monkeypatch.setattr("accelerate.commands.launch.launch_command", failing)
    assert cli.main(argv) == 3  # the training process's status, without a second traceback


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--tau_zero", "0.3"], "Unknown argument(s) ['--tau_zero']"),
        (["--accelerate_config", "zero9"], "`--accelerate_config zero9` is neither a file nor"),
    ],
)
def test_launch_errors_are_one_line(extra, message, capsys):
    assert cli.main(["train", "tldr", *extra, *SCRIPT_ARGS]) == 1
    error = capsys.readouterr().err
    assert error.startswith("ple-trl train: error: ") and message in error and "Traceback" not in error


def test_module_entry_point_prints_its_help():
    result = subprocess.run(
        [sys.executable, "-m", "ple_trl.scripts.ple", "--help"], capture_output=True, text=True, env=OFFLINE_ENV,
        timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith("usage: python -m ple_trl.scripts.ple")
    assert "--reward_funcs" in result.stdout and "--tau0" in result.stdout


@pytest.mark.slow
def test_train_command_trains_through_accelerate_launch(tmp_path, tiny_model_path, monkeypatch, capfd):
    data = tmp_path / "prompts.jsonl"
    data.write_text('{"prompt": "tell me about your day"}\n{"prompt": "write a review of the movie"}\n')
    output_dir = tmp_path / "out"
    for name, value in OFFLINE_ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(tmp_path)
    status = cli.main(
        [
            "train", "--num_processes", "1", "--accelerate_config", "single_gpu",
            "--model_name_or_path", tiny_model_path, "--dataset_name", str(data), "--reward_funcs", "vader_sentiment",
            "--principle", "be positive", "--output_dir", str(output_dir), "--max_steps", "1",
            "--per_device_train_batch_size", "2", "--max_completion_length", "4", "--logging_steps", "1",
            "--save_strategy", "no", "--report_to", "none", "--bf16", "False", "--gradient_checkpointing", "False",
        ]  # fmt: skip
    )
    out = capfd.readouterr().out
    assert status == 0
    assert "accelerate launch --config_file" in out and "--module ple_trl.scripts.ple" in out
    # The launched module trained one PLE round and saved the model.
    assert "'ple/tau'" in out and "Model saved to" in out
    assert (output_dir / "model.safetensors").exists()


def test_a_recipe_key_that_no_argument_takes_is_an_error(tmp_path, capsys):
    recipe = tmp_path / "typo.yaml"
    recipe.write_text(Path(recipe_path("tldr")).read_text() + "\nnum_process: 2\n")
    assert cli.main(["train", str(recipe), *SCRIPT_ARGS]) == 1
    error = capsys.readouterr().err
    assert f"The recipe {recipe} has keys that no argument takes: ['num_process']" in error
