"""The one training entry point: every recipe runs through here.

One process (CPU or one GPU)::

    python -m safe_rlhf.train --config-name sft output_dir=runs/sft train.epochs=1

Several processes on one node (the launcher appends --local_rank, which is handled here)::

    deepspeed --num_gpus 8 --master_port 29600 --module safe_rlhf.train --config-name sft deepspeed=zero3
    torchrun --nproc_per_node 8 -m safe_rlhf.train --config-name sft deepspeed=zero3

On a CPU-only machine: ``OMP_NUM_THREADS=1 deepspeed --num_gpus 2 ...`` (gloo backend). Sweeps::

    python -m safe_rlhf.train --config-name sft --multirun optim.lr=1e-3,3e-3

Recipes: sft (more are registered in safe_rlhf.recipes). Show a recipe's composed config: ``--cfg job``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


def _strip_launcher_args(argv: list[str]) -> list[str]:
    """Remove ``--local_rank=N`` / ``--local_rank N`` (added by the deepspeed launcher) and export it as LOCAL_RANK."""
    cleaned: list[str] = []
    skip_next = False
    for index, arg in enumerate(argv):
        if skip_next:
            skip_next = False
            continue
        for flag in ("--local_rank", "--local-rank"):
            if arg.startswith(flag + "="):
                os.environ.setdefault("LOCAL_RANK", arg.split("=", 1)[1])
                break
            if arg == flag and index + 1 < len(argv):
                os.environ.setdefault("LOCAL_RANK", argv[index + 1])
                skip_next = True
                break
        else:
            cleaned.append(arg)
    return cleaned


def _is_rank_zero() -> bool:
    return os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")) == "0"


def _split_hydra_args(args: list[str]) -> tuple[str | None, list[str], bool]:
    """(config name, plain overrides, whether the pre-check applies) from the command line after the program name."""
    config_name: str | None = None
    overrides: list[str] = []
    simple = True
    iterator = iter(args)
    for arg in iterator:
        if arg in ("--config-name", "-cn"):
            config_name = next(iterator, None)
        elif arg.startswith("--config-name="):
            config_name = arg.split("=", 1)[1]
        elif arg.startswith("-"):
            simple = False  # --multirun, --cfg, --help, ...: hydra handles those itself
        elif arg.startswith("hydra.") or arg.startswith("hydra/") or arg.startswith("+hydra"):
            continue
        else:
            overrides.append(arg)
    return config_name, overrides, simple


def format_config_error(error: BaseException) -> str:
    """One line naming the key and what to do, from a hydra / omegaconf / ConfigError exception."""
    from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

    from safe_rlhf.config import ConfigError

    override = _failed_override(error)
    cause: BaseException = error
    while cause.__cause__ is not None and not isinstance(cause, ConfigError | OmegaConfBaseException):
        cause = cause.__cause__
    if isinstance(cause, ConfigError):
        return str(cause)
    if override and override not in str(cause) and not isinstance(cause, OmegaConfBaseException):
        # Hydra wraps a failed override; the innermost message alone would not say which override it was.
        first_line = next((line.strip() for line in str(cause).splitlines() if line.strip()), type(cause).__name__)
        return f"{override}: {first_line}"
    if isinstance(cause, OmegaConfBaseException):
        full_key = getattr(cause, "full_key", None)
        message = getattr(cause, "msg", None) or str(cause).splitlines()[0]
        message = message.splitlines()[0]
        if isinstance(cause, ConfigKeyError) or "not in struct" in message or "not in '" in message:
            return (
                f"unknown config key '{full_key}' ({message}); check its spelling "
                "(list valid keys with: python -m safe_rlhf.train --config-name RECIPE --cfg job)"
            )
        if full_key:
            return f"{full_key}: {message}"
        return message
    text = " ".join(line.strip() for line in str(error).splitlines() if line.strip())
    # Hydra appends its search path to a missing-option message; the available options before it are what helps.
    text = text.split(" Config search path:")[0]
    return text or type(error).__name__


def _failed_override(error: BaseException) -> str | None:
    """The override hydra was applying when it failed, if it says so."""
    import re

    override = getattr(error, "override", None)
    if isinstance(override, str):
        return override
    first_line = str(error).splitlines()[0] if str(error) else ""
    match = re.search(r"(?:Error merging override|Could not override '?)\s*([^'\s]+)", first_line)
    return match.group(1) if match else None


def load_config(config_name: str, overrides: list[str]) -> Any:
    """Compose a recipe's config, check it, and return the schema object. Raises on any invalid value."""
    from hydra import compose, initialize_config_dir

    from safe_rlhf.config import ConfigError, register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        try:
            composed = compose(config_name=config_name, overrides=overrides)
        except Exception as error:
            message = format_config_error(error)
            if not any(o.split("=", 1)[0].lstrip("+~") in message for o in overrides):
                # The message does not say which override broke: find it by composing them one at a time.
                for override in overrides:
                    try:
                        compose(config_name=config_name, overrides=[override])
                    except Exception:
                        raise ConfigError(f"{override}: {message}") from error
            raise
    return to_schema_object(composed)


def to_schema_object(composed: Any) -> Any:
    """The recipe's schema object; keys the schema does not know (also ones added with ``+key=``) are errors."""
    from omegaconf import OmegaConf

    from safe_rlhf.config import RECIPE_SCHEMAS, ConfigError, check_nested_configs

    recipe = composed.get("recipe")
    if recipe not in RECIPE_SCHEMAS:
        raise ConfigError(f"recipe={recipe!r} is not a known recipe; known: {', '.join(sorted(RECIPE_SCHEMAS))}")
    _reject_unknown_keys(OmegaConf.to_container(composed, resolve=False), RECIPE_SCHEMAS[recipe], prefix="")
    check_nested_configs(composed, RECIPE_SCHEMAS[recipe])  # names actor_optim / actor.lora / ... in its messages
    return OmegaConf.to_object(composed)


def _reject_unknown_keys(values: Any, schema: Any, prefix: str) -> None:
    import dataclasses

    from safe_rlhf.config import ConfigError

    fields = {f.name: f for f in dataclasses.fields(schema)}
    for key, value in values.items():
        if key not in fields:
            raise ConfigError(
                f"unknown config key '{prefix}{key}' (not in {schema.__name__}); check its spelling "
                "(list valid keys with: python -m safe_rlhf.train --config-name RECIPE --cfg job)"
            )
        field_type = fields[key].type
        nested = field_type if dataclasses.is_dataclass(field_type) else None
        if nested is None and isinstance(
            field_type, str
        ):  # postponed annotations: resolve by name in the schema module
            import sys

            nested = getattr(sys.modules[schema.__module__], field_type, None)
            nested = nested if dataclasses.is_dataclass(nested) else None
        if nested is not None and isinstance(value, dict):
            _reject_unknown_keys(value, nested, prefix=f"{prefix}{key}.")


def _precheck(args: list[str]) -> None:
    """Compose and validate before hydra starts, so a bad config is one line on stderr and exit code 2."""
    config_name, overrides, simple = _split_hydra_args(args)
    if not simple or config_name is None:
        return
    from safe_rlhf.config import validate
    from safe_rlhf.rundir import check_output_dir

    try:
        config = load_config(config_name, overrides)
        validate(config, world_size=int(os.environ.get("WORLD_SIZE", "1")))
        if isinstance(getattr(config, "output_dir", None), str):
            check_output_dir(config.output_dir)  # before hydra's own mkdir turns a file / read-only path into a trace
    except Exception as error:  # every composition/validation failure becomes one line, never a traceback
        if _is_rank_zero():
            print(f"config error: {format_config_error(error)}", file=sys.stderr)
        raise SystemExit(2) from None


def user_errors() -> tuple[type[BaseException], ...]:
    """Exception types that mean "bad input", reported as one line instead of a traceback."""
    from safe_rlhf.config import ConfigError
    from safe_rlhf.engines import CheckpointError
    from safe_rlhf.recipes.common import NonFiniteError
    from safe_rlhf.rundir import RunDirError

    errors: list[type[BaseException]] = [ConfigError, CheckpointError, NonFiniteError, RunDirError]
    try:
        from safe_rlhf.data import DataError

        errors.append(DataError)
    except ImportError:
        pass
    return tuple(errors)


def run_recipe(config: Any, run_dir: str) -> None:
    """Dispatch a validated schema object to its recipe."""
    from safe_rlhf.recipes import RECIPES
    from safe_rlhf.rundir import release_lock

    recipe_class = RECIPES[config.recipe]
    recipe = recipe_class(config, run_dir)
    try:
        recipe.run()
    finally:
        release_lock(run_dir)  # taken by the recipe's write_run_files; atexit would release it too, but later


def main() -> None:
    sys.argv = _strip_launcher_args(sys.argv)
    _precheck(sys.argv[1:])

    import hydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import DictConfig

    from safe_rlhf.config import register_configs, validate

    register_configs()

    @hydra.main(version_base=None, config_path=str(CONF_DIR), config_name=None)
    def hydra_entry(composed: DictConfig) -> None:
        try:
            config = to_schema_object(composed)
            validate(config, world_size=int(os.environ.get("WORLD_SIZE", "1")))
        except Exception as error:
            if _is_rank_zero():
                print(f"config error: {format_config_error(error)}", file=sys.stderr)
            raise SystemExit(2) from None
        from hydra.types import RunMode

        from safe_rlhf import distributed

        distributed.keep_process_group_between_jobs = HydraConfig.get().mode == RunMode.MULTIRUN
        try:
            run_recipe(config, HydraConfig.get().runtime.output_dir)
        except user_errors() as error:
            # Bad input found while running (a data record, a checkpoint file): one line, no traceback.
            print(f"error (rank {os.environ.get('RANK', '0')}): {error}", file=sys.stderr)
            raise SystemExit(2) from None

    hydra_entry()


if __name__ == "__main__":
    main()
