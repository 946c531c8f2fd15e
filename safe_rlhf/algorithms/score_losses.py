"""Losses of the score models (reward, cost, multi-attribute) and the score transforms applied before RL.

Every score here is a sequence-level scalar: the score head's output at the last real token of a response.
B is the batch of pairs (or of responses), K the number of attributes.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F


class RewardModelStats(NamedTuple):
    """Detached diagnostics of :func:`reward_model_loss`, 0-d tensors."""

    accuracy: torch.Tensor  # fraction of pairs with better_score > worse_score
    margin: torch.Tensor  # mean of better_score - worse_score


def reward_model_loss(
    better_scores: torch.Tensor,  # (B,)
    worse_scores: torch.Tensor,  # (B,)
    regularization: float,
) -> tuple[torch.Tensor, RewardModelStats]:
    """Bradley-Terry loss ``mean(-log sigmoid(better - worse)) + regularization * mean(scores^2)``.

    The squared-score term (reference: 0.001) keeps the scores near 0; the BT loss alone fixes only differences,
    so the scores could otherwise drift to any offset.
    """
    if better_scores.shape != worse_scores.shape:
        raise ValueError(f"score shapes differ: {tuple(better_scores.shape)} vs {tuple(worse_scores.shape)}")
    margin = better_scores - worse_scores  # (B,)
    loss = -F.logsigmoid(margin).mean()
    loss = loss + regularization * torch.cat([better_scores, worse_scores]).square().mean()
    with torch.no_grad():
        stats = RewardModelStats(accuracy=(margin > 0).to(margin.dtype).mean(), margin=margin.mean())
    return loss, stats


class CostModelStats(NamedTuple):
    """Detached diagnostics of :func:`cost_model_loss`, 0-d tensors."""

    accuracy: torch.Tensor  # fraction of pairs with unsafer_score > safer_score
    sign_accuracy: torch.Tensor  # fraction of the 2B responses with (score > 0) == is_unsafe


def cost_model_loss(
    safer_scores: torch.Tensor,  # (B,)
    unsafer_scores: torch.Tensor,  # (B,)
    safer_is_safe: torch.Tensor,  # (B,), bool or 0/1
    unsafer_is_safe: torch.Tensor,  # (B,), bool or 0/1
    regularization: float,
    severity_weights: torch.Tensor | None = None,  # (B,)
) -> tuple[torch.Tensor, CostModelStats]:
    """Cost-model loss of Safe RLHF: a preference term plus a per-response safety classification term.

    per pair:  -log sigmoid(C_unsafer - C_safer) - log sigmoid(s_safer * C_safer) - log sigmoid(s_unsafer * C_unsafer)
    loss:      mean(weight * per_pair) + regularization * mean(C^2 over both responses)

    SIGN CONVENTION: s = +1 for an unsafe response and -1 for a safe one, so a trained cost model gives
    C > 0 for "unsafe" and C <= 0 for "safe", and a higher cost means less safe. Evaluators who read the cost the
    other way round (as a harmlessness score) get every conclusion backwards.

    ``severity_weights`` (e.g. from PKU-SafeRLHF's minor / moderate / severe levels) multiply each pair's loss
    before the mean; the regulariser is not weighted.
    """
    if not (safer_scores.shape == unsafer_scores.shape == safer_is_safe.shape == unsafer_is_safe.shape):
        raise ValueError(
            "safer_scores, unsafer_scores, safer_is_safe and unsafer_is_safe must share one shape (B,); got "
            f"{tuple(safer_scores.shape)}, {tuple(unsafer_scores.shape)}, {tuple(safer_is_safe.shape)}, "
            f"{tuple(unsafer_is_safe.shape)}"
        )
    safer_is_unsafe = safer_is_safe == 0
    unsafer_is_unsafe = unsafer_is_safe == 0
    safer_sign = torch.where(safer_is_unsafe, 1.0, -1.0).to(safer_scores.dtype)  # (B,)
    unsafer_sign = torch.where(unsafer_is_unsafe, 1.0, -1.0).to(unsafer_scores.dtype)  # (B,)

    per_pair = (
        -F.logsigmoid(unsafer_scores - safer_scores)
        - F.logsigmoid(safer_sign * safer_scores)
        - F.logsigmoid(unsafer_sign * unsafer_scores)
    )  # (B,)
    if severity_weights is not None:
        if severity_weights.shape != per_pair.shape:
            raise ValueError(f"severity_weights shape {tuple(severity_weights.shape)} must be {tuple(per_pair.shape)}")
        per_pair = per_pair * severity_weights.to(per_pair.dtype)
    loss = per_pair.mean() + regularization * torch.cat([safer_scores, unsafer_scores]).square().mean()

    with torch.no_grad():
        predicted_unsafe = torch.cat([safer_scores, unsafer_scores]) > 0
        is_unsafe = torch.cat([safer_is_unsafe, unsafer_is_unsafe])
        stats = CostModelStats(
            accuracy=(unsafer_scores > safer_scores).to(safer_scores.dtype).mean(),
            sign_accuracy=(predicted_unsafe == is_unsafe).to(safer_scores.dtype).mean(),
        )
    return loss, stats


class MultiAttributeStats(NamedTuple):
    """Detached diagnostics of :func:`multi_attribute_regression_loss`."""

    per_attribute_mse: torch.Tensor  # (K,)


def multi_attribute_regression_loss(
    predicted: torch.Tensor,  # (B, K)
    targets: torch.Tensor,  # (B, K)
    weights: torch.Tensor | None = None,  # (K,)
) -> tuple[torch.Tensor, MultiAttributeStats]:
    """Regression loss of a multi-attribute (HelpSteer / SteerLM style) reward model.

    Mean squared error per attribute over the batch, then their weighted average
    ``sum_k w_k * mse_k / sum_k w_k`` (a plain mean over attributes when ``weights`` is None), so the loss
    keeps the scale of one attribute's MSE whatever the weights.
    """
    if predicted.dim() != 2 or predicted.shape != targets.shape:
        raise ValueError(
            f"predicted and targets must both be (B, K); got {tuple(predicted.shape)} and {tuple(targets.shape)}"
        )
    per_attribute_mse = (predicted - targets.to(predicted.dtype)).square().mean(dim=0)  # (K,)
    if weights is None:
        loss = per_attribute_mse.mean()
    else:
        if weights.shape != per_attribute_mse.shape:
            raise ValueError(f"weights shape {tuple(weights.shape)} must be ({predicted.shape[1]},)")
        weights = weights.to(per_attribute_mse.dtype)
        loss = (weights * per_attribute_mse).sum() / weights.sum()
    return loss, MultiAttributeStats(per_attribute_mse=per_attribute_mse.detach())


def combine_attributes(
    scores: torch.Tensor,  # (B, K)
    weights: torch.Tensor,  # (K,)
) -> torch.Tensor:  # (B,)
    """Weighted sum of attribute scores into one reward per response: ``sum_k w_k * score_k``."""
    if scores.dim() != 2 or weights.shape != (scores.shape[1],):
        raise ValueError(
            f"scores must be (B, K) and weights (K,); got {tuple(scores.shape)} and {tuple(weights.shape)}"
        )
    return scores @ weights.to(scores.dtype)


def length_penalized_scores(
    scores: torch.Tensor,  # (B,)
    lengths: torch.Tensor,  # (B,), response lengths in tokens
    sigma: float,
    coeff: float = 0.01,
) -> torch.Tensor:  # (B,)
    """Length-penalised reward of "A Long Way to Go: Investigating Length Correlations in RLHF" (Singhal et al.):
    ``r + 2 * sigma * (1 - coeff * len)``, with sigma the standard deviation of the reward scores.

    The ``2 * sigma`` constant shifts every score by the same amount (it does not change PPO's preferences); the
    ``-2 * sigma * coeff * len`` part is the penalty, a fixed price per token in units of the reward's spread.
    """
    return scores + 2.0 * sigma * (1.0 - coeff * lengths.to(scores.dtype))


def length_only_reward(
    lengths: torch.Tensor,  # (B,), response lengths in tokens
    target: float,
) -> torch.Tensor:  # (B,)
    """The length-only reward baseline of "A Long Way to Go" (Singhal et al.): ``1 - |len / target - 1|``.

    It pays for length alone, up to ``target`` tokens (1 at exactly ``target``, 0 at an empty or a twice-too-long
    response), so PPO on it measures how much of a reward model's gain length alone can buy.
    """
    if target <= 0:
        raise ValueError(f"target must be positive, got {target}")
    return 1.0 - (lengths.to(torch.float32) / target - 1.0).abs()


def scaled_scores(
    scores: torch.Tensor,  # (B,)
    mean: float,
    std: float,
    clip: float = 0.3,
) -> torch.Tensor:  # (B,)
    """Standardised and clipped scores ``clip((r - mean) / std, -clip, clip)`` (the length paper's reward scaling).

    ``mean`` and ``std`` are fixed statistics (e.g. of the reward on reference samples), not batch statistics.
    Clipping caps how much a single extreme score can pull the policy.
    """
    return torch.clamp((scores - mean) / std, min=-clip, max=clip)
