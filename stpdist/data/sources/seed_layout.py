"""The seed project's folders: `<root>/{train,validation,test}/example000001…`.

- Moving MNIST: `example*.npz` with `inputs` and `labels` (10×1×64×64 floats in [0, 1]),
  joined into one 20-frame sequence; stored as uint8 when every value is k/255 exactly.
- KTH: `example*/` folders of 8-bit PNG frames, in natural name order (`2.png` before
  `10.png`; zero-padded names sort as text does), converted to grayscale.
- TaxiBJ: `example*.npy`, 8×2×32×32 raw flows (value scale 1292).

Nothing is left out silently: a folder beside the split folders, or a file or folder in
one that is not a sequence (`valid/`, `train/my_sequence/`, `train/seq7.npz`), is refused,
named, when it holds data of the layout (arrays, PNG frames), as `shard arrays` refuses
arrays it would leave out. `require_all` (the command line) needs all three split folders,
each holding a sequence (`validation/` or `val/`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ...console import log
from ...errors import InputError, MissingInput
from .common import SEED_SPLITS, as_TCHW, frame_key, listed, load_array, png_8bit

KINDS = ("mmnist", "kth", "taxibj")
TAXIBJ_SCALE = 1292.0
PREFIX = "example"
KTH_ADVICE = (
    "convert the frames to 8-bit, or save each sequence as an .npy array (T×H×W, uint16 "
    "kept) and convert it with `stpdist shard arrays --value-scale 65535`"
)
SEQUENCE = {"mmnist": "example*.npz", "kth": "example*/", "taxibj": "example*.npy"}
"""What a sequence of each layout is called (file suffixes in any case: EXAMPLE1.NPZ too)."""
DATA = {"mmnist": (".npz", ".npy"), "kth": (".png",), "taxibj": (".npy", ".npz")}
"""Suffixes of the files that are data of each layout: one left out is refused."""


@dataclass
class SeedLayout:
    root: str
    kind: str
    name: str = "seed-layout"
    value_scale: float = 1.0
    grid: float | None = None
    require_all: bool = False
    """Refuse a layout without all three split folders, each holding a sequence, as the
    docs say (`stpdist shard seed-…`); False converts the splits there are (a train-only
    copy, as `stpdist bench` makes)."""

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
        folders = {
            p.name: p for p in sorted(root.iterdir()) if p.is_dir() and p.name in SEED_SPLITS
        }
        if "val" in folders and "validation" in folders:
            raise InputError(f"{root} has both val/ and validation/ (the same split): keep one")
        self._check_nothing_left_out(root, list(folders.values()))
        found = {
            SEED_SPLITS[name]: [str(p) for p in sorted(folder.iterdir()) if self._is_sequence(p)]
            for name, folder in folders.items()
        }
        out = {split: found[split] for split in ("train", "val", "test") if split in found}
        missing = [split for split in ("train", "val", "test") if not out.get(split)]
        if self.require_all and missing:
            names = {"train": "train/", "val": "validation/", "test": "test/"}
            what = " and ".join(names[split] for split in missing)
            verbs = "is missing or holds" if len(missing) == 1 else "are missing or hold"
            raise InputError(
                f"{root}: {what} {verbs} no {SEQUENCE[self.kind]}; a {self.name} "
                "layout needs all three split folders, train/, validation/ (or val/) and "
                "test/, each holding sequences"
            )
        if not out:
            raise MissingInput(f"{root}: no train/validation/test folders")
        return out

    def _is_sequence(self, entry: Path) -> bool:
        """Whether `entry` (in a split folder) is a sequence of the layout."""
        if not entry.name.startswith(PREFIX):
            return False
        if self.kind == "kth":
            return entry.is_dir()
        suffix = {"mmnist": ".npz", "taxibj": ".npy"}[self.kind]
        return not entry.is_dir() and entry.suffix.lower() == suffix

    def _holds_data(self, entry: Path) -> bool:
        """Whether `entry` is, or (a folder) holds, a file of the layout's data."""
        if entry.name.startswith("."):
            return False
        if not entry.is_dir():
            return entry.suffix.lower() in DATA[self.kind]
        return any(not p.is_dir() and p.suffix.lower() in DATA[self.kind] for p in entry.rglob("*"))

    def _check_nothing_left_out(self, root: Path, folders: list[Path]) -> None:
        """Refuse, naming them, folders beside the split folders and entries of a split
        folder that hold data of the layout but would not be read (`valid/`,
        `train/my_sequence/`, `train/seq7.npz`): they used to be left out silently."""
        left = [
            f"{p.name}/" if p.is_dir() else p.name
            for p in sorted(root.iterdir())
            if p not in folders and self._holds_data(p)
        ]
        for folder in folders:
            left += [
                f"{folder.name}/{p.name}" + ("/" if p.is_dir() else "")
                for p in sorted(folder.iterdir())
                if not self._is_sequence(p) and self._holds_data(p)
            ]
        if left:
            raise InputError(
                f"{root}: {listed(left, unit='entries')} would be left out: {self.name} reads "
                f"the sequences {SEQUENCE[self.kind]} of train/, validation/ (or val/) and "
                "test/ only; rename them so, or move them out"
            )

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
            if frames.shape[1] != 2:  # its channels are named inflow and outflow
                raise InputError(
                    f"{path}: {frames.shape[1]} channel(s), T×C×H×W {list(frames.shape)}: seed "
                    "TaxiBJ sequences hold 2 (inflow, outflow); convert other grids with "
                    "stpdist shard arrays"
                )
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

    @property
    def variables(self) -> list[dict[str, str]] | None:
        """TaxiBJ's channels by name (per-channel scores in flows: `rmse/inflow`)."""
        if self.kind != "taxibj":
            return None
        return [{"name": name, "units": "flow per 30 min"} for name in ("inflow", "outflow")]

    def check_index(self, index: Any) -> None:
        """TaxiBJ flows of at most 1 (of 1 292): data already divided by its scale, which
        training divides again, without a word."""
        if self.kind == "taxibj" and index.max and max(index.max) * self.value_scale <= 1:
            log.warning(
                "seed-taxibj: the %s split's values run to %.6g: flows already scaled to "
                "[0, 1]? They are stored as they are and divided by %g again in training; "
                "the seed layout holds raw flows (0…1292)",
                index.split, max(index.max) * self.value_scale, self.value_scale,
            )  # fmt: skip

    def args(self) -> dict[str, Any]:
        return {"root": str(self.root), "kind": self.kind}


def _png_frames(folder: Path) -> np.ndarray:
    """The PNG frames of `folder` in natural name order (`2.png` before `10.png`), as
    grayscale T×1×H×W uint8. Frames of different sizes are an error naming the first that
    differs; frames of more than 8 bits, which would be clipped, are refused naming the
    file and its mode."""
    pngs = [  # not hidden files: macOS's `._0.png` copies are no frames (a formats review)
        p
        for p in folder.iterdir()
        if p.suffix.lower() == ".png" and not p.name.startswith(".") and not p.is_dir()
    ]
    pngs.sort(key=lambda p: frame_key(p.name))
    if not pngs:
        raise InputError(f"{folder}: no PNG frames")
    frames = []
    for png in pngs:
        frame = png_8bit(png, "L", "seed-kth reads 8-bit frames (value scale 255)", KTH_ADVICE)
        if frames and frame.shape != frames[0].shape:
            (h0, w0), (h, w) = frames[0].shape, frame.shape
            raise InputError(
                f"{png}: frame of {h}×{w} pixels (H×W), the first ({pngs[0].name}) {h0}×{w0}; "
                "every frame of a sequence must have the same size"
            )
        frames.append(frame)
    return np.stack(frames)[:, None]
