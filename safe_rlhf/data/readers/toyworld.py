"""``toyworld:NAME``: the synthetic datasets of :mod:`safe_rlhf.toyworld`, generated on first use.

``NAME`` is one of ``sft``, ``preference``, ``preference_test``, ``prompts``, ``eval_prompts``, ``qa``, ``qa_test``,
and the system-message files ``system_sft``, ``system_sft_generic``, ``system_preference``, ``system_prompts``,
``system_eval``, ``system_eval_authority``, and the HelpSteer-style ``steer_sft``, ``steer_test``.
``safe_rlhf.toyworld.ensure_generated()`` (imported lazily) writes the files if needed and returns their paths;
each is then read with the real reader for its schema:

* ``sft`` -> ``sft`` reader (``{prompt, response}``): kinds sft, prompt.
* ``preference`` / ``preference_test`` -> ``pku-safe-rlhf`` reader (the exact PKU-SafeRLHF schema): preference, prompt.
* ``prompts`` / ``eval_prompts`` -> ``prompts`` reader (``{prompt, prompt_source, ...extra -> meta}``): prompt.
* ``qa`` / ``qa_test`` -> ``pku-safe-rlhf-qa`` reader (``{prompt, response, is_safe, severity_level, harm_category}``,
  the PKU-SafeRLHF-QA card form; moderation-classifier data): sft, attribute, prompt.
* ``system_sft`` / ``system_sft_generic`` / ``system_preference`` -> ``multifaceted`` reader (the Multifaceted
  Collection SFT and DPO forms, Janus): sft (and preference for the DPO form), prompt.
* ``system_prompts`` / ``system_eval`` / ``system_eval_authority`` -> ``prompts`` reader with a ``system`` field.
* ``vision_*``: the multimodal world (``safe_rlhf.toyworld.vision_data``), each file in its seed dataset's schema:
  ``vision_preference`` / ``_test`` -> ``beavertails-v``, ``vision_spa`` -> ``spa-vl`` (parquet, embedded images),
  ``vision_feedback`` -> ``vlfeedback``, ``vision_qa`` / ``_test`` -> ``beavertails-v`` (single-response form),
  ``vision_sft`` -> ``sft`` and ``vision_prompts`` / ``vision_eval_prompts`` / ``vision_eval_swapped`` -> ``prompts``
  (with an ``image`` field).
* ``steer_sft`` / ``steer_test`` -> ``helpsteer`` reader (the exact HelpSteer schema; attributes from the ground
  truth, ``steer_data.py``): attribute, sft, prompt.

The split is not consulted: the name picks the file (``preference_test`` and ``qa_test`` are the held-out sets).
"""

from __future__ import annotations

import importlib
from pathlib import Path

from safe_rlhf.data.errors import DataError
from safe_rlhf.data.readers.registry import OpenedSource, Reader, get_reader, register_reader

# toyworld file name -> the reader that parses it
TOYWORLD_FILES: dict[str, str] = {
    "sft": "sft",
    "preference": "pku-safe-rlhf",
    "preference_test": "pku-safe-rlhf",
    "prompts": "prompts",
    "eval_prompts": "prompts",
    "qa": "pku-safe-rlhf-qa",
    "qa_test": "pku-safe-rlhf-qa",
    "system_sft": "multifaceted",
    "system_sft_generic": "multifaceted",
    "system_preference": "multifaceted",
    "system_prompts": "prompts",
    "system_eval": "prompts",
    "system_eval_authority": "prompts",
    "steer_sft": "helpsteer",
    "steer_test": "helpsteer",
    # the multimodal world (safe_rlhf.toyworld.vision_data): every record shows a rendered image
    "vision_sft": "sft",
    "vision_preference": "beavertails-v",
    "vision_preference_test": "beavertails-v",
    "vision_spa": "spa-vl",
    "vision_feedback": "vlfeedback",
    "vision_qa": "beavertails-v",
    "vision_qa_test": "beavertails-v",
    "vision_prompts": "prompts",
    "vision_eval_prompts": "prompts",
    "vision_eval_swapped": "prompts",
}


def _file_name(source: str) -> str:
    name = source.strip().strip("/")
    if name not in TOYWORLD_FILES:
        raise DataError(
            f"toyworld has no dataset {source!r}; choose one of: {', '.join(TOYWORLD_FILES)}", reason="bad_spec"
        )
    return name


# Files in only one of their reader's schemas: the kinds that schema gives (the first is the default).
TOYWORLD_KINDS: dict[str, tuple[str, ...]] = {
    "vision_qa": ("attribute", "sft", "prompt"),  # BeaverTails-V's single-response form
    "vision_qa_test": ("attribute", "sft", "prompt"),
    "vision_preference": ("preference", "prompt"),  # ... and its pairwise form
    "vision_preference_test": ("preference", "prompt"),
}


def _kinds(source: str) -> tuple[str, ...]:
    name = _file_name(source)
    return TOYWORLD_KINDS.get(name, get_reader(TOYWORLD_FILES[name]).kinds)


def generated_paths() -> dict[str, Path]:
    """Generate the toyworld files if needed and return their paths (``safe_rlhf.toyworld.ensure_generated()``)."""
    toyworld = importlib.import_module("safe_rlhf.toyworld")
    return dict(toyworld.ensure_generated())


def generated_vision_paths() -> dict[str, Path]:
    """The multimodal world's files, generated if needed (``vision_data.ensure_vision_generated()``)."""
    vision_data = importlib.import_module("safe_rlhf.toyworld.vision_data")
    return dict(vision_data.ensure_vision_generated())


def _open(reader: Reader, source: str, config: str | None, split: str, kind: str) -> OpenedSource:
    name = _file_name(source)
    if config is not None:
        raise DataError(f"toyworld:{name} takes no %CONFIG (got {config!r})", reason="bad_spec")
    underlying = get_reader(TOYWORLD_FILES[name])
    underlying.parser_for(kind, shown_as=f"toyworld:{name}")  # fail on the kind before generating anything
    if kind not in _kinds(name):
        raise DataError(
            f"dataset 'toyworld:{name}' cannot produce kind {kind!r}; it supports: {', '.join(_kinds(name))}",
            reason="unsupported_kind",
        )
    paths = generated_vision_paths() if name.startswith("vision_") else generated_paths()
    if name not in paths:
        raise DataError(f"safe_rlhf.toyworld.ensure_generated() returned no {name!r} file", reason="not_found")
    return underlying.open(str(paths[name]), None, split, kind)


register_reader(
    Reader(
        "toyworld",
        "synthetic toyworld data: toyworld:" + "|".join(TOYWORLD_FILES),
        {},
        opener=_open,
        source_kinds=_kinds,
    )
)
