"""Argument dataclasses shared by `ple-trl train` and `ple-trl eval`, so that each flag is declared once.

Both scripts read the same datasets and the same rewards: [`DataArguments`] (local files, column mapping, prompt
cutting) and [`RewardArguments`] (named reward functions, text classifier) are parents of
[`~ple_trl.scripts.ple.PLEScriptArguments`] and [`~ple_trl.scripts.eval.EvalArguments`]. No heavy import here:
`--help` reads these classes.
"""

from dataclasses import dataclass, field


@dataclass
class DataArguments:
    """
    How a dataset is read and mapped onto PLE's prompt formats (see [`ple_trl.data.map_to_prompts`]).

    Parameters:
        dataset_data_files (`list[str]` or `None`, *optional*, defaults to `None`):
            Local data files (`.json`, `.jsonl`, `.csv`, `.parquet`). Plain paths form the train split; `split=path`
            entries name their split (`train=a.jsonl test=b.jsonl`). `dataset_name` may also be a single such file.
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
    """

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

    def __post_init__(self):
        if self.prompt_max_words is not None and self.prompt_max_words < 1:
            raise ValueError(f"`--prompt_max_words {self.prompt_max_words}` must be >= 1 (or left unset).")


@dataclass
class RewardArguments:
    """
    Rewards given by name or by a text classifier (a reward model is `reward_model_name_or_path`, declared by each
    script: a [`~ple_trl.PLEConfig`] field in training).

    Parameters:
        reward_funcs (`list[str]` or `None`, *optional*, defaults to `None`):
            Named reward functions (see [`~ple_trl.rewards.reward_funcs_registry`]), dotted import paths of installed
            modules (`my_package.my_module.my_reward`) or local files (`path/to/my_rewards.py:my_reward`). `sys.path`
            is never changed, so a local file cannot shadow an installed package: a file in the current directory is
            loaded only through the `file.py:function` form.
        reward_classifier_name_or_path (`str` or `None`, *optional*, defaults to `None`):
            A text classifier whose probability of `reward_classifier_label` is a reward (e.g. a sentiment classifier
            with two labels, which a `reward_model_name_or_path` cannot be: reward models have a single output).
        reward_classifier_label (`str`, *optional*, defaults to `"POSITIVE"`):
            The classifier label whose probability is the reward (a name of its `id2label`, or an index).
    """

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
