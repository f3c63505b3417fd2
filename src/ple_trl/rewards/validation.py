"""Reward functions checked as they answer: a value torch cannot read fails with the function's name."""

import numbers

import numpy as np
import torch
from trl.trainer.utils import is_async_callable


def _is_reward_value(value) -> bool:
    if value is None or isinstance(value, numbers.Real):
        return True
    if isinstance(value, torch.Tensor):
        return value.numel() == 1 and not value.is_complex()
    if isinstance(value, (np.ndarray, np.generic)):
        return value.size == 1 and value.dtype.kind in "biuf"
    return False


def checked_reward_function(reward_func, name: str):
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
