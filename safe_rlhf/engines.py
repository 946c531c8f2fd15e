"""DeepSpeed plumbing shared by every recipe, as plain functions (no trainer base class).

- :func:`deepspeed_config` turns the ``deepspeed`` schema into DeepSpeed's JSON dict.
- :func:`load_causal_lm` loads a pretrained model so that ZeRO-3 partitions it while loading.
- :func:`trainable_engine` / :func:`frozen_engine` wrap models (frozen ones get no optimizer).
- :func:`save_checkpoint` / :func:`load_checkpoint` write and read resumable checkpoints atomically.
- :func:`export_hf` writes a consolidated Hugging Face directory (also from ZeRO-3) that ``from_pretrained`` loads.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import pickle
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from safe_rlhf import distributed
from safe_rlhf.config import ConfigError, DeepSpeedConfig, LoraConfig, ModelConfig, OptimizerConfig


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be loaded; the message names the broken file."""


def deepspeed_config(
    settings: DeepSpeedConfig,
    *,
    micro_batch_size: int,
    gradient_accumulation_steps: int,
    trainable: bool = True,
) -> dict[str, Any]:
    """DeepSpeed's config dict for one engine (batch sizes per rank; world size comes from the process group)."""
    offload_optimizer = settings.offload in ("optimizer", "all") and trainable
    offload_parameters = settings.offload in ("parameter", "all")
    zero: dict[str, Any] = {"stage": settings.zero_stage if (trainable or settings.zero_stage == 3) else 0}
    if settings.zero_stage >= 1 and trainable:
        zero["overlap_comm"] = settings.overlap_comm
    if settings.zero_stage == 3:
        # Needed to export a consolidated model from a sharded engine.
        zero["stage3_gather_16bit_weights_on_model_save"] = True
        # Small models: do not keep a partitioned parameter around just because it is below the persistence threshold
        # on a big model; these defaults only matter for tiny ones and keep memory predictable.
        zero["stage3_param_persistence_threshold"] = 1e4
    if offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": torch.cuda.is_available()}
    if offload_parameters and settings.zero_stage == 3:
        zero["offload_param"] = {"device": "cpu", "pin_memory": torch.cuda.is_available()}
    config: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": micro_batch_size,
        "gradient_accumulation_steps": gradient_accumulation_steps if trainable else 1,
        "zero_optimization": zero,
        "bf16": {"enabled": settings.precision == "bf16"},
        "fp16": {"enabled": settings.precision == "fp16", "auto_cast": False, "initial_scale_power": 16},
        "steps_per_print": 10**12,  # we log ourselves
        "wall_clock_breakdown": False,
        # We pass torch's AdamW (no compiled op needed); DeepSpeed only trusts its own optimizers unless told.
        "zero_allow_untested_optimizer": True,
    }
    if trainable and settings.gradient_clipping > 0:
        config["gradient_clipping"] = settings.gradient_clipping
    return config


def compute_dtype(settings: DeepSpeedConfig) -> torch.dtype:
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[settings.precision]


@dataclass
class LoadedModel:
    """A model plus what must outlive it: ``zero3_context`` keeps HfDeepSpeedConfig referenced (ZeRO-3 loading)."""

    model: torch.nn.Module
    zero3_context: Any = None


ADDED_PAD_TOKEN = "<|pad|>"
"""The pad token added to a tokenizer that has none, or whose pad is its eos (GPT-2, Llama 3, Mistral, Qwen2)."""
VOCAB_MULTIPLE = 64
"""An embedding that must grow (for the added pad token) grows to a multiple of this: matmuls over the vocabulary run
on aligned shapes. The rows past the tokenizer are never produced: generation suppresses them
(:func:`generation_suppressed_ids`), and nothing in the data refers to them."""


def load_tokenizer(model_config: ModelConfig) -> Any:
    """The tokenizer for ``model_config``, with a pad token distinct from eos (required for RLHF: padding must not
    hide where a sequence ends). One without a pad token, or whose pad is its eos, gets ``ADDED_PAD_TOKEN``; the
    models loaded with it then need :func:`fit_vocabulary`."""
    from transformers import AutoTokenizer

    from safe_rlhf.assets import config_key_for, from_pretrained, resolve_model_path

    name = model_config.tokenizer or model_config.name_or_path
    key = config_key_for(name, "model.tokenizer" if model_config.tokenizer else "model.name_or_path")
    path = resolve_model_path(name, key)
    tokenizer = from_pretrained(AutoTokenizer, path, key=key, trust_remote_code=model_config.trust_remote_code)
    if tokenizer.eos_token_id is None:
        raise ConfigError(f"{key}={name}: the tokenizer has no eos token; responses could never end")
    if tokenizer.pad_token_id is None or tokenizer.pad_token_id == tokenizer.eos_token_id:
        tokenizer.add_special_tokens({"pad_token": ADDED_PAD_TOKEN})
        if tokenizer.pad_token_id == tokenizer.eos_token_id:  # a tokenizer whose eos is literally "<|pad|>"
            raise ConfigError(f"{key}={name}: eos is {ADDED_PAD_TOKEN}; give the tokenizer a distinct pad token")
    return tokenizer


def load_processor(model_config: ModelConfig) -> Any:
    """The processor of a vision-language model (tokenizer + image processor), or None for a text model: the modality
    switch of every recipe. Its tokenizer follows :func:`load_tokenizer`'s pad rule."""
    from safe_rlhf.assets import config_key_for, resolve_model_path
    from safe_rlhf.vision_models import is_vision_model
    from safe_rlhf.vision_models import load_processor as processor_of

    key = config_key_for(model_config.name_or_path, "model.name_or_path")
    path = resolve_model_path(model_config.name_or_path, key)
    if not is_vision_model(path):
        return None
    processor = processor_of(path, trust_remote_code=model_config.trust_remote_code)
    tokenizer = processor.tokenizer
    if tokenizer.pad_token_id is None or tokenizer.pad_token_id == tokenizer.eos_token_id:
        tokenizer.add_special_tokens({"pad_token": ADDED_PAD_TOKEN})
    return processor


def load_modality(model_config: ModelConfig) -> tuple[Any, Any, Any]:
    """(processor, tokenizer, ImageTokens): the modality switch of every recipe and evaluation. A vision-language
    model brings its processor (saved with the model) and its image tokens; a text model gives (None, its tokenizer,
    None)."""
    processor = load_processor(model_config)
    if processor is None:
        return None, load_tokenizer(model_config), None
    from safe_rlhf.vision_models import image_tokens

    return processor, processor.tokenizer, image_tokens(processor)


def image_inputs(batch: dict[str, Any]) -> dict[str, Any]:
    """The image entries of a collated batch (``pixel_values``) as forward keyword arguments; {} for text."""
    return {"pixel_values": batch["pixel_values"]} if "pixel_values" in batch else {}


def embedding_rows(model: torch.nn.Module) -> int:
    """Rows of the input embedding (the full count also when ZeRO-3 has partitioned the weight)."""
    weight = model.get_input_embeddings().weight  # type: ignore[operator]
    return int(weight.ds_shape[0]) if hasattr(weight, "ds_shape") else int(weight.shape[0])


def fit_vocabulary(model: torch.nn.Module, tokenizer: Any) -> bool:
    """Grow the embeddings (and a tied or untied output layer) when the tokenizer has more tokens than the model has
    rows, e.g. after :func:`load_tokenizer` added a pad token; to a multiple of ``VOCAB_MULTIPLE``. Returns whether it
    resized. Under ZeRO-3 (loaded inside HfDeepSpeedConfig) transformers gathers the partitioned rows to resize, and
    the new rows start at the mean of the old ones (so the added pad is no likelier than an average token)."""
    config = getattr(model, "config", None)
    if config is not None:  # HF's sequence-classification pooling and generate() read it
        config.pad_token_id = tokenizer.pad_token_id
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id  # type: ignore[union-attr]
    if embedding_rows(model) >= len(tokenizer):
        return False
    model.resize_token_embeddings(len(tokenizer), pad_to_multiple_of=VOCAB_MULTIPLE)  # type: ignore[operator]
    return True


def check_vocabulary(model: torch.nn.Module, tokenizer: Any, where: str) -> None:
    """ConfigError (one line) for a model with fewer token embeddings than the tokenizer has tokens: one trained with
    another tokenizer would index past its embeddings (or, resized, score tokens it never saw)."""
    rows = embedding_rows(model)
    if rows < len(tokenizer):
        raise ConfigError(
            f"{where}: has {rows} token embeddings but the actor's tokenizer has {len(tokenizer)} tokens; train it "
            "from the actor's model or tokenizer"
        )


def generation_suppressed_ids(tokenizer: Any, vocab_rows: int) -> list[int]:
    """Token ids generation must never sample: the rows past the tokenizer (vocabulary padding) and a pad token that
    safe-rlhf added (it means "nothing here", never a word). Empty for a model whose rows match its tokenizer."""
    suppressed = list(range(len(tokenizer), vocab_rows))
    if tokenizer.pad_token == ADDED_PAD_TOKEN:
        suppressed.insert(0, int(tokenizer.pad_token_id))
    return suppressed


def load_causal_lm(
    model_config: ModelConfig,
    ds_config: dict[str, Any],
    settings: DeepSpeedConfig,
    tokenizer: Any = None,
    *,
    trainable: bool = False,
) -> LoadedModel:
    """Load a causal LM; under ZeRO-3 parameters are partitioned while loading (no full copy per rank). With
    ``tokenizer``, the embeddings grow to fit it (:func:`fit_vocabulary`). A ``trainable`` model gets the config's
    gradient checkpointing and LoRA adapters (:func:`prepare_trainable`)."""
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText
    from transformers.integrations import HfDeepSpeedConfig

    from safe_rlhf.assets import config_key_for, from_pretrained, resolve_model_path
    from safe_rlhf.vision_models import freeze_vision_tower, is_vision_model

    context = HfDeepSpeedConfig(ds_config) if settings.zero_stage == 3 else None
    key = config_key_for(model_config.name_or_path, "model.name_or_path")
    path = resolve_model_path(model_config.name_or_path, key)
    vision = is_vision_model(path)
    quantized: dict[str, Any] = {}
    if trainable and model_config.lora.enabled and model_config.lora.quantize_base == "4bit":
        from safe_rlhf.lora import quantization_config

        # QLoRA: bitsandbytes quantizes while loading, on the device the model will train on.
        quantized = {"quantization_config": quantization_config(compute_dtype(settings)),
                     "device_map": {"": distributed.device()}}  # fmt: skip
    model = from_pretrained(
        AutoModelForImageTextToText if vision else AutoModelForCausalLM,
        path,
        key=key,
        dtype=compute_dtype(settings),
        trust_remote_code=model_config.trust_remote_code,
        **quantized,
    )
    for module in model.modules() if quantized else ():
        # bitsandbytes repacks a 4-bit weight in place for its CPU bf16 kernel on the first no-grad forward in eval
        # mode (and asserts on widths that are not multiples of 32): keep one layout for training, rollouts, export.
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False
    if tokenizer is not None:
        fit_vocabulary(model, tokenizer)
    disable_dropout(model)
    if vision and trainable and model_config.freeze_vision_tower:
        freeze_vision_tower(model)
    if trainable:
        model = prepare_trainable(model, model_config.lora, model_config.gradient_checkpointing)
    return LoadedModel(model=model, zero3_context=context)


def prepare_trainable(
    model: torch.nn.Module, lora: LoraConfig, gradient_checkpointing: bool, *, score_model: bool = False
) -> torch.nn.Module:
    """Gradient checkpointing and LoRA adapters, as configured, on a model about to be trained (call after
    :func:`fit_vocabulary`: the adapters wrap the final layers). Returns the model to hand to the engine."""
    if gradient_checkpointing:
        # Non-reentrant checkpointing: correct with frozen inputs (LoRA's frozen embeddings) and with ZeRO-3.
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})  # type: ignore[operator]
    if lora.enabled:
        from safe_rlhf.lora import apply_lora, trainable_summary

        model = apply_lora(model, lora, score_model=score_model)
        distributed.print0(trainable_summary(model))
    return model


def disable_dropout(model: torch.nn.Module) -> None:
    """Dropout off everywhere: log-probs must be reproducible between rollout and update (and between resumes).

    Besides ``nn.Dropout`` modules and the config, the float probabilities that modules copied from the config at
    construction (Llama / Qwen2 attention keeps ``self.attention_dropout`` and applies it in train mode, eager and
    sdpa alike) are zeroed. Sub-modules, parameters and buffers of such names live outside the instance ``__dict__``
    and are not touched; bools and ints are flags or sizes, not probabilities."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        for name, value in list(vars(module).items()):
            # attention_dropout, hidden_dropout, dropout_p, attn_pdrop, drop_rate, ...: a probability when a float.
            lowered = name.lower()
            named_dropout = "dropout" in lowered or lowered.endswith(("pdrop", "drop_rate", "drop_prob"))
            if type(value) is float and value > 0.0 and named_dropout:
                setattr(module, name, 0.0)
    config = getattr(model, "config", None)
    for name in ("attention_dropout", "hidden_dropout", "dropout", "resid_pdrop", "embd_pdrop", "attn_pdrop"):
        if config is not None and hasattr(config, name) and isinstance(getattr(config, name), float):
            setattr(config, name, 0.0)


def _parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        (no_decay if parameter.ndim < 2 or "norm" in name.lower() or name.endswith(".bias") else decay).append(
            parameter
        )
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def lr_lambda(schedule: str, total_steps: int, warmup_steps: int) -> Any:
    """Multiplier of the peak learning rate at each optimizer step."""

    def factor(step: int) -> float:
        if warmup_steps > 0 and step < warmup_steps:
            return (step + 1) / warmup_steps
        if schedule == "constant":
            return 1.0
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        if schedule == "linear":
            return 1.0 - progress
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def trainable_engine(
    model: torch.nn.Module,
    ds_config: dict[str, Any],
    optim: OptimizerConfig,
    total_steps: int,
    settings: DeepSpeedConfig,
) -> Any:
    """A DeepSpeed engine with AdamW and the configured schedule."""
    import deepspeed

    groups = _parameter_groups(model, optim.weight_decay)
    betas = (float(optim.betas[0]), float(optim.betas[1]))
    if settings.offload in ("optimizer", "all"):
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        optimizer: torch.optim.Optimizer = DeepSpeedCPUAdam(groups, lr=optim.lr, betas=betas, adamw_mode=True)
    else:
        optimizer = torch.optim.AdamW(groups, lr=optim.lr, betas=betas)
    warmup = int(optim.warmup_ratio * total_steps)
    schedule = lr_lambda(optim.scheduler, total_steps, warmup)

    def make_scheduler(wrapped_optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler:
        # Built by DeepSpeed on the optimizer it actually steps: ZeRO-3 regroups parameters, so a scheduler made on
        # the original optimizer would hold the wrong number of groups.
        return torch.optim.lr_scheduler.LambdaLR(wrapped_optimizer, schedule)

    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=make_scheduler, config=ds_config)
    return engine


def frozen_engine(model: torch.nn.Module, ds_config: dict[str, Any]) -> Any:
    """An engine without optimizer (reference policy, reward and cost models): inference only."""
    import deepspeed

    model.requires_grad_(False)
    model.eval()
    engine, *_ = deepspeed.initialize(model=model, config=ds_config)
    engine.eval()
    return engine


# ---------------------------------------------------------------------------------------------------- checkpoints
LATEST_FILE = "latest"


def save_checkpoint(
    checkpoint_root: str | Path,
    step: int,
    engines: dict[str, Any],
    trainer_state: dict[str, Any],
    keep_last: int,
    rank_state: dict[str, Any] | None = None,
) -> Path:
    """Write ``checkpoint_root/step-N`` for every engine plus the trainer state, atomically.

    Everything is written into ``.staging-step-N`` first; only when every rank has finished does rank 0 rename it and
    then replace ``latest`` (itself written to a temporary file and renamed). A crash at any point leaves the previous
    ``latest`` pointing at a complete checkpoint.
    """
    root = Path(checkpoint_root)
    tag = f"step-{step}"
    staging = root / f".staging-{tag}"
    if distributed.is_main_process():
        if staging.exists():
            shutil.rmtree(staging)
        staging.mkdir(parents=True)
    distributed.barrier()
    for name, engine in engines.items():
        engine.save_checkpoint(str(staging / name), tag="state", save_latest=False)
    rng_state = {
        "python": _python_rng_state(),
        "torch": torch.random.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    torch.save(rng_state, staging / f"rng_state_rank{distributed.rank()}.pt")
    if rank_state is not None:
        # What each rank believes (e.g. its multipliers): lets a resume, or a test, check that ranks agree.
        (staging / f"rank_state_rank{distributed.rank()}.json").write_text(json.dumps(rank_state))
    distributed.barrier()
    if distributed.is_main_process():
        with open(staging / "trainer_state.json", "w") as handle:
            json.dump({"step": step, "engines": sorted(engines), **trainer_state}, handle, indent=2)
        write_manifest(staging)
        final = root / tag
        if final.exists():
            shutil.rmtree(final)
        os.replace(staging, final)
        temporary_latest = root / f".{LATEST_FILE}.tmp"
        temporary_latest.write_text(tag)
        os.replace(temporary_latest, root / LATEST_FILE)
        _prune(root, keep_last, newest=tag)
    distributed.barrier()
    return root / tag


MANIFEST_FILE = "manifest.json"
# Every file gets a sha256, whatever its size: a bit flip in a multi-GB optimizer shard is as fatal as one in a small
# file, and only a checksum catches it (sizes catch truncation only). Files are read in blocks of HASH_BLOCK_BYTES,
# several at once (hashlib releases the GIL), so the cost is about one read of the checkpoint at the disk's speed;
# ``python -m safe_rlhf.bench_checksum`` measures it.
HASH_BLOCK_BYTES = 8 << 20
HASH_THREADS = min(8, os.cpu_count() or 1)


def _sha256(path: Path) -> str:
    import hashlib

    digest = hashlib.sha256()
    buffer = bytearray(HASH_BLOCK_BYTES)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as handle:
        while count := handle.readinto(buffer):
            digest.update(view[:count])
    return digest.hexdigest()


def _sha256_all(paths: list[Path]) -> list[str]:
    """sha256 of each path, in order, hashed by up to HASH_THREADS threads."""
    if len(paths) <= 1 or HASH_THREADS <= 1:
        return [_sha256(path) for path in paths]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=min(HASH_THREADS, len(paths))) as pool:
        return list(pool.map(_sha256, paths))


def write_manifest(directory: Path) -> None:
    """Record every file of a checkpoint: its size and sha256."""
    paths = sorted(p for p in directory.rglob("*") if p.is_file() and p.name != MANIFEST_FILE)
    files = {
        str(path.relative_to(directory)): {"size": path.stat().st_size, "sha256": digest}
        for path, digest in zip(paths, _sha256_all(paths))
    }
    (directory / MANIFEST_FILE).write_text(json.dumps({"files": files}, indent=1))


def verify_checkpoint(directory: Path) -> None:
    """Raise CheckpointError naming the first missing, truncated or altered file of a checkpoint."""
    manifest_path = directory / MANIFEST_FILE
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{manifest_path}: missing or unreadable checkpoint manifest ({error})") from None
    hashed: list[tuple[Path, str]] = []
    for relative, entry in manifest["files"].items():  # the cheap checks first, then the reads
        path = directory / relative
        if not path.is_file():
            raise CheckpointError(f"{path}: listed in the checkpoint manifest but missing")
        size = path.stat().st_size
        if size != entry["size"]:
            raise CheckpointError(f"{path}: {size} bytes, the checkpoint manifest says {entry['size']} (truncated?)")
        if "sha256" in entry:  # manifests written before every file was hashed have sizes only for large files
            hashed.append((path, entry["sha256"]))
    for (path, expected), actual in zip(hashed, _sha256_all([path for path, _ in hashed])):
        if actual != expected:
            raise CheckpointError(f"{path}: content differs from the checkpoint manifest (sha256 mismatch)")


def _python_rng_state() -> list[Any]:
    import random

    version, internal, gauss = random.getstate()
    return [version, list(internal), gauss]


def _set_python_rng_state(state: list[Any]) -> None:
    import random

    version, internal, gauss = state
    random.setstate((int(version), tuple(int(v) for v in internal), gauss))


def _prune(root: Path, keep_last: int, newest: str | None = None) -> None:
    """Keep ``keep_last`` checkpoints: ``newest`` (the one just written, which ``latest`` names) always, then the
    highest steps among the others. Pruning by step alone would delete the new checkpoint when a reused output_dir
    still holds higher steps of an earlier run, leaving ``latest`` naming a deleted directory."""
    steps = sorted(
        (int(path.name.split("-", 1)[1]), path)
        for path in root.glob("step-*")
        if path.is_dir() and path.name.split("-", 1)[1].isdigit()
    )
    others = [path for _, path in steps if path.name != newest]
    keep_others = max(0, keep_last - (1 if newest is not None and (root / newest).is_dir() else 0))
    for path in others[: max(0, len(others) - keep_others)]:
        shutil.rmtree(path, ignore_errors=True)


def find_checkpoint(resume: str, output_dir: str | Path) -> Path | None:
    """The checkpoint directory named by ``train.resume`` ("none", "auto" or a path), or None to start fresh."""
    if resume == "none":
        return None
    if resume == "auto":
        root = Path(output_dir) / "checkpoints"
        latest = root / LATEST_FILE
        if not latest.exists():
            return None
        path = root / latest.read_text().strip()
        if not path.is_dir():
            raise CheckpointError(f"{latest} names {path.name}, which does not exist; delete {latest} to start fresh")
        return path
    path = Path(resume)
    if not path.is_dir():
        raise CheckpointError(f"train.resume={resume}: no such checkpoint directory")
    return path


def refused_pickle_error(source: Any, error: BaseException) -> CheckpointError:
    """One line for a file the restricted unpickler refused. torch's own message spans many lines and suggests
    ``weights_only=False``, i.e. running whatever code the file holds: exactly what must not be done here."""
    import re

    text = str(error)
    refused = re.search(r"Unsupported global: GLOBAL (\S+)", text)
    if refused:
        what = f"refused to unpickle {refused.group(1)}"
    else:
        first_line = next((line.strip() for line in text.splitlines() if line.strip()), type(error).__name__)
        what = f"refused to unpickle it ({first_line[:200]})"
    return CheckpointError(
        f"{source}: holds objects outside the allowed set (tensors, plain containers and DeepSpeed's own state); "
        f"{what}; resume only from checkpoints you trust"
    )


@contextlib.contextmanager
def restricted_torch_load() -> Iterator[None]:
    """Make DeepSpeed's checkpoint loading use ``torch.load(weights_only=True)``.

    DeepSpeed calls ``torch.load(..., weights_only=False)``, i.e. unrestricted pickle. Its checkpoints hold only
    tensors, plain containers and a few DeepSpeed classes, so they load with the restricted unpickler once those are
    allowed; anything else in a checkpoint file (code a forged file would run) is refused.
    """
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    original = torch.load

    def weights_only_load(*args: Any, **kwargs: Any) -> Any:
        kwargs["weights_only"] = True
        try:
            return original(*args, **kwargs)
        except pickle.UnpicklingError as error:
            source = args[0] if args else kwargs.get("f", "checkpoint file")
            raise refused_pickle_error(source, error) from None

    with torch.serialization.safe_globals([LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]):
        torch.load = weights_only_load  # type: ignore[assignment]
        try:
            yield
        finally:
            torch.load = original  # type: ignore[assignment]


def load_checkpoint(path: Path, engines: dict[str, Any]) -> dict[str, Any]:
    """Verify, then restore engines, RNG states and return the trainer state saved by :func:`save_checkpoint`."""
    verify_checkpoint(path)
    state_file = path / "trainer_state.json"
    try:
        trainer_state = json.loads(state_file.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{state_file}: unreadable trainer state ({error})") from None
    missing = sorted(set(engines) - set(trainer_state.get("engines", [])))
    if missing:
        raise CheckpointError(f"{path}: has no state for {', '.join(missing)}")
    from safe_rlhf.lora import is_quantized

    for name, engine in engines.items():
        try:
            with restricted_torch_load():
                load_path, _ = engine.load_checkpoint(
                    str(path / name), tag="state", load_optimizer_states=True, load_lr_scheduler_states=True,
                    # A QLoRA model's saved state carries bitsandbytes' quantization-state entries, which its
                    # load_state_dict does not take back; the frozen 4-bit base is re-quantized identically at load.
                    load_module_strict=not is_quantized(engine),
                )  # fmt: skip
        except CheckpointError:
            raise  # already one line naming the file (a refused pickle)
        except Exception as error:  # DeepSpeed raises many kinds; name the file
            if isinstance(error, pickle.UnpicklingError) or "Unsupported global" in str(error):
                raise refused_pickle_error(path / name, error) from None
            first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
            raise CheckpointError(f"{path / name}: cannot load ({type(error).__name__}: {first_line})") from None
        if load_path is None:
            raise CheckpointError(f"{path / name}: no DeepSpeed checkpoint found")
    rng_file = path / f"rng_state_rank{distributed.rank()}.pt"
    if rng_file.exists():
        try:
            rng_state = torch.load(rng_file, weights_only=True)
        except pickle.UnpicklingError as error:
            raise refused_pickle_error(rng_file, error) from None
        except Exception as error:
            first_line = next((line for line in str(error).splitlines() if line.strip()), "")
            raise CheckpointError(f"{rng_file}: cannot load ({type(error).__name__}: {first_line})") from None
        _set_python_rng_state(rng_state["python"])
        torch.random.set_rng_state(rng_state["torch"])
        if torch.cuda.is_available() and rng_state["cuda"]:
            torch.cuda.set_rng_state_all(rng_state["cuda"])
    return trainer_state


# --------------------------------------------------------------------------------------------------------- export
def consolidated_state_dict(engine: Any, zero_stage: int) -> dict[str, torch.Tensor] | None:
    """The full state dict on rank 0 (None on other ranks); every rank must call this under ZeRO-3."""
    if zero_stage == 3:
        state = engine._zero3_consolidated_16bit_state_dict()
        return state if distributed.is_main_process() else None
    if not distributed.is_main_process():
        return None
    return {name: tensor.detach().cpu() for name, tensor in engine.module.state_dict().items()}


def save_plain_model(module: Any, state: dict[str, torch.Tensor], directory: Path) -> None:
    """config.json (without the quantization config) and model.safetensors of a dequantized, merged QLoRA model:
    ``save_pretrained`` of the quantized module would write it back as 4-bit."""
    import copy

    from safetensors.torch import save_file

    config = copy.deepcopy(module.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = next(iter(state.values())).dtype
    if getattr(config, "tie_word_embeddings", False):
        state = {name: tensor for name, tensor in state.items() if name != "lm_head.weight"}  # tied again on load
    directory.mkdir(parents=True)
    config.save_pretrained(directory)
    if getattr(module, "generation_config", None) is not None:
        module.generation_config.save_pretrained(directory)
    save_file({name: tensor.contiguous() for name, tensor in state.items()}, directory / "model.safetensors",
              metadata={"format": "pt"})  # fmt: skip


def export_hf(engine: Any, tokenizer: Any, output_dir: str | Path, zero_stage: int) -> Path:
    """Write a Hugging Face directory (safetensors) that plain ``from_pretrained`` loads; all ranks must call this."""
    from safe_rlhf.lora import (
        base_model,
        dequantized_state_dict,
        is_lora,
        is_quantized,
        lora_scalings,
        merge_lora_state_dict,
    )

    output_dir = Path(output_dir)
    quantized = is_quantized(engine)  # QLoRA runs ZeRO 0-2: the whole model is on every rank
    state = consolidated_state_dict(engine, zero_stage) if not quantized else None
    if distributed.is_main_process():
        if quantized:
            state = dequantized_state_dict(engine)
        assert state is not None
        staging = output_dir.with_name(f".{output_dir.name}.staging")
        if staging.exists():
            shutil.rmtree(staging)
        module = engine.module
        if is_lora(module):  # adapters merged: a plain Hugging Face model, loadable without peft
            state = merge_lora_state_dict(state, lora_scalings(module))
            module = base_model(module)
        if quantized:
            save_plain_model(module, state, staging)
        else:
            module.save_pretrained(staging, state_dict=state, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(staging)
        if output_dir.exists():
            shutil.rmtree(output_dir)
        os.replace(staging, output_dir)
    distributed.barrier()
    return output_dir
