"""The Lagrange multiplier of one cost constraint E[C] <= threshold.

Two update rules:

- ``mode="log"`` (the reference): lambda = exp(log_lambda), and log_lambda takes a plain SGD step on
  ``loss_lambda = -(J_C - d) * lambda``, i.e. ``log_lambda += lr * lambda * (J_C - d)``, then is clamped at
  ``log(max_value)``. lambda grows while the constraint is violated and decays multiplicatively towards (never to)
  0 while it holds.
- ``mode="pid"``: the PID Lagrangian of Stooke, Achiam & Abbeel, "Responsive Safety in Reinforcement Learning by
  PID Lagrangian Methods" (ICML 2020). With delta = J_C - d:
  ``I = max(0, I + lr * delta)``, ``P = kp * delta``, ``D = kd * max(0, J_C - J_C_previous)``,
  ``lambda = clamp(I + P + D, 0, max_value)``. ``I`` starts at ``init``; the first update has no previous J_C, so
  its D term is 0. The proportional and derivative terms damp the oscillation of the pure integral (``kp = kd = 0``
  gives plain gradient ascent on lambda itself). I is not capped at ``max_value`` (as in the paper), so after a long
  violation it can take a while to unwind.

Settings against the oscillation of the plain integral (studied on the toy world, docs/lagrange_study.md):

- ``min_value``: a floor on lambda (both modes). In log mode lambda only ever decays multiplicatively, and its step
  is proportional to lambda itself, so after a long slack phase a tiny lambda reacts slowly when the cost climbs back;
  a floor bounds that lag.
- ``p_ema_alpha`` / ``d_ema_alpha`` (pid mode): exponential moving averages of the violation (for P) and of J_C (for
  D), as in OmniSafe's CPPOPID: ``ema = alpha * ema + (1 - alpha) * x`` (alpha 0 = no smoothing). Then
  ``P = kp * ema(delta)`` and ``D = kd * max(0, ema(J_C)_t - ema(J_C)_{t-1})``.

After each :meth:`step`, :attr:`terms` holds the parts of the new lambda (``p``, ``i``, ``d`` in pid mode; ``i`` =
lambda in log mode), for logging.

J_C is the mean cost of the last ``window_size`` episodes (reference: 128).

Distributed use: this class knows nothing about ranks. ``update(episode_costs)`` is exactly
``append(episode_costs)`` followed by ``step(window_mean())``. A multi-rank caller appends its local costs, averages
``window_mean()`` across ranks itself, calls ``step(global_mean)`` on one rank (or on every rank with the same
number, which gives the same result) and broadcasts ``value``. With K constraints, use K independent instances.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any, Literal

import torch

LagrangeMode = Literal["log", "pid"]


class LagrangeMultiplier:
    """One Lagrange multiplier lambda >= 0 with a FIFO window of episode costs.

    Args:
        init: initial lambda (reference 1.0); must be > 0 in log mode.
        lr: step size; the integral gain ki in pid mode (reference 0.1).
        max_value: upper bound on lambda (reference 5.0); None for no bound.
        delay_steps: the first ``delay_steps`` calls of :meth:`step` leave lambda unchanged (reference 0).
            Costs are still appended to the window during the delay.
        window_size: J_C is the mean over the last ``window_size`` episode costs (reference 128).
        threshold: the constraint's budget d in E[C] <= d (reference 0.0).
        mode: "log" (reference) or "pid".
        kp, kd: proportional and derivative gains, pid mode only.
        min_value: lower bound on lambda (default 0: none); in log mode it must not exceed ``init``.
        p_ema_alpha, d_ema_alpha: smoothing of the P and D inputs, pid mode only (0 = none, must be < 1).
    """

    def __init__(
        self,
        init: float = 1.0,
        lr: float = 0.1,
        max_value: float | None = 5.0,
        delay_steps: int = 0,
        window_size: int = 128,
        threshold: float = 0.0,
        mode: LagrangeMode = "log",
        kp: float = 0.0,
        kd: float = 0.0,
        min_value: float = 0.0,
        p_ema_alpha: float = 0.0,
        d_ema_alpha: float = 0.0,
    ) -> None:
        if mode not in ("log", "pid"):
            raise ValueError(f"mode must be 'log' or 'pid'; got {mode!r}")
        if mode == "log" and init <= 0:
            raise ValueError(f"log mode stores log(lambda), so init must be > 0; got {init}")
        if init < 0:
            raise ValueError(f"init must be >= 0; got {init}")
        if max_value is not None and init > max_value:
            raise ValueError(f"init ({init}) must not exceed max_value ({max_value})")
        if window_size < 1:
            raise ValueError(f"window_size must be >= 1; got {window_size}")
        if delay_steps < 0:
            raise ValueError(f"delay_steps must be >= 0; got {delay_steps}")
        if mode == "log" and (kp != 0.0 or kd != 0.0 or p_ema_alpha != 0.0 or d_ema_alpha != 0.0):
            raise ValueError("kp, kd, p_ema_alpha and d_ema_alpha only apply to mode='pid'")
        if min_value < 0 or min_value > init or (max_value is not None and min_value > max_value):
            raise ValueError(f"min_value must be in [0, init]; got {min_value} with init {init}")
        for name, alpha in (("p_ema_alpha", p_ema_alpha), ("d_ema_alpha", d_ema_alpha)):
            if not 0.0 <= alpha < 1.0:
                raise ValueError(f"{name} must be in [0, 1); got {alpha}")

        self.lr = lr
        self.max_value = max_value
        self.delay_steps = delay_steps
        self.window_size = window_size
        self.threshold = threshold
        self.mode: LagrangeMode = mode
        self.kp = kp
        self.kd = kd
        self.min_value = min_value
        self.p_ema_alpha = p_ema_alpha
        self.d_ema_alpha = d_ema_alpha

        self._window: deque[float] = deque(maxlen=window_size)
        self._step_count = 0  # calls of step(), including those inside the delay
        self._log_lambda = math.log(init) if mode == "log" else 0.0  # log mode state
        self._integral = float(init) if mode == "pid" else 0.0  # pid mode state
        self._previous_window_mean: float | None = None  # pid mode: smoothed J_C at the previous update
        self._violation_ema: float | None = None  # pid mode: smoothed J_C - d
        self._value = float(init)
        self.terms: dict[str, float] = {"i": self._value} if mode == "log" else {"p": 0.0, "i": self._value, "d": 0.0}

    @property
    def value(self) -> float:
        """The current lambda."""
        return self._value

    @property
    def window(self) -> tuple[float, ...]:
        """The episode costs in the window, oldest first."""
        return tuple(self._window)

    @property
    def step_count(self) -> int:
        """How many times :meth:`step` has been called (delayed calls included)."""
        return self._step_count

    def append(self, episode_costs: torch.Tensor) -> None:  # episode_costs: (N,)
        """Add a batch of episode costs (one per episode) to the window, dropping the oldest beyond window_size."""
        if episode_costs.dim() != 1:
            raise ValueError(
                f"episode_costs must be 1-D (one cost per episode); got shape {tuple(episode_costs.shape)}"
            )
        self._window.extend(float(cost) for cost in episode_costs.detach().double().cpu().tolist())

    def window_mean(self) -> float:
        """J_C: the mean cost over the window."""
        if not self._window:
            raise ValueError("no episode costs recorded yet: append() costs before computing the window mean")
        return math.fsum(self._window) / len(self._window)

    def step(self, window_mean: float) -> float:
        """The pure update of lambda from an estimate J_C of the expected cost; returns the new lambda.

        Inside the first ``delay_steps`` calls lambda is left as it is.
        """
        self._step_count += 1
        if self._step_count <= self.delay_steps:
            return self._value
        violation = window_mean - self.threshold
        if self.mode == "log":
            # SGD on loss_lambda = -violation * exp(log_lambda): d loss / d log_lambda = -violation * lambda.
            self._log_lambda += self.lr * self._value * violation
            if self.max_value is not None:
                self._log_lambda = min(self._log_lambda, math.log(self.max_value))
            if self.min_value > 0:
                self._log_lambda = max(self._log_lambda, math.log(self.min_value))
            self._value = math.exp(self._log_lambda)
            self.terms = {"i": self._value}
        else:
            self._integral = max(0.0, self._integral + self.lr * violation)
            self._violation_ema = _ema(self._violation_ema, violation, self.p_ema_alpha)
            proportional = self.kp * self._violation_ema
            smoothed_cost = _ema(self._previous_window_mean, window_mean, self.d_ema_alpha)
            derivative = 0.0
            if self._previous_window_mean is not None:
                derivative = self.kd * max(0.0, smoothed_cost - self._previous_window_mean)
            self._previous_window_mean = smoothed_cost
            value = max(self.min_value, self._integral + proportional + derivative)
            self._value = value if self.max_value is None else min(value, self.max_value)
            self.terms = {"p": proportional, "i": self._integral, "d": derivative}
        return self._value

    def update(self, episode_costs: torch.Tensor) -> float:  # episode_costs: (N,)
        """Append the batch's episode costs, then :meth:`step` on the window mean; returns the new lambda."""
        self.append(episode_costs)
        return self.step(self.window_mean())

    def state_dict(self) -> dict[str, Any]:
        """Everything that evolves, as plain python floats / ints / lists (checkpoint- and JSON-friendly)."""
        return {
            "mode": self.mode,
            "window": list(self._window),
            "step_count": self._step_count,
            "log_lambda": self._log_lambda,
            "integral": self._integral,
            "previous_window_mean": self._previous_window_mean,
            "violation_ema": self._violation_ema,
            "value": self._value,
            "terms": dict(self.terms),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict`; hyperparameters come from the constructor, not from the state."""
        if state["mode"] != self.mode:
            raise ValueError(f"state was saved in mode {state['mode']!r} but this multiplier is in mode {self.mode!r}")
        self._window = deque((float(cost) for cost in state["window"]), maxlen=self.window_size)
        self._step_count = int(state["step_count"])
        self._log_lambda = float(state["log_lambda"])
        self._integral = float(state["integral"])
        previous = state["previous_window_mean"]
        self._previous_window_mean = None if previous is None else float(previous)
        violation_ema = state.get("violation_ema")  # absent in checkpoints written before it existed
        self._violation_ema = None if violation_ema is None else float(violation_ema)
        self._value = float(state["value"])
        self.terms = {k: float(v) for k, v in state.get("terms", {"i": self._value}).items()}

    def __repr__(self) -> str:
        return (
            f"LagrangeMultiplier(value={self._value:.6g}, mode={self.mode!r}, threshold={self.threshold}, "
            f"window={len(self._window)}/{self.window_size}, step_count={self._step_count})"
        )


def _ema(previous: float | None, value: float, alpha: float) -> float:
    """``alpha * previous + (1 - alpha) * value``; the first value is taken as it is."""
    return value if previous is None else alpha * previous + (1.0 - alpha) * value
