"""
Running the prompt tokens a pair's two sequences share once: in the loss pass (both answers continue the same plain
prompt) and at generation (the two prompts of a pair often start alike: a dialogue's earlier turns, a system prompt,
the whole plain prompt when the principle comes after it, the whole prompt for SPA).

Both layouts give the numbers of the unshared layout only on model families where a test proved it
(`tests/test_model_families.py`), with sdpa or eager attention, no sliding window and no dropout active: that is
[`prefix_sharing_blocker`]'s allow-list. Everything here is a function of tensors and models, with no trainer in it.

Loss pass: one row per pair, `[prompt[:-1] | prompt[-1], y | prompt[-1], y_p]`, a 4D mask letting each branch see the
shared prefix and itself only ([`shared_prompt_logps`]).

Generation: the pair's common prefix runs once, its KV cache is copied into both rows, and `generate` continues with
the rest of each prompt. Each row is `[pad | prefix_i | pad | rest]`; the position ids `generate` derives from the
mask (its cumulative sum) number every real token as in the row's own left-padded prompt. vLLM caches prefixes by
itself (automatic prefix caching), so this is for the transformers path only.
"""

import contextlib
from typing import NamedTuple

import torch
from torch import nn
from trl.trainer.utils import pad

# The model families on which running a pair's shared prompt prefix once was proven to give the numbers of the
# unshared layout: for each `model_type`, the config values the proof holds for (Falcon: rotary positions, not ALiBi).
# A family joins only with a test on a tiny model of it (`tests/test_model_families.py`: the same log-probs and
# answers, shared and unshared). The others differ or fail: OPT takes its positions from the 2D mask (not from
# `position_ids`), MPT, Bloom and Falcon with ALiBi add position biases a packed row breaks, RWKV has no attention.
SHARED_PREFIX_FAMILIES = {
    "llama": {},
    "qwen2": {},
    "qwen3": {},
    "gemma": {},
    "mistral": {},
    "phi": {},
    "phi3": {},
    "gpt2": {},
    "gpt_neox": {},
    "falcon": {"alibi": False},
    "qwen3_moe": {},
    "mixtral": {},
}


def prefix_sharing_blocker(model, training: bool | None = None):
    """Why `model` cannot run a layout other than one left-padded prompt per row (a custom 4D mask in the loss pass,
    padding between a shared prefix and the rest of the prompt at generation), or `None` when it can: its family is
    one of [`SHARED_PREFIX_FAMILIES`], with sdpa or eager attention, no sliding-window or non-attention layer, and no
    dropout active (a shared layout would draw other dropout masks than the unshared one) when it runs in training mode
    (`training`, by default the model's own mode)."""
    config = model.config
    model_type = getattr(config, "model_type", None)
    if model_type not in SHARED_PREFIX_FAMILIES:
        return (
            f"model type {model_type!r} is not among the families proven to give the same numbers with a shared "
            f"prompt ({', '.join(sorted(SHARED_PREFIX_FAMILIES))})"
        )
    for name, value in SHARED_PREFIX_FAMILIES[model_type].items():
        if getattr(config, name, None) != value:
            return f"{model_type} with `{name}={getattr(config, name, None)!r}` (proven for `{name}={value!r}` only)"
    implementation = getattr(config, "_attn_implementation", None)
    if implementation not in ("sdpa", "eager"):
        return f"attention implementation {implementation!r} takes no custom 4D mask (sdpa and eager do)"
    text_config = config.get_text_config()
    layer_types = getattr(text_config, "layer_types", None) or ()
    windowed = getattr(text_config, "sliding_window", None) and getattr(text_config, "use_sliding_window", True)
    if windowed or any(kind != "full_attention" for kind in layer_types):
        return "the model has sliding-window or non-attention layers, which a custom mask would not reproduce"
    if model.training if training is None else training:
        rates = [module.p for module in model.modules() if isinstance(module, nn.Dropout)]
        rates.append(getattr(text_config, "attention_dropout", 0.0) or 0.0)
        if max(rates) > 0:
            return (
                f"dropout is active (p={max(rates)}): a shared layout draws other dropout masks "
                "(`disable_dropout=True` turns it off)"
            )
    return None


def loss_pass_blocker(model, inputs, compute_aux_loss: bool = False) -> str | None:
    """Why a round's pairs (`inputs`) cannot run their shared plain prompt once in the loss pass of `model` (the
    unwrapped model), or `None` when they can."""
    if compute_aux_loss:
        return "the MoE load-balancing loss reads a 2D padding mask"
    if any(inputs.get(key) is not None for key in ("num_images", "token_type_ids", "mm_token_type_ids")):
        return "multimodal prompts place their image features by position"
    blocker = prefix_sharing_blocker(model)
    if blocker is not None:
        return blocker
    if inputs["prompt_ids"].size(1) == 0 or not bool(inputs["prompt_mask"][:, -1].all()):
        return "a prompt is empty or not left-padded"
    return None


def without_router_logits(config) -> dict:
    """The forward keyword that keeps an MoE model with `output_router_logits=True` in its config from computing its
    load-balancing loss, which reads a 2D padding mask, on a shared-prefix layout (where nothing needs it)."""
    return {"output_router_logits": False} if getattr(config, "output_router_logits", False) else {}



def shared_prompt_logps(model, config, inputs):
    """
    Per-token log-probs of both answers of every pair, `(2 * pairs, completion length)` (plain rows, then the second
    answers), from one row per pair, through the fused LM head TRL patches onto the model.

    A row is `[prompt[:-1] | prompt[-1], y | prompt[-1], y_p]`: each branch attends the shared prefix and itself only
    (a 4D mask), at the positions the answer has after its prompt, so every answer token sees exactly what it sees in
    `[prompt + y]`. The prompt's last token is repeated at the head of each branch because its output predicts the
    first token of each answer, and one position carries one label in the fused LM head.

    Args:
        model: the model to run (wrapped by accelerate or PEFT as it may be); the caller sets its autocast.
        config ([`~transformers.PretrainedConfig`]): the unwrapped model's config; the model must pass
            [`prefix_sharing_blocker`].
        inputs (`dict`): `prompt_ids`/`prompt_mask` `(pairs, P)` left-padded, `completion_ids`/`completion_mask`
            `(pairs, 2, L)` right-padded.

    Returns:
        `torch.Tensor`: `(2 * pairs, L)`.
    """
    prompt_ids, prompt_mask = inputs["prompt_ids"], inputs["prompt_mask"]
    completion_ids, completion_mask = inputs["completion_ids"], inputs["completion_mask"]  # (pairs, 2, length)
    num_pairs, prompt_length = prompt_ids.shape
    length = completion_ids.size(2)
    device = prompt_ids.device
    last = prompt_ids[:, -1:]
    input_ids = torch.cat([prompt_ids[:, :-1], last, completion_ids[:, 0], last, completion_ids[:, 1]], dim=1)
    ones = prompt_mask.new_ones(num_pairs, 1)
    key_valid = torch.cat([prompt_mask[:, :-1], ones, completion_mask[:, 0], ones, completion_mask[:, 1]], dim=1)
    branch = torch.cat(
        [torch.zeros(prompt_length - 1), torch.ones(length + 1), torch.full((length + 1,), 2)]
    ).to(device)
    # The unshared forward numbers `prompt + y` 0, 1, ... (its default position ids); each branch repeats them.
    positions = torch.arange(prompt_length - 1 + length + 1, device=device)
    position_ids = torch.cat([positions, positions[prompt_length - 1 :]]).expand(num_pairs, -1)
    index = torch.arange(input_ids.size(1), device=device)
    visible = (index[None, :] <= index[:, None]) & ((branch[None, :] == 0) | (branch[None, :] == branch[:, None]))
    attend = visible[None] & key_valid[:, None, :].bool()
    # A padding query attends itself alone: no row of the mask is empty (an empty row is NaN in sdpa).
    attend = (attend | torch.eye(index.size(0), dtype=torch.bool, device=device))[:, None]
    if config._attn_implementation == "eager":  # eager adds the mask to the scores
        attend = torch.zeros(attend.shape, device=device).masked_fill(~attend, torch.finfo(torch.float32).min)

    # Labels for the fused LM head, already shifted: a branch's position t is scored on the answer's token t.
    no_label = completion_ids.new_full((num_pairs, 1), -100)
    answer_labels = completion_ids.masked_fill(completion_mask == 0, -100)
    shift_labels = torch.cat(
        [
            completion_ids.new_full((num_pairs, prompt_length - 1), -100),
            answer_labels[:, 0],
            no_label,
            answer_labels[:, 1],
            no_label,
        ],
        dim=1,
    )
    outputs = model(
        input_ids=input_ids,
        attention_mask=attend,
        position_ids=position_ids,
        shift_labels=shift_labels,
        fused_lm_head=True,
        **without_router_logits(config),
    )
    log_probs = outputs.log_probs
    first = prompt_length - 1
    second = first + length + 1
    # (2 * pairs, length): plain rows, then principled rows, as in the unshared layout.
    return torch.cat([log_probs[:, first : first + length], log_probs[:, second : second + length]], dim=0)


# Below this mean number of shared tokens per pair, the extra forward (the prefix alone) costs about what it saves:
# on CPU, 8 shared tokens measured 1.02x the unshared `generate` on SmolLM2-135M and 24 measured 0.96x.
MIN_SHARED_TOKENS = 16


class SharedPrefix(NamedTuple):
    """A round laid out for generation from a shared prefix: `prefix_ids`/`prefix_mask` `(pairs, W)`, one row per
    pair; `input_ids`/`attention_mask` `(2 * pairs, W + S)`, the prefix rows twice then the rest of each prompt;
    `shared`, the number of tokens each pair shares."""

    prefix_ids: torch.Tensor
    prefix_mask: torch.Tensor
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    shared: list[int]


def common_prefix_lengths(prompt_ids):
    """Tokens that rows `i` and `pairs + i` of `prompt_ids` (a list of `2 * pairs` token lists) share at their start,
    at most all but the last token of the shorter one (its last token must run with the rest, to predict the answer's
    first token)."""
    num_pairs = len(prompt_ids) // 2
    lengths = []
    for first, second in zip(prompt_ids[:num_pairs], prompt_ids[num_pairs:], strict=True):
        limit, shared = min(len(first), len(second)) - 1, 0
        while shared < limit and first[shared] == second[shared]:
            shared += 1
        lengths.append(shared)
    return lengths


def shared_prefix_layout(prompt_ids, pad_token_id):
    """The [`SharedPrefix`] layout of a round of `2 * pairs` prompts (token lists, pairs as rows `i` and `pairs + i`),
    or `None` when a pair shares no token."""
    num_pairs = len(prompt_ids) // 2
    shared = common_prefix_lengths(prompt_ids)
    if min(shared) == 0:
        return None
    prefixes = [torch.tensor(ids[:length]) for ids, length in zip(prompt_ids[:num_pairs], shared, strict=True)]
    rests = [torch.tensor(ids[shared[row % num_pairs] :]) for row, ids in enumerate(prompt_ids)]
    prefix_ids = pad(prefixes, padding_value=pad_token_id, padding_side="left")
    prefix_mask = pad([torch.ones_like(ids) for ids in prefixes], padding_value=0, padding_side="left")
    rest_ids = pad(rests, padding_value=pad_token_id, padding_side="left")
    rest_mask = pad([torch.ones_like(ids) for ids in rests], padding_value=0, padding_side="left")
    return SharedPrefix(
        prefix_ids=prefix_ids,
        prefix_mask=prefix_mask,
        input_ids=torch.cat([prefix_ids.repeat(2, 1), rest_ids], dim=1),
        attention_mask=torch.cat([prefix_mask.repeat(2, 1), rest_mask], dim=1),
        shared=shared,
    )


def prefill_shared_prefix(model, layout, device):
    """Run each pair's prefix once and return its KV cache, copied for both rows of the pair (`2 * pairs` rows), and
    the name under which `generate` takes it (`cache`, or `past_key_values` in older transformers releases)."""
    prefix_mask = layout.prefix_mask.to(device)
    # Only the cache is needed: the LM head on the last position alone, where the model allows it.
    head = {"logits_to_keep": 1} if getattr(model, "_supports_logits_to_keep", lambda: False)() else {}
    outputs = model(
        input_ids=layout.prefix_ids.to(device),
        attention_mask=prefix_mask,
        position_ids=(prefix_mask.cumsum(-1) - 1).clamp(min=0),  # `generate`'s position ids for these columns
        use_cache=True,
        **head,
        **without_router_logits(model.config),
    )
    name = "cache" if "cache" in outputs.keys() else "past_key_values"
    cache = outputs[name]
    num_pairs = prefix_mask.size(0)
    cache.batch_select_indices(torch.arange(num_pairs, device=device).repeat(2))
    return name, cache


def generate_from_shared_prefix(model, generate, layout, input_ids, attention_mask=None, **kwargs):
    """What `generate(input_ids, attention_mask, **kwargs)` returns for the round `layout` describes (prompt columns
    as given, then the answers), generated from the pairs' shared prefix run once."""
    name, cache = prefill_shared_prefix(model, layout, input_ids.device)
    output = generate(
        input_ids=layout.input_ids.to(input_ids.device),
        attention_mask=layout.attention_mask.to(input_ids.device),
        **{name: cache},
        **{**without_router_logits(model.config), **kwargs},
    )
    return torch.cat([input_ids, output[:, layout.input_ids.size(1) :]], dim=1)


@contextlib.contextmanager
def patched_generate(model, layout, router_kwargs: dict):
    """Within the block, `model.generate` generates the round `layout` describes from its pairs' shared prefix (when
    `layout` is not `None`) and without router logits (`router_kwargs`, see [`without_router_logits`])."""
    previous = model.__dict__.get("generate")
    generate = model.generate

    def patched(input_ids, attention_mask=None, **kwargs):
        if layout is None:
            return generate(input_ids=input_ids, attention_mask=attention_mask, **router_kwargs, **kwargs)
        return generate_from_shared_prefix(model, generate, layout, input_ids, attention_mask, **kwargs)

    model.generate = patched
    try:
        yield
    finally:
        if previous is None:
            del model.generate
        else:
            model.generate = previous


def generation_settings_blocker(generation_config) -> str | None:
    """Why these generation settings keep a pair's answers from being generated from their shared prompt prefix (a
    cache or decoding that reads the whole padded prompt), or `None`."""
    if generation_config.use_cache is False:
        return "use_cache=False: generation keeps no KV cache to continue from"
    if generation_config.cache_implementation is not None:
        return f"cache_implementation={generation_config.cache_implementation!r}: only the default cache"
    if (generation_config.num_beams or 1) > 1:
        return "beam search"
    if generation_config.repetition_penalty not in (None, 1.0) or generation_config.no_repeat_ngram_size:
        return "repetition penalties: they read the prompt and its padding, which sharing moves"
    if generation_config.min_length:
        return "min_length: it counts the padded prompt, which sharing widens (min_new_tokens does not)"
    return None


def plan_shared_prefix(prompt_ids, pad_token_id, required: bool = False):
    """
    The [`SharedPrefix`] layout of a round of `2 * pairs` prompts and `None`, or `None` and why it is not shared: a
    pair shares no token, or (unless `required`) the pairs share fewer than [`MIN_SHARED_TOKENS`] on average, where
    the extra forward of the prefix costs about what it saves.
    """
    layout = shared_prefix_layout(prompt_ids, pad_token_id)
    if layout is None:
        return None, "too few shared tokens: a pair's two prompts differ from their first token"
    mean = sum(layout.shared) / len(layout.shared)
    if not required and mean < MIN_SHARED_TOKENS:
        return None, (
            f"too few shared tokens: the pairs share {mean:.1f} tokens on average, fewer than {MIN_SHARED_TOKENS}"
        )
    return layout, None
