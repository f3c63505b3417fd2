"""Resumes, reruns and checkpoints: the audit log holds exactly one record per trained pair, a resumed run draws the
same principles and sees the prompts in the same order as the run it continues, and a checkpoint cut short by a full
disk is reported as such and skipped on resume."""

import errno
import inspect
import json
import logging
import os
import signal
import subprocess
import sys

import pytest
import torch
from datasets import Dataset
from transformers import TrainerCallback
from trl import GRPOTrainer
from trl.trainer.utils import RepeatSampler

import ple_trl
from ple_trl import PLETrainer

from helpers import KILL_RESUME_RUN, NUMBERED_PROMPTS, logged, read_labels, tiny_args

KILL_RESUME_SCRIPT = os.path.join(os.path.dirname(__file__), "scripts", "ple_kill_resume.py")


def checkpointing_args(output_dir, **kwargs):
    """The run of `tests/scripts/ple_kill_resume.py` (a checkpoint every 2 steps), 4 steps long."""
    return tiny_args(output_dir, **{**KILL_RESUME_RUN, "max_steps": 4, **kwargs})


def checkpointing_trainer(model_path, reward, output_dir, prompts=NUMBERED_PROMPTS, **kwargs):
    return PLETrainer(
        model=model_path,
        reward_funcs=reward,
        args=checkpointing_args(output_dir, **kwargs),
        train_dataset=Dataset.from_dict({"prompt": prompts}),
    )


def test_a_fresh_run_starts_a_fresh_audit_log(tmp_path, tiny_model_path, positivity):
    (tmp_path / "enhanced_labels.jsonl").write_text('{"step": 0, "prompt": "stale"}\n' * 3)
    checkpointing_trainer(tiny_model_path, positivity, tmp_path, max_steps=1, save_strategy="no").train()
    records = read_labels(tmp_path)
    assert len(records) == 2  # the two pairs of this run's one step
    assert all(record["prompt"] in NUMBERED_PROMPTS for record in records)


def test_resuming_a_finished_run_leaves_one_record_per_trained_pair(tmp_path, tiny_model_path, positivity):
    # 8 prompts, 2 pairs per step: the resume at step 2 is inside the first epoch
    checkpointing_trainer(tiny_model_path, positivity, tmp_path).train()
    first = read_labels(tmp_path)
    assert [record["step"] for record in first] == [0, 0, 1, 1, 2, 2, 3, 3]
    assert len({record["principle"] for record in first}) > 1  # the principles are drawn, not fixed

    with open(tmp_path / "enhanced_labels.jsonl", "a") as f:
        f.write('{"step": 1, "tau": 0.2, "pro')  # a line cut short by a killed process
    resumed = checkpointing_trainer(tiny_model_path, positivity, tmp_path)
    resumed.train(resume_from_checkpoint=str(tmp_path / "checkpoint-2"))
    # steps 2-3 were dropped and generated again: with the principle draws, prompt order and sampling restored, the
    # same records come back
    assert read_labels(tmp_path) == first


def test_resume_inside_a_later_epoch_is_bit_identical(tmp_path, tiny_model_path, positivity):
    # 6 prompts, 2 pairs per step: epochs of 3 steps, and the resume at step 4 is inside the second epoch
    prompts = NUMBERED_PROMPTS[:6]
    full = checkpointing_trainer(tiny_model_path, positivity, tmp_path / "full", prompts=prompts, max_steps=6)
    full.train()
    resumed = checkpointing_trainer(tiny_model_path, positivity, tmp_path / "resumed", prompts=prompts, max_steps=6)
    resumed.train(resume_from_checkpoint=str(tmp_path / "full" / "checkpoint-4"))
    assert read_labels(tmp_path / "resumed") == read_labels(tmp_path / "full")[8:]  # steps 4 and 5
    for (name, param), (_, other) in zip(full.model.named_parameters(), resumed.model.named_parameters(), strict=True):
        assert torch.equal(param, other), name


class StopAfter(TrainerCallback):
    """Stops training after `step` optimizer steps, as a killed run would (its checkpoint at that step saved)."""

    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_training_stop = True


@pytest.mark.parametrize("schedule", [{"steps_per_generation": 2}, {"num_iterations": 2}])
def test_resume_inside_a_generation_round_is_exact(tmp_path, tiny_model_path, positivity, schedule):
    # A round of 4 pairs trained over 2 optimizer steps (2 micro-batches, or 2 passes over one batch of 2 pairs with
    # `num_iterations=2`...), and a checkpoint after every step: checkpoint-1 is inside the first round.
    kwargs = {"max_steps": 4, "save_steps": 1, **schedule}
    full = checkpointing_trainer(tiny_model_path, positivity, tmp_path / "full", **kwargs)
    full.train()
    interrupted = checkpointing_trainer(tiny_model_path, positivity, tmp_path / "run", **kwargs)
    interrupted.add_callback(StopAfter(1))
    interrupted.train()
    assert interrupted.state.global_step == 1 and os.path.isdir(tmp_path / "run" / "checkpoint-1")
    resumed = checkpointing_trainer(tiny_model_path, positivity, tmp_path / "run", **kwargs)
    resumed.train(resume_from_checkpoint=str(tmp_path / "run" / "checkpoint-1"))
    # The round is not generated again: the same pairs, labels and losses, and one audit record per trained pair.
    assert read_labels(tmp_path / "run") == read_labels(tmp_path / "full")
    assert logged(resumed, "loss") == logged(full, "loss")  # step 1 from the checkpoint's log history
    for (name, param), (_, other) in zip(full.model.named_parameters(), resumed.model.named_parameters(), strict=True):
        assert torch.equal(param, other), name


def epoch_order(trainer, epoch):
    """The prompt indices the training dataloader serves in `epoch`, in order."""
    dataloader = trainer.get_train_dataloader()
    dataloader.set_epoch(epoch)
    prompts = trainer.train_dataset["prompt"]
    return [prompts.index(row["prompt"]) for batch in dataloader for row in batch]


def test_the_prompt_order_is_a_function_of_seed_and_epoch(tmp_path, tiny_model_path, positivity):
    trainer = checkpointing_trainer(tiny_model_path, positivity, tmp_path, save_strategy="no")
    epochs = [epoch_order(trainer, epoch) for epoch in (0, 1, 2)]
    # A resumed process builds its trainer and dataloader afresh: the same epoch gives the same order.
    fresh = checkpointing_trainer(tiny_model_path, positivity, tmp_path, save_strategy="no")
    assert epoch_order(fresh, 2) == epochs[2]
    assert epochs[0] != epochs[1] != epochs[2]
    assert sorted(epochs[1]) == list(range(len(NUMBERED_PROMPTS)))  # one pass over the prompts, one pair each


def run_kill_resume_script(model_path, output_dir, *flags):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.path.dirname(os.path.dirname(ple_trl.__file__)))
    return subprocess.run(
        [sys.executable, KILL_RESUME_SCRIPT, "--model", model_path, "--output_dir", str(output_dir), *flags],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def test_kill_9_and_resume_continue_the_run_exactly(tmp_path, tiny_model_path):
    full = run_kill_resume_script(tiny_model_path, tmp_path / "full")
    assert full.returncode == 0, full.stderr[-3000:]

    killed = run_kill_resume_script(tiny_model_path, tmp_path / "run", "--kill_at_step", "4")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert os.path.isdir(tmp_path / "run" / "checkpoint-4") and not os.path.exists(tmp_path / "run" / "checkpoint-6")
    assert len(read_labels(tmp_path / "run")) == 8  # steps 0-3, two pairs each
    resumed = run_kill_resume_script(tiny_model_path, tmp_path / "run", "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    expected = read_labels(tmp_path / "full")
    # 4 prompts, 2 pairs per step: 2 steps per epoch, one tau decay per epoch; the kill is at an epoch boundary
    assert [(r["step"], r["tau"]) for r in expected] == [
        (step, pytest.approx(0.2 * 0.9 ** (step // 2))) for step in range(6) for _ in range(2)
    ]
    assert len({r["principle"] for r in expected}) > 1
    records = read_labels(tmp_path / "run")
    key = ("step", "tau", "prompt", "principle")
    assert [[r[k] for k in key] for r in records] == [[r[k] for k in key] for r in expected]
    assert records == expected  # answers and rewards too: the resumed run is the run it would have been
    order = read_jsonl(tmp_path / "run" / "prompt_order.jsonl")
    assert order == read_jsonl(tmp_path / "full" / "prompt_order.jsonl")


@pytest.mark.parametrize(
    "error",
    [
        OSError(errno.ENOSPC, "No space left on device"),
        RuntimeError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space left" })'),
    ],
    ids=["oserror", "safetensors"],
)
def test_a_full_disk_while_checkpointing_is_reported_as_such(tmp_path, tiny_model_path, positivity, error):
    trainer = checkpointing_trainer(tiny_model_path, positivity, tmp_path, max_steps=1, save_steps=1)

    def save_model(*args, **kwargs):
        raise error

    trainer.save_model = save_model
    with pytest.raises(OSError, match="disk is full") as raised:
        trainer.train()
    message = str(raised.value)
    assert raised.value.errno == errno.ENOSPC
    assert os.path.join(str(tmp_path), "checkpoint-1") in message and "incomplete" in message


def test_a_failed_save_for_another_reason_is_not_called_a_full_disk(tmp_path, tiny_model_path, positivity):
    trainer = checkpointing_trainer(tiny_model_path, positivity, tmp_path, max_steps=1, save_steps=1)

    def save_model(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    trainer.save_model = save_model
    with pytest.raises(PermissionError, match="Permission denied"):
        trainer.train()


def test_resume_skips_an_incomplete_last_checkpoint(tmp_path, tiny_model_path, positivity, caplog):
    checkpointing_trainer(tiny_model_path, positivity, tmp_path, max_steps=2, save_steps=1).train()
    incomplete = tmp_path / "checkpoint-3"
    incomplete.mkdir()
    (incomplete / "model.safetensors").write_bytes(b"\0" * 10)  # cut short: no trainer_state.json
    resumed = checkpointing_trainer(tiny_model_path, positivity, tmp_path, max_steps=3, save_steps=1)
    with caplog.at_level(logging.WARNING, logger="ple_trl"):
        resumed.train(resume_from_checkpoint=True)
    assert any(str(incomplete) in r.getMessage() and "incomplete" in r.getMessage() for r in caplog.records)
    assert resumed.state.global_step == 3
    assert [record["step"] for record in read_labels(tmp_path)] == [0, 0, 1, 1, 2, 2]


def test_resume_with_no_complete_checkpoint_starts_afresh(tmp_path, tiny_model_path, positivity, caplog):
    (tmp_path / "checkpoint-1").mkdir(parents=True)
    trainer = checkpointing_trainer(tiny_model_path, positivity, tmp_path, max_steps=1, save_strategy="no")
    with caplog.at_level(logging.WARNING, logger="ple_trl"):
        trainer.train(resume_from_checkpoint=True)
    assert any("starts training from scratch" in r.getMessage() for r in caplog.records)
    assert trainer.state.global_step == 1


def test_the_trl_and_transformers_internals_the_resume_relies_on():
    # PLE rebuilds GRPO's sampler from its attributes, and wraps the checkpoint save and load hooks.
    base = RepeatSampler(list(range(6)), mini_repeat_count=1, batch_size=2, repeat_count=3, shuffle=True, seed=5)
    for name in ("data_source", "mini_repeat_count", "batch_size", "repeat_count", "shuffle", "seed", "generator"):
        assert hasattr(base, name), f"RepeatSampler.{name} is gone: update PLETrainer._get_train_sampler"
    assert list(inspect.signature(GRPOTrainer._save_checkpoint).parameters) == ["self", "model", "trial"]
    assert list(inspect.signature(GRPOTrainer._load_optimizer_and_scheduler).parameters) == ["self", "checkpoint"]
    assert list(inspect.signature(GRPOTrainer._get_train_sampler).parameters) == ["self", "dataset"]
