"""SPA's loss: the DPO log-ratio margin, de-coupled noise detection, and self-refinement (the confidence threshold
over the last margins, its warm-up, the label-smoothed DPO loss).

Everything here is a pure tensor function (plus [`MarginHistory`], the small buffer the trainer keeps across steps).
The self-refinement follows `trl/trl/trainer/dpo_trainer.py` of the authors' code (github.com/kingdy2002/SPA,
`loss_type="distill"`, `DPOTrainer.confidence_update`); each function says which part it matches.
"""

import math

import torch
import torch.nn.functional as F

from ..pairs.logps import sequence_logps

def logratio_margin(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
) -> torch.Tensor:
    """
    DPO's log-ratio margin `h = (l_c - ref_c) - (l_r - ref_r)`; the DPO loss is `-logsigmoid(beta * h)`.

    Args:
        chosen_logps, rejected_logps (`torch.Tensor`): policy log-probs of the chosen/rejected answers, `(num_pairs,)`.
        ref_chosen_logps, ref_rejected_logps (`torch.Tensor`): reference log-probs of the same answers.

    Returns:
        `torch.Tensor`: shape `(num_pairs,)`.
    """
    return (chosen_logps - ref_chosen_logps) - (rejected_logps - ref_rejected_logps)


def decoupled_logits(
    policy_logits: torch.Tensor, reference_logits: torch.Tensor, decouple_lambda: float
) -> torch.Tensor:
    """
    De-coupled noise detection's logits `(1 + lambda) * z_theta - lambda * z_ref`, without gradient.

    SPA judges a pair's confidence with a model extrapolated away from the reference, so that the policy's own
    (possibly wrong) labels weigh less in the judgement. The authors' code mixes *logits* before the softmax:
    `mix * policy_logits + (1 - mix) * reference_logits` with `mix = 1 + lambda` (`mix=1`, i.e. `lambda=0`, turns it
    off and gives the policy's logits).

    Args:
        policy_logits (`torch.Tensor`): the policy's logits `z_theta`, shape `(batch, length, vocab)`.
        reference_logits (`torch.Tensor`): the reference's logits `z_ref`, same shape.
        decouple_lambda (`float`): `lambda >= 0`.

    Returns:
        `torch.Tensor`: same shape, detached.
    """
    if not decouple_lambda >= 0 or not math.isfinite(decouple_lambda):
        raise ValueError(f"`decouple_lambda` must be a finite number >= 0, got {decouple_lambda}; 0 turns it off.")
    return ((1 + decouple_lambda) * policy_logits.detach() - decouple_lambda * reference_logits.detach()).detach()


def decoupled_sequence_logps(
    policy_logits: torch.Tensor,
    reference_logits: torch.Tensor,
    completion_ids: torch.Tensor,
    completion_mask: torch.Tensor,
    decouple_lambda: float,
    length_normalize: bool = False,
) -> torch.Tensor:
    """
    Per-sequence log-probs of the answers under [`decoupled_logits`], as the authors' code computes them (sums).

    Args:
        policy_logits, reference_logits (`torch.Tensor`): logits aligned with `completion_ids` (already shifted),
            shape `(batch, length, vocab)`.
        completion_ids (`torch.Tensor`): answer token ids, shape `(batch, length)`.
        completion_mask (`torch.Tensor`): 1 on answer tokens, 0 on padding, same shape.
        decouple_lambda (`float`): see [`decoupled_logits`].
        length_normalize (`bool`, *optional*, defaults to `False`): mean token log-probs instead of sums.

    Returns:
        `torch.Tensor`: shape `(batch,)`, detached.
    """
    # TRL's memory-efficient log_softmax + gather; imported here so that this module stays importable without TRL.
    from trl.trainer.utils import selective_log_softmax

    mixed = decoupled_logits(policy_logits, reference_logits, decouple_lambda)
    return sequence_logps(selective_log_softmax(mixed, completion_ids), completion_mask, length_normalize)


def spa_threshold(margins: torch.Tensor, quantile: float = 0.1) -> float:
    """
    The K-quantile of a buffer of margins, by the rule of the authors' `DPOTrainer.confidence_update`.

    With the `n` margins sorted, `s[0] <= ... <= s[n-1]`, and `d = int(n * quantile)`, the threshold is
    `(s[d] + s[d + 1]) / 2`. This is *not* one of `torch.quantile`'s interpolations (its `"linear"` mode would give
    `s[4] + 0.9 * (s[5] - s[4])` for `n = 50`, `quantile = 0.1`, where SPA gives `(s[5] + s[6]) / 2`); we keep SPA's
    rule so that the thresholds match the paper's runs. `d + 1` is clipped to `n - 1`.

    Args:
        margins (`torch.Tensor`): 1-D buffer of margins `beta * h`, at least one value.
        quantile (`float`, *optional*, defaults to `0.1`): `K` in `[0, 1)`.

    Returns:
        `float`: the threshold.
    """
    if not 0 <= quantile < 1:
        raise ValueError(f"`quantile` must lie in [0, 1), got {quantile}; SPA uses 0.1.")
    values = margins.detach().reshape(-1).float()
    if values.numel() == 0:
        raise ValueError("`margins` is empty; the threshold needs at least one margin.")
    ordered = torch.sort(values).values
    last = ordered.numel() - 1
    down = min(int(ordered.numel() * quantile), last)
    up = min(down + 1, last)
    return ((ordered[down] + ordered[up]) / 2).item()


class MarginHistory:
    """
    The last `size` margins `beta * h` and SPA's confidence threshold over them.

    Matches the authors' `DPOTrainer`: after each loss computation the batch's margins are appended to a
    `deque(maxlen=50)` (detached, on CPU); the threshold is the initial value (0) until the buffer is full, then
    [`spa_threshold`] of the buffer, recomputed after every append. So the order inside a training step is: read
    `threshold` for the current batch, compute the loss, then `update` with the current batch's margins.

    Args:
        size (`int`, *optional*, defaults to `50`):
            `N`, how many margins to keep.
        quantile (`float`, *optional*, defaults to `0.1`):
            `K`, see [`spa_threshold`].
        initial_threshold (`float`, *optional*, defaults to `0.0`):
            Threshold while the buffer holds fewer than `size` values (the authors' code starts at 0).
        per_pair (`bool`, *optional*, defaults to `False`):
            `False` appends one value per `update`, the mean margin of the batch, as the authors' code does (it
            stores the batch mean of each micro-batch); `True` appends every pair's margin.
    """

    def __init__(self, size: int = 50, quantile: float = 0.1, initial_threshold: float = 0.0, per_pair: bool = False):
        if not isinstance(size, int) or isinstance(size, bool) or size < 1:
            raise ValueError(f"`size` must be an integer >= 1, got {size!r}; SPA keeps the last 50 margins.")
        if not 0 <= quantile < 1:
            raise ValueError(f"`quantile` must lie in [0, 1), got {quantile}; SPA uses 0.1.")
        if not math.isfinite(initial_threshold):
            raise ValueError(f"`initial_threshold` must be finite, got {initial_threshold}; SPA uses 0.0.")
        self.size = size
        self.quantile = quantile
        self.initial_threshold = float(initial_threshold)
        self.per_pair = per_pair
        self.values: list[float] = []

    def __len__(self) -> int:
        return len(self.values)

    @property
    def is_full(self) -> bool:
        """`True` once `size` margins have been seen: the threshold is then computed from the buffer."""
        return len(self.values) >= self.size

    @property
    def threshold(self) -> float:
        """The threshold to use for the next batch."""
        if not self.is_full:
            return self.initial_threshold
        return spa_threshold(torch.tensor(self.values), self.quantile)

    def update(self, margins: torch.Tensor) -> int:
        """
        Append a batch's margins (detached); keep only the last `size` values.

        Non-finite margins are left out (a NaN would poison the sorted buffer); the return value says how many, so
        the caller can count and log them.

        Args:
            margins (`torch.Tensor`): the batch's margins `beta * h`, any shape.

        Returns:
            `int`: how many margins were left out because they were not finite.
        """
        values = margins.detach().reshape(-1).float().cpu()
        finite = torch.isfinite(values)
        values = values[finite]
        if values.numel() > 0:
            self.values.extend(values.tolist() if self.per_pair else [values.mean().item()])
            del self.values[: max(0, len(self.values) - self.size)]
        return int((~finite).sum().item())

    def state_dict(self) -> dict:
        """The buffer and its settings, as plain Python values (JSON-serialisable), for checkpoints."""
        return {
            "size": self.size,
            "quantile": self.quantile,
            "initial_threshold": self.initial_threshold,
            "per_pair": self.per_pair,
            "values": list(self.values),
        }

    def load_state_dict(self, state: dict) -> None:
        """
        Restore a buffer saved by [`~MarginHistory.state_dict`].

        The settings are restored as saved; a buffer saved with more values than `size` keeps the last `size`.
        """
        missing = {"size", "quantile", "initial_threshold", "per_pair", "values"} - set(state)
        if missing:
            raise ValueError(f"MarginHistory state is missing {sorted(missing)}; pass a dict from `state_dict()`.")
        restored = MarginHistory(state["size"], state["quantile"], state["initial_threshold"], state["per_pair"])
        restored.values = [float(value) for value in state["values"]][-restored.size :]
        self.__dict__.update(restored.__dict__)


def confidence(margins: torch.Tensor, threshold: float) -> torch.Tensor:
    """
    SPA's confidence `z`: 1 where a pair's margin `beta * h` is strictly above the threshold, else 0.

    As in the authors' code (`beta * mix_logits > gap`), computed without gradient.

    Args:
        margins (`torch.Tensor`): the pairs' margins `beta * h` (from [`decoupled_logits`] if de-coupled noise
            detection is on), shape `(num_pairs,)`.
        threshold (`float`): from [`MarginHistory.threshold`].

    Returns:
        `torch.Tensor`: `z` in {0., 1.}, same dtype and shape as `margins`.
    """
    return (margins.detach() > threshold).to(margins.dtype)


def refinement_strength(global_step: int, max_steps: int, alpha: float = 0.1, warmup_ratio: float = 0.2) -> float:
    """
    The smoothing strength `a` at a step: 0 (plain DPO) during the warm-up, `alpha` after it.

    As in the authors' code: `a = 0 if global_step < max_steps * warmup_ratio else alpha`.

    Args:
        global_step (`int`): optimizer steps done so far.
        max_steps (`int`): total optimizer steps of the run.
        alpha (`float`, *optional*, defaults to `0.1`): `a`, in `[0, 0.5]`.
        warmup_ratio (`float`, *optional*, defaults to `0.2`): fraction of `max_steps` without refinement, in `[0, 1]`.

    Returns:
        `float`: `a` for this step.
    """
    if not 0 <= alpha <= 0.5:
        raise ValueError(f"`alpha` must lie in [0, 0.5], got {alpha}; above 0.5 the smoothing flips labels. SPA: 0.1.")
    if not 0 <= warmup_ratio <= 1:
        raise ValueError(f"`warmup_ratio` must lie in [0, 1], got {warmup_ratio}; SPA uses 0.2.")
    return 0.0 if global_step < max_steps * warmup_ratio else float(alpha)


def self_refined_dpo_loss(
    logratio_margins: torch.Tensor, confidences: torch.Tensor, beta: float = 0.1, alpha: float = 0.1
) -> torch.Tensor:
    """
    SPA's self-refined DPO loss `-(1 - a + a*z) * logsigmoid(beta*h) - (a - a*z) * logsigmoid(-beta*h)`.

    This is the label-smoothed (cDPO) sigmoid loss of TRL's [`~trl.DPOTrainer`],
    `-(1 - eps) * logsigmoid(beta*h) - eps * logsigmoid(-beta*h)`, with a per-pair smoothing `eps = a * (1 - z)`:
    confident pairs (`z = 1`) get plain DPO, the others are smoothed by `a`. TRL only has that form inside
    `DPOTrainer._compute_loss`, with one scalar `label_smoothing`, so it is written out here. Pass `alpha` from
    [`refinement_strength`] to respect the warm-up.

    Args:
        logratio_margins (`torch.Tensor`): `h` from [`logratio_margin`], with gradient, shape `(num_pairs,)`.
        confidences (`torch.Tensor`): `z` from [`confidence`], same shape.
        beta (`float`, *optional*, defaults to `0.1`): DPO's `beta`, > 0.
        alpha (`float`, *optional*, defaults to `0.1`): `a`, in `[0, 0.5]`; 0 gives plain DPO.

    Returns:
        `torch.Tensor`: per-pair losses, shape `(num_pairs,)`.
    """
    if not beta > 0 or not math.isfinite(beta):
        raise ValueError(f"`beta` must be a finite number > 0, got {beta}; SPA uses 0.1.")
    if not 0 <= alpha <= 0.5:
        raise ValueError(f"`alpha` must lie in [0, 0.5], got {alpha}; above 0.5 the smoothing flips labels. SPA: 0.1.")
    smoothing = alpha * (1 - confidences.detach().to(logratio_margins.dtype))
    logits = beta * logratio_margins
    return -(1 - smoothing) * F.logsigmoid(logits) - smoothing * F.logsigmoid(-logits)
