"""Where a training step of PLE (or GRPO) spends its time: `torch.profiler` over a few steps after warm-up, with the
trainer's phases labelled (generation, rewards, loss forward, backward, optimizer).

```bash
python benchmarks/profile_step.py --trainer ple --steps 4          # tiny model
python benchmarks/profile_step.py --trainer ple --model smollm2 --steps 2
```
Prints the phases, then the top operators by self CPU time.
"""

import argparse
import functools
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import step_cost  # noqa: E402  (sets the offline environment first)
import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile, record_function  # noqa: E402
from transformers import AutoTokenizer, TrainerCallback  # noqa: E402
from transformers.trainer_callback import PrinterCallback  # noqa: E402

PHASES = {
    "_generate": "phase: generate (tokenize + model.generate + decode)",
    "_calculate_rewards": "phase: rewards",
    "_compute_loss": "phase: loss forward",
    "_generate_and_score_completions": "phase: sampling round (generate + rewards + routing + tensors)",
}


def label_phases(trainer):
    for name, label in PHASES.items():
        method = getattr(trainer, name)

        @functools.wraps(method)
        def wrapped(*args, _method=method, _label=label, **kwargs):
            with record_function(_label):
                return _method(*args, **kwargs)

        setattr(trainer, name, wrapped)
    backward = trainer.accelerator.backward

    def labelled_backward(*args, **kwargs):
        with record_function("phase: backward"):
            return backward(*args, **kwargs)

    trainer.accelerator.backward = labelled_backward


class ProfileSteps(TrainerCallback):
    def __init__(self, warmup, steps):
        self.warmup, self.steps, self.prof, self.step_ctx = warmup, steps, None, None

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step == self.warmup:
            self.prof = profile(activities=[ProfilerActivity.CPU], record_shapes=False)
            self.prof.__enter__()
        if self.prof is not None:
            self.step_ctx = record_function("phase: whole step")
            self.step_ctx.__enter__()

    def on_step_end(self, args, state, control, **kwargs):
        if self.prof is not None:
            self.step_ctx.__exit__(None, None, None)
        if state.global_step == self.warmup + self.steps:
            self.prof.__exit__(None, None, None)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trainer", default="ple", choices=("ple", "grpo", "online_dpo"))
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--completion-length", type=int, default=24)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--rows", type=int, default=25, help="operator rows to print")
    opts = parser.parse_args()
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    opts.device, opts.seed, opts.bf16, opts.reward = torch.device("cpu"), 0, False, step_cost.lexicon_reward
    with tempfile.TemporaryDirectory() as workdir:
        opts.model_name, opts.model_path = step_cost.resolve_model(opts.model, workdir)
        tokenizer = AutoTokenizer.from_pretrained(opts.model_path)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        tokenizer.padding_side = "left"
        run_steps = opts.steps
        opts.steps, opts.warmup = opts.warmup + opts.steps, 0  # step_cost's configs: max_steps = warmup + steps + 1
        rows = (opts.steps + 2) * opts.batch_size
        dataset = step_cost.Dataset.from_dict({"prompt": [step_cost.PROMPTS[i % 8] for i in range(rows)]})
        maker = {"ple": step_cost.make_ple, "grpo": step_cost.make_grpo, "online_dpo": step_cost.make_online_dpo}
        trainer = maker[opts.trainer](opts, dataset, tokenizer, os.path.join(workdir, "out"))
        trainer.remove_callback(PrinterCallback)
        label_phases(trainer)
        callback = ProfileSteps(opts.steps - run_steps, run_steps)
        trainer.add_callback(callback)
        trainer.train()
    averages = callback.prof.key_averages()
    phases = sorted((e for e in averages if e.key.startswith("phase:")), key=lambda e: -e.cpu_time_total)
    print(f"## {opts.trainer} on {opts.model_name}: {run_steps} profiled steps, {opts.batch_size} pairs, "
          f"{opts.completion_length} tokens, {torch.get_num_threads()} threads\n")  # fmt: skip
    print("| phase | total ms per step | calls per step |\n|---|---:|---:|")
    for event in phases:
        print(f"| {event.key[7:]} | {event.cpu_time_total / 1000 / run_steps:.1f} | {event.count / run_steps:g} |")
    print()
    print(averages.table(sort_by="self_cpu_time_total", row_limit=opts.rows, max_name_column_width=60))


if __name__ == "__main__":
    main()
