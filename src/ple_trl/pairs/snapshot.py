"""
The iteration snapshot: the policy as it was at the start of the current iteration (SPA's DPO reference, and the
judge `pi_judge` of the implicit reward with `implicit_reward_judge="iteration"`). Under PEFT it is a copy of the
adapter (a second, frozen adapter named `"ref"`, as GRPO's reference adapter); otherwise a frozen copy of the model,
prepared like the policy. It is refreshed in place at iteration boundaries, saved in every checkpoint and restored
on resume.
"""

import contextlib
import logging
import os

import torch
from accelerate.utils import is_peft_model
from safetensors.torch import load_file, save_file
from trl.trainer.callbacks import SyncRefModelCallback
from trl.trainer.utils import use_adapter

logger = logging.getLogger(__name__)

SNAPSHOT_NAME = "iteration_snapshot.safetensors"
ADAPTER_NAME = "ref"


def copy_adapter(model, source: str, target: str):
    """Copy the weights of adapter `source` into adapter `target` of a PEFT model, frozen."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            if f".{source}." in name:
                target_param = model.get_parameter(name.replace(f".{source}.", f".{target}."))
                target_param.data.copy_(param.data)
                target_param.requires_grad_(False)


class IterationSnapshot:
    """
    The snapshot of a policy, a frozen model or a frozen adapter of the policy.

    Args:
        policy (`Callable[[], torch.nn.Module]`): returns the unwrapped policy (a `PeftModel` for the adapter form).
        model (`torch.nn.Module`, *optional*): the frozen copy, prepared for the backend; `None` for the adapter form,
            which adds the adapter to the policy.
        unwrap (`Callable`): the accelerator's `unwrap_model`.
    """

    def __init__(self, policy, unwrap, model=None):
        self._policy, self._unwrap, self.model, self.adapter = policy, unwrap, model, None
        if model is None:
            peft_model = policy()
            if not is_peft_model(peft_model):
                raise ValueError("The iteration snapshot needs a PEFT policy or a full model to copy.")
            if ADAPTER_NAME not in peft_model.peft_config:
                peft_model.add_adapter(ADAPTER_NAME, peft_model.peft_config["default"])
            copy_adapter(peft_model, "default", ADAPTER_NAME)
            self.adapter = ADAPTER_NAME
        # The iteration it was taken at: refreshed when the run's completed iterations move past it.
        self.iteration = 0

    def parameters(self) -> dict:
        """The snapshot's parameters by name (those of the `"ref"` adapter in the adapter form)."""
        if self.model is not None:
            return dict(self._unwrap(self.model).named_parameters())
        return {n: p for n, p in self._policy().named_parameters() if f".{self.adapter}." in n}

    def refresh(self, iteration: int):
        """Copy the policy into the snapshot if `iteration` (the completed iterations now) is a new one."""
        if iteration == self.iteration:
            return
        self.copy_policy()
        self.iteration = iteration

    def copy_policy(self):
        policy = self._policy()
        if self.model is not None:
            # TRL's reference syncing (what `sync_ref_model` runs), as a full copy: alpha = 1.
            SyncRefModelCallback.sync_target_model(policy, self._unwrap(self.model), 1.0)
        else:
            copy_adapter(policy, "default", self.adapter)

    @contextlib.contextmanager
    def forward_with(self, model):
        """Yield the model to run for a forward under the snapshot: the copy, or `model` with the adapter set."""
        if self.model is not None:
            yield self.model
        else:
            with use_adapter(self._policy(), adapter_name=self.adapter):
                yield model

    def save(self, checkpoint: str):
        tensors = {name: param.detach().cpu().contiguous() for name, param in self.parameters().items()}
        save_file(tensors, os.path.join(checkpoint, SNAPSHOT_NAME))

    def load(self, checkpoint: str, state: dict, current_iteration: int):
        """Restore the snapshot saved in `checkpoint` (its iteration in `state`); a checkpoint without one makes the
        resumed policy the snapshot until the next iteration boundary, with a warning."""
        path = os.path.join(checkpoint, SNAPSHOT_NAME)
        if "snapshot_iteration" not in state or not os.path.isfile(path):
            logger.warning(
                f"{checkpoint} has no saved iteration snapshot ({SNAPSHOT_NAME}): the snapshot is the resumed policy "
                "from here on, until the next iteration boundary refreshes it."
            )
            self.copy_policy()
            self.iteration = current_iteration
            return
        self.iteration = int(state["snapshot_iteration"])
        saved = load_file(path)
        with torch.no_grad():
            for name, param in self.parameters().items():
                param.data.copy_(saved[name].to(device=param.device, dtype=param.dtype))
