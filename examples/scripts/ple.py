# Copyright 2025 The ple-trl authors. Licensed under the Apache License, Version 2.0.

# /// script
# dependencies = [
#     "ple-trl",
#     "trl",
#     "peft",
# ]
# ///

"""
Progressively Label Enhancement (PLE, Liu, Xu & Geng, ICML 2025) with TRL.

The logic lives in `ple_trl.scripts.ple` (this file and `ple-trl train` share it). Arguments are those of
`PLEScriptArguments` (dataset, rewards, SFT stage), `PLEConfig` and `trl.ModelConfig`; a YAML recipe gives defaults
(`--config recipe.yaml`, or the recipe path first), the command line overrides them.

Usage:

Full training, a reward model, a prompt-only dataset from the Hub:

```bash
python examples/scripts/ple.py \
    --model_name_or_path Qwen/Qwen2.5-0.5B-Instruct \
    --dataset_name trl-lib/tldr \
    --reward_model_name_or_path OpenAssistant/reward-model-deberta-v3-large-v2 \
    --principle "Write a concise summary that keeps only the main point of the post." \
    --learning_rate 1.0e-6 \
    --per_device_train_batch_size 4 \
    --gradient_accumulation_steps 4 \
    --max_completion_length 64 \
    --tau0 0.2 --alpha 0.9 \
    --output_dir Qwen2.5-0.5B-PLE-tldr
```

LoRA (the paper's setting: r=8, alpha=16, all linear modules), a local JSONL file with a `question` column and a named
lexicon reward:

```bash
python examples/scripts/ple.py \
    --model_name_or_path Qwen/Qwen2.5-0.5B-Instruct \
    --dataset_name my_prompts.jsonl \
    --prompt_column question \
    --reward_funcs vader_sentiment profanity_penalty \
    --principle "Answer the question directly and helpfully, in a warm and positive tone." \
    --learning_rate 1.0e-5 \
    --per_device_train_batch_size 4 \
    --max_completion_length 64 \
    --use_peft \
    --lora_r 8 \
    --lora_alpha 16 \
    --lora_target_modules all-linear \
    --output_dir Qwen2.5-0.5B-PLE-LoRA
```

A recipe, with an SFT stage first (Algorithm 1, line 1) and a command-line override. The paper's recipes ship in the
package and are named (`hh`, `imdb`, `tldr`: `src/ple_trl/recipes/`); a path to a YAML file works too:

```bash
python examples/scripts/ple.py --config hh --sft_steps 200 --output_dir hh-ple
```

On several GPUs (`ple-trl train imdb --num_processes 8 --accelerate_config multi_gpu --output_dir imdb-ple` does the
same; `--accelerate_config` also names `zero2`, `zero3`, `fsdp2` and, for Ascend NPUs, `multi_npu`):

```bash
accelerate launch --multi_gpu --num_processes 8 examples/scripts/ple.py \
    --config imdb \
    --output_dir imdb-ple
```

Mixed precision follows the device (bf16 where supported, fp16 on Ascend 910A, fp32 on CPU) unless `--bf16` / `--fp16`
are given.
"""

from ple_trl.scripts.ple import main, make_parser, parse_args  # noqa: F401  (make_parser: TRL's script layout)

if __name__ == "__main__":
    script_args, training_args, model_args = parse_args()
    main(script_args, training_args, model_args)
