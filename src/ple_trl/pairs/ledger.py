"""`docs/grpo_config_fields.md`, written from the tables of [`~ple_trl.pairs.grpo_fields`]:
`python -m ple_trl.pairs.ledger > docs/grpo_config_fields.md`."""

import dataclasses
import sys

from .config import PairConfig
from .grpo_fields import GRPO_FIELDS_HONOURED, GRPO_FIELDS_IGNORED, GRPO_ONLY_FIELDS

LEDGER_INTRO = """# GRPOConfig fields in PLE and SPA

[`PLEConfig`] and [`SPAConfig`] are [`~trl.GRPOConfig`]s (through `PairConfig`), so they have every field of GRPO. This
page says, for each field that `GRPOConfig` adds to `transformers.TrainingArguments`, what pair training does with it.
The fields of `TrainingArguments` itself (`learning_rate`, `per_device_train_batch_size`,
`gradient_accumulation_steps`, `max_steps`, `logging_steps`, `save_steps`, `bf16`, `gradient_checkpointing`,
`report_to`, ...) are honoured by `transformers.Trainer`, which both inherit unchanged; note only that
`per_device_train_batch_size` counts pairs (prompts). Their own fields are described in the `PLEConfig` and
`SPAConfig` docstrings and in [configuration.md](configuration.md).

This page is generated from `GRPO_FIELDS_HONOURED`, `GRPO_ONLY_FIELDS` and `GRPO_FIELDS_IGNORED` in
`src/ple_trl/pairs/grpo_fields.py` (`python -m ple_trl.pairs.ledger > docs/grpo_config_fields.md`, TRL {trl}):
`tests/test_grpo_fields.py` fails when TRL adds a field that none of them names, or when this page is stale. Defaults
are PLE's (they equal GRPO's except `num_generations`, 2 instead of 8, `vllm_importance_sampling_correction`, off, and
`beta`, 0; SPA's `beta` is 0.1 and its `temperature` 0.7).
"""


def _sentence(text: str) -> str:
    return text[0].upper() + text[1:] + ("" if text.endswith(".") else ".")


def ledger_markdown() -> str:
    """The page `docs/grpo_config_fields.md`: the three tables above, with the pair configs' defaults (PLE's)."""
    from importlib.metadata import version

    defaults = {f.name: f.default for f in dataclasses.fields(PairConfig)}

    def table(rows, third):
        lines = [f"| field | default | {third} |", "|---|---|---|"]
        lines += [f"| `{name}` | `{defaults[name]!r}` | {_sentence(text)} |" for name, text in rows.items()]
        return "\n".join(lines)

    return "\n".join(
        [
            LEDGER_INTRO.format(trl=version("trl")),
            "## Honoured: the field is used",
            "",
            table(GRPO_FIELDS_HONOURED, "what PLE and SPA do with it"),
            "",
            "## Refused: a non-default value is an error",
            "",
            "These belong to GRPO's advantage, clipping, importance-sampling, entropy, reference-sync or tool "
            "machinery,\nwhich pair training does not have. Setting one to anything but its default raises when "
            "the config is built:\n``ValueError: `loss_type='grpo'` is a GRPO setting that PLE does not use: the "
            "pair loss is the trainer's own\n(...). Remove it (default: 'dapo').`` The reason given for each field:",
            "",
            table(GRPO_ONLY_FIELDS, "reason in the error"),
            "",
            "## Ignored on purpose: accepted, without effect",
            "",
            table(GRPO_FIELDS_IGNORED, "why it has no meaning for pairs"),
            "",
        ]
    )


if __name__ == "__main__":
    sys.stdout.write(ledger_markdown())
