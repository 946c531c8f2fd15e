"""Rollout plumbing for the PPO recipes, as plain functions: sampling, masks, log-probs and the rollout record.

Shapes: B sequences; P prompt positions (left-padded); L = P + T total positions; actions are the tokens at positions
1..L-1, so every per-action tensor is (B, L - 1) and ``action_mask[:, t]`` says whether token ``t + 1`` is a response
token the policy produced (up to and including its first EOS).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F

from safe_rlhf.score_model import position_ids_from_mask


@dataclass
class Rollout:
    """One micro-batch of rollouts with everything PPO needs (per-action tensors are (B, L-1))."""

    input_ids: torch.Tensor  # (B, L) prompt + response, pad after the first EOS
    attention_mask: torch.Tensor  # (B, L) 1 on real prompt and response tokens
    action_mask: torch.Tensor  # (B, L-1) bool, response tokens (first EOS included)
    old_log_probs: torch.Tensor  # (B, L-1) actor log-probs at sampling time
    ref_log_probs: torch.Tensor  # (B, L-1) reference log-probs
    rewards: torch.Tensor  # (B,) end reward (after no-EOS penalty / shaping)
    costs: torch.Tensor  # (B, K) episode cost per constraint ("rate" constraints hold 0/1)
    raw_costs: torch.Tensor  # (B, C) the cost model's scores (C = its outputs); empty (B, 0) without a cost model
    reward_values: torch.Tensor  # (B, L-1) reward critic
    cost_values: torch.Tensor  # (B, K, L-1) cost critic (empty K=0 without one)
    reward_advantages: torch.Tensor  # (B, L-1)
    reward_returns: torch.Tensor  # (B, L-1)
    cost_advantages: torch.Tensor  # (B, K, L-1)
    cost_returns: torch.Tensor  # (B, K, L-1)
    ended_with_eos: torch.Tensor  # (B,) bool
    response_lengths: torch.Tensor  # (B,) tokens including EOS

    def to(self, device: torch.device) -> Rollout:
        return Rollout(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})


def truncate_after_eos(
    sequences: torch.Tensor,  # (B, L) generate() output: left-padded prompt + response
    prompt_length: int,
    prompt_mask: torch.Tensor,  # (B, P)
    eos_token_id: int,
    pad_token_id: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(sequences with pad after the first EOS, attention mask (B, L), action mask (B, L-1), ended_with_eos (B,),
    response lengths (B,)). Tokens after the first EOS are not part of the response and get no loss."""
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
    return cleaned, attention_mask, action_mask, ended, response_mask.sum(dim=1)


def gather_log_probs(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:  # (B, L-1, V), (B, L-1) -> (B, L-1)
    return torch.gather(F.log_softmax(logits.float(), dim=-1), 2, tokens.unsqueeze(-1)).squeeze(-1)


def policy_log_probs(
    model: Any,
    input_ids: torch.Tensor,  # (B, L)
    attention_mask: torch.Tensor,  # (B, L)
    temperature: float,
) -> torch.Tensor:  # (B, L-1) log-prob of token t+1 under the policy at position t
    """Log-probs with the sampling temperature applied (rollout, reference and update must all divide by it)."""
    logits = model(
        input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids_from_mask(attention_mask)
    ).logits
    return gather_log_probs(logits[:, :-1] / temperature, input_ids[:, 1:])


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
        )
