"""Every shipped config composes; every kind of invalid config fails at start-up with one line naming the key."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from safe_rlhf.config import ConfigError, validate
from safe_rlhf.train import CONF_DIR, _strip_launcher_args, format_config_error, load_config
from tests.conftest import run_cli

pytestmark = pytest.mark.unit

RECIPE_YAMLS = sorted(p.stem for p in Path(CONF_DIR).glob("*.yaml"))
GROUP_OPTIONS = sorted(
    (group.name, option.stem)
    for group in Path(CONF_DIR).iterdir()
    # runtime/ holds hydra's own settings (package _global_), selected by every recipe and composed with it above
    if group.is_dir() and group.name != "runtime"
    for option in group.glob("*.yaml")
)


def test_there_are_recipes_to_compose():
    assert "sft" in RECIPE_YAMLS


# Configs that are settings of another recipe's program rather than a recipe of their own.
CONFIG_VARIANTS = {"pipeline_vision": "pipeline"}


@pytest.mark.parametrize("recipe", RECIPE_YAMLS)
def test_every_recipe_config_composes_and_validates(recipe):
    config = load_config(recipe, [])
    assert config.recipe == CONFIG_VARIANTS.get(recipe, recipe)
    validate(config, world_size=1)


@pytest.mark.parametrize(("group", "option"), GROUP_OPTIONS)
def test_every_group_option_composes_with_a_recipe_that_uses_its_group(group, option):
    # Options of one group may be meant for different recipes (SFT data vs prompt data): each must compose with at
    # least one recipe whose schema has that group, and fail only with an unknown-key error elsewhere.
    overrides = [f"{group}={option}"]
    if group == "model" and option == "hf":
        overrides.append("model.name_or_path=/models/some-model")
    composed_with = []
    for recipe in RECIPE_YAMLS:
        try:
            config = load_config(recipe, overrides)
        except Exception as error:
            assert "config" in format_config_error(error) or "Could not" in str(error) or "not in" in str(error)
            continue
        assert getattr(config, group) is not None
        composed_with.append(recipe)
    assert composed_with, f"{group}={option} composes with no recipe"


def _error_line(overrides: list[str], world_size: int = 1) -> str:
    with pytest.raises(Exception) as info:
        validate(load_config("sft", overrides), world_size=world_size)
    line = format_config_error(info.value)
    assert "\n" not in line
    return line


@pytest.mark.parametrize(
    ("overrides", "world_size", "must_contain"),
    [
        (["train.lerning_rate=1"], 1, "train.lerning_rate"),
        (["+train.foo=1"], 1, "train.foo"),
        (["train.batch_size=abc"], 1, "train.batch_size"),
        (["train.batch_size=48", "train.micro_batch_size=16"], 2, "multiple of 32"),
        (["deepspeed.zero_stage=4"], 1, "deepspeed.zero_stage"),
        (["deepspeed.offload=parameter"], 1, "zero_stage=3"),
        (["deepspeed.precision=fp8"], 1, "deepspeed.precision"),
        (["optim.scheduler=step"], 1, "optim.scheduler"),
        (["logger.backends=[console,mlflow]"], 1, "mlflow"),
        (["data.on_error=ignore"], 1, "data.on_error"),
        (["deepspeed=zero7"], 1, "zero0 zero1 zero2 zero3"),
        (["train.max_steps=0"], 1, "train.max_steps"),
        (["data.train=pku-saferlhf:/data/pku"], 1, "unknown dataset reader 'pku-saferlhf'"),
    ],
)
def test_invalid_config_is_one_line_naming_the_key(overrides, world_size, must_contain):
    assert must_contain in _error_line(overrides, world_size)


def test_batch_divisibility_uses_world_size():
    config = load_config("sft", ["train.batch_size=32", "train.micro_batch_size=16"])
    validate(config, world_size=2)  # 32 = 16 x 2 x 1 accumulation step
    with pytest.raises(ConfigError, match="not divisible"):
        validate(config, world_size=4)


def test_cli_reports_one_line_and_exit_code_2():
    result = run_cli([sys.executable, "-m", "safe_rlhf.train", "--config-name", "sft", "train.lerning_rate=3"])
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.startswith("config error")]
    assert len(lines) == 1 and "train.lerning_rate" in lines[0]
    assert "Traceback" not in result.stderr


def test_launcher_local_rank_argument_is_stripped(monkeypatch):
    # setenv first, so that teardown removes the LOCAL_RANK set below (a delenv of an absent variable records nothing
    # to undo: LOCAL_RANK=1 leaked into later tests, whose subprocesses then thought they were not rank 0)
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.delenv("LOCAL_RANK")
    argv = ["prog", "--local_rank=1", "--config-name", "sft", "train.epochs=1"]
    assert _strip_launcher_args(argv) == ["prog", "--config-name", "sft", "train.epochs=1"]
    import os

    assert os.environ["LOCAL_RANK"] == "1"
    monkeypatch.delenv("LOCAL_RANK")
    assert _strip_launcher_args(["prog", "--local_rank", "3", "x=1"]) == ["prog", "x=1"]
    assert os.environ["LOCAL_RANK"] == "3"


def _recipe_error_line(recipe: str, overrides: list[str]) -> str:
    with pytest.raises(Exception) as info:
        validate(load_config(recipe, overrides), world_size=1)
    line = format_config_error(info.value)
    assert "\n" not in line
    return line


@pytest.mark.parametrize(
    ("recipe", "override", "must_contain"),
    [
        ("sft", "optim.betas=[1.5,0.9]", "optim.betas"),
        ("sft", "optim.betas=[0.9,-0.1]", "optim.betas"),
        ("sft", "optim.betas=[0.9,1.0]", "optim.betas"),
        ("reward_model", "optim.betas=[0.9,nan]", "optim.betas"),
        ("sft", "optim.weight_decay=-0.1", "optim.weight_decay"),
        ("cost_model", "optim.weight_decay=inf", "optim.weight_decay"),
        # PPO has two optimizers: the message names the one that is wrong
        ("ppo_lag", "actor_optim.betas=[1.5,0.9]", "actor_optim.betas"),
        ("ppo", "critic_optim.weight_decay=-0.1", "critic_optim.weight_decay"),
        ("ppo_lag", "critic_optim.lr=-1", "critic_optim.lr"),
    ],
)
def test_optimizer_ranges_are_checked_under_the_key_of_the_optimizer(recipe, override, must_contain):
    line = _recipe_error_line(recipe, [override])
    assert line.startswith(f"{must_contain}="), line


@pytest.mark.parametrize(
    ("recipe", "override", "must_contain"),
    [
        ("sft", "model.lora.rank=0", "model.lora.rank"),
        ("ppo_lag", "actor.lora.alpha=-1", "actor.lora.alpha"),
        ("ppo_lag", "critic_lora.rank=0", "critic_lora.rank"),
        ("dpo", "model.lora.target_modules=[]", "model.lora.target_modules"),
    ],
)
def test_lora_ranges_are_checked_under_the_key_of_the_model(recipe, override, must_contain):
    line = _recipe_error_line(recipe, [override])
    assert line.startswith(must_contain), line


@pytest.mark.parametrize(
    ("recipe", "overrides", "must_contain"),
    [
        ("sft", ["model.lora.quantize_base=4bit"], "needs model.lora.enabled=true"),
        ("sft", ["model.lora.enabled=true", "model.lora.quantize_base=8bit"], "choose one of: none, 4bit"),
        ("sft", ["model.lora.enabled=true", "model.lora.quantize_base=4bit", "deepspeed=zero3"],
         "needs deepspeed.zero_stage <= 2"),
        ("reward_model", ["model.lora.enabled=true", "model.lora.quantize_base=4bit"], "a policy only"),
        ("ppo_lag", ["critic_lora.enabled=true", "critic_lora.quantize_base=4bit"], "a policy only"),
    ],
)  # fmt: skip
def test_a_4bit_base_is_checked_at_start_up(recipe, overrides, must_contain):
    line = _recipe_error_line(recipe, overrides)
    assert must_contain in line and "quantize_base" in line, line


def test_a_4bit_base_without_bitsandbytes_names_the_package(monkeypatch):
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "bitsandbytes" else real_find_spec(name, *a)
    )
    line = _recipe_error_line("dpo", ["model.lora.enabled=true", "model.lora.quantize_base=4bit"])
    assert line.startswith("model.lora.quantize_base=4bit needs bitsandbytes"), line


def test_optimizer_config_built_directly_checks_its_ranges():
    from safe_rlhf.config import OptimizerConfig

    OptimizerConfig(betas=[0.0, 0.999], weight_decay=0.0)
    with pytest.raises(ConfigError, match=r"optim\.betas"):
        OptimizerConfig(betas=[1.5, 0.9])
    with pytest.raises(ConfigError, match=r"optim\.weight_decay"):
        OptimizerConfig(weight_decay=float("nan"))


def test_cli_rejects_out_of_range_betas_in_one_line_with_exit_code_2():
    result = run_cli([sys.executable, "-m", "safe_rlhf.train", "--config-name", "sft", "optim.betas=[1.5,0.9]"])
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("config error: optim.betas="), result.stderr[-2000:]


@pytest.mark.parametrize(
    "override", ["train.save_total_limit=0", "train.save_steps=-1", "train.eval_steps=-5", "train.log_steps=0"]
)
@pytest.mark.parametrize("recipe", ["sft", "ppo_lag"])
def test_both_train_configs_check_the_shared_keys(recipe, override):
    assert _recipe_error_line(recipe, [override]).startswith(override.split("=")[0] + "=")


def test_train_configs_share_one_base():
    import dataclasses

    from safe_rlhf.config import BaseTrainConfig, RLTrainConfig, TrainConfig

    shared = {f.name for f in dataclasses.fields(BaseTrainConfig)}
    assert {"epochs", "max_steps", "save_steps", "save_total_limit", "eval_steps", "resume"} <= shared
    rl_own = {"rollout_batch_size", "mini_batch_size", "select_steps"}
    for schema, own in ((TrainConfig, {"batch_size"}), (RLTrainConfig, rl_own)):
        assert issubclass(schema, BaseTrainConfig)
        assert {f.name for f in dataclasses.fields(schema)} == shared | own
