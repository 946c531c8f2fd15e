"""Score models: end-score position under left/right padding, save/load round trip, normalizer, metrics by hand."""

from __future__ import annotations

import pytest
import torch

from safe_rlhf.recipes.score_model import length_balanced
from safe_rlhf.score_metrics import ScoredPair, pearson, score_model_summary
from safe_rlhf.score_model import (
    ScoreNormalizer,
    end_scores,
    last_token_index,
    load_score_model,
    score_metadata,
    set_score_metadata,
)

pytestmark = pytest.mark.unit


def _tiny_score_model(score_dim: int = 2):
    from transformers import LlamaConfig, LlamaForSequenceClassification

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=2, max_position_embeddings=32, num_labels=score_dim, pad_token_id=0,
    )  # fmt: skip
    return LlamaForSequenceClassification(config).eval()


def test_last_token_index_left_right_and_empty():
    mask = torch.tensor([[1, 1, 1, 0, 0], [0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [0, 0, 0, 0, 0]])
    assert last_token_index(mask).tolist() == [2, 4, 4, 0]


def test_end_score_is_the_same_with_left_and_right_padding():
    model = _tiny_score_model()
    sequence = [5, 9, 3, 7]
    right = torch.tensor([[*sequence, 0, 0]])
    right_mask = torch.tensor([[1, 1, 1, 1, 0, 0]])
    left = torch.tensor([[0, 0, *sequence]])
    left_mask = torch.tensor([[0, 0, 1, 1, 1, 1]])
    alone = end_scores(model, torch.tensor([sequence]), torch.ones(1, 4, dtype=torch.long))
    with torch.no_grad():
        torch.testing.assert_close(end_scores(model, right, right_mask), alone, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(end_scores(model, left, left_mask), alone, rtol=1e-5, atol=1e-5)
        # And it is not the score at the padding position (that would differ).
        at_padding = model.score(model.model(input_ids=right, attention_mask=right_mask).last_hidden_state)[0, -1]
        assert not torch.allclose(at_padding, alone[0])


def test_save_and_load_reproduce_scores_and_metadata(tmp_path):
    model = _tiny_score_model()
    normalizer = ScoreNormalizer(kind="running")
    normalizer.update(torch.tensor([[1.0, 0.0], [3.0, 2.0]]))
    set_score_metadata(model, score_type="cost", score_dim=2, normalizer=normalizer.to_dict(), normalize=True)
    model.save_pretrained(tmp_path / "score", safe_serialization=True)
    loaded = load_score_model(str(tmp_path / "score")).eval()
    ids = torch.tensor([[4, 8, 15, 16, 23]])
    mask = torch.ones_like(ids)
    with torch.no_grad():
        torch.testing.assert_close(end_scores(loaded, ids, mask), end_scores(model, ids, mask))
    metadata = score_metadata(loaded)
    assert metadata["score_type"] == "cost" and metadata["normalize"] is True
    assert metadata["normalizer"]["mean"] == [2.0, 1.0]


def test_running_and_ema_normalizer_by_hand():
    running = ScoreNormalizer(kind="running")
    running.update(torch.tensor([[1.0], [2.0], [3.0]]))
    running.update(torch.tensor([[4.0], [5.0]]))
    # All five values 1..5: mean 3, population variance (4 + 1 + 0 + 1 + 4) / 5 = 2.
    assert running.mean == pytest.approx([3.0]) and running.var == pytest.approx([2.0]) and running.count == 5
    assert running.normalize(torch.tensor([[5.0]])).item() == pytest.approx(2.0 / 2.0**0.5)
    ema = ScoreNormalizer(kind="ema", decay=0.5)
    ema.update(torch.tensor([[1.0], [2.0], [3.0]]))  # first batch taken as is: mean 2, var 2/3
    ema.update(torch.tensor([[4.0], [5.0]]))  # batch mean 4.5, var 0.25 -> 0.5 * old + 0.5 * new
    assert ema.mean == pytest.approx([3.25]) and ema.var == pytest.approx([0.5 * 2 / 3 + 0.5 * 0.25])


def test_reward_summary_by_hand():
    pairs = [
        ScoredPair(scores=(2.0, 1.0), lengths=(3, 1), better_id=0, true_helpfulness=(1.0, 0.0)),  # right, right
        ScoredPair(scores=(0.5, 1.5), lengths=(2, 4), better_id=0, true_helpfulness=(0.0, 1.0)),  # wrong, right
        ScoredPair(scores=(0.0, 3.0), lengths=(1, 5), better_id=1, true_helpfulness=(2.0, 2.0)),  # right, tie
    ]
    summary = score_model_summary(pairs, "reward")
    assert summary["accuracy"] == pytest.approx(2 / 3)
    assert summary["true_accuracy"] == pytest.approx(1.0)  # the tie is left out
    scores = [2.0, 1.0, 0.5, 1.5, 0.0, 3.0]
    lengths = [3.0, 1.0, 2.0, 4.0, 1.0, 5.0]
    assert summary["length_correlation"] == pytest.approx(pearson(scores, lengths))
    assert summary["score_distribution"]["mean"] == pytest.approx(8.0 / 6)


def test_cost_summary_by_hand():
    pairs = [
        # safe (cost -1, right sign) vs unsafe severity 2 (cost 2, right sign); unsafer costs more: right.
        ScoredPair((-1.0, 2.0), (2, 2), 0, safer_id=0, is_safe=(True, False), severity=(0, 2),
                   categories=(frozenset(), frozenset({"Violence"}))),
        # both unsafe (severity 1 and 3); response 0 is safer but costs more: wrong pair; signs right (both > 0).
        ScoredPair((3.0, 1.0), (2, 2), 0, safer_id=0, is_safe=(False, False), severity=(1, 3),
                   categories=(frozenset({"Drugs"}), frozenset({"Violence"}))),
        # safe with cost 0.5 (wrong sign) vs unsafe severity 3 (cost 4); pair right.
        ScoredPair((0.5, 4.0), (2, 2), 0, safer_id=0, is_safe=(True, False), severity=(0, 3)),
    ]  # fmt: skip
    summary = score_model_summary(pairs, "cost")
    assert summary["accuracy"] == pytest.approx(2 / 3)
    assert summary["accuracy_safe_vs_unsafe"] == pytest.approx(1.0)  # pairs 1 and 3
    assert summary["sign_accuracy"] == pytest.approx(5 / 6)
    assert summary["sign_accuracy_by_severity"] == {"0": 0.5, "1": 1.0, "2": 1.0, "3": 1.0}
    assert summary["sign_accuracy_by_category"] == {"Drugs": 1.0, "Violence": 1.0}


class _Pair:
    def __init__(self, better_length: int, worse_length: int) -> None:
        self.better_id = 0
        self.lengths = (better_length, worse_length)


def test_length_balancing_equalises_longer_and_shorter_preferences():
    # 6 pairs where the better one is longer by 1-2 tokens, 2 where it is shorter, 1 tie.
    items = [_Pair(3, 2)] * 3 + [_Pair(4, 2)] * 3 + [_Pair(2, 3), _Pair(2, 4), _Pair(5, 5)]
    items = [_Pair(p.lengths[0], p.lengths[1]) for p in items]
    kept, dropped = length_balanced(items, num_bins=1, seed=0)
    longer = sum(p.lengths[0] > p.lengths[1] for p in kept)
    shorter = sum(p.lengths[0] < p.lengths[1] for p in kept)
    assert longer == shorter == 2
    assert dropped == 4 and len(kept) == 5  # 2 + 2 + the tie
    assert length_balanced(items, num_bins=0, seed=0) == (items, 0)
