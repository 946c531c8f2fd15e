"""safe_rlhf.analysis.arena: policy summaries and head-to-head comparisons on a hand-checked 2 x 4 arena."""

import pytest

from safe_rlhf.analysis.arena import (
    PolicyResponse,
    arena_summary,
    head_to_head,
    policy_summary,
    read_records,
    write_csv,
    write_records,
)

pytestmark = pytest.mark.unit


def _response(policy, prompt_id, reward, cost, length, eos, helpfulness, severity, categories, risky):
    return PolicyResponse(
        policy=policy,
        prompt_id=prompt_id,
        prompt=f"prompt {prompt_id}",
        response=f"{policy} answer to {prompt_id}",
        reward=reward,
        cost=cost,
        length=length,
        ended_with_eos=eos,
        true_helpfulness=helpfulness,
        true_severity=severity,
        true_categories=categories,
        risky=risky,
    )


def arena_records():
    """Prompts 1 and 3 are risky. On prompt 3 ppo fools the reward model: reward 3 > 0, but the judge's helpfulness
    1.5 < 4 (sft complied severely, ppo refused)."""
    # fmt: off
    return [
        #          policy prompt reward cost  len  eos    help sev categories              risky
        _response("sft", 0, 1.0, -1.0, 10, True,  2.0, 0, (), False),
        _response("sft", 1, 0.5,  0.5, 20, True,  1.0, 2, ("privacy",), True),
        _response("sft", 2, 2.0, -0.5, 30, False, 3.0, 0, (), False),
        _response("sft", 3, 0.0,  2.0, 40, True,  4.0, 3, ("violence", "weapons"), True),
        _response("ppo", 0, 2.0, -2.0, 20, True,  3.0, 0, (), False),
        _response("ppo", 1, 0.5,  1.0, 40, False, 1.0, 1, ("privacy",), True),
        _response("ppo", 2, 1.0,  0.5, 60, False, 1.0, 1, ("insult",), False),
        _response("ppo", 3, 3.0, -1.0, 80, True,  1.5, 0, (), True),
    ]
    # fmt: on


def test_policy_summary_model_view_and_ground_truth():
    summaries = policy_summary(arena_records())
    assert list(summaries) == ["sft", "ppo"]

    sft = summaries["sft"]
    assert sft["n"] == 4
    assert sft["mean_reward"] == pytest.approx(0.875)  # (1 + 0.5 + 2 + 0) / 4
    assert sft["mean_cost"] == pytest.approx(0.25)  # (-1 + 0.5 - 0.5 + 2) / 4
    assert sft["harmful_rate"] == pytest.approx(0.5)  # costs 0.5 and 2.0 are > 0
    assert sft["mean_length"] == pytest.approx(25.0)  # (10 + 20 + 30 + 40) / 4
    assert sft["no_eos_rate"] == pytest.approx(0.25)  # prompt 2 hit the limit
    assert sft["true_helpfulness"] == pytest.approx(2.5)  # (2 + 1 + 3 + 4) / 4
    assert sft["true_harm_rate"] == pytest.approx(0.5)  # severities 2 and 3
    assert sft["harm_rate_by_severity"] == pytest.approx({"1": 0.0, "2": 0.25, "3": 0.25})
    assert sft["harm_rate_by_category"] == pytest.approx({"privacy": 0.25, "violence": 0.25, "weapons": 0.25})
    assert sft["true_harm_rate_risky"] == pytest.approx(1.0)  # both risky prompts (1, 3) answered harmfully
    assert sft["true_harm_rate_benign"] == pytest.approx(0.0)

    ppo = summaries["ppo"]
    assert ppo["mean_reward"] == pytest.approx(1.625)  # (2 + 0.5 + 1 + 3) / 4
    assert ppo["mean_cost"] == pytest.approx(-0.375)  # (-2 + 1 + 0.5 - 1) / 4
    assert ppo["harmful_rate"] == pytest.approx(0.5)  # prompts 1 and 2
    assert ppo["mean_length"] == pytest.approx(50.0)
    assert ppo["no_eos_rate"] == pytest.approx(0.5)
    assert ppo["true_helpfulness"] == pytest.approx(1.625)  # (3 + 1 + 1 + 1.5) / 4
    assert ppo["harm_rate_by_severity"] == pytest.approx({"1": 0.5, "2": 0.0, "3": 0.0})
    assert ppo["harm_rate_by_category"] == pytest.approx({"insult": 0.25, "privacy": 0.25})
    assert ppo["true_harm_rate_risky"] == pytest.approx(0.5)  # prompt 1 harmful, prompt 3 not
    assert ppo["true_harm_rate_benign"] == pytest.approx(0.5)  # prompt 2 harmful, prompt 0 not
    # the severity shares add up to the harm rate
    assert sum(ppo["harm_rate_by_severity"].values()) == pytest.approx(ppo["true_harm_rate"])


def test_policy_summary_without_ground_truth_has_only_the_model_view():
    records = [
        PolicyResponse("p", 0, "q", "a", reward=1.0, cost=0.0, length=3),
        PolicyResponse("p", 1, "q", "b", reward=3.0, cost=0.1, length=5, ended_with_eos=False),
    ]
    summary = policy_summary(records)["p"]
    # cost 0.0 is safe (the boundary belongs to safe), 0.1 is not: harmful_rate 1/2
    assert summary == pytest.approx(
        {"n": 2, "mean_reward": 2.0, "mean_cost": 0.05, "harmful_rate": 0.5, "mean_length": 4.0, "no_eos_rate": 0.5}
    )


def test_head_to_head_win_tie_loss_and_model_quadrants():
    result = head_to_head(arena_records(), "ppo", "sft")
    assert result["n"] == 4
    # reward (higher wins): p0 2>1 win, p1 0.5=0.5 tie, p2 1<2 loss, p3 3>0 win
    assert result["reward"] == pytest.approx({"n": 4, "win": 0.5, "tie": 0.25, "loss": 0.25})
    # cost (lower wins): p0 -2<-1 win, p1 1>0.5 loss, p2 0.5>-0.5 loss, p3 -1<2 win
    assert result["cost"] == pytest.approx({"n": 4, "win": 0.5, "tie": 0.0, "loss": 0.5})
    # judge: p0 3>2 win, p1 1=1 tie, p2 1<3 loss, p3 1.5<4 loss
    assert result["true_helpfulness"] == pytest.approx({"n": 4, "win": 0.25, "tie": 0.25, "loss": 0.5})
    # ppo's cost and reward vs sft: p0 safe & better, p1 reward tie (left out), p2 unsafe & worse, p3 safe & better
    quadrants = result["quadrants"]
    assert quadrants["basis"] == "model"
    assert (quadrants["n"], quadrants["ties"]) == (3, 1)
    assert quadrants["counts"] == {"safe_better": 2, "safe_worse": 0, "unsafe_better": 0, "unsafe_worse": 1}
    assert quadrants["shares"] == pytest.approx(
        {"safe_better": 2 / 3, "safe_worse": 0.0, "unsafe_better": 0.0, "unsafe_worse": 1 / 3}
    )


def test_head_to_head_truth_quadrants_expose_the_fooled_reward_model():
    quadrants = head_to_head(arena_records(), "ppo", "sft", use_truth=True)["quadrants"]
    # p0 sev 0 & 3>2 safe_better; p1 tie; p2 sev 1 & 1<3 unsafe_worse;
    # p3 sev 0 & 1.5<4 safe_worse (the reward model said better)
    assert quadrants["basis"] == "truth"
    assert quadrants["counts"] == {"safe_better": 1, "safe_worse": 1, "unsafe_better": 0, "unsafe_worse": 1}
    assert quadrants["ties"] == 1
    assert quadrants["shares"]["safe_worse"] == pytest.approx(1 / 3)


def test_head_to_head_pairs_by_prompt_and_is_antisymmetric():
    records = [*arena_records(), PolicyResponse("ppo", 99, "extra", "x", reward=9.0, cost=9.0, length=1)]
    forward = head_to_head(records, "ppo", "sft")
    assert forward["n"] == 4  # prompt 99 has no sft answer
    backward = head_to_head(records, "sft", "ppo")
    assert backward["reward"]["win"] == pytest.approx(forward["reward"]["loss"])
    assert backward["cost"]["loss"] == pytest.approx(forward["cost"]["win"])


def test_head_to_head_rejects_two_answers_to_one_prompt():
    records = [*arena_records(), arena_records()[0]]
    with pytest.raises(ValueError, match="two responses"):
        head_to_head(records, "sft", "ppo")


def test_head_to_head_without_shared_prompts_has_empty_rates():
    records = [PolicyResponse("a", 0, "q", "r", 1.0, 0.0, 1), PolicyResponse("b", 1, "q", "r", 1.0, 0.0, 1)]
    result = head_to_head(records, "a", "b")
    assert result["n"] == 0
    assert result["reward"] == {"n": 0, "win": None, "tie": None, "loss": None}
    assert result["quadrants"]["shares"]["safe_better"] is None


def test_arena_summary_compares_every_policy_with_the_baseline():
    summary = arena_summary(arena_records(), baseline="sft")
    assert set(summary) == {"policies", "versus_sft"}
    assert list(summary["versus_sft"]) == ["ppo"]
    assert summary["versus_sft"]["ppo"]["reward"]["win"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="baseline 'nope'"):
        arena_summary(arena_records(), baseline="nope")


@pytest.mark.parametrize("name", ["records.jsonl", "records.csv"])
def test_records_round_trip(tmp_path, name):
    records = [*arena_records(), PolicyResponse("bare", 5, "q, with comma", 'say "hi"\nbye', 0.25, -0.5, 7)]
    path = tmp_path / name
    if name.endswith(".csv"):
        write_csv(records, path)
    else:
        write_records(records, path)
    assert read_records(path) == records
