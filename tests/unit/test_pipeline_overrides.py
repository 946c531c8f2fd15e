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


def test_the_swap_control_is_an_arena_over_the_swapped_pictures_with_the_same_policies(tmp_path, monkeypatch):
    recorded: dict[str, list[str]] = {}
    monkeypatch.setattr(Pipeline, "_run", lambda self, name, module, config_name, overrides, done: recorded.update(
        {name: overrides}))  # fmt: skip
    written: list[str] = []
    monkeypatch.setattr("safe_rlhf.pipeline.write_swap_control", lambda root: written.append(str(root)))
    config = PipelineConfig(stages=["ppo", "ppo_lag", "arena", "swap_control"],
                            arena=["data.eval=toyworld:vision_eval_prompts"],
                            swap_control_data="toyworld:vision_eval_swapped")  # fmt: skip
    Pipeline(config, str(tmp_path)).run()
    arena, control = recorded["arena"], recorded["swap_control"]
    policies = sorted(o for o in arena if o.startswith("+policies."))
    assert policies == sorted(o for o in control if o.startswith("+policies.")) and len(policies) == 3
    assert [o for o in control if o.startswith("data.eval=")] == ["data.eval=toyworld:vision_eval_swapped"]
    assert f"output_dir={tmp_path / 'swap_control'}" in control and written == [str(tmp_path)]
    with pytest.raises(ConfigError, match="stages has swap_control but swap_control_data is not set"):
        PipelineConfig(stages=["swap_control"])


def test_the_vision_pipeline_config_composes():
    from safe_rlhf.train import load_config

    config = load_config("pipeline_vision", [])
    assert config.swap_control_data == "toyworld:vision_eval_swapped" and "swap_control" in config.stages
    assert "model.name_or_path=tiny-vlm" in config.sft
    # PPO-Lag on images keeps the indicator stream and its gains (the text default's score stream lost helpfulness
    # to the over-optimised tiny-VLM reward model, docs/vision.md)
    assert config.ppo_lag == ["lagrange.rate_stream=indicator", "lagrange.init=0.1", "lagrange.lr=1.0",
                              "lagrange.kp=5.0", "lagrange.margin=0"]  # fmt: skip


def test_the_seeds_report_aggregates_the_image_swap_control_when_every_seed_has_one(tmp_path):
    import json

    from safe_rlhf.pipeline import write_seeds_report

    for seed, follows in ((1, 1.0), (2, 3.0)):
        folder = tmp_path / f"seed-{seed}"
        folder.mkdir()
        (folder / "summary.json").write_text(json.dumps({"sft": {"true_helpfulness": 0.5, "true_harm_rate": 0.1}}))
        (folder / "swap_control.json").write_text(json.dumps({"sft": {"answers_changed": 0.9,
                                                                       "follows_picture": follows}}))  # fmt: skip
    report = write_seeds_report(tmp_path, PipelineConfig(seeds=[1, 2])).read_text()
    section = report.split("## Image-swap control over seeds", 1)[1]
    assert "2.000 +- 1.414" in section and "0.900 +- 0.000" in section  # follows_picture mean, sample std
    (tmp_path / "seed-2" / "swap_control.json").unlink()  # a text pipeline (or a seed without one): no section
    assert "Image-swap control" not in write_seeds_report(tmp_path, PipelineConfig(seeds=[1, 2])).read_text()
