"""DPO, IPO and SafeDPO losses, sequence log-probs and the SafeDPO pair transformation against hand-derived numbers.

-log sigmoid(x): x=0 -> 0.693147, x=0.5 -> 0.474077, x=-0.5 -> 0.974077, x=1 -> 0.313262, x=-1 -> 1.313262,
x=-2 -> 2.126928. sigmoid(-0.5) = 0.377541. -log sigmoid(-x) = -log sigmoid(x) + x.
"""

import math

import pytest
import torch

from safe_rlhf.algorithms import dpo_loss, safe_dpo_loss, safe_dpo_pairs, sequence_log_probs

pytestmark = pytest.mark.unit

LN3 = math.log(3.0)


def assert_close(actual: torch.Tensor, expected: object, atol: float = 1e-5) -> None:
    torch.testing.assert_close(actual, torch.as_tensor(expected, dtype=actual.dtype), atol=atol, rtol=0)


def two_pairs(requires_grad: bool = False) -> tuple[torch.Tensor, ...]:
    # pair 0: chosen log-ratio -1 - (-1.5) = 0.5, rejected -2 - (-1.5) = -0.5 -> h = 1
    # pair 1: chosen log-ratio -3 - (-2) = -1, rejected -1 - (-2) = 1 -> h = -2
    policy_chosen = torch.tensor([-1.0, -3.0], requires_grad=requires_grad)
    policy_rejected = torch.tensor([-2.0, -1.0], requires_grad=requires_grad)
    reference_chosen = torch.tensor([-1.5, -2.0], requires_grad=requires_grad)
    reference_rejected = torch.tensor([-1.5, -2.0], requires_grad=requires_grad)
    return policy_chosen, policy_rejected, reference_chosen, reference_rejected


def test_dpo_sigmoid_loss_and_rewards():
    losses, chosen_rewards, rejected_rewards = dpo_loss(*two_pairs(), beta=0.5)
    # beta h = 0.5 -> 0.474077; beta h = -1 -> 1.313262
    assert_close(losses, [0.474077, 1.313262])
    # rewards beta * (policy - reference): chosen 0.5 * [0.5, -1], rejected 0.5 * [-0.5, 1]
    assert_close(chosen_rewards, [0.25, -0.5])
    assert_close(rejected_rewards, [-0.25, 0.5])
    assert not chosen_rewards.requires_grad and not rejected_rewards.requires_grad


def test_dpo_label_smoothing_is_the_expected_loss_under_flipped_labels():
    losses, _, _ = dpo_loss(*two_pairs(), beta=0.5, label_smoothing=0.1)
    # pair 0: 0.9 * 0.474077 + 0.1 * 0.974077 = 0.426669 + 0.097408 = 0.524077 (= 0.474077 + 0.1 * 0.5)
    # pair 1: 0.9 * 1.313262 + 0.1 * 0.313262 = 1.181936 + 0.031326 = 1.213262 (= 1.313262 + 0.1 * -1)
    assert_close(losses, [0.524077, 1.213262])


def test_ipo_loss_regresses_h_onto_one_over_two_beta():
    losses, chosen_rewards, _ = dpo_loss(*two_pairs(), beta=0.5, loss_type="ipo")
    # target 1 / (2 * 0.5) = 1: (1 - 1)^2 = 0, (-2 - 1)^2 = 9
    assert_close(losses, [0.0, 9.0])
    assert_close(chosen_rewards, [0.25, -0.5])
    losses, _, _ = dpo_loss(*two_pairs(), beta=0.25, loss_type="ipo")
    # target 2: (1 - 2)^2 = 1, (-2 - 2)^2 = 16
    assert_close(losses, [1.0, 16.0])


def test_gradients_reach_the_policy_only():
    policy_chosen, policy_rejected, reference_chosen, reference_rejected = two_pairs(requires_grad=True)
    losses, _, _ = dpo_loss(policy_chosen, policy_rejected, reference_chosen, reference_rejected, beta=0.5)
    losses.sum().backward()
    # d/d policy_chosen of -log sigmoid(beta h) = -beta sigmoid(-beta h): pair 0 -0.5 * sigmoid(-0.5) = -0.188771,
    # pair 1 -0.5 * sigmoid(1) = -0.5 * 0.731059 = -0.365529; the rejected gets the opposite sign
    assert_close(policy_chosen.grad, [-0.188771, -0.365529])
    assert_close(policy_rejected.grad, [0.188771, 0.365529])
    assert reference_chosen.grad is None and reference_rejected.grad is None  # the reference is a constant

    policy_chosen, policy_rejected, reference_chosen, reference_rejected = two_pairs(requires_grad=True)
    losses, _, _ = dpo_loss(policy_chosen, policy_rejected, reference_chosen, reference_rejected, 0.5, "ipo")
    losses.sum().backward()
    # d/dh (h - 1)^2 = 2 (h - 1): pair 0 0, pair 1 -6
    assert_close(policy_chosen.grad, [0.0, -6.0])


def test_dpo_loss_rejects_bad_arguments():
    with pytest.raises(ValueError, match="loss_type"):
        dpo_loss(*two_pairs(), beta=0.1, loss_type="hinge")
    with pytest.raises(ValueError, match="sigmoid"):
        dpo_loss(*two_pairs(), beta=0.1, loss_type="ipo", label_smoothing=0.1)
    with pytest.raises(ValueError, match="beta"):
        dpo_loss(*two_pairs(), beta=0.0)
    with pytest.raises(ValueError, match="label_smoothing"):
        dpo_loss(*two_pairs(), beta=0.1, label_smoothing=0.5)
    policy_chosen, policy_rejected, reference_chosen, _ = two_pairs()
    with pytest.raises(ValueError, match="shape"):
        dpo_loss(policy_chosen, policy_rejected, reference_chosen, torch.zeros(3), beta=0.1)


def logits_with_garbage_padding(requires_grad: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Two rows, three positions, a vocabulary of 2; masked-out positions hold NaN / inf and out-of-range labels."""
    nan, inf = float("nan"), float("inf")
    logits = torch.tensor(
        [
            [[0.0, 0.0], [LN3, 0.0], [nan, inf]],  # row 0: two response tokens, then padding
            [[inf, -inf], [LN3, 0.0], [0.0, 0.0]],  # row 1: a prompt position, then two response tokens
        ],
        requires_grad=requires_grad,
    )
    labels = torch.tensor([[1, 0, -100], [5, 1, 0]])
    mask = torch.tensor([[True, True, False], [False, True, True]])
    return logits, labels, mask


def test_sequence_log_probs_sum_and_mean_of_masked_tokens():
    logits, labels, mask = logits_with_garbage_padding()
    # row 0: log softmax([0, 0])[1] = log 1/2 = -0.693147; log softmax([ln 3, 0])[0] = log 3/4 = -0.287682
    #        sum -0.980829, mean -0.490415
    # row 1: log softmax([ln 3, 0])[1] = log 1/4 = -1.386294; log 1/2 = -0.693147; sum = log 1/8 = -2.079442,
    #        mean -1.039721
    assert_close(sequence_log_probs(logits, labels, mask), [-0.980829, -2.079442])
    assert_close(sequence_log_probs(logits, labels, mask, average=True), [-0.490415, -1.039721])
    assert_close(sequence_log_probs(logits, labels, mask.long()), [-0.980829, -2.079442])  # a 0/1 mask works too


def test_sequence_log_probs_of_an_empty_response_is_zero():
    logits, labels, mask = logits_with_garbage_padding()
    empty = torch.zeros_like(mask)
    assert_close(sequence_log_probs(logits, labels, empty), [0.0, 0.0])
    assert_close(sequence_log_probs(logits, labels, empty, average=True), [0.0, 0.0])


def test_sequence_log_probs_checks_alignment():
    logits, labels, mask = logits_with_garbage_padding()
    with pytest.raises(ValueError, match="aligned"):
        sequence_log_probs(logits[:, :-1], labels, mask)


def test_gradient_is_finite_with_nan_and_inf_at_padding():
    logits, labels, mask = logits_with_garbage_padding(requires_grad=True)
    logps = sequence_log_probs(logits, labels, mask)
    # row 0 chosen, row 1 rejected, reference 0 for both: h = -0.980829 + 2.079442 = 1.098612 (= ln 3)
    losses, _, _ = dpo_loss(logps[:1], logps[1:], torch.zeros(1), torch.zeros(1), beta=1.0)
    # -log sigmoid(ln 3) = log(1 + 1/3) = 0.287682
    assert_close(losses, [0.287682])
    losses.sum().backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()
    # nothing flows to the masked positions
    assert_close(logits.grad[0, 2], [0.0, 0.0])
    assert_close(logits.grad[1, 0], [0.0, 0.0])
    # d loss / d chosen logp = -sigmoid(-ln 3) = -1/4; d log softmax[1] / d logits at [0, 0] = onehot - softmax
    # = [-0.5, 0.5]; so row 0 position 0 gets -1/4 * [-0.5, 0.5] = [0.125, -0.125]
    assert_close(logits.grad[0, 0], [0.125, -0.125])


def test_safe_dpo_pairs_cases():
    #               both safe, better unsafe only, worse unsafe only, both unsafe
    better_unsafe = torch.tensor([False, True, False, True])
    worse_unsafe = torch.tensor([False, False, True, True])
    pairs = safe_dpo_pairs(better_unsafe, worse_unsafe)
    assert pairs.swapped.tolist() == [False, True, False, False]  # only the unsafe-better / safe-worse pair
    assert pairs.keep.tolist() == [True, True, True, False]  # the paper drops both-unsafe pairs
    assert pairs.chosen_is_unsafe.tolist() == [False, False, False, True]  # every kept chosen is safe
    assert pairs.rejected_is_unsafe.tolist() == [False, True, True, True]
    kept = safe_dpo_pairs(better_unsafe.long(), worse_unsafe.long(), both_unsafe="keep")  # 0/1 labels work too
    assert kept.keep.tolist() == [True, True, True, True]
    assert kept.swapped.tolist() == [False, True, False, False]
    single = safe_dpo_pairs(True, False)  # one pair as plain booleans
    assert single.swapped.tolist() == [True] and single.chosen_is_unsafe.tolist() == [False]
    with pytest.raises(ValueError, match="both_unsafe"):
        safe_dpo_pairs(better_unsafe, worse_unsafe, both_unsafe="swap")


def test_safe_dpo_loss_margin_only_on_safe_versus_unsafe_pairs():
    zeros = torch.zeros(3)
    # transformed pairs: safe vs unsafe, safe vs safe, unsafe vs unsafe (kept with both_unsafe="keep")
    chosen_unsafe = torch.tensor([False, False, True])
    rejected_unsafe = torch.tensor([True, False, True])
    losses, chosen_rewards, _ = safe_dpo_loss(
        zeros, zeros, zeros, zeros, chosen_unsafe, rejected_unsafe, beta=1.0, safety_margin=2.0
    )
    # h = 0: -log sigmoid(0 - 2 * 1) = 2.126928; the other two -log sigmoid(0 - 2 * 0) = 0.693147
    assert_close(losses, [2.126928, 0.693147, 0.693147])
    assert_close(chosen_rewards, [0.0, 0.0, 0.0])
    # pair 0 of two_pairs has h = 1: beta 0.5, margin 1 -> -log sigmoid(0.5 - 1) = 0.974077
    policy_chosen, policy_rejected, reference_chosen, reference_rejected = two_pairs()
    losses, _, _ = safe_dpo_loss(
        policy_chosen, policy_rejected, reference_chosen, reference_rejected,
        torch.tensor([0, 0]), torch.tensor([1, 0]), beta=0.5, safety_margin=1.0,
    )  # fmt: skip
    # pair 1 (both safe): no margin, -log sigmoid(-1) = 1.313262
    assert_close(losses, [0.974077, 1.313262])


def test_safe_dpo_loss_with_margin_zero_is_dpo():
    args = two_pairs()
    chosen_unsafe, rejected_unsafe = torch.tensor([False, False]), torch.tensor([True, True])
    safe, _, _ = safe_dpo_loss(*args, chosen_unsafe, rejected_unsafe, beta=0.5, safety_margin=0.0)
    plain, _, _ = dpo_loss(*args, beta=0.5)
    assert_close(safe, plain.tolist())
    with pytest.raises(ValueError, match="safety_margin"):
        safe_dpo_loss(*args, chosen_unsafe, rejected_unsafe, beta=0.5, safety_margin=-1.0)
    with pytest.raises(ValueError, match="shape"):
        safe_dpo_loss(*args, torch.tensor([False]), rejected_unsafe, beta=0.5, safety_margin=1.0)
