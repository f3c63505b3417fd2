"""
Images in a pair round (vision-language policies): the dataset's images, the prompts as GRPO builds them for the
model, the processor's fields of the loss forward, and the checks that refuse what the pair layout cannot carry.
Both answers of a pair see the same images.
"""

import torch
from torch import nn
from trl.data_utils import apply_chat_template, is_conversational, prepare_multimodal_messages

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


def image_column(dataset) -> str | None:
    """The `image` or `images` column of a dataset, or `None`."""
    columns = getattr(dataset, "column_names", None) or list(next(iter(dataset)).keys())
    return next((column for column in ("image", "images") if column in columns), None)


def check_image_datasets(datasets, processing_class, is_vlm: bool, model_type: str):
    """Refuse, before training, the datasets whose images the policy could never see or the pair layout not carry."""
    for dataset in datasets:
        column = None if dataset is None or isinstance(dataset, str) else image_column(dataset)
        if column is None:
            continue
        if not is_vlm:
            raise ValueError(
                f"The dataset has an {column!r} column, but the policy's processing class is a "
                f"{type(processing_class).__name__}, not a processor: the images could never reach the model. Pass "
                "a vision-language model (its processor is loaded with it), or remove the column."
            )
        if model_type in TILED_MODEL_TYPES:
            raise ValueError(
                f"Vision-language models of type {model_type!r} cut images into tiles, which PLE's pair layout does "
                "not support. Use a model with one pixel block per image (e.g. LLaVA, Qwen2-VL, Gemma 3)."
            )
        if not is_conversational({"prompt": next(iter(dataset))["prompt"]}):
            raise ValueError(PLAIN_TEXT_IMAGES_ERROR)


def dataset_images(inputs):
    """The images of a round's rows, one list per row, from the `images` (a list per row) or `image` (one per row)
    column as GRPO reads it; `None` when the round has none."""
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


def with_images(prompts, images):
    """The prompts as GRPO builds them for the model: with images, as typed parts of the first user turn."""
    if images is None:
        return prompts
    return [
        prepare_multimodal_messages(prompt, images=image_list)
        for prompt, image_list in zip(prompts, images, strict=True)
    ]


def processor_fields(processing_class, prompts, images, chat_template_kwargs, prepare) -> dict:
    """The processor's image fields for the plain prompts, one entry per pair, as GRPO computes them for its loss
    forward, plus `num_images`; `prepare` places the processor's output (the trainer's device placement and dtype)."""
    prompts_text = [
        apply_chat_template({"prompt": prompt}, processing_class, **chat_template_kwargs)["prompt"]
        for prompt in prompts
    ]
    prompt_inputs = prepare(processing_class(images=images, text=prompts_text, padding=True, return_tensors="pt"))
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
            f"The processor {type(processing_class).__name__} cuts images into tiles (LFM2-VL/InternVL style), which "
            "PLE's pair layout does not support. Use a vision-language model with one pixel block per image (e.g. "
            "LLaVA, Qwen2-VL, Gemma 3, Idefics)."
        )
    # The fields GRPO's loss forward takes; the text ids come from generation, as in GRPO.
    fields = {k: v for k, v in prompt_inputs.items() if k in MULTIMODAL_FIELDS}
    return {**fields, "num_images": num_images}


def pair_forward_kwargs(inputs, completion_length: int) -> dict:
    """The image fields of a round's pairs (stored once per pair, for the plain prompt) for the pair forward over
    `[plain prompts + y ; plain prompts + y_p]`: both halves get the same images, in the same order."""
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
