"""A user who runs things at the same time and twice (review r23): a run folder copied
with its lock while that run goes on, and a model read from a run folder whose training
retires the checkpoint being read. Real processes hold the lock and train; the races are
made deterministic (a holder that waits on a pipe, a reader stopped with SIGSTOP)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from conftest import run_cli
from test_cli import DEBUG

from stpdist.runlock import LOCK_FILE, RunLock, RunLockedError

TINY = ("trainer.max_steps=2", "trainer.max_epochs=null", "logging.num_samples=0")


def _hold_lock(folder: Path) -> subprocess.Popen:
    """A process of its own holding `folder`'s run lock until its stdin closes."""
    code = (
        "import sys; from stpdist.runlock import RunLock; "
        f"lock = RunLock({str(folder)!r}).acquire(); print('held', flush=True); "
        "sys.stdin.read(); lock.release()"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_a_run_folder_copied_with_its_lock_trains_while_the_original_stays_locked(tmp_path):
    run, copy = tmp_path / "runs" / "a", tmp_path / "runs" / "b"
    holder = _hold_lock(run)
    try:
        shutil.copytree(run, copy)  # `cp -a runs/a runs/b` while run a trains
        assert (copy / LOCK_FILE).is_file()
        done = run_cli("train", DEBUG, *TINY, "trainer.output_dir=runs/b", cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        assert "was copied from" in done.stderr and str(run.resolve()) in done.stderr
        assert (copy / "checkpoints" / "step-00000002").is_dir()
        # the original is still the live run's: refused
        try:
            RunLock(run).acquire()
            raise AssertionError("the live run's lock was taken")
        except RunLockedError as exc:
            assert f"pid {holder.pid}" in str(exc)
    finally:
        holder.communicate("")
    assert not (run / LOCK_FILE).exists()  # released by its holder


# a reader paused where the race bites, until the test writes a line to its stdin
READER = str(Path(__file__).parent / "paused_reader.py")


def _train_then_pause_reader(
    tmp_path: Path, pause: str, *args: str
) -> tuple[subprocess.Popen, bytes]:
    """A run with one checkpoint (step 2), and a reader of its last checkpoint paused at
    `pause`; then the run trains on with keep_last 1, which retires step 2 under it.
    Returns the reader and step 2's weights file."""
    done = run_cli("train", DEBUG, *TINY, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    weights = (tmp_path / "runs/debug/checkpoints/step-00000002/model.safetensors").read_bytes()
    reader = subprocess.Popen(
        [sys.executable, READER, pause, *args],
        cwd=tmp_path,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert reader.stdout.readline().strip() == "paused"
    more = ("trainer.max_steps=4", "trainer.checkpoint.keep_last=1", "--resume", "auto")
    done = run_cli("train", DEBUG, *TINY, *more, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    steps = sorted(p.name for p in (tmp_path / "runs/debug/checkpoints").glob("step-*"))
    assert steps == ["step-00000004"], steps  # step 2, which the reader chose, is gone
    return reader, weights


def test_load_of_a_training_run_chooses_again_when_its_checkpoint_is_retired(tmp_path):
    pause = "stpdist.checkpoint:reading"  # chosen, not yet held: its run retires it
    reader, _ = _train_then_pause_reader(tmp_path, pause, "load", "runs/debug")
    out, err = reader.communicate("go\n", timeout=120)
    assert reader.returncode == 0, err
    assert json.loads(out.splitlines()[-1]) == {
        "folder": "runs/debug/checkpoints/step-00000004",
        "step": 4,
    }


def test_export_of_a_training_run_never_leaves_out_its_retired_checkpoints_weights(tmp_path):
    pause = "stpdist.data.convert:staged_output"  # the weights loaded, nothing copied yet
    reader, weights = _train_then_pause_reader(tmp_path, pause, "export", "runs/debug", "exported")
    _, err = reader.communicate("go\n", timeout=120)
    assert reader.returncode == 0, err
    exported = tmp_path / "exported"
    # the weights that were loaded and checked (step 2's, read before it was retired), not
    # a model folder without weights
    assert sorted(os.listdir(exported)) == [
        "config.yaml", "export.json", "index.json", "model.safetensors"
    ]  # fmt: skip
    assert (exported / "model.safetensors").read_bytes() == weights
    assert json.loads((exported / "export.json").read_text())["exported_from"]["step"] == 2


def test_a_relaunched_sweep_trial_is_refused_saying_how_to_continue_it(tmp_path, monkeypatch):
    """A job relaunched with the same run id (a requeued agent job) finds its trial's
    folder: never overwritten, and the refusal says how the trial goes on; once it is
    finished, that it is."""
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(
        "method: grid\nmetric: {name: val/mse, goal: minimize}\n"
        "parameters:\n  model.optimizer.lr: {values: [0.003, 0.001]}\n"
    )
    args = ["sweep", DEBUG, str(sweep), "trainer.output_dir=runs", "logging.num_samples=0"]
    args += ["trainer.max_epochs=30", "--params", '{"model.optimizer.lr": 0.001}']
    env = {**os.environ, "WANDB_RUN_ID": "trial1"}
    relative = Path("runs/sweep-local/trial1")
    folder = tmp_path / relative
    first = subprocess.Popen(
        [sys.executable, "-m", "stpdist", *args],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:  # killed (an OOM, a lost node) once it has a checkpoint
        deadline = time.monotonic() + 120
        while not (folder / "checkpoints" / "step-00000008").is_dir():
            assert first.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        first.kill()
        first.wait()
    record = (folder / "sweep.json").read_bytes()
    # absolute in its config (a sweeps review: a resume from another folder began anew)
    trial_config = (folder / "config.yaml").read_text()
    assert f"output_dir: {folder}\n" in trial_config
    assert f"root: {tmp_path}/" in trial_config and "root: data/" not in trial_config
    again = subprocess.run(
        [sys.executable, "-m", "stpdist", *args], cwd=tmp_path, env=env, capture_output=True
    )
    assert again.returncode == 2
    resume = f"stpdist train {relative / 'config.yaml'} --resume auto"
    said = again.stderr.decode()
    assert "did not finish" in said and resume in said, said
    assert (folder / "sweep.json").read_bytes() == record  # untouched
    done = run_cli(*resume.split()[1:], "trainer.max_epochs=2", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert json.loads((folder / "sweep.json").read_text())["finished"] is True
    monkeypatch.setenv("WANDB_RUN_ID", "trial1")
    finished = run_cli(*args, cwd=tmp_path)
    assert finished.returncode == 2 and "trial trial1 finished before (best val/mse" in (
        finished.stderr
    )
