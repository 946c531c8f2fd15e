"""Recipes: one readable class per training stage, looked up by the ``recipe`` key of a config."""

from __future__ import annotations

import importlib
from typing import Any

_RECIPE_CLASSES = {
    "sft": "safe_rlhf.recipes.sft:SFTRecipe",
    "reward_model": "safe_rlhf.recipes.score_model:ScoreModelRecipe",
    "cost_model": "safe_rlhf.recipes.score_model:ScoreModelRecipe",
    "moderation": "safe_rlhf.recipes.score_model:ScoreModelRecipe",
    "score_model": "safe_rlhf.evaluate:ScoreModelEvaluation",
    "moderation_eval": "safe_rlhf.evaluate:ModerationEvaluation",
    "arena": "safe_rlhf.evaluate:ArenaEvaluation",
    "length_bias": "safe_rlhf.evaluate:LengthBiasEvaluation",
    "pipeline": "safe_rlhf.pipeline:Pipeline",
    "ppo": "safe_rlhf.recipes.ppo:PPORecipe",
    "ppo_lag": "safe_rlhf.recipes.ppo:PPORecipe",
    "ppo_reward_shaping": "safe_rlhf.recipes.ppo:PPORecipe",
    "dpo": "safe_rlhf.recipes.dpo:DPORecipe",
    "safe_dpo": "safe_rlhf.recipes.dpo:DPORecipe",
}


class _Registry:
    """Imports a recipe module only when it is used (DeepSpeed and transformers are slow to import)."""

    def __contains__(self, name: object) -> bool:
        return name in _RECIPE_CLASSES

    def __getitem__(self, name: str) -> Any:
        if name not in _RECIPE_CLASSES:
            raise KeyError(f"unknown recipe {name!r}; known: {', '.join(sorted(_RECIPE_CLASSES))}")
        module_name, class_name = _RECIPE_CLASSES[name].split(":")
        return getattr(importlib.import_module(module_name), class_name)

    def names(self) -> list[str]:
        return sorted(_RECIPE_CLASSES)


RECIPES = _Registry()
