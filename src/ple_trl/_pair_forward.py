"""
The pair forward of [`PLETrainer`]: the log-probs of both answers of every pair under the plain prompt, in one pass
that runs the shared prompt once (prefix sharing) where the model allows it, else GRPO's layout with the prompt run
once per answer; and the multimodal inputs of that pass (the dataset's images, the processor's image fields).
"""

import logging

import torch
from torch import nn
from trl import GRPOTrainer
from trl.data_utils import apply_chat_template, is_conversational

from . import losses


# The trainer's logger, so that log filters set on `ple_trl.trainer` keep applying to these messages.
logger = logging.getLogger("ple_trl.trainer")

# The processor outputs of vision-language models that the pair forward repeats for both answers of a pair.
MULTIMODAL_FIELDS = (
    "pixel_values",
    "image_grid_thw",
    "pixel_attention_mask",
    "image_sizes",
    "image_position_ids",
    "token_type_ids",
    "mm_token_type_ids",
)
# Vision-language families whose processor cuts an image into a variable number of tiles: not supported yet.
TILED_MODEL_TYPES = ("lfm2_vl", "internvl")
PLAIN_TEXT_IMAGES_ERROR = (
    "The dataset has images but its prompts are plain text: multimodal training needs conversational prompts (e.g. "
    "`[{'role': 'user', 'content': 'What is in the picture?'}]`) so that the processor can place the images. Do not "
    "apply the chat template before passing the dataset."
)


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


def without_router_logits(config) -> dict:
    """The forward keyword that keeps an MoE model with `output_router_logits=True` in its config from computing its
    load-balancing loss, which reads a 2D padding mask, on a shared-prefix layout (where nothing needs it)."""
    return {"output_router_logits": False} if getattr(config, "output_router_logits", False) else {}


class PairForwardMixin:
    """The pair forward and its multimodal inputs; mixed into [`PLETrainer`] before [`~trl.GRPOTrainer`]."""

    @staticmethod
    def _dataset_images(inputs):
        # The `images` (a list per row) or `image` (one per row) column, as GRPO reads it.
        if "images" in inputs[0]:
            images = [example.get("images") for example in inputs]
        elif "image" in inputs[0]:
            images = [[example["image"]] if example.get("image") is not None else None for example in inputs]
        else:
            return None
        if all(not image_list for image_list in images):  # the processors need at least one image in the batch
            return None
        if not is_conversational({"prompt": inputs[0]["prompt"]}):
            raise ValueError(PLAIN_TEXT_IMAGES_ERROR)
        return images

    def _multimodal_forward_kwargs(self, prompts, images):
        """The processor's image fields for the plain prompts, one entry per pair, as GRPO computes them for its loss
        forward, plus `num_images`."""
        prompts_text = [
            apply_chat_template({"prompt": prompt}, self.processing_class, **self.chat_template_kwargs)["prompt"]
            for prompt in prompts
        ]
        prompt_inputs = self.processing_class(images=images, text=prompts_text, padding=True, return_tensors="pt")
        # Trainer's `_prepare_inputs` (device placement), not GRPO's, which generates and buffers.
        prompt_inputs = super(GRPOTrainer, self)._prepare_inputs(prompt_inputs)
        num_images = [len(image_list) if image_list else 0 for image_list in images]
        pixel_values = prompt_inputs.get("pixel_values")
        tiled = "spatial_shapes" in prompt_inputs or (
            pixel_values is not None
            and pixel_values.ndim == 4
            and "image_grid_thw" not in prompt_inputs
            and pixel_values.size(0) != sum(num_images)
        )
        if tiled:  # the known families are refused at construction; this catches the others
            raise ValueError(
                f"The processor {type(self.processing_class).__name__} cuts images into tiles (LFM2-VL/InternVL "
                "style), which PLE's pair layout does not support. Use a vision-language model with one pixel block "
                "per image (e.g. LLaVA, Qwen2-VL, Gemma 3, Idefics)."
            )
        # The fields GRPO's loss forward takes; the text ids come from generation, as in GRPO.
        fields = {k: v for k, v in prompt_inputs.items() if k in MULTIMODAL_FIELDS}
        return {**fields, "num_images": num_images}

    def _pair_logps(self, model, inputs, compute_aux_loss=False):
        """One forward pass over both answers of every pair, conditioned on the plain prompt (and its images).

        Returns the per-answer sums and means of the log-probs, `(2, pairs)` each, and the MoE load-balancing loss of
        this forward (`None` unless `compute_aux_loss`)."""
        blocker = self._prefix_sharing_blocker(model, inputs, compute_aux_loss)
        said = self.__dict__.setdefault("_loss_pass_said", set())
        if blocker not in said:  # once per path (and per reason): which layout the loss pass takes, and why
            said.add(blocker)
            if blocker is None:
                logger.info("The loss pass runs each pair's plain prompt once, shared by its two answers")
            else:
                logger.info(f"The loss pass runs each plain prompt once per answer (no prefix sharing): {blocker}")
        if blocker is None:
            per_token_logps, aux_loss = self._shared_prompt_logps(model, inputs), None
        else:
            per_token_logps, aux_loss = self._separate_prompt_logps(model, inputs, compute_aux_loss)
        num_pairs = inputs["prompt_ids"].size(0)
        completion_mask = inputs["completion_mask"].transpose(0, 1).flatten(0, 1)
        sums = losses.sequence_logps(per_token_logps, completion_mask)
        means = losses.sequence_logps(per_token_logps, completion_mask, length_normalize=True)
        return sums.view(2, num_pairs), means.view(2, num_pairs), aux_loss

    def _separate_prompt_logps(self, model, inputs, compute_aux_loss=False):
        # GRPO's layout: [plain prompt + y ; plain prompt + y_p], the prompt run once per answer.
        prompt_ids = inputs["prompt_ids"].repeat(2, 1)
        prompt_mask = inputs["prompt_mask"].repeat(2, 1)
        completion_ids = inputs["completion_ids"].transpose(0, 1).flatten(0, 1)  # plain rows, then principled rows
        completion_mask = inputs["completion_mask"].transpose(0, 1).flatten(0, 1)
        per_token_logps, _, aux_loss = self._get_per_token_logps_and_entropies(
            model,
            torch.cat([prompt_ids, completion_ids], dim=1),
            torch.cat([prompt_mask, completion_mask], dim=1),
            completion_ids.size(1),
            compute_aux_loss=compute_aux_loss,
            **self._pair_forward_kwargs(inputs, completion_ids.size(1)),
        )
        return per_token_logps, aux_loss

    def _prefix_sharing_blocker(self, model, inputs, compute_aux_loss):
        """Why the pair's shared plain prompt cannot be run once in the loss pass, or `None` when it can."""
        if self.args.share_prompt_prefix is False:
            return "share_prompt_prefix=False"
        if compute_aux_loss:
            return "the MoE load-balancing loss reads a 2D padding mask"
        if any(inputs.get(key) is not None for key in ("num_images", "token_type_ids", "mm_token_type_ids")):
            return "multimodal prompts place their image features by position"
        blocker = prefix_sharing_blocker(self.accelerator.unwrap_model(model))
        if blocker is not None:
            return blocker
        if inputs["prompt_ids"].size(1) == 0 or not bool(inputs["prompt_mask"][:, -1].all()):
            return "a prompt is empty or not left-padded"
        return None

    def _check_required_prefix_sharing(self, datasets):
        """With `share_prompt_prefix=True`, the reason the run could not share its prompts (the model, the MoE loss, a
        generation setting, images), as an error at construction."""
        if not self.args.share_prompt_prefix:
            return
        reason = prefix_sharing_blocker(self.accelerator.unwrap_model(self.model), training=True)
        if reason is None and self.aux_loss_enabled:
            reason = "the MoE load-balancing loss of the trained pass reads a 2D padding mask"
        if reason is None and any(
            hasattr(dataset, "column_names")
            and {"image", "images"} & set(dataset.column_names or next(iter(dataset)).keys())
            for dataset in datasets
        ):
            reason = "multimodal prompts place their image features by position"
        if reason is None:
            reason = self._generation_settings_blocker(training=True)
        if reason is not None:
            raise ValueError(
                f"`share_prompt_prefix=True`, but this run cannot run a pair's shared prompt once: {reason}. Set "
                "`share_prompt_prefix=None` (share where it is proven exact, the default) or `False`."
            )

    def _shared_prompt_logps(self, model, inputs):
        """Per-token log-probs of both answers of every pair, `(2 * pairs, completion length)`, from one row per pair.

        A row is `[prompt[:-1] | prompt[-1], y | prompt[-1], y_p]`: each branch attends the shared prefix and itself
        only (a 4D mask), at the positions the answer has after its prompt, so every answer token sees exactly what
        it sees in `[prompt + y]`. The prompt's last token is repeated at the head of each branch because its output
        predicts the first token of each answer, and one position carries one label in the fused LM head."""
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
        config = self.accelerator.unwrap_model(model).config
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
        with self.accelerator.autocast():
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

    @staticmethod
    def _pair_forward_kwargs(inputs, completion_length):
        # The multimodal fields are stored once per pair (for the plain prompt). The pair forward runs over
        # [plain prompts + y ; plain prompts + y_p], so both halves get the same images, in the same order.
        kwargs = {}
        if inputs.get("num_images") is not None:
            kwargs["num_images"] = list(inputs["num_images"]) * 2
        for key in ("pixel_values", "image_grid_thw", "pixel_attention_mask", "image_sizes", "image_position_ids"):
            if inputs.get(key) is not None:
                kwargs[key] = torch.cat([inputs[key], inputs[key]])
        for key in ("token_type_ids", "mm_token_type_ids"):
            if inputs.get(key) is not None:
                # Prompt-only ids: left-padded to the prompt width, zeros over the answer (as GRPO extends them).
                type_ids = inputs[key]
                type_ids = nn.functional.pad(type_ids, (inputs["prompt_ids"].size(1) - type_ids.size(1), 0))
                type_ids = nn.functional.pad(type_ids, (0, completion_length))
                kwargs[key] = type_ids.repeat(2, 1)
        return kwargs
