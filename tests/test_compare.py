"""The comparison harness `benchmarks/compare.py`: its metrics by hand, and `--quick` end to end on the tiny model."""

import importlib.util
import json
import math
import os
import subprocess
import sys
from functools import partial

import pytest

import ple_trl
from ple_trl import evaluation

from helpers import BENCHMARKS, SRC

COMPARE_SCRIPT = BENCHMARKS / "compare.py"


@pytest.fixture(scope="module")
def compare():
    spec = importlib.util.spec_from_file_location("compare", COMPARE_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_text_statistics_come_from_the_package(compare):
    # One home (`ple_trl.evaluation`, tested by hand in test_evaluation.py): the harness keeps no copy of its own.
    assert compare.text_statistics is evaluation.text_statistics
    for name in ("content_words", "relevance", "distinct_2", "REQUEST_WORDS"):
        assert not hasattr(compare, name), name


def run_compare(args):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    env.update(HF_HUB_OFFLINE="1", TRL_EXPERIMENTAL_SILENCE="1")
    command = [sys.executable, str(COMPARE_SCRIPT), *args]
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc.stdout


def test_quick_runs_every_method_and_resumes(compare, tiny_model_path, tmp_path):
    out = tmp_path / "cmp"
    stdout = run_compare(["--quick", "--model", tiny_model_path, "--output_dir", str(out)])
    has_spa = hasattr(ple_trl, "SPATrainer")
    methods = [m for m in compare.METHODS if m != "spa" or has_spa]
    if not has_spa:
        assert "Skipping spa:" in stdout
    assert {"sdft", "grpo_batch", "grpo_g4"} <= set(methods)
    budget = 1 * 2 * 2  # --quick: 1 step x 2 pairs x 2 answers (grpo_g4: 1 prompt x 4; sdft: 2 prompts x 2)
    files = []
    for task in ("warm", "polite"):
        for method in methods:
            cell = list((out / task / method).glob("*.json"))
            assert len(cell) == 1, (task, method, cell)
            files.append(cell[0])
            record = json.loads(cell[0].read_text())
            metrics = record["metrics"]
            for key in ("reward", "judge", "win_rate_vs_base", "perplexity", "distinct_2", "distinct_answers",
                        "relevance", "semantic_relevance", "train_s", "eval_s"):  # fmt: skip
                assert math.isfinite(metrics[key]), (task, method, key, metrics[key])
            assert len(record["answers"]) == len(record["prompts"]) == 2
            expected = {"base": 0, "base_prompted": 0, "context_distillation": budget // 2}.get(method, budget)
            assert metrics["generated_answers"] == expected, (task, method, metrics["generated_answers"])
            assert (metrics["generated_tokens"] > 0) == (expected > 0)
            if method == "base":
                assert metrics["win_rate_vs_base"] == 0.5
            if method in compare.UNTRAINED:
                assert "curve" not in metrics
            else:  # one step: no step inside the run, so the curve is the final evaluation alone
                assert metrics["curve"] == [{"step": 1, "answers": expected, "final": True,
                                             **{k: metrics[k] for k in compare.CURVE_KEYS}}]  # fmt: skip
    markdown = (out / "results.md").read_text()
    for method in methods:
        assert markdown.count(f"| {method} ") == 4  # one row per task in each table (selected rate, every rate)
    assert markdown.count(compare.SELECTION_RULE) == 2
    assert "| semantic relevance |" in markdown
    assert (out / "compare.png").stat().st_size > 0
    assert (out / "learning_curve.png").stat().st_size > 0
    assert f"({len(files)} cells run, 0 reused)" in stdout

    mtimes = [f.stat().st_mtime_ns for f in files]
    stdout = run_compare(["--quick", "--model", tiny_model_path, "--output_dir", str(out)])
    assert f"(0 cells run, {len(files)} reused)" in stdout
    assert [f.stat().st_mtime_ns for f in files] == mtimes

    # A cell file from before the semantic relevance: --table_only computes it from the stored answers and writes it
    # back, without training; the other files are left alone.
    old = files[2]
    record = json.loads(old.read_text())
    expected_semantic = record["metrics"].pop("semantic_relevance")
    for point in record["metrics"]["curve"]:
        point.pop("semantic_relevance")
    old.write_text(json.dumps(record))
    mtimes = [f.stat().st_mtime_ns for f in files]

    # --table_only trains nothing and loads no model: the same table from the files.
    (out / "results.md").unlink()
    stdout = run_compare(["--quick", "--model", tiny_model_path, "--output_dir", str(out), "--table_only"])
    assert f"(0 cells run, {len(files)} reused)" in stdout
    assert f"[added] semantic relevance to {old}" in stdout
    assert [f.stat().st_mtime_ns for f in files if f != old] == [m for f, m in zip(files, mtimes) if f != old]
    filled = json.loads(old.read_text())["metrics"]
    assert filled["semantic_relevance"] == pytest.approx(expected_semantic)
    assert filled["curve"][-1]["semantic_relevance"] == pytest.approx(expected_semantic)
    assert (out / "results.md").read_text().count("Each method at its selected learning rate") == 2


def test_quick_curve_at_a_quarter_and_a_half_of_the_answers(compare, tiny_model_path, tmp_path):
    # Explicit flags win over --quick's: 4 steps x 2 prompts = 16 answers, measured after 4 and 8 (steps 1 and 2).
    out = tmp_path / "curve"
    run_compare(["--quick", "--model", tiny_model_path, "--output_dir", str(out), "--steps", "4", "--tasks", "warm",
          "--methods", "grpo_g4,sdft,raft"])  # fmt: skip
    for method in ("grpo_g4", "sdft", "raft"):
        (cell,) = (out / "warm" / method).glob("*.json")
        record = json.loads(cell.read_text())
        metrics = record["metrics"]
        assert record["settings"]["steps"] == 4 and record["settings"]["curve_steps"] == [1, 2]
        assert metrics["generated_answers"] == 16, method
        curve = metrics["curve"]
        # Online methods: the answers generated by then; RAFT: the share of its 16 answers trained on (SFT step / 4).
        assert [(p["step"], p["answers"]) for p in curve] == [(1, 4), (2, 8), (4, 16)], (method, curve)
        for point in curve:
            for key in compare.CURVE_KEYS:
                assert math.isfinite(point[key]), (method, point)
        for point in curve[:-1]:  # the checkpoints keep their answers, so a later metric can be computed from them
            assert len(point["held_out_answers"]) == len(record["prompts"])
        assert curve[-1]["final"] and curve[-1]["judge"] == metrics["judge"]
    assert (out / "learning_curve.png").stat().st_size > 0


def test_curve_measurement_leaves_training_unchanged(compare, tiny_model_path, tmp_path):
    # The curve's greedy held-out answers mid-run neither count as generated answers nor change what is trained.
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    args = compare.parse_args(["--quick", "--model", tiny_model_path, "--steps", "2", "--output_dir", str(tmp_path)])
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_path).eval()
    ctx = compare.Context(args, tiny_model_path, tokenizer, base, torch.device("cpu"), False, False)
    task = compare.build_tasks()["warm"]
    heldout, train = task.prompts("heldout")[:2], task.prompts("train")[:2]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as compare.py's --threads: two threads on the shared cores run ten times slower
    try:
        results = {}
        for method in ("grpo", "sdft"):
            for with_curve in (True, False):
                model, counter, curve = compare.train_method(ctx, task, method, 1e-3, 0, train,
                                                             str(tmp_path / method), heldout if with_curve else None)
                lora = {k: v.detach().clone() for k, v in model.named_parameters() if "lora_" in k}
                results.setdefault(method, []).append((lora, counter.answers, len(curve)))
    finally:
        torch.set_num_threads(threads)
    for method, runs in results.items():
        (with_lora, with_answers, with_points), (plain_lora, plain_answers, plain_points) = runs
        assert (with_points, plain_points) == (1, 0)
        assert with_answers == plain_answers == 8
        assert with_lora.keys() == plain_lora.keys() and with_lora
        assert all(torch.equal(with_lora[k], plain_lora[k]) for k in with_lora), method


def test_bracket_runs_the_next_rate_when_the_best_is_the_largest(tiny_model_path, tmp_path):
    # One rate is the largest run, so it is bracketed; on the tiny model every rate scores the same training reward
    # and the tie goes to the smaller rate, which is not the largest: one step up and done.
    out = tmp_path / "bracket"
    stdout = run_compare(["--quick", "--model", tiny_model_path, "--output_dir", str(out), "--tasks", "warm",
                   "--methods", "grpo", "--lrs", "1e-4", "--bracket"])  # fmt: skip
    assert "[bracket] warm grpo: its best rate 0.0001 is the largest run: running 0.0003." in stdout
    assert sorted(p.name for p in (out / "warm" / "grpo").glob("*.json")) == [
        "lr-0.0001_seed-0.json", "lr-0.0003_seed-0.json"
    ]  # fmt: skip
    assert "--bracket ran 0.0003" in (out / "results.md").read_text()


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


def _cell(compare, method, lr, seed, reward, distinct_2=0.8, relevance=0.6, task="warm"):
    metrics = {key: 0.0 for key, _, _ in compare.COLUMNS}
    metrics.update(reward=reward, judge=-reward, distinct_2=distinct_2, relevance=relevance)  # judge: no part
    return {"task": task, "method": method, "lr": lr, "seed": seed, "default_lr": False, "metrics": metrics}


def test_selection_rule_excludes_rates_that_lose_diversity_or_relevance(compare):
    cell = partial(_cell, compare)
    records = [cell("base", None, 0, 0.0, distinct_2=0.8, relevance=0.6)]
    # The highest training reward, but distinct-2 0.70 < 0.9 x 0.8 = 0.72: excluded.
    records += [cell("ple", 6e-4, s, 0.9, distinct_2=0.70) for s in (0, 1)]
    # Relevance 0.54 < 0.60 - 0.05: excluded.
    records += [cell("ple", 3e-4, s, 0.7, relevance=0.54) for s in (0, 1)]
    # Passes (distinct-2 0.72 = 0.9 x base, relevance 0.55 = base - 5 points): the highest reward that passes.
    records += [cell("ple", 1e-4, 0, 0.5, distinct_2=0.72, relevance=0.55), cell("ple", 1e-4, 1, 0.3)]
    records += [cell("ple", 1e-3, 0, 2.0)]  # one seed only: not eligible
    selected = compare.select_rates(records)
    assert selected[("warm", "ple")].lr == 1e-4
    assert selected[("warm", "ple")].passed is True
    rows = compare.best_rows(records)["warm"]
    assert [row[:2] for row in rows] == [["base", "1"], ["ple (lr 0.0001, default)", "2"]]
    assert rows[1][2] == "+0.400 ± 0.141"  # the reward column: mean ± stdev of 0.5 and 0.3

    # Without the constraints the highest reward alone would pick 6e-4: the rule is what decides.
    loose = [r for r in records if r["lr"] != 1e-4 and r["lr"] != 3e-4]
    assert compare.select_rates(loose)[("warm", "ple")].lr == 6e-4
    assert compare.select_rates(loose)[("warm", "ple")].passed is False


def test_selection_rule_says_so_when_no_rate_passes(compare):
    cell = partial(_cell, compare)
    records = [cell("base", None, 0, 0.0)]
    records += [cell("grpo", 1e-4, 0, 0.2, relevance=0.1), cell("grpo", 3e-4, 0, 0.4, distinct_2=0.1)]
    selection = compare.select_rates(records)[("warm", "grpo")]
    assert (selection.lr, selection.passed) == (3e-4, False)  # picked by training reward among all
    (row,) = [row for row in compare.best_rows(records)["warm"] if row[0].startswith("grpo")]
    assert row[0] == "grpo (lr 0.0003; no rate passes the constraints: picked by reward alone)"
    # The full table keeps every learning rate, ascending within a method.
    labels = [row[0] for row in compare.summarize(records)["warm"]]
    assert labels == ["base", "grpo (lr 0.0001)", "grpo (lr 0.0003)"]


def test_bracketing_decides_the_next_rate(compare):
    cell = partial(_cell, compare)
    assert [compare.next_rate(lr) for lr in (1e-6, 1e-4, 3e-4, 6e-4, 1e-3, 2e-3)] == [
        1e-4, 3e-4, 6e-4, 1e-3, 2e-3, None
    ]  # fmt: skip
    records = [cell("base", None, 0, 0.0)]
    records += [cell("ple", lr, 0, reward) for lr, reward in ((1e-4, 0.1), (3e-4, 0.2), (6e-4, 0.3))]  # best: largest
    records += [cell("grpo", lr, 0, reward) for lr, reward in ((1e-4, 0.1), (3e-4, 0.3), (6e-4, 0.2))]  # bracketed
    records += [cell("raft", lr, 0, reward) for lr, reward in ((1e-3, 0.1), (2e-3, 0.2))]  # the ladder ends
    assert compare.rates_to_bracket(records) == {("warm", "ple"): (6e-4, 1e-3), ("warm", "raft"): (2e-3, None)}
    # The largest rate by reward but excluded by the constraints: the selected rate is below it, nothing to bracket.
    records += [cell("ple", 1e-3, 0, 0.9, distinct_2=0.1)]
    assert ("warm", "ple") not in compare.rates_to_bracket(records)
    notes = compare.sweep_notes(records, {("warm", "grpo"): [(6e-4, 1e-3)]})["warm"]
    assert notes == [
        "- `grpo`: its best rate 0.0006 was the largest run; --bracket ran 0.001.",
        "- `raft`: its selected rate 0.002 is the largest run, so the sweep does not bracket it (and the last of "
        "--bracket's ladder).",
    ]


def test_semantic_relevance_is_the_cosine_of_wordllama_embeddings(compare):
    import numpy as np

    prompts = ["Give me tips for cooking pasta.", "Review the film Up."]
    answers = ["Boil the noodles in salted water and taste them often.", ""]
    embeddings = compare.wordllama_model().embed([prompts[0], answers[0]])
    by_hand = float(embeddings[0] @ embeddings[1] / (np.linalg.norm(embeddings[0]) * np.linalg.norm(embeddings[1])))
    assert compare.cosines(prompts, answers) == pytest.approx([by_hand, 0.0])  # an empty answer scores 0
    assert compare.semantic_relevance(prompts, answers) == pytest.approx(by_hand / 2)
    assert 0.1 < by_hand < 1.0
    # It credits a paraphrase that the word-overlap relevance misses, over an unrelated answer.
    related, unrelated = compare.cosines([prompts[0]] * 2, ["Boil the noodles al dente.", "The film was long."])
    assert related > unrelated
    assert evaluation.relevance(prompts[:1], ["Boil the noodles al dente."]) == 0.0


def test_wordllama_loads_from_its_wheel_with_the_network_blocked(compare, monkeypatch, tmp_path):
    import socket

    from wordllama import WordLlama

    def refuse(*args, **kwargs):
        raise OSError("network blocked by the test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(WordLlama, "DEFAULT_CACHE_DIR", tmp_path / "wordllama-cache")  # no earlier download helps
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    compare.wordllama_model.cache_clear()
    try:
        model = compare.wordllama_model()
        assert model.embedding.shape == (32000, 256)
        assert compare.semantic_relevance(["Roast my cooking."], ["Your cooking is bold."]) > 0
    finally:
        compare.wordllama_model.cache_clear()
    assert not (tmp_path / "wordllama-cache").exists()
    # What the loader avoids: wordllama's default lookup misses the tokenizer its wheel ships and goes to the Hub.
    with pytest.raises(FileNotFoundError, match="Failed to download tokenizer"):
        WordLlama.load("l2_supercat", dim=256)


def test_fill_semantic_relevance_from_stored_answers(compare):
    prompts = ["Give me tips for cooking pasta.", "Review the film Up."]
    answers = ["Boil the noodles.", "A touching film about a balloon house."]
    early = ["Pasta.", "Up is a film."]
    record = {"prompts": prompts, "answers": answers,
              "metrics": {"judge": 0.1, "curve": [{"step": 4, "answers": 64, "held_out_answers": early},
                                                  {"step": 16, "answers": 256, "final": True}]}}  # fmt: skip
    assert compare.fill_semantic_relevance(record) is True
    metrics = record["metrics"]
    assert metrics["semantic_relevance"] == pytest.approx(compare.semantic_relevance(prompts, answers))
    assert metrics["curve"][0]["semantic_relevance"] == pytest.approx(compare.semantic_relevance(prompts, early))
    assert metrics["curve"][1]["semantic_relevance"] == metrics["semantic_relevance"]
    assert compare.fill_semantic_relevance(record) is False  # nothing left to add: the file is not rewritten
