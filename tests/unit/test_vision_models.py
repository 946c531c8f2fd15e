"""The tiny VLM: built offline from config, processor without torchvision, image tokens, score heads on VLMs."""

from __future__ import annotations

import json
import random

import pytest
import torch

from safe_rlhf.data.tokenize import TokenizedDataset, prompt_ids
from safe_rlhf.data.types import PreferenceSample, SFTSample, conversation
from safe_rlhf.score_model import end_scores, load_score_model, token_scores
from safe_rlhf.toyworld import vision
from safe_rlhf.vision_models import (
    build_tiny_vlm,
    freeze_vision_tower,
    image_tokens,
    load_processor,
    pretrain_vision_tower,
)

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def tiny_vlm(tmp_path_factory):
    # a random tower: these tests are about the architecture and the data path; the tower's pretraining has its own
    return str(build_tiny_vlm(tmp_path_factory.mktemp("vlm") / "tiny-vlm", tower_pretraining_steps=0))


def pictures(*names: str, seed: int = 0):
    rng = random.Random(seed)
    return [vision.render(vision.image_class(name), rng) for name in names]


def prompt_batch(processor, questions, images):
    texts = [processor.apply_chat_template(user_turn(q), add_generation_prompt=True, tokenize=False) for q in questions]
    return processor(images=images, text=texts, return_tensors="pt", padding=True)


def user_turn(question: str, system: str | None = None) -> list[dict]:
    head = [{"role": "system", "content": system}] if system else []
    return [*head, {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]


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
    text = processor.apply_chat_template(user_turn("how do i do this", "be safe"), add_generation_prompt=True,
                                         tokenize=False)  # fmt: skip
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


def test_the_data_layer_batches_images_as_the_processor_does(tiny_vlm, tmp_path):
    from safe_rlhf.data.images import image_from_value

    processor = load_processor(tiny_vlm)
    vision = image_tokens(processor)
    assert (vision.image_token, vision.tokens_per_image) == ("<image>", 16)
    benign, risky = pictures("cooking-benign", "cooking-risky")
    refs = []
    for name, picture in (("benign.png", benign), ("risky.png", risky)):
        picture.save(tmp_path / name)
        refs.append(image_from_value(name, "image", base_dir=tmp_path))
    # prompt ids: the processor's own expansion of the same chat text
    ids = prompt_ids(conversation("how do i do this"), processor.tokenizer, 1, vision)
    reference = prompt_batch(processor, ["how do i do this"], [benign])
    assert ids == reference["input_ids"][0].tolist()
    samples = [
        SFTSample(conversation("how do i do this"), "flour yeast", images=(refs[0],)),
        SFTSample(conversation("use this"), "sorry i cannot do that", images=(refs[1],)),
    ]
    dataset = TokenizedDataset(samples, processor.tokenizer, 64, vision=vision)
    batch = dataset.collate([dataset[0], dataset[1]])
    assert batch["pixel_values"].shape == (2, 3, 32, 32)
    torch.testing.assert_close(batch["pixel_values"][0], reference["pixel_values"][0])
    assert (batch["input_ids"] == vision.image_token_id).sum(dim=1).tolist() == [16, 16]
    assert (batch["labels"][batch["input_ids"] == vision.image_token_id] == -100).all()  # no loss on image tokens
    pair = PreferenceSample(conversation("use this"), ("sorry i cannot do that", "sure powder"), 0, 0,
                            (True, False), images=(refs[1],))  # fmt: skip
    preference = TokenizedDataset([pair], processor.tokenizer, 64, vision=vision)
    pair_batch = preference.collate([preference[0]])
    assert pair_batch["pixel_values"].shape == (1, 3, 32, 32)
    assert (pair_batch["better_input_ids"] == vision.image_token_id).sum().item() == 16


def test_images_never_silently_dropped(tiny_vlm, tmp_path):
    from safe_rlhf.data.errors import DataError
    from safe_rlhf.data.images import image_from_value

    processor = load_processor(tiny_vlm)
    (picture,) = pictures("pets-risky")
    picture.save(tmp_path / "p.png")
    ref = image_from_value("p.png", "image", base_dir=tmp_path)
    with_image = SFTSample(conversation("use this"), "sorry", images=(ref,), origin="data.jsonl:7")
    with pytest.raises(DataError, match=r"data\.jsonl:7: field 'image': the sample shows an image but the model is"):
        TokenizedDataset([with_image], processor.tokenizer, 64)  # a text model
    text_only = SFTSample(conversation("use this"), "sorry", origin="data.jsonl:8")
    with pytest.raises(DataError, match=r"data\.jsonl:8: field 'image': a vision-language batch needs one image"):
        TokenizedDataset([text_only], processor.tokenizer, 64, vision=image_tokens(processor))


def test_tower_pretraining_teaches_the_tower_the_pictured_class_and_keeps_the_global_rng():
    """The stand-in for CLIP pretraining: after a few hundred steps a linear probe on the tower's mean patch feature
    names the class of new renderings far above chance (1/16), the tower's weights changed, and the caller's torch
    RNG stream is untouched (builds are reproducible whatever ran before)."""
    from transformers import CLIPImageProcessorPil, CLIPVisionConfig, CLIPVisionModel

    torch.manual_seed(0)
    config = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                              image_size=32, patch_size=8)  # fmt: skip
    tower = CLIPVisionModel(config)
    before = {k: v.clone() for k, v in tower.state_dict().items()}
    processor = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32},
                                      image_mean=[0.5] * 3, image_std=[0.5] * 3)  # fmt: skip
    state = torch.random.get_rng_state()
    report = pretrain_vision_tower(tower, processor, steps=300, pool_batches=60, heldout_images=256)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert report["chance"] == 0.0625 and report["pool_images"] == 60 * 64
    assert report["heldout_accuracy"] > 0.35, report  # 0.64 measured; chance 0.0625
    assert any(not torch.equal(before[k], v) for k, v in tower.state_dict().items())
    untrained = pretrain_vision_tower(CLIPVisionModel(config), processor, steps=0, pool_batches=1, heldout_images=256)
    assert untrained["heldout_accuracy"] < 0.2, untrained  # a random probe on a random tower: about chance


def test_the_built_tiny_vlm_records_its_tower_pretraining(tmp_path):
    path = build_tiny_vlm(tmp_path / "vlm", tower_pretraining_steps=40)
    report = json.loads((path / "tower_pretraining.json").read_text())
    assert report["steps"] == 40 and 0.0 <= report["heldout_accuracy"] <= 1.0
    assert not (build_tiny_vlm(tmp_path / "random", tower_pretraining_steps=0) / "tower_pretraining.json").exists()
