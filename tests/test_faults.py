"""The reliability campaign of issue 15, kept as tests: each reproduces one defect.

Data loss on `--overwrite`, the run lock, checkpoint damage and crash safety (SIGKILL at
random points, during retention and during a re-save), shard-name injection into `pipe:`
commands, skill-score thresholds at any value scale, and bad values refused at conversion
and in the readers. Seeded; the file runs in well under a minute on two busy cores.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
import math
import multiprocessing
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import resum_tar_header

import stpdist.checkpoint as ckpt
from stpdist.data.convert import convert
from stpdist.data.format import ShardFormatError, SplitWriter, read_index
from stpdist.data.sources.generic import GenericArrays
from stpdist.data.stream import LoaderContext, ShardEvalStream
from stpdist.errors import InputError
from stpdist.metrics import batch_sums

ROOT = Path(__file__).resolve().parent.parent


def one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message, message
    return message


# ----------------------------------------------------------------------------- 1. overwrite


def raw_arrays(folder: Path, value: int, count: int = 3) -> Path:
    folder.mkdir(parents=True)
    for i in range(count):
        np.save(folder / f"seq{i}.npy", np.full((4, 1, 8, 8), value, np.uint8))
    return folder


def dataset_value(out: Path) -> int:
    """The value every sample of `out/train` holds (checks the dataset reads completely)."""
    from stpdist.data.format import decode_frames, iter_shard

    values = set()
    for shard in read_index(out / "train").shards:
        for _, sample in iter_shard(str(out / "train" / shard.name)):
            values |= set(np.unique(decode_frames(sample["frames.npy"], "x")).tolist())
    assert len(values) == 1, values
    return values.pop()


def test_overwrite_with_a_mistyped_source_keeps_the_old_dataset(tmp_path):
    convert(GenericArrays(str(raw_arrays(tmp_path / "raw", 7))), tmp_path / "out", progress=False)
    with pytest.raises(FileNotFoundError):
        convert(
            GenericArrays(str(tmp_path / "rwa")), tmp_path / "out", overwrite=True, progress=False
        )
    assert dataset_value(tmp_path / "out") == 7


def test_overwrite_failing_midway_keeps_the_old_dataset(tmp_path):
    convert(GenericArrays(str(raw_arrays(tmp_path / "raw", 7))), tmp_path / "out", progress=False)
    bad = raw_arrays(tmp_path / "raw2", 9)
    np.save(bad / "seq9.npy", np.zeros((4, 8), np.uint8))  # wrong rank: fails after seq0-2
    with pytest.raises(ValueError, match="seq9.npy"):
        convert(GenericArrays(str(bad)), tmp_path / "out", overwrite=True, progress=False)
    assert dataset_value(tmp_path / "out") == 7
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "raw", "raw2"]  # no leftovers


def test_overwrite_replaces_only_when_complete(tmp_path):
    convert(GenericArrays(str(raw_arrays(tmp_path / "raw", 7))), tmp_path / "out", progress=False)
    with pytest.raises(FileExistsError, match="--overwrite"):
        convert(GenericArrays(str(tmp_path / "raw")), tmp_path / "out", progress=False)
    convert(
        GenericArrays(str(raw_arrays(tmp_path / "new", 9))),
        tmp_path / "out",
        overwrite=True,
        progress=False,
    )
    assert dataset_value(tmp_path / "out") == 9
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new", "out", "raw"]
    (tmp_path / "link").symlink_to(tmp_path / "out")  # a link: its target is replaced
    convert(GenericArrays(str(tmp_path / "raw")), tmp_path / "link", overwrite=True, progress=False)
    assert (tmp_path / "link").is_symlink() and dataset_value(tmp_path / "out") == 7


@pytest.mark.parametrize("where", ["same", "above"])
def test_out_that_is_or_contains_the_source_is_refused(tmp_path, where):
    raw = raw_arrays(tmp_path / "data" / "raw", 7)
    out = raw if where == "same" else tmp_path / "data"
    with pytest.raises(ValueError, match="is or contains the source") as exc:
        convert(GenericArrays(str(raw)), out, overwrite=True, progress=False)
    one_line(exc)
    assert sorted(p.name for p in raw.iterdir()) == ["seq0.npy", "seq1.npy", "seq2.npy"]


def test_staged_output_keeps_the_old_dataset_until_the_new_one_is_complete(tmp_path):
    from stpdist.data.convert import staged_output

    convert(GenericArrays(str(raw_arrays(tmp_path / "raw", 7))), tmp_path / "out", progress=False)
    with pytest.raises(KeyboardInterrupt), staged_output(tmp_path / "out", True) as staging:
        small_split(staging / "train")
        assert dataset_value(tmp_path / "out") == 7  # untouched while the new one is written
        raise KeyboardInterrupt  # e.g. Ctrl-C before the next split
    assert dataset_value(tmp_path / "out") == 7
    with staged_output(tmp_path / "out", True) as staging:
        small_split(staging / "train")
    assert read_index(tmp_path / "out" / "train").num_samples == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "raw"]


# ----------------------------------------------------------------------------- 2. run lock

HOLDER = textwrap.dedent(
    """
    import importlib.util, sys
    spec = importlib.util.spec_from_file_location("runlock", sys.argv[1])
    runlock = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(runlock)
    try:
        lock = runlock.RunLock(sys.argv[2]).acquire()
    except runlock.RunLockedError as exc:
        print("refused", exc, flush=True)
        sys.exit(3)
    print("locked", flush=True)
    sys.stdin.read()  # hold until the parent closes stdin (or kills us)
    lock.release()
    """
)


def start_holder(tmp_path: Path, folder: Path) -> subprocess.Popen:
    script = tmp_path / "holder.py"
    script.write_text(HOLDER)
    proc = subprocess.Popen(
        [sys.executable, str(script), str(ROOT / "stpdist" / "runlock.py"), str(folder)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_second_run_is_refused_naming_the_holder(tmp_path):
    from stpdist.runlock import RunLock, RunLockedError

    holder = start_holder(tmp_path, tmp_path / "run")
    try:
        with pytest.raises(RunLockedError) as exc:
            RunLock(tmp_path / "run").acquire()
        message = one_line(exc)
        assert f"pid {holder.pid}" in message and socket.gethostname() in message
        assert "since 20" in message
    finally:
        holder.stdin.close()
        assert holder.wait(timeout=20) == 0
    with RunLock(tmp_path / "run") as lock:  # released cleanly: free again
        assert lock.held


def test_killed_holder_is_taken_over_with_a_warning(tmp_path, caplog):
    from stpdist.runlock import RunLock

    holder = start_holder(tmp_path, tmp_path / "run")
    holder.kill()
    holder.wait(timeout=20)
    with RunLock(tmp_path / "run"):
        assert f"pid {holder.pid}, which is dead" in caplog.text
        # while we hold it, a second process is refused
        script = tmp_path / "holder.py"
        proc = subprocess.run(
            [sys.executable, str(script), str(ROOT / "stpdist/runlock.py"), str(tmp_path / "run")],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert proc.returncode == 3 and f"pid {os.getpid()}" in proc.stdout


KILLED_WITH_WORKERS = textwrap.dedent(
    """
    import os, signal, sys, time
    import torch
    from torch.utils.data import DataLoader, Dataset
    from stpdist.runlock import RunLock

    class Slow(Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, index):
            time.sleep(60)  # busy: an orphaned worker notices its dead parent only after
            return torch.zeros(1)

    RunLock(sys.argv[1]).acquire()
    batches = iter(DataLoader(Slow(), num_workers=1, multiprocessing_context="fork"))
    worker = next(iter(batches._workers)).pid
    print(worker, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
    """
)


def test_a_run_killed_with_live_dataloader_workers_does_not_block_the_next(tmp_path, caplog):
    """An flock belongs to the open file, which forked DataLoader workers share: a run
    SIGKILLed with its workers busy left them holding the lock, and the resume started at
    once was refused naming the dead pid (for the seconds until the orphans noticed). Now a
    forked child lets go of its copy, and the next run takes over the stale lock at once."""
    from stpdist.runlock import RunLock

    script = tmp_path / "killed.py"
    script.write_text(KILLED_WITH_WORKERS)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    said = tmp_path / "said.txt"  # a file: the orphan keeps a pipe open after its parent
    with open(said, "w") as out:
        proc = subprocess.run([sys.executable, str(script), str(tmp_path / "run")], env=env,
                              stdout=out, stderr=subprocess.STDOUT, timeout=120)  # fmt: skip
    assert proc.returncode == -signal.SIGKILL, said.read_text()
    worker = int(said.read_text().split()[0])
    try:
        os.kill(worker, 0)  # the orphan is alive: the case this test is about
        with RunLock(tmp_path / "run"):
            assert "which is dead" in caplog.text
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(worker, signal.SIGKILL)


def test_contending_processes_exactly_one_wins(tmp_path):
    script = tmp_path / "holder.py"
    script.write_text(HOLDER)
    args = [sys.executable, str(script), str(ROOT / "stpdist/runlock.py"), str(tmp_path / "run")]
    procs = [
        subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    firsts = [p.stdout.readline().split()[0] for p in procs]  # each either locked or refused
    for p in procs:
        p.stdin.close()
    codes = [p.wait(timeout=30) for p in procs]
    assert firsts.count("locked") == 1 and sorted(codes) == [0, 3, 3, 3]


def test_lock_of_another_host_is_refused(tmp_path):
    from stpdist.runlock import LOCK_FILE, RunLock, RunLockedError

    (tmp_path / "run").mkdir()
    lock_file = tmp_path / "run" / LOCK_FILE
    lock_file.write_text(json.dumps({"host": "node-17", "pid": 4242, "since": time.time()}))
    with pytest.raises(RunLockedError, match="another host.*node-17.*pid 4242") as exc:
        RunLock(tmp_path / "run").acquire()
    assert str(lock_file) in one_line(exc)
    assert lock_file.is_file()  # left for the user to judge


def test_a_requeued_slurm_job_takes_over_the_lock_its_earlier_run_left_on_another_host(
    tmp_path, monkeypatch, caplog
):
    """A preempted job SIGKILLed before it could release the lock, requeued onto another
    node: the same job id with a higher restart count takes the lock over; another job, or
    the same job at the same count, is refused as before."""
    from stpdist.runlock import LOCK_FILE, RunLock, RunLockedError

    run = tmp_path / "run"
    run.mkdir()
    lock_file = run / LOCK_FILE
    left = {"host": "node-17", "pid": 4242, "since": time.time(), "slurm_job": "901"}
    for job, restarts, holder_restarts in [("901", "0", 0), ("902", "1", 0), ("901", "1", 1)]:
        lock_file.write_text(json.dumps({**left, "slurm_restart": holder_restarts}))
        monkeypatch.setenv("SLURM_JOB_ID", job)
        monkeypatch.setenv("SLURM_RESTART_COUNT", restarts)
        with pytest.raises(RunLockedError, match="another host.*node-17"):
            RunLock(run).acquire()
    lock_file.write_text(json.dumps({**left, "slurm_restart": 0}))
    monkeypatch.setenv("SLURM_JOB_ID", "901")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    with caplog.at_level(logging.WARNING, logger="stpdist"), RunLock(run):
        holder = json.loads(lock_file.read_text())
        assert (holder["slurm_job"], holder["slurm_restart"]) == ("901", 1)
    assert "left by this SLURM job (901) before it was requeued" in caplog.text


def test_same_process_cannot_take_it_twice(tmp_path):
    from stpdist.runlock import RunLock, RunLockedError

    with RunLock(tmp_path), pytest.raises(RunLockedError):
        RunLock(tmp_path).acquire()


# ----------------------------------------------------------------------------- 3-5. checkpoints


def manager_for(root: Path, keep_last: int, keep_best: int = 1) -> ckpt.CheckpointManager:
    from stpdist.config import CheckpointConfig

    if "policy" not in inspect.signature(ckpt.CheckpointManager).parameters:  # before #15
        return ckpt.CheckpointManager(root, keep_last=keep_last, keep_best=keep_best)
    policy = CheckpointConfig(keep_last=keep_last, keep_best=keep_best)
    return ckpt.CheckpointManager(root, policy)


class Acc:
    """The part of an accelerate.Accelerator that CheckpointManager uses (one process)."""

    is_main_process, process_index, scaler = True, 0, None

    def wait_for_everyone(self) -> None:
        pass


def model_at(step: int, size: int = 16) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    """A model whose weights all equal `step`, with optimizer state."""
    model = torch.nn.Linear(size, size)
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.ones(1, size)).sum().backward()
    optimizer.step()
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(float(step))
    return model, optimizer


def save(manager, step: int, value: float | None = None, metrics=None) -> Path:
    model, optimizer = model_at(step if value is None else value)
    state = ckpt.TrainState(global_step=step, metrics=metrics or {})
    return manager.save(Acc(), model, optimizer, None, state)


def loads_as(manager, path: Path, size: int = 16) -> int:
    """Load `path` fully; returns the weight value (== its step when intact)."""
    model, optimizer = model_at(-1, size)
    state = manager.load(path, Acc(), model, optimizer, None)
    values = torch.cat([p.detach().flatten() for p in model.parameters()]).unique()
    assert len(values) == 1
    assert state.global_step == int(path.name.split("-")[-1])
    return int(values.item())


BAD_STATES = {
    "empty": "",
    "not json": "{",
    "empty object": "{}",
    "negative step": {"epoch": 0, "batch": 0, "global_step": -20, "world_size": 1},
    "negative batch": {"epoch": 0, "batch": -1, "global_step": 20, "world_size": 1},
    "string epoch": {"epoch": "1", "batch": 0, "global_step": 20, "world_size": 1},
    "bool batch": {"epoch": 0, "batch": True, "global_step": 20, "world_size": 1},
    "zero world": {"epoch": 0, "batch": 0, "global_step": 20, "world_size": 0},
    "wrong step": {"epoch": 0, "batch": 0, "global_step": 0, "world_size": 1},
    "unknown key": {"epoch": 0, "batch": 0, "global_step": 20, "world_size": 1, "x": 1},
    "list": [],
    "unknown layout": {
        "epoch": 0,
        "batch": 0,
        "global_step": 20,
        "world_size": 1,
        "data_layout": 99,
    },  # fmt: skip
    "origin layout": {
        "epoch": 0,
        "batch": 1,
        "global_step": 20,
        "world_size": 1,
        "epoch_origin": {
            "world_size": 2,
            "num_workers": 2,
            "batch_multiple": 1,
            "batch": 3,
            "later": 0,
            "layout": "2",
        },
    },  # fmt: skip
}


def test_a_state_written_before_layouts_were_recorded_reads_as_layout_1(tmp_path):
    """Checkpoints of before 2026-12-06 record no layout: their epochs (and an epoch moved
    to other ranks then) were laid out by layout 1, which a resume must finish them in."""
    manager = manager_for(tmp_path, 5)
    path = save(manager, 20)
    origin = {"world_size": 2, "num_workers": 2, "batch_multiple": 1, "batch": 3, "later": 0}
    old = {"epoch": 0, "batch": 1, "global_step": 20, "world_size": 1, "epoch_origin": origin}
    (path / ckpt.STATE_FILE).write_text(json.dumps(old))
    state = ckpt.read_state(path)
    assert state.data_layout is None and state.epoch_origin == {**origin, "layout": 1}


@pytest.mark.parametrize("case", list(BAD_STATES))
def test_invalid_trainer_state_is_refused_naming_the_file(tmp_path, case):
    manager = manager_for(tmp_path, 5)
    save(manager, 10)
    path = save(manager, 20)
    bad = BAD_STATES[case]
    (path / ckpt.STATE_FILE).write_text(bad if isinstance(bad, str) else json.dumps(bad))
    with pytest.raises(ckpt.CheckpointError) as exc:
        ckpt.read_state(path)
    assert str(path / ckpt.STATE_FILE) in one_line(exc)
    with pytest.raises(ckpt.CheckpointError):  # an explicit resume of it is refused
        manager.resolve(path)
    assert manager.resolve("auto") == tmp_path / "step-00000010"  # auto falls back


def test_a_rank_lost_during_a_save_is_not_said_as_a_disk_failure(tmp_path):
    """gloo's lost-peer error in a save's collective (FSDP's shards) became "cannot write
    checkpoint … (N MiB free there)", exit 2: the CLI's "another rank of this run stopped …
    resume with --resume auto" never saw it. A disk failure is still said as one."""
    tmp = tmp_path / ".tmp-step-00000024"
    tmp.mkdir()
    lost = RuntimeError("[../gloo/transport/tcp/pair.cc:537] Read error: Connection reset by peer")
    with pytest.raises(RuntimeError) as exc, ckpt._writing(tmp):
        raise lost
    assert exc.value is lost and not tmp.exists()
    tmp.mkdir()
    with pytest.raises(ckpt.CheckpointError, match="cannot write checkpoint .tmp-step-00000024"):
        with ckpt._writing(tmp):
            raise OSError(28, "No space left on device")


def test_a_resumed_runs_first_save_sets_the_other_trajectory_aside(tmp_path, caplog):
    """Resumed from step 10 of a folder that reached 40: at the first save (20) the newer
    ones go aside, a damaged one as damaged-, one a reader holds left in place (said)."""
    manager = manager_for(tmp_path, 5, keep_best=0)
    for step in (10, 20, 30, 40, 50):
        save(manager, step)
    (tmp_path / "step-00000040" / "optimizer.pt").write_bytes(b"torn")  # damaged
    manager.trajectory_from = 10
    with ckpt.reading(tmp_path / "step-00000050"):
        save(manager, 20, value=21)  # another trajectory's step 20
    names = sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("."))
    assert names == ["damaged-step-00000040", "step-00000010", "step-00000020",
                     "step-00000050", "superseded-step-00000020",
                     "superseded-step-00000030"]  # fmt: skip
    assert "step-00000030 → superseded-step-00000030, step-00000040 → damaged-step-00000040" in (
        caplog.text
    )
    assert "step-00000050, of another trajectory, is being read: left in place" in caplog.text
    assert manager.trajectory_from is None  # once, at the first save


def test_resaving_a_step_never_overwrites_a_complete_checkpoint(tmp_path, caplog):
    manager = manager_for(tmp_path, 5)
    save(manager, 10)
    first = save(manager, 20)
    save(manager, 20)  # the same state again: one folder, no copy kept
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-00000010", "step-00000020"]
    save(manager, 20, value=99)  # another trajectory (resumed from step 10): old one kept
    assert loads_as(manager, first) == 99
    aside = tmp_path / "superseded-step-00000020"
    assert "superseded-step-00000020" in caplog.text
    assert ckpt.damage(aside, deep=True) is None  # intact, loadable by path
    model, optimizer = model_at(-1)
    ckpt.load_weights(aside, model)
    assert model.weight.unique().tolist() == [20.0]


DAMAGE = {
    "truncated weights": lambda p: (p / "model.safetensors").write_bytes(b"\x08"),
    "flipped optimizer byte": lambda p: _flip(p / "optimizer.pt"),
    "missing rng": lambda p: (p / "rng-0.pt").unlink(),
    "invalid state": lambda p: (p / ckpt.STATE_FILE).write_text("{"),
    "missing manifest and weights": lambda p: [
        (p / n).unlink() for n in (ckpt.MANIFEST_FILE, "model.safetensors")
    ],
}


def _flip(file: Path) -> None:
    data = bytearray(file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    file.write_bytes(bytes(data))


@pytest.mark.parametrize("case", list(DAMAGE))
def test_auto_resume_falls_back_past_a_damaged_newest(tmp_path, caplog, case):
    manager = manager_for(tmp_path, 3)
    for step in (10, 20, 30):
        save(manager, step)
    DAMAGE[case](tmp_path / "step-00000030")
    path = manager.resolve("auto")
    assert path == tmp_path / "step-00000020" and loads_as(manager, path) == 20
    assert "step-00000030 is damaged" in caplog.text
    with pytest.raises(ckpt.CheckpointError, match="step-00000030"):
        manager.resolve(tmp_path / "step-00000030")
    # resumed at 20, the run saves 30 again: the damaged folder is set aside, not reused
    save(manager, 30)
    assert manager.resolve("auto") == tmp_path / "step-00000030"
    assert loads_as(manager, tmp_path / "step-00000030") == 30
    assert (tmp_path / "damaged-step-00000030").is_dir()


def test_every_checkpoint_damaged_is_an_error_not_a_fresh_start(tmp_path):
    manager = manager_for(tmp_path, 3)
    DAMAGE["truncated weights"](save(manager, 10))
    with pytest.raises(ckpt.CheckpointError, match="every checkpoint .* is damaged"):
        manager.resolve("auto")


@pytest.mark.parametrize("case", ["invalid state", "truncated weights"])
def test_a_damaged_oldest_checkpoint_does_not_break_later_saves(tmp_path, case):
    manager = manager_for(tmp_path, 2, 1)
    save(manager, 10, metrics={"val/loss": 0.1})
    save(manager, 20, metrics={"val/loss": 0.5})
    DAMAGE[case](tmp_path / "step-00000010")
    for step in (30, 40, 50):
        save(manager, step, metrics={"val/loss": 1.0 / step})
    assert [p.name for p in manager.complete()] == ["step-00000040", "step-00000050"]
    assert manager.best() == tmp_path / "step-00000050"
    assert manager.resolve("auto") == tmp_path / "step-00000050"


def test_completeness_requires_every_listed_file(tmp_path):
    manager = manager_for(tmp_path, 3)
    save(manager, 10)
    path = save(manager, 20)
    (path / "optimizer.pt").unlink()
    assert manager.complete() == [tmp_path / "step-00000010"]
    assert manager.latest() == tmp_path / "step-00000010"


SAVER_SIZE = 256  # 256×256 weights + Adam state: a save takes long enough to be hit


def saver(root: Path, mode: str, start_step: int | None, ready) -> None:
    """Saves checkpoints (in a loop for `mode == "loop"`), resuming from resolve("auto");
    runs in a forked child that the test SIGKILLs. `start_step`: as if resumed from an older
    checkpoint, re-save the steps after it."""
    torch.set_num_threads(1)
    if mode == "kill-in-rmtree":  # die in the middle of any deletion of a checkpoint
        real_rmtree = shutil.rmtree

        def rmtree(path, *args, **kwargs):
            weights = os.path.join(path, "model.safetensors")
            if os.path.exists(weights):
                os.unlink(weights)  # what rmtree may remove first; then the kill
                os.kill(os.getpid(), signal.SIGKILL)
            return real_rmtree(path, *args, **kwargs)

        ckpt.shutil.rmtree = rmtree
    manager = manager_for(root, 2, 1)
    size = SAVER_SIZE
    model = torch.nn.Linear(size, size)
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.ones(1, size)).sum().backward()
    optimizer.step()
    start = manager.resolve("auto")
    step = manager.load(start, Acc(), model, optimizer, None).global_step if start else 0
    step = step if start_step is None else start_step
    ready.set()
    while True:
        step += 1
        with torch.no_grad():
            for p in model.parameters():
                p.fill_(float(step))
        # in the loop a best checkpoint that moves about; else the newest is the best
        metric = {"val/loss": float((step * 7919) % 13 if mode == "loop" else -step)}
        manager.save(
            Acc(), model, optimizer, None, ckpt.TrainState(global_step=step, metrics=metric)
        )
        if mode != "loop":
            break


def run_saver(tmp_path: Path, mode: str, start_step: int | None = None, kill_after=None) -> int:
    """Run `saver` in a forked child (torch is imported already: starts in milliseconds);
    SIGKILL it `kill_after` seconds after it is ready. Returns its exit code."""
    context = multiprocessing.get_context("fork")
    ready = context.Event()
    child = context.Process(target=saver, args=(tmp_path / "ck", mode, start_step, ready))
    child.start()
    assert ready.wait(timeout=60)
    if kill_after is not None:
        time.sleep(kill_after)
        os.kill(child.pid, signal.SIGKILL)
    child.join(timeout=60)
    return child.exitcode


def assert_all_intact(root: Path) -> list[str]:
    """resolve("auto") + load succeed, and every complete checkpoint (incl. best) loads."""
    manager = manager_for(root, 2, 1)
    path = manager.resolve("auto")
    assert path is not None and loads_as(manager, path, SAVER_SIZE) == int(path.name[-8:])
    for path in manager.complete():
        assert loads_as(manager, path, SAVER_SIZE) == int(path.name[-8:])
    return [p.name for p in manager.complete()]


def test_sigkill_at_random_points_of_a_save_loop_always_resumes(tmp_path):
    """4 seeded kills in `make test`; STPDIST_FAULT_TRIALS=100 repeats the campaign."""
    rng = random.Random(15)
    run_saver(tmp_path, "loop", kill_after=0.3)  # a few checkpoints to start with
    steps = []
    for _ in range(int(os.environ.get("STPDIST_FAULT_TRIALS", "4"))):
        assert run_saver(tmp_path, "loop", kill_after=rng.uniform(0.0, 0.4)) == -signal.SIGKILL
        names = assert_all_intact(tmp_path / "ck")
        steps.append(int(names[-1][-8:]))
    assert steps == sorted(steps)  # the saved step never went back


def test_sigkill_during_retention_leaves_only_intact_checkpoints(tmp_path):
    run_saver(tmp_path, "once")  # step 1
    run_saver(tmp_path, "once")  # step 2
    # step 3: retention deletes a checkpoint, the process dies in the middle of the rmtree
    assert run_saver(tmp_path, "kill-in-rmtree") == -signal.SIGKILL
    assert_all_intact(tmp_path / "ck")
    run_saver(tmp_path, "once")  # the next save sweeps the leftovers
    assert assert_all_intact(tmp_path / "ck") == ["step-00000003", "step-00000004"]
    assert not [p for p in (tmp_path / "ck").iterdir() if p.name.startswith(".")]


def test_sigkill_while_resaving_a_step_keeps_an_intact_checkpoint(tmp_path):
    for _ in range(3):
        run_saver(tmp_path, "once")  # steps 1, 2, 3 (keep_last=2: 2 and 3, + best)
    # resumed from step 2 with other weights, the run reaches step 3 again and dies in it
    assert run_saver(tmp_path, "kill-in-rmtree", start_step=2) in (0, -signal.SIGKILL)
    assert_all_intact(tmp_path / "ck")


# ----------------------------------------------------------------------------- 12. thresholds


def test_a_value_exactly_at_the_threshold_is_a_hit():
    s = torch.full((1, 1, 1, 7, 7), 20.0).div_(1292.0)
    assert batch_sums(s, s, [20 / 1292.0])["hits"].sum().item() == 49


@pytest.mark.parametrize("scale", [255, 1000, 1292])
@pytest.mark.parametrize("division", ["cpu", "reciprocal"])
def test_skill_counts_equal_a_contingency_table_in_stored_units(scale, division):
    """Every stored integer 0…scale as data and as threshold, against numpy in stored units.
    `reciprocal`: x × float32(1/scale), how CUDA divides by a scalar."""
    rng = np.random.default_rng(scale)
    side = math.ceil(math.sqrt(scale + 1))
    target = np.resize(np.arange(scale + 1), side * side)
    pred = rng.permutation(target)
    thresholds = list(range(scale + 1))

    def scaled(stored: np.ndarray) -> torch.Tensor:
        frames = torch.from_numpy(stored.reshape(1, 1, 1, side, side)).float()
        if division == "cpu":
            return frames.div_(float(scale))
        return frames * torch.tensor(1.0 / scale, dtype=torch.float32)

    sums = batch_sums(scaled(pred), scaled(target), [t / scale for t in thresholds])
    p = pred[None, :] >= np.array(thresholds)[:, None]
    o = target[None, :] >= np.array(thresholds)[:, None]
    expected = {
        "hits": (p & o).sum(1),
        "misses": (~p & o).sum(1),
        "false_alarms": (p & ~o).sum(1),
        "correct_negatives": (~p & ~o).sum(1),
    }
    for name, counts in expected.items():
        np.testing.assert_array_equal(sums[name][:, 0].numpy(), counts, err_msg=name)


# ----------------------------------------------------------------------------- 7. injection


def small_split(folder: Path, dtype=np.uint8) -> Path:
    with SplitWriter(folder, "train", value_scale=255, samples_per_shard=2) as writer:
        for i in range(3):
            writer.write(f"k{i}", np.full((4, 1, 4, 4), i, dtype))
    return folder


def eval_keys(folder, **kwargs) -> list[str]:
    stream = ShardEvalStream(
        folder, batch_size=2, num_input_frames=2, num_output_frames=2, **kwargs
    )
    return [k for batch in stream.iterate(LoaderContext()) for k in batch[2]]


def test_shard_names_from_the_index_are_never_run(tmp_path):
    folder = small_split(tmp_path / "train")
    index = json.loads((folder / "index.json").read_text())
    index["shards"][0]["name"] = f"train-000000.tar; touch {tmp_path}/PWNED; echo "
    (folder / "index.json").write_text(json.dumps(index))
    with pytest.raises(ShardFormatError, match="shard name"):
        eval_keys(folder, url_template=f"pipe:cat {folder}/{{name}}")
    assert not (tmp_path / "PWNED").exists()


def test_a_shell_command_in_a_config_runs_only_when_the_environment_allows_it(
    tmp_path, monkeypatch
):
    """`data.url_template: "pipe:…"` in a config handed over with a dataset or a recipe ran
    its command unasked; it now needs STPDIST_ALLOW_PIPE=1."""
    from stpdist import build
    from stpdist.config import ConfigError, load_config

    small_split(tmp_path / "train")
    marker = tmp_path / "ran"
    template = f"pipe:touch {marker}; cat {tmp_path}/{{split}}/{{name}}"
    overrides = [f"data.root={tmp_path}", "data.synthesize=null", f"data.url_template={template}"]
    overrides += ["data.num_input_frames=2", "data.num_output_frames=2", "data.batch_size=2"]
    cfg = load_config(ROOT / "configs" / "debug.yaml", overrides)
    monkeypatch.delenv("STPDIST_ALLOW_PIPE", raising=False)
    for make in (build.train_stream, lambda c: build.eval_stream(c, "train")):
        with pytest.raises(ConfigError, match="is a shell command, .* set STPDIST_ALLOW_PIPE=1"):
            make(cfg)
    assert not marker.exists()
    monkeypatch.setenv("STPDIST_ALLOW_PIPE", "1")
    stream = build.eval_stream(cfg, "train")
    assert [k for batch in stream.iterate(LoaderContext()) for k in batch[2]] == ["k0", "k1", "k2"]
    assert marker.exists()
    # a URL is no command
    monkeypatch.delenv("STPDIST_ALLOW_PIPE")
    url = load_config(
        ROOT / "configs" / "debug.yaml", [*overrides, "data.url_template=https://h/{split}/{name}"]
    )
    assert build.eval_stream(url, "train").url_template == "https://h/{split}/{name}"


def test_hostile_tar_headers_and_names_are_said_plainly(tmp_path):
    """A member whose size field claims 64 GiB failed to allocate and said "corrupt or
    truncated shard ()"; a sample without frames.npy was "unreadable frames.npy" to
    `inspect --verify`; shard and checkpoint names took any script's digits."""
    from stpdist.checkpoint import _NAME
    from stpdist.cli import verify_split
    from stpdist.data.format import check_shard_name

    folder = small_split(tmp_path / "train")
    shard = folder / "train-000000.tar"
    tar = bytearray(shard.read_bytes())
    tar[124:136] = b"777777777777"  # the first member's size: 64 GiB
    resum_tar_header(tar)
    shard.write_bytes(bytes(tar))
    with pytest.raises(ShardFormatError, match=r"train-000000\.tar: truncated member "):
        eval_keys(folder)

    folder = tmp_path / "other" / "train"
    with SplitWriter(folder, "train", value_scale=255) as writer:
        writer.write("k0", np.zeros((4, 1, 4, 4), np.uint8))
    shard = folder / "train-000000.tar"
    tar = bytearray(shard.read_bytes().replace(b"k0.frames.npy", b"k0.frames.txt"))
    resum_tar_header(tar, tar.index(b"k0.frames.txt"))
    shard.write_bytes(bytes(tar))
    with pytest.raises(ShardFormatError, match=r"train-000000\.tar: its bytes are not those"):
        verify_split(folder)  # not the shard written
    index = json.loads((folder / "index.json").read_text())  # as its own writer's index
    index["shards"][0].update(sha256="", fingerprint="")
    (folder / "index.json").write_text(json.dumps(index))
    with pytest.raises(ShardFormatError, match=r"train-000000\.tar: sample 'k0' has no frames"):
        verify_split(folder)

    with pytest.raises(ShardFormatError, match="is not 'train-<6 digits>.tar'"):
        check_shard_name("train-\u0660\u0660\u0660\u0660\u0660\u0661.tar", "train")
    assert check_shard_name("train-000001.tar", "train") == "train-000001.tar"
    assert _NAME.match("step-\u0660\u0660\u0660\u0660\u0660\u0660\u0660\u0661") is None
    assert _NAME.match("step-00000001\n") is None and _NAME.match("step-00000001")


def test_pipe_substitutions_are_shell_quoted():
    from stpdist.data.stream import shard_url

    assert (
        shard_url("pipe:cat /d/{split}/{name}", "a b;c", "x$(y)") == "pipe:cat /d/'x$(y)'/'a b;c'"
    )
    assert shard_url("https://h/{split}/{name}", "train-000001.tar", "train") == (
        "https://h/train/train-000001.tar"
    )
    assert shard_url("pipe:awk '{print}' /d/{name}", "t-000001.tar", "t") == (
        "pipe:awk '{print}' /d/t-000001.tar"
    )


def test_a_relative_folder_named_pipe_is_a_path_not_a_command(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    folder = Path("pipe:touch PWNED;cat ") / "train"  # a legal folder name
    small_split(folder)
    assert eval_keys(folder) == ["k0", "k1", "k2"]
    assert not (tmp_path / "PWNED").exists()


# ----------------------------------------------------------------------------- 9/10. bad values


def test_duplicate_keys_in_a_split_are_refused(tmp_path):
    with pytest.raises(ShardFormatError, match="'k0' written twice"):  # noqa: SIM117
        with SplitWriter(tmp_path / "train", "train", value_scale=255) as writer:
            for key in ("k0", "k1", "k0"):
                writer.write(key, np.zeros((4, 1, 4, 4), np.uint8))
    assert not (tmp_path / "train" / "index.json").exists()


@pytest.mark.parametrize("scale", [0, -1, float("nan"), float("inf")])
def test_bad_value_scale_is_refused(tmp_path, scale):
    with pytest.raises(ShardFormatError, match="value scale"):
        SplitWriter(tmp_path / "train", "train", value_scale=scale)
    folder = small_split(tmp_path / "ok")
    index = json.loads((folder / "index.json").read_text())
    index["value_scale"] = scale
    (folder / "index.json").write_text(json.dumps(index))
    with pytest.raises(ShardFormatError, match="value scale") as exc:
        read_index(folder)
    assert str(folder / "index.json") in one_line(exc)


def nan_source(tmp_path: Path, bad: float, **kwargs: float) -> GenericArrays:
    (tmp_path / "raw").mkdir()
    frames = np.full((4, 1, 8, 8), 0.5, np.float32)
    np.save(tmp_path / "raw" / "good.npy", frames)
    frames[2, 0, 3, 4] = bad
    np.save(tmp_path / "raw" / "bad.npy", frames)
    return GenericArrays(str(tmp_path / "raw"), **kwargs)


def test_nan_in_frames_is_refused_naming_file_and_position(tmp_path):
    with pytest.raises(ValueError, match=r"bad\.npy.*\(2, 0, 3, 4\)") as exc:
        convert(nan_source(tmp_path, np.nan), tmp_path / "out", progress=False)
    one_line(exc)
    assert not (tmp_path / "out").exists()


def test_nan_with_a_fill_value_is_stored_as_the_fill(tmp_path):
    from stpdist.data.format import decode_frames, iter_shard

    # a fill of -1 is outside [0, 1]: the value scale must be given, not guessed
    source = nan_source(tmp_path, np.nan, value_scale=1.0)
    index = convert(source, tmp_path / "out", progress=False, nan_fill=-1.0)
    assert index["train"].args["nan_fill"] == -1.0
    shard = tmp_path / "out" / "train" / index["train"].shards[0].name
    frames = {k: decode_frames(s["frames.npy"], k) for k, s in iter_shard(str(shard))}
    assert frames["bad"][2, 0, 3, 4] == -1.0 and (frames["good"] == 0.5).all()


def test_inf_is_refused_even_with_a_fill_value(tmp_path):
    with pytest.raises(ValueError, match=r"bad\.npy.*inf"):
        convert(nan_source(tmp_path, np.inf), tmp_path / "out", progress=False, nan_fill=0.0)


def test_reader_checks_each_sample_dtype_against_the_index(tmp_path):
    folder = small_split(tmp_path / "train")
    index = json.loads((folder / "index.json").read_text())
    index["dtype"] = "float32"  # the shards hold uint8
    (folder / "index.json").write_text(json.dumps(index))
    with pytest.raises(ShardFormatError, match=r"train-000000\.tar: member k0\.frames\.npy: uint8"):
        eval_keys(folder)


# ----------------------------------------------------------------------------- 9/10. readers
def _set_count(folder: Path, shard: int, count: int) -> None:
    index = json.loads((folder / "index.json").read_text())
    index["shards"][shard]["num_samples"] = count
    (folder / "index.json").write_text(json.dumps(index))


def test_a_shard_holding_more_than_its_index_count_is_named(tmp_path):
    folder = small_split(tmp_path / "train")  # shards of 2 and 1 samples
    _set_count(folder, 0, 1)
    with pytest.raises(ShardFormatError, match=r"train-000000\.tar: holds more than the 1"):
        eval_keys(folder)


def test_skip_mode_with_wrong_index_counts_is_refused_naming_the_shard(tmp_path):
    """An index count above or below the shard's, in skip mode: refused before the first
    batch, naming the shard and both counts (once such an epoch looped forever; later it
    planned steps over samples that do not exist: issue 25, item 8)."""
    from stpdist.data.stream import ShardTrainStream

    for shard, count, found in ((0, 3, 2), (0, 1, 2)):
        folder = small_split(tmp_path / f"c{shard}{count}" / "train")
        _set_count(folder, shard, count)
        s = ShardTrainStream(
            str(folder), batch_size=1, num_input_frames=2, num_output_frames=2, skip_bad=True,
            shuffle_buffer=2,
        )  # fmt: skip
        with pytest.raises(ShardFormatError, match=rf"train-00000{shard}\.tar: holds") as exc:
            s.batches_per_epoch(LoaderContext(world_size=2))
        counts = one_line(exc).split(".tar: ")[1]  # both numbers, after the shard's name
        assert str(count) in counts and str(found) in counts, counts


def test_nan_met_by_the_loader_names_shard_and_sample(tmp_path):
    import io
    import tarfile

    folder = small_split(tmp_path / "train", dtype=np.float32)
    shard = folder / "train-000000.tar"
    with tarfile.open(shard, "w") as tar:  # rewrite the shard with a NaN in sample k1
        for i in range(2):
            frames = np.full((4, 1, 4, 4), i, np.float32)
            if i == 1:
                frames[2, 0, 1, 1] = np.nan
            buffer = io.BytesIO()
            np.save(buffer, frames)
            info = tarfile.TarInfo(f"k{i}.frames.npy")
            info.size = buffer.tell()
            buffer.seek(0)
            tar.addfile(info, buffer)
    with pytest.raises(ShardFormatError, match=r"train-000000\.tar: member k1\.frames\.npy: .*NaN"):
        eval_keys(folder)


# ----------------------------------------------------------------------------- 11. messages
def test_a_pickled_optimizer_file_is_one_line_naming_it(tmp_path):
    manager = manager_for(tmp_path, 5)
    path = save(manager, 10)
    torch.save({"state": {}, "param_groups": [], "evil": Path("x")}, path / "optimizer.pt")
    with pytest.raises(ckpt.CheckpointError) as err:
        loads_as(manager, path)
    message = one_line(err)
    assert "optimizer.pt" in message and "never unpickles" in message
    assert "weights_only=False" not in message


def test_disk_full_while_saving_is_one_line_naming_the_folder(tmp_path):
    """A 1 MiB tmpfs in a private mount namespace (gone when the test ends; nothing on the
    machine changes). Skipped where namespaces or mounts are not allowed."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare for a private tmpfs")
    small = tmp_path / "small"
    small.mkdir()
    script = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_faults import manager_for, save
        import stpdist.checkpoint as ckpt
        manager = manager_for(__import__("pathlib").Path({str(small)!r}), 5)
        try:
            from test_faults import model_at
            model, optimizer = model_at(1, size=1024)  # ~12 MB of weights and Adam state
            manager.save(__import__("test_faults").Acc(), model, optimizer, None,
                         ckpt.TrainState(global_step=1))
        except ckpt.CheckpointError as exc:
            print("ERROR", exc)
        """
    )
    (tmp_path / "fill.py").write_text(script)
    command = f"mount -t tmpfs -o size=1m tmpfs {small} && {sys.executable} {tmp_path / 'fill.py'}"
    proc = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", command],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if "mount" in proc.stderr and "ERROR" not in proc.stdout:
        pytest.skip(f"no private tmpfs here: {proc.stderr.strip()[:200]}")
    lines = [line for line in proc.stdout.splitlines() if line.startswith("ERROR")]
    assert len(lines) == 1, proc.stdout + proc.stderr
    assert "cannot write checkpoint .tmp-step-00000001" in lines[0] and "MiB free" in lines[0]
    assert "No space left on device" in lines[0]
    assert not list(small.iterdir()) if small.exists() else True  # nothing mounted out here


def test_synth_with_a_negative_count_fails_instead_of_saying_wrote(tmp_path):
    from conftest import run_cli

    proc = run_cli("synth", "moving-digits", "--out", "x", "--train", "-5", cwd=tmp_path)
    assert proc.returncode == 2 and "wrote" not in proc.stdout  # bad input (InputError)
    assert (
        "--train -5: expected at least 1" in proc.stderr
        and len(proc.stderr.strip().splitlines()) == 1
    )


def test_a_broken_taxibj_file_is_named(tmp_path):
    pytest.importorskip("h5py")
    from stpdist.data.sources.taxibj import TaxiBJ

    bad = tmp_path / "BJ13_M32x32_T30_InOut.h5"
    bad.write_bytes(b"not an hdf5 file at all")
    with pytest.raises(ValueError, match=r"BJ13_M32x32_T30_InOut\.h5: "):
        TaxiBJ([str(bad)]).splits()


def test_read_only_output_dir_is_one_line_naming_it(tmp_path):
    """`trainer.output_dir` on a read-only filesystem (a read-only tmpfs in a private mount
    namespace): one line naming the folder, exit 1, no traceback."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare for a private read-only mount")
    ro = tmp_path / "ro"
    ro.mkdir()
    debug = Path(__file__).parent.parent / "configs" / "debug.yaml"
    data = tmp_path / "data"
    train = (
        f"{sys.executable} -m stpdist train {debug} trainer.output_dir={ro / 'run'} "
        f"data.root={data} data.synthesize.root={data}"
    )
    proc = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c",
         f"mount -t tmpfs -o ro,size=1m tmpfs {ro} && {train}"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    if "mount:" in proc.stderr:
        pytest.skip(f"no private read-only mount here: {proc.stderr.strip()[:200]}")
    # refused before any data is made (an admin review: it failed after), naming the key
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("stpdist:")]
    assert len(errors) == 1 and str(ro / "run") in errors[0], proc.stderr[-2000:]
    assert f"{ro} is on a read-only filesystem" in errors[0] and "Traceback" not in proc.stderr
    assert "trainer.output_dir" in errors[0] and not data.exists()


def test_inspect_verify_reads_every_sample_and_names_a_duplicate_key(tmp_path):
    import io
    import tarfile

    from stpdist.cli import verify_split

    folder = small_split(tmp_path / "train")  # k0, k1 | k2
    assert verify_split(folder).startswith("3 samples in 2 shards")
    with tarfile.open(folder / "train-000001.tar", "w") as tar:  # k2 → a second k0
        buffer = io.BytesIO()
        np.save(buffer, np.full((4, 1, 4, 4), 2, np.uint8))
        info = tarfile.TarInfo("k0.frames.npy")
        info.size = buffer.tell()
        buffer.seek(0)
        tar.addfile(info, buffer)
    with pytest.raises(ShardFormatError, match=r"train-000001\.tar: its bytes are not those"):
        verify_split(folder)  # the shard is not the one written
    index = json.loads((folder / "index.json").read_text())  # as its own writer's index
    index["shards"][1].update(sha256="", fingerprint="")
    (folder / "index.json").write_text(json.dumps(index))
    with pytest.raises(
        ShardFormatError, match=r"train-000001\.tar: member k0.*also in train-000000"
    ):
        verify_split(folder)
    from conftest import run_cli

    proc = run_cli("inspect", str(folder), "--verify", "--samples", "0", cwd=tmp_path)
    assert proc.returncode == 2 and "key 'k0' also in train-000000.tar" in proc.stderr


def test_inspect_verify_finds_a_flipped_byte_in_a_samples_data(tmp_path):
    """A review flipped one byte inside a sample's frames: `--verify` read every sample
    back, found counts, dtypes, shapes and keys right, and said OK. The writer records each
    shard's SHA-256; `--verify` checks it (an index without one: the fingerprint)."""
    import tarfile

    from conftest import run_cli

    from stpdist.cli import verify_split

    folder = small_split(tmp_path / "train")
    assert verify_split(folder).endswith("bytes, counts, dtypes, shapes, keys OK")
    # a tar dropped in beside the shards is no part of the split: named (a dataops review:
    # ignored by training and verify without a word)
    import shutil

    shutil.copy(folder / "train-000000.tar", folder / "train-000009.tar")
    assert verify_split(folder).endswith(
        "keys OK; 1 .tar file the index does not list, never read: train-000009.tar"
    )
    (folder / "train-000009.tar").unlink()
    shard = folder / "train-000000.tar"
    with tarfile.open(shard) as tar:  # a byte of k0's frames, past the .npy header
        offset = tar.getmember("k0.frames.npy").offset_data + 140
    data = bytearray(shard.read_bytes())
    data[offset] ^= 0x01
    shard.write_bytes(bytes(data))
    proc = run_cli("inspect", str(folder), "--verify", "--samples", "0", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "train-000000.tar: its bytes are not those written (the SHA-256" in proc.stderr
    # a shard missing, or a FIFO in its place: said as such (a FIFO is never opened)
    (folder / "train-000001.tar").unlink()
    shard.unlink()
    os.mkfifo(shard)
    with pytest.raises(InputError, match=r"train-000000\.tar.* FIFO"):
        verify_split(folder)
    shard.unlink()
    with pytest.raises(ShardFormatError, match=r"train-000000\.tar: cannot open \(no such file\)"):
        verify_split(folder)


def test_inspect_verify_names_every_damaged_shard_of_every_split_in_one_run(tmp_path):
    """A review of a large dataset: `--verify` stopped at the first damaged shard (a run a
    damaged shard, each reading the whole dataset again) and never reached the next split.
    Every damaged shard of every split is named now, each by its first problem; exit 2."""
    from conftest import run_cli

    for split in ("train", "val"):
        with SplitWriter(tmp_path / "ds" / split, split, value_scale=255,
                         samples_per_shard=2) as writer:  # fmt: skip
            for i in range(5):
                writer.write(f"{split}{i}", np.full((4, 1, 4, 4), i, np.uint8))
    for name in ("train/train-000000.tar", "train/train-000002.tar", "val/val-000001.tar"):
        shard = tmp_path / "ds" / name
        shard.write_bytes(shard.read_bytes()[:-700])  # cut short
    proc = run_cli("inspect", "ds", "--verify", "--samples", "0", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "2 damaged shards of 3:" in proc.stderr and "1 damaged shard of 3:" in proc.stderr
    for name in ("train-000000.tar", "train-000002.tar", "val-000001.tar"):
        assert f"{name}: its bytes are not those written" in proc.stderr, (name, proc.stderr)
    assert "train-000001.tar" not in proc.stderr and proc.stdout.count("  damaged: ") == 2
    # a shard that is no file (a folder in its place) is said beside the others' damage,
    # which it dropped (an InputError, not a shard's format error)
    (tmp_path / "ds" / "val" / "val-000002.tar").unlink()
    (tmp_path / "ds" / "val" / "val-000002.tar").mkdir()
    proc = run_cli("inspect", "ds", "--verify", "--samples", "0", cwd=tmp_path)
    assert proc.returncode == 2 and "2 damaged shards of 3:" in proc.stderr
    assert "val-000002.tar" in proc.stderr.splitlines()[-1] and "train-000002.tar" in proc.stderr


def test_a_step_saved_again_and_killed_between_its_renames_is_put_back(tmp_path, monkeypatch):
    """Saving a step that exists with the same weights renames the old copy `.same-step-N`,
    then moves the new one into place; a kill between the two left step N under no name:
    `--resume auto` went back a step, and the next save's sweep deleted both copies."""
    manager = manager_for(tmp_path, keep_last=3)
    save(manager, 5)
    save(manager, 6)

    def killed(source, target):  # the new copy never reaches its name
        raise KeyboardInterrupt

    monkeypatch.setattr(ckpt.os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        save(manager, 6)
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir() if "00000006" in p.name) == [
        ".same-step-00000006",
        ".tmp-step-00000006",
    ]
    restarted = manager_for(tmp_path, keep_last=3)
    assert restarted.resolve("auto") == tmp_path / "step-00000006"
    assert loads_as(restarted, tmp_path / "step-00000006") == 6
    save(restarted, 7)  # the sweep: the leftover new copy goes, step 6 stays
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(("step-", "."))) == [
        "step-00000005", "step-00000006", "step-00000007",
    ]  # fmt: skip


def test_checkpoints_past_step_99_999_999_are_found_in_step_order(tmp_path):
    """`step-100000000` has 9 digits: it matched no checkpoint name, so `--resume auto`
    went back to step 99 999 999 and retention never deleted the newer ones."""
    manager = manager_for(tmp_path, keep_last=1, keep_best=0)
    for step in (99_999_999, 100_000_000, 100_000_001):
        save(manager, step)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("step-")] == ["step-100000001"]
    assert manager.resolve("auto") == manager.latest() == tmp_path / "step-100000001"
    assert manager.choose("100000001") == tmp_path / "step-100000001"
