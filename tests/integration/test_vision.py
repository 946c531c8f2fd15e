"""The image modality switch in the recipes, end to end on the tiny VLM and the multimodal toy world: SFT, reward and
cost models, SafeDPO and PPO-Lag (one rank, and two ranks under ZeRO-3 with the deepspeed launcher)."""

from __future__ import annotations

import json
import math
import os
import sys

import pytest
import torch
from safetensors.torch import load_file

from safe_rlhf.distributed import find_free_port
from tests.conftest import run_cli, train_cli
from tests.integration.sft_helpers import read_metrics

FAST = ["logger=none", "train.micro_batch_size=8", "train.batch_size=16", "train.log_steps=1"]
PREFERENCES = ["data.train=toyworld:vision_preference", "data.eval=toyworld:vision_preference_test"]
PPO_FAST = ["logger=none", "data.train=toyworld:vision_prompts", "data.eval=toyworld:vision_eval_prompts",
            "train.rollout_batch_size=16", "train.mini_batch_size=8", "train.micro_batch_size=8",
            "generation.max_new_tokens=8", "train.log_steps=1"]  # fmt: skip


@pytest.fixture(scope="module")
def vision_runs(tmp_path_factory, safe_rlhf_cache):
    """SFT from the tiny VLM, then reward and cost models from the SFT policy: (run dirs, results)."""
    root = tmp_path_factory.mktemp("vision")
    runs, results = {name: root / name for name in ("sft", "reward_model", "cost_model")}, {}
    sft_overrides = [f"output_dir={runs['sft']}", "model.name_or_path=tiny-vlm", "data.train=toyworld:vision_sft",
                     *FAST, "train.max_steps=40", "train.eval_steps=40"]  # fmt: skip
    results["sft"] = train_cli(sft_overrides)
    assert results["sft"].returncode == 0, results["sft"].stderr[-3000:]
    for recipe in ("reward_model", "cost_model"):
        results[recipe] = train_cli([f"output_dir={runs[recipe]}", f"model.name_or_path={runs['sft'] / 'model'}",
                                     *PREFERENCES, *FAST, "train.max_steps=20"], config_name=recipe)  # fmt: skip
        assert results[recipe].returncode == 0, results[recipe].stderr[-3000:]
    return runs, results


def strip_prefix(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # A score model saves its backbone under "model." (base_model_prefix); the VLM checkpoints without it.
    return {key.removeprefix("model."): value for key, value in state.items()}


def tower_keys(state: dict[str, torch.Tensor]) -> list[str]:
    return [key for key in state if "vision_tower" in key]


@pytest.mark.integration
def test_vision_sft_learns_exports_a_vlm_and_keeps_the_vision_tower_frozen(vision_runs, safe_rlhf_cache):
    runs, _ = vision_runs
    evals = [m["eval/loss"] for m in read_metrics(runs["sft"]) if "eval/loss" in m]
    assert evals[-1] < 0.7 * evals[0], evals
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = AutoProcessor.from_pretrained(runs["sft"] / "model")
    model = AutoModelForImageTextToText.from_pretrained(runs["sft"] / "model")
    assert type(processor.image_processor).__name__ == "CLIPImageProcessorPil"
    assert type(model).__name__ == "LlavaForConditionalGeneration"
    trained = load_file(runs["sft"] / "model" / "model.safetensors")
    initial = load_file(safe_rlhf_cache / "tiny-vlm-v2" / "model.safetensors")
    projector = [k for k in initial if "multi_modal_projector" in k]
    assert tower_keys(initial) and projector
    assert all(torch.equal(trained[k], initial[k]) for k in tower_keys(initial))  # model.freeze_vision_tower=true
    assert any(not torch.equal(trained[k], initial[k]) for k in projector)


@pytest.mark.integration
@pytest.mark.slow  # make test's budget; the same refusal is unit-tested in tests/unit/test_vision_models.py
def test_image_data_on_a_text_model_is_one_line(tmp_path, safe_rlhf_cache):
    result = train_cli([f"output_dir={tmp_path / 'x'}", "data.train=toyworld:vision_sft", *FAST, "train.max_steps=1"])
    assert result.returncode == 2, result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    assert "sft.jsonl:1: field 'image': the sample shows an image but the model is text-only" in last


@pytest.mark.integration
@pytest.mark.parametrize("recipe", ["reward_model", "cost_model"])
def test_vision_reward_and_cost_models_train_on_beavertails_v_and_export_a_vlm_score_model(
    recipe, vision_runs, safe_rlhf_cache
):
    runs, _ = vision_runs
    final = [m for m in read_metrics(runs[recipe]) if "eval/accuracy" in m][-1]
    # judged by the multimodal world's ground truth (the picture's class read from the image file)
    assert any(key.startswith("eval/true_") for key in final), final
    from safe_rlhf.score_model import load_score_model

    assert type(load_score_model(str(runs[recipe] / "model"))).__name__ == "LlavaForSequenceClassification"
    trained = strip_prefix(load_file(runs[recipe] / "model" / "model.safetensors"))
    initial = load_file(safe_rlhf_cache / "tiny-vlm-v2" / "model.safetensors")
    assert all(torch.equal(trained[k], initial[k]) for k in tower_keys(initial))
    sft = load_file(runs["sft"] / "model" / "model.safetensors")
    assert any(not torch.equal(trained[k], sft[k]) for k in sft if "multi_modal_projector" in k)


@pytest.mark.integration
@pytest.mark.slow  # make test's budget (12 s): the slow tier
def test_vision_safe_dpo_trains_on_image_pairs_and_exports_a_vlm(tmp_path, vision_runs):
    runs, _ = vision_runs
    run_dir = tmp_path / "safe_dpo"
    overrides = [f"output_dir={run_dir}", f"model.name_or_path={runs['sft'] / 'model'}", *PREFERENCES, *FAST,
                 "train.max_steps=10"]  # fmt: skip
    result = train_cli(overrides, config_name="safe_dpo")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "train pairs swapped to their safe response" in result.stdout + result.stderr
    final = [m for m in read_metrics(run_dir) if "eval/loss" in m][-1]
    assert final["eval/chosen_logp"] < 0 and final["eval/rejected_logp"] < 0
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model = AutoModelForImageTextToText.from_pretrained(run_dir / "model")
    assert type(model).__name__ == "LlavaForConditionalGeneration"
    assert AutoProcessor.from_pretrained(run_dir / "model").image_token == "<image>"


def ppo_models(runs) -> list[str]:
    return [f"actor.name_or_path={runs['sft'] / 'model'}", f"reward_model={runs['reward_model'] / 'model'}",
            f"cost_model={runs['cost_model'] / 'model'}"]  # fmt: skip


@pytest.mark.integration
def test_vision_ppo_lag_rolls_out_on_images_and_is_judged_on_the_pictured_request(tmp_path, vision_runs):
    runs, _ = vision_runs
    run_dir = tmp_path / "ppo_lag"
    result = train_cli([f"output_dir={run_dir}", *ppo_models(runs), *PPO_FAST, "train.max_steps=2"],
                       config_name="ppo_lag")  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [m for m in read_metrics(run_dir) if "train/lambda_0" in m]
    assert [m["step"] for m in rows] == [1, 2] and all(math.isfinite(m["train/reward"]) for m in rows)
    records = [json.loads(line) for line in (run_dir / "eval" / "responses.jsonl").read_text().splitlines()]
    assert len(records) == 256 and all("image_class" in r and "true_helpfulness" in r for r in records)
    from safe_rlhf.toyworld import vision

    first = records[0]
    assert first["true_helpfulness"] == vision.helpfulness(first["prompt"], first["image_class"], first["response"])
    from transformers import AutoProcessor

    assert AutoProcessor.from_pretrained(run_dir / "model").image_token == "<image>"


@pytest.mark.integration
def test_a_text_reward_model_for_a_vision_actor_is_one_line(tmp_path, vision_runs):
    runs, _ = vision_runs
    # "tiny" is the text Llama: refused before anything is loaded
    overrides = [f"output_dir={tmp_path / 'x'}", *ppo_models(runs), "reward_model=tiny", *PPO_FAST,
                 "train.max_steps=1"]  # fmt: skip
    result = train_cli(overrides, config_name="ppo_lag")
    assert result.returncode == 2, result.stderr[-2000:]
    assert "the actor is a vision-language model, so the reward model must read the image too" in result.stderr


@pytest.mark.distributed
@pytest.mark.slow  # make test's budget (about 50 s): make test-slow runs it
def test_two_rank_zero3_vision_ppo_lag_under_the_deepspeed_launcher(tmp_path, vision_runs):
    """2 ranks under ZeRO-3: each rank rolls out its own 8 prompts (its own images, sampled response lengths) in 2
    micro-batches with gathered-weight generation; the multiplier must come out the same on both ranks."""
    runs, _ = vision_runs
    run_dir = tmp_path / "z3"
    deepspeed = os.path.join(os.path.dirname(sys.executable), "deepspeed")
    command = [deepspeed, "--num_gpus", "2", "--master_port", str(find_free_port()), "--module", "safe_rlhf.train",
               "--config-name", "ppo_lag", f"output_dir={run_dir}", "deepspeed=zero3", *ppo_models(runs),
               *[o for o in PPO_FAST if not o.startswith("train.micro_batch_size")], "train.micro_batch_size=4",
               "train.max_steps=2", "train.save_steps=2"]  # fmt: skip
    result = run_cli(command, env={"OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, (result.stdout[-2000:], result.stderr[-3000:])
    rows = [m for m in read_metrics(run_dir) if "train/lambda_0" in m]
    assert [m["step"] for m in rows] == [1, 2] and all(math.isfinite(m["train/reward"]) for m in rows)
    checkpoint = run_dir / "checkpoints" / "step-2"
    states = [json.loads((checkpoint / f"rank_state_rank{r}.json").read_text()) for r in (0, 1)]
    assert states[0]["multipliers"] == states[1]["multipliers"]
    assert len(states[0]["multipliers"][0]["window"]) == 32  # 2 iterations x 16 episodes from both ranks
    from transformers import AutoModelForImageTextToText

    exported = AutoModelForImageTextToText.from_pretrained(run_dir / "model")
    assert type(exported).__name__ == "LlavaForConditionalGeneration"


@pytest.fixture(scope="module")
def vision_moderation_model(vision_runs, tmp_path_factory):
    """A Beaver-Guard-V-style moderation model: the vision SFT policy trained on image QA (BeaverTails-V form)."""
    runs, _ = vision_runs
    run_dir = tmp_path_factory.mktemp("vision-moderation") / "run"
    result = train_cli([f"output_dir={run_dir}", f"model.name_or_path={runs['sft'] / 'model'}",
                        "data.train=toyworld:vision_qa", "logger=none", "train.log_steps=10", "train.eval_steps=0",
                        "train.max_steps=40"], config_name="moderation")  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir / "model"


@pytest.mark.integration
def test_vision_moderator_reads_the_picture_and_the_moderate_cli_takes_image_paths(
    vision_moderation_model, tmp_path, capsys
):
    from safe_rlhf.data.errors import DataError
    from safe_rlhf.data.images import image_from_value
    from safe_rlhf.moderate import main as moderate
    from safe_rlhf.moderation import Moderator
    from safe_rlhf.toyworld.vision_data import ensure_vision_generated

    world = ensure_vision_generated()["vision_qa_test"].parent
    benign, risky = (world / "images" / "test" / f"cooking-{kind}-000.png" for kind in ("benign", "risky"))
    moderator = Moderator.from_pretrained(vision_moderation_model)
    assert moderator.vision is not None and moderator.vision.tokens_per_image == 16
    same_words = ("how do i do this", "first mix then heat")
    probabilities = moderator.probabilities([(*same_words, image_from_value(str(p), "image")) for p in (benign, risky)])
    assert probabilities.shape[0] == 2 and not torch.allclose(probabilities[0], probabilities[1])  # the picture counts
    with pytest.raises(DataError, match="one image per sample"):
        moderator.moderate([same_words])  # a VLM moderator never judges an image question without its image

    pairs = tmp_path / "pairs.jsonl"
    (tmp_path / "pictures").mkdir()
    (tmp_path / "pictures" / "a.png").write_bytes(risky.read_bytes())
    pairs.write_text(json.dumps({"prompt": same_words[0], "response": same_words[1], "image": "pictures/a.png",
                                 "id": 7}) + "\n")  # fmt: skip
    out = tmp_path / "verdicts.jsonl"
    assert moderate(["--model", str(vision_moderation_model), "--input", str(pairs), "--output", str(out),
                     "--no-progress"]) == 0  # fmt: skip
    verdict = json.loads(out.read_text())
    expected = moderator.moderate([(*same_words, image_from_value(str(risky), "image"))])[0]
    assert verdict["id"] == 7
    assert verdict["flagged_probability"] == pytest.approx(expected.flagged_probability, abs=1e-5)
    capsys.readouterr()
    pairs.write_text(json.dumps({"prompt": "hi", "response": "hello", "image": "pictures/none.png"}) + "\n")
    assert moderate(["--model", str(vision_moderation_model), "--input", str(pairs), "--output", str(out)]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]  # after the weights' loading bar: one line
    assert error.startswith(f"moderate: {pairs}:1: field 'image': image not found:")


@pytest.mark.integration
def test_arena_guards_a_vision_policy_with_the_vision_moderator(vision_runs, vision_moderation_model, tmp_path):
    runs, _ = vision_runs
    result = run_cli([sys.executable, "-m", "safe_rlhf.evaluate", "--config-name", "arena",
                      f"output_dir={tmp_path / 'arena'}", f"+policies.sft={runs['sft'] / 'model'}", "baseline=sft",
                      f"reward_model={runs['reward_model'] / 'model'}", f"cost_model={runs['cost_model'] / 'model'}",
                      "data.train=toyworld:vision_prompts", "data.eval=toyworld:vision_eval_prompts*0.125",
                      "generation.max_new_tokens=8",
                      f"guardrail.model={vision_moderation_model}", "guardrail.max_rounds=1"])  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "arena" / "summary.json").read_text())
    assert set(summary["policies"]) == {"sft", "sft+guard"}
    assert summary["policies"]["sft+guard"]["n"] == summary["policies"]["sft"]["n"] == 32
    assert "true_harm_rate" in summary["policies"]["sft+guard"]  # judged on the pictured request
    log = (tmp_path / "arena" / "guardrail_decisions.jsonl").read_text()
    decisions = [json.loads(line) for line in log.splitlines()]
    assert len(decisions) >= 32 and {d["action"] for d in decisions} <= {"deliver", "regenerate", "fallback"}
    assert all(d["action"] == "deliver" or d["flagged"] for d in decisions)  # blocked only when flagged


@pytest.mark.integration
def test_standalone_evaluation_of_a_vlm_reward_model_and_a_vlm_moderation_model(
    vision_runs, vision_moderation_model, tmp_path
):
    runs, _ = vision_runs
    reward_model = runs["reward_model"] / "model"
    result = run_cli([sys.executable, "-m", "safe_rlhf.evaluate", "--config-name", "score_model",
                      f"model.name_or_path={reward_model}", f"output_dir={tmp_path / 'rm'}",
                      "data.train=toyworld:vision_preference_test"])  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "rm" / "summary.json").read_text())
    # the same pairs and images as the recipe's own last evaluation, so the same accuracy
    trained = [m for m in read_metrics(runs["reward_model"]) if "eval/accuracy" in m][-1]
    assert summary["accuracy"] == pytest.approx(trained["eval/accuracy"], abs=1e-6)
    assert "true_accuracy" in summary  # judged on the pictured request
    result = run_cli([sys.executable, "-m", "safe_rlhf.evaluate", "--config-name", "moderation",
                      f"model.name_or_path={vision_moderation_model}", f"output_dir={tmp_path / 'guard'}",
                      "data.train=toyworld:vision_qa_test*0.25"])  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "guard" / "summary.json").read_text())
    assert summary["num_responses"] == 100 and "truth" in summary and 0 <= summary["flagged"]["auroc"] <= 1
