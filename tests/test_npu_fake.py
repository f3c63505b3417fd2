"""The Ascend NPU code paths, exercised without Ascend hardware.

Each scenario runs in a fresh Python process whose `sys.path` starts with a temporary folder holding a *fake*
`torch_npu` package (written by the test, never installed). Importing it does what the real one does to `torch`:
rename the PrivateUse1 backend to `npu` and register a `torch.npu` device module. Nothing in accelerate or
transformers is patched: their own checks (`accelerate.utils.is_npu_available`, which `PartialState` uses, and
`transformers.utils.is_torch_npu_available`, which `TrainingArguments` uses) find the package with
`importlib.util.find_spec("torch_npu")`, import it and ask `torch.npu.is_available()`, exactly as on an Ascend host.
The fake's `is_bf16_supported()` answers like `torch_npu` does on the SoC named by `FAKE_NPU_SOC` (910A: no bf16).

A multi-process NPU state (`DistributedType.MULTI_NPU`) is built for real too: `LOCAL_RANK` is set, so accelerate
picks the `hccl` backend, which the scenario registers as a gloo process group (world size 1).
"""

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

pytest_plugins = ["markers"]

from ple_trl.device import (  # noqa: E402
    PrecisionFallbackWarning,
    apply_model_init_overrides,
    check_vllm_mode,
    model_init_overrides,
    resolve_mixed_precision,
)

from helpers import BENCHMARKS, SRC  # noqa: E402

# The memory helpers serve the benchmarks only, so they live there (`benchmarks/memory.py`).
sys.path.insert(0, str(BENCHMARKS))
from memory import peak_memory_bytes, reset_peak_memory  # noqa: E402

FAKE_TORCH_NPU = '''
"""Test fake of torch_npu: registers a `torch.npu` device module and nothing else (no kernels)."""
import os
import types

import torch

__version__ = "0.0.0+fake"

npu = types.ModuleType("torch.npu")
npu.__fake__ = True
npu.calls = {"empty_cache": 0, "set_device": []}
npu.is_available = lambda: True
npu.device_count = lambda: int(os.environ.get("FAKE_NPU_COUNT", "8"))
npu.is_bf16_supported = lambda: os.environ.get("FAKE_NPU_SOC", "910B") != "910A"
npu.current_device = lambda: 0
npu.set_device = lambda device: npu.calls["set_device"].append(str(device))
npu.synchronize = lambda device=None: None
npu.manual_seed = lambda seed: None
npu.manual_seed_all = lambda seed: None
npu.max_memory_allocated = lambda device=None: 4096


def _empty_cache():
    npu.calls["empty_cache"] += 1


npu.empty_cache = _empty_cache
npu.reset_peak_memory_stats = lambda device=None: None

torch.utils.rename_privateuse1_backend("npu")
torch._register_device_module("npu", npu)


def npu_fusion_attention(*args, **kwargs):  # imported by transformers.integrations.npu_flash_attention
    raise RuntimeError("fake torch_npu has no kernels")
'''

# Prelude of every scenario: silence, then collect observations into `out`, printed as JSON at the end.
PRELUDE = """
import json, os, sys, warnings
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
warnings.simplefilter("ignore", FutureWarning)
import torch
out = {}
"""


@pytest.fixture(scope="module")
def fake_npu_path(tmp_path_factory):
    root = tmp_path_factory.mktemp("fake-npu")
    (root / "torch_npu").mkdir()
    (root / "torch_npu" / "__init__.py").write_text(FAKE_TORCH_NPU)
    return root


def run_scenario(fake_npu_path, body, **env):
    """Run `body` in a fresh interpreter that sees the fake `torch_npu`; return the `out` dict it fills."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("ACCELERATE_", "FAKE_NPU_"))}
    for key in ("LOCAL_RANK", "RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        environment.pop(key, None)
    environment["PYTHONPATH"] = os.pathsep.join(
        [str(fake_npu_path), str(SRC), str(BENCHMARKS), environment.get("PYTHONPATH", "")]
    )
    environment.update(env)
    code = PRELUDE + textwrap.dedent(body) + "\nprint('RESULT ' + json.dumps(out))\n"
    proc = subprocess.run([sys.executable, "-c", code], env=environment, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, f"scenario failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, f"no result printed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return json.loads(lines[-1][len("RESULT ") :])


SINGLE_NPU = """
import torch_npu
from accelerate import PartialState
from accelerate.utils import is_npu_available
from transformers.utils import is_torch_npu_available
from ple_trl import device as D

out["accelerate_is_npu_available"] = is_npu_available()
out["transformers_is_torch_npu_available"] = is_torch_npu_available()
out["our_device_type"] = D.accelerator_device_type()
out["our_device_type_use_cpu"] = D.accelerator_device_type(use_cpu=True)

with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    out["resolved_default"] = D.resolve_mixed_precision(None, None)
    out["resolved_bf16"] = D.resolve_mixed_precision(True, False)
    out["resolved_fp32"] = D.resolve_mixed_precision(False, False)
out["warnings"] = [f"{w.category.__name__}: {w.message}" for w in caught]

from trl import GRPOConfig
bf16, fp16 = D.resolve_mixed_precision(None, None)
args = GRPOConfig(output_dir="out", report_to="none", bf16=bf16, fp16=fp16)
out["config_device"] = str(args.device)
out["config_distributed_type"] = str(args.distributed_state.distributed_type)
out["partial_state_device_type"] = PartialState().device.type
out["config_precision"] = [args.bf16, args.fp16]
try:
    GRPOConfig(output_dir="out", report_to="none")  # TRL's own default: bf16=True
    out["trl_default_error"] = None
except ValueError as error:
    out["trl_default_error"] = str(error)
try:
    D.check_vllm_mode("server", True)
    out["vllm_server_error"] = None
except ValueError as error:
    out["vllm_server_error"] = str(error)
D.check_vllm_mode("colocate", True)
D.check_vllm_mode("server", False)

from ple_trl import PLEConfig
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    ple = PLEConfig(output_dir="out", report_to="none", principle="Be positive.")
out["ple_precision"] = [ple.bf16, ple.fp16]
out["ple_fallback_warnings"] = sum(w.category is D.PrecisionFallbackWarning for w in caught)
try:
    PLEConfig(output_dir="out", report_to="none", principle="Be positive.", use_vllm=True, vllm_mode="server")
    out["ple_vllm_server_error"] = None
except (ValueError, ImportError) as error:
    out["ple_vllm_server_error"] = f"{type(error).__name__}: {error}"

import memory as M
out["peak_memory"] = M.peak_memory_bytes(args.device)
before = torch.npu.calls["empty_cache"]
M.clear_device_cache()
out["empty_cache_calls"] = torch.npu.calls["empty_cache"] - before
"""


@pytest.fixture(scope="module")
def npu_910b(fake_npu_path):
    return run_scenario(fake_npu_path, SINGLE_NPU, FAKE_NPU_SOC="910B")


@pytest.fixture(scope="module")
def npu_910a(fake_npu_path):
    return run_scenario(fake_npu_path, SINGLE_NPU, FAKE_NPU_SOC="910A")


def test_fake_backend_stays_in_its_subprocess():
    # The fake must never leak into this process, and torch_npu must never be installed in this environment.
    assert importlib.util.find_spec("torch_npu") is None
    assert not hasattr(torch, "npu")


def test_npu_is_the_selected_device(npu_910b):
    assert npu_910b["accelerate_is_npu_available"] is True
    assert npu_910b["transformers_is_torch_npu_available"] is True
    assert npu_910b["our_device_type"] == "npu"
    assert npu_910b["our_device_type_use_cpu"] == "cpu"
    assert npu_910b["partial_state_device_type"] == "npu"
    assert npu_910b["config_device"] == "npu:0"
    assert npu_910b["config_distributed_type"] == "DistributedType.NO"


def test_bf16_kept_on_910b(npu_910b):
    assert npu_910b["resolved_default"] == [True, False]
    assert npu_910b["resolved_bf16"] == [True, False]
    assert npu_910b["resolved_fp32"] == [False, False]
    assert npu_910b["warnings"] == []
    assert npu_910b["config_precision"] == [True, False]
    assert npu_910b["trl_default_error"] is None
    assert npu_910b["ple_precision"] == [True, False] and npu_910b["ple_fallback_warnings"] == 0


def test_bf16_falls_back_to_fp16_on_910a(npu_910a):
    # TRL's default (bf16=True) is rejected by TrainingArguments on a 910A: this is what the helper prevents.
    assert npu_910a["trl_default_error"] is not None and "bf16" in npu_910a["trl_default_error"]
    assert npu_910a["resolved_default"] == [False, True]
    assert npu_910a["resolved_bf16"] == [False, True]
    assert npu_910a["resolved_fp32"] == [False, False]  # an explicit fp32 choice is never overridden
    assert len(npu_910a["warnings"]) == 2
    for message in npu_910a["warnings"]:
        assert message.startswith("PrecisionFallbackWarning")
        assert "torch.npu.is_bf16_supported() is False" in message and "910A" in message and "fp16" in message
    assert npu_910a["config_precision"] == [False, True]
    assert npu_910a["config_device"] == "npu:0"
    # PLEConfig resolves its precision with the same helper: its defaults work on a 910A.
    assert npu_910a["ple_precision"] == [False, True] and npu_910a["ple_fallback_warnings"] == 1


def test_vllm_server_refused_on_npu(npu_910b):
    message = npu_910b["vllm_server_error"]
    assert message is not None
    assert "vllm_mode='server'" in message and "npu" in message and "vllm_mode='colocate'" in message
    assert npu_910b["ple_vllm_server_error"].startswith("ValueError: vllm_mode='server' is not supported on npu")


def test_memory_helpers_use_the_npu_module(npu_910b):
    assert npu_910b["peak_memory"] == 4096
    assert npu_910b["empty_cache_calls"] == 1


MULTI_NPU = """
import torch_npu
import torch.distributed as dist

def gloo_as_hccl(store, rank, size, timeout):
    return dist.ProcessGroupGloo(store, rank, size, timeout)

dist.Backend.register_backend("hccl", gloo_as_hccl, devices=["npu"])

from trl import GRPOConfig
from ple_trl import device as D

args = GRPOConfig(output_dir="out", report_to="none")
state = args.distributed_state
out["distributed_type"] = str(state.distributed_type)
out["backend"] = state.backend
out["device"] = str(args.device)
out["overrides"] = D.model_init_overrides(state)
out["applied_none"] = D.apply_model_init_overrides(None, state)
out["applied_user"] = D.apply_model_init_overrides({"device_map": "auto", "dtype": "float16"}, state)
# TRL 1.16 forces device_map=None only for these two types, which is why the helper exists:
out["trl_would_force"] = state.distributed_type in ["MULTI_GPU", "DEEPSPEED"]
"""


def test_device_map_forced_to_none_for_multi_npu(fake_npu_path):
    result = run_scenario(
        fake_npu_path,
        MULTI_NPU,
        LOCAL_RANK="0",
        RANK="0",
        WORLD_SIZE="1",
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(29500 + os.getpid() % 1000),
    )
    assert result["distributed_type"] == "DistributedType.MULTI_NPU"
    assert result["backend"] == "hccl"
    assert result["device"] == "npu:0"
    assert result["trl_would_force"] is False
    assert result["overrides"] == {"device_map": None}
    assert result["applied_none"] == {"device_map": None}
    assert result["applied_user"] == {"device_map": None, "dtype": "float16"}


@pytest.mark.parametrize(
    "distributed_type, num_processes, expected",
    [
        ("NO", 1, {}),
        ("MULTI_NPU", 8, {"device_map": None}),
        ("MULTI_GPU", 2, {"device_map": None}),
        ("MULTI_CPU", 2, {"device_map": None}),
        ("MULTI_XPU", 4, {"device_map": None}),
        ("FSDP", 8, {"device_map": None}),
        ("FSDP", 1, {"device_map": None}),
        ("DEEPSPEED", 1, {"device_map": None}),
    ],
)
def test_model_init_overrides_for_every_distributed_type(distributed_type, num_processes, expected):
    from accelerate.utils import DistributedType

    state = SimpleNamespace(distributed_type=DistributedType[distributed_type], num_processes=num_processes)
    assert model_init_overrides(state) == expected


def test_single_process_leaves_model_init_kwargs_untouched():
    state = SimpleNamespace(distributed_type="NO", num_processes=1)
    user = {"device_map": "auto"}
    assert apply_model_init_overrides(None, state) is None  # no spurious kwargs, so no TRL warning
    assert apply_model_init_overrides(user, state) is user
    assert model_init_overrides(None) == {}


@pytest.mark.parametrize(
    "device_type, use_vllm, mode, refused",
    [
        ("npu", True, "server", True),
        ("xpu", True, "server", True),
        ("npu", True, "colocate", False),
        ("npu", False, "server", False),
        ("cuda", True, "server", False),
        ("cpu", True, "server", False),
    ],
)
def test_check_vllm_mode(device_type, use_vllm, mode, refused):
    if refused:
        with pytest.raises(ValueError, match=r"vllm_mode='server' is not supported on " + device_type):
            check_vllm_mode(mode, use_vllm, device_type=device_type)
    else:
        check_vllm_mode(mode, use_vllm, device_type=device_type)


def test_ple_config_defaults_work_on_cpu():
    from ple_trl import PLEConfig

    args = PLEConfig(output_dir="out", report_to="none", principle="Be positive.")  # bf16 left unset
    assert (args.bf16, args.fp16) == (False, False) and args.device.type == "cpu"


def test_precision_on_cpu():
    # TRL's unset bf16 must not break a CPU-only machine: it resolves to fp32, quietly.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resolve_mixed_precision(None, None, device_type="cpu") == (False, False)
        assert resolve_mixed_precision(None, None, use_cpu=True) == (False, False)
    # An explicit bf16=True on CPU is kept only with use_cpu (CPU autocast); otherwise a clear error.
    assert resolve_mixed_precision(True, None, device_type="cpu", use_cpu=True) == (True, False)
    with pytest.raises(ValueError, match=r"bf16=True.*device: cpu.*bf16=False"):
        resolve_mixed_precision(True, None, device_type="cpu")
    with pytest.raises(ValueError, match="bf16=True and fp16=True"):
        resolve_mixed_precision(True, True, device_type="npu")
    assert resolve_mixed_precision(None, True, device_type="cpu") == (False, True)


def test_fallback_to_fp32_without_fp16_support(monkeypatch):
    import ple_trl.device as device

    monkeypatch.setattr(device, "is_bf16_supported", lambda device_type: False)
    monkeypatch.setattr(device, "is_fp16_supported", lambda device_type: False)
    with pytest.warns(PrecisionFallbackWarning, match="neither bf16 nor fp16"):
        assert device.resolve_mixed_precision(True, False, device_type="weird") == (False, False)


def test_peak_memory_is_none_on_cpu():
    assert peak_memory_bytes(torch.device("cpu")) is None
    assert peak_memory_bytes("cpu") is None
    assert peak_memory_bytes(None) is None


@pytest.mark.runs_on("npu")
def test_real_npu_smoke(tmp_path):
    """On an Ascend host: a tiny model trains one step on the NPU in the precision the helpers pick."""
    import torch_npu  # noqa: F401
    from transformers import AutoModelForCausalLM

    from ple_trl.device import accelerator_device_type
    from ple_trl.testing import build_tiny_causal_lm

    device_type = accelerator_device_type()
    assert device_type == "npu"
    bf16, fp16 = resolve_mixed_precision(None, None, device_type=device_type)
    assert bf16 != fp16  # some mixed precision is always available on an NPU
    dtype = torch.bfloat16 if bf16 else torch.float16
    device = torch.device("npu", 0)
    model = AutoModelForCausalLM.from_pretrained(build_tiny_causal_lm(tmp_path / "m")).to(device)
    reset_peak_memory(device)
    ids = torch.randint(0, model.config.vocab_size, (2, 8), device=device)
    with torch.autocast(device_type=device_type, dtype=dtype):
        loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    assert torch.isfinite(loss).item()
    assert all(p.grad is not None and p.grad.device.type == "npu" for p in model.parameters() if p.requires_grad)
    assert peak_memory_bytes(device) > 0


def test_real_npu_smoke_is_skipped_only_without_real_hardware(fake_npu_path):
    """`runs_on("npu")` skips the smoke test above for a named reason where no Ascend NPU is usable, and a fake backend
    (the one these tests install) never passes for real hardware."""
    from markers import device_unavailable_reason

    if importlib.util.find_spec("torch_npu") is None:
        assert "torch_npu is not installed" in device_unavailable_reason("npu")
    out = run_scenario(
        fake_npu_path,
        f"""
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from markers import device_unavailable_reason
        out["npu"] = device_unavailable_reason("npu")
        """,
    )
    assert out["npu"] == "needs a real npu device: the npu backend in this process is a test fake"
