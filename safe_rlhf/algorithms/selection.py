"""Which policy to deliver from a constrained run: the best periodic checkpoint that satisfies every constraint.

A Lagrangian run oscillates around its budget, so the last iterate is whatever point of the oscillation training
ended on. Constrained-RL practice instead evaluates checkpoints on held-out validation prompts and delivers the most
rewarding one among those that meet the constraints. The rule, for candidates evaluated in training order:

1. feasible candidates are those whose every constraint value is at or under its threshold;
2. among them the highest mean reward wins (ties: the later step, which trained longer);
3. if none is feasible, the candidate with the smallest total violation ``sum_k max(0, value_k - threshold_k)`` is
   chosen (ties: higher reward), and the reason says so.

Pure python, no torch: the recipe measures, this decides.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Candidate:
    """One evaluated checkpoint."""

    step: int  # the RL iteration after which it was evaluated
    reward: float  # mean reward-model score on the validation prompts
    constraint_values: tuple[float, ...]  # per constraint: its estimate on the validation prompts (mean or rate)

    def violation(self, thresholds: Sequence[float]) -> float:
        return sum(max(0.0, value - bound) for value, bound in zip(self.constraint_values, thresholds))

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "constraint_values": list(self.constraint_values)}


@dataclass(frozen=True)
class Selection:
    step: int
    reason: str


def select_checkpoint(candidates: Sequence[Candidate], thresholds: Sequence[float]) -> Selection:
    """The candidate to deliver under the rule in the module docstring, and why."""
    if not candidates:
        raise ValueError("no evaluated checkpoints to select from")
    for candidate in candidates:
        if len(candidate.constraint_values) != len(thresholds):
            raise ValueError(
                f"step {candidate.step} has {len(candidate.constraint_values)} constraint values for "
                f"{len(thresholds)} thresholds"
            )
    feasible = [c for c in candidates if c.violation(thresholds) == 0.0]
    if feasible:
        best = max(feasible, key=lambda c: (c.reward, c.step))
        return Selection(
            best.step,
            f"highest validation reward ({best.reward:.4g}) among the {len(feasible)} of {len(candidates)} "
            f"evaluated checkpoints that meet every constraint (values {_values(best)} <= {_values_of(thresholds)})",
        )
    best = min(candidates, key=lambda c: (c.violation(thresholds), -c.reward, -c.step))
    return Selection(
        best.step,
        f"no evaluated checkpoint meets every constraint; smallest total violation "
        f"({best.violation(thresholds):.4g}: values {_values(best)} against {_values_of(thresholds)})",
    )


def _values(candidate: Candidate) -> str:
    return _values_of(candidate.constraint_values)


def _values_of(values: Sequence[float]) -> str:
    return "[" + ", ".join(f"{v:.4g}" for v in values) + "]"
