"""Two runs that generate `data.synthesize`'s dataset into one absent `data.root` at once
(two `stpdist train --synthesize`, or `reproduce --small`, started together): both
generated, and the second failed after its work with "… is not empty; … or remove
<root>", advice that would delete the dataset the first was training on. Generation is now
serialised by a lock beside the root; the run that waited trains on what the other wrote."""

from __future__ import annotations

import errno
import fcntl
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import ROOT, launcher, unserved

from stpdist import build
from stpdist.config import load_config

OVERRIDES = [
    "data.root=digits",
    "data.synthesize.root=digits",  # each run generates when the data is absent
    "data.synthesize.train=8",
    "data.synthesize.val=4",
    "data.synthesize.test=4",
    "data.synthesize.image_size=16",
    "data.synthesize.digit_size=8",
    "trainer.max_epochs=1",
    "logging.num_samples=0",
]
PAUSED = """\
import os, signal, sys
import stpdist.build as build
generate = build.write_moving_digits
def paused(*args, **kwargs):  # the test resumes it once the second run is under way
    os.kill(os.getpid(), signal.SIGSTOP)
    return generate(*args, **kwargs)
build.write_moving_digits = paused
from stpdist.cli import main
sys.exit(main(sys.argv[1:]))
"""
WAITING = "another process is generating the dataset in digits; waiting for it"
USING = "using the dataset that another process wrote into digits meanwhile"


def _train(run: str, *more: str) -> list[str]:
    config = str(ROOT / "configs" / "debug.yaml")
    return ["train", config, *OVERRIDES, f"trainer.output_dir={run}", *more]


def test_two_runs_generating_one_absent_root_generate_it_once(tmp_path):
    """Run 1 is paused (SIGSTOP, by itself) as it starts generating; run 2, on 2 ranks,
    starts then, and is let on until it waits for run 1 or ends; run 1 goes on. Before the
    lock, run 2 generated and trained, and run 1 then failed: "digits is not empty". Run 2
    asks for another seed: the data it trains on differs from its config, said once."""
    env = unserved({**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"})
    logs = {name: open(tmp_path / f"{name}.txt", "w") for name in ("first", "second")}  # noqa: SIM115
    first = subprocess.Popen(
        [sys.executable, "-c", PAUSED, *_train("run1")],
        cwd=tmp_path,
        env=env,
        stdout=logs["first"],
        stderr=subprocess.STDOUT,
    )
    second = None
    try:
        _, status = os.waitpid(first.pid, os.WUNTRACED)  # returns once it stopped (or ended)
        said = (tmp_path / "first.txt").read_text()
        assert os.WIFSTOPPED(status), f"the first run ended before generating:\n{said[-3000:]}"
        command = [
            *launcher(2),
            "--no-python",
            sys.executable,
            "-m",
            "stpdist",
            *_train("run2", "data.synthesize.seed=1"),
        ]
        second = subprocess.Popen(
            command, cwd=tmp_path, env=env, stdout=logs["second"], stderr=subprocess.STDOUT
        )
        deadline = time.time() + 120
        while WAITING not in (tmp_path / "second.txt").read_text() and second.poll() is None:
            assert time.time() < deadline, "the second run neither waited nor ended in 120 s"
            time.sleep(0.05)
        os.kill(first.pid, signal.SIGCONT)
        first.wait(timeout=120)
        second.wait(timeout=120)
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                os.kill(proc.pid, signal.SIGCONT)
                proc.kill()
                proc.wait()
        for handle in logs.values():
            handle.close()
    said_first = (tmp_path / "first.txt").read_text()
    said_second = (tmp_path / "second.txt").read_text()
    assert first.returncode == 0, said_first[-3000:]
    assert second.returncode == 0, said_second[-3000:]
    assert "generating synthetic moving digits into digits" in said_first
    assert WAITING in said_second and USING in said_second, said_second[-3000:]
    assert "generating synthetic" not in said_second and "not empty" not in said_second
    assert said_second.count(USING) == 1  # the main rank's line; the other rank found it there
    differs = "other settings than data.synthesize (seed 0 → 1): another run generated it"
    assert said_second.count(differs) == 1, said_second[-3000:]
    # one dataset, nothing beside it: the lock file goes with its holder
    assert sorted(p.name for p in (tmp_path / "digits").iterdir()) == [
        "README.md",
        "test",
        "train",
        "val",
    ]
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_a_lock_held_elsewhere_is_waited_for_then_taken(tmp_path):
    """The lock is the file beside the root, never inside it; the holder deletes it as it
    lets go, and a waiter then takes a lock of its own (never the deleted file's)."""
    root = tmp_path / "nested" / "digits"
    path = build.generation_lock_file(root)
    assert path == tmp_path / "nested" / ".digits.lock"
    with build.generation_lock(root):
        assert path.is_file()
        held = os.open(path, os.O_RDWR)
        try:  # a second process's attempt: refused while held
            with pytest.raises(BlockingIOError):
                fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(held)
    assert not path.exists() and not (tmp_path / "nested").exists()  # the folder made for it


def test_generation_goes_on_where_the_filesystem_has_no_flock(tmp_path, monkeypatch):
    """A filesystem without flock (ENOLCK, as some NFS mounts): generation runs unlocked,
    as before the lock, rather than failing."""
    from stpdist.trainer import Trainer

    def no_flock(fd: int, operation: int) -> None:
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(build.fcntl, "flock", no_flock)
    monkeypatch.chdir(tmp_path)
    cfg = load_config(ROOT / "configs" / "debug.yaml", [*OVERRIDES, "trainer.output_dir=run"])
    trainer = Trainer.from_config(cfg)
    try:
        build.ensure_dataset(cfg, trainer)
    finally:
        trainer.close()
    assert (tmp_path / "digits" / "train" / "index.json").is_file()
    assert not (tmp_path / ".digits.lock").exists()
