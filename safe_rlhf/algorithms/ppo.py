"""PPO-Lagrangian math: per-token reward / cost streams, GAE, the clipped policy and value losses, and the
Lagrangian combination of reward and cost advantages.

Notation (see docs: /work/shared/reference/algorithm.md): B sequences, L token positions, K constraints.
``mask`` is always the response-token mask, (B, L), bool or 0/1: True at the generated tokens the policy is
trained on, False at prompt and padding positions. A response may start after position 0 (the prompt comes
first) and end before L (padding after EOS); different rows may have different offsets and lengths.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch

from safe_rlhf.algorithms.masked import _as_bool_mask, masked_mean, masked_var, sequence_then_batch_mean


def kl_penalized_rewards(
    end_scores: torch.Tensor,  # (B,)
    log_probs: torch.Tensor,  # (B, L)
    ref_log_probs: torch.Tensor,  # (B, L)
    mask: torch.Tensor,  # (B, L), bool or 0/1
    kl_coeff: float,
    clip: float,
) -> torch.Tensor:  # (B, L)
    """Per-token stream ``-kl_coeff * kl_t + [t = last] * end_score``, clipped to ``[-clip, clip]``.

    ``kl_t = log_probs - ref_log_probs`` is the k1 estimate of KL(policy || reference) at each sampled token.
    ``end_scores`` (the reward or cost model's score of the whole response) is added at each sequence's LAST
    masked token. Positions outside the mask are 0; a row whose mask is all zero (an empty generation) is all 0.
    The clip applies to the summed stream, as in the reference (``clip_range_score``, default 50).

    Sign convention: the KL term always enters as ``-kl_coeff * kl``. For the reward stream pass ``kl_coeff=beta``:
    ``r_t = -beta * kl_t + [last] * R``. For the cost stream pass ``kl_coeff=-beta``:
    ``c_t = +beta * kl_t + [last] * C``, because the cost is minimised, so drifting from the reference must
    raise it, just as it lowers the reward.
    """
    bool_mask = _as_bool_mask(log_probs, mask)
    num_positions = log_probs.shape[-1]
    positions = torch.arange(num_positions, device=log_probs.device).expand_as(log_probs)  # (B, L)
    # index of each row's last response token; -1 for an empty row, which then matches no position below,
    # so no indexing can go out of range.
    last_index = torch.where(bool_mask, positions, torch.full_like(positions, -1)).amax(dim=-1)  # (B,)
    is_last = positions == last_index.unsqueeze(-1)  # (B, L)

    kl_estimate = log_probs - ref_log_probs  # (B, L)
    stream = -kl_coeff * kl_estimate + is_last * end_scores.to(log_probs.dtype).unsqueeze(-1)
    stream = torch.clamp(stream, min=-clip, max=clip)
    return torch.where(bool_mask, stream, torch.zeros_like(stream))


def gae(
    rewards: torch.Tensor,  # (B, L)
    values: torch.Tensor,  # (B, L)
    mask: torch.Tensor,  # (B, L), bool or 0/1
    gamma: float,
    gae_lambda: float,
) -> tuple[torch.Tensor, torch.Tensor]:  # advantages (B, L), returns (B, L)
    """Generalised advantage estimation (Schulman et al. 2016) on each row's masked tokens.

    delta_t = r_t + gamma * V_{t+1} - V_t,    A_t = delta_t + gamma * gae_lambda * A_{t+1}

    where ``V_{t+1}`` and ``A_{t+1}`` count as 0 when position t + 1 is outside the mask: the value bootstrap
    after a sequence's last token is 0 (the episode ended), and the recursion never carries anything across a
    masked-out position, so prompts (left offsets), padding, and rows of different lengths are all handled; the
    reference's bug of running GAE over padding between sequences of different lengths cannot happen here.
    Rewards and values outside the mask are ignored.

    Returns ``advantages`` (0 outside the mask) and ``returns = advantages + values`` (0 outside the mask), the
    regression target of the critic. Both are computed without gradient: they are targets, not losses.
    """
    if rewards.dim() != 2:
        raise ValueError(f"rewards must be (B, L); got shape {tuple(rewards.shape)}")
    bool_mask = _as_bool_mask(rewards, mask)
    if values.shape != rewards.shape:
        raise ValueError(f"values shape {tuple(values.shape)} must equal rewards shape {tuple(rewards.shape)}")
    with torch.no_grad():
        float_mask = bool_mask.to(values.dtype)
        rewards = torch.where(bool_mask, rewards, torch.zeros_like(rewards))
        values = torch.where(bool_mask, values, torch.zeros_like(values))

        num_positions = rewards.shape[-1]
        advantages_reversed = []
        next_value = torch.zeros_like(values[:, 0])  # (B,)  V_{t+1}, 0 past the end or past a gap
        next_advantage = torch.zeros_like(values[:, 0])  # (B,)  A_{t+1}, same
        for t in reversed(range(num_positions)):
            delta = rewards[:, t] + gamma * next_value - values[:, t]
            advantage = (delta + gamma * gae_lambda * next_advantage) * float_mask[:, t]
            advantages_reversed.append(advantage)
            # values and advantages are already 0 where the mask is off, so this zeroes the bootstrap and the
            # recursion at a masked-out position.
            next_value = values[:, t]
            next_advantage = advantage
        advantages = torch.stack(advantages_reversed[::-1], dim=-1)  # (B, L)
        returns = advantages + values  # values are 0 outside the mask, so returns are too
    return advantages, returns


class PPOClipStats(NamedTuple):
    """Detached diagnostics of :func:`ppo_clip_loss`, each a 0-d tensor averaged over all masked tokens."""

    clip_fraction: torch.Tensor  # fraction of tokens whose clipped term was the active (larger) loss
    approx_kl: torch.Tensor  # mean of (ratio - 1) - log(ratio), the k3 estimate of KL(old || new)
    ratio_mean: torch.Tensor  # mean of the importance ratio pi_new / pi_old


def ppo_clip_loss(
    log_probs: torch.Tensor,  # (B, L)
    old_log_probs: torch.Tensor,  # (B, L)
    advantages: torch.Tensor,  # (B, L)
    mask: torch.Tensor,  # (B, L), bool or 0/1
    clip_ratio: float,
) -> tuple[torch.Tensor, PPOClipStats]:
    """PPO clipped surrogate (Schulman et al. 2017): per token ``max(-r * A, -clip(r, 1 - eps, 1 + eps) * A)``.

    Aggregation: token mean within each sequence, then mean over the sequences with at least one masked token
    (the reference's "loss averaged over tokens of each sequence, then over sequences"). Empty rows are left out
    of the batch mean, so the loss is never NaN.
    """
    bool_mask = _as_bool_mask(log_probs, mask)
    # Mask BEFORE the arithmetic: a -inf or NaN log-prob at a padding position would otherwise give exp(inf) there,
    # and although the masked mean drops that entry, its gradient is 0 * inf = NaN and poisons the weights.
    log_ratio = torch.where(bool_mask, log_probs - old_log_probs, torch.zeros_like(log_probs))  # (B, L)
    advantages = torch.where(bool_mask, advantages, torch.zeros_like(advantages))
    ratio = torch.exp(log_ratio)  # (B, L)
    pg_loss_unclipped = -advantages * ratio
    pg_loss_clipped = -advantages * torch.clamp(ratio, 1.0 - clip_ratio, 1.0 + clip_ratio)
    pg_loss = torch.maximum(pg_loss_unclipped, pg_loss_clipped)  # (B, L)
    loss = sequence_then_batch_mean(pg_loss, bool_mask)

    with torch.no_grad():
        stats = PPOClipStats(
            clip_fraction=masked_mean((pg_loss_clipped > pg_loss_unclipped).to(ratio.dtype), bool_mask),
            approx_kl=masked_mean((ratio - 1.0) - log_ratio, bool_mask),
            ratio_mean=masked_mean(ratio, bool_mask),
        )
    return loss, stats


class ValueLossStats(NamedTuple):
    """Detached diagnostics of :func:`clipped_value_loss`, each a 0-d tensor averaged over all masked tokens."""

    clip_fraction: torch.Tensor  # fraction of tokens whose clipped squared error was the active (larger) term
    value_mean: torch.Tensor  # mean predicted value


def clipped_value_loss(
    values: torch.Tensor,  # (B, L)
    old_values: torch.Tensor,  # (B, L)
    returns: torch.Tensor,  # (B, L)
    mask: torch.Tensor,  # (B, L), bool or 0/1
    clip_range: float,
) -> tuple[torch.Tensor, ValueLossStats]:
    """Clipped value loss ``0.5 * max((V - G)^2, (clip(V, V_old - c, V_old + c) - G)^2)``.

    Same aggregation as :func:`ppo_clip_loss`: token mean per sequence, then mean over non-empty sequences.
    """
    bool_mask = _as_bool_mask(values, mask)
    # Masked before the arithmetic, for the same reason as in ppo_clip_loss (no NaN gradient from padding).
    zeros = torch.zeros_like(values)
    values = torch.where(bool_mask, values, zeros)
    old_values = torch.where(bool_mask, old_values, zeros)
    returns = torch.where(bool_mask, returns, zeros)
    values_clipped = torch.clamp(values, old_values - clip_range, old_values + clip_range)
    vf_loss_unclipped = (values - returns) ** 2
    vf_loss_clipped = (values_clipped - returns) ** 2
    vf_loss = 0.5 * torch.maximum(vf_loss_unclipped, vf_loss_clipped)  # (B, L)
    loss = sequence_then_batch_mean(vf_loss, bool_mask)

    with torch.no_grad():
        stats = ValueLossStats(
            clip_fraction=masked_mean((vf_loss_clipped > vf_loss_unclipped).to(values.dtype), bool_mask),
            value_mean=masked_mean(values, bool_mask),
        )
    return loss, stats


def combined_advantages(
    reward_advantages: torch.Tensor,  # (B, L)
    cost_advantages: torch.Tensor,  # (B, L) for one constraint, or (K, B, L)
    lambdas: float | Sequence[float] | torch.Tensor,  # scalar / 0-d / 1-element for (B, L) costs; (K,) otherwise
) -> torch.Tensor:  # (B, L)
    """Lagrangian advantage ``(A_r - sum_k lambda_k * A_c,k) / (1 + sum_k lambda_k)``.

    Dividing by ``1 + sum lambda`` keeps the advantage on the reward's scale however large the multipliers grow
    (the reference's normalisation). ``lambdas`` are the current Lagrange multiplier values (>= 0), treated as
    constants: no gradient flows into them from here.
    """
    lambda_tensor = torch.as_tensor(lambdas, dtype=reward_advantages.dtype, device=reward_advantages.device)
    lambda_tensor = lambda_tensor.detach()
    if cost_advantages.shape == reward_advantages.shape:
        if lambda_tensor.numel() != 1:
            raise ValueError(
                "cost_advantages has the reward advantages' shape (one constraint), so lambdas must be a scalar, a "
                f"0-d or a 1-element tensor; got shape {tuple(lambda_tensor.shape)}"
            )
        cost_advantages = cost_advantages.unsqueeze(0)  # (1, B, L)
    elif cost_advantages.dim() == reward_advantages.dim() + 1 and cost_advantages.shape[1:] == reward_advantages.shape:
        num_constraints = cost_advantages.shape[0]
        if lambda_tensor.shape != (num_constraints,):
            raise ValueError(
                f"cost_advantages {tuple(cost_advantages.shape)} holds {num_constraints} constraints, so lambdas "
                f"must have shape ({num_constraints},); got {tuple(lambda_tensor.shape)}"
            )
    else:
        raise ValueError(
            f"cost_advantages must have shape {tuple(reward_advantages.shape)} (one constraint) or "
            f"(K, {', '.join(map(str, reward_advantages.shape))}) (K constraints); got {tuple(cost_advantages.shape)}"
        )
    lambda_tensor = lambda_tensor.reshape(-1)  # (K,)
    if bool((lambda_tensor < 0).any()):
        raise ValueError(f"Lagrange multipliers must be >= 0; got {lambda_tensor.tolist()}")

    lambda_view = lambda_tensor.view(-1, *([1] * reward_advantages.dim()))  # (K, 1, 1)
    weighted_costs = (lambda_view * cost_advantages).sum(dim=0)  # (B, L)
    return (reward_advantages - weighted_costs) / (1.0 + lambda_tensor.sum())


def explained_variance(
    values: torch.Tensor,  # (B, L) the critic's predictions
    returns: torch.Tensor,  # (B, L) its regression targets
    mask: torch.Tensor,  # (B, L), bool or 0/1
) -> torch.Tensor:  # ()
    """``1 - Var[G - V] / Var[G]`` over the masked tokens (CleanRL's critic diagnostic).

    1 is a perfect critic, 0 one no better than a constant, negative one worse than a constant. When the returns do
    not vary (or nothing is masked) the ratio is undefined; the result is then 0.
    """
    bool_mask = _as_bool_mask(values, mask)
    variance_of_returns = masked_var(returns, bool_mask, unbiased=False)
    variance_of_error = masked_var(returns - values, bool_mask, unbiased=False)
    if float(variance_of_returns) <= 0.0:
        return torch.zeros((), dtype=values.dtype, device=values.device)
    return 1.0 - variance_of_error / variance_of_returns


def masked_entropy(
    logits: torch.Tensor,  # (B, L, V) the policy's logits (temperature already applied)
    mask: torch.Tensor,  # (B, L), bool or 0/1
) -> torch.Tensor:  # ()
    """Mean entropy ``-sum_v p_v log p_v`` of the next-token distribution over the masked positions (nats).

    A diagnostic (CleanRL logs it): a policy collapsing onto few tokens shows falling entropy before reward hacking
    shows in the reward. Computed without gradient."""
    with torch.no_grad():
        log_p = torch.log_softmax(logits.float(), dim=-1)
        entropy = -(log_p.exp() * log_p).sum(dim=-1)  # (B, L)
        return masked_mean(entropy, _as_bool_mask(entropy, mask))
