"""Frame sequences → pictures: PNG grids and GIFs (rows input | truth | prediction | error).

Legend: T time, C channels, H×W frame size; values in [0, 1] (the data range after scaling).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

GAP = 2


def to_rgb8(frames_TCHW: np.ndarray) -> np.ndarray:
    """T×C×H×W in [0, 1] → T×H×W×3 uint8 (one channel → gray, three → RGB, else channel 0)."""
    frames = np.clip(np.asarray(frames_TCHW, dtype=np.float32), 0.0, 1.0)
    if frames.shape[1] == 3:
        rgb = frames.transpose(0, 2, 3, 1)
    else:
        rgb = np.repeat(frames[:, :1].transpose(0, 2, 3, 1), 3, axis=3)
    return np.round(rgb * 255).astype(np.uint8)


def sequence_panel(
    inputs_TCHW: np.ndarray, truth_TCHW: np.ndarray, prediction_TCHW: np.ndarray
) -> np.ndarray:
    """One H'×W'×3 uint8 image: rows input, truth, prediction, |truth − prediction|;
    columns are frames, separated by a GAP-pixel white line."""
    rows = [inputs_TCHW, truth_TCHW, prediction_TCHW, np.abs(truth_TCHW - prediction_TCHW)]
    _, _, h, w = inputs_TCHW.shape
    columns = max(len(r) for r in rows)
    panel = np.full((4 * h + 3 * GAP, columns * w + (columns - 1) * GAP, 3), 255, np.uint8)
    for r, frames in enumerate(rows):
        for c, frame in enumerate(to_rgb8(frames)):
            top, left = r * (h + GAP), c * (w + GAP)
            panel[top : top + h, left : left + w] = frame
    return panel


def save_panel(
    path: str | Path, inputs_TCHW: np.ndarray, truth_TCHW: np.ndarray, prediction_TCHW: np.ndarray
) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(sequence_panel(inputs_TCHW, truth_TCHW, prediction_TCHW)).save(path)
    return path


def save_gif(
    path: str | Path, truth_TCHW: np.ndarray, prediction_TCHW: np.ndarray, fps: int = 4
) -> Path:
    """An animated GIF of truth (left) beside prediction (right), one frame per time step."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    truth, pred = to_rgb8(truth_TCHW), to_rgb8(prediction_TCHW)
    gap = np.full((truth.shape[1], GAP, 3), 255, np.uint8)
    images = [Image.fromarray(np.concatenate([t, gap, p], axis=1)) for t, p in zip(truth, pred)]
    images[0].save(path, save_all=True, append_images=images[1:], duration=1000 // fps, loop=0)
    return path
