"""Command-line glue shared by `ple-trl train` and `ple-trl eval` (the dataset steps live in `ple_trl.data`)."""

import os

# What a recipe looks like, for the fix of the errors below.
RECIPE_FORMAT = "one `argument: value` line per argument, e.g. `learning_rate: 1.0e-6`"


def load_recipe(path: str) -> dict:
    """
    Read a YAML recipe (the file of `--config`). A file that TRL's parser would fail on with a traceback or an unclear
    message (not YAML, empty, not a mapping of argument names) is refused here, with the file named.

    Args:
        path (`str`): the recipe file.

    Returns:
        `dict`: the recipe's keys and values.

    Raises:
        `ValueError`: the file is not UTF-8 text, not valid YAML, empty, not a mapping, or has keys that are not names.
    """
    import yaml

    try:
        with open(path, encoding="utf-8") as f:
            recipe = yaml.safe_load(f)
    except UnicodeDecodeError:
        raise ValueError(f"`--config {path}`: the recipe is not UTF-8 text. Give the path of a YAML recipe.") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        problem = getattr(error, "problem", None) or " ".join(str(error).split())
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        raise ValueError(
            f"`--config {path}`: the recipe is not valid YAML: {problem}{where}. Fix the syntax there (a recipe "
            f"holds {RECIPE_FORMAT})."
        ) from None
    if not isinstance(recipe, dict):
        kind = "empty" if recipe is None else f"a YAML {'list' if isinstance(recipe, list) else type(recipe).__name__}"
        raise ValueError(
            f"`--config {path}`: the recipe is {kind}, not a mapping of argument names to values. Write "
            f"{RECIPE_FORMAT}."
        )
    not_names = [key for key in recipe if not isinstance(key, str)]
    if not_names:
        raise ValueError(
            f"`--config {path}`: the recipe has keys that are not argument names: {not_names}. Write "
            f"{RECIPE_FORMAT}."
        )
    return recipe


def config_argv(argv: list[str]) -> list[str]:
    """
    Accept a recipe path as first argument: `recipe.yaml --key value` becomes `--config recipe.yaml --key value`, and
    check the recipe (see [`load_recipe`]).

    Args:
        argv (`list[str]`): the arguments after the program (or subcommand) name.

    Returns:
        `list[str]`

    Raises:
        `ValueError`: two recipes, a missing recipe file, or one that is not a YAML mapping (see [`load_recipe`]).
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
        load_recipe(argv[index + 1])  # a recipe TRL's parser cannot read fails here, with the file named
    return argv
