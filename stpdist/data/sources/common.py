"""Helpers shared by the source readers."""

from __future__ import annotations

import math
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


def check_split_sizes(sizes: dict[str, float]) -> None:
    """`--splits` sizes: fractions or counts ≥ 0, and -1 (the rest) for at most one split;
    anything else (-2, two -1) is an error naming the flag."""
    rest = [split for split, size in sizes.items() if size == -1]
    given = {split: size for split, size in sizes.items() if size != -1}
    bad = [f"{split}={size:g}" for split, size in given.items() if not 0 <= size < math.inf]
    if bad or len(rest) > 1:
        raise InputError(
            f"--splits {_text(sizes)}: sizes must be ≥ 0, or -1 (the rest) for one split at "
            f"most; got {', '.join(bad) or ', '.join(f'{r}=-1' for r in rest)}"
        )


def split_counts(
    sizes: dict[str, float],
    total: int,
    where: str,
    unit: str = "files",
    *,
    allow_empty: bool = True,
) -> dict[str, int]:
    """Items (`unit`: files, sequences) per split from `--splits` sizes, which must place
    every one of the `total` items: fractions summing to 1, or counts summing to `total`;
    one split may be `-1`, the rest. Fractions are rounded by largest remainder, so the
    counts always add up. Without `allow_empty`, a split that gets none is an error saying
    what each split gets: the user asked for it."""
    check_split_sizes(sizes)
    rest = [split for split, size in sizes.items() if size == -1]
    given = {split: size for split, size in sizes.items() if size != -1}
    fractions = all(size <= 1 for size in given.values()) and any(
        0 < size < 1 for size in given.values()
    )
    if fractions:
        exact = {split: size * total for split, size in given.items()}
    elif any(size != int(size) for size in given.values()):
        raise InputError(f"--splits {_text(sizes)}: counts must be whole numbers of {unit}")
    else:
        exact = {split: float(size) for split, size in given.items()}
    wanted = sum(given.values()) if fractions else sum(exact.values())
    whole = 1 if fractions else total
    counts = {split: int(np.floor(value + 1e-9)) for split, value in exact.items()}
    if wanted > whole + 1e-9:
        raise InputError(
            f"--splits {_text(sizes)} ask for more than the {total} {unit} in {where} "
            f"({'fractions sum' if fractions else 'counts sum'} to {wanted:g})"
        )
    if not rest and abs(wanted - whole) > 1e-9:
        left = total - sum(counts.values())
        raise InputError(
            f"--splits {_text(sizes)}: the {'fractions' if fractions else 'counts'} sum to "
            f"{wanted:g}, not {whole}: {left} of the {total} {unit} in {where} would be in no "
            "split; make them sum to it, or give one split -1 (the rest)"
        )
    if fractions and not rest:  # largest remainder: the counts add up to `total`
        by_remainder = sorted(exact, key=lambda split: counts[split] - exact[split])
        for split in by_remainder[: total - sum(counts.values())]:
            counts[split] += 1
    if rest:
        counts[rest[0]] = total - sum(counts.values())
    counts = {split: counts[split] for split in sizes}
    empty = [split for split, count in counts.items() if count == 0]
    if empty and not allow_empty:
        cut = ", ".join(f"{split} {count}" for split, count in counts.items())
        raise InputError(
            f"--splits {_text(sizes)}: the {total} {unit} in {where} would be cut into {cut}, "
            f"leaving {' and '.join(empty)} empty; every split asked for needs at least one "
            "(leave it out of --splits, or make it larger)"
        )
    return counts


def _text(sizes: dict[str, float]) -> str:
    return ",".join(f"{split}={size:g}" for split, size in sizes.items())
