"""
The stages a recipe runs before PLE or SPA, in order: the initial SFT ([`run_sft`], Algorithm 1, line 1) and SPA's
seed DPO ([`run_seed_dpo`]), each saving its model as a plain one ([`save_merged_model`]) for the next stage to load
by path. `ple-trl train`, the example script and `ple-trl demo` call these.

Nothing heavy is imported at module level: `ple-trl --help` must stay fast.
"""


def save_merged_model(trainer, output_dir: str, stage: str) -> str:
    """
    Save a stage's trained model in `output_dir` as a plain model (a LoRA adapter is merged first), with its tokenizer,
    so that the next stage loads it by path and can train a fresh adapter on it.

    Args:
        trainer ([`~transformers.Trainer`]): the stage's trainer after `train()` (TRL's `SFTTrainer`, `DPOTrainer`).
        output_dir (`str`): where the model and its tokenizer are saved.
        stage (`str`): the stage's name in the printed line, e.g. `"SFT stage"`.

    Returns:
        `str`: `output_dir`.
    """
    model = trainer.accelerator.unwrap_model(trainer.model)
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    # One writer: every process holds the same weights; the others wait until the files are complete.
    if trainer.accelerator.is_main_process:
        model.save_pretrained(output_dir)
        trainer.processing_class.save_pretrained(output_dir)
    trainer.accelerator.wait_for_everyone()
    trainer.accelerator.print(f"{stage} done: model saved to {output_dir}.")
    return output_dir


def run_sft(model, train_dataset, output_dir: str, peft_config=None, quantization_config=None, **sft_kwargs) -> str:
    """
    Algorithm 1, line 1: supervised fine-tuning of the initial model with TRL's [`~trl.SFTTrainer`]. A LoRA adapter is
    merged before saving, so that the next stage starts from a plain model (and trains a fresh adapter on it).

    Args:
        model (`str` or [`~transformers.PreTrainedModel`]): the model to train (path, Hub id or model).
        train_dataset: SFT data (`text`, `messages`, or `prompt`/`completion`), as for `SFTTrainer`.
        output_dir (`str`): where the SFT model is saved.
        peft_config ([`~peft.PeftConfig`], *optional*): train an adapter (merged before saving).
        quantization_config (*optional*): quantization of a model loaded from a path.
        **sft_kwargs: fields of [`~trl.SFTConfig`] (`max_steps`, `learning_rate`, batch sizes, precision...).

    Returns:
        `str`: `output_dir`, holding the SFT model and its tokenizer.
    """
    from trl import SFTConfig, SFTTrainer

    sft_kwargs.setdefault("save_strategy", "no")
    trainer = SFTTrainer(
        model=model,
        args=SFTConfig(output_dir=output_dir, **sft_kwargs),
        train_dataset=train_dataset,
        peft_config=peft_config,
        quantization_config=quantization_config,
    )
    return _train_and_save(trainer, output_dir, "SFT stage")


def run_seed_dpo(model, train_dataset, output_dir: str, peft_config=None, processing_class=None, **dpo_kwargs) -> str:
    """
    SPA's seed stage: TRL's [`~trl.DPOTrainer`] on a small human-labelled preference set (the paper: 2,000
    UltraFeedback pairs, 3.3%), before the SPA iterations. A LoRA adapter is merged, so that SPA starts from a plain
    model; pass the model the seed stage started from to [`~ple_trl.SPATrainer`] as `ref_model` (`pi_init`).

    Args:
        model (`str` or [`~transformers.PreTrainedModel`]): the model to train (path, Hub id or model).
        train_dataset: preference data (`prompt`/`chosen`/`rejected`, or implicit prompt), as for `DPOTrainer`.
        output_dir (`str`): where the seed model is saved.
        peft_config ([`~peft.PeftConfig`], *optional*): train an adapter (merged before saving).
        processing_class (*optional*): the tokenizer; loaded from the model when `None`.
        **dpo_kwargs: fields of [`~trl.DPOConfig`] (`beta`, `learning_rate`, `max_steps`, batch sizes, precision...).

    Returns:
        `str`: `output_dir`, holding the seed model and its tokenizer.
    """
    from trl import DPOConfig, DPOTrainer

    dpo_kwargs.setdefault("save_strategy", "no")
    dpo_kwargs.setdefault("report_to", "none")
    trainer = DPOTrainer(
        model=model,
        args=DPOConfig(output_dir=output_dir, **dpo_kwargs),
        train_dataset=train_dataset,
        processing_class=processing_class,
        peft_config=peft_config,
    )
    return _train_and_save(trainer, output_dir, "SPA seed stage (DPO)")


def _train_and_save(trainer, output_dir: str, stage: str) -> str:
    trainer.train()
    save_merged_model(trainer, output_dir, stage)
    del trainer
    return output_dir
