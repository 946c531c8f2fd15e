"""The pipeline's RL stages share the held-out prompts, and PPO-Lag selects its checkpoint on them, whatever the
user's rl list says (a user key wins; none is given twice)."""

from __future__ import annotations

import pytest

from safe_rlhf.config import ConfigError, PipelineConfig
from safe_rlhf.pipeline import Pipeline


def stage_overrides(tmp_path, monkeypatch, **settings) -> dict[str, list[str]]:
    recorded: dict[str, list[str]] = {}
    monkeypatch.setattr(Pipeline, "_run", lambda self, name, module, config_name, overrides, done: recorded.update(
        {name: overrides}))  # fmt: skip
    config = PipelineConfig(stages=["ppo", "ppo_lag", "ppo_reward_shaping"], shaping_lambdas=[2.0], **settings)
    Pipeline(config, str(tmp_path)).run()
    return recorded


def test_every_rl_stage_holds_out_prompts_and_ppo_lag_selects(tmp_path, monkeypatch):
    stages = stage_overrides(tmp_path, monkeypatch, rl=["train.max_steps=2"])
    for name in ("ppo", "ppo_lag", "ppo_reward_shaping_2"):
        assert stages[name].count("data.validation_fraction=0.1") == 1, stages[name]
        assert "train.max_steps=2" in stages[name]
    assert stages["ppo_lag"].count("train.select_steps=10") == 1
    assert not any(o.startswith("train.select_steps") for o in stages["ppo"] + stages["ppo_reward_shaping_2"])


def test_a_users_keys_win_and_no_validation_means_no_selection(tmp_path, monkeypatch):
    stages = stage_overrides(
        tmp_path, monkeypatch, rl=["data.validation_fraction=0.2"], ppo_lag=["train.select_steps=5"]
    )
    assert [o for o in stages["ppo_lag"] if "validation_fraction" in o] == ["data.validation_fraction=0.2"]
    assert [o for o in stages["ppo_lag"] if "select_steps" in o] == ["train.select_steps=5"]
    stages = stage_overrides(tmp_path, monkeypatch, rl=["data.validation_fraction=0.0"])
    assert not any("select_steps" in o for o in stages["ppo_lag"])  # selection needs validation prompts
    stages = stage_overrides(tmp_path, monkeypatch, validation_fraction=0.0)
    assert "data.validation_fraction=0.0" in stages["ppo"] and not any("select_steps" in o for o in stages["ppo_lag"])


def test_bad_pipeline_selection_settings_are_refused():
    with pytest.raises(ConfigError, match=r"validation_fraction=1\.5"):
        PipelineConfig(validation_fraction=1.5)
    with pytest.raises(ConfigError, match="select_steps=-1"):
        PipelineConfig(select_steps=-1)
