"""What a checkpoint says is true: the metrics stored with step N are step N's validation
(recorded after the save, listed in the manifest), a validation due at a resumed step runs,
Ctrl-C saves and says how to resume, short step names, a missing manifest or a malformed
`validation.json` is damage (only checkpoints from before manifests load unverified), and
batch-dict extras named like a hook's positional parameters (issues 24 and 25)."""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import run_cli, unserved
from helpers import TinyModule, TinySequences, loader
from torch import nn
from torch.utils.data import DataLoader, Dataset

import stpdist
import stpdist.checkpoint as ckpt
from stpdist import Trainer
from stpdist.config import CheckpointConfig
from stpdist.console import strict_json

ROOT = Path(__file__).resolve().parent.parent
DEBUG = str(ROOT / "configs" / "debug.yaml")


def rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def val_rows(out: Path) -> dict[int, dict]:
    """The validation rows of metrics.jsonl by step; a step validated twice fails."""
    found: dict[int, dict] = {}
    for row in rows(out):
        if "val/loss" in row:
            assert row["step"] not in found, f"step {row['step']} validated twice"
            found[row["step"]] = row
    return found


def manifest_files(folder: Path) -> dict:
    return json.loads((folder / ckpt.MANIFEST_FILE).read_text())["files"]


def _flip(file: Path) -> None:
    data = bytearray(file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    file.write_bytes(bytes(data))


# ----------------------------------------------------------------------------- debug run
@pytest.fixture(scope="module")
def debug_run(tmp_path_factory) -> Path:
    """configs/debug.yaml trained as the README's quick start does (2 epochs: checkpoints
    at steps 8 and 16, each validated after its save). Tests copy it before changing it."""
    base = tmp_path_factory.mktemp("debug")
    run_cli(
        "train", DEBUG, "logging.num_samples=0", cwd=base, check=True
    )  # no pictures checked here
    return base


@pytest.fixture
def debug_copy(debug_run, tmp_path) -> Path:
    shutil.copytree(debug_run, tmp_path / "w")
    return tmp_path / "w"


# ----------------------------------------------------------------------------- item 3
def test_every_checkpoint_holds_the_validation_of_its_own_step(tmp_path):
    """Uninterrupted, 3 epochs: each checkpoint's validation.json (in its manifest) is the
    validation logged at its step, and its trainer_state.json holds no other step's."""
    torch.manual_seed(0)
    policy = CheckpointConfig(every_epoch=True, keep_last=10, keep_best=1)
    trainer = Trainer(output_dir=tmp_path, progress_bar=False, max_epochs=3, checkpoint=policy)
    trainer.fit(TinyModule(lr=0.01), loader(16, 4), loader(8, 4, False))
    logged = val_rows(tmp_path)
    assert sorted(logged) == [4, 8, 12]
    for step in (4, 8, 12):
        folder = tmp_path / "checkpoints" / f"step-{step:08d}"
        assert ckpt.VALIDATION_FILE in manifest_files(folder)
        assert ckpt.damage(folder, deep=True) is None
        recorded = json.loads((folder / ckpt.VALIDATION_FILE).read_text())
        assert recorded["val/loss"] == logged[step]["val/loss"]
        state = json.loads((folder / ckpt.STATE_FILE).read_text())
        assert state["metrics"] in ({}, recorded), f"step {step} stores another step's metrics"
        assert state["metrics_step"] in (None, step)


def test_second_resume_with_nothing_to_train_prints_the_last_steps_metrics(debug_copy):
    """`make demo` run twice: the second run resumes from step 16 with nothing to train
    and must print step 16's validation, not step 8's."""
    run = debug_copy / "runs" / "debug"
    logged = val_rows(run)
    assert sorted(logged) == [8, 16]
    assert logged[8]["val/mse"] != logged[16]["val/mse"]
    out = run_cli(
        "train", DEBUG, "logging.num_samples=0", "--resume", "auto", cwd=debug_copy, check=True
    ).stdout
    assert "resumed from runs/debug/checkpoints/step-00000016" in out
    assert f"final validation MSE per pixel {logged[16]['val/mse']:.5g} " in out
    assert sorted(val_rows(run)) == [8, 16]  # its validation is stored: not run again


class ScriptedValidation(TinyModule):
    """Validation loss taken in turn from `values` (one batch per validation); a value of
    None makes that validation fail."""

    def __init__(self, values: list[float | None]) -> None:
        super().__init__(lr=0.01, scheduler=False)
        self.values = list(values)

    def validation_step(self, inputs, targets):
        value = self.values.pop(0)
        if value is None:
            raise RuntimeError("validation failed")
        return {"loss": torch.tensor(value), "predictions": self(inputs)}


def test_validation_due_at_the_resumed_step_runs_and_best_ranks_by_own_metrics(tmp_path):
    """A run stopped by an error right after checkpoint 4 was saved: its validation never
    ran. The resumed run must run it before training on (so metrics.jsonl has the rows of an
    uninterrupted run), store it with checkpoint 4, and best-k must rank checkpoint 4 by
    it, not by step 2's metrics that it held at save time."""
    policy = CheckpointConfig(every_n_steps=4, every_epoch=False, keep_last=10, keep_best=1)

    def trainer() -> Trainer:
        return Trainer(
            output_dir=tmp_path, progress_bar=False, max_steps=8, max_epochs=None,
            val_every_n_steps=2, checkpoint=policy,
        )  # fmt: skip

    torch.manual_seed(0)
    with pytest.raises(RuntimeError, match="validation failed"):
        trainer().fit(ScriptedValidation([0.1, None]), loader(40, 4), loader(8, 8, False))
    four = tmp_path / "checkpoints" / "step-00000004"
    assert ckpt.damage(four, deep=True) is None and not (four / ckpt.VALIDATION_FILE).exists()

    t = trainer()
    t.fit(ScriptedValidation([0.9, 0.7, 0.5]), loader(40, 4), loader(8, 8, False), "auto")
    logged = val_rows(tmp_path)
    assert {step: row["val/loss"] for step, row in logged.items()} == pytest.approx(
        {2: 0.1, 4: 0.9, 6: 0.7, 8: 0.5}
    )
    assert json.loads((four / ckpt.VALIDATION_FILE).read_text())["val/loss"] == pytest.approx(0.9)
    assert t.checkpoints.best() == tmp_path / "checkpoints" / "step-00000008"


def _strict(text: str):
    """JSON as jq, Node or a strict Python parser reads it: bare NaN/Infinity refused."""
    return json.loads(text, parse_constant=lambda name: pytest.fail(f"bare {name} in {text}"))


def test_non_finite_validation_results_are_strict_json_and_read_back(tmp_path):
    """A validation loss of NaN: validation.json and trainer_state.json hold "nan" (they
    held bare `NaN`, which strict JSON parsers refuse); the checkpoint reads back NaN, ranks
    below every number and resumes."""
    policy = CheckpointConfig(every_n_steps=2, every_epoch=False, keep_last=10, keep_best=1)

    def trainer(steps: int) -> Trainer:
        return Trainer(
            output_dir=tmp_path, progress_bar=False, max_steps=steps, max_epochs=None,
            val_every_n_steps=2, checkpoint=policy,
        )  # fmt: skip

    torch.manual_seed(0)
    trainer(4).fit(ScriptedValidation([0.5, float("nan")]), loader(40, 4), loader(8, 8, False))
    root = tmp_path / "checkpoints"
    four = root / "step-00000004"
    assert _strict((four / ckpt.VALIDATION_FILE).read_text())["val/loss"] == "nan"
    for file in root.glob("*/*.json"):
        _strict(file.read_text())
    assert math.isnan(ckpt._recorded_validation(four)["val/loss"])
    assert ckpt.damage(four, deep=True) is None
    state = ckpt.read_state(four)  # a state holding its step's NaN, as strict_json writes it
    state.metrics, state.metrics_step = {"val/loss": float("nan")}, 4
    state.window["grad_norm"] = float("inf")
    copy = tmp_path / "copy" / four.name
    copy.mkdir(parents=True)
    text = strict_json(ckpt._state_json(state))
    assert '"nan"' in text and '"inf"' in text
    (copy / ckpt.STATE_FILE).write_text(text)
    back = ckpt.read_state(copy)
    assert math.isnan(back.metrics["val/loss"]) and back.window["grad_norm"] == float("inf")
    t = trainer(6)
    t.fit(ScriptedValidation([0.7]), loader(40, 4), loader(8, 8, False), "auto")
    assert (root / "step-00000006").is_dir() and sorted(val_rows(tmp_path)) == [2, 4, 6]
    assert t.checkpoints.best() == root / "step-00000002"  # 0.5; NaN ranks last


def test_validation_written_but_not_listed_does_not_count(tmp_path, monkeypatch):
    """A crash between writing validation.json and listing it in the manifest leaves an
    intact checkpoint whose validation does not count (the resume runs it again)."""
    manager = ckpt.CheckpointManager(tmp_path, CheckpointConfig(keep_last=5))
    model, optimizer = _model()
    state = ckpt.TrainState(global_step=3, metrics={"val/loss": 7.0}, metrics_step=1)
    manager.bind(Acc(), model, optimizer, None, None, ckpt.TrainState(global_step=2))
    path = manager.maybe_save(state, last=True)
    assert json.loads((path / ckpt.STATE_FILE).read_text())["metrics"] == {}  # step 1's
    real = ckpt.replace_text

    def dies_at_the_manifest(file, text):
        if file.name == ckpt.MANIFEST_FILE:
            raise KeyboardInterrupt  # killed here
        real(file, text)

    monkeypatch.setattr(ckpt, "replace_text", dies_at_the_manifest)
    with pytest.raises(KeyboardInterrupt):
        manager.record_metrics(3, {"val/loss": 0.5})
    monkeypatch.undo()
    assert (path / ckpt.VALIDATION_FILE).is_file()
    assert ckpt.damage(path, deep=True) is None
    assert manager.resolve("auto") == path
    loaded = manager.load(path, Acc(), *_model(), None)
    assert loaded.metrics_step is None and loaded.metrics == {}  # the validation runs again
    manager.record_metrics(3, {"val/loss": 0.5})  # re-recorded: listed, counted
    assert ckpt.VALIDATION_FILE in manifest_files(path)
    assert manager.load(path, Acc(), *_model(), None).metrics == {"val/loss": 0.5}
    assert ckpt.damage(path, deep=True) is None


# ----------------------------------------------------------------------------- item 4
def _wait_for(condition, proc: subprocess.Popen, what: str, timeout: float = 180) -> None:
    deadline = time.time() + timeout
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"exited {proc.returncode} before {what}: {proc.communicate()}")
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def _val_steps(out: Path) -> list[int]:
    if not (out / "metrics.jsonl").is_file():
        return []
    return [row["step"] for row in rows(out) if "val/loss" in row]


def _train_in_a_session(folder: Path, overrides: list[str]) -> subprocess.Popen:
    """`stpdist train` on the debug config in a process group of its own, as a terminal or
    a launcher starts it (a signal to the group reaches its DataLoader workers too): a
    fresh process, in that group."""
    env = unserved({**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"})
    return subprocess.Popen(
        [sys.executable, "-m", "stpdist", "train", DEBUG, *overrides],
        cwd=folder, env=env, start_new_session=True, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip


def test_ctrl_c_stops_with_a_checkpoint_says_how_to_resume_and_revalidates(tmp_path):
    """Ctrl-C (SIGINT to the process group, DataLoader workers included) on `stpdist
    train`: a checkpoint at the agreed step, one line saying what was saved and the
    command that continues, exit 130; the resume runs the validation the stop cut off, so
    metrics.jsonl has one validation row per due step, as an uninterrupted run."""
    overrides = ["trainer.max_epochs=200", "trainer.val_every_n_steps=2", "logging.num_samples=0"]
    proc = _train_in_a_session(tmp_path, overrides)
    run = tmp_path / "runs" / "debug"
    try:
        _wait_for(lambda: len(_val_steps(run)) >= 1, proc, "a validation")
        os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130, stderr[-3000:]
    assert "Ctrl-C again to abort at once" in stderr
    line = next(x for x in stderr.splitlines() if "stopped on Ctrl-C" in x)
    step = int(line.split("after step ")[1].split(";")[0])
    saved = f"runs/debug/checkpoints/step-{step:08d}"
    command = f"stpdist train {DEBUG} {' '.join(overrides)} --resume auto"
    assert line == f"stpdist: stopped on Ctrl-C after step {step}; saved checkpoint {saved}; " + (
        f"resume with {command}"
    )
    assert ckpt.damage(tmp_path / saved, deep=True) is None
    assert step not in _val_steps(run)  # a stop at a validation step came before it

    resumed = run_cli(
        "train", DEBUG, *overrides, f"trainer.max_steps={step}", "--resume", "auto",
        cwd=tmp_path, check=True,
    )  # fmt: skip
    assert f"resumed from {saved}" in resumed.stdout
    last = [step] if step % 2 else []  # the run's end at an odd step validates there
    assert _val_steps(run) == [*range(2, step + 1, 2), *last]  # the one cut off, once
    assert ckpt.VALIDATION_FILE in manifest_files(tmp_path / saved)


def test_a_launchers_sigterm_to_the_process_group_with_loader_workers_stops_with_a_checkpoint(
    tmp_path,
):
    """torchrun and `accelerate launch` stop a rank by signalling its process group, SLURM
    every process of the step: the DataLoader workers get the signal too. torch's worker
    died on a SIGTERM not sent by its parent, and the rank failed with "DataLoader worker
    exited unexpectedly", no checkpoint at the stop; the workers now leave it to the rank."""
    overrides = ["trainer.max_epochs=200", "trainer.num_workers=2", "logging.num_samples=0"]
    proc = _train_in_a_session(tmp_path, overrides)
    run = tmp_path / "runs" / "debug"
    try:
        _wait_for(lambda: len(_val_steps(run)) >= 1, proc, "a validation")

        def workers_running() -> bool:
            found = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True)
            return bool(found.stdout.split())

        _wait_for(workers_running, proc, "DataLoader workers")  # a fresh set each epoch
        os.killpg(proc.pid, signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 75, stderr[-3000:]
    assert "exited unexpectedly" not in stderr
    line = next(x for x in stderr.splitlines() if "stopped on a signal" in x)
    step = int(line.split("after step ")[1].split(";")[0])
    assert ckpt.damage(run / "checkpoints" / f"step-{step:08d}", deep=True) is None


def test_a_second_ctrl_c_aborts_at_once(tmp_path):
    """The first Ctrl-C waits for the step in progress (here one that hangs); the second
    aborts at once."""
    script = ROOT / "tests" / "dist_train.py"
    env = unserved({**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"})
    proc = subprocess.Popen(
        [sys.executable, str(script), "--out", str(tmp_path), "--steps", "20", "--hang-at", "3"],
        env=env, start_new_session=True, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        metrics = tmp_path / "metrics.jsonl"
        _wait_for(lambda: metrics.is_file() and len(rows(tmp_path)) >= 3, proc, "step 3")
        time.sleep(0.5)  # now inside the hanging step
        os.killpg(proc.pid, signal.SIGINT)
        time.sleep(1.5)
        assert proc.poll() is None, "the first Ctrl-C must not abort the step"
        os.killpg(proc.pid, signal.SIGINT)
        start = time.time()
        _, stderr = proc.communicate(timeout=30)
        assert time.time() - start < 20
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert "Ctrl-C again to abort at once" in stderr
    assert "KeyboardInterrupt" in stderr and proc.returncode != 0


# ----------------------------------------------------------------------------- item 5
def test_short_step_names_select_a_checkpoint(debug_copy):
    for name in ("8", "step-8", "step-00000008"):  # the step alone too (a review)
        out = run_cli("validate", DEBUG, "--ckpt", name, cwd=debug_copy, check=True).stdout
        assert "checkpoint runs/debug/checkpoints/step-00000008 (step 8), split val" in out
    run = debug_copy / "runs" / "debug"
    module = stpdist.load(run, ckpt="step-8")
    assert module.model_folder == run / "checkpoints" / "step-00000008"
    assert stpdist.load(run, ckpt="step-00000016").model_folder.name == "step-00000016"


def test_an_unknown_checkpoint_name_lists_the_available_in_one_line(debug_copy):
    proc = run_cli("validate", DEBUG, "--ckpt", "step-320", cwd=debug_copy)
    assert proc.returncode == 2, proc.stderr
    [line] = proc.stderr.strip().splitlines()
    assert "no checkpoint 'step-320' in runs/debug/checkpoints" in line
    assert "available: step-00000008, step-00000016 (or best, last)" in line
    with pytest.raises(ckpt.UnknownCheckpointError, match="available: step-00000008"):
        stpdist.load(debug_copy / "runs" / "debug", ckpt="step-320")


# ----------------------------------------------------------------------------- item 6
class Acc:
    """The part of an accelerate.Accelerator that CheckpointManager uses (one process)."""

    is_main_process, process_index, scaler = True, 0, None

    def wait_for_everyone(self) -> None:
        pass


def _model(value: float = 1.0) -> tuple[nn.Module, torch.optim.Optimizer]:
    model = nn.Linear(8, 8)
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.ones(1, 8)).sum().backward()
    optimizer.step()
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(value)
    return model, optimizer


def _save(manager: ckpt.CheckpointManager, step: int, metrics=None) -> Path:
    model, optimizer = _model(float(step))
    state = ckpt.TrainState(global_step=step, metrics=metrics or {})
    return manager.save(Acc(), model, optimizer, None, state)


def test_a_new_checkpoint_without_its_manifest_is_damaged(tmp_path, caplog):
    """The campaign's case: the newest checkpoint's manifest deleted and one byte of its
    weights flipped. Resume falls back, saying so; best/last pass over it."""
    manager = ckpt.CheckpointManager(tmp_path, CheckpointConfig(keep_last=5))
    _save(manager, 3)
    newest = _save(manager, 6)
    (newest / ckpt.MANIFEST_FILE).unlink()
    _flip(newest / ckpt.MODEL_FILE)
    assert manager.resolve("auto") == tmp_path / "step-00000003"
    assert "step-00000006 is damaged (manifest.json is missing" in caplog.text
    assert manager.choose("last") == tmp_path / "step-00000003"
    with pytest.raises(ckpt.CheckpointError, match="manifest.json is missing"):
        manager.choose("step-6")


def test_the_same_through_train_resume_auto(tmp_path, caplog):
    torch.manual_seed(0)
    policy = CheckpointConfig(every_epoch=True, keep_last=5)
    first = Trainer(output_dir=tmp_path, progress_bar=False, max_epochs=2, checkpoint=policy)
    first.fit(TinyModule(), loader(12, 4))
    newest = tmp_path / "checkpoints" / "step-00000006"
    (newest / ckpt.MANIFEST_FILE).unlink()
    _flip(newest / ckpt.MODEL_FILE)
    second = Trainer(output_dir=tmp_path, progress_bar=False, max_epochs=2, checkpoint=policy)
    with caplog.at_level("INFO", logger="stpdist"):
        state = second.fit(TinyModule(), loader(12, 4), resume="auto")
    assert "resumed from " + str(tmp_path / "checkpoints" / "step-00000003") in caplog.text
    assert "step-00000006 is damaged (manifest.json is missing" in caplog.text
    assert state.global_step == 6 and (tmp_path / "checkpoints" / "damaged-step-00000006").is_dir()


def _as_before_manifests(folder: Path) -> None:
    """What a checkpoint of a version before manifests holds: no manifest, a state without
    the format and metrics_step keys."""
    (folder / ckpt.MANIFEST_FILE).unlink()
    state = json.loads((folder / ckpt.STATE_FILE).read_text())
    del state["format"], state["metrics_step"]
    (folder / ckpt.STATE_FILE).write_text(json.dumps(state))


def test_a_checkpoint_from_before_manifests_loads_unverified_with_a_warning(tmp_path, caplog):
    manager = ckpt.CheckpointManager(tmp_path, CheckpointConfig(keep_last=5))
    old = _save(manager, 4, metrics={"val/loss": 0.25})
    _as_before_manifests(old)
    assert ckpt.damage(old, deep=True) is None
    assert manager.resolve("auto") == old
    assert "step-00000004 predates manifests: loading it unverified" in caplog.text
    state = manager.load(old, Acc(), *_model(), None)
    assert state.global_step == 4 and manager.best() == old
    assert state.metrics_step is None  # unknown: a validation due at step 4 runs again
    manager.bind(Acc(), *_model(), None, None, state)  # resumed from it, then validated:
    manager.record_metrics(4, {"val/loss": 0.5})  # left as it was, still loadable
    assert not (old / ckpt.VALIDATION_FILE).exists() and ckpt.damage(old) is None
    (old / "index.json").write_text("{}")  # written only by versions with manifests
    assert "manifest.json is missing (it holds index.json" in ckpt.damage(old)


# ----------------------------------------------------------------------------- item 7
BAD_VALIDATION = {
    "list": "[1, 2]",
    "not json": "{",
    "string value": '{"val/loss": "low"}',
    "bool value": '{"val/loss": true}',
}


@pytest.mark.parametrize("case", list(BAD_VALIDATION))
@pytest.mark.parametrize("listed", [True, False], ids=["listed", "manifest-v1"])
def test_a_malformed_validation_json_is_damage_naming_the_file(tmp_path, caplog, case, listed):
    """Listed in the manifest (this version) or beside a version-1 manifest that did not
    list it (the previous version): either way the checkpoint is damaged, named, passed
    over; ranking never crashes."""
    manager = ckpt.CheckpointManager(tmp_path, CheckpointConfig(keep_last=5, keep_best=1))
    for step in (2, 4):
        model, optimizer = _model(float(step))
        manager.bind(Acc(), model, optimizer, None, None, ckpt.TrainState())
        manager.maybe_save(ckpt.TrainState(global_step=step), last=True)
        manager.record_metrics(step, {"val/loss": 1.0 / step})
    newest = tmp_path / "step-00000004"
    file = newest / ckpt.VALIDATION_FILE
    text = BAD_VALIDATION[case]
    if listed:  # same size as the good file: only the sha256 tells
        text = text + " " * (file.stat().st_size - len(text))
    else:
        files = manifest_files(newest)
        del files[ckpt.VALIDATION_FILE]
        (newest / ckpt.MANIFEST_FILE).write_text(json.dumps({"version": 1, "files": files}))
    file.write_text(text)
    assert ckpt.VALIDATION_FILE in manifest_files(newest) or not listed
    assert ckpt.VALIDATION_FILE in ckpt.damage(newest, deep=True)
    assert manager.resolve("auto") == tmp_path / "step-00000002"
    assert "step-00000004 is damaged" in caplog.text
    assert manager.best() == tmp_path / "step-00000002"
    assert manager.choose("best") == tmp_path / "step-00000002"
    assert manager.choose("last") == tmp_path / "step-00000002"


def test_validate_forecast_and_resume_pass_over_a_malformed_validation_json(debug_copy):
    """The campaign's case on a trained run: `[1, 2]` in the newest checkpoint's
    validation.json. validate --ckpt best, stpdist.load(…, "best") (what forecast uses)
    and train --resume auto warn naming the file and use step 8."""
    run = debug_copy / "runs" / "debug"
    newest = run / "checkpoints" / "step-00000016"
    (newest / ckpt.VALIDATION_FILE).write_text("[1, 2]")
    proc = run_cli("validate", DEBUG, "--ckpt", "best", cwd=debug_copy, check=True)
    assert "checkpoint runs/debug/checkpoints/step-00000008 (step 8), split val" in proc.stdout
    assert "step-00000016 is damaged (validation.json" in proc.stdout + proc.stderr
    assert stpdist.load(run, "best").model_folder.name == "step-00000008"
    proc = run_cli(
        "train", DEBUG, "logging.num_samples=0", "--resume", "auto", cwd=debug_copy, check=True
    )
    assert "resumed from runs/debug/checkpoints/step-00000008" in proc.stdout
    assert "step-00000016 is damaged (validation.json" in proc.stdout + proc.stderr
    assert (run / "checkpoints" / "damaged-step-00000016").is_dir()
    assert ckpt.damage(newest, deep=True) is None  # step 16 saved again


# ----------------------------------------------------------------------------- item 13
class LabelledSequences(Dataset):
    """TinySequences as dicts with an extra `labels` entry (a class index per sample)."""

    def __init__(self, num: int) -> None:
        self.data = TinySequences(num)

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> dict:
        inputs, targets = self.data[i]
        return {
            "inputs": inputs,
            "targets": targets,
            "labels": torch.tensor(i % 3),
            "keys": f"s{i}",
        }


class SeedStyle(TinyModule):
    """Hooks named as the seed's: `(inputs, labels)`, where labels are the targets."""

    def training_step(self, inputs, labels):
        return nn.functional.mse_loss(self(inputs), labels)

    def validation_step(self, inputs, labels):
        return {"loss": nn.functional.mse_loss(self(inputs), labels)}

    def predict_step(self, inputs, labels):
        return self(inputs)


class WantsLabels(TinyModule):
    def __init__(self) -> None:
        super().__init__()
        self.seen: list[torch.Tensor] = []

    def training_step(self, inputs, targets, labels):
        self.seen.append(labels)
        return super().training_step(inputs, targets)


def test_an_extra_named_like_a_positional_parameter_is_not_passed_again(tmp_path):
    data = DataLoader(LabelledSequences(8), batch_size=4)
    trainer = Trainer(output_dir=tmp_path / "a", progress_bar=False, max_epochs=2)
    # records taken at the `stpdist` logger itself: whether it propagates to the root (where
    # caplog listens) depends on which test installed the console handler first
    records: list[logging.LogRecord] = []
    collect = logging.Handler(logging.WARNING)
    collect.emit = records.append
    logging.getLogger("stpdist").addHandler(collect)
    try:
        state = trainer.fit(SeedStyle(), data, data)
    finally:
        logging.getLogger("stpdist").removeHandler(collect)
    assert state.global_step == 4 and "val/loss" in state.metrics
    warned = [r.getMessage() for r in records if "'labels' is not passed" in r.getMessage()]
    assert len(warned) == 2, warned  # once per hook: training_step and validation_step
    assert "SeedStyle.training_step" in warned[0] and "targets" in warned[0]
    trainer.predict(SeedStyle(), DataLoader(LabelledSequences(4), batch_size=4), out=tmp_path / "p")

    wants = WantsLabels()  # a hook that declares `labels` beyond the two gets it
    Trainer(output_dir=tmp_path / "b", progress_bar=False, max_epochs=1).fit(wants, data)
    assert [t.tolist() for t in wants.seen] == [[0, 1, 2, 0], [1, 2, 0, 1]]


def test_best_of_a_run_folder_is_the_runs_own_best_by_its_monitor_and_mode(tmp_path):
    """stpdist.load / export / forecast / model.init_weights given a run folder take "best"
    as the run ranked it (its trainer.checkpoint.monitor and mode), not by val/loss; an
    explicit checkpoint choice with a checkpoint folder is refused, not ignored."""
    by_psnr = ["trainer.checkpoint.monitor=val/psnr", "trainer.checkpoint.mode=min"]
    run_cli("train", DEBUG, *by_psnr, "logging.num_samples=0", cwd=tmp_path, check=True)
    root = tmp_path / "runs" / "debug" / "checkpoints"
    scores = {p.name: json.loads((p / ckpt.VALIDATION_FILE).read_text()) for p in root.iterdir()}
    lowest_psnr = min(scores, key=lambda name: scores[name]["val/psnr"])
    lowest_loss = min(scores, key=lambda name: scores[name]["val/loss"])
    assert lowest_psnr != lowest_loss  # the test tells the two rankings apart
    assert stpdist.load(tmp_path / "runs" / "debug").model_folder.name == lowest_psnr
    proc = run_cli("export", "runs/debug", "--out", "m", cwd=tmp_path, check=True)
    exported = (tmp_path / "m" / ckpt.MODEL_FILE).read_bytes()
    assert exported == (root / lowest_psnr / ckpt.MODEL_FILE).read_bytes(), proc.stdout
    assert f"exporting runs/debug/checkpoints/{lowest_psnr}" in proc.stdout + proc.stderr
    # the files it names are the files it wrote
    assert "model folder: m (config.yaml, export.json, index.json, model.safetensors)" in (
        proc.stdout
    )
    proc = run_cli("export", f"runs/debug/checkpoints/{lowest_loss}", "--ckpt", "last",
                   "--out", "n", cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 2 and "pass the run folder" in proc.stderr


def test_last_of_a_run_retiring_it_meanwhile_is_chosen_again_without_a_false_warning(
    debug_copy, monkeypatch, caplog
):
    """An interop review, a reader of a live run's `last`: a checkpoint retired while it was
    chosen was said as "holds no checkpoint: train first" (RetiredCheckpoint is a
    MissingInput, and `model_folder` turned it into that), and one retired right after its
    check as "predates manifests: loading it unverified". Both are chosen again."""
    run = debug_copy / "runs" / "debug"
    newest = run / "checkpoints" / "step-00000016"
    real, calls = ckpt.CheckpointManager._newest_intact, []

    def retired_once(self, name):
        calls.append(name)
        if len(calls) == 1:
            raise ckpt.RetiredCheckpoint(f"{self.root}: step-N was retired by its run")
        return real(self, name)

    monkeypatch.setattr(ckpt.CheckpointManager, "_newest_intact", retired_once)
    assert stpdist.load(run, ckpt="last").model_folder == newest and len(calls) == 2
    monkeypatch.setattr(ckpt.CheckpointManager, "_newest_intact", real)
    checked = ckpt.damage

    def retired_once_checked(path, deep=False):
        why = checked(path, deep=deep)
        if deep and path == newest:  # retention moves it away right after its check
            newest.rename(newest.with_name(".trash-step-00000016"))
        return why

    monkeypatch.setattr(ckpt, "damage", retired_once_checked)
    with caplog.at_level(logging.WARNING, logger="stpdist"):
        chosen = stpdist.load(run, ckpt="last").model_folder
    assert chosen == run / "checkpoints" / "step-00000008"
    assert "predates manifests" not in caplog.text, caplog.text
