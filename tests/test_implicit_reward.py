"""The implicit reward `beta_judge * (log pi_judge(y|x) - log pi_init(y|x))`: its maths on log-probs, its value in a
run (both answers of a pair scored against the plain prompt), PLE trained on it with no reward function, and the
`pi_init` it needs."""

import math

import pytest
import torch
from datasets import Dataset
from peft import LoraConfig

from transformers import AutoTokenizer

from ple_trl import PLEConfig, PLETrainer, SPATrainer
from ple_trl.pairs.logps import sequence_logps
from ple_trl.rewards.implicit import implicit_reward
from ple_trl.testing import POLICY_SPECIAL

from helpers import SPA_PROMPTS, SPA_RUN, direct_logps, make_args, read_labels, snapshot_all, spa_args

# --- the maths ------------------------------------------------------------------------------------------------------


def test_implicit_reward_is_the_scaled_log_ratio():
    policy = torch.tensor([-3.0, -5.0], requires_grad=True)
    reference = torch.tensor([-4.0, -4.0])
    reward = implicit_reward(policy, reference, beta_judge=0.5)
    assert reward.tolist() == [0.5, -0.5]
    assert not reward.requires_grad


def test_implicit_reward_of_per_token_log_probs_by_sums_or_means():
    policy = torch.tensor([[-1.0, -2.0, -7.0], [-0.5, -0.5, -0.5]])
    reference = torch.tensor([[-2.0, -2.0, -1.0], [-1.0, -2.0, -3.0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    # sums: policy [-3, -1.5], reference [-4, -6]; means: policy [-1.5, -0.5], reference [-2, -2]
    assert implicit_reward(sequence_logps(policy, mask), sequence_logps(reference, mask)).tolist() == [1.0, 4.5]
    means = implicit_reward(sequence_logps(policy, mask, True), sequence_logps(reference, mask, True), 2.0)
    assert means.tolist() == [1.0, 3.0]


def test_implicit_reward_on_known_logits():
    # One answer token (id 0). Judge logits [ln 3, 0] -> p = 3/4; initial model logits [0, 0] -> p = 1/2.
    judge = torch.tensor([[[math.log(3.0), 0.0]]]).log_softmax(-1)
    initial = torch.tensor([[[0.0, 0.0]]]).log_softmax(-1)
    ids = torch.tensor([[0]])
    judge_tokens = judge.gather(-1, ids.unsqueeze(-1)).squeeze(-1)
    initial_tokens = initial.gather(-1, ids.unsqueeze(-1)).squeeze(-1)
    mask = torch.ones(1, 1)
    reward = implicit_reward(sequence_logps(judge_tokens, mask), sequence_logps(initial_tokens, mask))
    assert reward.item() == pytest.approx(math.log(0.75) - math.log(0.5))


@pytest.mark.parametrize("beta_judge", [0.0, -1.0, float("inf"), float("nan")])
def test_implicit_reward_rejects_bad_beta_judge(beta_judge):
    with pytest.raises(ValueError, match="beta_judge"):
        implicit_reward(torch.zeros(2), torch.zeros(2), beta_judge)


def test_implicit_reward_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="same shape"):
        implicit_reward(torch.zeros(2), torch.zeros(3))


# --- inside a run ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("length_normalize", [False, True])
def test_implicit_reward_equals_hand_computed_log_ratio(tmp_path, tiny_model_path, init_model_path, length_normalize):
    # pi_judge = the policy that generated the round (tiny_model_path: the first round comes before any update),
    # pi_init = another model: r = 2 * (log pi - log pi_init) of each answer under the plain prompt, in the audit log.
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    args = make_args(
        tmp_path, principle="be kind", reward_source="implicit", implicit_reward_judge="policy", beta_judge=2.0,
        implicit_reward_length_normalize=length_normalize, max_steps=1, max_completion_length=3,
        save_enhanced_labels=True,
        # Answers of 3 words and no special token, so that their text gives back their token ids.
        generation_kwargs={"suppress_tokens": tokenizer.convert_tokens_to_ids(POLICY_SPECIAL)},
    )  # fmt: skip
    dataset = Dataset.from_dict({"prompt": SPA_PROMPTS})
    trainer = PLETrainer(model=tiny_model_path, ref_model=init_model_path, args=args, train_dataset=dataset)
    assert trainer.reward_func_names == ["implicit_reward"]
    trainer.train()
    records = read_labels(tmp_path)
    assert len(records) == 2
    reduce = torch.mean if length_normalize else torch.sum
    rewards = []
    for record in records:
        prompt = tokenizer(text=record["prompt"])["input_ids"]  # as GRPO tokenizes a text prompt
        for answer_key in ("plain", "principled"):
            answer = tokenizer(record[answer_key], add_special_tokens=False)["input_ids"]
            assert len(answer) == 3, record[answer_key]
            policy = direct_logps(tiny_model_path, prompt, answer)
            init = direct_logps(init_model_path, prompt, answer)
            expected = 2.0 * (reduce(policy) - reduce(init)).item()
            assert record[f"reward_{answer_key}"] == pytest.approx(expected, abs=1e-4, rel=1e-4), answer_key
            rewards.append(record[f"reward_{answer_key}"])
    # The two models differ, so the rewards are not all zero (a wrong model would give 0 everywhere).
    assert min(abs(reward) for reward in rewards) > 1e-3


def test_ple_with_implicit_reward_trains_without_reward_function(tmp_path, tiny_model_path, init_model_path):
    args = make_args(tmp_path, reward_source="implicit", **SPA_RUN)
    dataset = Dataset.from_dict({"prompt": SPA_PROMPTS})
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
        trainer_class(model=tiny_model_path, args=args, train_dataset=Dataset.from_dict({"prompt": SPA_PROMPTS}),
                      **kwargs.get(case, {}))  # fmt: skip


def test_implicit_reward_refuses_reward_functions(tmp_path, tiny_model_path, positivity):
    args = PLEConfig(
        output_dir=str(tmp_path), principle="be kind", reward_source="implicit", bf16=False, use_cpu=True,
        per_device_train_batch_size=2, report_to="none",
    )  # fmt: skip
    with pytest.raises(ValueError, match="reward_source='implicit'.*Drop `reward_funcs`"):
        PLETrainer(model=tiny_model_path, reward_funcs=positivity, args=args, train_dataset={"prompt": SPA_PROMPTS})
