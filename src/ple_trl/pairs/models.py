"""
The models a pair trainer holds beside the policy: `pi_init` / the reference (a frozen copy, or the adapter-disabled
policy under PEFT) and the iteration snapshot's copy, their checks, and their preparation for the backend.
"""

import copy

from accelerate.utils import is_peft_model
from torch import nn
from trl.models import prepare_deepspeed, prepare_fsdp
from trl.trainer.utils import add_fused_lm_head, create_model_from_path, disable_dropout_in_model


def check_models(model, ref_model, peft_config, implicit_reward: bool):
    """Refuse a reference that is the policy (freezing it would freeze the policy) and, for the implicit reward, a
    `pi_init` that would be the initial policy itself (every reward 0)."""
    if isinstance(model, nn.Module) and isinstance(ref_model, nn.Module):
        policy_parameters = {id(p) for p in model.parameters()}
        if ref_model is model or any(id(p) in policy_parameters for p in ref_model.parameters()):
            # Freezing the reference would freeze the policy: training would "succeed" with nothing trained.
            raise ValueError(
                "`model` and `ref_model` cannot be the same object (or share parameters): the reference is frozen, "
                "so the policy would be too. Leave `ref_model=None` (a frozen copy of the initial policy is then "
                "made, or the adapter-disabled model is used under PEFT), or pass a copy (`copy.deepcopy(model)`)."
            )
    fresh_policy = peft_config is not None or not (isinstance(model, nn.Module) and is_peft_model(model))
    same_as_policy = ref_model is None or (isinstance(ref_model, str) and ref_model == model)
    if implicit_reward and fresh_policy and same_as_policy:
        # pi_init would be the initial policy itself: every implicit reward is exactly 0 until the policy moves, so
        # every label is a tie (SPA would then never move: its tied pairs are not trained).
        raise ValueError(
            "The implicit reward `beta_judge * (log pi_judge - log pi_init)` needs a `pi_init` other than the initial "
            "policy, and here it would be the policy itself: with no `ref_model`, a copy of the policy (or, with "
            "`peft_config`, the base model, which a fresh adapter starts as), so every answer would get a reward of "
            "exactly 0 and every label would be a tie. Pass `ref_model=` (the model before your SFT or seed-DPO "
            "stage), or pass a `PeftModel` whose trained adapter is the policy (its adapter-disabled model is then "
            "`pi_init`)."
        )


def initial_copies(model, ref_model, peft_config, needs_reference: bool, needs_snapshot: bool):
    """
    The reference and the snapshot's copy of a full policy, taken before training touches it: the path to reload, or
    a deep copy. Under PEFT neither is copied (the adapter-disabled model is the reference, and the snapshot is a
    second adapter).

    Returns:
        `tuple`: (the reference: `ref_model` when given, else the copy or `None`; the snapshot's copy or `None`).
    """
    full_model = peft_config is None and (isinstance(model, str) or not is_peft_model(model))
    if not full_model:
        return ref_model, None
    if needs_reference and ref_model is None:
        ref_model = model if isinstance(model, str) else copy.deepcopy(model)
    snapshot_model = (model if isinstance(model, str) else copy.deepcopy(model)) if needs_snapshot else None
    return ref_model, snapshot_model


def prepare_frozen_model(model, args, accelerator, dtype, is_deepspeed: bool, is_fsdp: bool):
    """A frozen, evaluation-mode model (from a path, loaded as the policy is, or a module), with the log-probs-only LM
    head, prepared like the policy for its backend."""
    if isinstance(model, str):
        init_kwargs = dict(args.model_init_kwargs or {})
        init_kwargs.setdefault("dtype", dtype)
        init_kwargs.setdefault("trust_remote_code", args.trust_remote_code)  # as GRPO loads the policy
        model = create_model_from_path(model, **init_kwargs)
    model.requires_grad_(False)
    if args.disable_dropout:
        disable_dropout_in_model(model)
    add_fused_lm_head(model, temperature=1.0, cast_lm_head_to_fp32=args.cast_lm_head_to_fp32)
    if is_deepspeed:
        return prepare_deepspeed(model, accelerator)
    if is_fsdp:
        return prepare_fsdp(model, accelerator)
    return accelerator.prepare_model(model, evaluation_mode=True)


def check_snapshot_backend(accelerator_state, is_fsdp: bool):
    """The snapshot is copied from the policy parameter by parameter and saved by name: with the parameters
    partitioned across processes (DeepSpeed ZeRO-3, FSDP) each process holds a shard, so it is refused."""
    plugin = getattr(accelerator_state, "deepspeed_plugin", None)
    zero3 = plugin is not None and plugin.zero_stage == 3
    if zero3 or is_fsdp:
        backend = "DeepSpeed ZeRO-3" if zero3 else "FSDP"
        raise ValueError(
            f"{backend} partitions the parameters across processes, and the iteration snapshot (the policy as at the "
            "start of the iteration: SPA's DPO reference and the implicit reward's judge) is copied and saved "
            "parameter by parameter, which partitioned parameters do not support. Use DDP or DeepSpeed ZeRO-1/2 (with "
            "a LoRA adapter, the snapshot is a second small adapter); PLE's implicit reward can also judge with the "
            "current policy, `implicit_reward_judge='policy'`, which needs no snapshot."
        )
