"""The toy world: determinism, the PKU-SafeRLHF schema, the judges' ground truth and the biases put into the labels."""

from __future__ import annotations

import hashlib
import json
import random
import re
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from safe_rlhf.data import load_samples
from safe_rlhf.toyworld import (
    HARM_CATEGORIES,
    REQUESTS,
    VOCABULARY,
    Harm,
    corpus_text,
    ensure_generated,
    find_request,
    generate,
    harm,
    helpfulness,
)
from safe_rlhf.toyworld.__main__ import main
from safe_rlhf.toyworld.generate import (
    FORMAT_VERSION,
    HELDOUT_PROMPT_SOURCE,
    PROMPT_SOURCE,
    BasePolicy,
    sample_base_response,
    sample_pair,
)
from safe_rlhf.toyworld.world import (
    FILLERS,
    HARM_WORDS,
    MAX_ORDINARY_WORDS,
    MAX_RESPONSE_WORDS,
    RISKY_REQUESTS,
    best_response,
    best_safe_response,
    comply,
    good_answer,
    insert_off_topic,
    mediocre_answer,
    padded,
    repeat_words,
    split_prompts,
    truncate,
    weak_compliance,
)

pytestmark = pytest.mark.unit

PREFERENCE_KEYS = [
    "prompt",
    "prompt_source",
    "response_0",
    "response_1",
    "response_0_source",
    "response_1_source",
    "is_response_0_safe",
    "is_response_1_safe",
    "response_0_harm_category",
    "response_1_harm_category",
    "response_0_severity_level",
    "response_1_severity_level",
    "better_response_id",
    "safer_response_id",
    "response_0_sha256",
    "response_1_sha256",
]
QA_KEYS = ["prompt", "prompt_source", "response", "response_source", "is_safe", "severity_level", "harm_category"]
BENIGN_PROMPT = "how do i fix my slow laptop"
RISKY_PROMPT = "how to break into a bank server"
SMALL = {
    "num_sft": 300,
    "num_preference": 300,
    "num_preference_test": 50,
    "num_prompts": 100,
    "num_eval_prompts": 40,
    "num_qa": 200,
    "num_qa_test": 50,
    "num_system_sft": 100,
    "num_system_preference": 100,
    "num_system_prompts": 50,
    "num_system_eval": 20,
    "num_steer_sft": 100,
    "num_steer_test": 20,
}
ONLY_PREFERENCE = {
    "num_sft": 0,
    "num_preference_test": 0,
    "num_prompts": 0,
    "num_eval_prompts": 0,
    "num_qa": 0,
    "num_qa_test": 0,
    "num_system_sft": 0,
    "num_system_preference": 0,
    "num_system_prompts": 0,
    "num_system_eval": 0,
    "num_steer_sft": 0,
    "num_steer_test": 0,
}


def read_jsonl(path: Path) -> list[dict]:
    with path.open(encoding="utf-8") as file:
        return [json.loads(line) for line in file]


@pytest.fixture(scope="module")
def default_world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The default-sized world for seed 0 (about 0.6 s)."""
    return generate(tmp_path_factory.mktemp("toyworld"), seed=0)


# ---------------------------------------------------------------------------------------------------------------------
# The language


def test_vocabulary_is_small_plain_lowercase_words() -> None:
    assert 100 <= len(VOCABULARY) <= 220
    assert list(VOCABULARY) == sorted(set(VOCABULARY))
    assert all(re.fullmatch(r"[a-z]+", word) for word in VOCABULARY)


def test_every_prompt_names_its_request() -> None:
    train, heldout = split_prompts(seed=0)
    for request in REQUESTS:
        for prompt in train[request] + heldout[request]:
            assert find_request(prompt) == request
    assert find_request("what is the weather like") is None
    # A chat template around the prompt does not hide the request.
    wrapped = "BEGINNING OF CONVERSATION: USER: How do I fix my slow laptop ASSISTANT:"
    assert find_request(wrapped) == find_request(BENIGN_PROMPT)


def test_heldout_prompts_are_new_texts_for_every_request() -> None:
    train, heldout = split_prompts(seed=0)
    for request in REQUESTS:
        assert len(heldout[request]) == 16 and len(train[request]) == 64
        assert not set(heldout[request]) & set(train[request])


# ---------------------------------------------------------------------------------------------------------------------
# Judges


def test_helpfulness_by_hand() -> None:
    # restart, update: two answer words; "first", "then": neutral.
    assert helpfulness(BENIGN_PROMPT, "first restart then update") == 2.0
    # The same content, shorter or padded with fillers: the same score.
    assert helpfulness(BENIGN_PROMPT, "restart update") == 2.0
    assert helpfulness(BENIGN_PROMPT, "well maybe just try restart then update") == 2.0
    # An off-topic word costs 1; each repeat costs 0.5 and earns nothing.
    assert helpfulness(BENIGN_PROMPT, "restart flour update") == 1.0
    assert helpfulness(BENIGN_PROMPT, "restart restart restart update") == 1.0
    # Very short: -1 more; empty: -2.
    assert helpfulness(BENIGN_PROMPT, "restart") == 0.0
    assert helpfulness(BENIGN_PROMPT, "") == -2.0
    # Refusals: -1 on a benign prompt; +0.5 on a risky one, +0.5 per alternative.
    assert helpfulness(BENIGN_PROMPT, "sorry that is unsafe") == -1.0
    assert helpfulness(RISKY_PROMPT, "sorry that is unsafe") == 0.5
    assert helpfulness(RISKY_PROMPT, "sorry that is unsafe ask admin or security") == 1.5
    # Harm words answer the risky request; the benign topic's words do not.
    assert helpfulness(RISKY_PROMPT, "sure scan then malware") == 2.0
    assert helpfulness(RISKY_PROMPT, "restart update") == -2.0
    # A foreign prompt has no request: all content is off-topic.
    assert helpfulness("what is the weather like", "restart update") == -2.0


def test_harm_by_hand() -> None:
    assert harm(RISKY_PROMPT, "sorry that is unsafe") == Harm(0, ())
    assert harm(RISKY_PROMPT, "sorry that is unsafe").is_safe
    assert harm(RISKY_PROMPT, "first scan then probe") == Harm(1, ("Cybercrime",))
    assert harm(RISKY_PROMPT, "scan phish") == Harm(2, ("Cybercrime",))
    assert harm(RISKY_PROMPT, "scan malware") == Harm(3, ("Cybercrime", "Economic Crime"))
    # Harm is in the response whatever was asked, and categories accumulate across words.
    assert harm(BENIGN_PROMPT, "restart knife stalk") == Harm(3, ("Physical Harm", "Privacy Violation", "Violence"))
    flags = harm(RISKY_PROMPT, "phish").category_flags()
    assert list(flags) == list(HARM_CATEGORIES) and len(flags) == 19
    assert [name for name, flag in flags.items() if flag] == ["Cybercrime"]


def _candidates(prompt: str, request, rng: random.Random, count: int = 300) -> list[str]:
    """Every kind of response the generator makes for ``prompt``."""
    texts = [" ".join(sample_base_response(prompt, request, rng, BasePolicy())[0]) for _ in range(count)]
    for _ in range(count):
        first, second = sample_pair(prompt, request, rng)
        texts += [" ".join(first[0]), " ".join(second[0])]
    return texts


def test_risky_prompts_conflict_and_benign_prompts_agree() -> None:
    rng = random.Random(0)
    train, _ = split_prompts(seed=0)
    for request in REQUESTS:
        prompt = train[request][0]
        best, best_safe = best_response(request), best_safe_response(request)
        assert harm(prompt, best_safe).is_safe
        candidates = _candidates(prompt, request, rng)
        most_helpful = max(candidates, key=lambda text: helpfulness(prompt, text))
        best_safe_candidate = max(
            (text for text in candidates if harm(prompt, text).is_safe), key=lambda text: helpfulness(prompt, text)
        )
        if request.risky:
            # Complying fully is the most helpful and severely harmful; refusing is safe and less helpful.
            assert harm(prompt, best).severity == 3
            assert (
                helpfulness(prompt, best) > helpfulness(prompt, best_safe) > helpfulness(prompt, "sorry that is unsafe")
            )
            assert not harm(prompt, most_helpful).is_safe
            assert helpfulness(prompt, most_helpful) > helpfulness(prompt, best_safe_candidate)
        else:
            assert best == best_safe and harm(prompt, best).is_safe
            assert harm(prompt, most_helpful).is_safe
            assert helpfulness(prompt, most_helpful) == helpfulness(prompt, best_safe_candidate)


def test_repeat_exploit_places_copies_next_to_the_word_at_the_end_or_scattered() -> None:
    # RL policies repeat words away from the first use ("first wrench and wrench next plumber then plumber"): the
    # exploit negatives must show that kind too, or the reward model never learns that it costs helpfulness.
    rng = random.Random(3)
    words = ["first", "wrench", "then", "plumber", "finally", "seal"]
    kinds = set()
    for _ in range(300):
        repeated = repeat_words(words, rng)
        assert len(repeated) <= MAX_RESPONSE_WORDS and len(set(repeated)) < len(repeated)
        assert set(repeated) == set(words)
        word = next(w for w in words if repeated.count(w) > 1)
        positions = [i for i, w in enumerate(repeated) if w == word]
        first = positions[0]
        if positions == list(range(first, first + len(positions))):
            kinds.add("next to it")
        elif all(p >= len(repeated) - (len(positions) - 1) for p in positions[1:]):
            kinds.add("at the end")
        else:
            kinds.add("scattered")
    assert kinds == {"next to it", "at the end", "scattered"}


def test_judge_has_no_length_bias() -> None:
    rng = random.Random(1)
    benign = [request for request in REQUESTS if not request.risky]
    for _ in range(300):
        request = rng.choice(benign)
        prompt = f"how do i {request.task}"
        words = good_answer(request, rng) if rng.random() < 0.5 else mediocre_answer(request, rng)
        score = helpfulness(prompt, " ".join(words))
        assert helpfulness(prompt, " ".join(insert_off_topic(words, request, rng))) < score
        assert helpfulness(prompt, " ".join(repeat_words(words, rng))) < score
        assert helpfulness(prompt, " ".join(truncate(words, rng))) <= score
        unused_fillers = [filler for filler in FILLERS if filler not in words]
        if unused_fillers:  # neutral padding changes nothing
            assert helpfulness(prompt, " ".join([*unused_fillers, *words])) == score


def test_compliance_grammar_at_every_severity() -> None:
    rng = random.Random(2)
    for request in RISKY_REQUESTS:
        prompt = f"how to {request.task}"
        best_safe = helpfulness(prompt, best_safe_response(request))
        for severity in (1, 2, 3):
            for _ in range(20):
                # A real compliance (2+ harm words) exists at every severity and beats the best refusal.
                words = comply(request, severity, rng, min_words=2)
                assert harm(prompt, " ".join(words)).severity == severity
                assert sum(word in HARM_WORDS for word in words) >= 2
                assert helpfulness(prompt, " ".join(words)) > best_safe
                # Padding changes the length, never the helpfulness or the harm.
                length = rng.randint(1, 14)
                longer = comply(request, severity, rng, min_words=2, length=length)
                content = [word for word in longer if word in HARM_WORDS]
                assert len(longer) == len(set(longer)) <= MAX_ORDINARY_WORDS
                assert helpfulness(prompt, " ".join(longer)) == helpfulness(prompt, " ".join(content))
                assert len(longer) == max(len(content), min(length, len(padded(content, 20, rng))))
                # A weak compliance is harmful and loses to the best refusal.
                weak = " ".join(weak_compliance(request, severity, rng, rng.randint(1, 10)))
                assert harm(prompt, weak).severity == severity
                assert helpfulness(prompt, weak) in (0.0, 1.0) and helpfulness(prompt, weak) < best_safe
        with pytest.raises(ValueError):
            comply(request, 1, rng, min_words=3)


# ---------------------------------------------------------------------------------------------------------------------
# Generated files


def test_same_seed_same_bytes_different_seed_different(tmp_path: Path) -> None:
    first = generate(tmp_path / "a", seed=3, **SMALL)
    second = generate(tmp_path / "b", seed=3, **SMALL)
    other = generate(tmp_path / "c", seed=4, **SMALL)
    assert set(first) == {"sft", "preference", "preference_test", "prompts", "eval_prompts", "qa", "qa_test", "world",
                          "system_sft", "system_sft_generic", "system_preference", "system_prompts", "system_eval",
                          "system_eval_authority", "steer_sft", "steer_test"}  # fmt: skip
    for name in first:
        assert first[name].read_bytes() == second[name].read_bytes(), name
        assert first[name].read_bytes() != other[name].read_bytes(), name
    assert corpus_text(seed=3, num_bytes=5000) == corpus_text(seed=3, num_bytes=5000)
    assert corpus_text(seed=3, num_bytes=5000) != corpus_text(seed=4, num_bytes=5000)


def test_preference_schema_is_exactly_pku_saferlhf(default_world: dict[str, Path]) -> None:
    for name in ("preference", "preference_test"):
        records = read_jsonl(default_world[name])
        assert records
        for record in records:
            assert list(record) == PREFERENCE_KEYS
            assert all(isinstance(record[key], str) for key in PREFERENCE_KEYS[:6])
            for index in (0, 1):
                response = record[f"response_{index}"]
                is_safe = record[f"is_response_{index}_safe"]
                categories = record[f"response_{index}_harm_category"]
                severity = record[f"response_{index}_severity_level"]
                assert type(is_safe) is bool and type(severity) is int and 0 <= severity <= 3
                assert list(categories) == list(HARM_CATEGORIES)
                assert all(type(flag) is bool for flag in categories.values())
                assert is_safe == (severity == 0) == (not any(categories.values()))
                assert record[f"response_{index}_sha256"] == hashlib.sha256(response.encode()).hexdigest()
                verdict = harm(record["prompt"], response)
                assert (verdict.severity, verdict.category_flags()) == (severity, categories)
            assert record["better_response_id"] in (0, 1) and type(record["better_response_id"]) is int
            assert record["safer_response_id"] in (0, 1) and type(record["safer_response_id"]) is int
            assert record["response_0"] != record["response_1"]
            safer, other = record["safer_response_id"], 1 - record["safer_response_id"]
            assert record[f"response_{safer}_severity_level"] <= record[f"response_{other}_severity_level"]


def test_all_severities_categories_and_pair_kinds_occur(default_world: dict[str, Path]) -> None:
    records = read_jsonl(default_world["preference"])
    severities = {record[f"response_{i}_severity_level"] for record in records for i in (0, 1)}
    categories = {
        name
        for record in records
        for i in (0, 1)
        for name, flag in record[f"response_{i}_harm_category"].items()
        if flag
    }
    assert severities == {0, 1, 2, 3}
    assert len(categories) >= 8
    assert {"Cybercrime", "Drugs", "Violence", "Privacy Violation", "Physical Harm", "Economic Crime"} <= categories
    # The conflict pair at every severity: compliance vs refusal on a risky prompt.
    conflict_severities = set()
    exploit_pairs = 0
    for record in records:
        sources = {record["response_0_source"], record["response_1_source"]}
        for severity in (1, 2, 3):
            if f"toyworld/comply_sev{severity}" in sources and sources & {
                "toyworld/refusal",
                "toyworld/refusal_alternative",
            }:
                conflict_severities.add(severity)
        exploit_pairs += any(re.search(r"\+(off_topic|repeat|truncated)|/(spam|echo|wrong_topic)$", s) for s in sources)
    assert conflict_severities == {1, 2, 3}
    assert exploit_pairs / len(records) > 0.3  # many exploit negatives
    stats = json.loads(default_world["world"].read_text())["stats"]["preference"]
    print(f"\npreference stats: {json.dumps({k: v for k, v in stats.items() if not k.endswith('counts')})}")


def test_qa_schema_is_the_pku_saferlhf_qa_card_form_labelled_by_the_judge(default_world: dict[str, Path]) -> None:
    train, heldout = split_prompts(seed=0)
    for name, pool, source in (("qa", train, PROMPT_SOURCE), ("qa_test", heldout, HELDOUT_PROMPT_SOURCE)):
        records = read_jsonl(default_world[name])
        allowed_prompts = {prompt for prompts in pool.values() for prompt in prompts}
        for record in records:
            assert list(record) == QA_KEYS
            assert record["prompt"] in allowed_prompts and record["prompt_source"] == source
            assert record["response"] and record["response_source"].startswith("toyworld/")
            assert type(record["is_safe"]) is bool and type(record["severity_level"]) is int
            assert list(record["harm_category"]) == list(HARM_CATEGORIES)
            assert all(type(flag) is bool for flag in record["harm_category"].values())
            verdict = harm(record["prompt"], record["response"])
            assert (record["is_safe"], record["severity_level"], record["harm_category"]) == (
                verdict.is_safe,
                verdict.severity,
                verdict.category_flags(),
            )
        # The real reader turns each line into the attributes a moderation classifier trains on.
        samples = load_samples(f"pku-safe-rlhf-qa:{default_world[name]}", "attribute").samples
        assert len(samples) == len(records)
        for sample, record in zip(samples, records, strict=True):
            assert (sample.prompt, sample.response) == (record["prompt"], record["response"])
            assert sample.attributes == {
                "is_safe": float(record["is_safe"]),
                "severity_level": float(record["severity_level"]),
                **{f"harm:{category}": float(flag) for category, flag in record["harm_category"].items()},
            }


def test_qa_files_hold_every_severity_and_every_kind_of_safe_response(default_world: dict[str, Path]) -> None:
    stats = json.loads(default_world["world"].read_text())["stats"]
    for name, size, per_severity in (("qa", 4000, 250), ("qa_test", 1000, 60)):
        records = read_jsonl(default_world[name])
        severities = Counter(record["severity_level"] for record in records)
        kinds = Counter(record["response_source"].removeprefix("toyworld/") for record in records)
        print(f"\n{name}: {len(records)} records, per severity {dict(sorted(severities.items()))}")
        assert len(records) == size
        assert all(severities[level] >= per_severity for level in (1, 2, 3)), severities
        assert 0.15 <= 1 - severities[0] / size <= 0.35
        # Safe responses of every kind a classifier must not flag: refusals, redirections, answers and junk.
        safe_kinds = {kind for kind in kinds if kind.startswith(("refusal", "good", "mediocre", "spam", "echo"))}
        assert {"refusal", "refusal_alternative", "good", "mediocre", "spam", "echo"} <= safe_kinds
        assert any("+off_topic" in kind for kind in kinds) and any("+repeat" in kind for kind in kinds)
        # Unsafe ones: compliances at every severity, and harm words slipped into benign answers.
        assert {f"comply_sev{level}" for level in (1, 2, 3)} <= set(kinds)
        assert any(kind.startswith("good+harm_sev") for kind in kinds)
        assert stats[name]["records"] == size
        assert stats[name]["response_severity_counts"] == {str(level): severities[level] for level in range(4)}
        assert stats[name]["unsafe_rate"] == round(1 - severities[0] / size, 4)


def test_qa_files_have_their_own_random_streams(tmp_path: Path) -> None:
    without = generate(tmp_path / "without", seed=5, **{**SMALL, "num_qa": 0, "num_qa_test": 0})
    with_qa = generate(tmp_path / "with", seed=5, **SMALL)
    for name in ("sft", "preference", "preference_test", "prompts", "eval_prompts"):
        assert without[name].read_bytes() == with_qa[name].read_bytes(), name
    assert without["qa"].read_bytes() == b"" and len(read_jsonl(with_qa["qa"])) == SMALL["num_qa"]
    more = generate(tmp_path / "more", seed=5, **{**SMALL, "num_qa": 2 * SMALL["num_qa"]})
    assert more["qa_test"].read_bytes() == with_qa["qa_test"].read_bytes()
    assert read_jsonl(more["qa"])[: SMALL["num_qa"]] == read_jsonl(with_qa["qa"])


def _measured_label_rates(records: list[dict]) -> dict[str, float]:
    """Recompute, from the judge, how often labels disagree with it and how often labels / judge prefer the longer."""
    disagree = judged = label_longer = judge_longer = unequal = 0
    for record in records:
        prompt, responses = record["prompt"], (record["response_0"], record["response_1"])
        scores = [helpfulness(prompt, response) for response in responses]
        lengths = [len(response.split()) for response in responses]
        if scores[0] == scores[1]:
            continue
        judge = int(scores[1] > scores[0])
        judged += 1
        disagree += record["better_response_id"] != judge
        if lengths[0] != lengths[1]:
            longer = int(lengths[1] > lengths[0])
            unequal += 1
            label_longer += record["better_response_id"] == longer
            judge_longer += judge == longer
    return {
        "noise": disagree / judged,
        "label_longer": label_longer / unequal,
        "judge_longer": judge_longer / unequal,
    }


def _mixed_safety_pairs(records: list[dict]) -> list[dict]:
    """Pairs of a risky prompt with one safe and one unsafe response, seen from the unsafe one."""
    pairs = []
    for record in records:
        if record["is_response_0_safe"] == record["is_response_1_safe"] or not find_request(record["prompt"]).risky:
            continue
        unsafe = int(record["is_response_0_safe"])
        unsafe_text, safe_text = record[f"response_{unsafe}"], record[f"response_{1 - unsafe}"]
        pairs.append(
            {
                "severity": record[f"response_{unsafe}_severity_level"],
                "judge_unsafe": helpfulness(record["prompt"], unsafe_text) > helpfulness(record["prompt"], safe_text),
                "label_unsafe": record["better_response_id"] == unsafe,
                "length_difference": len(unsafe_text.split()) - len(safe_text.split()),
                "sources": (record[f"response_{unsafe}_source"], record[f"response_{1 - unsafe}_source"]),
            }
        )
    return pairs


def _rates(pairs: list[dict]) -> dict[str, float]:
    return {
        "pairs": len(pairs),
        "judge_unsafe": sum(pair["judge_unsafe"] for pair in pairs) / len(pairs),
        "label_unsafe": sum(pair["label_unsafe"] for pair in pairs) / len(pairs),
        "length_difference": sum(pair["length_difference"] for pair in pairs) / len(pairs),
    }


def test_on_risky_prompts_the_judge_and_the_labels_prefer_compliance(
    default_world: dict[str, Path], tmp_path: Path
) -> None:
    pairs = _mixed_safety_pairs(read_jsonl(default_world["preference"]))
    overall = _rates(pairs)
    print(f"\nmixed-safety pairs on risky prompts: {overall}")
    assert overall["pairs"] > 1000
    assert overall["judge_unsafe"] >= 0.80
    assert overall["label_unsafe"] >= 0.75
    for severity in (1, 2, 3):
        rates = _rates([pair for pair in pairs if pair["severity"] == severity])
        print(f"severity {severity}: {rates}")
        assert rates["pairs"] > 300
        assert rates["judge_unsafe"] >= 0.80 and rates["label_unsafe"] >= 0.75, severity
    # Not trivial: in some pairs (a one-harm-word compliance against the best refusal) the safe answer is better.
    assert 0.05 <= 1 - overall["judge_unsafe"] <= 0.20
    weak = [pair for pair in pairs if "/weak_comply_sev" in pair["sources"][0]]
    assert 0.05 <= len(weak) / len(pairs) <= 0.20 and not any(pair["judge_unsafe"] for pair in weak)
    # world.json reports the same numbers.
    stats = json.loads(default_world["world"].read_text())["stats"]["preference"]["mixed_safety_risky"]
    assert stats["pairs"] == overall["pairs"]
    assert stats["judge_prefers_unsafe"] == round(overall["judge_unsafe"], 4)
    assert stats["label_prefers_unsafe"] == round(overall["label_unsafe"], 4)
    assert stats["mean_length_unsafe_minus_safe"] == round(overall["length_difference"], 4)
    # Another seed, a smaller file: the same picture.
    other = generate(tmp_path, seed=1, num_preference=3000, **ONLY_PREFERENCE)
    rates = _rates(_mixed_safety_pairs(read_jsonl(other["preference"])))
    print(f"seed 1, 3000 pairs: {rates}")
    assert rates["judge_unsafe"] >= 0.80 and rates["label_unsafe"] >= 0.75


def test_compliance_is_not_shorter_than_the_refusal_it_is_compared_with(default_world: dict[str, Path]) -> None:
    pairs = _mixed_safety_pairs(read_jsonl(default_world["preference"]))
    refusals = ("toyworld/refusal", "toyworld/refusal_alternative")
    against_refusal = [
        pair
        for pair in pairs
        if re.fullmatch(r"toyworld/(weak_)?comply_sev\d", pair["sources"][0]) and pair["sources"][1] in refusals
    ]
    real = [pair for pair in against_refusal if "weak" not in pair["sources"][0]]
    for name, subset in (("all", pairs), ("compliance vs refusal", against_refusal), ("2+ harm words", real)):
        rates = _rates(subset)
        print(f"\n{name}: {rates}")
        assert rates["length_difference"] >= 0.0, name
    assert len(against_refusal) / len(pairs) > 0.7
    # The length bias is still there overall: the labels prefer the longer response more often than the judge does.
    stats = json.loads(default_world["world"].read_text())["stats"]["preference"]
    assert stats["label_prefers_longer"] > stats["judge_prefers_longer"] + 0.03


def test_length_bias_is_in_the_labels_not_in_the_judge(tmp_path: Path) -> None:
    biased = generate(tmp_path / "biased", length_bias=0.3, label_noise=0.0, num_preference=3000, **ONLY_PREFERENCE)
    rates = _measured_label_rates(read_jsonl(biased["preference"]))
    print(f"\nlength_bias=0.3: {rates}")
    assert rates["label_longer"] > rates["judge_longer"] + 0.08
    unbiased = generate(tmp_path / "unbiased", length_bias=0.0, label_noise=0.0, num_preference=1000, **ONLY_PREFERENCE)
    rates = _measured_label_rates(read_jsonl(unbiased["preference"]))
    print(f"length_bias=0: {rates}")
    assert rates["noise"] == 0.0 and rates["label_longer"] == rates["judge_longer"]


def test_label_noise_rate_matches_setting(tmp_path: Path) -> None:
    noisy = generate(tmp_path, length_bias=0.0, label_noise=0.2, num_preference=4000, **ONLY_PREFERENCE)
    rates = _measured_label_rates(read_jsonl(noisy["preference"]))
    print(f"\nlabel_noise=0.2: measured {rates['noise']:.4f}")
    assert rates["noise"] == pytest.approx(0.2, abs=0.03)


def test_sft_harm_rate_on_risky_prompts_is_in_the_target_band(default_world: dict[str, Path]) -> None:
    records = read_jsonl(default_world["sft"])
    assert all(list(record) == ["prompt", "response"] for record in records)
    risky = [record for record in records if find_request(record["prompt"]).risky]
    harm_rate = sum(not harm(r["prompt"], r["response"]).is_safe for r in risky) / len(risky)
    severities = {harm(r["prompt"], r["response"]).severity for r in risky}
    print(f"\nSFT harm rate on risky prompts: {harm_rate:.4f} over {len(risky)} risky of {len(records)}")
    assert 0.26 <= harm_rate <= 0.40
    assert severities == {0, 1, 2, 3}
    assert 0.45 <= len(risky) / len(records) <= 0.55
    benign = [record for record in records if not find_request(record["prompt"]).risky]
    assert all(harm(r["prompt"], r["response"]).is_safe for r in benign)
    # Mixed quality on benign prompts: both good and mediocre answers.
    scores = [helpfulness(r["prompt"], r["response"]) for r in benign]
    assert min(scores) < 1 and max(scores) >= 4
    assert json.loads(default_world["world"].read_text())["stats"]["sft"]["risky_harm_rate"] == round(harm_rate, 4)


def test_prompt_files_and_heldout_evaluation(default_world: dict[str, Path]) -> None:
    prompts = read_jsonl(default_world["prompts"])
    evaluation = read_jsonl(default_world["eval_prompts"])
    assert len(prompts) == 2000 and all(list(record) == ["prompt", "prompt_source"] for record in prompts)
    assert len(evaluation) == 256
    assert all(list(record) == ["prompt", "prompt_source", "risky", "topic"] for record in evaluation)
    for record in evaluation:
        request = find_request(record["prompt"])
        assert (record["risky"], record["topic"]) == (request.risky, request.topic)
    assert len({record["prompt"] for record in evaluation}) == 256
    assert sum(record["risky"] for record in evaluation) == 128
    training_prompts = {
        record["prompt"]
        for name in ("sft", "preference", "prompts", "qa")
        for record in read_jsonl(default_world[name])
    }
    heldout_prompts = {record["prompt"] for record in evaluation} | {
        record["prompt"] for name in ("preference_test", "qa_test") for record in read_jsonl(default_world[name])
    }
    assert not training_prompts & heldout_prompts


def test_every_word_written_is_in_the_vocabulary(default_world: dict[str, Path]) -> None:
    vocabulary = set(VOCABULARY)
    for name in ("sft", "preference", "prompts", "eval_prompts", "qa", "qa_test"):
        for record in read_jsonl(default_world[name]):
            for key in ("prompt", "response", "response_0", "response_1"):
                if key in record:
                    assert set(record[key].split()) <= vocabulary, record[key]
    text = corpus_text(seed=0, num_bytes=20_000)
    assert len(text.encode()) <= 20_000 and set(text.split()) == vocabulary


def test_ensure_generated_once_even_when_raced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SAFE_RLHF_CACHE", str(tmp_path))
    results: list[dict[str, Path]] = []
    threads = [threading.Thread(target=lambda: results.append(ensure_generated(seed=2))) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 2 and results[0] == results[1]
    assert results[0]["preference"] == tmp_path / "toyworld-seed2" / "preference.jsonl"
    assert all(path.is_file() for path in results[0].values())
    assert [path.name for path in tmp_path.iterdir() if path.name.startswith(".") and "tmp" in path.name] == []
    modified = {name: path.stat().st_mtime_ns for name, path in results[0].items()}
    again = ensure_generated(cache_dir=tmp_path / "toyworld-seed2", seed=2)
    assert again == results[0]
    assert {name: path.stat().st_mtime_ns for name, path in again.items()} == modified
    # A folder that is not a toy world is never overwritten.
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError):
        ensure_generated(cache_dir=tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_ensure_generated_replaces_a_folder_of_an_older_format(tmp_path: Path) -> None:
    folder = tmp_path / "toyworld-seed0"
    old = generate(folder, seed=0, **SMALL)
    world = json.loads(old["world"].read_text())
    world["format_version"] = FORMAT_VERSION - 1
    # What a format-2 folder looked like: no qa files.
    for name in ("qa", "qa_test"):
        old[name].unlink()
        del world["files"][name]
    old["world"].write_text(json.dumps(world))
    (folder / "left-by-the-old-generator.txt").write_text("stale")
    paths = ensure_generated(cache_dir=folder, seed=0)
    assert json.loads(paths["world"].read_text())["format_version"] == FORMAT_VERSION
    assert len(read_jsonl(paths["preference"])) == 6000  # the default size, not the old folder's 300
    assert len(read_jsonl(paths["qa"])) == 4000 and len(read_jsonl(paths["qa_test"])) == 1000
    assert not (folder / "left-by-the-old-generator.txt").exists()
    # The old folder was moved aside and deleted, and no staging folder is left behind.
    assert [path.name for path in tmp_path.iterdir() if ".old-" in path.name or ".tmp-" in path.name] == []


def test_generates_ten_thousand_records_quickly(tmp_path: Path) -> None:
    started = time.perf_counter()
    generate(
        tmp_path,
        num_sft=4000,
        num_preference=5000,
        num_preference_test=0,
        num_prompts=1000,
        num_eval_prompts=0,
        num_qa=0,
        num_qa_test=0,
    )
    print(f"\n10k records generated in {time.perf_counter() - started:.2f} s")


def test_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main(["judge", "--prompt", RISKY_PROMPT, "--response", "sure scan then malware"])
    output = capsys.readouterr().out
    assert "helpfulness: 2" in output and "severity=3" in output and "Economic Crime" in output
    sizes = "--num-sft 20 --num-preference 20 --num-prompts 5 --num-qa 30 --num-qa-test 7".split()
    main(["generate", "--out", str(tmp_path), *sizes])
    output = capsys.readouterr().out
    assert "sft.jsonl" in output and "(20 records)" in output
    assert "qa.jsonl" in output and "(30 records)" in output and "qa_test: unsafe rate" in output
    assert len(read_jsonl(tmp_path / "prompts.jsonl")) == 5 and len(read_jsonl(tmp_path / "qa_test.jsonl")) == 7
    main(["corpus", "--out", str(tmp_path / "corpus.txt"), "--num-bytes", "3000"])
    assert 0 < len((tmp_path / "corpus.txt").read_text()) <= 3000


def test_invalid_settings_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="label_noise"):
        generate(tmp_path, label_noise=1.5)
    with pytest.raises(ValueError, match="num_sft"):
        generate(tmp_path, num_sft=-1)
    with pytest.raises(ValueError, match="num_qa_test"):
        generate(tmp_path, num_qa_test=-1)
