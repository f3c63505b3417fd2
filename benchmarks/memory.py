"""Memory and timing helpers of the benchmarks, on whichever accelerator runs them (CUDA, Ascend NPU, XPU, MPS, CPU).

Every backend is reached through [`ple_trl.device.device_module`] (`torch.get_device_module`), never a CUDA API.
"""

import torch

from ple_trl.device import device_module


def clear_device_cache(garbage_collection: bool = False) -> None:
    """
    Release the cached blocks of whichever accelerator is in use (`accelerate.utils.memory.clear_device_cache`).

    Args:
        garbage_collection (`bool`, *optional*, defaults to `False`):
            Also run `gc.collect()` first (slow; use between phases, not per step).
    """
    from accelerate.utils.memory import clear_device_cache as _clear

    _clear(garbage_collection=garbage_collection)


def synchronize(device: torch.device | str | None) -> None:
    """
    Wait for the kernels queued on `device` to finish (for wall-clock timings). No-op on CPU.

    Args:
        device (`torch.device`, `str` or `None`):
            The device to synchronize.
    """
    module = device_module(device)
    if module is not None and hasattr(module, "synchronize"):
        module.synchronize()


def reset_peak_memory(device: torch.device | str | None) -> None:
    """
    Reset the peak-memory counter of `device` (`torch.<type>.reset_peak_memory_stats`). No-op on CPU.

    Args:
        device (`torch.device`, `str` or `None`):
            The device whose counter to reset.
    """
    module = device_module(device)
    if module is not None and hasattr(module, "reset_peak_memory_stats"):
        module.reset_peak_memory_stats(device)


def peak_memory_bytes(device: torch.device | str | None) -> int | None:
    """
    Peak memory allocated by tensors on `device` since the last [`reset_peak_memory`], in bytes.

    Args:
        device (`torch.device`, `str` or `None`):
            The device to read.

    Returns:
        `int` or `None`: `None` on CPU and on backends without `max_memory_allocated` (there is no allocator
        counter to read there, and a zero would be mistaken for a measurement).
    """
    module = device_module(device)
    reader = getattr(module, "max_memory_allocated", None)
    if reader is None:
        return None
    return int(reader(device))
