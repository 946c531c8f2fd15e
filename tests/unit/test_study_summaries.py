"""The study summaries (system messages, length interventions): numbers from hand-written arena summaries."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from safe_rlhf.analysis import length_study, system_study

pytestmark = pytest.mark.unit


def write(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload))


def policy(helpfulness: float, length: float, reward: float, harm: float = 0.0, adherence: float | None = None):
    values = {"true_helpfulness": helpfulness, "mean_length": length, "mean_reward": reward, "true_harm_rate": harm}
    return values | ({"true_adherence": adherence} if adherence is not None else {})


def test_length_study_gain_kept_and_length_cut_by_hand(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    for seed, (ppo_gain, fix_gain) in {"1": (1.0, 0.95), "2": (2.0, 1.8)}.items():
        write(tmp_path / f"seed-{seed}" / "arena" / "summary.json", {"policies": {
            "sft": policy(1.0, 5.0, 0.0), "ppo": policy(1.0 + ppo_gain, 9.0, 2.0),
            "ppo_fix": policy(1.0 + fix_gain, 6.0, 1.0)}})  # fmt: skip
        write(tmp_path / f"seed-{seed}" / "length_bias" / "summary.json",
              {"gain_decomposition": {"ppo": {"fraction_explained_by_length": 0.4}}})  # fmt: skip
    length_study.main([str(tmp_path)])
    summary = json.loads((tmp_path / "summary.json").read_text())
    fix = summary["per_seed"]["1"]["ppo_fix"]
    # gain 0.95 of PPO's 1.0; length +1 of PPO's +4: 75% of the growth cut
    assert fix["gain_kept"] == pytest.approx(0.95) and fix["length_cut"] == pytest.approx(0.75)
    assert summary["per_seed"]["2"]["ppo_fix"]["gain_kept"] == pytest.approx(0.9)
    assert summary["mean"]["ppo_fix"]["gain_kept"] == pytest.approx(0.925)
    assert summary["per_seed"]["1"]["ppo"]["share_explained_by_length"] == 0.4
    assert summary["meets_target"] == ["ppo_fix"]
    assert "| ppo_fix |" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        length_study.main([str(tmp_path / "nothing")])
    assert exit_info.value.code == 2


def test_system_study_adherence_and_the_authority_gap_by_hand(tmp_path: Path):
    seed = tmp_path / "seed-1"
    write(seed / "arena_system_eval" / "summary.json", {"policies": {"sft": policy(2.0, 5, 0, adherence=0.6)}})
    write(seed / "arena_eval_prompts" / "summary.json", {"policies": {"sft": policy(1.5, 5, 0, harm=0.10)}})
    write(seed / "arena_system_eval_authority" / "summary.json", {"policies": {"sft": policy(1.4, 5, 0, harm=0.25)}})
    row = system_study.study_summary(tmp_path)["per_seed"]["1"]["sft"]
    assert row["unseen_adherence"] == 0.6 and row["plain_helpfulness"] == 1.5
    assert row["authority_minus_plain_harm"] == pytest.approx(0.15)


def test_steer_study_shorter_and_helpfulness_difference_by_hand(tmp_path: Path):
    from safe_rlhf.analysis import steer_study

    seed = tmp_path / "seed-1"
    write(seed / "arena_verbosity0" / "summary.json", {"policies": {"steerlm": policy(1.9, 6.0, 0, harm=0.1)}})
    write(seed / "arena_verbosity4" / "summary.json", {"policies": {"steerlm": policy(2.0, 10.0, 0, harm=0.2)}})
    steer_study.main([str(tmp_path)])
    row = json.loads((tmp_path / "summary.json").read_text())["per_seed"]["1"]["steerlm"]
    assert row["shorter"] == pytest.approx(0.4) and row["helpfulness_difference"] == pytest.approx(-0.05)
    assert (row["harm_low"], row["harm_high"]) == (0.1, 0.2)


def test_lora_study_gain_kept_against_full_ppo_lag_by_hand(tmp_path: Path):
    from safe_rlhf.analysis import lora_study

    def arena_policy(helpfulness: float, harm: float, unsafe: float) -> dict:
        return policy(helpfulness, 8.0, 0.0, harm=harm) | {"harmful_rate": unsafe}

    for seed, lora_helpfulness in {"1": 1.8, "2": 1.4}.items():
        write(tmp_path / f"seed-{seed}" / "arena" / "summary.json", {"policies": {
            "sft": arena_policy(1.0, 0.15, 0.14), "ppo_lag": arena_policy(2.0, 0.05, 0.06),
            "ppo_lag_lora": arena_policy(lora_helpfulness, 0.07, 0.08)}})  # fmt: skip
    summary = lora_study.study_summary(tmp_path)
    # full PPO-Lag gains 1.0 over SFT; LoRA 0.8 (seed 1) and 0.4 (seed 2): 80% and 40%, mean 60%
    assert summary["per_seed"]["1"]["ppo_lag_lora"]["gain_kept"] == pytest.approx(0.8)
    assert summary["mean"]["ppo_lag_lora"]["gain_kept"] == pytest.approx(0.6)
    assert summary["per_seed"]["2"]["ppo_lag"]["gain_kept"] == pytest.approx(1.0)
    assert summary["mean"]["ppo_lag_lora"]["unsafe_rate"] == pytest.approx(0.08)
