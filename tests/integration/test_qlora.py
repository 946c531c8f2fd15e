"""QLoRA (model.lora.quantize_base=4bit) on CPU with bitsandbytes: SFT trains adapters over a 4-bit NF4 base and
exports a plain, dequantized and merged model; DPO's reference is the adapter-disabled 4-bit base; PPO-Lag's actor
runs over a 4-bit base (slow tier)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from tests.conftest import train_cli
from tests.integration.ppo_helpers import ppo_overrides
from tests.integration.sft_helpers import read_metrics

pytest.importorskip("bitsandbytes")

QLORA = ["model.lora.enabled=true", "model.lora.quantize_base=4bit", "model.lora.rank=4"]


def _dequantized_base() -> dict:
    """The tiny base as QLoRA sees it: loaded in 4-bit NF4 and dequantized again (in this process, no DeepSpeed)."""
    import torch
    from transformers import AutoModelForCausalLM

    from safe_rlhf.assets import resolve_model_path
    from safe_rlhf.lora import dequantized_state_dict, quantization_config

    model = AutoModelForCausalLM.from_pretrained(resolve_model_path("tiny"), dtype=torch.float32,
                                                 quantization_config=quantization_config(torch.float32))  # fmt: skip
    return dequantized_state_dict(model)


@pytest.mark.integration
def test_qlora_sft_trains_adapters_over_a_4bit_base_and_exports_a_plain_merged_model(tmp_path, safe_rlhf_cache):
    import torch
    from safetensors.torch import load_file

    run_dir = tmp_path / "sft"
    overrides = [f"output_dir={run_dir}", *QLORA, "logger=none", "train.max_steps=4", "train.batch_size=8",
                 "train.micro_batch_size=4", "train.eval_steps=0", "train.log_steps=1", "optim.lr=1e-2",
                 "data.train=toyworld:sft*0.02", "train.save_steps=2"]  # fmt: skip
    result = train_cli(overrides)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "LoRA: " in result.stdout + result.stderr
    losses = [m["train/loss"] for m in read_metrics(run_dir) if "train/loss" in m]
    assert len(losses) == 4 and losses[-1] < losses[0], losses
    config = json.loads((run_dir / "model" / "config.json").read_text())
    assert "quantization_config" not in config  # a plain model: from_pretrained needs no bitsandbytes
    exported = load_file(run_dir / "model" / "model.safetensors")
    base = _dequantized_base()
    assert sorted(exported) == sorted(base)
    # Each linear layer is the dequantized 4-bit base plus (alpha / rank) B A: a difference of rank <= 4, not zero.
    for name in ("model.layers.0.self_attn.q_proj.weight", "model.layers.1.mlp.down_proj.weight"):
        assert exported[name].shape == base[name].shape
        delta = exported[name] - base[name]
        assert delta.abs().max() > 0, name
        assert int(torch.linalg.matrix_rank(delta, atol=1e-6)) <= 4, name
    # Embeddings and norms are not quantized and not adapted: exactly the base's.
    assert exported["model.embed_tokens.weight"].equal(base["model.embed_tokens.weight"])
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(run_dir / "model")
    assert model(input_ids=torch.tensor([[5, 6, 7]])).logits.isfinite().all()
    # Resume from the step-2 checkpoint (its state holds bitsandbytes' quantization entries): steps 3-4 again, the
    # same losses to the bit.
    resumed = train_cli([*overrides, f"train.resume={run_dir / 'checkpoints' / 'step-2'}"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    again = [m["train/loss"] for m in read_metrics(run_dir) if "train/loss" in m][4:]
    assert again == losses[2:], (again, losses)


# The slow tier: the adapters-off reference is covered in the default tier by test_lora.py's DPO test (make test is near
# its budget); this adds only the 4-bit base under it.
@pytest.mark.slow
@pytest.mark.integration
def test_qlora_dpo_reference_is_the_adapter_disabled_4bit_base(tmp_path, safe_rlhf_cache):
    run_dir = tmp_path / "dpo"
    result = train_cli([f"output_dir={run_dir}", "model.name_or_path=tiny", *QLORA, "logger=none",
                        "train.max_steps=2", "train.batch_size=8", "train.micro_batch_size=4", "train.log_steps=1",
                        "train.eval_steps=0", "data.train=toyworld:preference*0.02", "data.eval=null"],
                       config_name="dpo")  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "frozen base (LoRA adapters disabled), no second copy" in result.stdout + result.stderr
    steps = {int(m["step"]): m for m in read_metrics(run_dir) if "train/loss" in m}
    # Step 1: B = 0, so the policy is exactly its 4-bit base, the reference: h = 0 for every pair, loss ln 2.
    assert steps[1]["train/loss"] == pytest.approx(math.log(2.0), abs=1e-5)
    assert steps[2]["train/loss"] != pytest.approx(math.log(2.0), abs=1e-6)


@pytest.mark.slow
@pytest.mark.integration
def test_qlora_ppo_lag_actor_over_a_4bit_base(tmp_path, safe_rlhf_cache):
    run_dir = tmp_path / "ppo_lag"
    overrides = [f"output_dir={run_dir}", *ppo_overrides(tmp_path / "inputs"), "actor.lora.enabled=true",
                 "actor.lora.quantize_base=4bit", "train.max_steps=2", "train.export=true"]  # fmt: skip
    result = train_cli(overrides, config_name="ppo_lag")
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [m for m in read_metrics(run_dir) if "train/actor_loss" in m]
    assert len(rows) == 2 and all(math.isfinite(r["train/actor_loss"]) for r in rows)
    # Iteration 1 samples from the policy that is its own reference: the KL to it is 0.
    assert rows[0]["train/kl"] == pytest.approx(0.0, abs=1e-5)
    assert "quantization_config" not in json.loads(Path(run_dir, "model", "config.json").read_text())
