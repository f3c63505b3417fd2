"""Reward models kept within the length they were trained for."""

import torch
from torch import nn

_NO_LIMIT = 1_000_000  # tokenizers without a length limit report a huge `model_max_length` (int(1e30))


def reward_model_max_length(tokenizer, model) -> int | None:
    """
    The longest input a reward model takes: its tokenizer's `model_max_length`, else the model's
    `max_position_embeddings`, else `None` (no known limit).

    Args:
        tokenizer ([`~transformers.PreTrainedTokenizerBase`] or `None`): the reward model's tokenizer.
        model ([`~transformers.PreTrainedModel`]): the reward model.

    Returns:
        `int` or `None`.
    """
    max_length = getattr(tokenizer, "model_max_length", None)
    if max_length is None or max_length >= _NO_LIMIT:
        config = getattr(model, "config", None)
        max_length = getattr(config, "max_position_embeddings", None) if config is not None else None
    return max_length


class LeftTruncatingRewardModel(nn.Module):
    """
    A sequence-classification reward model that sees at most `max_length` tokens per (prompt, answer) text.

    Longer texts lose their *first* tokens: the answer, at the end, is what the reward judges, and a reward model
    reads its score at the last real token. Inputs are right-padded, as TRL's reward plumbing builds them. Used by
    [`PLETrainer`] to wrap every reward model, so a long dialogue never overflows, e.g., a 512-token reward model.

    Args:
        model (`torch.nn.Module`): the reward model; called as `model(input_ids=..., attention_mask=...)`.
        max_length (`int`): the longest input to pass on.
        keep_first (`int`, *optional*, defaults to `0`):
            Tokens always kept at the start of a long text, e.g. the `[CLS]` a BERT-style classifier reads its label
            from; the rest of `max_length` goes to the end of the text.
    """

    def __init__(self, model: nn.Module, max_length: int, keep_first: int = 0):
        super().__init__()
        if max_length < 1:
            raise ValueError(f"`max_length={max_length}` must be >= 1.")
        if not 0 <= keep_first < max_length:
            raise ValueError(f"`keep_first={keep_first}` must be >= 0 and below `max_length={max_length}`.")
        self.model = model
        self.max_length = max_length
        self.keep_first = keep_first
        self.config = model.config

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **kwargs):
        if input_ids.size(1) > self.max_length:
            lengths = attention_mask.sum(dim=1, keepdim=True)
            start = (lengths - self.max_length).clamp(min=0)
            positions = torch.arange(self.max_length, device=input_ids.device)
            # The first `keep_first` positions stay; every later one shifts right by how much the text is too long.
            index = (positions + start * (positions >= self.keep_first)).clamp(max=input_ids.size(1) - 1)
            input_ids, attention_mask = input_ids.gather(1, index), attention_mask.gather(1, index)
        return self.model(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
