"""Offline evaluation: the one held-out path of ple-trl. Load a model, answer prompts ([`generate_answers`],
[`answer_requests`]), score the answers against the plain prompts ([`score_answers`], [`text_statistics`]) and format
the table ([`format_table`]).

`ple-trl eval` ([`ple_trl.scripts.eval`], through [`evaluate_models`]), `ple-trl demo` and `benchmarks/compare.py` all
generate, score and tabulate through this module.

```python
from ple_trl.evaluation import evaluate_models, results_table
from ple_trl.rewards import vader_sentiment

results = evaluate_models(["ple-out", "HuggingFaceTB/SmolLM2-135M-Instruct"], ["Review the film Up."],
                          rewards=[vader_sentiment], max_new_tokens=48)
print(results_table(results))
```
"""

import math
import os
import re
from collections.abc import Callable

CHAT_TEMPLATE_CHOICES = ("auto", "on", "off")

__all__ = [
    "answer_requests", "content_words", "distinct_2", "distinct_answers", "evaluate_models", "format_table",
    "generate_answers", "load_causal_lm", "relevance", "results_table", "score_answers", "text_statistics",
]  # fmt: skip


def load_causal_lm(name_or_path: str, dtype: str = "float32"):
    """
    Load a causal language model and its tokenizer (left padding), merging a LoRA adapter folder into its base model.

    Args:
        name_or_path (`str`): a Hub id, a model folder, or an adapter folder (`adapter_config.json`, no `config.json`).
        dtype (`str`, *optional*, defaults to `"float32"`): the dtype to load in.

    Returns:
        `tuple`: (model in eval mode on the process's device, tokenizer).
    """
    from accelerate import PartialState
    from transformers import AutoModelForCausalLM, AutoTokenizer

    is_adapter = os.path.isfile(os.path.join(name_or_path, "adapter_config.json")) and not os.path.isfile(
        os.path.join(name_or_path, "config.json")
    )
    if is_adapter:
        from peft import AutoPeftModelForCausalLM

        model = AutoPeftModelForCausalLM.from_pretrained(name_or_path, dtype=dtype).merge_and_unload()
    else:
        model = AutoModelForCausalLM.from_pretrained(name_or_path, dtype=dtype)
    tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model.to(PartialState().device).eval(), tokenizer


def _uses_chat_template(tokenizer, chat_template, conversational: bool) -> bool:
    if isinstance(chat_template, bool):
        chat_template = "on" if chat_template else "off"
    if chat_template not in CHAT_TEMPLATE_CHOICES:
        raise ValueError(f"`chat_template={chat_template!r}` must be one of {CHAT_TEMPLATE_CHOICES} (or a bool).")
    if conversational:
        if chat_template == "off":
            raise ValueError(
                "`chat_template='off'`, but the prompts are conversations, which only a chat template can render. "
                "Pass `chat_template='auto'`, or give text prompts."
            )
        chat_template = "on"
    has_template = bool(getattr(tokenizer, "chat_template", None))
    if chat_template == "on" and not has_template:
        raise ValueError(
            f"The tokenizer of `{getattr(tokenizer, 'name_or_path', 'the model')}` has no chat template, and the "
            "prompts need one (conversations, or `chat_template='on'`). Use a chat/instruct model, set "
            "`tokenizer.chat_template`, or give text prompts with `chat_template='auto'`."
        )
    return has_template if chat_template == "auto" else chat_template == "on"


def generate_answers(
    model,
    tokenizer,
    prompts: list,
    max_new_tokens: int = 64,
    temperature: float = 0.0,
    batch_size: int = 8,
    chat_template: str | bool = "auto",
) -> list:
    """
    Answer every prompt once, in batches, greedily by default.

    A conversation is rendered with the tokenizer's chat template (with the generation prompt), as TRL's trainers do.
    A text prompt is sent as one user message through the chat template when the model has one (`"auto"`), so a chat
    model answers a question rather than continuing its text; `chat_template="off"` sends it as raw text (a base model
    continuing a review prefix, say).

    Args:
        model ([`~transformers.PreTrainedModel`] or [`~peft.PeftModel`]):
            A causal language model; left in the training mode it came in.
        tokenizer ([`~transformers.PreTrainedTokenizerBase`]):
            Its tokenizer, with a pad token.
        prompts (`list[str]` or `list[list[dict]]`):
            Text prompts or conversations (lists of `{"role", "content"}` messages).
        max_new_tokens (`int`, *optional*, defaults to `64`):
            Maximum answer length in tokens.
        temperature (`float`, *optional*, defaults to `0.0`):
            Sampling temperature; `0` decodes greedily.
        batch_size (`int`, *optional*, defaults to `8`):
            Prompts per `generate` call.
        chat_template (`str` or `bool`, *optional*, defaults to `"auto"`):
            For text prompts: `"auto"` applies the tokenizer's chat template when it has one, `"on"` (`True`) always
            (an error without one), `"off"` (`False`) never. Conversations always need the template.

    Returns:
        `list`: one answer per prompt, without the prompt and special tokens: a string for a text prompt and
        `[{"role": "assistant", "content": ...}]` for a conversation (the formats TRL's reward functions receive).
    """
    import torch
    from trl.data_utils import is_conversational, maybe_apply_chat_template

    from .device import eval_mode

    kinds = {is_conversational({"prompt": prompt}) for prompt in prompts}
    if len(kinds) > 1:
        raise ValueError("The prompts mix text and conversations; give all of them in one format.")
    conversational = kinds == {True}
    templated = _uses_chat_template(tokenizer, chat_template, conversational)
    if tokenizer.pad_token_id is None:
        raise ValueError(
            "The tokenizer has no pad token, so prompts cannot be batched; set one first, e.g. "
            "`tokenizer.pad_token = tokenizer.eos_token`."
        )
    sampling = {"do_sample": True, "temperature": temperature} if temperature > 0 else {"do_sample": False}
    answers = []
    with eval_mode(model), torch.no_grad():
        for start in range(0, len(prompts), batch_size):
            batch = prompts[start : start + batch_size]
            if templated:
                chats = batch if conversational else [[{"role": "user", "content": prompt}] for prompt in batch]
                texts = [maybe_apply_chat_template({"prompt": chat}, tokenizer)["prompt"] for chat in chats]
            else:
                texts = batch
            # A rendered template already holds the model's special tokens; raw text gets them as in TRL's trainers.
            inputs = tokenizer(
                texts, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=not templated
            ).to(model.device)
            output = model.generate(
                **inputs, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id, **sampling
            )
            decoded = tokenizer.batch_decode(output[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
            answers += [
                [{"role": "assistant", "content": t.strip()}] if conversational else t.strip() for t in decoded
            ]
    return answers


def answer_requests(
    model, tokenizer, requests: list[str], principle: str | None = None, *, max_new_tokens: int = 64,
    temperature: float = 0.0, batch_size: int = 8,
) -> list[str]:  # fmt: skip
    """
    A chat model's answers (texts) to plain user requests, each sent as one user message; with `principle`, to their
    principle-guided versions, built as the trainer builds them ([`~ple_trl.ple.principles.wrap`]).

    Args:
        model, tokenizer: the chat model and its tokenizer (with a chat template).
        requests (`list[str]`): the user requests.
        principle (`str` or `None`, *optional*, defaults to `None`): the principle to guide the answers with.
        max_new_tokens, temperature, batch_size: see [`generate_answers`] (greedy by default).

    Returns:
        `list[str]`: one answer per request.
    """
    from .ple.principles import wrap
    from .rewards import completion_text

    chats = [[{"role": "user", "content": request}] for request in requests]
    if principle is not None:
        chats = [wrap(chat, principle) for chat in chats]
    answers = generate_answers(
        model, tokenizer, chats, max_new_tokens=max_new_tokens, temperature=temperature, batch_size=batch_size
    )
    return [completion_text(answer) for answer in answers]


def score_answers(prompts: list, answers: list, scorers: dict[str, Callable]) -> dict[str, list[float]]:
    """
    Each scorer's score of each answer, against the plain prompts (as PLE's rewards score): `{name: [score, ...]}`.

    Args:
        prompts (`list`): the plain prompts.
        answers (`list`): one answer per prompt.
        scorers (`dict[str, Callable]`): reward functions or judges in TRL's signature
            `f(prompts, completions, **kwargs) -> list[float]`.
    """
    return {name: list(func(prompts=prompts, completions=answers)) for name, func in scorers.items()}


def format_table(rows: list[list], headers: list[str], align: str | None = None) -> str:
    """
    Render rows as a plain-text table: a header line, a rule, then one line per row, columns aligned.

    Args:
        rows (`list[list]`): the cells; `None` prints as `-`, a float with 4 significant digits, anything else as
            `str(value)` (pass strings to format numbers your way).
        headers (`list[str]`): one title per column.
        align (`str` or `None`, *optional*, defaults to `None`): one character per column, `<` (left) or `>` (right);
            `None` aligns every column left.

    Returns:
        `str`
    """

    def cell(value):
        if value is None:
            return "-"
        if isinstance(value, float):
            return "nan" if math.isnan(value) else f"{value:.4g}"
        return str(value)

    align = align or "<" * len(headers)
    if len(align) != len(headers) or set(align) - {"<", ">"}:
        raise ValueError(f"`align={align!r}` must have one `<` or `>` per column ({len(headers)} columns).")
    table = [headers, *[[cell(value) for value in row] for row in rows]]
    widths = [max(len(row[i]) for row in table) for i in range(len(headers))]
    lines = [
        "  ".join(f"{value:{side}{width}}" for value, side, width in zip(row, align, widths, strict=True))
        for row in table
    ]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(line.rstrip() for line in lines)


def _reward_sources(rewards) -> dict[str, Callable]:
    if rewards is None:
        return {}
    if isinstance(rewards, dict):
        sources = dict(rewards)
    else:
        sources = {}
        for func in rewards:
            name = getattr(func, "__name__", type(func).__name__)
            if name in sources:
                raise ValueError(f"Two rewards are named {name!r}; pass `rewards` as a dict to name them apart.")
            sources[name] = func
    for name, func in sources.items():
        if not callable(func):
            raise ValueError(
                f"Reward {name!r} is {func!r:.80}, not callable; pass reward functions "
                "`f(prompts, completions, **kwargs) -> list[float]` (a reward model: `RewardModelScorer(path)`)."
            )
    return sources


def evaluate_models(
    models: list[str],
    prompts: list,
    rewards: list[Callable] | dict[str, Callable] | None = None,
    references: list[str] | None = None,
    *,
    max_new_tokens: int = 64,
    temperature: float = 0.0,
    batch_size: int = 8,
    chat_template: str | bool = "auto",
    dtype: str = "float32",
    perplexity: bool = True,
    perplexity_model: str | None = None,
    seed: int = 42,
) -> dict:
    """
    Answer the prompts with one or two models and compute the offline metrics of [`ple_trl.metrics`].

    For every model: the mean reward under each reward (`reward/<name>`), BLEU against `references`, the perplexity
    of its answers (under `perplexity_model`, default the first model) and the mean answer length in words. With two
    models: the win rate of the first over the second under each reward.

    Args:
        models (`list[str]`):
            One or two models: Hub ids, folders or LoRA adapter folders (see [`load_causal_lm`]).
        prompts (`list[str]` or `list[list[dict]]`):
            The prompts.
        rewards (`list[Callable]`, `dict[str, Callable]` or `None`, *optional*, defaults to `None`):
            Reward functions in TRL's signature (a reward model: [`~ple_trl.rewards.RewardModelScorer`]), named by
            their `__name__` or by the dict's keys.
        references (`list[str]` or `None`, *optional*, defaults to `None`):
            One reference answer per prompt; adds BLEU.
        max_new_tokens, temperature, batch_size, chat_template:
            Generation settings, see [`generate_answers`]; `batch_size` is also the metrics' batch size.
        dtype (`str`, *optional*, defaults to `"float32"`):
            Dtype the models are loaded in.
        perplexity (`bool`, *optional*, defaults to `True`):
            Measure the perplexity of the answers.
        perplexity_model (`str` or `None`, *optional*, defaults to `None`):
            Language model under which perplexity is measured; the first model when `None`. Pass the initial model to
            compare two models fairly.
        seed (`int`, *optional*, defaults to `42`):
            Seed for sampling.

    Returns:
        `dict`: `{"models": {name: {metric: value}}, "win_rate": {reward: {"win_rate", "wins", "ties", "losses"}},
        "answers": {name: [...]}, "prompts": [...]}`.
    """
    import torch

    from . import metrics
    from .rewards import completion_text

    models, prompts = list(models), list(prompts)
    if not 1 <= len(models) <= 2:
        raise ValueError(f"`models={models}`: give one model, or two to compare them.")
    if len(set(models)) != len(models):
        raise ValueError(f"The two models are the same ({models[0]!r}); give two different models.")
    if not prompts:
        raise ValueError("`prompts` is empty: give at least one prompt to answer.")
    if references is not None and len(references) != len(prompts):
        raise ValueError(f"{len(references)} references for {len(prompts)} prompts: give one reference per prompt.")
    sources = _reward_sources(rewards)
    torch.manual_seed(seed)

    answers, judge = {}, None
    for name in models:
        model, tokenizer = load_causal_lm(name, dtype)
        answers[name] = generate_answers(
            model, tokenizer, prompts, max_new_tokens, temperature, batch_size, chat_template=chat_template
        )
        if name == models[0] and perplexity_model is None:
            judge = (model, tokenizer)
        else:
            del model
    if perplexity and perplexity_model is not None:
        judge = load_causal_lm(perplexity_model, dtype)

    results = {"models": {name: {} for name in models}, "win_rate": {}, "answers": answers, "prompts": prompts}
    bleu = metrics.load("bleu", keep_in_memory=True) if references is not None else None
    perplexity_metric = metrics.load("perplexity", keep_in_memory=True) if perplexity else None
    for name in models:
        row = results["models"][name]
        texts = [completion_text(answer) for answer in answers[name]]
        row["mean_length_words"] = sum(len(text.split()) for text in texts) / len(texts)
        for source, scores in score_answers(prompts, answers[name], sources).items():
            finite = [score for score in scores if score is not None and math.isfinite(score)]
            row[f"reward/{source}"] = sum(finite) / len(finite) if finite else float("nan")
        if bleu is not None:
            row["bleu"] = bleu.compute(predictions=texts, references=[[r] for r in references])["bleu"]
        if perplexity_metric is not None:
            scored = [text for text in texts if text.strip()]
            row["perplexity"] = (
                perplexity_metric.compute(
                    predictions=scored, model=judge[0], tokenizer=judge[1], batch_size=batch_size
                )["mean_perplexity"]
                if scored
                else float("nan")
            )
    if len(models) == 2:
        win_rate = metrics.load("win_rate", keep_in_memory=True) if sources else None
        for source, func in sources.items():
            outcome = win_rate.compute(
                prompts=prompts, completions_a=answers[models[0]], completions_b=answers[models[1]], reward_fn=func
            )
            results["win_rate"][source] = {key: outcome[key] for key in ("win_rate", "wins", "ties", "losses")}
    return results


def results_table(results: dict) -> str:
    """
    The table `ple-trl eval` prints: one row per metric, one column per model (win rates: first over second).

    Args:
        results (`dict`): what [`evaluate_models`] returns.

    Returns:
        `str`
    """
    names = list(results["models"])
    metric_names = list(dict.fromkeys(key for row in results["models"].values() for key in row))
    rows = [[metric, *[results["models"][name].get(metric) for name in names]] for metric in metric_names]
    for source, outcome in results["win_rate"].items():
        detail = f" ({outcome['wins']}W/{outcome['ties']}T/{outcome['losses']}L)"
        rows.append([f"win_rate/{source}" + detail, outcome["win_rate"], None])
    headers = ["metric", *[f"[{'AB'[i]}] {os.path.basename(os.path.normpath(n))}" for i, n in enumerate(names)]]
    return format_table(rows, headers)


# ------------------------------------------------------------------------------------------------ text statistics
# English stop words: the list of scikit-learn's `ENGLISH_STOP_WORDS` (318 words, from the Glasgow Information
# Retrieval Group), copied so that the demo does not need scikit-learn.
STOP_WORDS = frozenset((
    "a about above across after afterwards again against all almost alone along already also although always am "
    "among amongst amoungst amount an and another any anyhow anyone anything anyway anywhere are around as at back "
    "be became because become becomes becoming been before beforehand behind being below beside besides between "
    "beyond bill both bottom but by call can cannot cant co con could couldnt cry de describe detail do done down "
    "due during each eg eight either eleven else elsewhere empty enough etc even ever every everyone everything "
    "everywhere except few fifteen fifty fill find fire first five for former formerly forty found four from front "
    "full further get give go had has hasnt have he hence her here hereafter hereby herein hereupon hers herself "
    "him himself his how however hundred i ie if in inc indeed interest into is it its itself keep last latter "
    "latterly least less ltd made many may me meanwhile might mill mine more moreover most mostly move much must my "
    "myself name namely neither never nevertheless next nine no nobody none noone nor not nothing now nowhere of "
    "off often on once one only onto or other others otherwise our ours ourselves out over own part per perhaps "
    "please put rather re same see seem seemed seeming seems serious several she should show side since sincere six "
    "sixty so some somehow someone something sometime sometimes somewhere still such system take ten than that the "
    "their them themselves then thence there thereafter thereby therefore therein thereupon these they thick thin "
    "third this those though three through throughout thru thus to together too top toward towards twelve twenty "
    "two un under until up upon us very via was we well were what whatever when whence whenever where whereafter "
    "whereas whereby wherein whereupon wherever whether which while whither who whoever whole whom whose why will "
    "with within without would yet you your yours yourself yourselves"
).split())  # fmt: skip
# Request words: an answer to any request may repeat them without answering it ("Here are some tips ..."), so they
# are not counted as content shared with the prompt.
REQUEST_WORDS = frozenset(
    "write tell give make say want need help describe explain review reviews roast short please think really "
    "honest honestly tips advice way ways good best mean".split()
)


def content_words(text: str) -> set[str]:
    """
    The content words of a text, as [`relevance`] compares them: lower-cased words of 3 or more letters (apostrophes
    allowed inside), a trailing `'s` dropped, without English stop words ([`STOP_WORDS`]) and request words
    ([`REQUEST_WORDS`]).

    Args:
        text (`str`): the text.

    Returns:
        `set[str]`: e.g. `{"paris", "museums"}` for `"Tell me about Paris's museums, please"`.
    """
    words = {word.removesuffix("'s") for word in re.findall(r"[a-z][a-z']+", text.lower())}
    return {word for word in words if len(word) >= 3 and word not in STOP_WORDS and word not in REQUEST_WORDS}


def relevance(prompts: list[str], answers: list[str]) -> float:
    """
    A proxy for "the answers still answer the question": the share of answers that repeat at least one content word
    ([`content_words`]) of their prompt.

    Its limits: it misses paraphrase and synonyms ("cooking" answered with "dish") and inflections ("cook" /
    "cooking"), so a relevant answer can score 0; it counts an answer that echoes one word of the prompt inside
    generic filler as relevant; and its level depends on the prompts (a refusal to "Roast my terrible cooking" shares
    no word with it). It detects answers that ignore the prompt for a fixed opener ("I'm so glad you're here ..."); it
    does not judge whether an answer is good. Compare it between models on the same prompts, not across prompt sets.

    Args:
        prompts (`list[str]`): the plain user requests.
        answers (`list[str]`): one answer text per prompt.

    Returns:
        `float`: in [0, 1]; 0 when there are no answers.
    """
    if len(prompts) != len(answers):
        raise ValueError(f"{len(prompts)} prompts for {len(answers)} answers: give one answer per prompt.")
    shared = sum(bool(content_words(prompt) & content_words(answer)) for prompt, answer in zip(prompts, answers))
    return shared / max(1, len(answers))


def distinct_2(answers: list[str]) -> float:
    """
    Diversity of the answers: distinct word bigrams over all word bigrams, pooled over the answers (lower-cased,
    split on whitespace). Answers that repeat the same phrases score low; it says nothing about relevance or fluency,
    and it falls as answers get longer, so compare it at the same answer length.

    Args:
        answers (`list[str]`): the answer texts.

    Returns:
        `float`: in [0, 1]; 0 when no answer has two words.
    """
    split = [answer.lower().split() for answer in answers]
    bigrams = [tuple(words[i : i + 2]) for words in split for i in range(len(words) - 1)]
    return len(set(bigrams)) / len(bigrams) if bigrams else 0.0


def distinct_answers(answers: list[str]) -> float:
    """
    The share of distinct answers: distinct answer strings (compared exactly) over the number of answers. A model
    that gives the same sentence to many prompts (mode collapse) scores low; two answers differing in one word count
    as distinct, so read it with [`distinct_2`].

    Args:
        answers (`list[str]`): the answer texts.

    Returns:
        `float`: in [0, 1]; 0 when there are no answers.
    """
    return len(set(answers)) / len(answers) if answers else 0.0


def text_statistics(prompts: list[str], answers: list[str]) -> dict[str, float]:
    """
    The three text statistics of a set of answers, as `ple-trl demo` and `benchmarks/compare.py` report them.

    Args:
        prompts (`list[str]`): the plain user requests.
        answers (`list[str]`): one answer text per prompt.

    Returns:
        `dict`: `relevance` ([`relevance`]), `distinct_2` ([`distinct_2`]) and `distinct_answers`
        ([`distinct_answers`]).
    """
    return {
        "relevance": relevance(prompts, answers),
        "distinct_2": distinct_2(answers),
        "distinct_answers": distinct_answers(answers),
    }
