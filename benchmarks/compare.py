"""PLE against the methods a user would pick instead, at an equal generation budget, on two offline tasks.

Every method starts from the same base model (SmolLM2-135M-Instruct from the demo cache, or `--model`), trains a LoRA
adapter (r 8, alpha 16, all linear modules) on the same training prompts for the same number of optimizer steps, and
is measured on the same held-out prompts (never trained on) with greedy answers:

| method | what it is | answers generated while training |
|---|---|---|
| `base` | the base model, plain prompt | 0 |
| `base_prompted` | the base model with the task's principle in its prompt (prompting alone) | 0 |
| `ple` | [`PLETrainer`] with the demo's settings | `S` steps x `B` pairs x 2 |
| `ple_anchored` | `ple` with the DPO ranking loss anchored on the initial model (beta 0.1) | `S x B x 2` |
| `ple_distill` | `ple` + distilling the principle-guided frozen model where the principle helped | `S x B x 2` |
| `ple_distill_only` | only that distillation: PLE's reward routes it, SDFT's loss trains | `S x B x 2` |
| `ple_anchored_distill` | DPO ranking (beta 0.1), NLL on the plain (not preferred) answer, distil all | `S x B x 2` |
| `grpo` | TRL `GRPOTrainer`, `num_generations=2`, `B` prompts a step (advantages +-0.707) | `S x B x 2` |
| `grpo_batch` | `grpo` with `scale_rewards="batch"` (advantages scaled by the batch's reward std) | `S x B x 2` |
| `grpo_g4` | TRL `GRPOTrainer`, `num_generations=4`, `B/2` prompts a step | `S x (B/2) x 4` |
| `online_dpo` | TRL `OnlineDPOTrainer` (trl.experimental), 2 answers per prompt, `B` prompts a step | `S x B x 2` |
| `raft` | best-of-`n` by the training reward, then TRL `SFTTrainer` on the winners | `(S x B x 2 / n) x n` |
| `context_distillation` | principle-guided answers, then TRL `SFTTrainer` on them with the plain prompt | `S x B` |
| `sdft` | TRL `SDFTTrainer`: on-policy distillation from the frozen base shown the principle | `S x B x 2` |
| `spa` | ple-trl's `SPATrainer` (no reward) after the demo's seed DPO stage (its model is `pi_init`) | `S x B x 2` |

Besides the final evaluation, every trained cell measures the held-out judge at a quarter and a half of its training
(`metrics["curve"]`, drawn in `learning_curve.png`), and every cell reports a semantic relevance (prompt-answer cosine
under WordLlama's static embeddings, shipped in its wheel). The table picks each method's learning rate by the
training reward among the rates that keep distinct-2 and relevance near the base model's ([`select_rates`]);
`--bracket` adds the next rate where the pick is the largest rate run.

Every cell (task x method x learning rate x seed) writes `{output_dir}/{task}/{method}/lr-{lr}_seed-{seed}.json` and is
skipped when that file exists, so an interrupted run resumes. The run then prints the table, and writes
`{output_dir}/results.md`, `{output_dir}/compare.png` and `{output_dir}/learning_curve.png`. See
`benchmarks/README_compare.md` for the columns.

```bash
python benchmarks/compare.py                                 # the full comparison (CPU: hours)
python benchmarks/compare.py --quick --model path/to/tiny    # one step per method, 2 prompts: the harness test
python benchmarks/compare.py --device cuda --seeds 0,1,2 --lrs default,1e-4,3e-4,6e-4 --bracket
```
"""

import argparse
import gc
import json
import math
import os
import random
import statistics
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

# PLE's and SPA's default learning rates are the demo's.
from ple_trl.demo.arguments import DEFAULT_LEARNING_RATES

# The held-out path (answers, scores, relevance, distinct-2 and distinct answers) is the package's, so that
# `ple-trl demo` and `ple-trl eval` report the same numbers; the tasks (principles, prompts, rewards, judges) too.
from ple_trl.evaluation import answer_requests, score_answers, text_statistics
from ple_trl.tasks import LORA
from ple_trl.tasks import tasks as build_tasks

# PLE's variants (issue 21's levers): the method name and the [`PLEConfig`] fields it sets over the demo's settings.
PLE_VARIANTS = {
    "ple": {},
    "ple_anchored": {"ranking_loss_type": "dpo", "beta": 0.1},
    # The distillation's per-token divergence starts near 0.03 while the summed ranking loss is near 5: weighted 1 it
    # would be noise next to it, hence 30 where it is added to PLE's losses. Alone (`ple_distill_only`) its weight is
    # moot (Adam scales the step).
    "ple_distill": {"distill_coef": 30.0, "distill_pairs": "ranked"},
    "ple_distill_only": {"rank_coef": 0.0, "wsft_coef": 0.0, "rank_sft_coef": 0.0, "distill_coef": 1.0,
                         "distill_pairs": "ranked"},
    "ple_anchored_distill": {"ranking_loss_type": "dpo", "beta": 0.1, "rank_sft_coef": 0.0, "plain_sft_coef": 0.1,
                             "distill_coef": 10.0, "distill_pairs": "all"},
}  # fmt: skip
METHODS = (
    "base", "base_prompted", *PLE_VARIANTS, "grpo", "grpo_batch", "grpo_g4", "online_dpo", "raft",
    "context_distillation", "sdft", "spa",
)  # fmt: skip
# Generate first, then fine-tune (SFT) on what was generated: their learning curve is measured at SFT steps.
TWO_STAGE = ("raft", "context_distillation")
UNTRAINED = ("base", "base_prompted")
# Each method's own default learning rate ("default" in --lrs): the demo's for PLE and SPA, TRL's config defaults for
# the others (tuned there for full fine-tuning, so tiny for a LoRA adapter: hence the sweep).
DEFAULT_LRS = {
    **{variant: DEFAULT_LEARNING_RATES["ple"] for variant in PLE_VARIANTS},
    "spa": DEFAULT_LEARNING_RATES["spa"], "grpo": 1e-6, "grpo_batch": 1e-6, "grpo_g4": 1e-6, "online_dpo": 5e-7,
    "raft": 2e-5, "context_distillation": 2e-5, "sdft": 5e-5,  # SDFTConfig keeps TrainingArguments' 5e-5
}  # fmt: skip
# `--bracket`: the rates tried above a method's best when it is the largest rate run (each one the next of the last).
LR_LADDER = (1e-4, 3e-4, 6e-4, 1e-3, 2e-3)
# The selection rule's constraints, relative to the task's base model (see `select_rates`).
DISTINCT_2_FLOOR = 0.9  # distinct-2 at least 0.9x the base model's
RELEVANCE_MARGIN = 0.05  # relevance at least the base model's minus 5 points
QUICK = dict(steps=1, pairs=2, max_completion_length=8, num_heldout=2, num_train_prompts=2, seeds="0", lrs="default",
             raft_n=2, eval_batch_size=2)  # fmt: skip


# ---------------------------------------------------------------------------------------------------------- metrics
def perplexity_under(model, tokenizer, answers: list[str], batch_size: int) -> float:
    """Mean perplexity of the non-empty answers under `model` (NaN when every answer is empty)."""
    from ple_trl import metrics

    add_start = tokenizer.bos_token_id is not None
    ids = tokenizer(answers, add_special_tokens=False)["input_ids"]
    texts = [a for a, i in zip(answers, ids) if len(i) >= (1 if add_start else 2)]
    if not texts:
        return float("nan")
    metric = metrics.load("perplexity", keep_in_memory=True)
    result = metric.compute(predictions=texts, model=model, tokenizer=tokenizer, batch_size=batch_size,
                            add_start_token=add_start)  # fmt: skip
    return result["mean_perplexity"]


@lru_cache(maxsize=1)
def wordllama_model():
    """
    WordLlama's `l2_supercat` static embeddings (256 dimensions), loaded from the files inside its wheel, once.

    Nothing is downloaded: `WordLlama.load` looks for the tokenizer under `wordllama/tokenizer/` while the wheel ships
    it in `wordllama/tokenizers/`, so by default it would fetch it from the Hub into `~/.cache/wordllama`. Pointing
    `cache_dir` at the installed package finds both shipped files (`weights/l2_supercat_256.safetensors`,
    `tokenizers/l2_supercat_tokenizer_config.json`), and `disable_download=True` turns a missing file into an error,
    never a download.
    """
    import logging

    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    import wordllama
    from wordllama import WordLlama

    # wordllama's inference module calls `logging.basicConfig(level=INFO)` on import: give the root logger back.
    root.setLevel(level)
    root.handlers[:] = handlers
    return WordLlama.load("l2_supercat", dim=256, cache_dir=Path(wordllama.__file__).parent, disable_download=True)


def cosines(texts_a: list[str], texts_b: list[str]) -> list[float]:
    """Cosine similarity of each pair of texts under [`wordllama_model`] (mean-pooled token embeddings); 0 for a text
    with no token (an empty answer)."""
    import numpy as np

    if len(texts_a) != len(texts_b):
        raise ValueError(f"{len(texts_a)} texts for {len(texts_b)}: give them in pairs.")
    if not texts_a:
        return []
    model = wordllama_model()
    a, b = model.embed(list(texts_a)), model.embed(list(texts_b))
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    dots = (a * b).sum(axis=1)
    return [float(d / n) if n > 0 else 0.0 for d, n in zip(dots, norms)]


def semantic_relevance(prompts: list[str], answers: list[str]) -> float:
    """
    Mean cosine similarity of each prompt and its answer under WordLlama's static embeddings ([`cosines`]): a
    relevance measure that, unlike the word-overlap `relevance`, credits paraphrase and related words ("cooking" and
    "dish"). Measured, never trained on. Its limits: the embedding is an average of token vectors, so it rewards
    topical words without reading the answer, and long generic filler drifts toward a common direction.
    """
    values = cosines(prompts, answers)
    return statistics.fmean(values) if values else 0.0


def measure(ctx, task, model, heldout, with_principle=False) -> dict:
    """
    Greedy answers to the held-out prompts and the metrics that need no other model: the training reward, the
    held-out judge, the text statistics and the semantic relevance. The cell's final evaluation and every point of
    its learning curve go through here, so both are the same measurement.
    """
    answers = answer_requests(
        model, ctx.tokenizer, heldout, task.principle if with_principle else None,
        max_new_tokens=ctx.args.max_completion_length, batch_size=ctx.args.eval_batch_size,
    )  # fmt: skip
    judged = score_answers(heldout, answers, {"judge": task.judge})
    return {
        "answers": answers,
        "reward": statistics.fmean(task.reward(heldout, answers)),
        "judge": statistics.fmean(judged["judge"]),
        **text_statistics(heldout, answers),
        "semantic_relevance": semantic_relevance(heldout, answers),
    }


def evaluate_cell(ctx, task, model, heldout, base_answers, with_principle=False) -> dict:
    """Greedy answers to the held-out prompts and every metric of the table."""
    from ple_trl import metrics

    result = measure(ctx, task, model, heldout, with_principle)
    answers = result.pop("answers")
    result["perplexity"] = perplexity_under(ctx.base_model, ctx.tokenizer, answers, ctx.args.eval_batch_size)
    result["mean_words"] = statistics.fmean(len(a.split()) for a in answers)
    base_answers = answers if base_answers is None else base_answers
    win = metrics.load("win_rate", keep_in_memory=True).compute(
        prompts=heldout, completions_a=answers, completions_b=base_answers, reward_fn=task.judge
    )
    result["win_rate_vs_base"] = win["win_rate"]
    result["wins_ties_losses"] = [win["wins"], win["ties"], win["losses"]]
    return {"metrics": result, "answers": answers}


CURVE_KEYS = ("reward", "judge", "distinct_2", "relevance", "semantic_relevance")


def fill_semantic_relevance(record: dict) -> bool:
    """
    Add `semantic_relevance` where a cell file computed before it lacks it, from the held-out prompts and answers the
    file stores (the metrics, and each learning-curve point that kept its answers): no retraining. Returns whether
    anything was added.
    """
    changed = False
    metrics = record["metrics"]
    if "semantic_relevance" not in metrics:
        metrics["semantic_relevance"] = semantic_relevance(record["prompts"], record["answers"])
        changed = True
    for point in metrics.get("curve", []):
        if "semantic_relevance" not in point:
            if point.get("final"):
                point["semantic_relevance"] = metrics["semantic_relevance"]
            elif "held_out_answers" in point:
                point["semantic_relevance"] = semantic_relevance(record["prompts"], point["held_out_answers"])
            else:
                continue
            changed = True
    return changed


# ---------------------------------------------------------------------------------------------------------- training
class GenerationCounter:
    """Counts the answers and new tokens (padding excluded) of every `generate` call on one model instance.

    The trainers wrap the model (LoRA, accelerate) but end up calling the base model's `generate`, so counting there
    measures what each method really generated, whatever its code path. [`attach`] moves the count to another instance
    (SPA's seed stage returns a new model); nothing is counted inside [`paused`] (the learning curve's own greedy
    held-out answers are a measurement, not training).
    """

    def __init__(self, model, pad_token_id):
        self.answers, self.tokens = 0, 0
        self.pad_token_id = pad_token_id
        self.counting = True
        self.attach(model)

    def attach(self, model):
        original = model.generate

        def generate(*args, **kwargs):
            output = original(*args, **kwargs)
            if self.counting:
                sequences = getattr(output, "sequences", output)
                prompt = kwargs.get("input_ids", args[0] if args else None)
                new = sequences[:, prompt.shape[1] :] if prompt is not None else sequences
                self.answers += new.shape[0]
                self.tokens += int((new != self.pad_token_id).sum())
            return output

        model.generate = generate

    @contextmanager
    def paused(self):
        self.counting = False
        try:
            yield
        finally:
            self.counting = True


@dataclass
class Context:
    args: argparse.Namespace
    model_path: str
    tokenizer: object
    base_model: object
    device: object
    bf16: bool
    fp16: bool


def _common_config(ctx, lr, seed, output_dir) -> dict:
    args = ctx.args
    return dict(
        output_dir=output_dir,
        learning_rate=lr,
        # The same schedule for every method (the demo's): a constant rate without warm-up over the few steps.
        lr_scheduler_type="constant",
        warmup_steps=0,
        max_steps=args.steps,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        seed=seed,
        bf16=ctx.bf16,
        fp16=ctx.fp16,
        use_cpu=ctx.device.type == "cpu",
        gradient_checkpointing=False,
        disable_tqdm=True,
    )


def _policy(ctx):
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(ctx.model_path, dtype=torch.float32)


def _peft_config():
    from peft import LoraConfig

    return LoraConfig(task_type="CAUSAL_LM", **LORA)


def _prompt_dataset(prompts):
    from datasets import Dataset

    return Dataset.from_dict({"prompt": [[{"role": "user", "content": p}] for p in prompts]})


def _sample(ctx, model, requests, seed, principle=None):
    """Sampled answers (the trainers' temperature) to `requests` (principle-guided with `principle`), seeded."""
    from transformers import set_seed

    set_seed(seed)
    return answer_requests(model, ctx.tokenizer, requests, principle, max_new_tokens=ctx.args.max_completion_length,
                           temperature=ctx.args.temperature, batch_size=ctx.args.eval_batch_size)  # fmt: skip


def curve_steps(steps: int) -> list[int]:
    """The optimizer steps of the learning curve: a quarter and a half of the run (`S/4`, `S/2`, rounded down), those
    strictly inside it (none for one step)."""
    return sorted({s for s in (steps // 4, steps // 2) if 0 < s < steps})


def curve_callback(ctx, task, heldout, counter, answers_at):
    """
    A `TrainerCallback` that, at the end of each optimizer step in [`curve_steps`], answers the held-out prompts
    greedily with the model being trained (the cell's final evaluation, [`measure`], without perplexity and win rate)
    and keeps `{"step", "answers", "reward", "judge", "distinct_2", "relevance", "semantic_relevance",
    "held_out_answers"}` in its `points`. `answers_at(step)` is the x value: the answers generated so far for the
    online methods, the share of the generated answers trained on for the two-stage ones. The measurement's own
    `generate` calls are not counted, and greedy decoding draws no random numbers, so training goes on as without it.
    """
    from transformers import TrainerCallback

    steps = set(curve_steps(ctx.args.steps))

    class Curve(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kwargs):
            if state.global_step in steps and model is not None:
                with counter.paused():
                    result = measure(ctx, task, model, heldout)
                self.points.append({"step": state.global_step, "answers": answers_at(state.global_step),
                                    **{key: result[key] for key in CURVE_KEYS},
                                    "held_out_answers": result["answers"]})  # fmt: skip

    callback = Curve()
    callback.points = []
    return callback


def _sft(ctx, model, prompts, answers, lr, seed, output_dir, callbacks=None):
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    dataset = Dataset.from_dict({
        "prompt": [[{"role": "user", "content": p}] for p in prompts],
        "completion": [[{"role": "assistant", "content": a}] for a in answers],
    })  # fmt: skip
    config = SFTConfig(per_device_train_batch_size=ctx.args.pairs, **_common_config(ctx, lr, seed, output_dir))
    trainer = SFTTrainer(model=model, args=config, train_dataset=dataset, processing_class=ctx.tokenizer,
                         peft_config=_peft_config(), callbacks=callbacks)  # fmt: skip
    trainer.train()
    return trainer.model


def train_method(ctx, task, method, lr, seed, train_prompts, output_dir, heldout=None):
    """
    Train one method; returns the trained model, the generation count of its training, and its learning-curve points
    on `heldout` (none without `heldout`).
    """
    from transformers import set_seed

    args = ctx.args
    set_seed(seed)
    policy = _policy(ctx)
    counter = GenerationCounter(policy, ctx.tokenizer.pad_token_id)
    common = _common_config(ctx, lr, seed, output_dir)
    budget = args.steps * args.pairs * 2
    dataset = _prompt_dataset(train_prompts)
    if method in TWO_STAGE:  # x: the share of the generated answers trained on after `step` of the S SFT steps
        answers_at = lambda step: counter.answers * step / args.steps
    else:  # x: the answers the method has generated by the end of `step`
        answers_at = lambda step: counter.answers
    curve = curve_callback(ctx, task, heldout, counter, answers_at) if heldout else None
    callbacks = [curve] if curve is not None else None
    if method in PLE_VARIANTS:
        from ple_trl import PLEConfig, PLETrainer

        # `ple`: the demo's settings; the variants set their levers over them (the reference, for the anchored ranking
        # and the distillation's teacher, is the adapter-disabled policy).
        demo = dict(tau0=0.2, alpha=0.9, rank_sft_coef=1.0, iteration_unit="steps", steps_per_iteration=4)
        config = PLEConfig(principle=task.principle, per_device_train_batch_size=args.pairs,
                           max_completion_length=args.max_completion_length, temperature=args.temperature,
                           reward_weights=task.reward_weights, **{**demo, **PLE_VARIANTS[method]},
                           **common)  # fmt: skip
        trainer = PLETrainer(model=policy, reward_funcs=task.reward_funcs, args=config, train_dataset=dataset,
                             processing_class=ctx.tokenizer, peft_config=_peft_config(),
                             callbacks=callbacks)  # fmt: skip
        trainer.train()
        model = trainer.model
    elif method == "spa":
        from ple_trl import SPAConfig, SPATrainer
        from ple_trl.demo.arguments import DemoArguments
        from ple_trl.demo.run import seed_stage

        # SPA's seed stage first, as the demo runs it (DPO on the shipped seed pairs, merged): pi_init is the model it
        # started from, which the implicit reward needs (the policy itself would give every answer 0).
        seed_args = DemoArguments(method="spa", output_dir=output_dir, seed=seed, quiet=True,
                                  **({"seed_steps": 1, "seed_batch_size": 2} if args.steps == 1 else {}))  # fmt: skip
        init_model, policy = seed_stage(policy, ctx.tokenizer, seed_args)
        counter.attach(policy)  # the seed stage generates nothing and returns a new model: count SPA's answers on it
        config = SPAConfig(per_device_train_batch_size=args.pairs, max_completion_length=args.max_completion_length,
                           temperature=args.temperature, iteration_unit="steps", steps_per_iteration=4,
                           **common)  # fmt: skip
        trainer = SPATrainer(model=policy, ref_model=init_model, args=config, train_dataset=dataset,
                             processing_class=ctx.tokenizer, peft_config=_peft_config(),
                             callbacks=callbacks)  # fmt: skip
        trainer.train()
        model = trainer.model
    elif method in ("grpo", "grpo_batch", "grpo_g4"):
        from trl import GRPOConfig, GRPOTrainer

        # GRPO's batch counts answers: 2B answers a step, as PLE's B pairs: B prompts x 2 generations (`grpo`,
        # `grpo_batch`) or B/2 prompts x 4 (`grpo_g4`). With 2 generations, TRL's default group scaling divides each
        # pair's centred rewards by their std, so every advantage is +-0.707 whatever the reward gap; `grpo_batch`
        # scales by the std of the whole batch instead, keeping the gap's size.
        generations = 4 if method == "grpo_g4" else 2
        scaling = {"scale_rewards": "batch"} if method == "grpo_batch" else {}
        config = GRPOConfig(num_generations=generations, per_device_train_batch_size=2 * args.pairs,
                            max_completion_length=args.max_completion_length, temperature=args.temperature,
                            reward_weights=task.reward_weights, **scaling, **common)  # fmt: skip
        trainer = GRPOTrainer(model=policy, reward_funcs=task.reward_funcs, args=config, train_dataset=dataset,
                              processing_class=ctx.tokenizer, peft_config=_peft_config(),
                              callbacks=callbacks)  # fmt: skip
        trainer.train()
        model = trainer.model
    elif method == "online_dpo":
        from trl.experimental.online_dpo import OnlineDPOConfig, OnlineDPOTrainer

        config = OnlineDPOConfig(per_device_train_batch_size=args.pairs, max_new_tokens=args.max_completion_length,
                                 temperature=args.temperature, reward_weights=task.reward_weights,
                                 **common)  # fmt: skip
        trainer = OnlineDPOTrainer(model=policy, reward_funcs=task.reward_funcs, args=config, train_dataset=dataset,
                                   processing_class=ctx.tokenizer, peft_config=_peft_config(),
                                   callbacks=callbacks)  # fmt: skip
        trainer.train()
        model = trainer.model
    elif method == "sdft":
        from trl.experimental.sdft import SDFTConfig, SDFTTrainer

        # On-policy self-distillation: the student answers the plain prompt; the teacher scores the same answer given
        # the prompt and the principle (TRL's `teacher_prompt_template`, "{prompt}\n\n{privileged_context}", in the
        # user turn). TRL's defaults otherwise: `teacher_model_kind="base"`, which under PEFT is the policy with its
        # adapter disabled (the frozen base model, no copy); top-k (100) logit distillation, alpha 0.5. Its batch
        # counts answers as GRPO's: B prompts x `num_generations=2` = 2B answers a step (TRL's default is 8).
        # The top-k is capped at the vocabulary only for models with fewer than k tokens (the tests' tiny model).
        dataset = dataset.add_column("privileged_context", [task.principle] * len(dataset))
        topk = min(SDFTConfig.__dataclass_fields__["distillation_topk"].default, policy.config.vocab_size)
        config = SDFTConfig(num_generations=2, per_device_train_batch_size=2 * args.pairs,
                            max_completion_length=args.max_completion_length, temperature=args.temperature,
                            distillation_topk=topk, **common)  # fmt: skip
        trainer = SDFTTrainer(model=policy, args=config, train_dataset=dataset, processing_class=ctx.tokenizer,
                              peft_config=_peft_config(), callbacks=callbacks)  # fmt: skip
        trainer.train()
        model = trainer.model
    elif method == "raft":
        # Best-of-n (what TRL lacks): n samples for budget/n prompts, the best by the training reward is kept.
        n = args.raft_n
        prompts = _cycle(train_prompts, budget // n, seed)
        samples = _sample(ctx, policy.to(ctx.device), [p for p in prompts for _ in range(n)], seed)
        rewards = task.reward([p for p in prompts for _ in range(n)], samples)
        best = [max(range(n), key=lambda j, i=i: rewards[i * n + j]) for i in range(len(prompts))]
        winners = [samples[i * n + j] for i, j in enumerate(best)]
        model = _sft(ctx, policy, prompts, winners, lr, seed, output_dir, callbacks)
    elif method == "context_distillation":
        prompts = _cycle(train_prompts, budget // 2, seed)
        answers = _sample(ctx, policy.to(ctx.device), prompts, seed, principle=task.principle)
        model = _sft(ctx, policy, prompts, answers, lr, seed, output_dir, callbacks)
    else:
        raise ValueError(f"unknown method {method!r}; use one of {METHODS}")
    return model, counter, ([] if curve is None else curve.points)


def _cycle(items, count, seed):
    """`count` prompts from a seeded shuffle of `items`, repeated when there are fewer (as the trainers' samplers)."""
    items = list(items)
    random.Random(seed).shuffle(items)
    return [items[i % len(items)] for i in range(count)]


# ---------------------------------------------------------------------------------------------------------- the run
def spa_available() -> str | None:
    """`None` when this ple-trl has SPA's trainer, else the reason it is skipped."""
    import ple_trl

    if hasattr(ple_trl, "SPATrainer") and hasattr(ple_trl, "SPAConfig"):
        return None
    return f"ple_trl {ple_trl.__version__} at {Path(ple_trl.__file__).parent} has no SPATrainer/SPAConfig"


def parse_lrs(text: str) -> list[str]:
    lrs = [item.strip() for item in text.split(",") if item.strip()]
    for lr in lrs:
        if lr != "default":
            try:
                if not float(lr) > 0:
                    raise ValueError
            except ValueError:
                raise SystemExit(f"--lrs: {lr!r} is neither `default` nor a learning rate > 0 (e.g. 1e-4).") from None
    if not lrs:
        raise SystemExit("--lrs is empty; pass e.g. `default,1e-4,3e-4`.")
    return lrs


def method_lrs(method: str, lr_labels: list[str]) -> list[float | None]:
    """The distinct learning rates one method runs with (`default` resolved), in the order given; `None` untrained."""
    if method in UNTRAINED:
        return [None]
    lrs = [DEFAULT_LRS[method] if label == "default" else float(label) for label in lr_labels]
    return list(dict.fromkeys(lrs))


def run_cell(ctx, task, method, lr, seed, base_answers) -> dict:
    args = ctx.args
    heldout = task.prompts("heldout")[: args.num_heldout]
    train_prompts = task.prompts("train")
    assert not set(heldout) & set(train_prompts), "held-out prompts must never be trained on"
    if args.num_train_prompts is not None:
        train_prompts = train_prompts[: args.num_train_prompts]
    start = time.perf_counter()
    if method in UNTRAINED:
        model, counter, curve = ctx.base_model, None, None
    else:
        scratch = os.path.join(args.output_dir, "_train", task.name, method, f"lr-{lr:g}_seed-{seed}")
        model, counter, curve = train_method(ctx, task, method, lr, seed, train_prompts, scratch, heldout)
    # Read before evaluating: the evaluation's own answers go through the same `generate`.
    generated = (0, 0) if counter is None else (counter.answers, counter.tokens)
    train_s = time.perf_counter() - start  # the learning curve's measurements included
    start = time.perf_counter()
    evaluation = evaluate_cell(ctx, task, model, heldout, base_answers, with_principle=method == "base_prompted")
    eval_s = time.perf_counter() - start
    del model
    gc.collect()  # one process trains many cells: free each trained model before the next
    metrics = {**evaluation["metrics"], "generated_answers": generated[0], "generated_tokens": generated[1],
               "train_s": train_s, "eval_s": eval_s}  # fmt: skip
    if curve is not None:
        # The last point is the cell's final evaluation (its answers are the cell's `answers`).
        final = {"step": args.steps, "answers": generated[0], "final": True}
        metrics["curve"] = [*curve, {**final, **{key: metrics[key] for key in CURVE_KEYS}}]
    return {
        "task": task.name,
        "method": method,
        "seed": seed,
        "lr": lr,
        "default_lr": lr is not None and lr == DEFAULT_LRS[method],
        "metrics": metrics,
        "settings": {
            "model_path": ctx.model_path,
            "steps": args.steps,
            "pairs": args.pairs,
            "budget_answers": 0 if method in UNTRAINED else args.steps * args.pairs * 2,
            "curve_steps": [] if method in UNTRAINED else curve_steps(args.steps),
            "max_completion_length": args.max_completion_length,
            "temperature": args.temperature,
            "raft_n": args.raft_n,
            "num_heldout": len(heldout),
            "num_train_prompts": len(train_prompts),
            "lora": LORA,
            "device": str(ctx.device),
            "bf16": ctx.bf16,
            "fp16": ctx.fp16,
            "judge": task.judge_name,
            "principle": task.principle,
        },
        "prompts": heldout,
        "answers": evaluation["answers"],
    }


# The settings a finished cell must share with this run to be reused instead of rerun.
RESUME_KEYS = ("model_path", "steps", "pairs", "max_completion_length", "temperature", "raft_n", "num_train_prompts",
               "num_heldout")
# The methods whose result depends on the task's principle: their cells must also share it. The others (the base
# model, the GRPOs, Online DPO, RAFT, SPA) never see the principle, so their cells stay valid when it changes.
PRINCIPLED = ("base_prompted", *PLE_VARIANTS, "context_distillation", "sdft")


def check_reusable(path, record, ctx, task):
    """Refuse to mix cells of different settings in one `--output_dir` (their rows would not be comparable)."""
    args = ctx.args
    current = {"model_path": ctx.model_path, "steps": args.steps, "pairs": args.pairs,
               "max_completion_length": args.max_completion_length, "temperature": args.temperature,
               "raft_n": args.raft_n}  # fmt: skip
    num_train = len(task.prompts("train"))
    current["num_train_prompts"] = min(args.num_train_prompts or num_train, num_train)
    current["num_heldout"] = min(args.num_heldout, len(task.prompts("heldout")))
    keys = RESUME_KEYS
    if record.get("method") in PRINCIPLED:
        current["principle"] = task.principle
        keys += ("principle",)
    saved = record["settings"]
    differ = {key: (saved.get(key), current[key]) for key in keys if saved.get(key) != current[key]}
    if differ:
        details = ", ".join(f"{key}: {old!r} there, {new!r} now" for key, (old, new) in differ.items())
        raise SystemExit(
            f"{path} was computed with other settings ({details}). Use another --output_dir for these settings, or "
            "delete that file to recompute the cell."
        )


def cell_path(output_dir, task, method, lr, seed) -> str:
    return os.path.join(output_dir, task, method, f"lr-{'none' if lr is None else format(lr, 'g')}_seed-{seed}.json")


def _write_json(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    partial = f"{path}.partial-{os.getpid()}"
    with open(partial, "w") as f:
        json.dump(data, f, indent=2)
    os.replace(partial, path)  # a cell file exists only once it is complete, so resuming never reads half a file


COLUMNS = [  # (metric key, header, format)
    ("reward", "reward (trained on)", "{:+.3f}"),
    ("judge", "held-out judge", "{:+.3f}"),
    ("win_rate_vs_base", "win rate vs base", "{:.2f}"),
    ("perplexity", "perplexity under base", "{:.1f}"),
    ("distinct_2", "distinct-2", "{:.2f}"),
    ("distinct_answers", "distinct answers", "{:.0%}"),
    ("relevance", "relevance", "{:.0%}"),
    ("semantic_relevance", "semantic relevance", "{:.3f}"),
    ("generated_answers", "answers generated", "{:.0f}"),
    ("generated_tokens", "tokens generated", "{:.0f}"),
    ("train_s", "train s", "{:.0f}"),
]


def _mean_spread(values, fmt):
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return "nan"
    mean = statistics.fmean(values)
    if len(values) == 1:
        return fmt.format(mean)
    spread = statistics.stdev(values)
    return f"{fmt.format(mean)} ± {fmt.format(spread).lstrip('+')}"


def _groups(records: list[dict]) -> dict[tuple, list[dict]]:
    """The cells grouped by (task, method, learning rate), methods in `METHODS` order, learning rates ascending."""
    groups: dict[tuple, list[dict]] = {}
    order = sorted(records, key=lambda r: (METHODS.index(r["method"]), r["lr"] or 0.0, r["seed"]))
    for record in order:
        groups.setdefault((record["task"], record["method"], record["lr"]), []).append(record)
    return groups


def _row(method, lr, rows, note="") -> list[str]:
    default = ", default" if lr == DEFAULT_LRS.get(method) else ""  # today's default, whatever it was at run time
    label = method if method in UNTRAINED else f"{method} (lr {lr:g}{default}{note})"
    cells = [_mean_spread([r["metrics"].get(key) for r in rows], fmt) for key, _, fmt in COLUMNS]
    return [label, str(len(rows)), *cells]


def summarize(records: list[dict]) -> dict[str, list[list[str]]]:
    """Per task: one row per method and learning rate, each metric as mean ± standard deviation over seeds."""
    tables: dict[str, list[list[str]]] = {}
    for (task, method, lr), rows in _groups(records).items():
        tables.setdefault(task, []).append(_row(method, lr, rows))
    return tables


@dataclass
class Selection:
    """One method's selected learning rate on one task ([`select_rates`])."""

    lr: float | None
    rows: list[dict]
    passed: bool | None  # whether the rate meets the constraints; None: not checked (untrained, or no base cell)
    largest: bool  # whether it is the largest rate run for the method (the sweep does not bracket it)


SELECTION_RULE = (
    "For each method, the learning rate with the highest mean training reward (the reward the method trains on, of "
    "its greedy held-out answers) among the rates, run with the most seeds, whose held-out distinct-2 is at least "
    f"{DISTINCT_2_FLOOR:g}x the base model's and whose relevance (word overlap) is at least the base model's minus "
    f"{RELEVANCE_MARGIN * 100:g} points; the held-out judge plays no part in the choice. A method none of whose rates "
    "passes is picked by training reward among all of them, and its row says so."
)


def passes_constraints(rows: list[dict], base: list[dict]) -> bool:
    """Whether the cells `rows` (one rate, its seeds) keep the mean distinct-2 at least 0.9x the base model's and the
    mean relevance at least the base model's minus 5 points."""

    def mean(cells, key):
        return statistics.fmean(c["metrics"][key] for c in cells)

    return (mean(rows, "distinct_2") >= DISTINCT_2_FLOOR * mean(base, "distinct_2") - 1e-12
            and mean(rows, "relevance") >= mean(base, "relevance") - RELEVANCE_MARGIN - 1e-12)  # fmt: skip


def select_rates(records: list[dict]) -> dict[tuple, Selection]:
    """
    `{(task, method): Selection}`: each method's learning rate by the selection rule ([`SELECTION_RULE`]): among the
    rates run with the most seeds (a rate run on fewer seeds is only in the full table), those that pass
    [`passes_constraints`] against the task's `base` cell; of them, the highest mean training reward. When none
    passes, the highest mean training reward among them all (`passed=False`); without a `base` cell, unconstrained
    (`passed=None`).
    """
    groups = _groups(records)
    by_method: dict[tuple, list[tuple]] = {}
    for (task, method, lr), rows in groups.items():
        by_method.setdefault((task, method), []).append((lr, rows))
    selected = {}
    for (task, method), options in by_method.items():
        if method in UNTRAINED:
            lr, rows = options[0]
            selected[(task, method)] = Selection(lr, rows, None, False)
            continue
        most = max(len(rows) for _, rows in options)
        eligible = [o for o in options if len(o[1]) == most]
        base = groups.get((task, "base", None))
        passing = eligible if base is None else [o for o in eligible if passes_constraints(o[1], base)]
        lr, rows = max(passing or eligible, key=lambda o: statistics.fmean(r["metrics"]["reward"] for r in o[1]))
        largest = lr == max(o[0] for o in options)
        selected[(task, method)] = Selection(lr, rows, None if base is None else bool(passing), largest)
    return selected


def best_cells(records: list[dict]) -> dict[tuple, tuple]:
    """`{(task, method): (lr, cells)}` at the learning rate [`select_rates`] picks."""
    return {key: (sel.lr, sel.rows) for key, sel in select_rates(records).items()}


def best_rows(records: list[dict]) -> dict[str, list[list[str]]]:
    """Per task: one row per method at its selected learning rate ([`select_rates`]); a method none of whose rates
    passes the constraints says so in its row."""
    tables: dict[str, list[list[str]]] = {}
    for (task, method), sel in select_rates(records).items():
        note = "; no rate passes the constraints: picked by reward alone" if sel.passed is False else ""
        tables.setdefault(task, []).append(_row(method, sel.lr, sel.rows, note))
    return tables


def next_rate(lr: float) -> float | None:
    """The next rate of [`LR_LADDER`] above `lr` (`None` above its last)."""
    return next((rate for rate in LR_LADDER if rate > lr * (1 + 1e-9)), None)


def rates_to_bracket(records: list[dict]) -> dict[tuple, tuple]:
    """
    `{(task, method): (best, next)}` for every trained method whose selected rate ([`select_rates`]) is the largest
    rate run: the sweep has not shown that a larger rate is worse, so `--bracket` runs `next` ([`next_rate`], `None`
    when the ladder ends there).
    """
    return {key: (sel.lr, next_rate(sel.lr)) for key, sel in select_rates(records).items()
            if key[1] not in UNTRAINED and sel.largest}  # fmt: skip


def headers(judge_name: str) -> list[str]:
    return ["method", "seeds", *[h if key != "judge" else f"{judge_name} (held out)" for key, h, _ in COLUMNS]]


def sweep_notes(records: list[dict], bracketed: dict | None = None) -> dict[str, list[str]]:
    """
    Per task, the lines that say where the sweep stands: the methods `--bracket` extended (`bracketed`:
    `{(task, method): [(best, next), ...]}`), and those whose selected rate is still the largest run.
    """
    notes: dict[str, list[str]] = {}
    for (task, method), steps in (bracketed or {}).items():
        for best, nxt in steps:
            notes.setdefault(task, []).append(
                f"- `{method}`: its best rate {best:g} was the largest run; --bracket ran {nxt:g}." if nxt is not None
                else f"- `{method}`: its best rate {best:g} is the largest run and the last of --bracket's ladder "
                f"{', '.join(format(r, 'g') for r in LR_LADDER)}: not bracketed."
            )  # fmt: skip
    for (task, method), (best, nxt) in rates_to_bracket(records).items():
        if (best, nxt) in (bracketed or {}).get((task, method), []):
            continue  # said above
        notes.setdefault(task, []).append(
            f"- `{method}`: its selected rate {best:g} is the largest run, so the sweep does not bracket it "
            + (f"(--bracket would run {nxt:g})." if nxt is not None else "(and the last of --bracket's ladder).")
        )
    return notes


def write_markdown(path, tables, tasks, args, skipped, best=None, notes=None):
    lines = [
        "# PLE and the alternatives at an equal generation budget",
        "",
        (f"Budget: {args.steps} optimizer steps x {args.pairs} prompts (pairs) a step = "
         f"{args.steps * args.pairs * 2} sampled answers of up to {args.max_completion_length} tokens per trained "
         f"method (grpo_g4: {args.pairs // 2} prompts x 4 answers a step; context distillation: "
         f"{args.steps * args.pairs}). LoRA r {LORA['r']} / alpha {LORA['lora_alpha']} all-linear. Held-out "
         f"prompts: up to {args.num_heldout} per task, greedy answers. Mean ± standard deviation over seeds."),
        "",
    ]
    for name, rows in tables.items():
        head = headers(tasks[name].judge_name)
        table_head = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += [f"## Task `{name}`: {tasks[name].principle}", ""]
        if best is not None:
            lines += [f"Each method at its selected learning rate. {SELECTION_RULE}", "", *table_head]
            lines += ["| " + " | ".join(row) + " |" for row in best[name]]
            if notes and notes.get(name):
                lines += ["", "The sweep:", "", *notes[name]]
            lines += ["", "Every learning rate:", ""]
        lines += table_head
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        lines.append("")
    for reason in skipped:
        lines.append(f"- skipped: {reason}")
    Path(path).write_text("\n".join(lines) + "\n")


def plot(path, records, tasks):
    """
    Two panels per task (a column each), every method at its selected learning rate ([`select_rates`]): training
    reward (x) against the held-out judge (y), colour = perplexity under the base; and relevance (x) against
    distinct-2 (y), relative to the base model, with the 10% band around it shaded.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    records = [r for _, cells in best_cells(records).values() for r in cells]
    names = [t for t in tasks if any(r["task"] == t for r in records)]
    columns = max(1, len(names))
    fig, axes = plt.subplots(2, columns, figsize=(6.5 * columns, 9), squeeze=False)
    for column, name in enumerate(names):
        groups: dict[str, list[dict]] = {}
        for r in records:
            if r["task"] == name:
                label = r["method"] if r["method"] in UNTRAINED else f"{r['method']} {r['lr']:g}"
                groups.setdefault(label, []).append(r["metrics"])
        mean = {key: [statistics.fmean(m[key] for m in ms) for ms in groups.values()]
                for key in ("reward", "judge", "perplexity", "relevance", "distinct_2")}  # fmt: skip
        ax = axes[0][column]
        colours = [math.log(p) if p > 0 and math.isfinite(p) else 0.0 for p in mean["perplexity"]]
        points = ax.scatter(mean["reward"], mean["judge"], c=colours, cmap="viridis_r")
        for x, y, label in zip(mean["reward"], mean["judge"], groups):
            ax.annotate(label, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
        fig.colorbar(points, ax=ax, label="log perplexity under the base (lower: more fluent)")
        ax.set_xlabel("training reward (held-out prompts)")
        ax.set_ylabel(f"{tasks[name].judge_name} (held-out judge)")
        ax.set_title(f"task {name}: reward against the held-out judge")
        ax = axes[1][column]
        base = groups.get("base")
        if base:
            base_relevance = statistics.fmean(m["relevance"] for m in base)
            base_distinct = statistics.fmean(m["distinct_2"] for m in base)
            box = Rectangle((0.9 * base_relevance, 0.9 * base_distinct), 0.2 * base_relevance, 0.2 * base_distinct,
                            color="0.9", zorder=0)  # fmt: skip
            ax.add_patch(box)
        ax.scatter(mean["relevance"], mean["distinct_2"], c="C0")
        for x, y, label in zip(mean["relevance"], mean["distinct_2"], groups):
            ax.annotate(label, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.set_xlabel("relevance (answers sharing a content word with the prompt)")
        ax.set_ylabel("distinct-2")
        ax.set_title(f"task {name}: relevance and diversity (grey: base +/- 10%)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_learning_curve(path, records, tasks):
    """
    One panel per task: the held-out judge (y) against the answers generated (x) for every trained method at its
    selected rate ([`select_rates`]), mean over seeds with the standard deviation as error bars, from the points of
    `metrics["curve"]` (the last is the final evaluation). For RAFT and context distillation x is the share of their
    generated answers trained on (SFT step / S x answers generated). The base model is a dashed line; cells computed
    before the curve existed have no curve and are left out.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    selected = select_rates(records)
    names = [t for t in tasks if any(key[0] == t for key in selected)]
    columns = max(1, len(names))
    fig, axes = plt.subplots(1, columns, figsize=(6.5 * columns, 4.8), squeeze=False)
    for column, name in enumerate(names):
        ax = axes[0][column]
        for (task, method), sel in selected.items():
            if task != name:
                continue
            if method == "base":
                base = statistics.fmean(r["metrics"]["judge"] for r in sel.rows)
                ax.axhline(base, color="0.5", linestyle="--", linewidth=1, label="base")
                continue
            by_x: dict[float, list[float]] = {}
            for record in sel.rows:
                for point in record["metrics"].get("curve", []):
                    by_x.setdefault(round(point["answers"], 6), []).append(point["judge"])
            if not by_x:
                continue
            xs = sorted(by_x)
            means = [statistics.fmean(by_x[x]) for x in xs]
            errors = [statistics.stdev(by_x[x]) if len(by_x[x]) > 1 else 0.0 for x in xs]
            style = "--" if method in TWO_STAGE else "-"
            ax.errorbar(xs, means, yerr=errors, marker="o", linestyle=style, capsize=3,
                        label=f"{method} {sel.lr:g}")  # fmt: skip
        ax.set_xlabel("answers generated (RAFT, context distillation: share trained on)")
        ax.set_ylabel(f"{tasks[name].judge_name} (held-out judge)")
        ax.set_title(f"task {name}: learning curve at each method's selected rate")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)  # fmt: skip
    parser.add_argument("--model", default=None, help="Base model (default: SmolLM2-135M-Instruct, demo cache).")
    parser.add_argument("--output_dir", default="compare-results", help="Where the cell files, table and figure go.")
    parser.add_argument("--tasks", default="warm,polite", help="Comma-separated tasks: warm, polite.")
    parser.add_argument("--methods", default=",".join(METHODS), help="Comma-separated methods.")
    parser.add_argument("--seeds", default="0,1,2", help="Comma-separated seeds.")
    parser.add_argument("--lrs", default="default,1e-4,3e-4,6e-4",
                        help="Comma-separated learning rates for every trained method; `default` is each method's own "
                        "(PLE 1e-4 and SPA 3e-4 as in the demo, the GRPOs 1e-6, Online DPO 5e-7, SFT 2e-5, SDFT "
                        "5e-5).")  # fmt: skip
    parser.add_argument("--bracket", action="store_true",
                        help="After the sweep, for every method whose selected rate is the largest rate run, run the "
                        "next rate of " + ", ".join(format(r, "g") for r in LR_LADDER) + " (--seeds) and select "
                        "again, until the selected rate is not the largest or the ladder ends.")  # fmt: skip
    parser.add_argument("--steps", type=int, default=16, help="Optimizer steps of every trained method.")
    parser.add_argument("--pairs", type=int, default=8, help="Prompts a step; 2 answers each (grpo_g4: B/2 x 4).")
    parser.add_argument("--max_completion_length", type=int, default=24)
    parser.add_argument("--temperature", type=float, default=0.7, help="Sampling temperature of all training answers.")
    parser.add_argument("--num_heldout", type=int, default=64, help="Held-out prompts per task (at most 96 / 40).")
    parser.add_argument("--num_train_prompts", type=int, default=None, help="Use only this many training prompts.")
    parser.add_argument("--raft_n", type=int, default=4, help="RAFT's best-of-n.")
    parser.add_argument("--eval_batch_size", type=int, default=32)
    parser.add_argument("--device", default=None, choices=["cpu", "cuda", "npu", "xpu", "mps"],
                        help="Default: what accelerate picks.")  # fmt: skip
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (CPU only).")
    parser.add_argument("--table_only", action="store_true",
                        help="Train nothing: build the table and figures from the cell files already in --output_dir "
                        "(every learning rate and seed found there, for --tasks and --methods), adding the semantic "
                        "relevance to the files that lack it.")  # fmt: skip
    parser.add_argument("--quick", action="store_true",
                        help="Harness check: " + ", ".join(f"{k}={v}" for k, v in QUICK.items()) + " (flags given "
                        "explicitly win).")  # fmt: skip
    return parser


def parse_args(argv=None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.quick:  # --quick's values become the defaults: `--quick --steps 4` runs 4 steps
        parser.set_defaults(**QUICK)
        args = parser.parse_args(argv)
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    for name in ("steps", "pairs", "max_completion_length", "num_heldout", "raft_n", "eval_batch_size", "threads"):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name}={getattr(args, name)} must be >= 1.")
    if (args.steps * args.pairs * 2) % args.raft_n:
        raise SystemExit(f"--raft_n={args.raft_n} must divide the budget {args.steps * args.pairs * 2}.")
    tasks_all = build_tasks()
    task_names = [t.strip() for t in args.tasks.split(",") if t.strip()]
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    for name, known, flag in ((task_names, tasks_all, "--tasks"), (methods, METHODS, "--methods")):
        unknown = [n for n in name if n not in known]
        if unknown:
            raise SystemExit(f"{flag}: unknown {unknown}; choose from {list(known)}.")
    if "grpo_g4" in methods and args.pairs % 2 and not args.table_only:
        raise SystemExit(f"--pairs={args.pairs}: grpo_g4 answers B/2 prompts x 4 a step, so B must be even.")
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    lrs = parse_lrs(args.lrs)

    import torch
    from accelerate import PartialState
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ple_trl.demo.model import resolve_demo_model
    from ple_trl.device import resolve_mixed_precision

    if args.table_only:
        ctx = Context(args, resolve_demo_model(args.model), None, None, None, False, False)
        records = collect_cells(ctx, tasks_all, task_names, methods)
        return report(args, records, tasks_all, [], ran=0, reused=len(records))

    device = torch.device(args.device) if args.device else PartialState().device
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    bf16, fp16 = resolve_mixed_precision(None, None, device_type=device.type, use_cpu=device.type == "cpu")
    model_path = resolve_demo_model(args.model)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    base_model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).to(device).eval()
    ctx = Context(args, model_path, tokenizer, base_model, device, bf16, fp16)

    skipped = []
    if "spa" in methods and (reason := spa_available()) is not None:
        skipped.append(f"spa: {reason} (it runs once SPA is merged)")
        print(f"Skipping spa: {reason}.", flush=True)
        methods.remove("spa")
    if "base" not in methods:
        methods.insert(0, "base")  # every win rate is against the base model's answers
    records, counts, bracketed = [], {"ran": 0, "reused": 0}, {}
    for task_name in task_names:
        task = tasks_all[task_name]
        task_records, base_answers = [], None
        for method in methods:
            cells = [(lr, seed) for lr in method_lrs(method, lrs) for seed in (seeds if lr is not None else [0])]
            for lr, seed in cells:
                record = run_or_reuse(ctx, task, method, lr, seed, base_answers, counts)
                if method == "base":
                    base_answers = record["answers"]
                task_records.append(record)
        extended = args.bracket
        while extended:  # --bracket: extend the sweep upward until no method's selected rate is its largest
            extended = False
            for (_, method), (best, nxt) in rates_to_bracket(task_records).items():
                steps = bracketed.setdefault((task_name, method), [])
                if (best, nxt) in steps:
                    continue
                steps.append((best, nxt))
                if nxt is None:
                    print(f"[bracket] {task_name} {method}: its best rate {best:g} is the largest run and the last "
                          "of the ladder: not bracketed.", flush=True)  # fmt: skip
                    continue
                print(f"[bracket] {task_name} {method}: its best rate {best:g} is the largest run: running "
                      f"{nxt:g}.", flush=True)  # fmt: skip
                for seed in seeds:
                    task_records.append(run_or_reuse(ctx, task, method, nxt, seed, base_answers, counts))
                extended = True
        records += task_records

    return report(args, records, tasks_all, skipped, counts["ran"], counts["reused"], bracketed)


def run_or_reuse(ctx, task, method, lr, seed, base_answers, counts) -> dict:
    """The cell's record: read from its file when it exists (checked for reuse, the semantic relevance added where
    missing), else run and written."""
    path = cell_path(ctx.args.output_dir, task.name, method, lr, seed)
    if os.path.exists(path):
        record = load_cell(path, ctx, task)
        counts["reused"] += 1
        print(f"[done]  {task.name} {method} lr={lr} seed={seed}: {path}", flush=True)
        return record
    print(f"[run]   {task.name} {method} lr={lr} seed={seed} ...", flush=True)
    record = run_cell(ctx, task, method, lr, seed, base_answers)
    _write_json(path, record)
    counts["ran"] += 1
    m = record["metrics"]
    print(f"        reward {m['reward']:+.3f}  judge {m['judge']:+.3f}  semantic relevance "
          f"{m['semantic_relevance']:.3f}  answers {m['generated_answers']}  train {m['train_s']:.0f}s  "
          f"eval {m['eval_s']:.0f}s", flush=True)  # fmt: skip
    return record


def load_cell(path, ctx, task) -> dict:
    """A cell file, checked for reuse; a file written before the semantic relevance existed gets it, computed from
    the prompts and answers it stores, and is written back."""
    with open(path) as f:
        record = json.load(f)
    check_reusable(str(path), record, ctx, task)
    if fill_semantic_relevance(record):
        _write_json(str(path), record)
        print(f"[added] semantic relevance to {path}", flush=True)
    return record


def collect_cells(ctx, tasks, task_names, methods) -> list[dict]:
    """Every cell file in `--output_dir` for these tasks and methods (any learning rate or seed), checked for reuse."""
    records = []
    for task_name in task_names:
        for method in methods:
            folder = Path(ctx.args.output_dir) / task_name / method
            for path in sorted(folder.glob("*.json")):
                records.append(load_cell(path, ctx, tasks[task_name]))
    if not records:
        raise SystemExit(f"--table_only: no cell files under {ctx.args.output_dir} for {task_names} x {methods}.")
    return records


def report(args, records, tasks, skipped, ran, reused, bracketed=None) -> dict:
    """Print the tables, write `results.md`, `compare.png` and `learning_curve.png`."""
    from ple_trl.evaluation import format_table

    tables = summarize(records)
    best = best_rows(records)
    notes = sweep_notes(records, bracketed)
    for name, rows in tables.items():
        judge = tasks[name].judge_name
        print(f"\nTask {name} ({judge} is the held-out judge), each method at its selected rate:")
        print(format_table(best[name], headers(judge), align="<" + ">" * (len(COLUMNS) + 1)))
        for line in notes.get(name, []):
            print(line)
        print(f"Task {name}, every learning rate:")
        print(format_table(rows, headers(judge), align="<" + ">" * (len(COLUMNS) + 1)))
    print(f"\nSelection rule: {SELECTION_RULE}")
    for reason in skipped:
        print(f"skipped: {reason}")
    os.makedirs(args.output_dir, exist_ok=True)
    markdown = os.path.join(args.output_dir, "results.md")
    write_markdown(markdown, tables, tasks, args, skipped, best, notes)
    figure = plot(os.path.join(args.output_dir, "compare.png"), records, tasks)
    curve = plot_learning_curve(os.path.join(args.output_dir, "learning_curve.png"), records, tasks)
    print(f"\nWrote {markdown}, {figure} and {curve} ({ran} cells run, {reused} reused).")
    return {"records": records, "tables": tables, "best": best, "ran": ran, "reused": reused, "skipped": skipped,
            "markdown": markdown, "figure": figure, "learning_curve": curve, "bracketed": bracketed or {},
            "notes": notes}  # fmt: skip


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
