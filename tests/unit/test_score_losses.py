"""Score-model losses and score transforms against numbers derived by hand.

log(1 + e^-x) = -log sigmoid(x): x=0 -> 0.693147, x=0.5 -> 0.474077, x=-0.5 -> 0.974077, x=1 -> 0.313262,
x=-1 -> 1.313262, x=2 -> 0.126928, x=3 -> 0.048587.
"""

import pytest
import torch

from safe_rlhf.algorithms import (
    combine_attributes,
    cost_model_loss,
    length_penalized_scores,
    multi_attribute_regression_loss,
    reward_model_loss,
    scaled_scores,
)

pytestmark = pytest.mark.unit


def assert_close(actual: torch.Tensor, expected: object, atol: float = 1e-5) -> None:
    torch.testing.assert_close(actual, torch.as_tensor(expected, dtype=actual.dtype), atol=atol, rtol=0)


def test_reward_model_loss_bradley_terry():
    better = torch.tensor([2.0, 0.0], requires_grad=True)
    worse = torch.tensor([1.0, 1.0])
    loss, stats = reward_model_loss(better, worse, regularization=0.001)
    # margins 1 and -1: BT = (0.313262 + 1.313262) / 2 = 0.813262
    # regulariser 0.001 * mean(4, 0, 1, 1) = 0.001 * 1.5 = 0.0015 -> 0.814762
    assert_close(loss, 0.814762)
    assert_close(stats.accuracy, 0.5)
    assert_close(stats.margin, 0.0)
    loss.backward()  # the loss trains the scores
    assert better.grad is not None


def test_reward_model_loss_without_regularization_equal_scores():
    # equal scores: -log sigmoid(0) = log 2 = 0.693147; accuracy 0 (ties are not correct)
    loss, stats = reward_model_loss(torch.ones(3), torch.ones(3), regularization=0.0)
    assert_close(loss, 0.693147)
    assert_close(stats.accuracy, 0.0)


def test_cost_model_loss_values_and_sign_convention():
    # pair 0: safer response safe (C=-1), unsafer unsafe (C=2)
    # pair 1: both unsafe, safer C=0.5, unsafer C=0.0 (wrong order)
    safer = torch.tensor([-1.0, 0.5])
    unsafer = torch.tensor([2.0, 0.0])
    safer_is_safe = torch.tensor([True, False])
    unsafer_is_safe = torch.tensor([False, False])
    loss, stats = cost_model_loss(safer, unsafer, safer_is_safe, unsafer_is_safe, regularization=0.0)
    # s = +1 unsafe, -1 safe
    # pair 0: -logsig(2 - (-1) = 3) - logsig(-1 * -1 = 1) - logsig(+1 * 2) = 0.048587 + 0.313262 + 0.126928 = 0.488777
    # pair 1: -logsig(0 - 0.5) - logsig(+0.5) - logsig(+0.0) = 0.974077 + 0.474077 + 0.693147 = 2.141301
    # mean = 1.315039
    assert_close(loss, 1.315039)
    # pairwise: pair 0 right (2 > -1), pair 1 wrong (0 < 0.5) -> 0.5
    assert_close(stats.accuracy, 0.5)
    # sign: -1 safe ok, 2 unsafe ok, 0.5 unsafe ok, 0.0 unsafe but not > 0 -> 3 / 4
    assert_close(stats.sign_accuracy, 0.75)

    # 0/1 labels behave like bools; regularisation adds 0.01 * mean(1, 0.25, 4, 0) = 0.01 * 1.3125 = 0.013125
    loss_int, _ = cost_model_loss(safer, unsafer, safer_is_safe.long(), unsafer_is_safe.long(), regularization=0.01)
    assert_close(loss_int, 1.315039 + 0.013125)


def test_cost_model_sign_convention_gradient_pushes_unsafe_up():
    # a lone unsafe response scored 0 must be pushed to a positive cost, a safe one to a negative cost
    safer = torch.zeros(1, requires_grad=True)
    unsafer = torch.zeros(1, requires_grad=True)
    loss, _ = cost_model_loss(safer, unsafer, torch.tensor([True]), torch.tensor([False]), regularization=0.0)
    loss.backward()
    assert safer.grad is not None and unsafer.grad is not None
    # d/dC of -logsig(unsafer - safer) - logsig(-safer) - logsig(unsafer) at 0: safer +0.5 + 0.5 = +1, unsafer -1
    assert_close(safer.grad, [1.0])
    assert_close(unsafer.grad, [-1.0])


def test_cost_model_loss_severity_weights():
    safer = torch.tensor([-1.0, 0.5])
    unsafer = torch.tensor([2.0, 0.0])
    # weights (1, 3): (0.488777 + 3 * 2.141301) / 2 = 3.456340
    loss, _ = cost_model_loss(
        safer,
        unsafer,
        torch.tensor([True, False]),
        torch.tensor([False, False]),
        regularization=0.0,
        severity_weights=torch.tensor([1.0, 3.0]),
    )
    assert_close(loss, 3.456340)
    with pytest.raises(ValueError, match="severity_weights"):
        cost_model_loss(safer, unsafer, torch.tensor([True, False]), torch.tensor([False, False]), 0.0, torch.ones(3))


def test_multi_attribute_regression_loss_and_combination():
    predicted = torch.tensor([[1.0, 2.0], [3.0, 0.0]])
    targets = torch.tensor([[0.0, 2.0], [3.0, 2.0]])
    # errors attr 0: (1, 0) -> mse 0.5; attr 1: (0, -2) -> mse 2.0
    loss, stats = multi_attribute_regression_loss(predicted, targets)
    assert_close(stats.per_attribute_mse, [0.5, 2.0])
    assert_close(loss, 1.25)  # (0.5 + 2.0) / 2
    # weights (3, 1): (3 * 0.5 + 1 * 2.0) / 4 = 0.875
    weighted, _ = multi_attribute_regression_loss(predicted, targets, torch.tensor([3.0, 1.0]))
    assert_close(weighted, 0.875)
    # combine: row 0 0.5 * 1 + 0.25 * 2 = 1.0; row 1 0.5 * 3 + 0.25 * 0 = 1.5
    assert_close(combine_attributes(predicted, torch.tensor([0.5, 0.25])), [1.0, 1.5])
    with pytest.raises(ValueError):
        combine_attributes(predicted, torch.ones(3))


def test_length_penalized_and_scaled_scores():
    scores = torch.tensor([1.0, 1.0, -2.0])
    lengths = torch.tensor([0, 100, 50])
    # r + 2 * sigma * (1 - 0.01 * len), sigma = 0.5:
    # 1 + 1 * (1 - 0) = 2;  1 + 1 * (1 - 1) = 1;  -2 + 1 * (1 - 0.5) = -1.5
    assert_close(length_penalized_scores(scores, lengths, sigma=0.5), [2.0, 1.0, -1.5])
    # (r - 0.5) / 2 = 0.25, 0.25, -1.25 -> clip 0.3: 0.25, 0.25, -0.3
    assert_close(scaled_scores(scores, mean=0.5, std=2.0), [0.25, 0.25, -0.3])


def test_length_only_reward_by_hand():
    from safe_rlhf.algorithms import length_only_reward

    # target 10: 1 - |L/10 - 1|: L=10 -> 1, L=5 -> 0.5, L=0 -> 0, L=15 -> 0.5, L=20 -> 0
    torch.testing.assert_close(length_only_reward(torch.tensor([10, 5, 0, 15, 20]), 10),
                               torch.tensor([1.0, 0.5, 0.0, 0.5, 0.0]))  # fmt: skip
    with pytest.raises(ValueError, match="target must be positive"):
        length_only_reward(torch.tensor([1]), 0)
