"""TRL's own GRPO trainer test cases, ported to PLETrainer (in our words, offline, on tiny models).

Each case follows TRL's canonical trainer test: snapshot the trainable parameters, train a few steps, check that a
loss was logged and that every trainable parameter changed; or, where a GRPO feature has no meaning for pairs, check
that PLE refuses it with an error that names the setting. The Mixture-of-Experts and vision-language cases also check
that the feature reaches the loss (router auxiliary loss, images), since training alone would not show a silent drop.
"""

import inspect
import json
import math

import pytest
import torch
from datasets import Dataset
from peft import LoraConfig
from PIL import Image
from transformers import (
    AutoModelForCausalLM,
    AutoProcessor,
    AutoTokenizer,
    LlavaForConditionalGeneration,
    MixtralForCausalLM,
)
from trl import GRPOTrainer
from trl.trainer.utils import (
    shuffle_sequence_dict,
    split_pixel_values_by_grid,
    split_tensor_dict,
    unsplit_pixel_values_by_grid,
)

from ple_trl import PLEConfig, PLETrainer
from ple_trl.pairs.multimodal import pair_forward_kwargs
from ple_trl.rewards import completion_text
from ple_trl.testing import VLM_IMAGE_SIZE, VLM_PATCH_SIZE, build_tiny_causal_lm

from helpers import CHAT_PROMPTS, PRINCIPLE, PROMPTS, logged, make_args, read_labels, snapshot


def lora():
    return LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM")


def checkpointed_args(tmp_path, **kwargs):
    """`helpers.make_args` with GRPO's default of gradient checkpointing on, as TRL's own tests have it (the other tiny
    runs turn it off)."""
    return make_args(tmp_path, **{"gradient_checkpointing": True, **kwargs})


def word_count(completions, **kwargs):
    return [float(len(completion_text(c).split())) for c in completions]


def assert_trains(trainer, skip=()):
    """TRL's canonical check: a finite loss is logged and every trainable parameter (bar `skip` substrings) moved."""
    before = snapshot(trainer.model)
    assert before
    trainer.train()
    losses = logged(trainer, "loss")
    assert losses and all(math.isfinite(v) for v in losses)
    unchanged = [
        name
        for name, param in trainer.model.named_parameters()
        if name in before and not any(s in name for s in skip) and torch.equal(param, before[name])
    ]
    assert not unchanged, f"parameters that did not change: {unchanged}"



def spy_logps(trainer, monkeypatch, record):
    """Make every log-prob forward of `trainer` call `record(input_ids, kwargs)` first (for the VLM cases)."""
    logps = trainer._get_per_token_logps_and_entropies

    def spy(model, input_ids, attention_mask, logits_to_keep, **kwargs):
        record(input_ids, kwargs)
        return logps(model, input_ids, attention_mask, logits_to_keep, **kwargs)

    monkeypatch.setattr(trainer, "_get_per_token_logps_and_entropies", spy)


def position_in_round(completions, **kwargs):
    """A reward that tells a round's size: each answer scores its index in the round's one reward call. A round of N
    pairs scores its plain answers 0..N-1 and its principled ones N..2N-1, so every pair's gap is N."""
    return [float(i) for i in range(len(completions))]


def constant(value, name):
    def reward(completions, **kwargs):
        return [value] * len(completions)

    reward.__name__ = name
    return reward


# --- TRL's GRPOTrainer test cases -----------------------------------------------------------------------------------


def test_init_minimal(tmp_path, tiny_model_path, tiny_reward_model_path, monkeypatch):
    # GRPO: model, reward model and dataset only. PLE also needs a principle: here from the dataset's column.
    monkeypatch.chdir(tmp_path)  # the default output_dir is relative
    # The default config generates 8 pairs a round (`per_device_train_batch_size=8`): the dataset must fill one.
    prompts = PROMPTS * (8 // len(PROMPTS) + 1)
    dataset = Dataset.from_dict({"prompt": prompts, "principle": [PRINCIPLE] * len(prompts)})
    trainer = PLETrainer(model=tiny_model_path, reward_funcs=tiny_reward_model_path, train_dataset=dataset)
    assert isinstance(trainer, GRPOTrainer) and isinstance(trainer.args, PLEConfig)


@pytest.mark.parametrize(
    "prompts", [PROMPTS, CHAT_PROMPTS], ids=["standard_prompt_only", "conversational_prompt_only"]
)
def test_training(tmp_path, tiny_model_path, tiny_reward_model_path, prompts):
    trainer = PLETrainer(
        model=tiny_model_path,
        reward_funcs=tiny_reward_model_path,
        args=checkpointed_args(tmp_path),
        train_dataset=Dataset.from_dict({"prompt": prompts}),
    )
    assert_trains(trainer)
    assert trainer.state.log_history[-1]["train_loss"] is not None


@pytest.mark.parametrize("eval_on_start", [False, True])
def test_training_with_eval(tmp_path, tiny_model_path, eval_on_start):
    trainer = PLETrainer(
        model=tiny_model_path,
        reward_funcs=word_count,
        args=checkpointed_args(
            tmp_path, per_device_eval_batch_size=2, eval_strategy="steps", eval_steps=2, eval_on_start=eval_on_start
        ),
        train_dataset=Dataset.from_dict({"prompt": PROMPTS}),
        eval_dataset=Dataset.from_dict({"prompt": PROMPTS[:2]}),
    )
    assert_trains(trainer)
    evaluations = logged(trainer, "eval_loss")
    assert len(evaluations) == (2 if eval_on_start else 1) and all(math.isfinite(v) for v in evaluations)


def test_training_multiple_iterations(tmp_path, tiny_model_path):
    # num_iterations=2: each generation round is trained on twice, so 2 steps need a single round.
    trainer = PLETrainer(
        model=tiny_model_path,
        reward_funcs=position_in_round,
        args=checkpointed_args(tmp_path, num_iterations=2, save_enhanced_labels=True),
        train_dataset=Dataset.from_dict({"prompt": PROMPTS}),
    )
    assert_trains(trainer)
    # The audit log: one record per pair of each generated round, with the step it was generated at. One round of 2
    # pairs, generated at step 0 (each gap is the round's size, 2) and trained again at step 1 without a new round.
    records = read_labels(tmp_path)
    assert [record["step"] for record in records] == [0, 0]
    assert [record["reward_principled"] - record["reward_plain"] for record in records] == [2.0, 2.0]


@pytest.mark.parametrize(
    "batching",
    [{"steps_per_generation": 2}, {"generation_batch_size": 4}, {"gradient_accumulation_steps": 2}],
    ids=["steps_per_generation", "generation_batch_size", "gradient_accumulation"],
)
def test_training_generation_batch_variants(tmp_path, tiny_model_path, batching):
    # 2 pairs per micro-step, 4 pairs per generation round: one round feeds the 2 micro-steps.
    max_steps = 1 if "gradient_accumulation_steps" in batching else 2
    trainer = PLETrainer(
        model=tiny_model_path,
        reward_funcs=position_in_round,
        args=checkpointed_args(tmp_path, max_steps=max_steps, save_enhanced_labels=True, **batching),
        train_dataset=Dataset.from_dict({"prompt": PROMPTS}),
    )
    assert_trains(trainer)
    # One round of the 4 prompts, generated at step 0: 4 records, each pair's gap the round's size (two rounds of 2
    # pairs would give gaps of 2, and with a step per round, a record at step 1).
    records = read_labels(tmp_path)
    assert [record["step"] for record in records] == [0, 0, 0, 0]
    assert sorted(record["prompt"] for record in records) == sorted(PROMPTS)
    assert [record["reward_principled"] - record["reward_plain"] for record in records] == [4.0] * 4
    assert sorted(record["reward_plain"] for record in records) == [0.0, 1.0, 2.0, 3.0]


def test_training_peft(tmp_path, tiny_model_path):
    trainer = PLETrainer(
        model=tiny_model_path,
        reward_funcs=word_count,
        args=checkpointed_args(tmp_path),
        train_dataset=Dataset.from_dict({"prompt": PROMPTS}),
        peft_config=lora(),
    )
    trainable = [name for name, p in trainer.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in name for name in trainable)
    assert_trains(trainer)


@pytest.mark.parametrize("peft", [False, True], ids=["full", "peft"])
def test_training_with_gradient_checkpointing(tmp_path, tiny_model_path, peft):
    trainer = PLETrainer(
        model=tiny_model_path,
        reward_funcs=word_count,
        args=checkpointed_args(tmp_path, gradient_checkpointing=True),
        train_dataset=Dataset.from_dict({"prompt": CHAT_PROMPTS}),
        peft_config=lora() if peft else None,
    )
    assert_trains(trainer)


def test_training_beta_non_zero_with_peft(tmp_path, tiny_model_path):
    # GRPO's KL test: in PLE the reference anchors the DPO ranking loss (the adapter-disabled model under PEFT).
    trainer = PLETrainer(
        model=tiny_model_path,
        reward_funcs=word_count,
        args=checkpointed_args(tmp_path, ranking_loss_type="dpo", beta=0.1, routing="rank_all"),
        train_dataset=Dataset.from_dict({"prompt": PROMPTS}),
        peft_config=lora(),
    )
    assert_trains(trainer)


def test_training_different_reward_model(tmp_path, tiny_model_path, tiny_reward_model_path):
    # The reward model has its own tokenizer (other ids, other chat template), passed explicitly.
    reward_tokenizer = AutoTokenizer.from_pretrained(tiny_reward_model_path)
    trainer = PLETrainer(
        model=tiny_model_path,
        reward_funcs=tiny_reward_model_path,
        args=checkpointed_args(tmp_path),
        train_dataset=Dataset.from_dict({"prompt": CHAT_PROMPTS}),
        reward_processing_classes=reward_tokenizer,
    )
    assert trainer.reward_processing_classes[0] is reward_tokenizer
    assert_trains(trainer)


def test_mismatched_reward_processing_classes_length_is_refused(tmp_path, tiny_model_path, tiny_reward_model_path):
    reward_tokenizer = AutoTokenizer.from_pretrained(tiny_reward_model_path)
    with pytest.raises(ValueError, match=r"reward processing classes \(1\) must match the number of reward functions"):
        PLETrainer(
            model=tiny_model_path,
            reward_funcs=[tiny_reward_model_path, tiny_reward_model_path],
            args=checkpointed_args(tmp_path),
            train_dataset=Dataset.from_dict({"prompt": PROMPTS}),
            reward_processing_classes=[reward_tokenizer],
        )


@pytest.mark.parametrize("prompts", [PROMPTS, CHAT_PROMPTS], ids=["standard", "conversational"])
def test_training_reward_func(tmp_path, tiny_model_path, prompts):
    seen = []

    def reward(prompts, completions, **kwargs):
        seen.append((prompts, completions))
        return word_count(completions)

    trainer = PLETrainer(
        model=tiny_model_path,
        reward_funcs=reward,
        args=checkpointed_args(tmp_path),
        train_dataset=Dataset.from_dict({"prompt": prompts}),
    )
    assert_trains(trainer)
    assert len(seen) == 2
    for seen_prompts, completions in seen:
        # 2 pairs: the plain answers then the principled ones, each scored against the plain prompt.
        assert len(completions) == 4 and seen_prompts[:2] == seen_prompts[2:]
        assert all(p in prompts for p in seen_prompts)
        assert all(isinstance(c, list) == isinstance(prompts[0], list) for c in completions)


def test_training_multiple_reward_funcs_with_weights(tmp_path, tiny_model_path):
    trainer = PLETrainer(
        model=tiny_model_path,
        reward_funcs=[constant(1.0, "one"), constant(2.0, "two")],
        args=checkpointed_args(tmp_path, reward_weights=[0.5, 2.0]),
        train_dataset=Dataset.from_dict({"prompt": PROMPTS}),
    )
    assert_trains(trainer)
    assert logged(trainer, "rewards/one/mean") == [1.0, 1.0] and logged(trainer, "rewards/two/mean") == [2.0, 2.0]
    assert logged(trainer, "ple/reward_plain") == [4.5, 4.5]  # 0.5 * 1 + 2 * 2
    assert logged(trainer, "ple/reward_principled") == [4.5, 4.5]


def test_training_multiple_reward_funcs_with_none_output(tmp_path, tiny_model_path):
    # A function that returns None abstains: the pair is scored by the others (GRPO's nansum).
    def abstains(completions, **kwargs):
        return [None] * len(completions)

    trainer = PLETrainer(
        model=tiny_model_path,
        reward_funcs=[abstains, constant(3.0, "three")],
        args=checkpointed_args(tmp_path),
        train_dataset=Dataset.from_dict({"prompt": PROMPTS}),
    )
    assert_trains(trainer)
    assert logged(trainer, "ple/reward_plain") == [3.0, 3.0]
    assert logged(trainer, "ple/skipped_pairs") == [0.0, 0.0]


def test_training_multiple_mixed_reward_funcs(tmp_path, tiny_model_path, tiny_reward_model_path):
    trainer = PLETrainer(
        model=tiny_model_path,
        reward_funcs=[tiny_reward_model_path, word_count],
        args=checkpointed_args(tmp_path),
        train_dataset=Dataset.from_dict({"prompt": CHAT_PROMPTS}),
    )
    assert_trains(trainer)
    assert len(logged(trainer, "rewards/word_count/mean")) == 2


def test_training_reward_func_additional_column(tmp_path, tiny_model_path):
    # Extra dataset columns reach the reward functions, repeated for the plain and the principled answer of a pair.
    dataset = Dataset.from_dict({"prompt": PROMPTS, "some_values": [1.0, 2.0, 3.0, 4.0]})
    seen = []

    def reward(completions, some_values, **kwargs):
        seen.append(list(some_values))
        return list(some_values)

    trainer = PLETrainer(
        model=tiny_model_path,
        reward_funcs=reward,
        args=checkpointed_args(tmp_path, shuffle_dataset=False),
        train_dataset=dataset,
    )
    assert_trains(trainer)
    assert seen == [[1.0, 2.0, 1.0, 2.0], [3.0, 4.0, 3.0, 4.0]]
    assert logged(trainer, "ple/reward_plain") == [1.5, 3.5]
    assert logged(trainer, "ple/reward_gap") == [0.0, 0.0]


def test_training_with_model_instance(tmp_path, tiny_model_path):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_path)
    trainer = PLETrainer(
        model=model,
        reward_funcs=word_count,
        args=checkpointed_args(tmp_path),
        train_dataset=Dataset.from_dict({"prompt": PROMPTS}),
        processing_class=AutoTokenizer.from_pretrained(tiny_model_path),
    )
    assert trainer.model is model
    assert_trains(trainer)


def test_training_with_generation_kwargs(tmp_path, tiny_model_path):
    trainer = PLETrainer(
        model=tiny_model_path,
        reward_funcs=word_count,
        args=checkpointed_args(
            tmp_path,
            temperature=0.7,
            top_p=0.9,
            top_k=5,
            min_p=0.01,
            repetition_penalty=1.1,
            generation_kwargs={"no_repeat_ngram_size": 2},
        ),
        train_dataset=Dataset.from_dict({"prompt": PROMPTS}),
    )
    assert trainer.generation_config.top_k == 5 and trainer.generation_config.no_repeat_ngram_size == 2
    assert_trains(trainer)


def test_training_with_disable_dropout(tmp_path, tiny_model_path):
    trainer = PLETrainer(
        model=tiny_model_path,
        reward_funcs=word_count,
        args=checkpointed_args(tmp_path, disable_dropout=True),
        train_dataset=Dataset.from_dict({"prompt": PROMPTS}),
    )
    assert_trains(trainer)


def test_training_with_log_completions(tmp_path, tiny_model_path):
    # The table's content is PLE's own (`tests/test_logging.py`); GRPO's case only asks that it runs.
    trainer = PLETrainer(
        model=tiny_model_path,
        reward_funcs=word_count,
        args=checkpointed_args(tmp_path, log_completions=True, num_completions_to_print=2),
        train_dataset=Dataset.from_dict({"prompt": PROMPTS}),
    )
    assert_trains(trainer)


@pytest.mark.parametrize(
    "setting",
    [
        {"sync_ref_model": True},
        {"mask_truncated_completions": True},
        {"loss_type": "grpo"},
        {"scale_rewards": "batch"},
        {"top_entropy_quantile": 0.2},
        {"epsilon_high": 0.28},
        {"importance_sampling_level": "sequence"},
        {"num_generations_eval": 1},
    ],
    ids=lambda setting: next(iter(setting)),
)
def test_grpo_only_settings_are_refused(tmp_path, setting):
    # GRPO test cases whose feature has no meaning for pairs: PLE refuses them by name instead of ignoring them.
    name = next(iter(setting))
    with pytest.raises(ValueError, match=f"`{name}=.*is a GRPO setting that PLE does not use"):
        checkpointed_args(tmp_path, **setting)


def test_num_generations_other_than_two_is_refused(tmp_path):
    with pytest.raises(ValueError, match="num_generations=3"):
        checkpointed_args(tmp_path, num_generations=3)


def test_grpo_private_methods_take_the_multimodal_and_moe_keywords_ple_passes():
    # PLE forwards these to GRPO's forward helper; a TRL release that renames one must fail here, not mid-training.
    parameters = inspect.signature(GRPOTrainer._get_per_token_logps_and_entropies).parameters
    for name in ("compute_aux_loss", "num_images", "pixel_values", "image_grid_thw", "pixel_attention_mask",
                 "image_sizes", "image_position_ids", "token_type_ids", "mm_token_type_ids"):  # fmt: skip
        assert name in parameters, name


# --- tiny Mixture-of-Experts and vision-language policies -----------------------------------------------------------

ROUTER_COEF = 0.01


@pytest.fixture(scope="session")
def tiny_moe_path(tmp_path_factory):
    """A 2-layer Mixtral with 4 experts (2 per token) and a router load-balancing coefficient."""
    return build_tiny_causal_lm(
        tmp_path_factory.mktemp("tiny-moe"),
        model_class=MixtralForCausalLM,
        num_local_experts=4,
        num_experts_per_tok=2,
        # Left False as in released MoE configs (True breaks `generate` with a cache in transformers 5.24); the
        # trainer asks for the router logits in its own forward.
        output_router_logits=False,
        router_aux_loss_coef=ROUTER_COEF,
    )


IMAGE_SIZE, PATCH_SIZE = VLM_IMAGE_SIZE, VLM_PATCH_SIZE
IMAGE_TOKENS = (IMAGE_SIZE // PATCH_SIZE) ** 2  # LLaVA's "default" feature strategy drops the CLS token


def image_dataset(column="image"):
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)]
    images = [Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), colour) for colour in colours]
    if column == "images":
        images = [[image] for image in images]
    return Dataset.from_dict({"prompt": CHAT_PROMPTS, column: images})


# --- Mixture of Experts ---------------------------------------------------------------------------------------------


def test_training_moe_adds_and_logs_the_router_aux_loss(tmp_path, tiny_moe_path):
    trainer = PLETrainer(
        model=tiny_moe_path,
        reward_funcs=word_count,
        args=checkpointed_args(tmp_path, max_steps=3),
        train_dataset=Dataset.from_dict({"prompt": PROMPTS}),
    )
    # As GRPO: the architecture's own coefficient when `router_aux_loss_coef` is left unset.
    assert trainer.aux_loss_enabled and trainer.router_aux_loss_coef == ROUTER_COEF
    # Experts that no token was routed to in 3 steps get no gradient: only the routers and shared weights must move.
    assert_trains(trainer, skip=(".experts.",))
    aux = logged(trainer, "aux_loss")
    assert len(aux) == 3 and all(math.isfinite(v) and v > 0 for v in aux)


def pair_aux_loss(model, batch):
    """The router loss of the pair forward, computed by hand: [plain prompt + y ; plain prompt + y_p]."""
    completion_ids = batch["completion_ids"].transpose(0, 1).flatten(0, 1)
    completion_mask = batch["completion_mask"].transpose(0, 1).flatten(0, 1)
    input_ids = torch.cat([batch["prompt_ids"].repeat(2, 1), completion_ids], dim=1)
    attention_mask = torch.cat([batch["prompt_mask"].repeat(2, 1), completion_mask], dim=1)
    return model(input_ids=input_ids, attention_mask=attention_mask, output_router_logits=True).aux_loss


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_moe_loss_is_ple_loss_plus_coef_times_aux_loss_over_grad_accumulation(tmp_path, tiny_moe_path, mode):
    trainer = PLETrainer(
        model=tiny_moe_path,
        reward_funcs=word_count,
        args=checkpointed_args(tmp_path, router_aux_loss_coef=1.0, gradient_accumulation_steps=2),
        train_dataset=Dataset.from_dict({"prompt": PROMPTS}),
    )
    assert trainer.router_aux_loss_coef == 1.0
    trainer.model.train(mode == "train")
    trainer.current_gradient_accumulation_steps = 2
    batch = trainer._generate_and_score_completions([{"prompt": p} for p in PROMPTS[:2]])
    with torch.no_grad():
        with_aux = trainer._compute_loss(trainer.model, batch)
        trainer.aux_loss_enabled = False
        without_aux = trainer._compute_loss(trainer.model, batch)
        aux = pair_aux_loss(trainer.model, batch)
    assert aux > 0
    normalizer = 2 if mode == "train" else 1  # scaled for gradient accumulation in training only, as GRPO
    assert (with_aux - without_aux).item() == pytest.approx(aux.item() / normalizer, rel=1e-4)
    assert logged_metric(trainer, mode, "aux_loss") == [pytest.approx(aux.item(), rel=1e-4)]


def logged_metric(trainer, mode, key):
    return list(trainer._metrics[mode][key])


def test_router_aux_loss_coef_on_a_dense_model_is_refused(tmp_path, tiny_model_path):
    with pytest.raises(ValueError, match="router_aux_loss_coef.*not a Mixture-of-Experts"):
        PLETrainer(
            model=tiny_model_path,
            reward_funcs=word_count,
            args=checkpointed_args(tmp_path, router_aux_loss_coef=0.1),
            train_dataset=Dataset.from_dict({"prompt": PROMPTS}),
        )


def test_dense_model_computes_no_aux_loss(tmp_path, tiny_model_path):
    trainer = PLETrainer(
        model=tiny_model_path,
        reward_funcs=word_count,
        args=checkpointed_args(tmp_path, max_steps=1),
        train_dataset=Dataset.from_dict({"prompt": PROMPTS}),
    )
    assert not trainer.aux_loss_enabled
    trainer.train()
    assert logged(trainer, "aux_loss") == []


# --- vision-language models -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("column", ["image", "images"])
def test_training_vlm_images_reach_generation_and_the_loss(tmp_path, tiny_vlm_path, column, monkeypatch):
    trainer = PLETrainer(
        model=tiny_vlm_path,
        reward_funcs=word_count,
        args=checkpointed_args(tmp_path, max_steps=2, per_device_train_batch_size=2, save_enhanced_labels=True),
        train_dataset=image_dataset(column),
    )
    assert trainer._is_vlm
    generated, forwards = [], []
    generate = trainer.model.generate

    def spy_generate(*args, **kwargs):
        generated.append((kwargs["input_ids"], kwargs.get("pixel_values")))
        return generate(*args, **kwargs)

    monkeypatch.setattr(trainer.model, "generate", spy_generate)
    spy_logps(
        trainer, monkeypatch, lambda ids, kw: forwards.append((ids, kw.get("pixel_values"), kw.get("num_images")))
    )
    # Every parameter moves, the vision tower's included, but CLIP's final layer norm, which LLaVA never uses (it takes
    # the last hidden state before it; TRL's VLM tests skip it too).
    assert_trains(trainer, skip=("post_layernorm",))

    image_token = trainer.processing_class.tokenizer.convert_tokens_to_ids("<image>")
    assert len(generated) == 2  # one generation round per step (GA 1, one pair batch per step)
    for input_ids, pixel_values in generated:
        # 2 pairs -> 4 prompts (plain, plain, principled, principled), each with its image.
        assert input_ids.size(0) == 4 and pixel_values.size(0) == 4
        assert ((input_ids == image_token).sum(dim=1) == IMAGE_TOKENS).all()
        assert torch.equal(pixel_values[:2], pixel_values[2:])  # a principled prompt sees its plain prompt's image
    assert len(forwards) == 2
    for input_ids, pixel_values, num_images in forwards:
        # One forward over [plain prompt + y ; plain prompt + y_p]: 4 rows, each with its pair's image.
        assert input_ids.size(0) == 4 and pixel_values.size(0) == 4 and num_images == [1, 1, 1, 1]
        assert ((input_ids == image_token).sum(dim=1) == IMAGE_TOKENS).all()
        assert torch.equal(pixel_values[:2], pixel_values[2:])
    # The audit log keeps the dataset's text prompt (no image objects in JSON): one record per trained pair.
    with open(tmp_path / "enhanced_labels.jsonl") as f:
        records = [json.loads(line) for line in f]
    assert len(records) == 4 and all(record["prompt"] in CHAT_PROMPTS for record in records)


def test_vlm_pair_keeps_its_image_through_shuffling_and_grad_accumulation(tmp_path, tiny_vlm_path, monkeypatch):
    # 4 pairs of distinct colours in one generation round, shuffled and split over 2 micro-steps: each micro-batch
    # must carry the images of its own pairs. The prompt text names the colour, so the pairing can be checked.
    colours = {"one": (255, 0, 0), "two": (0, 255, 0), "three": (0, 0, 255), "four": (255, 255, 0)}
    dataset = Dataset.from_dict(
        {
            "prompt": [[{"role": "user", "content": f"what is {name} ?"}] for name in colours],
            "image": [Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), c) for c in colours.values()],
        }
    )
    trainer = PLETrainer(
        model=tiny_vlm_path,
        reward_funcs=word_count,
        args=checkpointed_args(tmp_path, max_steps=1, per_device_train_batch_size=2, gradient_accumulation_steps=2),
        train_dataset=dataset,
    )
    expected = {}
    processor = trainer.processing_class
    for name, colour in colours.items():
        pixels = processor.image_processor(Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), colour), return_tensors="pt")
        expected[processor.tokenizer.convert_tokens_to_ids(name)] = pixels["pixel_values"][0]
    seen = []
    spy_logps(trainer, monkeypatch, lambda ids, kw: seen.append((ids, kw["pixel_values"])))
    trainer.train()
    assert len(seen) == 2
    rows = 0
    for input_ids, pixel_values in seen:
        for row, pixels in zip(input_ids, pixel_values, strict=True):
            name_id = next(t for t in row.tolist() if t in expected)  # the prompt's, before any generated one
            torch.testing.assert_close(pixels, expected[name_id])
            rows += 1
    assert rows == 8  # 4 pairs, two answers each


def test_grid_images_stay_with_their_pair_through_trl_shuffling_and_splitting():
    # Qwen2-VL's layout (no tiny Qwen2-VL here: its processor needs torchvision): pixel rows per image are the product
    # of its grid, so pairs have different row counts. TRL's buffering (split by grid, shuffle, split over micro-steps,
    # unsplit) then PLE's pair forward kwargs must give every row of [plain ; principled] its own pair's images.
    images_of_pair = [[0], [1, 2], [3], [4]]
    grids = torch.tensor([[1, 2, 2], [1, 2, 4], [1, 4, 4], [1, 2, 2], [1, 4, 2]])
    pixel_values = torch.cat([torch.full((int(rows), 3), float(i)) for i, rows in enumerate(grids.prod(-1))])
    num_pairs, prompt_length, completion_length = 4, 5, 2
    batch = {
        "prompt_ids": torch.arange(num_pairs).unsqueeze(1).repeat(1, prompt_length),  # each row holds its pair's index
        "completion_ids": torch.zeros(num_pairs, 2, completion_length, dtype=torch.long),
        "pixel_values": pixel_values,
        "image_grid_thw": grids,
        "num_images": [len(images) for images in images_of_pair],
        "mm_token_type_ids": torch.ones(num_pairs, prompt_length - 1, dtype=torch.long),  # one short of the prompt
    }
    torch.manual_seed(0)
    chunks = split_tensor_dict(shuffle_sequence_dict(split_pixel_values_by_grid(batch)), 2)
    for chunk in map(unsplit_pixel_values_by_grid, chunks):
        kwargs = pair_forward_kwargs(chunk, completion_length)
        pairs = chunk["prompt_ids"][:, 0].tolist() * 2  # the forward's rows: plain answers, then principled ones
        assert kwargs["num_images"] == [len(images_of_pair[p]) for p in pairs]
        rows_per_image = kwargs["image_grid_thw"].prod(-1).tolist()
        blocks = torch.split(kwargs["pixel_values"], rows_per_image)
        image_ids = [int(block[0, 0]) for block in blocks]
        assert all((block == block[0, 0]).all() for block in blocks)
        assert image_ids == [i for p in pairs for i in images_of_pair[p]]
        # Per-token ids: left-padded to the prompt, zeros over the answer, the same for both answers of a pair.
        assert kwargs["mm_token_type_ids"].tolist() == [[0] + [1] * (prompt_length - 1) + [0] * completion_length] * 4


def test_vlm_reference_forward_sees_the_images(tmp_path, tiny_vlm_path, monkeypatch):
    trainer = PLETrainer(
        model=tiny_vlm_path,
        reward_funcs=word_count,
        args=checkpointed_args(tmp_path, max_steps=2, ranking_loss_type="dpo", beta=0.1),
        train_dataset=image_dataset(),
        peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"),
    )
    calls = []
    spy_logps(trainer, monkeypatch, lambda ids, kw: calls.append(kw.get("pixel_values")))
    assert_trains(trainer)  # 2 steps: LoRA's A matrices get a gradient once B has left zero
    assert len(calls) == 4  # per step: the reference (adapter disabled) at sampling, then the policy in the loss
    assert all(pixel_values is not None and pixel_values.size(0) == 4 for pixel_values in calls)


def test_vlm_evaluate_sees_the_images(tmp_path, tiny_vlm_path, monkeypatch):
    trainer = PLETrainer(
        model=tiny_vlm_path,
        reward_funcs=word_count,
        args=checkpointed_args(tmp_path, per_device_eval_batch_size=2),
        train_dataset=image_dataset(),
        eval_dataset=image_dataset("images"),
    )
    calls = []
    spy_logps(trainer, monkeypatch, lambda ids, kw: calls.append(kw.get("num_images")))
    metrics = trainer.evaluate()
    assert math.isfinite(metrics["eval_loss"])
    assert calls == [[1, 1, 1, 1], [1, 1, 1, 1]]  # 4 eval prompts in 2 batches of 2 pairs, one image per answer


def test_tiled_image_families_are_refused(tmp_path, tiny_vlm_path):
    # LFM2-VL/InternVL processors cut images into tiles, a layout the pair forward does not repeat: refused up front.
    model = LlavaForConditionalGeneration.from_pretrained(tiny_vlm_path)
    model.config.model_type = "internvl"
    with pytest.raises(ValueError, match="type 'internvl' cut images into tiles"):
        PLETrainer(
            model=model,
            reward_funcs=word_count,
            args=checkpointed_args(tmp_path),
            train_dataset=image_dataset(),
            processing_class=AutoProcessor.from_pretrained(tiny_vlm_path),
        )


def test_vlm_with_plain_text_prompts_is_refused(tmp_path, tiny_vlm_path):
    dataset = Dataset.from_dict({"prompt": PROMPTS, "image": image_dataset()["image"]})
    with pytest.raises(ValueError, match="images but its prompts are plain text"):
        PLETrainer(
            model=tiny_vlm_path, reward_funcs=word_count, args=checkpointed_args(tmp_path), train_dataset=dataset
        )


def test_images_for_a_text_only_policy_are_refused(tmp_path, tiny_model_path):
    with pytest.raises(ValueError, match="'image' column, but the policy's processing class"):
        PLETrainer(
            model=tiny_model_path, reward_funcs=word_count, args=checkpointed_args(tmp_path),
            train_dataset=image_dataset(),
        )  # fmt: skip


def test_vlm_prompt_longer_than_max_prompt_length_is_refused(tmp_path, tiny_vlm_path):
    trainer = PLETrainer(
        model=tiny_vlm_path,
        reward_funcs=word_count,
        args=checkpointed_args(tmp_path, max_prompt_length=3),
        train_dataset=image_dataset(),
    )
    with pytest.raises(ValueError, match="max_prompt_length=3"):
        trainer.train()
