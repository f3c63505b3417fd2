"""PLE against the methods a user would pick instead, at an equal generation budget, on two offline tasks.

Every method starts from the same base model (SmolLM2-135M-Instruct from the demo cache, or `--model`), trains a LoRA
adapter (r 8, alpha 16, all linear modules) on the same training prompts for the same number of optimizer steps, and
is measured on the same held-out prompts (never trained on) with greedy answers:

| method | what it is | answers generated while training |
|---|---|---|
| `base` | the base model, plain prompt | 0 |
| `base_prompted` | the base model with the task's principle in its prompt (prompting alone) | 0 |
| `ple` | [`PLETrainer`] with the demo's settings | `S` steps x `B` pairs x 2 |
| `grpo` | TRL `GRPOTrainer`, `num_generations=2`, `B` prompts a step | `S x B x 2` |
| `online_dpo` | TRL `OnlineDPOTrainer` (trl.experimental), 2 answers per prompt, `B` prompts a step | `S x B x 2` |
| `raft` | best-of-`n` by the training reward, then TRL `SFTTrainer` on the winners | `(S x B x 2 / n) x n` |
| `context_distillation` | principle-guided answers, then TRL `SFTTrainer` on them with the plain prompt | `S x B` |
| `spa` | ple-trl's `SPATrainer` (no reward); skipped, with the reason printed, where ple-trl lacks it | `S x B x 2` |

Every cell (task x method x learning rate x seed) writes `{output_dir}/{task}/{method}/lr-{lr}_seed-{seed}.json` and is
skipped when that file exists, so an interrupted run resumes. The run then prints the table, and writes
`{output_dir}/results.md` and `{output_dir}/compare.png`. See `benchmarks/README_compare.md` for the columns.

```bash
python benchmarks/compare.py                                 # the full comparison (CPU: hours)
python benchmarks/compare.py --quick --model path/to/tiny    # one step per method, 2 prompts: the harness test
python benchmarks/compare.py --device cuda --seeds 0,1,2 --lrs default,1e-4,3e-4,6e-4
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
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable

# PLE's and SPA's default learning rates are the demo's.
from ple_trl.demo import DEFAULT_LEARNING_RATES

# Relevance, distinct-2 and distinct answers live in the package, so that `ple-trl demo` reports the same numbers.
from ple_trl.evaluation import text_statistics

METHODS = (
    "base", "base_prompted", "ple", "ple_anchored", "grpo", "online_dpo", "raft", "context_distillation", "spa",
)  # fmt: skip
UNTRAINED = ("base", "base_prompted")
LORA = {"r": 8, "lora_alpha": 16, "target_modules": "all-linear"}
# Each method's own default learning rate ("default" in --lrs): the demo's for PLE and SPA, TRL's config defaults for
# the others (tuned there for full fine-tuning, so tiny for a LoRA adapter: hence the sweep).
DEFAULT_LRS = {
    "ple": DEFAULT_LEARNING_RATES["ple"], "ple_anchored": DEFAULT_LEARNING_RATES["ple"],
    "spa": DEFAULT_LEARNING_RATES["spa"], "grpo": 1e-6, "online_dpo": 5e-7, "raft": 2e-5, "context_distillation": 2e-5,
}  # fmt: skip
QUICK = dict(steps=1, pairs=2, max_completion_length=8, num_heldout=2, num_train_prompts=2, seeds="0", lrs="default",
             raft_n=2, eval_batch_size=2)  # fmt: skip


# ------------------------------------------------------------------------------------------------------------ tasks
def afinn_per_word(prompts=None, completions=None, **kwargs) -> list[float]:
    """AFINN-165 sentiment of each answer divided by its number of words (0 for an empty answer)."""
    from ple_trl.rewards import completion_text

    afinn = _afinn()
    scores = []
    for completion in completions:
        text = completion_text(completion)
        words = len(text.split())
        scores.append(afinn.score(text) / words if words else 0.0)
    return scores


def clean_probability(prompts=None, completions=None, **kwargs) -> list[float]:
    """`1 - P(offensive)` of each answer under alt-profanity-check's learned classifier (1: clean)."""
    from profanity_check import predict_prob

    from ple_trl.rewards import completion_text

    texts = [completion_text(completion) for completion in completions]
    return [1.0 - float(p) for p in predict_prob(texts)] if texts else []


@lru_cache(maxsize=1)
def _afinn():
    from afinn import Afinn

    return Afinn()


@dataclass
class Task:
    name: str
    prompts_path: Path
    principle: str
    reward_funcs: list[Callable]
    reward_weights: list[float]
    judge: Callable
    judge_name: str

    def prompts(self, split):
        from ple_trl.demo import load_demo_prompts

        return load_demo_prompts(split, path=self.prompts_path)

    def reward(self, prompts, completions) -> list[float]:
        per_func = [func(prompts=prompts, completions=completions) for func in self.reward_funcs]
        return [sum(w * r for w, r in zip(self.reward_weights, rewards)) for rewards in zip(*per_func)]


def build_tasks() -> dict[str, Task]:
    from ple_trl.demo import DEMO_PRINCIPLE, DEMO_PROMPTS_PATH
    from ple_trl.principles import PRINCIPLES
    from ple_trl.rewards import profanity_penalty, vader_sentiment

    return {
        "warm": Task("warm", DEMO_PROMPTS_PATH, DEMO_PRINCIPLE, [vader_sentiment, profanity_penalty], [1.0, 1.0],
                     afinn_per_word, "AFINN/word"),  # fmt: skip
        "polite": Task("polite", DEMO_PROMPTS_PATH.parent / "polite_prompts.jsonl", PRINCIPLES["polite"][0],
                       [profanity_penalty, vader_sentiment], [1.0, 1.0], clean_probability,
                       "1-P(offensive)"),  # fmt: skip
    }


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


def evaluate_cell(ctx, task, model, heldout, base_answers, with_principle=False) -> dict:
    """Greedy answers to the held-out prompts and every metric of the table."""
    from ple_trl import metrics
    from ple_trl.evaluation import generate_answers
    from ple_trl.principles import wrap
    from ple_trl.rewards import completion_text

    chats = [[{"role": "user", "content": p}] for p in heldout]
    if with_principle:
        chats = [wrap(chat, task.principle) for chat in chats]
    answers = generate_answers(model, ctx.tokenizer, chats, max_new_tokens=ctx.args.max_completion_length,
                               batch_size=ctx.args.eval_batch_size)  # fmt: skip
    answers = [completion_text(a) for a in answers]
    judge = task.judge(prompts=heldout, completions=answers)
    result = {
        "reward": statistics.fmean(task.reward(heldout, answers)),
        "judge": statistics.fmean(judge),
        "perplexity": perplexity_under(ctx.base_model, ctx.tokenizer, answers, ctx.args.eval_batch_size),
        **text_statistics(heldout, answers),
        "mean_words": statistics.fmean(len(a.split()) for a in answers),
    }
    base_answers = answers if base_answers is None else base_answers
    win = metrics.load("win_rate", keep_in_memory=True).compute(
        prompts=heldout, completions_a=answers, completions_b=base_answers, reward_fn=task.judge
    )
    result["win_rate_vs_base"] = win["win_rate"]
    result["wins_ties_losses"] = [win["wins"], win["ties"], win["losses"]]
    return {"metrics": result, "answers": answers}


# ---------------------------------------------------------------------------------------------------------- training
class GenerationCounter:
    """Counts the answers and new tokens (padding excluded) of every `generate` call on one model instance.

    The trainers wrap the model (LoRA, accelerate) but end up calling the base model's `generate`, so counting there
    measures what each method really generated, whatever its code path.
    """

    def __init__(self, model, pad_token_id):
        self.answers, self.tokens = 0, 0
        original = model.generate

        def generate(*args, **kwargs):
            output = original(*args, **kwargs)
            sequences = getattr(output, "sequences", output)
            prompt = kwargs.get("input_ids", args[0] if args else None)
            new = sequences[:, prompt.shape[1] :] if prompt is not None else sequences
            self.answers += new.shape[0]
            self.tokens += int((new != pad_token_id).sum())
            return output

        model.generate = generate


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


def _sample(ctx, model, chats, seed):
    """Sampled answers (the trainers' temperature) for `chats`, seeded."""
    from transformers import set_seed

    from ple_trl.evaluation import generate_answers
    from ple_trl.rewards import completion_text

    set_seed(seed)
    answers = generate_answers(model, ctx.tokenizer, chats, max_new_tokens=ctx.args.max_completion_length,
                               temperature=ctx.args.temperature, batch_size=ctx.args.eval_batch_size)  # fmt: skip
    return [completion_text(a) for a in answers]


def _sft(ctx, model, prompts, answers, lr, seed, output_dir):
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    dataset = Dataset.from_dict({
        "prompt": [[{"role": "user", "content": p}] for p in prompts],
        "completion": [[{"role": "assistant", "content": a}] for a in answers],
    })  # fmt: skip
    config = SFTConfig(per_device_train_batch_size=ctx.args.pairs, **_common_config(ctx, lr, seed, output_dir))
    trainer = SFTTrainer(model=model, args=config, train_dataset=dataset, processing_class=ctx.tokenizer,
                         peft_config=_peft_config())  # fmt: skip
    trainer.train()
    return trainer.model


def train_method(ctx, task, method, lr, seed, train_prompts, output_dir):
    """Train one method; returns the trained model and the generation count of its training."""
    from transformers import set_seed

    args = ctx.args
    set_seed(seed)
    policy = _policy(ctx)
    counter = GenerationCounter(policy, ctx.tokenizer.pad_token_id)
    common = _common_config(ctx, lr, seed, output_dir)
    budget = args.steps * args.pairs * 2
    dataset = _prompt_dataset(train_prompts)
    if method in ("ple", "ple_anchored"):
        from ple_trl import PLEConfig, PLETrainer

        # `ple`: the demo's settings. `ple_anchored`: the same with the DPO ranking loss anchored on the initial model
        # (the adapter-disabled policy, beta 0.1), the remedy the issue proposes against filler answers.
        anchor = {"ranking_loss_type": "dpo", "beta": 0.1} if method == "ple_anchored" else {}
        config = PLEConfig(principle=task.principle, per_device_train_batch_size=args.pairs,
                           max_completion_length=args.max_completion_length, temperature=args.temperature, tau0=0.2,
                           alpha=0.9, rank_sft_coef=1.0, iteration_unit="steps", steps_per_iteration=4,
                           reward_weights=task.reward_weights, **anchor, **common)  # fmt: skip
        trainer = PLETrainer(model=policy, reward_funcs=task.reward_funcs, args=config, train_dataset=dataset,
                             processing_class=ctx.tokenizer, peft_config=_peft_config())  # fmt: skip
        trainer.train()
        model = trainer.model
    elif method == "spa":
        from ple_trl import SPAConfig, SPATrainer

        config = SPAConfig(per_device_train_batch_size=args.pairs, max_completion_length=args.max_completion_length,
                           temperature=args.temperature, iteration_unit="steps", steps_per_iteration=4,
                           **common)  # fmt: skip
        trainer = SPATrainer(model=policy, args=config, train_dataset=dataset, processing_class=ctx.tokenizer,
                             peft_config=_peft_config())  # fmt: skip
        trainer.train()
        model = trainer.model
    elif method == "grpo":
        from trl import GRPOConfig, GRPOTrainer

        # GRPO's batch counts answers: B prompts x 2 generations = 2B answers a step, as PLE's B pairs.
        config = GRPOConfig(num_generations=2, per_device_train_batch_size=2 * args.pairs,
                            max_completion_length=args.max_completion_length, temperature=args.temperature,
                            reward_weights=task.reward_weights, **common)  # fmt: skip
        trainer = GRPOTrainer(model=policy, reward_funcs=task.reward_funcs, args=config, train_dataset=dataset,
                              processing_class=ctx.tokenizer, peft_config=_peft_config())  # fmt: skip
        trainer.train()
        model = trainer.model
    elif method == "online_dpo":
        from trl.experimental.online_dpo import OnlineDPOConfig, OnlineDPOTrainer

        config = OnlineDPOConfig(per_device_train_batch_size=args.pairs, max_new_tokens=args.max_completion_length,
                                 temperature=args.temperature, reward_weights=task.reward_weights,
                                 **common)  # fmt: skip
        trainer = OnlineDPOTrainer(model=policy, reward_funcs=task.reward_funcs, args=config, train_dataset=dataset,
                                   processing_class=ctx.tokenizer, peft_config=_peft_config())  # fmt: skip
        trainer.train()
        model = trainer.model
    elif method == "raft":
        # Best-of-n (what TRL lacks): n samples for budget/n prompts, the best by the training reward is kept.
        n = args.raft_n
        prompts = _cycle(train_prompts, budget // n, seed)
        chats = [[{"role": "user", "content": p}] for p in prompts for _ in range(n)]
        samples = _sample(ctx, policy.to(ctx.device), chats, seed)
        rewards = task.reward([p for p in prompts for _ in range(n)], samples)
        best = [max(range(n), key=lambda j, i=i: rewards[i * n + j]) for i in range(len(prompts))]
        winners = [samples[i * n + j] for i, j in enumerate(best)]
        model = _sft(ctx, policy, prompts, winners, lr, seed, output_dir)
    elif method == "context_distillation":
        from ple_trl.principles import wrap

        prompts = _cycle(train_prompts, budget // 2, seed)
        guided = [wrap([{"role": "user", "content": p}], task.principle) for p in prompts]
        answers = _sample(ctx, policy.to(ctx.device), guided, seed)
        model = _sft(ctx, policy, prompts, answers, lr, seed, output_dir)
    else:
        raise ValueError(f"unknown method {method!r}; use one of {METHODS}")
    return model, counter


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
        model, counter = ctx.base_model, None
    else:
        scratch = os.path.join(args.output_dir, "_train", task.name, method, f"lr-{lr:g}_seed-{seed}")
        model, counter = train_method(ctx, task, method, lr, seed, train_prompts, scratch)
    # Read before evaluating: the evaluation's own answers go through the same `generate`.
    generated = (0, 0) if counter is None else (counter.answers, counter.tokens)
    train_s = time.perf_counter() - start
    start = time.perf_counter()
    evaluation = evaluate_cell(ctx, task, model, heldout, base_answers, with_principle=method == "base_prompted")
    eval_s = time.perf_counter() - start
    del model
    gc.collect()  # one process trains many cells: free each trained model before the next
    return {
        "task": task.name,
        "method": method,
        "seed": seed,
        "lr": lr,
        "default_lr": lr is not None and lr == DEFAULT_LRS[method],
        "metrics": {
            **evaluation["metrics"],
            "generated_answers": generated[0],
            "generated_tokens": generated[1],
            "train_s": train_s,
            "eval_s": eval_s,
        },
        "settings": {
            "model_path": ctx.model_path,
            "steps": args.steps,
            "pairs": args.pairs,
            "budget_answers": 0 if method in UNTRAINED else args.steps * args.pairs * 2,
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
# model, GRPO, Online DPO, RAFT, SPA) never see the principle, so their cells stay valid when it changes.
PRINCIPLED = ("base_prompted", "ple", "ple_anchored", "context_distillation")


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


def _row(method, lr, rows) -> list[str]:
    default = ", default" if lr == DEFAULT_LRS.get(method) else ""  # today's default, whatever it was at run time
    label = method if method in UNTRAINED else f"{method} (lr {lr:g}{default})"
    cells = [_mean_spread([r["metrics"][key] for r in rows], fmt) for key, _, fmt in COLUMNS]
    return [label, str(len(rows)), *cells]


def summarize(records: list[dict]) -> dict[str, list[list[str]]]:
    """Per task: one row per method and learning rate, each metric as mean ± standard deviation over seeds."""
    tables: dict[str, list[list[str]]] = {}
    for (task, method, lr), rows in _groups(records).items():
        tables.setdefault(task, []).append(_row(method, lr, rows))
    return tables


def best_rows(records: list[dict]) -> dict[str, list[list[str]]]:
    """
    Per task: one row per method, at the learning rate with the highest mean *training* reward among those run with
    the most seeds (a learning rate run on fewer seeds is only in the full table). The reward is what each method
    optimises and what a user can measure without the judge, so the held-out judge plays no part in the choice and
    stays held out; the same rule applies to every method.
    """
    tables: dict[str, list[list[str]]] = {}
    for (task, method), (lr, rows) in best_cells(records).items():
        tables.setdefault(task, []).append(_row(method, lr, rows))
    return tables


def best_cells(records: list[dict]) -> dict[tuple, tuple]:
    """`{(task, method): (lr, cells)}` at the learning rate [`best_rows`] picks."""
    by_method: dict[tuple, list[tuple]] = {}
    for (task, method, lr), rows in _groups(records).items():
        by_method.setdefault((task, method), []).append((lr, rows))
    best = {}
    for key, options in by_method.items():
        most = max(len(rows) for _, rows in options)
        best[key] = max((o for o in options if len(o[1]) == most),
                        key=lambda o: statistics.fmean(r["metrics"]["reward"] for r in o[1]))  # fmt: skip
    return best


def headers(judge_name: str) -> list[str]:
    return ["method", "seeds", *[h if key != "judge" else f"{judge_name} (held out)" for key, h, _ in COLUMNS]]


def write_markdown(path, tables, tasks, args, skipped, best=None):
    lines = [
        "# PLE and the alternatives at an equal generation budget",
        "",
        f"Budget: {args.steps} optimizer steps x {args.pairs} prompts (pairs) a step = "
        f"{args.steps * args.pairs * 2} sampled answers of up to {args.max_completion_length} tokens per trained "
        f"method (context distillation: {args.steps * args.pairs}). LoRA r {LORA['r']} / alpha {LORA['lora_alpha']} "
        f"all-linear. Held-out prompts: up to {args.num_heldout} per task, greedy answers. Mean ± standard deviation "
        "over seeds.",
        "",
    ]
    for name, rows in tables.items():
        head = headers(tasks[name].judge_name)
        table_head = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += [f"## Task `{name}`: {tasks[name].principle}", ""]
        if best is not None:
            lines += ["Each method at its best learning rate (the highest mean training reward among the learning "
                      "rates run with the most seeds; the held-out judge plays no part in the choice):", "",
                      *table_head]  # fmt: skip
            lines += ["| " + " | ".join(row) + " |" for row in best[name]]
            lines += ["", "Every learning rate:", ""]
        lines += table_head
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        lines.append("")
    for reason in skipped:
        lines.append(f"- skipped: {reason}")
    Path(path).write_text("\n".join(lines) + "\n")


def plot(path, records, tasks):
    """
    Two panels per task (a column each), every method at its best learning rate ([`best_rows`]): training reward (x)
    against the held-out judge (y), colour = perplexity under the base; and relevance (x) against distinct-2 (y),
    relative to the base model, with the 10% band around it shaded (what "without collapse" means in the table).
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
                        "(PLE 1e-4 and SPA 3e-4 as in the demo, GRPO 1e-6, Online DPO 5e-7, SFT 2e-5).")  # fmt: skip
    parser.add_argument("--steps", type=int, default=16, help="Optimizer steps of every trained method.")
    parser.add_argument("--pairs", type=int, default=8, help="Prompts a step; 2 answers each.")
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
                        help="Train nothing: build the table and figure from the cell files already in --output_dir "
                        "(every learning rate and seed found there, for --tasks and --methods).")  # fmt: skip
    parser.add_argument("--quick", action="store_true",
                        help="Harness check: " + ", ".join(f"{k}={v}" for k, v in QUICK.items()) + ".")  # fmt: skip
    return parser


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    if args.quick:
        for key, value in QUICK.items():
            setattr(args, key, value)
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
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    lrs = parse_lrs(args.lrs)

    import torch
    from accelerate import PartialState
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ple_trl.demo_model import resolve_demo_model
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
    records, ran, reused = [], 0, 0
    for task_name in task_names:
        task = tasks_all[task_name]
        base_answers = None
        for method in methods:
            cells = [(lr, seed) for lr in method_lrs(method, lrs) for seed in (seeds if lr is not None else [0])]
            for lr, seed in cells:
                path = cell_path(args.output_dir, task_name, method, lr, seed)
                if os.path.exists(path):
                    with open(path) as f:
                        record = json.load(f)
                    check_reusable(path, record, ctx, task)
                    reused += 1
                    print(f"[done]  {task_name} {method} lr={lr} seed={seed}: {path}", flush=True)
                else:
                    print(f"[run]   {task_name} {method} lr={lr} seed={seed} ...", flush=True)
                    record = run_cell(ctx, task, method, lr, seed, base_answers)
                    _write_json(path, record)
                    ran += 1
                    m = record["metrics"]
                    print(f"        reward {m['reward']:+.3f}  judge {m['judge']:+.3f}  train {m['train_s']:.0f}s  "
                          f"eval {m['eval_s']:.0f}s", flush=True)  # fmt: skip
                if method == "base":
                    base_answers = record["answers"]
                records.append(record)

    return report(args, records, tasks_all, skipped, ran, reused)


def collect_cells(ctx, tasks, task_names, methods) -> list[dict]:
    """Every cell file in `--output_dir` for these tasks and methods (any learning rate or seed), checked for reuse."""
    records = []
    for task_name in task_names:
        for method in methods:
            folder = Path(ctx.args.output_dir) / task_name / method
            for path in sorted(folder.glob("*.json")):
                record = json.loads(path.read_text())
                check_reusable(str(path), record, ctx, tasks[task_name])
                records.append(record)
    if not records:
        raise SystemExit(f"--table_only: no cell files under {ctx.args.output_dir} for {task_names} x {methods}.")
    return records


def report(args, records, tasks, skipped, ran, reused) -> dict:
    """Print the tables, write `results.md` and `compare.png`."""
    from ple_trl.evaluation import format_table

    tables = summarize(records)
    best = best_rows(records)
    for name, rows in tables.items():
        judge = tasks[name].judge_name
        print(f"\nTask {name} ({judge} is the held-out judge), each method at its best training reward's rate:")
        print(format_table(best[name], headers(judge), align="<" + ">" * (len(COLUMNS) + 1)))
        print(f"Task {name}, every learning rate:")
        print(format_table(rows, headers(judge), align="<" + ">" * (len(COLUMNS) + 1)))
    for reason in skipped:
        print(f"skipped: {reason}")
    os.makedirs(args.output_dir, exist_ok=True)
    markdown = os.path.join(args.output_dir, "results.md")
    write_markdown(markdown, tables, tasks, args, skipped, best)
    figure = plot(os.path.join(args.output_dir, "compare.png"), records, tasks)
    print(f"\nWrote {markdown} and {figure} ({ran} cells run, {reused} reused).")
    return {"records": records, "tables": tables, "best": best, "ran": ran, "reused": reused, "skipped": skipped,
            "markdown": markdown, "figure": figure}  # fmt: skip


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
