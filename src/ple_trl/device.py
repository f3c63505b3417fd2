"""Device-agnostic helpers: which accelerator runs this process, which mixed precision it supports, what model
loading must look like under a multi-process launch. (Reading memory on any backend is a benchmark's concern:
`benchmarks/memory.py`.)

Nothing here names a CUDA API directly: every backend is reached through `accelerate`'s availability checks and
`torch.get_device_module(device_type)`, so the same code runs on CUDA GPUs, Ascend NPUs (through `torch_npu`),
Intel XPUs, Apple MPS and CPU.

The config and the trainer call these helpers at fixed points:

- `PLEConfig.__post_init__`, before `super().__post_init__()`:
  `self.bf16, self.fp16 = resolve_mixed_precision(self.bf16, self.fp16, use_cpu=self.use_cpu)`;
- `PLEConfig.__post_init__`, after `super().__post_init__()`:
  `check_vllm_mode(self.vllm_mode, self.use_vllm, device_type=self.device.type)`;
- `PLETrainer.__init__`, before `super().__init__()`:
  `args.model_init_kwargs = apply_model_init_overrides(args.model_init_kwargs, args.distributed_state)`.
"""

from __future__ import annotations

import logging
import os
import warnings
from contextlib import contextmanager
from typing import Any

import torch

logger = logging.getLogger(__name__)

__all__ = [
    "PrecisionFallbackWarning",
    "accelerator_device_type",
    "apply_model_init_overrides",
    "check_vllm_mode",
    "device_module",
    "is_bf16_supported",
    "is_fp16_supported",
    "model_init_overrides",
    "resolve_mixed_precision",
]

_TRUE_STRINGS = ("1", "true", "yes", "on")


class PrecisionFallbackWarning(UserWarning):
    """Warned when the requested mixed precision is not supported by the accelerator and another one is used."""


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in _TRUE_STRINGS


def accelerator_device_type(use_cpu: bool = False) -> str:
    """
    Device type (`"cuda"`, `"npu"`, `"xpu"`, `"mps"`, ..., or `"cpu"`) that `accelerate` will train on in this
    process, found without initializing the distributed state.

    The backends are probed in `accelerate.PartialState.default_device`'s order, which checks NPU before CUDA (so
    `torch_npu`'s `transfer_to_npu` shim, which makes CUDA calls land on the NPU, still resolves to `"npu"`). An
    existing `PartialState` is not consulted: `TrainingArguments` rebuilds it from the config anyway.

    Args:
        use_cpu (`bool`, *optional*, defaults to `False`):
            Whether the run was asked to stay on CPU (`TrainingArguments.use_cpu`). `accelerate launch --cpu` sets the
            environment variable `ACCELERATE_USE_CPU`, which is honoured too.

    Returns:
        `str`: the `torch.device.type` of the training device.
    """
    if use_cpu or _env_flag("ACCELERATE_USE_CPU"):
        return "cpu"

    from accelerate import utils as acc

    probes = [
        ("mps", acc.is_mps_available),
        ("mlu", acc.is_mlu_available),
        ("sdaa", acc.is_sdaa_available),
        ("musa", acc.is_musa_available),
        ("npu", acc.is_npu_available),
        ("hpu", acc.is_hpu_available),
        ("cuda", acc.is_cuda_available),
        ("xpu", acc.is_xpu_available),
        ("neuron", acc.is_neuron_available),
    ]
    for device_type, is_available in probes:
        try:
            if is_available():
                return device_type
        except Exception:  # a broken optional backend must not hide the others
            logger.debug("Probing %s failed", device_type, exc_info=True)
    return "cpu"


def device_module(device: torch.device | str | None):
    """
    The `torch` submodule of a device type (`torch.npu`, `torch.xpu`, ...), or `None` for CPU.

    Args:
        device (`torch.device`, `str` or `None`):
            A device, a device string (`"npu:0"`) or a device type (`"npu"`). `None` means CPU.

    Returns:
        The module returned by `torch.get_device_module`, or `None` for `"cpu"`, `"meta"` and unknown types.
    """
    if device is None:
        return None
    try:
        device_type = device.type if isinstance(device, torch.device) else torch.device(device).type
    except RuntimeError:  # a device string of a backend that is not registered in this process
        return None
    if device_type in ("cpu", "meta"):
        return None
    try:
        return torch.get_device_module(device_type)
    except (RuntimeError, AttributeError):
        return None


def is_bf16_supported(device_type: str) -> bool:
    """
    Whether mixed-precision bf16 training is supported on an accelerator of this type.

    Uses `torch.<device_type>.is_bf16_supported()` where the backend provides it: `torch_npu` answers `False` on
    Ascend 910A (bf16 arrived with the 910B). CPU answers `False`: bf16 on CPU is autocast emulation, which
    `TrainingArguments` only accepts with `use_cpu=True`.

    Args:
        device_type (`str`):
            A `torch.device.type`, e.g. `"npu"`.

    Returns:
        `bool`
    """
    if device_type == "cpu":
        return False
    if device_type == "hpu":
        return True
    module = device_module(device_type)
    check = getattr(module, "is_bf16_supported", None)
    if check is not None:
        try:
            return bool(check())
        except Exception:
            logger.debug("torch.%s.is_bf16_supported() failed", device_type, exc_info=True)
            return False
    from transformers.utils import is_torch_bf16_gpu_available

    return bool(is_torch_bf16_gpu_available())


def is_fp16_supported(device_type: str) -> bool:
    """
    Whether mixed-precision fp16 training (autocast plus a gradient scaler) is supported on this device type.

    Every accelerator `accelerate` drives has an fp16 path (Ascend 910A included: fp16 is its native training
    precision); CPU does not.

    Args:
        device_type (`str`):
            A `torch.device.type`.

    Returns:
        `bool`
    """
    return device_type not in ("cpu", "meta")


def resolve_mixed_precision(
    bf16: bool | None, fp16: bool | None, device_type: str | None = None, use_cpu: bool = False
) -> tuple[bool, bool]:
    """
    Decide `(bf16, fp16)` for the device this process trains on, before `TrainingArguments` validates them.

    TRL's configs default `bf16` to `None`, which they turn into `True` when `fp16` is off. `TrainingArguments` then
    raises on any device without bf16: a CPU-only machine, or an Ascend 910A (`torch.npu.is_bf16_supported()` is
    `False`). This resolves the flags first:

    | device | `bf16` unset (`None`) | `bf16=True` |
    |---|---|---|
    | accelerator with bf16 | bf16 (TRL's default) | bf16 |
    | accelerator without bf16 (Ascend 910A, pre-Ampere GPU) | fp16 + `PrecisionFallbackWarning` | the same |
    | CPU (or `use_cpu`) | fp32 (info log) | kept with `use_cpu=True` (CPU autocast); else `ValueError` |

    `bf16=False` and an explicit `fp16` are always kept. `bf16=True` with `fp16=True` is a `ValueError`.

    Args:
        bf16 (`bool` or `None`):
            The config's `bf16` field; `None` means "not set by the user".
        fp16 (`bool` or `None`):
            The config's `fp16` field.
        device_type (`str`, *optional*):
            The training device type. Defaults to [`accelerator_device_type`]`(use_cpu)`.
        use_cpu (`bool`, *optional*, defaults to `False`):
            The config's `use_cpu` field.

    Returns:
        `tuple[bool, bool]`: the `(bf16, fp16)` to store on the config.
    """
    fp16 = bool(fp16)
    if bf16 and fp16:
        raise ValueError(
            "bf16=True and fp16=True were both set; mixed precision takes one of them. Set fp16=False to train in "
            "bf16, or bf16=False to train in fp16."
        )
    if bf16 is False or fp16:
        return bool(bf16), fp16

    if device_type is None:
        device_type = accelerator_device_type(use_cpu=use_cpu)

    if device_type == "cpu":
        if bf16 is None:
            logger.info("No accelerator in use (device: cpu): bf16 left unset resolves to fp32 training.")
            return False, False
        if use_cpu:
            return True, False  # explicit CPU bf16 autocast, which TrainingArguments accepts with use_cpu=True
        raise ValueError(
            "bf16=True, but this process has no accelerator with bf16 (device: cpu). Set bf16=False to train in "
            "fp32, or set use_cpu=True to train with CPU bf16 autocast."
        )

    if is_bf16_supported(device_type):
        return True, False

    which = "set" if bf16 else "left unset (TRL's default is bf16)"
    hint = " (an Ascend 910A: bf16 needs a 910B or newer)" if device_type == "npu" else ""
    if is_fp16_supported(device_type):
        warnings.warn(
            f"bf16 was {which}, but torch.{device_type}.is_bf16_supported() is False on this device{hint}. "
            "Falling back to fp16 mixed precision. To silence this, pass bf16=False and fp16=True (or "
            "bf16=False alone for fp32).",
            PrecisionFallbackWarning,
            stacklevel=2,
        )
        return False, True
    warnings.warn(
        f"bf16 was {which}, but the {device_type} device supports neither bf16 nor fp16 mixed precision. "
        "Falling back to fp32. To silence this, pass bf16=False.",
        PrecisionFallbackWarning,
        stacklevel=2,
    )
    return False, False


def _is_distributed(distributed_state) -> bool:
    if distributed_state is None:
        return False
    distributed_type = str(getattr(distributed_state, "distributed_type", "NO")).split(".")[-1]
    num_processes = int(getattr(distributed_state, "num_processes", 1) or 1)
    # DeepSpeed and FSDP place the weights themselves even with one process; any other non-NO type is multi-process.
    return distributed_type != "NO" or num_processes > 1


def model_init_overrides(distributed_state) -> dict[str, Any]:
    """
    `from_pretrained` keyword arguments that a distributed run must use, for the policy, reference and reward models.

    TRL's loader defaults `device_map` to `"auto"` on any accelerator, which spreads one model over every visible
    device. Under a multi-process launch each process must instead load its own full copy (DDP) or hand placement to
    DeepSpeed / FSDP, so `device_map` must be `None`. TRL 1.16 only forces that for `MULTI_GPU` and `DEEPSPEED`; this
    forces it for every distributed type (`MULTI_NPU`, `MULTI_XPU`, `MULTI_CPU`, `FSDP`, `MULTI_HPU`, ...), and also
    for a single-process DeepSpeed or FSDP launch.

    Args:
        distributed_state (`accelerate.PartialState` or `None`):
            Usually `TrainingArguments.distributed_state`. Anything with `distributed_type` and `num_processes`
            attributes works.

    Returns:
        `dict`: `{"device_map": None}` for a distributed run, `{}` otherwise.
    """
    return {"device_map": None} if _is_distributed(distributed_state) else {}


def apply_model_init_overrides(model_init_kwargs: dict | None, distributed_state) -> dict | None:
    """
    Return a copy of `model_init_kwargs` with [`model_init_overrides`] applied.

    Returns the input object itself when nothing must change, so a `None` stays `None` (TRL warns about
    `model_init_kwargs` passed with an instantiated model, and must not warn about a value the user never set).
    A user-set `device_map` other than `None` is replaced with a warning naming it.

    Args:
        model_init_kwargs (`dict` or `None`):
            The config's `model_init_kwargs`.
        distributed_state (`accelerate.PartialState` or `None`):
            Usually `TrainingArguments.distributed_state`.

    Returns:
        `dict` or `None`
    """
    overrides = model_init_overrides(distributed_state)
    if not overrides:
        return model_init_kwargs
    kwargs = dict(model_init_kwargs or {})
    for key, value in overrides.items():
        if kwargs.get(key, value) != value:
            distributed_type = str(getattr(distributed_state, "distributed_type", "?")).split(".")[-1]
            logger.warning(
                "model_init_kwargs[%r]=%r is replaced by %r: a %s run with %d process(es) loads one full copy of "
                "each model per process (or lets DeepSpeed/FSDP place it). Remove %r from model_init_kwargs to "
                "silence this.",
                key,
                kwargs[key],
                value,
                distributed_type,
                getattr(distributed_state, "num_processes", 1),
                key,
            )
        kwargs[key] = value
    return kwargs


def check_vllm_mode(vllm_mode: str, use_vllm: bool, device_type: str | None = None) -> None:
    """
    Refuse vLLM configurations that cannot work on this device, before any model is loaded.

    The vLLM *server* mode pushes the trainer's weights to the server over vLLM's NCCL weight-transfer engine,
    which needs a CUDA device (TRL's `VLLMClient.init_communicator` fails on anything else only after the server was
    started). On Ascend NPUs and other non-CUDA accelerators `vllm_mode="server"` is therefore refused. Colocate mode
    (vLLM in the training process, with the `vllm-ascend` plugin on NPUs) and transformers generation
    (`use_vllm=False`, the default) stay available. CPU is not refused: a config may be built on a CPU login node
    for a CUDA cluster.

    Args:
        vllm_mode (`str`):
            The config's `vllm_mode` (`"colocate"` or `"server"`).
        use_vllm (`bool`):
            The config's `use_vllm`; nothing is checked when it is `False`.
        device_type (`str`, *optional*):
            The training device type. Defaults to [`accelerator_device_type`]`()`.

    Raises:
        `ValueError`: for `use_vllm=True, vllm_mode="server"` on a non-CUDA accelerator.
    """
    if not use_vllm or vllm_mode != "server":
        return
    if device_type is None:
        device_type = accelerator_device_type()
    if device_type in ("cuda", "cpu"):
        return
    extra = " On Ascend, install vllm-ascend and use vllm_mode='colocate'." if device_type == "npu" else ""
    raise ValueError(
        f"vllm_mode='server' is not supported on {device_type} devices: the server's weight sync uses vLLM's NCCL "
        f"weight-transfer engine, which is CUDA-only. Set vllm_mode='colocate', or use_vllm=False to generate with "
        f"transformers (the default).{extra}"
    )


@contextmanager
def eval_mode(model):
    """
    Put `model` in eval mode (no dropout) for the block, then back in the mode it came in: scoring or answering
    during training must not switch the policy's training mode.

    Args:
        model (`torch.nn.Module`): the model.
    """
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)
