"""Offline tiny assets: a locally trained tokenizer and a tiny random-weight Llama, saved as Hugging Face directories.

Nothing here downloads. Build them explicitly with::

    python -m safe_rlhf.assets --output /path/to/tiny-llama           # tokenizer + model in one HF directory
    python -m safe_rlhf.assets --output DIR --hidden-size 128 --num-layers 4

or let any config with ``model.name_or_path=tiny`` build them on first use into ``$SAFE_RLHF_CACHE/tiny-llama-v3``
(default cache ``~/.cache/safe_rlhf``). The result loads with plain ``AutoTokenizer.from_pretrained(DIR)`` and
``AutoModelForCausalLM.from_pretrained(DIR)``.

The other common architectures are built the same way, from a tiny random config of their own Hugging Face class
(the architecture matrix, docs/models.md)::

    python -m safe_rlhf.assets --output DIR --architecture gpt2      # or mistral, qwen2, qwen3, gemma, gemma2, phi3,
                                                                     # gpt_neox, opt, bloom
    model.name_or_path=tiny-gpt2                                     # the same, built on first use into the cache

Each gets the pad-token situation its real checkpoints have (``TINY_ARCHITECTURES``): GPT-2, GPT-NeoX and Mistral
ship without a pad token, Qwen2/Qwen3 and Phi-3 with pad == eos, the others with a distinct one; the loaders add a
pad token and resize the embeddings where needed (:func:`safe_rlhf.engines.load_tokenizer`).

The tokenizer is byte-level BPE trained with ``tokenizers`` on a ~50 KB synthetic corpus (the toy world's language,
fixed seed), specials ``<pad>``=0, ``<s>``=1, ``</s>``=2 (pad is distinct from eos, which PPO on language needs), left
padding for generation, and a chat template. The default vocabulary is 1024, which makes every toy-world word one token
(with 512, as in the "tiny-ppo" benchmark workload, about 77 of the 202 words are); ``--vocab-size 512`` gives that.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from filelock import FileLock

TINY_MODEL_ALIAS = "tiny"
PAD_TOKEN, BOS_TOKEN, EOS_TOKEN = "<pad>", "<s>", "</s>"

# A chat template a user can read: "<s>SYSTEM: ... USER: ... ASSISTANT: ...</s>". The generation prompt ends with
# "ASSISTANT:" so that the response tokens (which start with a space) never merge with the prompt's last token.
TINY_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}SYSTEM: {{ message['content'] }} "
    "{% elif message['role'] == 'user' %}USER: {{ message['content'] }} "
    "{% elif message['role'] == 'assistant' %}ASSISTANT: {{ message['content'] }}{{ eos_token }} "
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)

# Bumped whenever what build_tiny_assets makes changes, so a cache built by an older version is never reused.
TINY_ASSETS_VERSION = 3


def cache_dir() -> Path:
    """Root of the local cache (``$SAFE_RLHF_CACHE`` or ``~/.cache/safe_rlhf``)."""
    return Path(os.environ.get("SAFE_RLHF_CACHE", Path.home() / ".cache" / "safe_rlhf")).expanduser()


def _corpus(seed: int, num_bytes: int) -> str:
    """Text to train the tokenizer on: the toy world's language, plus the chat template's own words."""
    from safe_rlhf.toyworld import corpus_text

    template_words = "SYSTEM: USER: ASSISTANT: " * 200
    return template_words + "\n" + corpus_text(seed=seed, num_bytes=num_bytes)


PAD_STYLES = ("distinct", "none", "eos")


def build_tokenizer(
    output_dir: str | Path,
    *,
    vocab_size: int = 1024,
    seed: int = 0,
    corpus_bytes: int = 50_000,
    pad: str = "distinct",
) -> Path:
    """Train a byte-level BPE tokenizer locally and save it as a Hugging Face tokenizer directory.

    ``pad`` reproduces the pad-token situations of real checkpoints: ``distinct`` (``<pad>`` = 0), ``none`` (no pad
    token: GPT-2, Llama 3, Mistral) or ``eos`` (pad == eos: Qwen2, Phi-3). The vocabulary is the same in all three."""
    if pad not in PAD_STYLES:
        raise ValueError(f"pad={pad!r}: expected one of {', '.join(PAD_STYLES)}")
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD_TOKEN, BOS_TOKEN, EOS_TOKEN],  # ids 0, 1, 2 in this order
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_corpus(seed, corpus_bytes).splitlines(), trainer=trainer)
    pad_token = {"distinct": PAD_TOKEN, "none": None, "eos": EOS_TOKEN}[pad]
    hf_tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token=pad_token,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        padding_side="left",
    )
    hf_tokenizer.chat_template = TINY_CHAT_TEMPLATE
    output_dir = Path(output_dir)
    hf_tokenizer.save_pretrained(output_dir)
    return output_dir


@dataclass(frozen=True)
class TinyArchitecture:
    """How to build a tiny random model of one Hugging Face architecture.

    ``config`` maps the common sizes to the architecture's own config keys; ``{hidden}``, ``{intermediate}``,
    ``{layers}``, ``{heads}``, ``{positions}`` and ``{head_dim}`` are filled in. ``pad`` is the pad-token situation of
    the real checkpoints (see :func:`build_tokenizer`)."""

    model_type: str
    config: dict[str, Any]
    pad: str = "distinct"
    why: str = ""


_DECODER = {"hidden_size": "{hidden}", "intermediate_size": "{intermediate}", "num_hidden_layers": "{layers}",
            "num_attention_heads": "{heads}", "max_position_embeddings": "{positions}"}  # fmt: skip
TINY_ARCHITECTURES: dict[str, TinyArchitecture] = {
    "llama": TinyArchitecture("llama", {**_DECODER, "num_key_value_heads": "{heads}", "tie_word_embeddings": False}),
    "mistral": TinyArchitecture(
        "mistral",
        {**_DECODER, "num_key_value_heads": 2, "sliding_window": "{positions}"},
        pad="none",
        why="grouped-query attention, sliding window; Mistral ships without a pad token",
    ),
    "qwen2": TinyArchitecture(
        "qwen2", {**_DECODER, "num_key_value_heads": 2}, pad="eos", why="q/k/v biases; Qwen2's pad is its eos"
    ),
    "qwen3": TinyArchitecture(
        "qwen3",
        {**_DECODER, "num_key_value_heads": 2, "head_dim": "{head_dim}"},
        pad="eos",
        why="q/k norms, explicit head_dim; pad == eos as in Qwen",
    ),
    "gemma": TinyArchitecture(
        "gemma",
        {**_DECODER, "num_key_value_heads": 1, "head_dim": "{head_dim}"},
        why="multi-query attention, tied and scaled embeddings",
    ),
    "gemma2": TinyArchitecture(
        "gemma2",
        {**_DECODER, "num_key_value_heads": 2, "head_dim": "{head_dim}", "sliding_window": "{positions}"},
        why="logit soft-capping, alternating sliding-window layers",
    ),
    "phi3": TinyArchitecture(
        "phi3", {**_DECODER, "num_key_value_heads": "{heads}"}, pad="eos", why="fused qkv and gate/up projections"
    ),
    "gpt2": TinyArchitecture(
        "gpt2",
        {
            "n_embd": "{hidden}",
            "n_inner": "{intermediate}",
            "n_layer": "{layers}",
            "n_head": "{heads}",
            "n_positions": "{positions}",
        },
        pad="none",
        why="learned positions, Conv1D layers, tied embeddings, no pad token",
    ),
    "gpt_neox": TinyArchitecture(
        "gpt_neox", {**_DECODER}, pad="none", why="parallel attention + MLP, partial rotary; Pythia has no pad token"
    ),
    "opt": TinyArchitecture(
        "opt",
        {
            "hidden_size": "{hidden}",
            "ffn_dim": "{intermediate}",
            "num_hidden_layers": "{layers}",
            "num_attention_heads": "{heads}",
            "max_position_embeddings": "{positions}",
            "word_embed_proj_dim": "{hidden}",
        },
        why="learned positions offset by 2, derived from the attention mask",
    ),
    "bloom": TinyArchitecture(
        "bloom",
        {"hidden_size": "{hidden}", "n_layer": "{layers}", "n_head": "{heads}"},
        why="ALiBi (no position ids), embedding layer norm",
    ),
}


def build_tiny_model(
    output_dir: str | Path,
    *,
    vocab_size: int = 1024,
    hidden_size: int = 64,
    intermediate_size: int = 172,
    num_layers: int = 2,
    num_heads: int = 4,
    max_positions: int = 128,
    seed: int = 0,
    architecture: str = "llama",
    pad_token_id: int | None = 0,
) -> Path:
    """Save a randomly initialised causal LM of ``architecture`` (a key of TINY_ARCHITECTURES; safetensors)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    if architecture not in TINY_ARCHITECTURES:
        raise ValueError(f"architecture={architecture!r}: expected one of {', '.join(TINY_ARCHITECTURES)}")
    spec = TINY_ARCHITECTURES[architecture]
    sizes = {"hidden": hidden_size, "intermediate": intermediate_size, "layers": num_layers, "heads": num_heads,
             "positions": max_positions, "head_dim": hidden_size // num_heads}  # fmt: skip
    values = {
        key: (int(value.format(**sizes)) if isinstance(value, str) else value) for key, value in spec.config.items()
    }
    config = AutoConfig.for_model(
        spec.model_type,
        vocab_size=vocab_size,
        pad_token_id=pad_token_id,
        bos_token_id=1,
        eos_token_id=2,
        **values,
    )
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = AutoModelForCausalLM.from_config(config)
    finally:
        torch.random.set_rng_state(generator_state)
    model.generation_config.pad_token_id = pad_token_id
    model.generation_config.bos_token_id = 1
    model.generation_config.eos_token_id = 2
    model.save_pretrained(Path(output_dir), safe_serialization=True)
    return Path(output_dir)


def build_tiny_assets(
    output_dir: str | Path, *, seed: int = 0, architecture: str = "llama", pad: str | None = None, **model_kwargs: int
) -> Path:
    """Tokenizer and model in one directory, written to a temporary sibling and renamed, so a crash leaves nothing.

    ``pad`` defaults to the architecture's own pad-token situation (TINY_ARCHITECTURES)."""
    if architecture not in TINY_ARCHITECTURES:
        raise ValueError(f"architecture={architecture!r}: expected one of {', '.join(TINY_ARCHITECTURES)}")
    pad = pad or TINY_ARCHITECTURES[architecture].pad
    output_dir = Path(output_dir)
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}-", dir=output_dir.parent))
    try:
        build_tokenizer(staging, seed=seed, vocab_size=model_kwargs.get("vocab_size", 1024), pad=pad)
        pad_token_id = {"distinct": 0, "none": None, "eos": 2}[pad]
        if architecture != "llama" and "vocab_size" not in model_kwargs:
            # As in real GPT-2, Llama 3 or OPT checkpoints: one embedding row per token and no spare row, so a pad
            # token added at load time needs a resize. (The BPE trainer stops below 1024 on this small corpus; the
            # tiny Llama keeps its 1024 rows, as it always had.)
            from transformers import AutoTokenizer

            model_kwargs = {**model_kwargs, "vocab_size": len(AutoTokenizer.from_pretrained(staging))}
        build_tiny_model(staging, seed=seed, architecture=architecture, pad_token_id=pad_token_id, **model_kwargs)
        staging.chmod(0o755)  # mkdtemp makes it owner-only; the result is a normal shared directory
        if output_dir.exists():
            shutil.rmtree(output_dir)
        os.replace(staging, output_dir)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return output_dir


# Config value -> the config key(s) holding it, filled by remember_config_keys (write_run_files calls it), so that a
# bad model path is reported under the key the user typed (model.name_or_path, actor.name_or_path, reward_model, ...)
# by loaders that only receive the path.
_CONFIG_KEYS: dict[str, list[str]] = {}
# What a Hugging Face hub id looks like: NAME or ORG/NAME of letters, digits, "-", "_", "." (at most 96 each).
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,95}(/[A-Za-z0-9][A-Za-z0-9_.-]{0,95})?$")


def remember_config_keys(values: dict[str, Any]) -> None:
    """Record which config keys hold which string values (the run's resolved config as a dict)."""
    _CONFIG_KEYS.clear()

    def walk(value: Any, prefix: str) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                walk(item, f"{prefix}{key}.")
        elif isinstance(value, str) and value:
            _CONFIG_KEYS.setdefault(value, []).append(prefix[:-1])

    walk(values, "")


def config_key_for(value: str, default: str | None = None) -> str | None:
    """The config key(s) holding ``value`` ("a / b" when several do), or ``default``."""
    keys = _CONFIG_KEYS.get(value)
    return " / ".join(keys) if keys else default


def _named(key: str | None, path: str) -> str:
    """``key=path`` for error lines, or ``model path PATH`` when no config key is known."""
    return f"{key}={path}" if key else f"model path {path}"


def looks_like_local_path(name_or_path: str) -> bool:
    """A value that cannot be a hub id (``./x``, ``/x``, ``~/x``, ``a/b/c``), or ``a/b`` where ``./a`` is a local
    directory (``runs/model`` is a typo of a run directory, not a hub repository)."""
    if name_or_path.startswith((".", "/", "~")) or "\\" in name_or_path or not _HUB_ID.match(name_or_path):
        return True
    return "/" in name_or_path and Path(name_or_path.split("/", 1)[0]).is_dir()


def check_model_path(name_or_path: str, key: str | None = None) -> None:
    """Raise ConfigError (one line naming the config key and the path) for a model path that cannot load: a missing
    local directory, a file, or a directory whose config.json is empty or not JSON. Hub ids pass (nothing is fetched
    here); without this, a typo in a local path ends in transformers' misleading "Repo id must be in the form ..."."""
    from safe_rlhf.config import ConfigError

    named = _named(key or config_key_for(name_or_path), name_or_path)
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        config_file = path / "config.json"
        if config_file.is_file():
            try:
                parsed = json.loads(config_file.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, ValueError) as error:
                reason = "is empty" if config_file.stat().st_size == 0 else f"is not valid JSON ({error})"
                raise ConfigError(
                    f"{named}: {config_file} {reason}; the model directory is damaged (export or download it again)"
                ) from None
            if not isinstance(parsed, dict):
                raise ConfigError(f"{named}: {config_file} holds {type(parsed).__name__}, not an object")
        return
    if path.exists():
        raise ConfigError(f"{named}: is a file; give a Hugging Face model directory or a hub id")
    if name_or_path == "tiny-vlm":
        return  # built on first use (resolve_model_path)
    if name_or_path.startswith(TINY_MODEL_ALIAS + "-") and tiny_alias_architecture(name_or_path) is None:
        known = ", ".join(f"{TINY_MODEL_ALIAS}-{name.replace('_', '-')}" for name in TINY_ARCHITECTURES)
        raise ConfigError(f"{named}: no such built-in tiny model (known: {TINY_MODEL_ALIAS}, {known}, tiny-vlm)")
    if looks_like_local_path(name_or_path):
        raise ConfigError(
            f"{named}: no such model directory (hub ids look like ORG/NAME; '{TINY_MODEL_ALIAS}' is the built-in "
            "offline model)"
        )


def from_pretrained(loader: Any, path: str, *, key: str | None = None, **kwargs: Any) -> Any:
    """``loader.from_pretrained(path, **kwargs)`` with its errors (OSError, ValueError: a missing file, a config.json
    without model_type, a tokenizer that cannot be built) as one ConfigError line naming the config key and path."""
    from safe_rlhf.config import ConfigError

    try:
        return loader.from_pretrained(path, **kwargs)
    except (OSError, ValueError) as error:
        first_line = next((line.strip() for line in str(error).splitlines() if line.strip()), type(error).__name__)
        raise ConfigError(
            f"{_named(key or config_key_for(path), path)}: {getattr(loader, '__name__', 'loader')} cannot load it "
            f"({type(error).__name__}: {first_line[:300]})"
        ) from None


def resolve_model_path(name_or_path: str, key: str | None = None) -> str:
    """Map the ``tiny`` alias to the cached tiny assets (built once, safely across ranks); check the others (see
    :func:`check_model_path`) and pass them through."""
    if name_or_path == "tiny-vlm":  # the tiny vision-language model (safe_rlhf.vision_models)
        from safe_rlhf.vision_models import resolve_tiny_vlm

        return resolve_tiny_vlm()
    architecture = tiny_alias_architecture(name_or_path)
    if architecture is None:
        check_model_path(name_or_path, key)
        return name_or_path
    target = cache_dir() / f"tiny-{architecture.replace('_', '-')}-v{TINY_ASSETS_VERSION}"
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if not (target / "model.safetensors").exists():
            build_tiny_assets(target, architecture=architecture)
    return str(target)


def tiny_alias_architecture(name_or_path: str) -> str | None:
    """``tiny`` -> "llama", ``tiny-gpt2`` -> "gpt2", ``tiny-gpt-neox`` -> "gpt_neox"; None for anything else."""
    if name_or_path == TINY_MODEL_ALIAS:
        return "llama"
    if not name_or_path.startswith(TINY_MODEL_ALIAS + "-"):
        return None
    architecture = name_or_path[len(TINY_MODEL_ALIAS) + 1 :].replace("-", "_")
    return architecture if architecture in TINY_ARCHITECTURES else None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Build the offline tiny tokenizer + Llama model (no network).")
    parser.add_argument("--output", required=True, help="directory to write (overwritten)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--vocab-size", type=int, default=1024)
    parser.add_argument("--hidden-size", type=int, default=64)
    parser.add_argument("--intermediate-size", type=int, default=172)
    parser.add_argument("--num-layers", type=int, default=2)
    parser.add_argument("--num-heads", type=int, default=4)
    parser.add_argument("--max-positions", type=int, default=128)
    parser.add_argument("--architecture", choices=sorted(TINY_ARCHITECTURES), default="llama")
    parser.add_argument("--pad", choices=PAD_STYLES, default=None, help="default: the architecture's own")
    args = parser.parse_args(argv)
    path = build_tiny_assets(
        args.output,
        seed=args.seed,
        architecture=args.architecture,
        pad=args.pad,
        vocab_size=args.vocab_size,
        hidden_size=args.hidden_size,
        intermediate_size=args.intermediate_size,
        num_layers=args.num_layers,
        num_heads=args.num_heads,
        max_positions=args.max_positions,
    )
    print(f"wrote tokenizer and model to {path}")


if __name__ == "__main__":
    main()
