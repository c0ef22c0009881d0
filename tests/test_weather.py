"""Weather and geoscience data: per-variable normalisation, long-series windowing, the
netCDF/Zarr converter, verification scores (tensors B×T×C×H×W, frames T×C×H×W)."""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from stpdist.config import load_config
from stpdist.data.format import SplitWriter, read_index
from stpdist.data.normalize import Normalizer
from stpdist.data.stream import LoaderContext, ShardEvalStream

DEBUG = Path(__file__).parent.parent / "configs" / "debug.yaml"


class CopyLast(nn.Module):
    """A backbone that repeats the last input frame (its one parameter gets no gradient),
    and records the inputs it was given."""

    seen: list[torch.Tensor] = []

    def __init__(self, spec, **_ignored) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(1))

    def forward(self, inputs_BTCHW, num_output_frames, **_):
        CopyLast.seen.append(inputs_BTCHW.detach().clone())
        last = inputs_BTCHW[:, -1:].expand(-1, num_output_frames, -1, -1, -1)
        return last + 0 * self.weight


def two_variable_series(count: int, frames: int = 4, seed: int = 0) -> np.ndarray:
    """N×T×2×8×8 float32: geopotential-like (~5·10⁴ ± 10³) and a ~5 ± 0.1 variable."""
    rng = np.random.default_rng(seed)
    data = np.empty((count, frames, 2, 8, 8), np.float32)
    data[:, :, 0] = 50_000 + 1_000 * rng.standard_normal((count, frames, 8, 8))
    data[:, :, 1] = 5 + 0.1 * rng.standard_normal((count, frames, 8, 8))
    return data


def write_split(root: Path, split: str, data: np.ndarray, **kwargs) -> Path:
    folder = root / split
    with SplitWriter(folder, split, value_scale=1.0, samples_per_shard=8, **kwargs) as writer:
        for i, sample in enumerate(data):
            writer.write(f"s{i:04d}", sample)
    return folder


# ------------------------------------------------------------------ normalisation
def test_old_index_without_new_fields_is_readable(tmp_path):
    folder = write_split(tmp_path, "train", two_variable_series(2))
    raw = json.loads((folder / "index.json").read_text())
    for key in ("min", "max", "variables", "latitudes", "longitudes", "climatology"):
        raw.pop(key)
    (folder / "index.json").write_text(json.dumps(raw))
    index = read_index(folder)
    assert index.min == [] and index.variables == []
    Normalizer.from_index("standardize", index)  # mean/std are old fields
    with pytest.raises(ValueError, match="min/max"):
        Normalizer.from_index("minmax", index)


def test_index_stores_range_and_variables(tmp_path):
    data = two_variable_series(3)
    variables = [{"name": "z500", "units": "m2 s-2"}, {"name": "t2m", "units": "K"}]
    index = read_index(write_split(tmp_path, "train", data, variables=variables))
    assert index.variables == variables
    np.testing.assert_allclose(index.min, data.min(axis=(0, 1, 3, 4)), rtol=1e-7)
    np.testing.assert_allclose(index.max, data.max(axis=(0, 1, 3, 4)), rtol=1e-7)
    with pytest.raises(ValueError, match="1 variables"):
        write_split(tmp_path, "bad", data, variables=variables[:1])


@pytest.mark.parametrize("mode", ["standardize", "minmax", "none", "scale"])
def test_normalizer_round_trip(mode, tmp_path):
    data = two_variable_series(4)
    index = read_index(write_split(tmp_path, "train", data))
    norm = Normalizer.from_index(mode, index)
    x = torch.from_numpy(data)
    np.testing.assert_allclose(norm.inverse(norm(x)).numpy(), data, rtol=1e-6)
    if mode == "scale":
        assert norm(x) is x  # the default is the identity: runs stay bitwise the same
    if mode == "minmax":
        y = norm(x)
        assert float(y.min()) == pytest.approx(0, abs=1e-5)
        assert float(y.max()) == pytest.approx(1, abs=1e-5)


def _normalised_run(tmp_path, normalize: str, steps: int = 2):
    from stpdist import build
    from stpdist.trainer import Trainer

    data = two_variable_series(24, frames=4)
    variables = [{"name": "z500", "units": "m2 s-2"}, {"name": "t2m", "units": "K"}]
    root = tmp_path / "data"
    for split, part in (("train", data[:16]), ("val", data[16:20]), ("test", data[20:])):
        write_split(root, split, part, variables=variables)
    cfg = load_config(
        DEBUG,
        [
            f"data.root={root}",
            "data.synthesize=null",
            f"data.normalize={normalize}",
            "data.num_input_frames=2",
            "data.num_output_frames=2",
            f"trainer.output_dir={tmp_path / 'run'}",
            f"trainer.max_steps={steps}",
            "model.name=test_weather:CopyLast",
            "model.patch_size=1",
            "model.backbone={}",
            "logging.num_samples=1",  # a validation's sample pictures: one panel, one GIF
        ],
    )
    trainer = Trainer(cfg.trainer, logging=cfg.logging)
    module = build.build_module(cfg)
    CopyLast.seen.clear()
    trainer.fit(module, build.train_stream(cfg), build.eval_stream(cfg, "val"))
    seen_in_training = list(CopyLast.seen)
    results = trainer.predict(module, build.eval_stream(cfg, "test"), out=tmp_path / "pred")
    trainer.close()
    return data, seen_in_training, results


def test_two_variables_1e4_apart_arrive_standardised_and_predictions_are_physical(
    tmp_path, monkeypatch
):
    """The batch the backbone sees is standardised per variable; `predict` writes physical
    units (the copy-last backbone's outputs equal the raw last input frame); per-variable
    metrics and the validation's sample pictures are named after the index's variables."""
    from stpdist import visualize

    panels = []  # the row labels of each sample panel drawn (the real one: saved as well)

    def sample_figure(*args, **kwargs):
        fig = real_figure(*args, **kwargs)
        panels.append([ax.get_ylabel() for ax in fig.axes if not hasattr(ax, "_colorbar")])
        return fig

    real_figure = visualize.sample_figure
    monkeypatch.setattr(visualize, "sample_figure", sample_figure)
    data, seen, results = _normalised_run(tmp_path, "standardize")
    (rows,) = panels  # one validation, one sample
    assert [r.split("\n")[0] for r in rows if r.startswith(("input", "truth"))] == [
        "input z500", "truth z500", "input t2m", "truth t2m"
    ]  # fmt: skip
    (folder,) = (tmp_path / "run" / "samples").iterdir()
    assert sorted(p.name for p in folder.iterdir()) == ["lead_time.png", "s0000.gif", "s0000.png"]
    batch = torch.cat(seen[:2])  # training batches (batch 4 each)
    per_channel = batch.transpose(0, 2).reshape(2, -1)
    assert per_channel.mean(dim=1).abs().max() < 0.2  # raw means 5e4 and 5
    assert ((per_channel.std(dim=1) - 1).abs() < 0.2).all()  # raw stds 1e3 and 0.1
    files = sorted((tmp_path / "pred").glob("predictions-*.npz"))
    got = {}
    for file in files:
        with np.load(file) as f:
            got.update(zip(f["keys"].tolist(), f["predictions"]))
            assert str(f["units"]) == "physical" and "value_scale" not in f
            assert f["variables"].tolist() == ["z500", "t2m"]  # a name per channel
    test = data[20:]
    for i, sample in enumerate(test):
        expected = np.repeat(sample[1:2], 2, axis=0)  # last input frame, physical units
        np.testing.assert_allclose(got[f"s{i:04d}"], expected, rtol=1e-5)
    # copy-last: the error is target − last input, per variable in physical units
    err = test[:, 2:] - test[:, 1:2]
    for c, name in enumerate(["z500", "t2m"]):
        for t in range(2):
            rmse = np.sqrt((err[:, t, c] ** 2).mean())
            assert results[f"test/rmse/{name}/t{t + 1:02d}"] == pytest.approx(rmse, rel=1e-4)
        mae = np.abs(err[:, :, c]).mean()
        assert results[f"test/mae/{name}"] == pytest.approx(mae, rel=1e-4)
    # PSNR and SSIM (data range 1) mean nothing in physical units: not reported
    assert "test/mse" in results
    assert not [k for k in results if k.startswith(("test/psnr", "test/ssim"))]


def test_scale_with_clamping_is_refused_for_data_outside_0_1(tmp_path):
    """`scale` (the default) clamps predictions to [0, 1]: on physical values (5e4 and 5,
    value scale 1) every prediction was clamped without a word. Refused, naming what fits."""
    from stpdist.errors import InputError

    with pytest.raises(InputError) as refused:
        _normalised_run(tmp_path, "scale", steps=1)
    message = str(refused.value)
    assert "the train split's values run from" in message and "outside [0, 1]" in message
    assert "set data.normalize to standardize or minmax" in message
    assert "model.evaluation.clamp_output=false" in message


def test_eval_stream_still_yields_scaled_frames(tmp_path):
    data = two_variable_series(4)
    folder = write_split(tmp_path, "train", data)
    stream = ShardEvalStream(folder, batch_size=4, num_input_frames=2, num_output_frames=2)
    inputs, targets, _ = next(iter(stream.iterate(LoaderContext())))
    np.testing.assert_array_equal(inputs.numpy(), data[:, :2])


# ------------------------------------------------------------------ long-series windowing
def stored(folder: Path) -> dict[str, tuple[np.ndarray, dict]]:
    from stpdist.data.format import decode_frames, iter_shard

    out = {}
    for shard in read_index(folder).shards:
        for key, sample in iter_shard(folder / shard.name):
            out[key] = (decode_frames(sample["frames.npy"], key), json.loads(sample["json"]))
    return out


def hourly_series(tmp_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """60 hourly frames 1×4×4 in 3 npz chunks of 20, with a 3-hour gap after frame 29."""
    times = np.datetime64("2020-01-01T00:00", "ns") + np.arange(60) * np.timedelta64(1, "h")
    times[30:] += np.timedelta64(3, "h")
    frames = np.arange(60 * 16, dtype=np.float32).reshape(60, 1, 4, 4) / 7
    (tmp_path / "raw").mkdir()
    for c in range(3):
        part = slice(20 * c, 20 * (c + 1))
        np.savez(tmp_path / "raw" / f"chunk{c}.npz", data=frames[part], time=times[part])
    return frames, times


def test_series_windows_never_cross_gaps_or_splits(tmp_path):
    from stpdist.cli import main

    frames, times = hourly_series(tmp_path)
    code = main(
        [
            "shard", "arrays", str(tmp_path / "raw"), "--out", str(tmp_path / "out"),
            "--frames", "4", "--stride", "2", "--time-key", "time",
            "--val-from", "2020-01-02T05:00", "--test-from", "2020-01-02T16:00",
            "--value-scale", "1",  # physical units (0–137): given, not guessed
        ]
    )  # fmt: skip
    assert code in (0, None)
    val_from = np.datetime64("2020-01-02T05:00", "ns")
    test_from = np.datetime64("2020-01-02T16:00", "ns")
    position = {t: i for i, t in enumerate(times.tolist())}
    expected = {"train": [], "val": [], "test": []}
    split_of = [["train", "val", "test"][int(t >= val_from) + int(t >= test_from)] for t in times]
    # runs on either side of the gap, cut where a split begins: each split's windows start
    # at its first frame (a weather review: they followed the run's start, and a split
    # starting on an odd frame lost it with --stride 2)
    cuts = [0, 30, 60, *(i for i in range(1, 60) if split_of[i] != split_of[i - 1])]
    cuts = sorted(set(cuts))
    for first, end in zip(cuts[:-1], cuts[1:]):
        expected[split_of[first]] += list(range(first, end - 3, 2))
    assert expected["test"][0] == position[test_from.astype(int)] == 37  # was 38
    assert expected["val"][0] == 30  # val's first frame, 29, is the last before the gap
    crossing_chunks = 0
    for split, starts in expected.items():
        got = stored(tmp_path / "out" / split)
        found = sorted(
            position[np.datetime64(m["start"], "ns").astype(int)] for _, m in got.values()
        )
        assert found == starts, split
        for window, meta in got.values():
            s = position[np.datetime64(meta["start"], "ns").astype(int)]
            assert meta["start"] == meta["times"][0]  # one format (`start` had nanoseconds)
            np.testing.assert_array_equal(window, frames[s : s + 4])  # exact round trip
            assert (np.diff(times[s : s + 4]) == np.timedelta64(1, "h")).all()
            crossing_chunks += s // 20 != (s + 3) // 20
    assert crossing_chunks > 0  # windows do span consecutive chunk files
    assert read_index(tmp_path / "out" / "train").shape == [4, 1, 4, 4]


def test_series_step_is_the_usual_spacing_and_an_odd_time_is_a_gap(caplog):
    """Hourly times with one extra at 05:30: the step was the smallest spacing (30 min),
    every hourly one a gap, and the series was refused for want of windows. The step is
    the most common spacing: windows on either side, none across 05:30."""
    from stpdist.data.sources.series import plan_windows

    hours = np.datetime64("2020-01-01T00:00", "ns") + np.arange(12) * np.timedelta64(1, "h")
    times = np.sort(np.append(hours, np.datetime64("2020-01-01T05:30", "ns")))
    with caplog.at_level(logging.WARNING, logger="stpdist"):
        windows = plan_windows(times, 3, 1)
    assert (
        "series: 1 of 13 frames are in no window: they lie in runs shorter than --frames 3 "
        "at the series' step, 1h (its most common spacing" in caplog.text
    ), caplog.text
    starts = [w.start for w in windows]
    assert starts == [0, 1, 2, 3, 7, 8, 9, 10]  # 00…05 and 06…11, hourly
    for start in starts:
        assert (np.diff(times[start : start + 3]) == np.timedelta64(1, "h")).all()
    assert [w.start for w in plan_windows(times, 3, 1, step=np.timedelta64(30, "m"))] == [5]
    caplog.clear()  # frames without times, cut by clips (`--per-file`): no step to blame
    with caplog.at_level(logging.WARNING, logger="stpdist"):
        plan_windows(np.arange(23), 4, 4, clips=[10, 20])
    assert "in no window" not in caplog.text, caplog.text


def test_timestamps_with_an_offset_are_utc_without_numpys_warning():
    import warnings

    from stpdist.data.sources.series import as_times

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy's "no explicit representation of timezones"
        stamps = as_times(np.array(["2020-01-01T00:00+02:00", "2020-01-01T01:00Z"]), "x")
    assert stamps.tolist() == np.array(["2019-12-31T22:00", "2020-01-01T01:00"],
                                       "datetime64[ns]").tolist()  # fmt: skip


def test_series_one_file_without_timestamps_splits_by_frame_index(tmp_path):
    from stpdist.data.convert import convert
    from stpdist.data.sources.generic import GenericArrays

    series = np.random.default_rng(0).integers(0, 255, (30, 2, 4, 4), dtype=np.uint8)
    np.save(tmp_path / "long.npy", series)
    source = GenericArrays(
        str(tmp_path / "long.npy"), num_frames=5, stride=5, val_from="20", test_from="25"
    )
    indexes = convert(source, tmp_path / "out", progress=False)
    assert {k: v.num_samples for k, v in indexes.items()} == {"train": 4, "val": 1, "test": 1}
    got = stored(tmp_path / "out" / "val")
    ((window, meta),) = got.values()
    np.testing.assert_array_equal(window, series[20:25])
    assert indexes["val"].value_scale == 255


@pytest.mark.parametrize(
    "times, problem",
    [
        (["2020-01-01T00", "2020-01-01T02", "2020-01-01T01"], "times do not increase at frame 2"),
        (["2020-01-01T00", "x", "2020-01-01T01"], "timestamps are not dates"),
    ],
)
def test_series_bad_timestamps_name_the_file(tmp_path, times, problem):
    from stpdist.data.sources.generic import GenericArrays

    np.savez(tmp_path / "c.npz", data=np.zeros((3, 4, 4), np.float32), time=np.array(times))
    with pytest.raises(ValueError, match=problem) as info:
        GenericArrays(str(tmp_path / "c.npz"), num_frames=2, time_key="time").splits()
    assert "c.npz" in str(info.value)


# ------------------------------------------------------------------ netCDF / Zarr
def _grid(height: int = 8, width: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """A WeatherBench-like grid: cell-centre latitudes (ascending), longitudes from 0."""
    lat = -90 + (np.arange(height) + 0.5) * 180 / height
    lon = np.arange(width) * 360 / width
    return lat, lon


def weatherbench_folders(root: Path, years=(2000, 2001), steps: int = 16) -> dict:
    """WeatherBench 1 layout: `temperature/temperature_<year>_5.625deg.nc` with t(time,
    level, lat, lon) and `2m_temperature/2m_temperature_<year>_5.625deg.nc` with t2m(time,
    lat, lon), 6-hourly, one file a year. Returns the full arrays by name."""
    xr = pytest.importorskip("xarray")
    pytest.importorskip("h5netcdf")
    lat, lon = _grid()
    levels = np.array([500, 850], np.int32)
    rng = np.random.default_rng(1)
    full = {"t": [], "t2m": [], "time": []}
    # the first file holds the last days of its year: the record is continuous
    start = np.datetime64(f"{years[1]}-01-01T00:00", "ns") - steps * np.timedelta64(6, "h")
    for i, year in enumerate(years):
        time = start + (np.arange(steps) + i * steps) * np.timedelta64(6, "h")
        t = (250 + 20 * rng.random((steps, 2, len(lat), len(lon)))).astype(np.float32)
        t2m = (280 + 10 * rng.random((steps, len(lat), len(lon)))).astype(np.float32)
        for folder, name, data, dims, coords in (
            ("temperature", "t", t, ("time", "level", "lat", "lon"), {"level": levels}),
            ("2m_temperature", "t2m", t2m, ("time", "lat", "lon"), {}),
        ):
            ds = xr.Dataset(
                {name: (dims, data, {"units": "K"})},
                coords={"time": time, "lat": lat, "lon": lon, **coords},
            )
            (root / folder).mkdir(parents=True, exist_ok=True)
            ds.to_netcdf(root / folder / f"{folder}_{year}_5.625deg.nc", engine="h5netcdf")
        full["t"].append(t)
        full["t2m"].append(t2m)
        full["time"].append(time)
    return {k: np.concatenate(v) for k, v in full.items()}


def test_era5_from_the_current_cds_with_a_valid_time_dimension_converts(tmp_path):
    """The current CDS writes ERA5 with its time dimension named `valid_time`: refused as
    holding "no variable with dims (time, …, lat, lon)". It is read as `time`."""
    xr = pytest.importorskip("xarray")
    pytest.importorskip("h5netcdf")
    lat, lon = _grid()
    time = np.datetime64("2024-01-01T00:00", "ns") + np.arange(8) * np.timedelta64(1, "h")
    t2m = (280 + np.arange(8 * len(lat) * len(lon))).reshape(8, len(lat), len(lon))
    ds = xr.Dataset(
        {"t2m": (("valid_time", "latitude", "longitude"), t2m.astype(np.float32), {"units": "K"})},
        coords={"valid_time": time, "latitude": lat, "longitude": lon},
    )
    ds.to_netcdf(tmp_path / "era5.nc", engine="h5netcdf")
    from stpdist.cli import main

    code = main(["shard", "netcdf", str(tmp_path / "era5.nc"), "--vars", "t2m", "--frames",
                 "4", "--stride", "4", "--out", str(tmp_path / "ds")])  # fmt: skip
    assert code == 0
    samples = stored(tmp_path / "ds" / "train")
    assert len(samples) == 2
    frames, _ = samples[min(samples)]
    np.testing.assert_allclose(frames[:, 0], t2m[:4].astype(np.float32), rtol=1e-6)


def test_inspect_draws_ascending_latitude_maps_north_up(tmp_path, monkeypatch):
    """`inspect` drew WeatherBench 1 maps (south first) upside down, where training's and
    predict's pictures are north up."""
    from stpdist import cli
    from stpdist.cli import main

    full = weatherbench_folders(tmp_path / "wb", steps=8)
    assert main(["shard", "netcdf", str(tmp_path / "wb" / "2m_temperature"), "--vars", "t2m",
                 "--frames", "4", "--stride", "4", "--out", str(tmp_path / "ds")]) == 0  # fmt: skip
    drawn = []
    real = cli.save_stored_frames
    monkeypatch.setattr(cli, "save_stored_frames",
                        lambda out, samples, **kw: drawn.extend(samples) or real(out, samples, **kw))  # fmt: skip
    assert (
        main(["inspect", str(tmp_path / "ds"), "--samples", "1", "--out", str(tmp_path / "p")]) == 0
    )
    key, frames = drawn[0]
    first = int(np.flatnonzero(full["time"] == np.datetime64(
        f"{key[-12:-8]}-{key[-8:-6]}-{key[-6:-4]}T{key[-4:-2]}:{key[-2:]}", "ns"))[0])  # fmt: skip
    np.testing.assert_allclose(frames[0, 0], full["t2m"][first][::-1], rtol=1e-6)  # north row first


def test_weatherbench_netcdf_folders_round_trip(tmp_path):
    from stpdist.cli import main

    full = weatherbench_folders(tmp_path / "wb")
    code = main(
        [
            "shard", "netcdf", str(tmp_path / "wb" / "temperature"),
            str(tmp_path / "wb" / "2m_temperature"), "--out", str(tmp_path / "out"),
            "--vars", "t850,t2m", "--frames", "4", "--stride", "3",
            "--val-from", "2000-12-31T18:00", "--test-from", "2001-01-02T06:00", "--workers", "1",
        ]
    )  # fmt: skip
    assert code in (0, None)
    expected = np.stack([full["t"][:, 1], full["t2m"]], axis=1)  # T×2×H×W
    times = full["time"]
    index = read_index(tmp_path / "out" / "train")
    assert index.variables == [{"name": "t850", "units": "K"}, {"name": "t2m", "units": "K"}]
    np.testing.assert_allclose(index.latitudes, _grid()[0])
    assert len(index.longitudes) == 16 and index.value_scale == 1.0
    across_years = 0
    train_steps: set[int] = set()
    for split in ("train", "val", "test"):
        for window, meta in stored(tmp_path / "out" / split).values():
            s = int(np.flatnonzero(times == np.datetime64(meta["start"], "ns"))[0])
            assert meta["start"] == meta["times"][0]  # one format (`start` had nanoseconds)
            np.testing.assert_array_equal(window, expected[s : s + 4])  # exact
            across_years += s < 16 <= s + 3
            if split == "train":
                train_steps.update(range(s, s + 4))
    assert across_years == 1  # one window reads two yearly files
    clim = np.load(tmp_path / "out" / "train" / "climatology.npy")
    # the time mean of the train steps, each once (windows overlap by a frame: --stride 3)
    train = expected[sorted(train_steps)]
    np.testing.assert_allclose(clim, train.mean(axis=0), rtol=1e-6)
    from stpdist.data.sources.netcdf import XarraySource

    with pytest.raises(ValueError, match="missing variable 'q700'"):
        XarraySource([str(tmp_path / "wb" / "temperature")], var_specs="q700").splits()
    with pytest.raises(ValueError, match="has no level 300"):
        XarraySource([str(tmp_path / "wb" / "temperature")], var_specs="t300").splits()


def weatherbench2_zarr(path: Path, steps: int = 40, gap_after: int = 20, nan_at=None) -> dict:
    """WeatherBench 2 / ERA5 layout: one Zarr store, `2m_temperature(time, latitude,
    longitude)` and `geopotential(time, level, latitude, longitude)`, 6-hourly, with a
    12-hour gap after frame `gap_after`."""
    xr = pytest.importorskip("xarray")
    pytest.importorskip("zarr")
    lat, lon = _grid()
    time = np.datetime64("2020-01-01", "ns") + np.arange(steps) * np.timedelta64(6, "h")
    time[gap_after:] += np.timedelta64(12, "h")
    rng = np.random.default_rng(2)
    z = (50_000 + 1_000 * rng.standard_normal((steps, 3, len(lat), len(lon)))).astype(np.float32)
    t2m = (280 + 10 * rng.random((steps, len(lat), len(lon)))).astype(np.float32)
    if nan_at is not None:
        t2m[nan_at] = np.nan
    ds = xr.Dataset(
        {
            "geopotential": (("time", "level", "latitude", "longitude"), z, {"units": "m2 s-2"}),
            "2m_temperature": (("time", "latitude", "longitude"), t2m, {"units": "K"}),
        },
        coords={
            "time": time,
            "level": np.array([250, 500, 850], np.int64),
            "latitude": lat,
            "longitude": lon,
        },
    )
    chunks = {
        "geopotential": {"chunks": (8, 3, len(lat), len(lon))},
        "2m_temperature": {"chunks": (8, len(lat), len(lon))},
    }
    ds.to_zarr(path, encoding=chunks, consolidated=False)
    return {"z": z, "t2m": t2m, "time": time}


def test_zarr_store_windows_skip_the_gap_and_read_in_bounded_blocks(tmp_path, monkeypatch):
    from stpdist.data.convert import convert
    from stpdist.data.sources import netcdf

    full = weatherbench2_zarr(tmp_path / "era5.zarr")
    reads = []
    original = netcdf.XarraySource._read

    def spy(self, channel, first, stop):
        reads.append(stop - first)
        return original(self, channel, first, stop)

    monkeypatch.setattr(netcdf.XarraySource, "_read", spy)
    source = netcdf.XarraySource(
        [str(tmp_path / "era5.zarr")],
        var_specs=["geopotential", "2m_temperature"],
        levels=[500],
        num_frames=3,
        stride=1,
        block_frames=4,  # the archive is 10× this
    )
    indexes = convert(source, tmp_path / "out", progress=False)
    assert [v["name"] for v in indexes["train"].variables] == ["geopotential500", "2m_temperature"]
    assert max(reads) <= 4
    got = stored(tmp_path / "out" / "train")
    assert len(got) == (20 - 2) + (20 - 2)  # no window across the gap after frame 20
    for window, meta in got.values():
        s = int(np.flatnonzero(full["time"] == np.datetime64(meta["start"], "ns"))[0])
        assert not s < 20 < s + 3
        np.testing.assert_array_equal(window[:, 0], full["z"][s : s + 3, 1])
        np.testing.assert_array_equal(window[:, 1], full["t2m"][s : s + 3])


def test_netcdf_bad_inputs_are_one_line_naming_the_file(tmp_path):
    xr = pytest.importorskip("xarray")
    pytest.importorskip("h5netcdf")
    from stpdist.data.convert import convert
    from stpdist.data.sources.netcdf import XarraySource

    weatherbench2_zarr(tmp_path / "nan.zarr", steps=8, gap_after=8, nan_at=(5, 2, 3))
    source = XarraySource([str(tmp_path / "nan.zarr")], var_specs="2m_temperature", num_frames=2)
    with pytest.raises(ValueError, match=r"nan\.zarr .*holds nan .*--allow-nan"):
        convert(source, tmp_path / "out", progress=False)
    source = XarraySource([str(tmp_path / "nan.zarr")], var_specs="2m_temperature", num_frames=2)
    index = convert(source, tmp_path / "out", progress=False, nan_fill=0.0)["train"]
    assert index.num_samples == 7 and index.min[0] >= 280  # the fill 0 is no value of t2m
    bad = xr.Dataset(
        {"x": (("time", "y"), np.zeros((2, 3), np.float32))},
        coords={"time": np.array(["2020-01-01", "2020-01-02"], "datetime64[ns]")},
    )
    bad.to_netcdf(tmp_path / "bad.nc", engine="h5netcdf")
    with pytest.raises(ValueError, match=r"bad\.nc: variable 'x' has dims \('time', 'y'\)"):
        XarraySource([str(tmp_path / "bad.nc")], var_specs="x").splits()
    # a weather review: a radar's projected grid, refused with no word of what reads it
    y, x = np.meshgrid(np.arange(3.0), np.arange(4.0), indexing="ij")
    radar = xr.Dataset(
        {"dbz": (("time", "y", "x"), np.zeros((2, 3, 4), np.float32))},
        coords={"time": np.array(["2020-01-01", "2020-01-02"], "datetime64[ns]"),
                "lat": (("y", "x"), 50 + y), "lon": (("y", "x"), 5 + x)},
    )  # fmt: skip
    radar.to_netcdf(tmp_path / "radar.nc", engine="h5netcdf")
    with pytest.raises(ValueError, match=r"a projected grid: lat, lon are 2-D, over y, x; .*"
                                         r"convert them with `stpdist shard arrays"):  # fmt: skip
        XarraySource([str(tmp_path / "radar.nc")], var_specs="dbz").splits()
    # a weather review: said with numpy's nanoseconds, naming no flag
    swapped = XarraySource([str(tmp_path / "nan.zarr")], var_specs="2m_temperature",
                           num_frames=2, val_from="2020-01-05", test_from="2020-01-03")  # fmt: skip
    with pytest.raises(ValueError) as refused:
        swapped.splits()
    assert str(refused.value) == (
        "--test-from 2020-01-03T00:00 is before --val-from 2020-01-05T00:00: the test split "
        "must start after the validation split"
    )


def weatherbench1_single_levels(root: Path, steps: int = 8) -> dict:
    """WeatherBench 1's single-level folders: `geopotential_500/geopotential_500_<year>_
    5.625deg.nc` holds z(time, lat, lon) with a scalar coordinate `level = 500`,
    `temperature_850/…` t(time, lat, lon) with `level = 850`; 6-hourly, one file a year."""
    xr = pytest.importorskip("xarray")
    pytest.importorskip("h5netcdf")
    lat, lon = _grid()
    rng = np.random.default_rng(5)
    start = np.datetime64("2001-01-01T00:00", "ns") - steps * np.timedelta64(6, "h")
    time = start + np.arange(2 * steps) * np.timedelta64(6, "h")
    z = (54_000 + 3_000 * rng.random((2 * steps, len(lat), len(lon)))).astype(np.float32)
    t = (270 + 10 * rng.random((2 * steps, len(lat), len(lon)))).astype(np.float32)
    for folder, name, data, level, units in (
        ("geopotential_500", "z", z, 500, "m**2 s**-2"),
        ("temperature_850", "t", t, 850, "K"),
    ):
        (root / folder).mkdir(parents=True)
        for i, year in enumerate((2000, 2001)):
            part = slice(i * steps, (i + 1) * steps)
            ds = xr.Dataset(
                {name: (("time", "lat", "lon"), data[part], {"units": units})},
                coords={"time": time[part], "lat": lat, "lon": lon, "level": np.int64(level)},
            )
            ds.to_netcdf(root / folder / f"{folder}_{year}_5.625deg.nc", engine="h5netcdf")
    return {"z": z, "t": t, "time": time}


def test_weatherbench1_single_level_folders_take_the_guides_names(tmp_path):
    """`--vars z500,t850` on `geopotential_500/` and `temperature_850/` (z and t at scalar
    levels) said "missing variable 'z500' (found ['t', 'z'])": the guide's headline command."""
    from stpdist.data.convert import convert
    from stpdist.data.sources.netcdf import XarraySource

    full = weatherbench1_single_levels(tmp_path / "wb1")
    folders = [str(tmp_path / "wb1" / f) for f in ("geopotential_500", "temperature_850")]
    source = XarraySource(folders, var_specs="z500,t850", num_frames=4, stride=4)
    index = convert(source, tmp_path / "out", progress=False)["train"]
    assert index.variables == [
        {"name": "z500", "units": "m**2 s**-2"}, {"name": "t850", "units": "K"}
    ]  # fmt: skip
    got = stored(tmp_path / "out" / "train")
    assert len(got) == 4  # 16 steps, two files each
    for window, meta in got.values():
        s = int(np.flatnonzero(full["time"] == np.datetime64(meta["start"], "ns"))[0])
        np.testing.assert_array_equal(window[:, 0], full["z"][s : s + 4])
        np.testing.assert_array_equal(window[:, 1], full["t"][s : s + 4])
    # the variable by its own name: its one level, named as asked; with --levels by level
    for specs, levels, names in (("z,t", None, ["z", "t"]), ("z", [500.0], ["z500"])):
        named = XarraySource(folders, var_specs=specs, levels=levels)
        named.splits()
        assert [c.name for c in named.channels] == names
    found = "(found t850 (t at level 850), z500 (z at level 500))"
    with pytest.raises(ValueError, match=re.escape(f"missing variable 'q700' {found}")):
        XarraySource(folders, var_specs="q700").splits()
    with pytest.raises(ValueError, match="variable 'z' is held at no level 700, only as z500"):
        XarraySource(folders, var_specs="z700").splits()
    with pytest.raises(ValueError, match="variable 't' has no level 500 .held as t850."):
        XarraySource(folders, var_specs="t", levels=[500.0]).splits()


def _windows_by_hand(series_TCHW: np.ndarray, starts, num_frames: int, folder: Path, **kwargs):
    """The index of a split written from these windows with no series position in their
    metadata: every window's frames counted, as the writer always did."""
    with SplitWriter(folder, "train", value_scale=1.0, **kwargs) as writer:
        for s in starts:
            writer.write(f"w{s:04d}", np.ascontiguousarray(series_TCHW[s : s + num_frames]))
    return read_index(folder)


def t2m_file(path: Path, t2m_THW: np.ndarray, time_attrs: dict | None = None) -> None:
    """One netCDF file of t2m(time, lat, lon), 6-hourly from 2020-01-01; `time_attrs`: a
    `time` of plain numbers 0, 6, 12, … with these attributes (units, calendar) instead."""
    xr = pytest.importorskip("xarray")
    pytest.importorskip("h5netcdf")
    steps, height, width = t2m_THW.shape
    lat, lon = _grid(height, width)
    time = np.datetime64("2020-01-01", "ns") + np.arange(steps) * np.timedelta64(6, "h")
    if time_attrs is not None:
        time = xr.Variable(("time",), np.arange(steps) * 6.0, time_attrs)
    xr.Dataset(
        {"t2m": (("time", "lat", "lon"), t2m_THW, {"units": "K"})},
        coords={"time": time, "lat": lat, "lon": lon},
    ).to_netcdf(path, engine="h5netcdf")


def test_overlapping_windows_count_each_time_step_once_in_the_statistics(tmp_path):
    """--stride 1 --frames 4 counted a middle step 4 times, the first once: the climatology
    (ACC's reference) and mean/std/min/max weighed the series by window overlap. Windows
    that do not overlap give exactly the statistics every window's frames give."""
    from stpdist.data.convert import convert
    from stpdist.data.sources.netcdf import XarraySource

    series = (280 + 10 * np.random.default_rng(8).random((16, 1, 6, 8))).astype(np.float32)
    series[:2] += 40  # the first steps, in fewer windows, stand out: a weighting shows
    t2m_file(tmp_path / "t2m.nc", series[:, 0])

    def converted(stride: int, out: str):
        source = XarraySource([str(tmp_path / "t2m.nc")], var_specs="t2m", num_frames=4)
        source.stride = stride
        return convert(source, tmp_path / out, progress=False)["train"]

    index = converted(1, "overlap")  # windows at 0…12: every step, the first ones fewer times
    steps = series.astype(np.float64)
    np.testing.assert_allclose(index.mean, [steps.mean()], rtol=1e-12)
    np.testing.assert_allclose(index.std, [steps.std()], rtol=1e-9)
    assert (index.min, index.max) == ([float(steps.min())], [float(steps.max())])
    clim = np.load(tmp_path / "overlap" / "train" / "climatology.npy")
    np.testing.assert_allclose(clim, steps.mean(axis=0), rtol=1e-6)
    # no overlap: bitwise the statistics of all the windows' frames, as before
    index = converted(4, "apart")
    by_hand = _windows_by_hand(series, range(0, 16, 4), 4, tmp_path / "hand", climatology=True)
    assert (index.mean, index.std, index.min, index.max) == (
        by_hand.mean, by_hand.std, by_hand.min, by_hand.max
    )  # fmt: skip
    np.testing.assert_array_equal(
        np.load(tmp_path / "apart" / "train" / "climatology.npy"),
        np.load(tmp_path / "hand" / "climatology.npy"),
    )


def test_overlapping_array_series_windows_count_each_frame_once(tmp_path):
    """`shard arrays` series mode feeds the same statistics: --stride 1 --frames 5."""
    from stpdist.data.convert import convert
    from stpdist.data.sources.generic import GenericArrays

    series = np.random.default_rng(3).random((12, 2, 4, 4)).astype(np.float32)
    series[0] += 1.0  # in one window only
    np.save(tmp_path / "long.npy", series)
    source = GenericArrays(str(tmp_path / "long.npy"), num_frames=5, stride=1, value_scale=4.0)
    index = convert(source, tmp_path / "out", progress=False)["train"]
    assert index.num_samples == 8
    scaled = series.astype(np.float64) / 4
    np.testing.assert_allclose(index.mean, scaled.mean(axis=(0, 2, 3)), rtol=1e-12)
    np.testing.assert_allclose(index.std, scaled.std(axis=(0, 2, 3)), rtol=1e-9)
    stats = {int(m["series_index"]) for _, m in stored(tmp_path / "out" / "train").values()}
    assert stats == set(range(8))  # each window names its first frame in the series


def sea_surface(path: Path, steps: int = 10) -> np.ndarray:
    """sst(time, lat, lon) ~290 ± 3 K with NaN over land (rows 0–1, columns 0–2, always)
    and at one sea pixel at step 6: what `--allow-nan FILL` fills."""
    xr = pytest.importorskip("xarray")
    pytest.importorskip("h5netcdf")
    lat, lon = _grid(6, 8)
    sst = 290 + 3 * np.random.default_rng(6).standard_normal((steps, 6, 8))
    sst[:, :2, :3] = np.nan
    sst[6, 4, 5] = np.nan
    time = np.datetime64("2020-01-01", "ns") + np.arange(steps) * np.timedelta64(6, "h")
    ds = xr.Dataset(
        {"sst": (("time", "lat", "lon"), sst.astype(np.float32), {"units": "K"})},
        coords={"time": time, "lat": lat, "lon": lon},
    )
    ds["sst"].encoding["_FillValue"] = -9999.0  # stored masked, read back as NaN
    ds.to_netcdf(path, engine="h5netcdf")
    return sst.astype(np.float32)


def test_filled_nan_stays_out_of_the_statistics_and_the_climatology(tmp_path):
    """Land filled with 0 made an SST index of mean 281.5, std 49 (the field's std is ~3 K)
    and a climatology of 0 over land that also pulled the coast down. Filled values count
    nowhere; a pixel never valid has the fill as its climatology. The fill is still what
    the shards hold (trained on and scored as data)."""
    from stpdist.data.convert import convert
    from stpdist.data.sources.netcdf import XarraySource

    sst = sea_surface(tmp_path / "sst.nc")
    source = XarraySource([str(tmp_path / "sst.nc")], var_specs="sst", num_frames=5, stride=5)
    index = convert(source, tmp_path / "out", progress=False, nan_fill=0.0)["train"]
    sea = sst[~np.isnan(sst)].astype(np.float64)
    np.testing.assert_allclose(index.mean, [sea.mean()], rtol=1e-12)
    np.testing.assert_allclose(index.std, [sea.std()], rtol=1e-9)
    assert (index.min, index.max) == ([float(sea.min())], [float(sea.max())])
    clim = np.load(tmp_path / "out" / "train" / "climatology.npy")[0]
    land = np.isnan(sst).all(axis=0)
    expected = np.where(land, 0.0, np.nanmean(np.where(land, 0.0, sst), axis=0))
    np.testing.assert_allclose(clim, expected, rtol=1e-6)  # (4, 5): the mean of 9 steps
    frames = np.concatenate([w for w, _ in stored(tmp_path / "out" / "train").values()])
    assert (frames[:, 0, :2, :3] == 0).all()  # stored as the fill


@pytest.mark.filterwarnings("ignore:saving variable t2m with floating point data")
@pytest.mark.parametrize("packed", [False, True])
def test_values_outside_a_cf_valid_range_are_missing(tmp_path, caplog, packed):
    """A -9999 marked missing by `valid_min`/`valid_max` alone (no _FillValue) was
    converted as data: the statistics' mean 199.7 and std 905 of a field of 280 K. Values
    outside a CF valid range are missing: refused as NaN, or filled and left out of the
    statistics with --allow-nan; a packed variable's range is in its packed units."""
    xr = pytest.importorskip("xarray")
    pytest.importorskip("h5netcdf")
    from stpdist.data.convert import convert
    from stpdist.data.sources.netcdf import XarraySource
    from stpdist.errors import InputError

    lat, lon = _grid(4, 6)
    t2m = 280 + np.random.default_rng(3).standard_normal((8, 4, 6)).astype(np.float32)
    t2m = np.round(t2m, 1)  # exact in packed units of 0.1 K
    t2m[5, 2, 3] = -9999.0
    time = np.datetime64("2020-01-01", "ns") + np.arange(8) * np.timedelta64(6, "h")
    var = xr.Variable(("time", "lat", "lon"), t2m, {"units": "K"})
    ds = xr.Dataset({"t2m": var}, coords={"time": time, "lat": lat, "lon": lon})
    if packed:  # int16 in 0.1 K: valid 0…400 K is 0…4000 packed
        ds["t2m"].attrs["valid_range"] = np.array([0, 4000], np.int16)
        ds["t2m"].encoding.update(dtype="int16", scale_factor=0.1, add_offset=0.0)
    else:
        ds["t2m"].attrs.update(valid_min=0.0, valid_max=400.0)
    ds.to_netcdf(tmp_path / "t.nc", engine="h5netcdf")

    def source() -> XarraySource:
        return XarraySource([str(tmp_path / "t.nc")], var_specs="t2m", num_frames=4, stride=4)

    with caplog.at_level(logging.WARNING, logger="stpdist"):
        with pytest.raises(InputError, match=r"holds nan at .*\(--allow-nan FILL"):
            convert(source(), tmp_path / "refused", progress=False)
    assert "'t2m' has a valid range (0 … 400): values outside it are missing" in caplog.text
    index = convert(source(), tmp_path / "out", progress=False, nan_fill=0.0)["train"]
    valid = t2m[t2m > -9999].astype(np.float64)
    np.testing.assert_allclose(index.mean, [valid.mean()], rtol=1e-6)
    np.testing.assert_allclose(index.std, [valid.std()], rtol=1e-3)
    assert index.min == [pytest.approx(float(valid.min()), abs=1e-3)]


def test_a_float64_variable_beyond_float32_is_refused_as_such(tmp_path):
    xr = pytest.importorskip("xarray")
    pytest.importorskip("h5netcdf")
    from stpdist.data.convert import convert
    from stpdist.data.sources.netcdf import XarraySource
    from stpdist.errors import InputError

    lat, lon = _grid(4, 6)
    values = np.ones((4, 4, 6))
    values[1, 2, 3] = 1e39
    time = np.datetime64("2020-01-01", "ns") + np.arange(4) * np.timedelta64(6, "h")
    ds = xr.Dataset({"v": (("time", "lat", "lon"), values)},
                    coords={"time": time, "lat": lat, "lon": lon})  # fmt: skip
    ds.to_netcdf(tmp_path / "big.nc", engine="h5netcdf")
    source = XarraySource([str(tmp_path / "big.nc")], var_specs="v", num_frames=2, stride=2)
    with pytest.raises(
        InputError,
        match=r"variable 'v' at 2020-01-01T06:00 holds 1e\+39 at \(y, x\) = \(2, 3\), "
        r"beyond float32's range",
    ):
        convert(source, tmp_path / "out", progress=False)
    # the same value outside the variable's valid range is a missing value: filled (a diff
    # review: the float32 check came first and refused it)
    ds["v"].attrs["valid_max"] = 100.0
    ds.to_netcdf(tmp_path / "marked.nc", engine="h5netcdf")
    source = XarraySource([str(tmp_path / "marked.nc")], var_specs="v", num_frames=2, stride=2)
    index = convert(source, tmp_path / "out", progress=False, nan_fill=0.0)["train"]
    assert index.max == [1.0]
    # float64 values exactly at a bound float32 cannot hold (273.15) are inside: kept (a
    # diff review: the bound rounded to float32 masked them)
    values = np.full((4, 4, 6), 250.0)
    values[1, 2, 3] = 273.15
    ds = xr.Dataset({"t": (("time", "lat", "lon"), values, {"valid_min": 250.0,
                                                           "valid_max": 273.15})},
                    coords={"time": time, "lat": lat, "lon": lon})  # fmt: skip
    ds.to_netcdf(tmp_path / "ends.nc", engine="h5netcdf")
    source = XarraySource([str(tmp_path / "ends.nc")], var_specs="t", num_frames=2, stride=2)
    index = convert(source, tmp_path / "ends", progress=False)["train"]  # no NaN: no refusal
    assert index.max == [pytest.approx(273.15)]


@pytest.mark.filterwarnings("ignore:saving variable tcc with floating point data")
def test_packed_values_at_the_ends_of_their_valid_range_are_data(tmp_path):
    """Cloud cover 0…1 packed as int16 with a float32 scale and valid_range ±32767 (the
    range's ends are its data's ends): xarray's float32 unpacking of 0 and 1 rounds past
    the bounds computed in float64, and the first form of the range check made those clear
    and overcast pixels NaN (a diff review). The range is inclusive."""
    xr = pytest.importorskip("xarray")
    pytest.importorskip("h5netcdf")
    from stpdist.data.convert import convert
    from stpdist.data.sources.netcdf import XarraySource

    lat, lon = _grid(4, 6)
    tcc = np.random.default_rng(4).random((4, 4, 6)).astype(np.float32)
    tcc[:, 0, :3], tcc[:, 1, :3] = 0.0, 1.0  # the range's ends
    time = np.datetime64("2020-01-01", "ns") + np.arange(4) * np.timedelta64(6, "h")
    ds = xr.Dataset({"tcc": (("time", "lat", "lon"), tcc)},
                    coords={"time": time, "lat": lat, "lon": lon})  # fmt: skip
    ds["tcc"].attrs["valid_range"] = np.array([-32767, 32767], np.int16)
    ds["tcc"].encoding.update(dtype="int16", scale_factor=np.float32(1 / 65534),
                              add_offset=np.float32(0.5))  # fmt: skip
    ds.to_netcdf(tmp_path / "tcc.nc", engine="h5netcdf")
    source = XarraySource([str(tmp_path / "tcc.nc")], var_specs="tcc", num_frames=2, stride=2)
    index = convert(source, tmp_path / "out", progress=False)["train"]  # no NaN: no refusal
    assert index.min == [pytest.approx(0.0, abs=1e-4)] and index.max == [
        pytest.approx(1.0, abs=1e-4)
    ]


def test_statistics_of_masked_and_unmasked_samples_together():
    """Samples without NaN (no mask) and with (a mask) in one split, and a channel that is
    fill everywhere: its statistics are the fill's."""
    from stpdist.data.format import StatsAccumulator

    rng = np.random.default_rng(7)
    frames = rng.random((3, 2, 2, 3, 3))  # 3 samples T×C×H×W = 2×2×3×3
    valid = np.ones(frames.shape, bool)
    valid[1, :, 0, 0, 0] = False  # one pixel of channel 0 in sample 1
    valid[1:, :, 1] = False  # channel 1: only sample 0 is valid…
    frames[1:, :, 1] = -5.0  # …the rest is fill
    stats = StatsAccumulator(per_pixel=True)
    for i in range(3):
        stats.add(frames[i], 2.0, valid=None if valid[i].all() else valid[i])
    scaled = frames / 2.0
    for c in range(2):
        kept = scaled[:, :, c][valid[:, :, c]]
        mean, std = stats.result()
        low, high = stats.range()
        assert mean[c] == pytest.approx(kept.mean(), rel=1e-12)
        assert std[c] == pytest.approx(kept.std(), rel=1e-9)
        assert (low[c], high[c]) == (kept.min(), kept.max())
    clim = stats.climatology()
    counts = valid.sum(axis=(0, 1))
    expected = np.where(valid, scaled, 0).sum(axis=(0, 1)) / counts
    np.testing.assert_allclose(clim, expected, rtol=1e-6)
    never = StatsAccumulator(per_pixel=True)  # nothing but fill
    never.add(np.full((2, 2, 3, 3), -5.0), 2.0, valid=np.zeros((2, 2, 3, 3), bool))
    assert never.result() == ([-2.5, -2.5], [0.0, 0.0])
    assert never.range() == ([-2.5, -2.5], [-2.5, -2.5])
    np.testing.assert_array_equal(never.climatology(), np.full((2, 3, 3), -2.5, np.float32))


@pytest.mark.parametrize(
    "attrs, why",
    [
        ({"units": "hours"}, "units 'hours' has no reference date"),
        ({}, "it has no units"),
        (
            {"units": "months since 2000-01-01"},  # xarray: "… or installing cftime"
            "units 'months since 2000-01-01' cannot be read as dates of the standard calendar",
        ),
    ],
)
def test_a_time_of_numbers_that_are_not_dates_is_refused(tmp_path, attrs, why):
    """`units = "hours"` (no reference date) converted as nanoseconds after 1970: keys
    `w1970…`, windows 6 ns apart; xarray's advice for undecodable units was about cftime."""
    from stpdist.data.sources.netcdf import XarraySource

    t2m_file(tmp_path / "t.nc", np.zeros((8, 4, 4), np.float32), attrs)
    with pytest.raises(ValueError) as refused:
        XarraySource([str(tmp_path / "t.nc")], var_specs="t2m", num_frames=2).splits()
    assert str(refused.value).startswith(
        f"{tmp_path / 't.nc'}: coordinate 'time': time values are not dates: {why}; give it "
        "CF units '<unit> since <date>'"
    )


def test_array_series_times_that_are_numbers_are_refused(tmp_path):
    from stpdist.data.sources.generic import GenericArrays

    np.savez(tmp_path / "c.npz", data=np.zeros((3, 4, 4), np.float32), time=np.arange(3) * 6)
    with pytest.raises(
        ValueError, match=r"c\.npz: time values are not dates: numbers \(0, 6, 12\)"
    ):
        GenericArrays(str(tmp_path / "c.npz"), num_frames=2, time_key="time").splits()


@pytest.mark.parametrize("calendar", ["noleap", "360_day", "all_leap", "julian"])
def test_a_non_standard_calendar_is_refused_naming_it(tmp_path, calendar):
    """xarray's own message advised decode_times=False or installing cftime: nothing a
    stpdist user can act on (and with cftime, 'noleap' dates were read as real ones)."""
    from stpdist.data.sources.netcdf import XarraySource

    attrs = {"units": "hours since 2015-01-01", "calendar": calendar}
    t2m_file(tmp_path / "t.nc", np.zeros((8, 4, 4), np.float32), attrs)
    with pytest.raises(ValueError) as refused:
        XarraySource([str(tmp_path / "t.nc")], var_specs="t2m", num_frames=2).splits()
    message = str(refused.value)
    assert message.startswith(
        f"{tmp_path / 't.nc'}: coordinate 'time' has calendar '{calendar}', and stpdist "
        "orders and splits data by real dates"
    )
    assert "convert_calendar('standard'" in message and "\n" not in message
    assert "decode_times" not in message


def test_cftime_dates_of_another_calendar_are_refused():
    """With cftime installed xarray decodes a 'noleap' time to cftime dates (which carry
    their calendar); those are refused as the undecoded ones are."""
    xr = pytest.importorskip("xarray")
    from stpdist.data.sources.netcdf import _times

    class NoLeapDate:  # what cftime.DatetimeNoLeap tells of itself
        calendar = "noleap"

    ds = xr.Dataset(coords={"time": np.array([NoLeapDate(), NoLeapDate()], dtype=object)})
    with pytest.raises(ValueError, match=r"^f\.nc: coordinate 'time' has calendar 'noleap'"):
        _times("f.nc", ds)


@pytest.mark.parametrize("duplicate", [False, True])
def test_overlapping_or_duplicated_yearly_files_are_named(tmp_path, duplicate):
    """It said "a_2015.nc and 2 more files: times do not increase at frame 24": the first
    file, not the one whose times go back."""
    xr = pytest.importorskip("xarray")
    pytest.importorskip("h5netcdf")
    from stpdist.data.sources.netcdf import XarraySource

    lat, lon = _grid(4, 4)
    six = np.timedelta64(6, "h")
    first = np.datetime64("2015-01-01", "ns")
    starts = {"a_2015.nc": first, "b_2015dup.nc": first if duplicate else first + 20 * six,
              "c_2016.nc": np.datetime64("2016-01-01", "ns")}  # fmt: skip
    for name, start in starts.items():
        xr.Dataset(
            {"t2m": (("time", "lat", "lon"), np.zeros((24, 4, 4), np.float32))},
            coords={"time": start + np.arange(24) * six, "lat": lat, "lon": lon},
        ).to_netcdf(tmp_path / name, engine="h5netcdf")
    with pytest.raises(ValueError) as refused:
        XarraySource([str(tmp_path)], var_specs="t2m", num_frames=4).splits()
    a, b = tmp_path / "a_2015.nc", tmp_path / "b_2015dup.nc"
    went_back = "2015-01-01T00:00" if duplicate else "2015-01-06T00:00"
    relation = f"holds the same times as {a}" if duplicate else f"overlaps {a}"
    assert str(refused.value) == (
        f"{b}: times go back: it starts at {went_back}, before the end of {a} "
        f"(2015-01-06T18:00); it {relation}: remove the duplicate file, or the overlapping "
        "time steps from one of them"
    )


# ------------------------------------------------------------------ verification scores
def test_latitude_weights_are_cos_lat_with_mean_one():
    from stpdist.metrics import latitude_weights

    lat = _grid(32, 64)[0]
    w = latitude_weights(lat)
    np.testing.assert_allclose(w, np.cos(np.deg2rad(lat)) / np.cos(np.deg2rad(lat)).mean())
    assert w.mean() == pytest.approx(1.0)


def _forecasts(seed: int = 3, b: int = 5, t: int = 3, c: int = 2, h: int = 12, w: int = 16):
    rng = np.random.default_rng(seed)
    target = rng.random((b, t, c, h, w))
    pred = np.clip(target + 0.3 * rng.standard_normal(target.shape), 0, 1)
    return pred, target


def _sums_in_two_halves(fn, pred, target, *args):
    """Sums of the first and second half of the batch added: additive like two ranks."""
    a = fn(torch.from_numpy(pred[:2]), torch.from_numpy(target[:2]), *args)
    b = fn(torch.from_numpy(pred[2:]), torch.from_numpy(target[2:]), *args)
    out = {k: a[k] + b[k] for k in a}
    out["count"] = torch.tensor([float(len(pred))], dtype=torch.float64)
    return out


def test_per_variable_rmse_weighted_rmse_and_acc_match_numpy():
    from stpdist.metrics import GeoInfo, geo_sums, latitude_weights, summarize_geo

    pred, target = _forecasts()
    lat = _grid(12, 16)[0]
    clim = target.mean(axis=(0, 1)) + 0.05  # C×H×W
    geo = GeoInfo(["z500", "t2m"], 12, 16, latitudes=list(lat), climatology=clim)
    scale = 1000.0
    got = summarize_geo(_sums_in_two_halves(geo_sums, pred, target, geo), geo, scale)
    w = latitude_weights(lat)[None, :, None]
    for c, name in enumerate(["z500", "t2m"]):
        for t in range(3):
            err = pred[:, t, c] - target[:, t, c]
            lead = f"/t{t + 1:02d}"
            assert got[f"rmse/{name}{lead}"] == pytest.approx(np.sqrt((err**2).mean()) * scale)
            assert got[f"mae/{name}{lead}"] == pytest.approx(np.abs(err).mean() * scale)
            wrmse = np.sqrt((w * err**2).mean()) * scale
            assert got[f"wrmse/{name}{lead}"] == pytest.approx(wrmse)
            fa, oa = pred[:, t, c] - clim[c], target[:, t, c] - clim[c]
            acc = [
                (w * fa[i] * oa[i]).sum() / np.sqrt((w * fa[i] ** 2).sum() * (w * oa[i] ** 2).sum())
                for i in range(len(pred))
            ]
            assert got[f"acc/{name}{lead}"] == pytest.approx(np.mean(acc))


def test_acc_only_with_a_climatology_file_beside_the_index(tmp_path):
    """The module built for a dataset scores ACC against the climatology stored beside the
    train index, and reports no ACC when that file is absent or was never written."""
    from stpdist import build

    data = two_variable_series(6)
    variables = [{"name": "z500", "units": "m2 s-2"}, {"name": "t2m", "units": "K"}]
    inputs, targets = torch.from_numpy(data[:, :2]), torch.from_numpy(data[:, 2:])

    def reported(root: Path) -> set[str]:
        cfg = load_config(
            DEBUG,
            [
                f"data.root={root}", "data.synthesize=null", "data.normalize=standardize",
                "data.num_input_frames=2", "data.num_output_frames=2",
                "model.name=test_weather:CopyLast", "model.patch_size=1", "model.backbone={}",
            ],
        )  # fmt: skip
        module = build.build_module(cfg).eval()
        with torch.no_grad():
            keys = module.metrics_from_sums(module.validation_step(inputs, targets)["sums"])
        return {k for k in keys if k.startswith("acc/")}

    with_clim = write_split(tmp_path / "a", "train", data, variables=variables, climatology=True)
    np.testing.assert_allclose(
        np.load(with_clim / "climatology.npy"), data.mean(axis=(0, 1)), rtol=1e-5
    )
    assert reported(tmp_path / "a") == {
        f"acc/{v}{lead}" for v in ("z500", "t2m") for lead in ("", "/t01", "/t02")
    }
    (with_clim / "climatology.npy").unlink()  # the index still names it: no file, no ACC
    assert reported(tmp_path / "a") == set()
    write_split(tmp_path / "b", "train", data, variables=variables)  # never written
    assert read_index(tmp_path / "b" / "train").climatology == ""
    assert reported(tmp_path / "b") == set()


def _pooled_numpy(events: np.ndarray, p: int) -> np.ndarray:
    """Max over non-overlapping p×p blocks (partial blocks at the edges), …×H×W."""
    h, w = events.shape[-2:]
    hp, wp = -(-h // p) * p, -(-w // p) * p
    padded = np.zeros(events.shape[:-2] + (hp, wp), bool)
    padded[..., :h, :w] = events
    blocks = padded.reshape(events.shape[:-2] + (hp // p, p, wp // p, p))
    return blocks.max(axis=(-3, -1))


def _fractions_numpy(events: np.ndarray, n: int) -> np.ndarray:
    h, w = events.shape[-2:]
    pad = n // 2
    padded = np.zeros(events.shape[:-2] + (h + 2 * pad, w + 2 * pad))
    padded[..., pad : pad + h, pad : pad + w] = events
    out = np.zeros(events.shape)
    for i in range(h):
        for j in range(w):
            out[..., i, j] = padded[..., i : i + n, j : j + n].sum(axis=(-2, -1)) / n**2
    return out


def test_csi_m_pooled_csi_and_fss_match_numpy():
    from stpdist.metrics import batch_sums, neighbourhood_sums, summarize_neighbourhood

    pred, target = _forecasts(seed=5)
    thresholds = [0.3, 0.6, 0.85]
    pools, sizes = [4, 16], [3, 4]
    sums = _sums_in_two_halves(batch_sums, pred, target, thresholds)
    sums.update(_sums_in_two_halves(neighbourhood_sums, pred, target, thresholds, pools, sizes))
    got = summarize_neighbourhood(sums, thresholds, pools, sizes)

    def csi(p_ev, o_ev):
        h, m, f = (p_ev & o_ev).sum(), (~p_ev & o_ev).sum(), (p_ev & ~o_ev).sum()
        return h / (h + m + f)

    for t in range(3):
        lead = f"/t{t + 1:02d}"
        per_threshold = [csi(pred[:, t] >= k, target[:, t] >= k) for k in thresholds]
        assert got[f"csi_m{lead}"] == pytest.approx(np.mean(per_threshold))
        for p in pools:
            values = []
            for k in thresholds:
                value = csi(_pooled_numpy(pred[:, t] >= k, p), _pooled_numpy(target[:, t] >= k, p))
                assert got[f"csi_pool{p}@{k:g}{lead}"] == pytest.approx(value)
                values.append(value)
            assert got[f"csi_m_pool{p}{lead}"] == pytest.approx(np.mean(values))
        for n in sizes:
            for k in thresholds:
                pf = _fractions_numpy(pred[:, t] >= k, n)
                po = _fractions_numpy(target[:, t] >= k, n)
                fss = 1 - ((pf - po) ** 2).sum() / ((pf**2).sum() + (po**2).sum())
                assert got[f"fss{n}@{k:g}{lead}"] == pytest.approx(fss)


# ------------------------------------------------------------------ SEVIR
def sevir_layout(root: Path, size: int = 16) -> dict[str, np.ndarray]:
    """SEVIR's layout: `CATALOG.csv` and `data/vil/2019/SEVIR_VIL_STORMEVENTS_2019_*.h5`
    with `id` and `vil` N×H×W×49 uint8 (a smaller H×W); one IR row the reader skips."""
    h5py = pytest.importorskip("h5py")
    rng = np.random.default_rng(4)
    events = {
        "S001": ("2018-08-01 12:00:00", "vil/2018/SEVIR_VIL_STORMEVENTS_2018_0701_1231.h5", 0),
        "S002": ("2018-09-03 18:05:00", "vil/2018/SEVIR_VIL_STORMEVENTS_2018_0701_1231.h5", 1),
        "S003": ("2019-03-01 00:00:00", "vil/2019/SEVIR_VIL_STORMEVENTS_2019_0101_0630.h5", 0),
        "S004": ("2019-07-04 09:30:00", "vil/2019/SEVIR_VIL_STORMEVENTS_2019_0701_1231.h5", 0),
    }
    data = {}
    files: dict[str, list[str]] = {}
    for event, (_, file, _) in events.items():
        files.setdefault(file, []).append(event)
    for file, ids in files.items():
        vil = rng.integers(0, 255, (len(ids), size, size, 49), dtype=np.uint8)
        (root / "data" / file).parent.mkdir(parents=True, exist_ok=True)
        with h5py.File(root / "data" / file, "w") as f:
            f["id"] = np.array([i.encode() for i in ids])
            f["vil"] = vil
        for i, event in enumerate(ids):
            data[event] = np.moveaxis(vil[i], -1, 0)[:, None]  # 49×1×H×W
    lines = ["id,file_name,file_index,img_type,time_utc,minute_offsets,episode_id"]
    for event, (time, file, index) in events.items():
        lines.append(f"{event},{file},{index},vil,{time},-120:-115,1")
    lines.append("S001,ir069/2018/SEVIR_IR069.h5,0,ir069,2018-08-01 12:00:00,-120,1")
    (root / "CATALOG.csv").write_text("\n".join(lines) + "\n")
    return data


def test_sevir_events_become_13_to_12_windows_split_by_date(tmp_path):
    from stpdist.cli import main

    data = sevir_layout(tmp_path / "sevir")
    code = main(["shard", "sevir", str(tmp_path / "sevir" / "CATALOG.csv"), "--out",
                 str(tmp_path / "out"), "--workers", "1"])  # fmt: skip
    assert code in (0, None)
    splits = {"train": ["S001", "S002"], "val": ["S003"], "test": ["S004"]}
    for split, events in splits.items():
        index = read_index(tmp_path / "out" / split)
        assert index.shape == [25, 1, 16, 16] and index.dtype == "uint8"
        assert index.value_scale == 255
        got = stored(tmp_path / "out" / split)
        assert sorted(got) == sorted(f"{e}_{s:02d}" for e in events for s in (0, 12, 24))
        for window, meta in got.values():
            np.testing.assert_array_equal(window, data[meta["event"]][meta["start"] :][:25])


def test_sevir_says_which_split_no_event_falls_into(tmp_path, caplog):
    """A catalog without events after --test-from wrote no test split without a word."""
    from stpdist.data.sources.sevir import Sevir

    sevir_layout(tmp_path / "sevir")
    catalog = str(tmp_path / "sevir" / "CATALOG.csv")
    with caplog.at_level(logging.WARNING, logger="stpdist"):
        splits = Sevir(catalog, test_from="2020-01-01").splits()
    assert sorted(splits) == ["train", "val"]
    (said,) = [r.getMessage() for r in caplog.records]
    assert "no event falls from --test-from 2020-01-01 on: no test split is written" in said
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="stpdist"):
        assert sorted(Sevir(catalog).splits()) == ["test", "train", "val"]
    assert not caplog.records


def test_sevir_bad_inputs_name_the_file(tmp_path):
    from stpdist.data.convert import convert
    from stpdist.data.sources.sevir import Sevir

    sevir_layout(tmp_path / "sevir")
    catalog = tmp_path / "sevir" / "CATALOG.csv"
    text = catalog.read_text().replace(
        "S003,vil/2019/SEVIR_VIL_STORMEVENTS_2019_0101_0630.h5,0",
        "S003,vil/2019/SEVIR_VIL_STORMEVENTS_2019_0101_0630.h5,5",
    )
    catalog.write_text(text)
    with pytest.raises(ValueError, match=r"2019_0101_0630\.h5: event S003: file_index 5 outside"):
        convert(Sevir(str(catalog)), tmp_path / "out", progress=False)
    (tmp_path / "bad.csv").write_text("id,file_name\nS1,x.h5\n")
    with pytest.raises(ValueError, match=r"bad\.csv: missing columns"):
        Sevir(str(tmp_path / "bad.csv")).splits()
    with pytest.raises(ValueError, match=(  # a case typo (VIL) named only what was asked
        r"CATALOG\.csv: no events of image type 'VIL' \(the catalog's types: ir069, vil; "
        r"--img-type takes one of them\)"
    )):  # fmt: skip
        Sevir(str(catalog), img_type="VIL").splits()


def test_netcdf_every_kth_step(tmp_path):
    from stpdist.data.convert import convert
    from stpdist.data.sources.netcdf import XarraySource

    full = weatherbench_folders(tmp_path / "wb")
    source = XarraySource(
        [str(tmp_path / "wb" / "2m_temperature")], var_specs="t2m", num_frames=3, stride=4,
        every=2, block_frames=5,
    )  # fmt: skip
    convert(source, tmp_path / "out", progress=False)
    got = stored(tmp_path / "out" / "train")
    assert len(got) == 4  # 32 steps → 16 kept → windows at 0, 4, 8, 12
    for window, meta in got.values():
        s = int(np.flatnonzero(full["time"] == np.datetime64(meta["start"], "ns"))[0])
        np.testing.assert_array_equal(window[:, 0], full["t2m"][s : s + 5 : 2])


def test_netcdf_every_keeps_the_same_hours_after_a_missing_step(tmp_path):
    """`--every 2` of 6-hourly data picked every second step by position: one missing step
    and every later sample (the rest of train, all of val) moved from 00/12 UTC to 06/18,
    silently. The kept steps are those a whole number of 12 h after the first."""
    xr = pytest.importorskip("xarray")
    pytest.importorskip("h5netcdf")
    from stpdist.data.convert import convert
    from stpdist.data.sources.netcdf import XarraySource

    lat, lon = _grid()
    every_6h = np.datetime64("2020-01-01T00:00", "ns") + np.arange(40) * np.timedelta64(6, "h")
    time = np.delete(every_6h, 13)  # 2020-01-04T06 missing
    odd = np.datetime64("2020-01-06T21:00", "ns")  # one step off the grid: not the spacing
    time = np.sort(np.append(time, odd))
    t2m = 280 + np.arange(len(time))[:, None, None] + np.zeros((1, len(lat), len(lon)))
    for part, at in (("a", slice(0, 20)), ("b", slice(20, None))):  # two files
        xr.Dataset(
            {"t2m": (("time", "lat", "lon"), t2m[at].astype(np.float32), {"units": "K"})},
            coords={"time": time[at], "lat": lat, "lon": lon},
        ).to_netcdf(tmp_path / f"era5_{part}.nc", engine="h5netcdf")
    source = XarraySource(
        [str(tmp_path / "era5_a.nc"), str(tmp_path / "era5_b.nc")], var_specs="t2m",
        num_frames=2, stride=1, every=2, block_frames=3, val_from="2020-01-08",
    )  # fmt: skip
    convert(source, tmp_path / "out", progress=False)
    for split in ("train", "val"):
        for window, meta in stored(tmp_path / "out" / split).values():
            start = np.datetime64(meta["start"], "ns")
            assert (start - time[0]) % np.timedelta64(12, "h") == np.timedelta64(0), meta
            frames = [int(np.flatnonzero(time == start + k * np.timedelta64(12, "h"))[0])
                      for k in range(2)]  # fmt: skip
            np.testing.assert_array_equal(window[:, 0, 0, 0], t2m[frames, 0, 0])
    assert len(stored(tmp_path / "out" / "val")) == 5  # frames 08T00 … 10T12, at 00/12 UTC


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_a_zarr_chunk_never_written_is_not_stored_as_data(tmp_path, zarr_format, caplog):
    """A Zarr v3 store that xarray writes keeps a packed variable's _FillValue (-32767) in
    its attributes and the array's fill value at 0: a chunk never written read as 0 × scale
    + offset = 270 K and was stored as data. Refused, naming the store and the variable; in
    v2, where the fill value is the _FillValue, it reads as missing (the NaN policy). Said,
    not refused: zarr leaves out chunks equal to the fill value, which may be real zeros."""
    xr = pytest.importorskip("xarray")
    zarr = pytest.importorskip("zarr")
    if zarr_format == 3 and int(zarr.__version__.split(".")[0]) < 3:
        pytest.skip("zarr v3 stores need zarr 3")
    from stpdist.data.convert import convert
    from stpdist.data.sources.netcdf import XarraySource
    from stpdist.errors import InputError

    lat, lon = _grid()
    time = np.datetime64("2020-01-01T00:00", "ns") + np.arange(12) * np.timedelta64(6, "h")
    t2m = (265 + 10 * np.random.default_rng(0).random((12, len(lat), len(lon)))).astype("f4")
    path = tmp_path / "era5.zarr"
    xr.Dataset(
        {"t2m": (("time", "lat", "lon"), t2m, {"units": "K"})},
        coords={"time": time, "lat": lat, "lon": lon},
    ).to_zarr(
        path, zarr_format=zarr_format, consolidated=False,
        encoding={"t2m": {"chunks": (4, len(lat), len(lon)), "dtype": "int16",
                          "scale_factor": 0.01, "add_offset": 270.0, "_FillValue": -32767}},
    )  # fmt: skip
    group = zarr.open_group(path, mode="r")
    assert group["t2m"].nchunks_initialized == 3
    chunk = path / "t2m" / ("c/1/0/0" if zarr_format == 3 else "1.0.0")
    chunk.unlink()  # the chunk of steps 4…7
    source = XarraySource([str(path)], var_specs="t2m", num_frames=2, stride=2)
    if zarr_format == 3:  # a warning: zarr leaves out chunks equal to the fill value itself
        with caplog.at_level("WARNING", logger="stpdist"):
            source.splits()
        assert (
            "era5.zarr: variable 't2m' has 1 of 3 chunks not stored, which read as the "
            "array's fill value 0 (not its _FillValue -32767) and are converted as data"
        ) in caplog.text
    else:
        with pytest.raises(InputError, match="holds nan"):
            convert(source, tmp_path / "out", progress=False)
        assert not (tmp_path / "out").exists()


def _monthly(root: Path, months: dict[int, dict], lat=None, units=None) -> None:
    """ERA5-like monthly files `era5_2020MM.nc`, 6-hourly, 8 steps each: `months` maps a
    month to {variable: values (8×H×W)} (an empty time axis where the values have 0 steps)."""
    xr = pytest.importorskip("xarray")
    pytest.importorskip("h5netcdf")
    grid_lat, lon = _grid()
    root.mkdir(parents=True, exist_ok=True)
    for month, variables in months.items():
        steps = len(next(iter(variables.values())))
        time = np.datetime64(f"2020-{month:02d}-01T00:00", "ns") + np.arange(steps) * np.timedelta64(6, "h")  # fmt: skip
        here = lat.get(month, grid_lat) if lat else grid_lat
        xr.Dataset(
            {n: (("time", "lat", "lon"), v.astype(np.float32), {"units": (units or {}).get(month, "K")})
             for n, v in variables.items()},
            coords={"time": time, "lat": here, "lon": lon},
        ).to_netcdf(root / f"era5_2020{month:02d}.nc", engine="h5netcdf")  # fmt: skip


def test_netcdf_files_that_disagree_are_said_as_what_differs(tmp_path, caplog):
    """A month without one variable was "variable 'msl' has other times than 't2m'", naming
    the first file (which was fine); grids said "another lat/lon grid" without how (a
    latitude axis reversed in one file looked like any other grid); a file with no time
    steps was passed over without a word; a NaN named channel 0, not the variable; and
    `--allow-nan` never said how much it filled."""
    from stpdist.data.convert import convert
    from stpdist.data.sources.netcdf import XarraySource
    from stpdist.errors import InputError

    lat, lon = _grid()
    field = np.full((8, len(lat), len(lon)), 280.0)
    both = {"t2m": field, "msl": field + 1e5}

    def refused(folder: Path, match: str) -> None:
        source = XarraySource([str(folder)], var_specs="t2m,msl", num_frames=2, stride=2)
        with pytest.raises(InputError, match=match):
            convert(source, tmp_path / "out", progress=False)

    _monthly(tmp_path / "novar", {1: both, 2: {"msl": field}, 3: both})
    refused(tmp_path / "novar", r"era5_202002\.nc: holds 'msl' at 2020-02-01T00:00, and no file "
            r"holds 't2m' at that time \(24 steps of 'msl', 16 of 't2m'\)")  # fmt: skip
    _monthly(tmp_path / "flip", {1: both, 2: both}, lat={2: lat[::-1]})
    refused(tmp_path / "flip", r"era5_202002\.nc: variable 't2m' is on another lat/lon grid "
            r"than in .*era5_202001\.nc: latitude is descending here and the other way there")  # fmt: skip
    _monthly(tmp_path / "shift", {1: both, 2: both}, lat={2: lat + 1})
    refused(tmp_path / "shift", r"latitude\[0\] is -77\.75 here, -78\.75 there")
    # a weather review: a month in other units was converted, labelled with the first's
    _monthly(tmp_path / "units", {1: both, 2: both}, units={2: "degC"})
    refused(tmp_path / "units", r"era5_202002\.nc: variable 't2m' in units 'degC', and in units 'K' "
            r"in .*era5_202001\.nc: convert the files to one unit first")  # fmt: skip
    _monthly(tmp_path / "alias", {1: both, 2: both}, units={2: "kelvin"})  # one unit: taken
    alias = XarraySource([str(tmp_path / "alias")], var_specs="t2m,msl", num_frames=2, stride=2)
    assert convert(alias, tmp_path / "alias-out", progress=False)["train"].num_samples == 8

    inf = field.copy()
    inf[3, 2, 5] = np.inf  # a weather review: said as beyond float32's range, with no place
    _monthly(tmp_path / "inf", {1: both, 2: {"t2m": field, "msl": inf}})
    refused(tmp_path / "inf", r"era5_202002\.nc: variable 'msl' at 2020-02-01T18:00 holds inf at "
            r"\(y, x\) = \(2, 5\): an infinite value cannot be stored; set such values to NaN")  # fmt: skip
    nan = field.copy()
    nan[3, 2, 5] = np.nan
    _monthly(tmp_path / "gaps", {1: both, 2: {"t2m": field[:0], "msl": field[:0]},
                                 3: {"t2m": field, "msl": nan}})  # fmt: skip
    refused(
        tmp_path / "gaps", r"holds nan at \(t, c, y, x\) = \(1, 1, 2, 5\), variable msl in frame 1"
    )
    source = XarraySource([str(tmp_path / "gaps")], var_specs="t2m,msl", num_frames=2, stride=2)
    with caplog.at_level("WARNING", logger="stpdist"):
        convert(source, tmp_path / "out", progress=False, nan_fill=0.0)
    assert "era5_202002.nc: no time steps (time has length 0)" in caplog.text
    (tmp_path / "gaps" / "era5_202004.nc").write_bytes(b"")  # "none of xarray's readers…"
    shutil.rmtree(tmp_path / "out")
    refused(tmp_path / "gaps", r"era5_202004\.nc: empty file \(0 bytes\)")
    assert "train: 1 NaN value(s) stored as --allow-nan 0 (" in caplog.text
    # a series' windows: a value in overlapping ones counts in each, said (a traffic review
    # counted 7 for one NaN cell)
    assert "counted in each window holding them" in caplog.text
