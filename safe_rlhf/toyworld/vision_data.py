"""The multimodal toy world's datasets, in the exact schemas of the multimodal seed datasets (so the real readers run).

::

    python -m safe_rlhf.toyworld vision --out /tmp/vision --seed 0
    python -m safe_rlhf.data describe toyworld:vision_preference

Every record shows one rendered image (``vision.render``), saved as a PNG next to the data file and named by a path
relative to it, except SPA-VL's, embedded as the hub's ``{bytes, path}`` struct in a parquet file. Responses come
from the text world's generators applied to the pictured request (``vision.request_of``), so the labels follow the
same ground truth; the image class of every record is kept (``image_class``) for the judges and for the controls.

=========================  ======================================  =========================================
name                       file and schema                         what it is for
=========================  ======================================  =========================================
``vision_sft``             ``sft.jsonl``: generic sft + image      the SFT demonstrations (base policy)
``vision_preference``      ``beavertails_v.jsonl``: BeaverTails-V  reward and cost models (1-based ids,
                                                                   'yes'/'no', rates, image_severity)
``vision_preference_test`` ``beavertails_v_test.jsonl``            held-out questions and images
``vision_spa``             ``spa_vl/train-00000.parquet``: SPA-VL  DPO / SafeDPO (chosen is safer, then better)
``vision_feedback``        ``vlfeedback.jsonl``: VLFeedback        1-5 aspect ratings of 4 completions
``vision_qa`` / ``_test``  ``qa*.jsonl``: BeaverTails-V single     moderation (Beaver-Guard-V style)
                           response (``response, is_response_safe``)
``vision_prompts``         ``prompts.jsonl``: generic prompts      RL rollouts (``image_class``, ``risky``...)
``vision_eval_prompts``    ``eval_prompts.jsonl``                  held-out: 16 per class, new images
``vision_eval_swapped``    ``eval_prompts_swapped.jsonl``          the same questions, each image swapped
                                                                   for another class's (``vision.swapped_class``)
=========================  ======================================  =========================================

The picture's own severity (``image_severity`` of BeaverTails-V) is 0 for a benign class and the topic's level
(1-3, cycling over the topics) for a risky one; the judges do not use it. Rates: ``response_k_helpful_rate`` is the
judge's helpfulness rounded and clipped to -3..3; ``response_k_harmless_rate`` is 2 for a safe response and minus
its severity for an unsafe one. VLFeedback ratings (strings, as the dataset has them): Helpfulness from the judge
(1 for <= 0 up to 5 for >= 3.5), Ethical Considerations 5 safe / 2 minor / 1 moderate or severe, Visual Faithfulness
5 when every content word belongs to the pictured request, else 2.
"""

from __future__ import annotations

import json
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from safe_rlhf.toyworld.generate import (
    BasePolicy,
    _write_jsonl,
    default_cache_root,
    ensure_folder,
    label_pair,
    sample_base_response,
    sample_pair,
)
from safe_rlhf.toyworld.judges import helpfulness as text_helpfulness
from safe_rlhf.toyworld.vision import (
    IMAGE_CLASSES,
    RISKY_CLASSES,
    ImageClass,
    harm,
    render,
    split_questions,
    swapped_class,
)
from safe_rlhf.toyworld.vision import image_class as class_named
from safe_rlhf.toyworld.world import NEUTRAL_WORDS, REFUSAL_KEYWORDS, TOPICS

VISION_FORMAT_VERSION = 1
"""Bump when the vision world or this generator changes what a seed produces (the cache is then regenerated)."""
PROMPT_SOURCE = "toyworld-vision"

VISION_FILES: dict[str, str] = {
    "vision_sft": "sft.jsonl",
    "vision_preference": "beavertails_v.jsonl",
    "vision_preference_test": "beavertails_v_test.jsonl",
    "vision_spa": "spa_vl/train-00000.parquet",
    "vision_feedback": "vlfeedback.jsonl",
    "vision_qa": "qa.jsonl",
    "vision_qa_test": "qa_test.jsonl",
    "vision_prompts": "prompts.jsonl",
    "vision_eval_prompts": "eval_prompts.jsonl",
    "vision_eval_swapped": "eval_prompts_swapped.jsonl",
}
"""Dataset name -> file (relative to the generated folder)."""

_TOPIC_SEVERITY = {topic.name: 1 + index % 3 for index, topic in enumerate(TOPICS)}


def image_severity(image_class: ImageClass) -> int:
    """BeaverTails-V's ``image_severity`` of a picture of ``image_class`` (0 benign, 1-3 risky)."""
    return _TOPIC_SEVERITY[image_class.request.topic] if image_class.striped else 0


def category(image_class: ImageClass) -> str:
    """A BeaverTails-V-style snake-case category: the topic's first harm category (``none`` for a benign picture)."""
    if not image_class.striped:
        return "none"
    topic = next(t for t in TOPICS if t.name == image_class.request.topic)
    return topic.harm_words[-1].categories[0].lower().replace(" ", "_")


class _Pool:
    """Rendered pictures of every class, saved once under ``images/<name>/``; records name them by relative path.

    Records share pictures (as image-question datasets do: several questions per image), which keeps the world a few
    thousand small files; the held-out pools are separate renderings, so evaluation shows new pictures.
    """

    def __init__(self, root: Path, name: str, per_class: int, rng: random.Random) -> None:
        self.root = root
        self.paths: dict[str, list[str]] = {}
        for image_class in IMAGE_CLASSES:
            self.paths[image_class.name] = []
            for index in range(per_class):
                relative = Path("images") / name / f"{image_class.name}-{index:03d}.png"
                (root / relative).parent.mkdir(parents=True, exist_ok=True)
                render(image_class, rng).save(root / relative, format="PNG")
                self.paths[image_class.name].append(relative.as_posix())

    def pick(self, image_class: ImageClass, rng: random.Random) -> str:
        """A picture of ``image_class`` (its path relative to the folder)."""
        return rng.choice(self.paths[image_class.name])

    def png(self, relative: str) -> bytes:
        return (self.root / relative).read_bytes()


def _draw(rng: random.Random, risky_fraction: float) -> ImageClass:
    risky = rng.random() < risky_fraction
    return rng.choice([c for c in IMAGE_CLASSES if c.striped == risky])


def _rate(value: float, low: int, high: int) -> int:
    return max(low, min(high, round(value)))


def _faithful(image_class: ImageClass, response: str) -> bool:
    """Every content word of ``response`` belongs to the pictured request (no other topic's words)."""
    allowed = set(image_class.request.answer_words) | set(image_class.request.alternatives)
    return all(w in allowed or w in NEUTRAL_WORDS or w in REFUSAL_KEYWORDS for w in response.split())


def _feedback_ratings(image_class: ImageClass, response: str) -> dict[str, dict[str, str]]:
    helpful = text_helpfulness(image_class.request.task, response)
    severity = harm("do this", image_class.name, response).severity
    helpful_rating = 1 if helpful <= 0 else 2 if helpful < 1 else 3 if helpful < 2 else 4 if helpful < 3.5 else 5
    ethical_rating = {0: 5, 1: 2}.get(severity, 1)
    faithful_rating = 5 if _faithful(image_class, response) else 2
    return {
        "Helpfulness": {"Rating": str(helpful_rating), "Rationale": f"judge helpfulness {helpful:g}"},
        "Ethical Considerations": {"Rating": str(ethical_rating), "Rationale": f"harm severity {severity}"},
        "Visual Faithfulness": {"Rating": str(faithful_rating), "Rationale": "content words of the picture"},
    }


def _mean_rating(completion: Mapping[str, Any]) -> float:
    ratings = [float(entry["Rating"]) for entry in completion["annotations"].values()]
    return sum(ratings) / len(ratings)


def generate_vision(
    out_dir: str | Path,
    seed: int = 0,
    num_sft: int = 2000,
    num_preference: int = 3000,
    num_preference_test: int = 400,
    num_spa: int = 1000,
    num_feedback: int = 600,
    num_qa: int = 2000,
    num_qa_test: int = 400,
    num_prompts: int = 2000,
    eval_per_class: int = 16,
    train_images_per_class: int = 96,
    test_images_per_class: int = 16,
    risky_fraction: float = 0.5,
    length_bias: float = 0.2,
    label_noise: float = 0.05,
) -> dict[str, Path]:
    """Write the multimodal toy world's datasets for ``seed`` into ``out_dir``; return their paths by name.

    Each file has its own random stream (responses and images alike), so the same arguments give identical files.
    """
    if not 0.0 <= risky_fraction <= 1.0:
        raise ValueError(f"risky_fraction must be in [0, 1], got {risky_fraction}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    train_questions, heldout_questions = split_questions(seed)
    policy = BasePolicy()
    train_images = _Pool(out, "train", train_images_per_class, random.Random(f"toyworld-vision:{seed}:train-images"))
    test_images = _Pool(out, "test", test_images_per_class, random.Random(f"toyworld-vision:{seed}:test-images"))
    eval_images = _Pool(out, "eval", eval_per_class, random.Random(f"toyworld-vision:{seed}:eval-images"))

    def stream(name: str) -> random.Random:
        return random.Random(f"toyworld-vision:{seed}:{name}")

    def base(image_class: ImageClass, question: str, rng: random.Random) -> tuple[str, str]:
        words, label = sample_base_response(question, image_class.request, rng, policy)
        return " ".join(words), label

    # SFT demonstrations: the base policy answers the pictured request.
    rng = stream("sft")
    sft = []
    for _ in range(num_sft):
        image_class, question = _draw(rng, risky_fraction), rng.choice(train_questions)
        response, label = base(image_class, question, rng)
        sft.append({"prompt": question, "response": response, "image": train_images.pick(image_class, rng),
                    "image_class": image_class.name, "response_source": f"{PROMPT_SOURCE}/{label}"})  # fmt: skip
    _write_jsonl(out / VISION_FILES["vision_sft"], sft)

    # BeaverTails-V preference pairs (1-based ids, 'yes'/'no', rates, image_severity).
    def beavertails_v(name: str, count: int, questions: list[str], images: _Pool) -> list[dict[str, Any]]:
        rng = stream(name)
        records = []
        for _ in range(count):
            image_class, question = _draw(rng, risky_fraction), rng.choice(questions)
            pair = sample_pair(question, image_class.request, rng)
            texts = (" ".join(pair[0][0]), " ".join(pair[1][0]))
            labels = label_pair(image_class.request.task, texts, rng, length_bias, label_noise)
            record: dict[str, Any] = {
                "question": question,
                "image": images.pick(image_class, rng),
                "category": category(image_class),
                "image_severity": image_severity(image_class),
            }
            for k in (0, 1):
                record[f"response_{k + 1}"] = texts[k]
            for k in (0, 1):
                record[f"response_{k + 1}_from"] = f"{PROMPT_SOURCE}/{pair[k][1]}"
            record["more_helpful_response_id"] = labels.better + 1
            record["safer_response_id"] = labels.safer + 1
            for k in (0, 1):
                record[f"is_response_{k + 1}_safe"] = "yes" if labels.harms[k].is_safe else "no"
            for k in (0, 1):
                record[f"response_{k + 1}_harmless_rate"] = 2 if labels.harms[k].is_safe else -labels.harms[k].severity
            for k in (0, 1):
                helpful = text_helpfulness(image_class.request.task, texts[k])
                record[f"response_{k + 1}_helpful_rate"] = _rate(helpful, -3, 3)
            record["image_class"] = image_class.name
            records.append(record)
        return records

    _write_jsonl(
        out / VISION_FILES["vision_preference"],
        beavertails_v("preference", num_preference, train_questions, train_images),
    )
    _write_jsonl(
        out / VISION_FILES["vision_preference_test"],
        beavertails_v("preference_test", num_preference_test, heldout_questions, test_images),
    )

    # SPA-VL quadruples, the image embedded as the hub stores it: chosen is the safer, then the more helpful.
    rng = stream("spa")
    spa: dict[str, list[Any]] = {"image": [], "question": [], "chosen": [], "rejected": [], "image_name": []}
    while len(spa["question"]) < num_spa:
        image_class, question = _draw(rng, risky_fraction), rng.choice(train_questions)
        pair = sample_pair(question, image_class.request, rng)
        texts = [" ".join(words) for words, _ in pair]
        severities = [harm(question, image_class.name, t).severity for t in texts]
        scores = [text_helpfulness(image_class.request.task, t) for t in texts]
        if severities[0] != severities[1]:
            chosen = int(severities[1] < severities[0])
        elif scores[0] != scores[1]:
            chosen = int(scores[1] > scores[0])
        else:
            continue  # the annotator has no preference: SPA-VL keeps only ranked pairs
        picture = train_images.pick(image_class, rng)
        name = Path(picture).name
        spa["image"].append({"bytes": train_images.png(picture), "path": name})
        spa["question"].append(question)
        spa["chosen"].append(texts[chosen])
        spa["rejected"].append(texts[1 - chosen])
        spa["image_name"].append(name)
    import pyarrow as pa
    import pyarrow.parquet as pq

    (out / VISION_FILES["vision_spa"]).parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(spa), out / VISION_FILES["vision_spa"])

    # VLFeedback: four completions of the base policy, rated per aspect.
    rng = stream("feedback")
    feedback = []
    models = ("toy-sft-a", "toy-sft-b", "toy-sft-c", "toy-sft-d")
    for index in range(num_feedback):
        image_class, question = _draw(rng, risky_fraction), rng.choice(train_questions)
        completions: list[dict[str, Any]] = []
        while len({_mean_rating(c) for c in completions}) < 2:  # a ranked record: not every mean rating ties
            completions = []
            for model in models:
                response, _ = base(image_class, question, rng)
                ratings = _feedback_ratings(image_class, response)
                completions.append({"model": model, "response": response, "annotations": ratings})
        feedback.append({"id": f"toy-{index:05d}", "prompt": question, "models": list(models),
                         "completions": completions, "img_path": train_images.pick(image_class, rng),
                         "image_class": image_class.name})  # fmt: skip
    _write_jsonl(out / VISION_FILES["vision_feedback"], feedback)

    # Moderation QA in BeaverTails-V's single-response form.
    def qa(name: str, count: int, questions: list[str], images: _Pool) -> list[dict[str, Any]]:
        rng = stream(name)
        records = []
        for _ in range(count):
            image_class, question = _draw(rng, risky_fraction), rng.choice(questions)
            response, _ = base(image_class, question, rng)
            verdict = harm(question, image_class.name, response)
            records.append({"question": question, "image": images.pick(image_class, rng),
                            "category": category(image_class), "image_severity": image_severity(image_class),
                            "response": response, "is_response_safe": "yes" if verdict.is_safe else "no",
                            "severity_level": verdict.severity, "image_class": image_class.name})  # fmt: skip
        return records

    _write_jsonl(out / VISION_FILES["vision_qa"], qa("qa", num_qa, train_questions, train_images))
    _write_jsonl(out / VISION_FILES["vision_qa_test"], qa("qa_test", num_qa_test, heldout_questions, test_images))

    # Prompts: training rollouts, then the held-out set (16 per class) and its image-swap control.
    def prompt_record(question: str, image: str, image_class: ImageClass, source: str) -> dict[str, Any]:
        return {"prompt": question, "image": image, "prompt_source": source, "image_class": image_class.name,
                "topic": image_class.request.topic, "risky": image_class.striped}  # fmt: skip

    rng = stream("prompts")
    prompts = []
    for _ in range(num_prompts):
        image_class, question = _draw(rng, risky_fraction), rng.choice(train_questions)
        prompts.append(prompt_record(question, train_images.pick(image_class, rng), image_class, PROMPT_SOURCE))
    _write_jsonl(out / VISION_FILES["vision_prompts"], prompts)

    rng = stream("eval")
    evaluation, swapped = [], []
    for image_class in IMAGE_CLASSES:
        for picture in eval_images.paths[image_class.name]:  # each held-out picture once
            question = rng.choice(heldout_questions)
            evaluation.append(prompt_record(question, picture, image_class, f"{PROMPT_SOURCE}-heldout"))
            other = class_named(swapped_class(image_class.name, rng))
            record = prompt_record(question, eval_images.pick(other, rng), other, f"{PROMPT_SOURCE}-swapped")
            swapped.append(record | {"original_class": image_class.name})
    _write_jsonl(out / VISION_FILES["vision_eval_prompts"], evaluation)
    _write_jsonl(out / VISION_FILES["vision_eval_swapped"], swapped)

    risky_in_prompts = sum(p["risky"] for p in prompts)
    world = {
        "format_version": VISION_FORMAT_VERSION,
        "seed": seed,
        "files": dict(VISION_FILES),
        "classes": [c.name for c in IMAGE_CLASSES],
        "risky_classes": [c.name for c in RISKY_CLASSES],
        "stats": {
            "sft_unsafe_rate": round(
                sum(not harm(r["prompt"], r["image_class"], r["response"]).is_safe for r in sft) / max(1, len(sft)), 4
            ),
            "prompts_risky_fraction": round(risky_in_prompts / max(1, len(prompts)), 4),
            "spa_pairs": len(spa["question"]),
        },
    }
    (out / "world.json").write_text(json.dumps(world, indent=2) + "\n", encoding="utf-8")  # last: marks it complete
    return {name: out / relative for name, relative in VISION_FILES.items()}


def ensure_vision_generated(cache_dir: Path | None = None, seed: int = 0) -> dict[str, Path]:
    """Generate the default-sized multimodal world for ``seed`` once (``$SAFE_RLHF_CACHE/toyworld-vision-seed{seed}``)
    and return its files by name; concurrent callers are safe."""
    folder = Path(cache_dir) if cache_dir is not None else default_cache_root() / f"toyworld-vision-seed{seed}"
    return ensure_folder(folder, lambda staging: generate_vision(staging, seed=seed), VISION_FORMAT_VERSION)
