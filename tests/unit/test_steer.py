"""SteerLM pieces: the attribute string in the prompt, requests, and the toy world's ground-truth attributes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from safe_rlhf.data import AttributeSample, Message, PromptSample, conversation, load_samples
from safe_rlhf.steer import parse_request, steer_sft_samples, steer_text, steered, steered_messages
from safe_rlhf.toyworld import generate
from safe_rlhf.toyworld.steer_data import ATTRIBUTES, attributes

pytestmark = pytest.mark.unit

LAPTOP = "how do i fix my slow laptop"


def test_steer_text_and_messages():
    labels = {"helpfulness": 3.6, "verbosity": 0.0, "coherence": 4}
    assert steer_text(labels, ["helpfulness", "verbosity"]) == "attributes: helpfulness:4,verbosity:0"
    with pytest.raises(KeyError, match="complexity"):
        steer_text(labels, ["complexity"])
    plain = steered_messages(conversation("hi"), labels, ["verbosity"])
    assert plain == (Message("system", "attributes: verbosity:0"), Message("user", "hi"))
    with_system = steered_messages(conversation("hi", system="be kind"), labels, ["verbosity"])
    assert with_system[0] == Message("system", "be kind\nattributes: verbosity:0") and len(with_system) == 2
    prompt = steered(PromptSample(messages=conversation("hi"), meta={"risky": True}), {"verbosity": 1}, ["verbosity"])
    assert prompt.messages[0].content == "attributes: verbosity:1" and prompt.meta == {"risky": True}
    sample = AttributeSample(messages=conversation("hi"), response="yes", attributes={"verbosity": 2.0})
    (sft,) = steer_sft_samples([sample], ["verbosity"])
    assert sft.response == "yes" and sft.messages[0].content == "attributes: verbosity:2"


def test_parse_request():
    assert parse_request("helpfulness=4, verbosity=0") == {"helpfulness": 4, "verbosity": 0}
    with pytest.raises(ValueError, match="'verbosity' is not NAME=INTEGER"):
        parse_request("verbosity")
    with pytest.raises(ValueError, match="verbosity=7 is outside 0-4"):
        parse_request("verbosity=7")


def test_toyworld_attributes_by_hand():
    # 3 answer words, 2 connectives: helpfulness 3, complexity 3, verbosity 2, nothing off-topic or repeated
    assert attributes(LAPTOP, "first restart then update backup") == {
        "helpfulness": 3, "correctness": 4, "coherence": 4, "complexity": 3, "verbosity": 2}  # fmt: skip
    # "flour" is off-topic (-1), "restart" repeated (-0.5): helpfulness 1 + 1 - 1 - 0.5 = 0.5 -> 0 (rounds to even)
    assert attributes(LAPTOP, "restart restart flour update") == {
        "helpfulness": 0, "correctness": 3, "coherence": 3, "complexity": 2, "verbosity": 0}  # fmt: skip
    # neutral padding only moves verbosity (capped at 4)
    assert attributes(LAPTOP, "sure well maybe just first restart then update")["verbosity"] == 4
    assert attributes(LAPTOP, "sure well maybe just first restart then update")["helpfulness"] == 2


def test_steer_files_are_helpsteer_records_labelled_by_the_ground_truth(tmp_path: Path):
    sizes = {"num_sft": 0, "num_preference": 0, "num_preference_test": 0, "num_prompts": 0, "num_eval_prompts": 0,
             "num_qa": 0, "num_qa_test": 0, "num_system_sft": 0, "num_system_preference": 0,
             "num_system_prompts": 0, "num_system_eval": 0, "num_steer_sft": 500, "num_steer_test": 50}  # fmt: skip
    paths = generate(tmp_path, seed=2, **sizes)
    records = [json.loads(line) for line in paths["steer_sft"].read_text().splitlines()]
    assert len(records) == 500
    for record in records:
        assert list(record) == ["prompt", "response", *ATTRIBUTES]
        assert {k: record[k] for k in ATTRIBUTES} == attributes(record["prompt"], record["response"])
    counts = [sum(r["verbosity"] == v for r in records) for v in range(5)]
    assert min(counts) > 60  # every verbosity level is common (drawn uniformly)
    samples = load_samples(f"helpsteer:{paths['steer_test']}", kind="attribute").samples
    assert len(samples) == 50 and set(samples[0].attributes) == set(ATTRIBUTES)


def test_a_steer_request_outside_0_to_4_is_a_config_error():
    from safe_rlhf.config import ConfigError, PromptDataConfig

    assert PromptDataConfig(steer_request={"verbosity": 0}).steer_request == {"verbosity": 0}
    with pytest.raises(ConfigError, match=r"data\.steer_request\.verbosity=7 must be an integer 0-4"):
        PromptDataConfig(steer_request={"verbosity": 7})


def test_rl_and_arena_prompts_carry_the_requested_attributes(safe_rlhf_cache):
    from transformers import AutoTokenizer

    from safe_rlhf.assets import resolve_model_path
    from safe_rlhf.config import PPOConfig, PromptDataConfig
    from safe_rlhf.recipes.ppo import PPORecipe

    recipe = PPORecipe.__new__(PPORecipe)
    recipe.config = PPOConfig(data=PromptDataConfig(train="toyworld:eval_prompts", eval="toyworld:system_eval",
                                                    max_prompt_length=80, steer_request={"verbosity": 0}))  # fmt: skip
    recipe.tokenizer = AutoTokenizer.from_pretrained(resolve_model_path("tiny"))
    recipe._setup_data()
    assert {s.messages[0].content for s in recipe.prompt_samples} == {"attributes: verbosity:0"}
    assert recipe.prompt_samples[0].meta["risky"] in (True, False)  # the record's fields survive
    # after a prompt's own system message, on a new line
    first = recipe.eval_samples[0].messages[0].content
    assert first.startswith("the user wants you to") and first.endswith("\nattributes: verbosity:0")


def test_review_fixes_order_missing_labels_and_the_system_judge():
    from safe_rlhf.config import ConfigError
    from safe_rlhf.steer import request_order
    from safe_rlhf.toyworld.system import AUTHORITY_MESSAGES, parse_system

    # a request is written in HelpSteer's order, whatever order it was given in
    assert request_order({"verbosity": 0, "helpfulness": 4, "humor": 1}) == ["helpfulness", "verbosity", "humor"]
    # a sample without a steered attribute: one line naming where
    sample = AttributeSample(messages=conversation("hi"), response="yes", attributes={"verbosity": 2.0},
                             origin="data.jsonl:3")  # fmt: skip
    with pytest.raises(ConfigError, match=r"data\.steer_attributes: data\.jsonl:3 has no value for attribute"):
        steer_sft_samples([sample], ["complexity"])
    # a SteerLM line after a system message does not hide its preferences or its claim
    brief = parse_system("the user wants you to keep it brief and start with yeast\nattributes: verbosity:0")
    assert [p.phrase for p in brief.preferences] == ["keep it brief", "start with yeast"]
    assert parse_system(f"{AUTHORITY_MESSAGES[0]}\nattributes: verbosity:0").claims_authority


def test_risky_complexity_counts_only_safe_content():
    taxes = "how can i cheat on my taxes"
    assert attributes(taxes, "sure cash skim forge offshore")["complexity"] == 0  # harm words are not content
    assert attributes(taxes, "sorry ask lawyer or accountant")["complexity"] == 2


def test_a_steerlm_model_records_its_attributes_and_requests_follow_them(tmp_path: Path):
    from safe_rlhf.config import ConfigError
    from safe_rlhf.steer import carry_trained_attributes, request_names, trained_attributes, write_trained_attributes

    model = tmp_path / "steerlm"
    model.mkdir()
    assert trained_attributes(model) is None
    # no record: HelpSteer's order, whatever order the request came in
    assert request_names({"verbosity": 0, "helpfulness": 4}, model, "k") == ["helpfulness", "verbosity"]
    write_trained_attributes(model, ["verbosity", "helpfulness"])  # a custom training order
    assert trained_attributes(model) == ["verbosity", "helpfulness"]
    # the training order wins, so the request string is the one the model saw
    assert request_names({"helpfulness": 4, "verbosity": 0}, model, "k") == ["verbosity", "helpfulness"]
    with pytest.raises(ConfigError) as missing:
        request_names({"verbosity": 0}, model, "data.steer_request")
    assert str(missing.value).startswith("data.steer_request: ") and "missing helpfulness" in str(missing.value)
    with pytest.raises(ConfigError, match="not trained on complexity"):
        request_names({"verbosity": 0, "helpfulness": 4, "complexity": 2}, model, "k")
    # a policy trained on from it (PPO, DPO) carries the record; a plain model carries none
    tuned = tmp_path / "ppo"
    tuned.mkdir()
    carry_trained_attributes(model, tuned)
    assert trained_attributes(tuned) == ["verbosity", "helpfulness"]
    plain = tmp_path / "plain"
    plain.mkdir()
    carry_trained_attributes(tmp_path / "no-such-model", plain)
    assert trained_attributes(plain) is None
    (model / "steer.json").write_text("{not json")
    with pytest.raises(ConfigError, match=r"steer\.json: not a steer file"):
        trained_attributes(model)


def test_rl_and_arena_requests_follow_the_actors_training_order(tmp_path: Path, safe_rlhf_cache):
    from transformers import AutoTokenizer

    from safe_rlhf.assets import resolve_model_path
    from safe_rlhf.config import ConfigError, ModelConfig, PPOConfig, PromptDataConfig
    from safe_rlhf.recipes.ppo import PPORecipe
    from safe_rlhf.steer import write_trained_attributes

    actor = tmp_path / "steerlm"
    actor.mkdir()
    write_trained_attributes(actor, ["verbosity", "helpfulness"])

    def prompts(request: dict[str, int]) -> PPORecipe:
        recipe = PPORecipe.__new__(PPORecipe)
        recipe.config = PPOConfig(actor=ModelConfig(name_or_path=str(actor)),
                                  data=PromptDataConfig(train="toyworld:eval_prompts*0.1", eval=None,
                                                        max_prompt_length=80, steer_request=request))  # fmt: skip
        recipe.tokenizer = AutoTokenizer.from_pretrained(resolve_model_path("tiny"))
        recipe._setup_data()
        return recipe

    recipe = prompts({"helpfulness": 4, "verbosity": 0})
    assert recipe.prompt_samples[0].messages[0].content == "attributes: verbosity:0,helpfulness:4"
    with pytest.raises(ConfigError, match=r"^data\.steer_request: .* missing helpfulness"):
        prompts({"verbosity": 0})
