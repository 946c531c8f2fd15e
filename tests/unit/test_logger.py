"""Run files: the resolved config and the command are written, and secrets never are."""

from __future__ import annotations

import json
import sys

import pytest

from safe_rlhf.logger import MetricLogger, redact, write_run_files

pytestmark = pytest.mark.unit


def test_secrets_are_redacted_from_config_and_command(tmp_path, monkeypatch):
    secret = "wandb-secret-0123456789"
    monkeypatch.setenv("WANDB_API_KEY", secret)
    monkeypatch.setattr(sys, "argv", ["train.py", "--config-name", "sft", f"logger.note={secret}", "seed=3"])
    config = {
        "seed": 3,
        "logger": {"api_key": "key-value-1", "hf_token": "token-value-2", "project": "p"},
        "note": f"x{secret}y",
    }
    write_run_files(tmp_path, config)
    written = (tmp_path / "config.yaml").read_text() + (tmp_path / "command.txt").read_text()
    assert secret not in written and "key-value-1" not in written and "token-value-2" not in written
    assert "api_key: '***'" in written and "project: p" in written and "seed=3" in written
    assert redact({"password": None, "nested": [{"token": "t"}]}) == {"password": None, "nested": [{"token": "***"}]}


def test_metrics_jsonl_gets_every_logged_step(tmp_path):
    logger = MetricLogger(tmp_path, backends=[])
    logger.log({"train/loss": 1.5}, step=1)
    logger.log({"train/loss": 1.25, "eval/loss": 2.0}, step=2)
    logger.close()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows == [{"step": 1, "train/loss": 1.5}, {"step": 2, "train/loss": 1.25, "eval/loss": 2.0}]
