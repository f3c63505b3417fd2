"""The reward functions `--reward_funcs` can name: registered names, installed modules and local files."""

import hashlib
import importlib
import importlib.util
import inspect
import os
import sys
from collections.abc import Callable

from . import lexicon


def _accepts_completions(func) -> bool:
    try:
        parameters = inspect.signature(func).parameters
    except (TypeError, ValueError):
        return False
    return "completions" in parameters or any(p.kind is p.VAR_KEYWORD for p in parameters.values())


def reward_funcs_registry(max_completion_length: int | None = None) -> dict[str, Callable]:
    """
    The reward functions that `--reward_funcs` can name.

    They are the lexicon rewards of `ple_trl.rewards` (`vader_sentiment`, `profanity_penalty`), every reward function
    `trl.rewards` exports (`accuracy_reward`, `reasoning_accuracy_reward` (need `math_verify`), `think_format_reward`
    in TRL 1.x), and `get_soft_overlong_punishment` built for `max_completion_length` (a soft penalty over its last
    quarter).

    Args:
        max_completion_length (`int` or `None`, *optional*, defaults to `None`):
            The training's `max_completion_length`, for `get_soft_overlong_punishment` (left out when `None`).

    Returns:
        `dict[str, Callable]`: reward functions by name.
    """
    import trl.rewards

    # TRL's reward functions are every public name of `trl.rewards` that takes `completions`; the `get_*` factories
    # build reward functions from settings and are not listed, except the overlong penalty built for this run.
    registry = {
        name: func
        for name in trl.rewards.__all__
        if inspect.isfunction(func := getattr(trl.rewards, name)) and _accepts_completions(func)
    }
    if max_completion_length:
        registry["get_soft_overlong_punishment"] = trl.rewards.get_soft_overlong_punishment(
            max_completion_len=max_completion_length, soft_punish_cache=max(1, max_completion_length // 4)
        )
    for name in lexicon.__all__:
        func = getattr(lexicon, name)
        if _accepts_completions(func):
            registry[name] = func
    return registry


def load_reward_func(spec: str) -> Callable:
    """
    Import a reward function from a `--reward_funcs` spec that is not a registered name.

    Two forms, neither of which changes `sys.path` (so a local file can never shadow an installed package, as it would
    if the current directory were put first on `sys.path`):

    - `package.module.function` (or `package.module:function`): imported through the normal import system, from the
      installed packages and the existing `sys.path`;
    - `path/to/file.py:function`: the file is loaded by its path (for a local file that is not an installed module).

    Args:
        spec (`str`):
            `package.module.function`, `package.module:function` or `path/to/file.py:function`.

    Returns:
        `Callable`: the reward function.

    Raises:
        `ValueError`: the module, file or function cannot be found, or the object found is not callable.
    """
    target, separator, attribute = spec.rpartition(":")
    if separator and target.endswith(".py"):
        if not os.path.isfile(target):
            raise ValueError(
                f"`--reward_funcs {spec}`: the file {target!r} does not exist. Give the path of a .py file."
            )
        path = os.path.abspath(target)
        # A stable name of its own, so that two specs of one file share one module and nothing installed is shadowed.
        module_name = f"_ple_trl_reward_file_{hashlib.sha1(path.encode()).hexdigest()[:12]}"
        module = sys.modules.get(module_name)
        if module is None:
            module_spec = importlib.util.spec_from_file_location(module_name, path)
            module = importlib.util.module_from_spec(module_spec)
            sys.modules[module_name] = module  # the file's own dataclasses and pickling look their module up here
            try:
                module_spec.loader.exec_module(module)
            except BaseException:
                del sys.modules[module_name]
                raise
        source = f"the file {target!r}"
    elif separator or "." in spec:
        module_path, attribute = (target, attribute) if separator else spec.rsplit(".", 1)
        try:
            module = importlib.import_module(module_path)
        except ImportError as error:
            local_file = os.path.join(*module_path.split(".")) + ".py"
            hint = (
                f"To load the local file {local_file!r}, pass `--reward_funcs {local_file}:{attribute}`."
                if os.path.isfile(local_file)
                else "Install the package that provides it, or pass a local file as `path/to/file.py:function`."
            )
            raise ValueError(
                f"`--reward_funcs {spec}`: cannot import the module {module_path!r} ({error}). {hint}"
            ) from None
        source = f"the module {module_path!r} ({getattr(module, '__file__', None) or 'built in'})"
    else:
        raise ValueError(
            f"`--reward_funcs {spec}` is neither a dotted import path (`package.module.function`) nor a file "
            "(`path/to/file.py:function`)."
        )
    func = getattr(module, attribute, None)
    if not callable(func):
        raise ValueError(f"`--reward_funcs {spec}`: {source} has no function {attribute!r}.")
    return func


def resolve_reward_funcs(names: list[str] | None, max_completion_length: int | None = None) -> list[Callable]:
    """
    Turn `--reward_funcs` names into reward functions.

    Args:
        names (`list[str]` or `None`):
            Names of [`reward_funcs_registry`], dotted import paths (`package.module.function`, imported without
            changing `sys.path`) or local files (`path/to/file.py:function`); see [`load_reward_func`].
        max_completion_length (`int` or `None`, *optional*, defaults to `None`):
            Passed to [`reward_funcs_registry`].

    Returns:
        `list[Callable]`: the reward functions, in order.

    Raises:
        `ValueError`: for a name that is neither registered nor importable, listing the registered names.
    """
    registry = reward_funcs_registry(max_completion_length)
    funcs = []
    for name in names or []:
        if name in registry:
            funcs.append(registry[name])
        elif "." in name or ":" in name:
            funcs.append(load_reward_func(name))
        else:
            raise ValueError(
                f"`--reward_funcs {name}` is not a known reward function. Use one of {sorted(registry)}, a dotted "
                "import path such as `my_package.my_module.my_reward`, or a local file as `my_rewards.py:my_reward`."
            )
    return funcs
