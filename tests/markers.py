"""pytest plugin for `@pytest.mark.runs_on(device)`: a test that needs real hardware of that device type is skipped,
with the reason, where that hardware is missing.

Load it from a test module with `pytest_plugins = ["markers"]` (the `tests/` folder is on `sys.path` because it
holds the root `conftest.py`). The marker name itself is registered in `pyproject.toml`.
"""

import importlib.util

import pytest


def device_unavailable_reason(device_type):
    """
    Why real `device_type` hardware is unusable in this process, or `None` when it is usable.

    Args:
        device_type (`str`):
            A `torch.device.type`: `"npu"`, `"cuda"`, `"xpu"`, ...

    Returns:
        `str` or `None`
    """
    if device_type == "npu" and importlib.util.find_spec("torch_npu") is None:
        return "needs a real Ascend NPU: torch_npu is not installed (pip install ple-trl[npu] on an Ascend host)"
    try:
        import torch

        if device_type == "npu":
            import torch_npu  # noqa: F401
        module = torch.get_device_module(device_type)
        if not module.is_available() or module.device_count() < 1:
            return f"needs a real {device_type} device: torch.{device_type}.is_available() is False here"
    except Exception as error:  # e.g. torch_npu installed without Ascend's CANN toolkit
        return f"needs a real {device_type} device: {type(error).__name__}: {error}"
    if getattr(module, "__fake__", False):
        return f"needs a real {device_type} device: the {device_type} backend in this process is a test fake"
    return None


def pytest_runtest_setup(item):
    for marker in item.iter_markers(name="runs_on"):
        if len(marker.args) != 1 or not isinstance(marker.args[0], str):
            raise pytest.UsageError(
                f"{item.nodeid}: runs_on takes one device type string, e.g. @pytest.mark.runs_on('npu'); "
                f"got args={marker.args!r}"
            )
        reason = device_unavailable_reason(marker.args[0])
        if reason is not None:
            pytest.skip(reason)
