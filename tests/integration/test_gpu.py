"""GPU checks (skipped without CUDA): bf16 under ZeRO-3 for SFT and one PPO-Lagrangian iteration."""

from __future__ import annotations

import math

import pytest

from tests.conftest import train_cli
from tests.integration.ppo_helpers import ppo_overrides
from tests.integration.sft_helpers import read_metrics

pytestmark = pytest.mark.gpu


def test_bf16_zero3_sft_step_on_gpu(tmp_path, safe_rlhf_cache):
    run_dir = tmp_path / "sft-bf16"
    result = train_cli([f"output_dir={run_dir}", "deepspeed=zero3", "deepspeed.precision=bf16", "logger=none",
                        "train.max_steps=3", "train.eval_steps=0"])  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    losses = [m["train/loss"] for m in read_metrics(run_dir) if "train/loss" in m]
    assert losses and all(math.isfinite(loss) for loss in losses)


def test_bf16_zero3_ppo_lag_iteration_on_gpu(tmp_path, safe_rlhf_cache):
    run_dir = tmp_path / "ppo-bf16"
    result = train_cli([f"output_dir={run_dir}", *ppo_overrides(tmp_path / "inputs"), "deepspeed=zero3",
                        "deepspeed.precision=bf16", "train.max_steps=1"], config_name="ppo_lag")  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [m for m in read_metrics(run_dir) if "train/reward" in m]
    assert rows and math.isfinite(rows[-1]["train/actor_loss"])
