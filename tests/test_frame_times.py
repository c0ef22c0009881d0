"""Predictions carry their frames' times: the time-series converters write each window's
frame times in its `.json` member (`times`), and `predict` (and `forecast` from a shard
split) writes `reference_times` (the last input frame's) and `valid_times` (each predicted
frame's) beside the predictions; a window of inputs alone is continued at its step."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import TinyModule
from test_weather import hourly_series, stored

from stpdist import Trainer
from stpdist.cli import main
from stpdist.data.stream import FrameTimes, ShardEvalStream
from stpdist.trainer import load_predictions


def _predicted(folder) -> dict[str, dict[str, np.ndarray]]:
    """key → the fields of its row in every predictions file of `folder`."""
    out = {}
    for path in sorted(folder.glob("predictions-r*.npz")):
        with np.load(path) as data:
            fields = {name: data[name] for name in data.files if name != "keys"}
            for row, key in enumerate(data["keys"].tolist()):
                out[key] = {name: value[row] for name, value in fields.items() if value.ndim}
    return out


def _convert(tmp_path, frames: int, *extra: str) -> None:
    code = main(["shard", "arrays", str(tmp_path / "raw"), "--out", str(tmp_path / "ds"),
                 "--frames", str(frames), "--stride", "2", "--value-scale", "1",
                 "--workers", "1", *extra])  # fmt: skip
    assert code in (0, None)


def test_predictions_carry_the_reference_and_valid_times_of_their_frames(tmp_path):
    _, times = hourly_series(tmp_path)
    _convert(tmp_path, 5, "--time-key", "time")
    minutes = times.astype("datetime64[s]")
    position = {t: i for i, t in enumerate(minutes.tolist())}
    samples = stored(tmp_path / "ds" / "train")
    for _, meta in samples.values():  # every window keeps its frames' times
        first = position[np.datetime64(meta["start"], "s").tolist()]
        assert meta["times"] == [
            str(t) for t in np.datetime_as_string(times[first : first + 5], "m")
        ]

    stream = ShardEvalStream(tmp_path / "ds" / "train", batch_size=4, num_input_frames=3,
                             num_output_frames=2)  # fmt: skip
    trainer = Trainer(output_dir=tmp_path / "run", progress_bar=False)
    trainer.predict(TinyModule(), stream, out=tmp_path / "p", metrics=False)
    got = _predicted(tmp_path / "p")
    assert sorted(got) == sorted(samples) and len(got) > 10
    valid = load_predictions(tmp_path / "p", "valid_times")  # the Python reader's field
    assert {k: v.tolist() for k, v in valid.items()} == {
        k: fields["valid_times"].tolist() for k, fields in got.items()
    }
    for key, fields in got.items():
        first = position[np.datetime64(samples[key][1]["start"], "s").tolist()]
        assert fields["reference_times"] == minutes[first + 2], key
        np.testing.assert_array_equal(fields["valid_times"], minutes[first + 3 : first + 5])
        assert fields["valid_times"].dtype == np.dtype("datetime64[s]")

    # windows of inputs alone (3 frames, as forecast reads them): continued at their step
    _convert(tmp_path, 3, "--time-key", "time", "--overwrite")
    inputs = ShardEvalStream(tmp_path / "ds" / "train", batch_size=4, num_input_frames=3,
                             num_output_frames=0)  # fmt: skip
    trainer.predict(TinyModule(), inputs, out=tmp_path / "f", metrics=False)
    for key, fields in _predicted(tmp_path / "f").items():
        reference = fields["reference_times"]
        hour = np.timedelta64(1, "h")
        np.testing.assert_array_equal(
            fields["valid_times"], [reference + hour, reference + 2 * hour]
        )
        assert not np.isnat(reference), key


def test_a_series_without_times_predicts_without_them_and_uneven_frames_continue_as_nat(tmp_path):
    hourly_series(tmp_path)
    _convert(tmp_path, 5, "--key", "data")  # no --time-key: frame positions, no times
    stream = ShardEvalStream(tmp_path / "ds" / "train", batch_size=4, num_input_frames=3,
                             num_output_frames=2)  # fmt: skip
    assert stream.frame_times() is None
    Trainer(output_dir=tmp_path / "run", progress_bar=False).predict(
        TinyModule(), stream, out=tmp_path / "p", metrics=False
    )
    with np.load(next((tmp_path / "p").glob("predictions-r*.npz"))) as data:
        assert sorted(data.files) == ["keys", "predictions"]
    with pytest.raises(KeyError, match=r"holds no 'valid_times'; its arrays: keys, predictions"):
        load_predictions(tmp_path / "p", "valid_times")

    hour = np.timedelta64(1, "h")
    start = np.datetime64("2020-01-01T00:00", "s")
    even = start + np.arange(3) * hour
    uneven = start + np.array([0, 1, 3]) * hour
    times = FrameTimes({"even": 0, "uneven": 1}, np.stack([even, uneven]))
    got = times.of(["uneven", "even", "missing"], 3, 2)
    np.testing.assert_array_equal(
        got["reference_times"], [uneven[2], even[2], np.datetime64("NaT")]
    )
    assert np.isnat(got["valid_times"][[0, 2]]).all()
    np.testing.assert_array_equal(got["valid_times"][1], [even[2] + hour, even[2] + 2 * hour])


def test_netcdf_windows_keep_their_frames_times(tmp_path):
    from test_weather import t2m_file

    t2m_file(tmp_path / "t2m.nc", (280 + np.arange(12 * 6 * 8) % 7).reshape(12, 6, 8).astype("f4"))
    code = main(["shard", "netcdf", str(tmp_path / "t2m.nc"), "--vars", "t2m", "--frames", "4",
                 "--stride", "4", "--out", str(tmp_path / "ds"), "--workers", "1"])  # fmt: skip
    assert code in (0, None)
    samples = stored(tmp_path / "ds" / "train")
    assert len(samples) == 3
    six_hours = np.timedelta64(6, "h")
    for _, meta in samples.values():
        start = np.datetime64(meta["start"], "s")
        expected = np.datetime_as_string(start + np.arange(4) * six_hours, "m").tolist()
        assert meta["times"] == expected, meta


def test_inspect_says_the_period_a_time_series_split_covers(tmp_path, capsys):
    hourly_series(tmp_path)
    _convert(tmp_path, 5, "--time-key", "time", "--samples-per-shard", "4")
    assert main(["inspect", str(tmp_path / "ds"), "--samples", "0"]) in (0, None)
    out = capsys.readouterr().out
    # 60 hourly frames, 3 hours more from frame 30 on: the last window ends at frame 58 (61 h)
    assert "  times: 2020-01-01T00:00 … 2020-01-03T13:00 (its first and last samples' frames)" in (
        out
    ), out
    _convert(tmp_path, 5, "--key", "data", "--overwrite")  # frame positions: no times
    assert main(["inspect", str(tmp_path / "ds"), "--samples", "0"]) in (0, None)
    assert "times:" not in capsys.readouterr().out


def test_an_inputs_only_split_keeps_the_times_of_the_frames_it_keeps(tmp_path):
    """A traffic user's review: `--inputs-only` cut each window's frames but not its times
    (5 times for 3 frames), so the split's times were dropped and forecasts carried none."""
    _, times = hourly_series(tmp_path)
    _convert(tmp_path, 5, "--time-key", "time", "--inputs-only", "3")
    minutes = times.astype("datetime64[s]")
    samples = stored(tmp_path / "ds" / "train")
    for _, meta in samples.values():
        assert len(meta["times"]) == 3
    stream = ShardEvalStream(tmp_path / "ds" / "train", batch_size=4, num_input_frames=3,
                             num_output_frames=0)  # fmt: skip
    found = stream.frame_times()
    assert found is not None
    hour = np.timedelta64(1, "h")
    for key, (_, meta) in samples.items():
        got = found.of([key], 3, 2)
        first = np.datetime64(meta["start"], "s")
        assert got["reference_times"][0] == first + 2 * hour
        np.testing.assert_array_equal(got["valid_times"][0], [first + 3 * hour, first + 4 * hour])
        assert first in minutes


def test_forecast_shards_keep_the_valid_times_of_a_time_series(tmp_path):
    """A deployment review: `forecast --shards` wrote each forecast with `{"forecast_of":
    key}` alone, so the split read back as a dataset had lost its valid times."""
    import argparse

    from stpdist.cli import _forecast_shards

    hourly_series(tmp_path)
    _convert(tmp_path, 3, "--time-key", "time", "--inputs-only", "3")
    inputs = ShardEvalStream(tmp_path / "ds" / "train", batch_size=4, num_input_frames=3,
                             num_output_frames=0)  # fmt: skip
    Trainer(output_dir=tmp_path / "run", progress_bar=False).predict(
        TinyModule(), inputs, out=tmp_path / "f", metrics=False
    )
    model = argparse.Namespace(value_scale=1.0, model_folder="m")
    _forecast_shards(tmp_path / "f", argparse.Namespace(inputs="ds/train", out="fc"), model)
    # with the card a conversion writes, Hugging Face datasets reads the tars (an interop
    # review: without one it took index.json for the data)
    card = (tmp_path / "f" / "shards" / "README.md").read_text()
    assert 'path: "forecast/*.tar"' in card and "Written by `stpdist forecast --shards`" in card
    # the final folder, not the staging one; no training on forecasts (a diff review: the
    # card said to train on a folder of one `forecast` split)
    assert "stpdist inspect fc/shards/forecast --verify" in card and "Train with" not in card
    datasets = pytest.importorskip("datasets")
    loaded = datasets.load_dataset(str(tmp_path / "f" / "shards"), cache_dir=str(tmp_path / "hf"))
    assert list(loaded) == ["forecast"] and "frames.npy" in loaded["forecast"].column_names
    valid = load_predictions(tmp_path / "f", "valid_times")
    made_from = load_predictions(tmp_path / "f", "reference_times")
    written = stored(tmp_path / "f" / "shards" / "forecast")
    assert sorted(written) == sorted(valid) and len(written) > 10
    for key, (_, meta) in written.items():
        assert meta["forecast_of"] == key
        np.testing.assert_array_equal(np.array(meta["times"], "datetime64[s]"), valid[key])
        assert np.datetime64(meta["reference_time"], "s") == made_from[key]
    back = ShardEvalStream(tmp_path / "f" / "shards" / "forecast", batch_size=4,
                           num_input_frames=2, num_output_frames=0).frame_times()  # fmt: skip
    assert back is not None  # read back as a dataset, the forecasts keep their times

    # a series without times: forecasts without them, as before
    _convert(tmp_path, 3, "--key", "data", "--inputs-only", "3", "--overwrite")
    # a new stream: the one above refuses the replaced dataset (it read it by its old index)
    inputs = ShardEvalStream(tmp_path / "ds" / "train", batch_size=4, num_input_frames=3,
                             num_output_frames=0)  # fmt: skip
    Trainer(output_dir=tmp_path / "run2", progress_bar=False).predict(
        TinyModule(), inputs, out=tmp_path / "g", metrics=False
    )
    _forecast_shards(tmp_path / "g", argparse.Namespace(inputs="ds/train", out="g"), model)
    assert all(
        meta == {"forecast_of": key}
        for key, (_, meta) in stored(tmp_path / "g" / "shards" / "forecast").items()
    )


def test_split_names_the_one_split_of_a_series_and_is_refused_beside_val_from(tmp_path):
    """A deployment review: `--split live` with `--frames` wrote `train` (and recorded it)."""
    from stpdist.data.format import read_index

    hourly_series(tmp_path)
    _convert(tmp_path, 3, "--time-key", "time", "--inputs-only", "3", "--split", "live")
    assert sorted(p.name for p in (tmp_path / "ds").iterdir() if p.is_dir()) == ["live"]
    index = read_index(tmp_path / "ds" / "live")
    assert index.split == "live" and index.args["split"] == "live" and index.num_samples > 10
    code = main(["shard", "arrays", str(tmp_path / "raw"), "--out", str(tmp_path / "ds2"),
                 "--frames", "3", "--time-key", "time", "--val-from", "2020-01-02",
                 "--split", "live", "--workers", "1"])  # fmt: skip
    assert code == 2 and not (tmp_path / "ds2").exists()
    code = main(["shard", "arrays", str(tmp_path / "raw"), "--out", str(tmp_path / "ds3"),
                 "--frames", "3", "--time-key", "time", "--val-from", "2020-01-02",
                 "--split", "train", "--value-scale", "1", "--workers", "1"])  # fmt: skip
    assert code in (0, None)  # the default spelt out, as before
    assert sorted(p.name for p in (tmp_path / "ds3").iterdir() if p.is_dir()) == ["train", "val"]
