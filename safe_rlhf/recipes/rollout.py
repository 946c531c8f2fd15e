"""Rollout plumbing for the PPO recipes, as plain functions: sampling, masks, log-probs and the rollout record.

Shapes: B sequences; P prompt positions (left-padded); L = P + T total positions; actions are the tokens at positions
1..L-1, so every per-action tensor is (B, L - 1) and ``action_mask[:, t]`` says whether token ``t + 1`` is a response
token the policy produced (up to and including its first EOS).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from typing import Any

import torch
import torch.nn.functional as F

from safe_rlhf.score_model import position_kwargs


@dataclass
class Rollout:
    """One rank's whole rollout batch (torchtune's Trajectory): N episodes, padded to one common length L.

    Built once per RL iteration from the micro-batches of generation (:func:`concat_padded`), so every batch
    statistic (reward scaling, length penalty, advantage whitening, logged means) is taken over the whole rollout
    batch, and across ranks where the recipe reduces it, never over one micro-batch. Model passes cut it again into
    micro-batches with :meth:`micro_batches`. Per-action tensors are (N, L-1).
    """

    input_ids: torch.Tensor  # (N, L) [left padding][prompt][response up to its first EOS][right padding]
    attention_mask: torch.Tensor  # (N, L) 1 on real prompt and response tokens
    action_mask: torch.Tensor  # (N, L-1) bool, response tokens (first EOS included)
    old_log_probs: torch.Tensor  # (N, L-1) actor log-probs at sampling time
    ref_log_probs: torch.Tensor  # (N, L-1) reference log-probs
    rewards: torch.Tensor  # (N,) end reward after every transform (no-EOS penalty, shaping, length, scaling)
    costs: torch.Tensor  # (N, K) episode cost per constraint ("rate" constraints hold 0/1); 0 outside its group
    constraint_members: torch.Tensor  # (N, K) bool: episode i's prompt is in constraint k's group (prompt_groups)
    raw_costs: torch.Tensor  # (N, C) the cost model's raw scores (sign: > 0 unsafe); (N, 0) without a cost model
    reward_scores: torch.Tensor  # (N, A) the reward model's outputs for use (A attributes; A = 1: the plain reward)
    reward_values: torch.Tensor  # (N, L-1) reward critic
    cost_values: torch.Tensor  # (N, K, L-1) cost critic (K = 0 without one)
    reward_advantages: torch.Tensor  # (N, L-1)
    reward_returns: torch.Tensor  # (N, L-1)
    cost_advantages: torch.Tensor  # (N, K, L-1)
    cost_returns: torch.Tensor  # (N, K, L-1)
    ended_with_eos: torch.Tensor  # (N,) bool
    response_lengths: torch.Tensor  # (N,) tokens including EOS
    # (N, C, H, W): each episode's image for a vision-language policy and its models; (0,) for text
    pixel_values: torch.Tensor = field(default_factory=lambda: torch.zeros(0))

    @property
    def image_inputs(self) -> dict[str, torch.Tensor]:
        """Forward keyword arguments for the episodes' images ({} for text)."""
        return {"pixel_values": self.pixel_values} if self.pixel_values.dim() == 4 else {}

    def to(self, device: torch.device) -> Rollout:
        return Rollout(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})

    @property
    def num_episodes(self) -> int:
        return int(self.input_ids.shape[0])

    def micro_batches(self, size: int) -> list[Rollout]:
        """Consecutive slices of ``size`` episodes, each trimmed to the columns that hold a real token of one of its
        rows (so a micro-batch costs what it would have cost alone, whatever the longest episode of the batch)."""
        return [self.select(slice(start, start + size)) for start in range(0, self.num_episodes, size)]

    def columns(self, rows: slice) -> tuple[int, int]:
        """[first, last) token columns holding a real token of one of ``rows`` (the whole width if none)."""
        attention = self.attention_mask[rows]
        real = attention.bool().any(dim=0).nonzero().flatten()
        return (int(real[0]), int(real[-1]) + 1) if real.numel() else (0, attention.shape[1])

    def select(self, rows: slice) -> Rollout:
        """The episodes ``rows``, trimmed to :meth:`columns` (per-action tensors to the actions of those tokens)."""
        first, last = self.columns(rows)
        values: dict[str, torch.Tensor] = {}
        for f in fields(self):
            tensor = getattr(self, f.name)[rows]
            if f.name in _PER_TOKEN_FIELDS:
                tensor = tensor[:, first:last]
            elif f.name in _PER_ACTION_FIELDS:
                tensor = tensor[..., first : last - 1]  # action t is token t + 1
            values[f.name] = tensor
        return Rollout(**values)


_PER_TOKEN_FIELDS = frozenset({"input_ids", "attention_mask"})
_PER_ACTION_FIELDS = frozenset({"action_mask", "old_log_probs", "ref_log_probs", "reward_values", "cost_values",
                                "reward_advantages", "reward_returns", "cost_advantages", "cost_returns"})  # fmt: skip


@dataclass
class Generated:
    """One micro-batch of sampled sequences, truncated after the first EOS (see :func:`truncate_after_eos`)."""

    input_ids: torch.Tensor  # (B, P + T)
    attention_mask: torch.Tensor  # (B, P + T)
    action_mask: torch.Tensor  # (B, P + T - 1)
    ended_with_eos: torch.Tensor  # (B,)
    response_lengths: torch.Tensor  # (B,)
    prompt_length: int  # P
    pixel_values: torch.Tensor | None = None  # (B, C, H, W) the prompts' images (vision-language policy)


def _cat_images(pieces: list[torch.Tensor | None]) -> torch.Tensor | None:
    present = [piece for piece in pieces if piece is not None]
    if not present:
        return None
    if len(present) != len(pieces):
        raise ValueError("some generation micro-batches have images and some do not")
    return torch.cat(present)


def concat_padded(pieces: list[Generated], pad_token_id: int) -> Generated:
    """Micro-batches of different prompt (P) and response (T) lengths as one batch: each is left-padded to the
    longest prompt and right-padded to the longest response, which keeps [padding][prompt][response][padding]."""
    prompt_length = max(piece.prompt_length for piece in pieces)
    response_length = max(piece.input_ids.shape[1] - piece.prompt_length for piece in pieces)

    def pad(tensor: torch.Tensor, left: int, right: int, value: float) -> torch.Tensor:
        return F.pad(tensor, (left, right), value=value)

    ids, attention, actions = [], [], []
    for piece in pieces:
        left = prompt_length - piece.prompt_length
        right = response_length - (piece.input_ids.shape[1] - piece.prompt_length)
        ids.append(pad(piece.input_ids, left, right, pad_token_id))
        attention.append(pad(piece.attention_mask, left, right, 0))
        actions.append(pad(piece.action_mask, left, right, False))
    return Generated(
        input_ids=torch.cat(ids),
        attention_mask=torch.cat(attention),
        action_mask=torch.cat(actions),
        ended_with_eos=torch.cat([piece.ended_with_eos for piece in pieces]),
        response_lengths=torch.cat([piece.response_lengths for piece in pieces]),
        prompt_length=prompt_length,
        pixel_values=_cat_images([piece.pixel_values for piece in pieces]),
    )


def batch_mean_std(values: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[float, float]:
    """Mean and (population) standard deviation of ``values`` over every rank's rollout batch.

    Reduced as (count, sum, sum of squares), so ranks may hold different numbers of values; with a mask only its
    entries count. With fewer than two values in all, the standard deviation is reported as 1 (nothing to scale by),
    never NaN. Every rank must call this the same number of times (it is a collective)."""
    from safe_rlhf import distributed

    selected = values.detach().double().flatten() if mask is None else values.detach().double()[mask.bool()]
    sums = torch.stack([torch.tensor(float(selected.numel()), dtype=torch.float64), selected.sum().cpu(),
                        (selected**2).sum().cpu()])  # fmt: skip
    count, total, squares = (float(v) for v in distributed.all_reduce_sum(sums))
    if count == 0:
        return 0.0, 1.0
    mean = total / count
    if count < 2:
        return mean, 1.0
    variance = max(squares / count - mean * mean, 0.0)
    return mean, math.sqrt(variance)


def truncate_after_eos(
    sequences: torch.Tensor,  # (B, L) generate() output: left-padded prompt + response
    prompt_length: int,
    prompt_mask: torch.Tensor,  # (B, P)
    eos_token_id: int,
    pad_token_id: int,
) -> Generated:
    """The sequences with pad after the first EOS, their attention mask (B, L), action mask (B, L-1),
    ended_with_eos (B,) and response lengths (B,). Tokens after the first EOS are not part of the response and get
    no loss."""
    response = sequences[:, prompt_length:]  # (B, T)
    is_eos = response == eos_token_id
    ended = is_eos.any(dim=1)
    positions = torch.arange(response.shape[1], device=response.device).expand_as(response)
    first_eos = torch.where(is_eos, positions, torch.full_like(positions, response.shape[1])).amin(dim=1)  # (B,)
    # Keep up to and including the first EOS; everything after it is padding.
    response_mask = positions <= first_eos.unsqueeze(1)
    response_mask &= positions < response.shape[1]
    cleaned_response = torch.where(response_mask, response, torch.full_like(response, pad_token_id))
    cleaned = torch.cat([sequences[:, :prompt_length], cleaned_response], dim=1)
    attention_mask = torch.cat([prompt_mask.to(response_mask.dtype), response_mask], dim=1).long()
    action_mask = torch.cat([torch.zeros_like(prompt_mask, dtype=torch.bool), response_mask], dim=1)[:, 1:]
    return Generated(cleaned, attention_mask, action_mask, ended, response_mask.sum(dim=1), prompt_length)


def gather_log_probs(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:  # (B, L-1, V), (B, L-1) -> (B, L-1)
    return torch.gather(F.log_softmax(logits.float(), dim=-1), 2, tokens.unsqueeze(-1)).squeeze(-1)


def policy_logits(
    model: Any,
    input_ids: torch.Tensor,  # (B, L)
    attention_mask: torch.Tensor,  # (B, L)
    temperature: float,
    **image_inputs: torch.Tensor,  # a VLM's pixel_values (B, C, H, W); none for text
) -> torch.Tensor:  # (B, L-1, V) next-token logits at positions 0..L-2, divided by the temperature
    positions = position_kwargs(model, attention_mask)
    logits = model(input_ids=input_ids, attention_mask=attention_mask, **positions, **image_inputs).logits
    return logits[:, :-1] / temperature


def policy_log_probs(
    model: Any,
    input_ids: torch.Tensor,  # (B, L)
    attention_mask: torch.Tensor,  # (B, L)
    temperature: float,
    **image_inputs: torch.Tensor,  # a VLM's pixel_values; none for text
) -> torch.Tensor:  # (B, L-1) log-prob of token t+1 under the policy at position t
    """Log-probs with the sampling temperature applied (rollout, reference and update must all divide by it)."""
    logits = policy_logits(model, input_ids, attention_mask, temperature, **image_inputs)
    return gather_log_probs(logits, input_ids[:, 1:])


def _zero3_parameter_offload(engine: Any) -> Any:
    """The object that owns a ZeRO-3 engine's per-module fetch/release hooks (``forward_hooks``, ``backward_hooks``).

    A trainable engine keeps it at ``engine.optimizer.parameter_offload``; an engine without an optimizer has a
    ``DeepSpeedZeRoOffload`` as its ``optimizer``."""
    optimizer = getattr(engine, "optimizer", None)
    offload = getattr(optimizer, "parameter_offload", None) or optimizer
    if offload is None or not hasattr(offload, "forward_hooks") or not hasattr(offload, "_register_deepspeed_module"):
        raise RuntimeError(f"cannot find the ZeRO-3 parameter hooks of {type(engine).__name__} (DeepSpeed changed?)")
    return offload


@contextlib.contextmanager
def gathered_weights(engine: Any, zero_stage: int, enabled: bool) -> Iterator[None]:
    """Under ZeRO-3, hold every actor parameter gathered for a whole generate() call, with ZeRO's hooks removed.

    Why the hooks must go: gathering alone is not enough. ZeRO-3 registers a pre- and post-forward hook on every
    submodule that fetches (all-gathers) its parameters and releases (re-partitions) them again. With those hooks in
    place, the first forward inside ``GatheredParameters`` re-partitions the weights and every later token gathers
    them again with collectives; a rank whose responses all end early stops issuing them while another rank still
    generates, and the collectives no longer match (gloo: "Received data size doesn't match expected size", NCCL: a
    hang or wrong weights). With the hooks removed, a forward issues no collective at all, so ranks may stop
    generating at different steps (``synced_gpus=False``). The hooks are registered again on the way out, even when
    generation raised, before the parameters are re-partitioned (DeepSpeed's own ``unwrap_model_for_generation``
    does the same, without the restore on error).
    """
    if zero_stage != 3 or not enabled:
        yield
        return
    import deepspeed

    offload = _zero3_parameter_offload(engine)
    with deepspeed.zero.GatheredParameters(list(engine.module.parameters()), modifier_rank=None):
        for hook in [*offload.forward_hooks, *offload.backward_hooks]:
            hook.remove()
        offload.forward_hooks, offload.backward_hooks = [], []
        try:
            yield
        finally:
            # Re-registering also invalidates the prefetch trace, which re-records on the next forward.
            offload._register_deepspeed_module(offload.module)


@torch.no_grad()
def sample_responses(
    engine: Any,
    prompt_ids: torch.Tensor,  # (B, P) left-padded
    prompt_mask: torch.Tensor,  # (B, P)
    *,
    max_new_tokens: int,
    min_new_tokens: int = 0,
    temperature: float,
    top_p: float,
    top_k: int,
    eos_token_id: int,
    pad_token_id: int,
    zero_stage: int,
    gather: bool,
    world_size: int,
    suppress_tokens: list[int] | None = None,
    image_inputs: dict[str, torch.Tensor] | None = None,
) -> torch.Tensor:  # (B, P + T)
    """Sample one response per prompt. No position_ids are passed: generate derives them from the attention mask."""
    # Ranks must step together under ZeRO-3 unless the weights are gathered (no collectives inside forward then).
    synced = zero_stage == 3 and world_size > 1 and not gather
    with gathered_weights(engine, zero_stage, gather):
        return engine.module.generate(
            input_ids=prompt_ids,
            attention_mask=prompt_mask,
            max_new_tokens=max_new_tokens,
            min_new_tokens=min_new_tokens or None,
            do_sample=True,
            temperature=temperature,
            top_p=top_p,
            top_k=top_k,
            eos_token_id=eos_token_id,
            pad_token_id=pad_token_id,
            synced_gpus=synced,
            # vocabulary padding and an added pad token: never sampled (engines.generation_suppressed_ids)
            suppress_tokens=suppress_tokens or None,
            **(image_inputs or {}),  # a VLM: the prompts' pixel_values, read at the first step only
        )
