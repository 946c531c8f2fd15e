"""DeepSpeed config translation, the learning-rate schedule and the deterministic batch schedule."""

from __future__ import annotations

import math

import pytest

from safe_rlhf.config import DeepSpeedConfig
from safe_rlhf.engines import deepspeed_config, lr_lambda
from safe_rlhf.recipes.common import BatchSchedule, split_train_eval, total_steps

pytestmark = pytest.mark.unit


def test_zero3_with_full_offload():
    config = deepspeed_config(
        DeepSpeedConfig(zero_stage=3, offload="all", precision="bf16", gradient_clipping=0.5),
        micro_batch_size=4,
        gradient_accumulation_steps=2,
    )
    zero = config["zero_optimization"]
    assert zero["stage"] == 3
    assert zero["offload_optimizer"]["device"] == "cpu"
    assert zero["offload_param"]["device"] == "cpu"
    assert zero["stage3_gather_16bit_weights_on_model_save"] is True
    assert config["bf16"]["enabled"] is True and config["fp16"]["enabled"] is False
    assert config["train_micro_batch_size_per_gpu"] == 4
    assert config["gradient_accumulation_steps"] == 2
    assert config["gradient_clipping"] == 0.5


def test_frozen_engine_has_no_optimizer_settings():
    # A frozen model under ZeRO-2 needs no sharding at all (no optimizer states or gradients): stage 0, no clipping.
    frozen = deepspeed_config(
        DeepSpeedConfig(zero_stage=2, offload="optimizer"),
        micro_batch_size=8,
        gradient_accumulation_steps=4,
        trainable=False,
    )
    assert frozen["zero_optimization"] == {"stage": 0}
    assert frozen["gradient_accumulation_steps"] == 1
    assert "gradient_clipping" not in frozen
    # Under ZeRO-3 a frozen model stays partitioned (that is what makes 70B reference models fit).
    frozen3 = deepspeed_config(
        DeepSpeedConfig(zero_stage=3), micro_batch_size=8, gradient_accumulation_steps=1, trainable=False
    )
    assert frozen3["zero_optimization"]["stage"] == 3


def test_cosine_schedule_with_warmup():
    factor = lr_lambda("cosine", total_steps=10, warmup_steps=2)
    # warm-up: (step + 1) / 2 -> 0.5, 1.0; then cosine over the remaining 8 steps: step 2 -> progress 0 -> 1.0,
    # step 6 -> progress 4/8 -> 0.5 * (1 + cos(pi/2)) = 0.5, step 10 -> progress 1 -> 0.
    assert factor(0) == pytest.approx(0.5)
    assert factor(1) == pytest.approx(1.0)
    assert factor(2) == pytest.approx(1.0)
    assert factor(6) == pytest.approx(0.5)
    assert factor(10) == pytest.approx(0.0, abs=1e-12)
    assert lr_lambda("linear", 10, 0)(5) == pytest.approx(0.5)
    assert lr_lambda("constant", 10, 0)(9) == 1.0
    assert lr_lambda("cosine", 4, 0)(1) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))


def test_batch_schedule_covers_each_sample_once_per_epoch_across_ranks():
    schedules = [
        BatchSchedule(num_samples=50, batch_size=8, micro_batch_size=2, world_size=2, rank=r, seed=3) for r in (0, 1)
    ]
    assert schedules[0].steps_per_epoch == 6  # 50 // 8; the last 2 samples of each epoch are dropped
    assert schedules[0].gradient_accumulation_steps == 2
    seen = []
    for step in range(6):
        per_rank = [s.rank_indices(step) for s in schedules]
        for micro_batches in per_rank:
            assert [len(m) for m in micro_batches] == [2, 2]
        seen += [i for micro_batches in per_rank for m in micro_batches for i in m]
    assert len(seen) == len(set(seen)) == 48
    # Epoch 2 uses a different order, and the schedule is a pure function of the step (what makes resume exact).
    assert schedules[0].rank_indices(6) != schedules[0].rank_indices(0)
    again = BatchSchedule(num_samples=50, batch_size=8, micro_batch_size=2, world_size=2, rank=1, seed=3)
    assert again.rank_indices(7) == schedules[1].rank_indices(7)


def test_total_steps_and_split():
    assert total_steps(100, 16, 2, -1) == 12
    assert total_steps(100, 16, 2, 5) == 5
    with pytest.raises(ValueError, match="no full batch"):
        total_steps(10, 16, 1, -1)
    train, held_out = split_train_eval(list(range(100)), 0.1, seed=0)
    assert len(held_out) == 10 and len(train) == 90 and not set(train) & set(held_out)
    assert split_train_eval(list(range(100)), 0.1, seed=0) == (train, held_out)


@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
def test_disable_dropout_also_zeroes_attention_dropout_copied_by_modules(attn_implementation):
    # Llama's attention copies config.attention_dropout into `self.attention_dropout` at construction and uses it in
    # train mode (eager: nn.functional.dropout on the weights; sdpa: dropout_p), so zeroing the config is not enough.
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from safe_rlhf.engines import disable_dropout

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=4, max_position_embeddings=32, attention_dropout=0.1,
    )  # fmt: skip
    config._attn_implementation = attn_implementation
    model = LlamaForCausalLM(config)
    disable_dropout(model)
    assert all(layer.self_attn.attention_dropout == 0.0 for layer in model.model.layers)
    model.train()
    ids = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        first = model(input_ids=ids).logits
        second = model(input_ids=ids).logits
    assert torch.equal(first, second)


def test_disable_dropout_leaves_dropout_submodules_and_non_float_attributes_alone():
    import torch

    from safe_rlhf.engines import disable_dropout

    class Block(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.dropout = torch.nn.Dropout(0.3)  # a module under a dropout-like name: p is zeroed, module kept
            self.attn_dropout = 0.2
            self.hidden_dropout = True  # a flag, not a probability
            self.resid_pdrop = 0  # an int 0 stays as it is

    block = Block()
    disable_dropout(block)
    assert isinstance(block.dropout, torch.nn.Dropout) and block.dropout.p == 0.0
    assert block.attn_dropout == 0.0
    assert block.hidden_dropout is True and block.resid_pdrop == 0
