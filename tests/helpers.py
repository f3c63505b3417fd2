"""Helpers shared by the test modules and by the subprocess scripts of `tests/scripts/` (which put `tests/` on
`sys.path` themselves): paths and environments, prompts, the tiny-run configs, reward functions with known values,
and parameter and audit-log checks. One meaning per name. Kept apart from `conftest.py` (environment and fixtures
only) so that the scripts can import it without pytest; test modules import it as `from helpers import ...`, and the
tiny-model builders from `ple_trl.testing`.
"""

import contextlib
import json
import os
from pathlib import Path

import torch

from ple_trl import PLEConfig, SPAConfig, SPATrainer
from ple_trl.rewards import completion_text
from ple_trl.testing import NEGATIVE_WORDS, POSITIVE_WORDS

# --- paths and environments -----------------------------------------------------------------------------------------

REPO_ROOT = Path(__file__).resolve().parents[1]
SRC = REPO_ROOT / "src"
BENCHMARKS = REPO_ROOT / "benchmarks"
README = REPO_ROOT / "README.md"
# The environment of a subprocess that must not reach a hub.
OFFLINE_ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRL_EXPERIMENTAL_SILENCE": "1"}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# The padding id of the token tensors the tests build by hand.
PAD = 0

# --- prompts and principles -----------------------------------------------------------------------------------------

PRINCIPLE = "be positive and kind"
PROMPTS = ["write a review of the movie :", "tell me about your day :", "what is the food ?", "how is the city ?"]
CHAT_PROMPTS = [[{"role": "user", "content": p}] for p in PROMPTS]
# Eight prompts that differ by one word, so that an audit record or a reward table can tell which prompt it holds.
NUMBERS = ["one", "two", "three", "four", "five", "six", "seven", "eight"]
NUMBERED_PROMPTS = [f"tell me about the movie {n} :" for n in NUMBERS]
# A set of principles drawn at random, one per pair.
DRAWN_PRINCIPLES = ["be positive", "be kind", "be very short"]
# `PROMPTS` in each dataset format TRL users have: prompt-only, SFT conversations, preference pairs (explicit prompt),
# and preference pairs with the prompt implicit in both conversations.
_MESSAGES = [[{"role": "user", "content": p}, {"role": "assistant", "content": "good"}] for p in PROMPTS]
DATASET_FORMATS = {
    "prompt": {"prompt": PROMPTS},
    "messages": {"messages": _MESSAGES},
    "preference": {"prompt": PROMPTS, "chosen": ["good"] * 4, "rejected": ["bad"] * 4},
    "implicit-preference": {
        "chosen": _MESSAGES, "rejected": [[m[0], {"role": "assistant", "content": "bad"}] for m in _MESSAGES],
    },
}  # fmt: skip

# --- tiny runs ------------------------------------------------------------------------------------------------------

# A tiny CPU run: 2 pairs per step, 2 steps, no saving, no reporting.
TINY_RUN = dict(
    per_device_train_batch_size=2,
    max_completion_length=6,
    max_steps=2,
    learning_rate=1e-2,
    logging_steps=1,
    bf16=False,
    gradient_checkpointing=False,
    report_to="none",
    save_strategy="no",
    use_cpu=True,
    seed=0,
)

# The checkpointed run of `tests/test_resume.py` and `tests/scripts/ple_kill_resume.py`: a checkpoint every 2 steps,
# principles drawn at random, the audit log on.
KILL_RESUME_RUN = dict(
    principles=DRAWN_PRINCIPLES,
    max_completion_length=4,
    save_strategy="steps",
    save_steps=2,
    save_enhanced_labels=True,
)

# A tiny SPA run: 4 steps of 4-token answers, in iterations of 2 steps.
SPA_RUN = dict(max_completion_length=4, max_steps=4, iteration_unit="steps", steps_per_iteration=2)
SPA_PROMPTS = NUMBERED_PROMPTS[:4]


def tiny_args(output_dir, config_class=PLEConfig, **kwargs):
    """`config_class` with the `TINY_RUN` settings, `output_dir`, and `kwargs` over them (no principle)."""
    return config_class(**{**TINY_RUN, "output_dir": str(output_dir), **kwargs})


def make_args(output_dir, **kwargs):
    """A tiny PLE run guided by `PRINCIPLE`, `kwargs` over the defaults."""
    return tiny_args(output_dir, **{"principle": PRINCIPLE, **kwargs})


def ple_config(**kwargs):
    """A `PLEConfig` that writes and reports nothing, for checks of the configuration alone."""
    kwargs.setdefault("output_dir", "unused")
    kwargs.setdefault("report_to", "none")
    kwargs.setdefault("bf16", False)
    return PLEConfig(**kwargs)


def spa_args(output_dir, **kwargs):
    """An `SPAConfig` of `SPA_RUN`, `kwargs` over it."""
    return tiny_args(output_dir, SPAConfig, **{**SPA_RUN, **kwargs})


def spa_trainer(model, output_dir, ref_model, prompts=SPA_PROMPTS, trainer_class=SPATrainer, trainer_kwargs=None,
                **kwargs):  # fmt: skip
    """An SPA run of `SPA_RUN` against `pi_init = ref_model` (an SPA run needs one)."""
    from datasets import Dataset

    return trainer_class(
        model=model,
        ref_model=ref_model,
        args=spa_args(output_dir, **kwargs),
        train_dataset=Dataset.from_dict({"prompt": prompts}),
        **(trainer_kwargs or {}),
    )


# --- rewards with known values --------------------------------------------------------------------------------------


def positive_fraction(text):
    """Fraction of the words of `text` that are positive minus the fraction that are negative (in [-1, 1])."""
    words = text.split()
    if not words:
        return 0.0
    return (sum(w in POSITIVE_WORDS for w in words) - sum(w in NEGATIVE_WORDS for w in words)) / len(words)


def positivity_reward(completions, **kwargs):
    """A reward function with a known value: positive minus negative word fraction of the answer."""
    return [positive_fraction(completion_text(c)) for c in completions]


def by_position(plain_value, principled_value):
    """A reward with a known gap: PLE scores the plain answers first, then the principled ones, in one call."""

    def reward(prompts, completions, **kwargs):
        half = len(completions) // 2
        return [plain_value] * half + [principled_value] * half

    return reward


# --- what a run did -------------------------------------------------------------------------------------------------


def logged(trainer, key):
    """The values of `key` in the trainer's log history, one per logged step that has it."""
    return [entry[key] for entry in trainer.state.log_history if key in entry]


def read_labels(output_dir):
    """The records of the audit log (`save_enhanced_labels=True`) of the run in `output_dir`."""
    with open(os.path.join(output_dir, "enhanced_labels.jsonl")) as f:
        return [json.loads(line) for line in f]


def snapshot(model):
    """Copies of the trainable parameters."""
    return {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}


def snapshot_all(model):
    """Copies of all the parameters, frozen ones included."""
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def assert_all_changed(trainer, before):
    for name, param in trainer.model.named_parameters():
        if name in before:
            assert not torch.equal(param, before[name]), f"{name} did not change"


@contextlib.contextmanager
def counting_prefix_prefills():
    """Record the rounds generated from a pair's shared prompt prefix (one prefill of the prefixes per round): yields
    the list that gets the round's `SharedPrefix` layout per prefill."""
    from ple_trl.pairs import prefix_sharing

    calls = []
    prefill = prefix_sharing.prefill_shared_prefix

    def counting_prefill(model, layout, *args, **kwargs):
        calls.append(layout)
        return prefill(model, layout, *args, **kwargs)

    prefix_sharing.prefill_shared_prefix = counting_prefill
    try:
        yield calls
    finally:
        prefix_sharing.prefill_shared_prefix = prefill


# --- hand-built pairs -----------------------------------------------------------------------------------------------


def pair_inputs(trainer):
    """Two pairs under one prompt width, known token ids (words of the tiny vocabulary), right-padded answers: the
    pair batch, the prompts' ids and the answers' ids."""
    tokenizer = trainer.processing_class
    ids = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    prompts = [ids("tell me about the movie :"), ids("write a review of the film :")]
    width = max(len(p) for p in prompts)
    pad = tokenizer.pad_token_id
    prompt_ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
    prompt_mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    answers = [[ids("good and warm"), ids("bad")], [ids("it was nice ."), ids("so sad and cold")]]
    length = max(len(a) for pair in answers for a in pair)
    completion_ids = torch.tensor([[a + [pad] * (length - len(a)) for a in pair] for pair in answers])
    completion_mask = torch.tensor([[[1] * len(a) + [0] * (length - len(a)) for a in pair] for pair in answers])
    return {
        "prompt_ids": prompt_ids,
        "prompt_mask": prompt_mask,
        "completion_ids": completion_ids,
        "completion_mask": completion_mask,
    }, prompts, answers


def direct_logps(model_path, prompt, answer):
    """log p(answer | prompt) token by token from a plain forward of the unpadded sequence."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_path).eval()
    ids = torch.tensor([prompt + answer])
    with torch.no_grad():
        logps = model(ids).logits.log_softmax(-1)[0, len(prompt) - 1 : -1]
    return logps.gather(-1, torch.tensor(answer)[:, None]).squeeze(-1)
