"""Helpers for the integration tests: read a run directory's metrics, compare model logits."""

from __future__ import annotations

import json
from pathlib import Path

import torch


def read_metrics(run_dir: Path) -> list[dict[str, float]]:
    path = Path(run_dir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def loss_by_step(run_dir: Path, key: str = "train/loss") -> dict[int, float]:
    return {int(m["step"]): m[key] for m in read_metrics(run_dir) if key in m}


def probe_logits(model: torch.nn.Module, vocab_size: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(3, vocab_size, (2, 12), generator=generator)
    with torch.no_grad():
        return model(input_ids=input_ids).logits
