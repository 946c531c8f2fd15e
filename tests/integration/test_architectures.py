"""The architecture matrix, end to end: SFT, reward and cost models, one PPO-Lag iteration and one DPO step on each
tiny architecture (``model.name_or_path=tiny-ARCH``), each exported and reloaded.

GPT-2 (no pad token, tied embeddings, learned positions) runs in the default tier, and Qwen2 (pad == eos) SFT and
PPO-Lag under 2-rank ZeRO-3, where the added pad token resizes partitioned embeddings; the other nine architectures,
and Qwen2's whole chain under ZeRO-3, run in the slow tier.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from safe_rlhf.assets import TINY_ARCHITECTURES
from safe_rlhf.distributed import find_free_port
from tests.conftest import run_cli, train_cli

SMALL = ["logger=none", "train.eval_steps=0", "train.batch_size=8", "train.micro_batch_size=4"]


def _ok(result) -> None:
    assert result.returncode == 0, result.stderr[-3000:]


def _check_export(directory: Path, vocabulary_rows: int | None = None) -> None:
    """The exported directory loads with plain transformers, and its tokenizer keeps a pad token that is not eos."""
    from transformers import AutoConfig, AutoTokenizer

    config = AutoConfig.from_pretrained(directory)
    tokenizer = AutoTokenizer.from_pretrained(directory)
    assert tokenizer.pad_token_id is not None and tokenizer.pad_token_id != tokenizer.eos_token_id
    rows = config.get_text_config().vocab_size
    assert rows >= len(tokenizer)
    if vocabulary_rows is not None:
        assert rows == vocabulary_rows


def run_matrix_chain(architecture: str, root: Path, prefix: list[str] | None = None, zero3: bool = False) -> None:
    """SFT -> reward model, cost model -> PPO-Lag (1 iteration) and DPO (1 step), each exported and checked."""
    launch = prefix or [sys.executable, "-m", "safe_rlhf.train"]
    extra = ["deepspeed=zero3"] if zero3 else []

    def run(config_name: str, overrides: list[str]) -> None:
        _ok(run_cli([*launch, "--config-name", config_name, *extra, *overrides]))

    sft, reward, cost = root / "sft", root / "reward_model", root / "cost_model"
    # 77 SFT samples over 2 ranks: the ranks get different numbers of them
    run("sft", [f"output_dir={sft}", f"model.name_or_path=tiny-{architecture}", *SMALL, "train.max_steps=2",
                "data.train=toyworld:sft*0.0205"])  # fmt: skip
    _check_export(sft / "model")
    for name, directory in (("reward_model", reward), ("cost_model", cost)):
        run(name, [f"output_dir={directory}", f"model.name_or_path={sft / 'model'}", *SMALL, "train.max_steps=2",
                   "data.train=toyworld:preference*0.02"])  # fmt: skip
        _check_export(directory / "model")
        metadata = json.loads((directory / "model" / "config.json").read_text())["safe_rlhf"]
        assert metadata["score_type"] == ("reward" if name == "reward_model" else "cost")
    ppo_lag = [f"output_dir={root / 'ppo_lag'}", f"actor.name_or_path={sft / 'model'}",
               f"reward_model={reward / 'model'}", f"cost_model={cost / 'model'}", "logger=none", "train.max_steps=1",
               "train.rollout_batch_size=8", "train.mini_batch_size=8", "train.micro_batch_size=2",
               "generation.max_new_tokens=8", "data.eval=null"]  # fmt: skip
    run("ppo_lag", ppo_lag)
    rows = [json.loads(line) for line in (root / "ppo_lag" / "metrics.jsonl").read_text().splitlines()]
    assert any("train/lambda_0" in row and "train/actor_loss" in row for row in rows)
    _check_export(root / "ppo_lag" / "model")
    run("dpo", [f"output_dir={root / 'dpo'}", f"model.name_or_path={sft / 'model'}", *SMALL, "train.max_steps=1",
                "data.train=toyworld:preference*0.02"])  # fmt: skip
    _check_export(root / "dpo" / "model")


@pytest.mark.integration
def test_gpt2_without_a_pad_token_through_every_recipe(tmp_path, safe_rlhf_cache):
    run_matrix_chain("gpt2", tmp_path)
    # the added pad token grew the 941-token vocabulary to 960 rows (a multiple of 64), kept through every export
    for stage in ("sft", "reward_model", "ppo_lag", "dpo"):
        _check_export(tmp_path / stage / "model", vocabulary_rows=960)


def _zero3_prefix() -> list[str]:
    deepspeed = os.path.join(os.path.dirname(sys.executable), "deepspeed")
    return [deepspeed, "--num_gpus", "2", "--master_port", str(find_free_port()), "--module", "safe_rlhf.train"]


def _score_model_on(architecture: str, directory: Path, score_type: str) -> Path:
    """A fresh-head score model on the tiny architecture, its vocabulary fitted to the tokenizer with the added pad."""
    from safe_rlhf.config import ModelConfig
    from safe_rlhf.engines import fit_vocabulary, load_tokenizer
    from safe_rlhf.score_model import load_score_model, set_score_metadata

    tokenizer = load_tokenizer(ModelConfig(name_or_path=f"tiny-{architecture}"))
    model = load_score_model(f"tiny-{architecture}", score_dim=1, new_head=True)
    fit_vocabulary(model, tokenizer)
    set_score_metadata(model, score_type=score_type, score_dim=1)
    model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.mark.integration
def test_qwen2_with_pad_equal_to_eos_resizes_under_two_rank_zero3(tmp_path, safe_rlhf_cache):
    """SFT and PPO-Lag start from the base checkpoint (pad == eos), so the policy, and in PPO-Lag the reference too,
    are resized while ZeRO-3 holds them partitioned; 77 SFT samples give the two ranks different numbers of them."""
    from safetensors.torch import load_file

    sft = tmp_path / "sft"
    _ok(run_cli([*_zero3_prefix(), "--config-name", "sft", "deepspeed=zero3", f"output_dir={sft}",
                 "model.name_or_path=tiny-qwen2", *SMALL, "train.max_steps=2",
                 "data.train=toyworld:sft*0.0205"]))  # fmt: skip
    _check_export(sft / "model", vocabulary_rows=960)
    # the resize gathered the partitioned rows: 960 finite rows, the new ones at the old rows' mean (not zeros)
    embedding = load_file(sft / "model" / "model.safetensors")["model.embed_tokens.weight"]
    assert embedding.shape[0] == 960 and embedding.isfinite().all()
    assert embedding[941:].abs().sum() > 0
    reward = _score_model_on("qwen2", tmp_path / "reward_model", "reward")
    cost = _score_model_on("qwen2", tmp_path / "cost_model", "cost")
    ppo_lag = tmp_path / "ppo_lag"
    _ok(run_cli([*_zero3_prefix(), "--config-name", "ppo_lag", "deepspeed=zero3", f"output_dir={ppo_lag}",
                 "actor.name_or_path=tiny-qwen2", f"reward_model={reward}", f"cost_model={cost}", "logger=none",
                 "train.max_steps=1", "train.rollout_batch_size=8", "train.mini_batch_size=8",
                 "train.micro_batch_size=2", "generation.max_new_tokens=8", "data.eval=null"]))  # fmt: skip
    rows = [json.loads(line) for line in (ppo_lag / "metrics.jsonl").read_text().splitlines()]
    # the actor and the reference were resized alike: the KL to the reference starts at 0 up to sampling noise
    first = next(row for row in rows if "train/kl" in row)
    assert abs(first["train/kl"]) < 1e-3, first["train/kl"]
    _check_export(ppo_lag / "model", vocabulary_rows=960)


@pytest.mark.integration
@pytest.mark.slow
def test_qwen2_through_every_recipe_under_two_rank_zero3(tmp_path, safe_rlhf_cache):
    run_matrix_chain("qwen2", tmp_path, prefix=_zero3_prefix(), zero3=True)


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.parametrize("architecture", sorted(set(TINY_ARCHITECTURES) - {"gpt2"}))
def test_architecture_through_every_recipe(tmp_path, safe_rlhf_cache, architecture):
    run_matrix_chain(architecture, tmp_path)


@pytest.mark.integration
def test_an_unknown_tiny_architecture_is_one_line(tmp_path, safe_rlhf_cache):
    result = train_cli([f"output_dir={tmp_path / 'x'}", "model.name_or_path=tiny-gpt5", "logger=none"])
    assert result.returncode == 2, result.stderr[-2000:]
    assert "model.name_or_path=tiny-gpt5: no such built-in tiny model" in result.stderr
    assert "Traceback" not in result.stderr
