"""PLE's losses, on per-sequence log-probabilities.

`l(y|x)` is the sum of the log-probabilities of an answer's tokens given the plain prompt, `lbar(y|x)` their mean.
Everything here is a pure tensor function; the trainer computes the log-probabilities in one forward pass and calls
`ple_loss` with them and the labels of [`~ple_trl.ple.labeling.enhance`].
"""

from typing import NamedTuple

import torch
import torch.nn.functional as F

from .labeling import EnhancedLabels

RANKING_LOSS_TYPES = ("sigmoid", "hinge", "dpo", "ipo")
REFERENCE_LOSS_TYPES = ("dpo", "ipo")
# Losses that always rank on mean token log-probs: RRHF's hinge, and IPO, whose squared margin would otherwise grow
# with the square of the answer length (TRL's DPO trainer averages per token for IPO too).
MEAN_RANKING_LOSS_TYPES = ("hinge", "ipo")


def ranks_on_mean(ranking_loss_type: str, length_normalize: bool = False) -> bool:
    """
    Whether the ranking loss compares mean token log-probs `lbar` (`True`) or their sums `l` (`False`).

    The one rule for the policy's and the reference's log-probs: `"hinge"` and `"ipo"` always rank on means (`"ipo"`
    as in TRL's DPO trainer); `"sigmoid"` and `"dpo"` rank on sums unless `length_normalize` is set.

    Args:
        ranking_loss_type (`str`): one of `"sigmoid"`, `"hinge"`, `"dpo"`, `"ipo"`.
        length_normalize (`bool`, *optional*, defaults to `False`): rank on means whatever the loss.

    Returns:
        `bool`: `True` to rank on mean token log-probs.
    """
    return bool(length_normalize) or ranking_loss_type in MEAN_RANKING_LOSS_TYPES


def ranking_loss(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    loss_type: str = "sigmoid",
    beta: float = 0.0,
    ref_chosen_logps: torch.Tensor | None = None,
    ref_rejected_logps: torch.Tensor | None = None,
) -> torch.Tensor:
    """
    Per-pair ranking loss that prefers the chosen answer over the rejected one.

    - `"sigmoid"`: `-log sigmoid(l_c - l_r)`, Bradley-Terry on sequence likelihoods: the log form of the paper's
      `pi(y_p|x) / (pi(y_p|x) + pi(y|x))`;
    - `"hinge"`: `max(0, l_r - l_c)`, RRHF-style (pass length-normalised log-probs to follow RRHF);
    - `"dpo"`: `-log sigmoid(beta * ((l_c - ref_c) - (l_r - ref_r)))`;
    - `"ipo"`: `((l_c - ref_c) - (l_r - ref_r) - 1 / (2 * beta))**2` (pass length-normalised log-probs, as
      [`ple_loss`] does, to follow TRL's DPO trainer).

    Args:
        chosen_logps (`torch.Tensor`): log-probs of the preferred answers, shape `(num_pairs,)`.
        rejected_logps (`torch.Tensor`): log-probs of the other answers, shape `(num_pairs,)`.
        loss_type (`str`, *optional*, defaults to `"sigmoid"`): one of `"sigmoid"`, `"hinge"`, `"dpo"`, `"ipo"`.
        beta (`float`, *optional*, defaults to `0.0`): strength of the reference anchor, > 0 for `"dpo"`/`"ipo"`.
        ref_chosen_logps (`torch.Tensor`, *optional*): reference log-probs of the chosen answers (`"dpo"`/`"ipo"`).
        ref_rejected_logps (`torch.Tensor`, *optional*): reference log-probs of the rejected answers.

    Returns:
        `torch.Tensor`: shape `(num_pairs,)`.
    """
    if loss_type == "sigmoid":
        return -F.logsigmoid(chosen_logps - rejected_logps)
    if loss_type == "hinge":
        return torch.relu(rejected_logps - chosen_logps)
    if loss_type in REFERENCE_LOSS_TYPES:
        if beta <= 0 or ref_chosen_logps is None or ref_rejected_logps is None:
            raise ValueError(
                f"`ranking_loss_type={loss_type!r}` needs `beta > 0` and reference log-probs; got beta={beta}. "
                "Set `beta` (e.g. 0.1) or use `ranking_loss_type='sigmoid'`."
            )
        margin = (chosen_logps - ref_chosen_logps) - (rejected_logps - ref_rejected_logps)
        if loss_type == "dpo":
            return -F.logsigmoid(beta * margin)
        return (margin - 1 / (2 * beta)) ** 2
    raise ValueError(f"Unknown `ranking_loss_type={loss_type!r}`; use one of {RANKING_LOSS_TYPES}.")


def weighted_sft_loss(
    plain_mean_logps: torch.Tensor, principled_mean_logps: torch.Tensor, weight_principled: torch.Tensor
) -> torch.Tensor:
    """
    Per-pair reward-weighted SFT loss: `-(w_p * lbar(y_p|x) + (1 - w_p) * lbar(y|x))`.

    Args:
        plain_mean_logps (`torch.Tensor`): mean token log-prob of the plain answers, shape `(num_pairs,)`.
        principled_mean_logps (`torch.Tensor`): same for the principle-guided answers.
        weight_principled (`torch.Tensor`): `w_p` from [`~ple_trl.ple.labeling.soft_label_weights`]; a constant.

    Returns:
        `torch.Tensor`: shape `(num_pairs,)`.
    """
    weight_principled = weight_principled.detach()
    return -(weight_principled * principled_mean_logps + (1 - weight_principled) * plain_mean_logps)


class PairLogps(NamedTuple):
    """
    Log-probabilities of both answers of each pair, conditioned on the plain prompt: row 0 holds the plain answers,
    row 1 the principle-guided ones.

    Attributes:
        sums (`torch.Tensor`): summed answer log-probs `l(.|x)`, shape `(2, num_pairs)`.
        means (`torch.Tensor`): mean answer log-probs `lbar(.|x)`, shape `(2, num_pairs)`.
        reference (`torch.Tensor`, *optional*): the reference model's log-probs on the ranking scale (see
            [`ranking_logps`]), shape `(2, num_pairs)`; needed by `"dpo"`/`"ipo"`.
    """

    sums: torch.Tensor
    means: torch.Tensor
    reference: torch.Tensor | None = None


class PLELoss(NamedTuple):
    """
    Result of [`ple_loss`].

    Attributes:
        loss (`torch.Tensor`): the scalar loss, the mean over valid pairs.
        rank_losses, wsft_losses (`torch.Tensor`): per-pair losses of each branch (zero where it does not apply).
        rank_mask, wsft_mask (`torch.Tensor`): the pairs each branch applies to (invalid pairs are in neither).
    """

    loss: torch.Tensor
    rank_losses: torch.Tensor
    wsft_losses: torch.Tensor
    rank_mask: torch.Tensor
    wsft_mask: torch.Tensor


def ranking_logps(logps: PairLogps, ranking_loss_type: str, length_normalize: bool = False) -> torch.Tensor:
    """
    The log-probs the ranking loss compares: the means or the sums of `logps`, by [`ranks_on_mean`]. Use it for the
    reference model's log-probs too, so that both are on the same scale.

    Args:
        logps ([`PairLogps`]): the pair log-probs.
        ranking_loss_type (`str`): one of `"sigmoid"`, `"hinge"`, `"dpo"`, `"ipo"`.
        length_normalize (`bool`, *optional*, defaults to `False`): rank on means whatever the loss.

    Returns:
        `torch.Tensor`: shape `(2, num_pairs)`.
    """
    return logps.means if ranks_on_mean(ranking_loss_type, length_normalize) else logps.sums


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    mask: torch.Tensor,
    topk: int = 100,
    alpha: float = 0.5,
) -> torch.Tensor:
    """
    Per-sequence distillation of a teacher's token distributions into a student's, on the same answer tokens: the
    mean over answer tokens of the divergence that TRL's SDFT computes on the student's top-`topk` tokens
    (`trl.experimental.sdft`'s `compute_topk_self_distillation_loss`: the top-k renormalised; `alpha=0` is
    `KL(teacher || student)`, `alpha=1` is `KL(student || teacher)`, in between the generalised Jensen-Shannon
    divergence).

    PLE distils the principle with it: the teacher is the frozen initial model shown the principle-guided prompt, the
    student the policy shown the plain prompt, both on the policy's own plain answer.

    Args:
        student_logits (`torch.Tensor`): the student's logits predicting each answer token, `(batch, length, vocab)`.
        teacher_logits (`torch.Tensor`): the teacher's logits at the same answer tokens, same shape; a constant.
        mask (`torch.Tensor`): 1 on answer tokens, 0 on padding, `(batch, length)`.
        topk (`int`, *optional*, defaults to `100`): the size of the student's token support (at most the vocabulary).
        alpha (`float`, *optional*, defaults to `0.5`): the divergence's skew, in [0, 1].

    Returns:
        `torch.Tensor`: `(batch,)`; 0 for an empty answer.
    """
    from trl.experimental.sdft.loss_utils import compute_topk_self_distillation_loss

    per_token = compute_topk_self_distillation_loss(
        student_logits.float(),
        teacher_logits.detach().float(),
        distillation_topk=min(topk, student_logits.size(-1)),
        distillation_alpha=alpha,
        distillation_add_tail=False,
    )
    mask = mask.to(per_token.dtype)
    return (per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)


def ple_loss(
    labels: EnhancedLabels,
    logps: PairLogps,
    ranking_loss_type: str = "sigmoid",
    length_normalize: bool = False,
    rank_coef: float = 1.0,
    wsft_coef: float = 1.0,
    rank_sft_coef: float = 0.0,
    beta: float = 0.0,
    plain_sft_coef: float = 0.0,
    distill_losses: torch.Tensor | None = None,
    distill_coef: float = 0.0,
) -> PLELoss:
    """
    The routed PLE loss of a batch of pairs, both answers conditioned on the plain prompt.

    Ranked pairs get `rank_coef * (L_rank + rank_sft_coef * NLL(preferred))`, the other valid pairs get
    `wsft_coef * L_wsft`; every valid pair gets `plain_sft_coef * NLL(plain answer)` (an anchor on the model's own
    answers) and `distill_coef` times its distillation loss (`distill_losses`, zero where the pair is not distilled);
    invalid pairs (NaN reward) get nothing. The result is the mean over valid pairs.

    Args:
        labels ([`~ple_trl.ple.labeling.EnhancedLabels`]): the enhanced labels from
            [`~ple_trl.ple.labeling.enhance`] (only `rank_mask`, `principled_preferred`, `weight_principled` and
            `valid` are read).
        logps ([`PairLogps`]): the policy's pair log-probs, and the reference's for `"dpo"`/`"ipo"`.
        ranking_loss_type (`str`, *optional*, defaults to `"sigmoid"`): see [`ranking_loss`].
        length_normalize (`bool`, *optional*, defaults to `False`): rank on `lbar` instead of `l` (`"hinge"` and
            `"ipo"` always rank on `lbar`; see [`ranks_on_mean`]).
        rank_coef, wsft_coef (`float`, *optional*, default to `1.0`): weights of the two branches.
        rank_sft_coef (`float`, *optional*, defaults to `0.0`): extra NLL (mean token) on the preferred answer of a
            ranked pair.
        beta (`float`, *optional*, defaults to `0.0`): reference anchor for `"dpo"`/`"ipo"`.
        plain_sft_coef (`float`, *optional*, defaults to `0.0`): NLL (mean token) on the plain answer of every valid
            pair.
        distill_losses (`torch.Tensor`, *optional*): per-pair distillation losses ([`distillation_loss`]), zero for a
            pair that is not distilled, `(num_pairs,)`.
        distill_coef (`float`, *optional*, defaults to `0.0`): their weight.

    Returns:
        [`PLELoss`]: the scalar loss, the per-pair losses of each branch and the masks of the pairs they apply to.
    """
    preferred = labels.principled_preferred
    rank_plain, rank_principled = ranking_logps(logps, ranking_loss_type, length_normalize)
    plain_mean, principled_mean = logps.means
    chosen = torch.where(preferred, rank_principled, rank_plain)
    rejected = torch.where(preferred, rank_plain, rank_principled)
    ref_chosen = ref_rejected = None
    if logps.reference is not None:
        ref_plain, ref_principled = logps.reference
        ref_chosen = torch.where(preferred, ref_principled, ref_plain)
        ref_rejected = torch.where(preferred, ref_plain, ref_principled)
    rank = ranking_loss(chosen, rejected, ranking_loss_type, beta, ref_chosen, ref_rejected)
    if rank_sft_coef:
        rank = rank - rank_sft_coef * torch.where(preferred, principled_mean, plain_mean)
    # NaN weights belong to skipped pairs: zero them so they cannot leak NaN through torch.where's gradient.
    weights = torch.nan_to_num(labels.weight_principled, nan=0.5)
    wsft = weighted_sft_loss(plain_mean, principled_mean, weights)

    valid = labels.valid.bool()
    rank_mask = labels.rank_mask & valid
    wsft_mask = valid & ~rank_mask
    zero = torch.zeros_like(rank)
    rank_losses = torch.where(rank_mask, rank, zero)
    wsft_losses = torch.where(wsft_mask, wsft, zero)
    per_pair = rank_coef * rank_losses + wsft_coef * wsft_losses
    if plain_sft_coef:
        per_pair = per_pair - plain_sft_coef * torch.where(valid, plain_mean, zero)
    if distill_losses is not None and distill_coef:
        per_pair = per_pair + distill_coef * torch.where(valid, distill_losses, zero)
    # Mean over valid pairs; with none valid this is 0 but still attached to the graph, so every process runs the
    # same backward (DDP would hang otherwise).
    loss = per_pair.sum() / valid.sum().clamp(min=1)
    return PLELoss(loss, rank_losses, wsft_losses, rank_mask, wsft_mask)
