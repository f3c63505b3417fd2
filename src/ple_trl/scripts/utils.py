"""Command-line glue shared by `ple-trl train` and `ple-trl eval` (the dataset steps live in `ple_trl.data`)."""

import os


def config_argv(argv: list[str]) -> list[str]:
    """
    Accept a recipe path as first argument: `recipe.yaml --key value` becomes `--config recipe.yaml --key value`.

    Args:
        argv (`list[str]`): the arguments after the program (or subcommand) name.

    Returns:
        `list[str]`
    """
    argv = list(argv)
    if argv and not argv[0].startswith("-") and argv[0].lower().endswith((".yaml", ".yml")):
        if "--config" in argv:
            raise ValueError(f"Two recipes: {argv[0]!r} and `--config {argv[argv.index('--config') + 1]}`. Give one.")
        argv = ["--config", *argv]
    if "--config" in argv:
        index = argv.index("--config")
        if index + 1 >= len(argv) or not os.path.isfile(argv[index + 1]):
            missing = argv[index + 1] if index + 1 < len(argv) else None
            raise ValueError(f"`--config {missing}`: no such recipe file. Give the path of a YAML recipe.")
    return argv
