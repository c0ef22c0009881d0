"""Moving MNIST `mnist_test_seq.npy`: uint8, time first (T×N×64×64)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import InputError
from ..format import require_file
from .common import check_array_file, check_split_sizes, split_counts, unreadable

CHUNK = 256


@dataclass
class MovingMnistNpy:
    path: str
    split_sizes: dict[str, int] = field(default_factory=lambda: {"test": -1})
    """Consecutive sequences per split, in file order; one split may be -1, the rest. They
    must take every sequence, and none may be empty (as `shard arrays --splits`)."""
    name: str = "moving-mnist-npy"
    value_scale: float = 255.0
    grid: float | None = None

    def __post_init__(self) -> None:  # before the file is read
        check_split_sizes(self.split_sizes)
        fractions = [f"{s}={n:g}" for s, n in self.split_sizes.items() if n != int(n)]
        if fractions:
            raise InputError(
                f"--splits {', '.join(fractions)}: expected counts of sequences (whole "
                "numbers; -1: the rest), not fractions"
            )
        self.split_sizes = {split: int(size) for split, size in self.split_sizes.items()}

    def _array(self) -> np.ndarray:
        check_array_file(require_file(self.path))  # a FIFO would block the reader
        try:
            array = np.load(self.path, mmap_mode="r", allow_pickle=False)
        except Exception as exc:
            raise unreadable(self.path, exc) from exc
        if array.ndim != 4 or array.dtype != np.uint8:
            raise InputError(
                f"{self.path}: expected uint8 T×N×H×W (time first), got {array.dtype} "
                f"{tuple(array.shape)}"
            )
        return array

    def describe(self, item: tuple[str, int, int]) -> str:
        """The file and the sequences a work item reads (for messages)."""
        return f"{self.path} (sequences {item[1]}..{item[2] - 1})"

    def splits(self) -> dict[str, list[Any]]:
        shape = self._array().shape
        total = shape[1]
        if shape[0] > total:  # more frames than sequences: likely N×T, read as T×N
            logging.getLogger("stpdist").warning(
                "%s: read as T×N×H×W, time first, as the published mnist_test_seq.npy "
                "(20×10000×64×64): %d sequences of %d frames. If it holds %d sequences of %d "
                "frames (N×T), save it transposed: np.save(path, a.transpose(1, 0, 2, 3))",
                self.path,
                total,
                shape[0],
                shape[0],
                total,
            )
        counts = split_counts(self.split_sizes, total, self.path, "sequences", allow_empty=False)
        start, out = 0, {}
        for split, count in counts.items():
            stop = start + count
            out[split] = [(split, a, min(a + CHUNK, stop)) for a in range(start, stop, CHUNK)]
            start = stop
        return out

    def load(self, item: tuple[str, int, int]) -> list[tuple[str, np.ndarray, dict]]:
        _, start, stop = item
        block = np.asarray(self._array()[:, start:stop])  # T×n×H×W
        return [
            (
                f"mmnist_{i:06d}",
                np.ascontiguousarray(block[:, i - start, None]),
                {"source": Path(self.path).name, "index": i},
            )
            for i in range(start, stop)
        ]

    def args(self) -> dict[str, Any]:
        return {"path": str(self.path), "split_sizes": self.split_sizes}
