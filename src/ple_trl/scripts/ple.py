"""The PLE training script, shared by `examples/scripts/ple.py` and `ple-trl train`.

It is TRL's `grpo.py` / `dpo.py` script with what PLE users need on top:

- the dataset comes from the Hub, from a folder saved with `save_to_disk`, or from local `json`/`jsonl`/`csv`/`parquet`
  files (`--dataset_name data.jsonl` or `--dataset_data_files train=a.jsonl test=b.jsonl`);
- columns are mapped onto PLE's formats (`--prompt_column text`, `--chosen_column`, ...) and text prompts can be cut to
  their first words (`--prompt_max_words 8`: IMDb's review prefixes);
- rewards are a reward model (`--reward_model_name_or_path`, a [`PLEConfig`] field), named reward functions
  (`--reward_funcs vader_sentiment think_format_reward my_package.my_reward my_rewards.py:my_reward`, see
  [`reward_funcs_registry`] and [`load_reward_func`]) and/or a
  text classifier's label probability (`--reward_classifier_name_or_path lvwerra/distilbert-imdb`);
- an optional SFT stage runs TRL's [`~trl.SFTTrainer`] on a separate dataset first (Algorithm 1, line 1:
  `--sft_dataset_name ... --sft_steps N`); PLE then starts from its output (a LoRA adapter is merged first).

Arguments come from the command line and/or a YAML recipe (`--config recipe.yaml`, or the recipe path as first
argument); command-line values override the recipe's.
"""

import argparse
import hashlib
import importlib
import importlib.util
import inspect
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field

from trl import ScriptArguments

logger = logging.getLogger(__name__)

DATA_FILE_FORMATS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}


@dataclass
class PLEScriptArguments(ScriptArguments):
    """
    Script arguments of the PLE training script, on top of [`~trl.ScriptArguments`] (`dataset_name`,
    `dataset_config`, `dataset_train_split`, `dataset_test_split`, `dataset_streaming`).

    Parameters that control the dataset:
        dataset_data_files (`list[str]` or `None`, *optional*, defaults to `None`):
            Local data files (`.json`, `.jsonl`, `.csv`, `.parquet`), loaded with
            `datasets.load_dataset(format, data_files=...)`. Plain paths form the train split; `split=path` entries
            name their split (`train=a.jsonl test=b.jsonl`). `dataset_name` may also be a single such file.
        prompt_column (`str` or `None`, *optional*, defaults to `None`):
            Column renamed to `prompt` (e.g. `text` for IMDb).
        chosen_column (`str` or `None`, *optional*, defaults to `None`):
            Column renamed to `chosen` (preference data; the prompt is extracted from `chosen`/`rejected`).
        rejected_column (`str` or `None`, *optional*, defaults to `None`):
            Column renamed to `rejected`.
        messages_column (`str` or `None`, *optional*, defaults to `None`):
            Column renamed to `messages` (SFT conversations; the prompt is everything before the last answer).
        principle_column (`str` or `None`, *optional*, defaults to `None`):
            Column renamed to `principle`: a per-row principle that overrides the configured one.
        prompt_end_marker (`str` or `None`, *optional*, defaults to `None`):
            For text preference data with an implicit prompt: the prompt is `chosen` up to and including the last
            occurrence of this marker (HH: `"\n\nAssistant:"`), instead of the common prefix of `chosen` and
            `rejected`, which also swallows the first words the two answers share.
        prompt_max_words (`int` or `None`, *optional*, defaults to `None`):
            Keep only the first words of each text prompt (continuation tasks: IMDb uses a review prefix).
        max_train_samples (`int` or `None`, *optional*, defaults to `None`):
            Use at most this many training prompts (quick runs).

    Parameters that control the rewards:
        reward_funcs (`list[str]` or `None`, *optional*, defaults to `None`):
            Named reward functions (see [`reward_funcs_registry`]), dotted import paths of installed modules
            (`my_package.my_module.my_reward`) or local files (`path/to/my_rewards.py:my_reward`). `sys.path` is never
            changed, so a local file cannot shadow an installed package: a file in the current directory is loaded
            only through the `file.py:function` form.
        reward_classifier_name_or_path (`str` or `None`, *optional*, defaults to `None`):
            A text classifier whose probability of `reward_classifier_label` is a reward (e.g. a sentiment classifier
            with two labels, which a `reward_model_name_or_path` cannot be: reward models have a single output).
        reward_classifier_label (`str`, *optional*, defaults to `"POSITIVE"`):
            The classifier label whose probability is the reward (a name of its `id2label`, or an index).

    Parameters that control the SFT stage (Algorithm 1, line 1):
        sft_dataset_name (`str` or `None`, *optional*, defaults to `None`):
            Dataset of the SFT stage (Hub id, saved folder or data file). When set (or `sft_dataset_data_files`), TRL's
            `SFTTrainer` trains the model on it before PLE starts.
        sft_dataset_config (`str` or `None`, *optional*, defaults to `None`):
            Configuration name of the SFT dataset.
        sft_dataset_data_files (`list[str]` or `None`, *optional*, defaults to `None`):
            Local data files of the SFT dataset (same syntax as `dataset_data_files`).
        sft_dataset_train_split (`str`, *optional*, defaults to `"train"`):
            Split of the SFT dataset.
        sft_text_column (`str` or `None`, *optional*, defaults to `None`):
            Column to train on, renamed to `text` (or to `messages` when it holds conversations), e.g. `chosen` for
            HH. By default the SFT dataset must already be in a format `SFTTrainer` reads (`text`, `messages` or
            `prompt`/`completion`).
        sft_steps (`int` or `None`, *optional*, defaults to `None`):
            Optimizer steps of the SFT stage; `None` trains one epoch, `0` switches the stage off (e.g. to skip a
            recipe's SFT stage from the command line).
        sft_learning_rate (`float`, *optional*, defaults to `2e-5`):
            Learning rate of the SFT stage.
        sft_max_length (`int`, *optional*, defaults to `512`):
            Maximum tokenised length of an SFT example.
        sft_output_dir (`str` or `None`, *optional*, defaults to `None`):
            Where the SFT model is saved; defaults to `{output_dir}/sft`.
    """

    # Parameters that control the dataset
    dataset_data_files: list[str] | None = field(
        default=None,
        metadata={"help": "Local data files (.json, .jsonl, .csv, .parquet); `split=path` names a split."},
    )
    prompt_column: str | None = field(default=None, metadata={"help": "Column renamed to `prompt`."})
    chosen_column: str | None = field(default=None, metadata={"help": "Column renamed to `chosen`."})
    rejected_column: str | None = field(default=None, metadata={"help": "Column renamed to `rejected`."})
    messages_column: str | None = field(default=None, metadata={"help": "Column renamed to `messages`."})
    principle_column: str | None = field(
        default=None, metadata={"help": "Column renamed to `principle` (per-row principle)."}
    )
    prompt_end_marker: str | None = field(
        default=None,
        metadata={"help": "Implicit-prompt text preference data: the prompt ends at the last such marker."},
    )
    prompt_max_words: int | None = field(
        default=None, metadata={"help": "Keep only the first words of each text prompt (e.g. IMDb review prefixes)."}
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Use at most this many training prompts."})

    # Parameters that control the rewards
    reward_funcs: list[str] | None = field(
        default=None,
        metadata={
            "help": "Named reward functions, dotted import paths of installed modules "
            "(`my_package.my_module.my_reward`) or local files (`path/to/my_rewards.py:my_reward`). The current "
            "directory is not added to `sys.path`, so a local file cannot shadow an installed package; load local "
            "files with the `file.py:function` form."
        },
    )
    reward_classifier_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Text classifier whose probability of `reward_classifier_label` is a reward."},
    )
    reward_classifier_label: str = field(
        default="POSITIVE", metadata={"help": "Label of the classifier whose probability is the reward."}
    )

    # Parameters that control the SFT stage
    sft_dataset_name: str | None = field(
        default=None, metadata={"help": "Dataset of the SFT stage run before PLE (Hub id, folder or data file)."}
    )
    sft_dataset_config: str | None = field(default=None, metadata={"help": "Configuration of the SFT dataset."})
    sft_dataset_data_files: list[str] | None = field(
        default=None, metadata={"help": "Local data files of the SFT dataset."}
    )
    sft_dataset_train_split: str = field(default="train", metadata={"help": "Split of the SFT dataset."})
    sft_text_column: str | None = field(
        default=None, metadata={"help": "SFT column renamed to `text` (or `messages` for conversations)."}
    )
    sft_steps: int | None = field(
        default=None, metadata={"help": "Optimizer steps of the SFT stage (None: one epoch; 0: no SFT stage)."}
    )
    sft_learning_rate: float = field(default=2e-5, metadata={"help": "Learning rate of the SFT stage."})
    sft_max_length: int = field(default=512, metadata={"help": "Maximum tokenised length of an SFT example."})
    sft_output_dir: str | None = field(
        default=None, metadata={"help": "Where the SFT model is saved (default: `{output_dir}/sft`)."}
    )

    def __post_init__(self):
        for name in ("prompt_max_words", "max_train_samples"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"`--{name} {value}` must be >= 1 (or left unset).")
        if self.sft_steps is not None and self.sft_steps < 0:
            raise ValueError(f"`--sft_steps {self.sft_steps}` must be >= 0 (0 switches the SFT stage off).")
        has_sft_dataset = self.sft_dataset_name is not None or bool(self.sft_dataset_data_files)
        if self.sft_steps and not has_sft_dataset:
            raise ValueError(
                f"`--sft_steps {self.sft_steps}` is set but there is no SFT dataset. Add `--sft_dataset_name` (or "
                "`--sft_dataset_data_files`), or drop `--sft_steps`."
            )

    @property
    def has_sft_stage(self) -> bool:
        has_sft_dataset = self.sft_dataset_name is not None or bool(self.sft_dataset_data_files)
        return has_sft_dataset and self.sft_steps != 0


# --- rewards ---------------------------------------------------------------------------------------------------------


def _accepts_completions(func) -> bool:
    try:
        parameters = inspect.signature(func).parameters
    except (TypeError, ValueError):
        return False
    return "completions" in parameters or any(p.kind is p.VAR_KEYWORD for p in parameters.values())


def reward_funcs_registry(max_completion_length: int | None = None) -> dict[str, Callable]:
    """
    The reward functions that `--reward_funcs` can name.

    They are the public reward functions of `ple_trl.rewards` (e.g. `vader_sentiment`, `profanity_penalty`) and TRL's
    `trl.rewards` functions: `accuracy_reward`, `reasoning_accuracy_reward` (need `math_verify`),
    `think_format_reward`, and `get_soft_overlong_punishment` built for `max_completion_length` (a soft penalty over
    its last quarter).

    Args:
        max_completion_length (`int` or `None`, *optional*, defaults to `None`):
            The training's `max_completion_length`, for `get_soft_overlong_punishment` (left out when `None`).

    Returns:
        `dict[str, Callable]`: reward functions by name.
    """
    registry = {}
    try:
        from trl.rewards import think_format_reward

        registry["think_format_reward"] = think_format_reward
    except ImportError:  # pragma: no cover - depends on the TRL version
        pass
    try:
        from trl.rewards import accuracy_reward, reasoning_accuracy_reward

        registry.update(accuracy_reward=accuracy_reward, reasoning_accuracy_reward=reasoning_accuracy_reward)
    except ImportError:  # pragma: no cover
        pass
    if max_completion_length:
        from trl.rewards import get_soft_overlong_punishment

        registry["get_soft_overlong_punishment"] = get_soft_overlong_punishment(
            max_completion_len=max_completion_length, soft_punish_cache=max(1, max_completion_length // 4)
        )
    try:
        from .. import rewards as ple_rewards
    except ImportError:  # pragma: no cover - the rewards subpackage is optional
        ple_rewards = None
    for name in getattr(ple_rewards, "__all__", []):
        func = getattr(ple_rewards, name, None)
        if inspect.isfunction(func) and name != "completion_text" and _accepts_completions(func):
            registry[name] = func
    return registry


def load_reward_func(spec: str) -> Callable:
    """
    Import a reward function from a `--reward_funcs` spec that is not a registered name.

    Two forms, neither of which changes `sys.path` (so a local file can never shadow an installed package, as it would
    if the current directory were put first on `sys.path`):

    - `package.module.function` (or `package.module:function`): imported through the normal import system, from the
      installed packages and the existing `sys.path`;
    - `path/to/file.py:function`: the file is loaded by its path (for a local file that is not an installed module).

    Args:
        spec (`str`):
            `package.module.function`, `package.module:function` or `path/to/file.py:function`.

    Returns:
        `Callable`: the reward function.

    Raises:
        `ValueError`: the module, file or function cannot be found, or the object found is not callable.
    """
    target, separator, attribute = spec.rpartition(":")
    if separator and target.endswith(".py"):
        if not os.path.isfile(target):
            raise ValueError(
                f"`--reward_funcs {spec}`: the file {target!r} does not exist. Give the path of a .py file."
            )
        path = os.path.abspath(target)
        # A stable name of its own, so that two specs of one file share one module and nothing installed is shadowed.
        module_name = f"_ple_trl_reward_file_{hashlib.sha1(path.encode()).hexdigest()[:12]}"
        module = sys.modules.get(module_name)
        if module is None:
            module_spec = importlib.util.spec_from_file_location(module_name, path)
            module = importlib.util.module_from_spec(module_spec)
            sys.modules[module_name] = module  # the file's own dataclasses and pickling look their module up here
            try:
                module_spec.loader.exec_module(module)
            except BaseException:
                del sys.modules[module_name]
                raise
        source = f"the file {target!r}"
    elif separator or "." in spec:
        module_path, attribute = (target, attribute) if separator else spec.rsplit(".", 1)
        try:
            module = importlib.import_module(module_path)
        except ImportError as error:
            local_file = os.path.join(*module_path.split(".")) + ".py"
            hint = (
                f"To load the local file {local_file!r}, pass `--reward_funcs {local_file}:{attribute}`."
                if os.path.isfile(local_file)
                else "Install the package that provides it, or pass a local file as `path/to/file.py:function`."
            )
            raise ValueError(
                f"`--reward_funcs {spec}`: cannot import the module {module_path!r} ({error}). {hint}"
            ) from None
        source = f"the module {module_path!r} ({getattr(module, '__file__', None) or 'built in'})"
    else:
        raise ValueError(
            f"`--reward_funcs {spec}` is neither a dotted import path (`package.module.function`) nor a file "
            "(`path/to/file.py:function`)."
        )
    func = getattr(module, attribute, None)
    if not callable(func):
        raise ValueError(f"`--reward_funcs {spec}`: {source} has no function {attribute!r}.")
    return func


def resolve_reward_funcs(names: list[str] | None, max_completion_length: int | None = None) -> list[Callable]:
    """
    Turn `--reward_funcs` names into reward functions.

    Args:
        names (`list[str]` or `None`):
            Names of [`reward_funcs_registry`], dotted import paths (`package.module.function`, imported without
            changing `sys.path`) or local files (`path/to/file.py:function`); see [`load_reward_func`].
        max_completion_length (`int` or `None`, *optional*, defaults to `None`):
            Passed to [`reward_funcs_registry`].

    Returns:
        `list[Callable]`: the reward functions, in order.

    Raises:
        `ValueError`: for a name that is neither registered nor importable, listing the registered names.
    """
    registry = reward_funcs_registry(max_completion_length)
    funcs = []
    for name in names or []:
        if name in registry:
            funcs.append(registry[name])
        elif "." in name or ":" in name:
            funcs.append(load_reward_func(name))
        else:
            raise ValueError(
                f"`--reward_funcs {name}` is not a known reward function. Use one of {sorted(registry)}, a dotted "
                "import path such as `my_package.my_module.my_reward`, or a local file as `my_rewards.py:my_reward`."
            )
    return funcs


class ClassifierReward:
    """
    The probability that a text classifier gives one label to `prompt + completion`, as a reward function.

    A sentiment classifier (two labels) scores IMDb continuations this way; [`~trl.GRPOTrainer`] loads a reward model
    path with a single output, so it cannot use such a classifier directly. The model is loaded on first call, on the
    process's accelerator.

    Args:
        model_name_or_path (`str`):
            Path or Hub id of a sequence-classification model.
        label (`str`, *optional*, defaults to `"POSITIVE"`):
            The label whose probability is returned: a name of the model's `id2label` (case-insensitive) or an index.
        batch_size (`int`, *optional*, defaults to `16`):
            Texts per forward pass.
        max_length (`int`, *optional*, defaults to `512`):
            Truncation length in tokens.
    """

    def __init__(self, model_name_or_path: str, label: str = "POSITIVE", batch_size: int = 16, max_length: int = 512):
        self.model_name_or_path = model_name_or_path
        self.label = str(label)
        self.batch_size = batch_size
        self.max_length = max_length
        self.__name__ = f"{os.path.basename(os.path.normpath(model_name_or_path))}_{self.label}"
        self._model = self._tokenizer = self._index = None

    def _load(self):
        from accelerate import PartialState
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        model = AutoModelForSequenceClassification.from_pretrained(self.model_name_or_path)
        labels = {str(name).lower(): int(index) for index, name in model.config.id2label.items()}
        if self.label.lower() in labels:
            self._index = labels[self.label.lower()]
        elif self.label.isdigit() and int(self.label) < model.config.num_labels:
            self._index = int(self.label)
        else:
            raise ValueError(
                f"`reward_classifier_label={self.label!r}` is not a label of {self.model_name_or_path!r}, whose "
                f"labels "
                f"are {sorted(model.config.id2label.values())}. Use one of them, or an index below "
                f"{model.config.num_labels}."
            )
        if model.config.num_labels < 2:
            raise ValueError(
                f"{self.model_name_or_path!r} has a single output, so it is a reward model, not a classifier: pass it "
                "as `--reward_model_name_or_path` instead of `--reward_classifier_name_or_path`."
            )
        self._model = model.to(PartialState().device).eval()
        self._tokenizer = AutoTokenizer.from_pretrained(self.model_name_or_path)

    def __call__(self, prompts, completions, **kwargs) -> list[float]:
        import torch

        from ..rewards.lexicon import completion_text

        if self._model is None:
            self._load()
        texts = [
            (prompt if isinstance(prompt, str) else "") + completion_text(completion)
            for prompt, completion in zip(prompts, completions, strict=True)
        ]
        rewards = []
        for start in range(0, len(texts), self.batch_size):
            batch = self._tokenizer(
                texts[start : start + self.batch_size],
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            ).to(self._model.device)
            with torch.no_grad():
                probabilities = self._model(**batch).logits.float().softmax(-1)[:, self._index]
            rewards.extend(probabilities.tolist())
        return rewards


# --- datasets --------------------------------------------------------------------------------------------------------


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


def prepare_prompt_dataset(dataset, script_args: PLEScriptArguments, max_samples: int | None = None):
    """
    Apply the column mapping, prompt truncation and sample limit of `script_args` to a PLE dataset.

    Args:
        dataset ([`~datasets.Dataset`] or [`~datasets.IterableDataset`]):
            The loaded split.
        script_args ([`PLEScriptArguments`]):
            The script arguments.
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


# --- SFT stage -------------------------------------------------------------------------------------------------------


def run_sft_stage(script_args: PLEScriptArguments, training_args, model_args) -> str:
    """
    Algorithm 1, line 1: supervised fine-tuning of the initial model with TRL's [`~trl.SFTTrainer`].

    The SFT run uses the PLE run's batch size, precision, logging, seed and LoRA settings (`--use_peft`), with its own
    dataset, steps and learning rate (`sft_*` arguments). A LoRA adapter is merged into the model before it is saved,
    so     that PLE starts from a plain model (and trains a fresh adapter on it).

    Args:
        script_args ([`PLEScriptArguments`]): the script arguments (`sft_*`).
        training_args ([`PLEConfig`]): the PLE run's configuration.
        model_args ([`~trl.ModelConfig`]): the model and LoRA settings.

    Returns:
        `str`: the folder of the SFT model (`sft_output_dir`, default `{output_dir}/sft`).
    """
    from trl import SFTConfig, SFTTrainer, get_peft_config, get_quantization_config

    output_dir = script_args.sft_output_dir or os.path.join(training_args.output_dir, "sft")
    dataset = load_split(
        script_args.sft_dataset_name,
        script_args.sft_dataset_train_split,
        config=script_args.sft_dataset_config,
        data_files=script_args.sft_dataset_data_files,
        argument="sft_dataset_name",
    )
    if script_args.sft_text_column is not None:
        columns = _column_names(dataset)
        if script_args.sft_text_column not in columns:
            raise ValueError(
                f"`--sft_text_column {script_args.sft_text_column}`: the SFT dataset has no such column; its columns "
                f"are {columns}."
            )
        first = next(iter(dataset))[script_args.sft_text_column]
        target = "text" if isinstance(first, str) else "messages"
        dataset = dataset.select_columns([script_args.sft_text_column])
        if script_args.sft_text_column != target:
            dataset = dataset.rename_column(script_args.sft_text_column, target)
    sft_args = SFTConfig(
        output_dir=output_dir,
        max_steps=script_args.sft_steps or -1,
        num_train_epochs=1,
        learning_rate=script_args.sft_learning_rate,
        max_length=script_args.sft_max_length,
        per_device_train_batch_size=training_args.per_device_train_batch_size,
        gradient_accumulation_steps=training_args.gradient_accumulation_steps,
        gradient_checkpointing=training_args.gradient_checkpointing,
        bf16=training_args.bf16,
        fp16=training_args.fp16,
        use_cpu=training_args.use_cpu,
        seed=training_args.seed,
        logging_steps=training_args.logging_steps,
        report_to=training_args.report_to,
        save_strategy="no",
        model_init_kwargs=training_args.model_init_kwargs,
    )
    trainer = SFTTrainer(
        model=model_args.model_name_or_path,
        args=sft_args,
        train_dataset=dataset,
        peft_config=get_peft_config(model_args),
        quantization_config=get_quantization_config(model_args),
    )
    trainer.train()
    model = trainer.accelerator.unwrap_model(trainer.model)
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    if trainer.accelerator.is_main_process:
        model.save_pretrained(output_dir)
        trainer.processing_class.save_pretrained(output_dir)
    trainer.accelerator.wait_for_everyone()
    trainer.accelerator.print(f"SFT stage done: model saved to {output_dir}.")
    del trainer, model
    return output_dir


# --- main ------------------------------------------------------------------------------------------------------------


def main(script_args: PLEScriptArguments, training_args, model_args):
    """
    Run the PLE training script: optional SFT stage, then [`PLETrainer`], then save (and push to the Hub).

    Args:
        script_args ([`PLEScriptArguments`]): dataset, rewards and SFT stage.
        training_args ([`PLEConfig`]): PLE and training configuration.
        model_args ([`~trl.ModelConfig`]): model, dtype and LoRA settings.

    Returns:
        [`PLETrainer`]: the trainer after training (its `state.log_history` holds the `ple/*` metrics).
    """
    from trl import get_peft_config, get_quantization_config

    from ..trainer import PLETrainer

    if model_args.model_name_or_path is None:
        raise ValueError(
            "No model: set `--model_name_or_path` (a Hub id or a local folder), on the command line or in the recipe."
        )
    model_init_kwargs = dict(
        revision=model_args.model_revision,
        trust_remote_code=training_args.trust_remote_code,
        attn_implementation=model_args.attn_implementation,
        dtype=model_args.dtype,
    )
    model_init_kwargs = {key: value for key, value in model_init_kwargs.items() if value is not None}
    if training_args.model_init_kwargs is not None:
        model_init_kwargs.update(training_args.model_init_kwargs)
    training_args.model_init_kwargs = model_init_kwargs

    reward_funcs = resolve_reward_funcs(script_args.reward_funcs, training_args.max_completion_length)
    if script_args.reward_classifier_name_or_path is not None:
        reward_funcs.append(
            ClassifierReward(script_args.reward_classifier_name_or_path, label=script_args.reward_classifier_label)
        )
    if not reward_funcs and training_args.reward_model_name_or_path is None:
        raise ValueError(
            "No reward: set `--reward_model_name_or_path` (a reward model), `--reward_funcs` (named reward functions, "
            f"e.g. one of {sorted(reward_funcs_registry())}) or `--reward_classifier_name_or_path`."
        )

    train_dataset = load_split(
        script_args.dataset_name,
        script_args.dataset_train_split,
        config=script_args.dataset_config,
        data_files=script_args.dataset_data_files,
        streaming=script_args.dataset_streaming,
    )
    train_dataset = prepare_prompt_dataset(train_dataset, script_args, script_args.max_train_samples)
    eval_dataset = None
    if training_args.eval_strategy != "no":
        eval_dataset = load_split(
            script_args.dataset_name,
            script_args.dataset_test_split,
            config=script_args.dataset_config,
            data_files=script_args.dataset_data_files,
            streaming=script_args.dataset_streaming,
        )
        eval_dataset = prepare_prompt_dataset(eval_dataset, script_args)

    model = model_args.model_name_or_path
    if script_args.has_sft_stage:
        model = run_sft_stage(script_args, training_args, model_args)

    trainer = PLETrainer(
        model=model,
        reward_funcs=reward_funcs,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        peft_config=get_peft_config(model_args),
        quantization_config=get_quantization_config(model_args),
    )
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.accelerator.print("Training completed.")
    trainer.save_model(training_args.output_dir)
    trainer.accelerator.print(f"Model saved to {training_args.output_dir}.")
    if training_args.push_to_hub:
        trainer.push_to_hub(dataset_name=script_args.dataset_name)
        trainer.accelerator.print(f"Model pushed to the Hub in https://huggingface.co/{trainer.hub_model_id}.")
    if hasattr(trainer, "end"):  # transformers >= 5.18: finish the trackers and the process group
        trainer.end()
    return trainer


def make_parser(subparsers: argparse._SubParsersAction | None = None, prog: str | None = None):
    """
    The script's [`~trl.TrlParser`] over ([`PLEScriptArguments`], [`PLEConfig`], [`~trl.ModelConfig`]).

    Args:
        subparsers (`argparse._SubParsersAction`, *optional*):
            Register the parser as the `train` subcommand of a CLI whose subparsers are created with
            `parser_class=TrlParser` (as TRL's CLI does).
        prog (`str`, *optional*):
            Program name shown in `--help`.

    Returns:
        [`~trl.TrlParser`]
    """
    from trl import ModelConfig, TrlParser

    from ..config import PLEConfig

    dataclass_types = (PLEScriptArguments, PLEConfig, ModelConfig)
    if subparsers is not None:
        return subparsers.add_parser(
            "train", help="Run PLE training (TRL-style script)", dataclass_types=dataclass_types
        )
    return TrlParser(dataclass_types, prog=prog)


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


def parse_args(argv: list[str] | None = None, prog: str | None = None):
    """
    Parse the command line (and the recipe, `--config recipe.yaml` or as first argument, by path or name) into the
    script's three dataclasses. Unknown keys, in the recipe or on the command line, are errors.

    Args:
        argv (`list[str]`, *optional*): the arguments; `sys.argv[1:]` when `None`.
        prog (`str`, *optional*): program name shown in `--help`.

    Returns:
        `tuple`: ([`PLEScriptArguments`], [`PLEConfig`], [`~trl.ModelConfig`]).
    """
    from .launch import resolve_recipe

    argv = config_argv(resolve_recipe(sys.argv[1:] if argv is None else argv))
    return make_parser(prog=prog).parse_args_and_config(argv)


def _parse_with_launch_options(argv: list[str], prog: str | None):
    """Parse `argv` (after [`config_argv`]) and return the three dataclasses and what the parser did not take."""
    *dataclasses, recipe_remaining, remaining = make_parser(prog=prog).parse_args_and_config(
        argv, return_remaining_strings=True, separate_remaining_strings=True
    )
    if recipe_remaining:
        recipe = argv[argv.index("--config") + 1]
        keys = [key.lstrip("-") for key in recipe_remaining if key.startswith("--")]
        raise ValueError(
            f"The recipe {recipe} has keys that no argument takes: {keys}. Fix their spelling or remove them; launch "
            "options (`num_processes`, ...) go on the command line."
        )
    return dataclasses, remaining


def launch_command(argv: list[str], prog: str | None = "ple-trl train") -> list[str] | None:
    """
    What `ple-trl train ARGV` runs: `None` when it trains in its own process, else the arguments of the
    `accelerate launch` it runs (`argv` holds `accelerate launch` options such as `--num_processes 2`,
    `--accelerate_config zero2`). Nothing is launched.

    Args:
        argv (`list[str]`): the arguments after `train`.
        prog (`str`, *optional*): program name shown in `--help`.

    Returns:
        `list[str]` or `None`: see [`~ple_trl.scripts.launch.launch_arguments`].
    """
    from .launch import launch_arguments, resolve_recipe

    argv = config_argv(resolve_recipe(argv))
    _, remaining = _parse_with_launch_options(argv, prog)
    return launch_arguments(argv, remaining) if remaining else None


def run(argv: list[str] | None = None, prog: str | None = "ple-trl train") -> int:
    """
    `ple-trl train [RECIPE] [--key value ...]`: parse the arguments (and the recipe, by path or name), then train, in
    this process, or through `accelerate launch` when `accelerate launch` options are given (`--num_processes 2`,
    `--accelerate_config zero2`, ...; see [`~ple_trl.scripts.launch`]), as `trl grpo` does.

    Args:
        argv (`list[str]`, *optional*): the arguments after `train`; `sys.argv[1:]` when `None`.
        prog (`str`, *optional*): program name shown in `--help`.

    Returns:
        `int`: the exit status: `0`, or that of the launched processes.
    """
    from .launch import launch, launch_arguments, resolve_recipe

    argv = config_argv(resolve_recipe(sys.argv[1:] if argv is None else argv))
    dataclasses, remaining = _parse_with_launch_options(argv, prog)
    if remaining:
        return launch(launch_arguments(argv, remaining))
    main(*dataclasses)
    return 0


if __name__ == "__main__":  # `python -m ple_trl.scripts.ple`, which `accelerate launch -m ple_trl.scripts.ple` runs
    sys.exit(run(prog="python -m ple_trl.scripts.ple"))
