"""`ple-trl demo --method spa`'s arguments: dataclass fields with their defaults, both spellings, early errors."""

import pytest

from ple_trl.demo.arguments import METHODS, DemoArguments, build_parser
from ple_trl.tasks import load_spa_seed


def parse(argv):
    (args,) = build_parser().parse_args_into_dataclasses(args=argv)
    return args


def test_spa_fields_default_to_one_pass_over_the_seed_set():
    args = DemoArguments()
    assert args.method == "ple" and METHODS == ("ple", "spa")
    assert (args.seed_steps, args.seed_batch_size, args.seed_learning_rate) == (9, 4, 5e-4)
    assert args.seed_steps * args.seed_batch_size == len(load_spa_seed()) == 36


def test_spa_flags_parse_in_both_spellings():
    new = parse(["--method", "spa", "--seed_steps", "2", "--seed_batch_size", "3", "--seed_learning_rate", "0.001"])
    old = parse(["--method", "spa", "--seed-steps", "2", "--seed-batch-size", "3", "--seed-learning-rate", "0.001"])
    assert new == old
    assert (new.method, new.seed_steps, new.seed_batch_size, new.seed_learning_rate) == ("spa", 2, 3, 0.001)


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
