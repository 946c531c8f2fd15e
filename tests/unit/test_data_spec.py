"""The spec grammar (and its hydra round-trip), mixtures and deterministic proportion sampling."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser

from safe_rlhf.data import DatasetSpec, SpecError, format_spec, load_samples, parse_spec
from safe_rlhf.data.spec import select_indices

pytestmark = pytest.mark.unit

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "data"

SPECS = [
    "pku-safe-rlhf:/data/pku*0.3+toyworld:preference",
    "toyworld:preference",
    "pku-safe-rlhf:PKU-Alignment/PKU-SafeRLHF%alpaca-7b@test",
    "hh-rlhf:%harmless-base@test*0.25",
    "beavertails:/data/BeaverTails@30k_train+sft:./my_data/sft.jsonl*2",
    "sft:/data/shards/*.jsonl*0.5",
    "helpsteer2:nvidia/HelpSteer2@validation",
    "pku-safe-rlhf:",
]


@pytest.mark.parametrize("spec", SPECS)
def test_hydra_parses_specs_back_to_the_same_string(spec):
    override = OverridesParser.create().parse_override(f"data.train={spec}")
    assert override.value() == spec


@pytest.mark.parametrize("spec", SPECS)
def test_canonical_form_round_trips(spec):
    assert format_spec(parse_spec(spec)) == spec


def test_parse_components():
    assert parse_spec("pku-safe-rlhf:/data/pku*0.3+toyworld:preference") == [
        DatasetSpec("pku-safe-rlhf", "/data/pku", proportion=0.3),
        DatasetSpec("toyworld", "preference"),
    ]
    assert parse_spec("hh-rlhf:Anthropic/hh-rlhf@test%harmless-base*1.5") == [
        DatasetSpec("hh-rlhf", "Anthropic/hh-rlhf", config="harmless-base", split="test", proportion=1.5)
    ]
    # a glob star stays in the source; only a trailing *NUMBER is a proportion
    assert parse_spec("sft:/d/*.jsonl")[0].source == "/d/*.jsonl"
    assert parse_spec("sft:/d/part*.jsonl*.5")[0] == DatasetSpec("sft", "/d/part*.jsonl", proportion=0.5)


@pytest.mark.parametrize("proportion", [0.3, 0.5, 1.0, 2.0, 2.5, 1e-05, 0.123456789])
def test_proportion_text_round_trips(proportion):
    text = format_spec([DatasetSpec("sft", "/d/x.jsonl", proportion=proportion)])
    assert parse_spec(text)[0].proportion == proportion
    assert OverridesParser.create().parse_override(f"data.train={text}").value() == text


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("", "empty dataset spec"),
        ("/data/pku.jsonl", "has no reader: write READER:SOURCE"),
        ("sft:a.jsonl++sft:b.jsonl", "empty dataset in spec"),
        ("sft:a.jsonl*0", "must be a number > 0"),
        ("sft:a.jsonl@test@train", "gives '@' twice"),
        ("sft:a.jsonl@te,st", "cannot parse ',st'"),
        ("sft:a b.jsonl", "whitespace in source"),
        ("s ft:a.jsonl", "bad reader name"),
    ],
)
def test_bad_specs(spec, message):
    with pytest.raises(SpecError, match=message) as caught:
        parse_spec(spec)
    assert "\n" not in str(caught.value)


def test_select_indices():
    import random

    assert select_indices(4, None, random.Random(0)) == [0, 1, 2, 3]
    picked = select_indices(10, 0.3, random.Random(0))
    assert len(picked) == 3 and picked == sorted(picked) and len(set(picked)) == 3
    # 2.5: everything twice, then half of it once more
    upsampled = select_indices(4, 2.5, random.Random(0))
    assert upsampled[:8] == [0, 1, 2, 3, 0, 1, 2, 3] and len(upsampled) == 10
    assert select_indices(10, 1.0, random.Random(0)) == list(range(10))


@pytest.fixture
def many_sft(tmp_path) -> Path:
    path = tmp_path / "many.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"q{i}", "response": f"a{i}"}) + "\n" for i in range(50)))
    return path


def test_proportion_is_deterministic_given_the_seed(many_sft):
    spec = f"sft:{many_sft}*0.3"
    first = [s.response for s in load_samples(spec, "sft", seed=1).samples]
    again = [s.response for s in load_samples(spec, "sft", seed=1).samples]
    other = [s.response for s in load_samples(spec, "sft", seed=2).samples]
    assert len(first) == 15 and first == again and first != other
    # kept in file order
    assert first == sorted(first, key=lambda r: int(r[1:]))


def test_mixture_concatenates_in_spec_order_with_per_source_stats(many_sft):
    pku = FIXTURES / "pku_safe_rlhf.jsonl"
    result = load_samples(f"sft:{many_sft}*0.1+sft:{FIXTURES / 'sft.jsonl'}", "sft")
    assert result.stats.read == 53
    assert result.stats.kept == len(result.samples) == 5 + 3
    assert [s.kept for s in result.stats.sources] == [5, 3]
    assert result.samples[-1].response == "One, two, three."
    assert result.stats.sources[0].spec == f"sft:{many_sft}*0.1"
    # different readers mix as long as they produce the kind
    mixed = load_samples(f"pku-safe-rlhf:{pku}*0.5+hh-rlhf:{FIXTURES / 'hh_rlhf.jsonl'}", "preference")
    assert [s.origin.rsplit(":", 1)[0].rsplit("/", 1)[1] for s in mixed.samples] == [
        "pku_safe_rlhf.jsonl",
        "pku_safe_rlhf.jsonl",
        "hh_rlhf.jsonl",
        "hh_rlhf.jsonl",
    ]


def test_mixture_kind_check_happens_before_reading(many_sft):
    with pytest.raises(Exception, match="dataset 'prompts' cannot produce kind 'sft'"):
        load_samples(f"sft:{many_sft}+prompts:/does/not/exist.jsonl", "sft")


def test_upsampling(many_sft):
    result = load_samples(f"sft:{FIXTURES / 'sft.jsonl'}*2", "sft")
    assert [s.response for s in result.samples] == ["Blue, on a clear day.", "Hello!", "One, two, three."] * 2
    assert result.stats.sources[0].valid == 3 and result.stats.kept == 6
