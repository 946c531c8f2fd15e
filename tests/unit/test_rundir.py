"""Run directories that cannot be corrupted: the lock, the used-directory refusal, the resume config check, pruning,
checksums of every checkpoint file, redaction of secrets everywhere, and one-line errors for bad model paths, bad
output directories and refused pickles.

In-process unit tests, plus one integration test that runs the real CLI (three tiny SFT launches, two of which stop
at set-up).
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from safe_rlhf import engines, rundir
from safe_rlhf.config import ConfigError, ModelConfig, SFTConfig, TrainConfig
from safe_rlhf.engines import CheckpointError
from safe_rlhf.logger import redact, redact_text, write_run_files
from safe_rlhf.rundir import RunDirError
from tests.conftest import run_cli, train_cli


@pytest.fixture(autouse=True)
def _release_locks():
    yield
    rundir.release_all()


def _sft(run_dir: Path, **train: object) -> SFTConfig:
    return SFTConfig(output_dir=str(run_dir), train=TrainConfig(**train))  # type: ignore[arg-type]


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def _write_lock(run_dir: Path, **fields: object) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    record = {"pid": 0, "host": socket.gethostname(), "started": "then", "process_start": None} | fields
    path = run_dir / rundir.LOCK_FILE
    path.write_text(json.dumps(record))
    return path


# ------------------------------------------------------------------------------------------------------- lock
@pytest.mark.unit
def test_lock_names_its_holder_and_refuses_a_second_run(tmp_path):
    path = rundir.acquire_lock(tmp_path)
    record = json.loads(path.read_text())
    assert record["pid"] == os.getpid() and record["host"] == socket.gethostname() and record["started"]
    # Another live process on this host holds the lock: refused, naming it.
    rundir.release_lock(tmp_path)
    assert not path.exists()
    holder = os.getppid()
    _write_lock(tmp_path, pid=holder, process_start=rundir._process_start(holder))
    with pytest.raises(RunDirError) as caught:
        rundir.acquire_lock(tmp_path)
    message = str(caught.value)
    assert "\n" not in message and f"pid {holder} on host {socket.gethostname()}" in message
    assert str(path) in message


@pytest.mark.unit
def test_a_stale_lock_is_reported_in_one_line_and_replaced(tmp_path, capsys):
    dead = _dead_pid()
    path = _write_lock(tmp_path, pid=dead)
    rundir.acquire_lock(tmp_path)
    assert json.loads(path.read_text())["pid"] == os.getpid()
    notes = capsys.readouterr().err.strip().splitlines()
    assert len(notes) == 1 and f"pid {dead}" in notes[0] and "stale" in notes[0] and "is not running" in notes[0]


@pytest.mark.unit
def test_a_reused_pid_does_not_keep_a_stale_lock(tmp_path):
    holder = os.getppid()  # alive, but it is not the process that wrote the lock: another start time
    _write_lock(tmp_path, pid=holder, process_start="1")
    rundir.acquire_lock(tmp_path)
    assert json.loads((tmp_path / rundir.LOCK_FILE).read_text())["pid"] == os.getpid()


@pytest.mark.unit
def test_a_requeued_slurm_job_replaces_the_lock_of_its_earlier_start(tmp_path, monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    _write_lock(tmp_path, pid=1, host="node-a", slurm_job_id="4242", slurm_restart_count="0")
    rundir.acquire_lock(tmp_path)
    rundir.release_all()
    # Another job's lock on another host cannot be checked: refused.
    _write_lock(tmp_path, pid=1, host="node-a", slurm_job_id="999", slurm_restart_count="0")
    with pytest.raises(RunDirError, match="pid 1 on host node-a"):
        rundir.acquire_lock(tmp_path)


@pytest.mark.unit
def test_the_lock_is_released_when_the_process_fails(tmp_path):
    script = (
        "import pathlib, sys; from safe_rlhf import rundir; rundir.acquire_lock(sys.argv[1]); "
        "assert (pathlib.Path(sys.argv[1]) / '.lock').exists(); raise RuntimeError('boom')"
    )
    result = run_cli([sys.executable, "-c", script, str(tmp_path)], timeout=120)
    assert result.returncode == 1 and "boom" in result.stderr
    assert not (tmp_path / rundir.LOCK_FILE).exists()


# -------------------------------------------------------------------------------------------- used directories
@pytest.mark.unit
def test_a_new_run_refuses_a_directory_with_an_earlier_run(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\n')
    with pytest.raises(RunDirError) as caught:
        write_run_files(tmp_path, _sft(tmp_path))
    message = str(caught.value)
    assert "metrics.jsonl" in message and "train.resume=auto" in message and "train.overwrite=true" in message
    assert not (tmp_path / "config.yaml").exists()
    # An empty metrics.jsonl (a run that stopped before its first step) is no earlier run.
    (tmp_path / "metrics.jsonl").write_text("")
    write_run_files(tmp_path, _sft(tmp_path))
    assert (tmp_path / "config.yaml").exists()


@pytest.mark.unit
def test_overwrite_clears_the_earlier_run(tmp_path):
    for name in ("checkpoints/step-4", "model", "eval", "tensorboard"):
        (tmp_path / name).mkdir(parents=True)
        (tmp_path / name / "file").write_text("old")
    (tmp_path / "metrics.jsonl").write_text('{"step": 4}\n')
    (tmp_path / "notes.txt").write_text("mine")
    write_run_files(tmp_path, _sft(tmp_path, overwrite=True))
    for name in ("checkpoints", "model", "eval", "tensorboard", "metrics.jsonl"):
        assert not (tmp_path / name).exists(), name
    assert (tmp_path / "notes.txt").read_text() == "mine" and (tmp_path / "config.yaml").exists()


def _resumable(run_dir: Path, config: SFTConfig) -> None:
    """A run directory as a finished run with a checkpoint leaves it."""
    write_run_files(run_dir, config)
    rundir.release_all()
    (run_dir / "checkpoints" / "step-2").mkdir(parents=True)
    (run_dir / "checkpoints" / "latest").write_text("step-2")
    (run_dir / "metrics.jsonl").write_text('{"step": 2}\n')


@pytest.mark.unit
def test_resume_refuses_a_changed_config_and_lists_the_keys(tmp_path):
    first = _sft(tmp_path)
    _resumable(tmp_path, first)
    saved = (tmp_path / "config.yaml").read_text()
    changed = dataclasses.replace(
        first,
        seed=7,
        optim=dataclasses.replace(first.optim, lr=5e-4),
        train=dataclasses.replace(first.train, resume="auto", max_steps=9),
    )
    with pytest.raises(RunDirError) as caught:
        write_run_files(tmp_path, changed)
    message = str(caught.value)
    assert "\n" not in message
    for key in ("optim.lr (0.001 -> 0.0005)", "seed (42 -> 7)", "train.max_steps (-1 -> 9)"):
        assert key in message, message
    assert "train.resume_allow_changes=[optim.lr,seed,train.max_steps]" in message
    assert (tmp_path / "config.yaml").read_text() == saved  # compared before it is replaced
    # The refused keys, once allowed, resume.
    allowed = dataclasses.replace(changed.train, resume_allow_changes=["optim", "seed", "train.max_steps"])
    write_run_files(tmp_path, dataclasses.replace(changed, train=allowed))
    assert "lr: 0.0005" in (tmp_path / "config.yaml").read_text()


@pytest.mark.unit
def test_resume_accepts_changes_that_do_not_alter_the_run(tmp_path):
    first = _sft(tmp_path)
    _resumable(tmp_path, first)
    safe = dataclasses.replace(
        first,
        logger=dataclasses.replace(first.logger, run_name="again", backends=[]),
        train=dataclasses.replace(first.train, resume="auto", save_steps=5, log_steps=3, inject_nonfinite_steps=[]),
    )
    write_run_files(tmp_path, safe)
    assert "run_name: again" in (tmp_path / "config.yaml").read_text()


@pytest.mark.unit
def test_resume_auto_without_a_checkpoint_restarts_only_the_same_run(tmp_path):
    first = _sft(tmp_path)
    write_run_files(tmp_path, first)
    rundir.release_all()
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\n')  # stopped before its first checkpoint
    restart = dataclasses.replace(first, train=dataclasses.replace(first.train, resume="auto"))
    write_run_files(tmp_path, restart)
    rundir.release_all()
    other = dataclasses.replace(restart, optim=dataclasses.replace(first.optim, lr=1.0))
    with pytest.raises(RunDirError, match=r"optim\.lr"):
        write_run_files(tmp_path, other)


# ------------------------------------------------------------------------------------------------ checkpoints
class _FakeEngine:
    def save_checkpoint(self, path: str, tag: str, save_latest: bool) -> None:
        Path(path, tag).mkdir(parents=True)
        Path(path, tag, "model_states.pt").write_bytes(b"weights")


@pytest.mark.unit
def test_pruning_never_deletes_the_checkpoint_just_written(tmp_path):
    root = tmp_path / "checkpoints"
    for step in (10, 12):  # higher steps of an earlier run in the same output_dir
        (root / f"step-{step}").mkdir(parents=True)
    engines.save_checkpoint(root, 4, {"policy": _FakeEngine()}, {}, keep_last=1)
    assert (root / "latest").read_text() == "step-4"
    assert (root / "step-4" / "trainer_state.json").exists()
    assert sorted(p.name for p in root.glob("step-*")) == ["step-4"]
    engines.save_checkpoint(root, 6, {"policy": _FakeEngine()}, {}, keep_last=2)
    assert sorted(p.name for p in root.glob("step-*")) == ["step-4", "step-6"]


@pytest.mark.unit
def test_a_bit_flip_in_a_large_file_fails_verification(tmp_path, monkeypatch):
    # Before, files above HASH_LIMIT_BYTES (256 MiB) had only their size checked; lowered here so that a few MB are
    # "large" for the code that still has the limit (the attribute does not exist once every file is hashed).
    monkeypatch.setattr(engines, "HASH_LIMIT_BYTES", 1 << 20, raising=False)
    shard = tmp_path / "policy" / "optim_states.pt"
    shard.parent.mkdir()
    shard.write_bytes(os.urandom(3 << 20))
    (tmp_path / "trainer_state.json").write_text("{}")
    engines.write_manifest(tmp_path)
    entries = json.loads((tmp_path / engines.MANIFEST_FILE).read_text())["files"]
    assert all("sha256" in entry for entry in entries.values())
    engines.verify_checkpoint(tmp_path)
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x10
    shard.write_bytes(bytes(data))
    with pytest.raises(CheckpointError) as caught:
        engines.verify_checkpoint(tmp_path)
    assert str(shard) in str(caught.value) and "sha256" in str(caught.value) and "\n" not in str(caught.value)


class Payload:
    """Not a class any checkpoint may hold."""


@pytest.mark.unit
def test_a_refused_pickle_is_one_line_naming_the_file(tmp_path):
    forged = tmp_path / "model_states.pt"
    torch.save({"weights": torch.zeros(2), "extra": Payload()}, forged)
    with pytest.raises(CheckpointError) as caught, engines.restricted_torch_load():
        torch.load(forged)
    message = str(caught.value)
    assert "\n" not in message and "weights_only" not in message
    assert str(forged) in message and "outside the allowed set" in message and "Payload" in message
    # The RNG state file, loaded outside DeepSpeed, says the same.
    (tmp_path / "trainer_state.json").write_text(json.dumps({"step": 1, "engines": []}))
    torch.save({"python": Payload()}, tmp_path / "rng_state_rank0.pt")
    forged.unlink()
    engines.write_manifest(tmp_path)
    with pytest.raises(CheckpointError) as caught:
        engines.load_checkpoint(tmp_path, {})
    message = str(caught.value)
    assert "\n" not in message and "weights_only" not in message and "rng_state_rank0.pt" in message


# -------------------------------------------------------------------------------------------------- redaction
@pytest.mark.unit
def test_redaction_is_by_exact_key_and_by_value(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "secret123")
    config = {
        "model": {"name_or_path": "/models/m", "tokenizer": "/models/tok"},
        "logger": {"run_name": "run-secret123", "api_key": "key-abcdef"},
        "note": "uses key-abcdef and hf_abcdefghijklmnopqrstuvwxyz0123",
        "tokens_per_step": 5,
    }
    redacted = redact(config)
    assert redacted["model"] == {"name_or_path": "/models/m", "tokenizer": "/models/tok"}  # not a secret key
    assert redacted["logger"] == {"run_name": "run-***", "api_key": "***"}
    assert redacted["note"] == "uses *** and ***"
    assert redacted["tokens_per_step"] == 5
    assert redact_text("python -m safe_rlhf.train logger.run_name=run-secret123") == (
        "python -m safe_rlhf.train logger.run_name=run-***"
    )


# ---------------------------------------------------------------------------------------------- bad model paths
@pytest.mark.unit
def test_a_missing_local_model_path_fails_fast_naming_the_key(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    for missing in ("runs/sft/model", "./model", str(tmp_path / "nope"), "runs/model"):
        with pytest.raises(ConfigError) as caught:
            engines.load_tokenizer(ModelConfig(name_or_path=missing))
        message = str(caught.value)
        assert message.startswith(f"model.name_or_path={missing}: no such model directory"), message
        assert "Repo id" not in message


@pytest.mark.unit
@pytest.mark.parametrize(
    ("content", "must_contain"),
    [("", "is empty"), ('{"model_type": "lla', "is not valid JSON"), ("[1, 2]", "not an object")],
)
def test_a_damaged_config_json_is_one_line(tmp_path, content, must_contain):
    from safe_rlhf.score_model import load_score_model

    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "config.json").write_text(content)
    with pytest.raises(ConfigError) as caught:
        engines.load_tokenizer(ModelConfig(name_or_path=str(model_dir)))
    assert "config.json" in str(caught.value) and must_contain in str(caught.value)
    assert str(caught.value).startswith(f"model.name_or_path={model_dir}: ")
    with pytest.raises(ConfigError, match=must_contain):
        load_score_model(str(model_dir))


@pytest.mark.unit
def test_from_pretrained_errors_become_one_line_naming_the_path(tmp_path):
    from safe_rlhf.score_model import load_score_model

    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "config.json").write_text("{}")  # valid JSON, but no model_type
    with pytest.raises(ConfigError) as caught:
        load_score_model(str(model_dir))
    assert str(model_dir) in str(caught.value) and "model_type" in str(caught.value)
    assert "\n" not in str(caught.value)


# ------------------------------------------------------------------------------------------------- output_dir
@pytest.mark.unit
def test_an_output_dir_that_is_a_file_is_one_config_error_line(tmp_path, capsys):
    import safe_rlhf.train as train_module

    target = tmp_path / "run"
    target.write_text("not a directory")
    with pytest.raises(SystemExit) as caught:
        train_module._precheck(["--config-name", "sft", f"output_dir={target}"])
    assert caught.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == [f"config error: output_dir={target}: is a file, not a directory; choose another output_dir"]
    with pytest.raises(RunDirError, match="cannot be created"):
        rundir.check_output_dir(target / "sub")


@pytest.mark.unit
def test_a_read_only_output_dir_is_refused_up_front(tmp_path, monkeypatch):
    # As root a chmod'ed directory stays writable, so the access check itself is replaced (a read-only mount fails
    # os.access for root too).
    monkeypatch.setattr(rundir, "_writable", lambda directory: directory != tmp_path)
    with pytest.raises(RunDirError, match="is not writable"):
        rundir.check_output_dir(tmp_path)
    with pytest.raises(RunDirError, match=f"cannot be created: {tmp_path} is not writable"):
        write_run_files(tmp_path / "run", _sft(tmp_path / "run"))


@pytest.mark.unit
def test_run_dir_errors_are_user_errors():
    from safe_rlhf.train import user_errors

    assert RunDirError in user_errors() and ConfigError in user_errors() and CheckpointError in user_errors()


# ------------------------------------------------------------------------------------------------ real runs
FAST = ["train.micro_batch_size=8", "train.batch_size=16", "train.log_steps=1", "train.eval_steps=0"]


def _error_line(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error")]
    assert len(errors) == 1, result.stderr[-3000:]
    return errors[0]


@pytest.mark.integration
def test_a_real_run_keeps_secrets_out_of_its_directory_and_guards_it(tmp_path, safe_rlhf_cache):
    run_dir = tmp_path / "run"
    secret = "secret123"
    env = {"HF_TOKEN": secret, "WANDB_SILENT": "true", "WANDB_MODE": "offline"}
    overrides = [f"output_dir={run_dir}", *FAST, "train.max_steps=1", "train.save_steps=1", "train.export=false"]
    result = train_cli(
        [*overrides, "logger=wandb", "logger.wandb_mode=offline", f"logger.run_name=run-{secret}"], env=env
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert list(run_dir.glob("wandb/offline-run-*/run-*.wandb")), "wandb wrote no offline run"
    leaks = [str(path) for path in run_dir.rglob("*") if path.is_file() and secret.encode() in path.read_bytes()]
    assert not leaks, leaks
    assert "run_name: run-***" in (run_dir / "config.yaml").read_text()
    assert "logger.run_name=run-***" in (run_dir / "command.txt").read_text()
    assert not (run_dir / rundir.LOCK_FILE).exists()  # released at exit
    # The same directory again: a new run is refused, a resume with another learning rate too.
    line = _error_line(train_cli([*overrides, "logger=none"]))
    assert f"output_dir={run_dir} holds an earlier run" in line and "checkpoints/" in line
    line = _error_line(train_cli([*overrides, "logger=none", "train.resume=auto", "optim.lr=1e-4"]))
    assert "optim.lr (0.002 -> 0.0001)" in line and "train.resume_allow_changes=[optim.lr]" in line
    assert not (run_dir / rundir.LOCK_FILE).exists()  # released after the error too


@pytest.mark.unit
def test_a_bad_model_path_fails_before_overwrite_deletes_the_earlier_run(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\n')
    config = _sft(tmp_path, overwrite=True)
    config.model.name_or_path = str(tmp_path / "nope")
    with pytest.raises(ConfigError, match=f"model.name_or_path={tmp_path / 'nope'}: no such model directory"):
        write_run_files(tmp_path, config)
    assert (tmp_path / "metrics.jsonl").exists()
