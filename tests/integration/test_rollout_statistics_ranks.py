"""Rollout-batch statistics are taken over every rank's episodes (two gloo ranks, in-process), also when the ranks
hold different numbers of them."""

from __future__ import annotations

import contextlib
import json
import math
import os
from collections.abc import Iterator

import pytest
import torch

from safe_rlhf.distributed import find_free_port

REWARDS = {0: [1.0, 3.0], 1: [5.0, 7.0, 9.0]}  # 2 and 3 episodes


@contextlib.contextmanager
def gloo_rank(rank: int, port: int) -> Iterator[None]:
    """This process as rank ``rank`` of a 2-rank gloo group, for the body of the ``with``."""
    import torch.distributed as dist

    os.environ.update({"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2"})
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        yield
    finally:
        dist.destroy_process_group()


def _worker(rank: int, port: int, out_dir: str) -> None:
    from safe_rlhf.config import GenerationConfig, PPOConfig, PPOSettings
    from safe_rlhf.recipes.ppo import PPORecipe
    from safe_rlhf.recipes.rollout import batch_mean_std

    with gloo_rank(rank, port):
        recipe = PPORecipe.__new__(PPORecipe)
        recipe.config = PPOConfig(
            recipe="ppo", ppo=PPOSettings(reward_scaling_clip=10.0), generation=GenerationConfig(no_eos_penalty=None)
        )
        recipe.variant = "ppo"
        rewards = torch.tensor(REWARDS[rank])
        count = rewards.shape[0]
        scaled = recipe.transformed_rewards(
            rewards, torch.zeros(count, 0), torch.ones(count, dtype=torch.bool), torch.full((count,), 4)
        )
        # masked statistics (advantage whitening): rank 0 masks out its second entry
        mask = torch.tensor([True, False]) if rank == 0 else torch.tensor([True, True, True])
        masked = batch_mean_std(rewards, mask)
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as handle:
            json.dump({"scaled": scaled.tolist(), "masked": list(masked)}, handle)


@pytest.mark.distributed
def test_reward_scaling_and_whitening_statistics_span_both_ranks(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_worker, args=(find_free_port(), str(tmp_path)), nprocs=2, join=True)
    results = {rank: json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)}
    # All five rewards [1, 3, 5, 7, 9]: mean 5, population variance (16 + 4 + 0 + 4 + 16) / 5 = 8.
    std = math.sqrt(8)
    assert results[0]["scaled"] == pytest.approx([-4 / std, -2 / std])
    assert results[1]["scaled"] == pytest.approx([0.0, 2 / std, 4 / std])
    # Masked: [1, 5, 7, 9]: mean 5.5, variance (20.25 + 0.25 + 2.25 + 12.25) / 4 = 8.75, the same on both ranks.
    for rank in (0, 1):
        assert results[rank]["masked"] == pytest.approx([5.5, math.sqrt(8.75)])


# Constraint 1 is grouped: rank 0 holds no episode of the group, rank 1 two of its three.
GROUP_COSTS = {0: [[1.0, 0.0], [0.0, 0.0]], 1: [[1.0, 1.0], [0.0, 0.0], [1.0, 0.0]]}
GROUP_MEMBERS = {0: [[True, False], [True, False]], 1: [[True, True], [True, True], [True, False]]}


def _grouped_worker(rank: int, port: int, out_dir: str) -> None:
    from safe_rlhf.algorithms.lagrange import LagrangeMultiplier
    from safe_rlhf.config import LagrangeConfig, PPOConfig
    from safe_rlhf.recipes.ppo import PPORecipe
    from safe_rlhf.recipes.rollout import Rollout

    with gloo_rank(rank, port):
        recipe = PPORecipe.__new__(PPORecipe)
        recipe.config = PPOConfig(recipe="ppo_lag", lagrange=LagrangeConfig(
            thresholds=[0.5, 0.5], constraint_types=["rate", "rate"], cost_indices=[0, 0], mode="log", init=1.0,
            lr=0.1, prompt_groups=[None, "system_kind=authority"]))  # fmt: skip
        recipe.variant, recipe.num_constraints = "ppo_lag", 2
        recipe.multipliers = [LagrangeMultiplier(init=1.0, lr=0.1, threshold=0.5, window_size=128) for _ in range(2)]
        n, width = len(GROUP_COSTS[rank]), 3
        zeros = torch.zeros(n, width - 1)
        rollout = Rollout(
            input_ids=torch.ones(n, width, dtype=torch.long), attention_mask=torch.ones(n, width, dtype=torch.long),
            action_mask=torch.ones(n, width - 1, dtype=torch.bool), old_log_probs=zeros, ref_log_probs=zeros,
            rewards=torch.zeros(n), costs=torch.tensor(GROUP_COSTS[rank]),
            constraint_members=torch.tensor(GROUP_MEMBERS[rank]), raw_costs=torch.zeros(n, 1),
            reward_scores=torch.zeros(n, 1), reward_values=zeros, cost_values=torch.zeros(n, 2, width - 1),
            reward_advantages=zeros, reward_returns=zeros, cost_advantages=torch.zeros(n, 2, width - 1),
            cost_returns=torch.zeros(n, 2, width - 1), ended_with_eos=torch.ones(n, dtype=torch.bool),
            response_lengths=torch.full((n,), 2),
        )  # fmt: skip
        lambdas = recipe.update_multipliers(rollout)
        metrics = recipe.rollout_metrics(rollout, lambdas)
        with open(os.path.join(out_dir, f"grouped{rank}.json"), "w") as handle:
            json.dump({"lambdas": lambdas, "cost_0": metrics["train/episode_cost_0"],
                       "cost_1": metrics["train/episode_cost_1"],
                       "window_1": recipe.multipliers[1].window_mean()}, handle)  # fmt: skip


@pytest.mark.distributed
def test_a_grouped_constraint_is_measured_over_its_episodes_on_every_rank(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_grouped_worker, args=(find_free_port(), str(tmp_path)), nprocs=2, join=True)
    results = {rank: json.loads((tmp_path / f"grouped{rank}.json").read_text()) for rank in (0, 1)}
    for rank in (0, 1):
        # all 5 episodes: 3 unsafe -> 0.6; the group: rank 1's 2 episodes, 1 unsafe -> 0.5 (a mean of rank means
        # would give (0 + 0.5) / 2 = 0.25)
        assert results[rank]["cost_0"] == pytest.approx(0.6) and results[rank]["cost_1"] == pytest.approx(0.5)
        assert results[rank]["window_1"] == pytest.approx(0.5)
        assert results[rank]["lambdas"] == pytest.approx([math.exp(0.1 * (0.6 - 0.5)), 1.0])
