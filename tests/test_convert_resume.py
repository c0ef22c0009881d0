"""A stopped conversion goes on from its last checkpoint (`stpdist/data/resume.py`): the
dataset it ends with is byte for byte the one an uninterrupted conversion writes, whether it
was stopped by Ctrl-C, SIGTERM or SIGKILL, in a split, between splits, in an item's samples,
or after an off-grid split sent every split back to float32. A checkpoint of other sources,
files or options, or one that does not read, is deleted, saying so, and the conversion
starts over. Real files in each layout, real shards, the CLI in processes of its own where
signals are what is tested."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli, terminal_signals
from test_convert import stored, write_seed_mmnist

from stpdist.data import convert as convert_module
from stpdist.data import resume
from stpdist.data.convert import convert
from stpdist.data.format import StatsAccumulator
from stpdist.data.sources.generic import GenericArrays
from stpdist.data.sources.seed_layout import SeedLayout
from stpdist.data.staging import recover


@pytest.fixture(autouse=True)
def _checkpoint_at_every_shard(monkeypatch):
    monkeypatch.setenv(resume.EVERY_ENV, "0")


def _files(folder: Path) -> dict[str, bytes]:
    """Every file under `folder`, by relative path (the card's mentions of the folder's own
    path as `OUT`)."""
    return {
        str(p.relative_to(folder)): p.read_bytes().replace(str(folder).encode(), b"OUT")
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def _sequences(root: Path, counts: dict[str, int], frames: int = 4) -> Path:
    """Per-sequence `.npy` files T×1×6×6 uint8 in split folders."""
    rng = np.random.default_rng(3)
    for split, count in counts.items():
        (root / split).mkdir(parents=True)
        for i in range(count):
            values = rng.integers(0, 256, (frames, 1, 6, 6), dtype=np.uint8)
            np.save(root / split / f"seq{i:03d}.npy", values)
    return root


def _series(root: Path) -> Path:
    """One float32 series of 60 frames 2×4×4 with NaNs in it: windows of 6 frames every 2
    (frames shared by windows, counted once in the statistics), several windows an item."""
    root.mkdir(parents=True)
    values = np.random.default_rng(4).random((60, 2, 4, 4)).astype(np.float32)
    values[7, 1, 2, 3] = values[33, 0, 0, 0] = np.nan
    np.save(root / "long.npy", values)
    return root / "long.npy"


SOURCES = {
    # a sample an item, two splits
    "files": lambda tmp: (GenericArrays(str(_sequences(tmp / "raw", {"train": 9, "val": 5}))), {}),
    # windows of a series: many samples an item (checkpoints inside an item), NaN filled
    "series": lambda tmp: (
        GenericArrays(str(_series(tmp / "raw")), num_frames=6, stride=2, val_from="40"),
        {"nan_fill": -1.0},
    ),
}


@contextlib.contextmanager
def _loads_stopped_at(cls: type, number: int, error: type[BaseException] = KeyboardInterrupt):
    """`cls.load` raising `error` at its `number`-th call within the block (and `error`
    expected out of it); the class's own `load` again after."""
    original, calls = cls.load, [0]

    def load(self, item):
        calls[0] += 1
        if calls[0] == number:
            raise error
        return original(self, item)

    with pytest.MonkeyPatch.context() as patched, pytest.raises(error):
        patched.setattr(cls, "load", load)
        yield


def _stopped_at_sample(monkeypatch, number: int) -> None:
    """Ctrl-C as the `number`-th sample is about to be written (once)."""
    original, calls = convert_module._write_sample, [0]

    def write(*args, **kwargs):
        calls[0] += 1
        if calls[0] == number:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(convert_module, "_write_sample", write)


def _convert_stopped_then_again(monkeypatch, make, tmp_path, stop_at: int, spp: int = 3):
    """The reference (uninterrupted) and the dataset converted again after a Ctrl-C as the
    `stop_at`-th sample was written; returns both folders' files and the leftovers between."""
    source, options = make(tmp_path)
    reference = convert(source, tmp_path / "ref" / "ds", progress=False,
                        samples_per_shard=spp, **options)  # fmt: skip
    assert reference
    with monkeypatch.context() as patched:
        _stopped_at_sample(patched, stop_at)
        with pytest.raises(KeyboardInterrupt):
            convert(source, tmp_path / "run" / "ds", progress=False, samples_per_shard=spp,
                    **options)  # fmt: skip
    kept = _leftovers(tmp_path / "run")
    convert(source, tmp_path / "run" / "ds", progress=False, samples_per_shard=spp, **options)
    return _files(tmp_path / "ref" / "ds"), _files(tmp_path / "run" / "ds"), kept


STOPS = {"files": [5, 8, 10, 13], "series": [5, 8, 20, 25]}
"""Samples (files: train 9, val 5; series: train 18, val 8; 3 a shard): in the first split,
at its end, in the second (a series: one item a split, so inside an item's windows)."""


@pytest.mark.parametrize(
    ("name", "stop_at"), [(name, stop) for name in sorted(SOURCES) for stop in STOPS[name]]
)
def test_a_conversion_stopped_anywhere_goes_on_to_the_same_bytes(
    monkeypatch, tmp_path, caplog, name, stop_at
):
    """Stopped in the first split, at its end, in the second (and, for a series, within an
    item's windows): the second run says where it goes on from, and ends with every shard,
    index.json and the card byte for byte an uninterrupted run's."""
    caplog.set_level(logging.WARNING, "stpdist")
    reference, resumed, kept = _convert_stopped_then_again(
        monkeypatch, SOURCES[name], tmp_path, stop_at
    )
    assert len(kept) == 1 and kept[0].startswith(".ds.staging-"), kept
    said = caplog.text
    assert "is kept in" in said and "going on with the conversion stopped at" in said, said
    assert resumed == reference
    assert not any(".resume" in name for name in resumed)
    assert _leftovers(tmp_path / "run") == []


def test_every_split_again_in_float32_goes_on_in_float32(monkeypatch, tmp_path, caplog):
    """val off the 1/255 grid sends every split back to float32; stopped in that second pass,
    the conversion goes on storing float32 (not uint8 in the splits after)."""
    caplog.set_level(logging.WARNING, "stpdist")
    on = np.random.default_rng(1).integers(0, 256, size=(3, 20, 1, 8, 8)) / 255.0
    write_seed_mmnist(tmp_path / "seed", on.astype(np.float32))
    off = np.random.default_rng(2).random((3, 20, 1, 8, 8)).astype(np.float32)
    for i in range(3):
        np.savez(tmp_path / "seed" / "validation" / f"example{i + 1:06d}.npz",
                 inputs=off[i, :10], labels=off[i, 10:])  # fmt: skip
    source = SeedLayout(str(tmp_path / "seed"), "mmnist")
    convert(source, tmp_path / "ref" / "ds", progress=False, samples_per_shard=1)
    # loads: 3 train, 1 val (off the grid), then train again: its third item's, after a shard
    # of the second pass closed at the second's (a checkpoint)
    with _loads_stopped_at(SeedLayout, 7):
        convert(source, tmp_path / "run" / "ds", progress=False, samples_per_shard=1)
    indexes = convert(source, tmp_path / "run" / "ds", progress=False, samples_per_shard=1)
    assert {split: index.dtype for split, index in indexes.items()} == {
        "train": "float32", "val": "float32"
    }  # fmt: skip
    assert "going on with the conversion stopped at split train" in caplog.text
    assert _files(tmp_path / "run" / "ds") == _files(tmp_path / "ref" / "ds")


def test_other_options_or_changed_files_start_over(monkeypatch, tmp_path, caplog):
    """The checkpoint is of other options (`--samples-per-shard`), then of files changed
    since: each time deleted, saying so, and the dataset written from the start."""
    caplog.set_level(logging.WARNING, "stpdist")
    source, _ = SOURCES["files"](tmp_path)
    out = tmp_path / "run" / "ds"

    def stopped(spp: int) -> None:
        with _loads_stopped_at(GenericArrays, 6):
            convert(source, out, progress=False, samples_per_shard=spp, overwrite=True)

    stopped(2)  # in this process: its own folder, which the next conversion writes
    convert(source, out, progress=False, samples_per_shard=3)
    assert "a conversion stopped at a checkpoint: of other sources or options" in caplog.text
    assert "going on with" not in caplog.text
    convert(source, tmp_path / "ref" / "ds", progress=False, samples_per_shard=3)
    assert _files(out) == _files(tmp_path / "ref" / "ds")

    caplog.clear()
    stopped(3)
    changed = tmp_path / "raw" / "train" / "seq001.npy"
    np.save(changed, np.zeros((4, 1, 6, 6), np.uint8))
    convert(source, out, progress=False, samples_per_shard=3, overwrite=True)
    assert "its raw files changed since" in caplog.text and "going on with" not in caplog.text
    assert _leftovers(out.parent) == []
    again = convert(source, tmp_path / "ref2" / "ds", progress=False, samples_per_shard=3)
    assert again and _files(out) == _files(tmp_path / "ref2" / "ds")


@pytest.mark.parametrize("damage", ["state", "shard", "log"])
def test_a_damaged_checkpoint_starts_over(monkeypatch, tmp_path, caplog, damage):
    """A checkpoint that does not read (its state cut short), a kept shard that changed, a
    samples log cut inside the checkpoint's lines: deleted or started over, saying why;
    the dataset is still the uninterrupted one's."""
    caplog.set_level(logging.WARNING, "stpdist")
    source, _ = SOURCES["files"](tmp_path)
    convert(source, tmp_path / "ref" / "ds", progress=False, samples_per_shard=2)
    with _loads_stopped_at(GenericArrays, 7):
        convert(source, tmp_path / "run" / "ds", progress=False, samples_per_shard=2)
    [staging] = (tmp_path / "run").glob(".ds.staging-*")
    state = staging / ".resume" / "state.json"
    if damage == "state":
        header = json.loads(state.read_text())
        state.write_text(json.dumps({**header, "arrays": "../../escape.npz"}))
    elif damage == "shard":
        shard = staging / "train" / "train-000000.tar"
        shard.write_bytes(shard.read_bytes()[:-1] + b"x")
    else:
        header = json.loads(state.read_text())
        log_file = staging / ".resume" / "samples.jsonl"
        log_file.write_bytes(log_file.read_bytes()[: header["log_bytes"] - 5])
    convert(source, tmp_path / "run" / "ds", progress=False, samples_per_shard=2)
    said = caplog.text
    assert "going on with" not in said or "starting over" in said, said
    assert "deleted" in said or "starting over" in said, said
    assert _files(tmp_path / "run" / "ds") == _files(tmp_path / "ref" / "ds")
    assert _leftovers(tmp_path / "run") == []


def test_a_source_that_loads_otherwise_starts_over(monkeypatch, tmp_path, caplog):
    """The checkpoint's item loads other samples than it did (the key of the sample to go on
    from differs): the conversion starts over rather than mix two versions of the data."""
    caplog.set_level(logging.WARNING, "stpdist")
    source, options = SOURCES["series"](tmp_path)
    original = GenericArrays.load
    with monkeypatch.context() as patched:
        _stopped_at_sample(patched, 6)
        with pytest.raises(KeyboardInterrupt):
            convert(source, tmp_path / "run" / "ds", progress=False, samples_per_shard=2,
                    **options)  # fmt: skip

    def renamed(self, item):
        return [(f"x{key}", frames, meta) for key, frames, meta in original(self, item)]

    monkeypatch.setattr(GenericArrays, "load", renamed)
    indexes = convert(source, tmp_path / "run" / "ds", progress=False, samples_per_shard=2,
                      **options)  # fmt: skip
    assert "cannot go on from the stopped conversion's checkpoint" in caplog.text
    assert "starting over" in caplog.text
    keys = {key for key, _, _ in original(source, source.splits()["train"][0])}
    assert indexes["train"].num_samples == len(keys)  # no sample of the first version
    assert set(stored(tmp_path / "run" / "ds" / "train")) == {f"x{key}" for key in keys}
    assert _leftovers(tmp_path / "run") == []


def test_an_error_keeps_the_checkpoint_and_a_fixed_file_starts_over(monkeypatch, tmp_path, caplog):
    """Whatever stops a conversion keeps what it converted up to its checkpoint: an error in
    the data too (the same command fails at once where it did, once gone on), and a file
    fixed is a changed file, which starts it over."""
    caplog.set_level(logging.WARNING, "stpdist")
    source, _ = SOURCES["files"](tmp_path)
    with _loads_stopped_at(GenericArrays, 6, ValueError):
        convert(source, tmp_path / "run" / "ds", progress=False, samples_per_shard=2)
    assert "stopped by the error below: what was converted up to a checkpoint" in caplog.text
    assert len(list((tmp_path / "run").glob(".ds.staging-*"))) == 1
    np.save(tmp_path / "raw" / "train" / "seq005.npy", np.zeros((4, 1, 6, 6), np.uint8))
    convert(source, tmp_path / "run" / "ds", progress=False, samples_per_shard=2)
    assert "its raw files changed since" in caplog.text
    assert _leftovers(tmp_path / "run") == []


def test_a_worker_killed_by_the_out_of_memory_killer_keeps_the_checkpoint(tmp_path):
    """The kernel's out-of-memory killer picks the largest process, often a worker: the
    conversion stopped with an error saying so, and deleted every checkpoint it had kept.
    They are kept now, and the same command with fewer workers goes on."""
    raw = _raw_for_the_cli(tmp_path)
    env = {**os.environ, "OMP_NUM_THREADS": "1", resume.EVERY_ENV: "0"}
    command = [sys.executable, "-m", "stpdist", "shard", "arrays", str(raw), "--out", "ds",
               "--workers", "2", "--samples-per-shard", "4"]  # fmt: skip
    with open(tmp_path / "stderr.txt", "w") as stderr:
        proc = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                                stderr=stderr, start_new_session=True)  # fmt: skip
    try:
        deadline = time.time() + 60
        while len(list(tmp_path.glob(".ds.staging-*/train/*.tar"))) < 5 or not list(
            tmp_path.glob(".ds.staging-*/.resume/state.json")
        ):
            assert proc.poll() is None, (tmp_path / "stderr.txt").read_text()[-2000:]
            assert time.time() < deadline, "no checkpoint within 60 s"
            time.sleep(0.01)
        session = [int(p.name) for p in Path("/proc").iterdir()
                   if p.name.isdigit() and _stat_of(int(p.name))[1] == proc.pid]  # fmt: skip
        servers = [pid for pid in session if _stat_of(pid)[0] == proc.pid
                   and b"forkserver" in _cmdline(Path(f"/proc/{pid}"))]  # fmt: skip
        workers = [pid for pid in session if _stat_of(pid)[0] in servers]  # the server's forks
        assert workers, "no worker process found"
        os.kill(workers[0], signal.SIGKILL)
        assert proc.wait(timeout=60) == 1
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    said = (tmp_path / "stderr.txt").read_text()
    assert "a worker process ended abruptly" in said and "is kept in" in said, said[-2000:]
    again = run_cli("shard", "arrays", str(raw), "--out", "ds", "--workers", "1",
                    "--samples-per-shard", "4", cwd=tmp_path)  # fmt: skip
    assert again.returncode == 0, again.stderr[-2000:]
    assert "going on with the conversion stopped at split train" in again.stderr
    assert _leftovers(tmp_path) == []


def _stat_of(pid: int) -> tuple[int | None, int | None]:
    """A process's parent and session."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None, None
    return int(fields[1]), int(fields[3])


def _cmdline(entry: Path) -> bytes:
    try:
        return (entry / "cmdline").read_bytes()
    except OSError:
        return b""


def test_other_commands_keep_a_checkpoint_and_say_so(monkeypatch, tmp_path, caplog):
    """`recover` (a reader, `stpdist inspect`) leaves a stopped conversion's staging folder for
    the conversion to go on from, with a line saying so; without a checkpoint it is deleted."""
    caplog.set_level(logging.WARNING, "stpdist")
    source, _ = SOURCES["files"](tmp_path)
    with _loads_stopped_at(GenericArrays, 6):
        convert(source, tmp_path / "run" / "ds", progress=False, samples_per_shard=2)
    [staging] = (tmp_path / "run").glob(".ds.staging-*")
    recover(tmp_path / "run" / "ds")
    assert staging.is_dir() and "a conversion stopped at a checkpoint" in caplog.text
    assert "a replacement by process" not in caplog.text  # not a crash of this command's
    (staging / ".resume" / "state.json").unlink()
    recover(tmp_path / "run" / "ds")
    assert not staging.exists()


def test_a_stop_before_the_first_checkpoint_leaves_nothing(monkeypatch, tmp_path):
    """No checkpoint yet (the first comes `STPDIST_CHECKPOINT_EVERY` seconds in): a stop
    removes the staging folder as before."""
    monkeypatch.setenv(resume.EVERY_ENV, "3600")
    source, _ = SOURCES["files"](tmp_path)
    with _loads_stopped_at(GenericArrays, 12):
        convert(source, tmp_path / "run" / "ds", progress=False, samples_per_shard=2)
    assert not (tmp_path / "run").exists()  # made for the output: removed with it


def test_work_items_without_a_stable_form_are_not_checkpointed():
    class Opaque:
        pass

    def fingerprint(args, splits):
        return resume.fingerprint("x", args, splits, [], {}, Path("out"))

    assert fingerprint({}, {"train": [Opaque()]}) is None
    stable = fingerprint({"a": 1.5}, {"train": [("f", 1, Path("p"))]})
    assert stable == fingerprint({"a": 1.5}, {"train": [("f", 1, Path("p"))]})
    assert stable != fingerprint({"a": 2.5}, {"train": [("f", 1, Path("p"))]})
    with_array = fingerprint({}, {"train": [np.arange(3)]})  # pickled
    assert with_array == fingerprint({}, {"train": [np.arange(3)]})
    assert with_array != fingerprint({}, {"train": [np.arange(4)]})
    # the work items are data (a file added or removed), the options are not
    assert resume.same_options(stable, fingerprint({"a": 1.5}, {"train": [("g", 2)]}))
    assert not resume.same_options(stable, fingerprint({"a": 2.5}, {"train": [("f", 1)]}))
    split_otherwise = fingerprint({}, {"train": [1, 2], "val": []})
    assert split_otherwise != fingerprint({}, {"train": [1], "val": [2]})


def test_statistics_go_on_from_their_state_as_if_never_stopped():
    """Sums, ranges, masks and fills, the climatology and the frames of series counted once:
    restored from a state (JSON and arrays, as a checkpoint stores them), the statistics end
    as those of one accumulator that saw every sample."""
    rng = np.random.default_rng(5)
    samples = []
    for i in range(6):
        frames = rng.random((5, 2, 3, 3))
        valid = rng.random((5, 2, 3, 3)) > 0.1 if i % 2 else None
        samples.append(
            (frames, {"first": 2 * i, "series": "a" if i < 4 else ("b", 1), "valid": valid})
        )
    whole = StatsAccumulator(per_pixel=True)
    for frames, kw in samples:
        whole.add(frames, 1.0, **kw)
    first = StatsAccumulator(per_pixel=True)
    for frames, kw in samples[:3]:
        first.add(frames, 1.0, **kw)
    fields, arrays = first.state()
    fields = json.loads(json.dumps(fields))  # as read back from a checkpoint
    second = StatsAccumulator()
    second.restore(fields, arrays)
    for frames, kw in samples[3:]:
        second.add(frames, 1.0, **kw)
    assert second.result() == whole.result() and second.range() == whole.range()
    np.testing.assert_array_equal(second.climatology(), whole.climatology())


# ------------------------------------------------------------------ the CLI, stopped by signals
def _raw_for_the_cli(tmp_path: Path) -> Path:
    raw = tmp_path / "raw"
    rng = np.random.default_rng(6)
    for split, count in (("train", 300), ("val", 60)):
        (raw / split).mkdir(parents=True)
        for i in range(count):
            np.save(raw / split / f"s{i:04d}.npy", rng.integers(0, 256, (8, 1, 16, 16), np.uint8))
    return raw


def _stopped_cli(tmp_path: Path, signum: int, workers: int) -> tuple[int, str]:
    """`stpdist shard arrays` sent `signum` (to its process group) once it has a checkpoint
    past its first split's start; its exit status and stderr."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", resume.EVERY_ENV: "0"}
    command = [sys.executable, "-m", "stpdist", "shard", "arrays", str(tmp_path / "raw"), "--out", "ds",
               "--workers", str(workers), "--samples-per-shard", "4"]  # fmt: skip
    with open(tmp_path / "stderr.txt", "w") as stderr:
        proc = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                                stderr=stderr, start_new_session=True,
                                preexec_fn=terminal_signals)  # fmt: skip
    try:
        deadline = time.time() + 60
        while True:
            states = list(tmp_path.glob(".ds.staging-*/.resume/state.json"))
            if states and len(list(tmp_path.glob(".ds.staging-*/train/*.tar"))) >= 5:
                break
            assert proc.poll() is None, (tmp_path / "stderr.txt").read_text()[-2000:]
            assert time.time() < deadline, "no checkpoint within 60 s"
            time.sleep(0.01)
        os.killpg(proc.pid, signum)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return proc.returncode, (tmp_path / "stderr.txt").read_text()


@pytest.mark.parametrize(
    ("signum", "workers"), [(signal.SIGKILL, 2), (signal.SIGTERM, 1)], ids=["sigkill", "sigterm"]
)
def test_the_cli_killed_or_preempted_goes_on_where_it_stopped(tmp_path, signum, workers):
    """SIGKILL (the out-of-memory killer) to a two-worker conversion, or SIGTERM (a cluster's
    preemption), then the same command: it goes on from the checkpoint, with one worker, to
    the bytes of an uninterrupted conversion."""
    raw = _raw_for_the_cli(tmp_path)
    code, stderr = _stopped_cli(tmp_path, signum, workers)
    if signum == signal.SIGTERM:
        assert code == 75 and "is kept in" in stderr and "Traceback" not in stderr, stderr[-2000:]
        assert (
            "stopped (SIGTERM); its output folder is as it was; the same command goes on" in stderr
        )
    else:
        assert code == -signal.SIGKILL
    assert len(list(tmp_path.glob(".ds.staging-*"))) == 1
    again = run_cli("shard", "arrays", str(raw), "--out", "ds", "--workers", "1",
                    "--samples-per-shard", "4", cwd=tmp_path)  # fmt: skip
    assert again.returncode == 0, again.stderr[-2000:]
    assert "going on with the conversion stopped at split train, item" in again.stderr
    (tmp_path / "ref").mkdir()
    reference = run_cli("shard", "arrays", str(raw), "--out", "ds", "--samples-per-shard", "4",
                        cwd=tmp_path / "ref")  # fmt: skip
    assert reference.returncode == 0, reference.stderr[-2000:]
    assert _files(tmp_path / "ds") == _files(tmp_path / "ref" / "ds")
    assert _leftovers(tmp_path) == []


def test_a_requeued_slurm_job_goes_on_from_its_checkpoint_on_another_host(
    monkeypatch, tmp_path, caplog
):
    """SLURM requeues a preempted job, usually onto another node: the checkpoint its first run
    left (another host's, whose processes cannot be checked from here) is its own, and the
    requeued run goes on from it. Another job's is left alone, saying so."""
    caplog.set_level(logging.WARNING, "stpdist")
    source, _ = SOURCES["files"](tmp_path)
    convert(source, tmp_path / "ref" / "ds", progress=False, samples_per_shard=2)
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "0")
    with monkeypatch.context() as patched:
        _stopped_at_sample(patched, 8)
        with pytest.raises(KeyboardInterrupt):
            convert(source, tmp_path / "run" / "ds", progress=False, samples_per_shard=2)
    [staging] = (tmp_path / "run").glob(".ds.staging-*")
    elsewhere = staging.with_name(".ds.staging-node17-999")  # as the first node left it
    staging.rename(elsewhere)

    monkeypatch.setenv("SLURM_JOB_ID", "5151")  # another job: not its checkpoint
    convert(source, tmp_path / "other" / "ds", progress=False, samples_per_shard=2)
    recover(tmp_path / "run" / "ds")
    assert elsewhere.is_dir() and "of host node17, whose processes cannot be checked" in caplog.text

    caplog.clear()
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")  # the same job, requeued
    convert(source, tmp_path / "run" / "ds", progress=False, samples_per_shard=2)
    assert "going on with the conversion stopped at split train" in caplog.text
    assert _files(tmp_path / "run" / "ds") == _files(tmp_path / "ref" / "ds")
    assert _leftovers(tmp_path / "run") == []


# ------------------------------------------------------------------ every kind of source
def _raw_of(name: str, tmp: Path) -> list[str]:
    """Small raw files in `name`'s layout (at least 4 samples); the CLI's arguments."""
    if name == "images":
        from test_convert_frames import _gray, _pngs

        for i in range(4):
            _pngs(tmp / "raw" / "train" / f"clip{i}", _gray(i, 4))
        return [str(tmp / "raw")]
    if name == "videos":
        from test_convert_frames import _colour, _video

        for i in range(4):
            _video(tmp / "raw" / "train" / f"clip{i}.mkv", _colour(i, 4))
        return [str(tmp / "raw")]
    if name == "mmnist-npy":
        values = np.random.default_rng(7).integers(0, 256, (6, 5, 8, 8), dtype=np.uint8)
        np.save(tmp / "mnist_test_seq.npy", values)
        return [str(tmp / "mnist_test_seq.npy"), "--splits", "train=3,test=2"]
    if name == "tars":
        from test_convert_tars import _frames, _write

        samples = [{"__key__": f"s{i}", "npy": _frames("train", i)} for i in range(5)]
        _write(tmp / "raw" / "train" / "part-0.tar", samples)
        return [str(tmp / "raw")]
    if name == "merge":
        for part in ("a", "b"):
            _sequences(tmp / f"raw-{part}", {"train": 3})
            for path in (tmp / f"raw-{part}" / "train").iterdir():  # keys of its own
                path.rename(path.with_name(f"{part}-{path.name}"))
            convert(GenericArrays(str(tmp / f"raw-{part}")), tmp / part, progress=False)
        return [str(tmp / "a"), str(tmp / "b")]
    if name == "sevir":
        from test_weather import sevir_layout

        sevir_layout(tmp / "sevir")
        return [str(tmp / "sevir" / "CATALOG.csv")]
    raise AssertionError(name)


@pytest.mark.parametrize("name", ["images", "videos", "mmnist-npy", "tars", "merge", "sevir"])
def test_every_kind_of_source_goes_on_from_a_checkpoint(monkeypatch, tmp_path, caplog, name):
    """Each format's work items (folders, videos, blocks of an array, tars, another dataset's
    shards, HDF5 events) have a fingerprint, and a stopped conversion of each goes on to the
    bytes of an uninterrupted one."""
    from stpdist.cli import parser
    from stpdist.data.sources import FORMATS

    caplog.set_level(logging.WARNING, "stpdist")
    sources = _raw_of(name, tmp_path)
    args, _ = parser().parse_known_args(["shard", name, *sources, "--out", "x"])

    def fresh():
        return FORMATS[name].build(args.sources, args)

    convert(fresh(), tmp_path / "ref" / "ds", progress=False, samples_per_shard=1)
    with monkeypatch.context() as patched:
        _stopped_at_sample(patched, 3)
        with pytest.raises(KeyboardInterrupt):
            convert(fresh(), tmp_path / "run" / "ds", progress=False, samples_per_shard=1)
    convert(fresh(), tmp_path / "run" / "ds", progress=False, samples_per_shard=1)
    assert "going on with the conversion stopped at" in caplog.text, caplog.text
    assert "no checkpoints" not in caplog.text
    assert _files(tmp_path / "run" / "ds") == _files(tmp_path / "ref" / "ds")


# ------------------------------------------------------------------ what a review found
def _kept_as_dead_process(tmp_path: Path, spp: int = 2, stop_at: int = 6) -> Path:
    """A conversion of SOURCES["files"] stopped by Ctrl-C in this process, its staging folder
    renamed as a process long gone would have left it; returns that folder."""
    source, _ = SOURCES["files"](tmp_path)
    patch = pytest.MonkeyPatch()
    try:
        _stopped_at_sample(patch, stop_at)
        with pytest.raises(KeyboardInterrupt):
            convert(source, tmp_path / "run" / "ds", progress=False, samples_per_shard=spp)
    finally:
        patch.undo()
    [staging] = (tmp_path / "run").glob(".ds.staging-*")
    host = staging.name.removeprefix(".ds.staging-").rsplit("-", 1)[0]
    gone = staging.with_name(f".ds.staging-{host}-4194000")  # above any pid in use here
    staging.rename(gone)
    an_hour_ago = time.time() - 3600  # stopped a while ago, as one taken over usually is
    os.utime(gone, (an_hour_ago, an_hour_ago))
    return gone


GOING_ON_SLOWLY = """
import os, sys, time
from pathlib import Path
from stpdist.data.convert import convert
from stpdist.data.sources.generic import GenericArrays

original = GenericArrays.load
def load(self, item):
    while not Path("go").exists():  # held after it took the checkpoint over
        time.sleep(0.02)
    return original(self, item)
GenericArrays.load = load
convert(GenericArrays(sys.argv[1]), Path(sys.argv[2]), progress=False, samples_per_shard=2)
"""


def test_a_conversion_going_on_is_not_taken_for_a_stopped_one(tmp_path, monkeypatch):
    """The folder it took over keeps its old time; another conversion to the same --out took
    the live process for one whose pid was reused, and deleted (or took over) its folder
    while it ran. It is refused now, as beside any conversion at work."""
    from stpdist.errors import OutputExists

    _kept_as_dead_process(tmp_path)
    (tmp_path / "script.py").write_text(GOING_ON_SLOWLY)
    env = {**os.environ, "OMP_NUM_THREADS": "1", resume.EVERY_ENV: "0",
           "PYTHONPATH": str(Path(__file__).parent.parent)}  # fmt: skip
    with open(tmp_path / "stderr.txt", "w") as stderr:
        proc = subprocess.Popen([sys.executable, "script.py", str(tmp_path / "raw"), str(tmp_path / "run" / "ds")],
                                cwd=tmp_path, env=env, stderr=stderr)  # fmt: skip
    try:
        deadline = time.time() + 60
        while not list((tmp_path / "run").glob(f".ds.staging-*-{proc.pid}/.resume")):
            assert proc.poll() is None, (tmp_path / "stderr.txt").read_text()
            assert time.time() < deadline
            time.sleep(0.02)
        source = GenericArrays(str(tmp_path / "raw"))
        with pytest.raises(OutputExists, match="is being written by another command"):
            convert(source, tmp_path / "run" / "ds", progress=False, samples_per_shard=2)
        (tmp_path / "go").touch()
        assert proc.wait(timeout=60) == 0, (tmp_path / "stderr.txt").read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "going on with the conversion" in (tmp_path / "stderr.txt").read_text()
    convert(source, tmp_path / "ref" / "ds", progress=False, samples_per_shard=2)
    assert _files(tmp_path / "run" / "ds") == _files(tmp_path / "ref" / "ds")


def test_a_frame_rewritten_in_its_folder_starts_over(monkeypatch, tmp_path, caplog):
    """Image frames are named by their folder (a work item) and their bare file names: a
    frame rewritten in place, its folder's time put back, was not seen, and the dataset kept
    its old pixels. Every file under a source folder counts now."""
    from test_convert_frames import _gray, _pngs

    from stpdist.cli import parser
    from stpdist.data.sources import FORMATS

    caplog.set_level(logging.WARNING, "stpdist")
    for i in range(4):
        _pngs(tmp_path / "raw" / "train" / f"clip{i}", _gray(i, 4))
    args, _ = parser().parse_known_args(["shard", "images", str(tmp_path / "raw"), "--out", "x"])
    with monkeypatch.context() as patched:
        _stopped_at_sample(patched, 3)
        with pytest.raises(KeyboardInterrupt):
            convert(FORMATS["images"].build(args.sources, args), tmp_path / "run" / "ds",
                    progress=False, samples_per_shard=1)  # fmt: skip
    folder = tmp_path / "raw" / "train" / "clip0"
    times = folder.stat()
    from PIL import Image

    Image.fromarray(np.full((16, 16), 7, np.uint8)).save(folder / "1.png")
    os.utime(folder, ns=(times.st_atime_ns, times.st_mtime_ns))
    convert(FORMATS["images"].build(args.sources, args), tmp_path / "run" / "ds",
            progress=False, samples_per_shard=1)  # fmt: skip
    assert "a conversion stopped at a checkpoint: its raw files changed since" in caplog.text
    convert(FORMATS["images"].build(args.sources, args), tmp_path / "ref" / "ds",
            progress=False, samples_per_shard=1)  # fmt: skip
    assert _files(tmp_path / "run" / "ds") == _files(tmp_path / "ref" / "ds")


def test_a_checkpoint_file_that_is_a_link_is_never_followed(tmp_path, caplog):
    """The samples' log is cut to its checkpoint's length: a log that was a link to another
    file cut that file (or grew it to a length the header named)."""
    caplog.set_level(logging.WARNING, "stpdist")
    staging = _kept_as_dead_process(tmp_path)
    victim = tmp_path / "victim.txt"
    victim.write_text("precious line\n" * 10_000)
    log = staging / ".resume" / "samples.jsonl"
    log.unlink()
    log.symlink_to(victim)
    convert(GenericArrays(str(tmp_path / "raw")), tmp_path / "run" / "ds", progress=False,
            samples_per_shard=2)  # fmt: skip
    assert victim.read_text() == "precious line\n" * 10_000
    assert "does not read" in caplog.text and "going on with" not in caplog.text


HOSTILE = {
    "no quantize": lambda h: h.pop("quantize"),
    "frames": lambda h: h["writer"]["stats"].update(frames="x"),
    "shape": lambda h: h["writer"].update(shape=[4, 1, 6, 7]),
    "dtype": lambda h: h["writer"].update(dtype="float32"),
    "counts": lambda h: h["writer"]["counts"].__setitem__(0, 5),
    "number": lambda h: h.update(number=-1),
    "number past the items": lambda h: h.update(number=10**9),
    "log length": lambda h: h.update(log_bytes=6 * 10**9),
    "arrays": lambda h: h.update(arrays="../../../etc/passwd"),
}


@pytest.mark.parametrize(
    ("edit", "resealed"),
    [("number", False), ("counts", False)] + [(edit, True) for edit in sorted(HOSTILE)],
    ids=lambda value: value if isinstance(value, str) else ("resealed" if value else "edited"),
)
def test_a_hostile_checkpoint_is_said_and_the_conversion_starts_over_in_the_same_run(
    tmp_path, caplog, edit, resealed
):
    """A header edited (its checksum then fails), or edited and its checksum written again
    (each field then checked for what the shards on disk and the source hold): never an
    error or a traceback, a file outside the folder, or another dataset: one line, and the
    conversion starts over in the same run."""
    caplog.set_level(logging.WARNING, "stpdist")
    staging = _kept_as_dead_process(tmp_path)
    state = staging / ".resume" / "state.json"
    header = json.loads(state.read_text())
    HOSTILE[edit](header)
    if resealed:
        header["checksum"] = resume._checksum(header)
    state.write_text(json.dumps(header))
    source = GenericArrays(str(tmp_path / "raw"))
    convert(source, tmp_path / "run" / "ds", progress=False, samples_per_shard=2)
    said = caplog.text
    assert "going on with" not in said or "starting over" in said, said
    assert ("deleted" in said or "starting over" in said) and "Traceback" not in said, said
    convert(source, tmp_path / "ref" / "ds", progress=False, samples_per_shard=2)
    assert _files(tmp_path / "run" / "ds") == _files(tmp_path / "ref" / "ds")
    assert _leftovers(tmp_path / "run") == []


def test_a_killed_process_not_yet_reaped_counts_as_gone():
    """`kill(pid, 0)` finds a process that has ended until its parent collects its status:
    a conversion run again right after a SIGKILL took the stopped one for one at work."""
    from stpdist.data.staging import _zombie

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        deadline = time.time() + 30
        while not _zombie(proc.pid):
            assert time.time() < deadline, "no zombie within 30 s"
            time.sleep(0.02)
    finally:
        proc.wait()
    assert not _zombie(os.getpid())


@pytest.mark.parametrize("where", ["write_card", "make_durable"])
def test_a_stop_as_the_dataset_is_made_complete_keeps_every_split(
    monkeypatch, tmp_path, caplog, where
):
    """Every split written, a stop while the card was written or every file synced to disk
    (long, for a large dataset) deleted the whole conversion: the checkpoint was removed
    first. It is kept to the last rename now; the same command writes nothing again."""
    caplog.set_level(logging.WARNING, "stpdist")
    source, _ = SOURCES["files"](tmp_path)
    convert(source, tmp_path / "ref" / "ds", progress=False, samples_per_shard=2)
    original, calls = getattr(convert_module, where), []

    def stopped(*args, **kwargs):
        if not calls:
            calls.append(1)
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(convert_module, where, stopped)
    with pytest.raises(KeyboardInterrupt):
        convert(source, tmp_path / "run" / "ds", progress=False, samples_per_shard=2)
    assert "checkpoint at the end of split val is kept in" in caplog.text
    loads = []
    monkeypatch.setattr(GenericArrays, "load", lambda self, item: loads.append(item))
    convert(source, tmp_path / "run" / "ds", progress=False, samples_per_shard=2)
    assert loads == []  # nothing converted again
    assert "going on with the conversion stopped at the end of split val" in caplog.text
    assert _files(tmp_path / "run" / "ds") == _files(tmp_path / "ref" / "ds")
    assert _leftovers(tmp_path / "run") == []


@pytest.mark.parametrize("value", ["inf", "1e400", "-5", "nan", "abc"])
def test_a_checkpoint_interval_that_is_no_number_of_seconds_is_said(monkeypatch, caplog, value):
    """`inf` was taken silently, checkpointing never."""
    caplog.set_level(logging.WARNING, "stpdist")
    monkeypatch.setenv(resume.EVERY_ENV, value)
    assert resume.checkpoint_every() == resume.CHECKPOINT_EVERY
    assert f"{resume.EVERY_ENV}={value!r}: expected seconds" in caplog.text


def test_another_commands_stopped_conversion_is_left_for_it(tmp_path, caplog):
    """Other options (or a source path spelled otherwise: what index.json records) make
    another conversion, which cannot go on from a stopped one's checkpoint; hours of it were
    deleted. It is left beside --out, said with its size, and its own command goes on from it."""
    caplog.set_level(logging.WARNING, "stpdist")
    stopped = _kept_as_dead_process(tmp_path, spp=2)
    raw = tmp_path / "raw"
    convert(GenericArrays(f"{raw}/."), tmp_path / "run" / "ds", progress=False,
            samples_per_shard=2)  # fmt: skip
    assert f"left {stopped.name} beside it" in caplog.text and stopped.is_dir()
    caplog.clear()
    from stpdist.errors import OutputExists

    with pytest.raises(OutputExists, match=f"a conversion stopped at a checkpoint is kept "
                       f"beside it \\({stopped.name}\\): with --overwrite"):  # fmt: skip
        convert(GenericArrays(str(raw)), tmp_path / "run" / "ds", progress=False,
                samples_per_shard=2)  # fmt: skip
    convert(GenericArrays(str(raw)), tmp_path / "run" / "ds", progress=False,
            samples_per_shard=2, overwrite=True)  # fmt: skip
    assert "going on with the conversion stopped at split train" in caplog.text
    convert(GenericArrays(str(raw)), tmp_path / "ref" / "ds", progress=False, samples_per_shard=2)
    assert _files(tmp_path / "run" / "ds") == _files(tmp_path / "ref" / "ds")
    assert _leftovers(tmp_path / "run") == []


def test_every_file_a_checkpoint_counts_is_on_disk_before_it(monkeypatch, tmp_path):
    """A split's last shard, its index.json (and climatology) were not synced before the
    checkpoint that counted the split as done: after a power cut the checkpoint could
    outlive them. Each checkpoint now syncs every file it counts first."""
    synced: list[str] = []
    saved: list[set[str]] = []
    original_sync, original_save = resume.sync_folder, resume.Checkpoints.save
    monkeypatch.setattr(resume, "sync_folder", lambda path: (synced.append(str(path)),
                                                               original_sync(path)))  # fmt: skip

    def save(self, header, arrays, files):
        original_save(self, header, arrays, files)
        staging = self.folder.parent
        counted = [f"{staging}/{split}/{INDEX}" for split in header["done"]]
        if header["split"] is not None:
            counted += [str(p) for p in sorted((staging / header["split"]).glob("*.tar"))
                        [: len(header["writer"]["counts"])]]  # fmt: skip
        saved.append(set(counted) - set(synced))

    INDEX = "index.json"
    monkeypatch.setattr(resume.Checkpoints, "save", save)
    source, _ = SOURCES["files"](tmp_path)
    convert(source, tmp_path / "run" / "ds", progress=False, samples_per_shard=2)
    assert saved and all(not missing for missing in saved), saved


def test_a_raw_file_added_or_removed_is_a_change_of_the_data(tmp_path, caplog):
    """The work items (the files) were hashed with the options: a file added or removed
    left the stopped conversion beside --out as another command's, which none could go on
    from, one more a fix-and-retry. They are the data now: deleted, saying so."""
    caplog.set_level(logging.WARNING, "stpdist")
    raw = tmp_path / "raw" / "train"
    for change in ("added", "removed"):
        stopped = _kept_as_dead_process(tmp_path) if change == "added" else None
        if change == "added":
            np.save(raw / "seq100.npy", np.zeros((4, 1, 6, 6), np.uint8))
        else:
            source = GenericArrays(str(tmp_path / "raw"))
            with pytest.MonkeyPatch.context() as patched:
                _stopped_at_sample(patched, 6)
                with pytest.raises(KeyboardInterrupt):
                    convert(source, tmp_path / "run" / "ds", progress=False,
                            samples_per_shard=2, overwrite=True)  # fmt: skip
            [stopped] = (tmp_path / "run").glob(".ds.staging-*")
            host = stopped.name.removeprefix(".ds.staging-").rsplit("-", 1)[0]
            stopped = stopped.rename(stopped.with_name(f".ds.staging-{host}-4194001"))
            (raw / "seq100.npy").unlink()
        caplog.clear()
        convert(GenericArrays(str(tmp_path / "raw")), tmp_path / "run" / "ds", progress=False,
                samples_per_shard=2, overwrite=True)  # fmt: skip
        assert f"deleted {stopped.name}, a conversion stopped at a checkpoint: its raw files " \
            "changed since" in caplog.text, change  # fmt: skip
        assert _leftovers(tmp_path / "run") == [], change


def test_the_same_relative_source_path_from_another_folder_is_another_source(
    monkeypatch, tmp_path, caplog
):
    """`raw` run from two folders named two sources alike: the stopped conversion of the
    first was deleted as one whose files changed. Where a source lies counts as an option."""
    caplog.set_level(logging.WARNING, "stpdist")
    for folder in ("a", "b"):
        _sequences(tmp_path / folder / "raw", {"train": 9, "val": 5})
    np.save(tmp_path / "b" / "raw" / "train" / "seq000.npy", np.zeros((4, 1, 6, 6), np.uint8))
    out = tmp_path / "out" / "ds"
    monkeypatch.chdir(tmp_path / "a")
    with monkeypatch.context() as patched:
        _stopped_at_sample(patched, 6)
        with pytest.raises(KeyboardInterrupt):
            convert(GenericArrays("raw"), out, progress=False, samples_per_shard=2)
    [staging] = out.parent.glob(".ds.staging-*")
    host = staging.name.removeprefix(".ds.staging-").rsplit("-", 1)[0]
    stopped = staging.rename(staging.with_name(f".ds.staging-{host}-4194002"))
    monkeypatch.chdir(tmp_path / "b")
    convert(GenericArrays("raw"), out, progress=False, samples_per_shard=2)
    assert f"left {stopped.name} beside it" in caplog.text and stopped.is_dir()


def test_an_out_inside_the_source_folder_goes_on(tmp_path, caplog):
    """The fingerprint walked every file under the source, the conversion's own staging
    folder and checkpoint too: with --out inside the source it never matched, and each run
    said it would go on, then deleted its checkpoint as one whose files changed."""
    caplog.set_level(logging.WARNING, "stpdist")
    raw = tmp_path / "raw"
    raw.mkdir()
    rng = np.random.default_rng(8)
    for i in range(12):
        np.save(raw / f"seq{i:02d}.npy", rng.integers(0, 256, (4, 1, 6, 6), np.uint8))
    source = GenericArrays(str(raw), split_sizes={"train": 0.5, "val": 0.5})
    convert(source, tmp_path / "ref" / "ds", progress=False, samples_per_shard=2)
    with pytest.MonkeyPatch.context() as patched:
        _stopped_at_sample(patched, 6)
        with pytest.raises(KeyboardInterrupt):
            convert(source, raw / "ds", progress=False, samples_per_shard=2)
    convert(source, raw / "ds", progress=False, samples_per_shard=2)
    assert "going on with the conversion stopped at split train" in caplog.text, caplog.text
    assert _files(raw / "ds") == _files(tmp_path / "ref" / "ds")


def test_a_full_disk_after_a_checkpoint_still_names_the_disk(monkeypatch, tmp_path):
    """A write's error naming no file is said naming --out (and the CLI its free space); kept
    with a checkpoint, the conversion re-raised it bare: "No space left on device (the error
    names no file)"."""
    import errno

    source, _ = SOURCES["files"](tmp_path)
    original, calls = resume.Checkpoints.note, [0]

    def note(self, *args):
        calls[0] += 1
        if calls[0] == 8:  # after a checkpoint
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(self, *args)

    monkeypatch.setattr(resume.Checkpoints, "note", note)
    with pytest.raises(OSError) as raised:
        convert(source, tmp_path / "run" / "ds", progress=False, samples_per_shard=2)
    assert raised.value.errno == errno.ENOSPC
    assert raised.value.filename == str(tmp_path / "run" / "ds")
    assert len(list((tmp_path / "run").glob(".ds.staging-*"))) == 1  # kept


def test_the_check_of_the_kept_shards_shows_its_progress(monkeypatch, tmp_path, capsys):
    """Every kept shard is read again before the conversion goes on: minutes for a large
    dataset, said as the conversion's own progress is (a line each PROGRESS_LINE_EVERY
    seconds in a log file, a bar on a terminal)."""
    _kept_as_dead_process(tmp_path)
    monkeypatch.setattr(convert_module, "PROGRESS_LINE_EVERY", 0.0)
    capsys.readouterr()
    convert(GenericArrays(str(tmp_path / "raw")), tmp_path / "run" / "ds", progress=True,
            samples_per_shard=2)  # fmt: skip
    said = capsys.readouterr().err
    assert re.search(
        r"checking the shards kept in train: 2/2 shards, [\d.]+ (B|KB) written", said
    ), said
