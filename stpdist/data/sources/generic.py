"""A folder of per-sequence `.npy` / `.npz` arrays (T×C×H×W or T×H×W): users' own data.

Split sub-folders (`train`, `val`/`validation`, `test`) become splits; a folder without
them becomes the single split `split`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .common import SEED_SPLITS, as_TCHW, key_of, load_array


@dataclass
class GenericArrays:
    root: str
    key: str | None = None
    """Array name inside .npz files (default: the only one)."""
    value_scale: float | None = None
    """Stored value range (default: 255 for uint8 arrays, else 1)."""
    split: str = "train"
    name: str = "arrays"
    grid: float | None = None

    def _files(self, folder: Path) -> list[str]:
        return [str(p) for p in sorted(folder.iterdir()) if p.suffix in (".npy", ".npz")]

    def splits(self) -> dict[str, list[Any]]:
        root = Path(self.root)
        if not root.is_dir():
            raise FileNotFoundError(f"{root}: no such folder")
        subs = [p for p in sorted(root.iterdir()) if p.is_dir() and p.name in SEED_SPLITS]
        out = {SEED_SPLITS[p.name]: self._files(p) for p in subs} or {self.split: self._files(root)}
        if self.value_scale is None:
            first = next((f for files in out.values() for f in files), None)
            if first is None:
                raise FileNotFoundError(f"{root}: no .npy/.npz files")
            dtype = as_TCHW(load_array(Path(first), self.key), first).dtype
            self.value_scale = 255.0 if dtype == np.uint8 else 1.0
        return out

    def load(self, item: str) -> list[tuple[str, np.ndarray, dict]]:
        path = Path(item)
        return [(key_of(path), as_TCHW(load_array(path, self.key), path), {"source": path.name})]

    def args(self) -> dict[str, Any]:
        return {"root": str(self.root), "key": self.key, "value_scale": self.value_scale}
