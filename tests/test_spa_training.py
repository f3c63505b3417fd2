"""`SPATrainer`: best/worst labelling by the implicit reward (ties and non-finite rewards skipped), the self-refined
DPO loss with its warm-up and de-coupled noise detection, the iteration snapshot as the DPO reference (refreshed at
iteration boundaries, saved in checkpoints, restored on resume), the pair table, and the backends that cannot keep a
snapshot."""

import json
import math
import os
import re

import pytest
import torch
from datasets import Dataset
from peft import LoraConfig
from safetensors.torch import load_file

import ple_trl
from ple_trl import PLEConfig, PLETrainer, SPAConfig, SPATrainer
from ple_trl.pairs.audit_log import AUDIT_LOG_NAME
from ple_trl.pairs.checkpoints import TRAINER_STATE_EXTRA_NAME as PLE_STATE_NAME
from ple_trl.pairs.snapshot import SNAPSHOT_NAME
from ple_trl.spa import losses as spa_losses

from helpers import README, SPA_PROMPTS, make_args, pair_inputs, read_labels, snapshot_all, spa_trainer


def test_public_imports():
    assert ple_trl.SPAConfig is SPAConfig and ple_trl.SPATrainer is SPATrainer
    # Siblings on the pair trainer: neither method is the other, and neither config holds the other's fields.
    assert issubclass(SPATrainer, ple_trl.PairTrainer) and issubclass(PLETrainer, ple_trl.PairTrainer)
    assert not issubclass(SPATrainer, PLETrainer) and not issubclass(SPAConfig, PLEConfig)
    spa_fields, ple_fields = (set(c.__dataclass_fields__) for c in (SPAConfig, PLEConfig))
    assert {"principle", "tau0", "ranking_loss_type", "reward_source"} <= ple_fields - spa_fields
    assert {"refinement_alpha", "confidence_quantile"} <= spa_fields - ple_fields


def test_best_worst_labelling_and_audit_log(tmp_path, tiny_model_path, init_model_path):
    trainer = spa_trainer(tiny_model_path, tmp_path, init_model_path, save_enhanced_labels=True)
    generated = {}
    generate = trainer._generate

    def recording_generate(prompts):
        result = generate(prompts)
        generated["completion_ids"] = result[1]
        return result

    trainer._generate = recording_generate
    # Known rewards, (2, pairs): pair 0 prefers its first sample (1.0 > 0.5), pair 1 its second (3.0 > -2.0).
    trainer._implicit_rewards = lambda output, judge_logps=None: torch.tensor([[1.0, -2.0], [0.5, 3.0]])
    trainer.model.train()
    output = trainer._generate_and_score_completions([{"prompt": p} for p in SPA_PROMPTS[:2]])

    first, second = generated["completion_ids"][:2], generated["completion_ids"][2:]
    expected_chosen = [first[0], second[1]]
    expected_rejected = [second[0], first[1]]
    for pair in range(2):
        chosen = output["completion_ids"][pair, 0][output["completion_mask"][pair, 0].bool()].tolist()
        rejected = output["completion_ids"][pair, 1][output["completion_mask"][pair, 1].bool()].tolist()
        assert chosen == list(expected_chosen[pair]) and rejected == list(expected_rejected[pair])
    assert output["valid"].tolist() == [True, True]
    # The DPO reference log-probs follow the same reordering: recompute them on the reordered pairs.
    ref_sums, _ = trainer._frozen_pair_logps("snapshot", output)
    torch.testing.assert_close(output["ref_logps"], ref_sums.transpose(0, 1))

    with open(os.path.join(tmp_path, AUDIT_LOG_NAME)) as f:
        records = [json.loads(line) for line in f]
    assert [(r["reward_chosen"], r["reward_rejected"], r["margin"], r["chosen_sample"]) for r in records] == [
        (1.0, 0.5, 0.5, "first"),
        (3.0, -2.0, 5.0, "second"),
    ]
    assert [r["prompt"] for r in records] == SPA_PROMPTS[:2] and {r["route"] for r in records} == {"dpo"}
    logged = trainer._metrics["train"]
    assert logged["spa/implicit_reward_chosen"] == [pytest.approx(2.0)]
    assert logged["spa/implicit_reward_rejected"] == [pytest.approx(-0.75)]
    assert logged["spa/margin"] == [pytest.approx(2.75)]


def test_non_finite_implicit_reward_skips_the_pair(tmp_path, tiny_model_path, init_model_path):
    trainer = spa_trainer(tiny_model_path, tmp_path, init_model_path)
    trainer._implicit_rewards = lambda output, judge_logps=None: torch.tensor([[float("nan"), 1.0], [0.0, 2.0]])
    trainer.model.train()
    output = trainer._generate_and_score_completions([{"prompt": p} for p in SPA_PROMPTS[:2]])
    assert output["valid"].tolist() == [False, True]
    assert trainer._metrics["train"]["spa/skipped_pairs"] == [1.0]
    trainer.current_gradient_accumulation_steps = 1
    loss = trainer._compute_loss(trainer.model, output)
    assert torch.isfinite(loss)


def _loss_case(trainer, global_step, max_steps, history):
    inputs, _, _ = pair_inputs(trainer)
    inputs["ref_logps"] = torch.tensor([[-10.0, -12.0], [-9.0, -8.0]])
    inputs["valid"] = torch.tensor([True, True])
    trainer.state.global_step, trainer.state.max_steps = global_step, max_steps
    trainer.current_gradient_accumulation_steps = 1
    trainer._margin_history.load_state_dict({**trainer._margin_history.state_dict(), "values": history})
    sums, _, _ = trainer._pair_logps(trainer.model, inputs)
    h = (sums[0] - inputs["ref_logps"][:, 0]) - (sums[1] - inputs["ref_logps"][:, 1])
    return inputs, h.detach()


def test_self_refined_loss_and_confidence_mask(tmp_path, tiny_model_path, init_model_path):
    trainer = spa_trainer(tiny_model_path, tmp_path, init_model_path, margin_history_size=4, confidence_quantile=0.25)
    trainer.model.train()
    inputs, h = _loss_case(trainer, global_step=5, max_steps=10, history=[0.0, 0.0, 0.0, 0.0])
    margins = 0.1 * h
    # A full buffer: sorted [lo, lo, hi, hi] with d = int(4 * 0.25) = 1 gives (s[1] + s[2]) / 2, i.e. the midpoint of
    # the two pairs' margins, so exactly one pair is confident.
    lo, hi = sorted(margins.tolist())
    trainer._margin_history.values = [lo, hi, lo, hi]
    threshold = (lo + hi) / 2
    assert trainer._margin_history.threshold == pytest.approx(threshold)
    z = (margins > threshold).float()
    assert z.sum() == 1

    loss = trainer._compute_loss(trainer.model, inputs)
    a = 0.1
    beta_h = 0.1 * h
    by_hand = -(1 - a + a * z) * torch.nn.functional.logsigmoid(beta_h) - (a - a * z) * torch.nn.functional.logsigmoid(
        -beta_h
    )
    torch.testing.assert_close(loss.detach(), by_hand.mean(), atol=1e-5, rtol=1e-5)
    expected = spa_losses.self_refined_dpo_loss(h, z, 0.1, 0.1).mean()
    torch.testing.assert_close(loss.detach(), expected, atol=1e-6, rtol=1e-6)
    assert trainer._metrics["train"]["spa/refined_fraction"] == [0.5]
    assert trainer._metrics["train"]["spa/confidence_threshold"] == [pytest.approx(threshold)]
    # The batch's mean margin is appended after the loss (the authors' order), the oldest value dropped.
    assert trainer._margin_history.values == pytest.approx([hi, lo, hi, margins.mean().item()])


def test_warm_up_keeps_plain_dpo(tmp_path, tiny_model_path, init_model_path):
    trainer = spa_trainer(tiny_model_path, tmp_path, init_model_path)
    trainer.model.train()
    # 20% of 10 steps: steps 0 and 1 are warm-up, with a threshold above every margin (every z = 0).
    inputs, h = _loss_case(trainer, global_step=1, max_steps=10, history=[1e6] * 50)
    assert trainer.refinement_strength() == 0.0
    loss = trainer._compute_loss(trainer.model, inputs)
    torch.testing.assert_close(loss.detach(), -torch.nn.functional.logsigmoid(0.1 * h).mean(), atol=1e-6, rtol=1e-6)
    assert trainer._metrics["train"]["spa/refined_fraction"] == [0.0]
    trainer._metrics["train"].clear()
    inputs, h = _loss_case(trainer, global_step=2, max_steps=10, history=[1e6] * 50)
    assert trainer.refinement_strength() == 0.1
    loss = trainer._compute_loss(trainer.model, inputs)
    smoothed = -0.9 * torch.nn.functional.logsigmoid(0.1 * h) - 0.1 * torch.nn.functional.logsigmoid(-0.1 * h)
    torch.testing.assert_close(loss.detach(), smoothed.mean(), atol=1e-6, rtol=1e-6)
    assert trainer._metrics["train"]["spa/refined_fraction"] == [1.0]


def test_decoupled_noise_detection_judges_on_mixed_logits(tmp_path, tiny_model_path, init_model_path):
    trainer = spa_trainer(tiny_model_path, tmp_path, init_model_path, decouple_lambda=0.5)
    trainer.model.train()
    with torch.no_grad():  # move the policy away from the snapshot, so that the mixture differs from the policy
        trainer.model.model.layers[0].mlp.up_proj.weight.add_(0.5)
    inputs, h = _loss_case(trainer, global_step=5, max_steps=10, history=[])
    ids = inputs["completion_ids"].transpose(0, 1).flatten(0, 1)
    mask = inputs["completion_mask"].transpose(0, 1).flatten(0, 1)
    full = torch.cat([inputs["prompt_ids"].repeat(2, 1), ids], 1)
    attention = torch.cat([inputs["prompt_mask"].repeat(2, 1), mask], 1)
    length = ids.size(1)
    with torch.no_grad():
        policy_logits = trainer.model(input_ids=full, attention_mask=attention).logits[:, -length - 1 : -1]
        snapshot = trainer._snapshot.model
        snapshot_logits = snapshot(input_ids=full, attention_mask=attention).logits[:, -length - 1 : -1]
    mixed = (1.5 * policy_logits - 0.5 * snapshot_logits).log_softmax(-1)
    logps = (mixed.gather(-1, ids[..., None]).squeeze(-1) * mask).sum(-1).view(2, 2)
    ref = inputs["ref_logps"]
    h_mixed = (logps[0] - ref[:, 0]) - (logps[1] - ref[:, 1])
    assert not torch.allclose(h_mixed, h, atol=1e-3)
    trainer._compute_loss(trainer.model, inputs)
    # The margins the confidence is judged on (and remembered) are the mixed ones, not the policy's.
    assert trainer._margin_history.values == [pytest.approx((0.1 * h_mixed).mean().item(), abs=1e-5)]


def policy_at(checkpoint, use_peft=False):
    """The policy's weights saved in `checkpoint`, by name: the model's, or the trained adapter's under PEFT."""
    return load_file(str(checkpoint / ("adapter_model.safetensors" if use_peft else "model.safetensors")))


def snapshot_at(checkpoint, use_peft=False):
    """The iteration snapshot saved in `checkpoint`, named as the policy's weights are saved (the `"ref"` adapter's
    copy under PEFT, named as the trained adapter's)."""
    saved = load_file(str(checkpoint / SNAPSHOT_NAME))
    return {name.replace(".ref.", "."): tensor for name, tensor in saved.items()} if use_peft else saved


def same(policy, snapshot):
    """Whether a snapshot holds the values of `policy` (every saved weight of the policy, compared by name)."""
    assert policy and set(policy) <= set(snapshot)
    return all(torch.equal(policy[name], snapshot[name]) for name in policy)


@pytest.mark.parametrize("use_peft", [False, True])
def test_reference_refreshed_at_iteration_boundaries(tmp_path, tiny_model_path, use_peft, init_model_path):
    kwargs = {}
    if use_peft:
        kwargs["peft_config"] = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM")
    trainer = spa_trainer(
        tiny_model_path, tmp_path, init_model_path, trainer_kwargs=kwargs, save_strategy="steps", save_steps=1
    )
    if use_peft:  # the snapshot is a second, frozen adapter of the policy, not a copy of the model
        assert "ref" in trainer.model.peft_config
        reference_adapter = [p for name, p in trainer.model.named_parameters() if ".ref." in name]
        assert reference_adapter and not any(p.requires_grad for p in reference_adapter)
    initial = {
        name.replace(".default.", "."): p.detach().clone()
        for name, p in trainer.model.named_parameters()
        if ".default." in name or not use_peft
    }
    trainer.train()
    # Checkpoint k holds the policy after step k and the snapshot step k was trained against.
    policy = {step: policy_at(tmp_path / f"checkpoint-{step}", use_peft) for step in (1, 2, 3, 4)}
    snapshot = {step: snapshot_at(tmp_path / f"checkpoint-{step}", use_peft) for step in (1, 2, 3, 4)}
    initial = {name: initial[name] for name in policy[1]}
    assert same(initial, snapshot[1]) and not same(policy[1], snapshot[1])  # the start: the initial policy
    assert same(initial, snapshot[2]) and not same(policy[2], snapshot[2])  # iteration 0: unchanged, the policy moves
    assert same(policy[2], snapshot[3]) and not same(initial, snapshot[3])  # the boundary (step 2): the policy there
    assert same(policy[2], snapshot[4]) and not same(policy[4], snapshot[4])  # iteration 1: unchanged


def test_reference_and_margins_survive_resume(tmp_path, tiny_model_path, init_model_path):
    out = tmp_path / "run"
    trainer = spa_trainer(
        tiny_model_path, out, init_model_path, save_strategy="steps", save_steps=1, margin_history_size=3
    )
    trainer.train()
    checkpoint = out / "checkpoint-3"
    # The snapshot saved at step 3 is the policy as at step 2 (the iteration boundary), not the step-3 policy.
    at_boundary = policy_at(out / "checkpoint-2")
    assert same(at_boundary, snapshot_at(checkpoint)) and not same(policy_at(checkpoint), snapshot_at(checkpoint))
    with open(checkpoint / PLE_STATE_NAME) as f:
        state = json.load(f)
    assert state["snapshot_iteration"] == 1 and len(state["margin_history"]["values"]) == 3

    resumed = spa_trainer(
        tiny_model_path, tmp_path / "resumed", init_model_path, save_strategy="steps", save_steps=1,
        margin_history_size=3,
    )  # fmt: skip
    resumed.train(resume_from_checkpoint=str(checkpoint))
    last = tmp_path / "resumed" / "checkpoint-4"
    # Step 4 (iteration 1) was trained against the restored snapshot, the policy as at step 2.
    assert same(at_boundary, snapshot_at(last))
    # The margin history went on from the saved one: the step-3 values then the resumed step's.
    with open(last / PLE_STATE_NAME) as f:
        resumed_state = json.load(f)
    assert resumed_state["margin_history"]["values"][:2] == pytest.approx(state["margin_history"]["values"][1:])


def test_peft_reference_adapter_survives_resume(tmp_path, tiny_model_path, init_model_path):
    peft = {"peft_config": LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM")}
    kwargs = dict(save_strategy="steps", save_steps=1, trainer_kwargs=peft)
    out = tmp_path / "run"
    spa_trainer(tiny_model_path, out, init_model_path, **kwargs).train()
    saved = load_file(str(out / "checkpoint-3" / SNAPSHOT_NAME))
    assert saved and all(".ref." in name for name in saved)  # the adapter copy, not the model
    at_boundary = snapshot_at(out / "checkpoint-3", use_peft=True)  # the policy's adapter as at step 2
    assert same(policy_at(out / "checkpoint-2", use_peft=True), at_boundary)
    assert not same(snapshot_at(out / "checkpoint-1", use_peft=True), at_boundary)  # refreshed since the start

    # transformers also reloads the "ref" adapter from its checkpoint subfolder; either way it must be the step-2 copy.
    resumed = spa_trainer(tiny_model_path, tmp_path / "resumed", init_model_path, **kwargs)
    resumed.train(resume_from_checkpoint=str(out / "checkpoint-3"))
    uninterrupted = snapshot_at(out / "checkpoint-4", use_peft=True)
    assert same(at_boundary, snapshot_at(tmp_path / "resumed" / "checkpoint-4", use_peft=True))
    assert same(at_boundary, uninterrupted)


def test_spa_end_to_end_no_reward(tmp_path, tiny_model_path, init_model_path):
    trainer = spa_trainer(tiny_model_path, tmp_path, init_model_path, save_enhanced_labels=True)
    before = snapshot_all(trainer.model)
    trainer.train()
    after = snapshot_all(trainer.model)
    trainable = [name for name, p in trainer.model.named_parameters() if p.requires_grad]
    assert trainable and all(not torch.equal(before[name], after[name]) for name in trainable)
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(logs) == 4
    names = ("implicit_reward_chosen", "implicit_reward_rejected", "margin", "refined_fraction",
             "confidence_threshold", "iteration")  # fmt: skip
    for entry in logs:
        assert all(f"spa/{name}" in entry for name in names)
        assert entry["spa/implicit_reward_chosen"] >= entry["spa/implicit_reward_rejected"]
    assert [entry["spa/iteration"] for entry in logs] == [0.0, 0.0, 1.0, 1.0]
    # Warm-up: 20% of 4 steps, so only the first step (global_step 0) is plain DPO.
    assert logs[0]["spa/refined_fraction"] == 0.0
    with open(os.path.join(tmp_path, AUDIT_LOG_NAME)) as f:
        records = [json.loads(line) for line in f]
    assert len(records) == 4 * 2  # one record per trained pair
    assert all(r["reward_chosen"] >= r["reward_rejected"] for r in records)


def test_tied_pairs_are_counted_and_not_trained(tmp_path, tiny_model_path, init_model_path):
    trainer = spa_trainer(tiny_model_path, tmp_path, init_model_path, save_enhanced_labels=True)
    # Pair 0: two equal rewards (no preference); pair 1: the second answer preferred.
    trainer._implicit_rewards = lambda output, judge_logps=None: torch.tensor([[0.5, 1.0], [0.5, 2.0]])
    trainer.model.train()
    output = trainer._generate_and_score_completions([{"prompt": p} for p in SPA_PROMPTS[:2]])
    assert output["valid"].tolist() == [False, True]
    assert trainer._metrics["train"]["spa/tied_pairs"] == [1.0]
    assert trainer._metrics["train"]["spa/skipped_pairs"] == [0.0]
    assert [record["route"] for record in read_labels(tmp_path)] == ["tied", "dpo"]
    # The tied pair weighs nothing: the loss is the DPO loss of pair 1 alone.
    trainer.current_gradient_accumulation_steps = 1
    trainer.state.global_step, trainer.state.max_steps = 0, 4  # in the warm-up: plain DPO
    loss = trainer._compute_loss(trainer.model, output)
    sums, _, _ = trainer._pair_logps(trainer.model, output)
    ref = output["ref_logps"]
    h = (sums[0, 1] - ref[1, 0]) - (sums[1, 1] - ref[1, 1])
    torch.testing.assert_close(loss, -torch.nn.functional.logsigmoid(0.1 * h), atol=1e-5, rtol=0)


# --- recipe and `ple-trl train --method spa` ------------------------------------------------------------------------


# --- `ple-trl demo --method spa` ------------------------------------------------------------------------------------


def test_spa_log_completions_writes_its_pairs(tmp_path, tiny_model_path, init_model_path):
    import pandas as pd

    trainer = spa_trainer(
        tiny_model_path, tmp_path, init_model_path, max_steps=2, log_completions=True, num_completions_to_print=0
    )
    trainer.train()
    frame = pd.read_parquet(tmp_path / "completions" / "completions_00002.parquet")
    assert list(frame.columns) == ["step", "prompt", "chosen", "rejected", "reward_chosen", "reward_rejected", "route"]
    assert len(frame) == 2 and set(frame["prompt"]) <= set(SPA_PROMPTS)
    assert (frame["reward_chosen"] >= frame["reward_rejected"]).all()


@pytest.mark.parametrize("backend", ["fsdp", "zero3"])
def test_partitioned_parameters_refuse_the_snapshot(tmp_path, tiny_model_path, init_model_path, monkeypatch, backend):
    # Neither runs on CPU: the backend is switched on once the trainer has set up its accelerator and its reference.
    prepare_frozen_model = ple_trl.PairTrainer._prepare_frozen_model

    def partitioned(self, *args):
        reference = prepare_frozen_model(self, *args)
        if backend == "fsdp":
            self.is_fsdp_enabled = True
        else:
            plugin = type("DeepSpeedPlugin", (), {"zero_stage": 3})()
            monkeypatch.setattr(type(self.accelerator.state), "deepspeed_plugin", plugin, raising=False)
        return reference

    monkeypatch.setattr(ple_trl.PairTrainer, "_prepare_frozen_model", partitioned)
    name = "FSDP" if backend == "fsdp" else "DeepSpeed ZeRO-3"
    expected = f"{name} partitions the parameters.*Use DDP or DeepSpeed"
    with pytest.raises(ValueError, match=expected):
        spa_trainer(tiny_model_path, tmp_path, init_model_path)
    if backend == "fsdp":  # PLE with a reward function and a reference keeps no snapshot: not refused
        trainer = PLETrainer(
            model=tiny_model_path, reward_funcs=lambda completions, **kwargs: [0.0] * len(completions),
            args=make_args(tmp_path, ranking_loss_type="dpo", beta=0.1),
            train_dataset=Dataset.from_dict({"prompt": SPA_PROMPTS}),
        )  # fmt: skip
        assert trainer.is_fsdp_enabled


def test_readme_spa_example_runs(tmp_path, tiny_model_path, init_model_path, monkeypatch):
    readme = README.read_text()
    code = re.search(r"```python\n(.*?)```", readme.split("## SPA: no reward model", 1)[1], re.S).group(1)
    monkeypatch.chdir(tmp_path)
    namespace = {}
    code = code.replace('"path/to/seed-dpo-model"', repr(tiny_model_path))
    code = code.replace('"path/to/sft-model"', repr(init_model_path))
    code = code.replace("max_completion_length=64", "max_completion_length=8")
    assert "steps_per_iteration=4)" in code
    # A checkpoint at each iteration boundary, to read the snapshot it was trained against.
    code = code.replace("steps_per_iteration=4)", "steps_per_iteration=4, save_strategy='steps', save_steps=4)")
    exec(code, namespace)
    trainer = namespace["trainer"]
    assert trainer.state.global_step == 8
    # Two iterations of 4 steps: the snapshot (SPA's reference) was refreshed once, to the policy at step 4.
    out = tmp_path / "spa-out"
    with open(out / "checkpoint-8" / PLE_STATE_NAME) as f:
        assert json.load(f)["snapshot_iteration"] == 1
    assert same(policy_at(out / "checkpoint-4"), snapshot_at(out / "checkpoint-8"))
    assert math.isfinite(trainer.state.log_history[-1]["train_loss"])
