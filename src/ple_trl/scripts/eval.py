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

import os
import sys
from dataclasses import dataclass, field

from .arguments import DataArguments, RewardArguments
from .utils import config_argv


@dataclass
class EvalArguments(RewardArguments, DataArguments):
    """
    Arguments of `ple-trl eval`, with the dataset mapping of [`DataArguments`] and the rewards of
    [`RewardArguments`], as in `ple-trl train`.

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
        chat_template (`str`, *optional*, defaults to `"auto"`):
            How text prompts reach the models: `auto` sends each as a user message through the model's chat template
            when it has one (chat models), `on` always does, `off` sends raw text (base models continuing a text).
            Conversations always go through the chat template.
        seed (`int`, *optional*, defaults to `42`):
            Seed for sampling.

    Parameters that control the metrics:
        reward_model_name_or_path (`str` or `None`, *optional*, defaults to `None`):
            A reward model with one output.
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
    reference_column: str | None = field(default=None, metadata={"help": "Reference answers (adds BLEU)."})
    num_prompts: int = field(default=32, metadata={"help": "Number of prompts (the first ones of the split)."})
    max_new_tokens: int = field(default=64, metadata={"help": "Maximum length of an answer."})
    temperature: float = field(default=0.0, metadata={"help": "Sampling temperature; 0 decodes greedily."})
    batch_size: int = field(default=8, metadata={"help": "Prompts per generation call and texts per forward pass."})
    chat_template: str = field(
        default="auto",
        metadata={
            "help": "Text prompts through the model's chat template: `auto` (when it has one), `on` or `off`.",
            "choices": ["auto", "on", "off"],
        },
    )
    seed: int = field(default=42, metadata={"help": "Seed for sampling."})
    reward_model_name_or_path: str | None = field(default=None, metadata={"help": "Reward model (one output)."})
    perplexity_model_name_or_path: str | None = field(
        default=None, metadata={"help": "LM under which answer perplexity is measured (default: the first model)."}
    )
    no_perplexity: bool = field(default=False, metadata={"help": "Skip the perplexity."})
    output_json: str | None = field(default=None, metadata={"help": "Also write results and answers to this file."})

    def __post_init__(self):
        super().__post_init__()
        for name in ("num_prompts", "max_new_tokens", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"`--{name} {getattr(self, name)}` must be >= 1.")
        if self.temperature < 0:
            raise ValueError(f"`--temperature {self.temperature}` must be >= 0 (0 decodes greedily).")
        if self.chat_template not in ("auto", "on", "off"):
            raise ValueError(f"`--chat_template {self.chat_template}` must be `auto`, `on` or `off`.")


# The arguments that name a model (a Hub id or a local folder), checked before anything loads.
MODEL_ARGUMENTS = (
    "model_name_or_path",
    "model_b_name_or_path",
    "perplexity_model_name_or_path",
    "reward_model_name_or_path",
    "reward_classifier_name_or_path",
)


def reward_funcs(args: EvalArguments) -> dict:
    """
    The rewards of `args`, by name: the reward model, the named reward functions and the classifier, each a reward
    function in TRL's signature (models scored by [`~ple_trl.rewards.RewardModelScorer`], long texts truncated on the
    left so the answer is scored).

    Args:
        args ([`EvalArguments`]): the arguments.

    Returns:
        `dict[str, Callable]`
    """
    from ..rewards import RewardModelScorer, resolve_reward_funcs

    rewards = {}
    if args.reward_model_name_or_path is not None:
        scorer = RewardModelScorer(args.reward_model_name_or_path, batch_size=args.batch_size)
        rewards[scorer.__name__] = scorer
    for name, func in zip(args.reward_funcs or [], resolve_reward_funcs(args.reward_funcs, args.max_new_tokens)):
        rewards[name.rsplit(".", 1)[-1]] = func
    if args.reward_classifier_name_or_path is not None:
        scorer = RewardModelScorer(
            args.reward_classifier_name_or_path, label=args.reward_classifier_label, batch_size=args.batch_size
        )
        rewards[scorer.__name__] = scorer
    return rewards


def load_prompts(args: EvalArguments):
    """
    The evaluation prompts (and references) of `args`: the first `num_prompts` of the split, mapped like in training.

    Args:
        args ([`EvalArguments`]): the arguments.

    Returns:
        `tuple`: (`prompts`, `references` or `None`).
    """
    from ..data import dataset_columns, load_split, map_to_prompts, to_prompt_dataset
    from ..rewards import completion_text

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
        if args.reference_column not in dataset_columns(dataset):
            raise ValueError(
                f"`--reference_column {args.reference_column}`: the dataset has no such column; its columns are "
                f"{dataset_columns(dataset)}."
            )
        references = [completion_text(reference) for reference in dataset[args.reference_column]]
    dataset = to_prompt_dataset(map_to_prompts(dataset, args))
    return list(dataset["prompt"]), references


def make_parser(prog: str | None = None):
    """The [`~trl.TrlParser`] of `ple-trl eval` over [`EvalArguments`] (so `--config eval.yaml` works too)."""
    from trl import TrlParser

    return TrlParser((EvalArguments,), prog=prog)


def main(argv: list[str] | None = None, prog: str | None = "ple-trl eval") -> dict:
    """
    Run `ple-trl eval`: parse `argv`, evaluate with [`~ple_trl.evaluation.evaluate_models`], print the table (and
    write `--output_json`).

    Args:
        argv (`list[str]`, *optional*): the arguments; `sys.argv[1:]` when `None`.
        prog (`str`, *optional*): program name shown in `--help`.

    Returns:
        `dict`: the results of [`~ple_trl.evaluation.evaluate_models`].
    """
    import json

    from ..hub import check_model_path
    from ..evaluation import evaluate_models, results_table

    argv = config_argv(sys.argv[1:] if argv is None else argv)
    (args,) = make_parser(prog).parse_args_and_config(argv)
    if args.model_name_or_path is None:
        raise ValueError("No model: set `--model_name_or_path` (a Hub id, a model folder or a LoRA adapter folder).")
    for name in MODEL_ARGUMENTS:  # a missing folder is named before the prompts load, not taken for a bad Hub id
        if getattr(args, name) is not None:
            check_model_path(getattr(args, name), f"--{name}")
    models = [args.model_name_or_path] + ([args.model_b_name_or_path] if args.model_b_name_or_path else [])
    if len(set(models)) != len(models):
        raise ValueError(f"`--model_b_name_or_path {models[1]}` is the same model as `--model_name_or_path`.")
    prompts, references = load_prompts(args)
    results = evaluate_models(
        models,
        prompts,
        rewards=reward_funcs(args),
        references=references,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        batch_size=args.batch_size,
        chat_template=args.chat_template,
        dtype=args.dtype,
        perplexity=not args.no_perplexity,
        perplexity_model=args.perplexity_model_name_or_path,
        seed=args.seed,
    )
    if len(results["models"][args.model_name_or_path]) == 1:
        print("(no reward source, reference column or perplexity model: only answer lengths are reported)")
    print(results_table(results))
    if args.output_json:
        os.makedirs(os.path.dirname(os.path.abspath(args.output_json)), exist_ok=True)
        with open(args.output_json, "w") as f:
            json.dump(results, f, indent=2)
    return results
