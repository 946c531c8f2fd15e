"""The prepared GPU check (make gpu-check): refuses to run without CUDA; its CPU dry run runs every stage."""

from __future__ import annotations

import json
import sys

import pytest
import torch

from tests.conftest import run_cli


@pytest.mark.integration
@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for machines without CUDA")
def test_gpu_check_without_cuda_exits_2_with_one_line(tmp_path, safe_rlhf_cache):
    result = run_cli([sys.executable, "-m", "safe_rlhf.gpu_check", "--root", str(tmp_path)])
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "gpu_check: no CUDA device here; `make gpu-check-dry` runs the same stages on CPU"
    ]
    assert not any(tmp_path.iterdir())  # nothing built before the refusal


# About a minute (three recipes start DeepSpeed one after another): the slow tier; `make gpu-check-dry` is the same.
@pytest.mark.slow
@pytest.mark.integration
def test_gpu_check_dry_run_runs_sft_ppo_lag_and_dpo_under_zero3(tmp_path, safe_rlhf_cache):
    report = tmp_path / "gpu-check.json"
    command = [sys.executable, "-m", "safe_rlhf.gpu_check", "--dry-run", "--root", str(tmp_path / "root"),
               "--json", str(report)]  # fmt: skip
    result = run_cli(command)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "gpu check (dry-run) on cpu" in result.stdout
    figures = json.loads(report.read_text())
    assert set(figures["stages"]) == {"sft", "ppo_lag", "dpo"}
    for name, stage in figures["stages"].items():
        assert stage["tokens_per_second"] > 0 and stage["flops_per_second"] > 0, name
    ppo = figures["stages"]["ppo_lag"]
    assert 0 < ppo["generation_share"] < 1
    assert set(ppo["phase_flops_per_second"]) == {"generation", "scoring", "learning", "iteration"}
    assert ppo["memory"]["estimate_bytes"] > 0  # the PPO recipe's start-up estimate, from the bench worker
    assert figures["matmul_flops_per_second"] > 0 and figures["device"] == "cpu"
    for name in ("sft", "dpo"):  # the recipes' own memory report: measured peak and the start-up estimate
        memory = figures["stages"][name]["memory"]
        assert memory["measured_bytes"] > 0 and memory["estimate_bytes"] > 0, name
        config = (tmp_path / "root" / name / "config.yaml").read_text()
        assert "zero_stage: 3" in config, name
    # 2 x 64 x 64 attention + MLP x 2 layers + the output layer: the FLOP count's N, from the built config
    assert figures["matrix_parameters"] == 2 * (4 * 64 * 64 + 3 * 64 * 172) + 64 * 512
