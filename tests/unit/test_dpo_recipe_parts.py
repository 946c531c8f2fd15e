"""The DPO recipes without a model: how pairs are chosen, which datasets feed safe_dpo, and the config checks."""

import pytest

from safe_rlhf.data import DataError, TokenizedPreference
from safe_rlhf.recipes.dpo import load_preference_samples, make_pairs
from safe_rlhf.train import format_config_error, load_config

pytestmark = pytest.mark.unit

FIXTURES = "tests/fixtures/data"


def preference(better_id: int, safer_id: int | None, is_safe: tuple) -> TokenizedPreference:
    # response 0 is [1, 2, 10], response 1 is [1, 2, 11]: the chosen can be read off the last token
    return TokenizedPreference(
        input_ids=([1, 2, 10], [1, 2, 11]),
        prompt_length=2,
        response_truncated=(False, False),
        better_id=better_id,
        safer_id=safer_id,
        is_safe=is_safe,
    )


ITEMS = [
    preference(0, 0, (True, True)),  # both safe
    preference(0, 1, (False, True)),  # better unsafe, worse safe: safe_dpo swaps
    preference(1, 1, (True, False)),  # better (response 1) unsafe, worse (response 0) safe: safe_dpo swaps
    preference(1, 1, (False, True)),  # better safe, worse unsafe: kept
    preference(0, 1, (False, False)),  # both unsafe: safe_dpo drops
    preference(1, None, (None, None)),  # no safety labels
]


def chosen_tokens(pairs) -> list[int]:
    return [pair.item.input_ids[pair.item.better_id][-1] for pair in pairs]


def test_dpo_pairs_follow_the_label():
    pairs, counts = make_pairs(ITEMS, "dpo", "better", "drop")
    assert chosen_tokens(pairs) == [10, 10, 11, 11, 10, 11]  # better_id of every pair
    assert not counts and not any(pair.swapped for pair in pairs)
    assert [pair.chosen_is_unsafe for pair in pairs] == [0, 1, 1, 0, 1, -1]
    pairs, counts = make_pairs(ITEMS, "dpo", "safer", "drop")
    assert chosen_tokens(pairs) == [10, 11, 11, 11, 11]  # safer_id; the unlabelled pair is skipped and counted
    assert counts == {"no_safety_labels": 1}


def test_safe_dpo_pairs_swap_unsafe_winners_and_drop_both_unsafe():
    pairs, counts = make_pairs(ITEMS, "safe_dpo", "better", "drop")
    # pair 1: better was response 0 (unsafe) -> chosen response 1; pair 2: better response 1 (unsafe) -> response 0
    assert chosen_tokens(pairs) == [10, 11, 10, 11]
    assert [pair.swapped for pair in pairs] == [False, True, True, False]
    assert [pair.chosen_is_unsafe for pair in pairs] == [0, 0, 0, 0]  # every chosen is safe
    assert [pair.rejected_is_unsafe for pair in pairs] == [0, 1, 1, 1]
    assert counts == {"both_unsafe": 1, "no_safety_labels": 1}
    pairs, counts = make_pairs(ITEMS, "safe_dpo", "better", "keep")
    assert chosen_tokens(pairs)[-1] == 10 and pairs[-1].chosen_is_unsafe == 1  # kept in helpfulness order
    assert counts == {"no_safety_labels": 1}


def test_safe_dpo_refuses_a_dataset_without_safety_labels_in_one_line():
    spec = f"hh-rlhf:{FIXTURES}/hh_rlhf.jsonl"
    with pytest.raises(DataError) as info:
        load_preference_samples(spec, "data.train", "safe_dpo", "better", "raise", 0)
    message = str(info.value)
    assert "\n" not in message
    assert f"dataset '{spec}'" in message and "is_response_0_safe" in message and "safe_dpo" in message
    # in a mixture, the dataset without labels is the one named
    mixture = f"pku-safe-rlhf:{FIXTURES}/pku_safe_rlhf.jsonl+{spec}"
    with pytest.raises(DataError, match="dataset 'hh-rlhf:"):
        load_preference_samples(mixture, "data.train", "safe_dpo", "better", "raise", 0)
    with pytest.raises(DataError, match="safer_response_id"):
        load_preference_samples(spec, "data.eval", "dpo", "safer", "raise", 0)
    assert load_preference_samples(spec, "data.train", "dpo", "better", "raise", 0).samples  # plain DPO is fine


@pytest.mark.parametrize("spec", ["pku-safe-rlhf:pku_safe_rlhf.jsonl", "beavertails-v:beavertails_v.jsonl",
                                  "pku-safe-rlhf-30k:pku_safe_rlhf_30k.jsonl"])  # fmt: skip
def test_every_reader_with_safety_labels_feeds_safe_dpo(spec):
    reader, name = spec.split(":")
    result = load_preference_samples(f"{reader}:{FIXTURES}/{name}", "data.train", "safe_dpo", "better", "raise", 0)
    assert result.samples and all(None not in sample.is_safe for sample in result.samples)


def config_error(recipe: str, overrides: list[str]) -> str:
    with pytest.raises(Exception) as info:
        load_config(recipe, overrides)
    line = format_config_error(info.value)
    assert "\n" not in line
    return line


@pytest.mark.parametrize(
    ("recipe", "overrides", "must_contain"),
    [
        ("safe_dpo", ["dpo.label=safer"], "dpo.label must be better"),
        ("safe_dpo", ["dpo.loss_type=ipo"], "dpo.loss_type=sigmoid"),
        ("dpo", ["dpo.safety_margin=1.0"], "dpo.safety_margin applies to --config-name safe_dpo"),
        ("dpo", ["dpo.loss_type=ipo", "dpo.label_smoothing=0.1"], "dpo.label_smoothing"),
        ("dpo", ["dpo.beta=0"], "dpo.beta"),
        ("dpo", ["dpo.loss_type=hinge"], "dpo.loss_type"),
    ],
)
def test_invalid_dpo_config_is_one_line_naming_the_key(recipe, overrides, must_contain):
    assert must_contain in config_error(recipe, overrides)


def test_dpo_configs_default_to_an_sft_policy_and_toy_world_pairs():
    for recipe in ("dpo", "safe_dpo"):
        config = load_config(recipe, [])
        assert config.model.name_or_path == "runs/sft/model"
        assert (config.data.train, config.data.eval) == ("toyworld:preference", "toyworld:preference_test")
    assert load_config("safe_dpo", []).dpo.both_unsafe == "drop"
