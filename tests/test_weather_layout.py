"""A model scored or forecast on data laid out otherwise than its training data (a weather
review): variables in another order or units, a grid reversed or rolled; and ACC and the
climatology baseline against the training data's climatology, kept in every checkpoint,
whatever split data.root holds. One tiny SimVP trained in this process (1 rank)."""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
from test_weather import weatherbench_folders
from test_weather_dist import TINY_SIMVP

from stpdist.cli import main
from stpdist.data.format import read_index

RECIPE = Path(__file__).parent.parent / "configs" / "weatherbench" / "simvp.yaml"


def _shard(tmp_path: Path, out: str, variables: str) -> Path:
    code = main(
        [
            "shard", "xarray", str(tmp_path / "wb" / "temperature"),
            str(tmp_path / "wb" / "2m_temperature"), "--out", str(tmp_path / out),
            "--vars", variables, "--frames", "10", "--stride", "2",
            "--val-from", "2001-01-01T12:00", "--test-from", "2001-01-04T12:00",
            "--workers", "1",
        ]
    )  # fmt: skip
    assert code == 0
    return tmp_path / out


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(folder, overrides): data/ of t850,t2m, a run trained on it for 2 steps."""
    tmp_path = tmp_path_factory.mktemp("layout")
    weatherbench_folders(tmp_path / "wb", steps=28)
    _shard(tmp_path, "data", "t850,t2m")
    overrides = [
        f"data.root={tmp_path / 'data'}", f"trainer.output_dir={tmp_path / 'run'}",
        "trainer.max_epochs=null", "trainer.max_steps=2", "trainer.progress_bar=false",
        "trainer.num_threads=1", "data.batch_size=4", "logging.num_samples=0", *TINY_SIMVP,
    ]  # fmt: skip
    assert main(["train", str(RECIPE), *overrides]) == 0
    return tmp_path, overrides


def _validate(overrides: list[str], root: Path, *more: str) -> int:
    return main(
        ["validate", str(RECIPE), *overrides, f"data.root={root}", "--ckpt", "last",
         "--split", "test", "--overwrite", *more]
    )  # fmt: skip


def test_variables_in_another_order_are_refused_by_validate_and_forecast(
    trained, monkeypatch, capsys
):
    """The weather review: a test split converted with `--vars t2m,t850` for a model of
    `t850,t2m` was scored (an MSE 4·10⁴ times the right one) and forecast with the channels
    labelled as the training ones, without a word."""
    tmp_path, overrides = trained
    monkeypatch.setattr("stpdist.visualize.plot_lead_times", lambda *_: None)
    swapped = _shard(tmp_path, "swapped", "t2m,t850")
    capsys.readouterr()
    assert _validate(overrides, swapped) == 2
    said = capsys.readouterr().err
    assert (
        "holds the variables t2m, t850 (its train split), the model was trained on t850, " in said
    )
    assert "t2m: t2m in channel 0, in training 1, would be read as another variable" in said
    run = tmp_path / "run"
    code = main(["forecast", str(run), str(swapped / "test"), "--out", str(tmp_path / "fc")])
    assert code == 2
    assert (
        f"{swapped / 'test'} holds the variables t2m, t850 (its test split)"
        in capsys.readouterr().err
    )
    assert not (tmp_path / "fc").exists()


def test_a_grid_reversed_or_rolled_or_other_units_are_refused_another_region_said(trained, caplog):
    from stpdist.build import check_same_layout
    from stpdist.errors import InputError

    tmp_path, _ = trained
    index = read_index(tmp_path / "data" / "train")
    lat, lon = index.latitudes, index.longitudes
    half = len(lon) // 2
    for changed, match in (
        ({"latitudes": lat[::-1]}, r"latitudes 78\.75…-78\.75 \(its train split\), the model "
                                   r"was trained on -78\.75…78\.75: the same latitudes in another"),
        ({"longitudes": lon[half:] + lon[:half]}, "the same longitudes in another order"),
        ({"longitudes": [x - 360 if x >= 180 else x for x in lon[half:] + lon[:half]]},
         "the same longitudes in another order"),  # -180…180 for 0…360
        ({"variables": [{"name": "t850", "units": "degC"}, index.variables[1]]},
         "holds t850 in units 'degC' .* trained on t850 in units 'K': convert it to those"),
        ({"variables": [{"name": "t850", "units": ""}, index.variables[1]]},
         "holds t850 in no units attribute"),
        # a diff review: t2m in t850's channel was said in a line, as other variables are
        ({"variables": [index.variables[1], {"name": "t500", "units": "K"}]},
         "t2m in channel 0, in training 1, would be read as another variable"),
    ):  # fmt: skip
        with pytest.raises(InputError, match=match):
            check_same_layout("here", dataclasses.replace(index, **changed), index)
    with caplog.at_level(logging.WARNING, logger="stpdist"):
        check_same_layout("here", dataclasses.replace(index, latitudes=[x + 1 for x in lat]), index)
        check_same_layout("here", index, index)  # the same: nothing said
        kelvin = [{"name": "t850", "units": "kelvin"}, {"name": "t2m", "units": "K"}]
        check_same_layout("here", dataclasses.replace(index, variables=kelvin), index)  # alike
    assert caplog.text.count("another grid, which the model reads as the one") == 1
    assert "here holds the variables" not in caplog.text


def test_acc_and_the_climatology_baseline_score_against_the_training_climatology(
    trained, monkeypatch, caplog
):
    """The weather review: scored on a data.root holding a test split alone, ACC and the
    climatology baseline took that split's own climatology (the mean of the very frames
    verified), where the docs say the training data's. Every checkpoint keeps it now."""
    tmp_path, overrides = trained
    monkeypatch.setattr("stpdist.visualize.plot_lead_times", lambda *_: None)
    alone = tmp_path / "test-alone"
    shutil.copytree(tmp_path / "data" / "test", alone / "test")
    results = []
    for root in (tmp_path / "data", alone):
        assert _validate(overrides, root) == 0
        results.append(json.loads((tmp_path / "run" / "metrics_test.json").read_text()))
    for key in ("test/acc/t850", "test/climatology_rmse/t2m", "test/climatology_wrmse/t850"):
        assert results[1][key] == pytest.approx(results[0][key], rel=1e-6), key
    checkpoint = sorted((tmp_path / "run" / "checkpoints").glob("step-*"))[-1]
    kept = np.load(checkpoint / "climatology.npy")
    assert np.array_equal(kept, np.load(tmp_path / "data" / "train" / "climatology.npy"))
    own = read_index(alone / "test")
    assert not np.allclose(np.load(alone / "test" / "climatology.npy"), kept)  # not the same
    # a checkpoint written before they kept it: data.root's own, said
    from stpdist.build import climatology
    from stpdist.config import load_config

    cfg = load_config(RECIPE, [*overrides, f"data.root={alone}"])
    trained_on = read_index(checkpoint)
    before = tmp_path / "before"  # the index alone, as such a checkpoint keeps it
    before.mkdir(exist_ok=True)
    shutil.copy(checkpoint / "index.json", before)
    with caplog.at_level(logging.WARNING, logger="stpdist"):
        used = climatology(cfg, own, trained_on, trained_in=before)
    assert np.array_equal(used, np.load(alone / "test" / "climatology.npy"))
    assert f"{before} keeps no climatology of the data the model was trained on" in caplog.text


def test_other_variables_or_grid_are_not_scored_against_the_training_climatology(trained, caplog):
    """A diff review: a test split of t2m, t500 (in the model's t850, t2m channels) had
    t500 scored against t2m's training climatology (its baseline 9× off), as another grid
    would have been against the training region's. Those channels take data.root's own."""
    from stpdist.build import climatology
    from stpdist.config import load_config

    tmp_path, overrides = trained
    checkpoint = sorted((tmp_path / "run" / "checkpoints").glob("step-*"))[-1]
    trained_on = read_index(checkpoint)
    kept = np.load(checkpoint / "climatology.npy")
    other = tmp_path / "other"  # data.root of another dataset: its train split's climatology
    (other / "train").mkdir(parents=True, exist_ok=True)
    shutil.copy(tmp_path / "data" / "train" / "index.json", other / "train")
    mine = kept + 7.0
    np.save(other / "train" / "climatology.npy", mine)
    cfg = load_config(RECIPE, [*overrides, f"data.root={other}"])
    t500 = [trained_on.variables[0], {"name": "t500", "units": "K"}]
    cases = {
        "other variable": ({"variables": t500}, np.stack([kept[0], mine[1]]),
                           "holds t500, which the model was not trained on: ACC and the"),
        "another grid": ({"latitudes": [x + 1 for x in trained_on.latitudes]}, mine,
                         "data.root is on another grid than the training data"),
        "other statistics": ({"mean": [0.0, 0.0]}, kept, None),
    }  # fmt: skip
    for case, (changed, expected, said) in cases.items():
        index = dataclasses.replace(read_index(other / "train"), **changed)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="stpdist"):
            got = climatology(cfg, index, trained_on, checkpoint)
        np.testing.assert_array_equal(got, expected, err_msg=case)
        assert (said in caplog.text) if said else not caplog.text, (case, caplog.text)
    (other / "train" / "climatology.npy").unlink()  # none of its own: not reported
    index = dataclasses.replace(read_index(other / "train"), variables=t500)
    with caplog.at_level(logging.WARNING, logger="stpdist"):
        assert climatology(cfg, index, trained_on, checkpoint) is None
    assert "and no climatology of its own: ACC and the climatology baseline are not" in caplog.text


def test_an_exported_model_folder_keeps_the_training_climatology(trained, monkeypatch):
    """A diff review: `stpdist export` copied the weights, config and index, not the
    climatology: the exported folder scored ACC against data.root's own."""
    tmp_path, overrides = trained
    monkeypatch.setattr("stpdist.visualize.plot_lead_times", lambda *_: None)
    out = tmp_path / "exported"
    assert main(["export", str(tmp_path / "run"), "--out", str(out), "--ckpt", "last"]) == 0
    checkpoint = sorted((tmp_path / "run" / "checkpoints").glob("step-*"))[-1]
    assert (out / "climatology.npy").read_bytes() == (checkpoint / "climatology.npy").read_bytes()
    alone = tmp_path / "test-alone-2"
    shutil.copytree(tmp_path / "data" / "test", alone / "test")
    results = []
    for ckpt in ("last", str(out)):
        assert _validate(overrides, alone, "--ckpt", ckpt) == 0
        results.append(json.loads((tmp_path / "run" / "metrics_test.json").read_text()))
    assert results[1]["test/acc/t850"] == pytest.approx(results[0]["test/acc/t850"], rel=1e-6)
    # a second diff review: `stpdist.load` scored against data.root's climatology, or none
    # where the folder travelled without the data (its own kept beside it unread)
    import stpdist

    theirs = tmp_path / "data" / "train" / "climatology.npy"
    held = theirs.read_bytes()
    try:
        theirs.unlink()  # data.root as on another machine: no climatology there
        module = stpdist.load(out)
        np.testing.assert_array_equal(np.asarray(module.geo.climatology),
                                      np.load(out / "climatology.npy"))  # fmt: skip
    finally:
        theirs.write_bytes(held)


def test_a_climatology_named_as_a_checkpoint_file_is_not_kept(trained):
    """index.json is the data's: a climatology it names `model.safetensors` (a valid .npy of
    the right shape, in a crafted dataset) would have replaced the checkpoint's weights."""
    from types import SimpleNamespace

    from stpdist.build import keep_index
    from stpdist.config import load_config

    tmp_path, overrides = trained
    crafted = tmp_path / "crafted"
    shutil.copytree(tmp_path / "data" / "train", crafted / "train")
    shutil.copy(crafted / "train" / "climatology.npy", crafted / "train" / "model.safetensors")
    index = json.loads((crafted / "train" / "index.json").read_text())
    index["climatology"] = "model.safetensors"
    (crafted / "train" / "index.json").write_text(json.dumps(index))
    trainer = SimpleNamespace(attachments={})  # what keep_index fills: the files to keep
    keep_index(load_config(RECIPE, [*overrides, f"data.root={crafted}"]), trainer)
    assert sorted(trainer.attachments) == ["index.json"]
    keep_index(load_config(RECIPE, overrides), trainer)
    assert sorted(trainer.attachments) == ["climatology.npy", "index.json"]
