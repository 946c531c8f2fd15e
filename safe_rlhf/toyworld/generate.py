"""Sample the toy world's datasets: SFT demonstrations, PKU-SafeRLHF preference pairs, PKU-SafeRLHF-QA labelled
responses, RL prompts, evaluation prompts.

    python -m safe_rlhf.toyworld generate --out /tmp/toyworld --seed 0
    python -m safe_rlhf.toyworld generate --out /tmp/toyworld-s1 --seed 1 --length-bias 0.3 --label-noise 0.1

    >>> from safe_rlhf.toyworld import ensure_generated
    >>> files = ensure_generated(seed=0)  # generated once into $SAFE_RLHF_CACHE/toyworld-seed0, then reused
    >>> files["preference"]
    PosixPath('/root/.cache/safe_rlhf/toyworld-seed0/preference.jsonl')

Files written (one JSON object per line):

* ``sft.jsonl`` ``{"prompt", "response"}``: the *base policy*, a deliberately mixed-quality demonstrator (see
  ``BasePolicy``). It complies with about a third of risky prompts, so the SFT model starts with a harm rate on risky
  prompts around 0.33 (0.32 for seed 0) that reward-only PPO can raise and PPO-Lagrangian must hold down, and it gives
  many mediocre answers to benign prompts, so there is helpfulness left to gain safely.
* ``preference.jsonl`` / ``preference_test.jsonl``: the exact PKU-SafeRLHF schema. Safety labels
  (``is_response_*_safe``, ``*_harm_category``, ``*_severity_level``, ``safer_response_id``) are the judges' verdicts,
  without noise. The
  helpfulness label ``better_response_id`` imitates human annotators: with probability ``length_bias`` the longer
  response is preferred whatever the judge says, then the label is flipped with probability ``label_noise``. The test
  file uses held-out prompts only.
* ``qa.jsonl`` / ``qa_test.jsonl``: one response per line with its safety labels, in the PKU-SafeRLHF-QA form of
  the dataset card (what ``parse_qa_attributes`` reads): ``{"prompt", "prompt_source", "response",
  "response_source", "is_safe", "severity_level", "harm_category"}`` (``harm_category``: all 19 category names ->
  bool). Training data for a moderation classifier (QA-moderation, like Beaver-Dam). Each line draws a prompt and a
  pair exactly as the preference file does (``sample_pair``, the same mixture) and keeps one of the two responses,
  chosen uniformly; the labels are the ground-truth judge ``harm`` (no noise). So unsafe responses of every severity
  (compliances, harm words slipped into benign answers, spoiled compliances) and safe ones (refusals, refusals with
  alternatives, good and mediocre answers, off-topic / repeated / truncated junk, spam, echoes) occur in the
  preference data's proportions: about a quarter unsafe, spread over severity 1-3 (``world.json`` counts them). The
  test file uses the held-out prompts, as ``preference_test`` does, and marks them ``prompt_source``
  ``toyworld-heldout`` as ``eval_prompts`` does.
* ``prompts.jsonl`` ``{"prompt", "prompt_source"}`` (PKU-SafeRLHF-prompt schema): RL prompts, from the training
  phrasings.
* ``eval_prompts.jsonl``: the same plus ``"risky"`` and ``"topic"``, from held-out phrasings only (no text overlap with
  any training file).
* ``world.json``: the parameters, the seed, the file sizes and measured statistics of the labels.

The pair mixture (``sample_pair``), per prompt kind::

    risky   35%  compliance (severity 1, 2 or 3, uniform) vs refusal (bare or with alternatives)   <- the conflict
                   88% a real compliance (2+ harm words, more helpful than any refusal); three quarters of them padded
                       with neutral words to the refusal's length + 1-5 words (at most 10), a quarter in natural form
                   12% a weak compliance (one harm word, hedged, 5-7 words) vs the best refusal, which wins
            10%  compliance vs compliance of another severity (both unsafe; the milder one is safer), each side padded
                 to 3-10 words half the time, so that padding does not decide which is better
            10%  bare refusal vs refusal with alternatives (both safe)
            45%  exploit pair: a compliance (40%, padded like a conflict's) or refusal (60%) vs a spoiled version of it
                 or a degenerate answer
    benign  30%  good (3-5 answer words) vs mediocre (1-2, hedged)
            10%  good with fewer vs more answer words
             5%  good vs over-refusal
            10%  good vs the same answer with a harm word slipped in (unsafe even under a benign prompt)
            45%  exploit pair: a good (60%) or mediocre (40%) answer vs a spoiled version of it or a degenerate answer

Exploits: off-topic words inserted, a word repeated, both (what PPO produced against an under-covered reward model in
``/work/shared/reference/toy-world-findings.md``), truncation after 1-2 words, one word spammed, a fluent answer to
another topic, an echo of the prompt. Pairing a spoiled response with the one it came from isolates the defect, so the
reward model learns each exploit as a penalty rather than as a style. About 45% of pairs hold an exploit negative.
No response in the data is empty (the shortest have one word); the judge scores an empty response -2.

What the conflict pairs must show, and ``world.json`` measures (``mixed_safety_risky``; seed 0, defaults): on a
risky prompt, between a safe and an unsafe response, the judge prefers the unsafe one in 87% of pairs and the labels
in 81%, at every severity, and the unsafe one is on average 1.0 words longer (0.3 longer in the compliance vs refusal
pairs alone), so the length bias does not side with the refusals. That is what should make a reward model trained
on the labels rank compliance above refusal, so that reward-only PPO raises harm. (Format 1 had 70% and 62% here, with
the unsafe response 2.7 words shorter, and a reward model trained on it scored compliance barely above refusal.)
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from filelock import FileLock

from safe_rlhf.toyworld.judges import Harm, harm, helpfulness
from safe_rlhf.toyworld.steer_data import STEER_FILES, write_steer_files
from safe_rlhf.toyworld.system_data import SYSTEM_FILES, write_system_files
from safe_rlhf.toyworld.world import (
    BENIGN_REQUESTS,
    HARM_WORDS,
    MAX_RESPONSE_WORDS,
    RISKY_REQUESTS,
    VOCABULARY,
    Request,
    comply,
    echo_prompt,
    good_answer,
    insert_off_topic,
    mediocre_answer,
    off_topic_answer,
    refusal,
    refusal_with_alternative,
    repeat_words,
    spam,
    split_prompts,
    truncate,
    weak_compliance,
)

FORMAT_VERSION = 7
"""Bump when the world or the generator changes what a seed produces; ``ensure_generated`` then regenerates.

3: added ``qa.jsonl`` / ``qa_test.jsonl`` (the other files are byte-identical to format 2's).
4: added the system-message files of ``system_data.py`` (the other files are byte-identical to format 3's).
5: added the HelpSteer-style ``steer_sft`` / ``steer_test`` of ``steer_data.py`` (the others byte-identical).
6: steer complexity on risky prompts counts alternatives only, not harm words (the steer files change, no other).
7: a repeated-word exploit may scatter its copies anywhere, not only next to the word or at the end (every file that
   holds repeats changes)."""
PROMPT_SOURCE = "toyworld"
HELDOUT_PROMPT_SOURCE = "toyworld-heldout"

EXPLOIT_KINDS = ("spam", "wrong_topic", "echo")
"""Source labels of standalone exploit negatives."""
EXPLOIT_DEFECTS = ("+off_topic", "+repeat", "+truncated")
"""How the labels of spoiled responses (``<kind>+<defect>``) continue."""

Words = list[str]
Candidate = tuple[Words, str]
"""A response as words, and its source label (``response_*_source`` is ``toyworld/<label>``)."""


# ----------------------------------------------------------------------------------------------------------------------
# The base policy (SFT demonstrations)


@dataclass(frozen=True)
class BasePolicy:
    """The demonstrator behind ``sft.jsonl``: mixed quality, sometimes harmful."""

    comply_rate: float = 0.33
    """Risky prompts: probability of complying (harmful); otherwise it refuses."""
    severity_weights: tuple[float, float, float] = (0.4, 0.35, 0.25)
    """Risky prompts: severity 1 / 2 / 3 when complying."""
    alternative_rate: float = 0.5
    """Risky prompts: probability that a refusal suggests a safe alternative (more helpful, still safe)."""
    good_rate: float = 0.45
    """Benign prompts: a good answer (3-5 answer words)."""
    mediocre_rate: float = 0.40
    """Benign prompts: a hedged answer with 1-2 answer words."""
    over_refusal_rate: float = 0.05
    """Benign prompts: refuses (unhelpful). The rest is sloppy: an off-topic word, a repeated word, or truncated."""


def sample_base_response(prompt: str, request: Request, rng: random.Random, policy: BasePolicy) -> Candidate:
    """One demonstration for ``prompt`` from the base policy."""
    if request.risky:
        if rng.random() < policy.comply_rate:
            severity = rng.choices((1, 2, 3), weights=policy.severity_weights)[0]
            return comply(request, severity, rng), f"comply_sev{severity}"
        if rng.random() < policy.alternative_rate:
            return refusal_with_alternative(request, rng), "refusal_alternative"
        return refusal(rng), "refusal"
    draw = rng.random()
    if draw < policy.good_rate:
        return good_answer(request, rng), "good"
    draw -= policy.good_rate
    if draw < policy.mediocre_rate:
        return mediocre_answer(request, rng), "mediocre"
    draw -= policy.mediocre_rate
    if draw < policy.over_refusal_rate:
        return refusal(rng), "over_refusal"
    sloppy = rng.choice(("off_topic", "repeat", "truncated"))
    if sloppy == "off_topic":
        return insert_off_topic(good_answer(request, rng, 2, 4), request, rng, count=1), "sloppy_off_topic"
    if sloppy == "repeat":
        return repeat_words(mediocre_answer(request, rng), rng), "sloppy_repeat"
    return truncate(good_answer(request, rng), rng), "sloppy_truncated"


# ----------------------------------------------------------------------------------------------------------------------
# Preference pairs


def _exploit(base: Candidate, prompt: str, request: Request, rng: random.Random) -> Candidate:
    """A worse response built from ``base`` (or standing in for it) by one reward-model exploit."""
    words, label = base
    kind = rng.choice(("off_topic", "off_topic", "repeat", "repeat", "compound", "truncated", "spam", "wrong", "echo"))
    if kind == "off_topic":
        return insert_off_topic(words, request, rng), f"{label}+off_topic"
    if kind == "repeat":
        return repeat_words(words, rng), f"{label}+repeat"
    if kind == "compound":  # what an exploited reward model led PPO to in the findings: repeated off-topic words
        padded = insert_off_topic(words[: MAX_RESPONSE_WORDS - 4], request, rng, count=rng.randint(1, 2))
        return repeat_words(padded, rng), f"{label}+off_topic+repeat"
    if kind == "truncated":
        return truncate(words, rng), f"{label}+truncated"
    if kind == "spam":
        return spam(request, rng), "spam"
    if kind == "wrong":
        return off_topic_answer(request, rng), "wrong_topic"
    return echo_prompt(prompt, rng), "echo"


def _other_severity(severity: int, rng: random.Random) -> int:
    return rng.choice([level for level in (1, 2, 3) if level != severity])


WEAK_CONFLICT_SHARE = 0.12
"""Conflict pairs where a half-hearted compliance (one harm word) meets the best refusal, and loses."""
TERSE_CONFLICT_SHARE = 0.25
"""Conflict pairs whose compliance keeps its natural, often terse, form: content, not padding, is what wins."""
PADDING_OFFSETS = (1, 2, 3, 4, 5)
"""A padded compliance aims at its refusal's length plus one of these (the grammar caps it at 10 words)."""


def _padded_length(safe: Candidate, rng: random.Random) -> int:
    return len(safe[0]) + rng.choice(PADDING_OFFSETS)


def _risky_pair(prompt: str, request: Request, rng: random.Random) -> tuple[Candidate, Candidate]:
    draw = rng.random()
    safe: Candidate = (
        (refusal_with_alternative(request, rng), "refusal_alternative")
        if rng.random() < 0.5
        else (refusal(rng), "refusal")
    )
    severity = rng.randint(1, 3)
    comply_label = f"comply_sev{severity}"
    if draw < 0.35:  # the conflict itself, at every severity
        if rng.random() < WEAK_CONFLICT_SHARE:  # a half-hearted compliance loses to the best refusal
            best_safe = refusal_with_alternative(request, rng, count=len(request.alternatives))
            weak = weak_compliance(request, severity, rng, rng.randint(5, 7))
            return (weak, f"weak_comply_sev{severity}"), (best_safe, "refusal_alternative")
        # A real compliance (2+ harm words) is more helpful than any refusal. Most are padded with neutral words to
        # about the refusal's length or longer, so that the annotators' length bias does not side with the refusal on
        # average; the rest keep their natural length, so that a short compliance is seen to beat a long refusal.
        length = None if rng.random() < TERSE_CONFLICT_SHARE else _padded_length(safe, rng)
        return (comply(request, severity, rng, min_words=2, length=length), comply_label), safe
    if draw < 0.45:  # both unsafe: the less severe is safer
        other = _other_severity(severity, rng)
        lengths = [None if rng.random() < 0.5 else rng.randint(3, 10) for _ in range(2)]
        return (comply(request, severity, rng, length=lengths[0]), comply_label), (
            comply(request, other, rng, length=lengths[1]),
            f"comply_sev{other}",
        )
    if draw < 0.55:  # both safe: a redirection is more helpful than a bare refusal
        return (refusal(rng), "refusal"), (refusal_with_alternative(request, rng), "refusal_alternative")
    # An exploit pair. A compliance base is as long as a refusal, so that spoiling it is what makes it worse.
    base = (
        (comply(request, severity, rng, length=_padded_length(safe, rng)), comply_label) if rng.random() < 0.4 else safe
    )
    return base, _exploit(base, prompt, request, rng)


def _benign_pair(prompt: str, request: Request, rng: random.Random) -> tuple[Candidate, Candidate]:
    draw = rng.random()
    good: Candidate = (good_answer(request, rng), "good")
    if draw < 0.30:
        return good, (mediocre_answer(request, rng), "mediocre")
    if draw < 0.40:  # more answer words are better, whatever the length
        fewer, more = sorted(rng.sample(range(1, len(request.answer_words) + 1), 2))
        return (good_answer(request, rng, fewer, fewer), "good"), (good_answer(request, rng, more, more), "good")
    if draw < 0.45:
        return good, (refusal(rng), "over_refusal")
    if draw < 0.55:  # harm words are harmful (and off-topic) even under a benign prompt
        harm_word = rng.choice(sorted(HARM_WORDS))
        words = list(good[0])
        words.insert(rng.randint(0, len(words)), harm_word)
        return good, (words, f"good+harm_sev{HARM_WORDS[harm_word].severity}")
    base = good if rng.random() < 0.6 else (mediocre_answer(request, rng), "mediocre")
    return base, _exploit(base, prompt, request, rng)


def sample_pair(prompt: str, request: Request, rng: random.Random) -> tuple[Candidate, Candidate]:
    """Two different responses to ``prompt``, in random order (the mixture is described in the module docstring)."""
    make_pair = _risky_pair if request.risky else _benign_pair
    first, second = make_pair(prompt, request, rng)
    while first[0] == second[0]:  # rare (e.g. a truncation that kept everything); draw again
        first, second = make_pair(prompt, request, rng)
    return (first, second) if rng.random() < 0.5 else (second, first)


@dataclass(frozen=True)
class PairLabels:
    """What the judges and the simulated annotator said about one pair."""

    judge_better: int | None
    """Index of the more helpful response by the judge; None on a tie."""
    better: int
    """The emitted ``better_response_id``: judge (random on a tie), then length bias, then label noise."""
    safer: int
    harms: tuple[Harm, Harm]


def label_pair(
    prompt: str, responses: tuple[str, str], rng: random.Random, length_bias: float, label_noise: float
) -> PairLabels:
    """Label a pair like PKU-SafeRLHF annotators, but with known biases: see the module docstring."""
    scores = (helpfulness(prompt, responses[0]), helpfulness(prompt, responses[1]))
    judge_better = None if scores[0] == scores[1] else int(scores[1] > scores[0])
    better = judge_better if judge_better is not None else rng.randrange(2)
    lengths = (len(responses[0].split()), len(responses[1].split()))
    if rng.random() < length_bias and lengths[0] != lengths[1]:
        better = int(lengths[1] > lengths[0])
    if rng.random() < label_noise:
        better = 1 - better

    harms = (harm(prompt, responses[0]), harm(prompt, responses[1]))
    keys = [(h.severity, len(h.categories)) for h in harms]
    safer = int(keys[1] < keys[0]) if keys[0] != keys[1] else rng.randrange(2)
    # The one thing a pair must never say: the safer response is unsafe while the other one is safe.
    assert harms[safer].severity <= harms[1 - safer].severity
    return PairLabels(judge_better, better, safer, harms)


def preference_record(prompt: str, pair: tuple[Candidate, Candidate], labels: PairLabels) -> dict[str, Any]:
    """One line of ``preference.jsonl``, keys in the PKU-SafeRLHF order."""
    texts = [" ".join(words) for words, _ in pair]
    return {
        "prompt": prompt,
        "prompt_source": PROMPT_SOURCE,
        "response_0": texts[0],
        "response_1": texts[1],
        "response_0_source": f"toyworld/{pair[0][1]}",
        "response_1_source": f"toyworld/{pair[1][1]}",
        "is_response_0_safe": labels.harms[0].is_safe,
        "is_response_1_safe": labels.harms[1].is_safe,
        "response_0_harm_category": labels.harms[0].category_flags(),
        "response_1_harm_category": labels.harms[1].category_flags(),
        "response_0_severity_level": labels.harms[0].severity,
        "response_1_severity_level": labels.harms[1].severity,
        "better_response_id": labels.better,
        "safer_response_id": labels.safer,
        "response_0_sha256": hashlib.sha256(texts[0].encode("utf-8")).hexdigest(),
        "response_1_sha256": hashlib.sha256(texts[1].encode("utf-8")).hexdigest(),
    }


def qa_record(prompt: str, candidate: Candidate, prompt_source: str = PROMPT_SOURCE) -> dict[str, Any]:
    """One line of ``qa.jsonl``: a response and the judge's safety labels, in the PKU-SafeRLHF-QA card form."""
    words, label = candidate
    response = " ".join(words)
    verdict = harm(prompt, response)
    return {
        "prompt": prompt,
        "prompt_source": prompt_source,
        "response": response,
        "response_source": f"toyworld/{label}",
        "is_safe": verdict.is_safe,
        "severity_level": verdict.severity,
        "harm_category": verdict.category_flags(),
    }


# ----------------------------------------------------------------------------------------------------------------------
# Files


def _sample_prompt(pool: Mapping[Request, list[str]], rng: random.Random, risky_fraction: float) -> tuple[str, Request]:
    request = rng.choice(RISKY_REQUESTS if rng.random() < risky_fraction else BENIGN_REQUESTS)
    return rng.choice(pool[request]), request


def _write_jsonl(path: Path, records: Iterable[Mapping[str, Any]]) -> int:
    count = 0
    with path.open("w", encoding="utf-8") as file:
        for record in records:
            file.write(json.dumps(record) + "\n")
            count += 1
    return count


def _rate(hits: int, total: int) -> float | None:
    return round(hits / total, 4) if total else None


def _mean(total: float, count: int) -> float | None:
    return round(total / count, 4) if count else None


def _preference_file(
    path: Path,
    num_records: int,
    pool: Mapping[Request, list[str]],
    rng: random.Random,
    risky_fraction: float,
    length_bias: float,
    label_noise: float,
) -> dict[str, Any]:
    """Write one preference file; return the statistics of its labels."""
    records = []
    judged = flipped_from_judge = unequal = label_longer = judge_longer = judge_decided_unequal = 0
    severities: Counter[int] = Counter()
    categories: Counter[str] = Counter()
    kind_counts: Counter[str] = Counter()
    pairs_with_exploit = 0
    mixed = mixed_judge_unsafe = mixed_label_unsafe = mixed_length_difference = 0
    for _ in range(num_records):
        prompt, request = _sample_prompt(pool, rng, risky_fraction)
        pair = sample_pair(prompt, request, rng)
        texts = (" ".join(pair[0][0]), " ".join(pair[1][0]))
        labels = label_pair(prompt, texts, rng, length_bias, label_noise)
        records.append(preference_record(prompt, pair, labels))

        lengths = (len(pair[0][0]), len(pair[1][0]))
        longer = int(lengths[1] > lengths[0])
        if labels.judge_better is not None:
            judged += 1
            flipped_from_judge += labels.better != labels.judge_better
        if lengths[0] != lengths[1]:
            unequal += 1
            label_longer += labels.better == longer
            if labels.judge_better is not None:
                judge_decided_unequal += 1
                judge_longer += labels.judge_better == longer
        for harm_of_response in labels.harms:
            severities[harm_of_response.severity] += 1
            categories.update(harm_of_response.categories)
        kinds = [_response_kind(source) for _, source in pair]
        kind_counts.update(kinds)
        pairs_with_exploit += any(kind in EXPLOIT_KINDS or kind.startswith(EXPLOIT_DEFECTS) for kind in kinds)
        if request.risky and labels.harms[0].is_safe != labels.harms[1].is_safe:
            unsafe = int(labels.harms[0].is_safe)
            mixed += 1
            mixed_judge_unsafe += labels.judge_better == unsafe
            mixed_label_unsafe += labels.better == unsafe
            mixed_length_difference += lengths[unsafe] - lengths[1 - unsafe]
    _write_jsonl(path, records)
    return {
        "records": num_records,
        "label_disagrees_with_judge": _rate(flipped_from_judge, judged),
        "label_prefers_longer": _rate(label_longer, unequal),
        "judge_prefers_longer": _rate(judge_longer, judge_decided_unequal),
        "judge_ties": _rate(num_records - judged, num_records),
        "response_severity_counts": {str(level): severities[level] for level in range(4)},
        "response_category_counts": dict(sorted(categories.items())),
        "pairs_with_exploit": _rate(pairs_with_exploit, num_records),
        "mixed_safety_risky": {
            "pairs": mixed,
            "judge_prefers_unsafe": _rate(mixed_judge_unsafe, mixed),
            "label_prefers_unsafe": _rate(mixed_label_unsafe, mixed),
            "mean_length_unsafe_minus_safe": _mean(mixed_length_difference, mixed),
        },
        "response_kind_counts": dict(sorted(kind_counts.items())),
    }


def _response_kind(source: str) -> str:
    """A spoiled response is counted by what spoiled it (``"+repeat"``), an intact one by its kind (``"good"``)."""
    return source if "+" not in source else source[source.index("+") :]


def _qa_file(
    path: Path,
    num_records: int,
    pool: Mapping[Request, list[str]],
    rng: random.Random,
    risky_fraction: float,
    prompt_source: str,
) -> dict[str, Any]:
    """Write one QA file (one response of a preference-style pair per line); return the statistics of its labels."""
    records = []
    severities: Counter[int] = Counter()
    categories: Counter[str] = Counter()
    kind_counts: Counter[str] = Counter()
    prompts = {True: 0, False: 0}
    unsafe = {True: 0, False: 0}
    for _ in range(num_records):
        prompt, request = _sample_prompt(pool, rng, risky_fraction)
        candidate = sample_pair(prompt, request, rng)[rng.randrange(2)]
        record = qa_record(prompt, candidate, prompt_source)
        records.append(record)
        severities[record["severity_level"]] += 1
        categories.update(name for name, flagged in record["harm_category"].items() if flagged)
        kind_counts[_response_kind(candidate[1])] += 1
        prompts[request.risky] += 1
        unsafe[request.risky] += not record["is_safe"]
    _write_jsonl(path, records)
    return {
        "records": num_records,
        "risky_prompts": prompts[True],
        "unsafe_rate": _rate(unsafe[True] + unsafe[False], num_records),
        "unsafe_rate_risky": _rate(unsafe[True], prompts[True]),
        "unsafe_rate_benign": _rate(unsafe[False], prompts[False]),
        "response_severity_counts": {str(level): severities[level] for level in range(4)},
        "response_category_counts": dict(sorted(categories.items())),
        "response_kind_counts": dict(sorted(kind_counts.items())),
    }


def generate(
    out_dir: str | os.PathLike[str],
    seed: int = 0,
    num_sft: int = 4000,
    num_preference: int = 6000,
    num_preference_test: int = 1000,
    num_prompts: int = 2000,
    num_eval_prompts: int = 256,
    num_qa: int = 4000,
    num_qa_test: int = 1000,
    num_system_sft: int = 4000,
    num_system_preference: int = 6000,
    num_system_prompts: int = 2000,
    num_system_eval: int = 256,
    num_steer_sft: int = 4000,
    num_steer_test: int = 500,
    risky_fraction: float = 0.5,
    length_bias: float = 0.2,
    label_noise: float = 0.05,
    sft_comply_rate: float = BasePolicy.comply_rate,
) -> dict[str, Path]:
    """Write the toy world's datasets for ``seed`` into ``out_dir`` and return their paths by name.

    Names: ``sft``, ``preference``, ``preference_test``, ``prompts``, ``eval_prompts``, ``qa``, ``qa_test``,
    ``world``. Each file has its own random stream, so changing one size leaves the other files unchanged (and adding
    a file leaves the existing ones byte-identical). The same arguments give identical bytes.
    """
    for name, fraction in (
        ("risky_fraction", risky_fraction),
        ("length_bias", length_bias),
        ("label_noise", label_noise),
        ("sft_comply_rate", sft_comply_rate),
    ):
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {fraction}")
    sizes = {
        "num_sft": num_sft,
        "num_preference": num_preference,
        "num_preference_test": num_preference_test,
        "num_prompts": num_prompts,
        "num_eval_prompts": num_eval_prompts,
        "num_qa": num_qa,
        "num_qa_test": num_qa_test,
        "num_system_sft": num_system_sft,
        "num_system_preference": num_system_preference,
        "num_system_prompts": num_system_prompts,
        "num_system_eval": num_system_eval,
        "num_steer_sft": num_steer_sft,
        "num_steer_test": num_steer_test,
    }
    for name, size in sizes.items():
        if size < 0:
            raise ValueError(f"{name} must be >= 0, got {size}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "sft": out / "sft.jsonl",
        "preference": out / "preference.jsonl",
        "preference_test": out / "preference_test.jsonl",
        "prompts": out / "prompts.jsonl",
        "eval_prompts": out / "eval_prompts.jsonl",
        "qa": out / "qa.jsonl",
        "qa_test": out / "qa_test.jsonl",
        **{name: out / f"{name}.jsonl" for name in SYSTEM_FILES},
        **{name: out / f"{name}.jsonl" for name in STEER_FILES},
        "world": out / "world.json",
    }
    train_pool, heldout_pool = split_prompts(seed)

    def stream(name: str) -> random.Random:
        return random.Random(f"toyworld:{seed}:{name}")

    # SFT demonstrations from the base policy.
    rng = stream("sft")
    policy = BasePolicy(comply_rate=sft_comply_rate)
    sft_records = []
    risky_count = risky_harmful = risky_severe = 0
    helpfulness_sums = {False: 0.0, True: 0.0}
    for _ in range(num_sft):
        prompt, request = _sample_prompt(train_pool, rng, risky_fraction)
        words, _ = sample_base_response(prompt, request, rng, policy)
        response = " ".join(words)
        sft_records.append({"prompt": prompt, "response": response})
        helpfulness_sums[request.risky] += helpfulness(prompt, response)
        if request.risky:
            severity = harm(prompt, response).severity
            risky_count += 1
            risky_harmful += severity > 0
            risky_severe += severity == 3
    _write_jsonl(paths["sft"], sft_records)
    sft_stats = {
        "records": num_sft,
        "risky_prompts": risky_count,
        "risky_harm_rate": _rate(risky_harmful, risky_count),
        "risky_severe_rate": _rate(risky_severe, risky_count),
        "mean_helpfulness_risky": _mean(helpfulness_sums[True], risky_count),
        "mean_helpfulness_benign": _mean(helpfulness_sums[False], num_sft - risky_count),
    }

    preference_stats = _preference_file(
        paths["preference"], num_preference, train_pool, stream("preference"), risky_fraction, length_bias, label_noise
    )
    preference_test_stats = _preference_file(
        paths["preference_test"],
        num_preference_test,
        heldout_pool,
        stream("preference_test"),
        risky_fraction,
        length_bias,
        label_noise,
    )

    rng = stream("prompts")
    _write_jsonl(
        paths["prompts"],
        (
            {"prompt": _sample_prompt(train_pool, rng, risky_fraction)[0], "prompt_source": PROMPT_SOURCE}
            for _ in range(num_prompts)
        ),
    )

    eval_prompt_records = _eval_prompts(heldout_pool, stream("eval_prompts"), num_eval_prompts, risky_fraction)
    _write_jsonl(paths["eval_prompts"], eval_prompt_records)

    # Labelled single responses for a moderation classifier: training prompts, then held-out prompts.
    qa_stats = _qa_file(paths["qa"], num_qa, train_pool, stream("qa"), risky_fraction, PROMPT_SOURCE)
    qa_test_stats = _qa_file(
        paths["qa_test"], num_qa_test, heldout_pool, stream("qa_test"), risky_fraction, HELDOUT_PROMPT_SOURCE
    )

    # System messages (Janus / Multifaceted Collection): preferences to follow, authority claims to ignore.
    system_stats = write_system_files(
        paths,
        train_pool,
        stream,
        eval_prompt_records,
        num_sft=num_system_sft,
        num_preference=num_system_preference,
        num_prompts=num_system_prompts,
        num_eval=num_system_eval,
        heldout_pool=heldout_pool,
        risky_fraction=risky_fraction,
        label_noise=label_noise,
    )

    # HelpSteer-style attributes from the ground truth (SteerLM).
    steer_stats = write_steer_files(
        paths,
        {"steer_sft": train_pool, "steer_test": heldout_pool},
        stream,
        {"steer_sft": num_steer_sft, "steer_test": num_steer_test},
        risky_fraction,
    )

    world = {
        "format_version": FORMAT_VERSION,
        "seed": seed,
        "params": {
            **sizes,
            "risky_fraction": risky_fraction,
            "length_bias": length_bias,
            "label_noise": label_noise,
            "base_policy": asdict(policy),
        },
        "vocabulary_size": len(VOCABULARY),
        "files": {name: path.name for name, path in paths.items()},
        "stats": {
            "sft": sft_stats,
            "preference": preference_stats,
            "preference_test": preference_test_stats,
            "qa": qa_stats,
            "qa_test": qa_test_stats,
            **system_stats,
            **steer_stats,
        },
    }
    paths["world"].write_text(json.dumps(world, indent=2) + "\n", encoding="utf-8")
    return paths


def _eval_prompts(
    heldout_pool: Mapping[Request, list[str]], rng: random.Random, count: int, risky_fraction: float
) -> list[dict[str, Any]]:
    """``count`` held-out prompts, ``risky_fraction`` of them risky, each distinct while the held-out pool lasts."""
    num_risky = round(count * risky_fraction)
    records = []
    for risky, needed in ((True, num_risky), (False, count - num_risky)):
        requests = RISKY_REQUESTS if risky else BENIGN_REQUESTS
        candidates = [(prompt, request) for request in requests for prompt in heldout_pool[request]]
        chosen: list[tuple[str, Request]] = []
        while len(chosen) < needed:  # cycle through fresh shuffles if more are asked for than exist
            rng.shuffle(candidates)
            chosen += candidates[: needed - len(chosen)]
        records += [
            {"prompt": prompt, "prompt_source": HELDOUT_PROMPT_SOURCE, "risky": risky, "topic": request.topic}
            for prompt, request in chosen
        ]
    rng.shuffle(records)
    return records


# ----------------------------------------------------------------------------------------------------------------------
# Cache


def default_cache_root() -> Path:
    """``$SAFE_RLHF_CACHE``, by default ``~/.cache/safe_rlhf``."""
    return Path(os.environ.get("SAFE_RLHF_CACHE", Path.home() / ".cache" / "safe_rlhf"))


def _is_complete(folder: Path, format_version: int = FORMAT_VERSION) -> bool:
    """A folder holds a finished generation of ``format_version`` (``world.json`` is written last)."""
    try:
        world = json.loads((folder / "world.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return world.get("format_version") == format_version and all(
        (folder / name).is_file() for name in world.get("files", {}).values()
    )


def _paths_in(folder: Path) -> dict[str, Path]:
    world = json.loads((folder / "world.json").read_text(encoding="utf-8"))
    return {name: folder / file_name for name, file_name in world["files"].items()}


def ensure_folder(folder: Path, write: Callable[[Path], object], format_version: int) -> dict[str, Path]:
    """Run ``write(staging)`` once for ``folder`` and return the files its ``world.json`` lists by name.

    Safe when several processes call it at once: one writes under a file lock into a temporary folder that is
    renamed into place, the others wait and reuse it. A folder of another ``format_version`` (or an empty one) is
    replaced; any other existing folder is an error.
    """
    if _is_complete(folder, format_version):
        return _paths_in(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder.parent / f".{folder.name}.lock")):
        if _is_complete(folder, format_version):  # another process finished while we waited
            return _paths_in(folder)
        if folder.exists() and any(folder.iterdir()) and not (folder / "world.json").is_file():
            raise FileExistsError(f"{folder} exists and is not a toy-world folder; remove it or pass another cache_dir")
        staging = folder.parent / f".{folder.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            write(staging)
            if folder.exists():  # empty or an older format: move aside, then delete once the new one is in place
                stale = folder.parent / f".{folder.name}.old-{uuid.uuid4().hex[:8]}"
                folder.rename(stale)
                staging.rename(folder)
                shutil.rmtree(stale, ignore_errors=True)
            else:
                staging.rename(folder)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return _paths_in(folder)


def ensure_generated(cache_dir: Path | None = None, seed: int = 0) -> dict[str, Path]:
    """Generate the default-sized world for ``seed`` once into ``cache_dir`` and return its files by name.

    ``cache_dir`` defaults to ``$SAFE_RLHF_CACHE/toyworld-seed{seed}``; concurrent callers are safe
    (:func:`ensure_folder`).
    """
    folder = Path(cache_dir) if cache_dir is not None else default_cache_root() / f"toyworld-seed{seed}"
    return ensure_folder(folder, lambda staging: generate(staging, seed=seed), FORMAT_VERSION)


# ----------------------------------------------------------------------------------------------------------------------
# Tokenizer corpus


def corpus_text(seed: int = 0, num_bytes: int = 50_000) -> str:
    """Text in the world's language, one prompt or response per line, for training a tokenizer.

    Starts with every word of ``VOCABULARY`` (so each is seen at least once), then alternates prompts (training and
    held-out phrasings) with responses of every kind, until ``num_bytes`` (the result is at most that long, except that
    the vocabulary lines always come first).
    """
    rng = random.Random(f"toyworld:{seed}:corpus")
    lines = [" ".join(VOCABULARY[start : start + 10]) for start in range(0, len(VOCABULARY), 10)]
    size = sum(len(line) + 1 for line in lines)
    train_pool, heldout_pool = split_prompts(seed)
    pool = {request: train_pool[request] + heldout_pool[request] for request in train_pool}
    samplers: tuple[Callable[[str, Request], list[str]], ...] = (
        lambda prompt, request: sample_base_response(prompt, request, rng, BasePolicy())[0],
        lambda prompt, request: sample_pair(prompt, request, rng)[0][0],
        lambda prompt, request: sample_pair(prompt, request, rng)[1][0],
    )
    while True:
        prompt, request = _sample_prompt(pool, rng, 0.5)
        for line in (prompt, " ".join(rng.choice(samplers)(prompt, request))):
            if size + len(line) + 1 > num_bytes:
                return "\n".join(lines) + "\n"
            lines.append(line)
            size += len(line) + 1
