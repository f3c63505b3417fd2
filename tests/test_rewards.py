"""`ple_trl.rewards.RewardModelScorer`, the one reward-model scorer of training's script path, `ple-trl eval` and the
metrics: left truncation (the answer is scored), batching, a classifier label's probability, the sigmoid option."""

import math

import pytest
import torch
from tokenizers import processors
from transformers import AutoModelForSequenceClassification, AutoTokenizer, LlamaForSequenceClassification

from ple_trl.rewards import (
    LeftTruncatingRewardModel,
    RewardModelScorer,
    resolve_reward_funcs,
    reward_funcs_registry,
)
from ple_trl.testing import make_reward_tokenizer, tiny_llama_config

LONG_TEXT = "write a review of the movie : good great kind happy"  # 11 words; its last 4 are the answer
SHORT_TEXT = "bad film"


def first_logits(model, ids_list):
    """The model's logits for each list of token ids, scored alone (no padding)."""
    with torch.no_grad():
        return [model(input_ids=torch.tensor([ids])).logits[0].tolist() for ids in ids_list]


@pytest.fixture(scope="module")
def reward_model(tiny_reward_model_path):
    model = AutoModelForSequenceClassification.from_pretrained(tiny_reward_model_path).eval()
    return model, AutoTokenizer.from_pretrained(tiny_reward_model_path)


@pytest.fixture(scope="module")
def classifier_path(tmp_path_factory):
    """A tiny two-label sentiment classifier whose tokenizer puts `[CLS]` before and `[EOS]` after every text."""
    torch.manual_seed(0)
    tokenizer = make_reward_tokenizer()
    cls_id, eos_id = tokenizer.convert_tokens_to_ids(["[CLS]", "[EOS]"])
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [EOS]", special_tokens=[("[CLS]", cls_id), ("[EOS]", eos_id)]
    )
    config = tiny_llama_config(
        len(tokenizer), num_labels=2, id2label={0: "NEGATIVE", 1: "POSITIVE"},
        label2id={"NEGATIVE": 0, "POSITIVE": 1}, pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    path = tmp_path_factory.mktemp("tiny-classifier")
    LlamaForSequenceClassification(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def test_left_truncation_can_keep_a_leading_special_token():
    seen = []

    class Recorder(torch.nn.Module):
        config = None

        def forward(self, input_ids, attention_mask):
            seen.append((input_ids.tolist(), attention_mask.tolist()))
            return input_ids

    model = LeftTruncatingRewardModel(Recorder(), max_length=3, keep_first=1)
    model(
        input_ids=torch.tensor([[1, 2, 3, 4, 5], [6, 7, 0, 0, 0]]),
        attention_mask=torch.tensor([[1] * 5, [1, 1, 0, 0, 0]]),
    )
    assert seen == [([[1, 4, 5], [6, 7, 0]], [[1, 1, 1], [1, 1, 0]])]
    with pytest.raises(ValueError, match="keep_first=3"):
        LeftTruncatingRewardModel(Recorder(), max_length=3, keep_first=3)


def test_reward_model_scores_the_end_of_a_long_text(reward_model):
    model, tokenizer = reward_model
    scorer = RewardModelScorer(model, tokenizer, max_length=4, batch_size=1)
    ids = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in (LONG_TEXT, SHORT_TEXT)]
    expected = [logits[0] for logits in first_logits(model, [ids[0][-4:], ids[1]])]
    scores = scorer(prompts=["write a review of the movie : ", ""], completions=["good great kind happy", SHORT_TEXT])
    assert scores == pytest.approx(expected, abs=1e-5)
    # The start of the text (what right truncation keeps) scores differently: the test tells the two apart.
    assert first_logits(model, [ids[0][:4]])[0][0] != pytest.approx(expected[0], abs=1e-4)
    model.train()
    # scored in eval mode, and the model's mode restored
    assert scorer([""], [SHORT_TEXT]) == pytest.approx(expected[1:], abs=1e-5) and model.training
    model.eval()
    # Batching and padding change nothing; an unlimited scorer sees the whole text.
    batched = RewardModelScorer(model, tokenizer, max_length=4, batch_size=2)
    assert batched(prompts=["", ""], completions=[LONG_TEXT, SHORT_TEXT]) == pytest.approx(expected, abs=1e-5)
    whole = RewardModelScorer(model, tokenizer, batch_size=2)([""], [LONG_TEXT])
    assert whole == pytest.approx([first_logits(model, [ids[0]])[0][0]], abs=1e-5)


def test_sigmoid_option(reward_model):
    model, tokenizer = reward_model
    logit = RewardModelScorer(model, tokenizer)([""], [SHORT_TEXT])[0]
    assert RewardModelScorer(model, tokenizer, sigmoid=True)([""], [SHORT_TEXT]) == pytest.approx(
        [1 / (1 + math.exp(-logit))]
    )


def test_conversations_go_through_the_reward_tokenizers_chat_template(reward_model):
    model, tokenizer = reward_model
    prompt, completion = [{"role": "user", "content": "tell me a story"}], [{"role": "assistant", "content": "good"}]
    text = tokenizer.apply_chat_template(prompt + completion, tokenize=False)
    expected = first_logits(model, [tokenizer(text, add_special_tokens=False)["input_ids"]])[0][0]
    assert RewardModelScorer(model, tokenizer)([prompt], [completion]) == pytest.approx([expected], abs=1e-5)


def test_classifier_label_probability_keeps_its_cls_token(classifier_path):
    scorer = RewardModelScorer(classifier_path, label="positive", max_length=4, device="cpu")
    assert scorer.__name__.endswith("_positive") and scorer.add_special_tokens
    seen = []
    scorer.model.register_forward_pre_hook(lambda module, args, kwargs: seen.append(kwargs["input_ids"][0].tolist()),
                                           with_kwargs=True)  # fmt: skip
    reward = scorer(prompts=["write a review of the movie : "], completions=["good great"])[0]
    tokenizer = scorer.tokenizer
    # [CLS], then the last 3 tokens of the text: the answer and the closing [EOS].
    expected_ids = tokenizer.convert_tokens_to_ids(["[CLS]", "good", "great", "[EOS]"])
    assert seen == [expected_ids]
    logits = first_logits(scorer.model, [expected_ids])[0]
    assert reward == pytest.approx(math.exp(logits[1]) / (math.exp(logits[0]) + math.exp(logits[1])), abs=1e-5)
    assert RewardModelScorer(classifier_path, label="0", device="cpu").label_index == 0


def test_bad_settings_are_refused_with_the_fix(reward_model, classifier_path, tiny_reward_model_no_template_path):
    model, tokenizer = reward_model
    with pytest.raises(ValueError, match="`sigmoid=True` with `label='POSITIVE'`"):
        RewardModelScorer(classifier_path, label="POSITIVE", sigmoid=True)
    with pytest.raises(ValueError, match=r"num_labels=2.*pass `label=`"):
        RewardModelScorer(classifier_path)
    with pytest.raises(ValueError, match="pass its tokenizer"):
        RewardModelScorer(model)
    with pytest.raises(ValueError, match="`batch_size`=0"):
        RewardModelScorer(model, tokenizer, batch_size=0)
    scorer = RewardModelScorer(model, tokenizer)
    with pytest.raises(ValueError, match="both be strings or both be lists"):
        scorer(["a"], [[{"role": "assistant", "content": "good"}]])
    with pytest.raises(ValueError, match="1 prompts but 2 completions"):
        scorer(["a"], ["good", "bad"])
    with pytest.raises(ValueError, match="no chat template"):
        RewardModelScorer(tiny_reward_model_no_template_path, device="cpu")(
            [[{"role": "user", "content": "a"}]], [[{"role": "assistant", "content": "good"}]]
        )


def test_reward_funcs_resolution():
    registry = reward_funcs_registry(max_completion_length=64)
    assert {"vader_sentiment", "profanity_penalty", "think_format_reward", "get_soft_overlong_punishment"} <= set(
        registry
    )
    assert "completion_text" not in registry  # a helper of ple_trl.rewards, not a reward
    vader, path_func = resolve_reward_funcs(["vader_sentiment", "helpers.positivity_reward"])
    assert vader(prompts=["Review:"], completions=["A wonderful, warm film."])[0] > 0
    assert path_func(completions=["good good bad"]) == [pytest.approx(1 / 3)]
    with pytest.raises(ValueError, match=r"--reward_funcs vadr.*vader_sentiment"):
        resolve_reward_funcs(["vadr"])
    with pytest.raises(ValueError, match="has no function .no_such_reward."):
        resolve_reward_funcs(["helpers.no_such_reward"])


def test_registry_takes_trl_reward_functions_and_leaves_out_factories():
    import trl.rewards

    registry = reward_funcs_registry()
    assert registry["accuracy_reward"] is trl.rewards.accuracy_reward
    assert registry["reasoning_accuracy_reward"] is trl.rewards.reasoning_accuracy_reward
    # Factories build a reward from settings; only the overlong penalty is built, and only for a completion length.
    assert "get_cosine_scaled_reward" not in registry and "get_repetition_penalty_reward" not in registry
    assert "get_soft_overlong_punishment" not in registry
    overlong = reward_funcs_registry(max_completion_length=8)["get_soft_overlong_punishment"]
    # Length 8 is the limit and the soft zone is its last 8 // 4 = 2 tokens: 7 tokens cost (6 - 7) / 2 = -0.5.
    assert overlong(completion_ids=[[0] * 5, [0] * 7]) == [0.0, -0.5]


def test_eval_runs_without_loading_the_training_script(tmp_path, monkeypatch):
    """`ple-trl eval` shares the registry (`ple_trl.rewards`) and the data arguments (`ple_trl.scripts.arguments`) with
    `ple-trl train`, but never loads the training script: imported afresh and run through its argument parsing,
    reward resolution, prompt loading and `main` (each up to its first check), it leaves `ple_trl.scripts.ple`
    unloaded."""
    import importlib
    import sys

    import ple_trl.scripts
    from ple_trl.scripts.arguments import DataArguments, RewardArguments

    for name in ("eval", "ple"):  # restored after the test
        monkeypatch.delitem(sys.modules, f"ple_trl.scripts.{name}", raising=False)
        monkeypatch.delattr(ple_trl.scripts, name, raising=False)
    eval_script = importlib.import_module("ple_trl.scripts.eval")
    missing = str(tmp_path / "missing")  # each step below fails on it once its imports are done: nothing loads
    argv = ["--dataset_name", f"{missing}.jsonl", "--prompt_column", "question", "--reward_funcs", "vader_sentiment"]
    (args,) = eval_script.make_parser().parse_args_and_config(["--model_name_or_path", "some-org/model", *argv])
    assert isinstance(args, DataArguments) and isinstance(args, RewardArguments)
    assert (args.prompt_column, args.reward_funcs) == ("question", ["vader_sentiment"])
    assert eval_script.reward_funcs(args) == {"vader_sentiment": reward_funcs_registry()["vader_sentiment"]}
    with pytest.raises(ValueError, match=r"--dataset_name .*missing.jsonl`: the path .* does not exist"):
        eval_script.load_prompts(args)
    with pytest.raises(ValueError, match=r"--model_name_or_path`: the path .* does not exist"):
        eval_script.main(["--model_name_or_path", missing, *argv])
    assert "ple_trl.scripts.ple" not in sys.modules
