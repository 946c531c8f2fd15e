"""A SLURM job killed mid-training (SIGUSR1 before the time limit) checkpoints, requeues, and its requeued run
continues to the same metric sequence as a run that was never stopped. Real torchrun and training; stand-ins only
for SLURM's own commands (srun runs its task on this machine and forwards signals to it; scontrol records)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT, train_cli
from tests.integration.sft_helpers import loss_by_step

SRUN_STUB = """\
import os, signal, subprocess, sys
task = sys.argv[sys.argv.index("bash"):]
child = subprocess.Popen(task, env={**os.environ, "SLURM_NODEID": "0"}, start_new_session=True)
def forward(signum, frame):
    os.killpg(child.pid, signum)
signal.signal(signal.SIGTERM, forward)
signal.signal(signal.SIGUSR1, forward)
sys.exit(child.wait())
"""
SCONTROL_STUB = """\
import json, os, sys
with open(os.environ["STUB_LOG"], "a") as log:
    log.write(json.dumps(sys.argv[1:]) + "\\n")
"""

OVERRIDES = ["logger=none", "train.micro_batch_size=8", "train.batch_size=16", "train.log_steps=1",
             "train.max_steps=30", "train.eval_steps=0", "train.export=false"]  # fmt: skip


def _stubs(directory: Path) -> Path:
    directory.mkdir()
    for name, body in (("srun", SRUN_STUB), ("scontrol", SCONTROL_STUB)):
        (directory / name).write_text(f"#!{sys.executable}\n{body}")
        (directory / name).chmod(0o755)
    return directory


# Slow tier (about 90 s): keeps `make test` under 15 minutes on 2 cores; `make test-slow` runs it.
@pytest.mark.slow
@pytest.mark.integration
def test_preempted_slurm_job_requeues_and_resumes_to_the_same_losses(tmp_path, safe_rlhf_cache):
    reference_dir, run_dir = tmp_path / "reference", tmp_path / "job"
    assert train_cli([f"output_dir={reference_dir}", *OVERRIDES]).returncode == 0
    stub_log = tmp_path / "scontrol.jsonl"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env.update(
        PATH=f"{_stubs(tmp_path / 'bin')}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}{env['PATH']}",
        PYTHONPATH=str(REPO_ROOT), STUB_LOG=str(stub_log), SLURM_JOB_ID="4242", SLURM_NNODES="1",
        SLURM_JOB_NAME="safe-rlhf", SAFE_RLHF_NODES="127.0.0.1", NPROC_PER_NODE="1", OMP_NUM_THREADS="1",
    )  # fmt: skip
    command = ["bash", str(REPO_ROOT / "launch" / "slurm.sbatch"), "sft", f"output_dir={run_dir}", *OVERRIDES]
    with open(tmp_path / "first.log", "w") as log:
        job = subprocess.Popen(command, env=env, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.time() + 300
        while not ((run_dir / "metrics.jsonl").exists() and any(s >= 2 for s in loss_by_step(run_dir))):
            assert job.poll() is None and time.time() < deadline, (tmp_path / "first.log").read_text()[-3000:]
            time.sleep(0.1)
        job.send_signal(signal.SIGUSR1)  # what SLURM sends 120 s before the time limit (--signal=B:USR1@120)
        job.wait(timeout=300)
    first_log = (tmp_path / "first.log").read_text()
    assert (run_dir / "checkpoints" / "latest").exists(), first_log[-3000:]
    assert [json.loads(line) for line in stub_log.read_text().splitlines()] == [["requeue", "4242"]], first_log[-3000:]
    stopped_at = max(loss_by_step(run_dir))
    assert stopped_at < 30
    # SLURM starts the requeued job again: same job id, restart count 1.
    again = subprocess.run(command, env={**env, "SLURM_RESTART_COUNT": "1"}, cwd=REPO_ROOT, capture_output=True,
                           text=True, timeout=600, check=False)  # fmt: skip
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert len(stub_log.read_text().splitlines()) == 1  # no second requeue
    reference, resumed = loss_by_step(reference_dir), loss_by_step(run_dir)
    assert sorted(resumed) == list(range(1, 31))
    for step in range(1, 31):
        assert resumed[step] == pytest.approx(reference[step], rel=1e-5, abs=1e-6), step
