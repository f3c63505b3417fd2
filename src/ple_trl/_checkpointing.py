"""
Checkpoints and resume of [`PLETrainer`]: PLE's own state saved in every checkpoint (the principle draws, the
iteration snapshot), the audit log of enhanced labels kept consistent with the resumed step, resuming from the last
*complete* checkpoint, a clear error when the disk fills up during a save, and a sampler whose order per epoch
survives a resume.
"""

import errno
import json
import logging
import os
import re

import torch
from safetensors.torch import load_file, save_file
from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from trl.trainer.utils import RepeatSampler

from ._logging import ROUTE_NAMES


# The trainer's logger, so that log filters set on `ple_trl.trainer` keep applying to these messages.
logger = logging.getLogger("ple_trl.trainer")

AUDIT_LOG_NAME = "enhanced_labels.jsonl"
# PLE's own resumable state common to every process (the iteration snapshot's iteration, SPA's margins), saved in every
# checkpoint before transformers' trainer_state.json.
PLE_STATE_NAME = "ple_state.json"
# Each process's own: its principle draws, its micro-step count and, in a checkpoint saved inside a generation round
# (`steps_per_generation * num_iterations` micro-steps), the pairs of that round it has yet to train.
RANK_STATE_NAME = "pair_state-rank{rank}.pt"
# transformers writes trainer_state.json last when it saves a checkpoint: a checkpoint folder without it is incomplete.
TRAINER_STATE_NAME = "trainer_state.json"
# The weights of the policy as at the start of the current iteration (SPA's reference, the implicit reward's judge):
# the policy has moved on since, so they are saved with every checkpoint and restored on resume.
SNAPSHOT_NAME = "iteration_snapshot.safetensors"
_CHECKPOINT_RE = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")
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

    def set_epoch(self, epoch: int):
        self.epoch = epoch

    def __iter__(self):
        if self.shuffle:
            self.generator.manual_seed((self.seed or 0) + self.epoch)
        return super().__iter__()


class _SamplerEpochCallback(TrainerCallback):
    # transformers and accelerate forward `set_epoch` to the sampler, except through the dataloader that skips the
    # trained batches of a multi-process resume (its batch sampler hides ours); set the epoch here too.
    def __init__(self, trainer):
        self.trainer = trainer

    def on_epoch_begin(self, args, state, control, **kwargs):
        sampler = getattr(self.trainer, "_ple_train_sampler", None)
        if sampler is not None:
            sampler.set_epoch(int(state.epoch or 0))


def _is_disk_full(error: BaseException) -> bool:
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if any(marker in str(error).lower() for marker in _DISK_FULL_MARKERS):
            return True
        error = error.__cause__ or error.__context__
    return False


class ResumableAuditMixin:
    """Checkpoint, resume and audit-log methods; mixed into [`PLETrainer`] before [`~trl.GRPOTrainer`], whose
    `train`, `_get_train_sampler`, `_save_checkpoint` and `_load_optimizer_and_scheduler` they extend."""

    def _extra_state(self) -> dict:
        """Resumable state saved with the principle draws; subclasses add theirs."""
        return {"snapshot_iteration": self._snapshot_iteration}

    def _load_extra_state(self, state: dict, checkpoint: str):
        parameters = self._snapshot_parameters()
        if not parameters:
            return
        path = os.path.join(checkpoint, SNAPSHOT_NAME)
        if "snapshot_iteration" not in state or not os.path.isfile(path):
            logger.warning(
                f"{checkpoint} has no saved iteration snapshot ({SNAPSHOT_NAME}): the snapshot is the resumed policy "
                "from here on, until the next iteration boundary refreshes it."
            )
            self._copy_policy_into_snapshot()
            self._snapshot_iteration = self.completed_iterations()
            return
        self._snapshot_iteration = int(state["snapshot_iteration"])
        saved = load_file(path)
        with torch.no_grad():
            for name, param in parameters.items():
                param.data.copy_(saved[name].to(device=param.device, dtype=param.dtype))

    def _save_snapshot(self, checkpoint):
        parameters = self._snapshot_parameters()
        if parameters:
            tensors = {name: param.detach().cpu().contiguous() for name, param in parameters.items()}
            save_file(tensors, os.path.join(checkpoint, SNAPSHOT_NAME))

    def _save_labels(self, texts, pair_rewards, labels, tau):
        """Append the round's labels to the audit log; `texts` and `pair_rewards` as in `_add_completion_rows`."""
        if not self.accelerator.is_main_process:
            return
        columns = torch.stack(
            [
                *pair_rewards,
                labels.rank_mask.float(),
                labels.principled_preferred.float(),
                labels.weight_principled,
                labels.valid.float(),
            ]  # fmt: skip
        ).T.tolist()
        path = os.path.join(self.args.output_dir, AUDIT_LOG_NAME)
        os.makedirs(self.args.output_dir, exist_ok=True)
        with open(path, "a") as f:
            for (prompt, principle, plain, principled), (r, r_p, rank, preferred, w_p, ok) in zip(texts, columns):
                route = "skipped" if not ok else ROUTE_NAMES[bool(rank)]
                record = {
                    "step": self.state.global_step,
                    "tau": tau,
                    "prompt": prompt,
                    "principle": principle,
                    "plain": plain,
                    "principled": principled,
                    "reward_plain": r if ok else None,
                    "reward_principled": r_p if ok else None,
                    "route": route,
                    "preferred": ("principled" if preferred else "plain") if route == "rank" else None,
                    "weight_principled": w_p if ok else None,
                    "weight_plain": 1 - w_p if ok else None,
                }
                f.write(json.dumps(record) + "\n")

    # --- checkpoints and resume --------------------------------------------------------------------------------

    def _get_train_sampler(self, dataset=None):
        # GRPO's sampler with GRPO's arguments, made to give each epoch the same order in a resumed run.
        base = super()._get_train_sampler(dataset)
        self._ple_train_sampler = EpochSeededRepeatSampler(
            data_source=base.data_source,
            mini_repeat_count=base.mini_repeat_count,
            batch_size=base.batch_size,
            repeat_count=base.repeat_count,
            shuffle=base.shuffle,
            seed=base.seed,
        )
        return self._ple_train_sampler

    def train(self, resume_from_checkpoint=None, *args, **kwargs):
        """
        [`~transformers.Trainer.train`], with two additions. `resume_from_checkpoint=True` resumes from the last
        *complete* checkpoint of `output_dir` (one that an interrupted save, e.g. on a full disk, left incomplete is
        skipped with a warning). With `save_enhanced_labels=True`, a fresh run starts a fresh audit log, and a resumed
        run drops the records generated after its checkpoint (they are generated again), so the log holds exactly one
        record per trained pair.
        """
        if isinstance(resume_from_checkpoint, bool) and resume_from_checkpoint:
            resume_from_checkpoint = self._last_complete_checkpoint()
        self._start_audit_log(resume_from_checkpoint)
        return super().train(resume_from_checkpoint, *args, **kwargs)

    def _last_complete_checkpoint(self):
        output_dir = self.args.output_dir
        names = os.listdir(output_dir) if os.path.isdir(output_dir) else []
        checkpoints = sorted(
            (int(match.group(1)), os.path.join(output_dir, name))
            for name in names
            if (match := _CHECKPOINT_RE.match(name)) and os.path.isdir(os.path.join(output_dir, name))
        )
        if not checkpoints:
            return True  # transformers raises its own "No valid checkpoint found" error
        for _, checkpoint in reversed(checkpoints):
            if os.path.isfile(os.path.join(checkpoint, TRAINER_STATE_NAME)):
                return checkpoint
            logger.warning(
                f"Checkpoint {checkpoint} is incomplete (no {TRAINER_STATE_NAME}, which is written last: its save was "
                "interrupted, e.g. by a full disk or a killed process), so it is skipped. Delete it once you no "
                "longer need it."
            )
        logger.warning(
            f"No complete checkpoint in {output_dir}: `resume_from_checkpoint=True` starts training from scratch."
        )
        return None

    def _start_audit_log(self, checkpoint):
        if not self.args.save_enhanced_labels or not self.accelerator.is_main_process or checkpoint is True:
            return
        path = os.path.join(self.args.output_dir, AUDIT_LOG_NAME)
        if not os.path.exists(path):
            return
        if checkpoint is None:  # a fresh run: the log describes this run only
            os.remove(path)
            return
        state_path = os.path.join(checkpoint, TRAINER_STATE_NAME)
        if not os.path.isfile(state_path):
            return  # not a checkpoint transformers can resume from: it raises its own error
        with open(state_path) as f:
            resumed_step = json.load(f)["global_step"]
        kept, dropped, unreadable = [], 0, 0
        with open(path) as f:
            for line in f:
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:  # a line cut by a killed process
                    unreadable += 1
                    continue
                if record["step"] < resumed_step:
                    kept.append(line if line.endswith("\n") else line + "\n")
                else:
                    dropped += 1
        with open(path + ".tmp", "w") as f:
            f.writelines(kept)
        os.replace(path + ".tmp", path)
        if dropped:
            logger.info(
                f"Resuming from step {resumed_step}: dropped {dropped} record(s) of {path} written after that step; "
                "their pairs are generated and trained again."
            )
        if unreadable:
            logger.warning(f"Dropped {unreadable} unreadable line(s) of {path} (cut short when the run stopped).")

    def _save_checkpoint(self, model, trial):
        folder = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        checkpoint = os.path.join(self._get_output_dir(trial=trial), folder)
        try:
            # Written before transformers' files, so that a checkpoint with trainer_state.json (written last) has
            # them too. Every process writes its own state, as transformers writes its RNG states.
            os.makedirs(checkpoint, exist_ok=True)
            inside_round = self._step % (self.args.steps_per_generation * self.num_iterations) != 0
            rank_state = {
                "principle_rng_state": self._principle_rng.getstate(),
                "step": self._step,
                "buffered_inputs": self._buffered_inputs if inside_round else None,
            }
            torch.save(rank_state, os.path.join(checkpoint, RANK_STATE_NAME.format(rank=self.args.process_index)))
            if self.args.should_save:
                with open(os.path.join(checkpoint, PLE_STATE_NAME), "w") as f:
                    json.dump(self._extra_state(), f)
                self._save_snapshot(checkpoint)
            super()._save_checkpoint(model, trial)
        except Exception as error:
            if _is_disk_full(error):
                raise OSError(
                    errno.ENOSPC,
                    f"The disk is full: checkpoint {checkpoint} could not be written ({error}). That folder is "
                    "incomplete: delete it, free disk space (or lower `save_total_limit`, save less often) and "
                    "resume; `resume_from_checkpoint=True` skips an incomplete checkpoint.",
                ) from error
            raise

    def _load_optimizer_and_scheduler(self, checkpoint):
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is None:
            return
        self._load_rank_state(checkpoint)
        state = {}
        path = os.path.join(checkpoint, PLE_STATE_NAME)
        if os.path.isfile(path):
            with open(path) as f:
                state = json.load(f)
        self._load_extra_state(state, checkpoint)

    def _load_rank_state(self, checkpoint):
        """This process's principle draws, micro-step count and unfinished generation round, as saved."""
        path = os.path.join(checkpoint, RANK_STATE_NAME.format(rank=self.args.process_index))
        if not os.path.isfile(path):
            logger.warning(
                f"{checkpoint} has no {os.path.basename(path)} (saved by another number of processes, or an older "
                "ple-trl): the principle draws restart from `seed`, and a generation round the checkpoint was inside "
                "is generated again."
            )
            return
        # The state is this trainer's own (tensors, lists, the `random` state): not a file from elsewhere.
        state = torch.load(path, map_location=self.accelerator.device, weights_only=False)
        self._principle_rng.setstate(state["principle_rng_state"])
        self._step = state["step"]
        # Inside a round, its remaining micro-batches are trained as saved, not generated again: exactly the pairs,
        # labels and order of the uninterrupted run. At a round boundary the next round is generated as usual.
        self._buffered_inputs = state["buffered_inputs"]
