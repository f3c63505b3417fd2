"""PLE distils a principle into the model's answers to *plain* prompts, end to end.

A tiny model is first trained (here, in a fixture) to answer principle-guided prompts with positive words and plain
prompts with a coin-flip mix of positive and negative words: principled answers really are better. After a few PLE
steps, its answers to plain prompts score higher under the same reward.
"""

import random

import pytest
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, LlamaForCausalLM

from ple_trl import PLETrainer
from ple_trl.testing import NEGATIVE_WORDS, POSITIVE_WORDS, make_policy_tokenizer, tiny_llama_config

from helpers import PRINCIPLE, make_args, positivity_reward

TOPICS = ["movie", "film", "book", "song", "day", "food", "city", "weather", "story"]
TOPIC_PROMPTS = [f"tell me about the {topic} :" for topic in TOPICS]


@pytest.fixture(scope="module")
def principle_following_model(tmp_path_factory):
    torch.manual_seed(0)
    rng = random.Random(0)
    tokenizer = make_policy_tokenizer()
    config = tiny_llama_config(
        len(tokenizer), pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id
    )
    model = LlamaForCausalLM(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)

    def example():
        prompt = rng.choice(TOPIC_PROMPTS)
        if rng.random() < 0.5:  # principle-guided: always positive
            text = f"{PRINCIPLE}\n\n{prompt} " + " ".join(rng.choices(POSITIVE_WORDS, k=3))
        else:  # plain: a coin flip per word
            text = f"{prompt} " + " ".join(
                rng.choice([POSITIVE_WORDS, NEGATIVE_WORDS])[rng.randrange(6)] for _ in range(3)
            )
        return tokenizer(text)["input_ids"] + [tokenizer.eos_token_id]

    for _ in range(200):
        batch = [example() for _ in range(32)]
        length = max(map(len, batch))
        ids = torch.tensor([seq + [tokenizer.pad_token_id] * (length - len(seq)) for seq in batch])
        mask = (torch.arange(length) < torch.tensor([len(s) for s in batch])[:, None]).long()
        loss = model(input_ids=ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100)).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    path = tmp_path_factory.mktemp("principle-following-lm")
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def mean_reward(model, tokenizer, prompts, samples=8):
    torch.manual_seed(1)
    tokenizer.padding_side = "left"
    inputs = tokenizer([p for p in prompts for _ in range(samples)], return_tensors="pt", padding=True)
    with torch.no_grad():
        output = model.generate(**inputs, do_sample=True, max_new_tokens=4, pad_token_id=tokenizer.pad_token_id)
    answers = tokenizer.batch_decode(output[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    return sum(positivity_reward(answers)) / len(answers)


def test_plain_prompt_reward_rises_after_ple(tmp_path, principle_following_model):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(principle_following_model)
    model = AutoModelForCausalLM.from_pretrained(principle_following_model)
    plain_before = mean_reward(model, tokenizer, TOPIC_PROMPTS)
    principled_before = mean_reward(model, tokenizer, [f"{PRINCIPLE}\n\n{p}" for p in TOPIC_PROMPTS])
    assert principled_before > plain_before + 0.3  # the fixture did its job: principled answers are better

    args = make_args(tmp_path, per_device_train_batch_size=9, max_completion_length=4, max_steps=6, learning_rate=5e-3)
    trainer = PLETrainer(
        model=principle_following_model,
        reward_funcs=positivity_reward,
        args=args,
        train_dataset=Dataset.from_dict({"prompt": TOPIC_PROMPTS}),
    )
    trainer.train()
    ranked = [entry["ple/rank_fraction"] for entry in trainer.state.log_history if "ple/rank_fraction" in entry]
    assert max(ranked) > 0  # the large gaps of the first rounds are ranked
    plain_after = mean_reward(trainer.model, tokenizer, TOPIC_PROMPTS)
    assert plain_after > plain_before + 0.2, (plain_before, plain_after)
