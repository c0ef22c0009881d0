"""Helpers shared by the source readers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ...errors import InputError
from ..format import require_file

# the seed project names its validation folder "validation"; stpdist calls the split "val"
SEED_SPLITS = {"train": "train", "validation": "val", "val": "val", "test": "test"}


def check_frames(shape: tuple[int, ...], dtype: np.dtype, where: str | Path) -> None:
    """Frames must be T×C×H×W or T×H×W, none of them of size 0, of a numeric dtype (bool,
    integers, floats); anything else is an error naming `where`."""
    if len(shape) not in (3, 4):
        raise InputError(f"{where}: expected T×C×H×W or T×H×W, got shape {tuple(shape)}")
    if 0 in shape:
        raise InputError(f"{where}: shape {tuple(shape)} holds no frames (a dimension of size 0)")
    if np.dtype(dtype).kind not in "biuf":
        raise InputError(
            f"{where}: dtype {np.dtype(dtype)}, expected numbers (bool, integers or floats)"
        )


def as_TCHW(array: np.ndarray, where: str | Path) -> np.ndarray:
    """T×C×H×W from T×C×H×W or T×H×W (checked by `check_frames`)."""
    check_frames(array.shape, array.dtype, where)
    return array[:, None] if array.ndim == 3 else array


def load_array(path: Path, key: str | None = None) -> np.ndarray:
    """An array from .npy, or `key` (default: the only array) from .npz; errors name the file."""
    require_file(path)  # a FIFO would block np.load
    try:
        if path.suffix == ".npy":
            return np.load(path, allow_pickle=False)
        with np.load(path, allow_pickle=False) as data:
            names = list(data.keys())
            if key is None:
                if len(names) != 1:
                    raise ValueError(f"holds arrays {names}; choose one with --key")
                key = names[0]
            if key not in names:
                raise ValueError(f"missing key '{key}' (has {names})")
            return data[key]
    except ValueError as exc:
        raise InputError(f"{path}: {exc}") from exc
    except Exception as exc:
        raise InputError(f"{path}: unreadable ({type(exc).__name__}: {exc})") from exc


def key_of(path: Path, *extra: Any) -> str:
    """A sample key from a file name (dots replaced: keys must hold none)."""
    return "_".join([path.stem.replace(".", "_"), *map(str, extra)])
