"""Checkpoint selection for constrained runs, on scripted sequences of evaluated checkpoints."""

import pytest

from safe_rlhf.algorithms.selection import Candidate, select_checkpoint

pytestmark = pytest.mark.unit


def test_the_most_rewarding_feasible_checkpoint_wins_not_the_last():
    # Budget 0.05 on the unsafe rate. Step 40 has the highest reward but violates; 30 is the best feasible one;
    # the last iterate (50) is feasible but less rewarding.
    sequence = [
        Candidate(10, reward=0.5, constraint_values=(0.02,)),
        Candidate(20, reward=0.9, constraint_values=(0.08,)),
        Candidate(30, reward=1.2, constraint_values=(0.05,)),  # at the budget counts as meeting it
        Candidate(40, reward=1.6, constraint_values=(0.07,)),
        Candidate(50, reward=1.1, constraint_values=(0.04,)),
    ]
    selection = select_checkpoint(sequence, thresholds=[0.05])
    assert selection.step == 30
    assert "3 of 5" in selection.reason and "1.2" in selection.reason


def test_every_constraint_must_hold_and_ties_go_to_the_later_step():
    sequence = [
        Candidate(1, reward=2.0, constraint_values=(0.01, 0.2)),  # second constraint violated
        Candidate(2, reward=1.0, constraint_values=(0.01, 0.1)),
        Candidate(3, reward=1.0, constraint_values=(0.00, 0.05)),
    ]
    assert select_checkpoint(sequence, thresholds=[0.01, 0.1]).step == 3


def test_without_a_feasible_checkpoint_the_smallest_violation_is_chosen_and_said():
    sequence = [
        Candidate(1, reward=3.0, constraint_values=(0.30,)),  # violation 0.20
        Candidate(2, reward=1.0, constraint_values=(0.15,)),  # violation 0.05
        Candidate(3, reward=2.0, constraint_values=(0.15,)),  # violation 0.05, more reward
    ]
    selection = select_checkpoint(sequence, thresholds=[0.1])
    assert selection.step == 3
    assert selection.reason.startswith("no evaluated checkpoint meets every constraint")


def test_bad_input():
    with pytest.raises(ValueError, match="no evaluated checkpoints"):
        select_checkpoint([], thresholds=[0.1])
    with pytest.raises(ValueError, match="2 constraint values for 1 thresholds"):
        select_checkpoint([Candidate(1, 0.0, (0.1, 0.2))], thresholds=[0.1])
