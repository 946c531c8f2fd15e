"""Faults: non-finite losses are skipped and then stop the run with a good checkpoint; damaged checkpoints are named."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import train_cli
from tests.integration.sft_helpers import loss_by_step, probe_logits, read_metrics

FAST = ["logger=none", "train.micro_batch_size=8", "train.batch_size=16", "train.log_steps=1", "train.eval_steps=0"]
# Resume a 2-step run for 4 steps: max_steps changes on purpose, which the resume config check must be told.
LONGER = ["train.max_steps=4", "train.resume=auto", "train.resume_allow_changes=[train.max_steps]"]


@pytest.mark.integration
def test_a_non_finite_step_is_skipped_and_training_goes_on(tmp_path, safe_rlhf_cache):
    run_dir = tmp_path / "nan-once"
    result = train_cli([f"output_dir={run_dir}", *FAST, "train.max_steps=6", "train.inject_nonfinite_steps=[3]"])
    assert result.returncode == 0, result.stderr[-3000:]
    reports = [line for line in result.stderr.splitlines() if "non-finite loss" in line]
    # Both micro-batches of step 3 (16 = 2 x 8) were poisoned, each reported with its samples.
    assert [r.split(" (samples")[0] for r in reports] == [
        "step 3 (rank 0): non-finite loss in micro-batch 0",
        "step 3 (rank 0): non-finite loss in micro-batch 1",
    ]
    rows = {m["step"]: m for m in read_metrics(run_dir) if "train/loss" in m}
    assert sorted(rows) == list(range(1, 7))
    assert rows[2]["train/nonfinite_steps"] == 0 and rows[6]["train/nonfinite_steps"] == 1
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(run_dir / "model")
    assert torch.isfinite(probe_logits(model, model.config.vocab_size)).all()  # no NaN reached the weights


@pytest.mark.integration
def test_too_many_non_finite_steps_stop_with_a_loadable_checkpoint(tmp_path, safe_rlhf_cache):
    run_dir = tmp_path / "nan-streak"
    overrides = [f"output_dir={run_dir}", *FAST, "train.max_steps=8", "train.max_nonfinite_steps=2",
                 "train.export=false"]  # fmt: skip
    result = train_cli([*overrides, "train.inject_nonfinite_steps=[3,4]"])
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error")]
    assert len(errors) == 1 and "2 optimizer steps in a row (the last at step 4)" in errors[0]
    assert "Traceback" not in result.stderr
    assert (run_dir / "checkpoints" / "latest").read_text() == "step-4"
    # The checkpoint is good: resuming (without the injected faults) finishes the run from step 5.
    resumed = train_cli([*overrides, "train.resume=auto"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert sorted(loss_by_step(run_dir)) == list(range(1, 9))


@pytest.mark.integration
def test_a_damaged_checkpoint_is_reported_by_file(tmp_path, safe_rlhf_cache):
    run_dir = tmp_path / "damaged"
    overrides = [f"output_dir={run_dir}", *FAST, "train.max_steps=2", "train.save_steps=2", "train.export=false"]
    assert train_cli(overrides).returncode == 0
    state = run_dir / "checkpoints" / "step-2" / "trainer_state.json"
    state.write_text(state.read_text().replace('"step": 2', '"step": 1'))  # same length, other content
    result = train_cli([*overrides, *LONGER])
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error")]
    assert len(errors) == 1 and "trainer_state.json" in errors[0] and "sha256" in errors[0]
    shard = next((run_dir / "checkpoints" / "step-2" / "policy").rglob("*model_states.pt"))
    shard.write_bytes(shard.read_bytes()[:100])  # truncated
    state.write_text(state.read_text().replace('"step": 1', '"step": 2'))
    result = train_cli([*overrides, *LONGER])
    assert result.returncode == 2 and shard.name in result.stderr and "truncated" in result.stderr


@pytest.mark.integration
def test_ppo_lag_skips_a_non_finite_iteration(tmp_path, safe_rlhf_cache):
    from tests.integration.ppo_helpers import ppo_overrides

    run_dir = tmp_path / "ppo-nan"
    overrides = [f"output_dir={run_dir}", *ppo_overrides(tmp_path / "inputs"), "train.max_steps=3",
                 "train.inject_nonfinite_steps=[2]"]  # fmt: skip
    result = train_cli(overrides, config_name="ppo_lag")
    assert result.returncode == 0, result.stderr[-3000:]
    reports = [line for line in result.stderr.splitlines() if "non-finite actor loss" in line]
    assert reports and all(line.startswith("iteration 2 (rank 0)") for line in reports)
    rows = {m["step"]: m for m in read_metrics(run_dir) if "train/reward" in m}
    assert rows[1]["train/nonfinite_steps"] == 0 and rows[3]["train/nonfinite_steps"] == 1


class Payload:
    """Not a class any checkpoint may hold: unpickling it must be refused."""


@pytest.mark.integration
def test_a_checkpoint_with_foreign_pickled_objects_is_refused(tmp_path, safe_rlhf_cache):
    from safe_rlhf.engines import write_manifest

    run_dir = tmp_path / "forged"
    overrides = [f"output_dir={run_dir}", *FAST, "train.max_steps=2", "train.save_steps=2", "train.export=false"]
    assert train_cli(overrides).returncode == 0
    checkpoint = run_dir / "checkpoints" / "step-2"
    shard = next((checkpoint / "policy").rglob("*model_states.pt"))
    state = torch.load(shard, weights_only=True)
    state["extra"] = Payload()
    torch.save(state, shard)
    write_manifest(checkpoint)  # a forger rewrites the manifest too: the restricted unpickler must still refuse
    result = train_cli([*overrides, *LONGER])
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error")]
    assert len(errors) == 1 and "refused to unpickle tests.integration.test_faults.Payload" in errors[0]
    assert "step-2/policy" in errors[0]


@pytest.mark.integration
def test_an_empty_training_set_stops_at_start_up_with_one_line(tmp_path, safe_rlhf_cache):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    result = train_cli([f"output_dir={tmp_path / 'run'}", f"data.train=sft:{empty}", "data.eval_fraction=0.0", *FAST])
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error")]
    assert len(errors) == 1 and "0 training samples make no full batch of train.batch_size=16" in errors[0]
    assert "Traceback" not in result.stderr
