"""Preference optimisation without RL: DPO, IPO and SafeDPO on sequence log-probs.

Shapes: B preference pairs (or sequences), L token positions, V vocabulary entries. A pair is a prompt x with a
*chosen* response y_w and a *rejected* response y_l. Every loss takes the summed (or mean) log-probabilities of each
response under the trained policy and under the frozen reference, one number per pair, (B,), and works with

    h = (log pi(y_w | x) - log pi_ref(y_w | x)) - (log pi(y_l | x) - log pi_ref(y_l | x))

the amount by which the policy has raised the chosen response over the rejected one relative to the reference.
The *implicit reward* of a response is ``beta * (log pi(y | x) - log pi_ref(y | x))`` (Rafailov et al. 2023, Eq. 5);
the losses return it per response, detached, for logging (reward accuracy and margin).

Losses:

* ``dpo_loss(loss_type="sigmoid")``: DPO (Rafailov et al. 2023), ``-log sigmoid(beta h)``; with label smoothing eps
  (conservative DPO: each label is flipped with probability eps) ``-(1 - eps) log sigmoid(beta h) - eps log sigmoid
  (-beta h)``.
* ``dpo_loss(loss_type="ipo")``: IPO (Azar et al. 2023, Eq. 17), ``(h - 1 / (2 beta))^2``: regresses h onto a fixed
  target instead of pushing it to infinity, so a deterministic preference cannot drive the policy arbitrarily far from
  the reference.
* ``safe_dpo_loss``: SafeDPO (Kim et al. 2025, arXiv 2505.20065), ``-log sigmoid(beta h - Delta (u_l - u_w))`` on
  pairs reordered by :func:`safe_dpo_pairs`, u = 1 for an unsafe response. See :func:`safe_dpo_loss` for what was
  checked against the paper.

Imports only torch (no DeepSpeed, no transformers).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from safe_rlhf.algorithms.masked import _as_bool_mask

DPO_LOSS_TYPES = ("sigmoid", "ipo")
BOTH_UNSAFE_CHOICES = ("drop", "keep")


def sequence_log_probs(
    logits: torch.Tensor,  # (B, L, V): logits[b, t] is the distribution that token labels[b, t] was drawn from
    labels: torch.Tensor,  # (B, L) token ids; any value (e.g. -100 or pad) where mask is False
    mask: torch.Tensor,  # (B, L) bool or 0/1: True at the response tokens whose log-probs count
    average: bool = False,
) -> torch.Tensor:  # (B,)
    """Summed (``average=False``) or mean log-probability of each row's masked tokens.

    Alignment: ``logits`` must already be aligned with ``labels``, i.e. position t of ``logits`` is the model's
    prediction for ``labels[:, t]``. For a causal LM run on ``input_ids`` (B, T), pass ``logits[:, :-1]``,
    ``labels = input_ids[:, 1:]`` and the response mask shifted the same way, ``response_mask[:, 1:]`` (the output at
    position t predicts token t + 1).

    Masked-out positions are replaced before any arithmetic (``torch.where``, whose backward sends exactly 0 there),
    so padding whose logits hold inf or NaN, or whose labels are out of the vocabulary, changes neither the values nor
    the gradients. A row with no masked token gives 0 (sum) or 0 (mean). Computed in float32.
    """
    if logits.dim() != 3 or logits.shape[:2] != labels.shape:
        raise ValueError(
            f"logits must be (B, L, V) aligned with labels (B, L); got {tuple(logits.shape)} and {tuple(labels.shape)}"
        )
    bool_mask = _as_bool_mask(labels, mask)
    safe_logits = torch.where(bool_mask.unsqueeze(-1), logits, logits.new_zeros(())).float()
    safe_labels = torch.where(bool_mask, labels, torch.zeros_like(labels))
    # log softmax at the label = its logit - logsumexp over the vocabulary (no (B, L, V) log-softmax tensor is kept)
    chosen_logits = torch.gather(safe_logits, -1, safe_labels.unsqueeze(-1)).squeeze(-1)
    token_log_probs = chosen_logits - torch.logsumexp(safe_logits, dim=-1)
    token_log_probs = torch.where(bool_mask, token_log_probs, torch.zeros_like(token_log_probs))
    total = token_log_probs.sum(dim=-1)
    if average:
        return total / bool_mask.sum(dim=-1).clamp_min(1).to(total.dtype)
    return total


class DPOLossOutput(NamedTuple):
    """Per-pair losses and implicit rewards; unpacks as ``losses, chosen_rewards, rejected_rewards``."""

    losses: torch.Tensor  # (B,) the loss of each pair; the training loss is their mean
    chosen_rewards: torch.Tensor  # (B,) beta * (log pi(y_w) - log pi_ref(y_w)), detached
    rejected_rewards: torch.Tensor  # (B,) beta * (log pi(y_l) - log pi_ref(y_l)), detached


def _log_ratio_difference(
    policy_chosen_logps: torch.Tensor,  # (B,)
    policy_rejected_logps: torch.Tensor,  # (B,)
    reference_chosen_logps: torch.Tensor,  # (B,)
    reference_rejected_logps: torch.Tensor,  # (B,)
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # h (B,), chosen log-ratio (B,), rejected log-ratio (B,)
    shapes = {
        tuple(t.shape)
        for t in (policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps)
    }
    if len(shapes) != 1 or len(next(iter(shapes))) != 1:
        raise ValueError(f"the four log-prob tensors must share one shape (B,); got {sorted(shapes)}")
    # The reference is a constant: no gradient reaches it even when a caller forgot no_grad.
    chosen_log_ratio = policy_chosen_logps - reference_chosen_logps.detach()
    rejected_log_ratio = policy_rejected_logps - reference_rejected_logps.detach()
    return chosen_log_ratio - rejected_log_ratio, chosen_log_ratio, rejected_log_ratio


def _check_beta(beta: float) -> None:
    if not beta > 0:  # also rejects nan
        raise ValueError(f"beta must be > 0, got {beta}")


def dpo_loss(
    policy_chosen_logps: torch.Tensor,  # (B,) log pi(y_w | x), summed (or mean) over the response tokens
    policy_rejected_logps: torch.Tensor,  # (B,) log pi(y_l | x)
    reference_chosen_logps: torch.Tensor,  # (B,) log pi_ref(y_w | x)
    reference_rejected_logps: torch.Tensor,  # (B,) log pi_ref(y_l | x)
    beta: float,
    loss_type: str = "sigmoid",
    label_smoothing: float = 0.0,
) -> DPOLossOutput:  # losses (B,), chosen_rewards (B,), rejected_rewards (B,)
    """DPO or IPO loss of each pair, with h as in the module docstring.

    * ``"sigmoid"``: ``-(1 - eps) log sigmoid(beta h) - eps log sigmoid(-beta h)``, eps = ``label_smoothing`` in
      [0, 0.5) (0 = DPO, Rafailov et al. 2023 Eq. 7; eps > 0 = conservative DPO, the expected loss when each label
      is wrong with probability eps).
    * ``"ipo"``: ``(h - 1 / (2 beta))^2`` (Azar et al. 2023, Eq. 17); ``label_smoothing`` must be 0.

    Rewards: ``beta * (policy - reference)`` per response, detached. Reference log-probs are detached too.
    """
    _check_beta(beta)
    if loss_type not in DPO_LOSS_TYPES:
        raise ValueError(f"loss_type={loss_type!r} is not one of {', '.join(DPO_LOSS_TYPES)}")
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing={label_smoothing} must be in [0, 0.5)")
    if loss_type == "ipo" and label_smoothing:
        raise ValueError("label_smoothing applies to loss_type='sigmoid' only")
    h, chosen_log_ratio, rejected_log_ratio = _log_ratio_difference(
        policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps
    )
    if loss_type == "ipo":
        losses = (h - 1.0 / (2.0 * beta)) ** 2
    else:
        losses = -(1.0 - label_smoothing) * F.logsigmoid(beta * h)
        if label_smoothing:
            losses = losses - label_smoothing * F.logsigmoid(-beta * h)
    return DPOLossOutput(losses, beta * chosen_log_ratio.detach(), beta * rejected_log_ratio.detach())


class SafePairs(NamedTuple):
    """The safety-aware transformation of helpfulness-ordered pairs (:func:`safe_dpo_pairs`); all (B,) bool."""

    swapped: torch.Tensor  # chosen = the less helpful response (the more helpful one was unsafe, the other safe)
    keep: torch.Tensor  # the pair is trained on (False: both responses unsafe and both_unsafe="drop")
    chosen_is_unsafe: torch.Tensor  # after the transformation
    rejected_is_unsafe: torch.Tensor  # after the transformation


def safe_dpo_pairs(
    better_is_unsafe: torch.Tensor | bool,  # (B,) bool or 0/1 (or one bool): the MORE helpful response is unsafe
    worse_is_unsafe: torch.Tensor | bool,  # (B,) bool or 0/1 (or one bool): the LESS helpful response is unsafe
    both_unsafe: str = "drop",
) -> SafePairs:
    """SafeDPO's transformation T of preference data (Kim et al. 2025, Sec. 3.2; see :func:`safe_dpo_loss`).

    Input: pairs ordered by helpfulness (chosen = the more helpful response, as in DPO on ``better_response_id``)
    and a binary safety label per response. Operates on tensors of B pairs at once, or on one pair given as two
    Python bools (then every field has shape (1,)). Per pair:

    * **better safe** (whatever the other): unchanged. Both safe is the case where the cost-augmented reward
      ``r_c = r`` on safe responses equals the helpfulness reward, so the helpfulness preference is the preference
      of the safety-constrained objective; no margin is applied (``u_l - u_w = 0``). Better safe and worse unsafe
      already agrees with safety; the margin applies.
    * **better unsafe, worse safe**: swapped. Under ``r_c`` every unsafe response has reward -inf, so the safe one is
      preferred with probability 1 whatever the helpfulness label says; the safe response becomes the chosen and the
      margin applies.
    * **both unsafe**: ``both_unsafe="drop"`` (the paper's T): discarded. Both have reward -inf under ``r_c``, so the
      pair says nothing about the optimal safe policy, which gives both probability 0; keeping it would push up an
      unsafe response relative to the reference. ``both_unsafe="keep"`` (not in the paper): kept in helpfulness
      order with no margin (``u_l - u_w = 0``), i.e. plain DPO on it.

    Returns ``SafePairs(swapped, keep, chosen_is_unsafe, rejected_is_unsafe)``; the last two describe the
    transformed pair (after a swap the chosen is safe and the rejected unsafe). Fields of dropped pairs still hold
    the pair's untransformed labels; select ``keep`` before use.
    """
    if both_unsafe not in BOTH_UNSAFE_CHOICES:
        raise ValueError(f"both_unsafe={both_unsafe!r} is not one of {', '.join(BOTH_UNSAFE_CHOICES)}")
    better = torch.as_tensor(better_is_unsafe).reshape(-1)
    worse = torch.as_tensor(worse_is_unsafe).reshape(-1)
    if better.shape != worse.shape:
        raise ValueError(f"better_is_unsafe {tuple(better.shape)} and worse_is_unsafe {tuple(worse.shape)} differ")
    better, worse = better != 0, worse != 0
    swapped = better & ~worse
    keep = ~(better & worse) if both_unsafe == "drop" else torch.ones_like(better)
    chosen_is_unsafe = torch.where(swapped, worse, better)
    rejected_is_unsafe = torch.where(swapped, better, worse)
    return SafePairs(swapped, keep, chosen_is_unsafe, rejected_is_unsafe)


def safe_dpo_loss(
    policy_chosen_logps: torch.Tensor,  # (B,) on pairs transformed by safe_dpo_pairs
    policy_rejected_logps: torch.Tensor,  # (B,)
    reference_chosen_logps: torch.Tensor,  # (B,)
    reference_rejected_logps: torch.Tensor,  # (B,)
    chosen_is_unsafe: torch.Tensor,  # (B,) bool or 0/1, after the transformation
    rejected_is_unsafe: torch.Tensor,  # (B,) bool or 0/1, after the transformation
    beta: float,
    safety_margin: float,
) -> DPOLossOutput:  # losses (B,), chosen_rewards (B,), rejected_rewards (B,)
    """SafeDPO: ``-log sigmoid(beta h - safety_margin * (u_l - u_w))`` with u = 1 for an unsafe response.

    The pairs must already be transformed (:func:`safe_dpo_pairs`): then ``u_l - u_w`` is 1 for a safe chosen
    against an unsafe rejected and 0 otherwise, so the margin only asks for more separation between a safe and an
    unsafe response. ``safety_margin = 0`` is plain DPO on the transformed pairs. Rewards as in :func:`dpo_loss`.

    Against the paper (Kim et al. 2025, "SafeDPO: A Simple Approach to Direct Preference Optimization with Enhanced
    Safety", arXiv 2505.20065). Its full text could not be read here; what follows was checked against a detailed
    public summary of it (papernotes, ICLR 2026 notes) and its abstract, not against the PDF:

    * Objective: the summary gives ``L(theta; Delta) = -E[log sigma(beta log pi/pi_ref(y~_w) - beta log
      pi/pi_ref(y~_l) - (h~_l - h~_w) Delta)]`` on the transformed data, h~ = 1 unsafe, Delta >= 0. This function is
      that expression term for term (``safety_margin`` = Delta, ``chosen/rejected_is_unsafe`` = h~_w / h~_l), so
      there is one SafeDPO objective, not two.
    * The transformation T (keep a safe winner, swap an unsafe winner against a safe loser, discard both-unsafe
      pairs) is :func:`safe_dpo_pairs` with ``both_unsafe="drop"``; ``"keep"`` is our variant, not the paper's.
    * The margin leaves the optimal policy unchanged (the summary's Proposition 4.4) and only speeds up moving
      probability away from unsafe responses; the summary reports beta = 0.1 and Delta = 10 as the paper's defaults.
    """
    _check_beta(beta)
    if not safety_margin >= 0:  # also rejects nan
        raise ValueError(f"safety_margin must be >= 0, got {safety_margin}")
    h, chosen_log_ratio, rejected_log_ratio = _log_ratio_difference(
        policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps
    )
    if chosen_is_unsafe.shape != h.shape or rejected_is_unsafe.shape != h.shape:
        raise ValueError(
            f"safety labels {tuple(chosen_is_unsafe.shape)}, {tuple(rejected_is_unsafe.shape)} must have shape "
            f"{tuple(h.shape)}"
        )
    margin_on = (rejected_is_unsafe != 0).to(h.dtype) - (chosen_is_unsafe != 0).to(h.dtype)
    losses = -F.logsigmoid(beta * h - safety_margin * margin_on)
    return DPOLossOutput(losses, beta * chosen_log_ratio.detach(), beta * rejected_log_ratio.detach())
