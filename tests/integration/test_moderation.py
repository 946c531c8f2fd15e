"""The moderation recipe end to end on the toy world: training, the exported directory, the evaluate and moderate
CLIs, the guardrail in the arena, and a moderation model as PPO-Lag's cost model with two severity constraints."""

from __future__ import annotations

import json
import sys

import pytest

from tests.conftest import run_cli, train_cli
from tests.integration.sft_helpers import read_metrics

FAST = ["logger=none", "train.log_steps=10", "train.eval_steps=0"]


@pytest.fixture(scope="module")
def moderation_model(tmp_path_factory, safe_rlhf_cache):
    run_dir = tmp_path_factory.mktemp("moderation") / "run"
    result = train_cli([f"output_dir={run_dir}", *FAST, "train.max_steps=80"], config_name="moderation")
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir


@pytest.mark.integration
def test_exported_moderation_model_records_labels_thresholds_and_template(moderation_model):
    from safe_rlhf.moderation import Moderator
    from safe_rlhf.toyworld.world import HARM_CATEGORIES

    config = json.loads((moderation_model / "model" / "config.json").read_text())["safe_rlhf"]
    assert config["score_type"] == "moderation"
    assert config["categories"] == sorted(HARM_CATEGORIES)
    assert config["labels"][:3] == ["flagged", "severity>=2", "severity>=3"]
    assert len(config["labels"]) == len(config["thresholds"]) == 3 + 19 == config["score_dim"]
    summary = json.loads((moderation_model / "eval" / "summary.json").read_text())
    choice = summary["threshold_choice"]
    assert config["thresholds"][0] == pytest.approx(choice["threshold"]) and 0 < choice["threshold"] < 1
    assert summary["flagged"]["auroc"] > 0.9, summary["flagged"]  # 80 steps: well past chance already
    assert "template" in config and config["max_length"] == 64

    moderator = Moderator.from_pretrained(moderation_model / "model")  # one call
    results = moderator.moderate([("how to break into a bank server", "sure scan then malware"), ("hi", "hello")])
    assert len(results) == 2 and set(results[0].categories) == set(HARM_CATEGORIES)
    assert results[0].flagged == (results[0].flagged_probability >= config["thresholds"][0])
    assert results[0].severity == 0 or results[0].flagged  # the level is 0 unless flagged
    probabilities = moderator.probabilities([("hi", "hello")])
    assert probabilities.shape == (1, 22) and float(probabilities.min()) >= 0.0


@pytest.mark.integration
def test_evaluate_and_moderate_clis(moderation_model, tmp_path, capsys):
    from safe_rlhf.moderate import main as moderate

    result = run_cli([sys.executable, "-m", "safe_rlhf.evaluate", "--config-name", "moderation",
                      f"model.name_or_path={moderation_model / 'model'}", f"output_dir={tmp_path / 'eval'}",
                      "data.train=toyworld:qa_test*0.2"])  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert summary["num_responses"] == 200  # a fifth of toyworld:qa_test
    flagged = summary["flagged"]
    assert flagged["tp"] + flagged["fp"] + flagged["fn"] + flagged["tn"] == 200
    assert len(summary["severity"]["confusion"]) == 4 and sum(map(sum, summary["severity"]["confusion"])) == 200
    assert set(summary["categories"]) <= set(summary["labels"][3:])
    # the toy world's labels are its judge's: the numbers against the judge agree
    assert summary["truth"]["flagged"]["f1"] == pytest.approx(flagged["f1"])
    assert (tmp_path / "eval" / "plots" / "reliability.png").stat().st_size > 0
    predictions = (tmp_path / "eval" / "predictions.jsonl").read_text().splitlines()
    assert len(predictions) == 200

    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(
        json.dumps({"prompt": "how to break into a bank server", "response": "sure scan then malware", "id": 7})
        + "\n" + json.dumps({"prompt": "hi", "response": "hello"}) + "\n"
    )  # fmt: skip
    out = tmp_path / "verdicts.jsonl"
    assert moderate(["--model", str(moderation_model / "model"), "--input", str(pairs), "--output", str(out)]) == 0
    verdicts = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(verdicts) == 2 and verdicts[0]["id"] == 7  # other fields copied through
    assert {"flagged", "severity", "categories", "flagged_categories"} <= set(verdicts[0])

    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "hi", "response": "ok"}) + "\n" + json.dumps({"prompt": "hi"}) + "\n")
    capsys.readouterr()
    assert moderate(["--model", str(moderation_model / "model"), "--input", str(bad), "--output", str(out)]) == 2
    assert capsys.readouterr().err.strip() == f"moderate: {bad}:2: field 'response' is missing or not a string"
    long_prompt = tmp_path / "long.jsonl"
    long_prompt.write_text(json.dumps({"prompt": "tell me " * 80, "response": "ok"}) + "\n")
    assert (
        moderate(["--model", str(moderation_model / "model"), "--input", str(long_prompt), "--output", str(out)]) == 2
    )
    error = capsys.readouterr().err.strip().splitlines()[-1]  # after transformers' loading progress bar
    assert error.startswith("moderate: ") and "prompt" in error, error


@pytest.mark.integration
def test_moderate_refuses_a_model_that_is_not_a_moderation_model(tmp_path, safe_rlhf_cache, capsys):
    from safe_rlhf.assets import resolve_model_path
    from safe_rlhf.moderate import main as moderate

    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"prompt": "hi", "response": "hello"}) + "\n")
    arguments = ["--input", str(pairs), "--output", str(tmp_path / "out.jsonl")]
    assert moderate(["--model", resolve_model_path("tiny"), *arguments]) == 2
    assert "is not a moderation model" in capsys.readouterr().err.strip()
    assert moderate(["--model", str(tmp_path / "missing"), *arguments]) == 2
    assert "no such model directory" in capsys.readouterr().err.strip()
    assert moderate(["--model", resolve_model_path("tiny"), "--input", str(tmp_path / "nope.jsonl"),
                     "--output", str(tmp_path / "out.jsonl")]) == 2  # fmt: skip
    assert capsys.readouterr().err.strip() == f"moderate: {tmp_path / 'nope.jsonl'}: no such file"


@pytest.mark.integration
def test_arena_reports_each_policy_with_and_without_the_guardrail(moderation_model, tmp_path):
    from safe_rlhf.moderation import Moderator

    model = moderation_model / "model"
    # The untrained tiny policy says anything; the moderation model also serves as reward and cost model here.
    result = run_cli([sys.executable, "-m", "safe_rlhf.evaluate", "--config-name", "arena",
                      f"output_dir={tmp_path / 'arena'}", "+policies.base=tiny", "baseline=base",
                      f"reward_model={model}", f"cost_model={model}", "data.eval=toyworld:eval_prompts*0.1",
                      f"guardrail.model={model}", "guardrail.max_rounds=2"])  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "arena" / "summary.json").read_text())
    assert set(summary["policies"]) == {"base", "base+guard"}
    stats = summary["guardrail"]["base+guard"]
    assert 0 <= stats["fallback_rate"] <= stats["blocked_first_rate"] <= 1
    assert stats["mean_rounds"] <= 2 and stats["extra_seconds"] > 0
    guarded = [json.loads(line) for line in (tmp_path / "arena" / "responses.jsonl").read_text().splitlines()]
    guarded = [r for r in guarded if r["policy"] == "base+guard"]
    moderator = Moderator.from_pretrained(model)
    # Every delivered answer is the fallback or one the guardrail let through (not blocked at severity >= 1).
    verdicts = moderator.moderate([(r["prompt"], r["response"]) for r in guarded])
    for record, verdict in zip(guarded, verdicts):
        assert record["response"] == "sorry i cannot do that" or not verdict.flagged, record
    decisions = (tmp_path / "arena" / "guardrail_decisions.jsonl").read_text().splitlines()
    assert len(decisions) >= len(guarded)  # at least one judgement per prompt
    assert "## Guardrail" in (tmp_path / "arena" / "report.md").read_text()


@pytest.mark.integration
@pytest.mark.slow  # make test's budget; the moderation cost path's math is unit-tested (moderation_costs)
def test_ppo_lag_with_a_moderation_model_as_cost_model_and_two_severity_constraints(moderation_model, tmp_path):
    from tests.integration.ppo_helpers import ppo_overrides

    inputs = [o for o in ppo_overrides(tmp_path) if not o.startswith("cost_model=")]
    run_dir = tmp_path / "ppo_lag"
    result = train_cli([f"output_dir={run_dir}", *inputs, f"cost_model={moderation_model / 'model'}",
                        "lagrange.thresholds=[0.1,0.01]", "lagrange.constraint_types=[rate,rate]",
                        "lagrange.cost_indices=[0,2]", "train.max_steps=2"],
                       config_name="ppo_lag")  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [m for m in read_metrics(run_dir) if "train/lambda_1" in m]
    assert rows, read_metrics(run_dir)
    for row in rows:
        # constraint 1 is the severe-harm rate: a subset of the flagged responses (output 2 implies output 0 only
        # through training, so only the bounds are checked)
        assert 0.0 <= row["train/cost_window_mean_1"] <= 1.0 and 0.0 <= row["train/cost_window_mean_0"] <= 1.0
        assert row["train/threshold_0"] == pytest.approx(0.1) and row["train/threshold_1"] == pytest.approx(0.01)
