"""Metrics to the console (progress bar), wandb, tensorboard, and always ``metrics.jsonl`` in the run directory.

Only rank 0 logs; other ranks get the same object whose methods do nothing. The run directory also receives the
resolved config (``config.yaml``, secrets redacted) and the exact command (``command.txt``).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import sys
import time
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

from safe_rlhf import distributed

_SECRET_KEY = re.compile(r"(api[_-]?key|token|secret|password|passwd|credential)", re.IGNORECASE)
_SECRET_ENV = ("WANDB_API_KEY", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")


def redact(value: Any) -> Any:
    """A copy with every value under a secret-looking key replaced by '***' (config dumps must never hold secrets)."""
    if isinstance(value, dict):
        return {
            k: ("***" if _SECRET_KEY.search(str(k)) and v not in (None, "") else redact(v)) for k, v in value.items()
        }
    if isinstance(value, list):
        return [redact(item) for item in value]
    if isinstance(value, str):
        for name in _SECRET_ENV:
            secret = os.environ.get(name)
            if secret and len(secret) >= 8 and secret in value:
                value = value.replace(secret, "***")
    return value


def config_to_dict(config: Any) -> dict[str, Any]:
    return asdict(config) if is_dataclass(config) and not isinstance(config, type) else dict(config)


def write_run_files(run_dir: str | Path, config: Any) -> None:
    """Rank 0 writes the resolved config and the exact launch command into the run directory."""
    if not distributed.is_main_process():
        return
    import yaml

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(redact(config_to_dict(config)), sort_keys=False))
    launcher_env = {k: os.environ[k] for k in ("WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if k in os.environ}
    command = " ".join(shlex.quote(arg) for arg in [sys.executable, "-m", "safe_rlhf.train", *sys.argv[1:]])
    lines = [redact(command), *(f"# {k}={v}" for k, v in launcher_env.items())]
    (run_dir / "command.txt").write_text("\n".join(lines) + "\n")


class MetricLogger:
    """``log(metrics, step)`` fans out to the configured backends. Use as a context manager or call ``close()``."""

    def __init__(
        self,
        run_dir: str | Path,
        backends: list[str],
        *,
        project: str = "safe-rlhf",
        run_name: str | None = None,
        wandb_mode: str = "auto",
        config: dict[str, Any] | None = None,
        total_steps: int | None = None,
        description: str = "train",
    ) -> None:
        self.enabled = distributed.is_main_process()
        self.run_dir = Path(run_dir)
        self.backends = list(backends)
        self._wandb_run: Any = None
        self._tensorboard: Any = None
        self._progress: Any = None
        self._metrics_file: Any = None
        self._last_time = time.perf_counter()
        if not self.enabled:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._metrics_file = open(self.run_dir / "metrics.jsonl", "a")
        name = run_name or self.run_dir.name
        if "console" in self.backends:
            from tqdm.auto import tqdm

            self._progress = tqdm(total=total_steps, desc=description, dynamic_ncols=True, file=sys.stderr)
        if "wandb" in self.backends:
            import wandb

            mode = wandb_mode
            if mode == "auto":
                mode = "online" if os.environ.get("WANDB_API_KEY") else "offline"
            self._wandb_run = wandb.init(
                project=project,
                name=name,
                dir=str(self.run_dir),
                mode=mode,  # type: ignore[arg-type]  # checked against the allowed values in LoggerConfig
                config=redact(config or {}),
            )
        if "tensorboard" in self.backends:
            from torch.utils.tensorboard import SummaryWriter

            self._tensorboard = SummaryWriter(log_dir=str(self.run_dir / "tensorboard"))

    def log(self, metrics: dict[str, float], step: int) -> None:
        if not self.enabled:
            return
        clean = {k: float(v) for k, v in metrics.items()}
        self._metrics_file.write(json.dumps({"step": step, **clean}) + "\n")
        self._metrics_file.flush()
        if self._wandb_run is not None:
            self._wandb_run.log(clean, step=step)
        if self._tensorboard is not None:
            for key, value in clean.items():
                self._tensorboard.add_scalar(key, value, step)
        if self._progress is not None:
            shown = {k.split("/")[-1]: f"{v:.4g}" for k, v in list(clean.items())[:6]}
            self._progress.set_postfix(shown, refresh=False)
            self._progress.write(f"step {step}: " + " ".join(f"{k}={v:.5g}" for k, v in clean.items()))

    def advance(self, steps: int = 1) -> None:
        if self._progress is not None:
            self._progress.update(steps)

    def message(self, text: str) -> None:
        if not self.enabled:
            return
        if self._progress is not None:
            self._progress.write(text)
        elif "console" in self.backends:
            print(text, flush=True)

    def close(self) -> None:
        if not self.enabled:
            return
        if self._progress is not None:
            self._progress.close()
        if self._wandb_run is not None:
            self._wandb_run.finish()
        if self._tensorboard is not None:
            self._tensorboard.close()
        if self._metrics_file is not None:
            self._metrics_file.close()

    def __enter__(self) -> MetricLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
