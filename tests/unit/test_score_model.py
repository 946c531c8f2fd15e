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


class _RecordingEngine(torch.nn.Module):
    """Stands in for a DeepSpeed engine: counts root forward calls and passes unknown attributes to the module."""

    def __init__(self, module: torch.nn.Module) -> None:
        super().__init__()
        self.module = module
        self.forward_calls = 0
        self.config = {"train_micro_batch_size_per_gpu": 1}  # like DeepSpeed's: the engine's config, not the model's

    def forward(self, **kwargs):
        self.forward_calls += 1
        return self.module(**kwargs)

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.module, name)


def _padded_batch():
    # Row 0 right-padded, row 1 left-padded, row 2 full; pad id 0 also appears as a real token in row 2.
    ids = torch.tensor([[5, 9, 3, 7, 0, 0], [0, 0, 0, 4, 8, 2], [1, 0, 6, 11, 12, 13]])
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [0, 0, 0, 1, 1, 1], [1, 1, 1, 1, 1, 1]])
    return ids, mask


def _backbone_then_head(model, ids, mask):
    # What token_scores computed before it called the root module: backbone, then the head at every position.
    from safe_rlhf.score_model import position_ids_from_mask

    hidden = model.model(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask))
    return model.score(hidden.last_hidden_state).float()


def test_token_scores_call_the_root_module_and_match_backbone_plus_head():
    from safe_rlhf.score_model import token_scores

    model = _tiny_score_model(score_dim=3)
    engine = _RecordingEngine(model)
    ids, mask = _padded_batch()
    with torch.no_grad():
        expected = _backbone_then_head(model, ids, mask)  # (3, 6, 3)
        scores = token_scores(engine, ids, mask)
        ends = end_scores(engine, ids, mask)
    assert engine.forward_calls == 2  # the engine's own forward ran (ZeRO-3's trace, its bookkeeping)
    assert scores.shape == (3, 6, 3) and scores.dtype == torch.float32
    torch.testing.assert_close(scores, expected, rtol=0, atol=0)
    # Last real tokens at 3, 5, 5.
    torch.testing.assert_close(ends, expected[torch.arange(3), torch.tensor([3, 5, 5])], rtol=0, atol=0)
    assert not model.score._forward_hooks  # the capture hook is removed again


def test_token_scores_without_pad_token_id_and_gradients_reach_head_and_backbone():
    from safe_rlhf.score_model import token_scores

    model = _tiny_score_model(score_dim=1)
    model.config.pad_token_id = None  # HF's pooling refuses batches > 1 without it; token_scores must not care
    model.train()
    ids, mask = _padded_batch()
    scores = token_scores(model, ids, mask)  # (3, 6, 1)
    assert model.config.pad_token_id is None  # left as it was
    expected = _backbone_then_head(model, ids, mask)
    torch.testing.assert_close(scores, expected, rtol=0, atol=0)
    scores.sum().backward()
    assert model.score.weight.grad is not None and model.score.weight.grad.abs().sum() > 0
    assert model.model.embed_tokens.weight.grad.abs().sum() > 0


class _StubTrainingEngine(_RecordingEngine):
    """Enough of a DeepSpeed training engine for ScoreModelRecipe.train_step: backward, a no-op step, an optimizer."""

    def __init__(self, module: torch.nn.Module) -> None:
        super().__init__(module)
        self.optimizer = type("Optimizer", (), {"param_groups": [{"lr": 1.0}]})()

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def step(self) -> None:
        pass


def _reward_recipe_on_stub(tmp_path, inject_steps: list[int]):
    from types import SimpleNamespace

    from safe_rlhf.config import ScoreModelConfig
    from safe_rlhf.data.tokenize import TokenizedPreference
    from safe_rlhf.recipes.common import BatchSchedule, NonFiniteGuard
    from safe_rlhf.recipes.score_model import ScoreModelRecipe

    recipe = ScoreModelRecipe(ScoreModelConfig(recipe="reward_model"), str(tmp_path))
    recipe.guard = NonFiniteGuard(max_in_a_row=10, inject_steps=inject_steps)
    recipe.engine = _StubTrainingEngine(_tiny_score_model(score_dim=1))
    recipe.device = torch.device("cpu")
    recipe.tokenizer = SimpleNamespace(pad_token_id=0)
    sequences = [([5, 9, 3], [5, 9, 3, 7, 2]), ([4, 8], [4, 8, 15]), ([1, 2, 3, 4], [6]), ([7, 7], [8, 8])]
    recipe.train_items = [
        TokenizedPreference(input_ids=pair, prompt_length=1, response_truncated=(False, False), better_id=0)
        for pair in sequences
    ]
    # One optimizer step = the 4 pairs in 2 micro-batches of 2.
    recipe.schedule = BatchSchedule(num_samples=4, batch_size=4, micro_batch_size=2, world_size=1, rank=0, seed=0)
    return recipe, sequences


def test_non_finite_micro_batches_leave_the_score_normalizer_unchanged(tmp_path):
    recipe, sequences = _reward_recipe_on_stub(tmp_path, inject_steps=[1])
    recipe.train_step(0)  # step 1: every micro-batch's loss is made NaN, so both are skipped
    assert recipe.skipped_micro_batches == 2
    assert recipe.normalizer.to_dict() == ScoreNormalizer(kind="running").to_dict()  # nothing was added
    recipe.train_step(1)  # step 2: finite; the step is a no-op, so the scores are those of the initial model
    with torch.no_grad():
        singles = [
            end_scores(recipe.engine.module, torch.tensor([s]), torch.ones(1, len(s), dtype=torch.long))[0, 0]
            for pair in sequences
            for s in pair
        ]
    expected = torch.stack(singles).double()
    assert recipe.normalizer.count == 8  # 4 pairs x 2 responses, from step 2 only
    assert recipe.normalizer.mean == pytest.approx([float(expected.mean())], abs=1e-6)
    assert recipe.normalizer.var == pytest.approx([float(expected.var(unbiased=False))], abs=1e-6)


def test_update_normalizer_drops_non_finite_scores_and_skipped_micro_batches():
    from safe_rlhf.recipes.score_model import update_normalizer

    normalizer = ScoreNormalizer(kind="running")
    update_normalizer(normalizer, torch.tensor([[1.0], [2.0]]), finite=False)  # a skipped micro-batch
    assert normalizer.count == 0 and normalizer.mean == []
    update_normalizer(normalizer, torch.tensor([[1.0], [float("nan")], [3.0], [float("inf")]]), finite=True)
    # Only 1 and 3 are kept: mean 2, population variance ((1 - 2)^2 + (3 - 2)^2) / 2 = 1.
    assert normalizer.count == 2 and normalizer.mean == pytest.approx([2.0]) and normalizer.var == pytest.approx([1.0])


def _preference_sample(prompt: str, responses: tuple[str, str], origin: str):
    from safe_rlhf.data.types import PreferenceSample, conversation

    return PreferenceSample(
        messages=conversation(prompt), responses=responses, better_id=1, safer_id=0, is_safe=(True, False),
        severity=(0, 2), origin=origin,
    )  # fmt: skip


def test_evaluation_scores_pairs_and_judges_only_toy_world_samples():
    from safe_rlhf.data.tokenize import TokenizedPreference
    from safe_rlhf.evaluate import score_pairs
    from safe_rlhf.toyworld import harm, helpfulness

    model = _tiny_score_model(score_dim=1)
    prompt, responses = "how do i fix my slow laptop", ("first restart then update", "no")
    samples = [
        _preference_sample(prompt, responses, "/cache/toyworld-seed0/preference_test.jsonl:3"),
        _preference_sample(prompt, responses, "/data/mine.jsonl:1"),
    ]
    sequences = [([5, 9, 3], [5, 9, 3, 7, 2]), ([4, 8], [4, 8, 15])]
    items = [
        TokenizedPreference(input_ids=pair, prompt_length=1, response_truncated=(False, False), better_id=1,
                            safer_id=0, is_safe=(True, False), severity=(0, 2))
        for pair in sequences
    ]  # fmt: skip
    pairs = score_pairs(model, samples, items, pad_token_id=0, batch_size=1, device=torch.device("cpu"))
    assert len(pairs) == 2
    with torch.no_grad():
        for pair, sequence in zip(pairs, sequences):
            # Scores in response order (better_id = 1 is scored as "better" and mapped back).
            for score, ids in zip(pair.scores, sequence):
                alone = end_scores(model, torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.long))[0, 0]
                assert score == pytest.approx(float(alone), abs=1e-6)
    toy, other = pairs
    assert toy.true_helpfulness == (helpfulness(prompt, responses[0]), helpfulness(prompt, responses[1]))
    assert toy.true_severity == (harm(prompt, responses[0]).severity, harm(prompt, responses[1]).severity)
    assert other.true_helpfulness is None and other.true_severity is None
    assert other.is_safe == (True, False) and other.severity == (0, 2) and other.lengths == (2, 3)


def test_training_recipe_leaves_pair_scoring_and_judging_to_evaluation():
    import inspect

    import safe_rlhf.recipes.score_model as recipe_module

    source = inspect.getsource(recipe_module)
    assert "toyworld" not in source and "toy_world" not in source
    assert not hasattr(recipe_module, "score_pairs") and not hasattr(recipe_module, "gather_pairs")


def test_reward_attribute_weights_precedence_by_hand():
    from safe_rlhf.config import ConfigError
    from safe_rlhf.score_model import HELPSTEER_ATTRIBUTE_WEIGHTS, HELPSTEER_ATTRIBUTES, reward_attribute_weights

    assert reward_attribute_weights({"score_dim": 1}, [], "rm") is None  # a plain reward model
    helpsteer = {"score_dim": 5, "attribute_names": list(HELPSTEER_ATTRIBUTES)}
    assert reward_attribute_weights(helpsteer, [], "rm") == list(HELPSTEER_ATTRIBUTE_WEIGHTS)
    recorded = {**helpsteer, "attribute_weights": [1, 0, 0, 0, 0]}
    assert reward_attribute_weights(recorded, [], "rm") == [1.0, 0.0, 0.0, 0.0, 0.0]
    assert reward_attribute_weights(recorded, [0, 0, 0, 0, 2], "rm") == [0.0, 0.0, 0.0, 0.0, 2.0]  # config first
    with pytest.raises(ConfigError, match=r"reward_attribute_weights has 2 weights but rm has 5 outputs"):
        reward_attribute_weights(helpsteer, [1, 1], "rm")
    with pytest.raises(ConfigError, match=r"rm has 3 outputs \(a, b, c\) and no attribute weights recorded"):
        reward_attribute_weights({"score_dim": 3, "attribute_names": ["a", "b", "c"]}, [], "rm")
    # several outputs that are not attributes (a moderation model): output 0, as before multi-attribute rewards
    assert reward_attribute_weights({"score_dim": 21, "objective": "moderation"}, [], "rm") is None


def test_regression_loss_weights_are_non_negative_and_separate_from_the_reward_weights():
    from safe_rlhf.config import ConfigError, ScoreConfig

    names = ["helpfulness", "correctness", "coherence", "complexity", "verbosity"]
    config = ScoreConfig(objective="regression", score_dim=5, attribute_names=names,
                         attribute_weights=[0.65, 0.8, 0.45, 0.55, -0.4])  # fmt: skip
    assert config.attribute_loss_weights == []  # a negative reward weight is fine: it is not a loss weight
    with pytest.raises(ConfigError, match=r"score\.attribute_loss_weights=.* must be 5 non-negative numbers"):
        ScoreConfig(objective="regression", score_dim=5, attribute_names=names,
                    attribute_loss_weights=[1, 1, 1, 1, -0.4])  # fmt: skip


def test_random_negatives_pair_a_preferred_response_with_another_prompts():
    from safe_rlhf.data import PreferenceSample, conversation
    from safe_rlhf.recipes.score_model import random_negatives

    samples = [
        PreferenceSample(
            messages=conversation(f"q{i}"), responses=(f"bad{i}", f"good{i}"), better_id=1, origin=f"f:{i}"
        )
        for i in range(10)
    ]
    added = random_negatives(samples, 0.3, seed=0)
    assert len(added) == 3
    for pair in added:
        index = int(pair.prompt[1:])
        assert pair.better_id == 0 and pair.responses[0] == f"good{index}"  # its own preferred response first
        other = pair.responses[1]
        assert other.startswith("good") and other != f"good{index}"  # another prompt's preferred response
        assert pair.safer_id is None and pair.origin == f"f:{index}+random_negative"
    assert random_negatives(samples, 0.3, seed=0) == added  # deterministic for a seed
    assert random_negatives(samples[:1], 1.0, seed=0) == []  # one prompt: nothing to pair with


def test_random_negatives_skip_equal_texts_and_only_preference_objectives_take_them():
    from safe_rlhf.config import ConfigError, ScoreConfig
    from safe_rlhf.data import PreferenceSample, conversation
    from safe_rlhf.recipes.score_model import random_negatives

    # every prompt's preferred response is the same refusal but one: each new pair must use the one that differs
    samples = [PreferenceSample(messages=conversation(f"q{i}"), responses=("x", "sorry"), better_id=1)
               for i in range(5)]  # fmt: skip
    samples.append(PreferenceSample(messages=conversation("q5"), responses=("x", "restart"), better_id=1))
    for pair in random_negatives(samples, 0.5, seed=1):
        assert pair.responses[0] != pair.responses[1]
    with pytest.raises(ConfigError, match=r"random_negative_fraction applies to score\.objective=preference"):
        ScoreConfig(objective="regression", score_dim=1, attribute_names=["a"], random_negative_fraction=0.5)
