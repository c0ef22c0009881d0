"""End to end per geoscience dataset type, on synthetic files in the real layouts (written
by test_weather.py's helpers): `stpdist shard` → `stpdist train` for 2 epochs on 2 CPU
ranks (gloo) → `stpdist validate` → `stpdist predict`, each run with the shipped
recipe shrunk by dotted overrides (a tiny backbone, tiny batches). Frames T×C×H×W.

Convert, validate and predict run the CLI's `main` in this process (one rank): a process
of its own costs seconds of imports on these 2 cores; training gets its 2 ranks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from test_cli import stpdist
from test_weather import sevir_layout, stored, weatherbench_folders

from stpdist.cli import main
from stpdist.data.format import read_index

CONFIGS = Path(__file__).parent.parent / "configs"
TINY_SIMVP = [
    "model.backbone.spatial_channels=4",
    "model.backbone.temporal_channels=8",
    "model.backbone.num_spatial_blocks=1",
    "model.backbone.num_translator_blocks=2",
]


def train_validate_predict(recipe: Path, data: Path, tmp_path: Path, monkeypatch, *extra: str):
    """Train `recipe` on `data` for 2 epochs on 2 ranks, then validate and predict with its
    last checkpoint; returns (run folder, the metrics lines train wrote)."""
    overrides = [
        f"data.root={data}",
        "trainer.output_dir=run",
        "trainer.max_epochs=2",
        "trainer.progress_bar=false",
        "logging.num_samples=0",  # no sample pictures: seconds of rendering
        *TINY_SIMVP,
        *extra,
    ]
    stpdist("train", str(recipe), *overrides, cwd=tmp_path, nproc=2)
    run = tmp_path / "run"
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    monkeypatch.chdir(tmp_path)
    # the lead-time figure (one panel per metric: 51 for SEVIR) takes ~10 s to draw on these
    # cores; test_cli checks the figure, here only that validate asks for it
    drawn = []
    monkeypatch.setattr("stpdist.visualize.plot_lead_times", lambda _, path: drawn.append(path))
    assert main(["validate", str(recipe), *overrides, "--ckpt", "last"]) == 0
    assert drawn == [Path("run") / "lead_time_val.png"]
    assert main(["predict", str(recipe), *overrides, "--ckpt", "last", "--samples", "0"]) == 0
    return run, lines


def predictions(folder: Path) -> dict[str, np.ndarray]:
    got = {}
    for file in sorted(folder.glob("predictions-*.npz")):
        with np.load(file) as f:
            got.update(zip(f["keys"].tolist(), f["predictions"], strict=True))
    return got


def check_training(run: Path, lines: list[dict], steps_per_epoch: int, num_val: int) -> dict:
    """Two epochs on two ranks, a checkpoint per epoch, one validation line per epoch;
    returns the last validation's metrics."""
    last = steps_per_epoch * 2
    names = {p.name for p in (run / "checkpoints").iterdir()}
    assert names == {f"step-{steps_per_epoch:08d}", f"step-{last:08d}"}
    for name in names:
        assert (run / "checkpoints" / name / "model.safetensors").is_file()
    state = json.loads(
        (run / "checkpoints" / f"step-{last:08d}" / "trainer_state.json").read_text()
    )
    assert (state["world_size"], state["global_step"], state["epoch"]) == (2, last, 2)
    val = [x for x in lines if "val/loss" in x]
    assert [x["val/num_samples"] for x in val] == [num_val, num_val]
    return val[-1]


def check_channels_named(run: Path, tmp_path: Path, names: list[str] | None) -> None:
    """`predict`'s files and a `forecast`'s of the test split name the channels as the
    index does (None: it names none)."""
    forecast = ["forecast", str(run), str(tmp_path / "data" / "test"), "--samples", "0"]
    assert main([*forecast, "--out", str(tmp_path / "forecasts")]) == 0
    for out in (run / "predictions" / "test", tmp_path / "forecasts"):
        with np.load(next(out.glob("predictions-*.npz"))) as written:
            named = written["variables"].tolist() if "variables" in written else None
        assert named == names


@pytest.mark.multiprocess
def test_weatherbench_netcdf_convert_train_two_ranks_validate_predict(tmp_path, monkeypatch):
    """WeatherBench 1 folders (yearly netCDF per variable) → `shard xarray` → the
    weatherbench SimVP recipe (4 → 6, standardised): per-variable RMSE/MAE, latitude-weighted
    RMSE and ACC (the converter stored a climatology) for t850 and t2m at every lead time;
    predictions in kelvin that reproduce the reported RMSE against the raw values."""
    full = weatherbench_folders(tmp_path / "wb", steps=28)  # 56 steps, 6-hourly from 12-25
    code = main(
        [
            "shard", "xarray", str(tmp_path / "wb" / "temperature"),
            str(tmp_path / "wb" / "2m_temperature"), "--out", str(tmp_path / "data"),
            "--vars", "t850,t2m", "--frames", "10", "--stride", "2",
            "--val-from", "2001-01-01T12:00", "--test-from", "2001-01-04T12:00",
            "--samples-per-shard", "4", "--workers", "1",
        ]
    )  # fmt: skip
    assert code == 0
    counts = {s: read_index(tmp_path / "data" / s).num_samples for s in ("train", "val", "test")}
    assert counts == {"train": 11, "val": 2, "test": 3}
    assert (tmp_path / "data" / "train" / "climatology.npy").is_file()

    recipe = CONFIGS / "weatherbench" / "simvp.yaml"
    run, lines = train_validate_predict(
        recipe, tmp_path / "data", tmp_path, monkeypatch, "data.batch_size=2"
    )
    # 11 windows → 5 per rank → 2 batches of 2
    trained = check_training(run, lines, steps_per_epoch=2, num_val=2)

    scores = ("rmse", "mae", "wrmse", "acc")
    leads = [""] + [f"/t{t:02d}" for t in range(1, 7)]
    validated = json.loads((run / "metrics_val.json").read_text())
    assert validated["val/num_samples"] == 2
    for var in ("t850", "t2m"):
        for score in scores:
            for lead in leads:
                assert f"val/{score}/{var}{lead}" in validated
                assert f"val/{score}/{var}{lead}" in trained
        # the same checkpoint scored on 2 ranks (in training) and on 1 (validate)
        # (float32 convolutions over other batch compositions: equal to ~1e-5)
        for score in scores:
            key = f"val/{score}/{var}"
            assert validated[key] == pytest.approx(trained[key], rel=1e-4)

    out = run / "predictions" / "test"
    got = predictions(out)
    check_channels_named(run, tmp_path, ["t850", "t2m"])
    test = stored(tmp_path / "data" / "test")
    assert sorted(got) == sorted(test)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test/num_samples"] == 3
    raw = {"t850": full["t"][:, 1], "t2m": full["t2m"]}  # T×H×W, kelvin
    for c, var in enumerate(("t850", "t2m")):
        pred = np.stack([got[k][:, c] for k in sorted(got)])  # N×6×H×W
        truth = np.stack([test[k][0][4:, c] for k in sorted(got)])
        # kelvin, not standardised or [0, 1]: inside the variable's range (clamped to the
        # train split's), and the RMSE of these files against the raw values is the one reported
        assert raw[var].min() - 1e-3 <= pred.min() and pred.max() <= raw[var].max() + 1e-3
        rmse = float(np.sqrt(((pred.astype(np.float64) - truth) ** 2).mean()))
        assert metrics[f"test/rmse/{var}"] == pytest.approx(rmse, rel=1e-4)
        assert 0.5 < rmse < 20  # a forecast of values spread over 10–20 K


@pytest.mark.multiprocess
def test_sevir_h5_catalog_convert_train_two_ranks_validate_predict(tmp_path, monkeypatch):
    """SEVIR catalog + VIL HDF5 → `shard sevir` (13 → 12 windows, split by event date) →
    the SEVIR SimVP recipe: CSI/POD/FAR/HSS at the VIL thresholds in stored units, CSI-M
    and pooled CSI (4, 16) at every lead time; one prediction per test window."""
    sevir_layout(tmp_path / "sevir")  # 4 events of 49 frames 16×16: train 2, val 1, test 1
    code = main(
        [
            "shard", "sevir", str(tmp_path / "sevir" / "CATALOG.csv"),
            "--out", str(tmp_path / "data"), "--samples-per-shard", "2", "--workers", "1",
        ]
    )  # fmt: skip
    assert code == 0
    counts = {s: read_index(tmp_path / "data" / s).num_samples for s in ("train", "val", "test")}
    assert counts == {"train": 6, "val": 3, "test": 3}

    recipe = CONFIGS / "sevir" / "simvp.yaml"
    run, lines = train_validate_predict(
        recipe,
        tmp_path / "data",
        tmp_path,
        monkeypatch,
        "data.batch_size=3",
        'trainer.mixed_precision="no"',  # the recipe's bf16 is for GPUs: slower on this CPU
    )
    trained = check_training(run, lines, steps_per_epoch=1, num_val=3)  # 6 windows, 2 × 3

    thresholds = [16, 74, 133, 160, 181, 219]
    leads = [""] + [f"/t{t:02d}" for t in range(1, 13)]
    validated = json.loads((run / "metrics_val.json").read_text())
    assert validated["val/num_samples"] == 3
    keys = [f"{s}@{k}" for s in ("csi", "pod", "far", "hss") for k in thresholds]
    keys += ["csi_m", "csi_m_pool4", "csi_m_pool16"]
    keys += [f"csi_pool{p}@{k}" for p in (4, 16) for k in thresholds]
    for key in keys:
        for lead in leads:
            assert f"val/{key}{lead}" in validated
            assert f"val/{key}{lead}" in trained
    for key in ("mse", "csi_m", "csi_m_pool4"):  # 2 ranks (training) == 1 rank (validate)
        assert validated[f"val/{key}"] == pytest.approx(trained[f"val/{key}"], rel=1e-4)

    out = run / "predictions" / "test"
    got = predictions(out)
    check_channels_named(run, tmp_path, None)  # its index names no variable
    test = stored(tmp_path / "data" / "test")
    assert sorted(got) == ["S004_00", "S004_12", "S004_24"] == sorted(test)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test/num_samples"] == 3
    pred = np.stack([got[k] for k in sorted(got)])  # N×12×1×16×16
    truth = np.stack([test[k][0][13:] for k in sorted(got)]).astype(np.float64)
    # the recipe keeps data.normalize `scale` (VIL / 255): `predict` writes that scaled
    # space, clamped to [0, 1], and its MSE there against the raw VIL / 255 is the reported one
    assert pred.shape == (3, 12, 1, 16, 16) and 0 <= pred.min() and pred.max() <= 1
    mse = float(((pred.astype(np.float64) - truth / 255) ** 2).mean())
    assert metrics["test/mse"] == pytest.approx(mse, rel=1e-4)
