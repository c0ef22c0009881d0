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


NPY_MAGIC = b"\x93NUMPY"
ZIP_MAGIC = b"PK\x03\x04"


def check_array_file(path: Path) -> None:
    """Refuse, naming `path`, a file that is not a .npy (or .npz) by its first bytes, before
    numpy reads it: numpy takes any other file for a pickle and says so, which misleads."""
    with open(path, "rb") as handle:
        head = handle.read(len(NPY_MAGIC))
    expected = {".npy": NPY_MAGIC, ".npz": ZIP_MAGIC}.get(path.suffix)
    if expected is not None and not head.startswith(expected):
        kind = "an .npz (zip) archive" if path.suffix == ".npz" else "a NumPy .npy array"
        raise InputError(
            f"{path}: not a valid {path.suffix} file (its first bytes are not those of {kind}); "
            "expected a file written by numpy.save / numpy.savez"
        )


def load_array(path: Path, key: str | None = None, key_option: str | None = None) -> np.ndarray:
    """An array from .npy, or `key` (default: the only array) from .npz; errors name the file.

    `key_option`: the caller's option that names an .npz member (`--key`), named in the
    error when the file holds several arrays; None for callers without one."""
    require_file(path)  # a FIFO would block np.load
    check_array_file(path)
    try:
        if path.suffix == ".npy":
            return np.load(path, allow_pickle=False)
        with np.load(path, allow_pickle=False) as data:
            names = list(data.keys())
            if key is None:
                if len(names) != 1:
                    choose = (
                        f"choose one with {key_option}"
                        if key_option
                        else "expected a file of one array"
                    )
                    raise ValueError(f"holds {len(names)} arrays {names}; {choose}")
                key = names[0]
            if key not in names:
                raise ValueError(f"missing key '{key}' (has {names})")
            return data[key]
    except ValueError as exc:
        if "pickled" in str(exc):  # a valid header of dtype object
            exc = ValueError("holds Python objects (pickled), expected an array of numbers")
        raise InputError(f"{path}: {exc}") from exc
    except Exception as exc:
        raise InputError(f"{path}: unreadable ({type(exc).__name__}: {exc})") from exc


def key_of(path: Path, *extra: Any) -> str:
    """A sample key from a file name (dots replaced: keys must hold none)."""
    return "_".join([path.stem.replace(".", "_"), *map(str, extra)])
