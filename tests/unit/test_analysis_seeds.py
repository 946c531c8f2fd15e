"""Summaries over training seeds, against numbers computed by hand."""

import pytest

from safe_rlhf.analysis.seeds import aggregate_over_seeds, helpfulness_harm_points, seeds_table

pytestmark = pytest.mark.unit

PER_SEED = {
    1: {"sft": {"true_helpfulness": 1.0, "true_harm_rate": 0.10}, "ppo_lag": {"true_helpfulness": 1.5,
                                                                              "true_harm_rate": 0.02}},
    2: {"sft": {"true_helpfulness": 1.2, "true_harm_rate": 0.20}, "ppo_lag": {"true_helpfulness": 1.7,
                                                                              "true_harm_rate": None}},
    3: {"sft": {"true_helpfulness": 1.4, "true_harm_rate": 0.30}},
}  # fmt: skip


def test_mean_sample_std_and_range_over_the_seeds_that_have_a_value():
    aggregate = aggregate_over_seeds(PER_SEED, keys=("true_helpfulness", "true_harm_rate"))
    sft = aggregate["sft"]
    # helpfulness [1.0, 1.2, 1.4]: mean 1.2, sample std sqrt((0.04 + 0 + 0.04) / 2) = 0.2
    assert sft["true_helpfulness"] == pytest.approx({"mean": 1.2, "std": 0.2, "min": 1.0, "max": 1.4, "n": 3})
    assert sft["seeds"] == [1, 2, 3]
    # ppo_lag: harm only in seed 1 (None in seed 2 is left out): one value, std 0
    assert aggregate["ppo_lag"]["true_harm_rate"] == pytest.approx({"mean": 0.02, "std": 0.0, "min": 0.02,
                                                                    "max": 0.02, "n": 1})  # fmt: skip
    rows = seeds_table(aggregate, ("true_helpfulness",))
    assert rows[0] == {"policy": "sft", "seeds": 3, "true_helpfulness": "1.200 +- 0.200"}


def test_helpfulness_harm_points_need_both_values(tmp_path):
    points = helpfulness_harm_points(PER_SEED)
    assert points["ppo_lag"] == [(1, 0.02, 1.5)]
    assert [seed for seed, _, _ in points["sft"]] == [1, 2, 3]
    from safe_rlhf.analysis.plots import plot_helpfulness_vs_harm

    shaping = {"shaping_0p1": [(1, 0.2, 1.6)], "shaping_2": [(1, 0.01, 1.3)]}
    path = plot_helpfulness_vs_harm({**points, **shaping}, tmp_path / "front.png")
    assert path.stat().st_size > 1000
