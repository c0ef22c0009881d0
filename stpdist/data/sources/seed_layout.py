"""The seed project's folders: `<root>/{train,validation,test}/example000001…`.

- Moving MNIST: `example*.npz` with `inputs` and `labels` (10×1×64×64 floats in [0, 1]),
  joined into one 20-frame sequence; stored as uint8 when every value is k/255 exactly.
- KTH: `example*/` folders of grayscale PNG frames, ordered by sorted file name.
- TaxiBJ: `example*.npy`, 8×2×32×32 raw flows (value scale 1292).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ...errors import InputError, MissingInput
from ..format import require_file
from .common import SEED_SPLITS, as_TCHW, load_array

KINDS = ("mmnist", "kth", "taxibj")
TAXIBJ_SCALE = 1292.0


@dataclass
class SeedLayout:
    root: str
    kind: str
    name: str = "seed-layout"
    value_scale: float = 1.0
    grid: float | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise InputError(f"unknown seed dataset kind '{self.kind}'; expected {KINDS}")
        self.name = f"seed-{self.kind}"
        self.value_scale = {"mmnist": 1.0, "kth": 255.0, "taxibj": TAXIBJ_SCALE}[self.kind]
        self.grid = 255.0 if self.kind == "mmnist" else None

    def splits(self) -> dict[str, list[Any]]:
        root = Path(self.root)
        if not root.is_dir():
            raise MissingInput(f"{root}: no such folder")
        out: dict[str, list[Any]] = {}
        for folder in sorted(p for p in root.iterdir() if p.name in SEED_SPLITS):
            pattern = {"mmnist": "example*.npz", "kth": "example*", "taxibj": "example*.npy"}
            found = sorted(folder.glob(pattern[self.kind]))
            if self.kind == "kth":
                found = [p for p in found if p.is_dir()]
            out[SEED_SPLITS[folder.name]] = [str(p) for p in found]
        if not out:
            raise MissingInput(f"{root}: no train/validation/test folders")
        return out

    def load(self, item: str) -> list[tuple[str, np.ndarray, dict]]:
        path = Path(item)
        if self.kind == "mmnist":
            inputs = as_TCHW(load_array(path, "inputs"), path)
            labels = as_TCHW(load_array(path, "labels"), path)
            if inputs.shape[1:] != labels.shape[1:]:
                raise InputError(f"{path}: inputs {inputs.shape} and labels {labels.shape} differ")
            frames = np.concatenate([inputs, labels])
        elif self.kind == "kth":
            frames = _png_frames(path)
        else:
            frames = as_TCHW(load_array(path), path).astype(np.float32)
        self._check_range(frames, path)
        return [(path.name.split(".")[0], frames, {"source": str(path.name)})]

    def _check_range(self, frames: np.ndarray, path: Path) -> None:
        """Stored values ÷ the value scale must lie in [0, 1], as the seed project's data
        does: training divides by the scale and clamps predictions to [0, 1], so values
        outside would train on garbage (an `arrays` conversion refuses them too)."""
        finite = frames[np.isfinite(frames)]  # NaN/Inf: refused, or filled, by the writer
        if finite.size == 0:
            return
        low, high = float(finite.min()), float(finite.max())
        if low < 0 or high > self.value_scale:
            raise InputError(
                f"{path}: values span {low:g}…{high:g}, outside [0, {self.value_scale:g}], the "
                f"range of {self.name} data (its value scale {self.value_scale:g}: training "
                "divides by it and clamps predictions to [0, 1])"
            )

    def args(self) -> dict[str, Any]:
        return {"root": str(self.root), "kind": self.kind}


def _png_frames(folder: Path) -> np.ndarray:
    """The grayscale PNG frames of `folder` in name order, T×1×H×W uint8; frames of
    different sizes are an error naming the first that differs."""
    pngs = sorted(folder.glob("*.png"))
    if not pngs:
        raise InputError(f"{folder}: no PNG frames")
    frames = []
    for png in pngs:
        require_file(png)  # a FIFO would block the reader
        try:
            with Image.open(png) as image:
                frame = np.asarray(image.convert("L"))
        except Exception as exc:
            raise InputError(f"{png}: unreadable PNG frame ({exc})") from exc
        if frames and frame.shape != frames[0].shape:
            (h0, w0), (h, w) = frames[0].shape, frame.shape
            raise InputError(
                f"{png}: frame of {h}×{w} pixels (H×W), the first ({pngs[0].name}) {h0}×{w0}; "
                "every frame of a sequence must have the same size"
            )
        frames.append(frame)
    return np.stack(frames)[:, None]
