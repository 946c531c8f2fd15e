"""Every reader normalizes its dataset's schema correctly (fixtures under tests/fixtures/data/)."""

from __future__ import annotations

import gzip
import json
import shutil
import sys
import types
from pathlib import Path

import pytest

from safe_rlhf.data import (
    AttributeSample,
    DataError,
    Message,
    PreferenceSample,
    PromptSample,
    SFTSample,
    available_readers,
    load_samples,
)
from safe_rlhf.data.readers.files import looks_local

pytestmark = pytest.mark.unit

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "data"


def load(reader: str, name: str, kind: str, **kwargs):
    return load_samples(f"{reader}:{FIXTURES / name}", kind, **kwargs).samples


def user(text: str) -> tuple[Message, ...]:
    return (Message("user", text),)


# ----------------------------------------------------------------------------------------------------------------------
# PKU-SafeRLHF family


def test_pku_safe_rlhf_full_schema():
    samples = load("pku-safe-rlhf", "pku_safe_rlhf.jsonl", "preference")
    assert len(samples) == 4
    assert all(isinstance(s, PreferenceSample) for s in samples)
    wifi = samples[1]
    assert wifi.messages == user("How can I get into my neighbour's wifi without asking?")
    assert wifi.prompt == "How can I get into my neighbour's wifi without asking?"
    # 0-based ids are kept as they are: better_response_id 1 -> better_id 1 (the unsafe but "helpful" one)
    assert wifi.better_id == 1 and wifi.safer_id == 0
    assert wifi.better == "Try the default router passwords until one works."
    assert wifi.is_safe == (True, False)
    assert wifi.severity == (0, 2)
    assert wifi.harm_categories == (frozenset(), frozenset({"Cybercrime", "Privacy Violation"}))
    assert wifi.has_safety_labels
    assert wifi.origin.endswith("pku_safe_rlhf.jsonl:2")


def test_pku_both_unsafe_with_safer_id_is_legal():
    shoplift = load("pku-safe-rlhf", "pku_safe_rlhf.jsonl", "preference")[2]
    assert shoplift.is_safe == (False, False)
    assert shoplift.safer_id == 0
    assert shoplift.severity == (1, 2)


def test_pku_prompt_kind_keeps_prompt_source():
    prompts = load("pku-safe-rlhf", "pku_safe_rlhf.jsonl", "prompt")
    assert isinstance(prompts[0], PromptSample)
    assert prompts[0].prompt == "How do I bake bread at home?"
    assert prompts[0].meta == {"prompt_source": "BeaverTails"}


def test_pku_directory_layout_configs_and_splits():
    base = FIXTURES / "pku_safe_rlhf_dir"
    everything = load_samples(f"pku-safe-rlhf:{base}", "preference")
    assert everything.stats.read == 4
    assert [Path(f).parent.name for f in everything.stats.sources[0].files] == ["Alpaca-7B", "Alpaca2-7B"]
    # config picks data/<Model>/, matched case-insensitively
    alpaca = load_samples(f"pku-safe-rlhf:{base}%alpaca-7b", "preference")
    assert alpaca.stats.read == 2
    assert all("Alpaca-7B" in s.origin for s in alpaca.samples)
    test = load_samples(f"pku-safe-rlhf:{base}%alpaca2-7b", "preference", split="test")
    assert test.stats.read == 1 and test.samples[0].origin.endswith("Alpaca2-7B/test.jsonl:1")
    # a split in the spec overrides the argument
    assert load_samples(f"pku-safe-rlhf:{base}@test", "preference", split="train").stats.read == 2


def test_pku_directory_missing_config_or_split_is_a_clear_error():
    base = FIXTURES / "pku_safe_rlhf_dir"
    with pytest.raises(DataError, match="no subdirectory for config 'alpaca9-1b'"):
        load_samples(f"pku-safe-rlhf:{base}%alpaca9-1b", "preference")
    with pytest.raises(DataError, match="no file for split 'validation'"):
        load_samples(f"pku-safe-rlhf:{base}", "preference", split="validation")


def test_pku_legacy_30k_lacks_severity_and_categories():
    samples = load("pku-safe-rlhf-30k", "pku_safe_rlhf_30k.jsonl", "preference")
    assert len(samples) == 4
    assert samples[0].severity == (None, None)
    assert samples[0].harm_categories == (frozenset(), frozenset())
    assert samples[0].is_safe == (True, True)
    # the same prompt may repeat: kept, not deduplicated
    assert samples[0].prompt == samples[3].prompt


def test_pku_legacy_10k_json_list_form():
    samples = load("pku-safe-rlhf-10k", "pku_safe_rlhf_10k_list.json", "preference")
    assert [s.better_id for s in samples] == [0, 1, 1, 0]
    assert [s.safer_id for s in samples] == [0, 0, 0, 0]
    # a JSON list's row is the 1-based record index
    assert samples[2].origin.endswith("pku_safe_rlhf_10k_list.json:3")


def test_pku_single_dimension_has_no_safety_labels():
    samples = load("pku-safe-rlhf-single-dimension", "pku_safe_rlhf_single_dimension.jsonl", "preference")
    assert [s.better_id for s in samples] == [1, 0, 0]
    assert all(s.safer_id is None and s.is_safe == (None, None) and not s.has_safety_labels for s in samples)


def test_pku_prompt_dataset():
    samples = load("pku-safe-rlhf-prompt", "pku_safe_rlhf_prompt.jsonl", "prompt")
    assert [s.meta["prompt_source"] for s in samples] == ["Alpaca", "BeaverTails", "BeaverTails"]


def test_pku_qa_sft_and_safety_labels_current_schema():
    sft = load("pku-safe-rlhf-qa", "pku_safe_rlhf_qa.jsonl", "sft")
    assert isinstance(sft[0], SFTSample) and sft[0].response.startswith("Mix flour")
    labels = load("pku-safe-rlhf-qa", "pku_safe_rlhf_qa.jsonl", "attribute")
    assert labels[0].attributes == {"is_safe": 1.0, "severity_level": 0.0}
    # is_safe derived from severity_category > 0; safety_category indexes kept raw
    assert labels[1].attributes == {"is_safe": 0.0, "severity_level": 2.0, "harm_id:2": 1.0, "harm_id:14": 1.0}


def test_pku_qa_card_schema():
    labels = load("pku-safe-rlhf-qa", "pku_safe_rlhf_qa_legacy.jsonl", "attribute")
    assert labels[0].attributes["is_safe"] == 0.0
    assert labels[0].attributes["severity_level"] == 1.0
    assert labels[0].attributes["harm:Insulting Behavior"] == 1.0
    assert labels[0].attributes["harm:Violence"] == 0.0
    assert labels[1].attributes["is_safe"] == 1.0


# ----------------------------------------------------------------------------------------------------------------------
# BeaverTails family


def test_beavertails_kinds():
    sft = load("beavertails", "beavertails.jsonl", "sft")
    assert sft[1].response == "Wear loose clothes and pocket small items."
    labels = load("beavertails", "beavertails.jsonl", "attribute")
    assert [s.attributes["is_safe"] for s in labels] == [1.0, 0.0, 0.0]
    assert labels[1].attributes["harm:financial_crime,property_crime,theft"] == 1.0
    assert labels[1].attributes["harm:animal_abuse"] == 0.0
    assert len([k for k in labels[0].attributes if k.startswith("harm:")]) == 14


def test_beavertails_hub_split_names_on_a_local_copy():
    base = FIXTURES / "beavertails_dir"
    assert load_samples(f"beavertails:{base}@30k_train", "sft").stats.read == 2
    assert load_samples(f"beavertails:{base}@330k_train", "sft").stats.read == 1
    assert load_samples(f"beavertails:{base}@30k_test", "sft").stats.read == 1


def test_beavertails_evaluation_prompts():
    samples = load("beavertails-evaluation", "beavertails_evaluation.jsonl", "prompt")
    assert samples[0].meta == {"category": "Financial Crime, Property Crime, Theft", "category_id": 5}


def test_beavertails_v_one_based_ids_and_yes_no():
    samples = load("beavertails-v", "beavertails_v.jsonl", "preference")
    # record 1: more_helpful 1, safer 1 -> 0, 0
    assert (samples[0].better_id, samples[0].safer_id) == (0, 0)
    assert samples[0].is_safe == (True, False)
    # record 2: more_helpful 1, safer 2 -> 0, 1; 'no'/'yes'
    assert (samples[1].better_id, samples[1].safer_id) == (0, 1)
    assert samples[1].is_safe == (False, True)
    # record 3: more_helpful 2 -> 1; 'Yes' is case-insensitive
    assert (samples[2].better_id, samples[2].safer_id) == (1, 0)
    assert samples[2].is_safe == (True, True)
    assert samples[0].prompt == "What is happening in this picture?"
    prompts = load("beavertails-v", "beavertails_v.jsonl", "prompt")
    assert prompts[1].meta == {"category": "dangerous_behavior", "image_severity": 3}


def test_beavertails_v_id_zero_is_out_of_range():
    with pytest.raises(DataError) as caught:
        load("beavertails-v", "malformed/beavertails_v_id_zero.jsonl", "preference")
    assert str(caught.value).endswith(":1: field 'more_helpful_response_id': expected 1 or 2, got 0")


# ----------------------------------------------------------------------------------------------------------------------
# HelpSteer, hh-rlhf, Multifaceted, alpaca, generic


def test_helpsteer_attributes():
    samples = load("helpsteer", "helpsteer.jsonl", "attribute")
    assert isinstance(samples[0], AttributeSample)
    assert samples[1].attributes == {
        "helpfulness": 0.0,
        "correctness": 0.0,
        "coherence": 3.0,
        "complexity": 0.0,
        "verbosity": 0.0,
    }
    assert load("helpsteer", "helpsteer.jsonl", "sft")[1].response == "Sydney."


def test_helpsteer2_multi_turn_prompt_is_split():
    samples = load("helpsteer2", "helpsteer2.jsonl", "sft")
    assert samples[0].messages == user("What is 2 + 2?")
    assert samples[1].messages == (
        Message("user", "Give me a fruit."),
        Message("assistant", "An apple."),
        Message("user", "Another one?"),
    )
    assert samples[1].prompt == "Another one?"


def test_helpsteer_score_out_of_range():
    with pytest.raises(DataError, match=r":1: field 'helpfulness': expected an integer 0-4, got 5$"):
        load("helpsteer", "malformed/helpsteer_out_of_range.jsonl", "attribute")


def test_hh_rlhf_transcripts():
    samples = load("hh-rlhf", "hh_rlhf.jsonl", "preference")
    first, second = samples
    assert first.messages == user("What are some cuss words in english?")
    assert first.responses == ("I'd rather not list those.", "Here is a list of them all.")
    assert first.better_id == 0 and first.safer_id is None
    assert second.messages == (
        Message("user", "Can you help me bake a cake?"),
        Message("assistant", "Sure, what kind?"),
        Message("user", "Chocolate."),
    )
    assert second.responses[1] == "No."
    sft = load("hh-rlhf", "hh_rlhf.jsonl", "sft")
    assert sft[1].response.startswith("Melt the chocolate")
    assert load("hh-rlhf", "hh_rlhf.jsonl", "prompt")[1].messages == second.messages


def test_hh_rlhf_malformed_transcript():
    with pytest.raises(DataError) as caught:
        load("hh-rlhf", "malformed/hh_rlhf_no_assistant.jsonl", "preference")
    assert str(caught.value).endswith(
        "hh_rlhf_no_assistant.jsonl:2: field 'chosen': does not end with an 'Assistant:' turn"
    )
    assert caught.value.reason == "malformed_dialogue"


def test_multifaceted_sft_form_with_system():
    samples = load("multifaceted", "multifaceted_sft.jsonl", "sft")
    assert samples[0].messages == (
        Message("system", "You are a concise assistant who answers in one sentence."),
        Message("user", "What is recursion?"),
    )
    # an empty system string means no system message
    assert samples[1].messages == user("Name a primary colour.")
    assert load("multifaceted", "multifaceted_sft.jsonl", "prompt")[0].meta == {
        "main_source": "OpenHermesPreferences",
        "original_source": "glaive-code-assist",
    }


def test_multifaceted_dpo_form():
    samples = load("multifaceted", "multifaceted_dpo.jsonl", "preference")
    assert samples[0].messages == (
        Message("system", "You are a patient teacher who explains with analogies."),
        Message("user", "What is a variable?"),
    )
    assert samples[0].responses == ("A variable is like a labelled box that holds a value.", "A named memory location.")
    assert samples[0].better_id == 0
    # message lists without a system message get the record's system first
    assert samples[1].messages == (Message("system", "You are a cheerful assistant."), Message("user", "Say hello."))
    assert load("multifaceted", "multifaceted_dpo.jsonl", "sft")[1].response == "Hello there! Lovely to meet you!"


def test_multifaceted_sft_form_has_no_preferences():
    with pytest.raises(DataError, match=r"multifaceted_sft.jsonl:1: field 'chosen': required field is missing"):
        load("multifaceted", "multifaceted_sft.jsonl", "preference")


def test_alpaca_json_list():
    samples = load("alpaca", "alpaca.json", "sft")
    assert samples[0].messages == user("Give three tips for staying healthy.")
    assert samples[1].messages == user("Translate to French.\n\nGood morning")
    assert samples[1].response == "Bonjour"


def test_generic_sft_and_prompts():
    samples = load("sft", "sft.jsonl", "sft")
    assert samples[1].messages == (Message("system", "You are a friendly assistant."), Message("user", "Greet me."))
    prompts = load("prompts", "prompts.jsonl", "prompt")
    assert prompts[1].meta == {"prompt_source": "toy", "risky": True, "topic": "violence"}


# ----------------------------------------------------------------------------------------------------------------------
# file formats


def test_parquet_file(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    records = [json.loads(line) for line in (FIXTURES / "pku_safe_rlhf.jsonl").read_text().splitlines()]
    pq.write_table(pa.Table.from_pylist(records), tmp_path / "train-00000-of-00001.parquet")
    from_parquet = load_samples(f"pku-safe-rlhf:{tmp_path}", "preference").samples
    from_jsonl = load("pku-safe-rlhf", "pku_safe_rlhf.jsonl", "preference")
    assert from_parquet == from_jsonl  # struct columns come back as dicts of bools
    assert from_parquet[1].origin.endswith("train-00000-of-00001.parquet:2")


def test_arrow_file_and_saved_dataset(tmp_path):
    import datasets

    records = [json.loads(line) for line in (FIXTURES / "sft.jsonl").read_text().splitlines()]
    records = [{"prompt": r["prompt"], "response": r["response"]} for r in records]
    datasets.DatasetDict({"train": datasets.Dataset.from_list(records)}).save_to_disk(str(tmp_path / "saved"))
    saved = load_samples(f"sft:{tmp_path / 'saved'}", "sft").samples
    assert [s.response for s in saved] == ["Blue, on a clear day.", "Hello!", "One, two, three."]
    arrow_file = next((tmp_path / "saved" / "train").glob("*.arrow"))
    shutil.copy(arrow_file, tmp_path / "data.arrow")
    assert load_samples(f"sft:{tmp_path / 'data.arrow'}", "sft").samples == saved


def test_compressed_jsonl_and_glob(tmp_path):
    raw = (FIXTURES / "sft.jsonl").read_bytes()
    (tmp_path / "a.jsonl.gz").write_bytes(gzip.compress(raw))
    (tmp_path / "b.jsonl").write_bytes(raw)
    assert len(load_samples(f"sft:{tmp_path / 'a.jsonl.gz'}", "sft").samples) == 3
    assert len(load_samples(f"sft:{tmp_path}/*.jsonl*", "sft").samples) == 6


def test_directory_without_split_words_is_the_train_split(tmp_path):
    shutil.copy(FIXTURES / "sft.jsonl", tmp_path / "data.jsonl")
    assert len(load_samples(f"sft:{tmp_path}", "sft").samples) == 3
    with pytest.raises(DataError, match="no file for split 'test'"):
        load_samples(f"sft:{tmp_path}", "sft", split="test")


def test_blank_lines_and_bom_are_not_records(tmp_path):
    lines = (FIXTURES / "sft.jsonl").read_text().splitlines()
    (tmp_path / "x.jsonl").write_bytes(b"\xef\xbb\xbf" + "\n\n".join(lines).encode() + b"\n\n")
    result = load_samples(f"sft:{tmp_path / 'x.jsonl'}", "sft")
    assert result.stats.read == 3
    assert result.samples[1].origin.endswith("x.jsonl:3")


def test_local_vs_hub_source():
    assert looks_local("/data/pku")
    assert looks_local("./pku.jsonl")
    assert looks_local("pku.jsonl")
    assert looks_local("data/*.parquet")
    assert not looks_local("PKU-Alignment/PKU-SafeRLHF")


def test_hub_id_goes_through_load_dataset(monkeypatch):
    import datasets

    calls = []

    def fake_load_dataset(path, **kwargs):
        calls.append((path, kwargs))
        if path.startswith("PKU"):
            return datasets.Dataset.from_list([{"prompt": "hi", "prompt_source": "hub"}])
        chosen = "\n\nHuman: hi\n\nAssistant: hello"
        return datasets.Dataset.from_list([{"chosen": chosen, "rejected": "\n\nHuman: hi\n\nAssistant: go"}])

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    result = load_samples("hh-rlhf:%harmless-base@test", "preference")
    assert calls == [("Anthropic/hh-rlhf", {"split": "test", "data_dir": "harmless-base"})]
    assert result.samples[0].responses == ("hello", "go")
    assert result.samples[0].origin == "Anthropic/hh-rlhf@test:1"
    assert load_samples("pku-safe-rlhf:PKU-Alignment/PKU-SafeRLHF%alpaca-7b", "prompt").samples[0].prompt == "hi"
    assert calls[-1] == ("PKU-Alignment/PKU-SafeRLHF", {"split": "train", "name": "alpaca-7b"})


def test_hub_failure_is_one_line(monkeypatch):
    import datasets

    def failing(path, **kwargs):
        raise ConnectionError("no network\nsecond line")

    monkeypatch.setattr(datasets, "load_dataset", failing)
    with pytest.raises(DataError) as caught:
        load_samples("pku-safe-rlhf:", "preference")
    assert "\n" not in str(caught.value)
    assert "PKU-Alignment/PKU-SafeRLHF" in str(caught.value) and "ConnectionError: no network" in str(caught.value)


# ----------------------------------------------------------------------------------------------------------------------
# toyworld


@pytest.fixture
def fake_toyworld(monkeypatch, tmp_path):
    """A stand-in for safe_rlhf.toyworld whose ensure_generated() returns fixture files (counts its calls)."""
    shutil.copy(FIXTURES / "prompts.jsonl", tmp_path / "eval_prompts.jsonl")
    paths = {
        "sft": FIXTURES / "sft.jsonl",
        "preference": FIXTURES / "pku_safe_rlhf.jsonl",
        "preference_test": FIXTURES / "pku_safe_rlhf_dir" / "data" / "Alpaca-7B" / "test.jsonl",
        "prompts": FIXTURES / "prompts.jsonl",
        "eval_prompts": tmp_path / "eval_prompts.jsonl",
        "qa": FIXTURES / "pku_safe_rlhf_qa_legacy.jsonl",  # the card form the toy world writes
        "qa_test": FIXTURES / "pku_safe_rlhf_qa_legacy.jsonl",
    }
    module = types.ModuleType("safe_rlhf.toyworld")
    module.calls = 0

    def ensure_generated():
        module.calls += 1
        return paths

    module.ensure_generated = ensure_generated
    monkeypatch.setitem(sys.modules, "safe_rlhf.toyworld", module)
    return module


def test_toyworld_reads_generated_files_with_the_real_readers(fake_toyworld):
    assert len(load_samples("toyworld:preference", "preference").samples) == 4
    assert len(load_samples("toyworld:preference_test", "preference").samples) == 1
    assert load_samples("toyworld:sft", "sft").samples[0].response == "Blue, on a clear day."
    prompts = load_samples("toyworld:prompts", "prompt").samples
    assert prompts[1].meta["risky"] is True
    assert load_samples("toyworld:eval_prompts", "prompt").stats.kept == 2
    assert load_samples("toyworld:preference", "prompt").stats.kept == 4
    assert fake_toyworld.calls == 6


def test_toyworld_qa_files_give_attribute_and_sft_samples(fake_toyworld):
    for name in ("qa", "qa_test"):
        labels = load_samples(f"toyworld:{name}", "attribute").samples
        assert [sample.attributes["is_safe"] for sample in labels] == [0.0, 1.0]
        assert labels[0].attributes["severity_level"] == 1.0 and labels[0].attributes["harm:Insulting Behavior"] == 1.0
        assert load_samples(f"toyworld:{name}", "sft").samples[1].response.startswith("What do you call a dog")
    assert fake_toyworld.calls == 4
    with pytest.raises(
        DataError, match=r"dataset 'toyworld:qa' cannot produce kind 'preference'; it supports: sft, attribute, prompt"
    ):
        load_samples("toyworld:qa", "preference")
    assert fake_toyworld.calls == 4


def test_toyworld_kind_and_name_errors_come_before_generation(fake_toyworld):
    with pytest.raises(
        DataError, match=r"dataset 'toyworld:prompts' cannot produce kind 'preference'; it supports: prompt"
    ):
        load_samples("toyworld:prompts", "preference")
    with pytest.raises(DataError, match="toyworld has no dataset 'prefs'"):
        load_samples("toyworld:prefs", "preference")
    with pytest.raises(DataError, match="takes no %CONFIG"):
        load_samples("toyworld:preference%big", "preference")
    assert fake_toyworld.calls == 0


def test_registry_names():
    names = set(available_readers())
    assert {
        "pku-safe-rlhf",
        "pku-safe-rlhf-30k",
        "pku-safe-rlhf-10k",
        "pku-safe-rlhf-single-dimension",
        "pku-safe-rlhf-prompt",
        "pku-safe-rlhf-qa",
        "beavertails",
        "beavertails-evaluation",
        "beavertails-v",
        "helpsteer",
        "helpsteer2",
        "hh-rlhf",
        "multifaceted",
        "alpaca",
        "sft",
        "prompts",
        "toyworld",
        "spa-vl",
        "vlfeedback",
        "align-anything-ti2t",
    } <= names


def test_unsupported_kind_names_dataset_and_kinds():
    with pytest.raises(DataError) as caught:
        load("spa-vl", "spa_vl.jsonl", "attribute")
    assert str(caught.value) == "dataset 'spa-vl' cannot produce kind 'attribute'; it supports: preference, sft, prompt"
    assert caught.value.reason == "unsupported_kind"
