"""Prompt sharing, family by family: on every model family, the default (`share_prompt_prefix=None`) trains exactly as
`share_prompt_prefix=False` (the same answers, rewards, routes and losses over 2 steps with prompts of very different
lengths, left-padded), sharing where the family is proven and saying why it does not elsewhere; no family crashes.

A family joins `SHARED_PREFIX_FAMILIES` only with a case here: the proven ones are also checked pass by pass (the
shared loss pass against GRPO's unshared one, and greedy generation from a shared prefix against `generate`)."""

import logging

import pytest
import torch
import transformers
from datasets import Dataset
from PIL import Image
from trl.trainer.utils import pad

from ple_trl import PLETrainer
from ple_trl.pairs.prefix_sharing import SHARED_PREFIX_FAMILIES, generate_from_shared_prefix, shared_prefix_layout
from ple_trl.rewards import completion_text
from ple_trl.testing import VLM_IMAGE_SIZE, WORDS, make_policy_tokenizer, policy_special_ids, save_tiny_causal_lm

from helpers import logged, read_labels, tiny_args

LLAMA_LIKE = dict(
    hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
    max_position_embeddings=256,
)  # fmt: skip
GPT2 = dict(n_embd=32, n_layer=2, n_head=2, n_positions=256)
MOE = dict(num_experts_per_tok=2, output_router_logits=True)
# family -> (config class, config arguments, why the default does not share: None where it does)
FAMILIES = {
    "llama": ("LlamaConfig", LLAMA_LIKE, None),
    "qwen2": ("Qwen2Config", LLAMA_LIKE, None),
    "qwen3": ("Qwen3Config", {**LLAMA_LIKE, "head_dim": 16}, None),
    "gemma": ("GemmaConfig", {**LLAMA_LIKE, "head_dim": 16}, None),
    "mistral": ("MistralConfig", {**LLAMA_LIKE, "sliding_window": None}, None),
    "phi": ("PhiConfig", LLAMA_LIKE, None),
    "phi3": ("Phi3Config", LLAMA_LIKE, None),
    "gpt2": ("GPT2Config", {**GPT2, "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0}, None),
    "gpt_neox": ("GPTNeoXConfig", LLAMA_LIKE, None),
    "falcon_rotary": ("FalconConfig", dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2), None),
    "qwen3_moe": ("Qwen3MoeConfig", {**LLAMA_LIKE, **MOE, "num_experts": 4, "moe_intermediate_size": 32}, None),
    "mixtral": ("MixtralConfig", {**LLAMA_LIKE, **MOE, "num_local_experts": 4}, None),
    "gpt2_dropout": ("GPT2Config", GPT2, "dropout is active"),  # GPT-2's own 0.1: a shared layout draws other masks
    "mistral_sliding_window": ("MistralConfig", {**LLAMA_LIKE, "sliding_window": 4}, "sliding-window"),
    "opt": ("OPTConfig", dict(hidden_size=32, ffn_dim=64, num_hidden_layers=2, num_attention_heads=2), "'opt'"),
    "mpt": ("MptConfig", dict(d_model=32, n_heads=2, n_layers=2, expansion_ratio=2), "'mpt'"),
    "bloom": ("BloomConfig", dict(hidden_size=32, n_layer=2, n_head=2), "'bloom'"),
    "falcon_alibi": (
        "FalconConfig",
        dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, alibi=True, new_decoder_architecture=False),
        "falcon with `alibi=True`",
    ),
}
PROVEN = [name for name, (_, _, reason) in FAMILIES.items() if reason is None]

# Prompts of 18 and 60 words: left-padded by 42 tokens in a batch that holds both; the principle comes after the
# prompt, so a pair's two prompts share all of the plain prompt but its last token (more than 16 tokens).
SHORT_PROMPT = " ".join(WORDS[12:30])
LONG_PROMPT = " ".join(WORDS[:60])
FAMILY_PROMPTS = [SHORT_PROMPT, LONG_PROMPT, LONG_PROMPT.replace("good", "bad"), SHORT_PROMPT.replace("movie", "film")]


def words_reward(completions, **kwargs):
    """A reward with pair-dependent values, so that both losses (rank and weighted SFT) are used."""
    return [(len(completion_text(completion).split()) % 3) / 2 for completion in completions]


def build(tmp_path, family):
    config_class, kwargs, _ = FAMILIES[family]
    config = getattr(transformers, config_class)(
        vocab_size=len(make_policy_tokenizer()), **kwargs, **policy_special_ids()
    )
    return save_tiny_causal_lm(tmp_path / family, config)


def two_step_run(tmp_path, model_path, share, **kwargs):
    """Two steps of PLE with a reference (`dpo`, so the frozen pass runs too): the trained trainer."""
    dataset = kwargs.pop("dataset", None) or Dataset.from_dict({"prompt": FAMILY_PROMPTS})
    args = tiny_args(
        tmp_path / f"share-{share}",
        principle="be positive and kind",
        principle_template="{prompt} {principle}",
        ranking_loss_type="dpo",
        beta=0.1,
        save_enhanced_labels=True,
        share_prompt_prefix=share,
        **kwargs,
    )
    trainer = PLETrainer(model=model_path, reward_funcs=words_reward, args=args, train_dataset=dataset)
    trainer.train()
    return trainer


def assert_same_training(shared, unshared):
    labels, reference = read_labels(shared.args.output_dir), read_labels(unshared.args.output_dir)
    assert len(labels) == 4
    for record, expected in zip(labels, reference, strict=True):
        for key in ("prompt", "plain", "principled", "route"):
            assert record[key] == expected[key], key
        for key in ("reward_plain", "reward_principled"):
            assert record[key] == pytest.approx(expected[key]), key
    for key in ("loss", "ple/loss_rank", "ple/loss_wsft"):
        torch.testing.assert_close(torch.tensor(logged(shared, key)), torch.tensor(logged(unshared, key)), msg=key)
    assert len(logged(shared, "loss")) == 2


def said(caplog, text):
    return [record.getMessage() for record in caplog.records if text in record.getMessage()]


def test_every_proven_family_has_a_case():
    proven_types = {"falcon" if name == "falcon_rotary" else name for name in PROVEN}
    assert proven_types == set(SHARED_PREFIX_FAMILIES)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_default_trains_as_unshared(tmp_path, family, caplog):
    model_path = build(tmp_path, family)
    with caplog.at_level(logging.INFO, logger="ple_trl"):
        default = two_step_run(tmp_path, model_path, None)
    reasons = said(caplog, "no prefix sharing") + said(caplog, "no shared prefix")
    reason = FAMILIES[family][2]
    if reason is None:
        assert said(caplog, "runs each pair's plain prompt once")  # the frozen (reference) pass at least
        assert said(caplog, "runs each pair's common prompt prefix once")
        moe = "output_router_logits" in FAMILIES[family][1]
        # An MoE model trains its load-balancing loss on the unshared layout; nothing else falls back.
        assert reasons == (["The loss pass runs each plain prompt once per answer (no prefix sharing): the MoE "
                            "load-balancing loss reads a 2D padding mask"] if moe else [])  # fmt: skip
    else:
        assert not said(caplog, "runs each pair's common prompt prefix once")
        # The loss pass and generation, each said once, with the reason.
        assert len(reasons) == 2 and all(reason in text for text in reasons), reasons
        required = f"share_prompt_prefix=True.*cannot run a pair's shared prompt once.*{reason}"
        with pytest.raises(ValueError, match=required):
            two_step_run(tmp_path / "required", model_path, True)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="ple_trl"):
        unshared = two_step_run(tmp_path, model_path, False)
    assert not said(caplog, "runs each pair's plain prompt once")
    assert len(said(caplog, "share_prompt_prefix=False")) == 2
    assert_same_training(default, unshared)


def crafted_pairs(vocab_size, pad_token_id):
    """3 pairs: prompts of 2, 9 and 20 tokens left-padded to 20, answers of 6 slots with 6/3, 1/6 and 4/2 real tokens
    (random ids, so that every position matters)."""
    generator = torch.Generator().manual_seed(1)
    prompt_mask = torch.zeros(3, 20, dtype=torch.long)
    completion_mask = torch.zeros(3, 2, 6, dtype=torch.long)
    for i, (length, answers) in enumerate(zip([2, 9, 20], [[6, 3], [1, 6], [4, 2]])):
        prompt_mask[i, 20 - length :] = 1
        for j, answer_length in enumerate(answers):
            completion_mask[i, j, :answer_length] = 1
    prompt_ids = torch.randint(7, vocab_size, (3, 20), generator=generator).masked_fill(prompt_mask == 0, pad_token_id)
    completion_ids = torch.randint(7, vocab_size, (3, 2, 6), generator=generator)
    return {
        "prompt_ids": prompt_ids,
        "prompt_mask": prompt_mask,
        "completion_ids": completion_ids.masked_fill(completion_mask == 0, pad_token_id),
        "completion_mask": completion_mask,
    }


def by_hand_logps(model, batch):
    """The sums of the answers' token log-probs, `(2, pairs)`, from the model's own logits on GRPO's layout (each
    answer after its left-padded prompt, one row per answer), with none of the trainer's code."""
    prompt_length = batch["prompt_ids"].size(1)
    ids = torch.cat([torch.cat([batch["prompt_ids"], batch["completion_ids"][:, j]], dim=1) for j in (0, 1)])
    mask = torch.cat([torch.cat([batch["prompt_mask"], batch["completion_mask"][:, j]], dim=1) for j in (0, 1)])
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits[:, prompt_length - 1 : -1].float()
    tokens = logits.log_softmax(-1).gather(-1, ids[:, prompt_length:, None])[..., 0]
    return (tokens * mask[:, prompt_length:]).sum(-1).view(2, -1)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_pair_logps_and_greedy_answers_match_the_plain_model(tmp_path, family):
    model_path = build(tmp_path, family)
    trainer = PLETrainer(
        model=model_path, reward_funcs=words_reward, train_dataset=Dataset.from_dict({"prompt": FAMILY_PROMPTS}),
        args=tiny_args(tmp_path / "out", principle="be kind"),
    )  # fmt: skip
    model = trainer.model.eval()
    tokenizer = trainer.processing_class
    batch = crafted_pairs(len(tokenizer), tokenizer.pad_token_id)
    # The pair forward (one row per pair where the family is proven, GRPO's layout elsewhere) against the logits.
    with torch.no_grad():
        sums, _, _ = trainer._pair_logps(model, batch)
    torch.testing.assert_close(sums, by_hand_logps(model, batch), atol=1e-4, rtol=0)
    if FAMILIES[family][2] is not None:
        return
    # Generation: greedy answers from a shared prefix (the pairs share 18, 30 and 22 tokens) against `generate`.
    prefixes = [list(range(7, 7 + n)) for n in (18, 30, 22)]
    prompts = [prefix + [40, 41] for prefix in prefixes] + [prefix + [50, 51, 52] for prefix in prefixes]
    input_ids = pad([torch.tensor(p) for p in prompts], padding_value=tokenizer.pad_token_id, padding_side="left")
    attention_mask = pad([torch.ones(len(p), dtype=torch.long) for p in prompts], padding_value=0, padding_side="left")
    kwargs = dict(max_new_tokens=8, do_sample=False, pad_token_id=tokenizer.pad_token_id, output_router_logits=False)
    layout = shared_prefix_layout(prompts, tokenizer.pad_token_id)
    with torch.no_grad():
        expected = model.generate(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        answers = generate_from_shared_prefix(model, model.generate, layout, input_ids, attention_mask, **kwargs)
    assert torch.equal(answers[:, input_ids.size(1) :], expected[:, input_ids.size(1) :])


def test_vision_language_model_trains_unshared(tmp_path, tiny_vlm_path, caplog):
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)]
    dataset = Dataset.from_dict(
        {
            "prompt": [[{"role": "user", "content": prompt}] for prompt in FAMILY_PROMPTS],
            "image": [Image.new("RGB", (VLM_IMAGE_SIZE, VLM_IMAGE_SIZE), colour) for colour in colours],
        }
    )
    with caplog.at_level(logging.INFO, logger="ple_trl"):
        default = two_step_run(tmp_path, tiny_vlm_path, None, dataset=dataset)
    assert said(caplog, "(no prefix sharing): multimodal prompts")
    assert said(caplog, "(no shared prefix): multimodal prompts")
    with pytest.raises(ValueError, match="share_prompt_prefix=True.*llava"):
        two_step_run(tmp_path / "required", tiny_vlm_path, True, dataset=dataset)
    unshared = two_step_run(tmp_path, tiny_vlm_path, False, dataset=dataset)
    assert_same_training(default, unshared)
