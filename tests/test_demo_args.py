"""`ple-trl demo`'s arguments: one dataclass holds the defaults, parsed like `train`/`eval`, old spellings kept."""

import dataclasses
import os

import pytest

from ple_trl.demo.arguments import DemoArguments, build_parser


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


def test_train_style_flags_and_the_old_dashed_spellings_parse_alike():
    new = parse([
        "--output_dir", "runs/a", "--num_heldout", "8", "--batch_size", "2", "--max_completion_length", "6",
        "--steps_per_iteration", "1", "--num_train_prompts", "12", "--measure_principled_after", "--quiet",
    ])  # fmt: skip
    old = parse([
        "--output-dir", "runs/a", "--num-heldout", "8", "--batch-size", "2", "--max-completion-length", "6",
        "--steps-per-iteration", "1", "--num-train-prompts", "12", "--measure-principled-after", "--quiet",
    ])  # fmt: skip
    assert new == old
    assert (new.output_dir, new.num_heldout, new.batch_size, new.num_train_prompts) == ("runs/a", 8, 2, 12)
    assert new.measure_principled_after is True and new.quiet is True
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
