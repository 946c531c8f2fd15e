"""Moderate (prompt, response) pairs with a trained moderation model, from the shell::

    python -m safe_rlhf.moderate --model runs/moderation/model --input qa.jsonl --output verdicts.jsonl

``--input`` holds one ``{"prompt": ..., "response": ...}`` object per line (other fields are copied through); for a
vision-language moderation model (Beaver-Guard-V style) each line also names its ``"image"``: a path, resolved
against the input file's directory;
each output line adds ``flagged``, ``flagged_probability``, ``severity`` (0-3), ``severity_probabilities``,
``categories`` (name -> probability) and ``flagged_categories``. The same from Python:
``safe_rlhf.moderation.Moderator.from_pretrained(DIR).moderate([(prompt, response), ...])``.

Bad input (a missing file, a line that is not JSON or lacks a string ``prompt`` / ``response``, a directory that is
not a moderation model, a missing or undecodable image, an image for a text model or none for a VLM) stops with
one line naming it and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m safe_rlhf.moderate", description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="an exported moderation model directory")
    parser.add_argument("--input", required=True, help="JSON lines with prompt and response")
    parser.add_argument("--output", required=True, help="where the verdicts go (JSON lines)")
    parser.add_argument("--batch-size", type=_positive_int, default=32, help="pairs per forward pass")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cuda:0")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser.parse_args(argv)


def judged_pairs(numbered: list[tuple[int, dict]], input_path: str) -> list[tuple]:
    """(prompt, response) per (line number, record), or (prompt, response, image) for records with an ``image``
    path; a missing or undecodable image is a ValueError naming the file and line."""
    from safe_rlhf.data.errors import RecordError
    from safe_rlhf.data.images import optional_image

    base_dir = Path(input_path).resolve().parent
    pairs: list[tuple] = []
    for number, record in numbered:
        try:
            image = optional_image(record, "image", base_dir)
        except RecordError as error:
            raise ValueError(f"{input_path}:{number}: field 'image': {error.detail}") from None
        pairs.append((record["prompt"], record["response"], *image))
    return pairs


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from safe_rlhf.config import ConfigError
    from safe_rlhf.moderation import Moderator, read_numbered_records

    try:
        numbered = read_numbered_records(args.input)
        records = [record for _, record in numbered]
        pairs = judged_pairs(numbered, args.input)  # a bad image fails before the weights load
        moderator = Moderator.from_pretrained(args.model, device=args.device, batch_size=args.batch_size)
        # Tokenized up front: a prompt too long for the model's max_length (or an image for a text model, none for
        # a VLM) is one line naming the file and line, not a traceback later.
        moderator.tokenize(pairs, origins=[f"{args.input}:{number}" for number, _ in numbered])
    except (ValueError, OSError, RuntimeError, ConfigError) as error:  # DataError is a ValueError
        first = next((line for line in str(error).splitlines() if line.strip()), type(error).__name__)
        print(f"moderate: {first}", file=sys.stderr)
        return 2
    progress_bar = None
    if not args.no_progress:
        from tqdm import tqdm

        progress_bar = tqdm(total=len(records), unit="pair", file=sys.stderr)
    done = [0]

    def progress(count: int) -> None:
        if progress_bar is not None:
            progress_bar.update(count - done[0])
        done[0] = count

    results = moderator.moderate(pairs, progress=progress)
    if progress_bar is not None:
        progress_bar.close()
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    with open(args.output, "w", encoding="utf-8") as handle:
        for record, result in zip(records, results):
            handle.write(json.dumps({**record, **result.to_dict()}) + "\n")
    flagged = sum(result.flagged for result in results)
    print(f"moderate: {len(results)} pairs, {flagged} flagged; wrote {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
