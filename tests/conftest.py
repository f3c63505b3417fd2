"""Shared fixtures: tiny models built from a config and tokenizers trained on the spot, saved to a temp dir and
passed by path, like a user passes hub ids. Nothing here touches a hub."""

import os

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    LlamaForSequenceClassification,
    PreTrainedTokenizerFast,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

# The policy's word-level vocabulary. Positive and negative words let reward functions score answers by hand.
POSITIVE_WORDS = ["good", "great", "kind", "happy", "warm", "nice"]
NEGATIVE_WORDS = ["bad", "awful", "sad", "cold", "rude", "ugly"]
WORDS = (
    POSITIVE_WORDS
    + NEGATIVE_WORDS
    + [
        "write",
        "a",
        "review",
        "of",
        "the",
        "movie",
        "film",
        "book",
        "song",
        "tell",
        "me",
        "about",
        "your",
        "day",
        "be",
        "positive",
        "and",
        "answer",
        "is",
        "it",
        "was",
        "very",
        "i",
        "think",
        "so",
        "what",
        "how",
        "why",
        "please",
        "short",
        "reply",
        "to",
        "this",
        "question",
        "hello",
        "friend",
        "story",
        "food",
        "city",
        "weather",
        "one",
        "two",
        "three",
        "four",
        "five",
        "six",
        "seven",
        "eight",
        "nine",
        "ten",
        ":",
        ".",
        ",",
        "?",
        "!",
    ]
)
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


def make_word_tokenizer(special, words, unk, **special_kwargs):
    vocab = {token: i for i, token in enumerate(special + words)}
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token=unk))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token=unk, **special_kwargs)


def make_policy_tokenizer():
    tokenizer = make_word_tokenizer(
        POLICY_SPECIAL, WORDS, "<unk>", pad_token="<pad>", bos_token="<s>", eos_token="</s>"
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.padding_side = "left"
    return tokenizer


def make_reward_tokenizer(chat_template=True):
    # Reversed word order: every word gets a different id than in the policy's vocabulary.
    tokenizer = make_word_tokenizer(
        REWARD_SPECIAL, list(reversed(WORDS)), "[UNK]", pad_token="[PAD]", cls_token="[CLS]", eos_token="[EOS]"
    )
    if chat_template:
        tokenizer.chat_template = REWARD_CHAT_TEMPLATE
    return tokenizer


def tiny_llama_config(vocab_size, **kwargs):
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=256,
        tie_word_embeddings=False,
        **kwargs,
    )


def build_tiny_causal_lm(path, seed=0):
    torch.manual_seed(seed)
    tokenizer = make_policy_tokenizer()
    config = tiny_llama_config(
        len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def build_tiny_reward_model(path, seed=0, chat_template=True):
    torch.manual_seed(seed)
    tokenizer = make_reward_tokenizer(chat_template=chat_template)
    config = tiny_llama_config(len(tokenizer), num_labels=1, pad_token_id=tokenizer.pad_token_id)
    model = LlamaForSequenceClassification(config)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory):
    """Path of a randomly initialised 2-layer Llama with a word-level tokenizer and a chat template."""
    return build_tiny_causal_lm(tmp_path_factory.mktemp("tiny-causal-lm"))


@pytest.fixture(scope="session")
def tiny_reward_model_path(tmp_path_factory):
    """Path of a tiny sequence-classification reward model whose tokenizer differs from the policy's."""
    return build_tiny_reward_model(tmp_path_factory.mktemp("tiny-reward-model"))


@pytest.fixture(scope="session")
def tiny_reward_model_no_template_path(tmp_path_factory):
    """Same as `tiny_reward_model_path`, but its tokenizer has no chat template."""
    return build_tiny_reward_model(tmp_path_factory.mktemp("tiny-reward-model-no-template"), chat_template=False)


def positive_fraction(text):
    """Fraction of the words of `text` that are positive minus the fraction that are negative (in [-1, 1])."""
    words = text.split()
    if not words:
        return 0.0
    return (sum(w in POSITIVE_WORDS for w in words) - sum(w in NEGATIVE_WORDS for w in words)) / len(words)


def completion_text(completion):
    return completion[-1]["content"] if isinstance(completion, list) else completion


def positivity_reward(completions, **kwargs):
    """A reward function with a known value: positive minus negative word fraction of the answer."""
    return [positive_fraction(completion_text(c)) for c in completions]


@pytest.fixture
def positivity():
    return positivity_reward
