"""A shortened demo: the whole pipeline with tiny budgets, ending in summary.json, plots and the report."""

from __future__ import annotations

import json
import sys

import pytest

from tests.conftest import run_cli

# The default tier runs one RL stage (PPO-Lag) through arena, length bias and report; every RL stage costs ~15 s of
# start-up, so the run with all of them (plain PPO and reward shaping too) is in the slow tier.
ALL_STAGES = ("sft", "reward_model", "cost_model", "ppo", "ppo_lag", "ppo_reward_shaping", "dpo_better", "dpo_safer",
              "safe_dpo", "arena", "length_bias", "report")  # fmt: skip
DEFAULT_TIER_STAGES = ("sft", "reward_model", "cost_model", "ppo_lag", "arena", "length_bias", "report")


@pytest.mark.integration
# Both in the slow tier since 2026-12-01: the default tier measured 988 s on 2 cores with the shorter one in it (126 s);
# `make demo` and `make test-slow` run the pipeline end to end.
@pytest.mark.slow
@pytest.mark.parametrize("stages", [DEFAULT_TIER_STAGES, ALL_STAGES], ids=["ppo_lag", "all"])
def test_shortened_pipeline_writes_summary_report_and_plots(tmp_path, safe_rlhf_cache, stages):
    root = tmp_path / "demo"
    # Hydra needs quotes around list items that contain "=".
    rl = "rl=['train.max_steps=2','train.rollout_batch_size=16','train.mini_batch_size=16','train.micro_batch_size=16']"
    # One fixed lambda for reward shaping: the same code path as several, one RL stage (15 s) less.
    command = [sys.executable, "-m", "safe_rlhf.pipeline", f"output_dir={root}",
               "sft=['train.max_steps=20']", "reward_model=['train.max_steps=10']",
               "cost_model=['train.max_steps=10']", rl, "arena=['generation.max_new_tokens=8']",
               "shaping_lambdas=[2.0]", f"stages=[{','.join(stages)}]", "dpo=['train.max_steps=3']"]  # fmt: skip
    result = run_cli(command, timeout=900)
    assert result.returncode == 0, (result.stdout[-3000:], result.stderr[-3000:])
    # Every stage printed the exact command it ran.
    printed = [stage.replace("ppo_reward_shaping", "ppo_reward_shaping_2") for stage in stages if stage != "report"]
    for stage in printed:
        assert f"] {stage}: " in result.stdout, stage
    summary = json.loads((root / "summary.json").read_text())
    policies = {"sft", "ppo_lag"} | ({"ppo", "shaping_2", "dpo_better", "dpo_safer", "safe_dpo"} if "ppo" in stages
                                     else set())  # fmt: skip
    assert set(summary) == policies
    for values in summary.values():
        for key in ("true_helpfulness", "true_harm_rate", "harm_rate_by_severity", "reward", "cost", "mean_length"):
            assert values[key] is not None, key
    report = (root / "report.md").read_text()
    assert "| ppo_lag |" in report and "curves_ppo_lag.png" in report and "Length bias" in report
    for png in ("plots/curves_ppo_lag.png", "arena/plots/reward_cost_scatter.png", "arena/plots/harm_by_severity.png"):
        assert (root / png).stat().st_size > 1000, png
    assert "python -m safe_rlhf.train --config-name ppo_lag" in (root / "commands.sh").read_text().replace(
        sys.executable, "python"
    )
    # Rerunning skips every finished stage.
    again = run_cli(command, timeout=600)
    assert again.returncode == 0 and again.stdout.count("skipped") >= len(printed)
