"""Supervised fine-tuning loss on response tokens (prompt tokens carry label -100 and are masked out)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def sft_loss_sum(
    logits: torch.Tensor,  # (B, L, V) next-token logits at each position
    labels: torch.Tensor,  # (B, L) token ids, IGNORE_INDEX where no loss is taken (prompt, padding)
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed next-token cross-entropy and the number of tokens it covers.

    Position t predicts ``labels[:, t + 1]``. Returning the sum and the count (not the mean) lets the caller divide by
    the token count of the whole global batch, so micro-batches with few response tokens are not over-weighted
    (averaging per micro-batch is a known defect of the reference implementation).
    """
    shifted_logits = logits[:, :-1, :].float()
    shifted_labels = labels[:, 1:]
    mask = shifted_labels != IGNORE_INDEX
    token_losses = F.cross_entropy(
        shifted_logits.reshape(-1, shifted_logits.shape[-1]),
        shifted_labels.reshape(-1).clamp_min(0),
        reduction="none",
    ).view_as(shifted_labels)
    total = (token_losses * mask).sum()
    return total, mask.sum()
