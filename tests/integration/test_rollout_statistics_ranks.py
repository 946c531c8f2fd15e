"""Rollout-batch statistics are taken over every rank's episodes (two gloo ranks, in-process), also when the ranks
hold different numbers of them."""

from __future__ import annotations

import json
import math
import os

import pytest
import torch

from safe_rlhf.distributed import find_free_port

REWARDS = {0: [1.0, 3.0], 1: [5.0, 7.0, 9.0]}  # 2 and 3 episodes


def _worker(rank: int, port: int, out_dir: str) -> None:
    import torch.distributed as dist

    from safe_rlhf.config import GenerationConfig, PPOConfig, PPOSettings
    from safe_rlhf.recipes.ppo import PPORecipe
    from safe_rlhf.recipes.rollout import batch_mean_std

    os.environ.update({"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2"})
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
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
    finally:
        dist.destroy_process_group()


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
