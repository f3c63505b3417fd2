"""Tiny PLE training run used by `tests/test_resume.py` to check that a killed and resumed run is the run it would
have been.

    python tests/scripts/ple_kill_resume.py --model PATH --output_dir DIR [--kill_at_step 4 | --resume]

4 prompts and 2 pairs per step make an epoch of 2 steps; the run has 6 steps (3 epochs), a checkpoint every 2 steps,
a set of 3 principles drawn at random, and the audit log on. With `--kill_at_step N` the process kills itself with
SIGKILL right after checkpoint-N is saved (N = 4 is an epoch boundary); with `--resume` it resumes from the last
checkpoint of `output_dir`. Without either it runs uninterrupted. Every generation round appends its plain prompts,
in the round's order, to `prompt_order.jsonl` (written as it goes, so a killed run leaves its part).
"""

import argparse
import json
import os
import signal
import sys
import warnings

warnings.simplefilter("ignore", FutureWarning)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

POSITIVE = {"good", "great", "kind", "happy", "warm", "nice"}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--kill_at_step", type=int, default=None)
    parser.add_argument("--resume", action="store_true")
    cli = parser.parse_args()

    import torch
    from datasets import Dataset
    from transformers import TrainerCallback

    from ple_trl import PLETrainer

    # Run as a script: `tests/` (for the run config and prompts it shares with `tests/test_resume.py`) is not on
    # the path.
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from helpers import KILL_RESUME_RUN, PROMPTS, tiny_args

    torch.set_num_threads(1)
    order_path = os.path.join(cli.output_dir, "prompt_order.jsonl")

    def positivity(prompts, completions, trainer_state, **kwargs):
        os.makedirs(cli.output_dir, exist_ok=True)
        with open(order_path, "a") as f:  # the plain prompts of the round come first, in the round's order
            f.write(json.dumps({"step": trainer_state.global_step, "prompts": prompts[: len(prompts) // 2]}) + "\n")
        return [sum(word in POSITIVE for word in c.split()) / max(1, len(c.split())) for c in completions]

    class KillAfterSave(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            if state.global_step == cli.kill_at_step:
                os.kill(os.getpid(), signal.SIGKILL)

    args = tiny_args(cli.output_dir, **KILL_RESUME_RUN, max_steps=6)
    trainer = PLETrainer(
        model=cli.model,
        reward_funcs=positivity,
        args=args,
        train_dataset=Dataset.from_dict({"prompt": PROMPTS}),
        callbacks=[KillAfterSave()],
    )
    trainer.train(resume_from_checkpoint=True if cli.resume else None)


if __name__ == "__main__":
    main()
