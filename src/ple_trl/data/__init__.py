"""Turning the datasets TRL users already have into PLE's prompts.

PLE needs only queries: the answers are generated online. Three formats are accepted:

- prompt-only: a `prompt` column (text or conversation), as for `GRPOTrainer`;
- SFT conversations: a `messages` column; the prompt is everything before the last assistant turn;
- preference data: `prompt`/`chosen`/`rejected`, or the implicit-prompt form (`chosen`/`rejected` only, the prompt
  being their common prefix, extracted with TRL's `maybe_extract_prompt`).

The answers the dataset carries are dropped, since PLE generates its own; other columns are kept and reach the reward
functions as keyword arguments (and a `principle` column overrides the configured principle for its row).

`prepare_prompt_dataset` is where every dataset enters (training, evaluation, `trainer.evaluate(...)`): it also takes
a list of rows, and checks every row up front, so that bad data fails at construction with the rows named, not
mid-training.

The command-line steps before it are here too, for `ple-trl train`, `ple-trl eval` and users' own scripts:
`load_split` reads a Hub id, a `save_to_disk` folder or local data files (through TRL's `get_dataset`), and
`map_to_prompts` maps columns onto these formats and cuts prompts (`--prompt_column`, `--prompt_end_marker`,
`--prompt_max_words`).
"""

import logging
import os

from datasets import Dataset, DatasetDict, IterableDataset, IterableDatasetDict, load_from_disk
from trl import DatasetMixtureConfig, get_dataset
from trl.data_utils import maybe_extract_prompt
from trl.scripts.utils import DatasetConfig

logger = logging.getLogger(__name__)

# How many offending row indices an error message lists.
MAX_ROWS_NAMED = 10


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
    column_names = dataset_columns(dataset)
    kind = dataset_format(column_names)
    if kind == "messages":
        dataset = dataset.map(_prompt_from_messages)
    elif kind == "chosen/rejected":
        dataset = dataset.map(maybe_extract_prompt)
    answers = [c for c in ("messages", "chosen", "rejected", "completion") if c in column_names]
    return dataset.remove_columns(answers) if answers else dataset


def as_dataset(dataset, argument: str = "train_dataset") -> Dataset | IterableDataset:
    """
    Accept what a user passes as a dataset: a [`~datasets.Dataset`] or [`~datasets.IterableDataset`] as is, and a list
    of rows (`[{"prompt": ...}, ...]`) converted with `Dataset.from_list`.

    Args:
        dataset: the dataset as given.
        argument (`str`, *optional*, defaults to `"train_dataset"`): its name, for the error message.

    Returns:
        [`~datasets.Dataset`] or [`~datasets.IterableDataset`].

    Raises:
        `TypeError`: for anything else (a list of strings, a dict of columns, a `DatasetDict`...), naming the type and
        the fix.
    """
    if isinstance(dataset, (Dataset, IterableDataset)):
        return dataset
    if isinstance(dataset, (DatasetDict, IterableDatasetDict)):
        raise TypeError(
            f"`{argument}` is a {type(dataset).__name__} with the splits {sorted(dataset)}; pass one split, e.g. "
            f"`{argument}=dataset['train']`."
        )
    if isinstance(dataset, (list, tuple)) and all(isinstance(row, dict) for row in dataset):
        return Dataset.from_list(list(dataset))
    raise TypeError(
        f"`{argument}` is a {type(dataset).__name__}; PLE needs a `datasets.Dataset` (or `IterableDataset`) with a "
        "`prompt` column, or a list of rows like `[{'prompt': ...}, ...]`. Build one with e.g. "
        "`Dataset.from_dict({'prompt': [...]})`."
    )


def prompt_is_empty(prompt) -> bool:
    """
    Whether a prompt gives the model nothing to answer: `None`, a blank string, an empty conversation, or a
    conversation whose messages are all blank strings.

    Args:
        prompt (`str`, `list[dict]` or `None`): a plain or a conversational prompt.

    Returns:
        `bool`: `True` for an empty prompt.
    """
    if prompt is None:
        return True
    if isinstance(prompt, str):
        return not prompt.strip()
    if isinstance(prompt, (list, tuple)):
        contents = [message.get("content") if isinstance(message, dict) else message for message in prompt]
        # Multimodal contents (lists of parts, images) count as content.
        return all(content is None or (isinstance(content, str) and not content.strip()) for content in contents)
    return False


def _named(rows: list[int]) -> str:
    listed = rows[:MAX_ROWS_NAMED]
    more = f" and {len(rows) - len(listed)} more" if len(rows) > len(listed) else ""
    return f"rows {listed}{more} (0-based, {len(rows)} in all)"


def prepare_prompt_dataset(dataset, argument: str = "train_dataset", principle_configured: bool = False):
    """
    Turn a dataset as a user passes it into PLE's prompt dataset, and check every row of it up front.

    Converts with [`as_dataset`] and [`to_prompt_dataset`], then, for a [`~datasets.Dataset`], refuses an empty
    dataset, empty prompts (see [`prompt_is_empty`]) and `principle` values that are not text, and rows whose
    `principle` is empty when no principle is configured to fall back on (rows that fall back are counted in a log
    message). An [`~datasets.IterableDataset`] cannot be scanned ahead: only its first row is checked here, the trainer
    checks the others as they come.

    Args:
        dataset: the dataset as given (see [`as_dataset`]).
        argument (`str`, *optional*, defaults to `"train_dataset"`): its name, for error messages.
        principle_configured (`bool`, *optional*, defaults to `False`): whether `principle` or `principles` is set.

    Returns:
        [`~datasets.Dataset`] or [`~datasets.IterableDataset`]: the prompt dataset.

    Raises:
        `TypeError` or `ValueError`: naming the argument, the offending rows and the fix.
    """
    dataset = as_dataset(dataset, argument)
    if isinstance(dataset, IterableDataset):
        first_row = next(iter(dataset), None)
        if first_row is None:
            raise ValueError(f"`{argument}` is empty: PLE needs prompts to generate answers for.")
        dataset = to_prompt_dataset(dataset)
        rows = [(0, next(iter(dataset)))]
    else:
        if len(dataset) == 0:
            raise ValueError(f"`{argument}` is empty: PLE needs prompts to generate answers for.")
        dataset = to_prompt_dataset(dataset)
        columns = [c for c in ("prompt", "principle") if c in dataset.column_names]
        rows = (
            (start + i, dict(zip(batch, values)))
            for start, batch in zip(range(0, len(dataset), 1000), dataset.select_columns(columns).iter(1000))
            for i, values in enumerate(zip(*batch.values()))
        )
    empty_prompts, empty_principles, not_text = [], [], []
    for index, row in rows:
        if prompt_is_empty(row.get("prompt")):
            empty_prompts.append(index)
        principle = row.get("principle")
        if principle is not None and not isinstance(principle, str):
            not_text.append(index)
        elif "principle" in row and not (principle or "").strip():
            empty_principles.append(index)
    if empty_prompts:
        raise ValueError(
            f"`{argument}` has an empty or missing `prompt` in {_named(empty_prompts)}: there is nothing to answer. "
            f"Remove those rows, e.g. `{argument}.filter(lambda row: row['prompt'])`, or fill them."
        )
    if not_text:
        raise ValueError(
            f"`{argument}` has a `principle` that is not text in {_named(not_text)}. A `principle` column holds one "
            "principle text per row."
        )
    if empty_principles and not principle_configured:
        raise ValueError(
            f"In `{argument}`, the `principle` column is empty in {_named(empty_principles)}, and no principle is "
            "configured to fall back on. Fill those rows, or set `PLEConfig(principle=...)` or "
            "`PLEConfig(principles=[...])` for them."
        )
    if empty_principles:
        logger.warning(
            f"In `{argument}`, the `principle` column is empty in {_named(empty_principles)}: those rows use the "
            "configured principle(s)."
        )
    return dataset


def check_generation_round(num_prompts: int, per_device_pairs: int, steps_per_generation: int, num_processes: int):
    """
    Refuse a dataset smaller than one generation round, which would train for 0 steps and exit successfully.

    One round takes `per_device_pairs * steps_per_generation * num_processes` prompts (the `generation_batch_size`);
    the sampler drops an incomplete round. Prompts left over by the last full round of an epoch are logged.

    Args:
        num_prompts (`int`): rows of the training dataset.
        per_device_pairs (`int`): `per_device_train_batch_size` (pairs).
        steps_per_generation (`int`): micro-steps one generation round feeds.
        num_processes (`int`): processes of the run.

    Raises:
        `ValueError`: naming the dataset size, the round size and what to lower.
    """
    round_size = per_device_pairs * steps_per_generation * num_processes
    if num_prompts < round_size:
        raise ValueError(
            f"`train_dataset` has {num_prompts} prompt{'s' if num_prompts != 1 else ''}, but one generation round "
            f"needs {round_size} (`generation_batch_size` = `per_device_train_batch_size` {per_device_pairs} x "
            f"`steps_per_generation` {steps_per_generation} x {num_processes} process(es)), and an incomplete round "
            "is dropped: nothing would be trained. Add prompts, or lower `per_device_train_batch_size`, "
            "`gradient_accumulation_steps` (or `steps_per_generation` / `generation_batch_size`)."
        )
    leftover = num_prompts % round_size
    if leftover:
        logger.warning(
            f"`train_dataset` has {num_prompts} prompts and a generation round takes {round_size}: each epoch trains "
            f"on {num_prompts - leftover} of them and leaves {leftover} out (the sampler drops an incomplete round; "
            "with shuffling, other prompts are left out in other epochs)."
        )


# --- loading and mapping what users have (used by `ple-trl train` and `ple-trl eval`) ----------------------------


DATA_FILE_FORMATS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}

# What to write in a data file that has no rows, by format.
DATA_FILE_EXAMPLES = {
    "json": 'one JSON object per line, e.g. `{"prompt": "Hello"}`',
    "csv": "a header line (e.g. `prompt`) and one row per line",
    "parquet": "rows, e.g. with `Dataset.from_dict({'prompt': [...]}).to_parquet(path)`",
}


def _data_file_is_blank(path: str) -> bool:
    # Reads up to the first character that is not whitespace: at once for a file with rows.
    with open(path, "rb") as f:
        while chunk := f.read(1 << 16):
            if chunk.strip():
                return False
    return True


def _check_data_file_has_rows(path: str, argument: str):
    # The `datasets` loaders fail on an empty file with a StopIteration traceback (json) or "corresponds to no data".
    empty = os.path.getsize(path) == 0
    file_format = DATA_FILE_FORMATS.get(os.path.splitext(path)[1].lower())
    if empty or (file_format in ("json", "csv") and _data_file_is_blank(path)):
        what = "is empty (0 bytes)" if empty else "has only blank lines"
        example = DATA_FILE_EXAMPLES.get(file_format, "rows")
        raise ValueError(
            f"`--{argument}`: the data file {path!r} {what}: there are no rows to read. Fill it with {example}, or "
            "give another file."
        )


def _data_files_argument(argument: str) -> str:
    # `dataset_name` -> `dataset_data_files` (and `sft_...`, `seed_...`): the argument that gives local data files.
    return argument[: -len("_name")] + "_data_files" if argument.endswith("_name") else argument


def _split_data_files(data_files: list[str], argument: str) -> dict[str, list[str]]:
    splits = {}
    for entry in data_files:
        split, path = entry.split("=", 1) if "=" in entry and not os.path.exists(entry) else ("train", entry)
        if not os.path.isfile(path):
            raise ValueError(f"`--{argument}` names {path!r}, which is not a file. Give existing local data files.")
        _check_data_file_has_rows(path, _data_files_argument(argument))
        splits.setdefault(split, []).append(path)
    return splits


def _file_format(paths: list[str], argument: str) -> str:
    formats = {DATA_FILE_FORMATS.get(os.path.splitext(path)[1].lower()) for path in paths}
    if None in formats or len(formats) != 1:
        raise ValueError(
            f"`--{argument}`: cannot tell the format of {paths}. Use files of one format among "
            f"{sorted(DATA_FILE_FORMATS)}."
        )
    return formats.pop()


def load_split(
    name: str | None,
    split: str,
    config: str | None = None,
    data_files: list[str] | None = None,
    streaming: bool = False,
    argument: str = "dataset_name",
):
    """
    Load one split of a dataset given by Hub id, by a folder saved with `save_to_disk`, or by local data files.

    Args:
        name (`str` or `None`):
            A Hub id, a dataset folder, or one local `.json`/`.jsonl`/`.csv`/`.parquet` file.
        split (`str`):
            The split to return.
        config (`str` or `None`, *optional*, defaults to `None`):
            Configuration name (Hub datasets).
        data_files (`list[str]` or `None`, *optional*, defaults to `None`):
            Local files; plain paths are the `train` split, `split=path` entries name theirs.
        streaming (`bool`, *optional*, defaults to `False`):
            Stream a Hub dataset.
        argument (`str`, *optional*, defaults to `"dataset_name"`):
            The argument's name, used in error messages.

    Returns:
        [`~datasets.Dataset`] or [`~datasets.IterableDataset`]
    """
    if name is None and not data_files:
        raise ValueError(
            f"No dataset: set `--{argument}` (a Hub id, a saved folder or a data file) or the matching "
            "`--..._data_files`."
        )
    if name is not None and os.path.isfile(name):
        _check_data_file_has_rows(name, argument)
        name, data_files = None, [name, *(data_files or [])]
    looks_local = name is not None and (
        name.startswith(("/", "./", "../", "~", "\\")) or os.path.splitext(name)[1].lower() in DATA_FILE_FORMATS
    )
    if looks_local and not os.path.exists(os.path.expanduser(name)):
        raise ValueError(
            f"`--{argument} {name}`: the path {name!r} does not exist. Give an existing data file "
            f"({', '.join(sorted(DATA_FILE_FORMATS))}), a folder saved with `save_to_disk`, or a Hub dataset id."
        )
    if name is not None and os.path.isdir(name) and any(
        os.path.exists(os.path.join(name, marker)) for marker in ("dataset_dict.json", "state.json")
    ):
        # TRL's `get_dataset` goes through `load_dataset`, which does not read `save_to_disk` folders.
        dataset = load_from_disk(name)
        if isinstance(dataset, DatasetDict):
            if split not in dataset:
                raise ValueError(f"`--{argument} {name}` has the splits {sorted(dataset)}, not {split!r}.")
            dataset = dataset[split]
        return dataset
    if name is None:
        splits = _split_data_files(data_files, argument)
        if split not in splits:
            raise ValueError(
                f"`--{argument}`: the data files give the splits {sorted(splits)}, not {split!r}. Name the file of "
                f"that split as `{split}=path.jsonl`, or choose another split."
            )
        paths = [path for paths in splits.values() for path in paths]
        source = DatasetConfig(path=_file_format(paths, argument), data_files=splits, split=split)
        streaming = False
    else:
        source = DatasetConfig(path=name, name=config, data_files=data_files, split=split)
    # `get_dataset` returns the loaded split under the key "train", whatever its name.
    return get_dataset(DatasetMixtureConfig(datasets=[source], streaming=streaming))["train"]


def dataset_columns(dataset) -> list[str]:
    """The columns of a [`~datasets.Dataset`], or of an [`~datasets.IterableDataset`] whose features are unknown."""
    if dataset.column_names is not None:
        return list(dataset.column_names)
    return list(next(iter(dataset)).keys())


def map_columns(dataset, mapping: dict[str, str | None]):
    """
    Rename dataset columns onto the names PLE expects.

    Args:
        dataset ([`~datasets.Dataset`] or [`~datasets.IterableDataset`]):
            The dataset.
        mapping (`dict[str, str | None]`):
            `{"prompt": "text", ...}`: target name to source column (`None`: leave as is). A column that already has
            the target name is replaced.

    Returns:
        The dataset with renamed columns.

    Raises:
        `ValueError`: when a source column is missing, naming the argument and the columns found.
    """
    for target, source in mapping.items():
        if source is None or source == target:
            continue
        columns = dataset_columns(dataset)
        if source not in columns:
            raise ValueError(
                f"`--{target}_column {source}`: the dataset has no column {source!r}; its columns are {columns}. "
                f"Set `--{target}_column` to one of them."
            )
        if target in columns:
            dataset = dataset.remove_columns(target)
        dataset = dataset.rename_column(source, target)
    return dataset


def prompts_up_to_marker(dataset, marker: str):
    """
    Turn implicit-prompt text preference data into prompts: each `chosen` up to and including the last `marker`.

    Args:
        dataset ([`~datasets.Dataset`] or [`~datasets.IterableDataset`]): with `chosen` (and `rejected`) text columns.
        marker (`str`): where the prompt ends, e.g. `"\n\nAssistant:"`.

    Returns:
        The dataset with a `prompt` column instead of `chosen`/`rejected`.
    """

    def cut(example):
        chosen = example["chosen"]
        if not isinstance(chosen, str) or marker not in chosen:
            raise ValueError(
                f"`--prompt_end_marker {marker!r}` is not in this `chosen` value: {chosen!r:.120}. Use the marker "
                "that "
                "starts the answer in this dataset, or drop `--prompt_end_marker` to take the common prefix."
            )
        return {"prompt": chosen[: chosen.rindex(marker) + len(marker)]}

    columns = [c for c in ("chosen", "rejected") if c in dataset_columns(dataset)]
    return dataset.map(cut, remove_columns=columns)


def truncate_prompts(dataset, max_words: int):
    """Keep the first `max_words` words of every text prompt (review prefixes for continuation tasks)."""

    def truncate(example):
        prompt = example["prompt"]
        if not isinstance(prompt, str):
            raise ValueError(
                "`--prompt_max_words` cuts text prompts, but the prompts are conversations. Drop `--prompt_max_words`."
            )
        return {"prompt": " ".join(prompt.split()[:max_words])}

    return dataset.map(truncate)


def map_to_prompts(dataset, script_args, max_samples: int | None = None):
    """
    Apply the column mapping, prompt truncation and sample limit of `script_args` to a PLE dataset.

    Args:
        dataset ([`~datasets.Dataset`] or [`~datasets.IterableDataset`]):
            The loaded split.
        script_args ([`~ple_trl.scripts.arguments.DataArguments`]):
            The script arguments (`prompt_column`, `chosen_column`, `rejected_column`, `messages_column`,
            `principle_column`, `prompt_end_marker`, `prompt_max_words`).
        max_samples (`int` or `None`, *optional*, defaults to `None`):
            Keep at most this many rows.

    Returns:
        The prepared dataset, whose format [`dataset_format`] recognises.
    """
    dataset = map_columns(
        dataset,
        {
            "prompt": script_args.prompt_column,
            "chosen": script_args.chosen_column,
            "rejected": script_args.rejected_column,
            "messages": script_args.messages_column,
            "principle": script_args.principle_column,
        },
    )
    if max_samples is not None:
        dataset = (
            dataset.take(max_samples)
            if not hasattr(dataset, "__len__")
            else dataset.select(range(min(max_samples, len(dataset))))
        )
    kind = dataset_format(dataset_columns(dataset))
    if script_args.prompt_end_marker is not None:
        if kind != "chosen/rejected":
            raise ValueError(
                f"`--prompt_end_marker {script_args.prompt_end_marker!r}` applies to `chosen`/`rejected` data, but "
                f"this dataset is in the {kind!r} format. Drop `--prompt_end_marker`."
            )
        dataset = prompts_up_to_marker(dataset, script_args.prompt_end_marker)
        kind = "prompt"
    if script_args.prompt_max_words is not None:
        if kind != "prompt":
            raise ValueError(
                f"`--prompt_max_words {script_args.prompt_max_words}` cuts a `prompt` column, but this dataset is in "
                f"the {kind!r} format. Map the text to cut with `--prompt_column`, or drop `--prompt_max_words`."
            )
        dataset = truncate_prompts(dataset, script_args.prompt_max_words)
    return dataset
