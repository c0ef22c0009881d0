"""Frame sequences → pictures: sample panels (PNG), GIFs and the per-lead-time plot.

Legend: T time, C channels, H×W frame size; values in [0, 1] (the data range after scaling).
A sample panel has rows input | truth | prediction | persistence | |error| (each row one
channel for data of 2 or 4+ channels), input frames numbered −(T_in−1) … 0 (0 is the last
input) and lead times +1 … +T_out, a title with the sample key, step and MSE, and colour
bars for the values and for |error|. Sample keys become file names only through
`sample_file_stems` (keys come from data: "../x" or "/abs/x" must not leave the folder).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from .console import lead_keys

if TYPE_CHECKING:
    from matplotlib.figure import Figure

GAP = 2
DPI = 100
CELL_IN = 0.8
"""Inches per frame in a sample panel: 80 px at DPI, so a 10-frame panel is ~1100 px wide,
readable when a wandb media panel shrinks it to half."""
MAX_STEM = 100
"""Longest file stem made from a key (file systems allow 255 bytes; room for suffixes)."""


# ---------------------------------------------------------------------------- file names
def sample_file_stem(key: str) -> str:
    """A file stem from a sample key that stays inside its folder: every run of characters
    other than letters, digits, `_` and `-` becomes `_` (slashes, dots, spaces), leading
    and trailing `_` are dropped, the rest is cut to MAX_STEM; an empty result is
    "sample"."""
    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", str(key)).strip("_")[:MAX_STEM]
    return stem or "sample"


def sample_file_stems(keys: Iterable[str]) -> list[str]:
    """`sample_file_stem` of each key, distinct: a stem already taken (two keys that differ
    only in characters the sanitising replaces, e.g. "a/b" and "a_b", or only in case, which
    some file systems ignore) gets a suffix "-2", "-3", … in key order."""
    taken: set[str] = set()
    stems = []
    for key in keys:
        base = stem = sample_file_stem(key)
        n = 1
        while stem.casefold() in taken:
            n += 1
            stem = f"{base}-{n}"
        taken.add(stem.casefold())
        stems.append(stem)
    return stems


def save_samples(
    folder: str | Path,
    samples: Sequence[tuple[str, np.ndarray, np.ndarray | None, np.ndarray | None]],
    colormap: str | None = None,
    *,
    step: int | None = None,
    gifs: bool = True,
) -> list[tuple[str, Path, Path | None]]:
    """A panel (`<stem>.png`) and, with `gifs` and a prediction, a GIF (`<stem>.gif`) for
    each (key, inputs, truth, prediction) in `folder`, named by `sample_file_stems`:
    [(stem, png, gif or None)]."""
    folder = Path(folder)
    written = []
    for stem, (key, inputs, truth, pred) in zip(sample_file_stems(s[0] for s in samples), samples):
        png = save_panel(folder / f"{stem}.png", inputs, truth, pred, colormap, key=key, step=step)
        gif = None
        if gifs and pred is not None:
            gif = save_gif(folder / f"{stem}.gif", truth, pred, colormap=colormap, key=key)
        written.append((stem, png, gif))
    return written


# ---------------------------------------------------------------------------- raw frames
def to_rgb8(frames_TCHW: np.ndarray, colormap: str | None = None) -> np.ndarray:
    """T×C×H×W in [0, 1] → T×H×W×3 uint8: three channels as RGB; otherwise channel 0 in
    gray, or through a matplotlib colormap (e.g. "viridis" for radar or flow intensity)."""
    frames = np.clip(np.asarray(frames_TCHW, dtype=np.float32), 0.0, 1.0)
    if frames.shape[1] == 3 and colormap is None:
        rgb = frames.transpose(0, 2, 3, 1)
    elif colormap is not None:
        import matplotlib

        rgb = matplotlib.colormaps[colormap](frames[:, 0])[..., :3]
    else:
        rgb = np.repeat(frames[:, :1].transpose(0, 2, 3, 1), 3, axis=3)
    return np.round(rgb * 255).astype(np.uint8)


def _channel_rows(frames_TCHW: np.ndarray) -> list[np.ndarray]:
    """One T×1×H×W row per channel, or the frames as they are for 1 or 3 channels."""
    if frames_TCHW.shape[1] in (1, 3):
        return [frames_TCHW]
    return [frames_TCHW[:, c : c + 1] for c in range(frames_TCHW.shape[1])]


def sequence_panel(
    inputs_TCHW: np.ndarray,
    truth_TCHW: np.ndarray | None,
    prediction_TCHW: np.ndarray | None,
    colormap: str | None = None,
) -> np.ndarray:
    """The frames alone as one uint8 RGB image, without labels: rows input, truth,
    prediction, |truth − prediction| (one row per channel for 2 or 4+ channels); columns
    are frames, separated by GAP-pixel white lines. Only what exists is drawn."""
    groups = [x for x in (inputs_TCHW, truth_TCHW, prediction_TCHW) if x is not None]
    if truth_TCHW is not None and prediction_TCHW is not None:
        groups.append(np.abs(truth_TCHW - prediction_TCHW))
    rows = [row for group in groups for row in _channel_rows(group)]
    h, w = inputs_TCHW.shape[-2:]
    columns = max(len(r) for r in rows)
    panel = np.full((len(rows) * (h + GAP) - GAP, columns * (w + GAP) - GAP, 3), 255, np.uint8)
    for r, frames in enumerate(rows):
        for c, frame in enumerate(to_rgb8(frames, colormap)):
            top, left = r * (h + GAP), c * (w + GAP)
            panel[top : top + h, left : left + w] = frame
    return panel


# ---------------------------------------------------------------------------- sample panel
class _Row:
    """One row of a sample panel: label, T×C'×H×W frames (C' 1 or 3), 'value' or 'error',
    and whether its columns are lead times (else input frames)."""

    def __init__(self, label: str, frames: np.ndarray, kind: str, leads: bool) -> None:
        self.label, self.frames, self.kind, self.leads = label, frames, kind, leads


def _mse(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))


def _panel_rows(inputs, truth, prediction) -> tuple[list[_Row], dict[str, float]]:
    """The rows of a sample panel and the sample's scores ('mse', 'persistence_mse')."""
    groups: list[tuple[str, np.ndarray, str, bool]] = [("input", inputs, "value", False)]
    scores: dict[str, float] = {}
    persistence = None
    if truth is not None:
        groups.append(("truth", truth, "value", True))
        # persistence: the last input frame held for every lead time (the nowcasting floor)
        persistence = np.repeat(inputs[-1:], len(truth), axis=0)
        scores["persistence_mse"] = _mse(persistence, truth)
    if prediction is not None:
        label = "prediction"
        if truth is not None:
            scores["mse"] = _mse(prediction, truth)
            label += f"\nMSE {scores['mse']:.4g}"
        groups.append((label, prediction, "value", True))
    if persistence is not None:
        label = f"persistence\n(last input)\nMSE {scores['persistence_mse']:.4g}"
        groups.append((label, persistence, "value", True))
    if truth is not None and prediction is not None:
        groups.append(("|error|\nprediction", np.abs(truth - prediction), "error", True))
    if persistence is not None:
        groups.append(("|error|\npersistence", np.abs(truth - persistence), "error", True))
    rows = []
    for label, frames, kind, leads in groups:
        if kind == "error" and frames.shape[1] == 3:
            frames = frames.mean(axis=1, keepdims=True)  # one error map for RGB
        channels = _channel_rows(np.asarray(frames, np.float32))
        for c, part in enumerate(channels):
            name = label if len(channels) == 1 else f"{label} c{c}"
            rows.append(_Row(name, part, kind, leads))
    return rows, scores


def _value_range(arrays: Iterable[np.ndarray | None]) -> tuple[float, float]:
    """(0, 1), the scaled data range, unless the frames reach clearly beyond it (data
    normalised to zero mean): then their own range."""
    present = [np.asarray(a) for a in arrays if a is not None and np.size(a)]
    lo = min(float(np.nanmin(a)) for a in present)
    hi = max(float(np.nanmax(a)) for a in present)
    if lo >= -0.01 and hi <= 1.01 or not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return 0.0, 1.0
    return lo, hi


def sample_figure(
    inputs_TCHW: np.ndarray,
    truth_TCHW: np.ndarray | None,
    prediction_TCHW: np.ndarray | None,
    colormap: str | None = None,
    *,
    key: str = "",
    step: int | None = None,
) -> Figure:
    """A sample panel as a matplotlib Figure (not yet saved): a title (key, step, the
    sample's MSE next to persistence's), labelled rows (input, truth, prediction,
    persistence, |error| of both; only what exists; one axes a row), input frames numbered
    −(T_in−1)…0 and lead times +1…+T_out, a colour bar for the values and one for |error|.
    Without a colormap everything is gray (errors dark on white)."""
    from matplotlib.figure import Figure

    inputs_TCHW = np.asarray(inputs_TCHW, np.float32)
    rows, scores = _panel_rows(inputs_TCHW, truth_TCHW, prediction_TCHW)
    columns = max(len(r.frames) for r in rows)
    h, w = inputs_TCHW.shape[-2:]
    # the longer side of a frame gets CELL_IN: frames keep their aspect ratio
    cell_w, cell_h = CELL_IN * min(1.0, w / h), CELL_IN * min(1.0, h / w)
    gap_px = max(1, round(0.06 * w / cell_w))  # white lines between frames, in frame pixels
    scale = cell_w / w  # inches per frame pixel
    left, right, head, top, row_gap, group_gap = 1.5, 1.35, 0.3, 0.6, 0.06, 0.2
    # column numbers above the first row and above the first lead-time row
    first_lead = next((i for i, r in enumerate(rows) if r.leads), None)
    headers = 1 + (first_lead is not None and first_lead > 0)
    first_error = next((i for i, r in enumerate(rows) if r.kind == "error"), None)
    height = top + headers * head + len(rows) * (cell_h + row_gap) + 0.1
    height += group_gap if first_error else 0.0
    width = left + (columns * (w + gap_px) - gap_px) * scale + right
    width, height = math.ceil(width * DPI) / DPI, math.ceil(height * DPI) / DPI  # whole pixels
    fig = Figure(figsize=(width, height), dpi=DPI)
    style = {
        "value": (colormap or "gray", *_value_range([inputs_TCHW, truth_TCHW, prediction_TCHW])),
        "error": (
            "magma" if colormap else "gray_r",
            0.0,
            max([float(np.nanmax(r.frames)) for r in rows if r.kind == "error"] + [1e-6]),
        ),
    }
    y = height - top
    mappables: dict[str, Any] = {}
    extents: dict[str, list[float]] = {}  # kind → [lowest y, highest y] of its rows, inches
    for r, row in enumerate(rows):
        numbered = r == 0 or r == first_lead
        y -= cell_h + (head if numbered else 0.0) + (group_gap if r == first_error else 0.0)
        row_w = (len(row.frames) * (w + gap_px) - gap_px) * scale
        ax = fig.add_axes((left / width, y / height, row_w / width, cell_h / height))
        image = _draw_row(ax, row, style[row.kind], gap_px, numbered=numbered)
        mappables.setdefault(row.kind, image)
        extents.setdefault(row.kind, [y, y + cell_h])[0] = y
        y -= row_gap
    _colour_bars(fig, mappables, extents, x=width - right + 0.25, width=width, height=height)
    title = [key or "sample"] + ([f"step {step}"] if step is not None else [])
    if "mse" in scores:
        title.append(f"MSE {scores['mse']:.4g} (persistence {scores['persistence_mse']:.4g})")
    fig.suptitle("  ·  ".join(title), fontsize=15, y=1 - 0.2 / height, va="top")
    return fig


def _draw_row(ax: Any, row: _Row, style: tuple, gap_px: int, *, numbered: bool) -> Any:
    """One row's frames side by side in `ax` (white gaps), labelled on the left; numbered
    on top (−(T−1)…0 for input frames, +1…+T for lead times) when `numbered`."""
    cmap_name, vmin, vmax = style
    t, c, h, w = row.frames.shape
    strip = np.full((h, t * (w + gap_px) - gap_px, c), np.nan, np.float32)
    for i, frame in enumerate(row.frames):
        strip[:, i * (w + gap_px) : i * (w + gap_px) + w] = frame.transpose(1, 2, 0)
    if c == 3:  # RGB: the values themselves, white gaps
        rgb = np.clip((strip - vmin) / (vmax - vmin), 0.0, 1.0)
        image = ax.imshow(np.where(np.isnan(strip), 1.0, rgb), interpolation="nearest")
    else:
        import matplotlib

        cmap = matplotlib.colormaps[cmap_name].with_extremes(bad="white")  # white gaps
        masked = np.ma.masked_invalid(strip[..., 0])
        image = ax.imshow(masked, cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
        if cmap_name == "gray_r":  # white-based scale: outline the frames to keep their edges
            from matplotlib.patches import Rectangle

            for i in range(t):
                corner = (i * (w + gap_px) - 0.5, -0.5)
                ax.add_patch(Rectangle(corner, w, h, fill=False, edgecolor="0.6", linewidth=0.8))
    ax.set_aspect("auto")
    for spine in ax.spines.values():
        spine.set_visible(False)
    ax.set_yticks([])
    ax.set_ylabel(row.label, rotation=0, ha="right", va="center", fontsize=12)
    if numbered:
        centres = [i * (w + gap_px) + (w - 1) / 2 for i in range(t)]
        names = [f"+{i + 1}" if row.leads else ("0" if i == t - 1 else f"−{t - 1 - i}")
                 for i in range(t)]  # fmt: skip
        ax.xaxis.tick_top()
        ax.set_xticks(centres, names, fontsize=11)
        ax.tick_params(axis="x", length=0, pad=2)
    else:
        ax.set_xticks([])
    return image


def _colour_bars(
    fig: Figure, mappables: dict, extents: dict, *, x: float, width: float, height: float
) -> None:
    """A colour bar beside the value rows ('value') and one beside the error rows
    ('|error|'), each as tall as its rows."""
    labels = {"value": "value", "error": "|error|"}
    for kind, mappable in mappables.items():
        if mappable.get_array().ndim == 3:  # RGB frames: no colour scale to show
            continue
        low, high = extents[kind]
        cax = fig.add_axes((x / width, low / height, 0.18 / width, (high - low) / height))
        bar = fig.colorbar(mappable, cax=cax)
        bar.set_label(labels[kind], fontsize=12)
        bar.ax.tick_params(labelsize=10)


def save_panel(
    path: str | Path,
    inputs_TCHW: np.ndarray,
    truth_TCHW: np.ndarray | None,
    prediction_TCHW: np.ndarray | None,
    colormap: str | None = None,
    *,
    key: str | None = None,
    step: int | None = None,
) -> Path:
    """The sample panel (`sample_figure`; the key defaults to the file's stem) as a PNG."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig = sample_figure(
        inputs_TCHW, truth_TCHW, prediction_TCHW, colormap, key=key or path.stem, step=step
    )
    fig.savefig(path, dpi=DPI)
    return path


# ---------------------------------------------------------------------------- GIF
GIF_MIN_SIZE = 256
"""Smallest side of a GIF's frames in pixels (frames are enlarged, nearest neighbour)."""


def _font(size: int) -> Any:
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: the small bitmap font only
        return ImageFont.load_default()


def gif_frames(
    truth_TCHW: np.ndarray | None,
    prediction_TCHW: np.ndarray,
    colormap: str | None = None,
    *,
    key: str = "",
    min_size: int = GIF_MIN_SIZE,
) -> list[Image.Image]:
    """The images of `save_gif`: truth (left) beside prediction (right), or the prediction
    alone, enlarged (nearest neighbour) to at least `min_size` pixels a side, under a
    caption: the key, then "truth +t" and "prediction +t" (lead time t) over each half."""
    from PIL import ImageDraw

    pred = to_rgb8(prediction_TCHW, colormap)
    halves = [("prediction", pred)] if truth_TCHW is None else []
    if truth_TCHW is not None:
        halves = [("truth", to_rgb8(truth_TCHW, colormap)), ("prediction", pred)]
    h, w = pred.shape[1:3]
    zoom = max(1, math.ceil(min_size / min(h, w)))
    big_h, big_w, gap, line = h * zoom, w * zoom, 8, 22
    header = 2 * line + 6
    width = len(halves) * big_w + (len(halves) - 1) * gap
    font = _font(16)
    caption = key if len(key) * 9 <= width else key[: max(1, width // 9 - 1)] + "…"
    images = []
    for t in range(len(pred)):
        canvas = Image.new("RGB", (width, header + big_h), "white")
        draw = ImageDraw.Draw(canvas)
        draw.text((4, 3), caption, fill="black", font=font)
        for i, (name, frames) in enumerate(halves):
            x = i * (big_w + gap)
            frame = frames[t].repeat(zoom, axis=0).repeat(zoom, axis=1)
            canvas.paste(Image.fromarray(frame), (x, header))
            draw.text((x + 4, 3 + line), f"{name}  (lead +{t + 1})", fill="black", font=font)
        images.append(canvas)
    return images


def save_gif(
    path: str | Path,
    truth_TCHW: np.ndarray | None,
    prediction_TCHW: np.ndarray,
    fps: int = 4,
    colormap: str | None = None,
    *,
    key: str | None = None,
    min_size: int = GIF_MIN_SIZE,
) -> Path:
    """An animated GIF, one frame per lead time (`gif_frames`; the key defaults to the
    file's stem)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    images = gif_frames(
        truth_TCHW, prediction_TCHW, colormap, key=key or path.stem, min_size=min_size
    )
    images[0].save(path, save_all=True, append_images=images[1:], duration=1000 // fps, loop=0)
    return path


# ---------------------------------------------------------------------------- lead times
_AXIS_LABELS = {
    "mse": "MSE per pixel",
    "mse_raw": "MSE per pixel (unclamped)",
    "mse_frame": "MSE per frame (sum over pixels)",
    "mse_frame_raw": "MSE per frame (unclamped)",
    "mae": "MAE per pixel",
    "mae_raw": "MAE per pixel (unclamped)",
    "mae_frame": "MAE per frame (sum over pixels)",
    "mae_frame_raw": "MAE per frame (unclamped)",
    "rmse": "RMSE per pixel",
    "psnr": "PSNR (dB)",
    "ssim": "SSIM",
    "ssim_openstl": "SSIM (OpenSTL's)",
}


def _axis_label(metric: str) -> str:
    """The y-axis label of a per-lead panel: `val/mse` → 'MSE per pixel'; scores without
    a known unit (thresholded ones such as `csi@0.5`) are labelled by their name."""
    name = metric.split("/", 1)[-1]
    return _AXIS_LABELS.get(name, name.upper() if len(name) <= 4 else name)


def _persistence_of(metric: str, per_lead: dict, persistence_mse: list) -> list | None:
    """Persistence's [(lead, value)] for `metric` where it follows exactly from the
    persistence MSE per pixel: the MSE (clamped or raw: the last input frame is in range),
    the per-frame MSE (a constant number of pixels times it) and the RMSE (its root)."""
    name = metric.split("/", 1)[-1]
    if name in ("mse", "mse_raw"):
        return persistence_mse
    if name == "rmse":
        return [(t, math.sqrt(v)) for t, v in persistence_mse]
    mse = dict(per_lead.get(metric.split("/", 1)[0] + "/mse", []))
    if name in ("mse_frame", "mse_frame_raw") and mse:
        ratios = [v / mse[t] for t, v in per_lead[metric] if mse.get(t)]
        if ratios:
            return [(t, v * ratios[0]) for t, v in persistence_mse]
    return None


def lead_time_series(
    results: dict[str, float],
) -> tuple[dict[str, list[tuple[int, float]]], dict[str, list[tuple[int, float]]]]:
    """(metric → [(lead, value)], model metric → persistence's [(lead, value)]): the
    persistence series for every metric that follows from `<prefix>/persistence_mse`."""
    per_lead: dict[str, list[tuple[int, float]]] = {}
    for key, (metric, lead) in lead_keys(results).items():
        value = results[key]
        if metric.count("/") > 1:  # per-variable series (`val/rmse/t850`): the table has them
            continue
        if isinstance(value, float) and math.isfinite(value):
            per_lead.setdefault(metric, []).append((lead, value))
    per_lead = {k: sorted(v) for k, v in per_lead.items()}
    persistence = {
        name.split("/")[0]: per_lead.pop(name)
        for name in list(per_lead)
        if name.endswith("/persistence_mse")
    }
    baseline = {}
    for metric in per_lead:
        prefix = metric.split("/")[0]
        if prefix in persistence:
            series = _persistence_of(metric, per_lead, persistence[prefix])
            if series:
                baseline[metric] = series
    return per_lead, baseline


def lead_time_figure(results: dict[str, float], *, title: str | None = None) -> Figure | None:
    """One panel per metric against lead time, each with its y-axis label, and a dashed
    persistence (last input frame held) line wherever it follows from the results; a
    figure title; None when the results hold no per-lead values."""
    per_lead, baseline = lead_time_series(results)
    if not per_lead:
        return None
    import matplotlib.ticker
    from matplotlib.figure import Figure

    names = sorted(per_lead)
    cols = min(4, len(names))
    rows = math.ceil(len(names) / cols)
    width, height = round(3.6 * cols * DPI) / DPI, round((2.9 * rows + 0.6) * DPI) / DPI
    fig = Figure(figsize=(width, height), dpi=DPI)
    # fixed margins in inches (a constrained layout measures every tick label: it took
    # longer than the drawing): y label and tick labels on the left of each panel, its
    # title above, the x label below, the figure's title on top
    axes = fig.subplots(
        rows,
        cols,
        squeeze=False,
        gridspec_kw={
            "left": 0.85 / width,
            "right": 1 - 0.15 / width,
            "bottom": 0.5 / height,
            "top": 1 - 0.85 / height,
            "wspace": 0.95 / (3.6 - 0.95),
            "hspace": 0.8 / (2.9 - 0.8),
        },
    )
    for ax, name in zip(axes.flat, names):
        points = per_lead[name]
        ax.plot([t for t, _ in points], [v for _, v in points], marker="o", label="model")
        if name in baseline:
            reference = baseline[name]
            ax.plot([t for t, _ in reference], [v for _, v in reference], "--", marker=".",
                    color="gray", label="persistence")  # fmt: skip
            ax.legend(fontsize=8)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("lead time (frames)", fontsize=9)
        ax.set_ylabel(_axis_label(name), fontsize=9)
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.tick_params(labelsize=8)
    for ax in list(axes.flat)[len(names) :]:
        ax.axis("off")
    prefix = names[0].split("/")[0]
    fig.suptitle(title or f"{prefix} metrics by lead time (dashed: persistence)", fontsize=13)
    return fig


def plot_lead_times(
    results: dict[str, float], path: str | Path, *, title: str | None = None
) -> Path | None:
    """`lead_time_figure` as a PNG; None (nothing written) without per-lead values."""
    fig = lead_time_figure(results, title=title)
    if fig is None:
        return None
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    return path
