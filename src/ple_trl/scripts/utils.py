"""Dataset loading and argument glue shared by the `ple-trl train` and `ple-trl eval` scripts.

TODO(issue 10): the dataset helpers belong in `ple_trl.data` (with TRL's `get_dataset`), once the work on `data.py`
for issue 9 is merged.
"""

import os

DATA_FILE_FORMATS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}


def _split_data_files(data_files: list[str], argument: str) -> dict[str, list[str]]:
    splits = {}
    for entry in data_files:
        split, path = entry.split("=", 1) if "=" in entry and not os.path.exists(entry) else ("train", entry)
        if not os.path.isfile(path):
            raise ValueError(f"`--{argument}` names {path!r}, which is not a file. Give existing local data files.")
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
    from datasets import load_dataset, load_from_disk

    if name is None and not data_files:
        raise ValueError(
            f"No dataset: set `--{argument}` (a Hub id, a saved folder or a data file) or the matching "
            "`--..._data_files`."
        )
    if name is not None and os.path.isfile(name):
        name, data_files = None, [name, *(data_files or [])]
    looks_local = name is not None and (
        name.startswith(("/", "./", "../", "~", "\\")) or os.path.splitext(name)[1].lower() in DATA_FILE_FORMATS
    )
    if looks_local and not os.path.exists(os.path.expanduser(name)):
        raise ValueError(
            f"`--{argument} {name}`: the path {name!r} does not exist. Give an existing data file "
            f"({', '.join(sorted(DATA_FILE_FORMATS))}), a folder saved with `save_to_disk`, or a Hub dataset id."
        )
    if name is None:
        splits = _split_data_files(data_files, argument)
        if split not in splits:
            raise ValueError(
                f"`--{argument}`: the data files give the splits {sorted(splits)}, not {split!r}. Name the file of "
                f"that split as `{split}=path.jsonl`, or choose another split."
            )
        paths = [path for paths in splits.values() for path in paths]
        return load_dataset(_file_format(paths, argument), data_files=splits, split=split)
    if os.path.isdir(name) and any(
        os.path.exists(os.path.join(name, marker)) for marker in ("dataset_dict.json", "state.json")
    ):
        dataset = load_from_disk(name)
        if hasattr(dataset, "keys"):
            if split not in dataset:
                raise ValueError(f"`--{argument} {name}` has the splits {sorted(dataset)}, not {split!r}.")
            dataset = dataset[split]
        return dataset
    return load_dataset(name, name=config, data_files=data_files, split=split, streaming=streaming)


def _column_names(dataset):
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
        columns = _column_names(dataset)
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

    columns = [c for c in ("chosen", "rejected") if c in _column_names(dataset)]
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


def prepare_prompt_dataset(dataset, script_args, max_samples: int | None = None):
    """
    Apply the column mapping, prompt truncation and sample limit of `script_args` to a PLE dataset.

    Args:
        dataset ([`~datasets.Dataset`] or [`~datasets.IterableDataset`]):
            The loaded split.
        script_args ([`~ple_trl.scripts.ple.PLEScriptArguments`] or [`~ple_trl.scripts.eval.EvalArguments`]):
            The script arguments (`prompt_column`, `chosen_column`, `rejected_column`, `messages_column`,
            `principle_column`, `prompt_end_marker`, `prompt_max_words`).
        max_samples (`int` or `None`, *optional*, defaults to `None`):
            Keep at most this many rows.

    Returns:
        The prepared dataset, whose format [`ple_trl.data.dataset_format`] recognises.
    """
    from ..data import dataset_format

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
    kind = dataset_format(_column_names(dataset))
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


def config_argv(argv: list[str]) -> list[str]:
    """
    Accept a recipe path as first argument: `recipe.yaml --key value` becomes `--config recipe.yaml --key value`.

    Args:
        argv (`list[str]`): the arguments after the program (or subcommand) name.

    Returns:
        `list[str]`
    """
    argv = list(argv)
    if argv and not argv[0].startswith("-") and argv[0].lower().endswith((".yaml", ".yml")):
        if "--config" in argv:
            raise ValueError(f"Two recipes: {argv[0]!r} and `--config {argv[argv.index('--config') + 1]}`. Give one.")
        argv = ["--config", *argv]
    if "--config" in argv:
        index = argv.index("--config")
        if index + 1 >= len(argv) or not os.path.isfile(argv[index + 1]):
            missing = argv[index + 1] if index + 1 < len(argv) else None
            raise ValueError(f"`--config {missing}`: no such recipe file. Give the path of a YAML recipe.")
    return argv
