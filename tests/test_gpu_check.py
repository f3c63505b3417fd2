"""The prepared GPU check (`benchmarks/gpu_check.sh`): its dry run on the CPU runs every step and writes
every result."""

import json
import os
import subprocess
import sys

import pytest

from helpers import REPO_ROOT


@pytest.mark.slow
def test_gpu_check_dry_run_on_cpu(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable}
    env.pop("PYTHONPATH", None)  # the script puts this checkout's src/ first itself
    result = subprocess.run(
        ["bash", str(REPO_ROOT / "benchmarks" / "gpu_check.sh"), "--cpu", "--compare"], env=env, capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "compare", "compare.txt", "env.txt", "equivalence.json", "equivalence.txt", "pytest.txt", "step_cost.md",
        "step_cost.txt", "tiny-model",
    ]  # fmt: skip
    # --compare: compare.py --quick on the tiny model (base and PLE), one cell per task and method, and its table.
    assert len(list((tmp_path / "compare" / "warm" / "ple").glob("*.json"))) == 1
    assert (tmp_path / "compare" / "results.md").read_text().count("## Task `") == 2
    assert "device None (cpu)" in (tmp_path / "env.txt").read_text()
    assert " passed" in (tmp_path / "pytest.txt").read_text()
    report = json.loads((tmp_path / "equivalence.json").read_text())
    assert report["device"] == "cpu" and report["failures"] == []
    assert report["loss_pass_fp32"]["max_logp_sum_diff"] < 1e-4
    assert report["generation_shared_prefix_fp32"]["same_greedy_answers"] is True
    assert report["training_bf16"]["parameters_changed"] == "39/39"  # every tensor of the 4-layer Llama moved
    table = (tmp_path / "step_cost.md").read_text()
    assert table.count("| PLE |") == 3 and table.count("| GRPO (num_generations=2) |") == 3  # short, long, dialogue
    assert "## tiny-llama-4l-h64, long prompts" in table and "## tiny-llama-4l-h64, dialogues" in table
    assert "bf16 mixed precision" in table


def test_gpu_check_refuses_a_bad_time_limit_before_any_step(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable, "COMPARE_SECONDS": "7m"}
    result = subprocess.run(
        ["bash", str(REPO_ROOT / "benchmarks" / "gpu_check.sh"), "--cpu", "--compare"], env=env, capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert "COMPARE_SECONDS=7m must be a whole number of seconds > 0" in result.stderr
    assert list(tmp_path.iterdir()) == []  # no step ran
