"""What a long, unattended run shows in its log file and metrics: a line per log step
instead of a redrawn bar when output is not a terminal; throughput and epoch times without
the pauses of checkpoints and validations; no epoch loss of part of an epoch; a schedule
stretched by a resume said at start."""

from __future__ import annotations

import json
import os
import re
import signal

import pytest
import torch
from conftest import ROOT, run_cli
from helpers import TinyModule, loader

from stpdist import Trainer
from stpdist.checkpoint import CheckpointConfig, _entry


def _rows(run) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def test_output_that_is_not_a_terminal_gets_a_line_per_log_step_not_a_bar(tmp_path, capsys):
    """Redirected to a file (SLURM), the bar was one line redrawn 700 times per 320 steps;
    with the bar off, nothing was said between epochs."""
    for bar in (True, False):
        run = tmp_path / f"bar-{bar}"
        Trainer(output_dir=run, max_epochs=1, log_every_n_steps=2, progress_bar=bar).fit(
            TinyModule(), loader(16)
        )
        out, err = capsys.readouterr()
        assert "\r" not in out + err
        lines = [line for line in out.splitlines() if line.startswith("[step ")]
        assert [line.split("]")[0] for line in lines] == ["[step 2/4", "[step 4/4"]
        assert "epoch 0, loss " in lines[0] and " samples/s" in lines[0]
        # when it was written, and how long the rest takes (a monitoring review: a log
        # could not tell a stalled run from a slow one)
        assert re.fullmatch(
            r"\[step 2/4\] \d\d:\d\d:\d\d epoch 0, loss \S+, lr \S+, \S+ samples/s, "
            r"elapsed 0:00:\d\d, ETA 0:00:\d\d",
            lines[0],
        ), lines[0]
    # a validation says it starts: the log is not silent while it runs
    Trainer(output_dir=tmp_path / "val", max_epochs=1, log_every_n_steps=2,
            progress_bar=False).fit(TinyModule(), loader(16), loader(4, shuffle=False))  # fmt: skip
    out = capsys.readouterr().out
    assert re.search(r"^\[step 4/4\] \d\d:\d\d:\d\d validating$", out, re.MULTILINE), out


def test_throughput_and_epoch_time_leave_out_checkpoints_and_validations(monkeypatch):
    """samples/s dipped 40-60× after each validation, and an epoch's time_s held the
    previous epoch's validation: the clocks ran on through the pauses."""
    import stpdist.trainer as trainer_module

    now = [0.0]
    monkeypatch.setattr(trainer_module.time, "perf_counter", lambda: now[0])
    meter = trainer_module.Meter(accelerator=None)
    meter.add(None, 10, {})  # skipped: no loss to reduce, samples counted
    meter._window["batches"] = 0
    now[0] = 1.0  # one second of training
    meter.pause_clocks()
    now[0] = 31.0  # a 30 s validation
    meter.restart_clocks()
    now[0] = 32.0  # one more second of training
    assert meter._window_start == pytest.approx(30.0)
    summary, _ = meter.epoch()
    assert summary["time_s"] == pytest.approx(2.0)


def test_an_epoch_resumed_midway_logs_the_whole_epochs_loss(tmp_path):
    """After a resume mid-epoch, train/epoch_loss averaged the steps since the resume
    only, under the same key as whole epochs; then it logged none. Each checkpoint now
    carries the epoch's loss so far: the resumed run logs the uninterrupted run's."""
    every = CheckpointConfig(every_n_steps=1, every_epoch=True, keep_last=3)
    fields = {"progress_bar": False, "checkpoint": every}
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    torch.manual_seed(0)
    Trainer(max_epochs=2, output_dir=straight, **fields).fit(TinyModule(), loader(16))
    torch.manual_seed(0)
    Trainer(max_steps=2, output_dir=stopped, **fields).fit(TinyModule(), loader(16))  # 2 of 4
    carried = json.loads((stopped / "checkpoints/step-00000002/trainer_state.json").read_text())
    assert carried["epoch_loss"]["batches"] == 2 and carried["epoch_loss"]["skipped"] == 0
    Trainer(max_epochs=2, output_dir=stopped, **fields).fit(TinyModule(), loader(16), resume="auto")
    losses = [
        [r["train/epoch_loss"] for r in _rows(run) if "time_s" in r] for run in (straight, stopped)
    ]
    assert len(losses[0]) == 2 and losses[1] == pytest.approx(losses[0], rel=1e-12, abs=0)
    at_epoch_end = json.loads(
        (stopped / "checkpoints/step-00000008/trainer_state.json").read_text()
    )
    assert at_epoch_end["epoch_loss"] is None  # a new epoch: nothing to carry


def test_an_epoch_resumed_from_a_checkpoint_without_its_loss_logs_none(tmp_path, capsys):
    """A checkpoint of an earlier stpdist (no epoch_loss): the part's mean is not logged as
    the epoch's, and a line says why that epoch has none (it was missing without a word)."""
    every = CheckpointConfig(every_n_steps=1, every_epoch=True, keep_last=3)
    fields = {"output_dir": tmp_path / "run", "progress_bar": False, "checkpoint": every}
    Trainer(max_steps=2, **fields).fit(TinyModule(), loader(16))
    for folder in (tmp_path / "run/checkpoints").glob("step-*"):
        state = folder / "trainer_state.json"
        record = json.loads(state.read_text())
        del record["epoch_loss"]
        state.write_text(json.dumps(record))
        manifest = json.loads((folder / "manifest.json").read_text())
        manifest["files"]["trainer_state.json"] = _entry(state)
        (folder / "manifest.json").write_text(json.dumps(manifest))
    capsys.readouterr()
    Trainer(max_epochs=2, **fields).fit(TinyModule(), loader(16), resume="auto")
    epochs = [r for r in _rows(tmp_path / "run") if "time_s" in r]
    assert [("train/epoch_loss" in r) for r in epochs] == [False, True]
    said = [x for x in capsys.readouterr().err.splitlines() if "train/epoch_loss" in x]
    assert len(said) == 1 and "epoch 0's train/epoch_loss will not be logged" in said[0]


def test_a_resume_that_stretches_a_cosine_schedule_says_so(tmp_path, caplog):
    """Extended from 1 to 2 epochs, a cosine over the planned steps restarted its rate
    (1e-4 at step 8, 1.4e-3 at step 9) without a word."""
    debug = str(ROOT / "configs" / "debug.yaml")
    cosine = ["model.schedule.name=cosine", "model.schedule.min_lr=0.0001", "logging.num_samples=0"]
    run_cli("train", debug, *cosine, "trainer.max_epochs=1", cwd=tmp_path, check=True)
    proc = run_cli(
        "train",
        debug,
        *cosine,
        "trainer.max_epochs=2",
        "--resume",
        "auto",
        cwd=tmp_path,
        check=True,
    )
    assert (
        "the checkpoint's run planned 8 steps, this one 16: the lr schedule, which spans the "
        "planned steps, is rebuilt for 16 from here, so its rate jumps at step 9; to keep the "
        "first run's schedule set model.schedule.total_steps=8"
    ) in proc.stderr
    fixed = [*cosine, "model.schedule.total_steps=16", "trainer.output_dir=runs/fixed"]
    run_cli("train", debug, *fixed, "trainer.max_epochs=1", cwd=tmp_path, check=True)
    proc = run_cli("train", debug, *fixed, "trainer.max_epochs=2", "--resume", "auto", cwd=tmp_path)
    assert proc.returncode == 0 and "rebuilt" not in proc.stderr


class _StoppedAt(TinyModule):
    """SIGTERM during the training step of `stop_at` (0: never); an epoch-interval lr
    schedule, whose log step at an epoch's end holds its row until the epoch's rate."""

    stop_at = 0

    def configure_lr_scheduler(self, optimizer):
        return {
            "scheduler": torch.optim.lr_scheduler.StepLR(optimizer, 1, 0.5),
            "interval": "epoch",
        }

    def training_step(self, inputs, targets):
        if self.global_step + 1 == self.stop_at:
            os.kill(os.getpid(), signal.SIGTERM)  # fit's handler stops after this step
        return super().training_step(inputs, targets)


@pytest.mark.parametrize("stop_at", [3, 4])  # mid-window; an epoch's last step, a log step
def test_a_run_stopped_and_resumed_logs_the_rows_of_an_uninterrupted_one(tmp_path, stop_at):
    """After a SIGTERM stop between two log steps, the next train/loss averaged only the
    steps since the resume; an epoch closed after a resume logged time_s 0.0; a stop at an
    epoch's last log step lost that step's row. Checkpoints now carry the log window."""
    from stpdist.trainer import Preempted

    every = CheckpointConfig(every_n_steps=100, every_epoch=False)
    fields = {"max_epochs": 3, "log_every_n_steps": 2, "progress_bar": False, "checkpoint": every}
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    torch.manual_seed(0)
    Trainer(output_dir=straight, **fields).fit(_StoppedAt(), loader(16, shuffle=False))
    torch.manual_seed(0)
    module = _StoppedAt()
    module.stop_at = stop_at
    with pytest.raises(Preempted):
        Trainer(output_dir=stopped, **fields).fit(module, loader(16, shuffle=False))
    Trainer(output_dir=stopped, **fields).fit(
        _StoppedAt(), loader(16, shuffle=False), resume="auto"
    )

    def rows(run):
        kept = {}
        for row in _rows(run):
            for key in ("train/samples_per_s", "time_s", "time"):  # the clocks
                row.pop(key, None)
            kept[(row["step"], tuple(sorted(row)))] = row
        return kept

    held = [r for r in _rows(stopped) if r["step"] == 4 and "train/loss" in r]
    assert len(held) == 1 and held[0]["train/samples_per_s"] > 0  # was 0.0 (no samples)
    expected, got = rows(straight), rows(stopped)
    assert sorted(got) == sorted(expected)
    for key, row in expected.items():
        for name, value in row.items():
            assert got[key][name] == pytest.approx(value, rel=1e-12, abs=0), (key, name)
    assert len([r for r in _rows(stopped) if "time_s" in r]) == 3


class _InfiniteExtra(TinyModule):
    def training_step(self, inputs, targets):
        loss = super().training_step(inputs, targets)
        return {"loss": loss, "psnr": float("inf") if self.global_step == 0 else 20.0}


def test_a_non_finite_extra_in_a_carried_window_leaves_the_checkpoint_whole(tmp_path):
    """An extra scalar of inf (a PSNR of a perfect batch) in the log window was written into
    the checkpoint's `window` and then refused on reading: every such checkpoint was
    "damaged", and the run fell back to an older one or had none to resume from."""
    from stpdist.checkpoint import damage, read_state

    every = CheckpointConfig(every_n_steps=1, every_epoch=False, keep_last=4, keep_best=0)
    Trainer(max_steps=3, output_dir=tmp_path, progress_bar=False, log_every_n_steps=2,
            checkpoint=every).fit(_InfiniteExtra(), loader(16))  # fmt: skip
    first = tmp_path / "checkpoints" / "step-00000001"
    assert damage(first) is None
    assert read_state(first).window["extras"]["psnr"] == [float("inf"), 1]
    state = Trainer(max_steps=4, output_dir=tmp_path, progress_bar=False, log_every_n_steps=2,
                    checkpoint=every).fit(_InfiniteExtra(), loader(16), resume="auto")  # fmt: skip
    assert state.global_step == 4
