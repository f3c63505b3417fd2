"""The one tiny-model builder (`ple_trl.testing`) serves the tests and the benchmarks."""

import json
import sys
from pathlib import Path

from transformers import AutoConfig, AutoTokenizer

from ple_trl.testing import CHAT_TEMPLATE, WORDS, build_tiny_causal_lm

from helpers import BENCHMARKS

sys.path.insert(0, str(BENCHMARKS))
from tiny_model import build_tiny_llama  # noqa: E402


def test_benchmark_model_is_the_test_builder_made_deeper(tmp_path):
    bench = build_tiny_llama(tmp_path / "bench")
    test = build_tiny_causal_lm(tmp_path / "test")
    bench_config, test_config = AutoConfig.from_pretrained(bench), AutoConfig.from_pretrained(test)
    assert (test_config.num_hidden_layers, test_config.hidden_size) == (2, 32)
    assert (bench_config.num_hidden_layers, bench_config.hidden_size, bench_config.intermediate_size) == (4, 64, 128)
    assert (bench_config.num_attention_heads, bench_config.num_key_value_heads) == (4, 2)
    # One tokenizer for both: the same vocabulary (7 special tokens + the words), ids and chat template.
    bench_tok, test_tok = AutoTokenizer.from_pretrained(bench), AutoTokenizer.from_pretrained(test)
    assert bench_tok.get_vocab() == test_tok.get_vocab() and len(test_tok) == 7 + len(WORDS)
    assert bench_config.vocab_size == test_config.vocab_size == len(test_tok)
    assert bench_tok.chat_template == test_tok.chat_template == CHAT_TEMPLATE
    assert json.loads((Path(bench) / "generation_config.json").read_text())["eos_token_id"] == test_tok.eos_token_id
