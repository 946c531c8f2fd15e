"""The architecture matrix, model level: every tiny architecture loads with a usable pad token, fits its vocabulary,
scores and scores again the same under left padding, samples without the suppressed ids, and survives export.

The recipes end to end on each architecture are tests/integration/test_architectures.py (slow tier, plus GPT-2 and a
2-rank ZeRO-3 run in the default tier)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from safe_rlhf.assets import TINY_ARCHITECTURES, build_tiny_assets, resolve_model_path, tiny_alias_architecture
from safe_rlhf.config import ConfigError, ModelConfig
from safe_rlhf.engines import (
    ADDED_PAD_TOKEN,
    VOCAB_MULTIPLE,
    disable_dropout,
    embedding_rows,
    fit_vocabulary,
    generation_suppressed_ids,
    load_tokenizer,
)
from safe_rlhf.recipes.rollout import policy_log_probs
from safe_rlhf.score_model import end_scores, load_score_model

pytestmark = pytest.mark.unit

ARCHITECTURES = sorted(TINY_ARCHITECTURES)


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("architectures")
    return {name: build_tiny_assets(root / name, architecture=name) for name in ARCHITECTURES}


def _pad_row(ids: list[int], length: int, pad: int, left: bool) -> tuple[list[int], list[int]]:
    padding = [pad] * (length - len(ids))
    mask = [0] * len(padding)
    return (padding + ids, mask + [1] * len(ids)) if left else (ids + padding, [1] * len(ids) + mask)


def test_the_matrix_names_the_eleven_architectures_of_the_issue():
    assert ARCHITECTURES == sorted(
        ["llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "phi3", "gpt2", "gpt_neox", "opt", "bloom"]
    )
    assert tiny_alias_architecture("tiny") == "llama"
    assert tiny_alias_architecture("tiny-gpt-neox") == "gpt_neox"
    assert tiny_alias_architecture("tiny-unknown") is None
    with pytest.raises(ConfigError, match="no such built-in tiny model"):
        resolve_model_path("tiny-unknown", "model.name_or_path")


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_architecture_loads_scores_samples_and_exports(built, architecture, tmp_path):
    from transformers import AutoModelForCausalLM

    directory = built[architecture]
    tokenizer = load_tokenizer(ModelConfig(name_or_path=str(directory)))
    style = TINY_ARCHITECTURES[architecture].pad
    # 1. a pad token distinct from eos, added where the checkpoint has none or reuses eos
    assert tokenizer.pad_token_id is not None and tokenizer.pad_token_id != tokenizer.eos_token_id
    assert (tokenizer.pad_token == ADDED_PAD_TOKEN) == (style != "distinct")

    # 2. the embeddings grow only when the tokenizer outgrew them, to a multiple of VOCAB_MULTIPLE
    model = AutoModelForCausalLM.from_pretrained(directory)
    rows_before = embedding_rows(model)
    resized = fit_vocabulary(model, tokenizer)
    assert resized == (rows_before < len(tokenizer))
    if resized:
        assert embedding_rows(model) % VOCAB_MULTIPLE == 0 and embedding_rows(model) >= len(tokenizer)
        assert model.get_output_embeddings().weight.shape[0] == embedding_rows(model)
        assert model.config.vocab_size == embedding_rows(model)
    assert resized == (style != "distinct")  # the tiny builds have one row per token, except the Llama's 1024
    disable_dropout(model)
    model.train()  # dropout must be off even in train mode: rollout and update log-probs must agree

    # 3. the same response gets the same log-probs left-padded (rollouts) and unpadded (what the positions mean)
    prompt = [1, 40, 41, 42, 43]
    response = [50, 51, 52]
    ids, mask = _pad_row(prompt + response, 11, tokenizer.pad_token_id, left=True)
    batch_ids, batch_mask = (
        torch.tensor([ids, prompt + response + [tokenizer.pad_token_id] * 3]),
        torch.tensor([mask, [1] * 8 + [0] * 3]),
    )
    with torch.no_grad():
        left = policy_log_probs(model, batch_ids[:1], batch_mask[:1], 1.0)[0, -3:]
        plain = policy_log_probs(model, torch.tensor([prompt + response]), torch.ones(1, 8, dtype=torch.long), 1.0)
        repeated = policy_log_probs(model, batch_ids[:1], batch_mask[:1], 1.0)[0, -3:]
    torch.testing.assert_close(left, plain[0, -3:], atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(left, repeated)  # no dropout in train mode

    # 4. an SFT-style loss backpropagates to every trainable parameter, finitely
    loss = -policy_log_probs(model, batch_ids, batch_mask, 1.0)[:, -3:].mean()
    loss.backward()
    assert loss.isfinite()
    without_grad = [name for name, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not without_grad, without_grad[:5]

    # 5. sampling never produces the suppressed ids (an added pad, vocabulary padding): their scores are -inf
    suppressed = generation_suppressed_ids(tokenizer, embedding_rows(model))
    added_pad = [tokenizer.pad_token_id] if style != "distinct" else []
    assert suppressed == [*added_pad, *range(len(tokenizer), embedding_rows(model))]
    model.eval()
    torch.manual_seed(0)
    output = model.generate(
        input_ids=batch_ids[:1],
        attention_mask=batch_mask[:1],
        max_new_tokens=4,
        do_sample=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        suppress_tokens=suppressed or None,
        output_scores=True,
        return_dict_in_generate=True,
    )
    if suppressed:
        assert all(torch.isinf(step[0, suppressed]).all() for step in output.scores)

    # 6. a score model reads the last real token: right- and left-padded pairs score the same
    score_model = load_score_model(str(directory), score_dim=2, new_head=True)
    fit_vocabulary(score_model, tokenizer)
    disable_dropout(score_model)
    score_model.eval()
    right_ids, right_mask = _pad_row(prompt + response, 11, tokenizer.pad_token_id, left=False)
    with torch.no_grad():
        scores = end_scores(score_model, torch.tensor([ids, right_ids]), torch.tensor([mask, right_mask]))
    assert scores.shape == (2, 2)
    torch.testing.assert_close(scores[0], scores[1], atol=2e-5, rtol=1e-4)

    # 7. export and reload: same logits, and the tokenizer keeps its pad token
    model.save_pretrained(tmp_path / "export", safe_serialization=True)
    tokenizer.save_pretrained(tmp_path / "export")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "export")
    reloaded_tokenizer = load_tokenizer(ModelConfig(name_or_path=str(tmp_path / "export")))
    assert reloaded_tokenizer.pad_token_id == tokenizer.pad_token_id and len(reloaded_tokenizer) == len(tokenizer)
    assert not fit_vocabulary(reloaded, reloaded_tokenizer)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(
            reloaded(input_ids=batch_ids[:1, -8:]).logits, model(input_ids=batch_ids[:1, -8:]).logits
        )


def test_a_tokenizer_without_eos_is_one_config_error(built, tmp_path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(built["gpt2"])
    tokenizer.eos_token = None
    tokenizer.save_pretrained(tmp_path / "no-eos")
    with pytest.raises(ConfigError, match="has no eos token"):
        load_tokenizer(ModelConfig(name_or_path=str(tmp_path / "no-eos")))
