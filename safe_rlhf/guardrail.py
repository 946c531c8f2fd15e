"""A filter-and-regenerate guardrail (as Beaver-Guard-V guards a model): a moderation model judges each answer; an
answer flagged at or above a severity is regenerated, up to ``max_rounds`` times, and replaced by a safe fallback
when every round fails. Every decision is logged.

From Python, around any generator::

    from safe_rlhf.guardrail import Guardrail
    from safe_rlhf.moderation import Moderator

    guard = Guardrail(Moderator.from_pretrained("runs/moderation/model").moderate, max_rounds=5, min_severity=1)
    answers = guard.run(prompts, first_answers, regenerate=lambda indices, round_: [my_generate(prompts[i]) ...])
    [a.response for a in answers], [a.rounds for a in answers], [a.decisions for a in answers]

In the arena: ``python -m safe_rlhf.evaluate --config-name arena ... guardrail.model=runs/moderation/model`` reports
every policy with and without it (``<name>+guard``): true harm by severity, true helpfulness, over-refusal on benign
prompts, mean rounds and the extra generation time.

``max_rounds`` counts regenerations after the first answer (so at most ``1 + max_rounds`` answers per prompt).
``check_prompt`` also judges the prompt on its own (moderation of (prompt, "")); with ``on_flagged_prompt=fallback``
a flagged prompt gets the fallback without generating, with ``answer`` (the default) the flag is only logged: a risky
prompt deserves a safe answer, often a helpful one, rather than a refusal.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

# (prompt, response) pairs -> verdicts; (prompt, response, image) triples when run() is given images
Judge = Callable[[Sequence[tuple[Any, ...]]], Sequence[Any]]
Regenerate = Callable[[list[int], int], list[str]]  # (prompt indices, round 1..max_rounds) -> new responses


@dataclass
class GuardedAnswer:
    """The guardrail's outcome for one prompt."""

    index: int
    response: str
    """The answer delivered: the first that passed, or the fallback."""
    rounds: int
    """Regenerations used (0 when the first answer passed)."""
    fell_back: bool
    """Every answer was blocked (or the prompt was), so the fallback was delivered."""
    blocked_first: bool
    """The first answer was blocked."""
    decisions: list[dict[str, Any]] = field(default_factory=list)
    """One entry per judgement: round, response, flagged, severity, flag probability, action."""


class Guardrail:
    """Judge, regenerate what is blocked, fall back. ``judge`` returns objects with ``flagged``, ``severity`` and
    ``flagged_probability`` (:class:`safe_rlhf.moderation.ModerationResult`)."""

    def __init__(
        self,
        judge: Judge,
        max_rounds: int = 5,
        min_severity: int = 1,
        fallback: str = "sorry i cannot do that",
        check_prompt: bool = False,
        on_flagged_prompt: str = "answer",
    ) -> None:
        if max_rounds < 0:
            raise ValueError(f"max_rounds must be >= 0; got {max_rounds}")
        if not 1 <= min_severity <= 3:
            raise ValueError(f"min_severity must be 1, 2 or 3; got {min_severity}")
        if on_flagged_prompt not in ("answer", "fallback"):
            raise ValueError(f"on_flagged_prompt must be 'answer' or 'fallback'; got {on_flagged_prompt!r}")
        self.judge = judge
        self.max_rounds = max_rounds
        self.min_severity = min_severity
        self.fallback = fallback
        self.check_prompt = check_prompt
        self.on_flagged_prompt = on_flagged_prompt

    def blocks(self, verdict: Any) -> bool:
        """An answer is blocked when flagged at or above ``min_severity`` (a flagged answer graded 0 counts as 1)."""
        return bool(verdict.flagged) and max(int(verdict.severity), 1) >= self.min_severity

    def run(
        self, prompts: Sequence[str], first: Sequence[str], regenerate: Regenerate, images: Sequence[Any] | None = None
    ) -> list[GuardedAnswer]:
        """Guard the first answers to ``prompts``; ``regenerate`` is called once per round with the indices still
        blocked (never with an empty list) and must return one new response per index, in order. ``images`` (one per
        prompt, for image-and-text QA as Beaver-Guard-V guards it): the judge then gets (prompt, response, image)."""
        if len(prompts) != len(first):
            raise ValueError(f"{len(prompts)} prompts but {len(first)} answers")
        if images is not None and len(images) != len(prompts):
            raise ValueError(f"{len(prompts)} prompts but {len(images)} images")

        def shown(index: int, response: str) -> tuple[Any, ...]:
            return (prompts[index], response) if images is None else (prompts[index], response, images[index])

        answers = [GuardedAnswer(i, response, 0, False, False) for i, response in enumerate(first)]
        pending = list(range(len(prompts)))
        if self.check_prompt and prompts:
            refused = set()
            for index, verdict in enumerate(self.judge([shown(i, "") for i in range(len(prompts))])):
                refuse = bool(verdict.flagged) and self.on_flagged_prompt == "fallback"
                action = "prompt: fallback" if refuse else "prompt: answer"
                answers[index].decisions.append(_decision(-1, "", verdict, action))
                if refuse:
                    answers[index].response, answers[index].fell_back = self.fallback, True
                    refused.add(index)
            pending = [index for index in pending if index not in refused]
        for round_ in range(self.max_rounds + 1):
            if not pending:
                break
            if round_ > 0:
                responses = regenerate(list(pending), round_)
                if len(responses) != len(pending):
                    raise ValueError(f"regenerate returned {len(responses)} responses for {len(pending)} prompts")
                for index, response in zip(pending, responses):
                    answers[index].response, answers[index].rounds = response, round_
            verdicts = self.judge([shown(i, answers[i].response) for i in pending])
            still_blocked = []
            for index, verdict in zip(pending, verdicts):
                blocked = self.blocks(verdict)
                last = round_ == self.max_rounds
                action = ("fallback" if last else "regenerate") if blocked else "deliver"
                answers[index].decisions.append(_decision(round_, answers[index].response, verdict, action))
                if blocked:
                    if round_ == 0:
                        answers[index].blocked_first = True
                    still_blocked.append(index)
            pending = still_blocked
        for index in pending:
            answers[index].response, answers[index].fell_back = self.fallback, True
        return answers


def _decision(round_: int, response: str, verdict: Any, action: str) -> dict[str, Any]:
    return {
        "round": round_,
        "response": response,
        "flagged": bool(verdict.flagged),
        "severity": int(verdict.severity),
        "flagged_probability": float(verdict.flagged_probability),
        "action": action,
    }
