"""Wall-clock budgets: how many optimiser steps a run can afford, re-estimated as it goes.

With ``train.max_minutes`` the learning-rate schedule is laid over the steps that fit in the
budget rather than over ``train.epochs``, so a budgeted run ends its schedule (warm-up, then
decay to the end value) exactly when time runs out, instead of being cut at a high learning
rate. The estimate is

    steps that still fit = (time left - validations still to come) / seconds per step

where a step's time is measured wall time between optimiser steps (data loading included),
and the validations still to come are the final one plus the periodic ones
(``train.val_every``) that fall inside the remaining steps. Before the first validation its
cost is guessed from the step time (a forward pass is about a third of a training step) and
the number of validation pixels; afterwards the measured time replaces the guess. Time spent
validating and checkpointing counts against the budget, because it is taken from one clock.

The budget is a plain object the loop asks two questions: :meth:`TimeBudget.total_steps`
(for the schedule) and :meth:`TimeBudget.exhausted` (before each step). A resumed run starts
its clock at the elapsed time saved in its checkpoint. Because the schedule follows measured
time, a budgeted run is not bit-reproducible the way a ``train.deterministic`` run of fixed
epochs is: use ``train.epochs`` for that.
"""
from __future__ import annotations

import math
import time
from collections import deque

# A training step costs about three forward passes (forward + backward of twice the work).
_FORWARD_FRACTION = 1 / 3


class TimeBudget:
    """The run's wall-clock budget and the number of optimiser steps it affords.

    Args:
        seconds: the whole budget (training, validation and checkpoints). The clock starts
            now; :meth:`start` restarts it (a resumed run, with its saved elapsed time).
        steps_per_validation: optimiser steps between periodic validations (None: only the
            final validation).
        val_pixels, train_pixels_per_step: pixels of one validation pass and of one training
            step, for guessing the validation's cost before it has been measured.
        max_steps: the most steps the schedule may have (``train.epochs`` epochs when both
            limits are given; None: the budget alone decides).
        window: how many recent step times the running estimate averages.
    """

    def __init__(self, seconds: float, steps_per_validation: int | None = None,
                 val_pixels: int = 0, train_pixels_per_step: int = 1,
                 max_steps: int | None = None, window: int = 50):
        if seconds <= 0:
            raise ValueError(f"a time budget must be positive, got {seconds}")
        self.seconds = float(seconds)
        self.steps_per_validation = steps_per_validation
        self.val_pixels = val_pixels
        self.train_pixels_per_step = max(train_pixels_per_step, 1)
        self.max_steps = max_steps
        self.validation_s: float | None = None  # measured cost of one validation
        self._step_times: deque[float] = deque(maxlen=window)
        self._first_step: float | None = None
        self._total: int | None = None
        self.start()

    # -- clock ---------------------------------------------------------------------------
    def start(self, elapsed: float = 0.0) -> None:
        """(Re)start the clock, ``elapsed`` seconds already spent (a resumed run's)."""
        self._origin = time.monotonic() - elapsed
        self._last_mark = None

    def elapsed(self) -> float:
        return time.monotonic() - self._origin

    def remaining(self) -> float:
        return self.seconds - self.elapsed()

    def mark_step(self) -> None:
        """Call after every optimiser step: the time since the previous mark is a step."""
        now = time.monotonic()
        if self._last_mark is not None:
            if self._first_step is None:
                self._first_step = now - self._last_mark
            else:
                self._step_times.append(now - self._last_mark)
        self._last_mark = now

    def pause(self) -> None:
        """Call before work between steps that is accounted separately (validation)."""
        self._last_mark = None

    def record_validation(self, seconds: float) -> None:
        self.validation_s = float(seconds)

    # -- estimates -----------------------------------------------------------------------
    @property
    def step_seconds(self) -> float | None:
        """Mean of recent step times; the first one (allocation, compilation) only until
        another exists. None before any step was measured."""
        if self._step_times:
            return sum(self._step_times) / len(self._step_times)
        return self._first_step

    def validation_seconds(self) -> float:
        """One validation's cost: measured, else guessed from its pixels."""
        if self.validation_s is not None:
            return self.validation_s
        step = self.step_seconds or 0.0
        return step * _FORWARD_FRACTION * self.val_pixels / self.train_pixels_per_step

    def steps_left(self) -> int:
        """Optimiser steps that still fit, net of the validations they bring with them."""
        step = self.step_seconds
        if step is None:
            return 0
        val = self.validation_seconds()
        # n steps cost n * step, plus the final validation, plus n / k periodic ones.
        per_step = step + (val / self.steps_per_validation if self.steps_per_validation else 0.0)
        return max(0, math.floor((self.remaining() - val) / per_step))

    def update_total(self, steps_done: int) -> int:
        """Re-estimate the schedule's length after ``steps_done`` steps (at most
        ``max_steps``)."""
        cap = self.max_steps
        if self.step_seconds is not None:
            total = steps_done + self.steps_left()
            self._total = max(steps_done, total if cap is None else min(total, cap))
        return self.total_steps(cap if cap is not None else steps_done + 1)

    def set_total(self, steps: int) -> None:
        """Fix the schedule's length (rank 0's estimate under DDP; the steps done at a stop)."""
        self._total = steps

    def total_steps(self, default: int) -> int:
        """The current estimate of the schedule's length (``default`` before any)."""
        return self._total if self._total is not None else default

    def exhausted(self) -> bool:
        """True when one more step would end past the budget less the final validation."""
        step = self.step_seconds or 0.0
        return self.elapsed() + step + self.validation_seconds() > self.seconds
