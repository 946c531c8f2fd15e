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
}


def _file_name(source: str) -> str:
    name = source.strip().strip("/")
    if name not in TOYWORLD_FILES:
        raise DataError(
            f"toyworld has no dataset {source!r}; choose one of: {', '.join(TOYWORLD_FILES)}", reason="bad_spec"
        )
    return name


def _kinds(source: str) -> tuple[str, ...]:
    return get_reader(TOYWORLD_FILES[_file_name(source)]).kinds


def generated_paths() -> dict[str, Path]:
    """Generate the toyworld files if needed and return their paths (``safe_rlhf.toyworld.ensure_generated()``)."""
    toyworld = importlib.import_module("safe_rlhf.toyworld")
    return dict(toyworld.ensure_generated())


def _open(reader: Reader, source: str, config: str | None, split: str, kind: str) -> OpenedSource:
    name = _file_name(source)
    if config is not None:
        raise DataError(f"toyworld:{name} takes no %CONFIG (got {config!r})", reason="bad_spec")
    underlying = get_reader(TOYWORLD_FILES[name])
    underlying.parser_for(kind, shown_as=f"toyworld:{name}")  # fail on the kind before generating anything
    paths = generated_paths()
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
