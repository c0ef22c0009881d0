"""`stpdist shard` under interruption and on bad flags: one Ctrl-C or SIGTERM stops a
multi-worker conversion at once, cleanly; flags a source cannot use are refused before any
file is read, naming the flag; every requested split is written or refused, never dropped.
Files are real and small, in the exact layout each source reads."""

from __future__ import annotations

import gc
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli, terminal_signals, unserved
from PIL import Image
from test_convert import kth_videos, stored
from test_weather import sevir_layout, t2m_file, weatherbench1_single_levels, weatherbench_folders

from stpdist.data.format import read_index
from stpdist.data.sources import FORMATS
from stpdist.data.sources.common import frame_key, natural_key


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
    alone) once its first shard is in the staging folder (its workers are loading files;
    stderr, a file, shows no bar); their exit statuses and stderr. Fails when one does not
    exit within 20 s, leaves a process behind or a staging folder."""
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
                    preexec_fn=terminal_signals,  # whatever the test runner's were
                )
            )
    logs = [tmp_path / f"stderr{run}.txt" for run in range(runs)]
    try:
        deadline = time.time() + 60
        waiting = list(range(runs))
        while waiting:  # signal each once it writes: its workers are loading files
            for run in list(waiting):
                if any(tmp_path.glob(f".ds{run}.staging-*/*/*.tar")):
                    (os.killpg if group else os.kill)(procs[run].pid, signum)
                    waiting.remove(run)
                else:
                    assert procs[run].poll() is None, logs[run].read_text()
            assert time.time() < deadline, "no shard written within 60 s"
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
        assert "stpdist shard: interrupted (Ctrl-C); its output folder is as it was" in stderr
        assert "no checkpoint was reached: the same command starts over" in stderr


@pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")
def test_a_shard_interrupted_while_it_closes_is_closed_again_without_a_write(tmp_path):
    """Ctrl-C inside a shard's `close` (a new shard starting) left its archive unfinished;
    the writer's exit then closed it again and wrote the archive's end into the closed
    file: "ValueError: write to closed file" with a traceback over the interrupt (1 in
    about 100 runs of the test above)."""
    from stpdist.data.format import _TarShard

    shard = _TarShard(tmp_path / "s.tar")
    shard.write("a", {"npy": b"x" * 100})
    close, calls = shard.tar.close, []

    def interrupted() -> None:  # the signal arrives as the archive starts closing
        if not calls:
            calls.append(1)
            raise KeyboardInterrupt
        close()

    shard.tar.close = interrupted
    with pytest.raises(KeyboardInterrupt):
        shard.close()
    shard.close()  # the writer's exit: nothing left to do
    assert shard.file.closed
    del shard, interrupted  # nothing of it writes when collected either
    gc.collect()


@pytest.mark.parametrize("group", [False, True], ids=["main", "group"])
def test_sigterm_stops_a_multi_worker_shard_and_its_workers(tmp_path, group):
    """SIGTERM to the main process used to kill it alone: the workers ran on, and the staging
    folder stayed until the next run."""
    [(code, stderr)] = _interrupted_shards(tmp_path, signal.SIGTERM, group=group)
    assert code in (143, -signal.SIGTERM) and "Traceback" not in stderr, stderr[-2000:]


# ------------------------------------------------------------------ worker processes
LOCKED_SOURCE = """
import logging, os, signal, threading, time
from pathlib import Path
import numpy as np

LOCK = threading.Lock()


class Locked:  # four items, each a sample filled with $FILL, read holding LOCK (as FFmpeg
    # takes its locks); `stall`: each item waits for good once its worker said so in a file
    name, value_scale, grid = "locked", 1.0, None

    def __init__(self, stall=False):
        self.stall = stall

    def splits(self):
        return {"train": [0, 1, 2, 3]}

    def args(self):
        return {}

    def load(self, item):
        if self.stall:
            Path(f"loading-{os.getpid()}").touch()
            time.sleep(600)
        if os.environ.get("SAY"):  # what a source logs as it loads, and a bad item
            log = logging.getLogger("stpdist")
            log.warning("item %d: a warning", item, extra={"held": LOCK})  # pickles not
            logging.getLogger("lockedsource").info("item %d: said in pid %d", item, os.getpid())
            logging.getLogger("lockedsource.detail").debug("item %d: a detail", item)
            if item == 3:
                raise ValueError("a bad item")
        if os.environ.get("KILL_AT") == str(item):  # the out-of-memory killer
            os.kill(os.getpid(), signal.SIGKILL)
        with LOCK:
            fill = float(os.environ["FILL"])
        side = int(os.environ.get("SIDE", "4"))  # 256: results larger than a pipe holds
        return [(f"s{item}", np.full((2, 1, side, side), fill, np.float32), {})]
"""

CONVERT_KILLED = """
import os
from lockedsource import Locked
from stpdist.data.convert import convert

if __name__ == "__main__":
    os.environ.update(FILL="0.5", SIDE="256", KILL_AT="0")
    convert(Locked(), "out", workers=2, progress=False)
"""

CONVERT_LOGGED = """
import logging, os, sys
from lockedsource import Locked
from stpdist.data.convert import convert

if __name__ == "__main__":
    logging.basicConfig(filename="log.txt", level=logging.INFO, format="%(name)s: %(message)s")
    logging.getLogger("lockedsource.detail").setLevel(logging.DEBUG)
    os.environ.update(FILL="0.5", SAY="1")
    print(os.getpid(), flush=True)
    try:
        convert(Locked(), "out", workers=int(sys.argv[1]), progress=False)
    except Exception as exc:
        logging.getLogger("main").error("%s", exc)
"""

CONVERT_HOLDING_THE_LOCK = """
import multiprocessing, os, sys, threading
from lockedsource import LOCK, Locked
from stpdist.data.convert import convert

if __name__ == "__main__":
    multiprocessing.set_start_method(sys.argv[1])  # the caller's default, fork before 3.14
    if sys.argv[2] == "stall":
        convert(Locked(stall=True), "stalled", workers=2, progress=False)
    held, done = threading.Event(), threading.Event()

    def hold():  # a thread of the caller's holds the lock through the conversions
        with LOCK:
            held.set()
            done.wait()

    threading.Thread(target=hold, daemon=True).start()
    held.wait()
    for fill in ("0.25", "0.5"):  # the workers see the environment as the caller set it
        os.environ["FILL"] = fill
        convert(Locked(), f"out{fill}", workers=2, progress=False)
    done.set()
"""


CONVERT_AT_IMPORT = """
import os
from lockedsource import Locked
from stpdist.data.convert import convert

os.environ["FILL"] = "0.25"
convert(Locked(), "out", workers=2, progress=False)
print("converted", flush=True)
"""


def _locked_source(tmp_path: Path) -> dict[str, str]:
    """The files above in `tmp_path`; the environment that runs them."""
    (tmp_path / "lockedsource.py").write_text(LOCKED_SOURCE)
    (tmp_path / "main.py").write_text(CONVERT_HOLDING_THE_LOCK)
    (tmp_path / "unguarded.py").write_text(CONVERT_AT_IMPORT)
    (tmp_path / "logged.py").write_text(CONVERT_LOGGED)
    (tmp_path / "killed.py").write_text(CONVERT_KILLED)
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(tmp_path)}


@pytest.mark.parametrize("start_method", ["fork", "forkserver"])
def test_workers_hold_none_of_the_callers_locks_and_see_its_environment(tmp_path, start_method):
    """Workers were forked from the main process, with its locks as they stood: one held by
    another thread at the fork stayed held in the worker for good (a video conversion's
    workers hung in FFmpeg's scaler threads, forked from a process that had decoded
    videos). They start from a fork server now, whatever the caller's default start method
    (fork before Python 3.14, forkserver from it, under which the workers exited at once:
    they took the server for a dead main process), and get the caller's environment of
    the moment, as a fork did."""
    env = _locked_source(tmp_path)
    try:
        proc = subprocess.run([sys.executable, "main.py", start_method, "-"], cwd=tmp_path,
                              env=env, capture_output=True, text=True, timeout=60)  # fmt: skip
    except subprocess.TimeoutExpired:
        pytest.fail("the conversion hung: a worker waits for a lock it copied held")
    assert proc.returncode == 0, proc.stderr[-3000:]
    for fill in (0.25, 0.5):
        values = stored(tmp_path / f"out{fill}" / "train")
        assert sorted(values) == ["s0", "s1", "s2", "s3"]
        assert all((v == np.float32(fill)).all() for v in values.values()), fill


def test_a_script_that_converts_at_import_converts_once(tmp_path):
    """Python's fork server has each process import the main script first: one that does
    its work at import, without `if __name__ == "__main__":` (a training script whose data
    the Trainer converts first), ran it again in every worker, which hung. The workers do
    not import it, as forked ones did not."""
    env = _locked_source(tmp_path)
    try:
        proc = subprocess.run([sys.executable, "unguarded.py"], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=60)  # fmt: skip
    except subprocess.TimeoutExpired:
        pytest.fail("the conversion hung")
    assert proc.returncode == 0 and proc.stdout == "converted\n", proc.stderr[-3000:]
    assert proc.stderr == ""
    values = stored(tmp_path / "out" / "train")
    assert sorted(values) == ["s0", "s1", "s2", "s3"]


def test_what_workers_log_is_said_by_the_main_process_in_item_order(tmp_path):
    """Forked workers logged through the main process's handlers, copied: a caller's own
    (a log file) got their records; workers from the fork server have none. What a worker
    logs is said by the main process, through its handlers, in item order, as one process
    says it, and before an item's error: at the levels the caller set (a logger of its own
    at DEBUG), with an `extra=` that does not pickle (it stopped the conversion)."""
    env = _locked_source(tmp_path)
    said = {}
    for workers in (1, 2):
        proc = subprocess.run([sys.executable, "logged.py", str(workers)], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=60)  # fmt: skip
        assert proc.returncode == 0 and proc.stderr == "", proc.stderr[-3000:]
        lines = (tmp_path / "log.txt").read_text().splitlines()
        (tmp_path / "log.txt").unlink()
        said[workers] = [re.sub(r"pid \d+", "pid N", line) for line in lines]
        pids = {int(p) for p in re.findall(r"pid (\d+)", "\n".join(lines))}
        main = int(proc.stdout)  # one process loads all, or workers only
        assert pids == {main} if workers == 1 else pids and main not in pids, (pids, main)
    expected = [
        line
        for item in range(4)
        for line in (
            f"stpdist: item {item}: a warning",
            f"lockedsource: item {item}: said in pid N",
            f"lockedsource.detail: item {item}: a detail",
        )
    ]
    assert said[1] == said[2] == [*expected, "main: 3: a bad item"]


def test_workers_are_forked_where_no_fork_server_starts(tmp_path):
    """The fork server listens on a socket under TMPDIR, whose path may be 107 bytes at
    most: under a cluster's long TMPDIR it cannot start, and the conversion stopped
    ("writing ds: AF_UNIX path too long"). The workers are forked then, as before the fork
    server, and a warning says so."""
    _small_arrays(tmp_path, 6)
    long_tmp = tmp_path / ("t" * 110)
    long_tmp.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TMPDIR": str(long_tmp)}
    proc = subprocess.run(
        [sys.executable, "-m", "stpdist", "shard", "arrays", "raw", "--out", "ds", "--workers", "2"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    said = (f"no fork server for the worker processes (AF_UNIX path too long; its socket goes "
            f"in {long_tmp}); forking them from this process instead")  # fmt: skip
    assert said in proc.stderr, proc.stderr[-3000:]
    assert len(stored(tmp_path / "ds" / "train")) == 6


SOURCE_OF_ITS_OWN = """
import numpy as np
from stpdist.data.convert import convert


class Own:  # a source class of the script (or session) itself
    name, value_scale, grid = "own", 1.0, None

    def splits(self):
        return {"train": [0, 1, 2]}

    def args(self):
        return {}

    def load(self, item):
        return [(f"s{item}", np.full((2, 1, 4, 4), item / 4, np.float32), {})]


convert(Own(), "out", workers=2, progress=False)
"""


@pytest.mark.parametrize("how", ["script", "-c"])
def test_a_source_class_of_the_main_script_or_session_converts_over_workers(tmp_path, how):
    """A worker from the fork server has no class of the caller's `__main__` (a script
    without `if __name__ == "__main__":` converted again in each worker; `python -c`, a
    notebook: no such attribute): such a source's workers are forked, as before."""
    (tmp_path / "own.py").write_text(SOURCE_OF_ITS_OWN)
    program = ["own.py"] if how == "script" else ["-c", SOURCE_OF_ITS_OWN]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, *program], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr[-3000:]
    values = stored(tmp_path / "out" / "train")
    assert {key: float(v.flat[0]) for key, v in values.items()} == {"s0": 0, "s1": 0.25, "s2": 0.5}


def test_a_killed_worker_stops_the_conversion_with_an_error(tmp_path):
    """A worker killed (the out-of-memory killer) breaks the pool, which then terminates
    the others: they ignore SIGTERM, one ran on blocked sending a result no one read, and
    the conversion hung for good (SIGTERM to it too). It stops now, saying what happened."""
    env = _locked_source(tmp_path)
    proc = subprocess.Popen([sys.executable, "killed.py"], cwd=tmp_path, env=env,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)  # fmt: skip
    try:
        _, stderr = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail("the conversion hung after a worker was killed")
    assert proc.returncode == 1, stderr[-3000:]
    # the items handed out when the pool broke: 4 (two a worker), fewer where it broke sooner
    assert re.match(
        r"RuntimeError: a worker process ended abruptly, loading 0( or one of the [123] items "
        r"after it)? \(killed: out of memory\? the kernel's log says: `dmesg`\)",
        stderr.splitlines()[-1],
    ), stderr[-3000:]
    deadline = time.time() + 10
    while _session(proc.pid) and time.time() < deadline:
        time.sleep(0.1)
    assert not _session(proc.pid), "processes left running"
    assert not (tmp_path / "out").exists()


def test_the_workers_of_a_killed_conversion_exit(tmp_path):
    """SIGKILL to the main process (the OOM killer): its fork server exits, and the
    workers with it; none is left loading for nobody."""
    env = _locked_source(tmp_path)
    proc = subprocess.Popen([sys.executable, "main.py", "fork", "stall"], cwd=tmp_path, env=env,
                            stderr=subprocess.PIPE, start_new_session=True)  # fmt: skip
    try:
        deadline = time.time() + 60
        while len(list(tmp_path.glob("loading-*"))) < 2:  # both workers are in `load`
            assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
            assert time.time() < deadline, "the workers did not start within 60 s"
            time.sleep(0.05)
        proc.kill()
        proc.wait()
        deadline = time.time() + 15
        while _session(proc.pid) and time.time() < deadline:
            time.sleep(0.1)
        assert not _session(proc.pid), "processes left running after the main one was killed"
    finally:
        if _session(proc.pid):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.stderr.close()


# ------------------------------------------------------------------ progress
def _small_arrays(tmp_path: Path, count: int) -> None:
    (tmp_path / "raw").mkdir()
    for i in range(count):
        np.save(tmp_path / "raw" / f"s{i}.npy", np.full((3, 1, 4, 4), i / count, dtype=np.float32))


def test_shard_in_a_log_file_says_how_far_it_is_in_lines_not_a_redrawn_bar(tmp_path, monkeypatch):
    """stderr not a terminal (a SLURM job's log): tqdm's bar redrew itself into the file ten
    times a second, for the hours a big conversion takes. A plain line comes every 30 s
    (here after every item); a run shorter than that says none."""
    import stpdist.data.convert as convert_module

    _small_arrays(tmp_path, 6)
    quiet = run_cli("shard", "arrays", "raw", "--out", "ds0", cwd=tmp_path, check=True)
    assert "\r" not in quiet.stderr and "items" not in quiet.stderr, quiet.stderr
    monkeypatch.setattr(convert_module, "PROGRESS_LINE_EVERY", 0.0)
    proc = run_cli(
        "shard", "arrays", "raw", "--out", "ds", "--samples-per-shard", "2", cwd=tmp_path,
        check=True,
    )  # fmt: skip
    assert "\r" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("arrays train: ")]
    assert [line.split(",")[0] for line in lines] == [
        f"arrays train: {i}/6 items" for i in range(1, 7)
    ]
    for line in lines:
        assert re.fullmatch(
            r"arrays train: \d/6 items, [\d.]+ (B|KB) written, \d+ s elapsed(, about \d+ s left)?",
            line,
        ), line
    assert "left" in lines[0] and "left" not in lines[-1]


def test_shard_on_a_terminal_keeps_its_bar(tmp_path):
    """stderr a terminal (a pty): the bar, redrawn in place, as before."""
    import fcntl
    import pty
    import select
    import struct
    import termios

    _small_arrays(tmp_path, 3)
    controller, terminal = pty.openpty()
    rows_cols = struct.pack("HHHH", 24, 100, 0, 0)
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, rows_cols)  # a new pty is 0 wide: no bar fits
    proc = subprocess.Popen(
        [sys.executable, "-m", "stpdist", "shard", "arrays", "raw", "--out", "ds"],
        cwd=tmp_path,
        env=unserved({**os.environ, "OMP_NUM_THREADS": "1"}),
        stdout=subprocess.DEVNULL,
        stderr=terminal,
    )
    os.close(terminal)
    shown, deadline = b"", time.time() + 60
    while time.time() < deadline:  # read as it comes: a full pty would block the writer
        if select.select([controller], [], [], 0.1)[0]:
            try:
                chunk = os.read(controller, 4096)
            except OSError:  # EIO: the writer closed its end
                chunk = b""
            if not chunk:
                break
            shown += chunk
    os.close(controller)
    assert proc.wait(timeout=30) == 0, shown.decode(errors="replace")
    text = shown.decode(errors="replace")
    assert "\r" in text and "3/3" in text and "item/s" in text, text


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
    for split in ("train", "validation", "test"):  # all three: the layout needs them
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
    for split in ("train", "validation", "test"):
        (tmp_path / "bj" / split).mkdir(parents=True)
        np.save(tmp_path / "bj" / split / "example000001.npy", np.minimum(flows, 1292))
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
    for split in ("validation", "test"):
        shutil.copytree(folder.parent, tmp_path / "seed" / split)
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


def test_a_bad_sevir_catalog_row_is_named_by_its_line_and_value(tmp_path):
    """The error counted only the rows of the image type read (another type's rows sit
    between them in the real catalog) and showed the time as rewritten for parsing."""
    sevir_layout(tmp_path / "sevir")
    catalog = tmp_path / "sevir" / "CATALOG.csv"
    header, *rows = catalog.read_text().splitlines()
    rows.insert(0, "S009,ir069/2018/SEVIR_IR069.h5,0,ir069,2018-08-01 12:00:00,-120,1")
    rows[3] = rows[3].replace("2019-03-01 00:00:00", "Feb 1 2019")  # S003, line 5
    catalog.write_text("\n".join([header, *rows]) + "\n")
    line = error_line(run_cli("shard", "sevir", "sevir", "--out", "ds", cwd=tmp_path))
    assert line == (
        "sevir/CATALOG.csv: line 5 (S003): time_utc 'Feb 1 2019': expected a date and time, "
        "YYYY-MM-DD HH:MM:SS"
    )


# ------------------------------------------------------------------ nothing lost silently
def kth_seed(root: Path, splits=("train", "validation", "test"), frames: int = 3) -> None:
    """seed-kth's layout: `<split>/example000001/<t>.png`, 8-bit gray 6×8, frame t all 10·t."""
    for split in splits:
        folder = root / split / "example000001"
        folder.mkdir(parents=True)
        for t in range(frames):
            Image.fromarray(np.full((6, 8), 10 * t, np.uint8)).save(folder / f"{t}.png")


def test_seed_kth_orders_frames_by_number_not_as_text(tmp_path):
    """`0.png … 19.png` came out 0, 1, 10, 11, …, 19, 2, …, 9 (sorted as text), silently;
    `.PNG` frames were not read at all."""
    kth_seed(tmp_path / "seed", frames=20)
    frames = tmp_path / "seed" / "validation" / "example000001"
    (frames / "19.png").rename(frames / "19.PNG")
    (frames / "._3.png").write_bytes(b"\x00\x05\x16\x07")  # macOS's AppleDouble: no frame
    run_cli("shard", "seed-kth", "seed", "--out", "ds", "--workers", "1", cwd=tmp_path,
            check=True)  # fmt: skip
    got = stored(tmp_path / "ds" / "val")["example000001"]
    assert got[:, 0, 0, 0].tolist() == [10 * t for t in range(20)]
    # zero-padded names keep the order they had (text order), whatever the digits
    padded = [f"frame_{n:05d}.png" for n in np.random.default_rng(0).permutation(1200)]
    assert sorted(padded, key=natural_key) == sorted(padded)
    assert sorted(["b10.png", "a2.png", "b9.png", "a10.png"], key=natural_key) == [
        "a2.png", "a10.png", "b9.png", "b10.png"
    ]  # fmt: skip
    # frames: letters without their case (a formats review: Frame_0, frame_1, Frame_2,
    # frame_3 were stored 0, 2, 1, 3); names alike but for case in their text order
    mixed = ["frame_3.png", "Frame_2.png", "frame_1.png", "Frame_0.png", "a.png", "A.png"]
    assert sorted(mixed, key=frame_key) == [
        "A.png", "a.png", "Frame_0.png", "frame_1.png", "Frame_2.png", "frame_3.png"
    ]  # fmt: skip
    # sequences keep their order (a seeded --splits deals it: the same split as before)
    assert sorted(["beta", "Gamma", "alpha"], key=natural_key) == ["Gamma", "alpha", "beta"]


def png_16bit_rgb(path: Path, frame_HWC: np.ndarray) -> None:
    """A 48-bit RGB PNG (PIL writes none): PIL reads it as mode RGB, keeping the high byte."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    h, w, _ = frame_HWC.shape
    rows = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in frame_HWC)
    header = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)  # 16 bits, colour type 2 (RGB)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
                     + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))  # fmt: skip


def test_seed_kth_refuses_png_frames_of_more_than_8_bits(tmp_path):
    """16-bit frames were clipped to 255 by the conversion to 8-bit grayscale, silently."""
    kth_seed(tmp_path / "seed")
    frame = tmp_path / "seed" / "train" / "example000001" / "1.png"
    Image.fromarray(np.full((6, 8), 4000, np.uint16)).save(frame)
    line = error_line(run_cli("shard", "seed-kth", "seed", "--out", "ds", cwd=tmp_path))
    assert line == (
        "seed/train/example000001/1.png: a 16-bit PNG (mode I;16); seed-kth reads 8-bit frames "
        "(value scale 255) and would clip the rest: convert the frames to 8-bit, or save each "
        "sequence as an .npy array (T×H×W, uint16 kept) and convert it with `stpdist shard "
        "arrays --value-scale 65535`"
    )
    png_16bit_rgb(frame, np.full((6, 8, 3), 4000, np.uint16))  # PIL's mode: RGB, as 8-bit
    line = error_line(run_cli("shard", "seed-kth", "seed", "--out", "ds", cwd=tmp_path))
    assert line.startswith("seed/train/example000001/1.png: a 16-bit PNG (mode RGB); ")
    assert not (tmp_path / "ds").exists()


def test_seed_layouts_refuse_what_they_would_leave_out_and_need_all_three_splits(tmp_path):
    """`valid/`, `train/my_sequence/`, `Example000005.npz`, `seq7.npz` were ignored without
    a word; a layout without validation/ and test/ converted train alone."""
    kth_seed(tmp_path / "kth", splits=("train", "valid", "test"))
    (tmp_path / "kth" / "notes.txt").write_text("not data: not refused")
    shard_kth = ("shard", "seed-kth", "kth", "--out", "ds", "--workers", "1")
    assert error_line(run_cli(*shard_kth, cwd=tmp_path)) == (
        "kth: valid/ would be left out: seed-kth reads the sequences example*/ of train/, "
        "validation/ (or val/) and test/ only; rename them so, or move them out"
    )
    (tmp_path / "kth" / "valid").rename(tmp_path / "kth" / "validation")
    shutil.copytree(tmp_path / "kth/train/example000001", tmp_path / "kth/train/my_sequence")
    assert error_line(run_cli(*shard_kth, cwd=tmp_path)).startswith(
        "kth: train/my_sequence/ would be left out: "
    )
    shutil.rmtree(tmp_path / "kth" / "train" / "my_sequence")
    run_cli(*shard_kth, cwd=tmp_path, check=True)
    assert sorted(p.name for p in (tmp_path / "ds").iterdir()) == [
        "README.md", "test", "train", "val"
    ]  # fmt: skip

    sequence = {"inputs": np.zeros((2, 1, 4, 4), np.float32)}
    sequence["labels"] = sequence["inputs"]
    for split in ("train", "validation", "test"):
        (tmp_path / "mm" / split).mkdir(parents=True)
    for name in ("example000000", "example000001", "Example000005", "seq7"):
        np.savez(tmp_path / "mm" / "train" / f"{name}.npz", **sequence)
    shard_mm = ("shard", "seed-mmnist", "mm", "--out", "ds2", "--workers", "1")
    assert error_line(run_cli(*shard_mm, cwd=tmp_path)) == (
        "mm: train/Example000005.npz, train/seq7.npz would be left out: seed-mmnist reads the "
        "sequences example*.npz of train/, validation/ (or val/) and test/ only; rename them "
        "so, or move them out"
    )
    for name in ("Example000005", "seq7"):
        (tmp_path / "mm" / "train" / f"{name}.npz").unlink()
    assert error_line(run_cli(*shard_mm, cwd=tmp_path)) == (
        "mm: validation/ and test/ are missing or hold no example*.npz; a seed-mmnist layout "
        "needs all three split folders, train/, validation/ (or val/) and test/, each holding "
        "sequences"
    )
    assert not (tmp_path / "ds2").exists()


def test_arrays_read_upper_case_suffixes_and_series_chunks_in_number_order(tmp_path):
    """`SEQ0.NPY` was skipped without a word (half the data gone); a series' chunks
    `part1 … part10` were read as text orders them (part1, part10, part2, …)."""
    raw = tmp_path / "raw"
    raw.mkdir()
    frames = np.random.default_rng(0).integers(0, 256, (3, 4, 1, 8, 8), dtype=np.uint8)
    with open(raw / "SEQ0.NPY", "wb") as f:  # np.save would add .npy to the name
        np.save(f, frames[0])
    np.save(raw / "seq1.npy", frames[1])
    with open(raw / "seq2.Npz", "wb") as f:
        np.savez(f, frames=frames[2])
    run_cli("shard", "arrays", "raw", "--out", "ds", "--workers", "1", cwd=tmp_path, check=True)
    samples = stored(tmp_path / "ds" / "train")
    assert sorted(samples) == ["SEQ0", "seq1", "seq2"]
    np.testing.assert_array_equal(samples["SEQ0"], frames[0])

    chunks = tmp_path / "chunks"
    chunks.mkdir()
    for part in range(1, 11):  # chunk k: 2 frames of value k
        np.save(chunks / f"part{part}.npy", np.full((2, 1, 4, 4), part, np.uint8))
    run_cli("shard", "arrays", "chunks", "--out", "series", "--frames", "2", "--stride", "2",
            "--workers", "1", cwd=tmp_path, check=True)  # fmt: skip
    windows = stored(tmp_path / "series" / "train")
    assert [int(windows[key][0, 0, 0, 0]) for key in sorted(windows, key=natural_key)] == list(
        range(1, 11)
    )
    from stpdist.data.sources.kth import KTHVideos

    (tmp_path / "kth").mkdir()
    (tmp_path / "kth" / "person01_walking_d1_uncomp.AVI").write_bytes(b"")  # listed, not read
    assert len(KTHVideos(str(tmp_path / "kth")).splits()["train"]) == 1


def test_a_negative_seed_is_named_and_a_given_scale_below_the_data_is_said(tmp_path):
    """`--seed -1` was numpy's "expected non-negative integer" (exit 1, no flag named); a
    --value-scale below the data's values passed silently, and training refused them."""
    (tmp_path / "raw").mkdir()
    for i in range(4):
        np.save(tmp_path / "raw" / f"s{i}.npy", np.full((4, 1, 4, 4), 200, np.uint8))
    argv = ["shard", "arrays", "raw", "--workers", "1"]
    proc = run_cli(*argv, "--out", "a", "--splits", "train=0.5,val=0.5", "--seed", "-1",
                   cwd=tmp_path)  # fmt: skip
    assert error_line(proc) == "--seed -1: expected an integer ≥ 0"
    proc = run_cli(*argv, "--out", "b", "--value-scale", "100", cwd=tmp_path, check=True)
    assert (
        "raw: train values span 200…200, outside [0, 100] (--value-scale 100): training takes "
        "them only with data.normalize: standardize"
    ) in proc.stderr


def test_flags_that_would_be_ignored_are_refused_and_hidden_files_are_not_data(tmp_path):
    """--split beside --splits, --split on a folder of split folders and --key on .npy files
    were ignored without a word; `.hidden.npy` (macOS leaves `._name.npy` copies on shared
    drives, which do not even load) became a sample."""
    raw = tmp_path / "raw"
    raw.mkdir()
    for i in range(4):
        np.save(raw / f"s{i}.npy", np.zeros((4, 1, 4, 4), np.uint8))
    (raw / "._s0.npy").write_bytes(b"\0\5\0\0AppleDouble")
    argv = ["shard", "arrays", "raw", "--workers", "1", "--out"]
    assert error_line(
        run_cli(*argv, "a", "--split", "foo", "--splits", "train=0.5,val=0.5", cwd=tmp_path)
    ) == (  # fmt: skip
        "--split foo and --splits train=0.5,val=0.5: --splits cuts the folder into the splits "
        "it names; drop --split"
    )
    assert error_line(run_cli(*argv, "b", "--key", "frames", cwd=tmp_path)) == (
        "--key frames names an array inside .npz files; raw holds .npy files only (one array "
        "each): drop --key"
    )
    run_cli(*argv, "c", cwd=tmp_path, check=True)
    assert sorted(stored(tmp_path / "c" / "train")) == ["s0", "s1", "s2", "s3"]
    split = tmp_path / "split"
    (split / "train").mkdir(parents=True)
    np.save(split / "train" / "s0.npy", np.zeros((4, 1, 4, 4), np.uint8))
    assert error_line(
        run_cli("shard", "arrays", "split", "--split", "val", "--out", "d", cwd=tmp_path)
    ) == (  # fmt: skip
        "split already has split folders (train/); --split val names the one split of a flat "
        "folder: drop it"
    )


def test_a_sample_of_another_shape_or_dtype_is_named_beside_the_first(tmp_path):
    """The odd file may be the first, whose shape the split takes: the message blamed a good
    file against "the split's" shape, and said "shape" when only the dtype differed."""
    raw = tmp_path / "raw"
    raw.mkdir()
    np.save(raw / "seq0.npy", np.zeros((9, 1, 4, 4), np.uint8))  # the odd one, read first
    np.save(raw / "seq1.npy", np.zeros((8, 1, 4, 4), np.uint8))
    argv = ["shard", "arrays", "raw", "--split", "train", "--workers", "1"]
    assert error_line(run_cli(*argv, "--out", "a", cwd=tmp_path)).endswith(
        "sample seq1: shape [8, 1, 4, 4] differs from [9, 1, 4, 4] of sample seq0, the split's "
        "first (every sample of a split has one shape and dtype)"
    )
    np.save(raw / "seq0.npy", np.zeros((8, 1, 4, 4), np.float32))
    assert error_line(run_cli(*argv, "--out", "b", "--value-scale", "1", cwd=tmp_path)).endswith(
        "sample seq1: dtype uint8 differs from float32 of sample seq0, the split's first (every "
        "sample of a split has one shape and dtype)"
    )


def test_a_folder_of_separate_clips_is_cut_inside_each_with_per_file(tmp_path):
    """Three 10-frame clips with --frames 6 --stride 2: read as chunks of one series, 4 of
    the 13 windows mixed two unrelated clips, and nothing said so. Now a line says how the
    files were joined, and --per-file cuts each clip alone: 3 windows each, none mixed."""
    clips = tmp_path / "clips"
    clips.mkdir()
    for i in range(3):  # clip i: 10 frames of value 50 (i + 1)
        np.save(clips / f"clip{i}.npy", np.full((10, 1, 4, 4), 50 * (i + 1), np.uint8))
    argv = ["shard", "arrays", "clips", "--frames", "6", "--stride", "2", "--workers", "1"]
    joined = run_cli(*argv, "--out", "joined", cwd=tmp_path, check=True)
    assert (
        "clips: 3 files read as consecutive chunks of one series in name order (clip0.npy, "
        "clip1.npy, …): a window may span two of them; if each file is a clip of its own, "
        "pass --per-file"
    ) in joined.stderr
    assert len(stored(tmp_path / "joined" / "train")) == 13
    alone = run_cli(*argv, "--per-file", "--out", "alone", cwd=tmp_path, check=True)
    assert "--per-file" not in alone.stderr
    windows = stored(tmp_path / "alone" / "train")
    assert len(windows) == 9
    assert all(len(np.unique(frames)) == 1 for frames in windows.values())  # one clip each
    assert read_index(tmp_path / "alone" / "train").args["per_file"] is True


def test_overwrite_replaces_only_an_earlier_dataset(tmp_path):
    """`--overwrite` emptied `--out` whatever it held: a shared folder's other project went."""
    (tmp_path / "raw").mkdir()
    np.save(tmp_path / "raw" / "a.npy", np.zeros((4, 1, 8, 8), np.uint8))
    (tmp_path / "shared_data" / "other_project").mkdir(parents=True)
    notes = tmp_path / "shared_data" / "other_project" / "notes.txt"
    notes.write_text("mine")
    for flags in ((), ("--overwrite",)):
        proc = run_cli("shard", "arrays", "raw", "--out", "shared_data", *flags, cwd=tmp_path)
        assert error_line(proc) == (
            "--out shared_data holds other_project/, which no stpdist conversion wrote; "
            "--overwrite replaces only an earlier dataset (split folders with index.json, "
            "README.md), never other files: choose another --out, or move those out of it"
        )
    assert notes.read_text() == "mine"
    # an earlier dataset: refused saying what --overwrite does, replaced with it
    run_cli("shard", "arrays", "raw", "--out", "ds", cwd=tmp_path, check=True)
    assert error_line(run_cli("shard", "arrays", "raw", "--out", "ds", cwd=tmp_path)) == (
        "ds is not empty; pass --overwrite to replace it (--overwrite replaces the earlier "
        "dataset there)"
    )
    run_cli("shard", "arrays", "raw", "--out", "ds", "--overwrite", cwd=tmp_path, check=True)
    # … but not once something else is there too: up to 3 named
    for name in ("a.txt", "b.txt", "c.txt", "val"):  # val/ without index.json: not a split
        (tmp_path / "ds" / name).mkdir() if name == "val" else (tmp_path / "ds" / name).touch()
    proc = run_cli("shard", "arrays", "raw", "--out", "ds", "--overwrite", cwd=tmp_path)
    assert error_line(proc).startswith("--out ds holds a.txt, b.txt, c.txt and 1 more, which ")
    assert read_index(tmp_path / "ds" / "train").num_samples == 1
    # a file of the user's inside a split folder went with the split
    for name in ("a.txt", "b.txt", "c.txt", "val"):
        (tmp_path / "ds" / name).rmdir() if name == "val" else (tmp_path / "ds" / name).unlink()
    (tmp_path / "ds" / "train" / "notes.txt").write_text("mine")
    proc = run_cli("shard", "arrays", "raw", "--out", "ds", "--overwrite", cwd=tmp_path)
    assert error_line(proc).startswith("--out ds holds train/notes.txt, which no stpdist ")
    assert (tmp_path / "ds" / "train" / "notes.txt").read_text() == "mine"


def test_channels_last_arrays_are_refused_unless_flagged(tmp_path):
    """20×32×32×3 arrays were stored as T×C×H×W with C=32, W=3 without a word."""
    rng = np.random.default_rng(0)
    clip = rng.integers(0, 256, (20, 32, 32, 3), dtype=np.uint8)  # T×H×W×C
    (tmp_path / "raw").mkdir()
    np.save(tmp_path / "raw" / "clip.npy", clip)
    line = error_line(run_cli("shard", "arrays", "raw", "--out", "ds", cwd=tmp_path))
    assert line == (
        "raw/clip.npy: shape (20, 32, 32, 3) looks channels-last (T×H×W×C, 3 channels); read "
        "as T×C×H×W it would be 32 channels of 32×3 pixels: pass --channels-last, or store "
        "the arrays T×C×H×W"
    )
    run_cli("shard", "arrays", "raw", "--out", "ds", "--channels-last", "--workers", "1",
            cwd=tmp_path, check=True)  # fmt: skip
    np.testing.assert_array_equal(
        stored(tmp_path / "ds" / "train")["clip"], clip.transpose(0, 3, 1, 2)
    )
    series = rng.random((30, 8, 8, 3)).astype(np.float32)  # one long series, channels last
    np.save(tmp_path / "long.npy", series)
    window = ("shard", "arrays", "long.npy", "--frames", "10", "--stride", "10")
    line = error_line(run_cli(*window, "--out", "s", cwd=tmp_path))
    assert line.startswith("long.npy: shape (30, 8, 8, 3) looks channels-last")
    run_cli(*window, "--out", "s", "--channels-last", "--workers", "1", cwd=tmp_path,
            check=True)  # fmt: skip
    windows = stored(tmp_path / "s" / "train")
    assert [w.shape for w in windows.values()] == [(10, 3, 8, 8)] * 3
    np.testing.assert_array_equal(windows["long_f000010"], series[10:20].transpose(0, 3, 1, 2))
    # and the other way round: T×C×H×W arrays flagged --channels-last were stored as frames
    # one pixel high (16 channels of 1×16), from a review
    (tmp_path / "tchw").mkdir()
    np.save(tmp_path / "tchw" / "a.npy", rng.integers(0, 256, (12, 1, 16, 16), dtype=np.uint8))
    line = error_line(
        run_cli("shard", "arrays", "tchw", "--out", "t", "--channels-last", cwd=tmp_path)
    )
    assert line == (
        "tchw/a.npy: shape (12, 1, 16, 16) looks T×C×H×W (1 channel(s)); read as T×H×W×C "
        "(--channels-last) it would be 16 channels of 1×16 pixels: drop --channels-last, or "
        "store the arrays T×H×W×C"
    )
    assert not (tmp_path / "t").exists()


def test_a_file_of_many_sequences_read_as_many_channels_is_said(tmp_path):
    """An N×T×H×W file (50 sequences of 20 frames) became one sequence of 50 frames of 20
    channels without a word: said, with the way to store it; 4 channels or fewer are not."""
    (tmp_path / "raw").mkdir()
    np.save(tmp_path / "raw" / "all.npy", np.zeros((50, 20, 8, 8), np.uint8))
    proc = run_cli("shard", "arrays", "raw", "--out", "ds", "--workers", "1", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "raw/all.npy: shape (50, 20, 8, 8) read as T×C×H×W: 50 frames of 20 channels; if " in (
        proc.stderr
    )
    assert "holds 50 sequences of 20 frames (N×T×H×W), save each sequence" in proc.stderr
    (tmp_path / "rgb").mkdir()
    np.save(tmp_path / "rgb" / "a.npy", np.zeros((10, 3, 8, 8), np.uint8))
    proc = run_cli("shard", "arrays", "rgb", "--out", "d3", "--workers", "1", cwd=tmp_path)
    assert proc.returncode == 0 and "read as T×C×H×W" not in proc.stderr, proc.stderr


def test_a_series_split_that_gets_no_window_is_refused_naming_it(tmp_path):
    """val and test got no window of 10 frames: only train was written, silently."""
    np.save(tmp_path / "one.npy", np.zeros((30, 1, 4, 4), np.uint8))
    shard = ("shard", "arrays", "one.npy", "--out", "ds", "--frames", "10", "--stride", "5")
    line = error_line(run_cli(*shard, "--val-from", "15", "--test-from", "22", cwd=tmp_path))
    assert line == (
        "one.npy: split val gets no window: its frames 15…21 (7 frames) hold no window of "
        "--frames 10 starting every --stride 5 frames (a window never crosses a split boundary "
        "or a gap in the times); every split asked for needs at least one window: move "
        "--val-from/--test-from, or lower --frames"
    )
    line = error_line(run_cli(*shard, "--test-from", "40", cwd=tmp_path))
    assert line.startswith(
        "one.npy: split test gets no frame: --test-from 40 leaves it none of the series' "
        "frames 0…29; "
    )
    assert not (tmp_path / "ds").exists()
    run_cli(*shard, "--test-from", "0", "--workers", "1", cwd=tmp_path, check=True)  # test only
    assert [p.name for p in sorted((tmp_path / "ds").iterdir())] == ["README.md", "test"]
    assert read_index(tmp_path / "ds" / "test").num_samples == 5


def test_splits_of_different_frame_shapes_are_refused(tmp_path):
    """Converted without a word; training then failed after an epoch, at validation."""
    shapes = {"train": (20, 1, 32, 32), "val": (20, 1, 16, 16), "test": (12, 1, 32, 32)}
    for split, shape in shapes.items():
        (tmp_path / "raw" / split).mkdir(parents=True)
        np.save(tmp_path / "raw" / split / "a.npy", np.zeros(shape, np.uint8))
    shard = ("shard", "arrays", "raw", "--out", "ds", "--workers", "1")
    assert error_line(run_cli(*shard, cwd=tmp_path)) == (
        "raw/val/a.npy: split val has frames 20×1×16×16, split train 20×1×32×32 (T×C×H×W); "
        "every split must hold sequences of one shape (a model trains and is evaluated on "
        "them all): resize them to one frame size, or convert the splits as separate datasets"
    )
    np.save(tmp_path / "raw" / "val" / "a.npy", np.zeros((20, 1, 32, 32), np.uint8))
    assert error_line(run_cli(*shard, cwd=tmp_path)).endswith(
        "raw/test/a.npy: split test has frames 12×1×32×32, split train 20×1×32×32 (T×C×H×W); "
        "every split must hold sequences of one shape (a model trains and is evaluated on "
        "them all): cut every sequence to 12 frames, or convert the splits as separate datasets"
    )
    assert not (tmp_path / "ds").exists()


def test_an_mmnist_array_with_more_frames_than_sequences_is_said(tmp_path):
    """N×T (300 sequences of 20 frames) was read as T×N, 20 sequences of 300 frames,
    without a word; the published file is T×N, 20×10000."""
    np.save(tmp_path / "nfirst.npy", np.zeros((30, 4, 8, 8), np.uint8))
    proc = run_cli("shard", "mmnist-npy", "nfirst.npy", "--out", "nf", cwd=tmp_path, check=True)
    assert (
        "nfirst.npy: read as T×N×H×W, time first, as the published mnist_test_seq.npy "
        "(20×10000×64×64): 4 sequences of 30 frames. If it holds 30 sequences of 4 frames "
        "(N×T), save it transposed: np.save(path, a.transpose(1, 0, 2, 3))"
    ) in proc.stderr


def test_splits_of_different_dtypes_are_refused(tmp_path):
    """uint8 train and val, float32 [0, 1] test: the value scale was guessed once, 255, from
    the first split's dtype, and every test frame was divided by it, without a word."""
    for split, dtype in (("train", np.uint8), ("val", np.uint8), ("test", np.float32)):
        (tmp_path / "raw" / split).mkdir(parents=True)
        np.save(tmp_path / "raw" / split / "a.npy", np.zeros((6, 1, 8, 8), dtype))
    shard = ("shard", "arrays", "raw", "--out", "ds", "--workers", "1")
    assert error_line(run_cli(*shard, cwd=tmp_path)) == (
        "raw/test/a.npy: split test has float32 frames, split train uint8; the dataset has "
        "one value scale (frames ÷ scale in [0, 1]) for every split: convert the files to one "
        "dtype, or the splits as separate datasets"
    )
    assert not (tmp_path / "ds").exists()


def test_netcdf_series_shorter_than_a_window_says_so(tmp_path):
    """It said "xarray: found nothing to convert"; `.NC` files were not found at all."""
    weatherbench_folders(tmp_path / "wb", steps=3)  # two yearly files of 3 steps each
    folder = tmp_path / "wb" / "2m_temperature"
    for file in folder.iterdir():
        file.rename(file.with_suffix(".NC"))
    shard = ("shard", "netcdf", "wb/2m_temperature", "--vars", "t2m", "--out", "ds")
    assert error_line(run_cli(*shard, "--frames", "8", cwd=tmp_path)) == (
        "wb/2m_temperature/2m_temperature_2000_5.625deg.NC and 1 more file: the series holds "
        "6 frames, fewer than --frames 8"
    )
    run_cli(*shard, "--frames", "6", "--workers", "1", cwd=tmp_path, check=True)
    assert read_index(tmp_path / "ds" / "train").num_samples == 1


def test_the_weather_guides_command_reads_weatherbench1_single_level_folders(tmp_path):
    """docs/pages/guides/weather.md's `shard netcdf geopotential_500 temperature_850 --vars
    z500,t850` said "missing variable 'z500' (found ['t', 'z'])": the folders hold z and t
    at a scalar level coordinate. A name that matches nothing lists the names that do."""
    weatherbench1_single_levels(tmp_path / "wb1")
    shard = ("shard", "netcdf", "wb1/geopotential_500", "wb1/temperature_850", "--out", "ds",
             "--frames", "6", "--stride", "2", "--workers", "1")  # fmt: skip
    run_cli(*shard, "--vars", "z500,t850", cwd=tmp_path, check=True)
    index = read_index(tmp_path / "ds" / "train")
    assert [v["name"] for v in index.variables] == ["z500", "t850"] and index.num_samples == 6
    assert error_line(run_cli(*shard, "--vars", "z500,t500", "--overwrite", cwd=tmp_path)) == (
        "wb1/geopotential_500, wb1/temperature_850: variable 't' is held at no level 500, only "
        "as t850 (a scalar level coordinate); ask for t850, or add the files of level 500"
    )
    assert error_line(run_cli(*shard, "--vars", "q700", "--overwrite", cwd=tmp_path)) == (
        "wb1/geopotential_500, wb1/temperature_850: missing variable 'q700' (found t850 (t at "
        "level 850), z500 (z at level 500))"
    )


def test_a_time_that_is_no_standard_calendar_date_is_one_line(tmp_path):
    """A 'noleap' time stopped with xarray's advice (decode_times=False, install cftime); a
    time in plain 'hours' converted as nanoseconds after 1970 (keys w197001010000…)."""
    frames = np.zeros((8, 4, 4), np.float32)
    t2m_file(
        tmp_path / "noleap.nc", frames, {"units": "hours since 2015-01-01", "calendar": "noleap"}
    )
    t2m_file(tmp_path / "hours.nc", frames, {"units": "hours"})
    shard = ("shard", "netcdf", "--vars", "t2m", "--frames", "2", "--out", "ds")
    line = error_line(run_cli(*shard, "noleap.nc", cwd=tmp_path))
    assert line.startswith("noleap.nc: coordinate 'time' has calendar 'noleap', and stpdist ")
    assert error_line(run_cli(*shard, "hours.nc", cwd=tmp_path)).startswith(
        "hours.nc: coordinate 'time': time values are not dates: units 'hours' has no "
        "reference date; give it CF units '<unit> since <date>'"
    )
    assert not (tmp_path / "ds").exists()


def test_a_closed_pipe_ends_inspect_quietly(tmp_path):
    """`stpdist inspect DIR | head`: the reader closing the pipe gave "stpdist: error:
    BrokenPipeError: [Errno 32] Broken pipe" (exit 1)."""
    (tmp_path / "raw").mkdir()
    np.save(tmp_path / "raw" / "a.npy", np.zeros((4, 1, 4, 4), np.uint8))
    run_cli("shard", "arrays", "raw", "--out", "ds", "--workers", "1", cwd=tmp_path, check=True)
    proc = subprocess.Popen(
        [sys.executable, "-m", "stpdist", "inspect", "ds", "--samples", "0"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    proc.stdout.close()  # gone before the first line is written
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 141, stderr.decode()
    assert b"error" not in stderr and b"Traceback" not in stderr, stderr.decode()


def test_an_object_array_and_a_taxibj_file_without_dates_say_what_they_hold(tmp_path):
    """numpy's "Object arrays cannot be loaded when allow_pickle=False" (no advice), and
    h5py's raw KeyError for a TaxiBJ file without its 'date' dataset."""
    (tmp_path / "raw").mkdir()
    np.savez(tmp_path / "raw" / "x.npz", frames=np.array([np.zeros(3), np.zeros(4)], dtype=object))
    assert error_line(run_cli("shard", "arrays", "raw", "--out", "a", cwd=tmp_path)) == (
        "raw/x.npz: holds Python objects (an object array: sequences of different lengths, or "
        "values of mixed types), expected an array of numbers: save each sequence as a "
        "numeric array of its own"
    )
    h5py = pytest.importorskip("h5py")
    with h5py.File(tmp_path / "BJ.h5", "w") as f:
        f["data"] = np.zeros((8, 2, 4, 4))
    assert error_line(run_cli("shard", "taxibj-h5", "BJ.h5", "--out", "b", cwd=tmp_path)) == (
        "BJ.h5: missing dataset 'data' or 'date' (has ['data']): a TaxiBJ file holds both"
    )


def test_a_ctrl_c_swallowed_where_it_landed_still_stops_before_the_output(
    tmp_path, monkeypatch, ctrl_c_as_in_a_terminal
):
    """Python raises Ctrl-C's KeyboardInterrupt in whatever runs next; in a weakref callback
    (an import's) it is printed as "ignored" and the command ran on: the whole dataset was
    written and `shard` exited 0 (2 of 24 Ctrl-Cs in a conversion's first second). Here
    the interrupt lands in code that swallows it, as such a callback does."""
    import signal

    from stpdist.data.sources.generic import GenericArrays

    _small_arrays(tmp_path, 4)
    original = GenericArrays.load

    def swallowing(self, item):
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)  # the handler runs here
        except KeyboardInterrupt:
            pass  # what "Exception ignored in: <function WeakValueDictionary…>" does
        return original(self, item)

    monkeypatch.setattr(GenericArrays, "load", swallowing)
    proc = run_cli("shard", "arrays", "raw", "--out", "ds", "--workers", "1", cwd=tmp_path)
    assert proc.returncode == 130, proc.stderr[-2000:]
    assert "interrupted (Ctrl-C); its output folder is as it was" in proc.stderr
    assert not [p.name for p in tmp_path.iterdir() if "ds" in p.name]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    monkeypatch.undo()  # the next command starts with no Ctrl-C noted
    assert run_cli("shard", "arrays", "raw", "--out", "ds", cwd=tmp_path).returncode == 0


def test_one_file_under_two_names_is_refused_naming_both(tmp_path):
    """A review converted a folder holding a symbolic link beside each file: every
    sequence was written twice, and with --splits a test sequence was also a training one.
    Two names of one file (symbolic or hard link) are refused, naming both."""
    raw = tmp_path / "raw"
    raw.mkdir()
    for i in range(4):
        np.save(raw / f"s{i}.npy", np.full((4, 1, 4, 4), i, np.uint8))
    argv = ["shard", "arrays", "raw", "--workers", "1", "--splits", "train=0.5,test=0.5"]
    for link in (os.symlink, os.link):
        (raw / "t2.npy").unlink(missing_ok=True)
        link(raw / "s2.npy", raw / "t2.npy")
        proc = run_cli(*argv, "--out", f"out-{link.__name__}", cwd=tmp_path)
        assert proc.returncode == 2, proc.stderr
        line = [x for x in proc.stderr.splitlines() if x.startswith("stpdist:")][0]
        assert "raw/s2.npy and " in line and "raw/t2.npy are one file (a link to it)" in line
        assert not (tmp_path / f"out-{link.__name__}").exists()


def test_array_files_cut_short_are_said_so(tmp_path):
    """A review's truncated inputs came back in numpy's and zipfile's words ("Failed to read
    all data for array", "EOF: reading array header", "File is not a zip file", "mmap length
    is greater than file size"): each is said as cut short, with the bytes there and due."""
    rng = np.random.default_rng(0)
    (tmp_path / "raw").mkdir()
    frames = rng.integers(0, 256, (10, 1, 8, 8), dtype=np.uint8)
    np.save(tmp_path / "whole.npy", frames)
    np.savez(tmp_path / "whole.npz", frames=frames)
    data, zipped = (tmp_path / "whole.npy").read_bytes(), (tmp_path / "whole.npz").read_bytes()
    for name, cut, said in [
        ("a.npy", data[:300], f"a.npy: cut short (300 bytes, its header says {len(data)})"),
        ("a.npy", data[:30], "a.npy: cut short (30 bytes, not even a whole .npy header)"),
        ("a.npz", zipped[:-30], f"a.npz: cut short ({len(zipped) - 30} bytes, with no zip dir"),
    ]:
        shutil.rmtree(tmp_path / "raw")
        (tmp_path / "raw").mkdir()
        (tmp_path / "raw" / name).write_bytes(cut)
        proc = run_cli("shard", "arrays", "raw", "--out", "ds", "--workers", "1", cwd=tmp_path)
        assert error_line(proc) == f"stpdist: error: raw/{said}" or said in error_line(proc), (
            proc.stderr
        )
    shutil.rmtree(tmp_path / "raw")  # a whole file with a damaged header is not cut short
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "a.npy").write_bytes(data.replace(b"|u1", b"|q1"))
    proc = run_cli("shard", "arrays", "raw", "--out", "ds", "--workers", "1", cwd=tmp_path)
    assert error_line(proc).endswith("raw/a.npy: descr is not a valid dtype descriptor: '|q1'")
    (tmp_path / "mm.npy").write_bytes(data[:300])  # mmnist-npy reads it memory-mapped
    proc = run_cli("shard", "mmnist-npy", "mm.npy", "--out", "ds2", cwd=tmp_path)
    assert "mm.npy: cut short (300 bytes, its header says" in error_line(proc), proc.stderr


def test_samples_copied_within_a_split_or_into_another_are_said(tmp_path):
    """A file copied under another name (`a (1).npy`) or into another split's folder: the
    conversion says each, with its first case (test scores of data trained on otherwise go
    unnoticed); static sequences (all zeros, a still scene) are alike by nature and not
    counted."""
    rng = np.random.default_rng(0)
    seq = rng.integers(0, 256, (6, 1, 8, 8), dtype=np.uint8)
    for name, frames in {
        "train/a.npy": seq,
        "train/a (1).npy": seq,
        "train/b.npy": rng.integers(0, 256, seq.shape, dtype=np.uint8),
        "train/z.npy": np.zeros_like(seq),
        "train/z2.npy": np.zeros_like(seq),
        "train/still.npy": np.repeat(seq[:1], 6, axis=0),  # a still scene: static by nature
        "train/still2.npy": np.repeat(seq[:1], 6, axis=0),
        "test/c.npy": seq,
        "test/d.npy": rng.integers(0, 256, seq.shape, dtype=np.uint8),
    }.items():
        (tmp_path / "raw" / name).parent.mkdir(parents=True, exist_ok=True)
        np.save(tmp_path / "raw" / name, frames)
    proc = run_cli("shard", "arrays", "raw", "--out", "ds", "--workers", "1", cwd=tmp_path,
                   check=True)  # fmt: skip
    lines = [line for line in proc.stderr.splitlines() if "byte-identical" in line]
    assert len(lines) == 2, proc.stderr
    within = "train: 1 sample(s) are byte-identical to earlier samples of the split (first: 'a'"
    assert lines[0].startswith(within) and "= 'a (1)' of " in lines[0], lines[0]
    across = "test: 1 sample(s) are byte-identical to samples of split train (first: 'c' of "
    assert lines[1].startswith(across) and "remove it from one" in lines[1], lines[1]
    assert read_index(tmp_path / "ds" / "train").num_samples == 7  # nothing left out
    # distinct sequences: not a word
    shutil.rmtree(tmp_path / "raw" / "test")
    (tmp_path / "raw" / "train" / "a (1).npy").unlink()
    proc = run_cli("shard", "arrays", "raw", "--out", "ds", "--overwrite", "--workers", "1",
                   cwd=tmp_path, check=True)  # fmt: skip
    assert "byte-identical" not in proc.stderr, proc.stderr


def test_float64_values_beyond_float32_are_refused_as_such(tmp_path):
    """float64 frames are stored float32; a value beyond its range became inf and was
    refused as "inf at … frames must be finite", of a file that holds no inf."""
    (tmp_path / "raw").mkdir()
    big = np.full((4, 1, 4, 4), 1.0)
    big[2, 0, 1, 3] = 1e39
    np.save(tmp_path / "raw" / "a.npy", big)
    proc = run_cli("shard", "arrays", "raw", "--out", "ds", "--value-scale", "1",
                   "--workers", "1", cwd=tmp_path)  # fmt: skip
    line = error_line(proc)
    assert "sample a holds 1e+39 at (t, c, y, x) = (2, 0, 1, 3), beyond float32's range" in line
    assert "inf" not in line and not (tmp_path / "ds").exists()


def test_uint8_masks_scaled_as_pictures_are_said(tmp_path):
    """0/1 masks in uint8 took the 8-bit scale 255 without a word (they trained as 0…0.004):
    said, with --value-scale 1; pictures (values above 1) say nothing."""
    (tmp_path / "raw").mkdir()
    np.save(tmp_path / "raw" / "m.npy", (np.arange(64).reshape(4, 1, 4, 4) % 2).astype(np.uint8))
    proc = run_cli("shard", "arrays", "raw", "--out", "ds", "--workers", "1", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "raw/m.npy: uint8 values 0…1, read as 8-bit pictures (value scale 255" in proc.stderr
    assert "for masks or labels pass --value-scale 1" in proc.stderr
    np.save(tmp_path / "raw" / "m.npy", np.full((4, 1, 4, 4), 7, np.uint8))
    proc = run_cli("shard", "arrays", "raw", "--out", "d2", "--workers", "1", cwd=tmp_path)
    assert proc.returncode == 0 and "uint8 values" not in proc.stderr, proc.stderr
