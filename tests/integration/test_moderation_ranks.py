"""Moderation evaluation over two gloo ranks with uneven shards (5 responses: 3 on rank 0, 2 on rank 1, batch 2, so
rank 1 makes a padding pass) gives every rank the single-process probabilities, in item order."""

from __future__ import annotations

import os

import pytest
import torch

from safe_rlhf.distributed import find_free_port

LENGTHS = [3, 7, 2, 5, 4]


def _items():
    from safe_rlhf.data.tokenize import TokenizedSFT

    return [TokenizedSFT(input_ids=list(range(5, 5 + n)), labels=[-100] * n, prompt_length=1, response_truncated=False)
            for n in LENGTHS]  # fmt: skip


def _model():
    from safe_rlhf.score_model import load_score_model

    torch.manual_seed(0)
    model = load_score_model("tiny", score_dim=4, new_head=True).eval()
    model.config.pad_token_id = 0
    return model


def _worker(rank: int, port: int, out_dir: str) -> None:
    import torch.distributed as dist

    from safe_rlhf.evaluate import moderation_evaluation

    os.environ.update({"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2"})
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        probabilities = moderation_evaluation(_model(), _items(), pad_token_id=0, batch_size=2)
        torch.save(probabilities, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.distributed
def test_two_rank_moderation_evaluation_with_uneven_shards(tmp_path, safe_rlhf_cache):
    import torch.multiprocessing as mp

    from safe_rlhf.evaluate import moderation_evaluation

    expected = moderation_evaluation(_model(), _items(), pad_token_id=0, batch_size=2)
    assert expected.shape == (5, 4)
    mp.spawn(_worker, args=(find_free_port(), str(tmp_path)), nprocs=2, join=True)
    for rank in (0, 1):
        got = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        assert torch.allclose(got, expected, atol=1e-5), (rank, got, expected)
