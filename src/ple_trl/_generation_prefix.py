"""
Generation of a round's pairs with their common prompt prefix run once (transformers path).

PLETrainer generates a round as `[plain prompts ; principled prompts]`, and SPATrainer as `[prompts ; prompts]`: the
rows `i` and `pairs + i` are the two answers of one pair. The two prompts of a pair often start with the same tokens:
the earlier turns of a dialogue (the principle rewrites the last user turn only), the chat template's default system
prompt, the whole plain prompt when the template puts the principle after it, and the whole prompt for SPA.
transformers' `generate` runs every prompt token of every row. Here the pair's common prefix is run once, its KV cache
copied into both rows, and `generate` continues from that cache with the rest of each prompt, so prefill runs
`pairs * prefix + rest` tokens instead of `2 * pairs * prefix + rest`.

Layout, for pair `i` sharing its first `k_i` tokens: `[pad | prefix_i | pad | rest of the prompt]`, the prefixes
left-padded to the longest and the rests left-padded to the longest. The attention mask hides both paddings, and the
position ids `generate` derives from the mask (its cumulative sum) number every real token as in the row's own
left-padded prompt, so every answer token sees exactly the tokens, at the positions, it sees without sharing.
vLLM caches prefixes by itself (automatic prefix caching), so this is for the transformers path only.
"""

import logging
from typing import NamedTuple

import torch
from trl.trainer.utils import pad

from ._pair_forward import prefix_sharing_blocker, without_router_logits

# The trainer's logger, so that log filters set on `ple_trl.trainer` keep applying to these messages.
logger = logging.getLogger("ple_trl.trainer")

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


class SharedPrefixGenerationMixin:
    """Runs the pairs' common prompt prefix once at generation; mixed into [`PLETrainer`] before
    [`~trl.GRPOTrainer`]."""

    def _generate_single_turn(self, prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False):
        layout, reason = self._generation_prefix_plan(prompt_ids, images, multimodal_fields)
        # Said once each: the first round that shares, and the first that does not (with why).
        logged = self.__dict__.setdefault("_generation_prefix_logged", set())
        if (layout is not None) not in logged:
            logged.add(layout is not None)
            if layout is not None:
                mean = sum(layout.shared) / len(layout.shared)
                logger.info(f"Generation runs each pair's common prompt prefix once ({mean:.0f} tokens per pair)")
            else:
                logger.info(f"Generation runs every prompt token of both answers (no shared prefix): {reason}")
        arguments = (prompt_ids, images, multimodal_fields, num_generations, has_tool_images)
        model = self.accelerator.unwrap_model(self.model_wrapped)
        router = {} if self.use_vllm else without_router_logits(model.config)
        if layout is None and not router:
            return super()._generate_single_turn(*arguments)
        # GRPO's transformers path calls `generate` on the unwrapped model: for this call, that `generate` continues
        # from the prefix cache (and, for an MoE model whose config asks for router logits, leaves them out: their
        # load-balancing loss fails under `generate` with a cache); GRPO's own handling (unwrapping, DeepSpeed
        # gathering, EOS masking) is unchanged.
        previous = model.__dict__.get("generate")
        generate = model.generate

        def patched_generate(input_ids, attention_mask=None, **kwargs):
            if layout is None:
                return generate(input_ids=input_ids, attention_mask=attention_mask, **router, **kwargs)
            return generate_from_shared_prefix(model, generate, layout, input_ids, attention_mask, **kwargs)

        model.generate = patched_generate
        try:
            return super()._generate_single_turn(*arguments)
        finally:
            if previous is None:
                del model.generate
            else:
                model.generate = previous

    def _generation_settings_blocker(self, training: bool | None = None):
        """Why the model or the generation settings keep the transformers path from generating a pair's answers from
        their shared prompt prefix, or `None`."""
        if self.use_transformers_continuous_batching:
            return "continuous batching: its paged cache is managed by transformers"
        blocker = prefix_sharing_blocker(self.accelerator.unwrap_model(self.model_wrapped), training)
        if blocker is not None:
            return blocker
        generation_config = self.generation_config
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

    def _generation_prefix_plan(self, prompt_ids, images, multimodal_fields):
        """The [`SharedPrefix`] layout of this round and `None`, or `None` and why the prefix is not shared."""
        if self.args.share_prompt_prefix is False:
            return None, "share_prompt_prefix=False"
        if self.use_vllm:
            return None, "vLLM: its automatic prefix caching shares prefixes itself"
        if images is not None or multimodal_fields:
            return None, "multimodal prompts: image features are placed by position"
        blocker = self._generation_settings_blocker()
        if blocker is not None:
            return None, blocker
        layout = shared_prefix_layout(prompt_ids, self._tokenizer.pad_token_id)
        if layout is None:
            return None, "too few shared tokens: a pair's two prompts differ from their first token"
        # `share_prompt_prefix=True` shares whatever the pairs share; the default only where it pays.
        if not self.args.share_prompt_prefix and sum(layout.shared) < MIN_SHARED_TOKENS * len(layout.shared):
            return None, (
                f"too few shared tokens: the pairs share {sum(layout.shared) / len(layout.shared):.1f} tokens on "
                f"average, fewer than {MIN_SHARED_TOKENS}"
            )
        return layout, None
