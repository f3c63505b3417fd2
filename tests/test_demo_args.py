"""`ple-trl demo`'s arguments: one dataclass holds the defaults (SPA's seed stage included), parsed like
`train`/`eval`, the dashed spellings accepted too, and bad values refused early."""

import dataclasses
import os

import pytest

from ple_trl.demo.arguments import METHODS, DemoArguments, build_parser
from ple_trl.tasks import load_spa_seed


def parse(argv):
    (args,) = build_parser().parse_args_into_dataclasses(args=argv)
    return args


def test_parser_defaults_are_the_dataclass_defaults():
    assert parse([]) == DemoArguments()
    args = DemoArguments()
    assert (args.steps, args.batch_size, args.max_completion_length, args.num_heldout) == (16, 8, 24, 64)
    assert (args.learning_rate, args.temperature, args.steps_per_iteration) == (1e-4, 0.7, 4)
    # SPA's demo keeps its own rate; an explicit rate wins for either method.
    assert DemoArguments(method="spa").learning_rate == 3e-4
    assert parse(["--method", "spa", "--learning_rate", "2e-4"]).learning_rate == 2e-4
    assert parse(["--learning_rate", "5e-5"]).learning_rate == 5e-5
    assert args.output_dir == "ple-demo" and args.model is None and args.num_train_prompts is None
    assert args.threads == max(1, (os.cpu_count() or 2) // 2) and args.plot and not args.quiet


def test_train_style_flags_and_the_dashed_spellings_parse_alike():
    underscored = parse([
        "--output_dir", "runs/a", "--num_heldout", "8", "--batch_size", "2", "--max_completion_length", "6",
        "--steps_per_iteration", "1", "--num_train_prompts", "12", "--measure_principled_after", "--quiet",
    ])  # fmt: skip
    dashed = parse([
        "--output-dir", "runs/a", "--num-heldout", "8", "--batch-size", "2", "--max-completion-length", "6",
        "--steps-per-iteration", "1", "--num-train-prompts", "12", "--measure-principled-after", "--quiet",
    ])  # fmt: skip
    assert underscored == dashed
    args = underscored
    assert (args.output_dir, args.num_heldout, args.batch_size, args.num_train_prompts) == ("runs/a", 8, 2, 12)
    assert args.measure_principled_after is True and args.quiet is True
    assert parse(["--no_plot"]).plot is False


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(steps=0), "`steps=0` must be an integer >= 1"),
        (dict(num_heldout=97), "`num_heldout=97` is more than the 96 held-out prompts"),
        (dict(num_train_prompts=321), "`num_train_prompts=321` must be between 1 and 320"),
        (dict(learning_rate=0.0), r"`learning_rate=0.0` must be > 0 \(the demo uses 0.0001\)"),
        (dict(temperature=-1.0), "`temperature=-1.0` must be > 0"),
        (dict(threads=0), "`threads=0` must be an integer >= 1"),
    ],
)
def test_bad_arguments_fail_when_parsed(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DemoArguments(**kwargs)
    flag, value = next(iter(kwargs.items()))
    with pytest.raises(ValueError, match=match):  # before anything is loaded, from the command line too
        parse([f"--{flag}", str(value)])


def test_run_demo_sets_keyword_arguments_over_given_arguments(monkeypatch):
    from ple_trl.demo import run as demo

    seen = []

    def stop(args):
        seen.append(args)
        raise RuntimeError("stop after load")

    monkeypatch.setattr(demo, "load", stop)
    with pytest.raises(RuntimeError, match="stop after load"):
        demo.run_demo(DemoArguments(steps=3, seed=5, threads=1), seed=7)
    assert dataclasses.astuple(seen[0]) == dataclasses.astuple(DemoArguments(steps=3, seed=7, threads=1))


# --- `--method spa` -------------------------------------------------------------------------------------------------


def test_spa_fields_default_to_one_pass_over_the_seed_set():
    args = DemoArguments()
    assert args.method == "ple" and METHODS == ("ple", "spa")
    assert (args.seed_steps, args.seed_batch_size, args.seed_learning_rate) == (9, 4, 5e-4)
    assert args.seed_steps * args.seed_batch_size == len(load_spa_seed()) == 36


def test_spa_flags_parse_in_both_spellings():
    underscored = parse(
        ["--method", "spa", "--seed_steps", "2", "--seed_batch_size", "3", "--seed_learning_rate", "0.001"]
    )
    dashed = parse(["--method", "spa", "--seed-steps", "2", "--seed-batch-size", "3", "--seed-learning-rate", "0.001"])
    assert underscored == dashed
    assert (dashed.method, dashed.seed_steps, dashed.seed_batch_size, dashed.seed_learning_rate) == (
        "spa", 2, 3, 0.001
    )  # fmt: skip


def test_unknown_method_is_refused_by_the_parser_and_the_dataclass(capsys):
    with pytest.raises(SystemExit):
        parse(["--method", "dpo"])
    assert "invalid choice: 'dpo'" in capsys.readouterr().err
    with pytest.raises(ValueError, match=r"`method='dpo'` is not a demo method; use one of \('ple', 'spa'\)"):
        DemoArguments(method="dpo")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(seed_steps=0), "`seed_steps=0` must be an integer >= 1"),
        (dict(seed_batch_size=0), "`seed_batch_size=0` must be an integer >= 1"),
        (dict(seed_learning_rate=0.0), r"`seed_learning_rate=0.0` must be > 0 \(the demo uses 0.0005\)"),
    ],
)
def test_bad_seed_arguments_fail_when_parsed(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DemoArguments(**kwargs)
    flag, value = next(iter(kwargs.items()))
    with pytest.raises(ValueError, match=match):
        parse([f"--{flag.replace('_', '-')}", str(value)])
