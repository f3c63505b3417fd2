"""`ple_trl.evaluation` and the `ple-trl eval` user path: chat models get their chat template for text prompts, the
answers come back without the prompt, reward models score the end of long texts (the answer), and the table."""

import json

import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, LlamaForCausalLM

from ple_trl import evaluation
from ple_trl.evaluation import evaluate_models, format_table, generate_answers, load_causal_lm
from ple_trl.scripts.eval import main as eval_main

EVAL_PROMPTS = ["write a review of the movie", "tell me about your day", "what is the weather"]


@pytest.fixture
def generate_calls(monkeypatch):
    """Every `generate` call of the tiny Llama: the unpadded prompt ids it got, the ids it returned and whether the
    model was in training mode during the call."""
    calls = []
    original = LlamaForCausalLM.generate

    def spy(self, *args, **kwargs):
        training = self.training
        output = original(self, *args, **kwargs)
        ids, mask = kwargs["input_ids"], kwargs["attention_mask"]
        calls.append(([row[m.bool()].tolist() for row, m in zip(ids, mask)], output[:, ids.shape[1] :], training))
        return output

    monkeypatch.setattr(LlamaForCausalLM, "generate", spy)
    return calls


def template_ids(tokenizer, prompt):
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False
    )
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def test_text_prompts_reach_a_chat_model_through_its_template(tiny_model_path, generate_calls):
    model, tokenizer = load_causal_lm(tiny_model_path)
    answers = generate_answers(model, tokenizer, EVAL_PROMPTS, max_new_tokens=3, batch_size=2)
    seen = [ids for prompt_ids, _, _ in generate_calls for ids in prompt_ids]
    assert seen == [template_ids(tokenizer, prompt) for prompt in EVAL_PROMPTS]
    tokens = tokenizer.convert_ids_to_tokens(seen[0])
    assert tokens[0] == "<user>" and tokens[-1] == "<assistant>"
    # Each answer is the decoded new tokens only: no prompt, no special tokens.
    new_ids = [row for _, output, _ in generate_calls for row in output]
    assert answers == [tokenizer.decode(row, skip_special_tokens=True).strip() for row in new_ids]
    assert all(isinstance(answer, str) for answer in answers)
    # Dropout would make answers random: a model that comes in training mode generates in eval mode, then gets its
    # mode back.
    generate_calls.clear()
    model.train()
    generate_answers(model, tokenizer, EVAL_PROMPTS[:1], max_new_tokens=3)
    assert [training for _, _, training in generate_calls] == [False]
    assert model.training

    generate_calls.clear()
    generate_answers(model, tokenizer, EVAL_PROMPTS[:1], max_new_tokens=3, chat_template="off")
    assert generate_calls[0][0] == [tokenizer(EVAL_PROMPTS[0])["input_ids"]]  # raw text, as a base model gets it


def test_conversations_and_chat_template_choices(tiny_model_path, generate_calls):
    model, tokenizer = load_causal_lm(tiny_model_path)
    chats = [[{"role": "user", "content": prompt}] for prompt in EVAL_PROMPTS[:2]]
    expected_prompt_ids = [template_ids(tokenizer, prompt) for prompt in EVAL_PROMPTS[:2]]
    # A conversation, and the same request as text with the template on, reach the model as the template's ids.
    for prompts, chat_template in ((chats, "auto"), (EVAL_PROMPTS[:2], "on")):
        generate_calls.clear()
        answers = generate_answers(model, tokenizer, prompts, max_new_tokens=3, chat_template=chat_template)
        [(prompt_ids, new_ids, _)] = generate_calls
        assert prompt_ids == expected_prompt_ids
        texts = [tokenizer.decode(row, skip_special_tokens=True).strip() for row in new_ids]
        if prompts is chats:  # the answer to a conversation is an assistant message
            assert answers == [[{"role": "assistant", "content": text}] for text in texts]
        else:
            assert answers == texts
    with pytest.raises(ValueError, match="`chat_template='off'`, but the prompts are conversations"):
        generate_answers(model, tokenizer, chats, chat_template="off")
    with pytest.raises(ValueError, match="must be one of"):
        generate_answers(model, tokenizer, chats, chat_template="yes")
    with pytest.raises(ValueError, match="mix text and conversations"):
        generate_answers(model, tokenizer, [EVAL_PROMPTS[0], chats[0]])
    tokenizer.chat_template = None
    with pytest.raises(ValueError, match="has no chat template"):
        generate_answers(model, tokenizer, EVAL_PROMPTS[:1], chat_template="on")
    assert len(generate_answers(model, tokenizer, EVAL_PROMPTS[:1], max_new_tokens=2)) == 1  # auto: raw text


@pytest.fixture(scope="module")
def prompt_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("eval-prompts") / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": prompt}) + "\n" for prompt in EVAL_PROMPTS))
    return str(path)


def eval_argv(model, prompt_file, *extra):
    return ["--model_name_or_path", model, "--dataset_name", prompt_file, "--dataset_split", "train",
            "--num_prompts", "2", "--max_new_tokens", "3", "--no_perplexity", "True", *extra]  # fmt: skip


def test_eval_gives_chat_models_their_template(tiny_model_path, prompt_file, generate_calls):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    results = eval_main(eval_argv(tiny_model_path, prompt_file))
    assert generate_calls[0][0] == [template_ids(tokenizer, prompt) for prompt in EVAL_PROMPTS[:2]]
    assert results["prompts"] == EVAL_PROMPTS[:2]  # the reward still sees the plain text prompt

    generate_calls.clear()
    eval_main(eval_argv(tiny_model_path, prompt_file, "--chat_template", "off"))
    assert generate_calls[0][0] == [tokenizer(prompt)["input_ids"] for prompt in EVAL_PROMPTS[:2]]


def test_eval_scores_the_answer_when_the_reward_model_is_short(
    tiny_model_path, tiny_reward_model_path, prompt_file, tmp_path, monkeypatch
):
    # A reward model that reads 4 tokens, and prompts of 5-6 words: only left truncation keeps the answer.
    short = tmp_path / "short-rm"
    model = AutoModelForSequenceClassification.from_pretrained(tiny_reward_model_path).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_reward_model_path, model_max_length=4)
    model.save_pretrained(short)
    tokenizer.save_pretrained(short)
    answer = " good great kind happy"
    monkeypatch.setattr(
        evaluation, "generate_answers", lambda model, tokenizer, prompts, *args, **kwargs: [answer] * len(prompts)
    )

    results = eval_main(eval_argv(tiny_model_path, prompt_file, "--reward_model_name_or_path", str(short)))

    def score(ids):
        with torch.no_grad():
            return model(input_ids=torch.tensor([ids])).logits[0, 0].item()

    texts = [tokenizer(prompt + answer, add_special_tokens=False)["input_ids"] for prompt in EVAL_PROMPTS[:2]]
    answer_scores = [score(ids[-4:]) for ids in texts]
    assert all(ids[-4:] == tokenizer(answer, add_special_tokens=False)["input_ids"] for ids in texts)
    assert results["models"][tiny_model_path]["reward/short-rm"] == pytest.approx(sum(answer_scores) / 2, abs=1e-5)
    prompt_scores = [score(ids[:4]) for ids in texts]  # what right truncation scored: the prompt's first words
    assert sum(prompt_scores) / 2 != pytest.approx(sum(answer_scores) / 2, abs=1e-4)


def test_evaluate_models_refuses_bad_input_before_loading_anything():
    with pytest.raises(ValueError, match="same"):
        evaluate_models(["m", "m"], EVAL_PROMPTS)
    with pytest.raises(ValueError, match="`prompts` is empty"):
        evaluate_models(["m"], [])
    with pytest.raises(ValueError, match="1 references for 3 prompts"):
        evaluate_models(["m"], EVAL_PROMPTS, references=["x"])

    def reward(prompts, completions, **kwargs):
        return [0.0] * len(completions)

    with pytest.raises(ValueError, match="Two rewards are named 'reward'"):
        evaluate_models(["m"], EVAL_PROMPTS, rewards=[reward, reward])
    with pytest.raises(ValueError, match="not callable"):
        evaluate_models(["m"], EVAL_PROMPTS, rewards={"r": "path/to/model"})


def test_format_table_aligns_columns_by_hand():
    table = format_table([["a", 1.23456, None], ["bb", float("nan"), "x"]], ["k", "v", "w"])
    assert table == "k   v      w\n--  -----  -\na   1.235  -\nbb  nan    x"
    right = format_table([["a", 1.5], ["bb", 10.25]], ["k", "v"], align="<>")
    assert right == "k       v\n--  -----\na     1.5\nbb  10.25"
    with pytest.raises(ValueError, match="one `<` or `>` per column"):
        format_table([["a"]], ["k"], align="<>")


# --- text statistics: relevance proxy, distinct-2, distinct answers -------------------------------------------------


def test_content_words_drop_stop_request_and_short_words():
    # "tell", "please" are request words, "me"/"about" stop words, "'s" is dropped.
    assert evaluation.content_words("Tell me about Paris's museums, please") == {"paris", "museums"}
    # "any", "for", "from", "it", "is", "an" are stop words; "tips" a request word; "ox" is too short.
    assert evaluation.content_words("Any tips for working from home? It is an ox.") == {"working", "home"}
    assert evaluation.content_words("") == set()


def test_stop_words_are_scikit_learns_list():
    # Copied so the demo needs no scikit-learn; the same list keeps benchmarks/compare.py's numbers unchanged.
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    assert evaluation.STOP_WORDS == ENGLISH_STOP_WORDS and len(evaluation.STOP_WORDS) == 318


def test_relevance_counts_answers_sharing_a_content_word_with_their_prompt():
    prompts = ["Any tips for working from home?", "Review the film Inception.", "Roast my cooking.", "Tips for sleep?"]
    answers = [
        "Working at home is nice.",  # shares "working" and "home"
        "The film is great.",  # shares "film"
        "You are kind.",  # "cooking" is not repeated ("roast" and "my" do not count)
        "I'm so glad you're here, happy to give tips!",  # only the request word "tips": filler, not relevant
    ]
    assert evaluation.relevance(prompts, answers) == 0.5
    assert evaluation.relevance(prompts[:1], ["Home is where the heart is."]) == 1.0
    assert evaluation.relevance([], []) == 0.0
    with pytest.raises(ValueError, match="2 prompts for 1 answers"):
        evaluation.relevance(prompts[:2], answers[:1])


def test_distinct_2_pools_bigrams_over_answers():
    # bigrams: (a b) (b a) (a b) | (c d) -> 3 distinct of 4
    assert evaluation.distinct_2(["a b a b", "c d"]) == 0.75
    # lower-cased: "I am glad" twice -> (i am) (am glad) x2 -> 2 distinct of 4
    assert evaluation.distinct_2(["I am glad", "i am GLAD"]) == 0.5
    assert evaluation.distinct_2(["one", ""]) == 0.0
    assert evaluation.distinct_2([]) == 0.0


def test_distinct_answers_is_the_share_of_distinct_strings():
    assert evaluation.distinct_answers(["I'm so glad", "I'm so glad", "Up is a film", "I'm so glad"]) == 0.5
    assert evaluation.distinct_answers(["a", "A"]) == 1.0  # exact strings: case matters here
    assert evaluation.distinct_answers([]) == 0.0


def test_text_statistics_gathers_the_three():
    prompts, answers = ["Review the film Up.", "Tips for sleep?"], ["Up is a fine film", "Up is a fine film"]
    # relevance: "film" is shared with the first prompt only ("up" is a stop word): 1 of 2; bigrams: 4 distinct of 8;
    # distinct answers: 1 of 2.
    stats = evaluation.text_statistics(prompts, answers)
    assert stats == {"relevance": 0.5, "distinct_2": 0.5, "distinct_answers": 0.5}
