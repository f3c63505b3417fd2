import json
import math
import os

import pytest
import torch
from datasets import Dataset
from peft import LoraConfig
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import GRPOTrainer

from ple_trl import PLETrainer

from helpers import PROMPTS, assert_all_changed, by_position, logged, make_args, snapshot

CHAT_PROMPTS = [[{"role": "user", "content": p}] for p in PROMPTS]


def test_is_a_grpo_trainer():
    assert issubclass(PLETrainer, GRPOTrainer)


@pytest.mark.parametrize("prompts", [PROMPTS, CHAT_PROMPTS], ids=["plain", "chat"])
def test_training_changes_every_parameter_and_logs_ple_metrics(tmp_path, tiny_model_path, positivity, prompts):
    trainer = PLETrainer(
        model=tiny_model_path,
        reward_funcs=positivity,
        args=make_args(tmp_path),
        train_dataset=Dataset.from_dict({"prompt": prompts}),
    )
    before = snapshot(trainer.model)
    trainer.train()
    assert_all_changed(trainer, before)
    assert logged(trainer, "loss") and all(math.isfinite(v) for v in logged(trainer, "loss"))
    for key in ["ple/tau", "ple/rank_fraction", "ple/reward_plain", "ple/reward_principled", "ple/reward_gap",
                "ple/skipped_pairs"]:  # fmt: skip
        assert len(logged(trainer, key)) == 2, key


def test_reward_model_with_its_own_tokenizer_and_a_reward_function(tmp_path, tiny_model_path, tiny_reward_model_path):
    trainer = PLETrainer(
        model=tiny_model_path,
        reward_funcs=[tiny_reward_model_path, by_position(0.0, 1.0)],
        args=make_args(tmp_path, max_steps=1, reward_weights=[1.0, 0.5]),
        train_dataset=Dataset.from_dict({"prompt": CHAT_PROMPTS}),
    )
    assert trainer.reward_processing_classes[0].pad_token == "[PAD]"  # the reward model's own tokenizer
    trainer.train()
    plain, principled = logged(trainer, "ple/reward_plain")[0], logged(trainer, "ple/reward_principled")[0]
    reward_model_mean = logged(trainer, f"rewards/{os.path.basename(tiny_reward_model_path)}/mean")[0]
    # mean of (rm + 0.5 * positional) over both halves = rm mean + 0.5 * mean(0, 1)
    assert (plain + principled) / 2 == pytest.approx(reward_model_mean + 0.25, abs=1e-5)


def test_reward_model_from_config_path(tmp_path, tiny_model_path, tiny_reward_model_path):
    trainer = PLETrainer(
        model=tiny_model_path,
        args=make_args(tmp_path, max_steps=1, reward_model_name_or_path=tiny_reward_model_path),
        train_dataset=Dataset.from_dict({"prompt": PROMPTS}),
    )
    trainer.train()
    assert len(trainer.reward_funcs) == 1 and isinstance(trainer.reward_funcs[0], torch.nn.Module)
    assert math.isfinite(logged(trainer, "ple/reward_plain")[0])


def test_lora_trains_only_the_adapter(tmp_path, tiny_model_path, positivity):
    trainer = PLETrainer(
        model=tiny_model_path,
        reward_funcs=positivity,
        args=make_args(tmp_path),
        train_dataset=Dataset.from_dict({"prompt": PROMPTS}),
        peft_config=LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", task_type="CAUSAL_LM"),
    )
    before = snapshot(trainer.model)
    assert before and all("lora" in name for name in before)
    trainer.train()
    changed = [n for n, p in trainer.model.named_parameters() if n in before and not torch.equal(p, before[n])]
    assert any("lora_B" in name for name in changed)


@pytest.mark.parametrize("gap,expected", [(0.3, 1.0), (0.1, 0.0), (-0.5, 0.0)])
def test_routing_for_a_known_reward_gap(tmp_path, tiny_model_path, gap, expected):
    trainer = PLETrainer(
        model=tiny_model_path,
        reward_funcs=by_position(0.0, gap),
        args=make_args(tmp_path, max_steps=1, save_enhanced_labels=True),
        train_dataset=Dataset.from_dict({"prompt": PROMPTS}),
    )
    trainer.train()
    assert logged(trainer, "ple/rank_fraction") == [expected]
    assert logged(trainer, "ple/reward_gap") == [pytest.approx(gap)]
    labels = [json.loads(line) for line in open(tmp_path / "enhanced_labels.jsonl")]
    assert len(labels) == 2  # one generation round of two pairs
    assert {label["route"] for label in labels} == {"rank" if expected else "wsft"}
    assert all(label["prompt"] in PROMPTS and label["principle"] == "be positive and kind" for label in labels)
    if not expected:  # softmax soft labels over the two rewards
        assert labels[0]["weight_principled"] == pytest.approx(1 / (1 + math.exp(-gap)))
        assert trainer.state.log_history[0]["ple/sft_weight_principled"] == pytest.approx(1 / (1 + math.exp(-gap)))


def test_tau_decays_per_iteration_and_resumes(tmp_path, tiny_model_path, positivity):
    dataset = Dataset.from_dict({"prompt": PROMPTS * 2})
    common = dict(iteration_unit="steps", steps_per_iteration=1, alpha=0.5, max_steps=4)
    trainer = PLETrainer(
        model=tiny_model_path, reward_funcs=positivity, train_dataset=dataset,
        args=make_args(tmp_path / "full", **common, save_strategy="steps", save_steps=2),
    )  # fmt: skip
    trainer.train()
    expected = [0.2 * 0.5**k for k in range(4)]  # tau used at steps 1..4 is tau0 * alpha^(completed iterations)
    assert logged(trainer, "ple/tau") == pytest.approx(expected)

    resumed = PLETrainer(
        model=tiny_model_path, reward_funcs=positivity, train_dataset=dataset,
        args=make_args(tmp_path / "resumed", **common),
    )  # fmt: skip
    resumed.train(resume_from_checkpoint=str(tmp_path / "full" / "checkpoint-2"))
    assert logged(resumed, "ple/tau")[-2:] == pytest.approx(expected[2:])


def test_tau_decays_once_per_epoch_by_default(tmp_path, tiny_model_path, positivity):
    trainer = PLETrainer(
        model=tiny_model_path,
        reward_funcs=positivity,
        args=make_args(tmp_path, max_steps=4),  # 4 prompts, 2 pairs per step: 2 steps per epoch
        train_dataset=Dataset.from_dict({"prompt": PROMPTS}),
    )
    trainer.train()
    assert logged(trainer, "ple/tau") == pytest.approx([0.2, 0.2, 0.18, 0.18])


def test_gradient_accumulation_keeps_pairs_whole(tmp_path, tiny_model_path, positivity):
    trainer = PLETrainer(
        model=tiny_model_path,
        reward_funcs=positivity,
        args=make_args(tmp_path, gradient_accumulation_steps=2, max_steps=1, save_enhanced_labels=True),
        train_dataset=Dataset.from_dict({"prompt": PROMPTS}),
    )
    before = snapshot(trainer.model)
    trainer.train()
    assert_all_changed(trainer, before)
    micro_batches = trainer._buffered_inputs
    assert len(micro_batches) == 2
    for batch in micro_batches:
        assert batch["prompt_ids"].shape[0] == 2 and batch["completion_ids"].shape[:2] == (2, 2)
        assert batch["rank_mask"].shape == batch["weight_principled"].shape == (2,)
    # one generation round for both micro-steps, every pair labelled once
    labels = [json.loads(line) for line in open(tmp_path / "enhanced_labels.jsonl")]
    assert sorted(label["prompt"] for label in labels) == sorted(PROMPTS)


@pytest.mark.parametrize("peft", [False, True], ids=["frozen-copy", "adapter-disabled"])
def test_reference_anchored_ranking(tmp_path, tiny_model_path, peft):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_path)  # in memory: GRPO could not reload it by name
    model.config._name_or_path = ""
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    trainer = PLETrainer(
        model=model,
        reward_funcs=by_position(0.0, 1.0),
        args=make_args(tmp_path, beta=0.1, ranking_loss_type="dpo"),
        train_dataset=Dataset.from_dict({"prompt": PROMPTS}),
        processing_class=tokenizer,
        peft_config=LoraConfig(r=4, target_modules="all-linear", task_type="CAUSAL_LM") if peft else None,
    )
    assert (trainer.ref_model is None) == peft
    trainer.model.eval()  # evaluation mode: no gradient-accumulation scaling of the loss
    batch = trainer._generate_and_score_completions([{"prompt": PROMPTS[0]}, {"prompt": PROMPTS[1]}])
    # before any update the policy is the reference: the DPO margin is 0 and the loss is log 2 on ranked pairs
    with torch.no_grad():
        loss = trainer._compute_loss(trainer.model, batch)
    trainer.model.train()
    assert batch["ref_logps"].shape == (2, 2)
    assert loss.item() == pytest.approx(math.log(2), abs=1e-4)
    trainer.train()
    assert logged(trainer, "ple/loss_rank")


def test_explicit_ref_model(tmp_path, tiny_model_path):
    trainer = PLETrainer(
        model=tiny_model_path,
        ref_model=tiny_model_path,
        reward_funcs=by_position(0.0, 1.0),
        args=make_args(tmp_path, beta=0.1, ranking_loss_type="ipo", max_steps=1),
        train_dataset=Dataset.from_dict({"prompt": PROMPTS}),
    )
    assert trainer.ref_model is not None and not any(p.requires_grad for p in trainer.ref_model.parameters())
    trainer.train()
    assert logged(trainer, "ple/rank_fraction") == [1.0]


MESSAGES = [
    [{"role": "user", "content": p}, {"role": "assistant", "content": "good"}] for p in PROMPTS
]  # fmt: skip
FORMATS = {
    "prompt": {"prompt": PROMPTS},
    "messages": {"messages": MESSAGES},
    "preference": {"prompt": PROMPTS, "chosen": ["good"] * 4, "rejected": ["bad"] * 4},
    "implicit-preference": {
        "chosen": MESSAGES, "rejected": [[m[0], {"role": "assistant", "content": "bad"}] for m in MESSAGES],
    },
}  # fmt: skip


@pytest.mark.parametrize("name", list(FORMATS))
def test_dataset_formats(tmp_path, tiny_model_path, name):
    seen = []

    def reward(prompts, completions, **kwargs):
        seen.extend(prompts)
        return [0.0] * len(prompts)

    trainer = PLETrainer(
        model=tiny_model_path, reward_funcs=reward, args=make_args(tmp_path, max_steps=1),
        train_dataset=Dataset.from_dict(FORMATS[name]),
    )  # fmt: skip
    trainer.train()
    texts = [p if isinstance(p, str) else p[-1]["content"] for p in seen]
    assert len(texts) == 4 and set(texts) <= set(PROMPTS)  # the plain prompts, never the principle


def test_reward_never_sees_the_principle_and_principle_column_overrides(tmp_path, tiny_model_path):
    seen = []

    def reward(prompts, completions, principle, **kwargs):
        seen.append((prompts, principle))
        return [0.0] * len(prompts)

    trainer = PLETrainer(
        model=tiny_model_path, reward_funcs=reward, args=make_args(tmp_path, max_steps=1, save_enhanced_labels=True),
        train_dataset=Dataset.from_dict({"prompt": PROMPTS, "principle": ["be kind"] * 4}),
    )  # fmt: skip
    trainer.train()
    prompts, principles = seen[0]
    assert all("kind" not in p for p in prompts)
    labels = [json.loads(line) for line in open(tmp_path / "enhanced_labels.jsonl")]
    assert {label["principle"] for label in labels} == {"be kind"}


def test_principled_prompt_reaches_generation_but_not_the_loss(tmp_path, tiny_model_path, positivity):
    trainer = PLETrainer(
        model=tiny_model_path, reward_funcs=positivity, args=make_args(tmp_path, max_steps=1),
        train_dataset=Dataset.from_dict({"prompt": PROMPTS}),
    )  # fmt: skip
    generated = []
    original = trainer._generate

    def spy(prompts):
        generated.extend(prompts)
        return original(prompts)

    trainer._generate = spy
    batch = trainer._generate_and_score_completions([{"prompt": PROMPTS[0]}, {"prompt": PROMPTS[1]}])
    assert generated == [
        PROMPTS[0],
        PROMPTS[1],
        "be positive and kind\n\n" + PROMPTS[0],
        "be positive and kind\n\n" + PROMPTS[1],
    ]
    tokenizer = trainer.processing_class
    loss_prompts = tokenizer.batch_decode(batch["prompt_ids"], skip_special_tokens=True)
    assert [p.strip() for p in loss_prompts] == [PROMPTS[0], PROMPTS[1]]


def test_nan_and_none_rewards_skip_pairs_and_are_counted(tmp_path, tiny_model_path):
    def reward(prompts, completions, **kwargs):
        half = len(completions) // 2
        return [None] * half + [1.0] * half  # every plain answer unscorable: every pair skipped

    trainer = PLETrainer(
        model=tiny_model_path, reward_funcs=reward,
        args=make_args(tmp_path, max_steps=1, save_enhanced_labels=True, weight_decay=0.0),
        train_dataset=Dataset.from_dict({"prompt": PROMPTS}),
    )  # fmt: skip
    before = snapshot(trainer.model)
    trainer.train()
    assert logged(trainer, "ple/skipped_pairs") == [2.0]
    for name, param in trainer.model.named_parameters():
        assert torch.equal(param, before[name]), f"{name} was trained on a skipped pair"
    labels = [json.loads(line) for line in open(tmp_path / "enhanced_labels.jsonl")]
    assert [label["route"] for label in labels] == ["skipped", "skipped"]


def test_dpo_script_runs_after_renaming_the_class(tmp_path, tiny_model_path, positivity):
    """What a `DPOTrainer(model=..., args=..., train_dataset=..., processing_class=..., peft_config=...)` script
    becomes."""
    dataset = Dataset.from_dict(FORMATS["preference"])
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    trainer = PLETrainer(
        model=tiny_model_path,
        args=make_args(tmp_path, max_steps=1),
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", task_type="CAUSAL_LM"),
        reward_funcs=positivity,
    )
    trainer.train()
    assert logged(trainer, "loss")
    trainer.create_model_card(model_name="ple-model")
    card = open(os.path.join(tmp_path, "README.md")).read()
    assert "2408.02599" in card and "PLE" in card


# --- bad input ---------------------------------------------------------------------------------------------------


def test_no_reward_is_an_early_error(tmp_path, tiny_model_path):
    with pytest.raises(ValueError, match="reward_model_name_or_path"):
        PLETrainer(
            model=tiny_model_path, args=make_args(tmp_path), train_dataset=Dataset.from_dict({"prompt": PROMPTS})
        )


def test_dataset_without_prompt_is_an_early_error(tmp_path, tiny_model_path, positivity):
    with pytest.raises(ValueError, match="no usable prompt"):
        PLETrainer(
            model=tiny_model_path, reward_funcs=positivity, args=make_args(tmp_path),
            train_dataset=Dataset.from_dict({"text": PROMPTS}),
        )  # fmt: skip


def test_no_principle_is_an_early_error(tmp_path, tiny_model_path, positivity):
    with pytest.raises(ValueError, match="No principle"):
        PLETrainer(
            model=tiny_model_path, reward_funcs=positivity, args=make_args(tmp_path, principle=None),
            train_dataset=Dataset.from_dict({"prompt": PROMPTS}),
        )  # fmt: skip


def test_reward_tokenizer_without_chat_template_is_an_early_error(
    tmp_path, tiny_model_path, tiny_reward_model_no_template_path
):
    with pytest.raises(ValueError, match="no chat template"):
        PLETrainer(
            model=tiny_model_path, reward_funcs=tiny_reward_model_no_template_path, args=make_args(tmp_path),
            train_dataset=Dataset.from_dict({"prompt": CHAT_PROMPTS}),
        )  # fmt: skip


def test_reward_function_with_wrong_number_of_values(tmp_path, tiny_model_path):
    trainer = PLETrainer(
        model=tiny_model_path, reward_funcs=lambda completions, **kw: [1.0], args=make_args(tmp_path),
        train_dataset=Dataset.from_dict({"prompt": PROMPTS}),
    )  # fmt: skip
    with pytest.raises(ValueError, match="returned 1 rewards, but 4 were expected"):
        trainer.train()


def test_ref_model_without_beta_is_an_early_error(tmp_path, tiny_model_path, positivity):
    with pytest.raises(ValueError, match="beta=0"):
        PLETrainer(
            model=tiny_model_path, ref_model=tiny_model_path, reward_funcs=positivity, args=make_args(tmp_path),
            train_dataset=Dataset.from_dict({"prompt": PROMPTS}),
        )  # fmt: skip


def test_args_of_another_method_are_an_early_error(tmp_path, tiny_model_path, positivity):
    from trl import GRPOConfig

    with pytest.raises(TypeError, match="PLEConfig"):
        PLETrainer(
            model=tiny_model_path, reward_funcs=positivity, args=GRPOConfig(output_dir=str(tmp_path), bf16=False),
            train_dataset=Dataset.from_dict({"prompt": PROMPTS}),
        )  # fmt: skip


def test_long_prompts_are_truncated_without_losing_the_principle(tmp_path, tiny_model_path, positivity):
    trainer = PLETrainer(
        model=tiny_model_path, reward_funcs=positivity, args=make_args(tmp_path, max_prompt_length=3),
        train_dataset=Dataset.from_dict({"prompt": PROMPTS}),
    )  # fmt: skip
    prompt_ids, _, _ = trainer._tokenize_prompts([PROMPTS[0], "be positive and kind\n\n" + PROMPTS[0]])
    tokenizer = trainer.processing_class
    assert tokenizer.decode(prompt_ids[0]) == "the movie :"  # "write a review of the movie :", last 3 tokens
    assert tokenizer.decode(prompt_ids[1]) == "be positive and kind the movie :"
