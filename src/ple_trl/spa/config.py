"""[`SPAConfig`]: SPA's DPO, self-refinement and sampling defaults, on top of [`PairConfig`]."""

import dataclasses
import math
from dataclasses import dataclass, field

from trl import GRPOConfig

from ..pairs.config import PairConfig
from ..pairs.grpo_fields import DPO_SFT_LOSS_TYPES


@dataclass
class SPAConfig(PairConfig):
    r"""
    Configuration class for the [`SPATrainer`], SPA ("Aligning Large Language Models with Self-generated Preference
    Data", Kim et al., ICLR 2025, arXiv 2406.04412).

    Per prompt the model samples two plain answers; its implicit reward
    `beta_judge * (log pi_judge(y|x) - log pi_init(y|x))` labels the better one chosen and the other rejected; the pair
    is trained with DPO against the model of the previous iteration (the reference is refreshed at every iteration
    boundary: `steps_per_iteration` optimizer steps, or an epoch), with SPA's self-refinement after a warm-up.

    A [`PairConfig`] (itself a [`~trl.GRPOConfig`]): everything about the model, generation, batches
    (`per_device_train_batch_size` counts pairs, i.e. prompts), iterations (`iteration_unit`, `steps_per_iteration`),
    the implicit reward (`implicit_reward_judge`, `beta_judge`, `implicit_reward_length_normalize`),
    `length_normalize` (DPO on mean token log-probs) and `save_enhanced_labels` (SPA's labels) is there. Coming from
    [`~trl.DPOConfig`], DPO's `loss_type="sigmoid"` is SPA's loss; other DPO losses are refused.

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

    _method = "SPA"

    def _check_method_fields(self):
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

    def _map_dpo_loss_type(self):
        # DPO's `"sigmoid"` (its default) is SPA's loss: DPO against the iteration's reference.
        if self.loss_type in ("sigmoid", ["sigmoid"], ("sigmoid",)):
            self.loss_type = next(f.default for f in dataclasses.fields(GRPOConfig) if f.name == "loss_type")
        elif self.loss_type in DPO_SFT_LOSS_TYPES:
            raise ValueError(
                f"`loss_type={self.loss_type!r}` has no SPA equivalent: SPA's loss is DPO's `'sigmoid'` with its "
                "self-refinement (`refinement_alpha`). Remove `loss_type`."
            )
