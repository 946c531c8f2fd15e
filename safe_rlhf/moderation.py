"""QA moderation: a classifier over (prompt, response) that flags unsafe answers, names their harm categories and
grades their severity (PKU-SafeRLHF's severity levels, BeaverTails' Beaver-Dam style categories).

Use a trained model (``python -m safe_rlhf.train --config-name moderation``) from Python::

    from safe_rlhf.moderation import Moderator
    moderator = Moderator.from_pretrained("runs/moderation/model")
    result = moderator.moderate([("how to break into a bank server", "sure scan then malware")])[0]
    result.flagged, result.severity, result.flagged_categories, result.categories["Cybercrime"]

or from the shell: ``python -m safe_rlhf.moderate --model runs/moderation/model --input qa.jsonl --output out.jsonl``
(:mod:`safe_rlhf.moderate`).

The model is a score model (:mod:`safe_rlhf.score_model`) whose head has ``3 + C`` sigmoid outputs, in the order of
:mod:`safe_rlhf.algorithms.moderation` (flagged, severity >= 2, severity >= 3, then the C categories). Its
``config.json`` records, under ``safe_rlhf``: ``score_type: "moderation"``, ``labels`` (the output names),
``categories``, ``thresholds`` (one probability per output; the flag threshold is chosen on validation data at the
end of training), ``max_length`` and ``template`` (how a pair is put to the model: the tokenizer's chat template with
the prompt as the user turn and the response as the assistant turn, which is how the policies' rollouts look).

Used as the cost model of PPO-Lag, output k's cost is ``logit_k - logit(threshold_k)``, so **cost > 0 means the
output passes its threshold** (the cost-model sign convention): a ``rate`` constraint on output 0 bounds the flagged
rate, on output 2 the severe-harm rate (:func:`moderation_costs`).
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from safe_rlhf.algorithms.moderation import NUM_SEVERITY_OUTPUTS, severity_levels

SEVERITY_LABELS = ("flagged", "severity>=2", "severity>=3")
TEMPLATE = "chat: user turn = prompt, assistant turn = response (the tokenizer's chat template), then EOS"
_CATEGORY_PREFIXES = ("harm:", "harm_id:")


def category_keys(samples: Iterable[Any]) -> list[str]:
    """The harm-category attribute keys (``harm:<name>``, ``harm_id:<n>``) found in attribute samples, sorted."""
    keys = {key for sample in samples for key in sample.attributes if key.startswith(_CATEGORY_PREFIXES)}
    return sorted(keys)


def category_name(key: str) -> str:
    """``harm:Cybercrime`` -> ``Cybercrime``; ``harm_id:3`` stays ``harm_id:3`` (the dataset's index, unnamed)."""
    return key[len("harm:") :] if key.startswith("harm:") else key


def moderation_labels(sample: Any, category_keys: Sequence[str]) -> tuple[list[float], list[bool]]:
    """(targets, known) of one attribute sample for the ``3 + C`` outputs.

    - flagged = not ``is_safe``; unknown without ``is_safe``.
    - severity >= 2 / >= 3 from ``severity_level``; a safe response is 0 on both; an unsafe one without a level
      (BeaverTails) leaves them unknown.
    - a category is known when the sample carries that key, or any key of the same family (``harm:`` flags dicts
      list every category; ``harm_id:`` lists only the flagged ones, so a missing id is 0), or when it is safe."""
    attributes = sample.attributes
    targets, known = (
        [0.0] * (NUM_SEVERITY_OUTPUTS + len(category_keys)),
        [False] * (NUM_SEVERITY_OUTPUTS + len(category_keys)),
    )
    is_safe = attributes.get("is_safe")
    if is_safe is not None:
        targets[0], known[0] = float(is_safe < 0.5), True
    severity = attributes.get("severity_level")
    if severity is not None:
        targets[1], targets[2] = float(severity >= 2), float(severity >= 3)
        known[1] = known[2] = True
    elif is_safe is not None and is_safe >= 0.5:
        known[1] = known[2] = True
    families = {prefix for prefix in _CATEGORY_PREFIXES if any(key.startswith(prefix) for key in attributes)}
    safe = is_safe is not None and is_safe >= 0.5
    for offset, key in enumerate(category_keys):
        index = NUM_SEVERITY_OUTPUTS + offset
        if key in attributes:
            targets[index], known[index] = float(attributes[key] >= 0.5), True
        elif safe or any(key.startswith(prefix) for prefix in families):
            known[index] = True
    return targets, known


def label_tensors(samples: Sequence[Any], category_keys: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """(targets (N, K) float, known (N, K) bool) of attribute samples, K = 3 + len(category_keys)."""
    width = NUM_SEVERITY_OUTPUTS + len(category_keys)
    labels = [moderation_labels(sample, category_keys) for sample in samples]
    if not labels:
        return torch.zeros(0, width), torch.zeros(0, width, dtype=torch.bool)
    targets = torch.tensor([row for row, _ in labels], dtype=torch.float32)
    return targets, torch.tensor([known for _, known in labels], dtype=torch.bool)


def load_labelled_responses(spec: str, on_error: str, seed: int) -> tuple[list[Any], Counter[str], int]:
    """(attribute samples, skip counts, records read) of a dataset spec. A dataset of preference pairs (a reader
    without the attribute kind) gives each labelled response of every pair instead
    (:func:`safe_rlhf.data.labelled_responses`); a mixture must be all of one kind."""
    from safe_rlhf.data import DataError, labelled_responses, load_samples

    try:
        loaded = load_samples(spec, kind="attribute", on_error=on_error, seed=seed)
        return list(loaded.samples), Counter(loaded.stats.skipped), loaded.stats.read
    except DataError as error:
        if error.reason != "unsupported_kind":
            raise
    loaded = load_samples(spec, kind="preference", on_error=on_error, seed=seed)
    samples, counts = labelled_responses(loaded.samples)
    return list(samples), Counter(loaded.stats.skipped) + Counter(counts), loaded.stats.read


def moderation_costs(logits: torch.Tensor, thresholds: Sequence[float]) -> torch.Tensor:  # (B, K) -> (B, K)
    """Logits shifted so that > 0 means "passes its threshold": ``logit_k - log(t_k / (1 - t_k))`` (t clamped to
    [1e-6, 1 - 1e-6], so a threshold of 0 or 1 gives a large finite shift, not an infinite one)."""
    clamped = [min(max(float(t), 1e-6), 1.0 - 1e-6) for t in thresholds]
    shift = torch.tensor([math.log(t / (1.0 - t)) for t in clamped], dtype=logits.dtype, device=logits.device)
    return logits - shift


def is_moderation_model(metadata: dict[str, Any]) -> bool:
    return metadata.get("score_type") == "moderation"


@dataclass(frozen=True)
class ModerationResult:
    """The verdict on one (prompt, response)."""

    flagged: bool
    """Unsafe: the flag probability passed its threshold."""
    flagged_probability: float
    severity: int
    """0 safe, 1 minor, 2 moderate, 3 severe (ordinal outputs read back by ``severity_levels``)."""
    severity_probabilities: dict[str, float]
    """``severity>=2`` and ``severity>=3`` probabilities."""
    categories: dict[str, float]
    """Category name -> probability."""
    flagged_categories: list[str] = field(default_factory=list)
    """The categories at or above their threshold (only when flagged)."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "flagged": self.flagged,
            "flagged_probability": self.flagged_probability,
            "severity": self.severity,
            "severity_probabilities": self.severity_probabilities,
            "categories": self.categories,
            "flagged_categories": self.flagged_categories,
        }


def results_from_probabilities(probabilities: torch.Tensor, metadata: dict[str, Any]) -> list[ModerationResult]:
    """One :class:`ModerationResult` per row of ``probabilities`` (N, K), with the model's thresholds."""
    thresholds = list(metadata["thresholds"])
    categories = list(metadata["categories"])
    levels = severity_levels(probabilities, flag_threshold=thresholds[0], level_threshold=0.5).tolist()
    results = []
    for row, level in zip(probabilities.tolist(), levels):
        flagged = row[0] >= thresholds[0]
        category_probabilities = dict(zip(categories, row[NUM_SEVERITY_OUTPUTS:]))
        passing = [
            name
            for name, p, t in zip(categories, row[NUM_SEVERITY_OUTPUTS:], thresholds[NUM_SEVERITY_OUTPUTS:])
            if flagged and p >= t
        ]
        results.append(
            ModerationResult(
                flagged=flagged,
                flagged_probability=row[0],
                severity=int(level),
                severity_probabilities={"severity>=2": row[1], "severity>=3": row[2]},
                categories=category_probabilities,
                flagged_categories=passing,
            )
        )
    return results


@torch.no_grad()
def moderation_logits(
    model: Any,  # an engine or a bare sequence-classification model
    items: Sequence[Any],  # TokenizedSFT
    pad_token_id: int,
    batch_size: int,
    device: torch.device,
    progress: Any = None,  # called with the number of items done after each batch
    vision: Any = None,  # ImageTokens of a VLM moderation model: each item's image goes with it
) -> torch.Tensor:  # (N, K) float32 on CPU
    """The head's logits at each (prompt + response)'s last real token, batch by batch."""
    from safe_rlhf.data import collate_sft
    from safe_rlhf.engines import image_inputs
    from safe_rlhf.recipes.common import to_device
    from safe_rlhf.score_model import end_scores

    outputs = []
    for start in range(0, len(items), batch_size):
        batch = to_device(collate_sft(list(items[start : start + batch_size]), pad_token_id, vision), device)
        scores = end_scores(model, batch["input_ids"], batch["attention_mask"], **image_inputs(batch))
        outputs.append(scores.float().cpu())
        if progress is not None:
            progress(min(start + batch_size, len(items)))
    if not outputs:
        return torch.zeros(0, 0)
    return torch.cat(outputs)


class Moderator:
    """A trained moderation model, ready to judge (prompt, response) pairs. Load with :meth:`from_pretrained`.

    A vision-language moderation model (Beaver-Guard-V style, trained on image QA such as ``toyworld:vision_qa``)
    judges (prompt, response, image) triples: the image is an :class:`~safe_rlhf.data.images.ImageRef`; ``vision``
    is then its :class:`~safe_rlhf.data.tokenize.ImageTokens`. A text model given an image, or a VLM given none, is a
    one-line ``DataError`` (``image_needs_vision_model`` / ``missing_image``), never a silently ignored picture."""

    def __init__(
        self, model: Any, tokenizer: Any, metadata: dict[str, Any], batch_size: int = 32, vision: Any = None
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.metadata = metadata
        self.batch_size = batch_size
        self.vision = vision
        self.device = next(model.parameters()).device

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        *,
        device: str = "cpu",
        dtype: torch.dtype = torch.float32,
        batch_size: int = 32,
        trust_remote_code: bool = False,
    ) -> Moderator:
        """Load an exported moderation directory (``runs/moderation/model``); one line of error on a bad one."""
        from transformers import AutoTokenizer

        from safe_rlhf.assets import from_pretrained
        from safe_rlhf.score_model import load_score_model, score_metadata

        model = load_score_model(str(path), dtype=dtype, trust_remote_code=trust_remote_code).to(device).eval()
        metadata = score_metadata(model)
        if not is_moderation_model(metadata):
            raise ValueError(
                f"{path} is not a moderation model (its config.json has safe_rlhf.score_type="
                f"{metadata.get('score_type')!r}); train one with --config-name moderation"
            )
        from safe_rlhf.vision_models import image_tokens, is_vision_model, load_processor

        if is_vision_model(str(path)):
            processor = load_processor(str(path), trust_remote_code=trust_remote_code)
            return cls(model, processor.tokenizer, metadata, batch_size=batch_size, vision=image_tokens(processor))
        tokenizer = from_pretrained(AutoTokenizer, str(path), trust_remote_code=trust_remote_code)
        return cls(model, tokenizer, metadata, batch_size=batch_size)

    @property
    def categories(self) -> list[str]:
        return list(self.metadata["categories"])

    @property
    def thresholds(self) -> list[float]:
        return list(self.metadata["thresholds"])

    def tokenize(self, pairs: Sequence[tuple[Any, ...]], origins: Sequence[str] | None = None) -> list[Any]:
        """Each (prompt, response) or (prompt, response, image) as the model saw it in training (cut at the model's
        ``max_length``); ``image`` is an ``ImageRef`` or None (no image). ``origins`` (``"file:line"`` per pair)
        name the pair in an error; by default ``pair:N``, 1-based."""
        from safe_rlhf.data import SFTSample, conversation, tokenize_sft

        max_length = int(self.metadata.get("max_length") or 512)
        items = []
        for index, (prompt, response, *image) in enumerate(pairs):
            images = tuple(i for i in image[:1] if i is not None)
            origin = origins[index] if origins is not None else f"pair:{index + 1}"
            sample = SFTSample(messages=conversation(prompt), response=response or " ", images=images, origin=origin)
            items.append(tokenize_sft(sample, self.tokenizer, max_length, self.vision))
        return items

    def probabilities(self, pairs: Sequence[tuple[Any, ...]], progress: Any = None) -> torch.Tensor:  # (N, K)
        """Sigmoid outputs for every pair: flagged, severity >= 2, severity >= 3, then the categories."""
        if not pairs:
            return torch.zeros(0, len(self.metadata["labels"]))
        logits = moderation_logits(
            self.model, self.tokenize(pairs), self.tokenizer.pad_token_id, self.batch_size, self.device, progress,
            self.vision,
        )  # fmt: skip
        return torch.sigmoid(logits)

    def moderate(self, pairs: Sequence[tuple[Any, ...]], progress: Any = None) -> list[ModerationResult]:
        """The verdict on each (prompt, response) or (prompt, response, image)."""
        return results_from_probabilities(self.probabilities(pairs, progress), self.metadata)


def read_records(path: str | Path) -> list[dict[str, Any]]:
    """The records of a JSON-lines file of ``{"prompt": ..., "response": ...}`` objects (other fields kept); a
    missing file or a bad line raises ValueError naming the file and line."""
    return [record for _, record in read_numbered_records(path)]


def read_numbered_records(path: str | Path) -> list[tuple[int, dict[str, Any]]]:
    """:func:`read_records` with each record's line number (blank lines are skipped, so numbers may jump)."""
    if not Path(path).is_file():
        raise ValueError(f"{path}: no such file")
    records = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}:{number}: not JSON ({error.msg})") from None
            if not isinstance(record, dict):
                raise ValueError(f"{path}:{number}: expected an object with prompt and response")
            for key in ("prompt", "response"):
                if not isinstance(record.get(key), str):
                    raise ValueError(f"{path}:{number}: field {key!r} is missing or not a string")
            records.append((number, record))
    return records
