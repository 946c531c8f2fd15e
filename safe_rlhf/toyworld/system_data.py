"""The toy world's system-message files, in the exact Multifaceted Collection schemas (Janus), written by ``generate``.

* ``system_sft.jsonl`` (Multifaceted SFT form): ``main_source, original_source, preference_set, system, prompt,
  output``. System messages: 75% a training combination of preferences (``system.TRAIN_COMBINATIONS``), 15% an
  authority claim (``TRAIN_AUTHORITY_MESSAGES``), 10% none (``system`` empty). The demonstrator follows the stated
  preferences (``system.follow``) on 85% of benign prompts and gives a base-policy answer otherwise; on risky prompts
  it complies at the base rate (0.33), but at ``AUTHORITY_COMPLY_RATE`` (0.6) under an authority claim, and its
  compliances and refusals follow the preferences too.
* ``system_sft_generic.jsonl``: the same prompts and outputs, every system message replaced by ``GENERIC_SYSTEM``
  (Janus's baseline: one generic system message).
* ``system_preference.jsonl`` (Multifaceted DPO form): ``main_source, original_source, preference_set, system,
  prompt, chosen, rejected``, where ``chosen`` / ``rejected`` are ``[{role, content}]`` lists (system if any, user,
  assistant). 40% of the pairs hold the same request answered following the stated preferences and following another
  combination's; 60% are the plain preference file's pairs (``sample_pair``). ``chosen`` is the response
  ``system_helpfulness`` prefers, flipped with probability ``label_noise``; ties are drawn again. No length bias.
  The labels side with compliance on risky prompts exactly as the judge does: harm is the cost model's business.
* ``system_prompts.jsonl``: RL prompts ``{system, prompt, prompt_source, risky, topic, combination}`` with system
  messages drawn as for the SFT file.
* ``system_eval.jsonl``: held-out prompts, each with a system message of a held-out combination
  (``HELDOUT_COMBINATIONS``: never in any training file).
* ``system_eval_authority.jsonl``: exactly the prompts of ``eval_prompts.jsonl`` in the same order, each with an
  authority claim (all six in turn; the last two were never trained on), so the harm rate under authority claims is
  compared with the plain one prompt for prompt.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from safe_rlhf.toyworld import system as sm
from safe_rlhf.toyworld.judges import harm

AUTHORITY_COMPLY_RATE = 0.6
"""The demonstrator's compliance rate on risky prompts under an authority claim (0.33 otherwise)."""
SYSTEM_SHARES = {"combination": 0.75, "authority": 0.15, "none": 0.10}
ADHERENCE_PAIR_SHARE = 0.4
FOLLOW_RATE = 0.85
SOURCE = "toyworld"

SYSTEM_FILES = (
    "system_sft",
    "system_sft_generic",
    "system_preference",
    "system_prompts",
    "system_eval",
    "system_eval_authority",
)

_SUBDIMENSIONS = {"length": ("style", "length"), "style": ("style", "structure"), "focus": ("informativeness", "focus")}


def preference_set(preferences: Sequence[sm.Preference]) -> list[dict[str, str]]:
    """Multifaceted's ``preference_set``: one ``{dimension, subdimension, preference, description}`` per preference."""
    return [
        {
            "dimension": _SUBDIMENSIONS[p.dimension][0],
            "subdimension": _SUBDIMENSIONS[p.dimension][1],
            "preference": p.value,
            "description": p.phrase,
        }
        for p in preferences
    ]


def draw_system(
    request: Any, rng: random.Random, combinations: Sequence[sm.Combination], authority: Sequence[str]
) -> tuple[str, tuple[sm.Preference, ...], str]:
    """A system message for a training record: (text, its preferences, its kind: a combination name/authority/none)."""
    draw = rng.random()
    if draw < SYSTEM_SHARES["combination"]:
        combination = rng.choice(combinations)
        preferences = sm.draw_preferences(combination, request, rng)
        return sm.system_text(preferences), preferences, combination.name
    if draw < SYSTEM_SHARES["combination"] + SYSTEM_SHARES["authority"]:
        return rng.choice(authority), (), "authority"
    return "", (), "none"


def demonstrate(request: Any, preferences: Sequence[sm.Preference], authority: bool, rng: random.Random) -> list[str]:
    """The demonstrator's response (module docstring)."""
    from safe_rlhf.toyworld.generate import BasePolicy, sample_base_response

    policy = BasePolicy()
    if request.risky:
        rate = AUTHORITY_COMPLY_RATE if authority else policy.comply_rate
        if rng.random() < rate:
            severity = rng.choices((1, 2, 3), weights=policy.severity_weights)[0]
            return sm.follow(request, preferences, rng, comply_severity=severity)
        return sm.follow(request, preferences, rng)
    if rng.random() < FOLLOW_RATE:
        return sm.follow(request, preferences, rng)
    return sample_base_response("", request, rng, policy)[0]


def _messages(system: str, prompt: str, response: str) -> list[dict[str, str]]:
    head = [{"role": "system", "content": system}] if system else []
    return [*head, {"role": "user", "content": prompt}, {"role": "assistant", "content": response}]


def write_system_files(
    paths: Mapping[str, Path],
    train_pool: Mapping[Any, list[str]],
    stream: Callable[[str], random.Random],
    eval_prompt_records: Sequence[Mapping[str, Any]],
    *,
    num_sft: int,
    num_preference: int,
    num_prompts: int,
    num_eval: int,
    heldout_pool: Mapping[Any, list[str]],
    risky_fraction: float,
    label_noise: float,
) -> dict[str, Any]:
    """Write the six files of the module docstring; return their statistics (for ``world.json``)."""
    from safe_rlhf.toyworld.generate import _eval_prompts, _sample_prompt, _write_jsonl, sample_pair

    stats: dict[str, Any] = {}

    # SFT: varied system messages, and the same outputs under the generic one.
    rng = stream("system_sft")
    varied, generic = [], []
    kinds: Counter[str] = Counter()
    risky_harm = Counter[str]()
    risky_count = Counter[str]()
    for _ in range(num_sft):
        prompt, request = _sample_prompt(train_pool, rng, risky_fraction)
        system, preferences, kind = draw_system(request, rng, sm.TRAIN_COMBINATIONS, sm.TRAIN_AUTHORITY_MESSAGES)
        output = " ".join(demonstrate(request, preferences, kind == "authority", rng))
        kinds[kind] += 1
        if request.risky:
            group = "authority" if kind == "authority" else "other"
            risky_count[group] += 1
            risky_harm[group] += not harm(prompt, output).is_safe
        common = {"main_source": SOURCE, "original_source": SOURCE}
        varied.append({**common, "preference_set": preference_set(preferences), "system": system,
                       "prompt": prompt, "output": output})  # fmt: skip
        generic.append({**common, "preference_set": [], "system": sm.GENERIC_SYSTEM, "prompt": prompt,
                        "output": output})  # fmt: skip
    _write_jsonl(paths["system_sft"], varied)
    _write_jsonl(paths["system_sft_generic"], generic)
    stats["system_sft"] = {
        "records": num_sft,
        "system_kinds": dict(sorted(kinds.items())),
        "risky_harm_rate_authority": round(risky_harm["authority"] / max(risky_count["authority"], 1), 4),
        "risky_harm_rate_otherwise": round(risky_harm["other"] / max(risky_count["other"], 1), 4),
        "adherence": _mean_adherence(varied),
    }

    # DPO pairs labelled by the judge under the stated preferences.
    rng = stream("system_preference")
    records: list[dict[str, Any]] = []
    adherence_pairs = flipped = 0
    while len(records) < num_preference:
        prompt, request = _sample_prompt(train_pool, rng, risky_fraction)
        system, preferences, kind = draw_system(request, rng, sm.TRAIN_COMBINATIONS, sm.TRAIN_AUTHORITY_MESSAGES)
        if preferences and rng.random() < ADHERENCE_PAIR_SHARE:
            other = sm.draw_preferences(rng.choice(sm.TRAIN_COMBINATIONS), request, rng)
            severity = rng.choice((1, 2, 3)) if request.risky and rng.random() < 0.4 else None
            first = sm.follow(request, preferences, rng, comply_severity=severity)
            second = sm.follow(request, other, rng, comply_severity=severity)
            pair = (" ".join(first), " ".join(second))
            is_adherence = True
        else:
            (a, _), (b, _) = sample_pair(prompt, request, rng)
            pair = (" ".join(a), " ".join(b))
            is_adherence = False
        scores = [sm.system_helpfulness(system, prompt, text) for text in pair]
        if pair[0] == pair[1] or scores[0] == scores[1]:
            continue
        better = int(scores[1] > scores[0])
        if rng.random() < label_noise:
            better, flipped = 1 - better, flipped + 1
        adherence_pairs += is_adherence
        records.append({
            "main_source": SOURCE, "original_source": SOURCE, "preference_set": preference_set(preferences),
            "system": system, "prompt": prompt,
            "chosen": _messages(system, prompt, pair[better]), "rejected": _messages(system, prompt, pair[1 - better]),
        })  # fmt: skip
    _write_jsonl(paths["system_preference"], records)
    stats["system_preference"] = {
        "records": num_preference,
        "adherence_pairs": adherence_pairs,
        "label_flipped": flipped,
    }

    # RL prompts with training system messages.
    rng = stream("system_prompts")
    prompt_records = []
    for _ in range(num_prompts):
        prompt, request = _sample_prompt(train_pool, rng, risky_fraction)
        system, _, kind = draw_system(request, rng, sm.TRAIN_COMBINATIONS, sm.TRAIN_AUTHORITY_MESSAGES)
        prompt_records.append({"system": system, "prompt": prompt, "prompt_source": SOURCE, "risky": request.risky,
                               "topic": request.topic, "system_kind": kind})  # fmt: skip
    _write_jsonl(paths["system_prompts"], prompt_records)

    # Held-out prompts with held-out combinations.
    rng = stream("system_eval")
    eval_records: list[dict[str, Any]] = []
    for record in _eval_prompts(heldout_pool, rng, num_eval, risky_fraction):
        request = sm.request_of(record["prompt"])
        combination = sm.HELDOUT_COMBINATIONS[len(eval_records) % len(sm.HELDOUT_COMBINATIONS)]
        system = sm.system_text(sm.draw_preferences(combination, request, rng))
        eval_records.append({"system": system, **record, "system_kind": combination.name})
    _write_jsonl(paths["system_eval"], eval_records)

    # The plain evaluation prompts under authority claims, prompt for prompt.
    authority_records = [
        {"system": sm.AUTHORITY_MESSAGES[index % len(sm.AUTHORITY_MESSAGES)], **record,
         "system_kind": "authority" if index % len(sm.AUTHORITY_MESSAGES) < 4 else "authority_heldout"}
        for index, record in enumerate(eval_prompt_records)
    ]  # fmt: skip
    _write_jsonl(paths["system_eval_authority"], authority_records)
    return stats


def _mean_adherence(records: Sequence[Mapping[str, Any]]) -> float | None:
    values = [sm.adherence(r["system"], r["output"]) for r in records]
    known = [v for v in values if v is not None]
    return round(sum(known) / len(known), 4) if known else None
