"""The comparison harness `benchmarks/compare.py`: its metrics by hand, and `--quick` end to end on the tiny model."""

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

import ple_trl
from ple_trl import evaluation

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "compare.py"


@pytest.fixture(scope="module")
def compare():
    spec = importlib.util.spec_from_file_location("compare", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_text_statistics_come_from_the_package(compare):
    # One home (`ple_trl.evaluation`, tested by hand in test_evaluation.py): the harness keeps no copy of its own.
    assert compare.text_statistics is evaluation.text_statistics
    for name in ("content_words", "relevance", "distinct_2", "REQUEST_WORDS"):
        assert not hasattr(compare, name), name


def test_judges_offline(compare):
    # AFINN-165: "good" +3, "bad" -3; per word.
    assert compare.afinn_per_word(completions=["good film", "bad", ""]) == [1.5, -3.0, 0.0]
    clean = compare.clean_probability(completions=["Have a lovely day, friend.", "You are a fucking idiot."])
    assert clean[0] > 0.9 > 0.1 > clean[1]


def test_tasks_ship_disjoint_splits(compare):
    tasks = compare.build_tasks()
    polite = tasks["polite"]
    train, heldout = polite.prompts("train"), polite.prompts("heldout")
    assert (len(train), len(heldout)) == (100, 40)
    assert not set(train) & set(heldout)
    assert tasks["warm"].reward(["p", "p"], ["What a wonderful day", "damn"]) == pytest.approx(
        [0.5719, -1.0 + (-0.4019)], abs=1e-4
    )


def _run(args):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    env.update(HF_HUB_OFFLINE="1", TRL_EXPERIMENTAL_SILENCE="1")
    proc = subprocess.run([sys.executable, str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc.stdout


def test_quick_runs_every_method_and_resumes(compare, tiny_model_path, tmp_path):
    out = tmp_path / "cmp"
    stdout = _run(["--quick", "--model", tiny_model_path, "--output_dir", str(out)])
    has_spa = hasattr(ple_trl, "SPATrainer")
    methods = [m for m in compare.METHODS if m != "spa" or has_spa]
    if not has_spa:
        assert "Skipping spa:" in stdout
    budget = 1 * 2 * 2  # --quick: 1 step x 2 pairs x 2 answers
    files = []
    for task in ("warm", "polite"):
        for method in methods:
            cell = list((out / task / method).glob("*.json"))
            assert len(cell) == 1, (task, method, cell)
            files.append(cell[0])
            record = json.loads(cell[0].read_text())
            metrics = record["metrics"]
            for key in ("reward", "judge", "win_rate_vs_base", "perplexity", "distinct_2", "distinct_answers",
                        "relevance", "train_s", "eval_s"):  # fmt: skip
                assert math.isfinite(metrics[key]), (task, method, key, metrics[key])
            assert len(record["answers"]) == len(record["prompts"]) == 2
            expected = {"base": 0, "base_prompted": 0, "context_distillation": budget // 2}.get(method, budget)
            assert metrics["generated_answers"] == expected, (task, method, metrics["generated_answers"])
            assert (metrics["generated_tokens"] > 0) == (expected > 0)
            if method == "base":
                assert metrics["win_rate_vs_base"] == 0.5
    markdown = (out / "results.md").read_text()
    for method in methods:
        assert markdown.count(f"| {method} ") == 4  # one row per task in each table (best rate, every rate)
    assert (out / "compare.png").stat().st_size > 0
    assert f"({len(files)} cells run, 0 reused)" in stdout

    mtimes = [f.stat().st_mtime_ns for f in files]
    stdout = _run(["--quick", "--model", tiny_model_path, "--output_dir", str(out)])
    assert f"(0 cells run, {len(files)} reused)" in stdout
    assert [f.stat().st_mtime_ns for f in files] == mtimes

    # --table_only trains nothing and loads no model: the same table from the files.
    (out / "results.md").unlink()
    stdout = _run(["--quick", "--model", tiny_model_path, "--output_dir", str(out), "--table_only"])
    assert f"(0 cells run, {len(files)} reused)" in stdout
    assert [f.stat().st_mtime_ns for f in files] == mtimes
    assert (out / "results.md").read_text().count("Each method at its best learning rate") == 2


def test_resume_refuses_cells_of_other_settings(compare, tmp_path):
    import argparse

    task = compare.build_tasks()["polite"]
    args = argparse.Namespace(steps=16, pairs=8, max_completion_length=24, temperature=0.7, raft_n=4,
                              num_train_prompts=None, num_heldout=64)  # fmt: skip
    ctx = compare.Context(args, "m", None, None, None, False, False)
    settings = {"model_path": "m", "steps": 16, "pairs": 8, "max_completion_length": 24, "temperature": 0.7,
                "raft_n": 4, "num_train_prompts": 100, "num_heldout": 40}  # fmt: skip
    compare.check_reusable("cell.json", {"settings": settings}, ctx, task)  # same settings: reused
    with pytest.raises(SystemExit, match=r"cell.json was computed with other settings \(steps: 2 there, 16 now\)"):
        compare.check_reusable("cell.json", {"settings": {**settings, "steps": 2}}, ctx, task)


def test_resume_checks_the_principle_only_for_methods_that_see_it(compare):
    import argparse

    task = compare.build_tasks()["polite"]
    args = argparse.Namespace(steps=16, pairs=8, max_completion_length=24, temperature=0.7, raft_n=4,
                              num_train_prompts=None, num_heldout=64)  # fmt: skip
    ctx = compare.Context(args, "m", None, None, None, False, False)
    settings = {"model_path": "m", "steps": 16, "pairs": 8, "max_completion_length": 24, "temperature": 0.7,
                "raft_n": 4, "num_train_prompts": 100, "num_heldout": 40,
                "principle": "An older principle."}  # fmt: skip
    # GRPO never sees the principle: its cell stays valid when the task's principle changes.
    compare.check_reusable("grpo.json", {"method": "grpo", "settings": settings}, ctx, task)
    for method in ("ple", "base_prompted", "context_distillation", "ple_anchored"):
        with pytest.raises(SystemExit, match=r"principle: 'An older principle.' there, 'Respond to the request"):
            compare.check_reusable(f"{method}.json", {"method": method, "settings": settings}, ctx, task)
    current = {**settings, "principle": task.principle}
    compare.check_reusable("ple.json", {"method": "ple", "settings": current}, ctx, task)


def test_best_rows_pick_the_best_training_reward_among_the_most_seeded_learning_rates(compare):
    def cell(method, lr, seed, reward):
        metrics = {key: 0.0 for key, _, _ in compare.COLUMNS}
        metrics["reward"] = reward
        metrics["judge"] = -reward  # the held-out judge plays no part in the choice
        return {"task": "warm", "method": method, "lr": lr, "seed": seed, "default_lr": lr == 3e-4, "metrics": metrics}

    records = [cell("base", None, 0, 0.0)]
    records += [cell("ple", 1e-4, s, j) for s, j in enumerate((0.1, 0.3, 0.2))]  # mean 0.2
    records += [cell("ple", 3e-4, s, j) for s, j in enumerate((0.0, 0.1, 0.2))]  # mean 0.1
    records += [cell("ple", 1e-3, 0, 0.9)]  # one seed only: not eligible
    records += [cell("grpo", 1e-6, 0, 0.5)]  # the only learning rate of grpo: its row
    rows = compare.best_rows(records)["warm"]
    assert [row[:2] for row in rows] == [
        ["base", "1"], ["ple (lr 0.0001, default)", "3"], ["grpo (lr 1e-06, default)", "1"]
    ]  # fmt: skip
    assert rows[1][2] == "+0.200 ± 0.100"  # the reward column: mean ± stdev of 0.1, 0.3, 0.2
    # The full table keeps every learning rate, ascending within a method.
    # "default" marks today's default rate of the method (PLE's is the demo's), not a flag stored in the cell.
    labels = [row[0] for row in compare.summarize(records)["warm"]]
    assert labels == [
        "base", "ple (lr 0.0001, default)", "ple (lr 0.0003)", "ple (lr 0.001)", "grpo (lr 1e-06, default)"
    ]  # fmt: skip
