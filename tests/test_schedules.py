"""Learning-rate schedules (issue 27): a linear warm-up composed with every schedule but
onecycle, cosine with warm restarts, and the rate the trainer logs. Expected values are
written out here from the formulas, independently of stpdist/task.py."""

from __future__ import annotations

import json
import math

import pytest
from helpers import forecaster, loader
from test_cli import DEBUG

from stpdist import Trainer
from stpdist.config import ConfigError, load_config
from stpdist.task import lr_factor

PEAK = 1e-2


def _module(**schedule):
    module = forecaster(
        "convlstm", (1, 4, 4), 3, 2, backbone={"hidden_channels": [2], "kernel_size": 3}, lr=PEAK
    )
    for key, value in schedule.items():
        setattr(module.config.schedule, key, value)
    return module


def _rates(module, steps: int) -> list[float]:
    """The optimizer's learning rate before each of `steps` scheduler steps."""
    optimizer = module.configure_optimizer()
    returned = module.configure_lr_scheduler(optimizer)
    assert returned is not None, "no scheduler built"
    scheduler = returned["scheduler"] if isinstance(returned, dict) else returned
    rates = []
    for _ in range(steps):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return rates


def _sgdr(t: int, first: int, mult: int, floor: float) -> float:
    """SGDR by its definition: walk the cycles one by one."""
    start, length = 0, first
    while t >= start + length:
        start, length = start + length, length * mult
    cosine = 0.5 * (1 + math.cos(math.pi * (t - start) / length))
    return PEAK * (floor + (1 - floor) * cosine)


CHECKED_STEPS = [0, 1, 2, 3, 4, 5, 6, 9, 10, 13, 14, 15, 16, 25, 26, 40, 45, 46, 47, 80]


@pytest.mark.parametrize("mult", [1, 2, 3])
def test_warmup_then_cosine_restarts_equals_the_formula(mult):
    """4 warm-up steps ((s + 1)/4 of the peak), then cycles of 6, 6·mult, 6·mult², …
    steps from the peak down to min_lr, restarting at the peak."""
    min_lr = 1e-4
    module = _module(
        name="cosine_restarts",
        warmup_steps=4,
        restart_every_steps=6,
        restart_mult=mult,
        min_lr=min_lr,
    )
    rates = _rates(module, max(CHECKED_STEPS) + 1)
    for s in CHECKED_STEPS:
        expected = PEAK * (s + 1) / 4 if s < 4 else _sgdr(s - 4, 6, mult, min_lr / PEAK)
        assert rates[s] == pytest.approx(expected, rel=1e-12, abs=1e-15), (s, mult)
    # a restart: the step after a cycle's last step is back at the peak
    first_restart = 4 + 6
    assert rates[first_restart] == pytest.approx(PEAK)
    assert rates[first_restart - 1] < 0.1 * PEAK


def test_warmup_composes_with_a_constant_rate():
    """`name: none` with warm-up steps: a ramp, then the optimizer's rate (the warm-up was
    ignored without a cosine before issue 27)."""
    rates = _rates(_module(name="none", warmup_steps=5), 12)
    expected = [PEAK * (s + 1) / 5 for s in range(5)] + [PEAK] * 7
    assert rates == pytest.approx(expected, rel=1e-12)


def test_warmup_then_cosine_equals_the_formula():
    rates = _rates(_module(name="cosine", warmup_steps=3, total_steps=23, min_lr=1e-3), 30)
    floor = 1e-3 / PEAK
    for s in [0, 1, 2, 3, 7, 13, 22, 23, 29]:
        if s < 3:
            expected = PEAK * (s + 1) / 3
        else:
            progress = min(1.0, (s - 3) / 20)
            expected = PEAK * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))
        assert rates[s] == pytest.approx(expected, rel=1e-12), s


def test_cosine_restarts_per_epoch():
    """With `interval: epoch` the restarts count epochs (no total_steps needed)."""
    module = _module(name="cosine_restarts", interval="epoch", restart_every_steps=3)
    returned = module.configure_lr_scheduler(module.configure_optimizer())
    assert returned["interval"] == "epoch"
    factor = lr_factor(module.config.schedule, PEAK, None)
    assert [factor(e) for e in (0, 3, 6)] == [1.0, 1.0, 1.0]  # every 3rd epoch restarts
    assert factor(1) == pytest.approx(0.75) and factor(2) == pytest.approx(0.25)


@pytest.mark.parametrize(
    "overrides, key",
    [
        (["model.schedule.name=cosine_restarts"], "model.schedule.restart_every_steps"),
        (
            ["model.schedule.name=onecycle", "model.schedule.warmup_steps=10"],
            "model.schedule.warmup_steps",
        ),
        (
            ["model.schedule.name=cosine_restarts", "model.schedule.restart_mult=0"],
            "model.schedule.restart_mult",
        ),
    ],
)
def test_schedule_settings_that_cannot_work_are_refused_naming_the_key(overrides, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(DEBUG, overrides)


def test_logged_learning_rate_is_the_scheduled_one(tmp_path):
    """`train/lr` in metrics.jsonl at step s is the rate after s optimizer steps: the
    warm-up and restart formula evaluated at s."""
    module = _module(name="cosine_restarts", warmup_steps=2, restart_every_steps=3)
    trainer = Trainer(
        output_dir=tmp_path / "run", max_epochs=2, log_every_n_steps=1, progress_bar=False
    )
    trainer.fit(module, loader(16, 4))
    trainer.close()
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    logged = {x["step"]: x["train/lr"] for x in lines if "train/lr" in x}
    assert sorted(logged) == list(range(1, 9))  # 16 samples / batch 4 × 2 epochs
    for s, rate in logged.items():
        expected = PEAK * (s + 1) / 2 if s < 2 else _sgdr(s - 2, 3, 1, 0.0)
        assert rate == pytest.approx(expected, rel=1e-12), s


def test_a_one_cycle_too_short_for_the_run_names_the_setting_that_lengthens_it(tmp_path):
    """A Forecaster's one-cycle schedule is the config's: the refusal names
    model.schedule.total_steps (a module's own schedule is refused naming its code:
    tests/test_trainer.py)."""
    from stpdist.errors import InputError

    module = _module(name="onecycle", total_steps=3)
    trainer = Trainer(output_dir=tmp_path / "run", max_epochs=1, progress_bar=False)
    with pytest.raises(InputError, match=r"lasts 3 steps, this run plans 4: set model\.sched"):
        trainer.fit(module, loader(16, 4))
    trainer.close()


@pytest.mark.parametrize(
    ("schedule", "said"),
    [
        ({"name": "onecycle", "min_lr": 1e-3},
         "model.schedule.name onecycle does not read min_lr 0.001 (onecycle ends at lr / 25"),
        ({"name": "cosine", "restart_every_steps": 5, "restart_mult": 2},
         "model.schedule.name cosine does not read restart_every_steps 5, restart_mult 2:"),
        ({"name": "cosine", "total_steps": 10},
         "model.schedule.total_steps 10 is shorter than this run's 24 steps: the cosine ends "
         "at step 10, and the last 14 steps train at min_lr 0"),
        ({"name": "none", "min_lr": 1e-3},  # the default schedule: said too (a diff review)
         "model.schedule.name none does not read min_lr 0.001: only the cosine schedules"),
        ({"name": "cosine", "total_steps": 24, "min_lr": 1e-3}, None),  # as read: nothing said
        ({"name": "cosine_restarts", "restart_every_steps": 5, "min_lr": 1e-3}, None),
    ],
)  # fmt: skip
def test_schedule_settings_the_schedule_does_not_read_are_said(schedule, said, caplog):
    """A schedules review: these ran silently (14 of 24 steps at lr 0 for the short cosine)."""
    module = _module(**schedule)
    module.planned_steps = 24
    module.configure_lr_scheduler(module.configure_optimizer())
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    if said is None:
        assert not warned
    else:
        assert len(warned) == 1 and said in warned[0], warned


@pytest.mark.parametrize(
    "schedule",
    [("model.schedule.name=cosine", "model.schedule.total_steps=8", "model.schedule.min_lr=1e-4"),
     ("model.schedule.name=onecycle", "model.schedule.total_steps=8")],
)  # fmt: skip
def test_a_resume_with_another_learning_rate_goes_on_with_the_schedule_scaled(tmp_path, schedule):
    """A resume with another model.optimizer.lr was refused (only a new run from the
    weights, without the optimizer's moments, could change it): now the restored schedule
    goes on as the new rate's, step for step, a cosine's min_lr floor kept."""
    from conftest import run_cli

    common = ("train", DEBUG, "trainer.max_steps=8", "trainer.log_every_n_steps=1",
              "trainer.checkpoint.every_n_steps=2", "logging.num_samples=0", *schedule)  # fmt: skip

    def rates(run: str) -> dict[int, float]:
        lines = (tmp_path / run / "metrics.jsonl").read_text().splitlines()
        return {x["step"]: x["train/lr"] for x in map(json.loads, lines) if "train/lr" in x}

    run_cli(*common, "model.optimizer.lr=0.002", "trainer.output_dir=new", cwd=tmp_path,
            check=True)  # fmt: skip
    first = (*common, "model.optimizer.lr=0.004", "trainer.output_dir=changed")
    run_cli(*first, "trainer.max_steps=4", cwd=tmp_path, check=True)
    proc = run_cli(*common, "model.optimizer.lr=0.002", "trainer.output_dir=changed",
                   "--resume", "auto", cwd=tmp_path, check=True)  # fmt: skip
    assert "model.optimizer.lr 0.004 (the checkpoint's) → 0.002: from step 4 the schedule goes " \
        "on scaled by 0.5" in proc.stdout + proc.stderr  # fmt: skip
    expected, got = rates("new"), rates("changed")
    assert sorted(got) == list(range(1, 9))
    for step in range(5, 9):  # the rate after each step, as the new rate's run had it
        assert got[step] == pytest.approx(expected[step], rel=1e-12), step
    assert got[4] != pytest.approx(expected[4])  # before the change: the old rate's
