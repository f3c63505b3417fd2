"""Tiny PLE training run used by `tests/test_multiprocess.py`, launched with one or several processes.

    accelerate launch --cpu --num_processes 2 tests/scripts/ple_two_process.py --model PATH --output_dir DIR \
        --pairs_per_device 2
    python tests/scripts/ple_two_process.py --model PATH --output_dir DIR --pairs_per_device 4

The reward is a fixed table indexed by (prompt, role), so the rewards, and hence PLE's routing, do not depend on what
the model happens to sample (sampling streams differ between a 1- and a 2-process run). The role is read from the
trainer's documented layout of a scoring call: the plain answers of the round's prompts first, then the
principle-guided answers of the same prompts in the same order (the reward never sees the principle). The function
checks that layout and fails loudly if it changes.

The principle follows the prompt (`principle_template="{prompt} {principle}"`) and `share_prompt_prefix=True` shares
whatever a pair shares, so generation runs each pair's common prompt (6 tokens) once: the shared-prefix path runs
under DDP.

Each pair draws its principle from `DRAWN_PRINCIPLES`, and the run saves a checkpoint at its last step.

Each process writes `rewards_rank{r}.jsonl` (the rewards it computed for its own pairs, per step) and
`log_rank{r}.json` (its `trainer.state.log_history`), `state_rank{r}.json` (its accelerate state and how many rounds
it generated from a shared prefix); the main process also writes `enhanced_labels.jsonl`.
"""

import argparse
import json
import os
import sys
import warnings

from datasets import Dataset

warnings.simplefilter("ignore", FutureWarning)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

# `tests/` (for the helpers shared with the test suite) is not on the path of a script.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from helpers import DRAWN_PRINCIPLES, NUMBERED_PROMPTS, counting_prefix_prefills  # noqa: E402

# Each pair draws one of `DRAWN_PRINCIPLES`: every process from its own stream (`seed` + its index), saved in its
# checkpoint.

# (plain reward, principle-guided reward) per prompt. The dataset is not shuffled, so with 4 pairs per round and 2
# processes, rank 0 scores prompts 0-1 and 4-5 (small gaps) and rank 1 prompts 2-3 and 6-7 (large spread): z-scored
# over the whole round the small gaps fall under tau, z-scored per rank they would not. Both routes occur.
REWARD_TABLE = {
    prompt: rewards
    for prompt, rewards in zip(
        NUMBERED_PROMPTS,
        [(0.0, 0.1), (0.2, 0.25), (0.0, 5.0), (5.0, 0.0), (0.3, 0.4), (0.1, 0.05), (1.0, 4.0), (3.0, 3.0)],
        strict=True,
    )
}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--pairs_per_device", type=int, required=True)
    parser.add_argument("--max_steps", type=int, default=2)
    parser.add_argument("--reward_transform", default="zscore")
    cli = parser.parse_args()

    from accelerate import PartialState
    from transformers import AutoTokenizer

    from ple_trl import PLEConfig, PLETrainer

    def table_reward(prompts, completions, trainer_state, **kwargs):
        rank = PartialState().process_index  # read at call time: the trainer's arguments set the distributed state up
        half = len(prompts) // 2
        if len(prompts) % 2 or prompts[:half] != prompts[half:]:
            raise AssertionError(f"unexpected scoring layout (plain half, then principled half): {prompts!r}")
        rewards = [REWARD_TABLE[p][0] for p in prompts[:half]] + [REWARD_TABLE[p][1] for p in prompts[half:]]
        with open(os.path.join(cli.output_dir, f"rewards_rank{rank}.jsonl"), "a") as f:
            for i, (prompt, reward) in enumerate(zip(prompts, rewards, strict=True)):
                role = "plain" if i < half else "principled"
                record = {"rank": rank, "step": trainer_state.global_step, "prompt": prompt, "role": role}
                f.write(json.dumps({**record, "reward": reward}) + "\n")
        return rewards

    args = PLEConfig(
        output_dir=cli.output_dir,
        principles=DRAWN_PRINCIPLES,
        share_prompt_prefix=True,  # the prompts are short: share them anyway
        principle_template="{prompt} {principle}",
        per_device_train_batch_size=cli.pairs_per_device,
        gradient_accumulation_steps=1,
        max_completion_length=4,
        max_steps=cli.max_steps,
        logging_steps=1,
        iteration_unit="steps",
        steps_per_iteration=1,
        reward_transform=cli.reward_transform,
        use_cpu=True,
        bf16=False,
        gradient_checkpointing=False,
        report_to="none",
        save_strategy="steps",
        save_steps=cli.max_steps,
        seed=0,
        shuffle_dataset=False,
        save_enhanced_labels=True,
        dataloader_num_workers=0,
    )
    tokenizer = AutoTokenizer.from_pretrained(cli.model)
    trainer = PLETrainer(
        model=cli.model,
        reward_funcs=[table_reward],
        args=args,
        train_dataset=Dataset.from_dict({"prompt": NUMBERED_PROMPTS}),
        processing_class=tokenizer,
    )
    with counting_prefix_prefills() as prefills:
        trainer.train()
    rank = trainer.accelerator.process_index
    with open(os.path.join(cli.output_dir, f"log_rank{rank}.json"), "w") as f:
        json.dump(trainer.state.log_history, f)
    state = trainer.accelerator.state
    with open(os.path.join(cli.output_dir, f"state_rank{rank}.json"), "w") as f:
        json.dump({"distributed_type": str(state.distributed_type), "num_processes": state.num_processes,
                   "backend": state.backend, "device": str(state.device),
                   "shared_prefix_rounds": len(prefills)}, f)  # fmt: skip
    trainer.accelerator.wait_for_everyone()


if __name__ == "__main__":
    main()
