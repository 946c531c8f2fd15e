"""The math of a QA-moderation model: one sequence classifier over (prompt, response) with K sigmoid outputs.

Output layout (K = 3 + C, C harm categories)::

    0          flagged:        P(severity >= 1), i.e. the response is unsafe
    1          severity >= 2:  P(moderate or severe harm)
    2          severity >= 3:  P(severe harm)
    3 .. 3+C   harm:<name>:    P(the response falls under category <name>), multi-label

Severity is **ordinal**, learned as cumulative binary targets (Frank & Hall, "A simple approach to ordinal
classification", 2001): a severe response is positive for all three severity outputs, a minor one for the first
only. Each output sees every labelled response (a categorical 4-way head would see few severe examples per class),
mistaking severe for minor costs two outputs' errors and moderate one (the order is in the loss), and "flagged" is
exactly the first output, so the flag and the severity cannot disagree. :func:`severity_levels` reads the level back
as the number of consecutive outputs that pass.

Shapes: B responses, K outputs. ``known`` masks labels a dataset does not give (BeaverTails has no severity; a
response without category labels has none): they add nothing to the loss, and are masked before any arithmetic.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

FLAGGED, SEVERITY_GE_2, SEVERITY_GE_3 = 0, 1, 2
NUM_SEVERITY_OUTPUTS = 3


class ModerationLossStats(NamedTuple):
    """Detached diagnostics of :func:`moderation_loss`, 0-d tensors."""

    flagged_accuracy: torch.Tensor  # share of responses with a known flag whose (logit > 0) matches it
    known_fraction: torch.Tensor  # share of the B x K labels that are known


def severity_targets(severity: torch.Tensor) -> torch.Tensor:  # (B,) levels 0-3 -> (B, 3) float
    """Cumulative targets of the three severity outputs: ``[level >= 1, level >= 2, level >= 3]``."""
    levels = torch.arange(1, NUM_SEVERITY_OUTPUTS + 1, device=severity.device)
    return (severity.unsqueeze(1) >= levels).float()


def balanced_pos_weight(
    targets: torch.Tensor,  # (N, K) 0/1
    known: torch.Tensor,  # (N, K) bool
    max_weight: float,
) -> torch.Tensor:  # (K,)
    """Per output ``negatives / positives`` among the known labels, clamped to ``[1, max_weight]``.

    Weighting the positive term of the BCE by it makes the rare class (unsafe, severe, a rare category) count as
    much as the common one; the clamp keeps an output with a handful of positives from dominating the loss. An output
    with no known positive gets 1."""
    known = known.bool()
    positives = torch.where(known, targets, torch.zeros_like(targets)).sum(0)
    negatives = known.sum(0).to(targets.dtype) - positives
    ratio = torch.where(positives > 0, negatives / positives.clamp_min(1.0), torch.ones_like(positives))
    return ratio.clamp(1.0, max_weight)


def moderation_loss(
    logits: torch.Tensor,  # (B, K)
    targets: torch.Tensor,  # (B, K) 0/1
    known: torch.Tensor,  # (B, K) bool: which labels exist
    pos_weight: torch.Tensor | None = None,  # (K,)
) -> tuple[torch.Tensor, ModerationLossStats]:
    """Masked multi-label binary cross-entropy: the mean over known labels of

    ``-(w_k y log sigmoid(z) + (1 - y) log sigmoid(-z))`` with ``w_k = pos_weight[k]`` (1 without it).

    A batch with no known label gives a loss of 0 that still depends on ``logits`` (every rank runs its backward)."""
    if logits.shape != targets.shape or logits.shape != known.shape:
        raise ValueError(
            f"logits {tuple(logits.shape)}, targets {tuple(targets.shape)} and known {tuple(known.shape)} must match"
        )
    known = known.bool()
    # Masked before arithmetic: an unknown label's logit (possibly inf/NaN) reaches no value and no gradient.
    safe_logits = torch.where(known, logits, torch.zeros_like(logits))
    safe_targets = torch.where(known, targets.to(logits.dtype), torch.zeros_like(logits))
    weight = torch.ones(logits.shape[1], dtype=logits.dtype, device=logits.device) if pos_weight is None else pos_weight
    per_label = -(weight * safe_targets * F.logsigmoid(safe_logits) + (1 - safe_targets) * F.logsigmoid(-safe_logits))
    per_label = torch.where(known, per_label, torch.zeros_like(per_label))
    count = known.sum()
    loss = per_label.sum() / count.clamp_min(1)
    with torch.no_grad():
        flag_known = known[:, FLAGGED]
        correct = ((safe_logits[:, FLAGGED] > 0) == (safe_targets[:, FLAGGED] > 0.5)) & flag_known
        stats = ModerationLossStats(
            flagged_accuracy=correct.sum() / flag_known.sum().clamp_min(1),
            known_fraction=count / max(known.numel(), 1),
        )
    return loss, stats


def severity_levels(
    probabilities: torch.Tensor,  # (B, K) sigmoid outputs, K >= 3
    flag_threshold: float = 0.5,
    level_threshold: float = 0.5,
) -> torch.Tensor:  # (B,) int64 in 0..3
    """The predicted severity: 0 unless flagged (``p_0 >= flag_threshold``), then 1 plus the number of consecutive
    higher outputs ``p_1, p_2`` at or above ``level_threshold`` (a ``p_2`` that passes after a ``p_1`` that does not
    is ignored: the level is monotone by construction)."""
    flagged = probabilities[:, FLAGGED] >= flag_threshold
    moderate = flagged & (probabilities[:, SEVERITY_GE_2] >= level_threshold)
    severe = moderate & (probabilities[:, SEVERITY_GE_3] >= level_threshold)
    return flagged.long() + moderate.long() + severe.long()
