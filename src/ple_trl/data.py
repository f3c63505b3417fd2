"""Turning the datasets TRL users already have into PLE's prompts.

PLE needs only queries: the answers are generated online. Three formats are accepted:

- prompt-only: a `prompt` column (text or conversation), as for `GRPOTrainer`;
- SFT conversations: a `messages` column; the prompt is everything before the last assistant turn;
- preference data: `prompt`/`chosen`/`rejected`, or the implicit-prompt form (`chosen`/`rejected` only, the prompt
  being their common prefix, extracted with TRL's `maybe_extract_prompt`).

The answers the dataset carries are dropped, since PLE generates its own; other columns are kept and reach the reward
functions as keyword arguments (and a `principle` column overrides the configured principle for its row).
"""

from datasets import Dataset, IterableDataset
from trl.data_utils import maybe_extract_prompt

PROMPT_FORMATS = ("prompt", "messages", "chosen/rejected")


def _prompt_from_messages(example):
    messages = example["messages"]
    last_assistant = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=len(messages))
    return {"prompt": messages[:last_assistant]}


def dataset_format(column_names) -> str:
    """
    Name the prompt format of a dataset from its columns.

    Args:
        column_names (`list[str]`): the dataset's columns.

    Returns:
        `str`: `"prompt"`, `"messages"` or `"chosen/rejected"`.

    Raises:
        `ValueError`: when no format fits, naming the columns found and the ones expected.
    """
    columns = set(column_names or [])
    if {"chosen", "rejected"} <= columns:
        return "chosen/rejected"
    if "prompt" in columns:
        return "prompt"
    if "messages" in columns:
        return "messages"
    raise ValueError(
        f"The dataset has no usable prompt: its columns are {sorted(columns)}. PLE needs a `prompt` column "
        "(text or conversation), a `messages` column (SFT conversations), or `chosen`/`rejected` columns "
        "(preference data). Rename your query column to `prompt`, e.g. `dataset.rename_column('question', 'prompt')`."
    )


def to_prompt_dataset(dataset: Dataset | IterableDataset) -> Dataset | IterableDataset:
    """
    Return a dataset with a `prompt` column, whatever the format of `dataset` (see the module docstring).

    Args:
        dataset ([`~datasets.Dataset`] or [`~datasets.IterableDataset`]): prompt-only, SFT or preference data.

    Returns:
        [`~datasets.Dataset`] or [`~datasets.IterableDataset`]: the same rows with a `prompt` column; `messages`,
        `chosen`, `rejected` and `completion` columns are removed.
    """
    column_names = dataset.column_names
    if column_names is None and isinstance(dataset, IterableDataset):
        column_names = list(next(iter(dataset)).keys())
    kind = dataset_format(column_names)
    if kind == "messages":
        dataset = dataset.map(_prompt_from_messages)
    elif kind == "chosen/rejected":
        dataset = dataset.map(maybe_extract_prompt)
    answers = [c for c in ("messages", "chosen", "rejected", "completion") if c in column_names]
    return dataset.remove_columns(answers) if answers else dataset
