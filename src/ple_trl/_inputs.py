"""
Checks of what users pass to [`PLETrainer`]: model paths and reward functions, run at construction, and the
placeholder that stands for the implicit reward in GRPO's list of reward sources.
"""

import numbers
import os

import numpy as np
import torch
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id
from trl.trainer.utils import is_async_callable


def _check_model_path(value: str, argument: str):
    # A string that cannot be a Hub id is meant as a local path: say that it is missing, not that it is a bad repo id.
    if os.path.exists(value):
        return
    try:
        validate_repo_id(value)
    except HFValidationError:
        hint = " (`~` is not expanded: give the full path)" if value.startswith("~") else ""
        raise ValueError(
            f"`{argument}`: the path {value!r} does not exist{hint}. Give an existing local model folder, or a Hub id "
            "such as 'org/name'."
        ) from None


def _is_reward_value(value) -> bool:
    if value is None or isinstance(value, numbers.Real):
        return True
    if isinstance(value, torch.Tensor):
        return value.numel() == 1 and not value.is_complex()
    if isinstance(value, (np.ndarray, np.generic)):
        return value.size == 1 and value.dtype.kind in "biuf"
    return False


def _checked_reward_function(reward_func, name: str):
    """Wrap a reward function so that a value torch cannot read fails with the function's name, not torch's words."""

    def check(rewards):
        try:
            values = list(rewards)
        except TypeError:
            raise ValueError(
                f"The reward function {name!r} returned {rewards!r} (a {type(rewards).__name__}); it must return a "
                "list with one float (or None for an answer it cannot score) per completion."
            ) from None
        for value in values:
            if not _is_reward_value(value):
                raise ValueError(
                    f"The reward function {name!r} returned {value!r} (a {type(value).__name__}) as a reward; it must "
                    "return one float (or None for an answer it cannot score) per completion."
                )
        return values

    if is_async_callable(reward_func):

        async def checked(*args, **kwargs):
            return check(await reward_func(*args, **kwargs))

    else:

        def checked(*args, **kwargs):
            return check(reward_func(*args, **kwargs))

    checked.__name__ = checked.__qualname__ = name
    checked.__wrapped__ = reward_func
    return checked


def _implicit_reward_placeholder(*args, **kwargs):
    # Stands for the implicit reward in GRPO's list of reward sources (which must not be empty) and names its column;
    # the trainer computes the implicit reward itself, from the model, which reward functions never see.
    raise RuntimeError("The implicit reward is computed by the trainer, not called as a reward function.")


_implicit_reward_placeholder.__name__ = _implicit_reward_placeholder.__qualname__ = "implicit_reward"
