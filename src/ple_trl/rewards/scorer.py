"""The one reward-model scorer: a sequence-classification model as a reward function.

Training's script path (`--reward_classifier_name_or_path`), `ple-trl eval` and the `reward_score` / `win_rate`
metrics all score through [`RewardModelScorer`], so a model reads the same text, truncated the same way, wherever it
scores. Long texts lose their *start*, as in training ([`LeftTruncatingRewardModel`]): the answer, at the end, is what
a reward judges.

```python
from ple_trl.rewards import RewardModelScorer

reward = RewardModelScorer("OpenAssistant/reward-model-deberta-v3-large-v2")       # one output: its logit
positive = RewardModelScorer("lvwerra/distilbert-imdb", label="POSITIVE")          # a label's probability
positive(prompts=["This film"], completions=[" is a delight."])                    # [0.99...]
```
"""

import os

import torch
from torch import nn

from ..errors import preview
from .model import LeftTruncatingRewardModel, reward_model_max_length

__all__ = ["RewardModelScorer"]


def _is_conversation(value) -> bool:
    return isinstance(value, (list, tuple)) and all(isinstance(m, dict) and "content" in m for m in value)


def _leading_special_tokens(tokenizer) -> int:
    """How many special tokens the tokenizer puts before a text (1 for BERT's `[CLS]`, 0 for most decoders)."""
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a", add_special_tokens=True)["input_ids"]
    return next((i for i in range(len(full)) if full[i : i + len(plain)] == plain), 0)


class RewardModelScorer:
    """
    Score `(prompt, completion)` pairs with a sequence-classification model, in TRL's reward-function signature
    `f(prompts, completions, **kwargs) -> list[float]`.

    The text of a pair is `prompt + completion` for strings and the model tokenizer's chat template over the
    messages for conversations (as TRL's [`~trl.GRPOTrainer`] builds reward-model inputs). Texts are scored in
    batches, padded on the right; a text longer than `max_length` tokens loses its first tokens (its special prefix
    such as `[CLS]` kept), so the answer is always what is scored.

    Args:
        model (`str`, `os.PathLike` or [`~transformers.PreTrainedModel`]):
            A sequence-classification model or its path / Hub id. A path is loaded on `device`; an instance is used
            on its own device, as is.
        tokenizer (`str`, `os.PathLike`, [`~transformers.PreTrainedTokenizerBase`] or `None`, *optional*):
            Its tokenizer or the tokenizer's path; defaults to the model's path. Required with a model instance.
        label (`str`, `int` or `None`, *optional*, defaults to `None`):
            `None`: the model has one output, whose logit is the reward (a reward model). Otherwise the reward is the
            probability (softmax) of this label of a classifier: a name of its `id2label` (case-insensitive) or an
            index, e.g. `"POSITIVE"` for a sentiment classifier.
        sigmoid (`bool`, *optional*, defaults to `False`):
            Return `sigmoid(logit)` (in (0, 1)) instead of the logit of a one-output reward model.
        batch_size (`int`, *optional*, defaults to `16`):
            Texts per forward pass.
        max_length (`int` or `None`, *optional*, defaults to `None`):
            The longest text, in tokens; `None` takes the tokenizer's `model_max_length`, else the model's
            `max_position_embeddings` (see [`reward_model_max_length`]).
        add_special_tokens (`bool` or `None`, *optional*, defaults to `None`):
            Let the tokenizer add its special tokens. `None`: yes for a classifier (`label` set: such models are
            trained with their `[CLS]`/`[SEP]`), no for a reward model (as TRL's reward plumbing tokenizes).
        device (`str`, `torch.device` or `None`, *optional*, defaults to `None`):
            Where a model given by path goes; `None` is the process's accelerator (`accelerate.PartialState`).
    """

    def __init__(
        self,
        model,
        tokenizer=None,
        *,
        label: str | int | None = None,
        sigmoid: bool = False,
        batch_size: int = 16,
        max_length: int | None = None,
        add_special_tokens: bool | None = None,
        device=None,
    ):
        for name, value in (("batch_size", batch_size), ("max_length", max_length)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"`{name}`={preview(value)} must be a positive integer, e.g. {name}=8.")
        if sigmoid and label is not None:
            raise ValueError(
                f"`sigmoid=True` with `label={label!r}`: a label's probability is already in [0, 1]. Drop one of them."
            )
        self.model, self.tokenizer = self._load(model, tokenizer, device)
        config = self.model.config
        self.label_index = None
        if label is not None:
            self.label_index = self._label_index(str(label), config, model)
        elif getattr(config, "num_labels", None) != 1:
            raise ValueError(
                f"`reward_model` has num_labels={getattr(config, 'num_labels', None)}, but a reward model must output "
                "one score per sequence: use a model with `num_labels=1`, or pass `label=` (a label of its "
                f"`id2label`, {sorted(getattr(config, 'id2label', {}).values())}) to score a label's probability."
            )
        if self.tokenizer.pad_token_id is None:
            raise ValueError(
                "`reward_tokenizer` has no pad token (pad_token=None), so pairs cannot be batched; set one first, "
                "e.g. `reward_tokenizer.pad_token = reward_tokenizer.eos_token`."
            )
        if getattr(config, "pad_token_id", None) is None:
            raise ValueError(
                "`reward_model.config.pad_token_id` is None, so the model cannot find the last token of a padded "
                "sequence; set `reward_model.config.pad_token_id = reward_tokenizer.pad_token_id`."
            )
        self.sigmoid = sigmoid
        self.batch_size = batch_size
        self.add_special_tokens = label is not None if add_special_tokens is None else add_special_tokens
        max_length = max_length or reward_model_max_length(self.tokenizer, self.model)
        keep_first = _leading_special_tokens(self.tokenizer) if self.add_special_tokens else 0
        self.truncated_model = (
            LeftTruncatingRewardModel(self.model, max_length, keep_first) if max_length is not None else self.model
        )
        path = os.fspath(model) if isinstance(model, (str, os.PathLike)) else config._name_or_path or "reward_model"
        name = os.path.basename(os.path.normpath(path))
        self.__name__ = name if label is None else f"{name}_{label}"

    @staticmethod
    def _load(model, tokenizer, device):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        if isinstance(model, (str, os.PathLike)):
            from accelerate import PartialState

            path = os.fspath(model)
            model = AutoModelForSequenceClassification.from_pretrained(path)
            model.to(device if device is not None else PartialState().device)
            tokenizer = path if tokenizer is None else tokenizer
        elif isinstance(model, nn.Module):
            if tokenizer is None:
                raise ValueError(
                    "`reward_tokenizer`=None, but `reward_model` is a model instance: pass its tokenizer as "
                    "`reward_tokenizer=` (or pass the model's path as `reward_model=` to load both)."
                )
        else:
            raise ValueError(
                f"`reward_model`={preview(model)} must be a path to a sequence-classification model or a "
                "`PreTrainedModel` instance."
            )
        if isinstance(tokenizer, (str, os.PathLike)):
            tokenizer = AutoTokenizer.from_pretrained(os.fspath(tokenizer))
        if not callable(getattr(tokenizer, "apply_chat_template", None)):
            raise ValueError(
                f"`reward_tokenizer`={preview(tokenizer)} is not a tokenizer; pass a `PreTrainedTokenizerBase` or "
                "its path."
            )
        return model, tokenizer

    @staticmethod
    def _label_index(label: str, config, model) -> int:
        num_labels = getattr(config, "num_labels", 1)
        labels = {str(name).lower(): int(index) for index, name in config.id2label.items()}
        if label.lower() in labels:
            index = labels[label.lower()]
        elif label.isdigit() and int(label) < num_labels:
            index = int(label)
        else:
            raise ValueError(
                f"`label={label!r}` (`--reward_classifier_label`) is not a label of {preview(model)}, whose labels "
                f"are {sorted(config.id2label.values())}. Use one of them, or an index below {num_labels}."
            )
        if num_labels < 2:
            raise ValueError(
                f"{preview(model)} has a single output, so it is a reward model, not a classifier: leave `label` "
                "unset (on the command line: pass it as `--reward_model_name_or_path` instead of "
                "`--reward_classifier_name_or_path`)."
            )
        return index

    def texts(self, prompts, completions) -> list[str]:
        """
        The text the model scores for each pair.

        Args:
            prompts (`list[str]` or `list[list[dict]]`): the prompts.
            completions (`list[str]` or `list[list[dict]]`): the completions, in the prompts' format.

        Returns:
            `list[str]`
        """
        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions: pass one completion each.")
        texts = []
        for i, (prompt, completion) in enumerate(zip(prompts, completions)):
            if isinstance(prompt, str) and isinstance(completion, str):
                texts.append(prompt + completion)
            elif _is_conversation(prompt) and _is_conversation(completion):
                if not getattr(self.tokenizer, "chat_template", None):
                    raise ValueError(
                        "The inputs are conversational but `reward_tokenizer` has no chat template (chat_template="
                        "None); set `reward_tokenizer.chat_template` or pass prompts and completions as strings."
                    )
                texts.append(self.tokenizer.apply_chat_template(list(prompt) + list(completion), tokenize=False))
            else:
                raise ValueError(
                    f"Pair {i}: prompt {preview(prompt)} and completion {preview(completion)} must both be strings "
                    "or both be lists of `{'role', 'content'}` messages."
                )
        return texts

    def __call__(self, prompts, completions, **kwargs) -> list[float]:
        from ..device import eval_mode

        texts = self.texts(prompts, completions)
        device = next(self.model.parameters()).device
        rewards = []
        with eval_mode(self.model), torch.no_grad():
            for start in range(0, len(texts), self.batch_size):
                batch = self.tokenizer(
                    texts[start : start + self.batch_size],
                    padding=True,
                    padding_side="right",
                    add_special_tokens=self.add_special_tokens,
                    return_tensors="pt",
                )
                empty = (batch["attention_mask"].sum(dim=-1) == 0).nonzero().flatten().tolist()
                if empty:
                    raise ValueError(
                        f"Pair {start + empty[0]} is empty after tokenization (text "
                        f"{preview(texts[start + empty[0]])}); give every pair some text to score."
                    )
                logits = self.truncated_model(
                    input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device)
                ).logits.float()
                if self.label_index is not None:
                    scores = logits.softmax(dim=-1)[:, self.label_index]
                else:
                    scores = logits[:, 0].sigmoid() if self.sigmoid else logits[:, 0]
                rewards.extend(scores.cpu().tolist())
        return rewards
