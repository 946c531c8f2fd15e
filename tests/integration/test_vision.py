"""The image modality switch in the recipes, end to end on the tiny VLM and the multimodal toy world."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import train_cli
from tests.integration.sft_helpers import read_metrics

FAST = ["logger=none", "train.micro_batch_size=8", "train.batch_size=16", "train.log_steps=1"]


@pytest.mark.integration
def test_vision_sft_learns_exports_a_vlm_and_keeps_the_vision_tower_frozen(tmp_path, safe_rlhf_cache):
    run_dir = tmp_path / "vsft"
    overrides = [f"output_dir={run_dir}", "model.name_or_path=tiny-vlm", "data.train=toyworld:vision_sft", *FAST,
                 "train.max_steps=40", "train.eval_steps=40"]  # fmt: skip
    result = train_cli(overrides)
    assert result.returncode == 0, result.stderr[-3000:]
    evals = [m["eval/loss"] for m in read_metrics(run_dir) if "eval/loss" in m]
    assert evals[-1] < 0.7 * evals[0], evals
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = AutoProcessor.from_pretrained(run_dir / "model")
    model = AutoModelForImageTextToText.from_pretrained(run_dir / "model")
    assert type(processor.image_processor).__name__ == "CLIPImageProcessorPil"
    assert type(model).__name__ == "LlavaForConditionalGeneration"
    trained = load_file(run_dir / "model" / "model.safetensors")
    initial = load_file(safe_rlhf_cache / "tiny-vlm-v1" / "model.safetensors")
    tower = [k for k in initial if "vision_tower" in k]
    projector = [k for k in initial if "multi_modal_projector" in k]
    assert tower and projector
    assert all(torch.equal(trained[k], initial[k]) for k in tower)  # model.freeze_vision_tower=true (default)
    assert any(not torch.equal(trained[k], initial[k]) for k in projector)


@pytest.mark.integration
def test_image_data_on_a_text_model_is_one_line(tmp_path, safe_rlhf_cache):
    result = train_cli([f"output_dir={tmp_path / 'x'}", "data.train=toyworld:vision_sft", *FAST, "train.max_steps=1"])
    assert result.returncode == 2, result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    assert "sft.jsonl:1: field 'image': the sample shows an image but the model is text-only" in last


@pytest.mark.integration
@pytest.mark.parametrize("recipe", ["reward_model", "cost_model"])
def test_vision_reward_and_cost_models_train_on_beavertails_v_and_export_a_vlm_score_model(
    recipe, tmp_path, safe_rlhf_cache
):
    run_dir = tmp_path / recipe
    overrides = [f"output_dir={run_dir}", "model.name_or_path=tiny-vlm", "data.train=toyworld:vision_preference",
                 "data.eval=toyworld:vision_preference_test", *FAST, "train.max_steps=30"]  # fmt: skip
    result = train_cli(overrides, config_name=recipe)
    assert result.returncode == 0, result.stderr[-3000:]
    final = [m for m in read_metrics(run_dir) if "eval/accuracy" in m][-1]
    # judged by the multimodal world's ground truth (the picture's class read from the image file)
    assert any(key.startswith("eval/true_") for key in final), final
    from safe_rlhf.score_model import load_score_model

    model = load_score_model(str(run_dir / "model"))
    assert type(model).__name__ == "LlavaForSequenceClassification"
    # the score model saves its backbone under "model." (base_model_prefix); the VLM checkpoint without it
    trained = {k.removeprefix("model."): v for k, v in load_file(run_dir / "model" / "model.safetensors").items()}
    initial = load_file(safe_rlhf_cache / "tiny-vlm-v1" / "model.safetensors")
    tower = [k for k in initial if "vision_tower" in k]
    assert tower and all(torch.equal(trained[k], initial[k]) for k in tower)
    assert any(not torch.equal(trained[k], initial[k]) for k in initial if "multi_modal_projector" in k)


@pytest.mark.integration
def test_vision_safe_dpo_trains_on_image_pairs_and_exports_a_vlm(tmp_path, safe_rlhf_cache):
    run_dir = tmp_path / "safe_dpo"
    overrides = [f"output_dir={run_dir}", "model.name_or_path=tiny-vlm", "data.train=toyworld:vision_preference",
                 "data.eval=toyworld:vision_preference_test", *FAST, "train.max_steps=10"]  # fmt: skip
    result = train_cli(overrides, config_name="safe_dpo")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "train pairs swapped to their safe response" in result.stdout + result.stderr
    final = [m for m in read_metrics(run_dir) if "eval/loss" in m][-1]
    assert final["eval/chosen_logp"] < 0 and final["eval/rejected_logp"] < 0
    from transformers import AutoModelForImageTextToText, AutoProcessor

    assert (
        type(AutoModelForImageTextToText.from_pretrained(run_dir / "model")).__name__ == "LlavaForConditionalGeneration"
    )
    assert AutoProcessor.from_pretrained(run_dir / "model").image_token == "<image>"
