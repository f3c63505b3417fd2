"""Recipes and launch configs by name, and `ple-trl train` through `accelerate launch`, the way `trl grpo` does it.

- A recipe is a path or the name of one shipped in the package (`ple_trl/recipes/`): `ple-trl train imdb`.
- `--accelerate_config NAME` is a path, a config shipped in ple-trl (`ple_trl/accelerate_configs/`: `multi_npu`) or
  one of TRL's (`single_gpu`, `multi_gpu`, `zero1`, `zero2`, `zero3`, `fsdp1`, `fsdp2`). TRL's configs set
  `mixed_precision: bf16`; ple-trl launches them with `--mixed_precision no` (unless the command line sets it) so that
  [`PLEConfig`]'s `bf16`/`fp16`, which follow the device (fp16 on Ascend 910A, fp32 on CPU), decide, as they do with
  ple-trl's own configs.
- Options the training script does not take but `accelerate launch` does (`--num_processes 2`, `--gpu_ids 0,1`, ...)
  make `ple-trl train` run `accelerate launch [those options] -m ple_trl.scripts.ple [the other arguments]`. Without
  any, it trains in its own process.
"""

import importlib.resources
import os
import subprocess
from pathlib import Path

SCRIPT_MODULE = "ple_trl.scripts.ple"
ACCELERATE_CONFIG_FLAG = "--accelerate_config"


def _shipped(folder: str, package: str = "ple_trl") -> dict[str, str]:
    directory = importlib.resources.files(package).joinpath(folder)
    if not directory.is_dir():
        return {}
    return {Path(entry.name).stem: str(entry) for entry in directory.iterdir() if entry.name.endswith(".yaml")}


def recipe_names() -> list[str]:
    """The names of the recipes shipped in the package (`ple_trl/recipes/*.yaml`): the paper's three tasks."""
    return sorted(_shipped("recipes"))


def recipe_path(recipe: str) -> str:
    """
    The YAML file of a recipe given by path or by the name of a shipped one.

    Args:
        recipe (`str`): a path to a YAML recipe, or a name of [`recipe_names`] (`"imdb"`; `"imdb.yaml"` also works).

    Returns:
        `str`: the path.

    Raises:
        `ValueError`: neither an existing file nor a shipped recipe.
    """
    if os.path.isfile(recipe):
        return recipe
    shipped = _shipped("recipes")
    name = recipe[: -len(".yaml")] if recipe.endswith(".yaml") else recipe
    if name in shipped:
        return shipped[name]
    raise ValueError(
        f"`{recipe}`: no such recipe file, and no recipe of that name ships with ple-trl "
        f"({', '.join(sorted(shipped))}). Give the path of a YAML recipe or one of those names."
    )


def resolve_recipe(argv: list[str]) -> list[str]:
    """
    Replace a recipe given by name, as first argument or as `--config`'s value, by the path of the shipped file:
    `["imdb", "--max_steps", "2"]` becomes `["/.../ple_trl/recipes/imdb.yaml", "--max_steps", "2"]`.

    Args:
        argv (`list[str]`): the training script's arguments.

    Returns:
        `list[str]`: the arguments, paths unchanged.

    Raises:
        `ValueError`: a recipe that is neither a file nor a shipped recipe's name (see [`recipe_path`]).
    """
    argv = list(argv)
    if argv and not argv[0].startswith("-"):
        argv[0] = recipe_path(argv[0])
    if "--config" in argv:
        index = argv.index("--config")
        if index + 1 < len(argv) and not argv[index + 1].startswith("-"):
            argv[index + 1] = recipe_path(argv[index + 1])
    return argv


def accelerate_configs() -> dict[str, str]:
    """
    The launch configs that `--accelerate_config` can name: TRL's (`trl/accelerate_configs/`) and ple-trl's own
    (`ple_trl/accelerate_configs/`, for what TRL has no config for), by name.

    Returns:
        `dict[str, str]`: path by name; a ple-trl config wins over a TRL one of the same name.
    """
    return {**_shipped("accelerate_configs", "trl"), **_shipped("accelerate_configs")}


def resolve_accelerate_config(launch_args: list[str]) -> list[str]:
    """
    Turn `--accelerate_config NAME_OR_PATH` into `accelerate launch`'s `--config_file PATH` (with TRL's
    `resolve_accelerate_config_argument`), looking the name up among ple-trl's configs, then TRL's.

    Args:
        launch_args (`list[str]`): the `accelerate launch` options.

    Returns:
        `list[str]`: the options, with `--config_file PATH` first when a config was named; `--mixed_precision no` is
        added for a TRL config unless the options already set `--mixed_precision`.

    Raises:
        `ValueError`: the value is missing, or names no file and no config.
    """
    from trl.cli.accelerate_config import resolve_accelerate_config_argument

    if ACCELERATE_CONFIG_FLAG not in launch_args:
        return launch_args
    index = launch_args.index(ACCELERATE_CONFIG_FLAG)
    if index + 1 >= len(launch_args) or launch_args[index + 1].startswith("-"):
        raise ValueError(f"`{ACCELERATE_CONFIG_FLAG}` needs a value: one of {sorted(accelerate_configs())} or a path.")
    value = launch_args[index + 1]
    extra = []
    if not os.path.isfile(value):
        configs = accelerate_configs()
        if value not in configs:
            raise ValueError(
                f"`{ACCELERATE_CONFIG_FLAG} {value}` is neither a file nor a launch config of ple-trl or TRL. Use one "
                f"of {sorted(configs)}, or the path of an accelerate config file."
            )
        if value not in _shipped("accelerate_configs") and not any(
            arg.split("=")[0] in ("--mixed_precision", "--mixed-precision") for arg in launch_args
        ):
            extra = ["--mixed_precision", "no"]  # let PLEConfig's device-aware bf16/fp16 decide, not TRL's bf16
        value = configs[value]
    launch_args = [*launch_args[:index], ACCELERATE_CONFIG_FLAG, value, *launch_args[index + 2 :], *extra]
    return resolve_accelerate_config_argument(launch_args)


def launch_arguments(argv: list[str], remaining: list[str]) -> list[str]:
    """
    The `accelerate launch` arguments that run the training script on `argv`, given the strings of `argv` that the
    script's parser did not take (`remaining`, in order): those go to `accelerate launch`, the rest to the script.

    Args:
        argv (`list[str]`): the training script's command line (recipe as `--config PATH`).
        remaining (`list[str]`): the options of `argv` (and their values) that the script does not know.

    Returns:
        `list[str]`: `[launch options ..., "--module", "ple_trl.scripts.ple", script arguments ...]`.

    Raises:
        `ValueError`: an unknown option is not an `accelerate launch` option either (a typo, most likely).
    """
    from accelerate.commands.launch import launch_command_parser
    from trl.cli.commands.training import _subtract_subsequence

    known = set(launch_command_parser()._option_string_actions) | {ACCELERATE_CONFIG_FLAG}
    unknown = [arg for arg in remaining if arg.startswith("-") and arg.split("=")[0] not in known]
    if unknown or (remaining and not remaining[0].startswith("-")):
        raise ValueError(
            f"Unknown argument(s) {unknown or remaining[:1]}: neither the training script (see `ple-trl train "
            "--help`) nor `accelerate launch` (see `accelerate launch --help`) takes them. Check the spelling."
        )
    launch_args = resolve_accelerate_config(remaining)
    return [*launch_args, "--module", SCRIPT_MODULE, *_subtract_subsequence(argv, remaining)]


def launch(accelerate_argv: list[str]) -> int:
    """
    Run `accelerate launch` with `accelerate_argv` (from [`launch_arguments`]) in this process, as `trl grpo` does.

    Args:
        accelerate_argv (`list[str]`): the arguments after `accelerate launch`.

    Returns:
        `int`: the exit status, that of the training processes (their errors are printed by them).
    """
    from accelerate.commands.launch import launch_command, launch_command_parser

    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    print(f"accelerate launch {' '.join(accelerate_argv)}", flush=True)
    try:
        launch_command(launch_command_parser().parse_args(accelerate_argv))
    except subprocess.CalledProcessError as error:  # one process: its traceback is already printed
        return error.returncode or 1
    except ChildFailedError:  # several processes: torchrun has printed which one failed and why
        return 1
    return 0
