"""The `ple-trl` console script: its help, the `train` command (recipe as first argument or `--config`, command line
overriding the recipe) and the `eval` command (metrics table for one or two models, adapter folders)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from ple_trl import cli
from ple_trl.scripts.eval import main as eval_main
from ple_trl.scripts.launch import recipe_path
from ple_trl.scripts.ple import parse_args
from ple_trl.testing import build_tiny_causal_lm

from helpers import OFFLINE_ENV, positive_fraction

TLDR_RECIPE = recipe_path("tldr")
CLI_PROMPTS = ["write a review of the movie", "tell me about your day", "what is the weather", "tell me a story"]


def ple_trl_command():
    """The installed console script when there is one, else the module (same `main`)."""
    script = Path(sys.executable).with_name("ple-trl")
    return [str(script)] if script.exists() else [sys.executable, "-m", "ple_trl.cli"]


def run_console_script(*args):
    return subprocess.run([*ple_trl_command(), *args], capture_output=True, text=True, env=OFFLINE_ENV, timeout=300)


def test_help_lists_the_commands():
    result = run_console_script("--help")
    assert result.returncode == 0, result.stderr
    for command in ("train", "eval", "demo", "plot"):
        assert f"    {command} " in result.stdout, command


def test_help_plot_and_argument_errors_import_no_heavy_module():
    """`ple-trl --help`, `ple-trl plot --help` and a mistyped command stay fast: none imports torch, transformers, TRL
    (or matplotlib); `from ple_trl import PLEConfig, PLETrainer` still works, by importing them on first use."""
    code = (
        "import sys\n"
        "import ple_trl.cli\n"
        "for argv in (['--help'], ['plot', '--help'], ['trian']):\n"
        "    try:\n"
        "        ple_trl.cli.main(argv)\n"
        "    except SystemExit:\n"
        "        pass\n"
        "heavy = ('torch', 'transformers', 'trl', 'matplotlib')\n"
        "print('HEAVY', sorted(name for name in heavy if name in sys.modules))\n"
        "from ple_trl import PLEConfig, PLETrainer, spa\n"
        "print('LAZY', PLEConfig.__module__, PLETrainer.__module__, spa.__name__, 'torch' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=OFFLINE_ENV, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = [line for line in result.stdout.splitlines() if line.startswith(("HEAVY", "LAZY"))]
    assert lines == ["HEAVY []", "LAZY ple_trl.ple.config ple_trl.ple.trainer ple_trl.spa True"]


def test_train_and_eval_help_show_their_flags():
    train = run_console_script("train", "--help")
    assert train.returncode == 0, train.stderr
    assert train.stdout.startswith("usage: ple-trl train")
    assert "--reward_funcs" in train.stdout and "--sft_dataset_name" in train.stdout and "--tau0" in train.stdout
    evaluation = run_console_script("eval", "--help")
    assert evaluation.returncode == 0, evaluation.stderr
    for flag in ("--model_b_name_or_path", "--num_prompts", "--max_new_tokens", "--reward_model_name_or_path",
                 "--reward_funcs", "--reference_column"):  # fmt: skip
        assert flag in evaluation.stdout, flag


def test_unknown_command_is_an_error(capsys):
    with pytest.raises(SystemExit) as error:
        cli.main(["trian"])
    assert error.value.code == 2
    assert "'trian'" in capsys.readouterr().err


def test_recipe_as_first_argument_equals_config_flag():
    overrides = ["--model_name_or_path", "my/model", "--tau0", "0.5", "--bf16", "False"]
    positional = parse_args([TLDR_RECIPE, *overrides])
    flagged = parse_args(["--config", TLDR_RECIPE, *overrides])
    assert positional == flagged
    script_args, training_args, model_args = positional
    # The command line overrides the recipe; the rest comes from the recipe.
    assert model_args.model_name_or_path == "my/model" and training_args.tau0 == 0.5
    assert training_args.alpha == 0.9 and script_args.dataset_name == "trl-lib/tldr"
    with pytest.raises(ValueError, match="no such recipe"):
        parse_args(["missing.yaml"])


@pytest.mark.slow
def test_train_command_runs(tmp_path, tiny_model_path, tiny_reward_model_path):
    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in CLI_PROMPTS))
    output_dir = tmp_path / "out"
    status = cli.main(
        [
            "train",
            TLDR_RECIPE,
            "--model_name_or_path",
            tiny_model_path,
            "--dataset_name",
            str(data),
            "--sft_steps",
            "0",
            "--reward_model_name_or_path",
            tiny_reward_model_path,
            "--reward_funcs",
            "helpers.positivity_reward",
            "--output_dir",
            str(output_dir),
            "--max_steps",
            "1",
            "--per_device_train_batch_size",
            "2",
            "--max_completion_length",
            "4",
            "--logging_steps",
            "1",
            "--save_strategy",
            "no",
            "--report_to",
            "none",
            "--dtype",
            "float32",
            "--bf16",
            "False",
            "--gradient_checkpointing",
            "False",
            "--save_enhanced_labels",
            "True",
        ]  # fmt: skip
    )
    assert status == 0
    labels = [json.loads(line) for line in (output_dir / "enhanced_labels.jsonl").read_text().splitlines()]
    assert {label["prompt"] for label in labels} <= set(CLI_PROMPTS)
    adapter = json.loads((output_dir / "adapter_config.json").read_text())
    assert adapter["r"] == 8  # the recipe's LoRA, kept
    assert not (output_dir / "sft").exists()  # `--sft_steps 0` switched the recipe's SFT stage off


@pytest.fixture(scope="module")
def second_model_path(tmp_path_factory):
    return build_tiny_causal_lm(tmp_path_factory.mktemp("tiny-causal-lm-b"), seed=1)


@pytest.fixture(scope="module")
def question_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("eval-data") / "prompts.jsonl"
    rows = [{"question": p, "completion": "it was good"} for p in CLI_PROMPTS]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def eval_args(model, question_file, output_json, *extra):
    return [
        "eval", "--model_name_or_path", model, "--dataset_name", question_file, "--dataset_split", "train",
        "--prompt_column", "question", "--num_prompts", "3", "--max_new_tokens", "5",
        "--output_json", str(output_json), *extra,
    ]  # fmt: skip


def test_eval_two_models(tmp_path, capsys, tiny_model_path, second_model_path, tiny_reward_model_path, question_file):
    output = tmp_path / "results.json"
    status = cli.main(
        eval_args(
            tiny_model_path,
            question_file,
            output,
            "--model_b_name_or_path",
            second_model_path,
            "--reference_column",
            "completion",
            "--reward_model_name_or_path",
            tiny_reward_model_path,
            "--reward_funcs",
            "helpers.positivity_reward",
        )  # fmt: skip
    )
    assert status == 0
    table = capsys.readouterr().out
    for row in ("reward/tiny-reward-model", "reward/positivity_reward", "bleu", "perplexity", "win_rate/"):
        assert row in table, row
    results = json.loads(output.read_text())
    assert results["prompts"] == CLI_PROMPTS[:3]
    for name in (tiny_model_path, second_model_path):
        answers = results["answers"][name]
        assert len(answers) == 3
        # The reported reward is the reward function's mean over this model's own answers.
        expected = sum(positive_fraction(answer) for answer in answers) / 3
        assert results["models"][name]["reward/positivity_reward"] == pytest.approx(expected)
        assert results["models"][name]["perplexity"] > 1
    assert results["answers"][tiny_model_path] != results["answers"][second_model_path]
    for outcome in results["win_rate"].values():
        assert outcome["wins"] + outcome["ties"] + outcome["losses"] == 3
        assert outcome["win_rate"] == pytest.approx((outcome["wins"] + 0.5 * outcome["ties"]) / 3)


def greedy_answers_by_hand(model, tokenizer, prompts, max_new_tokens):
    """Greedy answers to text prompts sent through the chat template, one prompt at a time (no padding)."""
    answers = []
    for prompt in prompts:
        text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                             tokenize=False)  # fmt: skip
        ids = torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]])
        with torch.no_grad():
            output = model.generate(
                input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens, do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
            )  # fmt: skip
        answers.append(tokenizer.decode(output[0, ids.size(1) :], skip_special_tokens=True).strip())
    return answers


def test_eval_loads_an_adapter_folder(tmp_path, tiny_model_path, question_file):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    adapter_dir = tmp_path / "adapter"
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(tiny_model_path),
        LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", task_type="CAUSAL_LM"),
    ).eval()
    torch.manual_seed(0)
    with torch.no_grad():  # a trained adapter: B away from its zero init, so that the adapter changes the answers
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.5)
    model.save_pretrained(adapter_dir)
    tokenizer.save_pretrained(adapter_dir)
    assert not (adapter_dir / "config.json").exists()
    results = eval_main(eval_args(str(adapter_dir), question_file, tmp_path / "a.json", "--no_perplexity", "True")[1:])
    # The answers of the adapter applied to its base, computed here from the model in memory, not from the folder.
    expected = greedy_answers_by_hand(model, tokenizer, CLI_PROMPTS[:3], max_new_tokens=5)
    with model.disable_adapter():
        base = greedy_answers_by_hand(model, tokenizer, CLI_PROMPTS[:3], max_new_tokens=5)
    assert expected != base  # the test tells the adapter's answers from the base model's
    assert results["answers"][str(adapter_dir)] == expected
    assert "perplexity" not in results["models"][str(adapter_dir)]
