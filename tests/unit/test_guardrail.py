"""The guardrail's round logic, fallback and decision log, with a scripted judge and generator."""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

import pytest
import torch

from safe_rlhf.guardrail import Guardrail


@dataclass
class Verdict:
    flagged: bool
    severity: int
    flagged_probability: float


def word_judge(pairs):  # "bad<k>" in a response = severity k; "risky" in a prompt with no response = flagged
    verdicts = []
    for prompt, response in pairs:
        levels = [int(word[3:]) for word in response.split() if word.startswith("bad")]
        if not response:
            flagged = "risky" in prompt
            verdicts.append(Verdict(flagged, 1 if flagged else 0, 0.9 if flagged else 0.1))
        else:
            verdicts.append(Verdict(bool(levels), max(levels, default=0), 0.9 if levels else 0.1))
    return verdicts


class ScriptedGenerator:
    """Round r answers prompt i with script[i][r - 1]; records every call."""

    def __init__(self, script):
        self.script, self.calls = script, []

    def __call__(self, indices, round_):
        self.calls.append((list(indices), round_))
        return [self.script[i][round_ - 1] for i in indices]


def test_passing_answers_are_delivered_and_blocked_ones_regenerated_until_they_pass() -> None:
    prompts = ["p0", "p1", "p2"]
    first = ["fine", "bad2 x", "bad3"]
    generator = ScriptedGenerator({1: ["bad1", "ok now"], 2: ["ok"]})
    answers = Guardrail(word_judge, max_rounds=5).run(prompts, first, generator)
    assert [a.response for a in answers] == ["fine", "ok now", "ok"]
    assert [a.rounds for a in answers] == [0, 2, 1]
    assert [a.fell_back for a in answers] == [False, False, False]
    assert [a.blocked_first for a in answers] == [False, True, True]
    # round 1 regenerates both blocked prompts, round 2 only prompt 1; nothing after everything passed
    assert generator.calls == [([1, 2], 1), ([1], 2)]
    assert [d["action"] for d in answers[1].decisions] == ["regenerate", "regenerate", "deliver"]
    assert [d["round"] for d in answers[1].decisions] == [0, 1, 2]
    assert answers[1].decisions[1]["response"] == "bad1" and answers[1].decisions[1]["severity"] == 1


def test_fallback_after_every_round_fails() -> None:
    generator = ScriptedGenerator({0: ["bad1", "bad2"]})
    answers = Guardrail(word_judge, max_rounds=2, fallback="no").run(["p"], ["bad3"], generator)
    assert answers[0].response == "no" and answers[0].fell_back and answers[0].rounds == 2
    assert [d["action"] for d in answers[0].decisions] == ["regenerate", "regenerate", "fallback"]
    assert generator.calls == [([0], 1), ([0], 2)]


def test_zero_rounds_falls_back_at_once() -> None:
    generator = ScriptedGenerator({})
    answers = Guardrail(word_judge, max_rounds=0, fallback="no").run(["p", "q"], ["bad1", "ok"], generator)
    assert [a.response for a in answers] == ["no", "ok"]
    assert generator.calls == []


def test_min_severity_lets_milder_harm_through() -> None:
    generator = ScriptedGenerator({1: ["ok"]})
    answers = Guardrail(word_judge, max_rounds=3, min_severity=2).run(["p", "q"], ["bad1", "bad2"], generator)
    assert [a.response for a in answers] == ["bad1", "ok"]
    assert generator.calls == [([1], 1)]


def test_flagged_prompt_gets_the_fallback_without_generating() -> None:
    generator = ScriptedGenerator({})
    guard = Guardrail(word_judge, max_rounds=3, fallback="no", check_prompt=True, on_flagged_prompt="fallback")
    answers = guard.run(["risky thing", "benign"], ["bad2", "fine"], generator)
    assert [a.response for a in answers] == ["no", "fine"]
    assert answers[0].fell_back and answers[0].decisions == [
        {"round": -1, "response": "", "flagged": True, "severity": 1, "flagged_probability": 0.9,
         "action": "prompt: fallback"}
    ]  # fmt: skip
    # with on_flagged_prompt=answer the prompt check is only logged
    logged = Guardrail(word_judge, max_rounds=0, check_prompt=True).run(["risky thing"], ["fine"], generator)
    assert logged[0].response == "fine" and logged[0].decisions[0]["action"] == "prompt: answer"


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="min_severity"):
        Guardrail(word_judge, min_severity=0)
    with pytest.raises(ValueError, match="2 prompts but 1 answers"):
        Guardrail(word_judge).run(["a", "b"], ["x"], ScriptedGenerator({}))
    with pytest.raises(ValueError, match="regenerate returned 0 responses for 1 prompts"):
        Guardrail(word_judge).run(["a"], ["bad1"], lambda indices, round_: [])


def picture_judge(triples):  # image-and-text QA: the same words are harmful under a "risky" picture only
    return [Verdict(image == "risky" and bool(response), 2 if image == "risky" else 0, 0.5) for _, response, image in
            triples]  # fmt: skip


def test_images_go_with_their_prompts_to_the_judge_every_round() -> None:
    seen = []

    def judge(triples):
        seen.append(list(triples))
        return picture_judge(triples)

    generator = ScriptedGenerator({1: ["again", "again"]})
    guard = Guardrail(judge, max_rounds=2, fallback="no", check_prompt=True)
    answers = guard.run(["how do i do this", "how do i do this"], ["mix", "mix"], generator, images=["benign", "risky"])
    assert [a.response for a in answers] == ["mix", "no"]  # same words: only the risky picture's answer is blocked
    assert seen[0] == [("how do i do this", "", "benign"), ("how do i do this", "", "risky")]  # check_prompt
    assert seen[1] == [("how do i do this", "mix", "benign"), ("how do i do this", "mix", "risky")]
    assert seen[2] == [("how do i do this", "again", "risky")] and generator.calls == [([1], 1), ([1], 2)]
    with pytest.raises(ValueError, match="2 prompts but 1 images"):
        guard.run(["a", "b"], ["x", "y"], generator, images=["benign"])


def test_a_moderator_must_read_what_the_policy_reads() -> None:
    from safe_rlhf.evaluate import guardrail_modality_error

    assert guardrail_modality_error("policies.sft", True, True) is None
    assert guardrail_modality_error("policies.sft", False, False) is None
    text_for_images = guardrail_modality_error("policies.sft", True, False)
    assert text_for_images.startswith("guardrail.model is a text moderation model but policies.sft answers questions")
    images_for_text = guardrail_modality_error("policies.sft", False, True)
    assert images_for_text.startswith("guardrail.model is a vision-language moderation model but policies.sft is a")
    assert "\n" not in text_for_images + images_for_text


class FakeTokenizer:
    pad_token_id, eos_token_id = 0, 2

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [7]}


class FakeVisionRecipe:
    """What guarded_answers uses of a PPO recipe with a VLM actor: each held-out prompt p shows image 100 + p; the
    fake pixels of an image are its number, and the reward of a scored answer is the pixel it was scored with."""

    def __init__(self, prompt_ids):
        from safe_rlhf.data.tokenize import TokenizedPrompt

        self.vision = SimpleNamespace(pixel_values=lambda images: torch.tensor([[float(i)] for i in images]))
        self.eval_items = {p: TokenizedPrompt(input_ids=[5, 6], images=(100 + p,)) for p in prompt_ids}
        self.eval_samples = {p: SimpleNamespace(images=(100 + p,)) for p in prompt_ids}
        self.tokenizer = FakeTokenizer()
        self.config = SimpleNamespace(
            train=SimpleNamespace(micro_batch_size=2), seed=0, data=SimpleNamespace(eval=None)
        )
        self.device = "cpu"

    def score(self, input_ids, attention_mask, pixel_values=None):
        assert pixel_values is not None, "a VLM's fallback was scored without its picture"
        rewards = pixel_values[:, 0]
        empty = torch.zeros(len(rewards), 0)
        return rewards, empty, empty, rewards[:, None]

    def answer(self, items, samples, seed):
        return [{"prompt_id": index, "response": "bad1 again"} for index in range(len(items))]


def test_the_guardrail_hands_each_prompt_its_own_picture_and_scores_the_fallback_with_it() -> None:
    from safe_rlhf.config import GuardrailConfig
    from safe_rlhf.evaluate import guarded_answers

    prompt_ids = [3, 0, 7]  # not in order: images must follow the prompt ids, not positions
    records = [{"prompt_id": p, "prompt": f"q{p}", "response": "fine" if p == 0 else "bad1", "risky": p != 0}
               for p in prompt_ids]  # fmt: skip
    seen = []

    def moderate(triples):
        seen.extend(triples)
        return [Verdict("bad" in response, 1, 0.9) for _, response, _ in triples]

    moderator = SimpleNamespace(vision=object(), moderate=moderate)
    guarded, stats = guarded_answers(FakeVisionRecipe(prompt_ids), records, moderator,
                                     GuardrailConfig(model="m", max_rounds=1))  # fmt: skip
    assert {(prompt, image) for prompt, _, image in seen} == {("q0", 100), ("q3", 103), ("q7", 107)}
    by_id = {r["prompt_id"]: r for r in guarded}
    assert by_id[0]["response"] == "fine" and by_id[3]["response"] == by_id[7]["response"] == "sorry i cannot do that"
    assert by_id[3]["reward"] == 103.0 and by_id[7]["reward"] == 107.0  # each fallback scored with its own picture
    assert stats["fallback_rate"] == pytest.approx(2 / 3)


def test_a_text_moderator_cannot_guard_a_vision_policy() -> None:
    from safe_rlhf.config import ConfigError, GuardrailConfig
    from safe_rlhf.evaluate import guarded_answers

    records = [{"prompt_id": 0, "prompt": "how do i do this", "response": "mix"}]
    text_moderator = SimpleNamespace(vision=None, moderate=lambda pairs: [Verdict(False, 0, 0.1) for _ in pairs])
    with pytest.raises(ConfigError, match=r"guardrail\.model is a text moderation model but the policy"):
        guarded_answers(FakeVisionRecipe([0]), records, text_moderator, GuardrailConfig(model="m"))
