import torch
from datasets import Dataset
from torch import nn

from ple_trl import PLEConfig, PLETrainer
from ple_trl.rewards import LeftTruncatingRewardModel, reward_model_max_length


class Recorder(nn.Module):
    def __init__(self):
        super().__init__()
        self.config = object()
        self.calls = []

    def forward(self, input_ids, attention_mask):
        self.calls.append((input_ids.tolist(), attention_mask.tolist()))
        return input_ids.sum(dim=1, keepdim=True).float()


def test_long_texts_lose_their_first_tokens_and_keep_the_answer():
    inner = Recorder()
    model = LeftTruncatingRewardModel(inner, max_length=3)
    input_ids = torch.tensor([[1, 2, 3, 4, 5], [6, 7, 0, 0, 0]])  # right-padded, lengths 5 and 2
    attention_mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]])
    model(input_ids=input_ids, attention_mask=attention_mask)
    ids, mask = inner.calls[0]
    assert ids == [[3, 4, 5], [6, 7, 0]]
    assert mask == [[1, 1, 1], [1, 1, 0]]


def test_short_batches_pass_unchanged():
    inner = Recorder()
    LeftTruncatingRewardModel(inner, max_length=8)(torch.tensor([[1, 2]]), torch.tensor([[1, 1]]))
    assert inner.calls == [([[1, 2]], [[1, 1]])]


def test_max_length_from_the_tokenizer_else_the_model():
    class Tok:
        model_max_length = 512

    class Unlimited:
        model_max_length = int(1e30)

    class Model:
        class config:
            max_position_embeddings = 128

    assert reward_model_max_length(Tok(), Model()) == 512
    assert reward_model_max_length(Unlimited(), Model()) == 128


def test_trainer_wraps_reward_models_to_their_length(tmp_path, tiny_model_path, tiny_reward_model_path):
    args = PLEConfig(
        output_dir=str(tmp_path), principle="be kind", per_device_train_batch_size=2, max_completion_length=4,
        max_steps=1, bf16=False, gradient_checkpointing=False, report_to="none", save_strategy="no", use_cpu=True,
    )  # fmt: skip
    trainer = PLETrainer(
        model=tiny_model_path, reward_funcs=tiny_reward_model_path, args=args,
        train_dataset=Dataset.from_dict({"prompt": ["write a review of the movie :"] * 2}),
    )  # fmt: skip
    reward_model = trainer.reward_funcs[0]
    assert isinstance(reward_model, LeftTruncatingRewardModel)
    assert reward_model.max_length == 256  # the tiny reward model's max_position_embeddings
    trainer.train()
    assert "ple/reward_plain" in trainer.state.log_history[0]
