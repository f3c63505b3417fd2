"""Tests of the offline `evaluate` metrics in `ple_trl.metrics`: each loads from its local folder with the network
blocked, and its values equal numbers computed by hand (or by `sacrebleu` directly)."""

import math
import os
import re
import socket

import evaluate
import pytest
import sacrebleu
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from ple_trl.metrics import METRICS_DIR, list_metrics, load, metric_path


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Fail any attempt to open a network connection, so that "loads offline" is checked, not assumed."""

    def refuse(*args, **kwargs):
        raise OSError(f"network access attempted during a metrics test: {args!r}")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def load_metric(name):
    return evaluate.load(metric_path(name), keep_in_memory=True)


# ----------------------------------------------------------------------------------------------------- the package


def test_every_metric_loads_offline_from_its_folder():
    assert list_metrics() == ["bleu", "perplexity", "reward_score", "win_rate"]
    for name in list_metrics():
        path = metric_path(name)
        assert os.path.isabs(path) and os.path.isfile(os.path.join(path, f"{name}.py"))
        assert os.path.dirname(path) == METRICS_DIR
        module = evaluate.load(path)
        assert isinstance(module, evaluate.Metric) and module.name == name
        assert "Returns:" in module.inputs_description and "Examples:" in module.inputs_description
    assert load("bleu", keep_in_memory=True).name == "bleu"


def test_unknown_metric_name_is_refused_without_a_hub_lookup():
    with pytest.raises(ValueError, match=r"`name`='rouge'.*one of \['bleu'"):
        metric_path("rouge")
    with pytest.raises(ValueError, match="rouge"):
        load("rouge")


def test_metric_sources_are_device_agnostic():
    for name in list_metrics():
        with open(os.path.join(metric_path(name), f"{name}.py"), encoding="utf-8") as f:
            assert not re.search(r"\.cuda\(|torch\.cuda|[\"']cuda", f.read()), name


# ------------------------------------------------------------------------------------------------------ reward_score

SCORED_PROMPTS = ["write a review of the film :", "tell me about your day :", "how was the food ?", "hello friend"]
COMPLETIONS = ["good great", "good bad movie", "it was bad", "happy"]
# positivity = (#positive - #negative) / #words: 2/2, 0/3, -1/3, 1/1.
POSITIVITY = [1.0, 0.0, -1.0 / 3.0, 1.0]


def test_reward_score_with_a_reward_function_is_the_mean_reward(positivity):
    metric = load_metric("reward_score")
    results = metric.compute(prompts=SCORED_PROMPTS, completions=COMPLETIONS, reward_fn=positivity)
    assert results["rewards"] == pytest.approx(POSITIVITY)
    assert results["mean_reward"] == pytest.approx((1.0 + 0.0 - 1.0 / 3.0 + 1.0) / 4)
    mean = sum(POSITIVITY) / 4
    assert results["std_reward"] == pytest.approx(math.sqrt(sum((r - mean) ** 2 for r in POSITIVITY) / 4))


def test_reward_score_conversational_inputs_and_none_rewards(positivity):
    prompts = [[{"role": "user", "content": p}] for p in SCORED_PROMPTS]
    completions = [[{"role": "assistant", "content": c}] for c in COMPLETIONS]
    results = load_metric("reward_score").compute(prompts=prompts, completions=completions, reward_fn=positivity)
    assert results["rewards"] == pytest.approx(POSITIVITY)

    def partial_reward(prompts, completions, offset, **kwargs):  # TRL: None means "not applicable"
        return [None if "bad" in c else len(c.split()) + offset for c in completions]

    results = load_metric("reward_score").compute(
        prompts=SCORED_PROMPTS, completions=COMPLETIONS, reward_fn=partial_reward, reward_kwargs={"offset": 1}
    )
    assert results["rewards"][0] == 3.0 and math.isnan(results["rewards"][1]) and results["rewards"][3] == 2.0
    assert results["mean_reward"] == pytest.approx(2.5)  # NaN ignored: (3 + 2) / 2


def score_by_hand(model, tokenizer, texts, max_length=None, keep="last"):
    """Reward of each text, scored alone (no padding) with the model's first logit; a long text keeps its `keep`
    `max_length` tokens."""
    scores = []
    with torch.no_grad():
        for text in texts:
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            if max_length is not None:
                ids = ids[-max_length:] if keep == "last" else ids[:max_length]
            scores.append(model(input_ids=torch.tensor([ids])).logits[0, 0].item())
    return scores


def test_reward_score_with_a_reward_model_path_matches_unbatched_scores(tiny_reward_model_path):
    model = AutoModelForSequenceClassification.from_pretrained(tiny_reward_model_path).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_reward_model_path)
    expected = score_by_hand(model, tokenizer, [p + " " + c for p, c in zip(SCORED_PROMPTS, COMPLETIONS)])
    # Batches of 3 and 1 with different lengths: padding must not change any score.
    results = load_metric("reward_score").compute(
        prompts=[p + " " for p in SCORED_PROMPTS],
        completions=COMPLETIONS,
        reward_model=tiny_reward_model_path,
        batch_size=3,
        device="cpu",
    )
    assert results["rewards"] == pytest.approx(expected, abs=1e-5)
    assert results["mean_reward"] == pytest.approx(sum(expected) / 4, abs=1e-5)
    assert len(set(round(s, 4) for s in expected)) == 4  # the scores differ, so a mix-up would be caught

    # Conversational inputs go through the reward tokenizer's own chat template.
    prompts = [[{"role": "user", "content": p}] for p in SCORED_PROMPTS]
    completions = [[{"role": "assistant", "content": c}] for c in COMPLETIONS]
    templated = [tokenizer.apply_chat_template(p + c, tokenize=False) for p, c in zip(prompts, completions)]
    results = load_metric("reward_score").compute(
        prompts=prompts, completions=completions, reward_model=model, reward_tokenizer=tokenizer, batch_size=2
    )
    assert results["rewards"] == pytest.approx(score_by_hand(model, tokenizer, templated), abs=1e-5)


def test_reward_model_inputs_are_truncated_on_the_left_to_the_tokenizers_max_length(tiny_reward_model_path):
    # Texts longer than the reward model's length keep their end (the completion), as in training.
    model = AutoModelForSequenceClassification.from_pretrained(tiny_reward_model_path).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_reward_model_path, model_max_length=4)
    texts = ["good great kind happy warm nice film", "bad awful sad cold rude ugly book"]
    results = load_metric("reward_score").compute(
        prompts=["", ""], completions=texts, reward_model=model, reward_tokenizer=tokenizer
    )
    truncated = score_by_hand(model, tokenizer, texts, max_length=4)
    assert results["rewards"] == pytest.approx(truncated, abs=1e-5)
    assert score_by_hand(model, tokenizer, texts) != pytest.approx(truncated, abs=1e-5)
    assert score_by_hand(model, tokenizer, texts, max_length=4, keep="first") != pytest.approx(truncated, abs=1e-5)


def test_reward_score_rejects_bad_input_with_clear_errors(positivity, tiny_reward_model_no_template_path):
    metric = load_metric("reward_score")
    with pytest.raises(ValueError, match="No reward given"):
        metric.compute(prompts=["a"], completions=["good"])
    with pytest.raises(ValueError, match="only one"):
        metric.compute(prompts=["a"], completions=["good"], reward_fn=positivity, reward_model="x")
    with pytest.raises(ValueError, match=r"`completions\[1\]`=3"):
        metric.compute(prompts=["a", "b"], completions=["good", 3], reward_fn=positivity)
    with pytest.raises(ValueError, match="mix formats"):
        metric.compute(prompts=["a"], completions=[[{"role": "assistant", "content": "good"}]], reward_fn=positivity)
    with pytest.raises(ValueError, match="one reward per completion"):
        metric.compute(prompts=["a", "b"], completions=["good", "bad"], reward_fn=lambda **kw: [1.0])
    with pytest.raises(ValueError, match="`batch_size`=0"):
        metric.compute(prompts=["a"], completions=["good"], reward_model="x", batch_size=0)
    with pytest.raises(ValueError, match="no chat template"):
        metric.compute(
            prompts=[[{"role": "user", "content": "a"}]],
            completions=[[{"role": "assistant", "content": "good"}]],
            reward_model=tiny_reward_model_no_template_path,
        )


# ---------------------------------------------------------------------------------------------------------- win_rate

WR_PROMPTS = ["tell me a story"] * 5
WR_A = ["good", "good great", "bad", "the film", "happy day"]  # positivity 1, 1, -1, 0, 1/2
WR_B = ["bad", "good great", "good", "the book", "sad"]  # positivity -1, 1, 1, 0, -1
# Hand count for A: win, tie, loss, tie, win -> 2 wins, 2 ties, 1 loss -> (2 + 0.5 * 2) / 5 = 0.6.
WR_EXPECTED = {"win_rate": 0.6, "wins": 2, "ties": 2, "losses": 1, "outcomes": ["win", "tie", "loss", "tie", "win"]}


def test_win_rate_under_a_reward_function_is_hand_counted(positivity):
    metric = load_metric("win_rate")
    results = metric.compute(prompts=WR_PROMPTS, completions_a=WR_A, completions_b=WR_B, reward_fn=positivity)
    assert results == WR_EXPECTED
    # Swapping the models mirrors wins and losses.
    results = metric.compute(prompts=WR_PROMPTS, completions_a=WR_B, completions_b=WR_A, reward_fn=positivity)
    assert (results["wins"], results["ties"], results["losses"], results["win_rate"]) == (1, 2, 2, 0.4)
    # A tolerance of 1.5 turns the 1.5-apart pair (last) into a tie but not the 2-apart ones.
    results = metric.compute(
        prompts=WR_PROMPTS, completions_a=WR_A, completions_b=WR_B, reward_fn=positivity, tie_tolerance=1.5
    )
    assert results["outcomes"] == ["win", "tie", "loss", "tie", "tie"]


def test_win_rate_position_swapping_cancels_an_order_biased_judge():
    calls = []

    def first_position_judge(prompt, first, second):  # always prefers whatever is shown first
        calls.append((first, second))
        return 0

    metric = load_metric("win_rate")
    results = metric.compute(prompts=WR_PROMPTS, completions_a=WR_A, completions_b=WR_B, judge=first_position_judge)
    assert (results["wins"], results["ties"], results["losses"], results["win_rate"]) == (0, 5, 0, 0.5)
    assert calls[:2] == [("good", "bad"), ("bad", "good")] and len(calls) == 10  # both orders, every pair

    calls.clear()
    results = metric.compute(
        prompts=WR_PROMPTS, completions_a=WR_A, completions_b=WR_B, judge=first_position_judge, swap_positions=False
    )
    assert (results["wins"], results["ties"], results["losses"], results["win_rate"]) == (5, 0, 0, 1.0)
    assert len(calls) == 5


def test_win_rate_with_a_consistent_judge_matches_the_hand_count(positivity):
    def positivity_judge(prompt, first, second):
        first_score, second_score = positivity(completions=[first, second])
        return None if first_score == second_score else (0 if first_score > second_score else 1)

    results = load_metric("win_rate").compute(
        prompts=WR_PROMPTS, completions_a=WR_A, completions_b=WR_B, judge=positivity_judge
    )
    assert results == WR_EXPECTED


def test_win_rate_under_a_reward_model_follows_its_scores(tiny_reward_model_path):
    model = AutoModelForSequenceClassification.from_pretrained(tiny_reward_model_path).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_reward_model_path)
    scores_a = score_by_hand(model, tokenizer, [p + " " + c for p, c in zip(WR_PROMPTS, WR_A)])
    scores_b = score_by_hand(model, tokenizer, [p + " " + c for p, c in zip(WR_PROMPTS, WR_B)])
    expected = ["win" if a > b + 1e-6 else "loss" if b > a + 1e-6 else "tie" for a, b in zip(scores_a, scores_b)]
    assert expected[1] == "tie"  # identical completions tie exactly under a deterministic batched model
    results = load_metric("win_rate").compute(
        prompts=[p + " " for p in WR_PROMPTS],
        completions_a=WR_A,
        completions_b=WR_B,
        reward_model=tiny_reward_model_path,
        batch_size=5,
        tie_tolerance=1e-6,
    )
    assert results["outcomes"] == expected
    assert results["win_rate"] == pytest.approx((expected.count("win") + 0.5 * expected.count("tie")) / 5)


def test_win_rate_rejects_bad_judges_and_inputs(positivity):
    metric = load_metric("win_rate")
    kwargs = {"prompts": ["p"], "completions_a": ["good"], "completions_b": ["bad"]}
    with pytest.raises(ValueError, match="`judge` returned 2"):
        metric.compute(**kwargs, judge=lambda prompt, first, second: 2)
    with pytest.raises(ValueError, match="`judge` returned True"):
        metric.compute(**kwargs, judge=lambda prompt, first, second: True)
    with pytest.raises(ValueError, match="either `judge` or a reward"):
        metric.compute(**kwargs, judge=lambda prompt, first, second: 0, reward_fn=positivity)
    with pytest.raises(ValueError, match="No reward given"):
        metric.compute(**kwargs)
    with pytest.raises(ValueError, match="lengths differ"):
        metric.compute(prompts=["p", "q"], completions_a=["good"], completions_b=["bad"], reward_fn=positivity)
    with pytest.raises(ValueError, match="`tie_tolerance`=-1"):
        metric.compute(**kwargs, reward_fn=positivity, tie_tolerance=-1)


# -------------------------------------------------------------------------------------------------------------- bleu

BLEU_PREDICTIONS = ["the cat sat on the mat", "a dog ran in the park today", "It is raining"]
BLEU_REFERENCES = [
    ["the cat sat on the mat", "a cat was sitting on the mat"],
    ["a dog was running in the park", "the dog ran in a park"],
    ["it is raining heavily", "It rains"],
]


def sacrebleu_as_dict(score):
    return {
        "bleu": score.score,
        "counts": score.counts,
        "totals": score.totals,
        "precisions": score.precisions,
        "brevity_penalty": score.bp,
        "length_ratio": score.ratio,
        "translation_length": score.sys_len,
        "reference_length": score.ref_len,
    }


def test_bleu_equals_sacrebleu_corpus_bleu():
    streams = [[refs[j] for refs in BLEU_REFERENCES] for j in range(2)]
    expected = sacrebleu.corpus_bleu(BLEU_PREDICTIONS, streams)
    metric = load_metric("bleu")
    results = metric.compute(predictions=BLEU_PREDICTIONS, references=BLEU_REFERENCES)
    assert results == sacrebleu_as_dict(expected)
    assert 0 < results["bleu"] < 100

    # Options are passed through: lowercasing matches "It is raining" with "it is raining heavily".
    lowered = metric.compute(predictions=BLEU_PREDICTIONS, references=BLEU_REFERENCES, lowercase=True)
    assert lowered == sacrebleu_as_dict(sacrebleu.corpus_bleu(BLEU_PREDICTIONS, streams, lowercase=True))
    assert lowered["bleu"] > results["bleu"]


def test_bleu_single_and_variable_numbers_of_references():
    metric = load_metric("bleu")
    single = [refs[0] for refs in BLEU_REFERENCES]
    results = metric.compute(predictions=BLEU_PREDICTIONS, references=single)
    assert results == sacrebleu_as_dict(sacrebleu.corpus_bleu(BLEU_PREDICTIONS, [single]))

    variable = [BLEU_REFERENCES[0], BLEU_REFERENCES[1][:1], BLEU_REFERENCES[2]]
    streams = [[r[0] for r in variable], [variable[0][1], None, variable[2][1]]]
    results = metric.compute(predictions=BLEU_PREDICTIONS, references=variable)
    assert results == sacrebleu_as_dict(sacrebleu.corpus_bleu(BLEU_PREDICTIONS, streams))

    with pytest.raises(ValueError, match=r"`references\[1\]`=\[\]"):
        metric.compute(predictions=BLEU_PREDICTIONS[:2], references=[["the cat"], []])


# -------------------------------------------------------------------------------------------------------- perplexity

PPL_TEXTS = ["the film was very good", "hello friend", "i think the book is bad and the song is sad"]


def perplexity_by_hand(model, tokenizer, text, add_start_token=True):
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if add_start_token:
        ids = [tokenizer.bos_token_id] + ids
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0]
    log_probs = torch.log_softmax(logits[:-1].double(), dim=-1)
    nll = -log_probs[torch.arange(len(ids) - 1), torch.tensor(ids[1:])]
    return math.exp(nll.mean().item())


def test_perplexity_equals_exp_mean_nll_by_hand(tiny_model_path):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_path).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    expected = [perplexity_by_hand(model, tokenizer, text) for text in PPL_TEXTS]
    assert len(set(round(p, 3) for p in expected)) == 3

    metric = load_metric("perplexity")
    # Batches of 2 and 1 texts of different lengths: right padding must not change any perplexity.
    results = metric.compute(predictions=PPL_TEXTS, model=tiny_model_path, batch_size=2)
    assert results["perplexities"] == pytest.approx(expected, rel=1e-5)
    assert results["mean_perplexity"] == pytest.approx(sum(expected) / 3, rel=1e-5)

    results = metric.compute(predictions=PPL_TEXTS, model=model, tokenizer=tokenizer, add_start_token=False)
    no_bos = [perplexity_by_hand(model, tokenizer, text, add_start_token=False) for text in PPL_TEXTS]
    assert results["perplexities"] == pytest.approx(no_bos, rel=1e-5)
    assert no_bos != pytest.approx(expected, rel=1e-5)


def test_perplexity_rejects_bad_input(tiny_model_path):
    metric = load_metric("perplexity")
    with pytest.raises(ValueError, match="`model` is required"):
        metric.compute(predictions=PPL_TEXTS)
    with pytest.raises(ValueError, match=r"`predictions\[0\]`='hello'.*at least 2 tokens"):
        metric.compute(predictions=["hello"], model=tiny_model_path, add_start_token=False)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_path)
    with pytest.raises(ValueError, match="`tokenizer`=None"):
        metric.compute(predictions=PPL_TEXTS, model=model)
