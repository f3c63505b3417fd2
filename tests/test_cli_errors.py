"""User errors on the command line print one message, not a traceback (`--debug` / `PLE_TRL_DEBUG=1` bring it back),
and `--reward_funcs` imports without changing `sys.path`, so a local file cannot shadow an installed module."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ple_trl import cli
from ple_trl.plotting import load_curves
from ple_trl.rewards import load_reward_func, resolve_reward_funcs

from helpers import OFFLINE_ENV

# `python -m ple_trl.cli` without the debug switch, importing this checkout's package.
MODULE_ENV = dict(OFFLINE_ENV)
MODULE_ENV.pop("PLE_TRL_DEBUG", None)
MODULE_ENV["PYTHONPATH"] = os.pathsep.join(
    [str(Path(cli.__file__).resolve().parents[1]), MODULE_ENV.get("PYTHONPATH", "")]
)


def run_cli_module(*args, cwd=None, **env):
    return subprocess.run(
        [sys.executable, "-m", "ple_trl.cli", *args],
        capture_output=True, text=True, env={**MODULE_ENV, **env}, cwd=cwd, timeout=300,
    )  # fmt: skip


def assert_one_message(result, command, message):
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert f"ple-trl {command}: error: {message}" in result.stderr, result.stderr
    assert "ple-trl --debug" in result.stderr  # says how to see the traceback


@pytest.fixture
def not_json(tmp_path):
    path = tmp_path / "state.json"
    path.write_text("step,loss\n1,0.5\n")
    return path


def test_plot_on_a_file_that_is_not_json(not_json):
    result = run_cli_module("plot", str(not_json))
    assert_one_message(result, "plot", f"`{not_json}` is not a `trainer_state.json`: it is not JSON")
    assert "Pass a run's `output_dir`" in result.stderr
    debug = run_cli_module("--debug", "plot", str(not_json))
    assert debug.returncode != 0
    assert "Traceback" in debug.stderr and "ValueError" in debug.stderr


def test_plot_on_json_that_is_not_a_trainer_state(tmp_path):
    path = tmp_path / "trainer_state.json"
    path.write_text(json.dumps([{"loss": 1.0}]))
    with pytest.raises(ValueError, match="is JSON but not a `trainer_state.json`: it has no `log_history` list"):
        load_curves(path)


def test_train_with_a_bad_config_value(tmp_path):
    args = ["train", "--model_name_or_path", "m", "--tau0", "-1", "--output_dir", str(tmp_path), "--use_cpu", "True"]
    result = run_cli_module(*args)
    assert_one_message(result, "train", "`tau0=-1.0` must be >= 0")
    debug = run_cli_module(*args, PLE_TRL_DEBUG="1")
    assert debug.returncode != 0
    assert "Traceback" in debug.stderr and "`tau0=-1.0` must be >= 0" in debug.stderr


def test_train_with_a_dataset_path_that_does_not_exist(tmp_path):
    missing = tmp_path / "no_such_dir" / "prompts.jsonl"
    result = run_cli_module(
        "train", "--model_name_or_path", "m", "--dataset_name", str(missing), "--reward_funcs", "vader_sentiment",
        "--principle", "be kind", "--output_dir", str(tmp_path), "--use_cpu", "True",
    )  # fmt: skip
    assert_one_message(result, "train", f"`--dataset_name {missing}`: the path {str(missing)!r} does not exist")


def test_train_with_a_recipe_that_is_a_list(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("- a\n- b\n")
    result = run_cli_module("train", "--config", str(recipe))
    assert_one_message(result, "train", f"`--config {recipe}`: the recipe is a YAML list, not a mapping")
    assert "Write one `argument: value` line per argument" in result.stderr


def test_train_with_a_recipe_that_is_not_yaml(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("a: [1, 2\nb: 3\n")
    result = run_cli_module("train", str(recipe))  # the recipe as first argument, as in `ple-trl train hh`
    assert_one_message(result, "train", f"`--config {recipe}`: the recipe is not valid YAML")
    assert "(line 2, column 2)" in result.stderr and "Fix the syntax there" in result.stderr


@pytest.mark.parametrize("content", ["", "\n\n  \n"], ids=["zero_bytes", "blank_lines"])
def test_train_with_an_empty_jsonl_dataset(tmp_path, content):
    dataset = tmp_path / "prompts.jsonl"
    dataset.write_text(content)
    result = run_cli_module(
        "train", "--model_name_or_path", "m", "--dataset_name", str(dataset), "--reward_funcs", "vader_sentiment",
        "--principle", "be kind", "--output_dir", str(tmp_path), "--use_cpu", "True",
    )  # fmt: skip
    what = "is empty (0 bytes)" if not content else "has only blank lines"
    assert_one_message(result, "train", f"`--dataset_name`: the data file {str(dataset)!r} {what}")
    assert 'one JSON object per line, e.g. `{"prompt": "Hello"}`' in result.stderr


def test_eval_with_a_model_path_that_does_not_exist(tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "Hello"}\n')
    result = run_cli_module(
        "eval", "--model_name_or_path", "./no-such-dir", "--dataset_name", str(prompts), "--dataset_split", "train",
        cwd=tmp_path,
    )  # fmt: skip
    assert_one_message(result, "eval", "`--model_name_or_path`: the path './no-such-dir' does not exist")
    assert "Give an existing local model folder, or a Hub id" in result.stderr


def test_debug_flag_reraises_in_process(not_json, monkeypatch, capsys):
    monkeypatch.delenv("PLE_TRL_DEBUG", raising=False)
    assert cli.main(["plot", str(not_json)]) == 1
    assert "ple-trl plot: error:" in capsys.readouterr().err
    with pytest.raises(ValueError, match="is not a `trainer_state.json`"):
        cli.main(["--debug", "plot", str(not_json)])


def test_a_bug_keeps_its_traceback(monkeypatch):
    # Only user errors are shortened; anything else (here an AttributeError) propagates unchanged.
    monkeypatch.setitem(cli.COMMANDS, "plot", ("ple_trl.cli", "_no_such_function", "help"))
    with pytest.raises(AttributeError):
        cli.main(["plot", "x"])


# --- `--reward_funcs` never changes sys.path --------------------------------------------------------------------

SHADOW = "def rgb_to_hsv(r, g, b):\n    return 'shadowed'\n"
REWARDS = "def my_reward(completions, **kwargs):\n    return [float(len(c)) for c in completions]\n"


@pytest.fixture
def console_script_path(monkeypatch, tmp_path):
    """Work in `tmp_path` with `sys.path` as the `ple-trl` console script has it: no entry for the current
    directory."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", ".", str(tmp_path))])
    # `colorsys` (standard library, rarely imported) must be imported afresh for shadowing to be possible.
    monkeypatch.delitem(sys.modules, "colorsys", raising=False)
    yield tmp_path
    module = sys.modules.get("colorsys")
    if module is not None and Path(module.__file__).parent == tmp_path:
        del sys.modules["colorsys"]  # a shadowing copy must not leak into other tests


def test_a_local_file_does_not_shadow_an_installed_module(console_script_path):
    (console_script_path / "colorsys.py").write_text(SHADOW)
    path_before = list(sys.path)
    [func] = resolve_reward_funcs(["colorsys.rgb_to_hsv"])
    assert sys.path == path_before
    assert func(1.0, 0.0, 0.0) == (0.0, 1.0, 1.0)  # the standard library's, not the local file's 'shadowed'
    assert Path(sys.modules["colorsys"].__file__).parent != console_script_path


def test_a_local_file_loads_with_the_file_form(console_script_path):
    (console_script_path / "my_rewards.py").write_text(REWARDS)
    path_before = list(sys.path)
    specs = ["my_rewards.py:my_reward", f"{console_script_path / 'my_rewards.py'}:my_reward"]
    relative, absolute = resolve_reward_funcs(specs)
    assert sys.path == path_before and "my_rewards" not in sys.modules
    assert relative is absolute  # one file, one module
    assert relative(completions=["ab", "abcd"]) == [2.0, 4.0]
    # The dotted form does not reach the local file, and the error says how to load it.
    with pytest.raises(ValueError, match=r"pass `--reward_funcs my_rewards.py:my_reward`"):
        resolve_reward_funcs(["my_rewards.my_reward"])


def test_reward_spec_errors_name_the_spec(console_script_path):
    with pytest.raises(ValueError, match=r"the file 'missing.py' does not exist"):
        load_reward_func("missing.py:f")
    (console_script_path / "my_rewards.py").write_text(REWARDS)
    with pytest.raises(ValueError, match=r"the file 'my_rewards.py' has no function 'other'"):
        load_reward_func("my_rewards.py:other")
    assert load_reward_func("colorsys:rgb_to_hsv")(0.0, 0.0, 0.0) == (0.0, 0.0, 0.0)


@pytest.mark.parametrize(
    ("flags", "stages"),
    [
        (["--reward_source", "implicit"], "Add an SFT stage (`--sft_dataset_name`)"),
        (["--method", "spa"], "Add a seed DPO stage (`--seed_dataset_name`) or an SFT stage (`--sft_dataset_name`)"),
    ],
    ids=["ple-implicit", "spa"],
)
def test_train_with_the_implicit_reward_and_no_stage_to_be_pi_init(tmp_path, tiny_model_path, flags, stages):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "tell me about your day :"}\n' * 4)
    principle = [] if "spa" in flags else ["--principle", "be kind"]
    args = ["train", "--model_name_or_path", tiny_model_path, "--dataset_name", str(prompts), "--output_dir",
            str(tmp_path / "out"), "--use_cpu", "True", *principle, *flags]  # fmt: skip
    result = run_cli_module(*args)
    assert_one_message(result, "train", f"`{flags[0]} {flags[1]}` scores answers with the implicit reward")
    assert f"every reward would be exactly 0. {stages}" in result.stderr
