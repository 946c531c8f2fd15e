"""LagrangeMultiplier: the reference log-space update and the PID Lagrangian, with hand-derived numbers."""

import itertools
import json
import math

import pytest
import torch

from safe_rlhf.algorithms import LagrangeMultiplier

pytestmark = pytest.mark.unit


def test_log_mode_update_by_hand():
    multiplier = LagrangeMultiplier(init=1.0, lr=0.1, threshold=0.0)
    # window [1, 3], J = 2: log_lambda = 0 + 0.1 * 1 * 2 = 0.2 -> lambda = e^0.2 = 1.221403
    assert multiplier.update(torch.tensor([1.0, 3.0])) == pytest.approx(1.221403, abs=1e-6)
    # window [1, 3, -4, -4], J = -1: log_lambda = 0.2 + 0.1 * 1.221403 * (-1) = 0.077860 -> lambda = 1.080971
    assert multiplier.update(torch.tensor([-4.0, -4.0])) == pytest.approx(1.080971, abs=1e-6)
    assert multiplier.value == pytest.approx(1.080971, abs=1e-6)


def test_log_mode_rises_while_violated_falls_toward_zero_when_satisfied_and_caps_at_max():
    multiplier = LagrangeMultiplier(init=1.0, lr=0.1, max_value=5.0, threshold=0.5, window_size=4)
    values = [multiplier.update(torch.tensor([2.0])) for _ in range(60)]
    assert all(later >= earlier for earlier, later in itertools.pairwise(values))
    assert values[0] > 1.0
    assert max(values) == pytest.approx(5.0) and all(value <= 5.0 for value in values)

    # costs now below the threshold: once the window holds only them (J - d = -1.5), lambda decays but stays > 0.
    # log_lambda -= 0.1 * 1.5 * lambda, i.e. d lambda / dt ~ -0.15 lambda^2, so lambda ~ 1 / (0.15 t):
    # about 1 / (0.15 * 300) = 0.022 after 300 updates (slow, hyperbolic, never exactly 0)
    values = [multiplier.update(torch.tensor([-1.0])) for _ in range(300)]
    assert all(later < earlier for earlier, later in itertools.pairwise(values[4:]))
    assert 0.0 < values[-1] < 0.03


def test_delay_steps_keep_lambda_but_fill_the_window():
    multiplier = LagrangeMultiplier(init=1.0, lr=0.1, delay_steps=2)
    assert multiplier.update(torch.tensor([5.0])) == 1.0
    assert multiplier.update(torch.tensor([1.0])) == 1.0
    assert multiplier.window == (5.0, 1.0)
    # third call updates on the whole window [5, 1, 3], J = 3: log_lambda = 0.1 * 1 * 3 = 0.3 -> e^0.3 = 1.349859
    assert multiplier.update(torch.tensor([3.0])) == pytest.approx(1.349859, abs=1e-6)
    assert multiplier.step_count == 3


def test_window_keeps_the_last_window_size_episodes():
    multiplier = LagrangeMultiplier(window_size=3, lr=0.0)
    multiplier.update(torch.tensor([1.0, 2.0, 3.0]))
    multiplier.update(torch.tensor([10.0]))
    # FIFO: 1 dropped, window [2, 3, 10], mean 5
    assert multiplier.window == (2.0, 3.0, 10.0)
    assert multiplier.window_mean() == 5.0


def test_update_is_append_then_step_on_window_mean():
    by_update = LagrangeMultiplier(lr=0.2, threshold=1.0)
    by_parts = LagrangeMultiplier(lr=0.2, threshold=1.0)
    for costs in ([0.5, 3.0], [2.0], [-1.0, -2.0, 0.0]):
        by_parts.append(torch.tensor(costs))
        assert by_update.update(torch.tensor(costs)) == by_parts.step(by_parts.window_mean())


def test_pid_mode_by_hand():
    multiplier = LagrangeMultiplier(init=0.5, lr=0.1, kp=0.2, kd=0.3, threshold=1.0, max_value=5.0, mode="pid")
    # J = 3, delta = 2: I = 0.5 + 0.1 * 2 = 0.7; P = 0.2 * 2 = 0.4; no previous J -> D = 0; lambda = 1.1
    assert multiplier.step(3.0) == pytest.approx(1.1)
    # J = 4, delta = 3: I = 0.7 + 0.3 = 1.0; P = 0.6; D = 0.3 * max(0, 4 - 3) = 0.3; lambda = 1.9
    assert multiplier.step(4.0) == pytest.approx(1.9)
    # J = 2, delta = 1: I = 1.1; P = 0.2; D = 0.3 * max(0, 2 - 4) = 0; lambda = 1.3
    assert multiplier.step(2.0) == pytest.approx(1.3)
    # J = -20, delta = -21: I = max(0, 1.1 - 2.1) = 0; P = -4.2; lambda = clamp(-4.2, 0, 5) = 0
    assert multiplier.step(-20.0) == 0.0
    # J = 101, delta = 100: I = 10; P = 20; D = 0.3 * 121 = 36.3 -> clamped to max 5
    assert multiplier.step(101.0) == 5.0


def test_state_dict_round_trip_continues_identically():
    for mode, kwargs in (("log", {}), ("pid", {"kp": 0.1, "kd": 0.2})):
        original = LagrangeMultiplier(init=0.7, lr=0.05, window_size=5, delay_steps=1, mode=mode, **kwargs)
        for costs in ([1.0, 2.0], [0.3, 4.0, -1.0], [2.5]):
            original.update(torch.tensor(costs))
        # through JSON: the state is plain python values
        state = json.loads(json.dumps(original.state_dict()))
        restored = LagrangeMultiplier(init=0.7, lr=0.05, window_size=5, delay_steps=1, mode=mode, **kwargs)
        restored.load_state_dict(state)
        assert restored.state_dict() == original.state_dict()
        for costs in ([3.0, -2.0], [0.1], [5.0, 5.0, 5.0]):
            assert restored.update(torch.tensor(costs)) == original.update(torch.tensor(costs))
        assert restored.state_dict() == original.state_dict()


def test_invalid_arguments_raise():
    with pytest.raises(ValueError, match="init must be > 0"):
        LagrangeMultiplier(init=0.0)
    with pytest.raises(ValueError, match="mode"):
        LagrangeMultiplier(mode="adam")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="1-D"):
        LagrangeMultiplier().update(torch.tensor([[1.0]]))
    with pytest.raises(ValueError, match="no episode costs"):
        LagrangeMultiplier().window_mean()
    with pytest.raises(ValueError, match="mode 'log'"):
        LagrangeMultiplier(mode="pid", init=0.0).load_state_dict(LagrangeMultiplier().state_dict())
    # pid mode may start at 0
    assert LagrangeMultiplier(mode="pid", init=0.0).value == 0.0
    assert math.isfinite(LagrangeMultiplier(max_value=None).update(torch.tensor([1.0])))


def test_log_mode_floor_keeps_lambda_from_decaying_below_min_value():
    multiplier = LagrangeMultiplier(init=1.0, lr=1.0, min_value=0.5, threshold=0.0, window_size=1)
    # J = -10: log_lambda = 0 + 1 * 1 * (-10) = -10, floored at log 0.5 -> lambda 0.5
    assert multiplier.update(torch.tensor([-10.0])) == pytest.approx(0.5)
    # J = 1: log_lambda = log 0.5 + 1 * 0.5 * 1 = -0.193147 -> lambda = 0.824361 (the floor is the new start)
    assert multiplier.update(torch.tensor([1.0])) == pytest.approx(0.824361, abs=1e-6)
    assert multiplier.terms == {"i": pytest.approx(0.824361, abs=1e-6)}


def test_pid_with_ema_smoothed_p_and_d_by_hand():
    multiplier = LagrangeMultiplier(init=0.5, lr=0.1, kp=1.0, kd=2.0, p_ema_alpha=0.5, d_ema_alpha=0.5,
                                    threshold=1.0, max_value=5.0, window_size=1, mode="pid")  # fmt: skip
    # J = 3: delta 2; I = 0.5 + 0.1 * 2 = 0.7; EMA(delta) starts at 2 -> P = 2; EMA(J) starts at 3, no D yet.
    assert multiplier.update(torch.tensor([3.0])) == pytest.approx(2.7)
    # J = 1: delta 0; I = 0.7; EMA(delta) = 0.5 * 2 + 0.5 * 0 = 1 -> P = 1; EMA(J) = 0.5 * 3 + 0.5 * 1 = 2,
    # falling -> D = 2 * max(0, 2 - 3) = 0; lambda = 1.7
    assert multiplier.update(torch.tensor([1.0])) == pytest.approx(1.7)
    # J = 4: delta 3; I = 1.0; EMA(delta) = 0.5 + 1.5 = 2 -> P = 2; EMA(J) = 1 + 2 = 3 -> D = 2 * (3 - 2) = 2;
    # 1 + 2 + 2 = 5, at max_value
    assert multiplier.update(torch.tensor([4.0])) == pytest.approx(5.0)
    assert multiplier.terms == pytest.approx({"p": 2.0, "i": 1.0, "d": 2.0})
    # the smoothing state survives a checkpoint round trip: the next step is the same from a restored copy
    restored = LagrangeMultiplier(init=0.5, lr=0.1, kp=1.0, kd=2.0, p_ema_alpha=0.5, d_ema_alpha=0.5,
                                  threshold=1.0, max_value=5.0, window_size=1, mode="pid")  # fmt: skip
    restored.load_state_dict(json.loads(json.dumps(multiplier.state_dict())))
    assert restored.update(torch.tensor([0.0])) == multiplier.update(torch.tensor([0.0]))


def test_pid_floor_and_invalid_settings():
    multiplier = LagrangeMultiplier(init=0.2, lr=1.0, min_value=0.1, threshold=1.0, window_size=1, mode="pid")
    # J = 0: I = max(0, 0.2 - 1) = 0, lambda = max(0.1, 0) = 0.1
    assert multiplier.update(torch.tensor([0.0])) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="only apply to mode='pid'"):
        LagrangeMultiplier(p_ema_alpha=0.5)
    with pytest.raises(ValueError, match="min_value"):
        LagrangeMultiplier(init=0.5, min_value=0.6)
    with pytest.raises(ValueError, match="d_ema_alpha"):
        LagrangeMultiplier(mode="pid", d_ema_alpha=1.0)
