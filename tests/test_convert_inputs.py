"""`stpdist shard` under interruption and on bad flags: one Ctrl-C or SIGTERM stops a
multi-worker conversion at once, cleanly; flags a source cannot use are refused before any
file is read, naming the flag; every requested split is written or refused, never dropped.
Files are real and small, in the exact layout each source reads."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli
from PIL import Image
from test_convert import kth_videos
from test_weather import sevir_layout, weatherbench_folders

from stpdist.data.format import read_index
from stpdist.data.sources import FORMATS


# ------------------------------------------------------------------ interruption
def _session(sid: int) -> list[int]:
    """Live (not zombie) processes of session `sid`: a command's workers outlive it there."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # exited meanwhile
            continue
        fields = stat.rsplit(")", 1)[1].split()  # after "pid (comm)": state, ppid, pgrp, sid
        if fields[0] != "Z" and int(fields[3]) == sid:
            found.append(int(entry.name))
    return found


def _interrupted_shards(
    tmp_path: Path, signum: int, *, group: bool, runs: int = 1
) -> list[tuple[int, str]]:
    """`runs` concurrent `stpdist shard arrays --workers 3` over many files, each sent
    `signum` (to its whole process group, as a terminal's Ctrl-C, or to the main process
    alone) once its progress bar is up; their exit statuses and stderr. Fails when one does
    not exit within 20 s, leaves a process behind or a staging folder."""
    raw = tmp_path / "raw"
    raw.mkdir()
    frames = np.random.default_rng(0).random((20, 1, 32, 32), dtype=np.float32)
    for i in range(800):  # 80 KB a result: workers spend their time sending results
        np.save(raw / f"s{i:04d}.npy", frames)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = []
    for run in range(runs):
        command = ["shard", "arrays", str(raw), "--out", f"ds{run}", "--workers", "3"]
        with open(tmp_path / f"stderr{run}.txt", "w") as stderr:
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "stpdist", *command, "--samples-per-shard", "20"],
                    cwd=tmp_path,
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=stderr,
                    start_new_session=True,
                )
            )
    logs = [tmp_path / f"stderr{run}.txt" for run in range(runs)]
    try:
        deadline = time.time() + 60
        waiting = list(range(runs))
        while waiting:  # signal each once its bar is up: its workers are loading files
            for run in list(waiting):
                if "item" in logs[run].read_text():
                    (os.killpg if group else os.kill)(procs[run].pid, signum)
                    waiting.remove(run)
                else:
                    assert procs[run].poll() is None, logs[run].read_text()
            assert time.time() < deadline, "no progress bar within 60 s"
            time.sleep(0.02)
        deadline = time.time() + 20
        for proc in procs:
            try:
                proc.wait(timeout=max(deadline - time.time(), 0.1))
            except subprocess.TimeoutExpired:
                pytest.fail(f"still running 20 s after {signal.Signals(signum).name}")
        deadline = time.time() + 5
        while any(_session(p.pid) for p in procs) and time.time() < deadline:
            time.sleep(0.1)
        assert not any(_session(p.pid) for p in procs), "worker processes left running"
    finally:
        for proc in procs:
            if proc.poll() is None or _session(proc.pid):
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".ds")]  # staging
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith("ds")]
    return [(proc.returncode, log.read_text()) for proc, log in zip(procs, logs)]


def test_one_ctrl_c_stops_a_multi_worker_shard_at_once(tmp_path):
    """Ctrl-C reaches the workers too; one interrupted while sending its result used to
    deadlock the pool, and the command hung until a second Ctrl-C (in about half the tries:
    three runs at once)."""
    for code, stderr in _interrupted_shards(tmp_path, signal.SIGINT, group=True, runs=3):
        assert code == 130 and "Traceback" not in stderr, stderr[-2000:]


@pytest.mark.parametrize("group", [False, True], ids=["main", "group"])
def test_sigterm_stops_a_multi_worker_shard_and_its_workers(tmp_path, group):
    """SIGTERM to the main process used to kill it alone: the workers ran on, and the staging
    folder stayed until the next run."""
    [(code, stderr)] = _interrupted_shards(tmp_path, signal.SIGTERM, group=group)
    assert code in (143, -signal.SIGTERM) and "Traceback" not in stderr, stderr[-2000:]


# ------------------------------------------------------------------ flags, checked first
def error_line(proc) -> str:
    """The CLI's one error line (above it at most progress bars); exit 2: bad input."""
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("stpdist: error: "), proc.stderr
    return last.removeprefix("stpdist: error: ")


def taxibj_file(folder: Path) -> Path:
    """TaxiBJ's layout: `data` N×2×H×W flows, `date` YYYYMMDDSS byte strings (2 days)."""
    h5py = pytest.importorskip("h5py")
    folder.mkdir(parents=True, exist_ok=True)
    with h5py.File(folder / "BJ.h5", "w") as f:
        f["data"] = np.random.default_rng(0).random((96, 2, 8, 8))
        f["date"] = np.array(
            [f"201301{1 + i // 48:02d}{i % 48 + 1:02d}".encode() for i in range(96)]
        )
    return folder / "BJ.h5"


def raw_inputs(tmp_path: Path, fmt: str) -> str:
    """A real source of format `fmt` in its exact layout; its path (relative to tmp_path)."""
    if fmt == "taxibj-h5":
        taxibj_file(tmp_path)
        return "BJ.h5"
    if fmt == "sevir":
        sevir_layout(tmp_path / "sevir")
        return "sevir/CATALOG.csv"
    kth_videos(tmp_path / "kth", persons=(1,))
    return "kth"


@pytest.mark.parametrize(
    "fmt, flags, expected",
    [
        ("taxibj-h5", ["--frames", "0"], "--frames 0 and --stride 1 must be positive"),
        ("taxibj-h5", ["--stride", "0"], "--frames 8 and --stride 0 must be positive"),
        ("taxibj-h5", ["--stride", "-1"], "--frames 8 and --stride -1 must be positive"),
        ("taxibj-h5", ["--test-days", "-1"], "--test-days -1: expected a number of days ≥ 0"),
        ("sevir", ["--frames", "0"], "--frames 0 and --stride 12 must be positive"),
        ("sevir", ["--stride", "-2"], "--frames 25 and --stride -2 must be positive"),
        ("kth-avi", ["--size", "0"], "--size 0: expected a frame size of at least 1"),
        ("kth-avi", ["--frames", "0"], "--frames 0 and --stride 20 must be positive"),
        ("kth-avi", ["--stride", "0"], "--frames 20 and --stride 0 must be positive"),
    ],
)
def test_window_flags_are_checked_before_any_file_is_read(tmp_path, fmt, flags, expected):
    """They used to reach the readers, whose errors blamed a data file (`BJ.h5: list index
    out of range`, `range() arg 3 must not be zero`), or gave "no samples" (a negative
    stride)."""
    source = raw_inputs(tmp_path, fmt)
    proc = run_cli("shard", fmt, source, "--out", "ds", *flags, "--workers", "1", cwd=tmp_path)
    assert error_line(proc) == expected
    assert not (tmp_path / "ds").exists()


@pytest.mark.parametrize(
    "fmt, flags, expected",
    [
        ("kth-avi", ["--test-persons", "abc"], "--test-persons abc: 'abc' is not a number or"),
        ("kth-avi", ["--test-persons", "5-"], "--test-persons 5-: '5-' is not a number or"),
        ("kth-avi", ["--test-persons", "1,9-3"], "--test-persons 1,9-3: '9-3' is not a number"),
        ("netcdf", ["--vars", "z500", "--levels", "abc"], "--levels abc: expected numbers"),
        ("sevir", ["--val-from", "abc"], "--val-from 'abc': not a date (expected YYYY-MM-DD"),
        ("sevir", ["--test-from", "abc"], "--test-from 'abc': not a date (expected YYYY-MM-DD"),
        ("sevir", ["--test-from", "2018-01-01"], "--test-from 2018-01-01 is before --val-from"),
    ],
)
def test_bad_flag_values_are_one_line_naming_the_flag(tmp_path, fmt, flags, expected):
    """They used to be raw ValueErrors naming no flag (exit 1): `invalid literal for int()`,
    `could not convert string to float`, `Error parsing datetime string`; `5-` was taken
    as person 5 alone."""
    source = "kth" if fmt == "netcdf" else raw_inputs(tmp_path, fmt)
    proc = run_cli("shard", fmt, source, "--out", "ds", *flags, "--workers", "1", cwd=tmp_path)
    assert error_line(proc).startswith(expected)


# ------------------------------------------------------------------ --splits
@pytest.mark.parametrize(
    "fmt, splits, expected",
    [
        ("mmnist-npy", "train=-1,val=-1", "sizes must be ≥ 0, or -1 (the rest) for one split"),
        ("mmnist-npy", "train=-2", "sizes must be ≥ 0, or -1 (the rest) for one split at most"),
        ("mmnist-npy", "train=6,test=-1", "the 6 sequences in mm.npy would be cut into train"),
        ("mmnist-npy", "train=0.5", "--splits train=0.5: expected counts of sequences"),
        ("mmnist-npy", "train=7,test=-1", "ask for more than the 6 sequences in mm.npy"),
        ("arrays", "train=0.9,val=0.05,test=0.05", "would be cut into train 5, val 0, test 0"),
        ("arrays", "train=5,test=-1", "the 5 files in raw would be cut into train 5, test 0,"),
        ("arrays", "train=-2", "sizes must be ≥ 0, or -1 (the rest) for one split at most"),
    ],
)
def test_every_requested_split_is_written_or_refused(tmp_path, fmt, splits, expected):
    """Each of these used to exit 0 having written fewer splits than asked for (or taken
    -2 as "the rest", or left sequences out); `train=0.5` was "not a number"."""
    rng = np.random.default_rng(0)
    np.save(tmp_path / "mm.npy", rng.integers(0, 256, (4, 6, 8, 8), dtype=np.uint8))
    (tmp_path / "raw").mkdir()
    for i in range(5):
        np.save(tmp_path / "raw" / f"a{i}.npy", rng.random((3, 1, 4, 4), dtype=np.float32))
    source = "mm.npy" if fmt == "mmnist-npy" else "raw"
    proc = run_cli("shard", fmt, source, "--out", "ds", "--splits", splits, cwd=tmp_path)
    line = error_line(proc)
    assert line.startswith(f"--splits {splits}") and expected in line, line
    assert not (tmp_path / "ds").exists()


def test_mmnist_splits_take_every_sequence_as_arrays_splits_take_every_file(tmp_path):
    """Counts that leave sequences out are refused, as `shard arrays` refuses leaving files
    out (`train=2` of 6 used to drop 4 silently); the default `test=-1` and the documented
    `val=N,test=-1` take them all."""
    sequences = np.random.default_rng(1).integers(0, 256, (4, 6, 8, 8), dtype=np.uint8)
    np.save(tmp_path / "mm.npy", sequences)
    proc = run_cli("shard", "mmnist-npy", "mm.npy", "--out", "ds", "--splits", "train=2",
                   cwd=tmp_path)  # fmt: skip
    assert error_line(proc) == (
        "--splits train=2: the counts sum to 2, not 6: 4 of the 6 sequences in mm.npy would "
        "be in no split; make them sum to it, or give one split -1 (the rest)"
    )
    for splits, expected in (("val=2,test=-1", {"val": 2, "test": 4}), (None, {"test": 6})):
        flags = ["--splits", splits] if splits else []
        run_cli("shard", "mmnist-npy", "mm.npy", "--out", "ds", "--overwrite", *flags,
                "--workers", "1", cwd=tmp_path, check=True)  # fmt: skip
        counts = {s: read_index(tmp_path / "ds" / s).num_samples for s in expected}
        assert counts == expected and sorted(p.name for p in (tmp_path / "ds").iterdir()) == (
            sorted([*expected, "README.md"])
        )
    assert read_index(tmp_path / "ds" / "test").args["split_sizes"] == {"test": -1}


def test_a_split_without_any_item_is_said_not_silently_dropped(tmp_path):
    """kth-avi with no video of a test person: the test split is not written, and says so."""
    kth_videos(tmp_path / "kth", persons=(1,))
    proc = run_cli("shard", "kth-avi", "kth", "--out", "ds", "--size", "16", "--workers", "1",
                   cwd=tmp_path, check=True)  # fmt: skip
    assert "test: no samples; not written" in proc.stderr
    assert read_index(tmp_path / "ds" / "train").num_samples == 2


# ------------------------------------------------------------------ seed layouts
def test_seed_data_outside_its_value_range_is_refused_naming_the_file(tmp_path):
    """seed-mmnist frames are in [0, 1] (scale 1), seed-taxibj flows in [0, 1292]; values
    beyond used to be stored as they were (labels of 2.0 at scale 1)."""
    values = np.random.default_rng(2).random((3, 20, 1, 8, 8)).astype(np.float32)
    values[:, 0, 0, 0, 0] = 0
    values[1, 15, 0, 2, 3] = 2.0  # a label frame of example000002
    for split in ("train", "validation"):
        (tmp_path / "mm" / split).mkdir(parents=True)
        for i in range(3):
            np.savez(tmp_path / "mm" / split / f"example{i + 1:06d}.npz",
                     inputs=values[i, :10], labels=values[i, 10:])  # fmt: skip
    proc = run_cli("shard", "seed-mmnist", "mm", "--out", "ds", "--workers", "1", cwd=tmp_path)
    assert error_line(proc) == (
        "mm/train/example000002.npz: values span 0…2, outside [0, 1], the range of seed-mmnist "
        "data (its value scale 1: training divides by it and clamps predictions to [0, 1])"
    )
    flows = np.random.default_rng(3).integers(1, 1292, (8, 2, 8, 8)).astype(np.float64)
    flows[0, 0, 0, 0], flows[3, 1, 4, 4] = 1, 5000
    (tmp_path / "bj" / "test").mkdir(parents=True)
    np.save(tmp_path / "bj" / "test" / "example000001.npy", flows)
    proc = run_cli("shard", "seed-taxibj", "bj", "--out", "ds", "--workers", "1", cwd=tmp_path)
    assert error_line(proc).startswith(
        "bj/test/example000001.npy: values span 1…5000, outside [0, 1292], the range of "
        "seed-taxibj data"
    )
    assert not (tmp_path / "ds").exists()


def test_seed_kth_frames_of_another_size_are_named(tmp_path):
    folder = tmp_path / "seed" / "train" / "example000001"
    folder.mkdir(parents=True)
    for t in range(6):
        size = (12, 16) if t != 4 else (16, 12)  # frame 4: 12 wide, 16 high
        Image.fromarray(np.full(size, t, np.uint8)).save(folder / f"{t:04d}.png")
    proc = run_cli("shard", "seed-kth", "seed", "--out", "ds", "--workers", "1", cwd=tmp_path)
    assert error_line(proc) == (
        "seed/train/example000001/0004.png: frame of 16×12 pixels (H×W), the first "
        "(0000.png) 12×16; every frame of a sequence must have the same size"
    )


# ------------------------------------------------------------------ messages, help
def test_a_junk_nc_file_is_one_line_naming_it(tmp_path):
    weatherbench_folders(tmp_path / "wb", steps=4)
    (tmp_path / "wb" / "2m_temperature" / "notes.nc").write_text("not netCDF\n")
    proc = run_cli("shard", "netcdf", "wb/2m_temperature", "--vars", "t2m", "--out", "ds",
                   cwd=tmp_path)  # fmt: skip
    assert error_line(proc).startswith("wb/2m_temperature/notes.nc: unreadable (none of xarray")
    assert len(proc.stderr.strip().splitlines()) == 1 and "http" not in proc.stderr


def test_sevir_takes_the_folder_its_help_promises(tmp_path):
    """`shard sevir --help` says "file or folder": the folder holding CATALOG.csv (and
    data/) converts as the catalog does; it used to be refused."""
    sevir_layout(tmp_path / "sevir")
    run_cli("shard", "sevir", "sevir", "--out", "ds", "--workers", "1", cwd=tmp_path, check=True)
    assert {s: read_index(tmp_path / "ds" / s).num_samples for s in ("train", "val", "test")} == {
        "train": 6,
        "val": 3,
        "test": 3,
    }
    assert FORMATS["sevir"].paths_help == "CATALOG.csv, or the folder holding it"
    assert "folders" in FORMATS["xarray"].paths_help
