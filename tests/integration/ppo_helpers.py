"""Tiny stand-ins for the PPO recipes' inputs: a random tiny actor and reward/cost score models built from it."""

from __future__ import annotations

from pathlib import Path


def build_score_model(directory: Path, score_type: str) -> Path:
    """A score model on the tiny backbone with a fresh head, saved like the score-model recipes save theirs."""
    from transformers import AutoTokenizer

    from safe_rlhf.assets import resolve_model_path
    from safe_rlhf.score_model import COST_SIGN_CONVENTION, load_score_model, set_score_metadata

    if (directory / "config.json").exists():
        return directory
    model = load_score_model("tiny", score_dim=1, new_head=True)
    set_score_metadata(
        model,
        score_type=score_type,
        score_dim=1,
        sign_convention=COST_SIGN_CONVENTION if score_type == "cost" else "higher is better",
    )
    model.save_pretrained(directory, safe_serialization=True)
    AutoTokenizer.from_pretrained(resolve_model_path("tiny")).save_pretrained(directory)
    return directory


def ppo_overrides(root: Path) -> list[str]:
    reward = build_score_model(root / "reward_model", "reward")
    cost = build_score_model(root / "cost_model", "cost")
    return [
        "actor.name_or_path=tiny",
        f"reward_model={reward}",
        f"cost_model={cost}",
        "logger=none",
        "train.rollout_batch_size=16",
        "train.mini_batch_size=8",
        "train.micro_batch_size=4",
        "generation.max_new_tokens=8",
        "data.eval=null",
        "train.export=false",
    ]
