"""
The ledger of GRPO's fields for pair training: every field `GRPOConfig` adds to `transformers.TrainingArguments` is
honoured ([`GRPO_FIELDS_HONOURED`]), refused with an error when set ([`GRPO_ONLY_FIELDS`]) or ignored on purpose
([`GRPO_FIELDS_IGNORED`]); the fields of `DPOConfig`/`SFTConfig` that GRPO lacks are accepted by name where they ask
for nothing new ([`MIGRATED_FIELDS`]). `docs/grpo_config_fields.md` is written from these tables by
[`~ple_trl.pairs.ledger.ledger_markdown`]; a test checks that they agree.
"""

# GRPO knobs that have no meaning for pairs (GRPO's advantage, clipping, importance sampling and entropy machinery),
# each with the reason given to a user who sets one.
GRPO_ONLY_FIELDS = {
    "loss_type": "the pair loss is the trainer's own (PLE: `ranking_loss_type`, `sft_weighting`; SPA: DPO, `beta`)",
    "epsilon": "pair training has no clipped policy ratio",
    "epsilon_high": "pair training has no clipped policy ratio",
    "delta": "pair training has no clipped policy ratio",
    "importance_sampling_level": "pair training does not use importance sampling",
    "scale_rewards": "pair training compares the two answers of a pair, it does not normalise rewards into advantages "
    "(PLE: see `reward_transform`)",
    "multi_objective_aggregation": "the weighted rewards are summed (see `reward_weights`)",
    "top_entropy_quantile": "pair training has no entropy masking",
    "entropy_coef": "pair training has no entropy bonus",
    "use_adaptive_entropy": "pair training has no entropy bonus",
    "off_policy_mask_threshold": "pair training does not use importance sampling",
    "use_bias_correction_kl": "pair training has no KL term (PLE: `beta` with a `dpo`/`ipo` ranking loss anchors on a "
    "reference)",
    "sync_ref_model": "the reference model is fixed (SPA refreshes its own at every iteration)",
    "vllm_importance_sampling_correction": "pair training does not use importance sampling",
    "mask_truncated_completions": "truncated answers are trained like the others",
    "num_generations_eval": "a pair trainer always generates two answers per prompt",
}
for _name in ("sapo_temperature_neg", "sapo_temperature_pos", "vespo_k_pos", "vespo_lambda_pos", "vespo_k_neg",
              "vespo_lambda_neg", "vllm_importance_sampling_mode", "vllm_importance_sampling_clip_min",
              "vllm_importance_sampling_clip_max", "vllm_importance_sampling_cap"):  # fmt: skip
    GRPO_ONLY_FIELDS[_name] = "it belongs to a GRPO loss variant that pair training does not use"
for _name in ("ref_model_mixup_alpha", "ref_model_sync_steps"):
    GRPO_ONLY_FIELDS[_name] = "it tunes `sync_ref_model`, which pair training does not use"
for _name in ("entropy_coef_min", "entropy_coef_max", "entropy_coef_delta", "entropy_target"):
    GRPO_ONLY_FIELDS[_name] = "it tunes GRPO's adaptive entropy bonus, which pair training does not have"
GRPO_ONLY_FIELDS["max_tool_calling_iterations"] = (
    "pair trainers take no `tools`, so there are no tool-calling rounds to bound"
)

# The ledger of every field `GRPOConfig` adds to `transformers.TrainingArguments` (the fields of `TrainingArguments`
# itself are honoured by `transformers.Trainer`, which PLE inherits unchanged). Each field is in exactly one table:
# `GRPO_FIELDS_HONOURED` (what PLE does with it), `GRPO_ONLY_FIELDS` above (refused: a non-default value is an error)
# or `GRPO_FIELDS_IGNORED` (meaningless for pairs, accepted and documented). `tests/test_grpo_fields.py` fails when a
# TRL release adds a field that none of them names, and `docs/grpo_config_fields.md` is the user-facing copy.
_GENERATION = "sampling of both answers (plain and principle-guided), through GRPO's generation"
_VLLM = "vLLM generation of both answers, through GRPO's vLLM backend (`use_vllm=True`)"
GRPO_FIELDS_HONOURED = {
    # model
    "model_init_kwargs": "loading of the policy from a path, and of the reference (`beta > 0`) from a path",
    "trust_remote_code": "loading of the policy, reference and reward models from a path",
    "router_aux_loss_coef": "MoE policies: weight of the router load-balancing loss added to the PLE loss and logged "
    "as `aux_loss`, as in GRPO (an error on a non-MoE model)",
    "disable_dropout": "dropout off in the policy and in the reference model",
    "cast_lm_head_to_fp32": "the LM head of the policy (and reference) computes PLE's log-probs in float32",
    "beta": "reference anchor of the `dpo`/`ipo` ranking losses (`beta > 0` loads a reference model); with the "
    "`sigmoid`/`hinge` losses, which have no reference term, `beta > 0` is an error",
    # batching and data
    "num_generations": "fixed at 2, one plain and one principle-guided answer per prompt; any other value is an error",
    "max_completion_length": "maximum length in tokens of both answers",
    "shuffle_dataset": "order of the prompts in each epoch (the training sampler shuffles with `seed`)",
    "pad_to_multiple_of": "padding of the prompt and answer tensors of the pairs",
    "generation_batch_size": "pairs (prompts) per generation round, as in GRPO but counted in pairs",
    "steps_per_generation": "micro-steps trained on one generation round; a pair is never split across them",
    "num_iterations": "passes over each generation round's pairs (routing and labels are computed once per round; "
    "PLE's loss has no importance ratio, so passes after the first train on the same, slightly older pairs)",
    # generation
    "temperature": f"{_GENERATION}; PLE's losses use the model's untempered log-probs",
    "top_p": _GENERATION,
    "top_k": _GENERATION,
    "min_p": _GENERATION,
    "repetition_penalty": _GENERATION,
    "generation_kwargs": _GENERATION,
    "cache_implementation": _GENERATION,
    "chat_template_kwargs": "rendering of chat prompts for generation and for reward models, as in GRPO",
    "ds3_gather_for_generation": f"DeepSpeed ZeRO-3: {_GENERATION}",
    "use_transformers_continuous_batching": f"{_GENERATION} (transformers continuous batching)",
    "transformers_continuous_batching_config": f"{_GENERATION} (transformers continuous batching)",
    "use_transformers_paged": "deprecated alias of `use_transformers_continuous_batching`, as in GRPO",
    **{
        name: _VLLM
        for name in (
            "use_vllm", "vllm_mode", "vllm_model_impl", "vllm_enable_sleep_mode", "vllm_structured_outputs_regex",
            "vllm_server_base_url", "vllm_server_host", "vllm_server_port", "vllm_server_timeout", "vllm_group_port",
            "vllm_gpu_memory_utilization", "vllm_max_model_length", "vllm_tensor_parallel_size",
        )  # fmt: skip
    },
    # rewards
    "reward_weights": "weights of the reward functions summed into the reward of each answer",
    # logging
    "log_completions": "PLE's completions table: prompt, plain and principled answers, both rewards, route, weight, "
    "tau (printed, and written to `output_dir/completions/*.parquet` and wandb/trackio)",
    "num_completions_to_print": "rows of PLE's completions table printed at each log",
    "log_unique_prompts": "the completions table sent to wandb/trackio keeps the first row of each prompt (a prompt "
    "the round holds twice, e.g. repeated in the dataset, is logged once); the printed table and the parquet files "
    "keep every row",
    "log_completions_hub_repo": "the Hub dataset to which the completions tables are pushed, as in GRPO",
}
# Accepted and without effect, because they have no meaning for PLE's pairs. Kept tiny: prefer honouring or refusing.
GRPO_FIELDS_IGNORED = {
    "log_multimodal": "PLE's completions table logs text only (prompt, both answers, rewards, route), so there are no "
    "images to include or leave out",
}


# Coming from `DPOTrainer`/`SFTTrainer`: the `DPOConfig`/`SFTConfig` fields that `GRPOConfig` lacks are accepted by
# name, so that `PLEConfig(**dpo_args.to_dict())` is not a `TypeError`. Each value in the first tuple asks for nothing
# that PLE does not already do (`None`, or DPO's/SFT's own default) and is accepted; any other value is an error that
# names the PLE knob to use instead. `max_length` and `loss_type` have their own rules in `_check_migrated_fields`.
MIGRATED_FIELDS = {
    "max_length": ((None,), "PLE caps prompts and answers separately: set `max_prompt_length` (prompts are truncated "
                   "from the left, the principle kept) and `max_completion_length`"),
    "truncation_mode": ((None, "keep_start"), "PLE truncates prompts from the left with `max_prompt_length` and "
                        "answers at `max_completion_length`"),
    "label_smoothing": ((None, 0.0), "PLE's soft labels are the weighted SFT weights: see `sft_weighting` and "
                        "`sft_temperature`"),
    "loss_weights": ((None,), "weigh PLE's two losses with `rank_coef` and `wsft_coef`"),
    "ld_alpha": ((None,), "rank on mean token log-probs with `length_normalize=True`"),
    "use_weighting": ((None, False), "PLE weighs the answers of unranked pairs with `sft_weighting`"),
    "f_divergence_type": ((None, "reverse_kl"), "PLE's reference anchor is `ranking_loss_type='dpo'`/'ipo' with "
                          "`beta`"),
    "f_alpha_divergence_coef": ((None, 0.5), "PLE's reference anchor is `ranking_loss_type='dpo'`/'ipo' with `beta`"),
    "discopop_tau": ((None, 0.05), "choose PLE's ranking loss with `ranking_loss_type`"),
    "precompute_ref_log_probs": ((None, False), "PLE generates new answers every round, so their reference "
                                 "log-probs cannot be computed ahead (with PEFT the reference costs no memory)"),
    "precompute_ref_batch_size": ((None,), "PLE generates new answers every round, so their reference log-probs "
                                  "cannot be computed ahead"),
    "padding_free": ((None, False), "PLE pads the pairs of a round itself (see `pad_to_multiple_of`)"),
    "pad_token": ((None,), "PLE pads with the tokenizer's own pad token: set `tokenizer.pad_token` and pass the "
                  "tokenizer as `processing_class`"),
    "eos_token": ((None,), "answers end at the model's `generation_config.eos_token_id` (or use `generation_kwargs`)"),
    "chat_template_path": ((None,), "set `tokenizer.chat_template` and pass the tokenizer as `processing_class`"),
    "dataset_num_proc": ((None,), "PLE tokenizes prompts at each generation round, not the dataset up front"),
    "dataset_kwargs": ((None,), "PLE reads prompts as they are; prepare the dataset before the trainer"),
    "dataset_text_field": ((None, "text"), "PLE reads a `prompt` column (plain text or chat): rename your column to "
                           "`prompt`, or use a preference dataset, whose `chosen`/`rejected` are dropped"),
    "packing": ((None, False), "PLE trains pairs of answers to one prompt, which cannot be packed"),
    "packing_strategy": ((None, "bfd"), "PLE trains pairs of answers to one prompt, which cannot be packed"),
    "eval_packing": ((None,), "PLE trains pairs of answers to one prompt, which cannot be packed"),
    "completion_only_loss": ((None, True), "PLE's loss is always on the answers only"),
    "assistant_only_loss": ((None, False), "PLE's loss is always on the generated answer only"),
    "activation_offloading": ((None, False), "use `gradient_checkpointing=True` to save activation memory"),
}
# DPO's `loss_type` values that are one of PLE's ranking losses, exactly: DPO's `"sigmoid"` is the reference-anchored
# `-log sigmoid(beta * margin)`, which is PLE's `"dpo"` (PLE's `"sigmoid"` has no reference), and `"ipo"` is the same
# loss on mean token log-probs in both. DPO's `"hinge"` is anchored on the reference and PLE's is not: it is refused.
DPO_LOSS_TYPES = {"sigmoid": "dpo", "ipo": "ipo"}
# The other `loss_type` values of `DPOConfig` and `SFTConfig`, refused with a pointer to PLE's loss knobs (a GRPO value
# is refused by the `GRPO_ONLY_FIELDS` rule instead).
DPO_SFT_OTHER_LOSS_TYPES = (
    "hinge", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot", "aot_unpaired", "apo_zero", "apo_down",
    "discopop", "sft", "sigmoid_norm", "nll", "dft", "chunked_nll",
)  # fmt: skip


# The `loss_type` values of `DPOConfig` and `SFTConfig` (a GRPO value is refused by the `GRPO_ONLY_FIELDS` rule
# instead): each method maps the ones that are its own loss and refuses the others with a pointer to its loss knobs.
DPO_SFT_LOSS_TYPES = (
    "sigmoid", "ipo", "hinge", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot", "aot_unpaired",
    "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm", "nll", "dft", "chunked_nll",
)  # fmt: skip
