"""FLOP counts against numbers derived by hand, and the matmul rate being a rate."""

from __future__ import annotations

import pytest

from safe_rlhf.flops import ModelFlops, forward_flops, generation_flops, matmul_rate, model_flops, training_flops

pytestmark = pytest.mark.unit

MODEL = ModelFlops(matrix_parameters=100, num_layers=2, hidden_size=4)


def test_forward_training_and_generation_by_hand():
    # per token: 2 N = 200, attention 4 L H S = 4*2*4*5 = 160; 3 sequences x 5 tokens = 15 tokens -> 5400
    assert forward_flops(MODEL, 3, 5) == 5400
    assert training_flops(MODEL, 3, 5) == 3 * 5400
    # 2 prompts of 5, 3 new tokens: prefill forward(2, 5) = 10 * 360 = 3600 (gives new token 1); tokens 2 and 3 are
    # fed with contexts 6 and 7: per sequence 2 * 200 + 4*2*4 * (6 + 7) = 400 + 416 = 816, two sequences 1632
    assert generation_flops(MODEL, 2, 5, 3) == 3600 + 1632
    assert generation_flops(MODEL, 2, 5, 1) == 3600


def test_model_flops_counts_matrices_once_and_skips_embedding_tables(tmp_path):
    from transformers import AutoModelForCausalLM

    from safe_rlhf.assets import build_tiny_model

    llama = AutoModelForCausalLM.from_pretrained(build_tiny_model(tmp_path / "llama"))
    # per layer q, k, v, o 4 * 64 * 64 = 16384 and gate, up, down 3 * 64 * 172 = 33024; 2 layers = 98816; the untied
    # output layer 1024 * 64 = 65536
    assert model_flops(llama) == ModelFlops(98816 + 65536, 2, 64)
    gpt2 = AutoModelForCausalLM.from_pretrained(build_tiny_model(tmp_path / "gpt2", architecture="gpt2"))
    # Conv1D c_attn 64 x 192, c_proj 64 x 64, c_fc 64 x 172, mlp c_proj 172 x 64 per layer; the tied output layer
    # (the token embedding, 1024 x 64) counts once, the position embedding not at all
    per_layer = 64 * 192 + 64 * 64 + 2 * 64 * 172
    assert model_flops(gpt2) == ModelFlops(2 * per_layer + 1024 * 64, 2, 64)


def test_matmul_rate_is_positive_and_finite():
    rate = matmul_rate(size=128, repeats=3, min_seconds=0.02)
    assert 1e6 < rate < 1e15
