"""HelpSteer-style attributes of the toy world, from the ground truth, and the ``steer_*`` files that carry them.

Each attribute is an integer 0-4, as in HelpSteer, and each has a clear meaning here:

===============  ===========================================================================================
attribute        the ground truth it counts
===============  ===========================================================================================
helpfulness      the judge's helpfulness rounded (half to even) and clipped to 0-4 (negative is 0)
correctness      4 minus the off-topic words (another topic's words, echoes, unknown words), at least 0
coherence        4 minus the repeated word uses, at least 0
complexity       the distinct answer words of a benign request (alternatives of a risky one: harm words are not
                 content to reward) the response uses, at most 4
verbosity        the neutral words (connectives, fillers, openers, refusal glue), at most 4: padding
===============  ===========================================================================================

Verbosity never changes helpfulness (neutral words score 0), so a model steered to low verbosity should give the
same content in fewer words: what SteerLM's attribute conditioning promises and what ``launch``'s SteerLM check
measures.

Files (the exact HelpSteer schema ``prompt, response, helpfulness, correctness, coherence, complexity, verbosity``,
read by the ``helpsteer`` reader): ``steer_sft.jsonl`` (4000 training-prompt responses) and ``steer_test.jsonl``
(500 held-out-prompt responses). Each response is a base-policy demonstration (``sample_base_response``) whose
neutral words are replaced by a uniformly drawn number 0-4 of them (``padded``), so verbosity varies independently of
content.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from safe_rlhf.toyworld.judges import helpfulness
from safe_rlhf.toyworld.world import NEUTRAL_WORDS, REFUSAL_KEYWORDS, find_request, padded

ATTRIBUTES = ("helpfulness", "correctness", "coherence", "complexity", "verbosity")
STEER_FILES = ("steer_sft", "steer_test")


def attributes(prompt: str, response: str) -> dict[str, int]:
    """The five 0-4 attributes of ``response`` to ``prompt`` (module docstring)."""
    words = response.lower().split()
    request = find_request(prompt)
    relevant = set(request.answer_words) | set(request.alternatives) if request is not None else set()
    # On a risky request the answer words are harm words: complexity counts only the safe content (alternatives).
    content = set(request.alternatives if request.risky else request.answer_words) if request is not None else set()
    distinct = set(words)
    off_topic = sum(1 for w in distinct if w not in relevant and w not in NEUTRAL_WORDS and w not in REFUSAL_KEYWORDS)
    repeats = len(words) - len(distinct)
    return {
        "helpfulness": max(0, min(4, round(helpfulness(prompt, response)))),
        "correctness": max(0, 4 - off_topic),
        "coherence": max(0, 4 - repeats),
        "complexity": min(4, len(distinct & content)),
        "verbosity": min(4, sum(1 for w in words if w in NEUTRAL_WORDS)),
    }


def with_verbosity(words: list[str], verbosity: int, rng: random.Random) -> list[str]:
    """``words`` with their neutral words replaced by about ``verbosity`` new ones (the grammar caps the length)."""
    content = [w for w in words if w not in NEUTRAL_WORDS]
    if not content:
        return words
    return padded(content, len(content) + verbosity, rng)


def write_steer_files(
    paths: Mapping[str, Path],
    pools: Mapping[str, Mapping[Any, list[str]]],
    stream: Callable[[str], random.Random],
    sizes: Mapping[str, int],
    risky_fraction: float,
) -> dict[str, Any]:
    """Write ``steer_sft`` (training prompts) and ``steer_test`` (held-out prompts); return verbosity counts."""
    from safe_rlhf.toyworld.generate import BasePolicy, _sample_prompt, _write_jsonl, sample_base_response

    stats: dict[str, Any] = {}
    for name in STEER_FILES:
        rng = stream(name)
        records = []
        counts = [0] * 5
        for _ in range(sizes[name]):
            prompt, request = _sample_prompt(pools[name], rng, risky_fraction)
            words, _ = sample_base_response(prompt, request, rng, BasePolicy())
            response = " ".join(with_verbosity(words, rng.randint(0, 4), rng))
            labels = attributes(prompt, response)
            counts[labels["verbosity"]] += 1
            records.append({"prompt": prompt, "response": response, **labels})
        _write_jsonl(paths[name], records)
        stats[name] = {"records": len(records), "verbosity_counts": counts}
    return stats
