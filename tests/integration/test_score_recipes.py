"""Reward and cost models trained on the toy world rank held-out pairs by ground truth; evaluation agrees."""

from __future__ import annotations

import json
import os
import sys

import pytest

from safe_rlhf.distributed import find_free_port
from tests.conftest import run_cli, train_cli
from tests.integration.sft_helpers import read_metrics

FAST = ["logger=none", "train.log_steps=10", "train.eval_steps=0"]


@pytest.fixture(scope="module")
def trained_score_models(tmp_path_factory, safe_rlhf_cache):
    root = tmp_path_factory.mktemp("score")
    runs = {}
    for recipe in ("reward_model", "cost_model"):
        run_dir = root / recipe
        result = train_cli([f"output_dir={run_dir}", *FAST, "train.max_steps=120"], config_name=recipe)
        assert result.returncode == 0, result.stderr[-3000:]
        runs[recipe] = run_dir
    return runs


@pytest.mark.integration
def test_reward_model_ranks_held_out_pairs_by_true_helpfulness(trained_score_models):
    summary = json.loads((trained_score_models["reward_model"] / "eval" / "summary.json").read_text())
    # Chance is 0.5; the labels carry length bias and noise, the ground-truth judge does not.
    assert summary["true_accuracy"] > 0.7, summary
    assert summary["accuracy"] > 0.6, summary
    config = json.loads((trained_score_models["reward_model"] / "model" / "config.json").read_text())
    assert config["safe_rlhf"]["score_type"] == "reward"


@pytest.mark.integration
def test_cost_model_separates_safe_from_unsafe_by_sign(trained_score_models):
    summary = json.loads((trained_score_models["cost_model"] / "eval" / "summary.json").read_text())
    assert summary["true_sign_accuracy"] > 0.85, summary
    assert summary["accuracy_safe_vs_unsafe"] > 0.85, summary
    assert set(summary["sign_accuracy_by_severity"]) == {"0", "1", "2", "3"}
    config = json.loads((trained_score_models["cost_model"] / "model" / "config.json").read_text())
    assert config["safe_rlhf"]["sign_convention"].startswith("cost > 0 means unsafe")
    assert config["safe_rlhf"]["normalizer"]["count"] > 0


@pytest.mark.integration
def test_evaluate_cli_reproduces_the_training_evaluation(trained_score_models, tmp_path):
    run_dir = trained_score_models["cost_model"]
    result = run_cli([sys.executable, "-m", "safe_rlhf.evaluate", "--config-name", "score_model",
                      f"model.name_or_path={run_dir / 'model'}", f"output_dir={tmp_path / 'eval'}"])  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    evaluated = json.loads((tmp_path / "eval" / "summary.json").read_text())
    trained = json.loads((run_dir / "eval" / "summary.json").read_text())
    assert evaluated["score_type"] == "cost"  # read from the model's config
    assert evaluated["sign_accuracy"] == pytest.approx(trained["sign_accuracy"], abs=1e-9)
    assert evaluated["accuracy"] == pytest.approx(trained["accuracy"], abs=1e-9)
    lines = (tmp_path / "eval" / "scores.jsonl").read_text().splitlines()
    assert len(lines) == evaluated["num_pairs"] == trained["num_pairs"]


@pytest.mark.distributed
# Slow tier (make test's budget): the default tier keeps 2-rank ZeRO-3 SFT (export consolidation), PPO-Lag (uneven
# generation) and the 2-rank normalizer gather; this adds the uneven sharding of held-out pairs over ranks.
@pytest.mark.slow
def test_two_rank_zero3_cost_model(tmp_path, safe_rlhf_cache):
    run_dir = tmp_path / "cost-z3"
    deepspeed = os.path.join(os.path.dirname(sys.executable), "deepspeed")
    command = [deepspeed, "--num_gpus", "2", "--master_port", str(find_free_port()), "--module", "safe_rlhf.train",
               "--config-name", "cost_model", f"output_dir={run_dir}", "deepspeed=zero3", *FAST,
               "train.max_steps=6", "train.batch_size=16", "train.micro_batch_size=8"]  # fmt: skip
    result = run_cli(command, env={"OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, (result.stdout[-2000:], result.stderr[-3000:])
    losses = [m["train/loss"] for m in read_metrics(run_dir) if "train/loss" in m]
    assert losses and all(loss == loss for loss in losses)  # logged and finite (not NaN)
    summary = json.loads((run_dir / "eval" / "summary.json").read_text())
    assert summary["num_pairs"] == 1000  # every held-out pair scored once across the two ranks
    from safe_rlhf.score_model import load_score_model

    assert load_score_model(str(run_dir / "model")).config.safe_rlhf["score_type"] == "cost"


@pytest.mark.integration
def test_multi_attribute_regression_reward_model_runs_and_records_attributes(tmp_path, safe_rlhf_cache):
    run_dir = tmp_path / "helpsteer"
    names = "[helpfulness,correctness,coherence,complexity,verbosity]"
    result = train_cli(
        [
            f"output_dir={run_dir}",
            "logger=none",
            "data.train=helpsteer:tests/fixtures/data/helpsteer.jsonl",
            "data.eval=null",
            "data.eval_fraction=0.0",
            "score.objective=regression",
            "score.score_dim=5",
            f"score.attribute_names={names}",
            "score.attribute_weights=[0.65,0.8,0.45,0.55,-0.4]",
            "train.batch_size=2",
            "train.micro_batch_size=1",
            "train.epochs=3",
            "train.log_steps=1",
            "train.eval_steps=0",
        ],
        config_name="reward_model",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [m for m in read_metrics(run_dir) if "train/loss" in m]
    assert len(rows) == 3 and all(f"train/mse_{n}" in rows[0] for n in ("helpfulness", "verbosity"))
    config = json.loads((run_dir / "model" / "config.json").read_text())
    assert len(config["id2label"]) == 5  # five outputs in the saved head
    assert config["safe_rlhf"]["attribute_names"][0] == "helpfulness"
    assert config["safe_rlhf"]["attribute_weights"][-1] == -0.4
