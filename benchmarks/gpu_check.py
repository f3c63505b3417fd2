"""The device part of `gpu_check.sh`: PLE's loss pass and a short training on the accelerator, checked and recorded.

1. The loss pass that runs each plain prompt once (a 4D branch mask: the path where sdpa picks a masked kernel on
   an accelerator) against the pass that runs it once per answer, on the device, in fp32 and under bf16 autocast:
   the largest difference of the per-answer log-prob sums and of the gradients.
2. Generation from a pair's shared prompt prefix (run once, its KV cache copied into both rows) against generation
   from each row's own prompt, on the device in fp32: the largest difference of the next-token logits, and whether
   12 greedy tokens agree.
3. Two optimizer steps of `PLETrainer` on the device with `bf16=True`, gradient checkpointing on: finite loss, every
   parameter updated, the peak memory.

Writes `equivalence.json` under `--out` and exits non-zero when a check fails.

```bash
python benchmarks/gpu_check.py --out /tmp/gpu_check             # the accelerator if any, else the CPU
python benchmarks/gpu_check.py --device cpu --out /tmp/dry-run    # the same steps on the CPU
```
"""

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

import torch  # noqa: E402
from datasets import Dataset  # noqa: E402

from ple_trl.pairs.prefix_sharing import shared_prompt_logps  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from memory import peak_memory_bytes, reset_peak_memory  # noqa: E402
from tiny_model import build_tiny_llama  # noqa: E402

# fp32: the two passes differ only by summation order. bf16 autocast: by bf16 rounding of different-shaped matmuls.
TOLERANCE = {"fp32": 1e-4, "bf16": 0.1}


def pair_batch(device, seed=0, vocab=60):
    """4 pairs, prompts of 3 to 30 tokens left-padded to 30, answers of 1 to 12 tokens right-padded to 12."""
    generator = torch.Generator().manual_seed(seed)
    prompt_lengths, answer_lengths = [3, 12, 30, 21], [[12, 5], [1, 12], [7, 7], [12, 2]]
    prompt_mask = torch.zeros(4, 30, dtype=torch.long)
    completion_mask = torch.zeros(4, 2, 12, dtype=torch.long)
    for i, length in enumerate(prompt_lengths):
        prompt_mask[i, 30 - length :] = 1
        for j, answer_length in enumerate(answer_lengths[i]):
            completion_mask[i, j, :answer_length] = 1
    batch = {
        "prompt_ids": torch.randint(4, vocab, (4, 30), generator=generator) * prompt_mask,
        "prompt_mask": prompt_mask,
        "completion_ids": torch.randint(4, vocab, (4, 2, 12), generator=generator) * completion_mask,
        "completion_mask": completion_mask,
    }
    return {key: value.to(device) for key, value in batch.items()}


def make_trainer(model_path, output_dir, device, bf16, **kwargs):
    from ple_trl import PLEConfig, PLETrainer

    args = PLEConfig(
        output_dir=output_dir, principle="be positive and kind", per_device_train_batch_size=2,
        max_completion_length=8, max_steps=2, learning_rate=1e-2, logging_steps=1, report_to="none",
        save_strategy="no", use_cpu=device.type == "cpu", bf16=bf16, seed=0, disable_tqdm=True, **kwargs,
    )  # fmt: skip
    prompts = ["write a review of the movie :", "tell me about your day :", "how was the food ?", "hello friend"]

    def positive_words(completions, **kwargs):
        return [sum(w in ("good", "great", "kind", "happy") for w in c.split()) / 8 for c in completions]

    return PLETrainer(
        model=model_path, reward_funcs=positive_words, args=args, train_dataset=Dataset.from_dict({"prompt": prompts})
    )


def compare_passes(trainer, batch, precision):
    """Largest |shared - separate| over the log-prob sums and over the gradients, in `precision`."""
    model = trainer.model
    model.train()
    results = []
    for shared in (True, False):
        model.zero_grad(set_to_none=True)
        with torch.autocast(batch["prompt_ids"].device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            if shared:
                per_token = shared_prompt_logps(model, trainer.accelerator.unwrap_model(model).config, batch)
            else:
                per_token, _ = trainer._separate_prompt_logps(model, batch)
        mask = batch["completion_mask"].transpose(0, 1).flatten(0, 1)
        sums = (per_token.float() * mask).sum(-1)
        sums.sum().backward()
        grads = {name: p.grad.float().clone() for name, p in model.named_parameters() if p.grad is not None}
        results.append((sums.detach(), grads))
    (sums, grads), (ref_sums, ref_grads) = results
    grad_scale = max(g.abs().max().item() for g in ref_grads.values())
    return {
        "max_logp_sum_diff": (sums - ref_sums).abs().max().item(),
        "max_grad_diff_relative": max((grads[n] - ref_grads[n]).abs().max().item() for n in ref_grads) / grad_scale,
        "same_parameters": sorted(grads) == sorted(ref_grads),
    }


def compare_generation(model, device, vocab=60, pad=0):
    """Largest |shared - unshared| next-token logit, and whether greedy answers agree, for 4 pairs sharing 3 to 40
    tokens (prefixes left-padded, rests of different lengths)."""
    from trl.trainer.utils import pad as pad_tensors

    from ple_trl.pairs.prefix_sharing import generate_from_shared_prefix, prefill_shared_prefix, shared_prefix_layout

    generator = torch.Generator().manual_seed(0)

    def tokens(n, low, high):
        return torch.randint(low, high, (n,), generator=generator).tolist()

    shared = [tokens(n, 4, vocab) for n in (3, 40, 17, 25)]
    plain = [prefix + tokens(n, 4, vocab // 2) for prefix, n in zip(shared, (5, 2, 9, 1))]
    principled = [prefix + tokens(n, vocab // 2, vocab) for prefix, n in zip(shared, (8, 12, 1, 6))]
    prompts = plain + principled
    ids = pad_tensors([torch.tensor(p) for p in prompts], padding_value=pad, padding_side="left").to(device)
    mask = pad_tensors([torch.ones(len(p), dtype=torch.long) for p in prompts], padding_value=0, padding_side="left")
    mask = mask.to(device)
    layout = shared_prefix_layout(prompts, pad)
    model.eval()
    with torch.no_grad():
        expected = model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0))
        name, cache = prefill_shared_prefix(model, layout, device)
        width = layout.prefix_ids.size(1)
        full_mask = layout.attention_mask.to(device)
        positions = (full_mask.cumsum(-1) - 1).clamp(min=0)[:, width:]
        logits = model(
            input_ids=layout.input_ids[:, width:].to(device), attention_mask=full_mask, position_ids=positions,
            **{name: cache},
        ).logits[:, -1]  # fmt: skip
        greedy = {"max_new_tokens": 12, "do_sample": False, "pad_token_id": pad}
        unshared = model.generate(input_ids=ids, attention_mask=mask, **greedy)
        from_prefix = generate_from_shared_prefix(model, model.generate, layout, ids, mask, **greedy)
    model.train()
    return {
        "max_next_token_logit_diff": (logits - expected.logits[:, -1]).abs().max().item(),
        "same_greedy_answers": bool(torch.equal(unshared, from_prefix)),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default=None, help="cpu, cuda, ... (default: the accelerator if any)")
    parser.add_argument("--out", default=os.environ.get("OUT") or "gpu_check_out")
    opts = parser.parse_args(argv)
    device = opts.device or (torch.accelerator.current_accelerator() if torch.accelerator.is_available() else "cpu")
    device = torch.device(device)
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    report = {"device": str(device), "torch": torch.__version__, "failures": []}
    if device.type != "cpu":
        report["device_name"] = torch.get_device_module(device.type).get_device_name(device)

    with tempfile.TemporaryDirectory() as workdir:
        model_path = build_tiny_llama(Path(workdir) / "model", hidden_size=128)
        trainer = make_trainer(model_path, os.path.join(workdir, "eq"), device, bf16=False)
        assert trainer._prefix_sharing_blocker(trainer.model, pair_batch(device), compute_aux_loss=False) is None
        for precision in ("fp32", "bf16"):
            result = compare_passes(trainer, pair_batch(trainer.accelerator.device), precision)
            report[f"loss_pass_{precision}"] = result
            worst = max(result["max_logp_sum_diff"], result["max_grad_diff_relative"])
            if worst > TOLERANCE[precision] or not result["same_parameters"]:
                report["failures"].append(f"loss pass {precision}: {result} (tolerance {TOLERANCE[precision]})")
        result = compare_generation(trainer.accelerator.unwrap_model(trainer.model), trainer.accelerator.device)
        report["generation_shared_prefix_fp32"] = result
        if result["max_next_token_logit_diff"] > TOLERANCE["fp32"] or not result["same_greedy_answers"]:
            report["failures"].append(f"generation from a shared prefix, fp32: {result}")
        del trainer

        trainer = make_trainer(model_path, os.path.join(workdir, "train"), device, bf16=True,
                               gradient_checkpointing=True)  # fmt: skip
        before = {name: p.detach().clone() for name, p in trainer.model.named_parameters()}
        reset_peak_memory(device)
        trainer.train()
        losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
        changed = [not torch.equal(p, before[name]) for name, p in trainer.model.named_parameters()]
        peak = peak_memory_bytes(device)
        report["training_bf16"] = {
            "losses": losses,
            "parameters_changed": f"{sum(changed)}/{len(changed)}",
            "peak_memory_mib": None if peak is None else round(peak / 2**20, 1),
        }
        if len(losses) != 2 or not all(torch.isfinite(torch.tensor(losses))) or not all(changed):
            report["failures"].append(f"bf16 training: {report['training_bf16']}")

    (out / "equivalence.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 1 if report["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
