"""Plain helper functions shared by recipes: seeding, the deterministic batch schedule, and step accounting.

Not a base class: each recipe calls what it needs and stays readable top to bottom.
"""

from __future__ import annotations

import random
import signal
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch

from safe_rlhf import distributed
from safe_rlhf.config import ConfigError
from safe_rlhf.logger import MetricLogger, config_to_dict

T = TypeVar("T")


def seed_everything(seed: int) -> None:
    """Same seed on every rank (data order must agree); per-rank sampling seeds are derived where sampling happens."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@dataclass(frozen=True)
class BatchSchedule:
    """Which samples each rank sees at each optimizer step: the same permutation on every rank, sliced by rank.

    The global batch of optimizer step ``s`` is ``permutation(epoch)[offset * batch_size : (offset + 1) * batch_size]``
    with ``epoch, offset = divmod(s, steps_per_epoch)``; rank ``r`` takes its contiguous share and splits it into
    micro-batches. The position in the data is therefore a pure function of the step, which makes resume exact.
    A last partial batch of an epoch is dropped (at most batch_size - 1 samples per epoch).
    """

    num_samples: int
    batch_size: int
    micro_batch_size: int
    world_size: int
    rank: int
    seed: int

    @property
    def steps_per_epoch(self) -> int:
        return self.num_samples // self.batch_size

    @property
    def gradient_accumulation_steps(self) -> int:
        return self.batch_size // (self.micro_batch_size * self.world_size)

    def permutation(self, epoch: int) -> list[int]:
        generator = torch.Generator().manual_seed(self.seed + 1000003 * epoch)
        return torch.randperm(self.num_samples, generator=generator).tolist()

    def rank_indices(self, step: int) -> list[list[int]]:
        """This rank's micro-batches (lists of sample indices) for optimizer step ``step`` (0-based, global)."""
        epoch, offset = divmod(step, self.steps_per_epoch)
        order = self.permutation(epoch)
        global_batch = order[offset * self.batch_size : (offset + 1) * self.batch_size]
        share = self.batch_size // self.world_size
        mine = global_batch[self.rank * share : (self.rank + 1) * share]
        return [mine[i : i + self.micro_batch_size] for i in range(0, share, self.micro_batch_size)]


def total_steps(num_samples: int, batch_size: int, epochs: int, max_steps: int) -> int:
    steps = (num_samples // batch_size) * epochs
    if max_steps > 0:
        steps = min(steps, max_steps)
    if steps == 0:
        raise ConfigError(
            f"{num_samples} training samples make no full batch of train.batch_size={batch_size}; "
            "lower train.batch_size or add data"
        )
    return steps


def split_train_eval(samples: Sequence[T], fraction: float, seed: int) -> tuple[list[T], list[T]]:
    """Deterministic held-out split (same on every rank)."""
    if fraction <= 0:
        return list(samples), []
    order = torch.randperm(len(samples), generator=torch.Generator().manual_seed(seed + 7)).tolist()
    held_out = max(1, int(len(samples) * fraction))
    eval_ids = set(order[:held_out])
    train = [s for i, s in enumerate(samples) if i not in eval_ids]
    evaluation = [s for i, s in enumerate(samples) if i in eval_ids]
    return train, evaluation


def shard(items: Sequence[T]) -> list[T]:
    """This rank's strided share of an evaluation set (every item is seen by exactly one rank)."""
    return list(items[distributed.rank() :: distributed.world_size()])


def chunks(items: Sequence[T], size: int) -> Iterator[list[T]]:
    for start in range(0, len(items), size):
        yield list(items[start : start + size])


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}


# Exit status of a run that stopped on a preemption signal after saving a checkpoint: the batch scripts in launch/
# requeue the job when they see it (75 = EX_TEMPFAIL, "try again later").
REQUEUE_EXIT_CODE = 75


class PreemptionWatcher:
    """Turns SIGTERM / SIGUSR1 (what SLURM sends before it kills or requeues a job) into a stop at a step boundary.

    The handler only sets a flag; :meth:`should_stop` is called once per optimizer step and agrees across ranks (a
    max over ranks), so every rank stops after the same step even if the signal reached them at different times.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def install(self) -> PreemptionWatcher:
        for signum in self.SIGNALS:
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.received = signum

    def should_stop(self) -> bool:
        flag = torch.tensor([1.0 if self.received is not None else 0.0])
        if distributed.world_size() > 1:
            import torch.distributed as dist

            flag = flag.to(distributed.device())
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item() > 0)

    def uninstall(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()


class NonFiniteError(RuntimeError):
    """Too many optimizer steps in a row had a non-finite loss; the last good state was checkpointed."""


def all_finite(value: torch.Tensor) -> bool:
    """Whether ``value`` is finite on every rank (every rank must then take the same branch)."""
    flag = torch.tensor([0.0 if bool(torch.isfinite(value.detach()).all()) else 1.0])
    if distributed.world_size() > 1:
        import torch.distributed as dist

        flag = flag.to(distributed.device())
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item() == 0)


class NonFiniteGuard:
    """Counts optimizer steps with a non-finite loss and says when to give up.

    A micro-batch whose loss is non-finite on any rank gets no backward pass on any rank (so no NaN ever reaches the
    weights, and ZeRO's collectives stay matched); the step goes on with the other micro-batches. After
    ``max_in_a_row`` such steps in a row the run stops with a checkpoint of the last good state.
    ``inject_steps`` (config ``train.inject_nonfinite_steps``) turns the loss of those steps into NaN, to test this.
    """

    def __init__(self, max_in_a_row: int, inject_steps: list[int]) -> None:
        self.max_in_a_row = max_in_a_row
        self.inject_steps = set(inject_steps)
        self.in_a_row = 0
        self.total_skipped = 0

    def prepare(self, loss: torch.Tensor, step: int) -> torch.Tensor:
        """The loss to use for optimizer step ``step`` (1-based), with fault injection applied."""
        return loss * float("nan") if step in self.inject_steps else loss

    def end_step(self, skipped_micro_batches: int, step: int) -> str | None:
        """Record a finished step; returns a message when the run must stop."""
        if skipped_micro_batches == 0:
            self.in_a_row = 0
            return None
        self.in_a_row += 1
        self.total_skipped += 1
        if self.in_a_row >= self.max_in_a_row:
            return (
                f"{self.in_a_row} optimizer steps in a row (the last at step {step}) had a non-finite loss; "
                "stopped with a checkpoint of the last good state (lower the learning rate or check the data)"
            )
        return None


def zero_backward(engine: Any, token_id: int) -> None:
    """A backward pass that adds exactly zero to every gradient, for a micro-batch whose loss was non-finite.

    DeepSpeed expects one backward per micro-step (gradient accumulation boundaries, ZeRO's reduce hooks), so a bad
    micro-batch is replaced by a two-token forward whose output is multiplied by 0: finite, and no information.
    """
    dummy = torch.full((1, 2), token_id, dtype=torch.long, device=distributed.device())
    output = engine(input_ids=dummy, attention_mask=torch.ones_like(dummy))
    values = output.logits if hasattr(output, "logits") else output.last_hidden_state
    engine.backward(values.float().sum() * 0.0)


def gradients_finite(engine: Any) -> bool:
    """Whether the gradients the coming optimizer step would apply are finite, agreed by every rank.

    A finite loss can still give a non-finite gradient (an inf that a mask hid in the forward pass). ZeRO stages 1-3
    already skip such a step: their optimizers compute the global gradient norm (we always clip) and treat a
    non-finite norm as an overflow, except bf16 under ZeRO-1/2, where DeepSpeed checks only with
    ``check_grad_overflow``. Under ZeRO-0 the gradients are plain ``.grad`` tensors, already all-reduced at the
    accumulation boundary, and nothing checks them; this does. Call between the boundary's backward and step."""
    if engine.zero_optimization_stage() > 0:
        return True
    finite = all(bool(torch.isfinite(p.grad).all()) for p in engine.module.parameters() if p.grad is not None)
    return all_finite(torch.tensor(0.0 if finite else float("nan")))


def step_unless_nonfinite_gradients(engine: Any) -> bool:
    """``engine.step()``; at an accumulation boundary with non-finite gradients (see :func:`gradients_finite`) the
    gradients are zeroed and the step runs at learning rate 0, so the weights keep their last good values and the
    schedule advances. Returns False when the step was skipped."""
    if not engine.is_gradient_accumulation_boundary() or gradients_finite(engine):
        engine.step()
        return True
    for parameter in engine.module.parameters():
        if parameter.grad is not None:
            parameter.grad.zero_()
    with paused_learning_rate(engine, active=True):
        engine.step()
    return False


class paused_learning_rate:
    """Learning rate 0 for one optimizer step (every micro-batch of the step was skipped): the weights stay as they
    are, the schedule still advances."""

    def __init__(self, engine: Any, active: bool) -> None:
        self.engine, self.active = engine, active
        self.saved: list[float] = []

    def __enter__(self) -> None:
        if self.active:
            groups = self.engine.optimizer.param_groups
            self.saved = [group["lr"] for group in groups]
            for group in groups:
                group["lr"] = 0.0

    def __exit__(self, *exc: object) -> None:
        for group, lr in zip(self.engine.optimizer.param_groups, self.saved):
            group["lr"] = lr


def create_logger(config: Any, run_dir: Any, total_steps: int, description: str) -> MetricLogger:
    """The run's metric logger from ``config.logger`` (rank 0 logs; the others get a no-op one)."""
    return MetricLogger(
        run_dir,
        config.logger.backends,
        project=config.logger.project,
        run_name=config.logger.run_name,
        wandb_mode=config.logger.wandb_mode,
        config=config_to_dict(config),
        total_steps=total_steps,
        description=description,
    )


def save_or_stop(
    step: int, total_steps: int, save_steps: int, watcher: PreemptionWatcher, save: Any, logger: MetricLogger
) -> bool:
    """End-of-step bookkeeping shared by the recipes: the periodic checkpoint, and on a preemption signal a checkpoint
    at this step boundary (unless one was just written). Returns True when the run must stop for a requeue."""
    saved = bool(save_steps) and step % save_steps == 0
    if saved:
        save()
    if step < total_steps and watcher.should_stop():
        if not saved:
            save()
        logger.message(f"stopping at step {step} on signal {watcher.received}; resume=auto continues")
        return True
    return False
