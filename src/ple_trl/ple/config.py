"""[`PLEConfig`]: PLE's principles, threshold schedule, routing and losses, on top of [`PairConfig`]."""

import dataclasses
import math
from dataclasses import dataclass, field

from trl import GRPOConfig

from ..pairs.config import PairConfig
from ..pairs.grpo_fields import DPO_SFT_LOSS_TYPES
from .labeling import DISTILL_PAIRS, GAP_MODES, REWARD_TRANSFORMS, ROUTINGS, SFT_WEIGHTINGS
from .losses import RANKING_LOSS_TYPES, REFERENCE_LOSS_TYPES
from .principles import DEFAULT_TEMPLATE, PLACEMENTS

REWARD_SOURCES = ("reward_funcs", "implicit")
# DPO's `loss_type` values that are one of PLE's ranking losses, exactly: DPO's `"sigmoid"` is the reference-anchored
# `-log sigmoid(beta * margin)`, which is PLE's `"dpo"` (PLE's `"sigmoid"` has no reference), and `"ipo"` is the same
# loss on mean token log-probs in both. DPO's `"hinge"` is anchored on the reference and PLE's is not: it is refused.
DPO_LOSS_TYPES = {"sigmoid": "dpo", "ipo": "ipo"}


@dataclass
class PLEConfig(PairConfig):
    r"""
    Configuration class for the [`PLETrainer`], Progressively Label Enhancement (Liu, Xu & Geng, ICML 2025).

    A [`PairConfig`] (itself a [`~trl.GRPOConfig`]): everything about the model, generation, batches
    (`per_device_train_batch_size` counts pairs: each prompt gives a plain and a principle-guided answer), iterations,
    prompt truncation (principles are kept), `length_normalize` (rank on mean token log-probs; `"hinge"` and `"ipo"`
    always do), the audit log, prompt sharing and the implicit reward is there. Coming from [`~trl.DPOConfig`], DPO's
    `loss_type="sigmoid"`/`"ipo"` become `ranking_loss_type="dpo"`/`"ipo"`.

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
        ple_iterations (`int` or `None`, *optional*, defaults to `None`):
            Alternatively to `steps_per_iteration` ([`PairConfig`]), the number of iterations `I` spread evenly over
            `max_steps` (sets `steps_per_iteration`; needs `iteration_unit="steps"`).
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

    Parameters that anchor the policy and distil the principle (off by default):
        plain_sft_coef (`float`, *optional*, defaults to `0.0`):
            NLL (mean token) on the plain answer of every pair: an anchor on the model's own answers, which keeps
            their diversity (SSO's SFT term; PLE's other losses train on the principle-guided answers).
        distill_coef (`float`, *optional*, defaults to `0.0`):
            Weight of the distillation of the principle: on the pairs of `distill_pairs`, the policy shown the plain
            prompt is trained to the token distributions of the frozen initial model (`pi_init`: the adapter-disabled
            model under PEFT, else a frozen copy or `ref_model`) shown the principle-guided prompt, on the policy's
            own plain answer, as TRL's SDFT does (top-`distill_topk` tokens, skew `distill_alpha`). PLE's routing
            decides where to distil. It costs a forward of the teacher and one of the policy with full logits on
            those pairs.
        distill_pairs (`str`, *optional*, defaults to `"ranked"`):
            `"ranked"`: the pairs where the reward says the principle helped by more than `tau`; `"all"`: every pair
            (SDFT's choice, an ablation).
        distill_topk (`int`, *optional*, defaults to `100`):
            Size of the student's token support of the distillation (SDFT's default).
        distill_alpha (`float`, *optional*, defaults to `0.5`):
            Skew of the divergence, in [0, 1]: 0 is `KL(teacher || student)`, 1 is `KL(student || teacher)`, 0.5
            (SDFT's default) the Jensen-Shannon divergence.

    Parameters that control the rewards:
        reward_source (`str`, *optional*, defaults to `"reward_funcs"`):
            `"reward_funcs"`: the trainer's reward functions/models (and `reward_model_name_or_path`). `"implicit"`: no
            reward function at all; the trainer scores each answer with the model's own implicit reward
            `beta_judge * (log pi_judge(y|x) - log pi_init(y|x))` (see [`PairConfig`]'s implicit-reward fields).
        reward_model_name_or_path (`str` or `None`, *optional*, defaults to `None`):
            Path or id of a sequence-classification reward model, added to the trainer's `reward_funcs`.
        reward_batch_size (`int` or `None`, *optional*, defaults to `None`):
            At most this many answers are scored in one reward call (bounds a reward model's memory). `None`: all the
            answers of the round at once.

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

    # Parameters that anchor the policy and distil the principle
    plain_sft_coef: float = field(default=0.0, metadata={"help": "NLL on the plain answer of every pair (an anchor)."})
    distill_coef: float = field(
        default=0.0, metadata={"help": "Weight of the distillation of the principle-guided teacher (0: off)."}
    )
    distill_pairs: str = field(
        default="ranked",
        metadata={"help": "Pairs distilled: `ranked` (the principle helped by more than tau) or `all`.",
                  "choices": DISTILL_PAIRS},  # fmt: skip
    )
    distill_topk: int = field(default=100, metadata={"help": "Top-k token support of the distillation."})
    distill_alpha: float = field(default=0.5, metadata={"help": "Skew of the distillation's divergence, in [0, 1]."})

    # Parameters that control the rewards
    reward_source: str = field(
        default="reward_funcs",
        metadata={
            "help": "`reward_funcs` (the trainer's reward functions/models) or `implicit`: the model's own implicit "
            "reward `beta_judge * (log pi_judge(y|x) - log pi_init(y|x))`, with no reward function."
        },
    )
    reward_model_name_or_path: str | None = field(
        default=None, metadata={"help": "Path or id of a sequence-classification reward model."}
    )
    reward_batch_size: int | None = field(
        default=None, metadata={"help": "At most this many answers per reward call (None: the whole round)."}
    )

    _method = "PLE"

    def _check_method_fields(self):
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
            "gap_mode": GAP_MODES,
            "reward_transform": REWARD_TRANSFORMS,
            "routing": ROUTINGS,
            "ranking_loss_type": RANKING_LOSS_TYPES,
            "sft_weighting": SFT_WEIGHTINGS,
            "distill_pairs": DISTILL_PAIRS,
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"Unknown `{name}={getattr(self, name)!r}`; use one of {allowed}.")
        # NaN passes every comparison below (tau0=nan would become tau 0): refuse non-finite numbers first.
        for name in ("tau0", "alpha", "tau_min", "sft_temperature", "rank_coef", "wsft_coef", "rank_sft_coef", "beta",
                     "plain_sft_coef", "distill_coef", "distill_alpha"):  # fmt: skip
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
        for name in ("rank_coef", "wsft_coef", "rank_sft_coef", "plain_sft_coef", "distill_coef"):
            if getattr(self, name) < 0:
                raise ValueError(f"`{name}={getattr(self, name)}` must be >= 0.")
        if not 0 <= self.distill_alpha <= 1:
            raise ValueError(
                f"`distill_alpha={self.distill_alpha}` must lie in [0, 1] (0: KL(teacher || student), 1: "
                "KL(student || teacher); SDFT uses 0.5)."
            )
        if isinstance(self.distill_topk, bool) or not isinstance(self.distill_topk, int) or self.distill_topk < 1:
            raise ValueError(f"`distill_topk={self.distill_topk!r}` must be an integer >= 1 (SDFT uses 100).")
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
            if self.steps_per_iteration is None:
                self.steps_per_iteration = max(1, self.max_steps // self.ple_iterations)
        if self.reward_batch_size is not None and self.reward_batch_size < 1:
            raise ValueError(f"`reward_batch_size={self.reward_batch_size}` must be >= 1 or None.")
        self._check_reward_fields()

    def _check_reward_fields(self):
        if self.reward_source not in REWARD_SOURCES:
            raise ValueError(
                f"Unknown `reward_source={self.reward_source!r}`; use one of {REWARD_SOURCES} ('implicit' needs no "
                "reward function)."
            )
        if self.reward_source == "implicit" and self.reward_model_name_or_path is not None:
            raise ValueError(
                f"`reward_model_name_or_path={self.reward_model_name_or_path!r}` is set with "
                "`reward_source='implicit'`, which uses no reward model. Drop one of them."
            )

    def _map_dpo_loss_type(self):
        value = self.loss_type
        names = list(value) if isinstance(value, (list, tuple)) else [value]
        if isinstance(value, str) and value not in DPO_LOSS_TYPES and value not in DPO_SFT_LOSS_TYPES:
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
