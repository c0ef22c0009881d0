"""Frame sequences → pictures: PNG grids and GIFs (rows input | truth | prediction | error).

Legend: T time, C channels, H×W frame size; values in [0, 1] (the data range after scaling).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

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
    truth_TCHW: np.ndarray,
    prediction_TCHW: np.ndarray,
    colormap: str | None = None,
) -> np.ndarray:
    """One image (uint8 RGB): rows input, truth, prediction, |truth − prediction| (one row
    per channel for data of 2 or 4+ channels, e.g. TaxiBJ inflow/outflow); columns are
    frames, separated by GAP-pixel white lines."""
    groups = [inputs_TCHW, truth_TCHW, prediction_TCHW, np.abs(truth_TCHW - prediction_TCHW)]
    rows = [row for group in groups for row in _channel_rows(group)]
    h, w = inputs_TCHW.shape[-2:]
    columns = max(len(r) for r in rows)
    panel = np.full((len(rows) * (h + GAP) - GAP, columns * (w + GAP) - GAP, 3), 255, np.uint8)
    for r, frames in enumerate(rows):
        for c, frame in enumerate(to_rgb8(frames, colormap)):
            top, left = r * (h + GAP), c * (w + GAP)
            panel[top : top + h, left : left + w] = frame
    return panel


def save_panel(
    path: str | Path,
    inputs_TCHW: np.ndarray,
    truth_TCHW: np.ndarray,
    prediction_TCHW: np.ndarray,
    colormap: str | None = None,
) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    panel = sequence_panel(inputs_TCHW, truth_TCHW, prediction_TCHW, colormap)
    Image.fromarray(panel).save(path)
    return path


def save_gif(
    path: str | Path,
    truth_TCHW: np.ndarray,
    prediction_TCHW: np.ndarray,
    fps: int = 4,
    colormap: str | None = None,
) -> Path:
    """An animated GIF of truth (left) beside prediction (right), one frame per time step."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    truth, pred = to_rgb8(truth_TCHW, colormap), to_rgb8(prediction_TCHW, colormap)
    gap = np.full((truth.shape[1], GAP, 3), 255, np.uint8)
    images = [Image.fromarray(np.concatenate([t, gap, p], axis=1)) for t, p in zip(truth, pred)]
    images[0].save(path, save_all=True, append_images=images[1:], duration=1000 // fps, loop=0)
    return path
