"""LoRA (low-rank adapters, via peft) for every trainable model: the SFT / DPO policy, the PPO actor, the critics and
the reward / cost models.

Turn it on per model::

    python -m safe_rlhf.train --config-name sft model.lora.enabled=true model.lora.rank=16
    python -m safe_rlhf.train --config-name ppo_lag actor.lora.enabled=true critic_lora.enabled=true
    python -m safe_rlhf.train --config-name dpo model.lora.enabled=true

What changes with it on:

- Only the adapters (and a score model's ``score`` head, which is new and must learn in full) have gradients and
  optimizer states; the base weights stay frozen.
- The reference policy of PPO and DPO is the actor / policy itself **with its adapters disabled**: the frozen base is
  exactly the starting policy, so no second copy of the weights is loaded.
- Exports are merged (``W + (alpha / rank) B A`` in every adapted layer, :func:`merge_lora_state_dict`): the result is
  an ordinary Hugging Face directory that plain ``from_pretrained`` loads, with no peft needed downstream.

Adapter dropout is fixed at 0: PPO needs the log-probs of the rollout and of the update to agree (see
``engines.disable_dropout``).

QLoRA (``model.lora.quantize_base=4bit``, a policy with ZeRO 0-2): the frozen base loads in 4-bit NF4 with double
quantization (bitsandbytes; :func:`quantization_config`), computing in the training precision; the adapters train in
that precision over it, and the adapter-disabled reference is the 4-bit base. The export dequantizes every 4-bit weight
(:func:`dequantized_state_dict`) before merging, so the result is again a plain model in the training precision.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

from safe_rlhf.config import LoraConfig

# The state-dict layout peft gives an adapted layer "X": X.base_layer.weight (the frozen weight), X.lora_A.<adapter>
# .weight (rank x in), X.lora_B.<adapter>.weight (out x rank), under the PeftModel prefix "base_model.model.".
PEFT_PREFIX = "base_model.model."
ADAPTER = "default"


def apply_lora(model: torch.nn.Module, settings: LoraConfig, *, score_model: bool = False) -> torch.nn.Module:
    """``model`` wrapped with fresh LoRA adapters (B = 0, so the wrapped model computes exactly what ``model`` did).

    A score model's ``score`` head gets no adapter and stays trainable in full: it starts random."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    targets: Any = settings.target_modules
    if targets == ["all-linear"]:
        targets = "all-linear"  # peft's own keyword: every linear layer except the output layer
    peft_config = PeftLoraConfig(
        r=settings.rank,
        lora_alpha=settings.alpha,
        lora_dropout=0.0,
        target_modules=targets,
        exclude_modules=["score"] if score_model else None,
        bias="none",
    )
    wrapped = get_peft_model(model, peft_config)  # type: ignore[arg-type]
    if score_model:
        from safe_rlhf.score_model import score_head

        score_head(wrapped).requires_grad_(True)
    return wrapped


def is_lora(model: Any) -> bool:
    """Whether ``model`` (a model or a DeepSpeed engine) carries peft adapters."""
    module = getattr(model, "module", model)
    return hasattr(module, "peft_config") and hasattr(module, "disable_adapter")


def base_model(model: Any) -> Any:
    """The Hugging Face model under peft's wrapper (the model itself without adapters)."""
    module = getattr(model, "module", model)
    return module.get_base_model() if is_lora(module) else module


@contextlib.contextmanager
def adapters_disabled(model: Any) -> Iterator[None]:
    """Run ``model`` (a model or a DeepSpeed engine) as its frozen base: the reference policy of a LoRA actor."""
    module = getattr(model, "module", model)
    with module.disable_adapter():
        yield


def lora_scalings(model: Any) -> dict[str, tuple[float, bool]]:
    """Every adapted layer's state-dict prefix (as in the wrapped model's state dict) -> (scaling, fan_in_fan_out).

    ``fan_in_fan_out`` is set for layers that store their weight as (in, out), GPT-2's Conv1D."""
    from peft.tuners.lora import LoraLayer

    module = getattr(model, "module", model)
    layers: dict[str, tuple[float, bool]] = {}
    for name, layer in module.named_modules():
        if isinstance(layer, LoraLayer) and ADAPTER in layer.scaling:
            layers[name] = (float(layer.scaling[ADAPTER]), bool(getattr(layer, "fan_in_fan_out", False)))
    return layers


def merge_lora_state_dict(
    state: dict[str, torch.Tensor], scalings: dict[str, tuple[float, bool]]
) -> dict[str, torch.Tensor]:
    """The wrapped model's state dict as the plain model's, adapters merged into their base weights.

    For each adapted layer ``X`` with scaling s: ``X.weight = X.base_layer.weight + s * B @ A`` (transposed for a
    fan_in_fan_out layer), computed in float32 and cast back to the weight's dtype; the adapter tensors are dropped
    and the names lose peft's ``base_model.model.`` prefix and ``.base_layer`` infix."""
    merged: dict[str, torch.Tensor] = {}
    for name, tensor in state.items():
        if ".lora_A." in name or ".lora_B." in name or ".lora_embedding_" in name:
            continue
        plain = name[len(PEFT_PREFIX) :] if name.startswith(PEFT_PREFIX) else name
        if ".base_layer." in name:
            layer = name.split(".base_layer.", 1)[0]
            plain = plain.replace(".base_layer.", ".")
            if name.endswith(".base_layer.weight") and layer in scalings:
                scaling, fan_in_fan_out = scalings[layer]
                lora_a = state[f"{layer}.lora_A.{ADAPTER}.weight"].float()  # (rank, in)
                lora_b = state[f"{layer}.lora_B.{ADAPTER}.weight"].float()  # (out, rank)
                delta = lora_b @ lora_a  # (out, in)
                if fan_in_fan_out:
                    delta = delta.T
                tensor = (tensor.float() + scaling * delta).to(tensor.dtype)
        merged[plain] = tensor
    return merged


def trainable_summary(model: Any) -> str:
    """ "LoRA: 12,288 of 217,408 parameters trainable (5.65%)" for the start-up log."""
    from safe_rlhf.memory import parameter_counts

    total, trainable = parameter_counts(model)
    return f"LoRA: {trainable:,} of {total:,} parameters trainable ({100 * trainable / max(1, total):.2f}%)"


def quantization_config(compute_dtype: torch.dtype) -> Any:
    """QLoRA's 4-bit base: NF4, double quantization, matmuls in ``compute_dtype``, packed storage of that dtype (so
    that DeepSpeed's casts and flattening treat the packed weights like the rest)."""
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype,
        bnb_4bit_quant_storage=compute_dtype,
    )


def is_quantized(model: Any) -> bool:
    """Whether any weight of the (possibly wrapped) model is a bitsandbytes 4-bit weight."""
    module = getattr(model, "module", model)
    return any(hasattr(parameter, "quant_state") for parameter in module.parameters())


def dequantized_state_dict(model: Any) -> dict[str, torch.Tensor]:
    """The model's state dict with every 4-bit weight dequantized (bitsandbytes) to its compute dtype and the
    quantization-state entries dropped, on the CPU: what :func:`merge_lora_state_dict` and a plain model expect."""
    import bitsandbytes.functional as bnb_functional

    module = getattr(model, "module", model)
    quantized = {name: parameter for name, parameter in module.named_parameters() if hasattr(parameter, "quant_state")}
    # bitsandbytes stores a 4-bit weight's quantization state as "X.weight.absmax", "X.weight.quant_map", ...
    quant_state_prefixes = tuple(f"{name}." for name in quantized)
    state: dict[str, torch.Tensor] = {}
    for name, tensor in module.state_dict().items():
        if name.startswith(quant_state_prefixes):
            continue
        if name in quantized:
            parameter = quantized[name]
            weight = bnb_functional.dequantize_4bit(parameter.data, parameter.quant_state)
            tensor = weight.to(parameter.quant_state.dtype)
        state[name] = tensor.detach().cpu()
    return state
