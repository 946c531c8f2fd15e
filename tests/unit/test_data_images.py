"""Image-question datasets: BeaverTails-V, SPA-VL, VLFeedback, align-anything ti2t, and the image references."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from PIL import Image

from safe_rlhf.data import DataError, load_samples
from safe_rlhf.data.images import ImageRef, image_from_value

pytestmark = pytest.mark.unit

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "data"
IMAGES = FIXTURES / "images"


def load(reader: str, path: Path | str, kind: str, **kwargs):
    return load_samples(f"{reader}:{path}", kind, **kwargs)


def pixel_colour(ref: ImageRef) -> tuple[int, int, int]:
    return ref.load().getpixel((12, 8))


# --------------------------------------------------------------------------------------------------- image refs


def test_image_paths_resolve_against_the_data_file_and_decode():
    samples = load("beavertails-v", FIXTURES / "beavertails_v.jsonl", "preference").samples
    (first,) = samples[0].images
    assert first.path == str(IMAGES / "cage.png") and first.size == (24, 16)
    assert pixel_colour(first) == (200, 180, 120)  # the rectangle drawn in cage.png, not some other file
    assert [s.images[0].path for s in samples] == [str(IMAGES / n) for n in ("cage.png", "chemicals.png", "street.png")]


def test_relative_image_paths_follow_the_file_not_the_working_directory(tmp_path, monkeypatch):
    folder = tmp_path / "moved"
    (folder / "images").mkdir(parents=True)
    (folder / "images" / "cage.png").write_bytes((IMAGES / "cage.png").read_bytes())
    record = json.loads((FIXTURES / "beavertails_v.jsonl").read_text().splitlines()[0])
    (folder / "data.jsonl").write_text(json.dumps(record) + "\n")
    monkeypatch.chdir(tmp_path)  # a relative spec, and a working directory that has no images/ of its own
    (sample,) = load("beavertails-v", "moved/data.jsonl", "preference").samples
    assert Path(sample.images[0].path).resolve() == (folder / "images" / "cage.png").resolve()


def test_embedded_bytes_as_the_hub_stores_them_in_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    png = (IMAGES / "chemicals.png").read_bytes()
    table = pa.table(
        {
            "image": [{"bytes": png, "path": "chemicals.png"}],
            "question": ["How can I use these bottles?"],
            "chosen": ["Store them safely."],
            "rejected": ["Mix them."],
            "image_name": ["chemicals.png"],
        }
    )
    pq.write_table(table, tmp_path / "train-00000.parquet")
    (sample,) = load("spa-vl", tmp_path / "train-00000.parquet", "preference").samples
    (image,) = sample.images
    assert image.path is None and image.data == png and image.size == (24, 16)
    assert pixel_colour(image) == (40, 160, 60)
    assert (sample.better, sample.worse, sample.safer_id) == ("Store them safely.", "Mix them.", 0)


def test_image_values_in_every_form():
    png = (IMAGES / "street.png").read_bytes()
    from_bytes = image_from_value(png, "image")
    from_pil = image_from_value(Image.open(io.BytesIO(png)), "image")
    from_struct_path = image_from_value({"bytes": None, "path": "street.png"}, "image", base_dir=IMAGES)
    for ref in (from_bytes, from_pil, from_struct_path):
        assert ref.size == (24, 16) and pixel_colour(ref) == (90, 90, 200)


def test_missing_and_undecodable_images_name_the_record():
    path = FIXTURES / "malformed" / "beavertails_v_missing_image.jsonl"
    with pytest.raises(DataError) as caught:
        load("beavertails-v", path, "preference")
    message = str(caught.value)
    assert len(message.splitlines()) == 1
    assert f"{path}:2" in message and "field 'image'" in message and "gone.png" in message
    assert "image not found" in message


@pytest.mark.parametrize("row, detail", [(3, "does not decode"), (4, "does not decode"), (5, "missing")])
def test_each_bad_image_is_its_own_one_line_error(tmp_path, row, detail):
    lines = (FIXTURES / "malformed" / "beavertails_v_missing_image.jsonl").read_text().splitlines()
    (tmp_path / "one.jsonl").write_text(lines[0] + "\n" + lines[row - 1] + "\n")
    for name in ("cage.png", "truncated.png", "not_an_image.png"):
        (tmp_path.parent / "images").mkdir(exist_ok=True)
        (tmp_path.parent / "images" / name).write_bytes((IMAGES / name).read_bytes())
    with pytest.raises(DataError) as caught:
        load("beavertails-v", tmp_path / "one.jsonl", "preference")
    message = str(caught.value)
    assert len(message.splitlines()) == 1 and "one.jsonl:2" in message and detail in message


def test_bad_images_are_counted_skips_when_configured():
    path = FIXTURES / "malformed" / "beavertails_v_missing_image.jsonl"
    result = load("beavertails-v", path, "preference", on_error="skip")
    assert len(result.samples) == 1  # the first record's image is fine
    assert result.stats.skipped == {"missing_image": 1, "bad_image": 2, "missing_field": 1}


# ----------------------------------------------------------------------------------------------------- readers


def test_beavertails_v_string_ids_from_the_hub_card():
    samples = load("beavertails-v", FIXTURES / "malformed" / "beavertails_v_missing_image.jsonl", "preference",
                   on_error="skip").samples  # fmt: skip
    assert (samples[0].better_id, samples[0].safer_id, samples[0].is_safe) == (0, 0, (True, False))


def test_beavertails_v_prompts_carry_the_image_and_its_severity():
    prompts = load("beavertails-v", FIXTURES / "beavertails_v.jsonl", "prompt").samples
    assert prompts[1].meta == {"category": "dangerous_behavior", "image_severity": 3}
    assert prompts[1].images[0].path == str(IMAGES / "chemicals.png")


def test_beavertails_v_single_response_configs():
    sft = load("beavertails-v", FIXTURES / "beavertails_v_single.jsonl", "sft").samples
    assert sft[1].response == "Mix them to make a toxic gas." and sft[1].images[0].path.endswith("chemicals.png")
    attributes = load("beavertails-v", FIXTURES / "beavertails_v_single.jsonl", "attribute").samples
    assert [a.attributes for a in attributes] == [
        {"is_safe": 1.0, "image_severity": 2.0},
        {"is_safe": 0.0, "image_severity": 3.0},
    ]


def test_spa_vl_kinds():
    path = FIXTURES / "spa_vl.jsonl"
    preference = load("spa-vl", path, "preference").samples
    assert (
        preference[0].better.startswith("I can't help")
        and preference[0].worse == "Mix the two bottles in a closed room."
    )
    assert preference[0].safer_id == 0 and preference[0].is_safe == (None, None)
    sft = load("spa-vl", path, "sft").samples
    assert sft[1].response == "Two people are arguing on a street corner."
    prompts = load("spa-vl", path, "prompt").samples
    assert prompts[1].meta == {"image_name": "street.png", "class1": "Violence", "class2": "physical harm",
                               "class3": "street fight"}  # fmt: skip
    assert prompts[0].images[0].path == str(IMAGES / "chemicals.png")


def test_vlfeedback_pairs_the_best_and_worst_mean_rating():
    path = FIXTURES / "vlfeedback.jsonl"
    result = load("vlfeedback", path, "preference", on_error="skip")
    # record 1: means 3.67 (llava), 5.0 (gpt-4v), 1.5 (qwen-vl: its "N/A" faithfulness left out of its mean)
    (pair,) = result.samples
    assert pair.better == "A dog is kept in a cage that is too small; it may need a vet."
    assert pair.worse == "Lock it in tighter so it stops barking."
    assert (pair.safer_id, pair.is_safe) == (0, (True, False))  # ethical ratings 5 and 1
    assert pair.images[0].path == str(IMAGES / "cage.png")
    # record 2 (the hub's dict-of-lists form): both means 4.0, no pair
    assert result.stats.skipped == {"no_preference": 1}
    attributes = load("vlfeedback", path, "attribute").samples
    assert attributes[0].attributes == {"Helpfulness": 5.0, "Ethical Considerations": 5.0, "Visual Faithfulness": 5.0}
    assert attributes[1].response == "A street."
    with pytest.raises(DataError, match=r"vlfeedback\.jsonl:2: field 'completions': every completion has the same"):
        load("vlfeedback", path, "preference")


def test_align_anything_ti2t_one_based_ids():
    samples = load("align-anything-ti2t", FIXTURES / "align_anything_ti2t.jsonl", "preference").samples
    assert (samples[0].better, samples[0].safer_id) == ("Keep them apart and ventilate the room.", 1)
    assert (samples[1].better_id, samples[1].safer_id) == (0, None)  # "1" as a string; no safety preference
    assert samples[1].images[0].path == str(IMAGES / "cage.png")


def test_text_datasets_have_no_images():
    samples = load_samples("toyworld:preference", "preference").samples[:3]
    assert all(sample.images == () for sample in samples)


def test_describe_reports_image_statistics():
    from safe_rlhf.data.describe import describe, format_report

    report = describe(f"spa-vl:{FIXTURES / 'spa_vl.jsonl'}+beavertails-v:{FIXTURES / 'beavertails_v.jsonl'}")
    images = report["stats"]["images"]
    # 2 SPA-VL + 3 BeaverTails-V samples; chemicals.png and street.png are shown by both datasets
    assert (images["samples_with_images"], images["images"], images["files"], images["embedded"]) == (5, 5, 5, 0)
    assert images["distinct"] == 3 and images["width"]["max"] == 24 and images["height"]["min"] == 16
    assert "images: 5 samples show 5 (5 files, 0 embedded, 3 distinct)" in format_report(report)
    assert "images" not in describe("toyworld:preference")["stats"]  # text datasets: no image line
