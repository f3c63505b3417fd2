"""
The implicit reward of [`PLETrainer`] and the iteration snapshot (the policy as at the start of the current PLE
iteration) that judges with it: created as a frozen copy or a PEFT adapter, refreshed at iteration boundaries, and
the frozen pair forwards under the initial policy, the snapshot or the current policy.
"""

import torch
from accelerate.utils import is_peft_model
from trl.models.utils import disable_gradient_checkpointing
from trl.trainer.callbacks import SyncRefModelCallback
from trl.trainer.utils import use_adapter

from . import spa


class IterationSnapshotMixin:
    """The implicit reward and the iteration snapshot; mixed into [`PLETrainer`] before [`~trl.GRPOTrainer`]."""

    @staticmethod
    def _uses_iteration_snapshot(args) -> bool:
        # PLE keeps the policy as at the start of the iteration only to judge with it; SPA always (its reference).
        return args.reward_source == "implicit" and args.implicit_reward_judge == "iteration"

    def _check_snapshot_backend(self):
        """The snapshot is copied from the policy parameter by parameter and saved by name: with the parameters
        partitioned across processes (DeepSpeed ZeRO-3, FSDP) each process holds a shard, so it is refused."""
        plugin = getattr(self.accelerator.state, "deepspeed_plugin", None)
        zero3 = plugin is not None and plugin.zero_stage == 3
        if zero3 or self.is_fsdp_enabled:
            backend = "DeepSpeed ZeRO-3" if zero3 else "FSDP"
            raise ValueError(
                f"{backend} partitions the parameters across processes, and the iteration snapshot (the policy as at "
                "the start of the iteration: SPA's DPO reference and the implicit reward's judge) is copied and "
                "saved parameter by parameter, which partitioned parameters do not support. Use DDP or DeepSpeed "
                "ZeRO-1/2 (with a LoRA adapter, the snapshot is a second small adapter); PLE's implicit reward can "
                "also judge with the current policy, `implicit_reward_judge='policy'`, which needs no snapshot."
            )

    def _add_snapshot_adapter(self):
        # Under PEFT the snapshot is a copy of the adapter, not of the model: a second adapter named "ref", as GRPO's
        # reference adapter of a PEFT policy, frozen.
        model = self.accelerator.unwrap_model(self.model)
        if not is_peft_model(model):
            raise ValueError("The iteration snapshot needs a PEFT policy or a full model to copy.")
        if "ref" not in model.peft_config:
            model.add_adapter("ref", model.peft_config["default"])
        self._copy_adapter(model, "default", "ref")
        return "ref"

    @staticmethod
    def _copy_adapter(model, source, target):
        with torch.no_grad():
            for name, param in model.named_parameters():
                if f".{source}." in name:
                    target_param = model.get_parameter(name.replace(f".{source}.", f".{target}."))
                    target_param.data.copy_(param.data)
                    target_param.requires_grad_(False)

    def _snapshot_parameters(self) -> dict:
        """The snapshot's parameters by name (those of the "ref" adapter under PEFT); empty when there is none."""
        if self._snapshot_model is not None:
            return dict(self.accelerator.unwrap_model(self._snapshot_model).named_parameters())
        if self._snapshot_adapter is not None:
            model = self.accelerator.unwrap_model(self.model)
            return {n: p for n, p in model.named_parameters() if f".{self._snapshot_adapter}." in n}
        return {}

    def _maybe_refresh_snapshot(self):
        """At the first generation round of a new iteration, copy the policy into the snapshot. The iteration is
        derived from `state.global_step` (like tau), so a resumed run refreshes where the uninterrupted run did."""
        if self._snapshot_model is None and self._snapshot_adapter is None:
            return
        iteration = self.completed_iterations()
        if iteration == self._snapshot_iteration:
            return
        self._copy_policy_into_snapshot()
        self._snapshot_iteration = iteration

    def _copy_policy_into_snapshot(self):
        policy = self.accelerator.unwrap_model(self.model)
        if self._snapshot_model is not None:
            # TRL's reference syncing (what `sync_ref_model` runs, ZeRO-3 included), as a full copy: alpha = 1.
            SyncRefModelCallback.sync_target_model(policy, self.accelerator.unwrap_model(self._snapshot_model), 1.0)
        else:
            self._copy_adapter(policy, "default", self._snapshot_adapter)

    def _frozen_pair_logps(self, which, inputs):
        """`(sums, means)` of the log-probs of both answers of every pair, `(2, pairs)` each, without gradient, under
        `which`: `"init"` (`pi_init`: the reference model, or the adapter-disabled policy under PEFT), `"snapshot"`
        (the policy as at the start of the iteration) or `"policy"` (the current policy)."""
        unwrapped = self.accelerator.unwrap_model(self.model)
        with torch.no_grad(), disable_gradient_checkpointing(self.model, self.args.gradient_checkpointing_kwargs):
            if which == "init" and self.ref_model is not None:
                sums, means, _ = self._pair_logps(self.ref_model, inputs)
            elif which == "init":
                with use_adapter(unwrapped, adapter_name=None):
                    sums, means, _ = self._pair_logps(self.model, inputs)
            elif which == "snapshot" and self._snapshot_model is not None:
                sums, means, _ = self._pair_logps(self._snapshot_model, inputs)
            elif which == "snapshot":
                with use_adapter(unwrapped, adapter_name=self._snapshot_adapter):
                    sums, means, _ = self._pair_logps(self.model, inputs)
            else:
                sums, means, _ = self._pair_logps(self.model, inputs)
        return sums, means

    def _implicit_rewards(self, inputs, judge_logps=None):
        """The implicit rewards `beta_judge * (log pi_judge(y|x) - log pi_init(y|x))` of this process's answers,
        `(2, pairs)`, detached. `judge_logps` (`(sums, means)`) skips the judge's forward when the caller has it."""
        if judge_logps is None:
            judge = "snapshot" if self.args.implicit_reward_judge == "iteration" else "policy"
            judge_logps = self._frozen_pair_logps(judge, inputs)
        init_logps = self._frozen_pair_logps("init", inputs)
        index = 1 if self.args.implicit_reward_length_normalize else 0
        return spa.implicit_reward(judge_logps[index], init_logps[index], self.args.beta_judge)

    def _gather_pair_rewards(self, local):
        """`(2, pairs)` rewards of this process -> `(num_processes * 2 * pairs,)`, in the order `_score` returns."""
        return self.accelerator.gather(local.reshape(-1))
