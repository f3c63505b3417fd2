"""Generation runs a pair's common prompt prefix once: the layout, the same next-token logits and greedy answers as
generating every row from its own prompt, in PLETrainer and SPATrainer, with LoRA, and a logged reason wherever the
prefix is not shared. Family by family: `tests/test_model_families.py`."""

import logging
import re

import pytest
import torch
from datasets import Dataset
from peft import LoraConfig
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM
from trl.trainer.utils import pad

from ple_trl import PLETrainer, SPAConfig, SPATrainer
from ple_trl.pairs import prefix_sharing
from ple_trl.pairs.prefix_sharing import common_prefix_lengths, prefill_shared_prefix, shared_prefix_layout

from helpers import NUMBERS, PAD, by_position, counting_prefix_prefills, make_args, tiny_args


def history(number):
    """An earlier exchange, which the principle does not touch (it rewrites the last user turn). Its own number makes a
    cache row copied into the wrong pair change the answers. With the tiny chat template, `<role> content </s>` per
    turn, a pair shares `<user>` + 17 words + `</s>`, `<assistant>` + 10 words + `</s>` and the last turn's `<user>`:
    32 tokens."""
    return [
        {"role": "user", "content": f"tell me a story about the city and the weather , please , it was {number} day"},
        {"role": "assistant", "content": f"hello friend , i think it was {number} good day"},
    ]


LAST_TURNS = ["write a review of the movie :", "what is the food ?", "how is the city ?", "tell me about your day :"]


def test_common_prefix_lengths_stop_before_the_last_token_of_the_shorter_prompt():
    plain = [[5, 6, 7, 8], [5, 6], [9, 9, 9], [4]]
    principled = [[5, 6, 3, 8, 8], [5, 6, 7, 8], [9, 9, 9], [7, 4]]
    # Pair 1: plain is a prefix of principled, but its last token must run with the rest. Pair 2: SPA's identical
    # prompts share all but the last token. Pair 3: no shared token.
    assert common_prefix_lengths(plain + principled) == [2, 1, 2, 0]


def test_layout_left_pads_the_prefixes_and_the_rests_separately():
    plain = [[5, 6, 7, 8], [9, 10, 11]]
    principled = [[5, 6, 3], [9, 10, 12, 13, 14]]
    layout = shared_prefix_layout(plain + principled, PAD)
    assert layout.shared == [2, 2]
    assert layout.prefix_ids.tolist() == [[5, 6], [9, 10]]
    assert layout.prefix_mask.tolist() == [[1, 1], [1, 1]]
    assert layout.input_ids.tolist() == [
        [5, 6, PAD, 7, 8],
        [9, 10, PAD, PAD, 11],
        [5, 6, PAD, PAD, 3],
        [9, 10, 12, 13, 14],
    ]
    assert layout.attention_mask.tolist() == [[1, 1, 0, 1, 1], [1, 1, 0, 0, 1], [1, 1, 0, 0, 1], [1, 1, 1, 1, 1]]
    assert shared_prefix_layout([[5, 6], [7, 6]], PAD) is None  # the pair shares no token


def random_round(generator, vocab_size):
    """3 pairs sharing 5, 9 and 2 tokens, then rests of different lengths (principled longer or shorter); the plain
    rests use the lower half of the vocabulary and the principled rests the upper half, so the pairs part there."""
    middle = vocab_size // 2

    def tokens(n, low=3, high=vocab_size):
        return torch.randint(low, high, (n,), generator=generator).tolist()

    shared = [tokens(5), tokens(9), tokens(2)]
    plain = [prefix + tokens(n, high=middle) for prefix, n in zip(shared, [3, 3, 6])]
    principled = [prefix + tokens(n, low=middle) for prefix, n in zip(shared, [7, 1, 2])]
    return plain + principled


def left_padded(prompts):
    ids = pad([torch.tensor(p) for p in prompts], padding_value=PAD, padding_side="left")
    mask = pad([torch.ones(len(p), dtype=torch.long) for p in prompts], padding_value=0, padding_side="left")
    return ids, mask


@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager"])
def test_next_token_logits_and_greedy_answers_match_the_unshared_generation(attn_implementation):
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=60, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, pad_token_id=PAD, eos_token_id=1, bos_token_id=2,
    )  # fmt: skip
    config._attn_implementation = attn_implementation
    model = LlamaForCausalLM(config).eval()
    prompts = random_round(torch.Generator().manual_seed(1), config.vocab_size)
    ids, mask = left_padded(prompts)
    layout = shared_prefix_layout(prompts, PAD)
    assert layout.shared == [5, 9, 2]
    with torch.no_grad():
        expected = model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0))
        name, cache = prefill_shared_prefix(model, layout, ids.device)
        assert cache.get_seq_length() == 9 and cache.layers[0].keys.size(0) == 6  # the longest prefix, both rows
        width = layout.prefix_ids.size(1)
        positions = (layout.attention_mask.cumsum(-1) - 1).clamp(min=0)
        shared = model(
            input_ids=layout.input_ids[:, width:], attention_mask=layout.attention_mask,
            position_ids=positions[:, width:], **{name: cache},
        )  # fmt: skip
        torch.testing.assert_close(shared.logits[:, -1], expected.logits[:, -1], atol=1e-5, rtol=0)

        unshared = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=8, do_sample=False)
        from_prefix = prefix_sharing.generate_from_shared_prefix(
            model, model.generate, layout, ids, mask, max_new_tokens=8, do_sample=False
        )
    assert from_prefix.shape == unshared.shape
    assert torch.equal(from_prefix[:, : ids.size(1)], ids)  # the prompt columns as given, as `generate` returns them
    assert torch.equal(from_prefix, unshared)

    # Sampling as GRPO configures it: the same seed draws the same answers.
    sampling = {"max_new_tokens": 8, "do_sample": True, "temperature": 0.7, "top_p": 0.9, "top_k": 20, "min_p": 0.05}
    for seed in range(3):
        with torch.no_grad():
            torch.manual_seed(seed)
            unshared = model.generate(input_ids=ids, attention_mask=mask, **sampling)
            torch.manual_seed(seed)
            from_prefix = prefix_sharing.generate_from_shared_prefix(
                model, model.generate, layout, ids, mask, **sampling
            )
        assert torch.equal(from_prefix, unshared)


def dialogue_dataset():
    return Dataset.from_dict(
        {"prompt": [[*history(n), {"role": "user", "content": turn}] for n, turn in zip(NUMBERS[:4], LAST_TURNS)]}
    )


def recording_by_position(answers):
    """`by_position(0.0, 1.0)` that also records the token ids of every answer it scores, as `answers[round]`."""
    score = by_position(0.0, 1.0)

    def reward(prompts, completions, completion_ids, **kwargs):
        answers.append(completion_ids)
        return score(prompts, completions)

    return reward


def prompt_ids(tokenizer, prompts):
    """The token ids of conversational prompts, as GRPO renders them for generation."""
    rendered = tokenizer.apply_chat_template(prompts, add_generation_prompt=True, tokenize=True, return_dict=True)
    return rendered["input_ids"]


@pytest.mark.parametrize("lora, checkpointing", [(False, False), (True, False), (True, True)],
                         ids=["full", "lora", "lora-gradient-checkpointing"])  # fmt: skip
def test_pletrainer_generates_the_same_answers_from_the_shared_prefix(
    tiny_model_path, tmp_path, caplog, lora, checkpointing
):
    def first_round(shared):
        """The token ids of the first round's answers, generated greedily in a one-step run, and how many prefix
        prefills the run ran."""
        answers = []
        kwargs = {"peft_config": LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])} if lora else {}
        args = make_args(
            tmp_path / f"shared-{shared}",
            max_steps=1,
            generation_kwargs={"do_sample": False},
            gradient_checkpointing=checkpointing,
            share_prompt_prefix=None if shared else False,
        )
        trainer = PLETrainer(
            model=AutoModelForCausalLM.from_pretrained(tiny_model_path), reward_funcs=recording_by_position(answers),
            train_dataset=dialogue_dataset(), args=args, **kwargs,
        )  # fmt: skip
        with counting_prefix_prefills() as prefills:
            trainer.train()  # generation in training mode, with gradient checkpointing on where it is asked for
        assert trainer.model.is_gradient_checkpointing == checkpointing
        model = trainer.accelerator.unwrap_model(trainer.model_wrapped)
        assert "generate" not in model.__dict__  # the instance's `generate` is GRPO's again
        return answers[0], len(prefills)

    with caplog.at_level(logging.INFO, logger="ple_trl"):
        shared_answers, prefills = first_round(shared=True)
    assert prefills == 1
    assert "Generation runs each pair's common prompt prefix once (32 tokens per pair)" in caplog.text
    unshared_answers, no_prefills = first_round(shared=False)
    assert no_prefills == 0
    assert shared_answers == unshared_answers


def test_spatrainer_shares_all_but_the_last_prompt_token(tiny_model_path, init_model_path, tmp_path):
    trainer = SPATrainer(
        model=tiny_model_path, ref_model=init_model_path, train_dataset=dialogue_dataset(),
        args=tiny_args(
            tmp_path, SPAConfig, max_steps=1, shuffle_dataset=False, generation_kwargs={"do_sample": False}
        ),
    )  # fmt: skip
    with counting_prefix_prefills() as layouts:
        trainer.train()
    # The round's two pairs (the first two rows): each pair's two prompts are the same, shared but for the last token.
    first_rows = prompt_ids(trainer.processing_class, dialogue_dataset()["prompt"][:2])
    assert len(layouts) == 1 and layouts[0].shared == [len(ids) - 1 for ids in first_rows]


def test_the_prefix_is_not_shared_where_it_cannot_hold_and_the_log_says_why(tiny_model_path, tmp_path, caplog):
    short_pairs = Dataset.from_dict({"prompt": LAST_TURNS})  # plain text, principle first: no shared token
    trainer = PLETrainer(
        model=tiny_model_path, reward_funcs=by_position(0.0, 1.0), train_dataset=short_pairs, args=make_args(tmp_path)
    )
    with caplog.at_level(logging.INFO, logger="ple_trl"):
        trainer.train()  # 2 steps: 2 rounds
    assert caplog.text.count("no shared prefix") == 1  # once, not every round
    assert "a pair's two prompts differ from their first token" in caplog.text


@pytest.mark.parametrize(
    "setting, reason",
    [
        ({"repetition_penalty": 1.2}, "repetition penalties"),
        ({"cache_implementation": "static"}, "cache_implementation='static'"),
        ({"generation_kwargs": {"use_cache": False}}, "use_cache=False"),
        ({"generation_kwargs": {"min_length": 40}}, "min_length"),
    ],
)
def test_generation_settings_that_read_the_padded_prompt_keep_it_unshared(tiny_model_path, tmp_path, setting, reason):
    # As the trainer's generation config has them; a run that requires sharing is refused with the reason.
    trainer_setting = PLETrainer(
        model=tiny_model_path, reward_funcs=by_position(0.0, 1.0), train_dataset=dialogue_dataset(),
        args=make_args(tmp_path, **setting),
    )  # fmt: skip
    assert reason in prefix_sharing.generation_settings_blocker(trainer_setting.generation_config)
    with pytest.raises(ValueError, match=f"cannot run a pair's shared prompt once: {re.escape(reason)}"):
        PLETrainer(
            model=tiny_model_path, reward_funcs=by_position(0.0, 1.0), train_dataset=dialogue_dataset(),
            args=make_args(tmp_path, share_prompt_prefix=True, **setting),
        )  # fmt: skip


def test_dialogue_pairs_are_shared_unless_too_short_or_the_attention_takes_no_mask(
    tiny_model_path, tmp_path, monkeypatch
):
    trainer = PLETrainer(
        model=tiny_model_path, reward_funcs=by_position(0.0, 1.0), train_dataset=dialogue_dataset(),
        args=make_args(tmp_path),
    )  # fmt: skip
    assert prefix_sharing.generation_settings_blocker(trainer.generation_config) is None
    tokenizer = trainer.processing_class
    round_ids = prompt_ids(tokenizer, dialogue_dataset()["prompt"][:2]) * 2  # SPA's round: the same prompts twice
    layout, reason = prefix_sharing.plan_shared_prefix(round_ids, tokenizer.pad_token_id)
    assert reason is None and layout.shared == [len(ids) - 1 for ids in round_ids[:2]]
    with monkeypatch.context() as patch:
        patch.setattr(prefix_sharing, "MIN_SHARED_TOKENS", 10**6)
        assert "fewer than 1000000" in prefix_sharing.plan_shared_prefix(round_ids, tokenizer.pad_token_id)[1]
    model = trainer.accelerator.unwrap_model(trainer.model_wrapped)
    assert prefix_sharing.prefix_sharing_blocker(model) is None
    model.config._attn_implementation = "flash_attention_2"
    assert "'flash_attention_2' takes no custom 4D mask" in prefix_sharing.prefix_sharing_blocker(model)
