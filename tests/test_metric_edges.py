"""Metric conventions at the edges (issue 25 item 15): empty skill-score denominators,
CSI-M over thresholds no pixel reaches, pooled CSI's partial edge blocks, ACC with a zero
anomaly; each convention checked against numpy written here, in both conventions, and
exact when the sums come from two halves of a batch (two ranks)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from stpdist.metrics import (
    EARTHFORMER_EPS,
    GeoInfo,
    batch_sums,
    geo_sums,
    neighbourhood_sums,
    summarize,
    summarize_geo,
    summarize_neighbourhood,
)

THRESHOLDS = [0.3, 0.6, 2.0]  # scaled units: 2.0 is above every value in [0, 1]


def _frames(shape=(3, 2, 1, 12, 12), seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=g, dtype=torch.float64), torch.rand(
        shape, generator=g, dtype=torch.float64
    )


def _counts(pred, target, level, lead=None):
    """(hits, misses, false alarms, correct negatives) in numpy, over all or one lead."""
    p, o = pred.numpy() >= level, target.numpy() >= level
    if lead is not None:
        p, o = p[:, lead], o[:, lead]
    return (p & o).sum(), (~p & o).sum(), (p & ~o).sum(), (~p & ~o).sum()


def _scores(pred, target, convention, pools=(4,), fss=(3,)):
    sums = batch_sums(pred, target, THRESHOLDS)
    sums.update(neighbourhood_sums(pred, target, THRESHOLDS, pools, fss, convention))
    out = summarize(sums, pred[0, 0].numel(), THRESHOLDS, convention)
    out.update(summarize_neighbourhood(sums, THRESHOLDS, pools, fss, convention))
    return out


def test_csi_m_averages_the_thresholds_where_csi_is_defined():
    """stpdist: one threshold that no pixel reaches leaves CSI at it undefined (NaN, as
    documented), but CSI-M (overall, per lead, pooled) is the mean over the others, and
    the left-out thresholds are counted."""
    pred, target = _frames()
    got = _scores(pred, target, "stpdist")
    assert math.isnan(got["csi@2"]) and math.isnan(got["pod@2"]) and math.isnan(got["csi@2/t01"])
    csi = []
    for level in THRESHOLDS[:2]:
        h, m, f, _ = _counts(pred, target, level)
        csi.append(h / (h + m + f))
        assert got[f"csi@{level:g}"] == pytest.approx(csi[-1], rel=1e-12)
    assert got["csi_m"] == pytest.approx(np.mean(csi), rel=1e-12)
    assert got["csi_m_undefined"] == 1.0
    for lead in range(2):
        per = [(lambda h, m, f, _: h / (h + m + f))(*_counts(pred, target, lv, lead))
               for lv in THRESHOLDS[:2]]  # fmt: skip
        assert got[f"csi_m/t{lead + 1:02d}"] == pytest.approx(np.mean(per), rel=1e-12)
    assert math.isfinite(got["csi_m_pool4"]) and got["csi_m_pool4_undefined"] == 1.0
    assert math.isnan(got["csi_pool4@2"]) and math.isnan(got["fss3@2"])  # no event anywhere


def test_csi_m_is_nan_only_when_no_threshold_is_defined():
    pred, target = _frames()
    sums = batch_sums(pred, target, [5.0, 6.0])
    got = summarize_neighbourhood(sums, [5.0, 6.0])
    assert math.isnan(got["csi_m"]) and got["csi_m_undefined"] == 2.0


def test_earthformer_convention_adds_eps_to_every_denominator():
    """Earthformer/PreDiff: h / (h + m + f + 1e-4) and the like; a threshold no pixel
    reaches scores 0 and is averaged in; no `…_undefined` counts."""
    pred, target = _frames()
    got = _scores(pred, target, "earthformer")
    eps = EARTHFORMER_EPS
    csi = []
    for level in THRESHOLDS:
        h, m, f, cn = _counts(pred, target, level)
        csi.append(h / (h + m + f + eps))
        assert got[f"csi@{level:g}"] == pytest.approx(csi[-1], rel=1e-12)
        assert got[f"pod@{level:g}"] == pytest.approx(h / (h + m + eps), rel=1e-12)
        assert got[f"far@{level:g}"] == pytest.approx(f / (h + f + eps), rel=1e-12)
        hss = 2 * (h * cn - m * f) / ((h + m) * (m + cn) + (h + f) * (f + cn) + eps)
        assert got[f"hss@{level:g}"] == pytest.approx(hss, rel=1e-12)
    assert got["csi@2"] == 0.0 and got["csi_m"] == pytest.approx(np.mean(csi), rel=1e-12)
    assert got["fss3@2"] == 1.0  # 1 − 0 / (0 + eps): neither field has an event
    assert not any(key.endswith("_undefined") for key in got)


def _pooled_numpy(events, p, keep_partial):
    """N×H×W bool events → N×(blocks) any-pooled, partial edge blocks kept or dropped."""
    n, h, w = events.shape
    if keep_partial:
        hh, ww = -(-h // p) * p, -(-w // p) * p
        padded = np.zeros((n, hh, ww), bool)
        padded[:, :h, :w] = events
    else:
        hh, ww = h // p * p, w // p * p
        padded = events[:, :hh, :ww]
    return padded.reshape(n, hh // p, p, ww // p, p).any(axis=(2, 4))


@pytest.mark.parametrize("convention", ["stpdist", "earthformer"])
def test_pooled_csi_edge_blocks(convention):
    """36×70 frames, 16×16 blocks: `stpdist` keeps the partial blocks at the right and
    bottom edges, `earthformer` drops them (PreDiff); each against numpy."""
    pred, target = _frames((2, 2, 1, 36, 70), seed=1)
    level = 0.9
    sums = neighbourhood_sums(pred, target, [level], [16], convention=convention)
    keep = convention == "stpdist"
    pp = _pooled_numpy((pred.numpy() >= level).reshape(-1, 36, 70), 16, keep)
    oo = _pooled_numpy((target.numpy() >= level).reshape(-1, 36, 70), 16, keep)
    assert pp.shape[1:] == ((3, 5) if keep else (2, 4))
    assert float(sums["pool16_hits"].sum()) == (pp & oo).sum()
    assert float(sums["pool16_misses"].sum()) == (~pp & oo).sum()
    assert float(sums["pool16_false_alarms"].sum()) == (pp & ~oo).sum()


def test_pooled_csi_conventions_agree_when_the_blocks_tile_the_frame():
    pred, target = _frames((2, 2, 1, 32, 64), seed=1)
    a = neighbourhood_sums(pred, target, [0.9], [16], convention="stpdist")
    b = neighbourhood_sums(pred, target, [0.9], [16], convention="earthformer")
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("convention", ["stpdist", "earthformer"])
def test_scores_are_exact_from_the_sums_of_two_halves(convention):
    """Two ranks each sum half the batch; the conventions apply to the reduced sums, so
    the scores equal one rank's exactly."""
    pred, target = _frames((4, 2, 1, 20, 20), seed=2)
    pools, fss = [8], [3]

    def sums_of(p, t):
        s = batch_sums(p, t, THRESHOLDS)
        s.update(neighbourhood_sums(p, t, THRESHOLDS, pools, fss, convention))
        return s

    whole = sums_of(pred, target)
    a, b = sums_of(pred[:2], target[:2]), sums_of(pred[2:], target[2:])
    reduced = {k: a[k] + b[k] for k in a}
    for key in ("hits", "misses", "pool8_hits", "pool8_false_alarms", "fss3_sq_ref"):
        assert torch.equal(reduced[key], whole[key]) or torch.allclose(
            reduced[key], whole[key], rtol=1e-15, atol=0
        )
    one = summarize_neighbourhood(whole, THRESHOLDS, pools, fss, convention)
    two = summarize_neighbourhood(reduced, THRESHOLDS, pools, fss, convention)
    for key, value in one.items():
        assert (math.isnan(value) and math.isnan(two[key])) or value == pytest.approx(
            two[key], rel=1e-12
        )


def _acc_numpy(fa, oa):
    return (fa * oa).sum() / np.sqrt((fa * fa).sum() * (oa * oa).sum())


def test_acc_leaves_out_samples_with_a_zero_anomaly():
    """A sample whose forecast equals the climatology has no anomaly: its ACC is undefined
    and left out of the mean (it was averaged in as 0); none defined gives NaN."""
    g = np.random.default_rng(3)
    clim = g.random((1, 6, 6))
    target = g.random((2, 2, 1, 6, 6))
    pred = g.random((2, 2, 1, 6, 6))
    pred[0] = clim  # sample 0: zero forecast anomaly at both lead times
    geo = GeoInfo(["v"], 6, 6, climatology=clim)
    sums = geo_sums(torch.from_numpy(pred), torch.from_numpy(target), geo)
    sums["count"] = torch.tensor([2.0], dtype=torch.float64)
    got = summarize_geo(sums, geo, 1.0)
    per_lead = [_acc_numpy(pred[1, t] - clim, target[1, t] - clim) for t in range(2)]
    assert got["acc/v/t01"] == pytest.approx(per_lead[0], rel=1e-12)
    assert got["acc/v/t02"] == pytest.approx(per_lead[1], rel=1e-12)
    assert got["acc/v"] == pytest.approx(np.mean(per_lead), rel=1e-12)

    none = geo_sums(torch.from_numpy(np.broadcast_to(clim, pred.shape).copy()),
                    torch.from_numpy(target), geo)  # fmt: skip
    none["count"] = torch.tensor([2.0], dtype=torch.float64)
    assert math.isnan(summarize_geo(none, geo, 1.0)["acc/v"])


@pytest.mark.parametrize("convention, expected", [("stpdist", math.nan), ("earthformer", 0.0)])
def test_score_convention_reaches_the_forecasters_metrics(convention, expected):
    """`model.evaluation.score_convention` decides a validation's CSI-M when the only
    threshold is never reached (255 in stored units of scale 255: values ≤ 1 never)."""
    from stpdist.config import load_config
    from stpdist.task import Forecaster

    cfg = load_config(
        None,
        [
            "model.backbone={hidden_channels: [4], kernel_size: 3}",
            "model.evaluation.metric_thresholds=[300]",
            "model.evaluation.csi_pool_sizes=[4]",
            f"model.evaluation.score_convention={convention}",
        ],
    )
    module = Forecaster(cfg.model, (1, 8, 8), 2, 2, value_scale=255.0).eval()
    inputs, targets = torch.rand(2, 2, 1, 8, 8), torch.rand(2, 2, 1, 8, 8)
    with torch.no_grad():
        got = module.metrics_from_sums(module.validation_step(inputs, targets)["sums"])
    for key in ("csi_m", "csi_m_pool4"):
        assert (math.isnan(got[key]) and math.isnan(expected)) or got[key] == expected
    assert ("csi_m_undefined" in got) == (convention == "stpdist")


def test_earthformer_pooling_refuses_a_block_larger_than_the_frame():
    from stpdist.config import ConfigError, load_config
    from stpdist.task import Forecaster

    cfg = load_config(
        None,
        [
            "model.evaluation.metric_thresholds=[100]",
            "model.evaluation.csi_pool_sizes=[16]",
            "model.evaluation.score_convention=earthformer",
        ],
    )
    with pytest.raises(ConfigError, match="csi_pool_sizes.*8×8"):
        Forecaster(cfg.model, (1, 8, 8), 2, 2)
