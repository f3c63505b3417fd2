"""The `ple-trl` console script: `ple-trl COMMAND [ARGS ...]`.

Every command is a function `main(argv: list[str] | None) -> int | None` in its own module, imported only when the
command runs (so `ple-trl --help` is fast); `ple-trl COMMAND --help` shows the command's own arguments. To add a
command, add a line to [`COMMANDS`].

A user error (a bad argument or configuration value, a missing file: `ValueError`, `TypeError`, `OSError`,
`ImportError`) prints one line, `ple-trl COMMAND: error: MESSAGE`, and exits with status 1; `ple-trl --debug COMMAND
...` (or `PLE_TRL_DEBUG=1`) shows the full traceback instead. Other exceptions always show their traceback.
"""

import argparse
import importlib
import logging
import os
import sys

logger = logging.getLogger(__name__)

# The exceptions that a user's input causes (and that our code and the config validation raise with a message that
# names the argument and the fix): shown as one line unless debugging. Anything else is a bug and keeps its traceback.
USER_ERRORS = (ValueError, TypeError, OSError, ImportError)
DEBUG_ENV = "PLE_TRL_DEBUG"

# name: (module, function, one-line help)
COMMANDS = {
    "train": (
        "ple_trl.scripts.ple",
        "run",
        "Train with PLE: the TRL-style script, e.g. `ple-trl train hh --output_dir out` (a shipped recipe: hh, imdb, "
        "tldr); `--num_processes N --accelerate_config zero2` runs it through `accelerate launch`.",
    ),
    "eval": (
        "ple_trl.scripts.eval",
        "main",
        "Answer a prompt set with a model (or two) and print the offline metrics (reward, win rate, BLEU, "
        "perplexity).",
    ),
    "demo": ("ple_trl.demo", "main", "Run the offline demo on a small real model."),
    "plot": ("ple_trl.plotting", "main", "Plot a run's PLE curves (rewards, reward gap against tau, ranked pairs)."),
}


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser: it only lists the commands; each command parses its own arguments."""
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="ple-trl",
        description="Progressively Label Enhancement (PLE, ICML 2025) for Hugging Face TRL.",
        epilog="Run `ple-trl COMMAND --help` for the arguments of a command.",
    )
    parser.add_argument("--version", action="version", version=f"ple-trl {__version__}")
    parser.add_argument(
        "--debug",
        action="store_true",
        help=f"Show the full traceback of an error instead of its one-line message (also: {DEBUG_ENV}=1). Give it "
        "before the command: `ple-trl --debug train ...` (after `train`, `--debug` is TrainingArguments' own option).",
    )
    subparsers = parser.add_subparsers(title="commands", dest="command", metavar="COMMAND")
    for name, (_, _, help_text) in COMMANDS.items():
        subparsers.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    """
    Run `ple-trl`.

    Args:
        argv (`list[str]`, *optional*): the arguments after `ple-trl`; `sys.argv[1:]` when `None`.

    Returns:
        `int`: the exit status.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = os.environ.get(DEBUG_ENV, "").strip().lower() in ("1", "true", "yes", "on")
    while argv and argv[0] == "--debug":
        debug = True
        argv.pop(0)
    parser = build_parser()
    if not argv or argv[0].startswith("-"):
        parser.parse_args(argv or ["--help"])  # --help / --version exit here
        parser.error(f"give a command first, one of {list(COMMANDS)}; got {argv[0]!r}.")
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        parser.error(f"unknown command {command!r}: use one of {list(COMMANDS)}.")
    module_name, function_name, _ = COMMANDS[command]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name != module_name:
            raise
        parser.error(f"`ple-trl {command}` is not available in this installation ({module_name} is missing).")
    try:
        status = getattr(module, function_name)(rest)
    except USER_ERRORS as error:
        if debug:
            raise
        logger.debug("ple-trl %s failed", command, exc_info=True)
        message = str(error) or type(error).__name__
        print(f"ple-trl {command}: error: {message}", file=sys.stderr)
        print(f"(run `ple-trl --debug {command} ...` or set {DEBUG_ENV}=1 to see the traceback)", file=sys.stderr)
        return 1
    return status if isinstance(status, int) else 0


if __name__ == "__main__":
    sys.exit(main())
