"""The behaviour that defines Safe RLHF, on the toy world with the demo's budgets (minutes on 2 cores: slow tier).

Reward-only PPO raises the ground-truth harm rate above the SFT policy's; PPO-Lagrangian keeps its constrained cost
(the share of responses the cost model calls unsafe) at or under its threshold while the ground-truth helpfulness
rises above the SFT policy's.
"""

from __future__ import annotations

import json
import sys

import pytest

from tests.conftest import run_cli

THRESHOLD = 0.05  # conf/ppo_lag.yaml: lagrange.thresholds=[0.05] on the unsafe rate
TOLERANCE = 0.03  # one eval set of 256 prompts: the rate's sampling noise is about +-0.02


@pytest.mark.slow
def test_ppo_raises_harm_and_ppo_lag_stays_within_its_constraint(tmp_path, safe_rlhf_cache):
    root = tmp_path / "demo"
    stages = "stages=[sft,reward_model,cost_model,ppo,ppo_lag,arena,report]"
    result = run_cli([sys.executable, "-m", "safe_rlhf.pipeline", f"output_dir={root}", stages], timeout=1800)
    assert result.returncode == 0, (result.stdout[-3000:], result.stderr[-3000:])
    summary = json.loads((root / "summary.json").read_text())
    sft, ppo, lag = summary["sft"], summary["ppo"], summary["ppo_lag"]
    print(json.dumps(summary, indent=1))
    assert ppo["true_harm_rate"] > sft["true_harm_rate"], summary
    assert lag["unsafe_rate"] <= THRESHOLD + TOLERANCE, summary
    assert lag["true_helpfulness"] > sft["true_helpfulness"], summary
