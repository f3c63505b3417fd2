"""[`PairConfig`]: what every pair trainer (PLE, SPA) adds to [`~trl.GRPOConfig`]."""

import dataclasses
import math
from dataclasses import InitVar, dataclass, field

from trl import GRPOConfig

from ..device import check_vllm_mode, resolve_mixed_precision
from .grpo_fields import GRPO_ONLY_FIELDS, MIGRATED_FIELDS

ITERATION_UNITS = ("epoch", "steps")
IMPLICIT_REWARD_JUDGES = ("iteration", "policy")


def _initvar_names(cls) -> list[str]:
    # The order in which dataclasses pass `InitVar` values to `__post_init__`.
    return [f.name for f in cls.__dataclass_fields__.values() if isinstance(f.type, InitVar)]


@dataclass
class PairConfig(GRPOConfig):
    r"""
    The configuration every pair trainer shares: two answers per prompt, trained together. [`PLEConfig`] and
    [`SPAConfig`] subclass it with their own fields; it is not used on its own.

    Everything of [`~trl.GRPOConfig`] that concerns the model, generation (`max_completion_length`, `temperature`,
    `top_p`, `use_vllm`, ...), rewards and training applies unchanged. GRPO's own loss knobs (`loss_type`, `epsilon`,
    `scale_rewards`, importance sampling, entropy) have no meaning for pairs: setting one to a non-default value raises
    an error instead of being silently ignored. `docs/grpo_config_fields.md` lists every field of `GRPOConfig` with
    what is done with it (written from [`~ple_trl.pairs.grpo_fields`]).

    Coming from [`~trl.DPOConfig`]/[`~trl.SFTConfig`]: their names are accepted too (`PLEConfig(**dpo_args.to_dict())`
    is no `TypeError`): `max_length` is accepted when `max_prompt_length + max_completion_length` stays within it, a
    DPO/SFT default or `None` is accepted for the others, and any other value is an error naming the knob to use
    ([`~ple_trl.pairs.grpo_fields.MIGRATED_FIELDS`]); each method maps DPO's `loss_type` onto its own loss.

    Batch semantics: `per_device_train_batch_size` counts **pairs**, i.e. prompts, as for a DPO user: each prompt gives
    two answers. `generation_batch_size` (or `steps_per_generation`) counts pairs too; as in GRPO, one generation round
    fills the buffer for `steps_per_generation` micro-steps and a pair is never split across micro-batches.
    `num_generations` is fixed at 2.

    Parameters that control iterations:
        iteration_unit (`str`, *optional*, defaults to `"epoch"`):
            What one iteration is (PLE decays `tau` and SPA refreshes its reference once per iteration): `"epoch"` (one
            pass over the prompts, as many optimizer steps as the trainer counts per epoch) or `"steps"`
            (`steps_per_iteration` optimizer steps).
        steps_per_iteration (`int` or `None`, *optional*, defaults to `None`):
            Optimizer steps per iteration when `iteration_unit="steps"`.

    Parameters that control the pairs:
        max_prompt_length (`int` or `None`, *optional*, defaults to `512`):
            Prompts longer than this are truncated from the left (PLE keeps the principle of its principled prompts).
            `None` keeps them whole.
        length_normalize (`bool`, *optional*, defaults to `False`):
            Compare the answers' mean token log-probs instead of their sums in the pair loss (PLE's ranking loss,
            SPA's DPO).
        save_enhanced_labels (`bool`, *optional*, defaults to `False`):
            Write every pair's label (prompt, both answers, both rewards, label, step) to
            `{output_dir}/enhanced_labels.jsonl`, one record per trained pair: a fresh run starts a fresh file, a
            resumed run drops the records generated after its checkpoint.
        share_prompt_prefix (`bool` or `None`, *optional*, defaults to `None`):
            Run the prompt tokens a pair's two sequences share once: the plain prompt of the loss pass (shared by both
            answers) and the common start of the two prompts at generation (a dialogue's earlier turns, a system
            prompt). `None` shares wherever it is proven to give the numbers of the unshared layout (the model
            families of `SHARED_PREFIX_FAMILIES`, sdpa or eager attention, no sliding window, no dropout active; at
            generation, pairs sharing 16 tokens or more on average), and says once at INFO why it does not elsewhere.
            `True` shares whatever the pairs share and is an error where the model or the settings cannot. `False`
            never shares.

    Parameters of the implicit reward (SPA's self-judging reward, PLE's with `reward_source="implicit"`):
        implicit_reward_judge (`str`, *optional*, defaults to `"iteration"`):
            `pi_judge` of `beta_judge * (log pi_judge(y|x) - log pi_init(y|x))`: `"iteration"` (the policy as at the
            start of the current iteration: a copy of the adapter under PEFT, else a frozen copy of the model,
            refreshed at each iteration boundary and saved in checkpoints) or `"policy"` (the current policy: no copy,
            cheapest). `pi_init` is the trainer's `ref_model`, or the adapter-disabled model of a `PeftModel` passed
            with its trained adapter; without either it would be the initial policy itself, every reward 0: an error.
        beta_judge (`float`, *optional*, defaults to `1.0`):
            Scale of the implicit reward, > 0 (it changes the size of the rewards, not which answer is preferred).
        implicit_reward_length_normalize (`bool`, *optional*, defaults to `False`):
            Mean token log-probs instead of sequence sums (SPA uses sums).
    """

    # Parameters that control iterations
    iteration_unit: str = field(
        default="epoch",
        metadata={
            "help": "One iteration is an `epoch` or `steps_per_iteration` optimizer `steps`.",
            "choices": ITERATION_UNITS,
        },
    )
    steps_per_iteration: int | None = field(
        default=None, metadata={"help": "Optimizer steps per iteration when `iteration_unit='steps'`."}
    )

    # Parameters that control the pairs
    max_prompt_length: int | None = field(
        default=512, metadata={"help": "Prompts longer than this are truncated from the left (principles are kept)."}
    )
    length_normalize: bool = field(
        default=False,
        metadata={"help": "Compare mean token log-probs instead of their sum in the pair loss."},
    )
    save_enhanced_labels: bool = field(
        default=False, metadata={"help": "Write every pair's label to `{output_dir}/enhanced_labels.jsonl`."}
    )
    share_prompt_prefix: bool | None = field(
        default=None,
        metadata={
            "help": "Run a pair's shared prompt tokens once (loss pass, generation): None where proven exact for the "
            "model family, True required (an error where it cannot), False never."
        },
    )

    # Parameters of the implicit reward
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

    # Overridden GRPO defaults
    num_generations: int | None = field(
        default=2, metadata={"help": "Fixed at 2: a pair trainer generates two answers per prompt."}
    )
    vllm_importance_sampling_correction: bool = field(
        default=False, metadata={"help": "Not used (no importance sampling)."}
    )

    # Names of `DPOConfig`/`SFTConfig`, accepted so that their configs port by name (see `MIGRATED_FIELDS`). They are
    # `InitVar`s, not settings: the parser does not list them and `to_dict()` does not save them.
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

    # The method's name in error messages.
    _method = "pair training"

    def __post_init__(self, *migrated_values):
        self._check_migrated_fields(dict(zip(_initvar_names(type(self)), migrated_values)))
        self._check_method_fields()
        self._check_pair_fields()
        # TRL defaults to bf16, which fails on CPU-only machines and Ascend 910A: pick what the device supports.
        self.bf16, self.fp16 = resolve_mixed_precision(self.bf16, self.fp16, use_cpu=self.use_cpu)
        # GRPOConfig counts completions and checks that a generation batch holds whole groups of `num_generations`
        # completions. The unit here is the pair (two completions), so present GRPO with completions for its checks,
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

    def _check_method_fields(self):
        """The method's own checks (PLE's, SPA's), run before the pair's."""

    def _map_dpo_loss_type(self):
        """Map DPO's `loss_type` onto the method's loss, or refuse it; a GRPO value is left to `GRPO_ONLY_FIELDS`."""

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
                    continue  # never reached: the own caps keep every prompt + answer within it, as DPO/SFT would
                raise ValueError(
                    f"`max_length={value!r}` (DPO/SFT: prompt + answer) is not a {self._method} setting: {pointer}. "
                    f"With `max_prompt_length={self.max_prompt_length}` and `max_completion_length="
                    f"{self.max_completion_length}` a sequence can be longer than {value} tokens: set the two so that "
                    "their sum is at most it, and remove `max_length`."
                )
            if name.endswith("_token") and value == f"<{name.upper()}>":
                continue  # `TrainingArguments.to_dict()` masks every `*_token` field: the value is not carried
            if not any(value is ok or (ok is not None and value == ok) for ok in accepted):
                allowed = " or ".join(repr(ok) for ok in accepted)
                raise ValueError(
                    f"`{name}={value!r}` is a DPO/SFT setting that {self._method} does not have: {pointer}. Remove it "
                    f"(accepted values, which change nothing: {allowed})."
                )

    def _check_pair_fields(self):
        defaults = {f.name: f.default for f in dataclasses.fields(GRPOConfig)}
        for name, reason in GRPO_ONLY_FIELDS.items():
            value, default = getattr(self, name), defaults.get(name)
            if name == "vllm_importance_sampling_correction":
                default = False
            if value != default:
                raise ValueError(
                    f"`{name}={value!r}` is a GRPO setting that {self._method} does not use: {reason}. Remove it "
                    f"(default: {default!r})."
                )
        if self.num_generations != 2:
            raise ValueError(
                f"`num_generations={self.num_generations}`: {self._method} always generates exactly 2 answers per "
                "prompt. Remove it; to generate more per step, raise `per_device_train_batch_size` (pairs)."
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
        if self.iteration_unit not in ITERATION_UNITS:
            raise ValueError(f"Unknown `iteration_unit={self.iteration_unit!r}`; use one of {ITERATION_UNITS}.")
        if self.iteration_unit == "steps" and self.steps_per_iteration is None:
            raise ValueError(
                "`iteration_unit='steps'` needs `steps_per_iteration` (optimizer steps per iteration)."
            )
        if self.steps_per_iteration is not None and self.steps_per_iteration < 1:
            raise ValueError(f"`steps_per_iteration={self.steps_per_iteration}` must be >= 1.")
        if self.max_prompt_length is not None and self.max_prompt_length < 1:
            raise ValueError(f"`max_prompt_length={self.max_prompt_length}` must be >= 1 or None.")
        if self.share_prompt_prefix not in (None, True, False):
            raise ValueError(
                f"`share_prompt_prefix={self.share_prompt_prefix!r}` must be None (share where proven exact), True "
                "(required) or False (never)."
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
