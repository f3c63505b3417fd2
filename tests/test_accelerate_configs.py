"""The launch configs that `--accelerate_config NAME` picks (TRL's, and ple-trl's own `multi_npu` for what TRL has
none for): they ship in the installed packages, load with accelerate's own loader, and `accelerate launch`'s argument
validation turns them into the launcher their names say, with the precision left to PLEConfig (nothing launched)."""

import pytest
from accelerate.commands.config.config_args import ClusterConfig, load_config_from_file
from accelerate.commands.launch import _validate_launch_command, launch_command_parser
from accelerate.utils import DistributedType

from ple_trl.scripts.launch import _shipped, accelerate_configs, resolve_accelerate_config

# name -> (distributed_type, processes started, launcher flag set by `accelerate launch`, extra checks)
EXPECTED = {
    "single_gpu": (DistributedType.NO, 1, None, {}),
    "multi_gpu": (DistributedType.MULTI_GPU, 8, "multi_gpu", {}),
    "multi_npu": (DistributedType.MULTI_NPU, 8, "multi_gpu", {}),
    "zero2": (
        DistributedType.DEEPSPEED, 8, "use_deepspeed",
        {"deepspeed_config": {"zero_stage": 2, "zero3_init_flag": False, "offload_optimizer_device": "none"}},
    ),
    "zero3": (
        DistributedType.DEEPSPEED, 8, "use_deepspeed",
        {"deepspeed_config": {"zero_stage": 3, "zero3_init_flag": True, "zero3_save_16bit_model": True}},
    ),
    "fsdp2": (
        DistributedType.FSDP, 8, "use_fsdp",
        {"fsdp_config": {"fsdp_version": 2, "fsdp_auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
                         "fsdp_state_dict_type": "FULL_STATE_DICT", "fsdp_reshard_after_forward": True}},
    ),
}  # fmt: skip


def test_ple_trl_ships_only_what_trl_lacks():
    assert sorted(_shipped("accelerate_configs")) == ["multi_npu"]
    assert not set(_shipped("accelerate_configs")) & set(_shipped("accelerate_configs", "trl"))
    assert set(EXPECTED) <= set(accelerate_configs())


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_config_fields(name):
    distributed_type, _, _, extra = EXPECTED[name]
    config = load_config_from_file(accelerate_configs()[name])
    assert isinstance(config, ClusterConfig)
    assert config.distributed_type == distributed_type
    assert config.num_machines == 1 and config.machine_rank == 0
    assert config.use_cpu is False
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
    _, num_processes, flag, extra = EXPECTED[name]
    launch_args = resolve_accelerate_config(["--accelerate_config", name])
    args = launch_command_parser().parse_args([*launch_args, "--module", "ple_trl.scripts.ple"])
    args, _, _ = _validate_launch_command(args)
    if flag is not None:
        assert args.num_processes == num_processes
    for launcher_flag in ("multi_gpu", "use_deepspeed", "use_fsdp"):
        assert bool(getattr(args, launcher_flag)) == (launcher_flag == flag), launcher_flag
    # Precision is left to PLEConfig's bf16/fp16, which resolve per device (fp16 on Ascend 910A, fp32 on CPU): TRL's
    # configs say bf16, which would leak into a run whose bf16 and fp16 are both off, so ple-trl launches them with
    # `--mixed_precision no`; its own configs say 'no'.
    assert args.mixed_precision == "no"
    if flag == "use_deepspeed":
        assert args.zero_stage == extra["deepspeed_config"]["zero_stage"]
    if flag == "use_fsdp":
        assert int(args.fsdp_version) == 2
