"""
The audit log (`save_enhanced_labels=True`): `{output_dir}/enhanced_labels.jsonl`, one JSON record per trained pair
(its prompt, answers, rewards and label, and the step of the round that generated it). A fresh run starts a fresh
file; a resumed run drops the records generated after its checkpoint, which are generated again, so the file always
holds exactly one record per pair the model was trained on.
"""

import json
import logging
import os

from .checkpoints import TRAINER_STATE_NAME

logger = logging.getLogger(__name__)

AUDIT_LOG_NAME = "enhanced_labels.jsonl"


def append(output_dir: str, records: list[dict]):
    """Append one round's records (one per pair) to the audit log of `output_dir`."""
    os.makedirs(output_dir, exist_ok=True)
    with open(os.path.join(output_dir, AUDIT_LOG_NAME), "a") as f:
        f.writelines(json.dumps(record) + "\n" for record in records)


def start(output_dir: str, checkpoint: str | None):
    """
    Make the audit log of `output_dir` describe the run about to start: removed for a fresh run (`checkpoint` is
    `None`), cut to the records of the steps before `checkpoint` for a resumed one (records cut short by a killed
    process are dropped too, with a warning).
    """
    path = os.path.join(output_dir, AUDIT_LOG_NAME)
    if not os.path.exists(path):
        return
    if checkpoint is None:
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
            f"Resuming from step {resumed_step}: dropped {dropped} record(s) of {path} written after that step; their "
            "pairs are generated and trained again."
        )
    if unreadable:
        logger.warning(f"Dropped {unreadable} unreadable line(s) of {path} (cut short when the run stopped).")
