"""safe_rlhf.analysis.length_bias: correlation sign, the reward gain decomposition by hand, preference length stats."""

import pytest

from safe_rlhf.analysis.length_bias import (
    preference_length_stats,
    reward_gain_decomposition,
    score_length_correlation,
)

pytestmark = pytest.mark.unit

SHORT, LONG = 10, 100  # with bucket_edges=[50]: bucket 0 = length < 50, bucket 1 = length >= 50


def test_correlation_sign():
    assert score_length_correlation([1.0, 2.0, 3.0], [10, 20, 30]) == pytest.approx(1.0)
    assert score_length_correlation([3.0, 2.0, 1.0], [10, 20, 30]) == pytest.approx(-1.0)
    assert score_length_correlation([1.0, 3.0, 2.0, 5.0], [1, 2, 3, 4]) > 0
    assert score_length_correlation([2.0, 2.0], [1, 9]) == 0.0  # constant scores
    with pytest.raises(ValueError, match="3 scores but 2 lengths"):
        score_length_correlation([1.0, 2.0, 3.0], [1, 2])


def test_all_gain_is_length_shift():
    # Same per-bucket means (short 1, long 3); after has more long answers.
    before = [(SHORT, 1.0)] * 3 + [(LONG, 3.0)]  # mean (3 + 3) / 4 = 1.5
    after = [(SHORT, 1.0)] + [(LONG, 3.0)] * 3  # mean (1 + 9) / 4 = 2.5
    result = reward_gain_decomposition(before, after, bucket_edges=[50])
    assert result["total_gain"] == pytest.approx(1.0)
    assert result["within_bucket_gain"] == pytest.approx(0.0)  # 0.25 * (1 - 1) + 0.75 * (3 - 3)
    assert result["length_shift_gain"] == pytest.approx(1.0)
    assert result["fraction_explained_by_length"] == pytest.approx(1.0)
    assert result["mean_length_before"] == pytest.approx(32.5)  # (30 + 100) / 4
    assert result["mean_length_after"] == pytest.approx(77.5)  # (10 + 300) / 4


def test_all_gain_is_within_buckets():
    # Same length distribution (one short, one long); after scores higher in both buckets.
    before = [(SHORT, 1.0), (LONG, 3.0)]  # mean 2
    after = [(SHORT, 2.0), (LONG, 5.0)]  # mean 3.5
    result = reward_gain_decomposition(before, after, bucket_edges=[50])
    assert result["total_gain"] == pytest.approx(1.5)
    assert result["within_bucket_gain"] == pytest.approx(1.5)  # 0.5 * (2 - 1) + 0.5 * (5 - 3)
    assert result["length_shift_gain"] == pytest.approx(0.0)
    assert result["fraction_explained_by_length"] == pytest.approx(0.0)


def test_mixed_gain_by_hand():
    before = [(SHORT, 1.0)] * 3 + [(LONG, 3.0)]  # bucket means 1 and 3; mean 1.5
    after = [(SHORT, 2.0)] + [(LONG, 4.0)] * 3  # bucket means 2 and 4; mean (2 + 12) / 4 = 3.5
    result = reward_gain_decomposition(before, after, bucket_edges=[50])
    # total = 3.5 - 1.5 = 2; after's weights 1/4 short, 3/4 long
    # within = 0.25 * (2 - 1) + 0.75 * (4 - 3) = 1.0; length shift = 2 - 1 = 1.0
    # check: sum_b (w_after - w_before) * m_before = (0.25 - 0.75) * 1 + (0.75 - 0.25) * 3 = 1.0
    assert result["total_gain"] == pytest.approx(2.0)
    assert result["within_bucket_gain"] == pytest.approx(1.0)
    assert result["length_shift_gain"] == pytest.approx(1.0)
    assert result["fraction_explained_by_length"] == pytest.approx(0.5)
    assert result["buckets"] == [
        {"bucket": 0, "low": None, "high": 50.0, "count_before": 3, "count_after": 1,
         "mean_before": 1.0, "mean_after": 2.0, "weight": 0.25},
        {"bucket": 1, "low": 50.0, "high": None, "count_before": 1, "count_after": 3,
         "mean_before": 3.0, "mean_after": 4.0, "weight": 0.75},
    ]  # fmt: skip


def test_after_samples_in_buckets_before_lacks_count_as_length_shift():
    before = [(SHORT, 1.0), (SHORT, 1.0)]  # mean 1, all in bucket 0
    after = [(SHORT, 2.0), (300, 10.0)]  # mean 6; 300 falls in bucket 2 (>= 200), which before lacks
    result = reward_gain_decomposition(before, after, bucket_edges=[50, 200])
    # shared buckets: {0}, weight 1 -> within = 1 * (2 - 1) = 1; total = 6 - 1 = 5; shift = 4
    assert result["within_bucket_gain"] == pytest.approx(1.0)
    assert result["length_shift_gain"] == pytest.approx(4.0)
    assert result["after_share_in_shared_buckets"] == pytest.approx(0.5)
    assert [b["count_after"] for b in result["buckets"]] == [1, 0, 1]
    assert result["buckets"][1]["mean_after"] is None


def test_quantile_edges_from_pooled_lengths():
    before = [(1, 0.0), (2, 0.0), (3, 0.0), (4, 0.0)]
    after = [(5, 1.0), (6, 1.0), (7, 1.0), (8, 1.0)]
    result = reward_gain_decomposition(before, after, num_buckets=2)
    # pooled sorted lengths 1..8, the 1/2 quantile cut at index 8 * 1 // 2 = 4 -> length 5
    assert result["bucket_edges"] == [5.0]
    # no bucket holds both sides: nothing is comparable at equal length, the whole gain counts as length shift
    assert result["within_bucket_gain"] == 0.0
    assert result["length_shift_gain"] == pytest.approx(1.0)
    # identical samples: zero gain, fraction undefined
    same = reward_gain_decomposition(before, before)
    assert same["total_gain"] == 0.0 and same["fraction_explained_by_length"] is None


def test_gain_decomposition_rejects_bad_input():
    with pytest.raises(ValueError, match="both sides"):
        reward_gain_decomposition([], [(1, 1.0)])
    with pytest.raises(ValueError, match="strictly increasing"):
        reward_gain_decomposition([(1, 1.0)], [(1, 1.0)], bucket_edges=[50, 50])


def test_preference_length_stats():
    # differences chosen - rejected: +5, -5, 0, +10
    stats = preference_length_stats([(10, 5), (5, 10), (7, 7), (20, 10)])
    assert stats == pytest.approx(
        {"n": 4, "chosen_longer": 0.5, "chosen_shorter": 0.25, "equal_length": 0.25, "mean_length_difference": 2.5}
    )
    assert preference_length_stats([]) == {
        "n": 0, "chosen_longer": None, "chosen_shorter": None, "equal_length": None, "mean_length_difference": None,
    }  # fmt: skip
