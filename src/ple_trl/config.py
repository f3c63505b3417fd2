import dataclasses
import math
from dataclasses import InitVar, dataclass, field

from trl import GRPOConfig

from .device import check_vllm_mode, resolve_mixed_precision
from .labeling import GAP_MODES, REWARD_TRANSFORMS, ROUTINGS, SFT_WEIGHTINGS
from .losses import RANKING_LOSS_TYPES, REFERENCE_LOSS_TYPES
from .principles import DEFAULT_TEMPLATE, PLACEMENTS

ITERATION_UNITS = ("epoch", "steps")
REWARD_SOURCES = ("reward_funcs", "implicit")
IMPLICIT_REWARD_JUDGES = ("iteration", "policy")

# GRPO knobs that have no meaning in PLE (its advantage, clipping, importance sampling and entropy machinery), each
# with the reason given to a user who sets one.
GRPO_ONLY_FIELDS = {
    "loss_type": "PLE's loss is chosen with `ranking_loss_type` and `sft_weighting`",
    "epsilon": "PLE has no clipped policy ratio",
    "epsilon_high": "PLE has no clipped policy ratio",
    "delta": "PLE has no clipped policy ratio",
    "importance_sampling_level": "PLE does not use importance sampling",
    "scale_rewards": "PLE compares the two answers of a pair, it does not normalise rewards into advantages "
    "(see `reward_transform`)",
    "multi_objective_aggregation": "PLE sums the weighted rewards (see `reward_weights`)",
    "top_entropy_quantile": "PLE has no entropy masking",
    "entropy_coef": "PLE has no entropy bonus",
    "use_adaptive_entropy": "PLE has no entropy bonus",
    "off_policy_mask_threshold": "PLE does not use importance sampling",
    "use_bias_correction_kl": "PLE has no KL term (use `beta` with a `dpo`/`ipo` ranking loss for a reference anchor)",
    "sync_ref_model": "PLE's reference model is fixed",
    "vllm_importance_sampling_correction": "PLE does not use importance sampling",
    "mask_truncated_completions": "PLE trains on truncated answers like on the others",
    "num_generations_eval": "PLE always generates one plain and one principled answer per prompt",
}
for _name in ("sapo_temperature_neg", "sapo_temperature_pos", "vespo_k_pos", "vespo_lambda_pos", "vespo_k_neg",
              "vespo_lambda_neg", "vllm_importance_sampling_mode", "vllm_importance_sampling_clip_min",
              "vllm_importance_sampling_clip_max", "vllm_importance_sampling_cap"):  # fmt: skip
    GRPO_ONLY_FIELDS[_name] = "it belongs to a GRPO loss variant that PLE does not use"
for _name in ("ref_model_mixup_alpha", "ref_model_sync_steps"):
    GRPO_ONLY_FIELDS[_name] = "it tunes `sync_ref_model`, and PLE's reference model is fixed"
for _name in ("entropy_coef_min", "entropy_coef_max", "entropy_coef_delta", "entropy_target"):
    GRPO_ONLY_FIELDS[_name] = "it tunes GRPO's adaptive entropy bonus, and PLE has no entropy bonus"
GRPO_ONLY_FIELDS["max_tool_calling_iterations"] = (
    "PLETrainer takes no `tools`, so there are no tool-calling rounds to bound"
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


def _initvar_names(cls) -> list[str]:
    # The order in which dataclasses pass `InitVar` values to `__post_init__`.
    return [f.name for f in cls.__dataclass_fields__.values() if isinstance(f.type, InitVar)]


@dataclass
class PLEConfig(GRPOConfig):
    r"""
    Configuration class for the [`PLETrainer`], Progressively Label Enhancement (Liu, Xu & Geng, ICML 2025).

    Everything of [`~trl.GRPOConfig`] that concerns the model, generation (`max_completion_length`, `temperature`,
    `top_p`, `use_vllm`, ...), reward functions (`reward_weights`) and training applies unchanged. GRPO's own loss
    knobs (`loss_type`, `epsilon`, `scale_rewards`, importance sampling, entropy) have no meaning in PLE: setting one
    to a non-default value raises an error instead of being silently ignored. `docs/grpo_config_fields.md` lists every
    field of `GRPOConfig` with what PLE does with it (`GRPO_FIELDS_HONOURED`, `GRPO_ONLY_FIELDS`, `GRPO_FIELDS_IGNORED`
    in this module).

    Coming from [`~trl.DPOConfig`]/[`~trl.SFTConfig`]: their names are accepted too (`PLEConfig(**dpo_args.to_dict())`
    is no `TypeError`). DPO's `loss_type="sigmoid"`/`"ipo"` become `ranking_loss_type="dpo"`/`"ipo"`, `max_length` is
    accepted when `max_prompt_length + max_completion_length` stays within it, a DPO/SFT default or `None` is accepted
    for the others, and any other value is an error naming the PLE knob to use (`MIGRATED_FIELDS` in this module).

    Batch semantics: `per_device_train_batch_size` counts **pairs**, i.e. prompts, as for a DPO user: each prompt gives
    a plain and a principle-guided answer. `generation_batch_size` (or `steps_per_generation`) counts pairs too; as in
    GRPO, one generation round fills the buffer for `steps_per_generation` micro-steps and a pair is never split across
    micro-batches. `num_generations` is fixed at 2 (one plain, one principled answer).

    Parameters that control the principles:
        principle (`str` or `None`, *optional*, defaults to `None`):
            The principle added to every prompt; not empty. A `principle` column in the dataset overrides it per row
            (rows whose `principle` is empty or missing use this one).
        principles (`list[str]` or `None`, *optional*, defaults to `None`):
            A set of principles, none empty; each prompt gets one drawn at random (seeded by `seed`). Exclusive with
            `principle`.
        principle_template (`str`, *optional*, defaults to `"{principle}\n\n{prompt}"`):
            How the principle is combined with a plain prompt, or with the last user turn of a chat prompt. Must
            contain `{principle}` and `{prompt}`.
        principle_placement (`str`, *optional*, defaults to `"user"`):
            For chat prompts: `"user"` rewrites the last user turn with `principle_template`; `"system"` puts the
            principle in a system message.

    Parameters that control label enhancement:
        tau0 (`float`, *optional*, defaults to `0.2`):
            Initial threshold on the reward gap (paper: 0.2).
        alpha (`float`, *optional*, defaults to `0.9`):
            Decay of the threshold per PLE iteration, in (0, 1] (paper: 0.9): `tau_k = max(tau_min, tau0 * alpha**k)`.
        tau_min (`float`, *optional*, defaults to `0.0`):
            Floor of the threshold.
        iteration_unit (`str`, *optional*, defaults to `"epoch"`):
            What one PLE iteration is: `"epoch"` (one pass over the prompts, as many optimizer steps as the trainer
            counts per epoch) or `"steps"` (`steps_per_iteration` optimizer steps).
        steps_per_iteration (`int` or `None`, *optional*, defaults to `None`):
            Optimizer steps per iteration when `iteration_unit="steps"`.
        ple_iterations (`int` or `None`, *optional*, defaults to `None`):
            Alternatively, the number of iterations `I` spread evenly over `max_steps` (sets `steps_per_iteration`).
        gap_mode (`str`, *optional*, defaults to `"signed"`):
            `"signed"` (`r_p - r`: rank only when the principled answer is better) or `"absolute"` (`|r_p - r|`: rank
            the better answer of any pair with a large gap).
        reward_transform (`str`, *optional*, defaults to `"none"`):
            Rewards are put on tau's scale before routing: `"none"`, `"sigmoid"` or `"zscore"` (over the finite rewards
            of the round). A non-finite reward skips its pair, whatever the transform.
        routing (`str`, *optional*, defaults to `"threshold"`):
            `"threshold"` is PLE. The ablations ignore `tau` and `gap_mode`: `"rank_all"` puts every pair in the
            ranking loss, preferring the answer with the higher reward (the principled one on a tie), and `"wsft_all"`
            puts every pair in the weighted SFT loss.

    Parameters that control the loss:
        ranking_loss_type (`str`, *optional*, defaults to `"sigmoid"`):
            `"sigmoid"` (Bradley-Terry on sequence likelihoods), `"hinge"` (RRHF-style, on mean token log-probs), or
            the reference-anchored `"dpo"` and `"ipo"` (need `beta > 0`; `"ipo"` compares mean token log-probs, as
            TRL's DPO trainer does, so its loss does not grow with the answer length).
        length_normalize (`bool`, *optional*, defaults to `False`):
            Rank on mean token log-probs instead of their sum (`"hinge"` and `"ipo"` always do).
        rank_sft_coef (`float`, *optional*, defaults to `0.0`):
            Extra NLL on the preferred answer of ranked pairs.
        sft_weighting (`str`, *optional*, defaults to `"softmax"`):
            Soft labels of the weighted SFT loss: `"softmax"` over the two rewards, `"linear"` (positive rewards) or
            `"equal"`.
        sft_temperature (`float`, *optional*, defaults to `1.0`):
            Temperature of the `"softmax"` weights.
        rank_coef (`float`, *optional*, defaults to `1.0`):
            Weight of the ranking loss.
        wsft_coef (`float`, *optional*, defaults to `1.0`):
            Weight of the weighted SFT loss.
        beta (`float`, *optional*, defaults to `0.0`):
            Reference anchor of `"dpo"`/`"ipo"` ranking, and only of them: PLE has no GRPO-style KL term, so `beta > 0`
            with `"sigmoid"` or `"hinge"` is an error. `0` loads no reference model. With PEFT the reference is the
            adapter-disabled model, otherwise a frozen copy of the initial policy (or `ref_model=` of the trainer).

    Parameters that control prompts and rewards:
        max_prompt_length (`int` or `None`, *optional*, defaults to `512`):
            Plain prompts longer than this are truncated from the left; their principled versions lose the same query
            tokens and keep their principle. `None` keeps them whole.
        reward_model_name_or_path (`str` or `None`, *optional*, defaults to `None`):
            Path or id of a sequence-classification reward model, added to the trainer's `reward_funcs`.
        reward_batch_size (`int` or `None`, *optional*, defaults to `None`):
            At most this many answers are scored in one reward call (bounds a reward model's memory). `None`: all the
            answers of the round at once.
        save_enhanced_labels (`bool`, *optional*, defaults to `False`):
            Write every enhanced label (prompt, principle, both answers, both rewards, route, weights, tau, step) to
            `{output_dir}/enhanced_labels.jsonl`, one record per trained pair: a fresh run starts a fresh file, a
            resumed run drops the records generated after its checkpoint.

    Parameters that control speed:
        share_prompt_prefix (`bool` or `None`, *optional*, defaults to `None`):
            Run the prompt tokens a pair's two sequences share once: the plain prompt of the loss pass (shared by both
            answers) and the common start of the two prompts at generation (a dialogue's earlier turns, a system
            prompt). `None` shares wherever it is proven to give the numbers of the unshared layout (the model
            families of `SHARED_PREFIX_FAMILIES`, sdpa or eager attention, no sliding window; at generation, pairs
            sharing 16 tokens or more on average), and says once at INFO why it does not elsewhere. `True` shares
            whatever the pairs share and is an error where the model or the settings cannot. `False` never shares.

    Parameters of the implicit reward (SPA's self-judging reward):
        reward_source (`str`, *optional*, defaults to `"reward_funcs"`):
            `"reward_funcs"`: the trainer's reward functions/models (and `reward_model_name_or_path`). `"implicit"`: no
            reward function at all; the trainer scores each answer with the model's own implicit reward
            `beta_judge * (log pi_judge(y|x) - log pi_init(y|x))`, computed by the pair forward without gradient.
            `pi_init` is `ref_model=` of the trainer, or the adapter-disabled model of a `PeftModel` passed with its
            trained adapter; without either it would be the initial policy itself, every reward 0: an error.
        implicit_reward_judge (`str`, *optional*, defaults to `"iteration"`):
            `pi_judge`: `"iteration"` (the policy as at the start of the current iteration: a copy of the adapter
            under PEFT, else a frozen copy of the model, refreshed at each iteration boundary and saved in
            checkpoints) or `"policy"` (the current policy: no copy, cheapest).
        beta_judge (`float`, *optional*, defaults to `1.0`):
            Scale of the implicit reward, > 0 (it changes the size of the rewards, not which answer is preferred).
        implicit_reward_length_normalize (`bool`, *optional*, defaults to `False`):
            Mean token log-probs instead of sequence sums (SPA uses sums).

    Logging: `ple/tau` is logged at the step (the threshold of the logging window's last generation round); the other
    `ple/*` metrics, like GRPO's, are means over the window. `log_completions=True` writes PLE's completions table (one
    row per pair: prompt, both answers, both rewards, route, weight, tau) instead of GRPO's.
    """

    # Parameters that control the principles
    principle: str | None = field(default=None, metadata={"help": "Principle added to every prompt."})
    principles: list[str] | None = field(
        default=None, metadata={"help": "A set of principles; each prompt gets one drawn at random."}
    )
    principle_template: str = field(
        default=DEFAULT_TEMPLATE,
        metadata={"help": "How a principle is combined with a prompt; placeholders `{principle}` and `{prompt}`."},
    )
    principle_placement: str = field(
        default="user",
        metadata={
            "help": "For chat prompts: rewrite the last `user` turn, or add a `system` message.",
            "choices": PLACEMENTS,
        },
    )

    # Parameters that control label enhancement
    tau0: float = field(default=0.2, metadata={"help": "Initial threshold on the reward gap (paper: 0.2)."})
    alpha: float = field(default=0.9, metadata={"help": "Decay of the threshold per PLE iteration (paper: 0.9)."})
    tau_min: float = field(default=0.0, metadata={"help": "Floor of the threshold."})
    iteration_unit: str = field(
        default="epoch",
        metadata={
            "help": "One PLE iteration is an `epoch` or `steps_per_iteration` optimizer `steps`.",
            "choices": ITERATION_UNITS,
        },
    )
    steps_per_iteration: int | None = field(
        default=None, metadata={"help": "Optimizer steps per PLE iteration when `iteration_unit='steps'`."}
    )
    ple_iterations: int | None = field(
        default=None, metadata={"help": "Number of PLE iterations spread evenly over `max_steps`."}
    )
    gap_mode: str = field(
        default="signed", metadata={"help": "`signed` (r_p - r) or `absolute` (|r_p - r|) gap.", "choices": GAP_MODES}
    )
    reward_transform: str = field(
        default="none",
        metadata={"help": "Reward transform before routing.", "choices": REWARD_TRANSFORMS},
    )
    routing: str = field(
        default="threshold",
        metadata={
            "help": "`threshold` (PLE), or the ablations `rank_all` (every pair ranked, the higher reward preferred) "
            "and `wsft_all` (every pair in weighted SFT).",
            "choices": ROUTINGS,
        },
    )

    # Parameters that control the loss
    ranking_loss_type: str = field(
        default="sigmoid", metadata={"help": "Ranking loss.", "choices": RANKING_LOSS_TYPES}
    )
    length_normalize: bool = field(
        default=False,
        metadata={"help": "Rank on mean token log-probs instead of their sum (`hinge` and `ipo` always do)."},
    )
    rank_sft_coef: float = field(default=0.0, metadata={"help": "Extra NLL on the preferred answer of ranked pairs."})
    sft_weighting: str = field(
        default="softmax", metadata={"help": "Soft labels of the weighted SFT loss.", "choices": SFT_WEIGHTINGS}
    )
    sft_temperature: float = field(default=1.0, metadata={"help": "Temperature of the softmax soft labels."})
    rank_coef: float = field(default=1.0, metadata={"help": "Weight of the ranking loss."})
    wsft_coef: float = field(default=1.0, metadata={"help": "Weight of the weighted SFT loss."})
    beta: float = field(
        default=0.0,
        metadata={
            "help": "Reference anchor of `dpo`/`ipo` ranking losses (PLE has no KL term); 0 loads no reference model."
        },
    )

    # Parameters that control prompts and rewards
    max_prompt_length: int | None = field(
        default=512,
        metadata={"help": "Plain prompts longer than this are truncated from the left (principles are kept)."},
    )
    reward_model_name_or_path: str | None = field(
        default=None, metadata={"help": "Path or id of a sequence-classification reward model."}
    )
    reward_batch_size: int | None = field(
        default=None, metadata={"help": "At most this many answers per reward call (None: the whole round)."}
    )
    save_enhanced_labels: bool = field(
        default=False, metadata={"help": "Write every enhanced label to `{output_dir}/enhanced_labels.jsonl`."}
    )

    # Parameters that control speed
    share_prompt_prefix: bool | None = field(
        default=None,
        metadata={
            "help": "Run a pair's shared prompt tokens once (loss pass, generation): None where proven exact for the "
            "model family, True required (an error where it cannot), False never."
        },
    )

    # Overridden GRPO defaults
    num_generations: int | None = field(
        default=2, metadata={"help": "Fixed at 2 in PLE: one plain and one principle-guided answer per prompt."}
    )
    vllm_importance_sampling_correction: bool = field(
        default=False, metadata={"help": "Not used by PLE (no importance sampling)."}
    )

    # Parameters of the implicit reward (SPA's self-judging reward, usable by PLE with no reward model)
    reward_source: str = field(
        default="reward_funcs",
        metadata={
            "help": "`reward_funcs` (the trainer's reward functions/models) or `implicit`: the model's own implicit "
            "reward `beta_judge * (log pi_judge(y|x) - log pi_init(y|x))`, with no reward function."
        },
    )
    implicit_reward_judge: str = field(
        default="iteration",
        metadata={
            "help": "`pi_judge` of the implicit reward: `iteration` (the model as at the start of the current "
            "iteration) or `policy` (the current policy, cheapest)."
        },
    )
    beta_judge: float = field(default=1.0, metadata={"help": "Scale of the implicit reward, > 0."})
    implicit_reward_length_normalize: bool = field(
        default=False, metadata={"help": "Implicit reward on mean token log-probs instead of sequence sums."}
    )

    # Names of `DPOConfig`/`SFTConfig`, accepted so that their configs port by name (see `MIGRATED_FIELDS`). They are
    # `InitVar`s, not PLE settings: the parser does not list them and `to_dict()` does not save them.
    max_length: InitVar[object] = None
    truncation_mode: InitVar[object] = None
    label_smoothing: InitVar[object] = None
    loss_weights: InitVar[object] = None
    ld_alpha: InitVar[object] = None
    use_weighting: InitVar[object] = None
    f_divergence_type: InitVar[object] = None
    f_alpha_divergence_coef: InitVar[object] = None
    discopop_tau: InitVar[object] = None
    precompute_ref_log_probs: InitVar[object] = None
    precompute_ref_batch_size: InitVar[object] = None
    padding_free: InitVar[object] = None
    pad_token: InitVar[object] = None
    eos_token: InitVar[object] = None
    chat_template_path: InitVar[object] = None
    dataset_num_proc: InitVar[object] = None
    dataset_kwargs: InitVar[object] = None
    dataset_text_field: InitVar[object] = None
    packing: InitVar[object] = None
    packing_strategy: InitVar[object] = None
    eval_packing: InitVar[object] = None
    completion_only_loss: InitVar[object] = None
    assistant_only_loss: InitVar[object] = None
    activation_offloading: InitVar[object] = None

    def __post_init__(self, *migrated_values):
        self._check_migrated_fields(dict(zip(_initvar_names(type(self)), migrated_values)))
        self._check_ple_fields()
        self._check_implicit_reward_fields()
        # TRL defaults to bf16, which fails on CPU-only machines and Ascend 910A: pick what the device supports.
        self.bf16, self.fp16 = resolve_mixed_precision(self.bf16, self.fp16, use_cpu=self.use_cpu)
        # GRPOConfig counts completions and checks that a generation batch holds whole groups of `num_generations`
        # completions. PLE's unit is the pair (two completions), so present GRPO with completions for its checks,
        # then count pairs again.
        units = ("per_device_train_batch_size", "per_device_eval_batch_size", "generation_batch_size")
        for name in units:
            if getattr(self, name) is not None:
                setattr(self, name, getattr(self, name) * 2)
        try:
            super().__post_init__()
        finally:
            for name in units:
                if getattr(self, name) is not None:
                    setattr(self, name, getattr(self, name) // 2)
        check_vllm_mode(self.vllm_mode, self.use_vllm, device_type=self.device.type)
        if self.ple_iterations is not None and self.steps_per_iteration is None:
            self.steps_per_iteration = max(1, self.max_steps // self.ple_iterations)

    def _check_migrated_fields(self, values: dict):
        self._map_dpo_loss_type()
        for name, value in values.items():
            accepted, pointer = MIGRATED_FIELDS[name]
            if name == "max_length" and value is not None:
                bound = (
                    None
                    if self.max_prompt_length is None or self.max_completion_length is None
                    else self.max_prompt_length + self.max_completion_length
                )
                if bound is not None and value >= bound:
                    continue  # never reached: PLE's own caps keep every prompt + answer within it, as DPO/SFT would
                raise ValueError(
                    f"`max_length={value!r}` (DPO/SFT: prompt + answer) is not a PLE setting: {pointer}. With "
                    f"`max_prompt_length={self.max_prompt_length}` and `max_completion_length="
                    f"{self.max_completion_length}` a sequence can be longer than {value} tokens: set the two so that "
                    "their sum is at most it, and remove `max_length`."
                )
            if name.endswith("_token") and value == f"<{name.upper()}>":
                continue  # `TrainingArguments.to_dict()` masks every `*_token` field: the value is not carried
            if not any(value is ok or (ok is not None and value == ok) for ok in accepted):
                allowed = " or ".join(repr(ok) for ok in accepted)
                raise ValueError(
                    f"`{name}={value!r}` is a DPO/SFT setting that PLE does not have: {pointer}. Remove it (accepted "
                    f"values, which change nothing: {allowed})."
                )

    def _map_dpo_loss_type(self):
        value = self.loss_type
        names = list(value) if isinstance(value, (list, tuple)) else [value]
        if isinstance(value, str) and value not in DPO_LOSS_TYPES and value not in DPO_SFT_OTHER_LOSS_TYPES:
            return  # GRPO's default, or a GRPO loss refused by `_check_ple_fields`
        pointer = (
            "PLE's loss is a ranking loss on the pairs whose reward gap passes tau (`ranking_loss_type`, one of "
            f"{RANKING_LOSS_TYPES}: DPO's `'sigmoid'` is PLE's `'dpo'` and DPO's `'ipo'` is `'ipo'`, both with "
            "`beta > 0`; PLE's `'sigmoid'` and `'hinge'` have no reference term) plus a weighted SFT (NLL) loss on "
            "the others (`sft_weighting`, `wsft_coef`)"
        )
        if len(names) != 1 or names[0] not in DPO_LOSS_TYPES:
            raise ValueError(
                f"`loss_type={value!r}` has no PLE equivalent: {pointer}. Set `ranking_loss_type` instead."
            )
        ranking_loss_type = DPO_LOSS_TYPES[names[0]]
        if self.ranking_loss_type not in ("sigmoid", ranking_loss_type):  # "sigmoid" is PLE's default: not chosen
            raise ValueError(
                f"`loss_type={value!r}` means `ranking_loss_type={ranking_loss_type!r}`, but `ranking_loss_type="
                f"{self.ranking_loss_type!r}` is set too: {pointer}. Keep one of them."
            )
        if self.beta <= 0:
            raise ValueError(
                f"`loss_type={value!r}` is DPO's reference-anchored loss, PLE's `ranking_loss_type="
                f"{ranking_loss_type!r}`, and needs `beta > 0` (DPO's default is 0.1); got `beta={self.beta}`."
            )
        self.ranking_loss_type = ranking_loss_type
        # Back to GRPO's default, which GRPOConfig validates and PLE ignores: the loss is now `ranking_loss_type`.
        self.loss_type = next(f.default for f in dataclasses.fields(GRPOConfig) if f.name == "loss_type")

    def _check_ple_fields(self):
        defaults = {f.name: f.default for f in dataclasses.fields(GRPOConfig)}
        for name, reason in GRPO_ONLY_FIELDS.items():
            value, default = getattr(self, name), defaults.get(name)
            if name == "vllm_importance_sampling_correction":
                default = False
            if value != default:
                raise ValueError(
                    f"`{name}={value!r}` is a GRPO setting that PLE does not use: {reason}. Remove it (default: "
                    f"{default!r})."
                )
        if self.num_generations != 2:
            raise ValueError(
                f"`num_generations={self.num_generations}`: PLE always generates exactly 2 answers per prompt (plain "
                "and principled). Remove it; to generate more per step, raise `per_device_train_batch_size` (pairs)."
            )
        # Sizes first: GRPOConfig doubles the batch sizes (see `__post_init__`) and fails later, with torch's words.
        for name in ("per_device_train_batch_size", "per_device_eval_batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"`{name}={value!r}` must be >= 1: it counts pairs (prompts) per device and step.")
        if self.max_completion_length is not None and self.max_completion_length < 1:
            raise ValueError(
                f"`max_completion_length={self.max_completion_length}` must be >= 1: it is the most tokens of each "
                "generated answer."
            )
        if self.principle is not None and self.principles is not None:
            raise ValueError(
                "Both `principle` and `principles` are set. Use `principle` for a single principle or `principles` "
                "for a set to draw from, not both."
            )
        if self.principle is not None and (not isinstance(self.principle, str) or not self.principle.strip()):
            raise ValueError(
                f"`principle={self.principle!r}` is empty, so the principle-guided prompt would be the plain one. "
                "Give a principle text, or leave `principle` unset and use `principles=[...]` or a `principle` column."
            )
        if self.principles is not None and (
            not self.principles or not all(isinstance(p, str) and p.strip() for p in self.principles)
        ):
            raise ValueError(
                f"`principles={self.principles!r}` must be a non-empty list of principle texts, none of them empty or "
                "blank."
            )
        if "{prompt}" not in self.principle_template:
            raise ValueError(
                f"`principle_template={self.principle_template!r}` has no `{{prompt}}` placeholder, so the query "
                "would be lost. Use e.g. '{principle}\\n\\n{prompt}'."
            )
        try:
            self.principle_template.format(principle="", prompt="")
        except (KeyError, IndexError, ValueError, AttributeError) as error:
            raise ValueError(
                f"`principle_template={self.principle_template!r}` is not a valid template ({error!r}): only the "
                "placeholders `{principle}` and `{prompt}` are allowed; write literal braces as `{{` and `}}`."
            ) from None
        if self.principle_template.format(principle="\0", prompt="") == self.principle_template.format(
            principle="", prompt=""
        ):
            raise ValueError(
                f"`principle_template={self.principle_template!r}` has no `{{principle}}` placeholder, so the "
                "principle would be lost. Use e.g. '{principle}\\n\\n{prompt}'."
            )
        choices = {
            "principle_placement": PLACEMENTS,
            "iteration_unit": ITERATION_UNITS,
            "gap_mode": GAP_MODES,
            "reward_transform": REWARD_TRANSFORMS,
            "routing": ROUTINGS,
            "ranking_loss_type": RANKING_LOSS_TYPES,
            "sft_weighting": SFT_WEIGHTINGS,
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"Unknown `{name}={getattr(self, name)!r}`; use one of {allowed}.")
        # NaN passes every comparison below (tau0=nan would become tau 0): refuse non-finite numbers first.
        for name in ("tau0", "alpha", "tau_min", "sft_temperature", "rank_coef", "wsft_coef", "rank_sft_coef", "beta"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"`{name}={value!r}` must be a finite number.")
        if self.tau0 < 0:
            raise ValueError(f"`tau0={self.tau0}` must be >= 0 (the paper uses 0.2).")
        if not 0 < self.alpha <= 1:
            raise ValueError(f"`alpha={self.alpha}` must be in (0, 1] (the paper uses 0.9; 1 keeps tau constant).")
        if self.tau_min < 0 or self.tau_min > self.tau0:
            raise ValueError(f"`tau_min={self.tau_min}` must be in [0, tau0={self.tau0}].")
        if self.sft_temperature <= 0:
            raise ValueError(f"`sft_temperature={self.sft_temperature}` must be > 0.")
        if self.beta < 0:
            raise ValueError(f"`beta={self.beta}` must be >= 0.")
        if self.ranking_loss_type in REFERENCE_LOSS_TYPES and self.beta == 0:
            raise ValueError(
                f"`ranking_loss_type={self.ranking_loss_type!r}` anchors on a reference model and needs `beta > 0`; "
                "set e.g. `beta=0.1`, or use `ranking_loss_type='sigmoid'`."
            )
        if self.ranking_loss_type not in REFERENCE_LOSS_TYPES and self.beta > 0:
            # A GRPO config ported with its KL coefficient (e.g. beta=0.04) would otherwise load a reference model and
            # compute its log-probs every round for nothing.
            raise ValueError(
                f"`beta={self.beta}` has no effect with `ranking_loss_type={self.ranking_loss_type!r}`: PLE has no "
                "GRPO-style KL term, only the reference-anchored ranking losses use `beta`. Set "
                "`ranking_loss_type='dpo'` (or 'ipo') to anchor on a reference model, or `beta=0`."
            )
        for name in ("rank_coef", "wsft_coef", "rank_sft_coef"):
            if getattr(self, name) < 0:
                raise ValueError(f"`{name}={getattr(self, name)}` must be >= 0.")
        if self.iteration_unit == "steps" and self.steps_per_iteration is None and self.ple_iterations is None:
            raise ValueError(
                "`iteration_unit='steps'` needs `steps_per_iteration` (optimizer steps per PLE iteration) or "
                "`ple_iterations` (iterations spread over `max_steps`)."
            )
        if self.ple_iterations is not None:
            if self.ple_iterations < 1 or self.max_steps <= 0:
                raise ValueError(
                    f"`ple_iterations={self.ple_iterations}` needs a positive `max_steps` (got {self.max_steps}) and "
                    "must be >= 1."
                )
            if self.iteration_unit != "steps":
                raise ValueError("`ple_iterations` counts optimizer steps: set `iteration_unit='steps'` with it.")
        if self.steps_per_iteration is not None and self.steps_per_iteration < 1:
            raise ValueError(f"`steps_per_iteration={self.steps_per_iteration}` must be >= 1.")
        if self.max_prompt_length is not None and self.max_prompt_length < 1:
            raise ValueError(f"`max_prompt_length={self.max_prompt_length}` must be >= 1 or None.")
        if self.share_prompt_prefix not in (None, True, False):
            raise ValueError(
                f"`share_prompt_prefix={self.share_prompt_prefix!r}` must be None (share where proven exact), True "
                "(required) or False (never)."
            )
        if self.reward_batch_size is not None and self.reward_batch_size < 1:
            raise ValueError(f"`reward_batch_size={self.reward_batch_size}` must be >= 1 or None.")

    def _check_implicit_reward_fields(self):
        if self.reward_source not in REWARD_SOURCES:
            raise ValueError(
                f"Unknown `reward_source={self.reward_source!r}`; use one of {REWARD_SOURCES} ('implicit' needs no "
                "reward function)."
            )
        if self.implicit_reward_judge not in IMPLICIT_REWARD_JUDGES:
            raise ValueError(
                f"Unknown `implicit_reward_judge={self.implicit_reward_judge!r}`; use one of {IMPLICIT_REWARD_JUDGES}."
            )
        if isinstance(self.beta_judge, bool) or not isinstance(self.beta_judge, (int, float)):
            raise ValueError(f"`beta_judge={self.beta_judge!r}` must be a number > 0, e.g. `beta_judge=1.0`.")
        if not math.isfinite(self.beta_judge) or self.beta_judge <= 0:
            raise ValueError(
                f"`beta_judge={self.beta_judge}` must be a finite number > 0 (a negative scale flips every label); "
                "use e.g. `beta_judge=1.0`."
            )
        if self.reward_source == "implicit" and self.reward_model_name_or_path is not None:
            raise ValueError(
                f"`reward_model_name_or_path={self.reward_model_name_or_path!r}` is set with "
                "`reward_source='implicit'`, which uses no reward model. Drop one of them."
            )


# The knobs of PLE that SPA has no use for (it has no principle, no threshold and routing, and its loss is DPO), with
# why; a non-default value in `SPAConfig` is an error.
PLE_ONLY_FIELDS = {
    "principle": "SPA samples two plain answers per prompt, with no principle",
    "principles": "SPA samples two plain answers per prompt, with no principle",
    "principle_template": "SPA has no principle",
    "principle_placement": "SPA has no principle",
    "tau0": "SPA has no reward-gap threshold (its confidence threshold is `confidence_quantile`)",
    "alpha": "SPA has no threshold decay (the label smoothing strength is `refinement_alpha`)",
    "tau_min": "SPA has no reward-gap threshold",
    "gap_mode": "SPA labels best = chosen, worst = rejected",
    "reward_transform": "SPA labels by comparing the two implicit rewards, whatever their scale",
    "routing": "SPA trains every pair with its DPO loss",
    "ranking_loss_type": "SPA's loss is the self-refined DPO loss",
    "rank_sft_coef": "SPA's loss is the self-refined DPO loss",
    "sft_weighting": "SPA has no weighted SFT loss",
    "sft_temperature": "SPA has no weighted SFT loss",
    "rank_coef": "SPA's loss is the self-refined DPO loss",
    "wsft_coef": "SPA has no weighted SFT loss",
    "reward_source": "SPA always labels with the implicit reward",
    "reward_batch_size": "SPA uses no reward function",
}


@dataclass
class SPAConfig(PLEConfig):
    r"""
    Configuration class for the [`SPATrainer`], SPA ("Aligning Large Language Models with Self-generated Preference
    Data", Kim et al., ICLR 2025, arXiv 2406.04412).

    Per prompt the model samples two plain answers; its implicit reward
    `beta_judge * (log pi_judge(y|x) - log pi_init(y|x))` labels the better one chosen and the other rejected; the pair
    is trained with DPO against the model of the previous iteration (the reference is refreshed at every iteration
    boundary: `steps_per_iteration` optimizer steps, or an epoch), with SPA's self-refinement after a warm-up.

    Everything of [`PLEConfig`] about the model, generation, batches (`per_device_train_batch_size` counts pairs, i.e.
    prompts), iterations (`iteration_unit`, `steps_per_iteration`, `ple_iterations`), the implicit reward
    (`implicit_reward_judge`, `beta_judge`, `implicit_reward_length_normalize`), `length_normalize` (DPO on mean token
    log-probs) and `save_enhanced_labels` (SPA's labels) applies. PLE's principle, threshold, routing and loss knobs
    have no meaning here: a non-default value is an error.

    Parameters that control SPA:
        beta (`float`, *optional*, defaults to `0.1`):
            DPO's `beta`, > 0.
        refinement_alpha (`float`, *optional*, defaults to `0.1`):
            Label smoothing `a` of the pairs judged unconfident, in `[0, 0.5]`; 0 turns self-refinement off.
        refinement_warmup_ratio (`float`, *optional*, defaults to `0.2`):
            Fraction of the run's optimizer steps (`max_steps`, or the count of `num_train_epochs`) trained with plain
            DPO before self-refinement starts, in `[0, 1]`.
        confidence_quantile (`float`, *optional*, defaults to `0.1`):
            `K`: a pair is confident when its margin `beta * h` is above the K-quantile of the last margins, in
            `[0, 1)`.
        margin_history_size (`int`, *optional*, defaults to `50`):
            `N`: how many margins the threshold is computed from.
        margin_history_per_pair (`bool`, *optional*, defaults to `False`):
            `False` keeps one margin per training step (the batch mean, as the authors' code); `True` every pair's.
        decouple_lambda (`float`, *optional*, defaults to `0.0`):
            De-coupled noise detection: a pair's confidence is judged on the logits `(1 + lambda) * z_theta -
            lambda * z_ref` (policy extrapolated away from the reference) instead of the policy's, `>= 0`; 0 turns it
            off. It costs two more forwards per step (full logits, no gradient), text-only models.
        temperature (`float`, *optional*, defaults to `0.7`):
            Sampling temperature of the two answers (paper: 0.7).
    """

    temperature: float = field(default=0.7, metadata={"help": "Sampling temperature (SPA: 0.7)."})
    beta: float = field(default=0.1, metadata={"help": "DPO's beta (SPA: 0.1)."})
    ranking_loss_type: str = field(default="dpo", metadata={"help": "Fixed: SPA's loss is DPO."})
    reward_source: str = field(default="implicit", metadata={"help": "Fixed: SPA labels with the implicit reward."})
    refinement_alpha: float = field(default=0.1, metadata={"help": "Label smoothing `a` of unconfident pairs."})
    refinement_warmup_ratio: float = field(
        default=0.2, metadata={"help": "Fraction of `max_steps` without self-refinement (SPA: 0.2)."}
    )
    confidence_quantile: float = field(default=0.1, metadata={"help": "K-quantile of the last margins (SPA: 0.1)."})
    margin_history_size: int = field(default=50, metadata={"help": "How many margins the threshold uses (SPA: 50)."})
    margin_history_per_pair: bool = field(
        default=False, metadata={"help": "Keep every pair's margin instead of one batch mean per step."}
    )
    decouple_lambda: float = field(
        default=0.0, metadata={"help": "De-coupled noise detection's lambda (0: off): confidence on mixed logits."}
    )

    def __post_init__(self, *migrated_values):
        defaults = {f.name: f.default for f in dataclasses.fields(PLEConfig)}
        defaults.update(ranking_loss_type="dpo", reward_source="implicit")
        for name, reason in PLE_ONLY_FIELDS.items():
            if getattr(self, name) != defaults[name]:
                raise ValueError(
                    f"`{name}={getattr(self, name)!r}` is a PLE setting that SPA does not use: {reason}. Remove it "
                    f"(default: {defaults[name]!r})."
                )
        for name in ("beta", "refinement_alpha", "refinement_warmup_ratio", "confidence_quantile", "decouple_lambda"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"`{name}={value!r}` must be a finite number.")
        if self.beta <= 0:
            raise ValueError(f"`beta={self.beta}` must be > 0: it is DPO's beta (SPA uses 0.1).")
        if not 0 <= self.refinement_alpha <= 0.5:
            raise ValueError(
                f"`refinement_alpha={self.refinement_alpha}` must lie in [0, 0.5] (above 0.5 the smoothing flips the "
                "labels); SPA uses 0.1, 0 turns self-refinement off."
            )
        if not 0 <= self.refinement_warmup_ratio <= 1:
            raise ValueError(
                f"`refinement_warmup_ratio={self.refinement_warmup_ratio}` must lie in [0, 1]; SPA uses 0.2."
            )
        if self.decouple_lambda < 0:
            raise ValueError(
                f"`decouple_lambda={self.decouple_lambda}` must be >= 0; 0 turns de-coupled noise detection off."
            )
        if not 0 <= self.confidence_quantile < 1:
            raise ValueError(f"`confidence_quantile={self.confidence_quantile}` must lie in [0, 1); SPA uses 0.1.")
        size = self.margin_history_size
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"`margin_history_size={size!r}` must be an integer >= 1; SPA keeps the last 50 margins.")
        super().__post_init__(*migrated_values)
