"""SFT end to end on the tiny model and the toy world: learning, export, resume, and 2-rank ZeRO-3 launches."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from safe_rlhf.distributed import find_free_port
from tests.conftest import REPO_ROOT, run_cli, train_cli
from tests.integration.sft_helpers import loss_by_step, probe_logits, read_metrics

FAST = ["logger=none", "train.micro_batch_size=8", "train.batch_size=16", "train.log_steps=1"]


@pytest.mark.integration
def test_sft_lowers_heldout_loss_and_exports_a_loadable_model(tmp_path, safe_rlhf_cache):
    run_dir = tmp_path / "sft"
    result = train_cli([f"output_dir={run_dir}", *FAST, "train.max_steps=60", "train.eval_steps=30"])
    assert result.returncode == 0, result.stderr[-3000:]
    evals = [m["eval/loss"] for m in read_metrics(run_dir) if "eval/loss" in m]
    assert len(evals) == 3  # step 0, step 30, end
    # throughput: response tokens (the loss's), and every token the forward reads (prompt + response, no padding)
    rates = [(m["train/tokens_per_second"], m["train/input_tokens_per_second"]) for m in read_metrics(run_dir)
             if "train/tokens_per_second" in m]  # fmt: skip
    assert rates and all(0 < response < read for response, read in rates), rates
    assert evals[-1] < 0.7 * evals[0], evals  # a random tiny model starts near ln(512) = 6.2
    # The run directory keeps the resolved config and the exact command.
    assert "max_steps: 60" in (run_dir / "config.yaml").read_text()
    assert "train.max_steps=60" in (run_dir / "command.txt").read_text()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(run_dir / "model")
    tokenizer = AutoTokenizer.from_pretrained(run_dir / "model")
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
    assert (run_dir / "model" / "model.safetensors").exists()
    assert torch.isfinite(probe_logits(model, len(tokenizer))).all()


def _wait_for_step(run_dir, step: int, process: subprocess.Popen, log_path, key: str, timeout: float = 300.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"run ended before step {step}: {log_path.read_text()[-3000:]}")
        if (run_dir / "metrics.jsonl").exists() and any(s >= step for s in loss_by_step(run_dir, key)):
            return
        time.sleep(0.05)
    raise AssertionError(f"no step {step} within {timeout} s")


def _wait_for_group_exit(group: int, timeout: float = 300.0) -> None:
    """The `deepspeed` CLI dies on SIGTERM at once while its launcher and ranks still save: wait for all of them."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            os.killpg(group, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    raise AssertionError(f"processes of group {group} still running after {timeout} s")


def _interrupted_then_resumed(
    run_dir, overrides, launcher_prefix=(), config_name="sft", key="train/loss", exit_codes=(75,), resume_prefix=None
):
    """Start a run, SIGTERM it after step 2, check it saved and asked for requeue, then resume it to the end."""
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    command = [*launcher_prefix, "--config-name", config_name, f"output_dir={run_dir}", *overrides]
    log_path = run_dir.parent / f"{run_dir.name}-first-attempt.log"
    with open(log_path, "w") as log:
        # Output to a file, not a pipe: a full pipe would block the run.
        process = subprocess.Popen(
            command, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, text=True, start_new_session=True
        )
        _wait_for_step(run_dir, 2, process, log_path, key)
        # Like SLURM: the signal reaches every process of the job (launcher and ranks).
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=300)
        _wait_for_group_exit(process.pid)
    # A rank exits 75 ("requeue"); the `deepspeed` CLI is killed by the signal (-15) and torchrun reports 1.
    assert process.returncode in exit_codes, log_path.read_text()[-3000:]
    assert (run_dir / "checkpoints" / "latest").exists()
    stopped_at = max(loss_by_step(run_dir, key))
    resumed = subprocess.run(
        [*command, "train.resume=auto"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    return stopped_at


@pytest.mark.integration
# Slow tier (make test's 15-minute budget): PPO-Lag's resume-after-SIGTERM equivalence stays in the default tier, and
# the SLURM requeue test (slow) resumes SFT end to end as well.
@pytest.mark.slow
def test_resume_after_sigterm_gives_the_same_loss_sequence(tmp_path, safe_rlhf_cache):
    overrides = [*FAST, "train.max_steps=40", "train.eval_steps=0", "train.export=false"]
    reference_dir, interrupted_dir = tmp_path / "reference", tmp_path / "interrupted"
    result = train_cli([f"output_dir={reference_dir}", *overrides])
    assert result.returncode == 0, result.stderr[-3000:]
    stopped_at = _interrupted_then_resumed(interrupted_dir, overrides, (sys.executable, "-m", "safe_rlhf.train"))
    assert 2 <= stopped_at < 40
    reference, interrupted = loss_by_step(reference_dir), loss_by_step(interrupted_dir)
    assert sorted(interrupted) == list(range(1, 41))  # every step exactly once across the two runs
    for step in range(1, 41):
        assert interrupted[step] == pytest.approx(reference[step], rel=1e-5, abs=1e-6), step


def _zero3_reference_logits(checkpoint_dir, model_dir):
    """Logits of a model rebuilt from the ZeRO-3 shards (an independent consolidation path)."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
    from transformers import AutoConfig, AutoModelForCausalLM

    state = get_fp32_state_dict_from_zero_checkpoint(str(checkpoint_dir / "policy"), tag="state")
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_dir))
    model.load_state_dict(state, strict=False)
    return model


@pytest.mark.distributed
# torchrun starts the same ranks with the same environment variables; it runs in the slow tier to keep make test short
# (the SLURM requeue test there also runs under torchrun).
@pytest.mark.parametrize("launcher", ["deepspeed", pytest.param("torchrun", marks=pytest.mark.slow)])
def test_two_rank_zero3_sft_exports_the_engine_weights(tmp_path, safe_rlhf_cache, launcher):
    run_dir = tmp_path / launcher
    port = str(find_free_port())
    bin_dir = os.path.dirname(sys.executable)
    if launcher == "deepspeed":
        prefix = [
            os.path.join(bin_dir, "deepspeed"),
            "--num_gpus",
            "2",
            "--master_port",
            port,
            "--module",
            "safe_rlhf.train",
        ]
    else:
        prefix = [
            os.path.join(bin_dir, "torchrun"),
            "--nproc_per_node",
            "2",
            "--master_port",
            port,
            "-m",
            "safe_rlhf.train",
        ]
    overrides = [
        f"output_dir={run_dir}",
        "deepspeed=zero3",
        *FAST,
        "train.max_steps=8",
        "train.save_steps=8",
        "train.eval_steps=0",
    ]
    result = run_cli([*prefix, "--config-name", "sft", *overrides], env={"OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, (result.stdout[-2000:], result.stderr[-3000:])
    steps = loss_by_step(run_dir)
    assert sorted(steps) == list(range(1, 9))
    assert "WORLD_SIZE=2" in (run_dir / "command.txt").read_text()
    from transformers import AutoModelForCausalLM

    exported = AutoModelForCausalLM.from_pretrained(run_dir / "model")
    rebuilt = _zero3_reference_logits(run_dir / "checkpoints" / "step-8", run_dir / "model")
    vocab = exported.config.vocab_size
    torch.testing.assert_close(probe_logits(exported, vocab), probe_logits(rebuilt, vocab), rtol=1e-5, atol=1e-5)


@pytest.mark.integration
def test_multirun_sweep_runs_each_job_in_its_own_directory_with_all_loggers(tmp_path, safe_rlhf_cache):
    sweep_dir = tmp_path / "sweep"
    result = train_cli(
        [
            "--multirun",
            f"output_dir={sweep_dir}",
            "optim.lr=1e-3,3e-3",
            "train.max_steps=2",
            "logger=all",
            "train.eval_steps=0",
            "train.export=false",
            "train.batch_size=16",
            "train.micro_batch_size=8",
            "train.log_steps=1",
        ]
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for job, lr in (("0", "0.001"), ("1", "0.003")):
        assert f"lr: {lr}" in (sweep_dir / job / "config.yaml").read_text()
        assert len(loss_by_step(sweep_dir / job)) == 2
        assert list((sweep_dir / job / "tensorboard").iterdir())  # tensorboard event file
        assert list((sweep_dir / job / "wandb").glob("offline-run-*"))  # wandb offline without an API key


def deepspeed_prefix(ranks: int = 2) -> list[str]:
    deepspeed = os.path.join(os.path.dirname(sys.executable), "deepspeed")
    return [deepspeed, "--num_gpus", str(ranks), "--master_port", str(find_free_port()), "--module", "safe_rlhf.train"]


# Slow tier (about 80 s): keeps `make test` under 15 minutes on 2 cores; `make test-slow` runs it.
@pytest.mark.slow
@pytest.mark.distributed
def test_two_rank_zero3_sft_resume_after_sigterm_gives_the_same_loss_sequence(tmp_path, safe_rlhf_cache):
    overrides = ["deepspeed=zero3", *FAST, "train.max_steps=16", "train.eval_steps=0", "train.export=false"]
    reference_dir = tmp_path / "reference"
    result = run_cli([*deepspeed_prefix(), "--config-name", "sft", f"output_dir={reference_dir}", *overrides])
    assert result.returncode == 0, result.stderr[-3000:]
    stopped_at = _interrupted_then_resumed(
        tmp_path / "interrupted", overrides, tuple(deepspeed_prefix()), exit_codes=(-15, 1, 75),
        resume_prefix=tuple(deepspeed_prefix()),
    )  # fmt: skip
    assert 2 <= stopped_at < 16
    reference, interrupted = loss_by_step(reference_dir), loss_by_step(tmp_path / "interrupted")
    assert sorted(interrupted) == list(range(1, 17))
    for step in range(1, 17):
        assert interrupted[step] == pytest.approx(reference[step], rel=1e-5, abs=1e-6), step
