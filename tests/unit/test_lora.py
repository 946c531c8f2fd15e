"""LoRA: the merge against hand-derived numbers, and on real tiny models (a Linear Llama and a Conv1D GPT-2) the merged
export computing what the adapted model computes, the adapters-off model computing what the base does."""

from __future__ import annotations

import pytest
import torch

from safe_rlhf.config import ConfigError, LoraConfig
from safe_rlhf.lora import adapters_disabled, apply_lora, is_lora, lora_scalings, merge_lora_state_dict

pytestmark = pytest.mark.unit


def test_merge_adds_the_scaled_low_rank_product_by_hand():
    # W = I (out 2 x in 2), A = [[1, 2]] (rank 1 x in 2), B = [[1], [0]] (out 2 x rank 1), scaling 2:
    # B @ A = [[1, 2], [0, 0]], so W' = I + 2 [[1, 2], [0, 0]] = [[3, 4], [0, 1]]; a fan_in_fan_out (Conv1D) layer
    # stores W as (in, out) and gets the transpose, [[3, 0], [4, 1]].
    state = {
        "base_model.model.layer.base_layer.weight": torch.eye(2),
        "base_model.model.layer.base_layer.bias": torch.tensor([0.5, -0.5]),
        "base_model.model.layer.lora_A.default.weight": torch.tensor([[1.0, 2.0]]),
        "base_model.model.layer.lora_B.default.weight": torch.tensor([[1.0], [0.0]]),
        "base_model.model.norm.weight": torch.ones(2),
    }
    merged = merge_lora_state_dict(state, {"base_model.model.layer": (2.0, False)})
    assert sorted(merged) == ["layer.bias", "layer.weight", "norm.weight"]
    torch.testing.assert_close(merged["layer.weight"], torch.tensor([[3.0, 4.0], [0.0, 1.0]]))
    torch.testing.assert_close(merged["layer.bias"], torch.tensor([0.5, -0.5]))
    transposed = merge_lora_state_dict(state, {"base_model.model.layer": (2.0, True)})
    torch.testing.assert_close(transposed["layer.weight"], torch.tensor([[3.0, 0.0], [4.0, 1.0]]))
    # bf16 weights merge in float32 and come back as bf16
    state["base_model.model.layer.base_layer.weight"] = torch.eye(2, dtype=torch.bfloat16)
    assert merge_lora_state_dict(state, {"base_model.model.layer": (2.0, False)})["layer.weight"].dtype == (
        torch.bfloat16
    )


def test_lora_settings_are_checked_at_start_up():
    with pytest.raises(ConfigError, match=r"lora\.rank=0 must be > 0"):
        LoraConfig(enabled=True, rank=0)
    with pytest.raises(ConfigError, match=r"lora\.target_modules is empty"):
        LoraConfig(enabled=True, target_modules=[])


@pytest.mark.parametrize("architecture", ["llama", "gpt2"])
def test_merged_export_matches_the_adapted_model_and_disabled_adapters_the_base(tmp_path, architecture):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    from safe_rlhf.assets import build_tiny_model
    from safe_rlhf.score_model import score_head

    directory = build_tiny_model(tmp_path / architecture, architecture=architecture, vocab_size=64)
    ids = torch.randint(3, 64, (2, 9), generator=torch.Generator().manual_seed(0))
    base = AutoModelForCausalLM.from_pretrained(directory).eval()
    with torch.no_grad():
        base_logits = base(input_ids=ids).logits
    model = apply_lora(AutoModelForCausalLM.from_pretrained(directory), LoraConfig(enabled=True, rank=4, alpha=8))
    assert is_lora(model) and not is_lora(base)
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_A." in name or ".lora_B." in name for name in trainable)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, base_logits)  # B = 0 at the start
        for name, parameter in model.named_parameters():  # what training would do: move the adapters
            if ".lora_B." in name:
                parameter.normal_(0.0, 0.5)
        adapted_logits = model(input_ids=ids).logits
        with adapters_disabled(model):
            torch.testing.assert_close(model(input_ids=ids).logits, base_logits)
    assert (adapted_logits - base_logits).abs().max() > 1e-3
    scalings = lora_scalings(model)
    assert scalings and all(scaling == 2.0 for scaling, _ in scalings.values())  # alpha / rank
    assert all(fan_in_fan_out == (architecture == "gpt2") for _, fan_in_fan_out in scalings.values())
    merged = merge_lora_state_dict(model.state_dict(), scalings)
    plain = AutoModelForCausalLM.from_pretrained(directory)
    missing, unexpected = plain.load_state_dict(merged, strict=False)
    assert not unexpected and all("lm_head" in key for key in missing), (missing, unexpected)  # lm_head: tied
    with torch.no_grad():
        torch.testing.assert_close(plain.eval()(input_ids=ids).logits, adapted_logits, atol=1e-5, rtol=1e-4)

    # a score model: the head has no adapter and is trained in full
    score_model = apply_lora(
        AutoModelForSequenceClassification.from_pretrained(directory, num_labels=1),
        LoraConfig(enabled=True),
        score_model=True,
    )
    assert isinstance(score_head(score_model), torch.nn.Linear)
    assert score_head(score_model).weight.requires_grad
    assert not any("score" in name for name in lora_scalings(score_model))
