"""Metrics against independent numpy / scikit-image references, and crafted skill cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from stpdist.metrics import batch_sums, summarize

skimage_metrics = pytest.importorskip("skimage.metrics")


def reference(pred: np.ndarray, target: np.ndarray) -> dict[str, np.ndarray]:
    """Per lead time (B×T×C×H×W inputs), computed frame by frame with numpy/scikit-image."""
    b, t = pred.shape[:2]
    out = {k: np.zeros(t) for k in ("mse", "mae", "mse_frame", "psnr", "ssim")}
    for i in range(b):
        for j in range(t):
            p, q = pred[i, j].astype(np.float64), target[i, j].astype(np.float64)
            out["mse"][j] += np.mean((p - q) ** 2) / b
            out["mse_frame"][j] += np.sum((p - q) ** 2) / b
            out["mae"][j] += np.mean(np.abs(p - q)) / b
            out["psnr"][j] += skimage_metrics.peak_signal_noise_ratio(q, p, data_range=1.0) / b
            out["ssim"][j] += (
                np.mean(
                    [
                        skimage_metrics.structural_similarity(
                            q[c], p[c], win_size=7, data_range=1.0
                        )
                        for c in range(p.shape[0])
                    ]
                )
                / b
            )
    return out


@pytest.mark.parametrize("channels", [1, 2])
def test_against_numpy_and_skimage(channels):
    rng = np.random.default_rng(channels)
    target = rng.random((3, 4, channels, 16, 20))
    pred = np.clip(target + rng.normal(0, 0.1, target.shape), 0, 1)
    pred[0, 0] = target[0, 0] * 0.5  # a structured error too
    got = summarize(
        batch_sums(torch.from_numpy(pred), torch.from_numpy(target)),
        frame_pixels=channels * 16 * 20,
    )
    ref = reference(pred, target)
    for name in ("mse", "mae", "mse_frame", "psnr", "ssim"):
        for t in range(4):
            assert got[f"{name}/t{t + 1:02d}"] == pytest.approx(ref[name][t], rel=1e-9), name
        assert got[name] == pytest.approx(ref[name].mean(), rel=1e-9)
    assert got["rmse"] == pytest.approx(np.sqrt(ref["mse"].mean()), rel=1e-9)


def test_unclamped_predictions_are_clipped_for_psnr_and_ssim_and_not_for_the_errors():
    """With `evaluation.clamp_output: false`, PSNR and SSIM scored predictions outside
    [0, 1] as they were; OpenSTL (and the definition: images in [0, 1]) clips them."""
    rng = np.random.default_rng(5)
    target = rng.random((2, 3, 1, 12, 12))
    raw = target + rng.normal(0, 0.3, target.shape)  # well outside [0, 1] in places
    got = summarize(batch_sums(torch.from_numpy(raw), torch.from_numpy(target)), frame_pixels=144)
    clipped = reference(np.clip(raw, 0, 1), target)
    unclipped = reference(raw, target)
    for name in ("psnr", "ssim"):
        assert got[name] == pytest.approx(clipped[name].mean(), rel=1e-9), name
        assert got[name] != pytest.approx(unclipped[name].mean(), rel=1e-3), name
    assert got["mse"] == pytest.approx(unclipped["mse"].mean(), rel=1e-9)  # as evaluated


def test_sums_are_additive_over_batches():
    rng = np.random.default_rng(0)
    pred, target = (torch.from_numpy(rng.random((7, 3, 1, 8, 8))) for _ in range(2))
    whole = batch_sums(pred, target, [0.5])
    parts = [batch_sums(pred[a:b], target[a:b], [0.5]) for a, b in ((0, 3), (3, 4), (4, 7))]
    for key, value in whole.items():
        torch.testing.assert_close(sum(p[key] for p in parts), value)


def test_skill_scores_on_crafted_counts():
    # one 1×1×8×8 frame per lead time; threshold 100 physical units with scale 255
    target = torch.zeros(1, 2, 1, 8, 8, dtype=torch.float64)
    pred = torch.zeros_like(target)
    high = 200 / 255
    target[0, 0, 0, :2, :] = high  # 16 observed events in lead 1
    pred[0, 0, 0, :1, :] = high  # 8 hits …
    pred[0, 0, 0, 7, :4] = high  # … and 4 false alarms; misses 8; correct negatives 44
    got = summarize(batch_sums(pred, target, [100 / 255]), 64, thresholds=[100])
    h, m, f, cn = 8, 8, 4, 44
    assert got["csi@100/t01"] == pytest.approx(h / (h + m + f))
    assert got["pod@100/t01"] == pytest.approx(h / (h + m))
    assert got["far@100/t01"] == pytest.approx(f / (h + f))
    assert got["hss@100/t01"] == pytest.approx(
        2 * (h * cn - m * f) / ((h + m) * (m + cn) + (h + f) * (f + cn))
    )
    assert np.isnan(got["pod@100/t02"])  # no events observed at lead 2: undefined, not 0
    assert got["far@100"] == pytest.approx(4 / 12)  # overall over both leads


def test_perfect_prediction_psnr_is_capped_and_ssim_one():
    x = torch.rand(2, 3, 1, 8, 8, dtype=torch.float64)
    got = summarize(batch_sums(x, x), 64)
    assert got["psnr"] == pytest.approx(100.0) and got["ssim"] == pytest.approx(1.0)
    assert got["mse"] == 0


def test_a_variable_named_like_a_lead_time_is_not_a_lead_time():
    """ERA5's `t850` in `val/rmse/t850` is a variable, not lead 850 of `val/rmse`."""
    from stpdist.console import lead_keys, lead_time_table

    results = {
        "val/rmse": 1.0,
        "val/rmse/t01": 0.5,
        "val/rmse/t02": 1.5,
        "val/rmse/t850": 2.0,
        "val/rmse/t850/t01": 1.0,
        "val/rmse/t850/t02": 3.0,
    }
    assert lead_keys(results) == {
        "val/rmse/t01": ("val/rmse", 1),
        "val/rmse/t02": ("val/rmse", 2),
        "val/rmse/t850/t01": ("val/rmse/t850", 1),
        "val/rmse/t850/t02": ("val/rmse/t850", 2),
    }
    table = lead_time_table(results).splitlines()
    assert table[0].split() == ["metric", "all", "t1", "t2"]
    assert [row.split() for row in table[1:]] == [
        ["val/rmse", "1", "0.5", "1.5"],
        ["val/rmse/t850", "2", "1", "3"],
    ]


def test_per_variable_persistence_and_climatology_baselines_match_numpy():
    """Beside each variable's RMSE, its baselines' (the last input held; the climatology),
    plain and latitude-weighted: the references a weather score is read against."""
    from stpdist.metrics import GeoInfo, geo_sums, latitude_weights, summarize_geo

    rng = np.random.default_rng(5)
    target = rng.random((4, 3, 2, 6, 8))
    pred, last = target + 0.1 * rng.standard_normal(target.shape), rng.random((4, 1, 2, 6, 8))
    lat = np.linspace(-60, 60, 6)
    clim = target.mean(axis=(0, 1)) + 0.05
    geo = GeoInfo(["z500", "t2m"], 6, 8, latitudes=list(lat), climatology=clim)
    halves = [
        geo_sums(
            torch.from_numpy(pred[s]), torch.from_numpy(target[s]), geo,
            persistence=torch.from_numpy(last[s]).expand(-1, 3, -1, -1, -1),
        )
        for s in (slice(0, 1), slice(1, 4))
    ]  # fmt: skip
    sums = {k: halves[0][k] + halves[1][k] for k in halves[0]}
    sums["count"] = torch.tensor([4.0], dtype=torch.float64)
    got = summarize_geo(sums, geo, 100.0)
    w = latitude_weights(lat)[None, :, None]
    for name, baseline in (
        ("persistence", np.broadcast_to(last, target.shape)),
        ("climatology", clim),
    ):
        err = np.broadcast_to(baseline, target.shape) - target
        for c, var in enumerate(["z500", "t2m"]):
            overall = np.sqrt((err[:, :, c] ** 2).mean()) * 100
            assert got[f"{name}_rmse/{var}"] == pytest.approx(overall)
            for t in range(3):
                plain = np.sqrt((err[:, t, c] ** 2).mean()) * 100
                weighted = np.sqrt((w * err[:, t, c] ** 2).mean()) * 100
                assert got[f"{name}_rmse/{var}/t{t + 1:02d}"] == pytest.approx(plain)
                assert got[f"{name}_wrmse/{var}/t{t + 1:02d}"] == pytest.approx(weighted)
    assert got["rmse/z500"] < got["persistence_rmse/z500"]  # the model, not a baseline


def test_the_lead_time_table_keeps_columns_apart_whatever_their_width():
    """A review: `-0.0001503` in a 10-wide column ran into its neighbour, and a name longer
    than 22 characters shifted its row; every entry now has its column, two spaces apart."""
    from stpdist.console import lead_time_table

    results = {
        "test/hss@219": 0.02582,
        "test/hss@219/t01": -0.0001503,
        "test/hss@219/t02": -0.0003838,
        "test/csi_pool16@181_of_a_long_name": 0.5,
        "test/csi_pool16@181_of_a_long_name/t01": 0.25,
        "test/csi_pool16@181_of_a_long_name/t02": 0.75,
    }
    table = lead_time_table(results).splitlines()
    assert [row.split() for row in table] == [
        ["metric", "all", "t1", "t2"],
        ["test/hss@219", "0.02582", "-0.0001503", "-0.0003838"],
        ["test/csi_pool16@181_of_a_long_name", "0.5", "0.25", "0.75"],
    ]
    ends = {len(row) for row in table}  # right-aligned columns: every row ends alike
    assert len(ends) == 1, table
