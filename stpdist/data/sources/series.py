"""Windows over one long time series, shared by the converters of long records (arrays,
netCDF/Zarr): which windows exist and which split each belongs to.

A series is T frames with a time per frame: timestamps (`numpy.datetime64`) when the
source has them, else the frame positions 0…T−1. Windows are `num_frames` consecutive
frames, starting every `stride` frames inside each run of evenly spaced times, and never
across a gap (a time difference other than `step`, by default the smallest difference in
the record). Splits by time: frames from `val_from` on are validation, from `test_from`
on test, earlier ones train; a window whose first and last frames fall in different
splits is dropped, so no frame is shared between splits.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from ...errors import InputError

_UNITS = {"s": "s", "m": "m", "min": "m", "h": "h", "d": "D", "D": "D"}


def parse_step(text: str | None) -> np.timedelta64 | None:
    """`30min`, `1h`, `6h`, `1d` → a timedelta64 (None stays None)."""
    if text is None:
        return None
    match = re.fullmatch(r"\s*(\d+)\s*(s|m|min|h|d|D)\s*", str(text))
    if not match:
        raise InputError(f"--step {text!r}: expected a number and s, min, h or d (e.g. 6h)")
    return np.timedelta64(int(match.group(1)), _UNITS[match.group(2)])


def parse_bound(text: str | None, timestamps: bool) -> Any:
    """A split boundary: an ISO date/time for a series with timestamps, else a frame index."""
    if text is None:
        return None
    if timestamps:
        try:
            return np.datetime64(str(text), "ns")
        except ValueError:
            raise InputError(
                f"split boundary {text!r} is not a date (YYYY-MM-DD[THH:MM])"
            ) from None
    try:
        return int(text)
    except ValueError:
        raise InputError(
            f"split boundary {text!r}: the series has no timestamps, give a frame index"
        ) from None


def as_times(values: Any, where: str) -> np.ndarray:
    """Timestamps as datetime64[ns] from datetime64, ISO strings or bytes."""
    array = np.asarray(values)
    try:
        if array.dtype.kind in "SO":
            array = np.array([v.decode() if isinstance(v, bytes) else str(v) for v in array])
        stamps = array.astype("datetime64[ns]")
    except (ValueError, TypeError) as exc:
        raise InputError(f"{where}: timestamps are not dates ({exc})") from None
    if np.isnat(stamps).any():
        first = int(np.flatnonzero(np.isnat(stamps))[0])
        raise InputError(f"{where}: timestamp {first} is not a date (NaT)")
    return stamps


@dataclass
class Window:
    start: int
    """Index of the first frame in the whole series."""
    split: str


def check_window(num_frames: int, stride: int) -> None:
    """`--frames` and `--stride` of a windowing source: both at least 1."""
    if num_frames < 1 or stride < 1:
        raise InputError(f"--frames {num_frames} and --stride {stride} must be positive")


def plan_windows(
    times: np.ndarray,
    num_frames: int,
    stride: int,
    *,
    step: Any = None,
    val_from: Any = None,
    test_from: Any = None,
    where: str = "series",
) -> list[Window]:
    """Every window of the series (see the module docstring), in time order."""
    check_window(num_frames, stride)
    times = np.asarray(times)
    if len(times) == 0:
        return []
    diffs = np.diff(times)
    bad = np.flatnonzero(diffs <= diffs.dtype.type(0)) if len(diffs) else []
    if len(bad):
        i = int(bad[0])
        raise InputError(
            f"{where}: times do not increase at frame {i + 1} ({times[i]} then {times[i + 1]})"
        )
    if step is None:
        step = diffs.min() if len(diffs) else None
    elif times.dtype.kind == "M":
        step = np.timedelta64(step).astype(diffs.dtype)
    if val_from is not None and test_from is not None and test_from < val_from:
        raise InputError(f"test split starts ({test_from}) before validation ({val_from})")

    def split_of(t: Any) -> str:
        if test_from is not None and t >= test_from:
            return "test"
        if val_from is not None and t >= val_from:
            return "val"
        return "train"

    # runs of evenly spaced frames: [first, end)
    breaks = [0, *(np.flatnonzero(diffs != step) + 1).tolist(), len(times)]
    windows = []
    for first, end in zip(breaks[:-1], breaks[1:]):
        for start in range(first, end - num_frames + 1, stride):
            split = split_of(times[start])
            if split == split_of(times[start + num_frames - 1]):
                windows.append(Window(start, split))
    return windows


def stamp_unit(times: Any) -> str:
    """The coarsest unit `stamp` needs to tell all of `times` apart: minutes for whole-minute
    data (the keys stpdist always wrote), else seconds, milliseconds, … (30-second steps)."""
    array = np.asarray(times)
    if array.dtype.kind != "M":
        return "m"
    for unit in ("m", "s", "ms", "us"):
        if (array.astype(f"datetime64[{unit}]") == array).all():
            return unit
    return "ns"


def stamp(time: Any, unit: str = "m") -> str:
    """A key-safe time label: `202001011200` for a timestamp (`20200101120030` with `unit`
    "s"), `f000123` for a position."""
    if isinstance(time, np.datetime64):
        text = np.datetime_as_string(time, unit=unit)
        return re.sub(r"[^0-9]", "", text)
    return f"f{int(time):06d}"
