"""The launch configs in `examples/accelerate_configs/` load with accelerate's own loader, say what their names say,
and are accepted by `accelerate launch`'s argument validation (nothing is launched)."""

from pathlib import Path

import pytest
from accelerate.commands.config.config_args import ClusterConfig, load_config_from_file
from accelerate.utils import DistributedType

CONFIGS = Path(__file__).resolve().parents[1] / "examples" / "accelerate_configs"

# file -> (distributed_type, num_processes, launcher flag set by `accelerate launch`, extra checks)
EXPECTED = {
    "single_device.yaml": (DistributedType.NO, 1, None, {}),
    "multi_gpu.yaml": (DistributedType.MULTI_GPU, 8, "multi_gpu", {}),
    "multi_npu.yaml": (DistributedType.MULTI_NPU, 8, "multi_gpu", {}),
    "deepspeed_zero2.yaml": (
        DistributedType.DEEPSPEED, 8, "use_deepspeed",
        {"deepspeed_config": {"zero_stage": 2, "zero3_init_flag": False, "offload_optimizer_device": "none"}},
    ),
    "deepspeed_zero3.yaml": (
        DistributedType.DEEPSPEED, 8, "use_deepspeed",
        {"deepspeed_config": {"zero_stage": 3, "zero3_init_flag": True, "zero3_save_16bit_model": True}},
    ),
    "fsdp2.yaml": (
        DistributedType.FSDP, 8, "use_fsdp",
        {"fsdp_config": {"fsdp_version": 2, "fsdp_auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
                         "fsdp_state_dict_type": "FULL_STATE_DICT", "fsdp_reshard_after_forward": True}},
    ),
}  # fmt: skip


def test_every_shipped_config_is_checked():
    assert sorted(p.name for p in CONFIGS.glob("*.yaml")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_config_fields(name):
    distributed_type, num_processes, _, extra = EXPECTED[name]
    config = load_config_from_file(str(CONFIGS / name))
    assert isinstance(config, ClusterConfig)
    assert config.distributed_type == distributed_type
    assert config.num_processes == num_processes
    assert config.num_machines == 1 and config.machine_rank == 0
    assert config.use_cpu is False
    # Precision is left to PLEConfig's bf16/fp16, which resolve per device (fp16 on Ascend 910A, see ple_trl.device):
    # a launcher-level 'bf16' would leak into a run whose bf16 and fp16 are both off.
    assert config.mixed_precision == "no"
    for section, fields in extra.items():
        loaded = getattr(config, section)
        for key, value in fields.items():
            assert loaded.get(key) == value, f"{name}: {section}.{key} = {loaded.get(key)!r}, expected {value!r}"
    if distributed_type != DistributedType.DEEPSPEED:
        assert not config.deepspeed_config
    if distributed_type != DistributedType.FSDP:
        assert not config.fsdp_config


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_accelerate_launch_accepts_config(name):
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser

    distributed_type, num_processes, flag, extra = EXPECTED[name]
    args = launch_command_parser().parse_args(["--config_file", str(CONFIGS / name), "examples/scripts/ple.py"])
    args, _, _ = _validate_launch_command(args)
    assert args.num_processes == num_processes
    for launcher_flag in ("multi_gpu", "use_deepspeed", "use_fsdp"):
        assert bool(getattr(args, launcher_flag)) == (launcher_flag == flag), launcher_flag
    if flag == "use_deepspeed":
        assert args.zero_stage == extra["deepspeed_config"]["zero_stage"]
    if flag == "use_fsdp":
        assert int(args.fsdp_version) == 2
