"""A tiny causal LM built on the fly for the benchmarks: a randomly initialised 4-layer Llama and a word-level
tokenizer, saved to a folder and passed by path like a hub id. Nothing is downloaded.

It follows the idea of the test fixtures (`tests/conftest.py`) without importing them: the benchmarks do not depend on
the test suite.
"""

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification, PreTrainedTokenizerFast

POSITIVE_WORDS = ["good", "great", "kind", "happy", "warm", "nice"]
NEGATIVE_WORDS = ["bad", "awful", "sad", "cold", "rude", "ugly"]
WORDS = POSITIVE_WORDS + NEGATIVE_WORDS + [
    "write", "a", "review", "of", "the", "movie", "film", "book", "song", "tell", "me", "about", "your", "day",
    "be", "positive", "and", "answer", "is", "it", "was", "very", "i", "think", "so", "what", "how", "why",
    "please", "short", "reply", "to", "this", "question", "hello", "friend", "story", "food", "city", "weather",
    "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", ":", ".", ",", "?", "!",
]  # fmt: skip
SPECIAL = ["<pad>", "<s>", "</s>", "<unk>"]


def make_tokenizer():
    vocab = {token: i for i, token in enumerate(SPECIAL + WORDS)}
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, unk_token="<unk>", pad_token="<pad>", bos_token="<s>", eos_token="</s>"
    )
    tokenizer.padding_side = "left"
    return tokenizer


def _config(tokenizer, num_hidden_layers, hidden_size, max_position_embeddings, **kwargs):
    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=False,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        **kwargs,
    )


def build_tiny_reward_model(path, seed=0, num_hidden_layers=2, hidden_size=64, max_position_embeddings=1024):
    """Save a randomly initialised tiny Llama classifier (one reward logit) and its tokenizer under `path`: the size of
    a small classifier reward model, so its cost is a small, equal share of every trainer's step."""
    torch.manual_seed(seed)
    tokenizer = make_tokenizer()
    config = _config(tokenizer, num_hidden_layers, hidden_size, max_position_embeddings, num_labels=1)
    LlamaForSequenceClassification(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def build_tiny_llama(path, seed=0, num_hidden_layers=4, hidden_size=64, max_position_embeddings=256):
    """Save a randomly initialised tiny Llama (4 layers by default) and its tokenizer under `path`; return the path."""
    torch.manual_seed(seed)
    tokenizer = make_tokenizer()
    config = _config(tokenizer, num_hidden_layers, hidden_size, max_position_embeddings)
    model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)
