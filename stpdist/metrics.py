"""The field's metrics as additive running sums: exact under DDP (sums are all-reduced).

Legend: B batch, T lead time (output frame), C channels, H×W frame size, K thresholds.
Values are in the data's scaled units (frames / the index's value scale): [0, 1] for images
and radar; physical units for data stored with value scale 1 (weather variables).

* MSE, MAE per pixel (`mse`, `mae`), and in OpenSTL's convention (per-frame sum over
  C×H×W, averaged over frames and samples: `mse_frame`, `mae_frame`); RMSE = √(per-pixel
  MSE). These score the predictions as evaluated (clamped to [0, 1] when
  `evaluation.clamp_output`); `mse_raw`, `mae_raw`, `mse_frame_raw`, `mae_frame_raw` score
  the raw, unclamped predictions, as OpenSTL does (its MSE/MAE are `*_frame_raw`).
* PSNR per frame (data range 1; an exact match counts as 100 dB), averaged. PSNR, SSIM
  and LPIPS compare images in [0, 1]: they are reported only for data whose values (the
  training index's per-channel min and max, scaled) lie in [0, 1], and predictions left
  unclamped (`evaluation.clamp_output: false`) are clipped to [0, 1] for PSNR and SSIM,
  as OpenSTL clips them.
* SSIM per frame and channel: 7×7 uniform window, sample covariance, K1 0.01, K2 0.03,
  data range 1 (the full scaled range), mean over the window positions that fit inside the
  frame (scikit-image's `structural_similarity(…, win_size=7, data_range=1)`), averaged
  over channels, frames and samples. Frames smaller than 7×7 fit no window: SSIM (and
  `ssim_openstl`) is left out of their results (scikit-image refuses them too).
* `ssim_openstl`: the same SSIM with data range 2 (K1, K2 scaled by 2), what OpenSTL's
  scikit-image call computes for float images (it passes no data_range; scikit-image
  ≤ 0.19 then takes 2 = the dtype range −1..1). Higher than `ssim` on the same frames;
  reported only to be put beside OpenSTL's published SSIM.
* `lpips` (with `evaluation.lpips_weights`): LPIPS per frame, AlexNet with the v0.1 linear
  heads (the `lpips` package), inputs scaled to [−1, 1], of the predictions clipped to
  [0, 1] (as for PSNR and SSIM); frames with C ≠ 3 channels scored per channel
  (replicated to 3) and averaged; averaged over frames and samples. See `LPIPSScorer`.
* Skill scores at thresholds in physical (stored) units, event = value ≥ threshold:
  CSI, POD, FAR, HSS from hit / miss / false-alarm / correct-negative counts. The loader
  scales stored values in float32 (x / scale; on CUDA as x × (1/scale)) and the caller
  divides thresholds in float64, so a stored value exactly at the threshold can land a
  float32 rounding below it. Events are therefore `value ≥ threshold × (1 − 2⁻²⁰)`: the
  margin (16 float32 ulps) absorbs that rounding, the same at every scale, and is far
  below one stored unit — exact against a contingency table in stored units for stored
  integers up to 2¹⁹ (tested at scales 255, 1000, 1292).

Conventions at the edges (`evaluation.score_convention`):

* `stpdist` (default): a skill score whose denominator is 0 is undefined, NaN: CSI and
  pooled CSI when neither field has an event (no hits, misses or false alarms), POD when
  no event is observed, FAR when none is forecast, HSS when neither field has an event or
  both are events everywhere (e.g. a threshold of 0 on data ≥ 0), FSS when neither field
  has an event. CSI-M
  (`csi_m`, `csi_m_pool<p>`) is the mean over the thresholds where CSI is defined, per
  lead time and overall, and `csi_m_undefined` (`csi_m_pool<p>_undefined`) counts the
  thresholds left out of the overall value; NaN only when no threshold is defined. Pooled
  CSI max-pools p×p blocks with the partial blocks at the right and bottom edges kept
  (every pixel counts once).
* `earthformer`: Earthformer's and PreDiff's SEVIR scores, to compare with their papers:
  1e-4 added to every denominator (CSI = h / (h + m + f + 1e-4); an empty one scores 0;
  FSS, which they do not report, gets the same: 1 when neither field has an event),
  CSI-M a plain mean, and pooled CSI drops the partial edge blocks (PreDiff's max-pool
  without ceil mode): both agree with `stpdist` when H and W divide by p.
* ACC (`acc/<var>`) is uncentred: the anomalies' means are not removed (WeatherBench 1's
  `compute_weighted_acc` removes them, and reads differently). It is undefined for a
  sample and lead time whose forecast or observed anomaly is zero everywhere (its
  denominator is 0): that pair is left out of the mean, per lead time and overall (pooled
  over lead times); NaN when none is defined.

The conventions apply when the summed counts are turned into scores, so they stay exact
across ranks: the sums are reduced exactly whatever the convention.

Every value is also given per lead time. torchmetrics was not used: it has neither
per-lead-time values nor OpenSTL's sum convention, and the sums here reduce exactly with
one all-reduce.
"""

from __future__ import annotations

import math
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

SSIM_WINDOW = 7
PSNR_CAP_DB = 100.0
THRESHOLD_MARGIN = 2.0**-20
"""Relative margin below a threshold that still counts as reaching it (float32 rounding)."""


def _ssim_per_frame(
    pred_BTCHW: torch.Tensor, target_BTCHW: torch.Tensor, data_ranges: tuple[float, ...] = (1.0,)
) -> torch.Tensor:
    """R×B×T mean SSIM (over window positions and channels), float64, one row per data
    range (the window statistics are shared; only the constants C1, C2 differ)."""
    b, t, c, h, w = pred_BTCHW.shape
    if h < SSIM_WINDOW or w < SSIM_WINDOW:
        raise ValueError(f"SSIM needs frames of at least {SSIM_WINDOW}×{SSIM_WINDOW}; got {h}×{w}")
    x = pred_BTCHW.reshape(b * t * c, 1, h, w).double()
    y = target_BTCHW.reshape(b * t * c, 1, h, w).double()

    def mean(z: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(z, SSIM_WINDOW, stride=1)

    n = SSIM_WINDOW * SSIM_WINDOW
    mx, my = mean(x), mean(y)
    vx = (mean(x * x) - mx * mx) * n / (n - 1)
    vy = (mean(y * y) - my * my) * n / (n - 1)
    vxy = (mean(x * y) - mx * my) * n / (n - 1)
    rows = []
    for data_range in data_ranges:
        c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
        ssim = ((2 * mx * my + c1) * (2 * vxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
        rows.append(ssim.mean(dim=(1, 2, 3)).view(b, t, c).mean(dim=2))
    return torch.stack(rows)


def batch_sums(
    pred_BTCHW: torch.Tensor,
    target_BTCHW: torch.Tensor,
    thresholds_scaled: list[float] = (),
    *,
    raw_pred_BTCHW: torch.Tensor | None = None,
    image_scores: bool = True,
) -> dict[str, torch.Tensor]:
    """Additive sums over the batch, per lead time, in float64 on the input's device.
    `raw_pred_BTCHW`: the predictions before clamping, for the `*_raw` errors (None: the
    same as `pred_BTCHW`). `image_scores`: PSNR and SSIM too (data in [0, 1]; SSIM only
    for frames of at least 7×7)."""
    pred, target = pred_BTCHW.double(), target_BTCHW.double()
    err = pred - target
    sq_frame = err.pow(2).flatten(2).sum(dim=2)  # B×T: sum over C×H×W
    abs_frame = err.abs().flatten(2).sum(dim=2)
    if raw_pred_BTCHW is None:
        sq_raw, abs_raw = sq_frame, abs_frame
    else:
        raw_err = raw_pred_BTCHW.double() - target
        sq_raw = raw_err.pow(2).flatten(2).sum(dim=2)
        abs_raw = raw_err.abs().flatten(2).sum(dim=2)
    sums = {
        "count": torch.tensor([float(pred.shape[0])], dtype=torch.float64, device=pred.device),
        "sq_err": sq_frame.sum(dim=0),
        "abs_err": abs_frame.sum(dim=0),
        "sq_err_raw": sq_raw.sum(dim=0),
        "abs_err_raw": abs_raw.sum(dim=0),
    }
    if image_scores:
        # images in [0, 1]: predictions left unclamped (`evaluation.clamp_output: false`)
        # are clipped for PSNR and SSIM, as OpenSTL clips them (the same values otherwise)
        image = pred.clamp(0, 1)
        sq_image = (image - target).pow(2).flatten(2).sum(dim=2)
        pixels = err[0, 0].numel()
        mse_frame = (sq_image / pixels).clamp_min(10 ** (-PSNR_CAP_DB / 10))
        sums["psnr"] = (-10 * torch.log10(mse_frame)).sum(dim=0)
        if min(pred.shape[-2:]) >= SSIM_WINDOW:  # else no window fits: SSIM left out
            ssim, ssim_openstl = _ssim_per_frame(image, target, (1.0, 2.0))
            sums["ssim"] = ssim.sum(dim=0)
            sums["ssim_openstl"] = ssim_openstl.sum(dim=0)
    if thresholds_scaled:
        sums.update(event_sums(pred, target, thresholds_scaled))
    return sums


def event_sums(
    pred_BTCHW: torch.Tensor,
    target_BTCHW: torch.Tensor,
    thresholds_scaled: Sequence[float],
    prefix: str = "",
) -> dict[str, torch.Tensor]:
    """The contingency counts at each threshold, K×T (hits, misses, false alarms, correct
    negatives), over the batch and every pixel of the channels given, in float64; keys
    `prefix` + `hits`… (`persistence_hits`: the last input frame's counts)."""
    pred, target = pred_BTCHW.double(), target_BTCHW.double()
    levels = torch.tensor(list(thresholds_scaled), dtype=torch.float64, device=pred.device)
    levels = levels - levels.abs() * THRESHOLD_MARGIN  # see the module docstring
    shape = (-1, 1, 1, 1, 1, 1)
    p = pred.unsqueeze(0) >= levels.view(shape)  # K×B×T×C×H×W
    o = target.unsqueeze(0) >= levels.view(shape)
    dims = (1, 3, 4, 5)  # keep K×T
    return {
        f"{prefix}hits": (p & o).sum(dim=dims).double(),
        f"{prefix}misses": (~p & o).sum(dim=dims).double(),
        f"{prefix}false_alarms": (p & ~o).sum(dim=dims).double(),
        f"{prefix}correct_negatives": (~p & ~o).sum(dim=dims).double(),
    }


CONVENTIONS = ("stpdist", "earthformer")
EARTHFORMER_EPS = 1e-4
"""Added to every skill-score denominator by Earthformer's and PreDiff's SEVIR metrics."""


def _ratio(num: torch.Tensor, den: torch.Tensor, convention: str = "stpdist") -> torch.Tensor:
    """num / den: NaN where den is 0 (`stpdist`), or num / (den + 1e-4) (`earthformer`)."""
    if convention == "earthformer":
        return num / (den + EARTHFORMER_EPS)
    if convention != "stpdist":
        raise ValueError(f"score convention {convention!r}: expected one of {CONVENTIONS}")
    return torch.where(den > 0, num / den.clamp_min(1e-300), torch.full_like(num, float("nan")))


def summarize(
    sums: dict[str, torch.Tensor],
    frame_pixels: int,
    thresholds: list[float] = (),
    convention: str = "stpdist",
) -> dict[str, float]:
    """Metric values from (reduced) sums: overall and per lead time (`…/t01`, …); skill
    scores with an empty denominator as `convention` says (see the module docstring)."""
    count = float(sums["count"].sum())
    if count == 0:
        raise ValueError("no samples were evaluated")
    per_lead = {
        "mse": sums["sq_err"] / (count * frame_pixels),
        "mse_frame": sums["sq_err"] / count,
        "mae": sums["abs_err"] / (count * frame_pixels),
        "mae_frame": sums["abs_err"] / count,
    }
    for name in ("psnr", "ssim", "ssim_openstl"):  # data in [0, 1] only (`batch_sums`)
        if name in sums:
            per_lead[name] = sums[name] / count
    if "sq_err_raw" in sums:  # sums from batch_sums always hold these four
        per_lead["mse_raw"] = sums["sq_err_raw"] / (count * frame_pixels)
        per_lead["mse_frame_raw"] = sums["sq_err_raw"] / count
        per_lead["mae_raw"] = sums["abs_err_raw"] / (count * frame_pixels)
        per_lead["mae_frame_raw"] = sums["abs_err_raw"] / count
    if "lpips" in sums:  # from LPIPSScorer.sums, when model.evaluation.lpips_weights is set
        per_lead["lpips"] = sums["lpips"] / count
    per_lead["rmse"] = per_lead["mse"].sqrt()
    out: dict[str, float] = {}
    for name, values in per_lead.items():
        out[name] = (
            float(values.mean()) if name != "rmse" else math.sqrt(float(per_lead["mse"].mean()))
        )
        for t, value in enumerate(values.tolist()):
            out[f"{name}/t{t + 1:02d}"] = value
    for prefix in ("", PERSISTENCE):  # the model's; the last input frame's, where counted
        if f"{prefix}hits" in sums:
            out.update(_event_scores(sums, thresholds, convention, prefix))
    return out


PERSISTENCE = "persistence_"
"""The prefix of the persistence baseline's sums and scores (the last input frame held for
every lead time): `persistence_csi@20`, `persistence_hss@20`, …"""

EVENT_COUNTS = ("hits", "misses", "false_alarms", "correct_negatives")


def _event_scores(
    sums: dict[str, torch.Tensor], thresholds: Sequence[float], convention: str, prefix: str
) -> dict[str, float]:
    """CSI, POD, FAR and HSS at each threshold from `prefix`'s contingency counts, over all
    lead times and per lead time (`…/t01`)."""
    out: dict[str, float] = {}
    for k, level in enumerate(thresholds):
        counts = {n: sums[prefix + n][k] for n in EVENT_COUNTS}
        totals = {n: v.sum() for n, v in counts.items()}
        for name, pair in (("per lead", counts), ("all", totals)):
            h, m, f, cn = (pair[n] for n in EVENT_COUNTS)
            hss_den = (h + m) * (m + cn) + (h + f) * (f + cn)
            scores = {
                "csi": _ratio(h, h + m + f, convention),
                "pod": _ratio(h, h + m, convention),
                "far": _ratio(f, h + f, convention),
                "hss": _ratio(2 * (h * cn - m * f), hss_den, convention),
            }
            for score, value in scores.items():
                key = f"{prefix}{score}@{level:g}"
                if name == "all":
                    out[key] = float(value)
                else:
                    for t, v in enumerate(value.tolist()):
                        out[f"{key}/t{t + 1:02d}"] = v
    return out


# ------------------------------------------------------------ geoscience verification scores
# Per variable (channel), per lead time, from additive sums like the ones above. Physical
# units are scaled values × the index's value scale.


@dataclass
class GeoInfo:
    """What per-variable scores need from a dataset's index: a name per channel, optional
    latitudes (degrees, one per row) and climatology (C×H×W, scaled units)."""

    names: list[str]
    height: int
    width: int
    latitudes: list[float] | None = None
    climatology: Any = None

    @property
    def lat_weights(self) -> torch.Tensor | None:
        if not self.latitudes:
            return None
        return torch.from_numpy(latitude_weights(self.latitudes))


def latitude_weights(latitudes_deg: Any) -> np.ndarray:
    """cos(latitude), normalised to mean 1 over the rows (float64)."""
    latitudes = np.asarray(latitudes_deg, dtype=np.float64)
    weights = np.cos(np.deg2rad(latitudes))
    # all at the poles: every cos is ~6e-17, and normalising would blow rounding up
    if not (latitudes.size and np.all(np.abs(latitudes) <= 90) and weights.mean() > 1e-6):
        shown = f"{latitudes.min():g}…{latitudes.max():g}" if latitudes.size else "none"
        raise ValueError(
            "latitude weights need finite latitudes in [−90°, 90°], not all at the poles; "
            f"got {shown}"
        )
    return weights / weights.mean()


def geo_sums(
    pred_BTCHW: torch.Tensor,
    target_BTCHW: torch.Tensor,
    geo: GeoInfo,
    *,
    persistence: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Per lead time and variable (T×C) sums of squared and absolute errors (scaled units);
    latitude-weighted squared errors when `geo` has latitudes; per-sample anomaly
    correlations (against the climatology, latitude-weighted when it can be) when it has a
    climatology. The baselines' squared errors beside them: `persistence` (the last input
    frame held, B×T×C×H×W) when given, the climatology when there is one."""
    pred, target = pred_BTCHW.double(), target_BTCHW.double()
    err = pred - target
    sums = {
        "var_sq_err": err.pow(2).sum(dim=(0, 3, 4)),
        "var_abs_err": err.abs().sum(dim=(0, 3, 4)),
    }
    weights = geo.lat_weights
    w = (
        torch.ones(pred.shape[-2], dtype=torch.float64)
        if weights is None
        else weights.to(torch.float64)
    )
    w = w.to(pred.device).view(1, 1, 1, -1, 1)
    if weights is not None:
        sums["var_wsq_err"] = (w * err.pow(2)).sum(dim=(0, 3, 4))
    clim = None
    if geo.climatology is not None:
        clim = torch.as_tensor(np.asarray(geo.climatology), dtype=torch.float64)
        clim = clim.to(pred.device).unsqueeze(0).unsqueeze(0)  # 1×1×C×H×W
    for name, baseline in (("persistence", persistence), ("climatology", clim)):
        if baseline is not None:
            base_sq = (baseline.double() - target).pow(2)
            sums[f"var_{name}_sq_err"] = base_sq.sum(dim=(0, 3, 4))
            if weights is not None:
                sums[f"var_{name}_wsq_err"] = (w * base_sq).sum(dim=(0, 3, 4))
    if clim is not None:
        fa, oa = pred - clim, target - clim
        num = (w * fa * oa).sum(dim=(3, 4))
        den = ((w * fa * fa).sum(dim=(3, 4)) * (w * oa * oa).sum(dim=(3, 4))).sqrt()
        defined = den > 0  # a zero anomaly everywhere: ACC undefined, left out of the mean
        acc = torch.where(defined, num / den.clamp_min(1e-300), torch.zeros_like(num))
        sums["var_acc"] = acc.sum(dim=0)  # B×T×C → T×C
        sums["var_acc_count"] = defined.double().sum(dim=0)
    return sums


def summarize_geo(
    sums: dict[str, torch.Tensor], geo: GeoInfo, value_scale: float
) -> dict[str, float]:
    """`rmse/<var>`, `mae/<var>` (physical units), `wrmse/<var>` (latitude-weighted RMSE),
    `acc/<var>` (mean anomaly correlation), each also per lead time (`…/t01`); beside them
    the baselines' `persistence_rmse/<var>` and `climatology_rmse/<var>` (and `…_wrmse`)
    where their sums are there."""
    count = float(sums["count"].sum())
    pixels = count * geo.height * geo.width
    per_lead: dict[str, torch.Tensor] = {
        "rmse": (sums["var_sq_err"] / pixels).sqrt() * value_scale,
        "mae": sums["var_abs_err"] / pixels * value_scale,
    }
    overall = {
        "rmse": (sums["var_sq_err"].mean(dim=0) / pixels).sqrt() * value_scale,
        "mae": per_lead["mae"].mean(dim=0),
    }
    for prefix in ("", "persistence_", "climatology_"):
        for weighted in ("", "w"):
            key = f"var_{prefix}{weighted}sq_err"
            if key in sums and (prefix or weighted):
                score = f"{prefix}{weighted}rmse"
                per_lead[score] = (sums[key] / pixels).sqrt() * value_scale
                overall[score] = (sums[key].mean(dim=0) / pixels).sqrt() * value_scale
    if "var_acc" in sums:  # mean over the (sample, lead time) pairs where ACC is defined
        defined = sums.get("var_acc_count", torch.full_like(sums["var_acc"], count))
        per_lead["acc"] = sums["var_acc"] / defined  # 0 / 0: NaN, none defined
        overall["acc"] = sums["var_acc"].sum(dim=0) / defined.sum(dim=0)
    out: dict[str, float] = {}
    for score, values_TC in per_lead.items():
        for c, name in enumerate(geo.names):
            out[f"{score}/{name}"] = float(overall[score][c])
            for t in range(values_TC.shape[0]):
                out[f"{score}/{name}/t{t + 1:02d}"] = float(values_TC[t, c])
    return out


# ------------------------------------------------- neighbourhood scores (radar nowcasting)
# Events are value ≥ threshold (with THRESHOLD_MARGIN, as above). Pooled CSI (SEVIR /
# Earthformer): max-pool prediction and observation events over non-overlapping p×p
# neighbourhoods (stride p), then count hits / misses / false alarms. FSS (Roberts & Lean
# 2008): event fractions over n×n windows (zero-padded, stride 1), FSS = 1 − Σ(Pf − Po)² /
# (Σ Pf² + Σ Po²), the sums pooled over samples.


def _events(frames_BTCHW: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """K×B×T×C×H×W float64 events at each threshold (scaled units)."""
    levels = levels - levels.abs() * THRESHOLD_MARGIN
    return (frames_BTCHW.double().unsqueeze(0) >= levels.view(-1, 1, 1, 1, 1, 1)).double()


def neighbourhood_sums(
    pred_BTCHW: torch.Tensor,
    target_BTCHW: torch.Tensor,
    thresholds_scaled: list[float],
    pool_sizes: list[int] = (),
    fss_sizes: list[int] = (),
    convention: str = "stpdist",
) -> dict[str, torch.Tensor]:
    """Per threshold and lead time (K×T) sums: `pool<p>_hits/misses/false_alarms` for each
    pooling size (partial edge blocks kept, or dropped with convention `earthformer`),
    `fss<n>_sq_diff` and `fss<n>_sq_ref` for each FSS window size."""
    levels = torch.tensor(list(thresholds_scaled), dtype=torch.float64, device=pred_BTCHW.device)
    k, (b, t, c, h, w) = len(levels), pred_BTCHW.shape
    p_ev, o_ev = _events(pred_BTCHW, levels), _events(target_BTCHW, levels)
    flat = (k * b * t * c, 1, h, w)
    sums: dict[str, torch.Tensor] = {}

    def per_kt(x: torch.Tensor) -> torch.Tensor:
        return x.reshape(k, b, t, -1).sum(dim=(1, 3))

    keep_partial = convention != "earthformer"
    for size in pool_sizes:
        if not keep_partial and size > min(h, w):
            raise ValueError(f"pool size {size} leaves no whole block in a {h}×{w} frame")
        pp = F.max_pool2d(p_ev.reshape(flat), size, stride=size, ceil_mode=keep_partial) > 0
        oo = F.max_pool2d(o_ev.reshape(flat), size, stride=size, ceil_mode=keep_partial) > 0
        sums[f"pool{size}_hits"] = per_kt((pp & oo).double())
        sums[f"pool{size}_misses"] = per_kt((~pp & oo).double())
        sums[f"pool{size}_false_alarms"] = per_kt((pp & ~oo).double())
    for size in fss_sizes:
        pad = size // 2
        kwargs = {"stride": 1, "padding": pad, "count_include_pad": True}
        pf = F.avg_pool2d(p_ev.reshape(flat), size, **kwargs)[..., :h, :w]
        po = F.avg_pool2d(o_ev.reshape(flat), size, **kwargs)[..., :h, :w]
        sums[f"fss{size}_sq_diff"] = per_kt((pf - po).pow(2))
        sums[f"fss{size}_sq_ref"] = per_kt(pf.pow(2) + po.pow(2))
    return sums


def summarize_neighbourhood(
    sums: dict[str, torch.Tensor],
    thresholds: list[float],
    pool_sizes: list[int] = (),
    fss_sizes: list[int] = (),
    convention: str = "stpdist",
) -> dict[str, float]:
    """`csi_m` (CSI averaged over thresholds, from the sums of `batch_sums`),
    `csi_pool<p>@<thr>`, `csi_m_pool<p>`, `fss<n>@<thr>`, each also per lead time; with
    convention `stpdist`, `csi_m_undefined` and `csi_m_pool<p>_undefined` (thresholds left
    out of the overall CSI-M: empty denominators)."""
    out: dict[str, float] = {}

    def put(name: str, per_lead: torch.Tensor, overall: torch.Tensor) -> None:
        out[name] = float(overall)
        for t, value in enumerate(per_lead.tolist()):
            out[f"{name}/t{t + 1:02d}"] = value

    def csi(h: torch.Tensor, m: torch.Tensor, f: torch.Tensor) -> tuple[torch.Tensor, ...]:
        # per lead (K×T) and over all lead times (K)
        total = h + m + f
        return _ratio(h, total, convention), _ratio(h.sum(-1), total.sum(-1), convention)

    # (name, sums' prefix): the model's CSI-M, each pooled CSI. Not persistence's: each
    # averages the thresholds where its own CSI is defined, and a threshold with no event
    # observed is defined for a model that false-alarms there (CSI 0) but not for
    # persistence, which forecasts none: two means over other thresholds, misleading side
    # by side (a review measured persistence 0.705 vs the model's 0.528, the model as good
    # or better at every threshold both scored)
    variants = [("csi_m", "")] if "hits" in sums else []
    variants += [(f"csi_m_pool{p}", f"pool{p}_") for p in pool_sizes]
    for name, counted in variants:
        per_lead, overall = csi(*(sums[counted + n] for n in EVENT_COUNTS[:3]))
        # the thresholds where CSI is defined (all of them with `earthformer`'s eps)
        put(name, per_lead.nanmean(dim=0), overall.nanmean())
        if convention == "stpdist":
            out[f"{name}_undefined"] = float(overall.isnan().sum())
        if counted.startswith("pool"):
            suffix = name.removeprefix("csi_m")
            for k, level in enumerate(thresholds):
                put(f"csi{suffix}@{level:g}", per_lead[k], overall[k])
    for size in fss_sizes:
        diff, ref = sums[f"fss{size}_sq_diff"], sums[f"fss{size}_sq_ref"]
        per_lead = 1 - _ratio(diff, ref, convention)
        overall = 1 - _ratio(diff.sum(-1), ref.sum(-1), convention)
        for k, level in enumerate(thresholds):
            put(f"fss{size}@{level:g}", per_lead[k], overall[k])
    return out


# ------------------------------------------------------------------ LPIPS (perceptual)
# Through the `lpips` package (the `lpips` extra): its AlexNet variant with the v0.1 linear
# heads that ship inside the package, and AlexNet backbone weights from a file the user
# gives; nothing is downloaded. Per frame, inputs scaled from [0, 1] to [−1, 1]; 3-channel
# frames are scored as RGB, any other channel count one channel at a time (each replicated
# to 3) and averaged over channels.

LPIPS_MIN_SIZE = 31
"""Smallest frame side AlexNet's strides and pools leave a feature map for."""
LPIPS_CHUNK_FRAMES = 64
"""Frames per LPIPS forward: bounds the AlexNet activations' memory on large batches."""
_ALEXNET_HINT = (
    "torchvision's `alexnet` state dict (keys features.0.weight … features.10.bias), e.g. "
    "the IMAGENET1K_V1 file alexnet-owt-7be5be79.pth"
)
_torchvision_op_stubs: Any = None  # kept alive: collecting the Library drops its schemas


def _import_lpips() -> Any:
    """The `lpips` module. PyPI's torchvision wheels are built against CUDA torch: on a CPU
    torch their C++ ops do not load, and torchvision 0.28 then fails at import, registering
    fake kernels for two of those ops (nms, qnms) that do not exist. Declaring the two
    schemas (no kernels: LPIPS never calls them) lets the pure-Python models import."""
    global _torchvision_op_stubs
    try:
        import lpips
    except ModuleNotFoundError as exc:
        raise ImportError(
            f"LPIPS needs the `lpips` extra ({exc.name} is missing): pip install 'stpdist[lpips]'"
        ) from exc
    except RuntimeError as exc:
        if "torchvision::" not in str(exc) or _torchvision_op_stubs is not None:
            raise
        import sys

        for name in [m for m in sys.modules if m.split(".")[0] in ("torchvision", "lpips")]:
            del sys.modules[name]  # the half-imported packages, imported again below
        _torchvision_op_stubs = torch.library.Library("torchvision", "DEF")
        for op in ("nms", "qnms"):
            _torchvision_op_stubs.define(
                f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor"
            )
        import lpips
    return lpips


def load_alexnet_features(path: str | Path) -> dict[str, torch.Tensor]:
    """The `features.*` tensors of a torchvision `alexnet` state dict file, on the CPU; a
    missing, unreadable or wrongly keyed file is one error naming it and what was expected."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"LPIPS weights file {path} (model.evaluation.lpips_weights) does not exist; "
            f"expected {_ALEXNET_HINT}, downloaded by you"
        )
    try:
        # mmap: only the features are read of a zip-format file (torch.save's default
        # since 1.6; torchvision's own IMAGENET1K_V1 file is older, read whole)
        state = torch.load(path, "cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except Exception as exc:
        raise ValueError(
            f"LPIPS weights file {path} is not a readable state dict ({type(exc).__name__}); "
            f"expected {_ALEXNET_HINT}"
        ) from exc
    features = {}
    if isinstance(state, dict):
        features = {
            k: v for k, v in state.items() if isinstance(k, str) and k.startswith("features.")
        }
    if not features:
        keys = list(state)[:4] if isinstance(state, dict) else type(state).__name__
        raise ValueError(f"LPIPS weights file {path} holds {keys}; expected {_ALEXNET_HINT}")
    return features


class LPIPSScorer:
    """LPIPS (AlexNet, v0.1 heads) per frame, built once, in eval mode and frozen. A plain
    object, not an `nn.Module`: held by a module, it stays out of that module's parameters,
    state_dict and checkpoints. It follows the inputs' device on first use."""

    def __init__(self, weights_path: str | Path, frame_size: tuple[int, int] | None = None) -> None:
        if frame_size is not None and min(frame_size) < LPIPS_MIN_SIZE:
            raise ValueError(
                f"LPIPS (AlexNet) needs frames of at least {LPIPS_MIN_SIZE}×{LPIPS_MIN_SIZE}; "
                f"got {frame_size[0]}×{frame_size[1]}"
            )
        weights_path = Path(weights_path).expanduser()
        features = load_alexnet_features(weights_path)  # fails before the slow import
        lpips = _import_lpips()
        import warnings

        with warnings.catch_warnings():  # lpips passes torchvision's deprecated `pretrained`
            warnings.filterwarnings("ignore", category=UserWarning, module="torchvision")
            # pretrained: the linear heads from inside the package; pnet_rand: AlexNet built
            # without torchvision's download, its weights loaded below
            net = lpips.LPIPS(net="alex", pretrained=True, pnet_rand=True, verbose=False)
        # lpips splits AlexNet's `features` into slices that keep torchvision's layer
        # indices: slice2.3.weight is features.3.weight
        backbone = net.net
        wanted = {key: f"features.{key.split('.', 1)[1]}" for key in backbone.state_dict()}
        missing = sorted(v for v in wanted.values() if v not in features)
        if missing:
            raise ValueError(
                f"LPIPS weights file {weights_path} lacks {missing}; expected {_ALEXNET_HINT}"
            )
        try:
            backbone.load_state_dict({key: features[src] for key, src in wanted.items()})
        except RuntimeError as exc:  # shapes
            raise ValueError(
                f"LPIPS weights file {weights_path} does not fit AlexNet "
                f"({str(exc).splitlines()[-1].strip()}); expected {_ALEXNET_HINT}"
            ) from exc
        self.net = net.eval().requires_grad_(False)
        self.device = torch.device("cpu")

    def per_frame(self, pred_BTCHW: torch.Tensor, target_BTCHW: torch.Tensor) -> torch.Tensor:
        """B×T LPIPS distances (float64) of frames in [0, 1]: predictions clipped to it, as
        OpenSTL clips them and as PSNR and SSIM are (unclamped ones, `evaluation.clamp_output:
        false`, reached AlexNet outside [−1, 1]: a metrics review)."""
        b, t, c, h, w = pred_BTCHW.shape
        pred_BTCHW = pred_BTCHW.clamp(0, 1)
        if min(h, w) < LPIPS_MIN_SIZE:
            raise ValueError(
                f"LPIPS needs frames of at least {LPIPS_MIN_SIZE}×{LPIPS_MIN_SIZE}; got {h}×{w}"
            )
        if pred_BTCHW.device != self.device:
            self.net.to(pred_BTCHW.device)
            self.device = pred_BTCHW.device
        rgb = c == 3
        shape = (b * t, 3, h, w) if rgb else (b * t * c, 1, h, w)
        x, y = pred_BTCHW.reshape(shape), target_BTCHW.reshape(shape)
        distances = []
        # float32 outside autocast: a bf16 validation pass must not lower LPIPS's precision
        with torch.no_grad(), torch.autocast(x.device.type, enabled=False):
            for i in range(0, x.shape[0], LPIPS_CHUNK_FRAMES):
                xi, yi = (z[i : i + LPIPS_CHUNK_FRAMES].float() * 2 - 1 for z in (x, y))
                if not rgb:
                    xi, yi = xi.expand(-1, 3, -1, -1), yi.expand(-1, 3, -1, -1)
                distances.append(self.net(xi, yi).flatten())
        return torch.cat(distances).double().view(b, t, -1).mean(dim=2)

    def sums(self, pred_BTCHW: torch.Tensor, target_BTCHW: torch.Tensor) -> dict[str, torch.Tensor]:
        """{"lpips": per lead time (T) sums over the batch}, as `batch_sums`' entries."""
        return {"lpips": self.per_frame(pred_BTCHW, target_BTCHW).sum(dim=0)}
