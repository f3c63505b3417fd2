# Copyright 2026 The ple-trl authors. Licensed under the Apache License, Version 2.0.
"""Perplexity of a local causal language model on texts.

This script is a self-contained `evaluate` module: load it with `evaluate.load(<path of this folder>)`, or with
`ple_trl.metrics.load("perplexity")`. It never touches the Hugging Face Hub.
"""

import math
import os

import datasets
import evaluate
import torch
from accelerate import PartialState
from transformers import AutoModelForCausalLM, AutoTokenizer

from ple_trl.errors import preview

_CITATION = ""

_DESCRIPTION = """\
Perplexity (PPL) of a causal language model on each text: the exponential of the mean negative log-likelihood of
the text's tokens, each predicted from the tokens before it,

    PPL(x) = exp(-1/(t-1) * sum_{i=2..t} log p(x_i | x_1..x_{i-1}))

where x_1..x_t are the text's tokens (with the tokenizer's BOS token prepended as x_1 when `add_start_token=True`,
so that the first word is predicted too). Texts are tokenized without other special tokens, truncated to
`max_length` tokens (no sliding window) and scored in right-padded batches on the model's device.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list[str]`):
        The texts to score (named `predictions` like in `evaluate`'s own perplexity measurement).
    model (`str`, `os.PathLike` or `transformers.PreTrainedModel`):
        The causal language model or its local path (loaded with `AutoModelForCausalLM.from_pretrained`).
    tokenizer (`str` or `transformers.PreTrainedTokenizerBase`, *optional*):
        The model's tokenizer or its path. Defaults to the tokenizer saved with `model` when `model` is a path;
        required when `model` is an instance.
    batch_size (`int`, *optional*, defaults to 8):
        Number of texts per forward pass.
    add_start_token (`bool`, *optional*, defaults to `True`):
        Prepend the tokenizer's BOS token so that the first token of each text is scored too.
    max_length (`int`, *optional*):
        Truncation length in tokens (BOS included). Defaults to the tokenizer's `model_max_length`, or the model's
        `max_position_embeddings` when the tokenizer sets no limit.
    device (`str` or `torch.device`, *optional*):
        Device for a model loaded from a path (defaults to `accelerate.PartialState().device`). A model instance is
        used on its own device and never moved.

Returns:
    `dict`:
        - **perplexities** (`list[float]`): perplexity of every text, in input order.
        - **mean_perplexity** (`float`): mean of `perplexities`.

Examples:

    >>> import evaluate
    >>> from ple_trl.metrics import metric_path
    >>> perplexity = evaluate.load(metric_path("perplexity"))
    >>> results = perplexity.compute(predictions=["the film was good", "hello"], model="path/to/causal-lm")
    >>> sorted(results)
    ['mean_perplexity', 'perplexities']
"""

_NO_LIMIT = 1_000_000  # tokenizers without a length limit report a huge `model_max_length` (int(1e30))


def _check_positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"`{name}`={preview(value)} must be a positive integer, e.g. {name}=8.")


def _load_model(model, tokenizer, device):
    if isinstance(model, (str, os.PathLike)):
        path = os.fspath(model)
        model = AutoModelForCausalLM.from_pretrained(path)
        model.to(device if device is not None else PartialState().device)
        if tokenizer is None:
            tokenizer = path
    elif isinstance(model, torch.nn.Module):
        if tokenizer is None:
            raise ValueError(
                "`tokenizer`=None, but `model` is a model instance: pass its tokenizer as `tokenizer=` (or pass the "
                "model's path as `model=` to load both)."
            )
    else:
        raise ValueError(
            f"`model`={preview(model)} must be the path of a causal language model or a `PreTrainedModel` "
            "instance; pass e.g. `model='path/to/model'`."
        )
    if isinstance(tokenizer, (str, os.PathLike)):
        tokenizer = AutoTokenizer.from_pretrained(os.fspath(tokenizer))
    if not callable(tokenizer):
        raise ValueError(f"`tokenizer`={preview(tokenizer)} is not a tokenizer; pass one or its path.")
    return model, tokenizer


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Perplexity(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("string")}),
        )

    @torch.no_grad()
    def _compute(
        self,
        predictions,
        model=None,
        tokenizer=None,
        batch_size=8,
        add_start_token=True,
        max_length=None,
        device=None,
    ):
        if model is None:
            raise ValueError("`model` is required: pass a causal language model or its path, e.g. model='path'.")
        if len(predictions) == 0:
            raise ValueError("`predictions` is empty: pass at least one text to score.")
        _check_positive_int("batch_size", batch_size)
        if max_length is not None:
            _check_positive_int("max_length", max_length)
        model, tokenizer = _load_model(model, tokenizer, device)

        if max_length is None:
            max_length = tokenizer.model_max_length
            if max_length is None or max_length >= _NO_LIMIT:
                max_length = getattr(model.config, "max_position_embeddings", None)
        start = []
        if add_start_token:
            if tokenizer.bos_token_id is None:
                raise ValueError(
                    "`add_start_token`=True, but the tokenizer has no BOS token (bos_token=None); pass "
                    "`add_start_token=False` (the first token of each text is then not scored) or set a bos_token."
                )
            start = [tokenizer.bos_token_id]
        sequences = []
        for i, ids in enumerate(tokenizer(list(predictions), add_special_tokens=False)["input_ids"]):
            ids = (start + list(ids))[:max_length]
            if len(ids) < 2:
                raise ValueError(
                    f"`predictions[{i}]`={preview(predictions[i])} has {len(ids)} token(s) to condition on and "
                    "none to predict; perplexity needs at least 2 tokens (use add_start_token=True or longer text)."
                )
            sequences.append(ids)

        model_device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        perplexities = []
        try:
            for begin in range(0, len(sequences), batch_size):
                batch = sequences[begin : begin + batch_size]
                width = max(len(ids) for ids in batch)
                # Right padding: real tokens keep positions 0..len-1; the pad id never matters since it is masked.
                input_ids = torch.tensor([ids + [0] * (width - len(ids)) for ids in batch], device=model_device)
                attention_mask = torch.tensor(
                    [[1] * len(ids) + [0] * (width - len(ids)) for ids in batch], device=model_device
                )
                logits = model(input_ids=input_ids, attention_mask=attention_mask).logits.float()
                nll = torch.nn.functional.cross_entropy(
                    logits[:, :-1].transpose(1, 2), input_ids[:, 1:], reduction="none"
                )
                mask = attention_mask[:, 1:].to(nll.dtype)
                mean_nll = (nll * mask).sum(dim=1) / mask.sum(dim=1)
                perplexities.extend(torch.exp(mean_nll).cpu().tolist())
        finally:
            model.train(was_training)
        return {"perplexities": perplexities, "mean_perplexity": math.fsum(perplexities) / len(perplexities)}
