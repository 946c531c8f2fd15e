"""The run-directory guard: one run at a time per output_dir, no silent mixing of two runs, resumes that continue the
same run. Plain functions; :func:`prepare_run_dir` is the entry point, called from
:func:`safe_rlhf.logger.write_run_files` (which every recipe calls early in its setup), so recipes need nothing else.

What it enforces (training recipes, i.e. configs with a ``train`` section; see docs/quickstart.md, "Run directories"):

- ``output_dir`` must be a directory that can be created and written (checked before anything else runs).
- ``output_dir/.lock`` (pid, host, start time; created atomically, only by rank 0) keeps a second run out. It is
  released at exit, also after an error. A lock whose process is gone (same host: the pid is dead or now belongs to
  another process; a requeued SLURM job: an earlier restart of the same job id) is reported in one line and replaced.
- A new run (``train.resume=none``) refuses a directory that holds an earlier run (checkpoints/, metrics.jsonl or
  model/) unless ``train.overwrite=true``, which deletes those first (see CLEARED_BY_OVERWRITE).
- A resume compares the new config with the config.yaml of the run being resumed and refuses when a key changed that
  alters the run, unless the key is in SAFE_TO_CHANGE or in ``train.resume_allow_changes``.
"""

from __future__ import annotations

import atexit
import fnmatch
import json
import os
import socket
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from safe_rlhf import distributed

LOCK_FILE = ".lock"
# Files and directories a training run leaves behind: their presence means "an earlier run used this directory".
EARLIER_RUN_FILES = ("checkpoints", "metrics.jsonl", "model")
# What train.overwrite=true deletes: everything a run writes that a new run would otherwise mix with its own
# (config.yaml and command.txt are rewritten anyway; wandb/ keeps one folder per run and is left alone).
CLEARED_BY_OVERWRITE = (
    "checkpoints",
    "metrics.jsonl",
    "model",
    ".model.staging",
    "eval",
    "tensorboard",
    "model_last",
    ".selected_model",
    "selection.json",
)
# Config keys a resume may change without changing what is trained: where and how often results are written, how a
# fault is handled, how the same computation is scheduled. Patterns match dotted keys (fnmatch); a plain name also
# covers the keys under it. Any other change needs train.resume_allow_changes.
SAFE_TO_CHANGE = (
    "output_dir",  # the same run resumed from a checkpoint of another directory
    "logger.*",  # where metrics go and under which name
    "train.resume",
    "train.overwrite",
    "train.resume_allow_changes",
    "train.save_steps",
    "train.save_total_limit",
    "train.log_steps",
    "train.eval_steps",
    "train.export",
    "train.max_nonfinite_steps",
    "train.inject_nonfinite_steps",  # fault injection for tests: resuming without the fault is the point
    "deepspeed.overlap_comm",  # the same gradient reduction, overlapped with the backward pass or not
    "*.gradient_checkpointing",  # the same activations, recomputed instead of stored
    "critic_gradient_checkpointing",
)
_ABSENT = "<absent>"
_MAX_LISTED_CHANGES = 10

# Locks this process holds: resolved lock path -> the record written into it.
_HELD: dict[Path, dict[str, Any]] = {}
_ATEXIT_REGISTERED = False


class RunDirError(RuntimeError):
    """An output_dir this run must not use as it is; ``str(error)`` is one line saying why and what to do."""


# ------------------------------------------------------------------------------------------------- output_dir
def check_output_dir(output_dir: str | Path) -> None:
    """Raise RunDirError unless ``output_dir`` is (or can be created as) a writable directory.

    Called before hydra creates the directory (by the entry point's pre-check) and again by :func:`prepare_run_dir`,
    so a file or a read-only place is one line naming output_dir, not a traceback from ``mkdir`` or a first write.
    """
    path = Path(output_dir)
    if path.exists() and not path.is_dir():
        raise RunDirError(f"output_dir={output_dir}: is a file, not a directory; choose another output_dir")
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise RunDirError(f"output_dir={output_dir}: {existing} is a file, so the directory cannot be created there")
    if not _writable(existing):
        where = "is not writable" if existing == path else f"cannot be created: {existing} is not writable"
        raise RunDirError(f"output_dir={output_dir}: {where} (read-only?); choose a directory you can write to")


def _writable(directory: Path) -> bool:
    """Whether new entries can be made in ``directory`` (a read-only mount fails this even for root)."""
    return os.access(directory, os.W_OK | os.X_OK)


def earlier_run_files(run_dir: Path) -> list[str]:
    """The names of EARLIER_RUN_FILES present with content (an empty metrics.jsonl or checkpoints/ is no run yet)."""
    found = []
    for name in EARLIER_RUN_FILES:
        path = run_dir / name
        if path.is_dir() and any(path.iterdir()):
            found.append(f"{name}/")
        elif path.is_file() and path.stat().st_size > 0:
            found.append(name)
    return found


def clear_earlier_run(run_dir: Path) -> list[str]:
    """Delete what an earlier run left (CLEARED_BY_OVERWRITE); returns the names deleted."""
    import shutil

    removed = []
    for name in CLEARED_BY_OVERWRITE:
        path = run_dir / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
        else:
            continue
        removed.append(name)
    return removed


# ------------------------------------------------------------------------------------------------------- lock
def _process_start(pid: int) -> str | None:
    """The start time of process ``pid`` in clock ticks since boot (Linux), to tell a reused pid from the holder."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may hold spaces; the start time is field 22.
    return stat.rsplit(")", 1)[1].split()[19]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, under another user
    return True


def _lock_record() -> dict[str, Any]:
    pid = os.getpid()
    return {
        "pid": pid,
        "host": socket.gethostname(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "process_start": _process_start(pid),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        "slurm_restart_count": os.environ.get("SLURM_RESTART_COUNT"),
    }


def _read_lock(path: Path) -> dict[str, Any] | None:
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _is_ours(record: dict[str, Any]) -> bool:
    return record.get("pid") == os.getpid() and record.get("host") == socket.gethostname()


def _why_stale(record: dict[str, Any]) -> str | None:
    """Why the holder of a lock is certainly gone, or None when it may still run."""
    pid, host = record.get("pid"), record.get("host")
    job, restart = record.get("slurm_job_id"), record.get("slurm_restart_count")
    if host == socket.gethostname() and isinstance(pid, int):
        if not _pid_alive(pid):
            return "is not running"
        recorded, current = record.get("process_start"), _process_start(pid)
        if recorded is not None and current is not None and recorded != current:
            return "is not running (its pid now belongs to another process)"
        return None
    if job and job == os.environ.get("SLURM_JOB_ID"):
        # A requeued job keeps its id and counts restarts: the lock of an earlier restart is its own, left by a kill.
        try:
            if int(os.environ.get("SLURM_RESTART_COUNT", "0")) > int(restart or 0):
                return f"was an earlier start of SLURM job {job}"
        except ValueError:
            return None
    return None


def _describe(record: dict[str, Any] | None) -> str:
    if record is None:
        return "an unreadable lock record"
    return f"pid {record.get('pid')} on host {record.get('host')} (since {record.get('started')})"


def _create_exclusive(path: Path, record: dict[str, Any]) -> bool:
    """Create ``path`` holding ``record`` atomically; False if it exists. A hard link of a complete temporary file
    never shows a half-written lock (and is atomic on NFS too); O_EXCL is the fallback where links are not allowed."""
    text = json.dumps(record)
    temporary = path.with_name(f"{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    temporary.write_text(text)
    try:
        os.link(temporary, path)
        return True
    except FileExistsError:
        return False
    except OSError:
        try:
            descriptor = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(descriptor, "w") as handle:
            handle.write(text)
        return True
    finally:
        temporary.unlink(missing_ok=True)


def acquire_lock(run_dir: str | Path) -> Path:
    """Take ``run_dir/.lock`` for this process, or raise RunDirError naming the holder. Re-entrant within a process
    (a multirun sweep or a test runs several jobs in one process); released by :func:`release_lock` or at exit."""
    global _ATEXIT_REGISTERED
    path = Path(run_dir) / LOCK_FILE
    key = path.resolve()
    if key in _HELD:
        return path
    record = _lock_record()
    for _ in range(3):
        if _create_exclusive(path, record):
            _HELD[key] = record
            if not _ATEXIT_REGISTERED:
                atexit.register(release_all)
                _ATEXIT_REGISTERED = True
            return path
        holder = _read_lock(path)
        if holder is not None and _is_ours(holder):
            _HELD[key] = holder  # left by an earlier job of this very process
            return path
        reason = _why_stale(holder) if holder is not None else None
        if reason is None:
            raise RunDirError(
                f"output_dir={run_dir} is in use by another run: {_describe(holder)} holds {path}; wait for it, "
                f"or if that run is gone delete {path}"
            )
        _remove_stale(path, holder)
        print(f"note: replaced the stale lock {path}: {_describe(holder)} {reason}", file=sys.stderr, flush=True)
    raise RunDirError(f"output_dir={run_dir}: could not take {path} (other runs keep replacing it)")


def _remove_stale(path: Path, stale: dict[str, Any] | None) -> None:
    """Move the stale lock aside and delete it, unless another run replaced it in the meantime (then put it back)."""
    aside = path.with_name(f"{path.name}.stale-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return  # another run removed it first
    if _read_lock(aside) != stale:
        try:
            os.link(aside, path)  # a fresh lock of someone else: restore it (unless a newer one exists)
        except OSError:
            pass
    aside.unlink(missing_ok=True)


def release_lock(run_dir: str | Path) -> None:
    """Delete ``run_dir/.lock`` if this process holds it (idempotent)."""
    path = Path(run_dir) / LOCK_FILE
    record = _HELD.pop(path.resolve(), None)
    if record is not None and _read_lock(path) == record:
        path.unlink(missing_ok=True)


def release_all() -> None:
    """Release every lock this process holds (registered with atexit: normal exit, SystemExit, an exception)."""
    for path in list(_HELD):
        release_lock(path.parent)


# ----------------------------------------------------------------------------------------------- resume check
def flatten(values: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted key -> leaf value (lists are leaves)."""
    if not isinstance(values, dict):
        return {prefix[:-1]: values} if prefix else {}
    flat: dict[str, Any] = {}
    for key, value in values.items():
        flat.update(flatten(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value})
    return flat


def changed_keys(saved: dict[str, Any], current: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Dotted key -> (saved value, current value) for every key whose value differs or exists on one side only."""
    old, new = flatten(saved), flatten(current)
    return {
        key: (old.get(key, _ABSENT), new.get(key, _ABSENT))
        for key in sorted(set(old) | set(new))
        if old.get(key, _ABSENT) != new.get(key, _ABSENT)
    }


def key_allowed(key: str, patterns: list[str] | tuple[str, ...]) -> bool:
    """Whether a dotted key matches one of ``patterns`` (fnmatch, or a plain prefix such as ``optim``)."""
    return any(fnmatch.fnmatchcase(key, pattern) or key.startswith(f"{pattern}.") for pattern in patterns)


def _short(value: Any) -> str:
    text = value if value == _ABSENT else json.dumps(value, default=str)
    return text if len(text) <= 40 else text[:37] + "..."


def check_resume_config(saved_path: Path, current: dict[str, Any], allowed: list[str], what: str) -> None:
    """Raise RunDirError when ``current`` (the redacted config dict) differs from the redacted config.yaml of the run
    being resumed in a key that is neither in SAFE_TO_CHANGE nor in ``allowed`` (train.resume_allow_changes)."""
    import yaml

    if "*" in allowed:
        return
    try:
        saved = yaml.safe_load(saved_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        saved, problem = None, next((line for line in str(error).splitlines() if line.strip()), type(error).__name__)
    else:
        problem = f"holds {type(saved).__name__}, not a config"
    if not isinstance(saved, dict):
        raise RunDirError(
            f"{what}: {saved_path} is unreadable ({problem}), so this run cannot be checked against the one it "
            "resumes; restore the file, or accept any change with 'train.resume_allow_changes=[*]'"
        )
    changes = changed_keys(saved, current)
    blocking = {key: pair for key, pair in changes.items() if not key_allowed(key, (*SAFE_TO_CHANGE, *allowed))}
    if not blocking:
        return
    listed = [f"{key} ({_short(old)} -> {_short(new)})" for key, (old, new) in list(blocking.items())]
    if len(listed) > _MAX_LISTED_CHANGES:
        listed = [*listed[:_MAX_LISTED_CHANGES], f"and {len(listed) - _MAX_LISTED_CHANGES} more"]
    raise RunDirError(
        f"{what}: the config differs from the run being resumed ({saved_path}) in {', '.join(listed)}; "
        f"a resume must continue the same run: accept with 'train.resume_allow_changes=[{','.join(blocking)}]', "
        "or start a new run in another output_dir"
    )


def _saved_config(checkpoint: Path, run_dir: Path, resume: str) -> Path | None:
    """The config.yaml of the run that wrote ``checkpoint`` (the run directory above its checkpoints/ folder)."""
    if resume == "auto":
        return run_dir / "config.yaml"
    if checkpoint.parent.name == "checkpoints":
        return checkpoint.parent.parent / "config.yaml"
    return None


# ---------------------------------------------------------------------------------------------------- the guard
def is_training_config(values: dict[str, Any]) -> bool:
    """Training recipes (sft, reward/cost model, ppo*) have a ``train`` section with ``resume``; evaluations not."""
    train = values.get("train")
    return isinstance(train, dict) and "resume" in train


def check_model_paths(values: dict[str, Any]) -> None:
    """Check every ``*.name_or_path`` / ``*.tokenizer`` of the config before the directory is touched, so that a typo
    in a model path fails in one line before train.overwrite=true deletes the earlier run (loaders check again)."""
    from safe_rlhf.assets import check_model_path, tiny_alias_architecture

    for key, value in flatten(values).items():
        if key.rsplit(".", 1)[-1] in ("name_or_path", "tokenizer") and isinstance(value, str) and value:
            if tiny_alias_architecture(value) is None:
                check_model_path(value, key)


def _note(text: str) -> None:
    print(f"note: {text}", file=sys.stderr, flush=True)


def _prepare_main(run_dir: Path, config: Any) -> None:
    """Rank 0's part of :func:`prepare_run_dir`."""
    from safe_rlhf.logger import config_to_dict, redact

    raw = config_to_dict(config)
    values = redact(raw)  # config.yaml is written redacted: compare like with like
    check_output_dir(run_dir)
    if not is_training_config(values):
        return
    check_model_paths(raw)
    run_dir.mkdir(parents=True, exist_ok=True)
    acquire_lock(run_dir)
    train = values["train"]
    resume = str(train.get("resume") or "none")
    overwrite = bool(train.get("overwrite", False))
    allowed = [str(pattern) for pattern in train.get("resume_allow_changes") or []]
    checkpoint = None
    if resume != "none":
        from safe_rlhf.engines import find_checkpoint

        checkpoint = find_checkpoint(resume, run_dir)
    if checkpoint is not None:
        if overwrite:
            _note(f"train.overwrite=true is ignored: train.resume={resume} continues from {checkpoint}")
        saved = _saved_config(checkpoint, run_dir, resume)
        if saved is not None and saved.exists():
            check_resume_config(saved, values, allowed, f"train.resume={resume}")
        else:
            _note(f"no config.yaml of the run that wrote {checkpoint}: the resumed config cannot be checked")
        return
    earlier = earlier_run_files(run_dir)
    if not earlier:
        return
    if overwrite:
        removed = clear_earlier_run(run_dir)
        _note(f"train.overwrite=true: deleted {', '.join(removed)} of the earlier run in {run_dir}")
        return
    if resume == "auto":
        # Nothing to resume yet (e.g. a requeued job stopped before its first checkpoint): the run restarts, which is
        # only the same run if the config is the same.
        saved = run_dir / "config.yaml"
        if saved.exists():
            check_resume_config(saved, values, allowed, "train.resume=auto (no checkpoint yet: the run restarts)")
        return
    raise RunDirError(
        f"output_dir={run_dir} holds an earlier run ({', '.join(earlier)}); continue it with train.resume=auto, "
        "start over with train.overwrite=true (deletes them), or choose another output_dir"
    )


def prepare_run_dir(run_dir: str | Path, config: Any) -> None:
    """Check and lock the run directory before anything is written to it; every rank of a training recipe calls
    this (rank 0 decides, the others learn its verdict, so every rank stops with the same one line, none hangs)."""
    from safe_rlhf.logger import config_to_dict

    run_dir = Path(run_dir)
    failure: BaseException | None = None
    verdict: str | None = None
    if distributed.is_main_process():
        try:
            _prepare_main(run_dir, config)
        except Exception as error:  # reported below, on every rank
            failure, verdict = error, str(error)
    if distributed.world_size() > 1 and is_training_config(config_to_dict(config)):
        verdict = distributed.broadcast_object(verdict)
    if failure is not None:
        raise failure
    if verdict is not None:
        raise RunDirError(f"rank 0 refused the run directory: {verdict}")
