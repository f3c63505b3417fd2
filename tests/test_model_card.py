import os

from datasets import Dataset

from ple_trl import PLEConfig, PLETrainer

from helpers import PROMPTS

LONG_PRINCIPLE = "be positive and kind " * 10  # 200 characters: the card shortens it


def length_reward(completions, **kwargs):
    return [float(len(c.split())) for c in completions]


def test_checkpoint_model_card_names_the_ple_settings(tmp_path, tiny_model_path, positivity):
    args = PLEConfig(
        output_dir=str(tmp_path),
        principles=[LONG_PRINCIPLE, "answer short"],
        tau0=0.3,
        alpha=0.8,
        tau_min=0.05,
        iteration_unit="steps",
        steps_per_iteration=3,
        routing="rank_all",
        ranking_loss_type="dpo",
        beta=0.2,
        reward_weights=[1.0, 0.5],
        per_device_train_batch_size=2,
        max_completion_length=4,
        max_steps=1,
        save_strategy="steps",
        save_steps=1,
        report_to="none",
        use_cpu=True,
        bf16=False,
    )
    trainer = PLETrainer(
        model=tiny_model_path,
        reward_funcs=[positivity, length_reward],
        args=args,
        train_dataset=Dataset.from_dict({"prompt": PROMPTS[:2]}),
    )
    trainer.train()
    with open(os.path.join(tmp_path, "README.md")) as f:
        card = f.read()
    assert "### PLE settings" in card
    assert card.index("### PLE settings") < card.index("### Framework versions")
    assert '- Principle(s): 2, one drawn per prompt: "be positive and kind be positive' in card
    assert LONG_PRINCIPLE.strip() not in card  # shortened
    assert '"answer short"' in card
    assert "- Threshold: tau0=0.3, alpha=0.8, tau_min=0.05; one PLE iteration = 3 optimizer step(s)" in card
    assert "- Routing: rank_all (gap_mode=signed, reward_transform=none)" in card
    assert "- Ranking loss: dpo, beta=0.2, length_normalize=False" in card
    assert "- Weighted SFT: sft_weighting=softmax, sft_temperature=1.0, wsft_coef=1.0" in card
    assert "- Rewards: `positivity_reward` (weight 1), `length_reward` (weight 0.5)" in card


def test_model_card_with_one_principle_and_epochs(tmp_path, tiny_model_path, positivity):
    trainer = PLETrainer(
        model=tiny_model_path,
        reward_funcs=positivity,
        args=PLEConfig(
            output_dir=str(tmp_path), principle="be kind", report_to="none", use_cpu=True, bf16=False,
            per_device_train_batch_size=2,
        ),  # fmt: skip
        train_dataset=Dataset.from_dict({"prompt": PROMPTS[:2]}),
    )
    trainer.create_model_card(model_name="ple-tiny")
    with open(os.path.join(tmp_path, "README.md")) as f:
        card = f.read()
    assert '- Principle(s): "be kind"' in card
    assert "- Threshold: tau0=0.2, alpha=0.9, tau_min=0.0; one PLE iteration = one epoch" in card
    assert "- Ranking loss: sigmoid (no reference model)" in card
