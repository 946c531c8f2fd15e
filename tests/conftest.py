"""Shared test set-up: an isolated cache per session and skipping of GPU tests without CUDA."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent

# Quiet, offline, and two ranks on two cores do not oversubscribe.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    import torch

    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def safe_rlhf_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache (tiny model, toy world) for the whole test session, shared with subprocesses through the env."""
    # SAFE_RLHF_TEST_CACHE reuses a cache between sessions (handy locally); by default each session builds its own.
    configured = os.environ.get("SAFE_RLHF_TEST_CACHE")
    path = Path(configured) if configured else tmp_path_factory.mktemp("cache")
    os.environ["SAFE_RLHF_CACHE"] = str(path)
    return path


def run_cli(args: list[str], *, cwd: Path | None = None, timeout: int = 600, env: dict | None = None):
    """Run a command with the test environment; returns CompletedProcess (text)."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    full_env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + full_env.get("PYTHONPATH", "")
    return subprocess.run(
        args, cwd=cwd or REPO_ROOT, env=full_env, capture_output=True, text=True, timeout=timeout, check=False
    )


def train_cli(overrides: list[str], *, config_name: str = "sft", timeout: int = 600, env: dict | None = None):
    return run_cli(
        [sys.executable, "-m", "safe_rlhf.train", "--config-name", config_name, *overrides], timeout=timeout, env=env
    )
