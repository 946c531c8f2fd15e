"""Statistics over the masked (response-token) entries of a tensor.

A mask is a bool or 0/1 float tensor with exactly the shape of the data; True / 1 marks an entry that counts.
Entries outside the mask are never read arithmetically (they go through ``torch.where``), so padding that holds
garbage, even inf or NaN, cannot leak into a result.

Empty masks: a mean over no entries is 0, not NaN. Empty generations are a known case in RLHF rollouts (the
reference crashed on them), and a NaN in a logged statistic would poison every later average.
"""

from __future__ import annotations

import torch


def _as_bool_mask(
    x: torch.Tensor,  # (*)
    mask: torch.Tensor,  # (*), same shape as x
) -> torch.Tensor:  # (*) bool
    if mask.shape != x.shape:
        raise ValueError(f"mask shape {tuple(mask.shape)} must equal the data shape {tuple(x.shape)}")
    return mask if mask.dtype == torch.bool else mask != 0


def masked_mean(
    x: torch.Tensor,  # (*)
    mask: torch.Tensor,  # (*), bool or 0/1
    dim: int | None = None,
) -> torch.Tensor:  # () if dim is None, else x's shape without `dim`
    """Mean of the masked entries of ``x``, over all of them (``dim=None``) or along ``dim``.

    Where the mask selects nothing the result is 0.
    """
    bool_mask = _as_bool_mask(x, mask)
    masked_x = torch.where(bool_mask, x, torch.zeros_like(x))
    if dim is None:
        total, count = masked_x.sum(), bool_mask.sum()
    else:
        total, count = masked_x.sum(dim=dim), bool_mask.sum(dim=dim)
    return total / count.clamp_min(1).to(total.dtype)


def masked_var(
    x: torch.Tensor,  # (*)
    mask: torch.Tensor,  # (*), bool or 0/1
    unbiased: bool = True,
) -> torch.Tensor:  # ()
    """Variance of all masked entries of ``x``.

    ``unbiased`` applies Bessel's correction n / (n - 1) when n > 1 masked entries exist; with one entry the
    variance is 0, with none it is 0.
    """
    bool_mask = _as_bool_mask(x, mask)
    mean = masked_mean(x, bool_mask)
    variance = masked_mean((x - mean) ** 2, bool_mask)
    if unbiased:
        count = bool_mask.sum().to(variance.dtype)
        variance = variance * count / (count - 1).clamp_min(1)
    return variance


def masked_whiten(
    x: torch.Tensor,  # (*)
    mask: torch.Tensor,  # (*), bool or 0/1
    shift_mean: bool = True,
    eps: float = 1e-8,
) -> torch.Tensor:  # (*), 0 outside the mask
    """Normalise ``x`` to unit (unbiased) variance using the statistics of its masked entries only.

    With ``shift_mean=True`` the result also has mean 0; with ``shift_mean=False`` the original mean is added back,
    so only the scale changes (the convention of trl / torchtune, used e.g. to whiten rewards without changing
    their sign on average). Entries outside the mask are set to 0, like advantages outside a response.
    """
    bool_mask = _as_bool_mask(x, mask)
    mean = masked_mean(x, bool_mask)
    variance = masked_var(x, bool_mask, unbiased=True)
    whitened = (x - mean) * torch.rsqrt(variance + eps)
    if not shift_mean:
        whitened = whitened + mean
    return torch.where(bool_mask, whitened, torch.zeros_like(whitened))


def sequence_then_batch_mean(
    per_token: torch.Tensor,  # (B, L)
    mask: torch.Tensor,  # (B, L), bool or 0/1
) -> torch.Tensor:  # ()
    """Mean over the masked tokens of each sequence, then mean over the sequences that have any.

    This is the aggregation of the reference PPO losses: every sequence weighs the same whatever its length
    (a plain token mean over the batch would weigh long responses more, which biases training towards length).
    Rows with an empty mask (empty generations) are left out of the batch mean; if every row is empty the result
    is 0, still connected to the graph so ``backward()`` works.
    """
    bool_mask = _as_bool_mask(per_token, mask)
    per_sequence = masked_mean(per_token, bool_mask, dim=-1)  # (B,)
    has_tokens = bool_mask.any(dim=-1)  # (B,)
    return masked_mean(per_sequence, has_tokens)
