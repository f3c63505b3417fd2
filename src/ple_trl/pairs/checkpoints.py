"""
Checkpoints and resume of a pair trainer: the state saved next to transformers' (the trainer's own, common to every
process, and each process's own), resuming from the last *complete* checkpoint, a clear error when the disk fills up
during a save, and a sampler whose order per epoch survives a resume.
"""

import errno
import json
import logging
import os
import re

import torch

from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from trl.trainer.utils import RepeatSampler

logger = logging.getLogger(__name__)

# The trainer's resumable state common to every process (the iteration snapshot's iteration, SPA's margins), saved in
# every checkpoint before transformers' trainer_state.json.
TRAINER_STATE_EXTRA_NAME = "ple_state.json"
# Each process's own: its micro-step count and, in a checkpoint saved inside a generation round
# (`steps_per_generation * num_iterations` micro-steps), the pairs of that round it has yet to train (and PLE's
# principle draws).
RANK_STATE_NAME = "pair_state-rank{rank}.pt"
# transformers writes trainer_state.json last when it saves a checkpoint: a checkpoint folder without it is incomplete.
TRAINER_STATE_NAME = "trainer_state.json"
CHECKPOINT_RE = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")
# How a full disk shows up when the error is not a plain `OSError` (safetensors and torch.save wrap it).
_DISK_FULL_MARKERS = ("no space left on device", "storagefull", "disk quota exceeded", "os error 28", "os error 122")


class EpochSeededRepeatSampler(RepeatSampler):
    """
    TRL's `RepeatSampler` whose order in epoch `e` is a pure function of `(seed, e)`.

    `RepeatSampler` draws each epoch's permutation from one generator seeded once, so a process resumed at epoch `e`
    starts that generator afresh and replays epoch 0's order. Reseeding with `seed + epoch` at every pass makes a
    resumed run see the prompts in the order the uninterrupted run saw them; epoch 0 keeps `RepeatSampler`'s order.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.epoch = 0

    @classmethod
    def like(cls, sampler: RepeatSampler) -> "EpochSeededRepeatSampler":
        """The same sampler as `sampler` (GRPO's, with GRPO's arguments), made resumable by epoch."""
        return cls(
            data_source=sampler.data_source,
            mini_repeat_count=sampler.mini_repeat_count,
            batch_size=sampler.batch_size,
            repeat_count=sampler.repeat_count,
            shuffle=sampler.shuffle,
            seed=sampler.seed,
        )

    def set_epoch(self, epoch: int):
        self.epoch = epoch

    def __iter__(self):
        if self.shuffle:
            self.generator.manual_seed((self.seed or 0) + self.epoch)
        return super().__iter__()


class SamplerEpochCallback(TrainerCallback):
    """Sets the epoch of a trainer's sampler at every epoch: transformers and accelerate forward `set_epoch` to the
    sampler, except through the dataloader that skips the trained batches of a multi-process resume (its batch
    sampler hides ours)."""

    def __init__(self, get_sampler):
        self.get_sampler = get_sampler

    def on_epoch_begin(self, args, state, control, **kwargs):
        sampler = self.get_sampler()
        if sampler is not None:
            sampler.set_epoch(int(state.epoch or 0))


def is_disk_full(error: BaseException) -> bool:
    """Whether `error` (or one it was raised from) says the disk is full."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if any(marker in str(error).lower() for marker in _DISK_FULL_MARKERS):
            return True
        error = error.__cause__ or error.__context__
    return False


def disk_full_error(checkpoint: str, error: BaseException) -> OSError:
    """The error to raise when a checkpoint could not be written because the disk is full."""
    return OSError(
        errno.ENOSPC,
        f"The disk is full: checkpoint {checkpoint} could not be written ({error}). That folder is incomplete: delete "
        "it, free disk space (or lower `save_total_limit`, save less often) and resume; `resume_from_checkpoint=True` "
        "skips an incomplete checkpoint.",
    )


def last_complete_checkpoint(output_dir: str):
    """
    The last checkpoint of `output_dir` whose save completed (it has `trainer_state.json`, which transformers writes
    last); incomplete ones are skipped with a warning.

    Returns:
        `str`, `True` (no checkpoint folder at all: transformers raises its own "No valid checkpoint found" error) or
        `None` (only incomplete ones: training starts from scratch, with a warning).
    """
    names = os.listdir(output_dir) if os.path.isdir(output_dir) else []
    checkpoints = sorted(
        (int(match.group(1)), os.path.join(output_dir, name))
        for name in names
        if (match := CHECKPOINT_RE.match(name)) and os.path.isdir(os.path.join(output_dir, name))
    )
    if not checkpoints:
        return True
    for _, checkpoint in reversed(checkpoints):
        if os.path.isfile(os.path.join(checkpoint, TRAINER_STATE_NAME)):
            return checkpoint
        logger.warning(
            f"Checkpoint {checkpoint} is incomplete (no {TRAINER_STATE_NAME}, which is written last: its save was "
            "interrupted, e.g. by a full disk or a killed process), so it is skipped. Delete it once you no longer "
            "need it."
        )
    logger.warning(
        f"No complete checkpoint in {output_dir}: `resume_from_checkpoint=True` starts training from scratch."
    )
    return None


def save_rank_state(checkpoint: str, rank: int, state: dict):
    """Save one process's state (its micro-step count, its unfinished round, the method's own) in `checkpoint`."""
    os.makedirs(checkpoint, exist_ok=True)
    torch.save(state, os.path.join(checkpoint, RANK_STATE_NAME.format(rank=rank)))


def load_rank_state(checkpoint: str, rank: int, device) -> dict | None:
    """One process's state as [`save_rank_state`] saved it, or `None` (with a warning) when `checkpoint` has none."""
    path = os.path.join(checkpoint, RANK_STATE_NAME.format(rank=rank))
    if not os.path.isfile(path):
        logger.warning(
            f"{checkpoint} has no {os.path.basename(path)} (saved by another number of processes, or an older "
            "ple-trl): a generation round the checkpoint was inside is generated again, and the principle draws "
            "restart from `seed`."
        )
        return None
    # The state is the trainer's own (tensors, lists, the `random` state): not a file from elsewhere.
    return torch.load(path, map_location=device, weights_only=False)


def save_trainer_state(checkpoint: str, state: dict):
    """Save the trainer's state common to every process (JSON) in `checkpoint`."""
    os.makedirs(checkpoint, exist_ok=True)
    with open(os.path.join(checkpoint, TRAINER_STATE_EXTRA_NAME), "w") as f:
        json.dump(state, f)


def load_trainer_state(checkpoint: str) -> dict:
    """What [`save_trainer_state`] saved in `checkpoint`, or `{}`."""
    path = os.path.join(checkpoint, TRAINER_STATE_EXTRA_NAME)
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        return json.load(f)
