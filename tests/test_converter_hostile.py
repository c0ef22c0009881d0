"""Converters fed the surprising files people have (a review of 2026-12-06): a TaxiBJ file
stored channels-last or of other values, SEVIR catalogs with a blank time, a BOM or a UTC
suffix, SEVIR image types that are not 8-bit, events shorter than a window or stored
time-first, a KTH video cut short, big-endian arrays, and a constant netCDF field asked
for as a channel. Each is one line naming the file and nothing is written, or read as
meant."""

from __future__ import annotations

import shutil
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli
from test_convert import kth_videos
from test_weather import sevir_layout


def error_line(proc) -> str:
    assert proc.returncode == 2, proc.stderr[-2000:]
    return proc.stderr.strip().splitlines()[-1].removeprefix("stpdist: error: ")


def _taxibj(path: Path, data: np.ndarray) -> Path:
    h5py = pytest.importorskip("h5py")
    start = datetime(2015, 1, 1)
    slots = [start + timedelta(minutes=30 * i) for i in range(len(data))]
    dates = [f"{t:%Y%m%d}{(t.hour * 60 + t.minute) // 30 + 1:02d}".encode() for t in slots]
    with h5py.File(path, "w") as f:
        f["data"], f["date"] = data, np.array(dates)
    return path


def test_taxibj_channels_last_or_other_values_are_refused(tmp_path):
    """N×32×32×2 was read as 32 channels of 32×2 pixels; flows of −5 or 50 000 were
    written with TaxiBJ's scale, to be refused by training later."""
    flows = np.random.default_rng(0).uniform(0, 100, (96, 2, 8, 8))
    last = _taxibj(tmp_path / "last.h5", flows.transpose(0, 2, 3, 1))
    line = error_line(run_cli("shard", "taxibj-h5", str(last), "--test-days", "1", "--out", "o",
                              "--workers", "1", cwd=tmp_path))  # fmt: skip
    assert line == (
        f"{last}: 'data' has shape (96, 8, 8, 2): expected N×2×H×W (inflow, outflow; a file "
        "stored channels-last, N×H×W×2, needs transposing first)"
    )
    odd = flows.copy()
    odd[0, 0, 0, 0], odd[1, 0, 0, 0] = -5, 50_000
    other = _taxibj(tmp_path / "other.h5", odd)
    line = error_line(run_cli("shard", "taxibj-h5", str(other), "--test-days", "1", "--out", "o",
                              "--workers", "1", cwd=tmp_path))  # fmt: skip
    # named as it is read, by slot, channel and cell (the split's range was checked only
    # once the whole split was written: hours for full-size files)
    assert line.startswith(f"{other}: flow -5 at 2015-01-01 00:00, inflow, cell (y, x) = (0, 0)")
    assert "outside TaxiBJ's 0…1292" in line
    assert not (tmp_path / "o").exists()


def _catalog(root: Path) -> Path:
    return root / "CATALOG.csv"


def test_sevir_catalog_times_and_encodings(tmp_path):
    """A blank time_utc was NaT, below no split bound: the event went to train. A catalog
    saved with a BOM (Excel) had no 'id' column; a time ending in Z printed numpy's
    warning."""
    pytest.importorskip("h5py")
    sevir_layout(tmp_path / "s")
    text = _catalog(tmp_path / "s").read_text()
    _catalog(tmp_path / "s").write_text(text.replace("2018-09-03 18:05:00", "", 1))
    line = error_line(run_cli("shard", "sevir", "s", "--out", "o", "--workers", "1",
                              cwd=tmp_path))  # fmt: skip
    assert line.endswith("line 3 (S002): time_utc '': expected a date and time, "
                         "YYYY-MM-DD HH:MM:SS")  # fmt: skip
    _catalog(tmp_path / "s").write_bytes(
        b"\xef\xbb\xbf" + text.replace("2018-09-03 18:05:00", "2018-09-03T18:05:00Z").encode()
    )
    proc = run_cli("shard", "sevir", "s", "--out", "o", "--workers", "1", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "timezone" not in proc.stderr
    assert (tmp_path / "o" / "train" / "index.json").is_file()


@pytest.mark.parametrize(
    ("change", "said"),
    [
        ("int16", "holds int16; this converter reads SEVIR's 8-bit image types (vil)"),
        ("time-first", "expected N×H×W×T (square frames, time last, as SEVIR stores them)"),
        ("short", "holds 20 frames an event, fewer than --frames 25"),
    ],
)
def test_sevir_files_of_another_kind_are_refused(tmp_path, change, said):
    """Non-VIL types (int16 IR) were written with VIL's scale 255; events of fewer frames
    than a window gave "no split yielded a sample"; a time-first file was cut along W."""
    h5py = pytest.importorskip("h5py")
    sevir_layout(tmp_path / "s")
    for path in (tmp_path / "s" / "data").rglob("*.h5"):
        with h5py.File(path, "r+") as f:
            vil = f["vil"][()]
            del f["vil"]
            f["vil"] = {
                "int16": vil.astype(np.int16),
                "time-first": np.moveaxis(vil, -1, 1),
                "short": vil[..., :20],
            }[change]
    line = error_line(run_cli("shard", "sevir", "s", "--out", "o", "--workers", "1",
                              cwd=tmp_path))  # fmt: skip
    assert said in line, line
    assert not (tmp_path / "o").exists()


def test_a_kth_video_cut_short_is_refused_naming_it(tmp_path):
    """Cut short at a frame's start (a download that stopped), a video decoded 37 of its
    45 frames and gave one window instead of two, without a word."""
    import re

    root = kth_videos(tmp_path / "kth", persons=(1, 17))
    video = root / "person01_walking_d1_uncomp.avi"
    data = video.read_bytes()
    frames = [m.start() for m in re.finditer(rb"00dc", data)][1:]  # after the header's
    video.write_bytes(data[: frames[37]])
    line = error_line(run_cli("shard", "kth-avi", "kth", "--out", "ds", "--size", "16",
                              "--workers", "1", cwd=tmp_path))  # fmt: skip
    assert "person01_walking_d1_uncomp.avi: decoded " in line
    assert "frames its header declares: the file is cut short or damaged" in line
    assert not (tmp_path / "ds").exists()


def test_big_endian_arrays_are_the_same_data(tmp_path):
    """A `>f4` file beside a float32 one, as chunks of one series: "frames … float32
    differ from the first chunk's … >f4"."""
    (tmp_path / "a").mkdir()
    rng = np.random.default_rng(0)
    np.save(tmp_path / "a" / "s0.npy", rng.random((6, 1, 4, 4)).astype(">f4"))
    np.save(tmp_path / "a" / "s1.npy", rng.random((6, 1, 4, 4)).astype(np.float32))
    proc = run_cli("shard", "arrays", "a", "--out", "o", "--frames", "3", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    import json

    assert json.loads((tmp_path / "o" / "train" / "index.json").read_text())["dtype"] == "float32"


def test_a_constant_netcdf_field_asked_for_is_named_as_such(tmp_path):
    """`--vars lsm` for a land-sea mask (no time dimension): "missing variable 'lsm'",
    though the file holds it."""
    xr = pytest.importorskip("xarray")
    pytest.importorskip("h5netcdf")
    times = np.array(["2020-01-01T00", "2020-01-01T06", "2020-01-01T12"], "datetime64[ns]")
    ds = xr.Dataset(
        {"t2m": (("time", "latitude", "longitude"), np.zeros((3, 4, 4), np.float32)),
         "lsm": (("latitude", "longitude"), np.ones((4, 4), np.float32))},
        coords={"time": times, "latitude": np.arange(4.0), "longitude": np.arange(4.0)},
    )  # fmt: skip
    (tmp_path / "nc").mkdir()
    ds.to_netcdf(tmp_path / "nc" / "x.nc", engine="h5netcdf")
    line = error_line(run_cli("shard", "netcdf", "nc", "--vars", "lsm", "--out", "o",
                              cwd=tmp_path))  # fmt: skip
    assert "variable 'lsm' has no time dimension (dims ('latitude', 'longitude'): a " in line
    assert not (tmp_path / "o").exists()
    shutil.rmtree(tmp_path / "nc")


def test_unmarked_fill_values_in_netcdf_are_refused(tmp_path):
    """3e38 in a file whose attributes mark no fill value was converted: the split's mean
    became 3e35 and its climatology 1e37."""
    xr = pytest.importorskip("xarray")
    pytest.importorskip("h5netcdf")
    times = np.arange("2020-01-01T00", "2020-01-03T00", 6, dtype="datetime64[h]")
    values = np.random.default_rng(0).uniform(250, 300, (len(times), 4, 4)).astype(np.float32)
    values[1, 1, 1] = 3e38
    ds = xr.Dataset(
        {"t2m": (("time", "latitude", "longitude"), values)},
        coords={"time": times.astype("datetime64[ns]"), "latitude": np.arange(4.0),
                "longitude": np.arange(4.0)},
    )  # fmt: skip
    (tmp_path / "nc").mkdir()
    ds.to_netcdf(tmp_path / "nc" / "x.nc", engine="h5netcdf")
    line = error_line(run_cli("shard", "netcdf", "nc", "--vars", "t2m", "--frames", "2",
                              "--out", "o", cwd=tmp_path))  # fmt: skip
    assert "train values of 't2m' reach 3e+38: fill values no _FillValue or missing_value" in line
    assert not (tmp_path / "o").exists()
