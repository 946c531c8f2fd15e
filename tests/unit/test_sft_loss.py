"""The SFT loss against numbers derived by hand."""

from __future__ import annotations

import math

import pytest
import torch

from safe_rlhf.algorithms.sft import IGNORE_INDEX, sft_loss_sum

pytestmark = pytest.mark.unit


def test_sft_loss_matches_hand_computation():
    # Vocabulary of 2. Position t predicts labels[t + 1].
    # Position 0 logits [0, ln 3] -> softmax [1/4, 3/4]; target labels[1] = 1 -> -ln(3/4) = 0.287682
    # Position 1 logits [0, 0]    -> softmax [1/2, 1/2]; target labels[2] = 0 -> ln 2      = 0.693147
    # Position 2 predicts nothing (no label after it).
    logits = torch.tensor([[[0.0, math.log(3.0)], [0.0, 0.0], [5.0, -5.0]]])
    labels = torch.tensor([[IGNORE_INDEX, 1, 0]])
    total, count = sft_loss_sum(logits, labels)
    assert count.item() == 2
    assert total.item() == pytest.approx(-math.log(0.75) + math.log(2.0), abs=1e-6)


def test_prompt_tokens_are_masked_out():
    # Same logits, but labels[1] belongs to the prompt (-100): only position 1 -> target 0 counts: ln 2.
    logits = torch.tensor([[[0.0, math.log(3.0)], [0.0, 0.0], [5.0, -5.0]]])
    labels = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, 0]])
    total, count = sft_loss_sum(logits, labels)
    assert count.item() == 1
    assert total.item() == pytest.approx(math.log(2.0), abs=1e-6)


def test_padding_rows_contribute_nothing():
    # Row 2 is all padding (labels -100): sum and count equal row 1 alone.
    logits = torch.tensor([[[0.0, math.log(3.0)], [0.0, 0.0]], [[9.0, -9.0], [9.0, -9.0]]])
    labels = torch.tensor([[IGNORE_INDEX, 1], [IGNORE_INDEX, IGNORE_INDEX]])
    total, count = sft_loss_sum(logits, labels)
    assert count.item() == 1
    assert total.item() == pytest.approx(-math.log(0.75), abs=1e-6)
