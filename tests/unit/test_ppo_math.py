"""PPO-Lagrangian math and masked statistics against numbers derived by hand."""

import math

import pytest
import torch

from safe_rlhf.algorithms import (
    clipped_value_loss,
    combined_advantages,
    explained_variance,
    gae,
    kl_penalized_rewards,
    masked_entropy,
    masked_mean,
    masked_var,
    masked_whiten,
    ppo_clip_loss,
)

pytestmark = pytest.mark.unit


def assert_close(actual: torch.Tensor, expected: object, atol: float = 1e-5) -> None:
    torch.testing.assert_close(actual, torch.as_tensor(expected, dtype=actual.dtype), atol=atol, rtol=0)


# ---------------------------------------------------------------------------------------------------- masked stats


def test_masked_mean_ignores_unmasked_entries_even_inf():
    x = torch.tensor([[1.0, 2.0, float("inf")], [4.0, float("nan"), 6.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 1]])
    # all: (1 + 2 + 4 + 6) / 4 = 3.25; rows: (1 + 2) / 2 = 1.5, (4 + 6) / 2 = 5
    assert_close(masked_mean(x, mask), 3.25)
    assert_close(masked_mean(x, mask.bool(), dim=-1), [1.5, 5.0])
    # an empty mask gives 0, not NaN
    assert_close(masked_mean(x, torch.zeros_like(mask)), 0.0)


def test_masked_var_and_whiten():
    x = torch.tensor([[1.0, 3.0, 100.0], [5.0, -7.0, 7.0]])
    mask = torch.tensor([[True, True, False], [True, False, True]])
    # masked entries 1, 3, 5, 7: mean 4, squared deviations 9 + 1 + 1 + 9 = 20
    # biased var 20 / 4 = 5, unbiased 20 / 3 = 6.66667
    assert_close(masked_var(x, mask, unbiased=False), 5.0)
    assert_close(masked_var(x, mask), 20.0 / 3.0)
    # whiten: (x - 4) / sqrt(20/3) = (x - 4) / 2.58199 -> -1.16190, -0.38730, 0.38730, 1.16190; 0 outside the mask
    std = math.sqrt(20.0 / 3.0)
    whitened = masked_whiten(x, mask)
    assert_close(whitened, [[-3 / std, -1 / std, 0.0], [1 / std, 0.0, 3 / std]])
    # shift_mean=False adds the mean 4 back: only the scale changes
    assert_close(
        masked_whiten(x, mask, shift_mean=False), [[4 - 3 / std, 4 - 1 / std, 0.0], [4 + 1 / std, 0.0, 4 + 3 / std]]
    )


def test_masked_shape_mismatch_raises():
    with pytest.raises(ValueError, match="mask shape"):
        masked_mean(torch.zeros(2, 3), torch.ones(2, 4))


# ---------------------------------------------------------------------------------------------------- kl rewards


def test_kl_penalized_rewards_end_score_position_clip_and_empty_row():
    # row 0: response at positions 1..2 (prompt at 0, padding at 3); row 1: full; row 2: empty generation
    mask = torch.tensor([[0, 1, 1, 0], [1, 1, 1, 1], [0, 0, 0, 0]])
    log_probs = torch.tensor([[-1.0, -0.5, -1.0, -2.0], [-1.0, -1.0, -1.0, -1.0], [-1.0, -1.0, -1.0, -1.0]])
    ref_log_probs = torch.tensor([[-3.0, -1.0, -0.8, -0.1], [-1.5, -1.0, -0.5, -1.2], [-2.0, -2.0, -2.0, -2.0]])
    end_scores = torch.tensor([2.0, -1.0, 5.0])
    # kl = logp - ref: row 0 [2.0, 0.5, -0.2, -1.9], row 1 [0.5, 0.0, -0.5, 0.2]
    # row 0: t1 -0.1 * 0.5 = -0.05; t2 (last) -0.1 * -0.2 + 2.0 = 2.02 -> clipped to 1.5; t0, t3 outside -> 0
    # row 1: [-0.05, 0, 0.05, -0.02 + (-1.0) = -1.02]
    # row 2: empty -> all 0 (its end score 5.0 goes nowhere, and no index error)
    rewards = kl_penalized_rewards(end_scores, log_probs, ref_log_probs, mask, kl_coeff=0.1, clip=1.5)
    assert_close(rewards, [[0.0, -0.05, 1.5, 0.0], [-0.05, 0.0, 0.05, -1.02], [0.0, 0.0, 0.0, 0.0]])

    # cost stream c_t = +beta * kl_t + [last] * C: pass kl_coeff = -beta
    # row 1 with C = -1.0: [0.05, 0, -0.05, 0.02 - 1.0 = -0.98]
    costs = kl_penalized_rewards(end_scores, log_probs, ref_log_probs, mask, kl_coeff=-0.1, clip=50.0)
    assert_close(costs[1], [0.05, 0.0, -0.05, -0.98])
    # row 0: t1 +0.05, t2 -0.02 + 2.0 = 1.98 (no clip at 50)
    assert_close(costs[0], [0.0, 0.05, 1.98, 0.0])


# ---------------------------------------------------------------------------------------------------- gae

# Two responses of different lengths, both with left offsets, one ending before L. Garbage (9, 7, 5, 3, ...) sits at
# masked-out positions and must not leak into anything.
GAE_MASK = torch.tensor([[0, 1, 1, 1, 0], [0, 0, 0, 1, 1]])
GAE_REWARDS = torch.tensor([[9.0, 0.0, 0.0, 1.0, 7.0], [9.0, 9.0, 9.0, 0.1, 2.0]])
GAE_VALUES = torch.tensor([[5.0, 0.5, 0.4, 0.2, 3.0], [5.0, 5.0, 5.0, 1.0, 1.5]])


def test_gae_gamma_1_lambda_095_by_hand():
    advantages, returns = gae(GAE_REWARDS, GAE_VALUES, GAE_MASK, gamma=1.0, gae_lambda=0.95)
    # row 0 (tokens at 1, 2, 3; bootstrap after t=3 is 0):
    #   t3: delta = 1 + 0 - 0.2 = 0.8                 A3 = 0.8
    #   t2: delta = 0 + 0.2 - 0.4 = -0.2              A2 = -0.2 + 0.95 * 0.8 = 0.56
    #   t1: delta = 0 + 0.4 - 0.5 = -0.1              A1 = -0.1 + 0.95 * 0.56 = 0.432
    # row 1 (tokens at 3, 4):
    #   t4: delta = 2.0 + 0 - 1.5 = 0.5               A4 = 0.5
    #   t3: delta = 0.1 + 1.5 - 1.0 = 0.6             A3 = 0.6 + 0.95 * 0.5 = 1.075
    assert_close(advantages, [[0.0, 0.432, 0.56, 0.8, 0.0], [0.0, 0.0, 0.0, 1.075, 0.5]])
    # returns = A + V: row 0 [0.932, 0.96, 1.0]; row 1 [2.075, 2.0]; 0 elsewhere
    assert_close(returns, [[0.0, 0.932, 0.96, 1.0, 0.0], [0.0, 0.0, 0.0, 2.075, 2.0]])


def test_gae_gamma_09_by_hand():
    advantages, _ = gae(GAE_REWARDS, GAE_VALUES, GAE_MASK, gamma=0.9, gae_lambda=0.95)
    # gamma * lambda = 0.855
    # row 0: t3: 1 - 0.2 = 0.8                                A3 = 0.8
    #        t2: 0 + 0.9 * 0.2 - 0.4 = -0.22                  A2 = -0.22 + 0.855 * 0.8 = 0.464
    #        t1: 0 + 0.9 * 0.4 - 0.5 = -0.14                  A1 = -0.14 + 0.855 * 0.464 = 0.25672
    # row 1: t4: 2.0 - 1.5 = 0.5                              A4 = 0.5
    #        t3: 0.1 + 0.9 * 1.5 - 1.0 = 0.45                 A3 = 0.45 + 0.855 * 0.5 = 0.8775
    assert_close(advantages, [[0.0, 0.25672, 0.464, 0.8, 0.0], [0.0, 0.0, 0.0, 0.8775, 0.5]])


def test_gae_matches_each_sequence_run_alone():
    # the same response gives the same advantages whatever its offset, padding or batch neighbours
    torch.manual_seed(0)
    rewards, values = torch.randn(3, 8), torch.randn(3, 8)
    mask = torch.zeros(3, 8, dtype=torch.bool)
    spans = [(2, 7), (0, 3), (5, 8)]
    for row, (start, end) in enumerate(spans):
        mask[row, start:end] = True
    advantages, returns = gae(rewards, values, mask, gamma=0.99, gae_lambda=0.9)
    for row, (start, end) in enumerate(spans):
        alone_advantages, _ = gae(
            rewards[row : row + 1, start:end],
            values[row : row + 1, start:end],
            torch.ones(1, end - start),
            gamma=0.99,
            gae_lambda=0.9,
        )
        assert_close(advantages[row, start:end], alone_advantages[0])
        assert_close(returns[row, start:end], alone_advantages[0] + values[row, start:end])
    assert torch.all(advantages[~mask] == 0) and torch.all(returns[~mask] == 0)


def test_gae_does_not_leak_across_a_gap_and_empty_row_is_zero():
    # row 0 has a hole at t=2: [t0, t1] and [t3] are separate episodes for the recursion
    mask = torch.tensor([[1, 1, 0, 1], [0, 0, 0, 0]])
    rewards = torch.tensor([[0.0, 1.0, 100.0, 2.0], [1.0, 1.0, 1.0, 1.0]])
    values = torch.zeros(2, 4)
    advantages, _ = gae(rewards, values, mask, gamma=1.0, gae_lambda=1.0)
    # with V = 0, gamma = lambda = 1: A_t = sum of rewards to the end of its own segment
    # segment [t0, t1]: A1 = 1, A0 = 0 + 1 = 1 (not 1 + 100 + 2); segment [t3]: A3 = 2
    assert_close(advantages, [[1.0, 1.0, 0.0, 2.0], [0.0, 0.0, 0.0, 0.0]])


# ---------------------------------------------------------------------------------------------------- ppo loss


def test_ppo_clip_loss_branches_and_stats():
    # one sequence, five tokens, clip_ratio 0.2 -> ratio clamp [0.8, 1.2]
    log_ratio = torch.tensor([[0.1, 0.3, 0.3, -0.3, -0.3]])
    advantages = torch.tensor([[1.0, 1.0, -1.0, 1.0, -1.0]])
    old_log_probs = torch.full_like(log_ratio, -2.0)
    log_probs = (old_log_probs + log_ratio).requires_grad_()
    mask = torch.ones_like(log_ratio)
    loss, stats = ppo_clip_loss(log_probs, old_log_probs, advantages, mask, clip_ratio=0.2)
    # ratios: e^0.1 = 1.105171, e^0.3 = 1.349859, e^-0.3 = 0.740818
    # t0: A=+1, r=1.105171 inside [0.8, 1.2] -> unclipped: -1.105171
    # t1: A=+1, r=1.349859: max(-1.349859, -1.2) = -1.2                  (clipped: no gain beyond 1 + eps)
    # t2: A=-1, r=1.349859: max(+1.349859, +1.2) = 1.349859              (unclipped: pessimistic side)
    # t3: A=+1, r=0.740818: max(-0.740818, -0.8) = -0.740818             (unclipped)
    # t4: A=-1, r=0.740818: max(+0.740818, +0.8) = 0.8                   (clipped)
    # mean = (-1.105171 - 1.2 + 1.349859 - 0.740818 + 0.8) / 5 = -0.89613 / 5 = -0.179226
    assert_close(loss, -0.179226)
    # clipped branch active at t1 and t4 -> 2 / 5
    assert_close(stats.clip_fraction, 0.4)
    # approx_kl = mean((r - 1) - log r): t0 0.005171, t1/t2 0.049859, t3/t4 0.040818 -> 0.186525 / 5 = 0.037305
    assert_close(stats.approx_kl, 0.037305)
    # ratio mean = (1.105171 + 2 * 1.349859 + 2 * 0.740818) / 5 = 1.057305
    assert_close(stats.ratio_mean, 1.057305)
    assert not stats.clip_fraction.requires_grad

    # gradient: clipped tokens t1, t4 get 0; unclipped ones get d(-A r)/d logp / 5 = -A * r / 5
    loss.backward()
    assert log_probs.grad is not None
    assert_close(log_probs.grad, [[-1.105171 / 5, 0.0, 1.349859 / 5, -0.740818 / 5, 0.0]])


def test_ppo_loss_is_sequence_mean_then_batch_mean_and_skips_empty_rows():
    # ratio = 1 everywhere, so the per-token loss is just -A
    # row 0: one token with A = 4 -> sequence mean -4
    # row 1: three tokens with A = 0 -> sequence mean 0
    # row 2: empty generation -> excluded
    # sequence-then-batch: (-4 + 0) / 2 = -2
    # (a token mean over the batch would give -4 / 4 = -1, and counting the empty row as a sequence -4 / 3)
    log_probs = torch.zeros(3, 4)
    advantages = torch.tensor([[0.0, 4.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0], [7.0, 7.0, 7.0, 7.0]])
    mask = torch.tensor([[0, 1, 0, 0], [0, 1, 1, 1], [0, 0, 0, 0]])
    loss, stats = ppo_clip_loss(log_probs, log_probs, advantages, mask, clip_ratio=0.2)
    assert_close(loss, -2.0)
    token_mean = (-advantages * mask).sum() / mask.sum()
    assert_close(token_mean, -1.0)
    assert_close(stats.clip_fraction, 0.0)
    assert_close(stats.ratio_mean, 1.0)


def test_ppo_loss_all_rows_empty_is_zero_and_backpropagates():
    log_probs = torch.zeros(2, 3, requires_grad=True)
    loss, _ = ppo_clip_loss(log_probs, torch.zeros(2, 3), torch.ones(2, 3), torch.zeros(2, 3), clip_ratio=0.2)
    assert_close(loss, 0.0)
    loss.backward()
    assert log_probs.grad is not None and torch.all(log_probs.grad == 0)


# ---------------------------------------------------------------------------------------------------- value loss


def test_clipped_value_loss_by_hand():
    # clip_range 0.5, V_old = 1.0 everywhere -> clipped V lies in [0.5, 1.5]
    values = torch.tensor([[1.2, 2.0, 2.0, 0.0]])
    old_values = torch.ones(1, 4)
    returns = torch.tensor([[2.0, 0.0, 3.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    loss, stats = clipped_value_loss(values, old_values, returns, mask, clip_range=0.5)
    # t0: V=1.2 inside the range: 0.5 * (1.2 - 2)^2 = 0.5 * 0.64 = 0.32
    # t1: V=2.0 -> clipped 1.5, G=0: max(4, 2.25) = 4 -> 2.0           (unclipped term is the larger)
    # t2: V=2.0 -> clipped 1.5, G=3: max(1, 2.25) = 2.25 -> 1.125      (clipped term is the larger)
    # mean = (0.32 + 2.0 + 1.125) / 3 = 1.148333
    assert_close(loss, 3.445 / 3)
    assert_close(stats.clip_fraction, 1 / 3)
    assert_close(stats.value_mean, 5.2 / 3)


def test_clipped_value_loss_sequence_then_batch_mean():
    # row 0: one token, 0.5 * (1 - 0)^2 = 0.5; row 1: two tokens each 0.5 * 3^2 = 4.5
    # sequence-then-batch: (0.5 + 4.5) / 2 = 2.5 (token mean would be (0.5 + 9) / 3 = 3.16667)
    values = torch.tensor([[1.0, 0.0], [3.0, 3.0]])
    returns = torch.zeros(2, 2)
    mask = torch.tensor([[1, 0], [1, 1]])
    loss, _ = clipped_value_loss(values, values, returns, mask, clip_range=5.0)
    assert_close(loss, 2.5)


# ------------------------------------------------------------------------------------------------ combined advantages


def test_combined_advantages_one_constraint():
    reward_advantages = torch.tensor([[1.0, -2.0]])
    cost_advantages = torch.tensor([[0.5, 1.0]])
    # lambda = 1: ((1 - 0.5) / 2, (-2 - 1) / 2) = (0.25, -1.5)
    for lam in (1.0, torch.tensor(1.0), torch.tensor([1.0])):
        assert_close(combined_advantages(reward_advantages, cost_advantages, lam), [[0.25, -1.5]])
    # lambda = 0 leaves the reward advantages unchanged
    assert_close(combined_advantages(reward_advantages, cost_advantages, 0.0), [[1.0, -2.0]])


def test_combined_advantages_two_constraints():
    reward_advantages = torch.tensor([[1.0, -2.0]])
    cost_advantages = torch.tensor([[[0.5, 1.0]], [[-1.0, 0.5]]])  # (K=2, B=1, L=2)
    # lambdas (1, 2), 1 + sum = 4:
    # t0: (1 - 1 * 0.5 - 2 * (-1.0)) / 4 = 2.5 / 4 = 0.625
    # t1: (-2 - 1 * 1.0 - 2 * 0.5) / 4 = -4 / 4 = -1.0
    assert_close(combined_advantages(reward_advantages, cost_advantages, torch.tensor([1.0, 2.0])), [[0.625, -1.0]])
    assert_close(combined_advantages(reward_advantages, cost_advantages, [1.0, 2.0]), [[0.625, -1.0]])


def test_combined_advantages_shape_errors():
    reward_advantages = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="lambdas must have shape"):
        combined_advantages(reward_advantages, torch.zeros(2, 2, 3), torch.tensor([1.0]))
    with pytest.raises(ValueError, match="one constraint"):
        combined_advantages(reward_advantages, torch.zeros(2, 3), torch.tensor([1.0, 2.0]))
    with pytest.raises(ValueError, match="cost_advantages must have shape"):
        combined_advantages(reward_advantages, torch.zeros(3, 2), 1.0)
    with pytest.raises(ValueError, match=">= 0"):
        combined_advantages(reward_advantages, torch.zeros(2, 3), -1.0)


# ------------------------------------------------------------------------------------ padding never poisons a gradient


def test_ppo_clip_loss_gradient_is_finite_with_inf_and_nan_at_masked_positions():
    # Position 2 is padding; the rollout's log-prob there is -inf (e.g. a token the sampler could not pick) and the
    # new one NaN. The loss only reads positions 0-1, so both must not reach the gradient: before masking first,
    # exp(x - (-inf)) = inf there and its gradient 0 * inf = NaN.
    log_probs = torch.tensor([[-1.0, -2.0, float("nan")]], requires_grad=True)
    old_log_probs = torch.tensor([[-1.0, -2.0, float("-inf")]])
    advantages = torch.tensor([[1.0, -1.0, float("nan")]])
    mask = torch.tensor([[True, True, False]])
    loss, stats = ppo_clip_loss(log_probs, old_log_probs, advantages, mask, clip_ratio=0.2)
    loss.backward()
    # ratio 1 on both tokens: per-token loss -A = [-1, 1], mean 0; d loss / d logp_t = -A_t * ratio / 2 = [-0.5, 0.5]
    assert_close(loss.detach(), 0.0)
    assert_close(log_probs.grad, [[-0.5, 0.5, 0.0]])
    assert_close(stats.approx_kl, 0.0)


def test_clipped_value_loss_gradient_is_finite_with_nan_at_masked_positions():
    values = torch.tensor([[1.0, float("nan")]], requires_grad=True)
    old_values = torch.tensor([[1.0, float("inf")]])
    returns = torch.tensor([[3.0, float("nan")]])
    loss, _ = clipped_value_loss(values, old_values, returns, torch.tensor([[1, 0]]), clip_range=5.0)
    loss.backward()
    # 0.5 * (1 - 3)^2 = 2; gradient (V - G) = -2 at the real token, 0 at the padding
    assert_close(loss.detach(), 2.0)
    assert_close(values.grad, [[-2.0, 0.0]])


def test_explained_variance_by_hand():
    returns = torch.tensor([[1.0, 2.0, 3.0, 99.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    # Var[G] over the 3 tokens = 2/3. Perfect critic: 1. Constant critic V = 2: Var[G - V] = 2/3 -> 0.
    assert_close(explained_variance(returns.clone(), returns, mask), 1.0)
    assert_close(explained_variance(torch.full_like(returns, 2.0), returns, mask), 0.0)
    # V = [1, 1, 1]: errors [0, 1, 2], variance 2/3 -> 0 again; V = [3, 2, 1]: errors [-2, 0, 2], variance 8/3 -> -3
    assert_close(explained_variance(torch.tensor([[3.0, 2.0, 1.0, 0.0]]), returns, mask), -3.0)
    # constant returns: undefined, reported as 0
    assert_close(explained_variance(returns, torch.ones_like(returns), mask), 0.0)


def test_masked_entropy_by_hand():
    # Uniform over 4 tokens: log 4; one-hot (logit 1000): 0; the masked-out row holds NaN and is ignored.
    logits = torch.tensor([[[0.0, 0.0, 0.0, 0.0], [1000.0, 0.0, 0.0, 0.0], [float("nan")] * 4]])
    mask = torch.tensor([[1, 1, 0]])
    assert_close(masked_entropy(logits, mask), math.log(4) / 2)
