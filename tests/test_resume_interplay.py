"""A run stopped and resumed against the same run uninterrupted, with validation, EMA,
early stopping and best-k together: the same rows in metrics.jsonl, the same checkpoints
(weights, EMA, early-stopping state, stored results), the same best checkpoint and the
same early stop. The stop is a real SIGTERM that the module sends itself inside a step."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from stpdist import EnhancedModule, Trainer
from stpdist.trainer import Preempted


class Overfitting(EnhancedModule):
    """Fits random targets (its validation loss soon rises: early stopping has work);
    sends itself SIGTERM inside the step that makes optimizer step `stop_at`."""

    def __init__(self, stop_at: int = 0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.stop_at = stop_at

    def forward(self, x):
        return self.conv(x.flatten(1, 2)).view_as(x)

    def configure_optimizer(self):
        return torch.optim.Adam(self.parameters(), lr=1e-2)

    def training_step(self, x, y):
        if self.global_step + 1 == self.stop_at:
            self.stop_at = 0
            os.kill(os.getpid(), signal.SIGTERM)
        return nn.functional.mse_loss(self(x), y)

    def validation_step(self, x, y):
        return {"loss": nn.functional.mse_loss(self(x), y)}


def _data(n: int, seed: int) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(
        torch.rand(n, 4, 1, 8, 8, generator=g), torch.rand(n, 4, 1, 8, 8, generator=g)
    )


def _fit(out: Path, stop_at: int = 0, resume: str | None = None, **settings) -> Trainer:
    torch.manual_seed(0)
    trainer = Trainer(output_dir=out, progress_bar=False, log_every_n_steps=1, **settings)
    train = DataLoader(_data(40, 1), batch_size=4, shuffle=True)  # 10 micro-batches, 3 steps
    try:
        trainer.fit(
            Overfitting(stop_at), train, DataLoader(_data(12, 2), batch_size=4), resume=resume
        )
    except Preempted:
        pass
    return trainer


def _rows(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [
        {k: v for k, v in r.items() if k not in ("time", "time_s", "train/samples_per_s")}
        for r in rows
    ]


def _checkpoints(run: Path) -> dict[str, dict]:
    found = {}
    for folder in sorted((run / "checkpoints").glob("step-*")):
        found[folder.name] = {
            name: hashlib.sha256((folder / name).read_bytes()).hexdigest()
            for name in (
                "model.safetensors",
                "ema.safetensors",
                "early_stopping.json",
                "validation.json",
            )
            if (folder / name).is_file()
        }
    return found


SETTINGS = {
    "max_epochs": 8,
    "gradient_accumulation_steps": 3,
    "val_every_n_steps": 2,
    "val_every_n_epochs": 0,
    "ema": {"decay": 0.7, "start_step": 2},
    "early_stopping": {"monitor": "val/loss", "patience": 2},
    "checkpoint": {"every_n_steps": 3, "every_epoch": False, "keep_last": 1, "keep_best": 10},
}


@pytest.mark.parametrize("stop_at", [6, 2])
def test_a_stop_and_resume_leave_what_an_uninterrupted_run_leaves(tmp_path, stop_at):
    """Stopped after step 6, the last of epoch 1 with a validation due, the resume
    validated step 6 twice (a duplicate row, the checkpoint's early-stopping state
    counted ahead). Stopped after step 2, its stop's checkpoint (not on the every-3-steps
    policy) got step 2's results stored and was ranked and kept among the best."""
    straight = _fit(tmp_path / "straight", **SETTINGS)
    _fit(tmp_path / "stopped", stop_at=stop_at, **SETTINGS)
    resumed = _fit(tmp_path / "stopped", resume="auto", **SETTINGS)
    assert _rows(tmp_path / "stopped") == _rows(tmp_path / "straight")
    assert _checkpoints(tmp_path / "stopped") == _checkpoints(tmp_path / "straight")
    assert resumed.checkpoints.best().name == straight.checkpoints.best().name


def test_a_stop_at_the_runs_last_step_closes_its_epoch_on_resume(tmp_path):
    """Stopped after step 6, the run's last and the end of its epoch 1: the resumed run
    had no step left to train, so the epoch was never closed (no train/epoch_loss row, its
    checkpoint left at the epoch's last batch, its validation not counted as scheduled)."""
    settings = {**SETTINGS, "max_epochs": 2, "val_every_n_epochs": 1, "val_every_n_steps": None}
    settings["checkpoint"] = {"every_n_steps": None, "every_epoch": True, "keep_last": 2}
    _fit(tmp_path / "straight", **settings)
    _fit(tmp_path / "stopped", stop_at=6, **settings)
    _fit(tmp_path / "stopped", resume="auto", **settings)
    assert _rows(tmp_path / "stopped") == _rows(tmp_path / "straight")
    assert _checkpoints(tmp_path / "stopped") == _checkpoints(tmp_path / "straight")
    state = json.loads(
        (tmp_path / "stopped/checkpoints/step-00000006/trainer_state.json").read_text()
    )
    assert (state["epoch"], state["batch"], state["epoch_loss"]) == (2, 0, None)


def test_a_run_extended_past_its_last_validation_stops_early_where_it_would_have(tmp_path):
    """Ended by max_steps=5 and resumed with max_steps=14: the run's last validation, at
    step 5 (off the every-4-steps schedule), counted toward patience, so the resumed run
    stopped at once where the uninterrupted one stops after step 12."""
    settings = {**SETTINGS, "val_every_n_steps": 4}
    # val/loss 0.198, 0.178, 0.159, 0.152 at steps 4, 5, 8, 12: 5 is no improvement of 0.025
    settings["early_stopping"] = {"monitor": "val/loss", "patience": 1, "min_delta": 0.025}
    settings["checkpoint"] = {"every_n_steps": 4, "every_epoch": False, "keep_last": 1}
    _fit(tmp_path / "straight", max_steps=14, **settings)
    _fit(tmp_path / "extended", max_steps=5, **settings)
    _fit(tmp_path / "extended", max_steps=14, resume="auto", **settings)
    validated = [
        [r["step"] for r in _rows(tmp_path / run) if "val/loss" in r]
        for run in ("straight", "extended")
    ]
    assert validated == [[4, 8, 12], [4, 5, 8, 12]]
    stops = [
        json.loads((tmp_path / r / "checkpoints/step-00000012/early_stopping.json").read_text())
        for r in ("straight", "extended")
    ]
    assert stops[0] == stops[1]  # the state saved with step 12, before its validation


KILLED_BEFORE_LOGGING = """
import os, sys
from stpdist import tracking
from stpdist.cli import main

log = tracking.Tracker.log

def dying_log(self, values, *, step, epoch):
    if "val/loss" in values and step == int(os.environ["DIE_AT"]):
        os._exit(9)  # SIGKILL's effect: the results are stored in the checkpoint, not logged
    log(self, values, step=step, epoch=epoch)

tracking.Tracker.log = dying_log
sys.exit(main(sys.argv[1:]))
"""


def test_results_stored_in_a_checkpoint_but_never_logged_are_logged_on_resume(tmp_path):
    """A process killed between storing a validation in its checkpoint and logging it (or
    while retention deleted an old checkpoint) lost the row for good: the resume saw the
    results stored and did not validate again."""
    from conftest import ROOT, run_cli

    debug = str(ROOT / "configs" / "debug.yaml")
    args = ["train", debug, "trainer.max_epochs=2", "logging.num_samples=0"]
    script = tmp_path / "die.py"
    script.write_text(KILLED_BEFORE_LOGGING)
    env = {**os.environ, "DIE_AT": "8", "OMP_NUM_THREADS": "1"}
    died = subprocess.run(
        [sys.executable, str(script), *args], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert died.returncode == 9, died.stderr[-2000:]
    run = tmp_path / "runs" / "debug"
    assert (run / "checkpoints/step-00000008/validation.json").is_file()
    with open(run / "metrics.jsonl", "a") as handle:
        handle.write('{"step": 9, "epoch": 1, "ti')  # and a line torn by the kill
    resumed = run_cli(*args, "--resume", "auto", cwd=tmp_path, check=True)
    assert "step 8: validation results logged from its checkpoint" in resumed.stdout
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    # the torn line, past the checkpoint, moved aside with the resume's line; no line lost
    torn = (run / "metrics.replaced-1.jsonl").read_text()
    assert torn == '{"step": 9, "epoch": 1, "ti\n'
    assert [r["step"] for r in rows if "val/loss" in r] == [8, 16]


def test_a_stop_with_a_checkpoint_is_written_where_a_job_script_looks(tmp_path, monkeypatch):
    """The SLURM scripts requeued only when their own shell was signalled: a stop that
    reached the ranks alone (`scancel --signal=USR1 JOBID`), or one under torchrun (which
    exits 1 when its ranks exit 75), ended the job unrequeued."""
    marker = tmp_path / "stopped"
    monkeypatch.setenv("STPDIST_STOP_FILE", str(marker))
    _fit(tmp_path / "run", stop_at=2, max_steps=6)
    assert marker.read_text() == f"{tmp_path / 'run' / 'checkpoints' / 'step-00000002'}\n"


def test_a_stop_file_that_cannot_be_written_leaves_the_stop_as_it_is(tmp_path, monkeypatch):
    monkeypatch.setenv("STPDIST_STOP_FILE", str(tmp_path / "no such folder" / "stopped"))
    torch.manual_seed(0)
    trainer = Trainer(output_dir=tmp_path / "run", progress_bar=False, max_steps=6)
    train = DataLoader(_data(40, 1), batch_size=4)
    with pytest.raises(Preempted):  # was FileNotFoundError: exit 1, no resume line
        trainer.fit(Overfitting(stop_at=2), train)
