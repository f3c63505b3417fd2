"""
Tiny models for tests and benchmarks, built on the spot: a randomly initialised Llama and a word-level tokenizer
trained from a fixed vocabulary, saved to a folder and passed by path like a hub id. Nothing is downloaded. Needs only
`tokenizers` (a dependency of `transformers`), in the manner of `transformers.testing_utils`.

`tests/conftest.py` builds its fixtures with these functions and `benchmarks/tiny_model.py` builds its (deeper) model
with them, so the test suite and the benchmarks share one builder.
"""

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    AutoModelForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    LlamaForSequenceClassification,
    PreTrainedTokenizerFast,
)

# The policy's word-level vocabulary. Positive and negative words let reward functions score answers by hand.
POSITIVE_WORDS = ["good", "great", "kind", "happy", "warm", "nice"]
NEGATIVE_WORDS = ["bad", "awful", "sad", "cold", "rude", "ugly"]
WORDS = POSITIVE_WORDS + NEGATIVE_WORDS + [
    "write", "a", "review", "of", "the", "movie", "film", "book", "song", "tell", "me", "about", "your", "day",
    "be", "positive", "and", "answer", "is", "it", "was", "very", "i", "think", "so", "what", "how", "why",
    "please", "short", "reply", "to", "this", "question", "hello", "friend", "story", "food", "city", "weather",
    "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", ":", ".", ",", "?", "!",
]  # fmt: skip
CHAT_TEMPLATE = (
    "{% for message in messages %}<{{ message['role'] }}> {{ message['content'] }} </s> {% endfor %}"
    "{% if add_generation_prompt %}<assistant> {% endif %}"
)
POLICY_SPECIAL = ["<pad>", "<s>", "</s>", "<unk>", "<system>", "<user>", "<assistant>"]
# The reward model's tokenizer is deliberately different: other special tokens, other ids, another template.
REWARD_SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[EOS]", "[system]", "[user]", "[assistant]"]
REWARD_CHAT_TEMPLATE = (
    "{% for message in messages %}[{{ message['role'] }}] {{ message['content'] }} [EOS] {% endfor %}"
)


def make_word_tokenizer(special, words, unk, **special_kwargs) -> PreTrainedTokenizerFast:
    """
    A whitespace, word-level tokenizer over `special + words` (ids in that order).

    Args:
        special (`list[str]`): the special tokens, first in the vocabulary.
        words (`list[str]`): the words.
        unk (`str`): the unknown token (one of `special`).
        **special_kwargs: the special-token roles, e.g. `pad_token="<pad>"`.

    Returns:
        [`~transformers.PreTrainedTokenizerFast`]: the tokenizer.
    """
    vocab = {token: i for i, token in enumerate(special + words)}
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token=unk))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token=unk, **special_kwargs)


def make_policy_tokenizer() -> PreTrainedTokenizerFast:
    """The policy's tokenizer: [`WORDS`], `<pad>`/`<s>`/`</s>`, a chat template, left padding."""
    tokenizer = make_word_tokenizer(
        POLICY_SPECIAL, WORDS, "<unk>", pad_token="<pad>", bos_token="<s>", eos_token="</s>"
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.padding_side = "left"
    return tokenizer


def make_reward_tokenizer(chat_template: bool = True) -> PreTrainedTokenizerFast:
    """The reward model's tokenizer: the words reversed (other ids than the policy's), other special tokens."""
    tokenizer = make_word_tokenizer(
        REWARD_SPECIAL, list(reversed(WORDS)), "[UNK]", pad_token="[PAD]", cls_token="[CLS]", eos_token="[EOS]"
    )
    if chat_template:
        tokenizer.chat_template = REWARD_CHAT_TEMPLATE
    return tokenizer


# Small enough that a training step takes milliseconds on a CPU.
TINY_SIZES = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=2,
    num_key_value_heads=1,
    max_position_embeddings=256,
    tie_word_embeddings=False,
)


def tiny_llama_config(vocab_size: int, **kwargs) -> LlamaConfig:
    """
    A 2-layer Llama of width 32 ([`TINY_SIZES`]); a [`~transformers.LlamaConfig`] argument in `kwargs` overrides them.
    """
    return LlamaConfig(vocab_size=vocab_size, **{**TINY_SIZES, **kwargs})


def save_tiny_causal_lm(path, config, seed: int = 0, model_class=None) -> str:
    """
    Save a randomly initialised causal LM of `config` (any family) and the policy tokenizer under `path`.

    Args:
        path (`str` or `os.PathLike`): the folder.
        config ([`~transformers.PretrainedConfig`]): the model's configuration; its vocabulary must be the policy
            tokenizer's (`len(make_policy_tokenizer())` tokens).
        seed (`int`, *optional*, defaults to `0`): seed of the weights.
        model_class (`type`, *optional*): the architecture; [`~transformers.AutoModelForCausalLM`] picks it from
            `config` when `None`.

    Returns:
        `str`: `path`, to pass as `model=`.
    """
    torch.manual_seed(seed)
    tokenizer = make_policy_tokenizer()
    model = model_class(config) if model_class is not None else AutoModelForCausalLM.from_config(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def policy_special_ids() -> dict:
    """The policy tokenizer's `pad_token_id`, `bos_token_id` and `eos_token_id`, as config arguments."""
    tokenizer = make_policy_tokenizer()
    return dict(
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id
    )


def build_tiny_causal_lm(path, seed: int = 0, model_class=LlamaForCausalLM, **config_kwargs) -> str:
    """
    Save a randomly initialised tiny causal LM (a Llama by default) and the policy tokenizer under `path`.

    Args:
        path (`str` or `os.PathLike`): the folder.
        seed (`int`, *optional*, defaults to `0`): seed of the weights.
        model_class (`type`, *optional*, defaults to [`~transformers.LlamaForCausalLM`]): the architecture, e.g.
            [`~transformers.MixtralForCausalLM`]; its `config_class` is built with [`TINY_SIZES`].
        **config_kwargs: config arguments overriding [`TINY_SIZES`] (e.g. `num_hidden_layers=4`) or adding to them.

    Returns:
        `str`: `path`, to pass as `model=`.
    """
    config = model_class.config_class(
        vocab_size=len(make_policy_tokenizer()), **{**TINY_SIZES, **policy_special_ids(), **config_kwargs}
    )
    return save_tiny_causal_lm(path, config, seed=seed, model_class=model_class)


# A chat template that renders typed content (`{"type": "image"}` parts as the image token), as real VLM templates do.
VLM_CHAT_TEMPLATE = (
    "{% for message in messages %}<{{ message['role'] }}> "
    "{% if message['content'] is string %}{{ message['content'] }} {% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<image> {% elif part['type'] == 'text' %}{{ part['text'] }} {% endif %}"
    "{% endfor %}{% endif %}</s> {% endfor %}{% if add_generation_prompt %}<assistant> {% endif %}"
)
# The tiny VLM's images: 8x8 pixels in 4x4 patches.
VLM_IMAGE_SIZE, VLM_PATCH_SIZE = 8, 4


def build_tiny_vlm(path, seed: int = 0) -> str:
    """
    Save a LLaVA with a 1-layer CLIP vision tower on 8x8 images and a 2-layer Llama ([`TINY_SIZES`]), with its
    processor (the policy's words, an `<image>` token, [`VLM_CHAT_TEMPLATE`]), under `path`.

    Args:
        path (`str` or `os.PathLike`): the folder.
        seed (`int`, *optional*, defaults to `0`): seed of the weights.

    Returns:
        `str`: `path`, to pass as `model=`.
    """
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    torch.manual_seed(seed)
    tokenizer = make_word_tokenizer(
        POLICY_SPECIAL + ["<image>"], WORDS, "<unk>", pad_token="<pad>", bos_token="<s>", eos_token="</s>"
    )
    tokenizer.add_tokens(["<image>"], special_tokens=True)  # matched before the whitespace split: "<image><image>"
    tokenizer.padding_side = "left"
    tokenizer.chat_template = VLM_CHAT_TEMPLATE
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": VLM_IMAGE_SIZE}, crop_size={"height": VLM_IMAGE_SIZE, "width": VLM_IMAGE_SIZE}
    )
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=VLM_PATCH_SIZE,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=VLM_CHAT_TEMPLATE,
    )
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=VLM_IMAGE_SIZE,
            patch_size=VLM_PATCH_SIZE,
            projection_dim=16,
        ),
        text_config=tiny_llama_config(
            len(tokenizer),
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        ),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlavaForConditionalGeneration(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return str(path)


def build_tiny_reward_model(path, seed: int = 0, chat_template: bool = True, **config_kwargs) -> str:
    """
    Save a randomly initialised tiny sequence-classification reward model (one label) and its own tokenizer, which
    differs from the policy's, under `path`.

    Args:
        path (`str` or `os.PathLike`): the folder.
        seed (`int`, *optional*, defaults to `0`): seed of the weights.
        chat_template (`bool`, *optional*, defaults to `True`): give the tokenizer a chat template.
        **config_kwargs: config arguments overriding [`TINY_SIZES`] (e.g. `hidden_size=64`).

    Returns:
        `str`: `path`.
    """
    torch.manual_seed(seed)
    tokenizer = make_reward_tokenizer(chat_template=chat_template)
    config = tiny_llama_config(len(tokenizer), num_labels=1, pad_token_id=tokenizer.pad_token_id, **config_kwargs)
    model = LlamaForSequenceClassification(config)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)
