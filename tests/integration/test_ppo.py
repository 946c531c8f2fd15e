"""PPO recipes end to end on tiny random models: metrics, multiplier agreement across ranks, resume, ZeRO-3."""

from __future__ import annotations

import json
import math
import os
import sys

import pytest

from safe_rlhf.distributed import find_free_port
from tests.conftest import run_cli, train_cli
from tests.integration.ppo_helpers import build_two_path_actor, ppo_overrides
from tests.integration.sft_helpers import read_metrics
from tests.integration.test_sft import _interrupted_then_resumed


@pytest.fixture(scope="module")
def ppo_inputs(tmp_path_factory, safe_rlhf_cache):
    return ppo_overrides(tmp_path_factory.mktemp("ppo-inputs"))


@pytest.mark.integration
@pytest.mark.parametrize("recipe", ["ppo", "ppo_lag", "ppo_reward_shaping"])
def test_each_ppo_recipe_runs_and_logs_its_metrics(tmp_path, ppo_inputs, recipe):
    run_dir = tmp_path / recipe
    result = train_cli([f"output_dir={run_dir}", *ppo_inputs, "train.max_steps=2"], config_name=recipe)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [m for m in read_metrics(run_dir) if "train/reward" in m]
    assert [m["step"] for m in rows] == [1, 2]
    for key in ("train/kl", "train/actor_loss", "train/reward_critic_loss", "train/clip_fraction",
                "train/response_length", "train/no_eos_rate", "time/generation", "time/learning",
                "time/generated_tokens_per_second", "train/cost"):  # fmt: skip
        assert key in rows[-1], key
    has_lambda = "train/lambda_0" in rows[-1]
    assert has_lambda == (recipe == "ppo_lag")
    if recipe == "ppo_lag":
        assert "train/cost_critic_loss" in rows[-1] and "train/cost_window_mean_0" in rows[-1]


@pytest.mark.integration
def test_ppo_lag_resume_after_sigterm_gives_the_same_metrics(tmp_path, ppo_inputs):
    overrides = [*ppo_inputs, "train.max_steps=8", "train.log_steps=1"]
    reference_dir = tmp_path / "reference"
    result = train_cli([f"output_dir={reference_dir}", *overrides], config_name="ppo_lag")
    assert result.returncode == 0, result.stderr[-3000:]
    interrupted_dir = tmp_path / "interrupted"
    prefix = (sys.executable, "-m", "safe_rlhf.train")
    # _interrupted_then_resumed waits on train/loss; PPO logs train/reward: use its config name and key.
    stopped_at = _interrupted_then_resumed(
        interrupted_dir, overrides, prefix, config_name="ppo_lag", key="train/reward"
    )
    assert 2 <= stopped_at < 8
    reference = {m["step"]: m for m in read_metrics(reference_dir) if "train/reward" in m}
    resumed = {m["step"]: m for m in read_metrics(interrupted_dir) if "train/reward" in m}
    assert sorted(resumed) == list(range(1, 9))
    for step in range(1, 9):
        for key in ("train/reward", "train/lambda_0", "train/actor_loss", "train/cost_window_mean_0"):
            assert resumed[step][key] == pytest.approx(reference[step][key], rel=1e-4, abs=1e-5), (step, key)


@pytest.fixture(scope="module")
def two_path_actor(tmp_path_factory, safe_rlhf_cache):
    return build_two_path_actor(tmp_path_factory.mktemp("two-path-actor") / "actor")


@pytest.mark.distributed
# make test keeps the default generation (gathered weights); layer-wise generation is the slow tier's (make test's
# budget: both take about 50 s).
@pytest.mark.parametrize("gather_weights", [True, pytest.param(False, marks=pytest.mark.slow)])
def test_two_rank_zero3_ppo_lag_with_ranks_that_stop_generating_at_different_steps(
    tmp_path, ppo_inputs, two_path_actor, gather_weights
):
    """One prompt per rank and an actor whose response is either 2 tokens or runs to the limit: in some iterations
    one rank has finished generating while the other still samples. Before the fix, gathered generation kept ZeRO-3's
    per-module hooks, which issued collectives on every token, and this run died with gloo's "Received data size
    doesn't match expected size"."""
    run_dir = tmp_path / f"z3-{gather_weights}"
    deepspeed = os.path.join(os.path.dirname(sys.executable), "deepspeed")
    overrides = [o for o in ppo_inputs if not o.startswith(("train.", "actor.", "generation."))]
    command = [deepspeed, "--num_gpus", "2", "--master_port", str(find_free_port()), "--module", "safe_rlhf.train",
               "--config-name", "ppo_lag", f"output_dir={run_dir}", "deepspeed=zero3", *overrides,
               f"actor.name_or_path={two_path_actor}", "train.rollout_batch_size=2", "train.mini_batch_size=2",
               "train.micro_batch_size=1", "generation.max_new_tokens=8", "train.max_steps=4", "train.save_steps=4",
               f"generation.gather_weights={gather_weights}",
               # batch statistics with one episode per micro-batch: a per-micro-batch std was NaN here
               "ppo.reward_scaling_clip=3.0", "ppo.length_penalty_coeff=0.01"]  # fmt: skip
    result = run_cli(command, env={"OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, (result.stdout[-2000:], result.stderr[-3000:])
    rows = [m for m in read_metrics(run_dir) if "train/lambda_0" in m]
    assert [m["step"] for m in rows] == [1, 2, 3, 4]
    assert all(math.isfinite(m["train/reward"]) and m["train/nonfinite_steps"] == 0 for m in rows), rows
    # Every response is 2 tokens or 8; a mean under the maximum means the ranks' lengths differed (1 prompt each).
    lengths = [(m["train/response_length"], m["train/response_length_max"]) for m in rows]
    assert all(mean in (2.0, 5.0, 8.0) for mean, _ in lengths), lengths
    assert any(mean == 5.0 and longest == 8.0 for mean, longest in lengths), lengths
    checkpoint = run_dir / "checkpoints" / "step-4"
    rank_states = [json.loads((checkpoint / f"rank_state_rank{r}.json").read_text()) for r in (0, 1)]
    assert rank_states[0] == rank_states[1]  # the multiplier (value, window, step count) is identical on both ranks
    assert len(rank_states[0]["multipliers"][0]["window"]) == 8  # 4 iterations x 2 episodes, from both ranks


@pytest.mark.integration
def test_arena_compares_policies_and_writes_report(tmp_path, ppo_inputs):
    reward = next(o.split("=", 1)[1] for o in ppo_inputs if o.startswith("reward_model="))
    cost = next(o.split("=", 1)[1] for o in ppo_inputs if o.startswith("cost_model="))
    run_dir = tmp_path / "arena"
    result = run_cli([sys.executable, "-m", "safe_rlhf.evaluate", "--config-name", "arena", "+policies.sft=tiny",
                      "+policies.other=tiny", "baseline=sft", f"reward_model={reward}", f"cost_model={cost}",
                      f"output_dir={run_dir}", "generation.max_new_tokens=6", "threshold=0.1"])  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    sft, other = summary["policies"]["sft"], summary["policies"]["other"]
    assert sft["n"] == other["n"] == 256  # every held-out toy-world prompt, once per policy
    # Same weights, same prompts, same sampling seeds: identical answers, so every comparison is a tie.
    assert sft["mean_reward"] == pytest.approx(other["mean_reward"])
    assert summary["versus_sft"]["other"]["reward"]["tie"] == pytest.approx(1.0)
    assert "true_harm_rate" in sft and "harm_rate_by_severity" in sft  # toy-world judges were applied
    assert len((run_dir / "responses.jsonl").read_text().splitlines()) == 512
    report = (run_dir / "report.md").read_text()
    assert "| sft |" in report and "plots/reward_cost_scatter.png" in report
    assert (run_dir / "plots" / "reward_cost_scatter.png").stat().st_size > 1000


# Slow tier (about 80 s): keeps `make test` under 15 minutes on 2 cores; `make test-slow` runs it.
@pytest.mark.slow
@pytest.mark.distributed
def test_two_rank_ppo_lag_resume_after_sigterm_gives_the_same_metrics(tmp_path, ppo_inputs):
    from tests.integration.test_sft import deepspeed_prefix

    overrides = [*ppo_inputs, "deepspeed=zero2", "train.max_steps=6", "train.log_steps=1"]
    reference_dir = tmp_path / "reference"
    result = run_cli([*deepspeed_prefix(), "--config-name", "ppo_lag", f"output_dir={reference_dir}", *overrides])
    assert result.returncode == 0, result.stderr[-3000:]
    interrupted_dir = tmp_path / "interrupted"
    stopped_at = _interrupted_then_resumed(
        interrupted_dir, overrides, tuple(deepspeed_prefix()), config_name="ppo_lag", key="train/reward",
        exit_codes=(-15, 1, 75), resume_prefix=tuple(deepspeed_prefix()),
    )  # fmt: skip
    assert 2 <= stopped_at < 6
    reference = {m["step"]: m for m in read_metrics(reference_dir) if "train/reward" in m}
    resumed = {m["step"]: m for m in read_metrics(interrupted_dir) if "train/reward" in m}
    assert sorted(resumed) == list(range(1, 7))
    for step in range(1, 7):
        for key in ("train/reward", "train/lambda_0", "train/actor_loss", "train/cost_window_mean_0"):
            assert resumed[step][key] == pytest.approx(reference[step][key], rel=1e-4, abs=1e-5), (step, key)


@pytest.mark.integration
def test_two_constraints_and_ptx(tmp_path, ppo_inputs):
    """A mean-cost and an unsafe-rate constraint from one cost-model output, each with its own PID multiplier (EMA
    smoothing, P/I/D parts logged), plus the ptx term on SFT data, and checkpoint selection on validation prompts.
    The prompts carry system messages, and the rate constraint is taken over the risky prompts only (a group)."""
    run_dir = tmp_path / "two-constraints"
    overrides = [f"output_dir={run_dir}", *ppo_inputs, "train.max_steps=2", "lagrange.thresholds=[-100.0,1.0]",
                 "lagrange.constraint_types=[mean,rate]", "lagrange.cost_indices=[0,0]", "data.ptx=toyworld:sft",
                 "ppo.ptx_coeff=1.0", "lagrange.mode=pid", "lagrange.kp=0.1", "lagrange.p_ema_alpha=0.5",
                 "train.select_steps=1", "data.validation_fraction=0.01", "train.export=true",
                 "data.train=toyworld:system_prompts", "data.max_prompt_length=64",
                 'lagrange.prompt_groups=[null,"risky=true"]']  # fmt: skip
    result = train_cli(overrides, config_name="ppo_lag")
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [m for m in read_metrics(run_dir) if "train/lambda_1" in m]
    assert [m["step"] for m in rows] == [1, 2]
    # Constraint 0 (mean cost <= -100) is violated: its lambda grows; constraint 1 (unsafe rate <= 1) never is.
    assert rows[-1]["train/lambda_0"] > 1.0 > rows[-1]["train/lambda_1"]
    for key in ("lambda_p_0", "lambda_i_0", "lambda_d_0", "constraint_violation_1", "entropy",
                "reward_explained_variance", "cost_explained_variance_0", "approx_kl"):  # fmt: skip
        assert f"train/{key}" in rows[-1], key
    # Selection: both iterations were candidates; nothing meets "mean cost <= -100", so the smallest violation wins.
    selection = json.loads((run_dir / "selection.json").read_text())
    assert [c["step"] for c in selection["candidates"]] == [1, 2]
    assert selection["reason"].startswith("no evaluated checkpoint meets every constraint")
    violations = [c["constraint_values"][0] + 100.0 for c in selection["candidates"]]
    assert selection["selected_step"] in [1 + i for i, v in enumerate(violations) if v == min(violations)]
    assert (run_dir / "model" / "config.json").exists() and (run_dir / "model_last" / "config.json").exists()
    assert 0.0 <= rows[-1]["train/episode_cost_1"] <= 1.0  # a rate


@pytest.mark.integration
def test_ppo_with_a_five_attribute_helpsteer_reward_model_logs_each_attribute(tmp_path, ppo_inputs):
    """A HelpSteer-style reward model (5 outputs, no weights recorded): the critic gets a one-output head, the reward
    is the default HelpSteer combination, and each attribute's mean is logged; with no transform in the way the
    logged reward is exactly sum_k w_k * mean(attribute_k)."""
    from safe_rlhf.score_model import HELPSTEER_ATTRIBUTE_WEIGHTS, HELPSTEER_ATTRIBUTES
    from tests.integration.ppo_helpers import build_score_model

    reward = build_score_model(tmp_path / "helpsteer_rm", "reward", score_dim=5,
                               attribute_names=list(HELPSTEER_ATTRIBUTES), objective="regression")  # fmt: skip
    run_dir = tmp_path / "ppo"
    overrides = [*(o for o in ppo_inputs if not o.startswith("reward_model=")), f"reward_model={reward}",
                 f"output_dir={run_dir}", "train.max_steps=2", "generation.no_eos_penalty=null"]  # fmt: skip
    result = train_cli(overrides, config_name="ppo")
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [m for m in read_metrics(run_dir) if "train/reward" in m]
    assert [m["step"] for m in rows] == [1, 2]
    for row in rows:
        attributes = [row[f"train/reward_{name}"] for name in HELPSTEER_ATTRIBUTES]
        combined = sum(w * a for w, a in zip(HELPSTEER_ATTRIBUTE_WEIGHTS, attributes))
        assert row["train/reward"] == pytest.approx(combined, rel=1e-4, abs=1e-5)

    # A five-attribute regression model with unnamed outputs and no weights: a one-line error naming the key.
    unnamed = build_score_model(tmp_path / "unnamed_rm", "reward", score_dim=5, objective="regression")
    overrides = [*(o for o in ppo_inputs if not o.startswith("reward_model=")), f"reward_model={unnamed}",
                 f"output_dir={tmp_path / 'bad'}", "train.max_steps=1"]  # fmt: skip
    result = train_cli(overrides, config_name="ppo")
    assert result.returncode == 2
    assert "no attribute weights recorded: set reward_attribute_weights=[...] (5 numbers)" in result.stderr
