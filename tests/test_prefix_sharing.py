"""The loss pass runs each pair's plain prompt once: the same log-probs and gradients as GRPO's layout (the prompt run
once per answer), with sdpa and eager, under LoRA, gradient checkpointing and gradient accumulation. Family by family,
with the fallbacks and their logged reasons: `tests/test_model_families.py`."""

import pytest
import torch
from datasets import Dataset
from peft import LoraConfig

from ple_trl import PLETrainer
from ple_trl.pairs.prefix_sharing import shared_prompt_logps

from helpers import PAD, PROMPTS, by_position, make_args


def pair_batch(seed, device):
    """3 pairs; prompts of 2, 5 and 7 tokens left-padded to 7; answers of 6 slots with 6, 3 and 1 real tokens."""
    generator = torch.Generator().manual_seed(seed)
    prompt_lengths, answer_lengths = [2, 5, 7], [[6, 3], [1, 6], [4, 2]]
    prompt_ids = torch.randint(4, 40, (3, 7), generator=generator)
    prompt_mask = torch.zeros(3, 7, dtype=torch.long)
    completion_ids = torch.randint(4, 40, (3, 2, 6), generator=generator)
    completion_mask = torch.zeros(3, 2, 6, dtype=torch.long)
    for i, length in enumerate(prompt_lengths):
        prompt_mask[i, 7 - length :] = 1
        for j, answer_length in enumerate(answer_lengths[i]):
            completion_mask[i, j, :answer_length] = 1
    batch = {
        "prompt_ids": prompt_ids.masked_fill(prompt_mask == 0, PAD),
        "prompt_mask": prompt_mask,
        "completion_ids": completion_ids.masked_fill(completion_mask == 0, PAD),
        "completion_mask": completion_mask,
    }
    return {key: value.to(device) for key, value in batch.items()}


def pair_trainer(tmp_path, model, **kwargs):
    """A tiny PLE run whose pair forward the tests call on batches of their own."""
    return PLETrainer(
        model=model, reward_funcs=by_position(0.0, 1.0), train_dataset=Dataset.from_dict({"prompt": PROMPTS}),
        args=make_args(tmp_path, **kwargs),
    )  # fmt: skip


def logps_and_grads(trainer, batches, shared):
    """Sums and means of every batch, and the gradients one backward per batch accumulates (weights that differ per
    answer, so a swapped or misaligned answer changes the gradients)."""
    model = trainer.model
    model.train()
    model.zero_grad(set_to_none=True)
    outputs = []
    for batch in batches:
        if shared:
            assert trainer._prefix_sharing_blocker(model, batch, compute_aux_loss=False) is None
            sums, means, _ = trainer._pair_logps(model, batch)
        else:
            per_token, _ = trainer._separate_prompt_logps(model, batch)
            mask = batch["completion_mask"].transpose(0, 1).flatten(0, 1)
            sums = (per_token * mask).sum(-1).view(2, -1)
            means = ((per_token * mask).sum(-1) / mask.sum(-1)).view(2, -1)
        weights = torch.arange(1, sums.numel() + 1, dtype=sums.dtype, device=sums.device).view_as(sums)
        ((weights * sums).sum() + (weights.flip(0) * means).sum()).backward()
        outputs.append((sums.detach(), means.detach()))
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.requires_grad}
    model.zero_grad(set_to_none=True)
    return outputs, grads


def assert_same(trainer, batches):
    shared, shared_grads = logps_and_grads(trainer, batches, shared=True)
    separate, separate_grads = logps_and_grads(trainer, batches, shared=False)
    for (sums, means), (ref_sums, ref_means) in zip(shared, separate, strict=True):
        torch.testing.assert_close(sums, ref_sums, atol=1e-5, rtol=0)
        torch.testing.assert_close(means, ref_means, atol=1e-5, rtol=0)
    assert shared_grads.keys() == separate_grads.keys()
    assert any(grad.abs().sum() > 0 for grad in shared_grads.values())
    for name, grad in shared_grads.items():
        torch.testing.assert_close(grad, separate_grads[name], atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_shared_prompt_gives_the_same_logps_and_gradients(tmp_path, tiny_model_path, attention):
    trainer = pair_trainer(tmp_path, tiny_model_path, model_init_kwargs={"attn_implementation": attention})
    assert trainer.model.config._attn_implementation == attention
    batch = pair_batch(0, trainer.accelerator.device)
    assert_same(trainer, [batch])
    # The per-token values too, where the answers are real tokens (the sums could hide two compensating errors).
    with torch.no_grad():
        shared = shared_prompt_logps(trainer.model, trainer.model.config, batch)
        separate, _ = trainer._separate_prompt_logps(trainer.model, batch)
    mask = batch["completion_mask"].transpose(0, 1).flatten(0, 1).bool()
    torch.testing.assert_close(shared[mask], separate[mask], atol=1e-5, rtol=0)


def test_shared_prompt_under_lora(tmp_path, tiny_model_path):
    # init_lora_weights=False: B is not zero, so A's gradients are not zero either.
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    trainer = PLETrainer(
        model=tiny_model_path, reward_funcs=by_position(0.0, 1.0),
        train_dataset=Dataset.from_dict({"prompt": PROMPTS}),
        args=make_args(tmp_path), peft_config=lora,
    )  # fmt: skip
    names = [name for name, p in trainer.model.named_parameters() if p.requires_grad]
    assert names and all("lora_" in name for name in names)
    assert_same(trainer, [pair_batch(1, trainer.accelerator.device)])


@pytest.mark.parametrize("use_reentrant", [False, True])
def test_shared_prompt_with_gradient_checkpointing(tmp_path, tiny_model_path, use_reentrant):
    trainer = pair_trainer(tmp_path, tiny_model_path)
    # As `Trainer.train` turns it on (the layers then recompute their forward, with the 4D mask, in backward).
    trainer.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": use_reentrant})
    assert trainer.model.model.layers[0].gradient_checkpointing
    assert_same(trainer, [pair_batch(2, trainer.accelerator.device)])


def test_shared_prompt_across_gradient_accumulation(tmp_path, tiny_model_path):
    trainer = pair_trainer(tmp_path, tiny_model_path, gradient_accumulation_steps=2)
    device = trainer.accelerator.device
    assert_same(trainer, [pair_batch(3, device), pair_batch(4, device)])
