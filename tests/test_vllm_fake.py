"""PLE through GRPO's inherited vLLM generation path, with a fake vLLM backend (no vLLM, no GPU).

GRPO hands `VLLMGeneration.generate(prompts, images, num_generations, profiler)` its prompts as token ids. In server
mode vLLM de-duplicates them by position (`prompts[::num_generations]`, then `n=num_generations` answers each); in
colocate mode it generates one answer per prompt. PLE sets `num_generations = 1`, so each of its 2B prompts (B plain,
then B principle-guided) must be sent once and answered once. The fake reproduces both modes' indexing exactly, and
answers positively only when the prompt it receives carries the principle, so the block order is visible in the
rewards.
"""

import pytest
import torch
from datasets import Dataset
from transformers import AutoTokenizer

from ple_trl import PLETrainer
from ple_trl.ple.principles import wrap

from helpers import PRINCIPLE, PROMPTS, make_args

VLLM_PROMPTS = PROMPTS + ["tell me a story about a friend :", "why is the weather cold ?"]


class FakeVLLMGeneration:
    """Stands in for `trl.generation.vllm_generation.VLLMGeneration`: same `generate` and `sync_weights` signatures and
    return shapes, deterministic answers."""

    def __init__(self, tokenizer, mode):
        self.tokenizer, self.mode = tokenizer, mode
        self.calls, self.syncs = [], 0

    def sync_weights(self):
        self.syncs += 1

    def _answer(self, prompt_ids):
        guided = self.tokenizer.decode(prompt_ids).split()[: len(PRINCIPLE.split())] == PRINCIPLE.split()
        text = "good great happy" if guided else "bad sad"
        return self.tokenizer(text, add_special_tokens=False)["input_ids"] + [self.tokenizer.eos_token_id]

    def generate(self, prompts, images, num_generations, profiler=None):
        self.calls.append({"prompts": [list(p) for p in prompts], "num_generations": num_generations})
        if self.mode == "server":  # as VLLMGeneration: unique prompts by position, n answers each, re-expanded
            unique = prompts[::num_generations]
            prompt_ids = [list(p) for p in unique for _ in range(num_generations)]
            completion_ids = [self._answer(p) for p in unique for _ in range(num_generations)]
        else:  # colocate: n=1, one answer per prompt
            prompt_ids = [list(p) for p in prompts]
            completion_ids = [self._answer(p) for p in prompts]
        logprobs = [[[-0.5] for _ in ids] for ids in completion_ids]  # (answers, tokens, top-k=1)
        return prompt_ids, completion_ids, logprobs, None


@pytest.mark.parametrize("mode", ["server", "colocate"])
def test_vllm_path_sends_each_plain_and_principled_prompt_once(tiny_model_path, positivity, tmp_path, mode):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    # GRPO's default of gradient checkpointing (on), which this test was written under
    args = make_args(tmp_path, per_device_train_batch_size=3, gradient_checkpointing=True)
    trainer = PLETrainer(
        model=tiny_model_path,
        reward_funcs=positivity,
        args=args,
        train_dataset=Dataset.from_dict({"prompt": VLLM_PROMPTS}),
    )
    fake = FakeVLLMGeneration(tokenizer, mode)
    # The inherited vLLM branch of `_generate_single_turn`, with the fake in place of a vLLM engine.
    trainer.use_vllm, trainer.vllm_generation, trainer._last_loaded_step = True, fake, -1
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}

    trainer.train()

    assert len(fake.calls) == 2  # one generation round per optimizer step, both halves in one call
    assert fake.syncs == 2  # weights pushed once per step, as GRPO does
    for call in fake.calls:
        assert call["num_generations"] == 1
        texts = [" ".join(tokenizer.decode(ids).split()) for ids in call["prompts"]]
        assert len(texts) == 6 and len(set(texts)) == 6  # 2B distinct prompts
        plain, principled = texts[:3], texts[3:]
        assert set(plain) <= set(VLLM_PROMPTS)  # plain block first ...
        expected = [" ".join(wrap(p, PRINCIPLE).split()) for p in plain]
        assert principled == expected  # ... then the same prompts, principle-guided, in the same order

    # One answer per prompt, and the positive answers (given to principled prompts) were scored as principled.
    history = [entry for entry in trainer.state.log_history if "ple/reward_principled" in entry]
    assert len(history) == 2
    for entry in history:
        assert entry["ple/reward_principled"] == pytest.approx(1.0)
        assert entry["ple/reward_plain"] == pytest.approx(-1.0)
        assert entry["ple/rank_fraction"] == pytest.approx(1.0)  # gap 2 > tau
        assert entry["completions/mean_length"] == pytest.approx(3.5)  # 4 and 3 tokens, one answer each
    assert any(not torch.equal(p, before[n]) for n, p in trainer.model.named_parameters())
    assert all(torch.isfinite(torch.tensor(entry["loss"])) for entry in trainer.state.log_history if "loss" in entry)
