"""Preference pairs split into labelled single responses: moderation-classifier data from preference datasets.

A PKU-SafeRLHF pair labels each of its two responses (``is_safe``, ``severity``, ``harm_categories``), so a pair
dataset is also a QA-moderation dataset (PKU-SafeRLHF-QA is this split of PKU-SafeRLHF)::

    >>> from safe_rlhf.data import labelled_responses, load_samples
    >>> pairs = load_samples("toyworld:preference", kind="preference").samples
    >>> samples, counts = labelled_responses(pairs)  # seed 0: 6000 pairs -> 11646 responses
    >>> counts
    Counter({'duplicate': 354})

Each response becomes an :class:`~safe_rlhf.data.types.AttributeSample` with the pair's ``messages`` and the same
attribute names the ``pku-safe-rlhf-qa`` reader produces, so both feed the same classifier:

* ``is_safe``: 1.0 safe / 0.0 unsafe. A response whose ``is_safe`` is unknown but whose severity is known gets
  ``severity == 0`` (as ``parse_qa_attributes`` does); one with neither is skipped.
* ``severity_level``: 0-3, when the pair carries it for that response.
* ``harm:<name>``: only when the severity is known (a pair without severity labels has empty ``harm_categories``,
  which says nothing): 1.0 for the names in ``harm_categories`` and 0.0 for every other name of ``category_names``
  (by default the 19 PKU-SafeRLHF categories, ``safe_rlhf.toyworld.HARM_CATEGORIES``). A flagged name outside
  ``category_names`` is kept (1.0), never dropped, and counted under ``unknown_category``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence

from safe_rlhf.data.types import AttributeSample, Messages, PreferenceSample


def labelled_responses(
    samples: Iterable[PreferenceSample], category_names: Sequence[str] | None = None
) -> tuple[list[AttributeSample], Counter[str]]:
    """Split each pair into its two responses, each with its safety labels (attributes in the module docstring).

    Args:
        samples: preference pairs, e.g. ``load_samples(spec, kind="preference").samples``.
        category_names: the full harm-category set; a response with a severity label gets ``harm:<name>`` for each
            (0.0 unless flagged), in this order. None: the 19 PKU-SafeRLHF categories in the dataset's order.

    Returns:
        ``(responses, counts)``. ``responses``: response 0 then response 1 of each pair, in input order; ``origin``
        is the pair's with ``#response_<i>`` appended. ``counts``: responses left out, by reason:
        ``no_safety_labels`` (neither ``is_safe`` nor ``severity`` known), ``duplicate`` (the same conversation and
        response text as an earlier kept one, from any pair; the first one's labels are kept), and, as a subset of
        ``duplicate``, ``duplicate_label_conflict`` (a duplicate whose labels differ from the kept one's). Also
        ``unknown_category``: kept responses with a flagged name outside ``category_names``.
    """
    if category_names is None:
        # Imported here, not at module level: the toy world (and its file lock) stays out of ``import safe_rlhf.data``.
        from safe_rlhf.toyworld.world import HARM_CATEGORIES

        category_names = HARM_CATEGORIES
    known = frozenset(category_names)
    responses: list[AttributeSample] = []
    kept: dict[tuple[Messages, str], AttributeSample] = {}
    counts: Counter[str] = Counter()
    for sample in samples:
        for index in (0, 1):
            response = sample.responses[index]
            is_safe, severity = sample.is_safe[index], sample.severity[index]
            if is_safe is None and severity is None:
                counts["no_safety_labels"] += 1
                continue
            attributes = {"is_safe": float(is_safe if is_safe is not None else severity == 0)}
            unknown: list[str] = []
            if severity is not None:
                attributes["severity_level"] = float(severity)
                flagged = sample.harm_categories[index]
                for name in category_names:
                    attributes[f"harm:{name}"] = float(name in flagged)
                unknown = sorted(flagged - known)
                for name in unknown:
                    attributes[f"harm:{name}"] = 1.0
            key = (sample.messages, response)
            if key in kept:
                counts["duplicate"] += 1
                counts["duplicate_label_conflict"] += kept[key].attributes != attributes
                continue
            counts["unknown_category"] += bool(unknown)
            origin = f"{sample.origin}#response_{index}" if sample.origin else ""
            kept[key] = AttributeSample(
                messages=sample.messages, response=response, attributes=attributes, origin=origin
            )
            responses.append(kept[key])
    return responses, +counts
