"""Frame sequences → pictures: PNG grids and GIFs (rows input | truth | prediction | error).

Legend: T time, C channels, H×W frame size; values in [0, 1] (the data range after scaling).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image

from .console import lead_keys

GAP = 2


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
    """One image (uint8 RGB): rows input, truth, prediction, |truth − prediction| (one row
    per channel for data of 2 or 4+ channels, e.g. TaxiBJ inflow/outflow); columns are
    frames, separated by GAP-pixel white lines. Only what exists is drawn: without a
    prediction, input and truth; with neither, the input frames alone."""
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


def _row_names(inputs, truth, prediction) -> list[str]:
    """The label of each row of `sequence_panel`, in order."""
    groups = [("input", inputs), ("truth", truth), ("prediction", prediction)]
    if truth is not None and prediction is not None:
        groups.append(("|error|", truth))
    names = []
    for name, frames in groups:
        if frames is None:
            continue
        rows = _channel_rows(frames)
        names += [name] if len(rows) == 1 else [f"{name} c{c}" for c in range(len(rows))]
    return names


def labelled_panel(
    inputs_TCHW: np.ndarray,
    truth_TCHW: np.ndarray | None,
    prediction_TCHW: np.ndarray | None,
    colormap: str | None = None,
    *,
    min_frame_size: int = 64,
) -> np.ndarray:
    """`sequence_panel`, readable without a legend: frames upscaled (nearest neighbour) to
    at least `min_frame_size` pixels, rows labelled (input, truth, prediction, |error|),
    columns numbered (input frames, or lead times for the output rows), and a colour bar
    from 0 to 1 (the scaled data range) for colormapped data."""
    from PIL import ImageDraw

    grid = sequence_panel(inputs_TCHW, truth_TCHW, prediction_TCHW, colormap)
    h, w = np.asarray(inputs_TCHW).shape[-2:]
    zoom = max(1, math.ceil(min_frame_size / max(h, w)))
    grid = grid.repeat(zoom, axis=0).repeat(zoom, axis=1)
    names = _row_names(inputs_TCHW, truth_TCHW, prediction_TCHW)
    left, top, bar = 84, 16, (34 if colormap else 0)
    height, width = grid.shape[:2]
    canvas = Image.new("RGB", (left + width + bar, top + height), "white")
    canvas.paste(Image.fromarray(grid), (left, top))
    draw = ImageDraw.Draw(canvas)
    cell_h, cell_w = (h + GAP) * zoom, (w + GAP) * zoom
    for r, name in enumerate(names):
        draw.text((4, top + r * cell_h + h * zoom // 2 - 5), name, fill="black")
    columns = (width + GAP * zoom) // cell_w
    for c in range(columns):
        draw.text((left + c * cell_w + w * zoom // 2 - 3, 2), str(c + 1), fill="black")
    if colormap:
        import matplotlib

        ramp = matplotlib.colormaps[colormap](np.linspace(1, 0, height))[:, :3]
        strip = np.repeat(np.round(ramp * 255).astype(np.uint8)[:, None], 10, axis=1)
        canvas.paste(Image.fromarray(strip), (left + width + 4, top))
        draw.text((left + width + 16, top), "1", fill="black")
        draw.text((left + width + 16, top + height - 10), "0", fill="black")
    return np.asarray(canvas)


def save_panel(
    path: str | Path,
    inputs_TCHW: np.ndarray,
    truth_TCHW: np.ndarray | None,
    prediction_TCHW: np.ndarray | None,
    colormap: str | None = None,
) -> Path:
    """The labelled, upscaled panel (`labelled_panel`) as a PNG."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    panel = labelled_panel(inputs_TCHW, truth_TCHW, prediction_TCHW, colormap)
    Image.fromarray(panel).save(path)
    return path


def save_gif(
    path: str | Path,
    truth_TCHW: np.ndarray | None,
    prediction_TCHW: np.ndarray,
    fps: int = 4,
    colormap: str | None = None,
) -> Path:
    """An animated GIF of truth (left) beside prediction (right), one frame per time step;
    the prediction alone when there is no truth (a forecast)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pred = to_rgb8(prediction_TCHW, colormap)
    if truth_TCHW is None:
        images = [Image.fromarray(p) for p in pred]
    else:
        truth = to_rgb8(truth_TCHW, colormap)
        gap = np.full((truth.shape[1], GAP, 3), 255, np.uint8)
        images = [Image.fromarray(np.concatenate([t, gap, p], axis=1)) for t, p in zip(truth, pred)]
    images[0].save(path, save_all=True, append_images=images[1:], duration=1000 // fps, loop=0)
    return path


def lead_time_series(
    results: dict[str, float],
) -> tuple[dict[str, list[tuple[int, float]]], dict[str, list[tuple[int, float]]]]:
    """(metric → [(lead, value)], model metric → persistence's [(lead, value)])."""
    per_lead: dict[str, list[tuple[int, float]]] = {}
    for key, (metric, lead) in lead_keys(results).items():
        value = results[key]
        if metric.count("/") > 1:  # per-variable series (`val/rmse/t850`): the table has them
            continue
        if isinstance(value, float) and math.isfinite(value):
            per_lead.setdefault(metric, []).append((lead, value))
    baseline = {
        f"{name.split('/')[0]}/mse": sorted(per_lead.pop(name))
        for name in list(per_lead)
        if name.endswith("/persistence_mse")
    }
    return {k: sorted(v) for k, v in per_lead.items()}, baseline


def plot_lead_times(results: dict[str, float], path: str | Path) -> Path | None:
    """A PNG with one panel per metric against lead time, the persistence (copy the last
    input frame) baseline drawn beside the model's MSE; None when there is none."""
    per_lead, baseline = lead_time_series(results)
    if not per_lead:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    names = sorted(per_lead)
    cols = min(4, len(names))
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.6 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names):
        points = sorted(per_lead[name])
        ax.plot([t for t, _ in points], [v for _, v in points], marker="o", label="model")
        if name in baseline:
            reference = sorted(baseline[name])
            ax.plot([t for t, _ in reference], [v for _, v in reference], "--", marker=".",
                     color="gray", label="persistence")  # fmt: skip
            ax.legend(fontsize=7)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("lead time (frames)", fontsize=8)
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(names) :]:
        ax.axis("off")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
