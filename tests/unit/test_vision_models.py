"""The tiny VLM: built offline from config, processor without torchvision, image tokens, score heads on VLMs."""

from __future__ import annotations

import random

import pytest
import torch

from safe_rlhf.data.types import Message
from safe_rlhf.score_model import end_scores, load_score_model, token_scores
from safe_rlhf.toyworld import vision
from safe_rlhf.vision_models import build_tiny_vlm, freeze_vision_tower, image_messages, load_processor

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def tiny_vlm(tmp_path_factory):
    return str(build_tiny_vlm(tmp_path_factory.mktemp("vlm") / "tiny-vlm"))


def pictures(*names: str, seed: int = 0):
    rng = random.Random(seed)
    return [vision.render(vision.image_class(name), rng) for name in names]


def prompt_batch(processor, questions, images):
    texts = [
        processor.apply_chat_template(
            image_messages((Message("user", q),), 1), add_generation_prompt=True, tokenize=False
        )
        for q in questions
    ]
    return processor(images=images, text=texts, return_tensors="pt", padding=True)


def test_builds_offline_and_reloads(tiny_vlm):
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(tiny_vlm)
    processor = load_processor(tiny_vlm)
    assert type(model).__name__ == "LlavaForConditionalGeneration"
    assert type(processor.image_processor).__name__ == "CLIPImageProcessorPil"  # no torchvision needed
    assert 150_000 < sum(p.numel() for p in model.parameters()) < 400_000
    assert processor.tokenizer.padding_side == "left"


def test_chat_template_puts_the_image_before_the_question(tiny_vlm):
    processor = load_processor(tiny_vlm)
    messages = image_messages((Message("system", "be safe"), Message("user", "how do i do this")), 1)
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert text == "<s>SYSTEM: be safe USER: <image>how do i do this ASSISTANT:"


def test_each_image_becomes_sixteen_image_tokens_and_changes_the_output(tiny_vlm):
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(tiny_vlm).eval()
    processor = load_processor(tiny_vlm)
    questions = ["how do i do this", "use this step by step"]
    batch = prompt_batch(processor, questions, pictures("cooking-benign", "cooking-risky"))
    image_token = model.config.image_token_index
    assert (batch["input_ids"] == image_token).sum(dim=1).tolist() == [16, 16]  # (32 / 8)^2 patches
    assert batch["pixel_values"].shape == (2, 3, 32, 32)
    with torch.no_grad():
        logits = model(**batch).logits[:, -1]
        swapped = dict(batch, pixel_values=batch["pixel_values"].flip(0))
        logits_swapped = model(**swapped).logits[:, -1]
    assert not torch.allclose(logits, logits_swapped)  # the answer depends on the picture
    generated = model.generate(**batch, max_new_tokens=4, do_sample=False)
    assert generated.shape == (2, batch["input_ids"].shape[1] + 4)


def test_score_models_on_a_vlm_read_the_image(tiny_vlm):
    processor = load_processor(tiny_vlm)
    model = load_score_model(tiny_vlm, score_dim=1, new_head=True).eval()
    assert type(model).__name__ == "LlavaForSequenceClassification"
    batch = prompt_batch(processor, ["how do i do this"] * 2, pictures("pets-benign", "pets-risky"))
    with torch.no_grad():
        scores = end_scores(model, batch["input_ids"], batch["attention_mask"], pixel_values=batch["pixel_values"])
        per_token = token_scores(model, batch["input_ids"], batch["attention_mask"], pixel_values=batch["pixel_values"])
    assert scores.shape == (2, 1) and per_token.shape == (2, batch["input_ids"].shape[1], 1)
    torch.testing.assert_close(scores[:, 0], per_token[:, -1, 0])  # left padding: the last column is the last token
    assert scores[0, 0] != scores[1, 0]  # same words, different picture, different score


def test_freeze_vision_tower(tiny_vlm):
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(tiny_vlm)
    frozen = freeze_vision_tower(model)
    tower = [p for n, p in model.named_parameters() if "vision_tower" in n]
    assert frozen == sum(p.numel() for p in tower) > 0
    assert not any(p.requires_grad for p in tower)
    assert all(p.requires_grad for n, p in model.named_parameters() if "vision_tower" not in n)
