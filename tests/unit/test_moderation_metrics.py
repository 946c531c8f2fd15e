"""safe_rlhf.analysis.moderation_metrics against numbers derived by hand, and plots.plot_reliability writing a PNG."""

import numpy as np
import pytest

from safe_rlhf.analysis.moderation_metrics import (
    auroc,
    best_f1_threshold,
    binary_metrics,
    calibration,
    confusion_matrix,
    per_label_f1,
    severity_metrics,
    threshold_for_target,
)
from safe_rlhf.analysis.plots import plot_reliability

pytestmark = pytest.mark.unit

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# Eight examples sorted by score; a positive and a negative tie at 0.6.
#   index   0    1    2    3    4    5    6    7
LABELS = [1, 1, 0, 1, 0, 1, 0, 0]
SCORES = [0.9, 0.8, 0.7, 0.6, 0.6, 0.4, 0.3, 0.1]
# Each candidate threshold t flags score >= t (4 positives, 4 negatives):
#   t    flagged   tp fp fn   precision   recall   F1 = 2tp / (2tp + fp + fn)
#   0.9  {0}        1  0  3   1           1/4      2/5
#   0.8  {0,1}      2  0  2   1           1/2      4/6 = 2/3
#   0.7  {0..2}     2  1  2   2/3         1/2      4/7
#   0.6  {0..4}     3  2  1   3/5         3/4      6/9 = 2/3
#   0.4  {0..5}     4  2  0   4/6 = 2/3   1        8/10 = 4/5
#   0.3  {0..6}     4  3  0   4/7         1        8/11
#   0.1  all        4  4  0   1/2         1        8/12 = 2/3
# Precision is not monotone in t: 0.6 has 3/5 but the lower 0.4 has 2/3.


def test_binary_metrics_at_default_threshold():
    # threshold 0.5 flags indices 0..4 (the 0.6 row of the table): tp 3 (0, 1, 3), fp 2 (2, 4), fn 1 (5), tn 2 (6, 7)
    result = binary_metrics(LABELS, SCORES)
    assert (result["tp"], result["fp"], result["fn"], result["tn"], result["n"]) == (3, 2, 1, 2, 8)
    assert result["accuracy"] == pytest.approx(5 / 8)  # (tp + tn) / n
    assert result["precision"] == pytest.approx(3 / 5)
    assert result["recall"] == pytest.approx(3 / 4)
    assert result["f1"] == pytest.approx(2 / 3)  # 2 * 0.6 * 0.75 / 1.35 = 0.9 / 1.35
    assert result["positive_rate"] == pytest.approx(5 / 8)  # flagged share
    assert result["prevalence"] == pytest.approx(4 / 8)  # truly positive share
    assert result["auroc"] == pytest.approx(0.78125)  # see test_auroc_counts_ties_as_half
    assert result["threshold"] == 0.5


def test_binary_metrics_flags_scores_equal_to_the_threshold():
    # threshold 0.7 flags score >= 0.7, indices 0..2: tp 2, fp 1 (index 2 has score exactly 0.7), fn 2, tn 3
    result = binary_metrics(LABELS, SCORES, threshold=0.7)
    assert (result["tp"], result["fp"], result["fn"], result["tn"]) == (2, 1, 2, 3)
    assert result["precision"] == pytest.approx(2 / 3)
    assert result["recall"] == pytest.approx(1 / 2)
    assert result["f1"] == pytest.approx(4 / 7)  # 2 * (2/3) * (1/2) / (7/6)


def test_binary_metrics_zero_conventions_and_one_class():
    # threshold 0.95 flags nothing: precision 0 by convention (no positive prediction), recall 0/4, f1 0
    nothing = binary_metrics(LABELS, SCORES, threshold=0.95)
    assert (nothing["tp"], nothing["fp"], nothing["fn"], nothing["tn"]) == (0, 0, 4, 4)
    assert (nothing["precision"], nothing["recall"], nothing["f1"]) == (0.0, 0.0, 0.0)
    assert nothing["accuracy"] == pytest.approx(0.5)
    assert nothing["positive_rate"] == 0.0
    # all negative: recall 0 by convention (no positives), precision 0/2, auroc undefined; bools work as labels
    negatives = binary_metrics([False, False, False], [0.2, 0.6, 0.7])
    assert (negatives["tp"], negatives["fp"], negatives["tn"]) == (0, 2, 1)
    assert (negatives["precision"], negatives["recall"], negatives["f1"]) == (0.0, 0.0, 0.0)
    assert negatives["accuracy"] == pytest.approx(1 / 3)
    assert negatives["auroc"] is None


def test_auroc_counts_ties_as_half():
    # positives score 0.9, 0.8, 0.6, 0.4; negatives 0.7, 0.6, 0.3, 0.1; 4 * 4 = 16 pairs:
    #   0.9 and 0.8 beat all four negatives: 4 + 4; 0.6 beats 0.3, 0.1 and ties 0.6: 2.5; 0.4 beats 0.3, 0.1: 2
    #   AUROC = (4 + 4 + 2.5 + 2) / 16 = 12.5 / 16 = 0.78125
    # By ranks (ascending, the tied 0.6s share (4 + 5) / 2 = 4.5): positives 8, 7, 4.5, 3 sum to 22.5;
    #   (22.5 - 4 * 5 / 2) / 16 = 12.5 / 16. Ordinal ranks 4 or 5 would give 12 / 16 or 13 / 16.
    assert auroc(LABELS, SCORES) == pytest.approx(0.78125)
    assert auroc(np.array(LABELS), np.array(SCORES)) == pytest.approx(0.78125)
    # all four scores tied: every pair counts 1/2
    assert auroc([1, 0, 1, 0], [0.5, 0.5, 0.5, 0.5]) == pytest.approx(0.5)
    # perfectly separated, and perfectly reversed
    assert auroc([0, 0, 1], [0.1, 0.2, 0.3]) == pytest.approx(1.0)
    assert auroc([1, 1, 0], [0.1, 0.2, 0.3]) == pytest.approx(0.0)
    assert auroc([1, 1], [0.1, 0.2]) is None


def test_per_label_f1_with_mask_and_per_label_thresholds():
    labels = [[1, 0], [1, 1], [0, 1], [0, 0], [1, -1]]  # -1: unknown self_harm label of example 4 (masked)
    scores = [[0.9, 0.2], [0.4, 0.8], [0.7, 0.3], [0.6, 0.6], [0.8, 0.99]]
    mask = [[True, True], [True, True], [True, True], [True, True], [True, False]]
    result = per_label_f1(labels, scores, ["violence", "self_harm"], thresholds=[0.5, 0.25], mask=mask)
    assert list(result) == ["violence", "self_harm"]
    # violence, threshold 0.5, 5 known: labels 1 1 0 0 1, flagged 1 0 1 1 1 -> tp 2 (0, 4), fp 2 (2, 3), fn 1 (1)
    #   precision 2/4, recall 2/3, f1 = 2 * 2 / (4 + 2 + 1) = 4/7
    violence = result["violence"]
    assert (violence["tp"], violence["fp"], violence["fn"], violence["support"], violence["n_known"]) == (2, 2, 1, 3, 5)
    assert violence["precision"] == pytest.approx(1 / 2)
    assert violence["recall"] == pytest.approx(2 / 3)
    assert violence["f1"] == pytest.approx(4 / 7)
    # self_harm, threshold 0.25, 4 known (example 4 masked, its 0.99 is not counted): labels 0 1 1 0,
    #   scores 0.2 0.8 0.3 0.6 -> flagged 0 1 1 1 -> tp 2, fp 1, fn 0; precision 2/3, recall 1, f1 = 4 / 5
    self_harm = result["self_harm"]
    counts = (self_harm["tp"], self_harm["fp"], self_harm["fn"], self_harm["support"], self_harm["n_known"])
    assert counts == (2, 1, 0, 2, 4)
    assert self_harm["precision"] == pytest.approx(2 / 3)
    assert self_harm["recall"] == pytest.approx(1.0)
    assert self_harm["f1"] == pytest.approx(4 / 5)
    assert self_harm["threshold"] == 0.25
    # one threshold for all, 0.65: violence flags 1 0 1 0 1 -> tp 2, fp 1, fn 1: 2/3, 2/3, 2/3;
    #   self_harm flags 0 1 0 0 (known) -> tp 1, fp 0, fn 1: precision 1, recall 1/2, f1 2 / (2 + 0 + 1) = 2/3
    shared = per_label_f1(labels, scores, ["violence", "self_harm"], thresholds=0.65, mask=mask)
    assert [(r["threshold"], r["tp"], r["fp"], r["fn"]) for r in shared.values()] == [(0.65, 2, 1, 1), (0.65, 1, 0, 1)]
    assert (shared["self_harm"]["precision"], shared["self_harm"]["recall"]) == pytest.approx((1.0, 0.5))
    assert shared["self_harm"]["f1"] == pytest.approx(2 / 3)


def test_per_label_f1_category_without_known_labels_is_zero():
    # column "b" is entirely unknown: nothing counted even at threshold 0 (which flags every score), all ratios 0.0
    mask = [[True, False], [True, False]]
    result = per_label_f1([[1, 0], [0, 0]], [[0.9, 0.9], [0.1, 0.9]], ["a", "b"], thresholds=[0.5, 0.0], mask=mask)
    assert result["b"] == {
        "threshold": 0.0,
        "tp": 0,
        "fp": 0,
        "fn": 0,
        "n_known": 0,
        "support": 0,
        "precision": 0.0,
        "recall": 0.0,
        "f1": 0.0,
    }
    assert (result["a"]["precision"], result["a"]["recall"], result["a"]["f1"]) == (1.0, 1.0, 1.0)


# Severity levels 0 harmless ... 3 severe; no example of level 2.
#   index          0  1  2  3  4  5  6  7
TRUE_LEVELS = [0, 0, 0, 1, 1, 3, 3, 3]
PREDICTED_LEVELS = [0, 0, 1, 1, 2, 3, 1, 0]
#   |error|        0  0  1  0  1  0  2  3


def test_confusion_matrix_rows_true_columns_predicted():
    # true 0 (indices 0-2) predicted 0, 0, 1; true 1 (3-4) predicted 1, 2; true 3 (5-7) predicted 3, 1, 0
    assert confusion_matrix(TRUE_LEVELS, PREDICTED_LEVELS) == [
        [2, 1, 0, 0],
        [0, 1, 1, 0],
        [0, 0, 0, 0],
        [1, 1, 0, 1],
    ]
    assert confusion_matrix([0, 1, 1], [1, 1, 0], num_levels=2) == [[0, 1], [1, 1]]


def test_severity_metrics_by_hand():
    result = severity_metrics(TRUE_LEVELS, PREDICTED_LEVELS)
    assert result["n"] == 8
    assert result["accuracy"] == pytest.approx(4 / 8)  # exact at indices 0, 1, 3, 5
    assert result["within_one"] == pytest.approx(6 / 8)  # all but indices 6 (off by 2) and 7 (off by 3)
    assert result["mean_absolute_error"] == pytest.approx(7 / 8)  # (1 + 1 + 2 + 3) / 8
    assert result["support"] == [3, 2, 0, 3]  # row sums
    # diagonal over row sums: 2/3, 1/2, none, 1/3 (column sums 3 3 1 1 would give precision 2/3, 1/3, 0, 1)
    recall = result["per_level_recall"]
    assert recall[0] == pytest.approx(2 / 3)
    assert recall[1] == pytest.approx(1 / 2)
    assert recall[2] is None
    assert recall[3] == pytest.approx(1 / 3)
    assert result["confusion"] == confusion_matrix(TRUE_LEVELS, PREDICTED_LEVELS)


def test_calibration_by_hand_with_a_score_of_one():
    # 4 bins [0, .25) [.25, .5) [.5, .75) [.75, 1]:
    #   bin 0: 0.1 (0), 0.2 (0)                      n 2, mean score 0.15, positive 0     gap 0.15
    #   bin 1: empty                                 n 0, excluded
    #   bin 2: 0.5 (0) on its lower edge, 0.6 (1)    n 2, mean score 0.55, positive 1/2   gap 0.05
    #   bin 3: 0.75 (1) on its lower edge, 0.9 (1), 1.0 (1), 1.0 (0): 1.0 goes to the last bin
    #                                                n 4, mean 3.65 / 4 = 0.9125, positive 3/4   gap 0.1625
    # ECE = 2/8 * 0.15 + 2/8 * 0.05 + 4/8 * 0.1625 = 0.0375 + 0.0125 + 0.08125 = 0.13125; MCE = 0.1625
    labels = [0, 0, 0, 1, 1, 1, 1, 0]
    scores = [0.1, 0.2, 0.5, 0.6, 0.75, 0.9, 1.0, 1.0]
    result = calibration(labels, scores, num_bins=4)
    assert (result["n"], result["num_bins"]) == (8, 4)
    assert result["ece"] == pytest.approx(0.13125)
    assert result["mce"] == pytest.approx(0.1625)
    bins = result["bins"]
    assert [(b["lower"], b["upper"], b["count"]) for b in bins] == [
        (0.0, 0.25, 2),
        (0.25, 0.5, 0),
        (0.5, 0.75, 2),
        (0.75, 1.0, 4),
    ]
    assert (bins[0]["mean_score"], bins[0]["fraction_positive"]) == pytest.approx((0.15, 0.0))
    assert (bins[1]["mean_score"], bins[1]["fraction_positive"]) == (None, None)
    assert (bins[2]["mean_score"], bins[2]["fraction_positive"]) == pytest.approx((0.55, 0.5))
    assert (bins[3]["mean_score"], bins[3]["fraction_positive"]) == pytest.approx((0.9125, 0.75))


def test_calibration_default_bins_put_tenths_in_their_own_bin():
    # 10 bins: 0.0 -> bin 0, 0.3 -> bin 3 (its lower edge), 0.7 -> bin 7, 1.0 -> bin 9
    # gaps |0 - 0| , |0 - 0.3|, |1 - 0.7|, |1 - 1|, each bin holding 1 of 4: ECE = (0.3 + 0.3) / 4 = 0.15, MCE = 0.3
    result = calibration([0, 0, 1, 1], [0.0, 0.3, 0.7, 1.0])
    assert [b["count"] for b in result["bins"]] == [1, 0, 0, 1, 0, 0, 0, 1, 0, 1]
    assert result["ece"] == pytest.approx(0.15)
    assert result["mce"] == pytest.approx(0.3)


def test_threshold_for_precision_target():
    # precision >= 0.9: only 0.9 (recall 1/4) and 0.8 (recall 1/2) meet it; the larger recall is at 0.8
    strict = threshold_for_target(LABELS, SCORES, 0.9, metric="precision")
    assert strict == pytest.approx({"threshold": 0.8, "precision": 1.0, "recall": 0.5, "f1": 2 / 3, "met": True})
    # precision >= 0.65: 0.9, 0.8, 0.7 (2/3) and 0.4 (2/3) meet it, 0.6 (3/5) does not; a scan from the top that
    #   stopped at 0.6 would miss 0.4, which has the largest recall (1)
    past_a_dip = threshold_for_target(LABELS, SCORES, 0.65)
    assert past_a_dip == pytest.approx({"threshold": 0.4, "precision": 2 / 3, "recall": 1.0, "f1": 0.8, "met": True})


def test_threshold_for_precision_target_tie_keeps_the_higher_precision():
    # precision >= 0.55: the smallest threshold meeting it is 0.3 (4/7 = 0.571, recall 1), but 0.4 has the same
    #   recall 1 with precision 2/3 (lowering 0.4 to 0.3 flags only the negative at index 6): 0.4 is returned
    result = threshold_for_target(LABELS, SCORES, 0.55)
    assert result == pytest.approx({"threshold": 0.4, "precision": 2 / 3, "recall": 1.0, "f1": 0.8, "met": True})


def test_threshold_for_precision_target_compares_exactly():
    # labels 1 1 0 0 1, scores .9 .8 .7 .6 .5:
    #   t .9: tp 1 fp 0 -> 1, recall 1/3;  t .8: 2, 0 -> 1, 2/3;  t .7: 2, 1 -> 2/3, 2/3;  t .6: 2, 2 -> 1/2, 2/3
    #   t .5: tp 3 fp 2 -> 3/5, recall 1, f1 = 2 * 3 / (6 + 2 + 0) = 3/4
    # 3/5 from the counts equals the float 0.6, so 0.5 meets a target of 0.6 and has the most recall; a strict >
    #   would drop it and return 0.8 (recall 2/3, precision 1)
    result = threshold_for_target([1, 1, 0, 0, 1], [0.9, 0.8, 0.7, 0.6, 0.5], 0.6)
    assert result == pytest.approx({"threshold": 0.5, "precision": 0.6, "recall": 1.0, "f1": 0.75, "met": True})


def test_threshold_for_precision_target_that_cannot_be_met():
    # labels 0 1 1 0 0 1, scores .9 .8 .8 .5 .3 .2 (two positives tie at 0.8), 3 positives:
    #   t .9: tp 0 fp 1 -> precision 0;  t .8: tp 2 fp 1 -> 2/3, recall 2/3;  t .5: tp 2 fp 2 -> 1/2
    #   t .3: tp 2 fp 3 -> 2/5;  t .2: tp 3 fp 3 -> 1/2, recall 1
    # no threshold reaches 0.75; the highest precision is 2/3 at 0.8 (f1 = 2 * 2 / (4 + 1 + 1) = 2/3), not the
    #   highest recall (0.2)
    result = threshold_for_target([0, 1, 1, 0, 0, 1], [0.9, 0.8, 0.8, 0.5, 0.3, 0.2], 0.75)
    assert result == pytest.approx({"threshold": 0.8, "precision": 2 / 3, "recall": 2 / 3, "f1": 2 / 3, "met": False})
    assert result["met"] is False


def test_threshold_for_recall_target():
    # recall >= 0.5: met at 0.8 (precision 1), 0.7, 0.6, 0.4, 0.3, 0.1; the best precision is 1 at 0.8
    half = threshold_for_target(LABELS, SCORES, 0.5, metric="recall")
    assert half == pytest.approx({"threshold": 0.8, "precision": 1.0, "recall": 0.5, "f1": 2 / 3, "met": True})
    # recall >= 0.75: met at 0.6 (precision 3/5), 0.4 (2/3), 0.3 (4/7), 0.1 (1/2). The largest threshold meeting
    #   it, 0.6, is not the most precise: 0.4 flags one more positive and no more negatives
    three_quarters = threshold_for_target(LABELS, SCORES, 0.75, metric="recall")
    assert three_quarters == pytest.approx(
        {"threshold": 0.4, "precision": 2 / 3, "recall": 1.0, "f1": 0.8, "met": True}
    )
    # labels 0 1 0 1, scores .8 .6 .4 .2: t .6: 1/2 recall 1/2; t .4: 1/3; t .2: 2/4 = 1/2 recall 1.
    #   For recall >= 0.5, 0.6 and 0.2 tie on precision 1/2: the larger recall (0.2) is returned
    tie = threshold_for_target([0, 1, 0, 1], [0.8, 0.6, 0.4, 0.2], 0.5, metric="recall")
    assert tie == pytest.approx({"threshold": 0.2, "precision": 0.5, "recall": 1.0, "f1": 2 / 3, "met": True})


def test_best_f1_threshold():
    # the F1 column of the table peaks at 4/5 at threshold 0.4
    assert best_f1_threshold(LABELS, SCORES) == pytest.approx(
        {"threshold": 0.4, "precision": 2 / 3, "recall": 1.0, "f1": 0.8}
    )
    # labels 1 0 0 1, scores .9 .7 .5 .3: t .9: P 1 R 1/2 F1 2/3; t .7: F1 2 / (2 + 1 + 1) = 1/2;
    #   t .5: 2 / (2 + 2 + 1) = 2/5; t .3: 4 / (4 + 2) = 2/3. 0.9 and 0.3 tie: the larger threshold is returned
    tie = best_f1_threshold([1, 0, 0, 1], [0.9, 0.7, 0.5, 0.3])
    assert tie == pytest.approx({"threshold": 0.9, "precision": 1.0, "recall": 0.5, "f1": 2 / 3})


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: binary_metrics([1, 0, 1], [0.1, 0.2]), r"labels has shape \(3,\) but scores has shape \(2,\)"),
        (lambda: binary_metrics([1, 0], [0.1, 1.2]), r"scores must be probabilities in \[0, 1\], found 1.2"),
        (lambda: auroc([1, 0], [0.1, float("nan")]), r"scores must be probabilities"),
        (lambda: auroc([1, 2], [0.1, 0.2]), r"labels must hold only 0/1 \(or booleans\), found 2"),
        (lambda: binary_metrics([[1, 0]], [[0.1, 0.2]]), r"labels must be 1-D, got shape \(1, 2\)"),
        (lambda: binary_metrics([], []), r"labels is empty"),
        (lambda: binary_metrics([1], [0.5], threshold=float("nan")), r"threshold must be finite"),
        (lambda: calibration([1, 0], [-0.1, 0.5]), r"scores must be probabilities in \[0, 1\], found -0.1"),
        (lambda: calibration([1, 0], [0.1, 0.5], num_bins=0), r"num_bins must be an integer >= 1"),
        (
            lambda: per_label_f1([[1, 0]], [[0.1, 0.2, 0.3]], ["a", "b"]),
            r"score_matrix has shape \(1, 3\) but label_matrix has shape \(1, 2\)",
        ),
        (lambda: per_label_f1([[1, 0]], [[0.1, 0.2]], ["a"]), r"names has 1 entries but label_matrix has 2 columns"),
        (lambda: per_label_f1([[1, 0]], [[0.1, 0.2]], ["a", "a"]), r"names must be distinct"),
        (lambda: per_label_f1([[1, 0]], [[0.1, 0.2]], ["a", "b"], [0.5]), r"thresholds has 1 entries"),
        (lambda: per_label_f1([[1, 0]], [[0.1, 0.2]], ["a", "b"], mask=[[True]]), r"mask has shape \(1, 1\)"),
        (lambda: per_label_f1([[1, -1]], [[0.1, 0.2]], ["a", "b"]), r"label_matrix must hold only 0/1"),
        (lambda: severity_metrics([0, 1], [0, 4]), r"predicted_levels must hold levels 0 \.\.\. 3, found 4"),
        (lambda: confusion_matrix([0, 1.5], [0, 1]), r"true_levels must hold integer levels, found 1.5"),
        (lambda: severity_metrics([0, 1, 2], [0, 1]), r"true_levels has shape \(3,\) but predicted_levels"),
        (lambda: threshold_for_target([1, 0], [0.9, 0.1], 0.5, metric="f1"), r"metric must be 'precision' or"),
        (lambda: threshold_for_target([1, 0], [0.9, 0.1], 1.5), r"target must be in \[0, 1\], got 1.5"),
        (lambda: threshold_for_target([0, 0], [0.9, 0.1], 0.5), r"labels has no positive example"),
        (lambda: best_f1_threshold([1, 0], [0.9]), r"labels has shape \(2,\) but scores has shape \(1,\)"),
    ],
)
def test_bad_inputs_raise_one_line_value_errors(call, message):
    with pytest.raises(ValueError, match=message) as error:
        call()
    assert "\n" not in str(error.value)


def test_plot_reliability_writes_a_png(tmp_path):
    bins = calibration([0, 0, 0, 1, 1, 1, 1, 0], [0.1, 0.2, 0.5, 0.6, 0.75, 0.9, 1.0, 1.0], num_bins=4)["bins"]
    out = plot_reliability(bins, tmp_path / "plots" / "reliability.png", title="flag, ECE 0.131")
    assert out == tmp_path / "plots" / "reliability.png"
    data = out.read_bytes()
    assert data.startswith(PNG_MAGIC)
    assert len(data) > 1000
    with pytest.raises(ValueError, match="no non-empty bin"):
        plot_reliability(bins[1:2], tmp_path / "empty.png")  # bin 1 is empty
