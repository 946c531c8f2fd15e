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

# Config keys whose values are secrets: exact names, compared case-insensitively with a key's last component (a
# substring rule would hide ordinary keys such as model.tokenizer).
SECRET_KEYS = frozenset(
    {
        "api_key", "apikey", "wandb_api_key", "openai_api_key", "hf_token", "hub_token", "huggingface_token", "token",
        "access_token", "auth_token", "bearer_token", "refresh_token", "password", "passwd", "secret", "secret_key",
        "client_secret", "private_key", "credential", "credentials",
    }
)  # fmt: skip
# Environment variables holding secrets: their values are redacted wherever they appear.
SECRET_ENV = ("WANDB_API_KEY", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_API_TOKEN", "OPENAI_API_KEY")
# Token formats recognisable by their prefix (Hugging Face, OpenAI, GitHub, Slack, AWS), redacted in any text even when
# no environment variable names them, e.g. a token pasted into logger.run_name on the command line.
TOKEN_PATTERN = re.compile(
    r"\b(?:hf_[A-Za-z0-9]{20,}|sk-[A-Za-z0-9_-]{20,}|gh[pousr]_[A-Za-z0-9]{20,}|github_pat_[A-Za-z0-9_]{20,}"
    r"|xox[abprs]-[A-Za-z0-9-]{10,}|AKIA[0-9A-Z]{16})"
)
# A secret value shorter than this only hides a value equal to it: replacing every "abc" inside paths would be noise.
MIN_SUBSTRING_SECRET = 6
REDACTED = "***"


def is_secret_key(key: object) -> bool:
    """Whether a config key (dotted or not) names a secret: its last component is one of SECRET_KEYS."""
    return str(key).rsplit(".", 1)[-1].lower() in SECRET_KEYS


def secret_values(config: Any = None) -> frozenset[str]:
    """The secret strings of this run: values of SECRET_ENV variables and of every secret key in ``config``."""
    found = {os.environ[name] for name in SECRET_ENV if os.environ.get(name)}

    def collect(value: Any, under_secret: bool) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                collect(item, under_secret or is_secret_key(key))
        elif isinstance(value, list | tuple):
            for item in value:
                collect(item, under_secret)
        elif under_secret and value is not None and not isinstance(value, bool) and str(value):
            found.add(str(value))

    collect(config, False)
    return frozenset(found)


def redact_text(text: str, secrets: frozenset[str] | None = None) -> str:
    """``text`` with every secret value (see :func:`secret_values`) and every token-shaped string replaced by '***'."""
    secrets = secret_values() if secrets is None else secrets
    if text in secrets:
        return REDACTED
    for secret in sorted(secrets, key=len, reverse=True):  # longest first: a secret containing another is hidden whole
        if len(secret) >= MIN_SUBSTRING_SECRET and secret in text:
            text = text.replace(secret, REDACTED)
    return TOKEN_PATTERN.sub(REDACTED, text)


def redact(value: Any, secrets: frozenset[str] | None = None) -> Any:
    """A copy for writing anywhere: values under secret keys become '***', and so does every secret value inside any
    other string (see :func:`redact_text`). ``secrets`` defaults to the environment's plus those found in ``value``."""
    secrets = secret_values(value) if secrets is None else secrets
    if isinstance(value, dict):
        return {
            k: (REDACTED if is_secret_key(k) and v not in (None, "") else redact(v, secrets)) for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [redact(item, secrets) for item in value]
    if isinstance(value, str):
        return redact_text(value, secrets)
    return value


def config_to_dict(config: Any) -> dict[str, Any]:
    return asdict(config) if is_dataclass(config) and not isinstance(config, type) else dict(config)


def write_run_files(run_dir: str | Path, config: Any) -> None:
    """Rank 0 writes the resolved config and the exact launch command into the run directory.

    Every recipe calls this early in its setup on every rank, which makes it the one place for the run-directory guard
    (:func:`safe_rlhf.rundir.prepare_run_dir`: lock, used-directory refusal, resume config check); the guard runs
    first, so the config of the run being resumed is compared before config.yaml is replaced.
    """
    from safe_rlhf import assets, rundir

    values = config_to_dict(config)
    run_dir = Path(run_dir)
    rundir.prepare_run_dir(run_dir, config)
    assets.remember_config_keys(values)
    if not distributed.is_main_process():
        return
    import yaml

    secrets = secret_values(values)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(redact(values, secrets), sort_keys=False))
    launcher_env = {k: os.environ[k] for k in ("WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if k in os.environ}
    command = " ".join(shlex.quote(arg) for arg in [sys.executable, "-m", "safe_rlhf.train", *sys.argv[1:]])
    lines = [redact_text(command, secrets), *(f"# {k}={v}" for k, v in launcher_env.items())]
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
        # Everything this logger writes (metrics.jsonl, wandb's run name, config and files, console lines) goes through
        # the same redaction as config.yaml, with the secrets of this run's config and environment.
        self._secrets = secret_values(config)
        if not self.enabled:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._metrics_file = open(self.run_dir / "metrics.jsonl", "a")
        name = redact_text(run_name or self.run_dir.name, self._secrets)
        if "console" in self.backends:
            from tqdm.auto import tqdm

            self._progress = tqdm(total=total_steps, desc=description, dynamic_ncols=True, file=sys.stderr)
        if "wandb" in self.backends:
            import wandb

            mode = wandb_mode
            if mode == "auto":
                mode = "online" if os.environ.get("WANDB_API_KEY") else "offline"
            # wandb copies sys.argv into its run metadata, and with console capture every line printed by any library
            # into output.log; neither can be redacted afterwards, so argv is redacted while wandb reads it and console
            # capture is off (metrics.jsonl and the launcher's log keep the console).
            saved_argv = sys.argv
            sys.argv = [redact_text(arg, self._secrets) for arg in sys.argv]
            try:
                self._wandb_run = wandb.init(
                    project=redact_text(project, self._secrets),
                    name=name,
                    dir=str(self.run_dir),
                    mode=mode,  # type: ignore[arg-type]  # checked against the allowed values in LoggerConfig
                    config=redact(config or {}, self._secrets),
                    settings=wandb.Settings(console="off"),
                )
            finally:
                sys.argv = saved_argv
        if "tensorboard" in self.backends:
            from torch.utils.tensorboard import SummaryWriter

            self._tensorboard = SummaryWriter(log_dir=str(self.run_dir / "tensorboard"))

    def log(self, metrics: dict[str, float], step: int) -> None:
        if not self.enabled:
            return
        clean = {redact_text(k, self._secrets): float(v) for k, v in metrics.items()}
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
        text = redact_text(text, self._secrets)
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
