"""Time budgets: the estimate of steps that fit, and a budgeted run that ends its schedule
on time."""
from __future__ import annotations

import csv

import pytest
import torch

from pixelwise.io.config import load_config
from pixelwise.training import budget as B
from pixelwise.training import schedule as S
from pixelwise.training import train as T

from test_train import spec_path, tiny_config  # noqa: F401  (fixture and helper)


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch) -> FakeClock:
    c = FakeClock()
    monkeypatch.setattr(B.time, "monotonic", c)
    return c


def run_steps(budget: B.TimeBudget, clock: FakeClock, seconds: list[float],
              first: bool = True) -> None:
    if first:
        budget.mark_step()  # the mark that the first step is measured from
    for s in seconds:
        clock.now += s
        budget.mark_step()


def test_first_step_is_dropped_once_a_real_one_is_measured(clock):
    budget = B.TimeBudget(100)
    run_steps(budget, clock, [9.0])
    assert budget.step_seconds == 9.0          # only the warm-up step so far
    run_steps(budget, clock, [2.0, 4.0], first=False)
    assert budget.step_seconds == pytest.approx(3.0)


def test_steps_left_subtracts_final_and_periodic_validations(clock):
    # 100 s budget, 20 s spent on 1 + 9 steps of 2 s (the first is 2 s as well).
    budget = B.TimeBudget(100, steps_per_validation=10)
    run_steps(budget, clock, [2.0] * 10)
    assert budget.remaining() == pytest.approx(80.0)
    budget.record_validation(5.0)
    # n steps of 2 s plus n / 10 validations of 5 s, plus the final 5 s one, in 80 s:
    # n * (2 + 0.5) <= 75  ->  n = 30
    assert budget.steps_left() == 30
    assert budget.update_total(10) == 40
    budget.max_steps = 25  # train.epochs' cap
    assert budget.update_total(10) == 25


def test_validation_is_guessed_from_pixels_until_measured(clock):
    # One step: 4 crops of 100 px in 3 s; validation: 800 px -> 2 steps' pixels, forward only.
    budget = B.TimeBudget(60, val_pixels=800, train_pixels_per_step=400)
    run_steps(budget, clock, [3.0, 3.0])
    assert budget.validation_seconds() == pytest.approx(3.0 * 2 / 3)
    budget.record_validation(7.5)
    assert budget.validation_seconds() == 7.5


def test_exhausted_when_the_next_step_and_final_validation_do_not_fit(clock):
    budget = B.TimeBudget(10)
    run_steps(budget, clock, [2.0, 2.0, 2.0])     # 6 s spent, 2 s per step
    budget.record_validation(1.5)
    assert not budget.exhausted()                  # 6 + 2 + 1.5 <= 10
    clock.now += 0.6
    assert budget.exhausted()                      # 6.6 + 2 + 1.5 > 10


def test_resumed_clock_continues_from_the_saved_elapsed_time(clock):
    budget = B.TimeBudget(60)
    budget.start(elapsed=45.0)
    assert budget.remaining() == pytest.approx(15.0)
    with pytest.raises(ValueError, match="positive"):
        B.TimeBudget(0)


def test_epochs_default_depends_on_the_budget(spec_path, tmp_path):
    raw = tiny_config(spec_path, tmp_path)
    del raw["train"]["epochs"]
    assert S.max_epochs(load_config(raw=raw)) == S.DEFAULT_EPOCHS
    assert S.max_epochs(load_config(raw=raw, overrides=["train.max_minutes=1"])) is None


def test_budgeted_run_stops_on_time_and_ends_its_schedule(spec_path, tmp_path, one_thread):
    # 8 s of training on 12 tiny images: many epochs, so the stop falls mid-epoch or at
    # an epoch's end; either way the run ends within 5% of the budget, validates once more
    # and the last logged learning rate is the cosine schedule's end value.
    seconds = 8.0
    raw = tiny_config(spec_path, tmp_path, train={"max_minutes": seconds / 60, "val_every": 3},
                      optim={"schedule": "cosine", "min_lr_ratio": 0.01, "warmup_steps": 2})
    del raw["train"]["epochs"]
    run = T.train(load_config(raw=raw))
    ckpt = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    progress = ckpt["training"]["progress"]
    assert progress["budget_spent"]
    assert 0.9 * seconds <= progress["elapsed_s"] <= 1.05 * seconds
    assert progress["step"] > 2                              # past the warm-up
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert float(rows[-1]["lr"]) == pytest.approx(0.05 * 0.01, rel=1e-6)
    assert rows[-1]["mean_iou"] != ""                       # the stop validated
    # Resuming a run whose budget is spent trains no further.
    T.train(load_config(raw=raw), resume=True)
    again = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert again["training"]["progress"]["step"] == progress["step"]
