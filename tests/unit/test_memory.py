"""The start-up memory estimate against numbers derived by hand (safe_rlhf/memory.py's docstring is the formula)."""

from __future__ import annotations

import pytest

from safe_rlhf.memory import estimate_model_memory

pytestmark = pytest.mark.unit


def _estimate(**overrides):
    values = dict(num_parameters=1000, num_trainable=1000, precision="bf16", zero_stage=0, world_size=4)
    values.update(overrides)
    return estimate_model_memory("policy", **values)


def test_parameters_gradients_and_optimizer_per_zero_stage():
    # bf16: 2 bytes per parameter and gradient; AdamW 8 bytes (two fp32 moments) + 4 (fp32 master) = 12 per trainable
    stage0 = _estimate(zero_stage=0)
    assert (stage0.parameters, stage0.gradients, stage0.optimizer) == (2000, 2000, 12000)
    stage1 = _estimate(zero_stage=1)  # optimizer states over 4 ranks
    assert (stage1.parameters, stage1.gradients, stage1.optimizer) == (2000, 2000, 3000)
    stage2 = _estimate(zero_stage=2)  # + gradients
    assert (stage2.parameters, stage2.gradients, stage2.optimizer) == (2000, 500, 3000)
    stage3 = _estimate(zero_stage=3)  # + parameters
    assert (stage3.parameters, stage3.gradients, stage3.optimizer) == (500, 500, 3000)
    fp32 = _estimate(precision="fp32")  # 4 bytes each, no master copy: 8 per trainable
    assert (fp32.parameters, fp32.gradients, fp32.optimizer) == (4000, 4000, 8000)
    assert stage0.activations == 0  # no shape given


def test_offload_lora_and_frozen_models():
    offloaded = _estimate(zero_stage=3, offload="all")
    assert (offloaded.parameters, offloaded.optimizer, offloaded.offloaded) == (0, 0, 500 + 3000)
    assert offloaded.gradients == 500  # gradients stay on the device
    lora = _estimate(num_trainable=10)  # adapters only: gradients and optimizer states for 10 parameters
    assert (lora.parameters, lora.gradients, lora.optimizer) == (2000, 20, 120)
    frozen = _estimate(num_trainable=0, sequence_length=10, hidden_size=8, num_layers=3)
    assert (frozen.gradients, frozen.optimizer, frozen.activations) == (0, 0, 0)


def test_activations_with_and_without_checkpointing():
    shape = dict(micro_batch_size=2, sequence_length=10, hidden_size=8, num_layers=3, num_heads=2, vocab_size=16)
    # one layer, 16-bit: s b h (30 + 5 a s / h) = 10*2*8 * (30 + 5*2*10/8) = 160 * 42.5 = 6800 bytes; 3 layers
    # 20400; logits and log-softmax: 2 * b s V * 4 = 2 * 2*10*16 * 4 = 2560
    assert _estimate(**shape).activations == 20400 + 2560
    # checkpointing keeps each layer's input (2 s b h = 320 bytes, 3 layers: 960) plus one layer's full 6800
    assert _estimate(**shape, gradient_checkpointing=True).activations == 960 + 6800 + 2560
    # fp32 doubles the layer activations; a score model has no vocabulary logits
    assert _estimate(**shape, precision="fp32").activations == 2 * 20400 + 2560
    assert _estimate(**shape, causal_lm=False).activations == 20400
