"""The moderation classifier's math against numbers derived by hand."""

from __future__ import annotations

import math

import pytest
import torch

from safe_rlhf.algorithms import balanced_pos_weight, moderation_loss, severity_levels, severity_targets


def test_moderation_loss_masks_unknown_labels_and_weights_positives() -> None:
    logits = torch.tensor([[0.0, 2.0], [-1.0, float("nan")]], requires_grad=True)
    targets = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    known = torch.tensor([[True, True], [True, False]])
    loss, stats = moderation_loss(logits, targets, known, pos_weight=torch.tensor([2.0, 1.0]))
    # (0,0): y=1, z=0, w=2: -2 log sigmoid(0) = 2 ln 2          = 1.386294
    # (0,1): y=0, z=2:      -log sigmoid(-2) = ln(1 + e^2)       = 2.126928
    # (1,0): y=0, z=-1:     -log sigmoid(1)  = ln(1 + e^-1)      = 0.313262
    # (1,1): unknown (its NaN logit reaches nothing);  mean of 3 = 1.275495
    expected = (2 * math.log(2) + math.log(1 + math.e**2) + math.log(1 + math.exp(-1))) / 3
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    assert loss.item() == pytest.approx(1.275495, abs=1e-6)
    # flag: row 0 has logit 0 (not > 0) but is unsafe -> wrong; row 1 -1 and safe -> right
    assert stats.flagged_accuracy.item() == pytest.approx(0.5)
    assert stats.known_fraction.item() == pytest.approx(0.75)
    loss.backward()
    assert torch.isfinite(logits.grad).all()
    assert logits.grad[1, 1].item() == 0.0
    # d/dz of the weighted term: (0,0): -w (1 - sigmoid(0)) / 3 = -2 * 0.5 / 3
    assert logits.grad[0, 0].item() == pytest.approx(-1.0 / 3, abs=1e-6)


def test_moderation_loss_without_known_labels_is_zero_with_a_graph() -> None:
    logits = torch.zeros(2, 3, requires_grad=True)
    loss, _ = moderation_loss(logits, torch.zeros(2, 3), torch.zeros(2, 3, dtype=torch.bool))
    assert loss.item() == 0.0
    loss.backward()  # every rank must be able to run its backward
    assert (logits.grad == 0).all()


def test_moderation_loss_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="must match"):
        moderation_loss(torch.zeros(2, 3), torch.zeros(2, 4), torch.ones(2, 3, dtype=torch.bool))


def test_severity_targets_are_cumulative() -> None:
    assert severity_targets(torch.tensor([0, 1, 2, 3])).tolist() == [
        [0.0, 0.0, 0.0],
        [1.0, 0.0, 0.0],
        [1.0, 1.0, 0.0],
        [1.0, 1.0, 1.0],
    ]


def test_balanced_pos_weight_counts_known_labels_only() -> None:
    targets = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    known = torch.tensor([[True, True, True], [True, True, True], [True, True, True], [True, False, True]])
    # column 0: 2 positives of 4 -> 2/2 = 1; column 1: 1 positive of 3 known -> 2/1 = 2, clamped to 1.5;
    # column 2: no positive -> 1
    assert balanced_pos_weight(targets, known, max_weight=1.5).tolist() == [1.0, 1.5, 1.0]
    assert balanced_pos_weight(targets, known, max_weight=10.0).tolist() == [1.0, 2.0, 1.0]


def test_severity_levels_are_monotone() -> None:
    probabilities = torch.tensor(
        [
            [0.4, 0.9, 0.9],  # not flagged: 0 whatever the higher outputs say
            [0.6, 0.4, 0.9],  # flagged, not >= 2: 1 (the passing p_2 is ignored)
            [0.6, 0.6, 0.4],  # 2
            [0.9, 0.7, 0.8],  # 3
        ]
    )
    assert severity_levels(probabilities).tolist() == [0, 1, 2, 3]
    # a lower flag threshold flags row 0, whose higher outputs pass: 3
    assert severity_levels(probabilities, flag_threshold=0.3).tolist() == [3, 1, 2, 3]


def test_flag_threshold_is_the_middle_of_the_interval_that_flags_the_same_validation_responses() -> None:
    from safe_rlhf.evaluate import choose_flag_threshold

    # flag probabilities of 5 responses (outputs 1-2 unused here), labels: unsafe, unsafe, safe, safe, unsafe
    probabilities = torch.tensor([[0.9], [0.8], [0.3], [0.1], [0.05]]).repeat(1, 3)
    targets = torch.tensor([[1.0], [1.0], [0.0], [0.0], [1.0]]).repeat(1, 3)
    known = torch.ones(5, 3, dtype=torch.bool)
    # best F1: threshold 0.8 (tp 2, fp 0, fn 1: F1 0.8) beats 0.05 (tp 3, fp 2: F1 0.75); every threshold in
    # (0.3, 0.8] flags the same two: the middle is 0.55
    choice = choose_flag_threshold(probabilities, targets, known, "f1", 0.95)
    assert choice["candidate"] == pytest.approx(0.8)
    assert choice["threshold"] == pytest.approx(0.55)
    assert choice["f1"] == pytest.approx(0.8)
    # recall >= 0.9 needs every unsafe response: candidate 0.05, nothing below it -> 0.025
    choice = choose_flag_threshold(probabilities, targets, known, "recall", 0.9)
    assert choice["candidate"] == pytest.approx(0.05) and choice["threshold"] == pytest.approx(0.025)
    # one class only: nothing to choose from
    assert choose_flag_threshold(probabilities, targets * 0, known, "f1", 0.95)["threshold"] == 0.5


def test_moderation_costs_are_positive_exactly_above_the_threshold() -> None:
    from safe_rlhf.moderation import moderation_costs

    logits = torch.tensor([[0.0, math.log(3.0), 50.0]])  # probabilities 0.5, 0.75, ~1
    costs = moderation_costs(logits, [0.5, 0.8, 1.0])
    # 0.5 at threshold 0.5: shift 0 -> cost 0 (not > 0: not passing); 0.75 < 0.8: log 3 - log 4 < 0
    assert costs[0, 0].item() == pytest.approx(0.0)
    assert costs[0, 1].item() == pytest.approx(math.log(3.0) - math.log(4.0), abs=1e-6)
    # a threshold of 1 is clamped to 1 - 1e-6: a finite shift of log(1e6 - 1) ~ 13.8
    assert math.isfinite(costs[0, 2].item()) and costs[0, 2].item() == pytest.approx(50.0 - math.log(1e6 - 1), abs=1e-3)


def test_evaluation_reads_moderation_under_each_config_name_flag() -> None:
    from safe_rlhf.evaluate import evaluation_argv

    assert evaluation_argv(["--config-name", "moderation", "x=1"]) == ["--config-name", "moderation_eval", "x=1"]
    assert evaluation_argv(["-cn", "moderation"]) == ["-cn", "moderation_eval"]
    assert evaluation_argv(["--config-name=moderation"]) == ["--config-name=moderation_eval"]
    assert evaluation_argv(["--config-name", "arena"]) == ["--config-name", "arena"]
