"""Data bigger than memory, a disk that fills up: converters read in bounded work items,
the writer keeps only a few loaded items ahead, and a failed shard write names the shard
and leaves the dataset already there as it was."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from test_weather import sevir_layout, stored, weatherbench_folders

from stpdist.data.convert import convert
from stpdist.data.format import read_index


def _series(path: Path, frames: int = 120) -> np.ndarray:
    """One long series, T×1×4×4 float32 (64 bytes a frame)."""
    series = np.random.default_rng(0).random((frames, 1, 4, 4), dtype=np.float32)
    np.save(path, series)
    return series


def test_a_long_npy_series_is_read_in_items_of_bounded_size(tmp_path, monkeypatch):
    from stpdist.data.sources import series as series_module
    from stpdist.data.sources.generic import GenericArrays

    data = _series(tmp_path / "long.npy")
    whole = convert(
        GenericArrays(str(tmp_path / "long.npy"), num_frames=10, stride=5),
        tmp_path / "whole",
        progress=False,
    )["train"]
    monkeypatch.setattr(
        series_module, "ITEM_BYTES", 3 * 10 * 64, raising=False
    )  # three windows' frames
    source = GenericArrays(str(tmp_path / "long.npy"), num_frames=10, stride=5)
    items = source.splits()["train"]
    # one item per chunk used to hold every window of the file: its size in memory
    assert [len(starts) for _, starts in items] == [3] * 7 + [2]  # 23 windows
    assert all(starts[-1] + 10 - starts[0] <= 3 * 10 for _, starts in items)
    bounded = convert(source, tmp_path / "bounded", progress=False)["train"]
    assert bounded.num_samples == whole.num_samples == 23
    assert (bounded.mean, bounded.std, bounded.min, bounded.max) == (
        whole.mean,
        whole.std,
        whole.min,
        whole.max,
    )  # each frame counted once, across items too
    got = stored(tmp_path / "bounded" / "train")
    assert sorted(got) == sorted(stored(tmp_path / "whole" / "train"))
    for window, meta in got.values():
        start = meta["series_index"]
        np.testing.assert_array_equal(window, data[start : start + 10])


def test_netcdf_items_are_bounded_in_bytes_and_every_reads_only_kept_steps(tmp_path, monkeypatch):
    from stpdist.data.sources import netcdf
    from stpdist.data.sources import series as series_module

    full = weatherbench_folders(tmp_path / "wb")
    folder = str(tmp_path / "wb" / "2m_temperature")
    frame_bytes = full["t2m"][0].size * 4  # one channel, float32
    monkeypatch.setattr(
        series_module, "ITEM_BYTES", 4 * 2 * frame_bytes, raising=False
    )  # four windows
    source = netcdf.XarraySource([folder], var_specs="t2m", num_frames=2, stride=1)
    blocks = source.splits()["train"]
    # the 256-frame block bound alone put all 31 windows of the 32 steps in one item
    assert [len(block.starts) for block in blocks] == [4] * 7 + [3]
    # --every 3: a read of 4 kept steps returns (and reads) those, not all 10 steps
    every = netcdf.XarraySource([folder], var_specs="t2m", num_frames=2, stride=1, every=3)
    every.splits()
    read = every._read(every.channels[0], 2, 6)
    np.testing.assert_array_equal(read, full["t2m"][6:18:3].astype(np.float32))


def test_sevir_items_hold_a_few_events_of_a_file(tmp_path, monkeypatch):
    from stpdist.data.sources import sevir

    sevir_layout(tmp_path / "sevir")
    whole = convert(sevir.Sevir(str(tmp_path / "sevir")), tmp_path / "whole", progress=False)
    monkeypatch.setattr(sevir, "EVENTS_PER_ITEM", 1, raising=False)
    source = sevir.Sevir(str(tmp_path / "sevir"))
    items = source.splits()
    # train's two events share one file: one item held both (a real file: hundreds)
    assert [len(events) for _, events in items["train"]] == [1, 1]
    bounded = convert(source, tmp_path / "bounded", progress=False)
    for split, index in bounded.items():
        assert (index.num_samples, index.mean, index.max) == (
            whole[split].num_samples,
            whole[split].mean,
            whole[split].max,
        )
        assert sorted(stored(tmp_path / "bounded" / split)) == sorted(
            stored(tmp_path / "whole" / split)
        )


def test_taxibj_items_read_a_bounded_run_of_a_files_windows(tmp_path, monkeypatch):
    """A TaxiBJ file was one work item: all of its `data` read, and its windows (8 frames
    each at stride 1: eight times the file) handed over at once."""
    pytest.importorskip("h5py")
    from test_left_items_data import taxibj_month

    from stpdist.data.sources import series as series_module
    from stpdist.data.sources.taxibj import TaxiBJ

    files = [tmp_path / f"BJ13_{month}.h5" for month in (1, 2)]
    flows = [taxibj_month(path, month, month) for month, path in zip((1, 2), files)]
    paths = [str(p) for p in files]
    whole = convert(TaxiBJ(paths, num_frames=8, test_days=1), tmp_path / "whole", progress=False)
    frame_bytes = 2 * 4 * 4 * 4  # 2×4×4 float32
    monkeypatch.setattr(series_module, "ITEM_BYTES", 10 * 8 * frame_bytes, raising=False)
    source = TaxiBJ(paths, num_frames=8, test_days=1)
    items = source.splits()
    # 41 windows a day: January is train, February test
    assert [(Path(i[0]).name, len(i[2])) for i in items["train"]] == [("BJ13_1.h5", 10)] * 4 + [
        ("BJ13_1.h5", 1)
    ]
    assert [len(i[2]) for i in items["test"]] == [10] * 4 + [1]
    bounded = convert(source, tmp_path / "bounded", progress=False)
    for split, day in (("train", flows[0]), ("test", flows[1])):
        index = bounded[split]
        assert (index.num_samples, index.mean, index.std, index.max) == (
            whole[split].num_samples,
            whole[split].mean,
            whole[split].std,
            whole[split].max,
        )
        for window, meta in stored(tmp_path / "bounded" / split).values():
            start = meta["series_index"]
            np.testing.assert_array_equal(window, day[start : start + 8])


class _Counted:
    """A source whose items (40) each leave a file in `marks` when a worker loads them;
    `describe`, which the writer calls for each item it reaches, waits at the first to
    count how many were loaded meanwhile."""

    name, value_scale, grid = "counted", 1.0, None

    def __init__(self, marks: Path) -> None:
        self.marks = marks
        self.loaded_while_writing_first: int | None = None

    def splits(self) -> dict[str, list[int]]:
        return {"train": list(range(40))}

    def load(self, item: int) -> list[tuple[str, np.ndarray, dict]]:
        (self.marks / str(item)).touch()
        return [(f"s{item:03d}", np.full((2, 1, 4, 4), item, np.float32), {"item": item})]

    def describe(self, item: int) -> str:
        if self.loaded_while_writing_first is None:
            time.sleep(1.5)  # the writer is slow at its first item: the readers go on
            self.loaded_while_writing_first = len(os.listdir(self.marks))
        return f"item {item}"

    def args(self) -> dict[str, object]:
        return {}


def test_the_writer_keeps_only_a_few_loaded_items_ahead(tmp_path):
    marks = tmp_path / "marks"
    marks.mkdir()
    source = _Counted(marks)
    index = convert(source, tmp_path / "out", workers=2, progress=False)["train"]
    assert index.num_samples == 40
    # pool.map handed all 40 items out at once; their samples waited in memory
    assert source.loaded_while_writing_first <= 2 * 2 + 1
    got = stored(tmp_path / "out" / "train")
    assert [int(got[f"s{i:03d}"][0][0, 0, 0, 0]) for i in range(40)] == list(range(40))


def _printed(program: str) -> str:
    """What `program` prints, run in a fresh interpreter (its own file-size limit), which
    must end with status 0."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, env=env, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_a_shard_write_that_fails_names_the_output_and_keeps_the_old_dataset(tmp_path):
    """A full disk seen as a file size limit (RLIMIT_FSIZE, SIGXFSZ ignored: EFBIG): a
    write's OSError names no file, so the error said "File too large" and nothing else."""
    source_folder = tmp_path / "arrays"
    source_folder.mkdir()
    for i in range(12):
        np.save(source_folder / f"seq{i:02d}.npy", np.full((8, 1, 16, 16), i / 12, np.float32))
    out = tmp_path / "out"
    from stpdist.data.sources.generic import GenericArrays

    convert(GenericArrays(str(source_folder)), out, samples_per_shard=2, progress=False)
    before = (out / "train" / "index.json").read_text()
    program = textwrap.dedent(
        f"""
        import resource, signal
        from stpdist.data.convert import convert
        from stpdist.data.sources.generic import GenericArrays
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (20000, 20000))  # a shard is ~16 KB a sample
        try:
            convert(GenericArrays({str(source_folder)!r}), {str(out)!r}, overwrite=True,
                    samples_per_shard=4, progress=False)
        except OSError as exc:
            print(exc)
        """
    )
    message = _printed(program).strip()
    assert message == f"[Errno 27] File too large: '{out}'"  # the staging folder is gone
    assert (out / "train" / "index.json").read_text() == before  # the old dataset, whole
    assert json.loads(before)["args"]["root"] == str(source_folder)
    assert read_index(out / "train").num_samples == 12
    assert sorted(p.name for p in tmp_path.iterdir()) == ["arrays", "out"]  # no staging left


def test_a_full_disk_names_the_output_and_keeps_the_old_dataset(tmp_path):
    """A real full disk (a 1 MiB tmpfs in a private mount namespace): the error line said
    "No space left on device (the error names no file; --debug shows where)"; it names
    `--out` (the staging folder the write went to is gone by then) and its free space."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare for a private tmpfs")
    small, large = tmp_path / "small", tmp_path / "large"
    for folder, count in ((small, 2), (large, 30)):
        folder.mkdir()
        for i in range(count):
            np.save(folder / f"seq{i:02d}.npy", np.full((10, 1, 32, 32), i / 30, np.float32))
    disk = tmp_path / "disk"
    disk.mkdir()
    shard = f"{sys.executable} -m stpdist shard arrays"
    script = (
        f"mount -t tmpfs -o size=1m tmpfs {disk} && {shard} {small} --out {disk}/ds && "
        f"{shard} {large} --out {disk}/ds --overwrite --samples-per-shard 5; echo rc=$?; "
        f"ls -a {disk}; cat {disk}/ds/train/index.json"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
        capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    if "mount:" in proc.stderr:
        pytest.skip(f"no private tmpfs here: {proc.stderr.strip()[:200]}")
    errors = [line for line in proc.stderr.splitlines() if line.startswith("stpdist:")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert re.fullmatch(
        rf"stpdist: error: {re.escape(str(disk))}/ds: No space left on device "
        r"\(\d+ KiB free there\)",
        errors[0],
    ), errors[0]
    assert "rc=1" in proc.stdout and ".ds.staging" not in proc.stdout  # staging removed
    index = json.loads(proc.stdout[proc.stdout.index("{") :])
    assert index["args"]["root"] == str(small)  # the old dataset, kept


def test_a_new_dataset_is_on_disk_before_it_replaces_the_old_one(tmp_path, monkeypatch):
    """Nothing was fsynced: after a power loss following the swap (the old dataset deleted),
    the new one's shards and index.json could be empty or missing on disk."""
    from stpdist.data.sources.generic import GenericArrays

    folder = tmp_path / "arrays"
    folder.mkdir()
    for i in range(3):
        np.save(folder / f"seq{i}.npy", np.full((4, 1, 8, 8), i, np.uint8))
    out = tmp_path / "out"
    convert(GenericArrays(str(folder)), out, progress=False)
    events: list[tuple[str, ...]] = []
    fsync, rename, rmtree = os.fsync, os.rename, shutil.rmtree

    def recorded_fsync(fd: int) -> None:
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        fsync(fd)

    def recorded_rename(src, dst) -> None:
        events.append(("rename", str(src), str(dst)))
        rename(src, dst)

    def recorded_rmtree(path, *args, **kwargs) -> None:
        events.append(("rmtree", str(path)))
        rmtree(path, *args, **kwargs)

    monkeypatch.setattr(os, "fsync", recorded_fsync)
    monkeypatch.setattr(os, "rename", recorded_rename)
    monkeypatch.setattr(shutil, "rmtree", recorded_rmtree)
    convert(GenericArrays(str(folder)), out, overwrite=True, progress=False)
    [complete] = [i for i, e in enumerate(events) if e[0] == "rename" and ".ready-" in e[2]]
    staging = Path(events[complete][1])
    synced = {Path(e[1]) for e in events[:complete] if e[0] == "fsync"}
    written = [staging / p.relative_to(out) for p in out.rglob("*")]
    assert set(written) | {staging} <= synced  # every file and folder, before it counts
    [swapped] = [i for i, e in enumerate(events) if e[0] == "rename" and e[2] == str(out)]
    deleted = max(i for i, e in enumerate(events) if e[0] == "rmtree" and ".old-" in e[1])
    assert ("fsync", str(tmp_path)) in events[swapped:deleted]  # the swap, before the old goes


def test_shards_end_at_a_byte_bound_as_well_as_a_sample_count(tmp_path, monkeypatch):
    """1000 samples a shard (the default) of SEVIR or 0.25° ERA5 windows made shards of
    gigabytes to tens of gigabytes; a reader streams a shard from its start."""
    from stpdist.data import format as shard_format
    from stpdist.data.sources.generic import GenericArrays

    folder = tmp_path / "arrays"
    folder.mkdir()
    for i in range(7):
        np.save(folder / f"seq{i}.npy", np.full((4, 1, 8, 8), i, np.uint8))
    sample = 4 * 8 * 8 + 128 + len(json.dumps({"source": "seq0.npy"}))  # frames, npy header
    monkeypatch.setattr(shard_format, "SHARD_BYTES", int(2.5 * sample), raising=False)
    index = convert(GenericArrays(str(folder)), tmp_path / "out", progress=False)["train"]
    assert [shard.num_samples for shard in index.shards] == [2, 2, 2, 1]
    got = stored(tmp_path / "out" / "train")
    assert sorted(int(frames[0, 0, 0, 0]) for frames, _ in got.values()) == list(range(7))
    monkeypatch.setattr(shard_format, "SHARD_BYTES", sample // 2)  # one sample alone: one shard
    index = convert(GenericArrays(str(folder)), tmp_path / "one", progress=False)["train"]
    assert [shard.num_samples for shard in index.shards] == [1] * 7


def test_a_write_that_fails_in_a_staged_output_names_the_output_and_keeps_it(tmp_path):
    """export, import, predict and shard write through `staged_output`: a write's OSError
    (np.save, a copy, under a file size limit) named no file: "File too large" alone."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "kept.txt").write_text("earlier output")
    program = textwrap.dedent(
        f"""
        import resource, signal
        import numpy as np
        from stpdist.data.convert import staged_output
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (20000, 20000))
        for write in (
            lambda folder: (folder / "big.bin").write_bytes(bytes(100_000)),
            lambda folder: np.save(folder / "big.npy", np.zeros(100_000, np.uint8)),
        ):
            try:
                with staged_output({str(out)!r}, True) as staging:
                    write(staging)
            except OSError as exc:
                print(exc)
        """
    )
    efbig, short = _printed(program).splitlines()
    assert efbig == f"[Errno 27] File too large: '{out}'"
    # numpy's own error for a short write, without an errno
    assert re.fullmatch(rf"writing {re.escape(str(out))}: 100000 requested and \d+ written", short)
    assert [p.name for p in out.iterdir()] == ["kept.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no staging left


if __name__ == "__main__":
    pytest.main([__file__])


def test_dist_timeout_s_is_the_process_groups_timeout(tmp_path):
    """NCCL aborts a collective after 10 minutes by default: ranks waiting for the main
    rank's long work alone (generating a large dataset, hashing checkpoints on a slow
    filesystem) were aborted with no setting to raise it. `trainer.dist_timeout_s` sets
    the process group's timeout (here lowered to 2 s, against 5 s of the main rank's work:
    the other rank gives up at 2 s, not when the main rank ends)."""
    from conftest import free_port

    script = str(Path(__file__).parent / "dist_timeout.py")
    ranks = [sys.executable, str(Path(__file__).parent / "ranks.py")]
    proc = subprocess.run(
        [*ranks, "--nproc_per_node", "2", "--master_port", str(free_port()), script,
         str(tmp_path / "run"), "2", "5"],
        capture_output=True, text=True, timeout=180,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    found = re.search(r"rank 1: gave up after (\d+) s", proc.stdout)
    assert found, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert 2 <= int(found.group(1)) < 4, proc.stdout
