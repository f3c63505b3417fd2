"""Issue 11, SPA part 2: the implicit reward inside the trainer, `SPAConfig`/`SPATrainer` (best/worst labelling,
self-refined DPO loss and its warm-up, the iteration snapshot as reference, resume), and PLE trained with the implicit
reward and no reward function."""

import json
import math
import os
import re

import pytest
import torch
from datasets import Dataset
from peft import LoraConfig
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

import ple_trl
from ple_trl import PLEConfig, PLETrainer, SPAConfig, SPATrainer
from ple_trl.spa import losses as spa_losses
from ple_trl.scripts.launch import recipe_path
from ple_trl.pairs.audit_log import AUDIT_LOG_NAME
from ple_trl.pairs.checkpoints import TRAINER_STATE_EXTRA_NAME as PLE_STATE_NAME
from ple_trl.pairs.snapshot import SNAPSHOT_NAME

from helpers import make_args, read_labels, snapshot_all, tiny_args

NUMBERS = ["one", "two", "three", "four", "five", "six", "seven", "eight"]
PROMPTS = [f"tell me about the movie {n} :" for n in NUMBERS[:4]]
# 4 steps of 4-token answers, in iterations of 2 steps.
SPA_RUN = dict(max_completion_length=4, max_steps=4, iteration_unit="steps", steps_per_iteration=2)


def spa_args(output_dir, **kwargs):
    return tiny_args(output_dir, SPAConfig, **{**SPA_RUN, **kwargs})


def spa_trainer(
    model, output_dir, ref_model, prompts=PROMPTS, trainer_class=SPATrainer, trainer_kwargs=None, **kwargs
):
    """An SPA run of `SPA_RUN` against `pi_init = ref_model` (an SPA run needs one: see `test_pi_init_is_required`)."""
    return trainer_class(
        model=model,
        ref_model=ref_model,
        args=spa_args(output_dir, **kwargs),
        train_dataset=Dataset.from_dict({"prompt": prompts}),
        **(trainer_kwargs or {}),
    )


def pair_inputs(trainer):
    """Two pairs under one prompt width, known token ids (words of the tiny vocabulary), right-padded answers."""
    tokenizer = trainer.processing_class
    ids = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    prompts = [ids("tell me about the movie :"), ids("write a review of the film :")]
    width = max(len(p) for p in prompts)
    pad = tokenizer.pad_token_id
    prompt_ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
    prompt_mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    answers = [[ids("good and warm"), ids("bad")], [ids("it was nice ."), ids("so sad and cold")]]
    length = max(len(a) for pair in answers for a in pair)
    completion_ids = torch.tensor([[a + [pad] * (length - len(a)) for a in pair] for pair in answers])
    completion_mask = torch.tensor([[[1] * len(a) + [0] * (length - len(a)) for a in pair] for pair in answers])
    return {
        "prompt_ids": prompt_ids,
        "prompt_mask": prompt_mask,
        "completion_ids": completion_ids,
        "completion_mask": completion_mask,
    }, prompts, answers


def direct_logps(model_path, prompt, answer):
    """log p(answer | prompt) token by token from a plain forward of the unpadded sequence."""
    model = AutoModelForCausalLM.from_pretrained(model_path).eval()
    ids = torch.tensor([prompt + answer])
    with torch.no_grad():
        logps = model(ids).logits.log_softmax(-1)[0, len(prompt) - 1 : -1]
    return logps.gather(-1, torch.tensor(answer)[:, None]).squeeze(-1)


def test_public_imports():
    import ple_trl

    assert ple_trl.SPAConfig is SPAConfig and ple_trl.SPATrainer is SPATrainer
    # Siblings on the pair trainer: neither method is the other, and neither config holds the other's fields.
    assert issubclass(SPATrainer, ple_trl.PairTrainer) and issubclass(PLETrainer, ple_trl.PairTrainer)
    assert not issubclass(SPATrainer, PLETrainer) and not issubclass(SPAConfig, PLEConfig)
    spa_fields, ple_fields = (set(c.__dataclass_fields__) for c in (SPAConfig, PLEConfig))
    assert {"principle", "tau0", "ranking_loss_type", "reward_source"} <= ple_fields - spa_fields
    assert {"refinement_alpha", "confidence_quantile"} <= spa_fields - ple_fields


@pytest.mark.parametrize("length_normalize", [False, True])
def test_implicit_reward_equals_hand_computed_log_ratio(tmp_path, tiny_model_path, init_model_path, length_normalize):
    # pi_judge = the current policy (tiny_model_path), pi_init = another model: r = 2 * (log pi - log pi_init).
    args = PLEConfig(
        output_dir=str(tmp_path),
        principle="be kind",
        reward_source="implicit",
        implicit_reward_judge="policy",
        beta_judge=2.0,
        implicit_reward_length_normalize=length_normalize,
        per_device_train_batch_size=2,
        bf16=False,
        report_to="none",
        use_cpu=True,
    )
    trainer = PLETrainer(
        model=tiny_model_path,
        ref_model=init_model_path,
        args=args,
        train_dataset=Dataset.from_dict({"prompt": PROMPTS}),
    )
    assert trainer.reward_func_names == ["implicit_reward"]
    trainer.model.eval()
    inputs, prompts, answers = pair_inputs(trainer)
    rewards = trainer._implicit_rewards(inputs)  # (2, pairs): first answers, second answers
    assert rewards.shape == (2, 2) and not rewards.requires_grad
    for pair, prompt in enumerate(prompts):
        for index in range(2):
            answer = answers[pair][index]
            policy = direct_logps(tiny_model_path, prompt, answer)
            init = direct_logps(init_model_path, prompt, answer)
            reduce = torch.mean if length_normalize else torch.sum
            expected = 2.0 * (reduce(policy) - reduce(init))
            torch.testing.assert_close(rewards[index, pair], expected, atol=1e-4, rtol=1e-4)
    # The two models differ, so the rewards are not all zero (a wrong model would give 0 everywhere).
    assert rewards.abs().min() > 1e-3


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
    output = trainer._generate_and_score_completions([{"prompt": p} for p in PROMPTS[:2]])

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
    assert [r["prompt"] for r in records] == PROMPTS[:2] and {r["route"] for r in records} == {"dpo"}
    logged = trainer._metrics["train"]
    assert logged["spa/implicit_reward_chosen"] == [pytest.approx(2.0)]
    assert logged["spa/implicit_reward_rejected"] == [pytest.approx(-0.75)]
    assert logged["spa/margin"] == [pytest.approx(2.75)]


def test_non_finite_implicit_reward_skips_the_pair(tmp_path, tiny_model_path, init_model_path):
    trainer = spa_trainer(tiny_model_path, tmp_path, init_model_path)
    trainer._implicit_rewards = lambda output, judge_logps=None: torch.tensor([[float("nan"), 1.0], [0.0, 2.0]])
    trainer.model.train()
    output = trainer._generate_and_score_completions([{"prompt": p} for p in PROMPTS[:2]])
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


class RecordingSPATrainer(SPATrainer):
    """Records, at every generation round, the step, the snapshot's and the policy's parameters after the refresh."""

    def _generate_and_score_completions(self, inputs):
        output = super()._generate_and_score_completions(inputs)  # refreshes the snapshot at an iteration boundary
        if not hasattr(self, "records"):
            self.records = []
        policy = self.accelerator.unwrap_model(self.model)
        if self._snapshot.adapter is not None:
            snapshot = {
                n.replace(".ref.", ".default."): p.detach().clone() for n, p in self._snapshot.parameters().items()
            }
            current = {n: p.detach().clone() for n, p in policy.named_parameters() if ".default." in n}
        else:
            snapshot = snapshot_all(self._snapshot.model)
            current = snapshot_all(policy)
        self.records.append((self.state.global_step, snapshot, current))
        return output


def _same(a, b):
    assert a.keys() == b.keys()
    return all(torch.equal(a[name], b[name]) for name in a)


@pytest.mark.parametrize("use_peft", [False, True])
def test_reference_refreshed_at_iteration_boundaries(tmp_path, tiny_model_path, use_peft, init_model_path):
    kwargs = {}
    if use_peft:
        kwargs["peft_config"] = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM")
    trainer = spa_trainer(
        tiny_model_path, tmp_path, init_model_path, trainer_class=RecordingSPATrainer, trainer_kwargs=kwargs
    )
    if use_peft:
        assert "ref" in trainer.model.peft_config and trainer._snapshot.model is None
        assert not any(p.requires_grad for p in trainer._snapshot.parameters().values())
    trainer.train()
    steps = [step for step, _, _ in trainer.records]
    assert steps == [0, 1, 2, 3]
    (_, snap0, pol0), (_, snap1, pol1), (_, snap2, pol2), (_, snap3, pol3) = trainer.records
    assert _same(snap0, pol0)  # the start: the snapshot is the initial policy
    assert _same(snap1, snap0) and not _same(snap1, pol1)  # within iteration 0: unchanged while the policy moves
    assert _same(snap2, pol2) and not _same(snap2, snap1)  # the boundary (step 2): the policy at that step
    assert _same(snap3, snap2) and not _same(snap3, pol3)  # within iteration 1: unchanged


def test_reference_and_margins_survive_resume(tmp_path, tiny_model_path, init_model_path):
    out = tmp_path / "run"
    trainer = spa_trainer(
        tiny_model_path, out, init_model_path, save_strategy="steps", save_steps=1, margin_history_size=3
    )
    trainer.train()
    checkpoint = out / "checkpoint-3"
    # The snapshot saved at step 3 is the policy as at step 2 (the iteration boundary), not the step-3 policy.
    saved = load_file(str(checkpoint / SNAPSHOT_NAME))
    at_boundary = load_file(str(out / "checkpoint-2" / "model.safetensors"))
    at_step3 = load_file(str(checkpoint / "model.safetensors"))
    common = [name for name in saved if name in at_boundary]
    assert len(common) == len(at_boundary)
    assert all(torch.equal(saved[name], at_boundary[name]) for name in common)
    assert not all(torch.equal(saved[name], at_step3[name]) for name in common)
    with open(checkpoint / PLE_STATE_NAME) as f:
        state = json.load(f)
    assert state["snapshot_iteration"] == 1 and len(state["margin_history"]["values"]) == 3

    resumed = spa_trainer(
        tiny_model_path, out, init_model_path, trainer_class=RecordingSPATrainer, save_strategy="steps", save_steps=1,
        margin_history_size=3,
    )  # fmt: skip
    resumed.train(resume_from_checkpoint=str(checkpoint))
    (step, snapshot, _), *_ = resumed.records
    assert step == 3
    assert all(torch.equal(snapshot[name], at_boundary[name]) for name in common)
    # The margin history went on from the saved one: the step-3 values then the resumed step's.
    assert resumed._margin_history.values[:2] == pytest.approx(state["margin_history"]["values"][1:])


def test_peft_reference_adapter_survives_resume(tmp_path, tiny_model_path, init_model_path):
    peft = {"peft_config": LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM")}
    out = tmp_path / "run"
    kwargs = dict(save_strategy="steps", save_steps=1, trainer_class=RecordingSPATrainer, trainer_kwargs=peft)
    trainer = spa_trainer(tiny_model_path, out, init_model_path, **kwargs)
    trainer.train()
    (_, initial, _), _, (_, at_boundary, _), (step, uninterrupted, _) = trainer.records
    assert step == 3 and not _same(uninterrupted, initial)
    saved = load_file(str(out / "checkpoint-3" / SNAPSHOT_NAME))
    assert saved and all(".ref." in name for name in saved)  # the adapter copy, not the model

    # transformers also reloads the "ref" adapter from its checkpoint subfolder; either way it must be the step-2 copy.
    resumed = spa_trainer(tiny_model_path, out, init_model_path, **kwargs)
    resumed.train(resume_from_checkpoint=str(out / "checkpoint-3"))
    (step, snapshot, _), *_ = resumed.records
    assert step == 3 and _same(snapshot, uninterrupted) and _same(snapshot, at_boundary)


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


def test_ple_with_implicit_reward_trains_without_reward_function(tmp_path, tiny_model_path, init_model_path):
    args = make_args(tmp_path, reward_source="implicit", **SPA_RUN)
    dataset = Dataset.from_dict({"prompt": PROMPTS})
    trainer = PLETrainer(model=tiny_model_path, ref_model=init_model_path, args=args, train_dataset=dataset)
    before = snapshot_all(trainer.model)
    trainer.train()
    after = snapshot_all(trainer.model)
    assert all(not torch.equal(before[name], after[name]) for name in before)
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(logs) == 4 and all("rewards/implicit_reward/mean" in entry for entry in logs)
    # The judge (the policy as at the start of each iteration) differs from pi_init from the first round on.
    assert all(entry["reward_std"] > 0 for entry in logs)


@pytest.mark.parametrize(
    "case", ["spa-full-model", "spa-fresh-adapter", "spa-ref-is-the-policy", "ple-implicit", "ple-fresh-adapter"]
)
def test_pi_init_is_required(tmp_path, tiny_model_path, case):
    # Without a pi_init of its own, pi_init is the initial policy and every implicit reward is exactly 0.
    lora = {"peft_config": LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM")}
    kwargs = {
        "spa-fresh-adapter": lora, "ple-fresh-adapter": lora, "spa-ref-is-the-policy": {"ref_model": tiny_model_path}
    }
    if case.startswith("spa"):
        trainer_class, args = SPATrainer, spa_args(tmp_path)
    else:
        trainer_class, args = PLETrainer, make_args(tmp_path, reward_source="implicit", **SPA_RUN)
    with pytest.raises(ValueError, match=r"needs a `pi_init` other than the initial policy.*Pass `ref_model=`"):
        trainer_class(model=tiny_model_path, args=args, train_dataset=Dataset.from_dict({"prompt": PROMPTS}),
                      **kwargs.get(case, {}))  # fmt: skip


def test_tied_pairs_are_counted_and_not_trained(tmp_path, tiny_model_path, init_model_path):
    trainer = spa_trainer(tiny_model_path, tmp_path, init_model_path, save_enhanced_labels=True)
    # Pair 0: two equal rewards (no preference); pair 1: the second answer preferred.
    trainer._implicit_rewards = lambda output, judge_logps=None: torch.tensor([[0.5, 1.0], [0.5, 2.0]])
    trainer.model.train()
    output = trainer._generate_and_score_completions([{"prompt": p} for p in PROMPTS[:2]])
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


def test_implicit_reward_refuses_reward_functions(tmp_path, tiny_model_path, positivity):
    args = PLEConfig(
        output_dir=str(tmp_path), principle="be kind", reward_source="implicit", bf16=False, use_cpu=True,
        per_device_train_batch_size=2, report_to="none",
    )  # fmt: skip
    with pytest.raises(ValueError, match="reward_source='implicit'.*Drop `reward_funcs`"):
        PLETrainer(model=tiny_model_path, reward_funcs=positivity, args=args, train_dataset={"prompt": PROMPTS})


@pytest.mark.parametrize(
    ("config_class", "kwargs", "match"),
    [
        (PLEConfig, {"reward_source": "rm"}, "Unknown `reward_source='rm'`"),
        (PLEConfig, {"implicit_reward_judge": "seed"}, "Unknown `implicit_reward_judge='seed'`"),
        (PLEConfig, {"beta_judge": 0.0}, "`beta_judge=0.0` must be a finite number > 0"),
        (SPAConfig, {"beta": 0.0}, "`beta=0.0` must be > 0"),
        (SPAConfig, {"refinement_alpha": 0.6}, r"`refinement_alpha=0.6` must lie in \[0, 0.5\]"),
        (SPAConfig, {"refinement_warmup_ratio": 1.5}, r"`refinement_warmup_ratio=1.5` must lie in \[0, 1\]"),
        (SPAConfig, {"confidence_quantile": 1.0}, r"`confidence_quantile=1.0` must lie in \[0, 1\)"),
        (SPAConfig, {"margin_history_size": 0}, "`margin_history_size=0` must be an integer >= 1"),
        (SPAConfig, {"decouple_lambda": -0.1}, "`decouple_lambda=-0.1` must be >= 0"),
        (SPAConfig, {"sync_ref_model": True}, "`sync_ref_model=True` is a GRPO setting"),
    ],
)
def test_config_errors(tmp_path, config_class, kwargs, match):
    with pytest.raises(ValueError, match=match):
        config_class(output_dir=str(tmp_path), use_cpu=True, bf16=False, **kwargs)


@pytest.mark.parametrize("field", ["principle", "tau0", "reward_source", "ranking_loss_type"])
def test_spa_config_has_no_ple_field(tmp_path, field):
    with pytest.raises(TypeError, match=f"unexpected keyword argument '{field}'"):
        SPAConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, **{field: "x"})


def test_spa_config_defaults(tmp_path):
    args = SPAConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False)
    assert (args.temperature, args.beta, args.refinement_alpha, args.refinement_warmup_ratio) == (0.7, 0.1, 0.1, 0.2)
    assert (args.confidence_quantile, args.margin_history_size, args.implicit_reward_judge) == (0.1, 50, "iteration")
    assert args.num_generations == 2


def test_spa_trainer_needs_spa_config(tmp_path, tiny_model_path):
    args = PLEConfig(output_dir=str(tmp_path), principle="be kind", use_cpu=True, bf16=False)
    with pytest.raises(TypeError, match="SPATrainer needs an `SPAConfig`"):
        SPATrainer(model=tiny_model_path, args=args, train_dataset={"prompt": PROMPTS})


def test_default_args_are_the_trainers_own_config(tmp_path):
    """`args=None` gives the trainer's own config, named after the model and method; a wrong type names the fix."""
    from trl import GRPOConfig

    spa_args, ple_args = (cls._resolve_args("org/tiny-model", None) for cls in (SPATrainer, PLETrainer))
    assert (type(spa_args), spa_args.output_dir, spa_args.temperature) == (SPAConfig, "tiny-model-SPA", 0.7)
    assert (type(ple_args), ple_args.output_dir) == (PLEConfig, "tiny-model-PLE")
    with pytest.raises(TypeError, match="`args` is a GRPOConfig; PLETrainer needs a `PLEConfig`"):
        PLETrainer._resolve_args("org/tiny-model", GRPOConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False))


# --- recipe and `ple-trl train --method spa` ------------------------------------------------------------------------

RECIPE = recipe_path("spa")  # shipped in the package, like the PLE recipes
SEED_ROWS = [
    {"prompt": f"tell me about your {thing} :", "chosen": f" it was good and {word} .", "rejected": " bad ."}
    for thing, word in [("day", "warm"), ("city", "nice"), ("food", "great"), ("friend", "kind")]
]


def test_spa_recipe_parses_as_spa():
    from ple_trl.scripts.ple import parse_args

    script_args, training_args, model_args = parse_args([RECIPE])
    assert script_args.method == "spa" and isinstance(training_args, SPAConfig)
    assert script_args.has_seed_stage and script_args.seed_dataset_train_split == "train[:2000]"
    assert script_args.dataset_train_split == "train[2000:]"
    assert (training_args.temperature, training_args.beta, training_args.refinement_alpha) == (0.7, 0.1, 0.1)
    assert (training_args.refinement_warmup_ratio, training_args.confidence_quantile) == (0.2, 0.1)
    assert training_args.margin_history_size == 50 and training_args.steps_per_iteration == 500
    assert model_args.use_peft is True


def test_method_spa_refuses_rewards_and_ple_knobs(tmp_path, tiny_model_path):
    from ple_trl.scripts.ple import main, parse_args

    data = str(tmp_path / "prompts.jsonl")
    with open(data, "w") as f:
        f.writelines(json.dumps({"prompt": p}) + "\n" for p in PROMPTS)
    base = ["--method", "spa", "--model_name_or_path", tiny_model_path, "--dataset_name", data, "--output_dir",
            str(tmp_path / "out"), "--use_cpu", "True", "--bf16", "False"]  # fmt: skip
    with pytest.raises(ValueError, match="`--method spa` labels its answers with the model's implicit reward"):
        main(*parse_args([*base, "--reward_funcs", "vader_sentiment"]))
    with pytest.raises(ValueError, match=r"not used by the HfArgumentParser: \['--tau0', '0.5'\]"):
        parse_args([*base, "--tau0", "0.5"])  # SPA's config has no PLE field
    with pytest.raises(ValueError, match="add `--method spa`"):
        parse_args(["--model_name_or_path", tiny_model_path, "--seed_dataset_name", data, "--principle", "x"])


def test_method_spa_runs_seed_stage_then_spa(tmp_path, tiny_model_path):
    from ple_trl.scripts.ple import main, parse_args

    seed_data = str(tmp_path / "seed.jsonl")
    with open(seed_data, "w") as f:
        f.writelines(json.dumps(row) + "\n" for row in SEED_ROWS)
    prompts = str(tmp_path / "prompts.jsonl")
    with open(prompts, "w") as f:
        f.writelines(json.dumps({"prompt": p}) + "\n" for p in PROMPTS)
    output_dir = tmp_path / "out"
    argv = [
        RECIPE,
        "--model_name_or_path", tiny_model_path,
        "--seed_dataset_name", seed_data,
        "--seed_dataset_train_split", "train",
        "--seed_steps", "2",
        "--seed_learning_rate", "0.01",
        "--dataset_name", prompts,
        "--dataset_train_split", "train",
        "--output_dir", str(output_dir),
        "--max_steps", "2",
        "--steps_per_iteration", "1",
        "--per_device_train_batch_size", "2",
        "--gradient_accumulation_steps", "1",
        "--max_completion_length", "4",
        "--logging_steps", "1",
        "--save_strategy", "no",
        "--report_to", "none",
        "--dtype", "float32",
        "--bf16", "False",
        "--use_cpu", "True",
        "--gradient_checkpointing", "False",
    ]  # fmt: skip
    trainer = main(*parse_args(argv))
    assert isinstance(trainer, SPATrainer) and trainer.state.global_step == 2
    # The seed stage (TRL's DPOTrainer) left a merged model, which SPA trained; pi_init is the model it started from.
    seed_dir = output_dir / "seed"
    assert (seed_dir / "config.json").exists() and not (seed_dir / "adapter_config.json").exists()
    assert trainer.model.base_model.model.config._name_or_path == str(seed_dir)
    assert trainer.ref_model.config._name_or_path == tiny_model_path
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert [entry["spa/iteration"] for entry in logs] == [0.0, 1.0]
    # The seed model differs from pi_init, so the implicit rewards of the first iteration are not all zero.
    assert logs[0]["reward_std"] > 0
    labels = [json.loads(line) for line in (output_dir / AUDIT_LOG_NAME).read_text().splitlines()]
    assert len(labels) == 2 * 2 and {r["prompt"] for r in labels} <= set(PROMPTS)


# --- `ple-trl demo --method spa` ------------------------------------------------------------------------------------


def test_spa_seed_set_is_shipped_and_apart_from_the_demo_prompts():
    from ple_trl.tasks import load_prompts as load_demo_prompts
    from ple_trl.tasks import load_spa_seed

    rows = load_spa_seed()
    assert len(rows) == 36
    prompts = {row["prompt"][-1]["content"] for row in rows}
    assert len(prompts) == 36 and not prompts & set(load_demo_prompts())
    for row in rows:
        assert row["chosen"][0]["role"] == row["rejected"][0]["role"] == "assistant"
        assert len(row["chosen"][0]["content"]) > len(row["rejected"][0]["content"])  # warm and full, against curt


def test_demo_method_spa_runs_seed_stage_then_spa(tmp_path, tiny_model_path, capsys):
    from ple_trl import cli

    out = tmp_path / "spa-demo"
    argv = [
        "demo", "--method", "spa", "--model", tiny_model_path, "--output-dir", str(out), "--steps", "2",
        "--batch-size", "2", "--num-heldout", "2", "--max-completion-length", "4", "--num-train-prompts", "4",
        "--steps-per-iteration", "1", "--seed-steps", "2", "--seed", "0", "--threads", "1", "--quiet",
    ]  # fmt: skip
    assert cli.main(argv) == 0
    stdout = capsys.readouterr().out
    assert "plain prompt: reward" in stdout and "After the seed DPO stage alone" in stdout
    results = json.loads((out / "demo_results.json").read_text())
    assert results["settings"]["method"] == "spa" and results["settings"]["seed_steps"] == 2
    assert "principle" not in results["settings"]
    for moment in ("before", "after_seed", "after"):
        assert len(results[moment]["plain"]["answers"]) == 2
    # The seed stage saved a merged model; SPA trained 2 steps of 2 pairs and logged its metrics.
    assert (out / "seed" / "config.json").is_file() and not (out / "seed" / "adapter_config.json").exists()
    state = json.loads((out / "trainer_state.json").read_text())
    logged = [entry for entry in state["log_history"] if "loss" in entry]
    assert state["global_step"] == 2 and all("spa/margin" in entry for entry in logged)
    labels = [json.loads(line) for line in (out / AUDIT_LOG_NAME).read_text().splitlines()]
    assert len(labels) == 4 and all("chosen" in row and "rejected" in row for row in labels)


def test_spa_log_completions_writes_its_pairs(tmp_path, tiny_model_path, init_model_path):
    import pandas as pd

    trainer = spa_trainer(
        tiny_model_path, tmp_path, init_model_path, max_steps=2, log_completions=True, num_completions_to_print=0
    )
    trainer.train()
    frame = pd.read_parquet(tmp_path / "completions" / "completions_00002.parquet")
    assert list(frame.columns) == ["step", "prompt", "chosen", "rejected", "reward_chosen", "reward_rejected", "route"]
    assert len(frame) == 2 and set(frame["prompt"]) <= set(PROMPTS)
    assert (frame["reward_chosen"] >= frame["reward_rejected"]).all()


def test_trl_reference_syncing_contract():
    # The snapshot is refreshed with TRL's `SyncRefModelCallback.sync_target_model(model, target_model, alpha)`.
    import inspect

    from trl.trainer.callbacks import SyncRefModelCallback

    assert list(inspect.signature(SyncRefModelCallback.sync_target_model).parameters) == [
        "model",
        "target_model",
        "alpha",
    ]
    source = torch.nn.Linear(2, 2)
    target = torch.nn.Linear(2, 2)
    SyncRefModelCallback.sync_target_model(source, target, 1.0)
    assert torch.equal(source.weight, target.weight) and torch.equal(source.bias, target.bias)


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
            train_dataset=Dataset.from_dict({"prompt": PROMPTS}),
        )  # fmt: skip
        assert trainer.is_fsdp_enabled


def test_readme_spa_example_runs(tmp_path, tiny_model_path, init_model_path, monkeypatch):
    readme = open(os.path.join(os.path.dirname(__file__), "..", "README.md")).read()
    code = re.search(r"```python\n(.*?)```", readme.split("## SPA: no reward model", 1)[1], re.S).group(1)
    monkeypatch.chdir(tmp_path)
    namespace = {}
    code = code.replace('"path/to/seed-dpo-model"', repr(tiny_model_path))
    code = code.replace('"path/to/sft-model"', repr(init_model_path))
    exec(code.replace("max_completion_length=64", "max_completion_length=8"), namespace)
    trainer = namespace["trainer"]
    assert trainer.state.global_step == 8
    # Two iterations of 4 steps: the snapshot (SPA's reference) was refreshed once, at step 4.
    assert trainer._snapshot.iteration == 1
    assert math.isfinite(trainer.state.log_history[-1]["train_loss"])
