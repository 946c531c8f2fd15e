"""Vision-language models: the offline tiny VLM, score heads for VLMs, processors and the image batch.

The tiny default (``model.name_or_path=tiny-vlm``, built on first use into ``$SAFE_RLHF_CACHE/tiny-vlm-v2``)::

    python -m safe_rlhf.vision_models --output /path/to/tiny-vlm

is a LLaVA: a CLIP vision transformer (32 x 32 images, 8 x 8 patches -> 16 image tokens, hidden 32, 2 layers), a
two-layer MLP projector and the text world's Llama decoder (hidden 64, 2 layers) with its locally trained tokenizer
plus one ``<image>`` token; about 250k parameters. The vision tower comes *pretrained*, as every real VLM's does
(CLIP, SigLIP): before saving, the build trains it for about 15 s to tell the multimodal toy world's shapes and
textures apart (a 16-way classification of new renderings through a linear probe on its mean patch feature; the probe
is discarded, its held-out accuracy is kept in ``tower_pretraining.json``). Why: the recipes freeze the tower, and a
random frozen tower passed the stripes but hardly the shapes, so SFT's policy could tell a risky picture from a
benign one but not what it showed (27% of topic words right, 12.5% chance; docs/vision.md).

Why LLaVA: it is the architecture Safe RLHF-V's own models come from (LLaVA-1.5 in align-anything), it splices a
fixed number of image tokens where the prompt says ``<image>``, so a batch is ordinary left-padded token ids plus
``pixel_values`` (every text-path invariant - masks, positions, the last real token - holds unchanged), its CLIP
image processor has a PIL implementation (``CLIPImageProcessorPil``: torchvision is not needed) and its decoder is
the text recipes' Llama. Any Hugging Face VLM directory with a processor works for real runs (``AutoProcessor`` /
``AutoModelForImageTextToText``).

Score models (reward, cost, critics) for VLMs: transformers has no ``LlavaForSequenceClassification``; one is built
from its generic sequence-classification layer (a linear ``score`` head on the decoder's hidden states, which
:func:`safe_rlhf.score_model.token_scores` reads at every position) and registered with the Auto classes
(:func:`register_vlm_score_models`), so ``AutoModelForSequenceClassification.from_pretrained`` loads a VLM
checkpoint with a fresh head, or a trained VLM score model, like any text one.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from filelock import FileLock

TINY_VLM_ALIAS = "tiny-vlm"
TINY_VLM_VERSION = 2  # 2: the vision tower is pretrained on the world's shapes
IMAGE_TOKEN = "<image>"

# The text world's chat template with image parts: a user turn's content is a string or a list of
# {"type": "image"} / {"type": "text", "text": ...} parts; each image part becomes one <image> placeholder, which the
# processor expands to the vision tower's image tokens.
TINY_VLM_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}SYSTEM: {{ message['content'] }} "
    "{% elif message['role'] == 'user' %}USER: "
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<image>{% else %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %} "
    "{% elif message['role'] == 'assistant' %}ASSISTANT: {{ message['content'] }}{{ eos_token }} "
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)


def register_vlm_score_models() -> None:
    """Register ``LlavaForSequenceClassification`` (generic score head on the LLaVA decoder) with the Auto classes.

    Safe to call repeatedly (``exist_ok``); every loader of a score model calls it first."""
    from transformers import AutoModelForSequenceClassification, LlavaConfig
    from transformers.modeling_layers import GenericForSequenceClassification
    from transformers.models.llava.modeling_llava import LlavaPreTrainedModel

    global LlavaForSequenceClassification
    if LlavaForSequenceClassification is None:
        LlavaForSequenceClassification = type(
            "LlavaForSequenceClassification",
            (GenericForSequenceClassification, LlavaPreTrainedModel),
            {"__doc__": "A LLaVA decoder with a linear score head (reward, cost and critic models)."},
        )
    AutoModelForSequenceClassification.register(LlavaConfig, LlavaForSequenceClassification, exist_ok=True)


LlavaForSequenceClassification: Any = None


def is_vision_model(path: str) -> bool:
    """Whether the checkpoint at ``path`` is a vision-language model (its config has a ``vision_config``)."""
    import json

    config = Path(path) / "config.json"
    try:
        return "vision_config" in json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False


def build_tiny_vlm(
    output_dir: str | Path,
    *,
    seed: int = 0,
    image_size: int = 32,
    patch_size: int = 8,
    vision_hidden_size: int = 32,
    vision_layers: int = 2,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    max_positions: int = 128,
    tower_pretraining_steps: int = 2000,
) -> Path:
    """Save the tiny LLaVA, its tokenizer and processor in one directory (written to a temporary sibling, renamed).

    ``tower_pretraining_steps`` of :func:`pretrain_vision_tower` (0: a random tower)."""
    import torch
    from transformers import (
        AutoTokenizer,
        CLIPImageProcessorPil,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    from safe_rlhf.assets import build_tokenizer

    output_dir = Path(output_dir)
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}-", dir=output_dir.parent))
    try:
        build_tokenizer(staging, seed=seed, vocab_size=1024, pad="distinct")
        tokenizer = AutoTokenizer.from_pretrained(staging)
        tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
        tokenizer.chat_template = TINY_VLM_CHAT_TEMPLATE
        image_token_id = int(tokenizer.convert_tokens_to_ids(IMAGE_TOKEN))  # type: ignore[arg-type]
        text_config = LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=hidden_size,
            intermediate_size=hidden_size * 27 // 10,
            num_hidden_layers=num_layers,
            num_attention_heads=num_heads,
            num_key_value_heads=num_heads,
            max_position_embeddings=max_positions,
            pad_token_id=0,
            bos_token_id=1,
            eos_token_id=2,
            tie_word_embeddings=False,
        )
        vision_config = CLIPVisionConfig(
            hidden_size=vision_hidden_size,
            intermediate_size=vision_hidden_size * 2,
            num_hidden_layers=vision_layers,
            num_attention_heads=2,
            image_size=image_size,
            patch_size=patch_size,
            projection_dim=vision_hidden_size,
        )
        image_tokens = (image_size // patch_size) ** 2  # the CLS token is dropped ("default" feature strategy)
        config = LlavaConfig(
            text_config=text_config,
            vision_config=vision_config,
            image_token_index=image_token_id,
            vision_feature_select_strategy="default",
            vision_feature_layer=-1,
            image_seq_length=image_tokens,
        )
        generator_state = torch.random.get_rng_state()
        torch.default_generator.manual_seed(seed)  # the CPU generator only: a GPU rank's CUDA stream stays as it was
        try:
            model = LlavaForConditionalGeneration(config)
        finally:
            torch.random.set_rng_state(generator_state)
        for key, value in (("pad_token_id", 0), ("bos_token_id", 1), ("eos_token_id", 2)):
            setattr(model.generation_config, key, value)
        image_processor = CLIPImageProcessorPil(
            size={"shortest_edge": image_size},
            crop_size={"height": image_size, "width": image_size},
            image_mean=[0.5, 0.5, 0.5],
            image_std=[0.5, 0.5, 0.5],
        )
        processor = LlavaProcessor(
            image_processor=image_processor,
            tokenizer=tokenizer,
            patch_size=patch_size,
            vision_feature_select_strategy="default",
            chat_template=TINY_VLM_CHAT_TEMPLATE,
            num_additional_image_tokens=1,  # CLIP's CLS token, which the "default" strategy drops again
        )
        if tower_pretraining_steps > 0:
            report = pretrain_vision_tower(model.model.vision_tower, image_processor,
                                           steps=tower_pretraining_steps, seed=seed)  # fmt: skip
            (staging / "tower_pretraining.json").write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
        model.save_pretrained(staging, safe_serialization=True)
        processor.save_pretrained(staging)
        staging.chmod(0o755)
        if output_dir.exists():
            shutil.rmtree(output_dir)
        os.replace(staging, output_dir)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return output_dir


def pretrain_vision_tower(
    tower: Any,
    image_processor: Any,
    *,
    steps: int,
    seed: int = 0,
    batch_size: int = 64,
    pool_batches: int = 300,
    learning_rate: float = 3e-3,
    heldout_images: int = 512,
) -> dict[str, Any]:
    """Train ``tower`` (a CLIP vision model) in place to tell the multimodal toy world's 16 image classes apart.

    The stand-in for a real tower's pretraining: a linear probe on the mean of the last layer's patch features (the
    features LLaVA's projector reads, CLS excluded) is trained with the tower by cross-entropy over ``steps`` AdamW
    steps, cycling a pool of ``pool_batches`` x ``batch_size`` new renderings; the probe is then discarded. Seeded and
    leaves the global torch RNG as it found it. Returns the probe's accuracy on ``heldout_images`` other renderings
    (chance 1/16) with the settings, for the model directory's ``tower_pretraining.json``."""
    import random

    import torch

    from safe_rlhf.toyworld.vision import IMAGE_CLASSES, render

    def rendered(count: int, rng: random.Random) -> tuple[torch.Tensor, torch.Tensor]:
        labels = [rng.randrange(len(IMAGE_CLASSES)) for _ in range(count)]
        images = [render(IMAGE_CLASSES[label], rng) for label in labels]
        return image_processor(images=images, return_tensors="pt")["pixel_values"], torch.tensor(labels)

    rng = random.Random(f"tiny-vlm-tower:{seed}")
    pool = [rendered(batch_size, rng) for _ in range(min(steps, pool_batches))]
    heldout_pixels, heldout_labels = rendered(heldout_images, random.Random(f"tiny-vlm-tower:{seed}:heldout"))
    generator_state = torch.random.get_rng_state()
    torch.default_generator.manual_seed(seed)  # the CPU generator only (torch.manual_seed would reseed CUDA too)
    try:
        probe = torch.nn.Linear(tower.config.hidden_size, len(IMAGE_CLASSES))
        parameters = [*tower.parameters(), *probe.parameters()]
        optimizer = torch.optim.AdamW(parameters, lr=learning_rate)

        def logits(pixels: torch.Tensor) -> torch.Tensor:
            return probe(tower(pixel_values=pixels).last_hidden_state[:, 1:].mean(dim=1))

        tower.train()
        with torch.enable_grad():  # also when the first build happens under no_grad / inference mode
            for step in range(steps):
                pixels, labels = pool[step % len(pool)]
                loss = torch.nn.functional.cross_entropy(logits(pixels), labels)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
        tower.eval()
        with torch.no_grad():
            accuracy = (logits(heldout_pixels).argmax(dim=-1) == heldout_labels).float().mean().item()
    finally:
        torch.random.set_rng_state(generator_state)
    tower.zero_grad(set_to_none=True)
    return {"steps": steps, "batch_size": batch_size, "pool_images": len(pool) * batch_size,
            "learning_rate": learning_rate, "heldout_images": heldout_images,
            "heldout_accuracy": round(accuracy, 4), "chance": round(1 / len(IMAGE_CLASSES), 4)}  # fmt: skip


def resolve_tiny_vlm() -> str:
    """The cached tiny VLM directory, built once (safely across ranks)."""
    from safe_rlhf.assets import cache_dir

    target = cache_dir() / f"tiny-vlm-v{TINY_VLM_VERSION}"
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if not (target / "model.safetensors").exists():
            build_tiny_vlm(target)
    return str(target)


def load_processor(path: str, *, trust_remote_code: bool = False) -> Any:
    """The processor (tokenizer + image processor) of a VLM directory, left-padded for generation."""
    from transformers import AutoProcessor

    from safe_rlhf.assets import from_pretrained

    processor = from_pretrained(AutoProcessor, path, trust_remote_code=trust_remote_code)
    processor.tokenizer.padding_side = "left"
    return processor


def image_tokens(processor: Any) -> Any:
    """The :class:`~safe_rlhf.data.tokenize.ImageTokens` of a fixed-count VLM processor (LLaVA's): its image token,
    how many image tokens one image becomes, and its image processor. A processor whose token count depends on the
    image (Qwen2-VL's dynamic resolution) is refused in one line until the data layer supports it."""
    from safe_rlhf.data.tokenize import ImageTokens

    image_processor = processor.image_processor
    patch_size = getattr(processor, "patch_size", None)
    crop = getattr(image_processor, "crop_size", None) or getattr(image_processor, "size", None) or {}
    height, width = crop.get("height"), crop.get("width")
    if patch_size is None or height is None or width is None:
        raise ValueError(
            f"{type(processor).__name__}: only fixed-size image processors with a patch_size are supported "
            "(LLaVA-style); this one decides the number of image tokens per image"
        )
    tokens = (height // patch_size) * (width // patch_size) + getattr(processor, "num_additional_image_tokens", 0)
    if getattr(processor, "vision_feature_select_strategy", "default") == "default":
        tokens -= 1  # the CLS token is dropped again
    token = processor.image_token
    token_id = processor.tokenizer.convert_tokens_to_ids(token)
    return ImageTokens(image_token=token, image_token_id=int(token_id), tokens_per_image=tokens,
                       image_processor=image_processor)  # fmt: skip


def freeze_vision_tower(model: Any, frozen: bool = True) -> int:
    """Set ``requires_grad`` of the vision tower's parameters (frozen by default in the recipes); the count set."""
    inner = getattr(model, "model", model)
    tower = getattr(inner, "vision_tower", None)
    if tower is None:
        raise ValueError(f"{type(model).__name__} has no vision_tower to freeze")
    count = 0
    for parameter in tower.parameters():
        parameter.requires_grad_(not frozen)
        count += parameter.numel()
    return count


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Build the offline tiny vision-language model (no network).")
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tower-pretraining-steps", type=int, default=2000, help="0: a random vision tower")
    args = parser.parse_args(argv)
    path = build_tiny_vlm(args.output, seed=args.seed, tower_pretraining_steps=args.tower_pretraining_steps)
    print(f"tiny VLM: {path}")


if __name__ == "__main__":
    main()
