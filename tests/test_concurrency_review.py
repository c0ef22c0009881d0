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

import pytest
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


_OTHER_USER_ACQUIRES = """
import logging, os, pwd, sys
from stpdist.runlock import RunLock, RunLockedError  # imported first: root's files
logging.basicConfig()
os.setgid(65534); os.setuid(65534)
try:
    RunLock(sys.argv[1]).acquire()
    print("ACQUIRED")
except RunLockedError as exc:
    print("REFUSED", exc)
"""


@pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() != 0, reason="needs root to act as another user"
)
def test_a_lock_file_of_another_user_is_named_or_replaced(tmp_path):
    """An admin review: a run lock was made 0644 whatever the umask, and a group member's
    run then failed with `Permission denied` alone. Real users: the lock made by root,
    tried by `nobody` (uid 65534) in a folder both may write."""
    import stat
    import tempfile

    old = os.umask(0o002)
    try:
        lock = RunLock(tmp_path / "umask").acquire()
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "umask" / LOCK_FILE).st_mode) == 0o664
    lock.release()
    shared = Path(tempfile.mkdtemp(prefix="stpdist-shared-"))  # reachable by another user
    try:
        shared.chmod(0o777)
        (shared / "run").mkdir(mode=0o777)
        (shared / "run").chmod(0o777)
        held = RunLock(shared / "run").acquire()  # root's file, 0644 (umask 022)
        os.chmod(shared / "run" / LOCK_FILE, 0o644)
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
        command = [sys.executable, "-c", _OTHER_USER_ACQUIRES, str(shared / "run")]
        said = subprocess.run(command, capture_output=True, text=True, env=env, cwd=shared)
        assert said.stdout.startswith("REFUSED") and "is in use by another run" in said.stdout, (
            said.stdout + said.stderr
        )
        assert "root's" in said.stdout
        held.release()
        (shared / "run" / LOCK_FILE).write_text("")  # a stale file of root's, held by no run
        os.chmod(shared / "run" / LOCK_FILE, 0o644)
        said = subprocess.run(command, capture_output=True, text=True, env=env, cwd=shared)
        assert said.stdout.strip() == "ACQUIRED", said.stdout + said.stderr
        assert "replaced the run lock" in said.stderr
        assert os.stat(shared / "run" / LOCK_FILE).st_uid == 65534
    finally:
        shutil.rmtree(shared, ignore_errors=True)


_OTHER_USER_FOLDERS = """
import os, sys, tempfile
from pathlib import Path
from stpdist.cli import _check_results_folder
from stpdist.config import ConfigError, check_output_dir, load_config
from stpdist.errors import InputError
from stpdist.runlock import RunLock, RunLockedError
cfg = load_config(None, [f"trainer.output_dir={sys.argv[1]}/runs/mine"])
os.setgid(65534); os.setuid(65534)
try:
    check_output_dir(cfg)
except ConfigError as exc:
    print("TRAIN", exc)
try:
    _check_results_folder(Path(sys.argv[1]))
except InputError as exc:
    print("VALIDATE", exc)
try:  # a Python fit into a folder not ours: no spin (a diff review), one line
    RunLock(sys.argv[1]).acquire()
except RunLockedError as exc:
    print("LOCK", exc)
"""


@pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() != 0, reason="needs root to act as another user"
)
def test_folders_another_user_cannot_write_are_refused_before_any_work(tmp_path):
    """An admin review: `train` with an output_dir in a folder the user cannot write made
    the data, then said "runs: Permission denied"; `validate` of another user's run ran the
    whole validation, then failed on its results file."""
    import tempfile

    theirs = Path(tempfile.mkdtemp(prefix="stpdist-theirs-"))  # root's, 0755 (reachable)
    try:
        theirs.chmod(0o755)
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
        command = [sys.executable, "-c", _OTHER_USER_FOLDERS, str(theirs)]
        said = subprocess.run(command, capture_output=True, text=True, env=env, cwd=theirs,
                              timeout=60)  # fmt: skip
        lines = said.stdout.splitlines()
        assert lines[0] == (
            f"TRAIN 'trainer.output_dir' is {theirs}/runs/mine, and {theirs} is not writable "
            "by this user: choose a folder of yours for the run"
        ), said.stdout + said.stderr
        assert lines[1].startswith(f"VALIDATE cannot write the results into {theirs} ("), lines
        assert "trainer.output_dir=<a folder of yours>" in lines[1]
        assert lines[2] == (
            f"LOCK cannot make the run lock in {theirs}: the folder is not writable by this "
            "user; choose a folder of yours for the run"
        ), lines
    finally:
        shutil.rmtree(theirs, ignore_errors=True)
