"""Read leases on checkpoint folders (`stpdist.checkpoint.reading`): a reader of a run that
is still training holds its chosen checkpoint, and the run's retention keeps it until the
reader is done, then retires it at a later save or at the run's end. Real processes read
and train; each race is made deterministic (a reader paused in its lease until the test
says go, a retention run exactly between a reader's open and its lock)."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import launcher, run_cli
from helpers import PYTHON_C
from test_cli import DEBUG

from stpdist import checkpoint
from stpdist.checkpoint import CheckpointManager

TINY = ("trainer.max_steps=2", "trainer.max_epochs=null", "logging.num_samples=0")
KEEP_ONE = ("trainer.checkpoint.keep_last=1", "trainer.checkpoint.keep_best=0")
RUN = "runs/debug"
STEP2 = "step-00000002"

READER = str(Path(__file__).parent / "paused_reader.py")  # paused at a hook; see there


def _steps(tmp_path: Path) -> list[str]:
    return sorted(p.name for p in (tmp_path / RUN / "checkpoints").glob("step-*"))


def _start_reader(
    tmp_path: Path, hook: str, *args: str, nproc: int = 1, **more: str
) -> subprocess.Popen:
    """The reader (on `nproc` ranks, `more` in its environment), once every rank is paused
    at `hook`."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GO": str(tmp_path / "go"), **more}
    for rank in range(nproc):
        env[f"PAUSED_{rank}"] = str(tmp_path / f"paused-{rank}")
    reader = subprocess.Popen(
        [*launcher(nproc), READER, hook, *args],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while not all((tmp_path / f"paused-{r}").exists() for r in range(nproc)):
        if reader.poll() is not None or time.monotonic() > deadline:
            reader.kill()
            out, err = reader.communicate()
            raise AssertionError(f"the reader never paused (exit {reader.returncode}):\n{err}")
        time.sleep(0.05)
    return reader


def _go(tmp_path: Path, reader: subprocess.Popen) -> tuple[str, str]:
    (tmp_path / "go").touch()
    out, err = reader.communicate(timeout=180)
    assert reader.returncode == 0, err[-3000:]
    return out, err


@pytest.fixture(scope="module")
def trained_once(tmp_path_factory) -> Path:
    """A run with one checkpoint (step 2), trained once for the tests of this file."""
    base = tmp_path_factory.mktemp("trained")
    done = run_cli("train", DEBUG, *TINY, cwd=base)
    assert done.returncode == 0, done.stderr
    assert _steps(base) == [STEP2]
    return base


@pytest.fixture
def trained(trained_once: Path, tmp_path: Path) -> Path:
    """A run with one checkpoint (step 2), the test's own copy (tests train it on)."""
    shutil.copytree(trained_once, tmp_path, dirs_exist_ok=True)
    assert _steps(tmp_path) == [STEP2]
    return tmp_path


def _train_on(tmp_path: Path, steps: int) -> subprocess.CompletedProcess:
    more = (f"trainer.max_steps={steps}", *KEEP_ONE, "--resume", "auto")
    done = run_cli("train", DEBUG, *TINY, *more, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    return done


def test_a_leased_checkpoint_outlives_retention_until_read_then_goes_at_the_runs_end(trained):
    tmp_path, root = trained, trained / RUN / "checkpoints"
    weights = (root / STEP2 / "model.safetensors").read_bytes()
    # the reader chose step 2 and holds its lease: paused where it reads the weights
    reader = _start_reader(tmp_path, "stpdist.inference:load_eval_weights", "load", RUN)
    done = _train_on(tmp_path, 4)  # keep_last 1: step 2 is retired, but it is being read
    assert _steps(tmp_path) == [STEP2, "step-00000004"]
    assert (root / STEP2 / "model.safetensors").read_bytes() == weights
    assert (root / f".retired-{STEP2}").is_file()
    # said once, not as a warning
    assert not [line for line in done.stderr.splitlines() if "warn" in line.lower()], done.stderr
    # kept for its reader only: nothing chooses it again
    manager = CheckpointManager(root)
    assert [p.name for p in manager.complete()] == ["step-00000004"]
    assert manager.choose("last").name == manager.choose("best").name == "step-00000004"
    assert manager.resolve("auto").name == "step-00000004"
    assert manager.choose(STEP2).name == STEP2  # named, it is still there to read
    out, err = _go(tmp_path, reader)
    assert json.loads(out.splitlines()[-1]) == {"folder": f"{RUN}/checkpoints/{STEP2}", "step": 2}
    assert "deleted" not in err and "retired" not in err
    # a run that saves nothing (it is at its last step) retires it at its end
    _train_on(tmp_path, 4)
    assert _steps(tmp_path) == ["step-00000004"]
    assert not (root / f".retired-{STEP2}").exists()


def test_a_later_save_retires_what_a_reader_held(trained):
    tmp_path = trained
    reader = _start_reader(tmp_path, "stpdist.inference:load_eval_weights", "load", RUN)
    _train_on(tmp_path, 4)
    assert STEP2 in _steps(tmp_path)
    _go(tmp_path, reader)
    _train_on(tmp_path, 6)
    assert _steps(tmp_path) == ["step-00000006"]


def test_a_checkpoint_retired_between_choice_and_lease_is_chosen_again(trained):
    tmp_path = trained
    # paused after the choice of step 2, before its lease: retention deletes it
    reader = _start_reader(tmp_path, "stpdist.checkpoint:reading", "load", RUN)
    _train_on(tmp_path, 4)
    assert _steps(tmp_path) == ["step-00000004"]
    out, _ = _go(tmp_path, reader)
    assert json.loads(out.splitlines()[-1]) == {
        "folder": f"{RUN}/checkpoints/step-00000004",
        "step": 4,
    }


def test_without_flock_a_load_whose_checkpoint_is_deleted_chooses_again(trained):
    tmp_path = trained
    hook = "stpdist.inference:load_eval_weights"
    reader = _start_reader(tmp_path, hook, "load", RUN, NO_FLOCK="1")
    _train_on(tmp_path, 4)
    assert _steps(tmp_path) == ["step-00000004"]  # no lease: deleted under the reader
    out, err = _go(tmp_path, reader)
    assert json.loads(out.splitlines()[-1])["folder"] == f"{RUN}/checkpoints/step-00000004"
    assert f"{STEP2} was deleted while it was read" in err


def test_predict_on_two_ranks_holds_its_checkpoint_on_every_rank(trained):
    tmp_path = trained
    args = ("cli", "predict", DEBUG, *TINY, "--ckpt", STEP2, "--out", "preds")
    # both ranks paused in their leases, where they load the weights
    reader = _start_reader(tmp_path, "stpdist.trainer:load_eval_weights", *args, nproc=2)
    _train_on(tmp_path, 4)
    assert _steps(tmp_path) == [STEP2, "step-00000004"]
    _go(tmp_path, reader)
    record = json.loads((tmp_path / "preds" / "metrics.json").read_text())
    assert record["checkpoint_step"] == 2
    assert len(list((tmp_path / "preds").glob("predictions-r*.npz"))) == 2
    _train_on(tmp_path, 4)
    assert _steps(tmp_path) == ["step-00000004"]


def test_ranks_given_different_checkpoints_all_fail_in_one_line(trained):
    tmp_path, root = trained, trained / RUN / "checkpoints"
    shutil.copytree(root / STEP2, tmp_path / "copy")  # rank 1 is given another folder
    script = tmp_path / "differ.py"
    script.write_text(
        "import contextlib, os\n"
        "from stpdist import Trainer\n"
        "from stpdist.config import load_config\n"
        "from stpdist.errors import InputError\n"
        f"trainer = Trainer.from_config(load_config({DEBUG!r}, {list(TINY)!r}))\n"
        f"folder = {str(root / STEP2)!r} if os.environ['RANK'] == '0' else 'copy'\n"
        "try:\n"
        "    trainer._lease_on_every_rank(contextlib.ExitStack(), folder)\n"
        "except InputError as exc:\n"
        "    open(f\"refused-{os.environ['RANK']}\", 'w').write(str(exc))\n"
        "trainer.close()\n"
    )
    done = subprocess.run(
        [*launcher(2), str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=180,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    said = [(tmp_path / f"refused-{rank}").read_text() for rank in (0, 1)]
    assert said[0] == said[1] and "\n" not in said[0], said  # the same line on every rank
    assert f"different checkpoints ({STEP2}, copy, by rank;" in said[0]


VALIDATE_LAST = f"""
import json
from stpdist import Trainer, build
from stpdist.config import load_config
cfg = load_config({DEBUG!r}, {list(TINY)!r})
trainer = Trainer.from_config(cfg)
# chosen once, on the main process, which holds it until every rank holds it
ckpt = trainer.choose_checkpoint(lambda: trainer.checkpoints.choose("last"), again=True)
module = build.build_module(cfg)
results = trainer.validate(module, build.eval_stream(cfg, cfg.data.val_split), ckpt=ckpt)
if trainer.is_main:
    print(json.dumps({{"ckpt": str(ckpt)}}))
trainer.close()
"""


def test_a_checkpoint_chosen_on_the_main_rank_is_held_until_every_rank_holds_it(trained):
    tmp_path = trained
    (tmp_path / "validate.py").write_text(VALIDATE_LAST)
    # both ranks paused before their own leases: only the main rank's choice holds step 2
    reader = _start_reader(tmp_path, "stpdist.trainer:reading", "run", "validate.py", nproc=2)
    _train_on(tmp_path, 4)
    assert _steps(tmp_path) == [STEP2, "step-00000004"]
    out, _ = _go(tmp_path, reader)
    assert json.loads(out.splitlines()[-1])["ckpt"] == f"{RUN}/checkpoints/{STEP2}"
    _train_on(tmp_path, 4)
    assert _steps(tmp_path) == ["step-00000004"]


def _folder_with_a_step(tmp_path: Path, name: str = STEP2) -> Path:
    folder = tmp_path / "checkpoints" / name
    folder.mkdir(parents=True)
    (folder / "file").write_text("x")
    return folder


def test_a_folder_retired_after_its_open_but_before_its_lock_is_refused(tmp_path, monkeypatch):
    folder = _folder_with_a_step(tmp_path)
    manager = CheckpointManager(folder.parent)
    original = checkpoint._lock

    def retire_first(fd, how, where):  # retention runs now, between open and lock
        if not retired:
            retired.append(True)
            assert manager._delete(folder)  # its own lock: the original's
        return original(fd, how, where)

    retired: list[bool] = []

    monkeypatch.setattr(checkpoint, "_lock", retire_first)
    with pytest.raises(checkpoint.RetiredCheckpoint, match=f"{STEP2} was retired by its run"):
        with checkpoint.reading(folder):
            raise AssertionError("read a retired folder")
    assert not folder.exists()


def test_retention_keeps_a_folder_another_process_reads_and_deletes_it_after(tmp_path):
    folder = _folder_with_a_step(tmp_path)
    code = (
        "import sys; from stpdist.checkpoint import reading\n"
        f"with reading({str(folder)!r}):\n    print('held', flush=True); sys.stdin.read()\n"
    )
    holder = subprocess.Popen(
        [sys.executable, PYTHON_C, code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout.readline().strip() == "held"
    manager = CheckpointManager(folder.parent)
    assert not manager._delete(folder)
    assert folder.is_dir() and manager._is_retired(folder)
    assert manager._folders() == [] and manager._folders(retired=True) == [folder]
    manager.prune()  # still held
    assert folder.is_dir()
    holder.communicate("")
    manager.prune()
    assert not folder.exists() and not list(folder.parent.iterdir())


def test_without_flock_leases_are_not_kept_and_nothing_breaks(tmp_path, monkeypatch):
    import errno
    import fcntl

    def no_flock(fd, how):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_flock)
    folder = _folder_with_a_step(tmp_path)
    with checkpoint.reading(folder) as held:
        assert held == folder
    assert CheckpointManager(folder.parent)._delete(folder)
    assert not folder.exists()


def test_a_checkpoint_deleted_between_listing_and_checking_is_no_damage(tmp_path, caplog):
    every = ("trainer.checkpoint.every_n_steps=1", "trainer.checkpoint.keep_last=3")
    done = run_cli("train", DEBUG, *TINY, *every, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    root = tmp_path / RUN / "checkpoints"
    manager = CheckpointManager(root)
    listed = manager._folders()
    assert len(listed) >= 2, listed

    def listing_then_retired(*, retired=False):  # the run retires the oldest meanwhile
        manager._delete(listed[0])
        return listed

    manager._folders = listing_then_retired
    with caplog.at_level(logging.WARNING, logger="stpdist"):
        chosen = manager.choose("last")
    assert chosen == listed[-1]
    assert "damaged" not in caplog.text, caplog.text


def test_cli_predict_last_on_two_ranks_chosen_on_main(trained):
    tmp_path = trained
    args = ("cli", "predict", DEBUG, *TINY, "--ckpt", "last", "--out", "preds")
    reader = _start_reader(tmp_path, "stpdist.trainer:reading", *args, nproc=2)
    _train_on(tmp_path, 4)
    assert _steps(tmp_path) == [STEP2, "step-00000004"]
    _go(tmp_path, reader)
    record = json.loads((tmp_path / "preds" / "metrics.json").read_text())
    assert record["checkpoint_step"] == 2
    _train_on(tmp_path, 4)
    assert _steps(tmp_path) == ["step-00000004"]


def test_init_weights_from_a_training_run_holds_its_checkpoint(trained):
    tmp_path = trained
    args = ("cli", "train", DEBUG, *TINY, "trainer.output_dir=runs/tuned")
    reader = _start_reader(
        tmp_path, "stpdist.build:_load_tensors", *args, f"model.init_weights={RUN}"
    )
    _train_on(tmp_path, 4)
    assert _steps(tmp_path) == [STEP2, "step-00000004"]
    out, err = _go(tmp_path, reader)
    assert f"initialised the model from {RUN}/checkpoints/{STEP2}" in out + err
    _train_on(tmp_path, 4)
    assert _steps(tmp_path) == ["step-00000004"]
