"""DPO and SafeDPO end to end on the tiny model: metrics, export, labels, resume, and a 2-rank ZeRO-3 launch.

The policy starts as a copy of the reference, so at the first optimizer step (before any update) every pair has
h = 0: the DPO loss is -log sigmoid(0) = ln 2 = 0.693147 with implicit rewards 0 (no pair is ranked right), and the
SafeDPO loss with margin 1 is ln 2 on pairs without the margin and -log sigmoid(-1) = 1.313262 on those with it.
"""

from __future__ import annotations

import math
import os
import sys

import pytest

from safe_rlhf.distributed import find_free_port
from tests.conftest import run_cli, train_cli
from tests.integration.sft_helpers import loss_by_step, probe_logits, read_metrics

LN2 = math.log(2.0)
FAST = [
    "model.name_or_path=tiny",
    "logger=none",
    "train.batch_size=8",
    "train.micro_batch_size=4",
    "train.log_steps=1",
    "train.eval_steps=0",
    "data.train=toyworld:preference*0.05",  # 300 training pairs: tokenizing all 6000 costs seconds
]
EVAL = "data.eval=toyworld:preference_test*0.02"  # 20 held-out pairs
PAIR_METRICS = ("loss", "reward_accuracy", "reward_margin", "chosen_reward", "rejected_reward", "chosen_logp",
                "rejected_logp")  # fmt: skip


def by_step(run_dir) -> dict[int, dict[str, float]]:
    rows: dict[int, dict[str, float]] = {}
    for row in read_metrics(run_dir):
        rows.setdefault(int(row["step"]), {}).update(row)
    return rows


@pytest.mark.integration
def test_dpo_run_logs_pair_metrics_and_exports_a_loadable_policy(tmp_path, safe_rlhf_cache):
    run_dir = tmp_path / "dpo"
    # step 2 gets a NaN loss (fault injection): skipped on every micro-batch, counted, and the run goes on
    overrides = [f"output_dir={run_dir}", *FAST, EVAL, "train.max_steps=3", "optim.lr=1e-3",
                 "train.inject_nonfinite_steps=[2]"]  # fmt: skip
    result = train_cli(overrides, config_name="dpo")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "step 2 (rank 0): non-finite loss in micro-batch 0" in result.stderr
    steps = by_step(run_dir)
    assert sorted(steps) == [1, 2, 3]
    assert "train/loss" not in steps[2] and steps[2]["train/nonfinite_steps"] == 1.0
    assert steps[3]["train/nonfinite_steps"] == 1.0
    first = steps[1]
    for key in PAIR_METRICS:
        assert math.isfinite(steps[3][f"train/{key}"]) and math.isfinite(steps[3][f"eval/{key}"]), key
    # step 1: policy == reference, h = 0 for every pair
    assert first["train/loss"] == pytest.approx(LN2, abs=1e-5)
    assert first["train/reward_margin"] == pytest.approx(0.0, abs=1e-5)
    assert first["train/reward_accuracy"] == 0.0
    assert first["train/chosen_logp"] < 0 and first["train/rejected_logp"] < 0  # summed log-probs of responses
    assert "train/swapped_fraction" not in first  # SafeDPO only
    # tokens the policy read per pair (chosen + rejected, no padding): two sequences of 2..max_length tokens each
    tokens_per_pair = first["train/input_tokens_per_second"] / first["train/pairs_per_second"]
    assert 2 * 4 < tokens_per_pair <= 2 * 64, tokens_per_pair
    # after two updates the policy has moved away from the reference on the held-out pairs
    assert steps[3]["eval/loss"] != pytest.approx(LN2, abs=1e-4)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from safe_rlhf.assets import resolve_model_path

    model = AutoModelForCausalLM.from_pretrained(run_dir / "model")
    tokenizer = AutoTokenizer.from_pretrained(run_dir / "model")
    reference = AutoModelForCausalLM.from_pretrained(resolve_model_path("tiny"))
    trained_logits, reference_logits = probe_logits(model, len(tokenizer)), probe_logits(reference, len(tokenizer))
    assert trained_logits.isfinite().all()
    assert (trained_logits - reference_logits).abs().max() > 1e-4  # the exported weights are the trained ones


@pytest.mark.integration
def test_safe_dpo_with_precomputed_reference_logs_swaps_and_margins(tmp_path, safe_rlhf_cache):
    run_dir = tmp_path / "safe_dpo"
    overrides = [f"output_dir={run_dir}", *FAST, EVAL, "train.max_steps=2", "train.export=false",
                 "dpo.precompute_reference=true", "dpo.safety_margin=1.0"]  # fmt: skip
    result = train_cli(overrides, config_name="safe_dpo")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "precomputed" in result.stdout and "swapped to their safe response" in result.stdout
    steps = by_step(run_dir)
    first = steps[1]
    swapped, margin = first["train/swapped_fraction"], first["train/margin_fraction"]
    assert 0.0 <= swapped <= margin <= 1.0  # every swapped pair is safe-vs-unsafe, so has the margin
    # h = 0: (1 - m) ln 2 + m (-log sigmoid(-1)) with m the share of pairs with the margin on, plus safe_dpo.yaml's
    # dpo.nll_coeff = 1 times the chosen responses' NLL per token
    assert first["train/nll"] > 0
    expected = (1 - margin) * LN2 + margin * 1.313262 + 1.0 * first["train/nll"]
    assert first["train/loss"] == pytest.approx(expected, abs=1e-5)
    assert 0.0 <= steps[2]["eval/swapped_fraction"] <= steps[2]["eval/margin_fraction"] <= 1.0
    # over the 300 training pairs, about a sixth are unsafe-better-than-safe pairs that get swapped
    assert any(0.0 < steps[s]["train/swapped_fraction"] for s in steps if "train/swapped_fraction" in steps[s])


@pytest.mark.integration
def test_safe_dpo_refuses_a_dataset_without_safety_labels(tmp_path, safe_rlhf_cache):
    spec = "hh-rlhf:tests/fixtures/data/hh_rlhf.jsonl"
    overrides = [f"output_dir={tmp_path / 'run'}", *FAST, f"data.train={spec}", "data.eval=null"]  # the last wins
    result = train_cli(overrides, config_name="safe_dpo")
    assert result.returncode == 2, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("error")]
    assert len(lines) == 1 and f"dataset '{spec}'" in lines[0] and "is_response_0_safe" in lines[0], result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.integration
@pytest.mark.slow
# safe_dpo with the precomputed reference: the cache is computed again at the resume and must give the same losses
@pytest.mark.parametrize(("recipe", "extra"), [("dpo", []), ("safe_dpo", ["dpo.precompute_reference=true"])])
def test_dpo_resume_after_sigterm_gives_the_same_loss_sequence(tmp_path, safe_rlhf_cache, recipe, extra):
    from tests.integration.test_sft import _interrupted_then_resumed

    overrides = [*FAST, "train.max_steps=12", "train.export=false", "data.eval=null", "data.eval_fraction=0.0", *extra]
    reference_dir, interrupted_dir = tmp_path / "reference", tmp_path / "interrupted"
    result = train_cli([f"output_dir={reference_dir}", *overrides], config_name=recipe)
    assert result.returncode == 0, result.stderr[-3000:]
    stopped_at = _interrupted_then_resumed(
        interrupted_dir, overrides, (sys.executable, "-m", "safe_rlhf.train"), config_name=recipe
    )
    assert 2 <= stopped_at < 12
    reference, interrupted = loss_by_step(reference_dir), loss_by_step(interrupted_dir)
    assert sorted(interrupted) == list(range(1, 13))  # every step exactly once across the two runs
    for step in range(1, 13):
        assert interrupted[step] == pytest.approx(reference[step], rel=1e-5, abs=1e-6), step


@pytest.mark.distributed
# dpo: the reference is a ZeRO-3 frozen engine next to the policy; safe_dpo: the reference log-probs are
# precomputed, each rank its share of the pairs, then summed over the ranks. Both in the slow tier (make test is near
# its 15-minute budget; the 2-rank ZeRO-3 PPO and score-model runs cover the same engine plumbing there).
@pytest.mark.slow
@pytest.mark.parametrize("recipe", ["dpo", "safe_dpo"])
def test_two_rank_zero3_dpo(tmp_path, safe_rlhf_cache, recipe):
    run_dir = tmp_path / f"{recipe}-z3"
    deepspeed = os.path.join(os.path.dirname(sys.executable), "deepspeed")
    precompute = ["dpo.precompute_reference=true", "dpo.safety_margin=1.0", "dpo.nll_coeff=0"]
    extra = precompute if recipe == "safe_dpo" else []
    command = [deepspeed, "--num_gpus", "2", "--master_port", str(find_free_port()), "--module", "safe_rlhf.train",
               "--config-name", recipe, f"output_dir={run_dir}", "deepspeed=zero3", *FAST, "train.max_steps=2",
               "data.eval=toyworld:preference_test*0.021", *extra]  # 21 held-out pairs: 11 and 10 per rank  # fmt: skip
    result = run_cli(command, env={"OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, (result.stdout[-2000:], result.stderr[-3000:])
    steps = by_step(run_dir)
    assert sorted(steps) == [1, 2]
    # policy == reference at step 1, on both ranks' pairs (a rank with wrong reference log-probs would move h off 0)
    margin = steps[1].get("train/margin_fraction", 0.0)
    assert steps[1]["train/loss"] == pytest.approx((1 - margin) * LN2 + margin * 1.313262, abs=1e-5)
    assert math.isfinite(steps[2]["eval/loss"]) and 0.0 <= steps[2]["eval/reward_accuracy"] <= 1.0
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(run_dir / "model")  # consolidated from the ZeRO-3 shards
    assert probe_logits(model, model.config.vocab_size).isfinite().all()
    # The same global batch in one process: the tokens read per pair are summed over the ranks, not averaged.
    single_dir = tmp_path / f"{recipe}-single"
    single = train_cli([f"output_dir={single_dir}", *FAST, "train.max_steps=1", "data.eval=null", *extra],
                       config_name=recipe)  # fmt: skip
    assert single.returncode == 0, single.stderr[-3000:]
    one_rank, two_ranks = by_step(single_dir)[1], steps[1]
    assert two_ranks["train/input_tokens_per_second"] / two_ranks["train/pairs_per_second"] == pytest.approx(
        one_rank["train/input_tokens_per_second"] / one_rank["train/pairs_per_second"], rel=1e-9
    )
