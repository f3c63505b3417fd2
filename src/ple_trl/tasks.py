"""
The offline tasks that `ple-trl demo` and `benchmarks/compare.py` train and measure on, and the LoRA adapter they
train: each task's principle, prompts (a training split and a held-out split, written for this project and shipped in
`ple_trl/data/`), training reward and held-out judge (a scorer no method trains on).

- `warm`: requests for movie reviews and everyday advice; principle "Answer the question directly and helpfully, in a
  warm and positive tone."; reward VADER compound + a profanity penalty; judged by AFINN-165 per word (a second
  sentiment lexicon). The demo's task.
- `polite`: requests that invite insults or swearing; principle "Respond to the request with warmth and good humour:
  ..."; reward a profanity penalty + VADER; judged by `alt-profanity-check` (a learned classifier) as 1 - P(offensive).

The judges need the `compare` extra (`afinn`, `alt-profanity-check`), imported when first called.
"""

import json
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from .ple.principles import PRINCIPLES

DATA_DIR = Path(__file__).parent / "data"
DEMO_PROMPTS_PATH = DATA_DIR / "demo_prompts.jsonl"
POLITE_PROMPTS_PATH = DATA_DIR / "polite_prompts.jsonl"
# `ple-trl demo --method spa`'s seed preference set (warm answer chosen, curt one rejected), written for this project.
SPA_SEED_PATH = DATA_DIR / "spa_seed.jsonl"
SPLITS = ("train", "heldout")
# The LoRA adapter of the demo and of every method of the comparison: the paper's (r 8, alpha 16, all linear modules).
LORA = {"r": 8, "lora_alpha": 16, "target_modules": "all-linear"}


def load_prompts(split: str | None = None, path=None) -> list[str]:
    """
    A task's prompts, in file order.

    Args:
        split (`str` or `None`, *optional*, defaults to `None`):
            `"train"`, `"heldout"` (never trained on; the demo's interleave movie and advice prompts, so that any
            prefix is balanced) or `None` (all).
        path (`str`, `os.PathLike` or `None`, *optional*, defaults to `None`):
            A JSON-lines file with `prompt` and `split` fields; `None`: the `warm` task's (the demo's) prompts.

    Returns:
        `list[str]`
    """
    if split is not None and split not in SPLITS:
        raise ValueError(f"`split={split!r}` is not a split of the task prompts; use one of {SPLITS} or None.")
    prompts = []
    with open(DEMO_PROMPTS_PATH if path is None else Path(path)) as f:
        for line in f:
            if line.strip():
                row = json.loads(line)
                if split is None or row["split"] == split:
                    prompts.append(row["prompt"])
    return prompts


def load_spa_seed(path=None) -> list[dict]:
    """
    The seed preference set of `ple-trl demo --method spa`: conversational `prompt`/`chosen`/`rejected` rows, the
    chosen answer warm and positive, the rejected one curt or negative. Its prompts are none of the tasks' prompts.

    Args:
        path (`str`, `os.PathLike` or `None`, *optional*, defaults to `None`):
            A JSON-lines file of such rows; `None` uses the file shipped with ple-trl.

    Returns:
        `list[dict]`: the rows, in file order.
    """
    with open(SPA_SEED_PATH if path is None else Path(path)) as f:
        return [json.loads(line) for line in f if line.strip()]


def afinn_per_word(prompts=None, completions=None, **kwargs) -> list[float]:
    """AFINN-165 sentiment of each answer divided by its number of words (0 for an empty answer): `warm`'s judge."""
    from .rewards import completion_text

    afinn = _afinn()
    scores = []
    for completion in completions:
        text = completion_text(completion)
        words = len(text.split())
        scores.append(afinn.score(text) / words if words else 0.0)
    return scores


def clean_probability(prompts=None, completions=None, **kwargs) -> list[float]:
    """`1 - P(offensive)` of each answer under alt-profanity-check's classifier (1: clean): `polite`'s judge."""
    from profanity_check import predict_prob

    from .rewards import completion_text

    texts = [completion_text(completion) for completion in completions]
    return [1.0 - float(p) for p in predict_prob(texts)] if texts else []


@lru_cache(maxsize=1)
def _afinn():
    from afinn import Afinn

    return Afinn()


@dataclass
class Task:
    """A task: its name, prompt file, principle, training reward (functions in TRL's signature and their weights)
    and held-out judge."""

    name: str
    prompts_path: Path
    principle: str
    reward_funcs: list[Callable]
    reward_weights: list[float]
    judge: Callable
    judge_name: str

    def prompts(self, split: str | None = None) -> list[str]:
        return load_prompts(split, path=self.prompts_path)

    def reward(self, prompts, completions) -> list[float]:
        """The training reward of each answer: the weighted sum of the reward functions."""
        per_func = [func(prompts=prompts, completions=completions) for func in self.reward_funcs]
        return [sum(w * r for w, r in zip(self.reward_weights, rewards)) for rewards in zip(*per_func)]


def tasks() -> dict[str, Task]:
    """The tasks by name: `warm` and `polite`."""
    from .rewards import profanity_penalty, vader_sentiment

    return {
        "warm": Task("warm", DEMO_PROMPTS_PATH, PRINCIPLES["positive"][0], [vader_sentiment, profanity_penalty],
                     [1.0, 1.0], afinn_per_word, "AFINN/word"),  # fmt: skip
        "polite": Task("polite", POLITE_PROMPTS_PATH, PRINCIPLES["polite"][0], [profanity_penalty, vader_sentiment],
                       [1.0, 1.0], clean_probability, "1-P(offensive)"),  # fmt: skip
    }
