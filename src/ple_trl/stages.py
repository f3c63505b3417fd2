"""What the stages run before PLE or SPA (the SFT stage, SPA's seed DPO stage) share: saving their model as a plain
one.

Nothing heavy is imported here: the CLI imports the stage runners lazily, and `ple-trl --help` must stay fast.
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
