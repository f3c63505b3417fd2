"""`ple-trl eval`: answer a prompt set with a model (or two) and print the offline metrics of `ple_trl.metrics`.

For every model: the mean reward under each reward source (`reward_score`), the perplexity of its answers under a
fixed language model (`perplexity`), BLEU against a reference column (`bleu`) and the mean answer length. With a
second model: the win rate of the first over the second under each reward source (`win_rate`). Nothing is fetched
from a hub unless a hub id is given.

```bash
ple-trl eval --model_name_or_path ple-out --model_b_name_or_path HuggingFaceTB/SmolLM2-135M-Instruct \\
    --dataset_name trl-lib/tldr --dataset_split test --reference_column completion \\
    --reward_model_name_or_path OpenAssistant/reward-model-deberta-v3-large-v2 --num_prompts 64 --max_new_tokens 64
```
"""

import math
import os
import sys
from dataclasses import dataclass, field


@dataclass
class EvalArguments:
    """
    Arguments of `ple-trl eval`.

    Parameters that control the models:
        model_name_or_path (`str`):
            The model to evaluate: a Hub id, a folder, or a LoRA adapter folder (as saved by `ple-trl train`).
        model_b_name_or_path (`str` or `None`, *optional*, defaults to `None`):
            A second model (e.g. the initial one); adds its column and the win rate of the first model over it.
        dtype (`str`, *optional*, defaults to `"float32"`):
            Dtype the models are loaded in.

    Parameters that control the prompts:
        dataset_name (`str` or `None`, *optional*, defaults to `None`):
            Prompt set: a Hub id, a saved folder, or a `.json`/`.jsonl`/`.csv`/`.parquet` file. Any format PLE trains
            on (`prompt`, `messages`, `chosen`/`rejected`), with the same column mapping arguments as `ple-trl train`.
        dataset_config (`str` or `None`, *optional*, defaults to `None`):
            Configuration name of a Hub dataset.
        dataset_split (`str`, *optional*, defaults to `"test"`):
            Split to take the prompts from (data files: `train` unless named `split=path`).
        dataset_data_files (`list[str]` or `None`, *optional*, defaults to `None`):
            Local data files, as in `ple-trl train`.
        prompt_column, chosen_column, rejected_column, messages_column, prompt_end_marker, prompt_max_words:
            Column mapping and prompt cutting, as in `ple-trl train`.
        reference_column (`str` or `None`, *optional*, defaults to `None`):
            Column holding a reference answer (text); adds BLEU.
        num_prompts (`int`, *optional*, defaults to `32`):
            Number of prompts (the first ones of the split).

    Parameters that control generation:
        max_new_tokens (`int`, *optional*, defaults to `64`):
            Maximum length of an answer.
        temperature (`float`, *optional*, defaults to `0.0`):
            Sampling temperature; `0` decodes greedily.
        batch_size (`int`, *optional*, defaults to `8`):
            Prompts per generation call (and texts per metric forward pass).
        seed (`int`, *optional*, defaults to `42`):
            Seed for sampling.

    Parameters that control the metrics:
        reward_model_name_or_path (`str` or `None`, *optional*, defaults to `None`):
            A reward model with one output.
        reward_funcs (`list[str]` or `None`, *optional*, defaults to `None`):
            Named reward functions, dotted import paths or local files (`my_rewards.py:my_reward`), as in
            `ple-trl train`.
        reward_classifier_name_or_path (`str` or `None`, *optional*, defaults to `None`):
            A text classifier whose label probability is a reward, as in `ple-trl train`.
        reward_classifier_label (`str`, *optional*, defaults to `"POSITIVE"`):
            Its label.
        perplexity_model_name_or_path (`str` or `None`, *optional*, defaults to `None`):
            Language model under which the answers' perplexity is measured; defaults to the first model. Pass the
            initial model to compare two models fairly.
        no_perplexity (`bool`, *optional*, defaults to `False`):
            Skip the perplexity.
        output_json (`str` or `None`, *optional*, defaults to `None`):
            Also write the results (and the answers) to this JSON file.
    """

    model_name_or_path: str | None = field(default=None, metadata={"help": "The model to evaluate (id or folder)."})
    model_b_name_or_path: str | None = field(
        default=None, metadata={"help": "A second model: adds its column and the win rate of the first over it."}
    )
    dtype: str = field(default="float32", metadata={"help": "Dtype the models are loaded in."})
    dataset_name: str | None = field(
        default=None, metadata={"help": "Prompt set: Hub id, saved folder or .json/.jsonl/.csv/.parquet file."}
    )
    dataset_config: str | None = field(default=None, metadata={"help": "Configuration of a Hub dataset."})
    dataset_split: str = field(default="test", metadata={"help": "Split to take the prompts from."})
    dataset_data_files: list[str] | None = field(default=None, metadata={"help": "Local data files."})
    prompt_column: str | None = field(default=None, metadata={"help": "Column renamed to `prompt`."})
    chosen_column: str | None = field(default=None, metadata={"help": "Column renamed to `chosen`."})
    rejected_column: str | None = field(default=None, metadata={"help": "Column renamed to `rejected`."})
    messages_column: str | None = field(default=None, metadata={"help": "Column renamed to `messages`."})
    principle_column: str | None = field(default=None, metadata={"help": "Column renamed to `principle`."})
    prompt_end_marker: str | None = field(
        default=None, metadata={"help": "Implicit-prompt text preference data: the prompt ends at this marker."}
    )
    prompt_max_words: int | None = field(default=None, metadata={"help": "Keep the first words of text prompts."})
    reference_column: str | None = field(default=None, metadata={"help": "Reference answers (adds BLEU)."})
    num_prompts: int = field(default=32, metadata={"help": "Number of prompts (the first ones of the split)."})
    max_new_tokens: int = field(default=64, metadata={"help": "Maximum length of an answer."})
    temperature: float = field(default=0.0, metadata={"help": "Sampling temperature; 0 decodes greedily."})
    batch_size: int = field(default=8, metadata={"help": "Prompts per generation call and texts per forward pass."})
    seed: int = field(default=42, metadata={"help": "Seed for sampling."})
    reward_model_name_or_path: str | None = field(default=None, metadata={"help": "Reward model (one output)."})
    reward_funcs: list[str] | None = field(
        default=None,
        metadata={"help": "Named reward functions, dotted import paths or local files (`my_rewards.py:my_reward`)."},
    )
    reward_classifier_name_or_path: str | None = field(
        default=None, metadata={"help": "Text classifier whose label probability is a reward."}
    )
    reward_classifier_label: str = field(default="POSITIVE", metadata={"help": "The classifier's label."})
    perplexity_model_name_or_path: str | None = field(
        default=None, metadata={"help": "LM under which answer perplexity is measured (default: the first model)."}
    )
    no_perplexity: bool = field(default=False, metadata={"help": "Skip the perplexity."})
    output_json: str | None = field(default=None, metadata={"help": "Also write results and answers to this file."})

    def __post_init__(self):
        for name in ("num_prompts", "max_new_tokens", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"`--{name} {getattr(self, name)}` must be >= 1.")
        if self.temperature < 0:
            raise ValueError(f"`--temperature {self.temperature}` must be >= 0 (0 decodes greedily).")


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


def generate_answers(model, tokenizer, prompts, max_new_tokens=64, temperature=0.0, batch_size=8):
    """
    Answer every prompt once.

    Args:
        model ([`~transformers.PreTrainedModel`]): a causal language model.
        tokenizer ([`~transformers.PreTrainedTokenizerBase`]): its tokenizer (left padding).
        prompts (`list[str]` or `list[list[dict]]`): text prompts or conversations (rendered with the chat template).
        max_new_tokens (`int`, *optional*, defaults to `64`): maximum answer length.
        temperature (`float`, *optional*, defaults to `0.0`): `0` decodes greedily.
        batch_size (`int`, *optional*, defaults to `8`): prompts per call.

    Returns:
        `list`: one answer per prompt, a string for text prompts and `[{"role": "assistant", "content": ...}]` for
        conversations (the formats TRL's reward functions receive).
    """
    import torch
    from trl.data_utils import is_conversational, maybe_apply_chat_template

    answers = []
    for start in range(0, len(prompts), batch_size):
        batch = prompts[start : start + batch_size]
        texts = [maybe_apply_chat_template({"prompt": prompt}, tokenizer)["prompt"] for prompt in batch]
        inputs = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
        sampling = {"do_sample": True, "temperature": temperature} if temperature > 0 else {"do_sample": False}
        with torch.no_grad():
            output = model.generate(
                **inputs, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id, **sampling
            )
        decoded = tokenizer.batch_decode(output[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
        for prompt, text in zip(batch, decoded, strict=True):
            text = text.strip()
            answers.append([{"role": "assistant", "content": text}] if is_conversational({"prompt": prompt}) else text)
    return answers


def _answer_text(answer):
    return answer[-1]["content"] if isinstance(answer, list) else answer


def _prompt_text(prompt):
    return "\n".join(message["content"] for message in prompt) if isinstance(prompt, list) else prompt


def _reward_sources(args: EvalArguments):
    from .ple import ClassifierReward, resolve_reward_funcs

    sources = {}
    if args.reward_model_name_or_path is not None:
        name = os.path.basename(os.path.normpath(args.reward_model_name_or_path))
        sources[name] = {"reward_model": args.reward_model_name_or_path}
    for name, func in zip(args.reward_funcs or [], resolve_reward_funcs(args.reward_funcs, args.max_new_tokens)):
        sources[name.rsplit(".", 1)[-1]] = {"reward_fn": func}
    if args.reward_classifier_name_or_path is not None:
        func = ClassifierReward(args.reward_classifier_name_or_path, label=args.reward_classifier_label)
        sources[func.__name__] = {"reward_fn": func}
    return sources


def load_prompts(args: EvalArguments):
    """
    The evaluation prompts (and references) of `args`: the first `num_prompts` of the split, mapped like in training.

    Args:
        args ([`EvalArguments`]): the arguments.

    Returns:
        `tuple`: (`prompts`, `references` or `None`).
    """
    from ..data import to_prompt_dataset
    from .ple import _column_names, load_split, prepare_prompt_dataset

    dataset = load_split(
        args.dataset_name,
        args.dataset_split,
        config=args.dataset_config,
        data_files=args.dataset_data_files,
        argument="dataset_name",
    )
    dataset = dataset.select(range(min(args.num_prompts, len(dataset))))
    references = None
    if args.reference_column is not None:
        if args.reference_column not in _column_names(dataset):
            raise ValueError(
                f"`--reference_column {args.reference_column}`: the dataset has no such column; its columns are "
                f"{_column_names(dataset)}."
            )
        references = [_answer_text(reference) for reference in dataset[args.reference_column]]
    dataset = to_prompt_dataset(prepare_prompt_dataset(dataset, args))
    return list(dataset["prompt"]), references


def format_table(rows: list[list], headers: list[str]) -> str:
    """Render rows as a plain-text table with a header line; floats get 4 significant digits."""

    def cell(value):
        if value is None:
            return "-"
        if isinstance(value, float):
            return "nan" if math.isnan(value) else f"{value:.4g}"
        return str(value)

    table = [headers, *[[cell(value) for value in row] for row in rows]]
    widths = [max(len(row[i]) for row in table) for i in range(len(headers))]
    lines = ["  ".join(value.ljust(width) for value, width in zip(row, widths, strict=True)) for row in table]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(line.rstrip() for line in lines)


def evaluate_models(args: EvalArguments) -> dict:
    """
    Generate the answers of one or two models and compute the offline metrics.

    Args:
        args ([`EvalArguments`]): the arguments.

    Returns:
        `dict`: `{"models": {name: {metric: value}}, "win_rate": {source: {...}}, "answers": {name: [...]},
        "prompts": [...]}`.
    """
    import torch

    from .. import metrics

    if args.model_name_or_path is None:
        raise ValueError("No model: set `--model_name_or_path` (a Hub id, a model folder or a LoRA adapter folder).")
    torch.manual_seed(args.seed)
    prompts, references = load_prompts(args)
    sources = _reward_sources(args)
    names = [args.model_name_or_path] + ([args.model_b_name_or_path] if args.model_b_name_or_path else [])
    if len(set(names)) != len(names):
        raise ValueError(f"`--model_b_name_or_path {names[1]}` is the same model as `--model_name_or_path`.")

    answers, judge = {}, None
    for name in names:
        model, tokenizer = load_causal_lm(name, args.dtype)
        answers[name] = generate_answers(
            model, tokenizer, prompts, args.max_new_tokens, args.temperature, args.batch_size
        )
        if name == names[0] and args.perplexity_model_name_or_path is None:
            judge = (model, tokenizer)
        else:
            del model
    if not args.no_perplexity and args.perplexity_model_name_or_path is not None:
        judge = load_causal_lm(args.perplexity_model_name_or_path, args.dtype)

    results = {"models": {name: {} for name in names}, "win_rate": {}, "answers": answers, "prompts": prompts}
    reward_score = metrics.load("reward_score", keep_in_memory=True) if sources else None
    bleu = metrics.load("bleu", keep_in_memory=True) if references is not None else None
    perplexity = metrics.load("perplexity", keep_in_memory=True) if not args.no_perplexity else None
    for name in names:
        row = results["models"][name]
        texts = [_answer_text(answer) for answer in answers[name]]
        row["mean_length_words"] = sum(len(text.split()) for text in texts) / len(texts)
        for source, kwargs in sources.items():
            score = reward_score.compute(
                prompts=prompts, completions=answers[name], batch_size=args.batch_size, **kwargs
            )
            row[f"reward/{source}"] = score["mean_reward"]
        if bleu is not None:
            row["bleu"] = bleu.compute(predictions=texts, references=[[r] for r in references])["bleu"]
        if perplexity is not None:
            scored = [text for text in texts if text.strip()]
            row["perplexity"] = (
                perplexity.compute(predictions=scored, model=judge[0], tokenizer=judge[1], batch_size=args.batch_size)[
                    "mean_perplexity"
                ]
                if scored
                else float("nan")
            )
    if len(names) == 2 and sources:
        win_rate = metrics.load("win_rate", keep_in_memory=True)
        for source, kwargs in sources.items():
            outcome = win_rate.compute(
                prompts=prompts,
                completions_a=answers[names[0]],
                completions_b=answers[names[1]],
                batch_size=args.batch_size,
                **kwargs,
            )
            results["win_rate"][source] = {key: outcome[key] for key in ("win_rate", "wins", "ties", "losses")}
    return results


def results_table(results: dict) -> str:
    """The table `ple-trl eval` prints: one row per metric, one column per model (win rates: first over second)."""
    names = list(results["models"])
    metric_names = list(dict.fromkeys(key for row in results["models"].values() for key in row))
    rows = [[metric, *[results["models"][name].get(metric) for name in names]] for metric in metric_names]
    for source, outcome in results["win_rate"].items():
        detail = f" ({outcome['wins']}W/{outcome['ties']}T/{outcome['losses']}L)"
        rows.append([f"win_rate/{source}" + detail, outcome["win_rate"], None])
    headers = ["metric", *[f"[{'AB'[i]}] {os.path.basename(os.path.normpath(n))}" for i, n in enumerate(names)]]
    return format_table(rows, headers)


def make_parser(prog: str | None = None):
    """The [`~trl.TrlParser`] of `ple-trl eval` over [`EvalArguments`] (so `--config eval.yaml` works too)."""
    from trl import TrlParser

    return TrlParser((EvalArguments,), prog=prog)


def main(argv: list[str] | None = None, prog: str | None = "ple-trl eval") -> dict:
    """
    Run `ple-trl eval`: parse `argv`, evaluate, print the table (and write `--output_json`).

    Args:
        argv (`list[str]`, *optional*): the arguments; `sys.argv[1:]` when `None`.
        prog (`str`, *optional*): program name shown in `--help`.

    Returns:
        `dict`: the results of [`evaluate_models`].
    """
    import json

    from .ple import config_argv

    argv = config_argv(sys.argv[1:] if argv is None else argv)
    (args,) = make_parser(prog).parse_args_and_config(argv)
    results = evaluate_models(args)
    if not results["models"][args.model_name_or_path] or len(results["models"][args.model_name_or_path]) == 1:
        print("(no reward source, reference column or perplexity model: only answer lengths are reported)")
    print(results_table(results))
    if args.output_json:
        os.makedirs(os.path.dirname(os.path.abspath(args.output_json)), exist_ok=True)
        with open(args.output_json, "w") as f:
            json.dump(results, f, indent=2)
    return results
