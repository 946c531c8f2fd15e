"""The score normalizer's statistics are those of every rank's scores, not rank 0's (two gloo ranks, in-process)."""

from __future__ import annotations

import json
import os

import pytest
import torch

from safe_rlhf.distributed import find_free_port

# Per rank, per micro-batch: (scores (N, 2), whether the micro-batch's loss passed the finite check). The ranks hold
# different numbers of scores (3 + 5, then 1 + 0), a NaN row, and one micro-batch skipped on both ranks.
RANK_BATCHES = {
    0: [
        ([[1.0, -1.0], [2.0, 0.5], [4.0, 2.0]], True),
        ([[9.0, 9.0], [9.0, 9.0]], False),
        ([[float("nan"), 1.0]], True),  # the only row is dropped: this rank adds nothing
    ],
    1: [
        ([[0.0, 3.0], [-2.0, 1.0], [5.0, 5.0], [1.5, -0.5], [3.0, 0.0]], True),
        ([[7.0, 7.0]], False),
        ([[6.0, -3.0]], True),
    ],
}


def _worker(rank: int, port: int, out_dir: str) -> None:
    import torch.distributed as dist

    from safe_rlhf.recipes.score_model import update_normalizer
    from safe_rlhf.score_model import ScoreNormalizer

    os.environ.update({"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2"})
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        normalizer = ScoreNormalizer(kind="running")
        for scores, finite in RANK_BATCHES[rank]:
            update_normalizer(normalizer, torch.tensor(scores), finite=finite)
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as handle:
            json.dump(normalizer.to_dict(), handle)
    finally:
        dist.destroy_process_group()


@pytest.mark.distributed
def test_normalizer_statistics_are_those_of_the_union_of_all_ranks(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_worker, args=(find_free_port(), str(tmp_path)), nprocs=2, join=True)
    union = torch.tensor(
        [row for rank in (0, 1) for scores, finite in RANK_BATCHES[rank] if finite for row in scores],
        dtype=torch.float64,
    )
    union = union[torch.isfinite(union).all(dim=1)]  # 3 + 5 + 1 = 9 rows
    for rank in (0, 1):
        stats = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert stats["count"] == 9
        assert stats["mean"] == pytest.approx(union.mean(0).tolist(), abs=1e-9)
        assert stats["var"] == pytest.approx(union.var(0, unbiased=False).tolist(), abs=1e-9)
