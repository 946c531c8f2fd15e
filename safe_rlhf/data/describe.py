"""``python -m safe_rlhf.data describe SPEC``: what a dataset spec loads to, before training on it.

Examples::

    python -m safe_rlhf.data describe toyworld:preference
    python -m safe_rlhf.data describe pku-safe-rlhf:/data/PKU-SafeRLHF%alpaca-7b@test --on-error skip
    python -m safe_rlhf.data describe hh-rlhf:/data/hh/harmless-base --kind sft --json
    python -m safe_rlhf.data list

Prints records read / kept / skipped per reason (overall and per source), label statistics for the kind (better /
safer id counts, safe / unsafe counts, severity levels, harm categories, attribute means, prompt and response
lengths in words and characters; for image datasets how many samples show an image, files against embedded bytes,
distinct images and their sizes) and one example rendered with the default template. ``--json`` prints one JSON
object with keys ``spec, kind, split, read, kept, skipped, sources, stats, example``.
A DataError prints its one line to stderr and exits with status 2.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import sys
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

from safe_rlhf.data.errors import DataError
from safe_rlhf.data.readers import available_readers, get_reader
from safe_rlhf.data.spec import load_samples, parse_spec
from safe_rlhf.data.tokenize import render_text
from safe_rlhf.data.types import KINDS, AttributeSample, PreferenceSample, PromptSample, Sample, SFTSample

_MAX_META_VALUES = 20
_MAX_EXAMPLE_CHARS = 2000


def default_kind(spec: str) -> str:
    """The first kind (in the first component's order) that every component of ``spec`` can produce."""
    components = parse_spec(spec)
    per_component = [get_reader(c.reader).kinds_for(c.source) for c in components]
    for kind in per_component[0]:
        if all(kind in kinds for kinds in per_component[1:]):
            return kind
    raise DataError(f"the datasets in {spec!r} have no kind in common", reason="unsupported_kind")


def length_stats(values: Iterable[int]) -> dict[str, float]:
    """``{count, min, mean, median, max}`` of a list of lengths (zeros when empty)."""
    numbers = list(values)
    if not numbers:
        return {"count": 0, "min": 0, "mean": 0.0, "median": 0.0, "max": 0}
    return {
        "count": len(numbers),
        "min": min(numbers),
        "mean": round(statistics.fmean(numbers), 2),
        "median": float(statistics.median(numbers)),
        "max": max(numbers),
    }


def _text_lengths(texts: Sequence[str]) -> dict[str, dict[str, float]]:
    return {"words": length_stats(len(t.split()) for t in texts), "chars": length_stats(len(t) for t in texts)}


def _label_key(value: object) -> str:
    return "unknown" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


def _preference_stats(samples: Sequence[PreferenceSample]) -> dict[str, Any]:
    safety = Counter(_label_key(flag) for sample in samples for flag in sample.is_safe)
    pairs: Counter[str] = Counter()
    for sample in samples:
        if None in sample.is_safe:
            pairs["unknown"] += 1
        else:
            pairs[{2: "both_safe", 0: "both_unsafe", 1: "one_safe"}[sum(bool(f) for f in sample.is_safe)]] += 1
    harms = Counter(category for sample in samples for categories in sample.harm_categories for category in categories)
    better_longer = [len(s.better.split()) > len(s.worse.split()) for s in samples]
    return {
        "better_id": dict(sorted(Counter(str(s.better_id) for s in samples).items())),
        "safer_id": dict(sorted(Counter(_label_key(s.safer_id) for s in samples).items())),
        "safer_is_better": sum(s.safer_id == s.better_id for s in samples if s.safer_id is not None),
        "is_safe": {"safe": safety["true"], "unsafe": safety["false"], "unknown": safety["unknown"]},
        "pairs": dict(sorted(pairs.items())),
        "severity": dict(sorted(Counter(_label_key(v) for s in samples for v in s.severity).items())),
        "harm_categories": dict(harms.most_common()),
        "better_longer_fraction": round(sum(better_longer) / len(better_longer), 4) if better_longer else 0.0,
        "response_length": _text_lengths([r for s in samples for r in s.responses]),
    }


def _attribute_stats(samples: Sequence[AttributeSample]) -> dict[str, Any]:
    values: dict[str, list[float]] = {}
    for sample in samples:
        for name, value in sample.attributes.items():
            values.setdefault(name, []).append(value)
    attributes = {
        name: {
            "count": len(v),
            "mean": round(statistics.fmean(v), 4),
            "min": min(v),
            "max": max(v),
        }
        for name, v in sorted(values.items())
    }
    return {"attributes": attributes, "response_length": _text_lengths([s.response for s in samples])}


def _meta_stats(samples: Sequence[PromptSample]) -> dict[str, dict[str, int]]:
    """Value counts of meta fields with few distinct scalar values (e.g. prompt_source, risky, category)."""
    counts: dict[str, Counter[str]] = {}
    for sample in samples:
        for key, value in sample.meta.items():
            if isinstance(value, str | bool | int) and not isinstance(value, float):
                counts.setdefault(key, Counter())[_label_key(value)] += 1
    return {key: dict(c.most_common()) for key, c in sorted(counts.items()) if len(c) <= _MAX_META_VALUES}


def label_stats(samples: Sequence[Sample], kind: str) -> dict[str, Any]:
    """Statistics of the labels and lengths of ``samples`` (all of ``kind``)."""
    stats: dict[str, Any] = {
        "prompt_length": _text_lengths([s.prompt for s in samples]),
        "turns": dict(sorted(Counter(str(len(s.messages)) for s in samples).items())),
        "with_system_message": sum(s.messages[0].role == "system" for s in samples),
    }
    if kind == "preference":
        stats.update(_preference_stats([s for s in samples if isinstance(s, PreferenceSample)]))
    elif kind == "attribute":
        stats.update(_attribute_stats([s for s in samples if isinstance(s, AttributeSample)]))
    elif kind == "sft":
        stats["response_length"] = _text_lengths([s.response for s in samples if isinstance(s, SFTSample)])
    elif kind == "prompt":
        stats["meta"] = _meta_stats([s for s in samples if isinstance(s, PromptSample)])
    images = _image_stats(samples)
    if images is not None:
        stats["images"] = images
    return stats


def _image_stats(samples: Sequence[Sample]) -> dict[str, Any] | None:
    """How many samples show an image, where the images come from and their sizes; None for a text dataset."""
    refs = [ref for sample in samples for ref in sample.images]
    if not refs:
        return None
    distinct = {ref.path if ref.path is not None else hashlib.sha256(ref.data or b"").hexdigest() for ref in refs}
    return {
        "samples_with_images": sum(bool(sample.images) for sample in samples),
        "images": len(refs),
        "files": sum(ref.path is not None for ref in refs),
        "embedded": sum(ref.path is None for ref in refs),
        "distinct": len(distinct),
        "width": length_stats(ref.size[0] for ref in refs),
        "height": length_stats(ref.size[1] for ref in refs),
    }


def render_example(sample: Sample) -> str:
    """One sample rendered with the default template (both responses for a preference pair)."""
    if isinstance(sample, PreferenceSample):
        lines = [render_text(sample.messages)]
        for index, response in enumerate(sample.responses):
            tags = ["better" if index == sample.better_id else "worse"]
            if sample.safer_id is not None:
                tags.append("safer" if index == sample.safer_id else "less safe")
            if sample.is_safe[index] is not None:
                tags.append("safe" if sample.is_safe[index] else "unsafe")
            lines.append(f"  [response {index}: {', '.join(tags)}] {response}")
        text = "\n".join(lines)
    elif isinstance(sample, SFTSample | AttributeSample):
        text = render_text(sample.messages, sample.response)
    else:
        text = render_text(sample.messages)
    return text if len(text) <= _MAX_EXAMPLE_CHARS else text[: _MAX_EXAMPLE_CHARS - 3] + "..."


def describe(
    spec: str, kind: str | None = None, split: str = "train", on_error: str = "raise", seed: int = 0
) -> dict[str, Any]:
    """Load ``spec`` and return the report as a JSON-serialisable dict (the ``--json`` output)."""
    chosen_kind = kind or default_kind(spec)
    result = load_samples(spec, chosen_kind, split=split, on_error=on_error, seed=seed)
    counts = result.stats.to_dict()
    return {
        "spec": spec,
        "kind": chosen_kind,
        "split": split,
        "read": counts["read"],
        "kept": counts["kept"],
        "skipped": counts["skipped"],
        "sources": counts["sources"],
        "stats": label_stats(result.samples, chosen_kind),
        "example": render_example(result.samples[0]) if result.samples else None,
    }


def _format_counts(counts: dict[str, Any]) -> str:
    return ", ".join(f"{key}: {value}" for key, value in counts.items()) or "none"


def _format_lengths(lengths: dict[str, dict[str, float]]) -> str:
    words, chars = lengths["words"], lengths["chars"]
    return (
        f"words min {words['min']} / mean {words['mean']} / median {words['median']} / max {words['max']}; "
        f"chars mean {chars['mean']} / max {chars['max']}"
    )


def format_report(report: dict[str, Any]) -> str:
    """The human-readable form of :func:`describe`'s report."""
    skipped_total = sum(report["skipped"].values())
    lines = [
        f"spec: {report['spec']}",
        f"kind: {report['kind']}   split: {report['split']}",
        f"records read: {report['read']}   kept: {report['kept']}   skipped: {skipped_total}"
        + (f" ({_format_counts(report['skipped'])})" if skipped_total else ""),
    ]
    if len(report["sources"]) > 1 or any(s["kept"] != s["valid"] for s in report["sources"]):
        for source in report["sources"]:
            lines.append(
                f"  {source['spec']}: read {source['read']}, valid {source['valid']}, kept {source['kept']}"
                + (f", skipped {_format_counts(source['skipped'])}" if source["skipped"] else "")
            )
    lines.append("label statistics:")
    for key, value in report["stats"].items():
        if isinstance(value, dict) and set(value) == {"words", "chars"}:
            lines.append(f"  {key}: {_format_lengths(value)}")
        elif key == "attributes":
            for name, summary in value.items():
                lines.append(
                    f"  attribute {name}: mean {summary['mean']} (min {summary['min']}, max {summary['max']}, "
                    f"n {summary['count']})"
                )
        elif key == "meta":
            for name, counts in value.items():
                lines.append(f"  meta {name}: {_format_counts(counts)}")
        elif key == "images":
            width, height = value["width"], value["height"]
            lines.append(
                f"  images: {value['samples_with_images']} samples show {value['images']} ({value['files']} files, "
                f"{value['embedded']} embedded, {value['distinct']} distinct); width min {width['min']} / "
                f"median {width['median']} / max {width['max']}; height min {height['min']} / "
                f"median {height['median']} / max {height['max']}"
            )
        elif isinstance(value, dict):
            lines.append(f"  {key}: {_format_counts(value)}")
        else:
            lines.append(f"  {key}: {value}")
    if report["example"] is not None:
        lines.append("example (default template):")
        lines.extend(f"  {line}" for line in report["example"].splitlines())
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m safe_rlhf.data", description="Inspect dataset specs.")
    commands = parser.add_subparsers(dest="command", required=True)
    describe_cmd = commands.add_parser("describe", help="load a spec and print counts, label statistics, an example")
    describe_cmd.add_argument("spec", help="dataset spec, e.g. pku-safe-rlhf:/data/pku*0.3+toyworld:preference")
    describe_cmd.add_argument("--kind", choices=KINDS, default=None, help="sample kind (default: the dataset's first)")
    describe_cmd.add_argument("--split", default="train", help="split to read (default: train)")
    describe_cmd.add_argument("--on-error", choices=("raise", "skip"), default="raise", help="bad records: raise/skip")
    describe_cmd.add_argument("--seed", type=int, default=0, help="seed for proportion sampling")
    describe_cmd.add_argument("--json", action="store_true", help="print one JSON object")
    commands.add_parser("list", help="list the registered dataset readers and the kinds they produce")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status (2 on a DataError)."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "list":
            for name in available_readers():
                reader = get_reader(name)
                kinds = ", ".join(reader.kinds) or "depends on the source"
                print(f"{name:32s} {kinds:32s} {reader.description}")
            return 0
        report = describe(args.spec, kind=args.kind, split=args.split, on_error=args.on_error, seed=args.seed)
    except DataError as error:
        print(str(error), file=sys.stderr)
        return 2
    print(json.dumps(report, indent=2, sort_keys=False) if args.json else format_report(report))
    return 0
