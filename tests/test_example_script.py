"""`examples/scripts/ple.py` and the logic it shares with `ple-trl train` (`ple_trl.scripts.ple`): its help, the
commands of its `Usage:` block, dataset loading from local files with column mapping, reward resolution, and one
full-model run as a subprocess."""

import ast
import os
import re
import shlex
import subprocess
import sys

import pytest
from datasets import Dataset

from ple_trl.rewards import RewardModelScorer
from ple_trl.scripts.ple import PLEScriptArguments, parse_args

from helpers import OFFLINE_ENV, REPO_ROOT

EXAMPLE_SCRIPT = REPO_ROOT / "examples" / "scripts" / "ple.py"


def usage_commands():
    """The bash commands of the script's docstring, line continuations joined."""
    docstring = ast.get_docstring(ast.parse(EXAMPLE_SCRIPT.read_text()))
    blocks = re.findall(r"```bash\n(.*?)```", docstring, flags=re.S)
    return [shlex.split(block.replace("\\\n", " ")) for block in blocks]


def test_help_lists_the_flags():
    result = subprocess.run(
        [sys.executable, str(EXAMPLE_SCRIPT), "--help"], capture_output=True, text=True, env=OFFLINE_ENV, timeout=300
    )
    assert result.returncode == 0, result.stderr
    for flag in [
        "--model_name_or_path", "--dataset_name", "--dataset_data_files", "--prompt_column", "--chosen_column",
        "--prompt_max_words", "--reward_model_name_or_path", "--reward_funcs", "--reward_classifier_name_or_path",
        "--sft_dataset_name", "--sft_steps", "--use_peft", "--lora_target_modules", "--principle", "--tau0", "--alpha",
    ]:  # fmt: skip
        assert flag in result.stdout, flag


def test_usage_block_commands_parse():
    commands = usage_commands()
    assert len(commands) >= 4
    assert any("--use_peft" in command for command in commands)
    assert any("--use_peft" not in command and "--config" not in command for command in commands)
    launches = [command for command in commands if command[:2] == ["accelerate", "launch"]]
    assert launches
    assert launches[0][2:5] == ["--multi_gpu", "--num_processes", "8"]
    cwd = os.getcwd()
    os.chdir(REPO_ROOT)  # the commands use paths relative to the repository
    try:
        for command in commands:
            argv = command[command.index("examples/scripts/ple.py") + 1 :]
            script_args, training_args, model_args = parse_args(argv)
            assert model_args.model_name_or_path is not None and training_args.output_dir
            assert (
                training_args.reward_model_name_or_path
                or script_args.reward_funcs
                or (script_args.reward_classifier_name_or_path)
            )
    finally:
        os.chdir(cwd)


def test_sft_steps_without_sft_dataset_is_refused():
    with pytest.raises(ValueError, match="--sft_steps 3.*--sft_dataset_name"):
        PLEScriptArguments(sft_steps=3)


def test_classifier_reward_rejects_unknown_label(tiny_reward_model_path):
    with pytest.raises(ValueError, match="reward_model_name_or_path"):
        RewardModelScorer(tiny_reward_model_path, label="0")(prompts=["a"], completions=["b"])
    with pytest.raises(ValueError, match=r"`label='JOY'` \(`--reward_classifier_label`\)"):
        RewardModelScorer(tiny_reward_model_path, label="JOY")(prompts=["a"], completions=["b"])


@pytest.mark.slow
def test_script_trains_a_full_model_from_csv(tmp_path, tiny_model_path):
    csv = tmp_path / "prompts.csv"
    Dataset.from_dict({"question": ["tell me about your day", "write a review of the movie"] * 2}).to_csv(str(csv))
    (tmp_path / "my_rewards.py").write_text(
        "def has_good(completions, **kwargs):\n    return [float('good' in c) for c in completions]\n"
    )
    output_dir = tmp_path / "out"
    command = [
        sys.executable, str(EXAMPLE_SCRIPT),
        "--model_name_or_path", tiny_model_path, "--dataset_name", str(csv), "--prompt_column", "question",
        "--reward_funcs", "my_rewards.py:has_good", "--principle", "be positive",
        "--output_dir", str(output_dir), "--max_steps", "1", "--per_device_train_batch_size", "2",
        "--max_completion_length", "4", "--logging_steps", "1", "--save_strategy", "no", "--report_to", "none",
        "--bf16", "False", "--gradient_checkpointing", "False",
    ]  # fmt: skip
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, env=OFFLINE_ENV, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (output_dir / "model.safetensors").exists() and not (output_dir / "adapter_config.json").exists()
    # The named reward (imported from the working directory) scored the answers, and PLE logged its round.
    assert "'rewards/has_good/mean'" in result.stdout and "'ple/tau'" in result.stdout
    assert "Model saved to" in result.stdout
