"""A folder of per-sequence `.npy` / `.npz` arrays (T×C×H×W or T×H×W): users' own data.

Split sub-folders (`train`, `val`/`validation`, `test`) become splits. A folder without
them becomes the single split `split`, or, with `split_sizes` (`--splits
train=0.8,val=0.1,test=0.1`, fractions or counts), is cut into several: whole files
(sequences) per split, in an order shuffled by `seed`, so the same seed gives the same
splits and no file lands in two.
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
    split_sizes: dict[str, float] | None = None
    """Cut a flat folder into these splits: fractions (summing to at most 1) or counts."""
    seed: int = 0
    """Seeds the file order that `split_sizes` cuts."""
    name: str = "arrays"
    grid: float | None = None

    def _files(self, folder: Path) -> list[str]:
        return [str(p) for p in sorted(folder.iterdir()) if p.suffix in (".npy", ".npz")]

    def splits(self) -> dict[str, list[Any]]:
        root = Path(self.root)
        if not root.is_dir():
            raise FileNotFoundError(f"{root}: no such folder")
        subs = [p for p in sorted(root.iterdir()) if p.is_dir() and p.name in SEED_SPLITS]
        if subs and self.split_sizes:
            raise ValueError(f"{root} already has split folders; --splits cuts a flat folder")
        out = {SEED_SPLITS[p.name]: self._files(p) for p in subs} or self._cut(root)
        if self.value_scale is None:
            first = next((f for files in out.values() for f in files), None)
            if first is None:
                raise FileNotFoundError(f"{root}: no .npy/.npz files")
            dtype = as_TCHW(load_array(Path(first), self.key), first).dtype
            self.value_scale = 255.0 if dtype == np.uint8 else 1.0
        return out

    def _cut(self, root: Path) -> dict[str, list[str]]:
        files = self._files(root)
        if not self.split_sizes:
            return {self.split: files}
        sizes = list(self.split_sizes.values())
        if any(size < 0 for size in sizes):
            raise ValueError(f"--splits sizes must not be negative: {self.split_sizes}")
        fractions = all(size <= 1 for size in sizes) and any(0 < s < 1 for s in sizes)
        counts = [round(s * len(files)) for s in sizes] if fractions else [int(s) for s in sizes]
        if fractions and sum(sizes) > 1 + 1e-9 or sum(counts) > len(files):
            raise ValueError(
                f"--splits {self.split_sizes} ask for more than the {len(files)} files in {root}"
            )
        order = np.random.default_rng(self.seed).permutation(len(files))
        out, start = {}, 0
        for split, count in zip(self.split_sizes, counts):
            out[split] = sorted(files[i] for i in order[start : start + count])
            start += count
        return out

    def load(self, item: str) -> list[tuple[str, np.ndarray, dict]]:
        path = Path(item)
        return [(key_of(path), as_TCHW(load_array(path, self.key), path), {"source": path.name})]

    def args(self) -> dict[str, Any]:
        return {
            "root": str(self.root),
            "key": self.key,
            "value_scale": self.value_scale,
            "split_sizes": self.split_sizes,
            "seed": self.seed,
        }
