"""Floating-point operations of the transformer passes an RLHF iteration runs, and the machine's matmul rate.

Used by the benchmark (``python -m safe_rlhf.bench``) and the GPU check (``python -m safe_rlhf.gpu_check``) to turn
phase times into achieved FLOP/s and a share of what the same machine's matrix multiply reaches in the same run.

The count is the usual one (Kaplan et al. 2020; PaLM's MFU): a forward pass costs, per token, 2 N multiply-adds over
the N matrix parameters it uses (embedding lookups are free; the output layer counts) plus 4 L H c for attention over
a context of c tokens (scores Q K^T and the weighted sum of V, 2 L H c each); a backward pass costs twice the
forward. A full-sequence forward of S tokens has c = S for every token (the masked half is computed too on most
kernels); token-by-token generation with a KV cache has c = the tokens so far.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ModelFlops:
    """What the FLOP count needs of a model: matrix parameters (without the embedding table), layers, width."""

    matrix_parameters: int  # N: every Linear / Conv1D weight, the output layer included for a causal LM
    num_layers: int  # L
    hidden_size: int  # H


def forward_flops(model: ModelFlops, sequences: int, length: int) -> float:
    """A forward over ``sequences`` x ``length`` tokens (training, scoring): (2 N + 4 L H S) per token."""
    tokens = sequences * length
    return tokens * (2.0 * model.matrix_parameters + 4.0 * model.num_layers * model.hidden_size * length)


def training_flops(model: ModelFlops, sequences: int, length: int) -> float:
    """Forward and backward (twice the forward) over the batch."""
    return 3.0 * forward_flops(model, sequences, length)


def generation_flops(model: ModelFlops, sequences: int, prompt_length: int, new_tokens: int) -> float:
    """The prompt's forward (prefill, which yields the first new token), then one forward per further token with a
    KV cache: new token t (1-based, t < new_tokens) is fed with prompt_length + t positions in its context."""
    prefill = forward_flops(model, sequences, prompt_length)
    steps = max(0, new_tokens - 1)
    per_token = 2.0 * model.matrix_parameters
    attention = 4.0 * model.num_layers * model.hidden_size
    contexts = sum(prompt_length + t for t in range(1, new_tokens))
    return prefill + sequences * (steps * per_token + attention * contexts)


def model_flops(model: Any) -> ModelFlops:
    """:class:`ModelFlops` of a Hugging Face model (or a DeepSpeed / peft wrapper of one), full sizes under ZeRO-3:
    the weights of every module with a 2-D ``weight`` other than an embedding table."""
    import torch

    from safe_rlhf.memory import model_shape

    module = getattr(model, "module", model)
    embeddings = {id(m.weight) for m in module.modules() if isinstance(m, torch.nn.Embedding)}
    output = getattr(module, "get_output_embeddings", lambda: None)()
    output_weight = id(output.weight) if output is not None else None
    matrix = 0
    seen: set[int] = set()
    for submodule in module.modules():
        weight = getattr(submodule, "weight", None)
        if not isinstance(weight, torch.Tensor) or id(weight) in seen:
            continue
        shape = tuple(weight.ds_shape) if hasattr(weight, "ds_shape") else tuple(weight.shape)
        if len(shape) != 2 or (id(weight) in embeddings and id(weight) != output_weight):
            continue
        seen.add(id(weight))
        matrix += shape[0] * shape[1]
    if output is not None and output_weight in embeddings and output_weight not in seen:  # tied: counts once
        matrix += int(output.weight.ds_numel) if hasattr(output.weight, "ds_numel") else output.weight.numel()
    shape_info = model_shape(model)
    return ModelFlops(matrix, shape_info["num_layers"], shape_info["hidden_size"])


def matmul_rate(
    size: int = 1024, dtype: Any = None, device: Any = None, repeats: int = 5, min_seconds: float = 0.2
) -> float:
    """FLOP/s of a square ``size`` x ``size`` matrix multiply on this process's device and threads (median of
    ``repeats`` timings, each long enough to time): the practical limit that achieved rates are compared with."""
    import torch

    dtype = dtype or torch.float32
    device = device or torch.device("cpu")
    a = torch.randn(size, size, dtype=dtype, device=device)
    b = torch.randn(size, size, dtype=dtype, device=device)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    torch.matmul(a, b)  # warm-up
    sync()
    start = time.perf_counter()
    calls = 0
    while time.perf_counter() - start < min_seconds / 4 or calls < 2:
        torch.matmul(a, b)
        calls += 1
    sync()
    per_call = (time.perf_counter() - start) / calls
    inner = max(1, int(min_seconds / max(per_call, 1e-9) / repeats))
    timings = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        for _ in range(inner):
            torch.matmul(a, b)
        sync()
        timings.append((time.perf_counter() - start) / inner)
    return 2.0 * size**3 / statistics.median(timings)
