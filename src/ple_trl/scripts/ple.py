"""The PLE training script, shared by `examples/scripts/ple.py` and `ple-trl train`.

It is TRL's `grpo.py` / `dpo.py` script with what PLE users need on top:

- the dataset comes from the Hub, from a folder saved with `save_to_disk`, or from local `json`/`jsonl`/`csv`/`parquet`
  files (`--dataset_name data.jsonl` or `--dataset_data_files train=a.jsonl test=b.jsonl`);
- columns are mapped onto PLE's formats (`--prompt_column text`, `--chosen_column`, ...) and text prompts can be cut to
  their first words (`--prompt_max_words 8`: IMDb's review prefixes);
- rewards are a reward model (`--reward_model_name_or_path`, a [`PLEConfig`] field), named reward functions
  (`--reward_funcs vader_sentiment think_format_reward my_package.my_reward my_rewards.py:my_reward`, see
  [`~ple_trl.rewards.reward_funcs_registry`] and [`~ple_trl.rewards.load_reward_func`]) and/or a
  text classifier's label probability (`--reward_classifier_name_or_path lvwerra/distilbert-imdb`);
- an optional SFT stage runs TRL's [`~trl.SFTTrainer`] on a separate dataset first (Algorithm 1, line 1:
  `--sft_dataset_name ... --sft_steps N`); PLE then starts from its output (a LoRA adapter is merged first).

Arguments come from the command line and/or a YAML recipe (`--config recipe.yaml`, or the recipe path as first
argument); command-line values override the recipe's.
"""

import argparse
import os
import sys
from dataclasses import dataclass, field

from trl import ScriptArguments

from .arguments import DataArguments, RewardArguments
from .utils import config_argv, load_recipe

@dataclass
class PLEScriptArguments(RewardArguments, DataArguments, ScriptArguments):
    """
    Script arguments of the PLE training script, on top of [`~trl.ScriptArguments`] (`dataset_name`,
    `dataset_config`, `dataset_train_split`, `dataset_test_split`, `dataset_streaming`), [`DataArguments`] (local data
    files, column mapping, prompt cutting) and [`RewardArguments`] (`reward_funcs`, the reward classifier).

    Parameters that control the dataset:
        max_train_samples (`int` or `None`, *optional*, defaults to `None`):
            Use at most this many training prompts (quick runs).

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

    Parameters that choose the method (and SPA's seed stage):
        method (`str`, *optional*, defaults to `"ple"`):
            `"ple"` ([`PLETrainer`], the training arguments are a [`PLEConfig`]) or `"spa"` ([`SPATrainer`], the
            training arguments are an [`SPAConfig`]; no reward: SPA labels its answers with its implicit reward).
        seed_dataset_name (`str` or `None`, *optional*, defaults to `None`):
            SPA only: preference data (`prompt`/`chosen`/`rejected`) of the seed stage, TRL's `DPOTrainer` run before
            SPA (Hub id, saved folder or data file). SPA's `pi_init` is then the model the seed stage started from.
        seed_dataset_config (`str` or `None`, *optional*, defaults to `None`):
            Configuration name of the seed dataset.
        seed_dataset_data_files (`list[str]` or `None`, *optional*, defaults to `None`):
            Local data files of the seed dataset.
        seed_dataset_train_split (`str`, *optional*, defaults to `"train"`):
            Split of the seed dataset.
        seed_steps (`int` or `None`, *optional*, defaults to `None`):
            Optimizer steps of the seed stage; `None` trains one epoch, `0` switches the stage off.
        seed_learning_rate (`float`, *optional*, defaults to `5e-6`):
            Learning rate of the seed stage.
        seed_beta (`float`, *optional*, defaults to `0.1`):
            DPO's `beta` in the seed stage.
        seed_max_length (`int`, *optional*, defaults to `512`):
            Maximum tokenised length of a seed example (prompt and answer).
        seed_output_dir (`str` or `None`, *optional*, defaults to `None`):
            Where the seed model is saved; defaults to `{output_dir}/seed`.
    """

    # Parameters that control the dataset
    max_train_samples: int | None = field(default=None, metadata={"help": "Use at most this many training prompts."})

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

    # Parameters that choose the method (and SPA's seed stage)
    method: str = field(default="ple", metadata={"help": "`ple` or `spa`.", "choices": ["ple", "spa"]})
    seed_dataset_name: str | None = field(
        default=None, metadata={"help": "SPA: preference data of the seed DPO stage (Hub id, folder or data file)."}
    )
    seed_dataset_config: str | None = field(default=None, metadata={"help": "Configuration of the seed dataset."})
    seed_dataset_data_files: list[str] | None = field(
        default=None, metadata={"help": "Local data files of the seed dataset."}
    )
    seed_dataset_train_split: str = field(default="train", metadata={"help": "Split of the seed dataset."})
    seed_steps: int | None = field(
        default=None, metadata={"help": "Optimizer steps of the seed stage (None: one epoch; 0: no seed stage)."}
    )
    seed_learning_rate: float = field(default=5e-6, metadata={"help": "Learning rate of the seed stage."})
    seed_beta: float = field(default=0.1, metadata={"help": "DPO's beta in the seed stage."})
    seed_max_length: int = field(default=512, metadata={"help": "Maximum tokenised length of a seed example."})
    seed_output_dir: str | None = field(
        default=None, metadata={"help": "Where the seed model is saved (default: `{output_dir}/seed`)."}
    )

    def __post_init__(self):
        super().__post_init__()
        if self.method not in ("ple", "spa"):
            raise ValueError(f"`--method {self.method}`: use `ple` or `spa`.")
        has_seed = self.seed_dataset_name is not None or bool(self.seed_dataset_data_files)
        if has_seed and self.method != "spa":
            raise ValueError(
                "`--seed_dataset_name`/`--seed_dataset_data_files` set the seed DPO stage of SPA: add `--method spa`, "
                "or drop them."
            )
        if self.seed_steps is not None and self.seed_steps < 0:
            raise ValueError(f"`--seed_steps {self.seed_steps}` must be >= 0 (0 switches the seed stage off).")
        if self.max_train_samples is not None and self.max_train_samples < 1:
            raise ValueError(f"`--max_train_samples {self.max_train_samples}` must be >= 1 (or left unset).")
        if self.sft_steps is not None and self.sft_steps < 0:
            raise ValueError(f"`--sft_steps {self.sft_steps}` must be >= 0 (0 switches the SFT stage off).")
        if self.sft_steps and not self.has_sft_dataset:
            raise ValueError(
                f"`--sft_steps {self.sft_steps}` is set but there is no SFT dataset. Add `--sft_dataset_name` (or "
                "`--sft_dataset_data_files`), or drop `--sft_steps`."
            )

    @property
    def has_sft_dataset(self) -> bool:
        return self.sft_dataset_name is not None or bool(self.sft_dataset_data_files)

    @property
    def has_sft_stage(self) -> bool:
        return self.has_sft_dataset and self.sft_steps != 0

    @property
    def has_seed_stage(self) -> bool:
        has_seed = self.seed_dataset_name is not None or bool(self.seed_dataset_data_files)
        return self.method == "spa" and has_seed and self.seed_steps != 0


# --- rewards ---------------------------------------------------------------------------------------------------------


# --- SFT stage -------------------------------------------------------------------------------------------------------

# What a stage run before PLE or SPA (SFT, SPA's seed DPO) takes from the run's training arguments: the same batch
# size, precision, logging, seed and model loading; its dataset, steps and learning rate are its own.
_RUN_SETTINGS = (
    "per_device_train_batch_size", "gradient_accumulation_steps", "gradient_checkpointing", "bf16", "fp16", "use_cpu",
    "seed", "logging_steps", "report_to", "model_init_kwargs",
)  # fmt: skip


def _run_settings(training_args) -> dict:
    return {name: getattr(training_args, name) for name in _RUN_SETTINGS}


def run_sft_stage(script_args: PLEScriptArguments, training_args, model_args) -> str:
    """
    Algorithm 1, line 1: supervised fine-tuning of the initial model with TRL's [`~trl.SFTTrainer`].

    The SFT run uses the PLE run's batch size, precision, logging, seed and LoRA settings (`--use_peft`), with its own
    dataset, steps and learning rate (`sft_*` arguments). A LoRA adapter is merged into the model before it is saved,
    so that PLE starts from a plain model (and trains a fresh adapter on it).

    Args:
        script_args ([`PLEScriptArguments`]): the script arguments (`sft_*`).
        training_args ([`PLEConfig`]): the PLE run's configuration.
        model_args ([`~trl.ModelConfig`]): the model and LoRA settings.

    Returns:
        `str`: the folder of the SFT model (`sft_output_dir`, default `{output_dir}/sft`).
    """
    from trl import get_peft_config, get_quantization_config

    from ..data import dataset_columns, load_split
    from ..stages import run_sft

    output_dir = script_args.sft_output_dir or os.path.join(training_args.output_dir, "sft")
    dataset = load_split(
        script_args.sft_dataset_name,
        script_args.sft_dataset_train_split,
        config=script_args.sft_dataset_config,
        data_files=script_args.sft_dataset_data_files,
        argument="sft_dataset_name",
    )
    if script_args.sft_text_column is not None:
        columns = dataset_columns(dataset)
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
    return run_sft(
        model_args.model_name_or_path,
        dataset,
        output_dir,
        peft_config=get_peft_config(model_args),
        quantization_config=get_quantization_config(model_args),
        max_steps=script_args.sft_steps or -1,
        num_train_epochs=1,
        learning_rate=script_args.sft_learning_rate,
        max_length=script_args.sft_max_length,
        **_run_settings(training_args),
    )


# --- main ------------------------------------------------------------------------------------------------------------


def _prompts_and_start_model(script_args: PLEScriptArguments, training_args, model_args):
    """
    What `--method ple` and `--method spa` start from: the prompt datasets (`train`, and `test` when `eval_strategy`
    is set) and the model (the SFT stage's output when that stage runs, else `model_name_or_path`).

    Returns:
        `tuple`: (train dataset, eval dataset or `None`, model path or Hub id).
    """
    from ..data import load_split, map_to_prompts

    def load(split, max_samples=None):
        dataset = load_split(
            script_args.dataset_name,
            split,
            config=script_args.dataset_config,
            data_files=script_args.dataset_data_files,
            streaming=script_args.dataset_streaming,
        )
        return map_to_prompts(dataset, script_args, max_samples)

    train_dataset = load(script_args.dataset_train_split, script_args.max_train_samples)
    eval_dataset = load(script_args.dataset_test_split) if training_args.eval_strategy != "no" else None
    model = model_args.model_name_or_path
    if script_args.has_sft_stage:
        model = run_sft_stage(script_args, training_args, model_args)
    return train_dataset, eval_dataset, model


_NO_PI_INIT = (
    "`{option}` scores answers with the implicit reward `log pi_judge - log pi_init`, which needs a `pi_init` other "
    "than the model it trains: with no stage before training, every reward would be exactly 0. Add {stages}: the "
    "model that stage starts from is then `pi_init`."
)


def _train_and_save(trainer, script_args: PLEScriptArguments, training_args):
    """Train (resuming when asked), save to `output_dir`, push to the Hub when asked; returns the trainer."""
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

    from ..rewards import RewardModelScorer, resolve_reward_funcs, reward_funcs_registry
    from ..ple.trainer import PLETrainer

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

    if script_args.method == "spa":
        return main_spa(script_args, training_args, model_args)
    reward_funcs = resolve_reward_funcs(script_args.reward_funcs, training_args.max_completion_length)
    if script_args.reward_classifier_name_or_path is not None:
        reward_funcs.append(
            RewardModelScorer(script_args.reward_classifier_name_or_path, label=script_args.reward_classifier_label)
        )
    implicit = training_args.reward_source == "implicit"
    if not reward_funcs and training_args.reward_model_name_or_path is None and not implicit:
        raise ValueError(
            "No reward: set `--reward_model_name_or_path` (a reward model), `--reward_funcs` (named reward functions, "
            f"e.g. one of {sorted(reward_funcs_registry())}) or `--reward_classifier_name_or_path`."
        )

    if implicit and not script_args.has_sft_stage:
        raise ValueError(
            _NO_PI_INIT.format(option="--reward_source implicit", stages="an SFT stage (`--sft_dataset_name`)")
        )
    train_dataset, eval_dataset, model = _prompts_and_start_model(script_args, training_args, model_args)
    trainer = PLETrainer(
        model=model,
        # The implicit reward's pi_init: the model the SFT stage started from.
        ref_model=model_args.model_name_or_path if implicit else None,
        reward_funcs=reward_funcs or None,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        peft_config=get_peft_config(model_args),
        quantization_config=get_quantization_config(model_args),
    )
    return _train_and_save(trainer, script_args, training_args)


def run_seed_stage(script_args: PLEScriptArguments, training_args, model_args, model: str) -> str:
    """SPA's seed stage: TRL's `DPOTrainer` on the seed preference set (see [`~ple_trl.stages.run_seed_dpo`])."""
    from trl import get_peft_config

    from ..data import load_split
    from ..stages import run_seed_dpo

    dataset = load_split(
        script_args.seed_dataset_name,
        script_args.seed_dataset_train_split,
        config=script_args.seed_dataset_config,
        data_files=script_args.seed_dataset_data_files,
        argument="seed_dataset_name",
    )
    return run_seed_dpo(
        model,
        dataset,
        script_args.seed_output_dir or os.path.join(training_args.output_dir, "seed"),
        peft_config=get_peft_config(model_args),
        max_steps=script_args.seed_steps or -1,
        num_train_epochs=1,
        learning_rate=script_args.seed_learning_rate,
        beta=script_args.seed_beta,
        max_length=script_args.seed_max_length,
        **_run_settings(training_args),
    )


def main_spa(script_args: PLEScriptArguments, training_args, model_args):
    """
    `--method spa`: optional SFT stage, optional seed DPO stage, then [`SPATrainer`] on the prompts, then save.
    `pi_init` is the model the seed stage started from (the SFT model, or `model_name_or_path`).
    """
    from trl import get_peft_config, get_quantization_config

    from ..spa.trainer import SPATrainer

    if script_args.reward_funcs or script_args.reward_classifier_name_or_path is not None:
        raise ValueError(
            "`--method spa` labels its answers with the model's implicit reward and takes no reward: drop "
            "`--reward_funcs`/`--reward_classifier_name_or_path`, or use `--method ple` (or PLE with "
            "`--reward_source implicit`)."
        )

    if not script_args.has_seed_stage and not script_args.has_sft_stage:
        raise ValueError(
            _NO_PI_INIT.format(
                option="--method spa",
                stages="a seed DPO stage (`--seed_dataset_name`) or an SFT stage (`--sft_dataset_name`)",
            )
        )
    train_dataset, eval_dataset, model = _prompts_and_start_model(script_args, training_args, model_args)
    # pi_init: the model the seed stage started from, else the model the SFT stage started from.
    ref_model = model_args.model_name_or_path
    if script_args.has_seed_stage:
        ref_model, model = model, run_seed_stage(script_args, training_args, model_args, model)
    trainer = SPATrainer(
        model=model,
        ref_model=ref_model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        peft_config=get_peft_config(model_args),
        quantization_config=get_quantization_config(model_args),
    )
    return _train_and_save(trainer, script_args, training_args)


def _method_of(argv: list[str]) -> str:
    """`--method` from the command line, else from the recipe (`method:`), else `ple`: it chooses the config class."""
    for i, arg in enumerate(argv):
        if arg == "--method" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--method="):
            return arg.split("=", 1)[1]
    if "--config" in argv:
        return str(load_recipe(argv[argv.index("--config") + 1]).get("method", "ple"))
    return "ple"


def make_parser(subparsers: argparse._SubParsersAction | None = None, prog: str | None = None, method: str = "ple"):
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

    from ..ple.config import PLEConfig
    from ..spa.config import SPAConfig

    dataclass_types = (PLEScriptArguments, SPAConfig if method == "spa" else PLEConfig, ModelConfig)
    if subparsers is not None:
        return subparsers.add_parser(
            "train", help="Run PLE training (TRL-style script)", dataclass_types=dataclass_types
        )
    return TrlParser(dataclass_types, prog=prog)


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
    return make_parser(prog=prog, method=_method_of(argv)).parse_args_and_config(argv)


def _parse_with_launch_options(argv: list[str], prog: str | None):
    """Parse `argv` (after [`config_argv`]) and return the three dataclasses and what the parser did not take."""
    *dataclasses, recipe_remaining, remaining = make_parser(prog=prog, method=_method_of(argv)).parse_args_and_config(
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
