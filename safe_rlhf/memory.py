"""What a run will hold in memory per rank, estimated at start-up, and what it held, measured at the end.

Every recipe prints the estimate before its first step, one line per model and a total::

    memory estimate per rank (ZeRO-3, 8 ranks, bf16): actor 1.20 GiB (parameters 0.12, gradients 0.12, optimizer
    0.70, activations 0.26), ... ; total 3.1 GiB on the device, 0.0 GiB offloaded to CPU

and, when it ends, the measured peak next to it (``torch.cuda.max_memory_allocated`` on a GPU; on a CPU the growth
of the process's peak resident memory over what it held before loading the models).

The estimate counts, for a model of P parameters (T of them trainable: all, or LoRA's adapters) on N ranks:

- parameters: P x (2 bytes in bf16 / fp16, 4 in fp32), divided by N under ZeRO-3;
- gradients: T x the same, divided by N under ZeRO-2 and 3;
- optimizer (AdamW): T x 8 bytes (two fp32 moments), plus T x 4 for the fp32 master copy in bf16 / fp16, divided by N
  under ZeRO-1, 2 and 3; on the CPU instead with ``deepspeed.offload=optimizer``;
- activations of one micro-batch of B sequences of S tokens through L layers of width H and A heads, kept for the
  backward pass (trainable models only): S B H (34 + 5 A S / H) bytes per layer in 16-bit (Korthikanti et al. 2022,
  "Reducing Activation Recomputation in Large Transformer Models", without its dropout masks' share, which this
  project never has: 34 -> 30), twice that in fp32; with gradient checkpointing only each layer's input (2 S B H bytes
  16-bit) plus one layer's full set; plus the logits (B S V x 4 bytes, twice: logits and log-softmax) of a causal LM.

Frozen models (reference, reward, cost) hold their parameters only (their forwards run without gradient).
"""

from __future__ import annotations

import os
import resource
import sys
from dataclasses import dataclass
from typing import Any

import torch

GIB = 1024**3


@dataclass
class ModelMemory:
    """Bytes per rank of one model, by kind (device, unless ``offloaded``)."""

    name: str
    parameters: float
    gradients: float
    optimizer: float
    activations: float
    offloaded: float = 0.0  # bytes held in CPU memory instead (offloaded optimizer states / parameters)

    @property
    def device_total(self) -> float:
        return self.parameters + self.gradients + self.optimizer + self.activations


def estimate_model_memory(
    name: str,
    *,
    num_parameters: int,
    num_trainable: int,
    precision: str,
    zero_stage: int,
    world_size: int,
    offload: str = "none",
    micro_batch_size: int = 1,
    sequence_length: int = 0,
    hidden_size: int = 0,
    num_layers: int = 0,
    num_heads: int = 1,
    vocab_size: int = 0,
    causal_lm: bool = True,
    gradient_checkpointing: bool = False,
) -> ModelMemory:
    """The estimate of the module docstring for one model (``num_trainable`` = 0 for a frozen one)."""
    width = 4 if precision == "fp32" else 2
    shards = max(1, world_size)
    parameters = num_parameters * width / (shards if zero_stage == 3 else 1)
    gradients = num_trainable * width / (shards if zero_stage >= 2 else 1)
    optimizer = num_trainable * (8 + (0 if precision == "fp32" else 4)) / (shards if zero_stage >= 1 else 1)
    offloaded = 0.0
    if offload in ("optimizer", "all") and num_trainable:
        offloaded += optimizer
        optimizer = 0.0
    if offload in ("parameter", "all") and zero_stage == 3:
        offloaded += parameters
        parameters = 0.0
    activations = 0.0
    if num_trainable and sequence_length and hidden_size and num_layers:
        s, b, h = sequence_length, micro_batch_size, hidden_size
        full_layer = s * b * h * (30 + 5 * num_heads * s / h) * (2 if precision == "fp32" else 1)
        if gradient_checkpointing:
            activations = num_layers * 2 * s * b * h * (width / 2) + full_layer
        else:
            activations = num_layers * full_layer
        if causal_lm:
            activations += 2 * b * s * vocab_size * 4
    return ModelMemory(name, parameters, gradients, optimizer, activations, offloaded)


def model_shape(model: Any) -> dict[str, int]:
    """hidden size, layers, heads and vocabulary of a Hugging Face model (or a peft / DeepSpeed wrapper of one)."""
    from safe_rlhf.lora import base_model

    module = base_model(model)
    config = module.config.get_text_config() if hasattr(module.config, "get_text_config") else module.config

    def first(*names: str) -> int:
        for name in names:
            value = getattr(config, name, None)
            if isinstance(value, int):
                return value
        return 0

    return {
        "hidden_size": first("hidden_size", "n_embd", "d_model"),
        "num_layers": first("num_hidden_layers", "n_layer", "num_layers"),
        "num_heads": first("num_attention_heads", "n_head") or 1,
        "vocab_size": first("vocab_size"),
    }


def parameter_counts(model: Any) -> tuple[int, int]:
    """(all parameters, trainable parameters), full sizes also when ZeRO-3 has partitioned them."""
    module = getattr(model, "module", model)
    total = trainable = 0
    for parameter in module.parameters():
        count = int(parameter.ds_numel) if hasattr(parameter, "ds_numel") else parameter.numel()
        total += count
        trainable += count if parameter.requires_grad else 0
    return total, trainable


def estimate_run_memory(
    models: dict[str, tuple[Any, bool]],
    settings: Any,
    *,
    world_size: int,
    micro_batch_size: int,
    sequence_length: int,
    checkpointing: dict[str, bool] | None = None,
) -> list[ModelMemory]:
    """One :class:`ModelMemory` per model: ``models`` maps a name to (model, trainable); ``settings`` is the
    recipe's DeepSpeedConfig. Frozen models under ZeRO-0/1/2 are not partitioned (engines.deepspeed_config)."""
    estimates = []
    for name, (model, trainable) in models.items():
        total, trainable_count = parameter_counts(model)
        shape = model_shape(model)
        zero_stage = settings.zero_stage if (trainable or settings.zero_stage == 3) else 0
        estimates.append(
            estimate_model_memory(
                name,
                num_parameters=total,
                num_trainable=trainable_count if trainable else 0,
                precision=settings.precision,
                zero_stage=zero_stage,
                world_size=world_size,
                offload=settings.offload,
                micro_batch_size=micro_batch_size,
                sequence_length=sequence_length,
                causal_lm=not hasattr(getattr(model, "module", model), "score"),  # score models have a head
                gradient_checkpointing=bool((checkpointing or {}).get(name, False)),
                **shape,
            )
        )
    return estimates


def describe(estimates: list[ModelMemory], settings: Any, world_size: int) -> str:
    """The start-up line of the module docstring."""
    parts = [
        f"{e.name} {size(e.device_total)} (parameters {size(e.parameters)}, gradients {size(e.gradients)}, "
        f"optimizer {size(e.optimizer)}, activations {size(e.activations)})"
        for e in estimates
    ]
    device = sum(e.device_total for e in estimates)
    offloaded = sum(e.offloaded for e in estimates)
    return (
        f"memory estimate per rank (ZeRO-{settings.zero_stage}, {world_size} rank{'s' if world_size > 1 else ''}, "
        f"{settings.precision}): {', '.join(parts)}; total {size(device)} on the device, {size(offloaded)} "
        "offloaded to CPU"
    )


def size(num_bytes: float) -> str:
    """``1.25 GiB`` from 1 GiB up, ``12.3 MiB`` below."""
    return f"{num_bytes / GIB:.2f} GiB" if num_bytes >= GIB else f"{num_bytes / 2**20:.1f} MiB"


def current_rss_bytes() -> int:
    """This process's resident memory now (Linux /proc; 0 where unavailable)."""
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def peak_rss_bytes() -> int:
    """This process's peak resident memory so far (ru_maxrss: KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024


def announce(
    models: dict[str, tuple[Any, bool]],
    settings: Any,
    *,
    world_size: int,
    micro_batch_size: int,
    sequence_length: int,
    checkpointing: dict[str, bool] | None = None,
) -> list[ModelMemory]:
    """Estimate (:func:`estimate_run_memory`), print the start-up line on rank 0 and return the estimates."""
    from safe_rlhf import distributed

    estimates = estimate_run_memory(
        models,
        settings,
        world_size=world_size,
        micro_batch_size=micro_batch_size,
        sequence_length=sequence_length,
        checkpointing=checkpointing,
    )
    distributed.print0(describe(estimates, settings, world_size))
    return estimates


def report_peak(estimates: list[ModelMemory], peak: PeakMemory, run_dir: Any) -> dict[str, Any]:
    """Print the measured peak next to the estimate and write both to ``run_dir/memory.json`` (rank 0)."""
    import json
    from pathlib import Path

    from safe_rlhf import distributed

    measured, what = peak.measured()
    estimate = sum(e.device_total for e in estimates)
    record = {
        "estimate_bytes": estimate,
        "measured_bytes": measured,
        "measured": what,
        "models": {e.name: {"parameters": e.parameters, "gradients": e.gradients, "optimizer": e.optimizer,
                            "activations": e.activations, "offloaded": e.offloaded} for e in estimates},
    }  # fmt: skip
    distributed.print0(f"memory: peak {size(measured)} measured ({what}, rank 0), estimate {size(estimate)}")
    if distributed.is_main_process():
        Path(run_dir, "memory.json").write_text(json.dumps(record, indent=1))
    return record


class PeakMemory:
    """Measures a run's peak memory: CUDA's allocator peak on a GPU, else the growth of peak RSS over a baseline
    taken before the models load (``start``)."""

    def __init__(self) -> None:
        self.baseline = 0

    @classmethod
    def started(cls) -> PeakMemory:
        peak = cls()
        peak.start()
        return peak

    def start(self) -> None:
        import deepspeed  # noqa: F401  imported first, so that the libraries' own memory is not counted
        import transformers  # noqa: F401

        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        self.baseline = current_rss_bytes()

    def measured(self) -> tuple[float, str]:
        """(bytes, what was measured)."""
        if torch.cuda.is_available():
            return float(torch.cuda.max_memory_allocated()), "CUDA max_memory_allocated"
        return float(max(0, peak_rss_bytes() - self.baseline)), "growth of peak RSS"
