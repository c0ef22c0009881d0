"""The field's metrics as additive running sums: exact under DDP (sums are all-reduced).

Legend: B batch, T lead time (output frame), C channels, H×W frame size, K thresholds.
Values are in the scaled data range [0, 1] (frames / the index's value scale).

* MSE, MAE per pixel, and in OpenSTL's convention (per-frame sum over C×H×W, averaged
  over frames and samples); RMSE = √(per-pixel MSE).
* PSNR per frame (data range 1; an exact match counts as 100 dB), averaged.
* SSIM per frame and channel: 7×7 uniform window, sample covariance, K1 0.01, K2 0.03,
  data range 1 (the full scaled range), mean over the window positions that fit inside the
  frame (scikit-image's `structural_similarity(…, win_size=7, data_range=1)`), averaged
  over channels, frames and samples.
* Skill scores at thresholds in physical (stored) units, event = value ≥ threshold:
  CSI, POD, FAR, HSS from hit / miss / false-alarm / correct-negative counts. The loader
  scales stored values in float32 (x / scale; on CUDA as x × (1/scale)) and the caller
  divides thresholds in float64, so a stored value exactly at the threshold can land a
  float32 rounding below it. Events are therefore `value ≥ threshold × (1 − 2⁻²⁰)`: the
  margin (16 float32 ulps) absorbs that rounding, the same at every scale, and is far
  below one stored unit — exact against a contingency table in stored units for stored
  integers up to 2¹⁹ (tested at scales 255, 1000, 1292).

Every value is also given per lead time. torchmetrics was not used: it has neither
per-lead-time values nor OpenSTL's sum convention, and the sums here reduce exactly with
one all-reduce.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

SSIM_WINDOW = 7
PSNR_CAP_DB = 100.0
THRESHOLD_MARGIN = 2.0**-20
"""Relative margin below a threshold that still counts as reaching it (float32 rounding)."""


def _ssim_per_frame(pred_BTCHW: torch.Tensor, target_BTCHW: torch.Tensor) -> torch.Tensor:
    """B×T mean SSIM (over window positions and channels), float64."""
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
    c1, c2 = 0.01**2, 0.03**2
    ssim = ((2 * mx * my + c1) * (2 * vxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return ssim.mean(dim=(1, 2, 3)).view(b, t, c).mean(dim=2)


def batch_sums(
    pred_BTCHW: torch.Tensor, target_BTCHW: torch.Tensor, thresholds_scaled: list[float] = ()
) -> dict[str, torch.Tensor]:
    """Additive sums over the batch, per lead time, in float64 on the input's device."""
    pred, target = pred_BTCHW.double(), target_BTCHW.double()
    err = pred - target
    sq_frame = err.pow(2).flatten(2).sum(dim=2)  # B×T: sum over C×H×W
    abs_frame = err.abs().flatten(2).sum(dim=2)
    pixels = err[0, 0].numel()
    mse_frame = (sq_frame / pixels).clamp_min(10 ** (-PSNR_CAP_DB / 10))
    sums = {
        "count": torch.tensor([float(pred.shape[0])], dtype=torch.float64, device=pred.device),
        "sq_err": sq_frame.sum(dim=0),
        "abs_err": abs_frame.sum(dim=0),
        "psnr": (-10 * torch.log10(mse_frame)).sum(dim=0),
        "ssim": _ssim_per_frame(pred, target).sum(dim=0),
    }
    if thresholds_scaled:
        levels = torch.tensor(list(thresholds_scaled), dtype=torch.float64, device=pred.device)
        levels = levels - levels.abs() * THRESHOLD_MARGIN  # see the module docstring
        shape = (-1, 1, 1, 1, 1, 1)
        p = pred.unsqueeze(0) >= levels.view(shape)  # K×B×T×C×H×W
        o = target.unsqueeze(0) >= levels.view(shape)
        dims = (1, 3, 4, 5)  # keep K×T
        sums["hits"] = (p & o).sum(dim=dims).double()
        sums["misses"] = (~p & o).sum(dim=dims).double()
        sums["false_alarms"] = (p & ~o).sum(dim=dims).double()
        sums["correct_negatives"] = (~p & ~o).sum(dim=dims).double()
    return sums


def _ratio(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    return torch.where(den > 0, num / den.clamp_min(1e-300), torch.full_like(num, float("nan")))


def summarize(
    sums: dict[str, torch.Tensor], frame_pixels: int, thresholds: list[float] = ()
) -> dict[str, float]:
    """Metric values from (reduced) sums: overall and per lead time (`…/t01`, …)."""
    count = float(sums["count"].sum())
    if count == 0:
        raise ValueError("no samples were evaluated")
    per_lead = {
        "mse": sums["sq_err"] / (count * frame_pixels),
        "mse_frame": sums["sq_err"] / count,
        "mae": sums["abs_err"] / (count * frame_pixels),
        "mae_frame": sums["abs_err"] / count,
        "psnr": sums["psnr"] / count,
        "ssim": sums["ssim"] / count,
    }
    per_lead["rmse"] = per_lead["mse"].sqrt()
    out: dict[str, float] = {}
    for name, values in per_lead.items():
        out[name] = (
            float(values.mean()) if name != "rmse" else math.sqrt(float(per_lead["mse"].mean()))
        )
        for t, value in enumerate(values.tolist()):
            out[f"{name}/t{t + 1:02d}"] = value
    for k, level in enumerate(thresholds):
        counts = {n: sums[n][k] for n in ("hits", "misses", "false_alarms", "correct_negatives")}
        totals = {n: v.sum() for n, v in counts.items()}
        for name, pair in (("per lead", counts), ("all", totals)):
            h, m, f, cn = (pair[n] for n in ("hits", "misses", "false_alarms", "correct_negatives"))
            scores = {
                "csi": _ratio(h, h + m + f),
                "pod": _ratio(h, h + m),
                "far": _ratio(f, h + f),
                "hss": _ratio(2 * (h * cn - m * f), (h + m) * (m + cn) + (h + f) * (f + cn)),
            }
            for score, value in scores.items():
                key = f"{score}@{level:g}"
                if name == "all":
                    out[key] = float(value)
                else:
                    for t, v in enumerate(value.tolist()):
                        out[f"{key}/t{t + 1:02d}"] = v
    return out
