"""Windows over one long time series, shared by the converters of long records (arrays,
netCDF/Zarr): which windows exist and which split each belongs to.

A series is T frames with a time per frame: timestamps (`numpy.datetime64`) when the
source has them, else the frame positions 0…T−1. Windows are `num_frames` consecutive
frames, starting every `stride` frames inside each run of evenly spaced times, and never
across a gap (a time difference other than `step`, by default the smallest difference in
the record). Splits by time: frames from `val_from` on are validation, from `test_from`
on test, earlier ones train; no window spans two splits (so no frame is shared between
them), and each split's windows start at its first frame, as after a gap.
"""

from __future__ import annotations

import re
import warnings
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
    """Timestamps as datetime64[ns] from datetime64, ISO strings or bytes. Numbers are
    refused: numpy would read them as nanoseconds since 1970 (hours 0, 6, 12… became
    times a few nanoseconds into 1970-01-01)."""
    array = np.asarray(values)
    if array.dtype.kind in "biuf":
        shown = ", ".join(f"{v:g}" for v in array.ravel()[:3].astype(float))
        raise InputError(
            f"{where}: time values are not dates: numbers ({shown}{', …' if array.size > 3 else ''}"
            "); give the times as dates (datetime64 or ISO strings such as 2020-01-01T06:00)"
        )
    try:
        if array.dtype.kind in "SO":
            array = np.array([v.decode() if isinstance(v, bytes) else str(v) for v in array])
        with warnings.catch_warnings():  # `…+02:00`, `…Z`: read as UTC, which is right;
            # numpy's "no explicit representation of timezones" line said nothing more
            warnings.filterwarnings("ignore", "no explicit representation of timezones")
            stamps = array.astype("datetime64[ns]")
    except (ValueError, TypeError) as exc:
        raise InputError(f"{where}: timestamps are not dates ({exc})") from None
    if np.isnat(stamps).any():
        first = int(np.flatnonzero(np.isnat(stamps))[0])
        raise InputError(f"{where}: timestamp {first} is not a date (NaT)")
    return stamps


ITEM_BYTES = 64 << 20
"""Most bytes of frames one work item of a windowing source returns: its windows, each a
copy (a worker hands them to the writer whole), so memory stays flat however long the
series (a source read in windows, such as a `.npy` chunk, is never read whole)."""


def group_starts(
    starts: list[int], num_frames: int, frame_bytes: int, most_frames: int | None = None
) -> list[list[int]]:
    """Window `starts` (increasing) in runs of one work item each: a run's windows hold at
    most `ITEM_BYTES` of frames, and span at most that (a read of the run's frames) and
    `most_frames`; one window at least."""
    budget = ITEM_BYTES // max(frame_bytes, 1)  # frames
    most_windows = max(1, budget // num_frames)
    span = max(num_frames, budget)
    most_frames = span if most_frames is None else min(most_frames, span)
    groups: list[list[int]] = []
    for start in starts:
        run = groups[-1] if groups else None
        if run is None or len(run) >= most_windows or start + num_frames - run[0] > most_frames:
            groups.append([start])
        else:
            run.append(start)
    return groups


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
    clips: list[int] | None = None,
) -> list[Window]:
    """Every window of the series (see the module docstring), in time order. A series
    shorter than one window, or a split that gets no window, is an error (see
    `check_every_split`). `clips`: the first frames of separate clips joined in the series
    (files cut with `--per-file`): no window spans two of them either."""
    check_window(num_frames, stride)
    times = np.asarray(times)
    if len(times) == 0:
        return []
    diffs = np.diff(times)
    bad = np.flatnonzero(diffs <= diffs.dtype.type(0)) if len(diffs) else []
    if len(bad):
        i = int(bad[0])
        raise InputError(
            f"{where}: times do not increase at frame {i + 1} ({_text(times[i])} then "
            f"{_text(times[i + 1])})"
        )
    inferred = step is None
    if step is None and len(diffs):  # the usual spacing, as `--every` of netCDF takes it:
        # the smallest made every usual step a gap after one odd time (a 00:30 in hourly
        # data refused the series for want of windows; a formats review)
        spacings, counts = np.unique(diffs, return_counts=True)
        step = spacings[np.argmax(counts)]  # the smallest of the most common ones
    elif times.dtype.kind == "M":
        step = np.timedelta64(step).astype(diffs.dtype)
    if val_from is not None and test_from is not None and test_from < val_from:
        raise InputError(
            f"--test-from {_text(test_from)} is before --val-from {_text(val_from)}: the "
            "test split must start after the validation split"
        )
    if len(times) < num_frames:
        raise InputError(
            f"{where}: the series holds {len(times)} frames, fewer than --frames {num_frames}"
        )
    splits = split_names(times, val_from, test_from)
    # runs of evenly spaced frames of one split: [first, end); a split's windows start at
    # its first frame (they followed the series' start: with --stride 2, a split starting
    # on an odd frame lost that frame; a weather review)
    gaps = (np.flatnonzero(diffs != step) + 1).tolist()
    turns = (np.flatnonzero(splits[1:] != splits[:-1]) + 1).tolist()
    cuts = {*gaps, *turns, *(c for c in clips or () if 0 < c < len(times))}
    breaks = sorted({0, *cuts, len(times)})
    windows = []
    for first, end in zip(breaks[:-1], breaks[1:]):
        for start in range(first, end - num_frames + 1, stride):
            split = splits[start]
            if split == splits[start + num_frames - 1]:
                windows.append(Window(start, split))
    check_every_split(
        windows, times, splits, breaks, num_frames, stride, val_from, test_from, where
    )
    if inferred and gaps and times.dtype.kind == "M":  # a step taken from the times
        _say_frames_left_out(times, [0, *gaps, len(times)], num_frames, step, where)
    return windows


def _say_frames_left_out(
    times: np.ndarray, breaks: list[int], num_frames: int, step: Any, where: str
) -> None:
    """One line when the runs its spacing cuts a timed series into (`breaks`: at each
    spacing other than its step) leave frames in no window: the step taken (its most
    common spacing) and how many, so that data spaced otherwise is not dropped without a
    word (a diff review). Clips, split boundaries and the ends a stride leaves are not
    counted: the step is no cause of theirs."""
    from ...console import log

    left = sum(
        end - first for first, end in zip(breaks[:-1], breaks[1:]) if end - first < num_frames
    )
    if not left:
        return
    shown = _step_text(step)
    log.warning(
        "%s: %d of %d frames are in no window: they lie in runs shorter than --frames %d at "
        "the series' step, %s (its most common spacing; another spacing is a gap): --step "
        "sets another",
        where, left, len(times), num_frames, shown,
    )  # fmt: skip


def _step_text(step: Any) -> str:
    """A timedelta as `10min`, `6h`, `1d`, `30s`."""
    seconds = int(np.timedelta64(step, "s").astype(np.int64))
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def split_names(times: np.ndarray, val_from: Any, test_from: Any) -> np.ndarray:
    """The split of each frame: test from `test_from` on, val from `val_from`, else train."""
    splits = np.full(len(times), "train", dtype=object)
    if val_from is not None:
        splits[times >= val_from] = "val"
    if test_from is not None:
        splits[times >= test_from] = "test"
    return splits


def _span(times: np.ndarray, first: int, last: int) -> str:
    """Frames `first`…`last` as their indexes, or their times for a series with timestamps."""
    if times.dtype.kind != "M":
        return f"{first}…{last}"
    unit = stamp_unit(times[[first, last]])
    return "…".join(np.datetime_as_string(times[i], unit=unit) for i in (first, last))


def _text(bound: Any) -> str:
    """A split boundary as given: a frame index, or a date without trailing zero fields."""
    if isinstance(bound, np.datetime64):
        return np.datetime_as_string(bound, unit=stamp_unit(np.array([bound])))
    return str(bound)


def check_every_split(
    windows: list[Window],
    times: np.ndarray,
    splits: np.ndarray,
    breaks: list[int],
    num_frames: int,
    stride: int,
    val_from: Any,
    test_from: Any,
    where: str,
) -> None:
    """Every split asked for gets at least one window, as `--splits` demands of whole files:
    val with `val_from`, test with `test_from`, and train when any frame comes before them
    (`--test-from` at the first frame converts everything as test). Refused otherwise, naming
    the split, its frames and the window length; one used to be left out silently."""
    asked = {"train": True, "val": val_from is not None, "test": test_from is not None}
    flags = {"val": f"--val-from {_text(val_from)}", "test": f"--test-from {_text(test_from)}"}
    got = {window.split for window in windows}
    for split in (s for s, wanted in asked.items() if wanted and s not in got):
        frames = np.flatnonzero(splits == split)
        if split == "train" and not len(frames):
            continue  # the boundaries lie at or before the first frame: no train asked for
        needs = (
            "every split asked for needs at least one window: move --val-from/--test-from, "
            "or lower --frames"
        )
        if not len(frames):
            raise InputError(
                f"{where}: split {split} gets no frame: {flags[split]} leaves it none of the "
                f"series' frames {_span(times, 0, len(times) - 1)}; {needs}"
            )
        first, last = int(frames[0]), int(frames[-1])
        edges = np.clip(breaks, first, last + 1)  # runs without a gap, within the split
        longest = int(np.diff(edges).max())
        gaps = f", at most {longest} without a gap" if longest < len(frames) else ""
        every = f" starting every --stride {stride} frames" if stride > 1 else ""
        raise InputError(
            f"{where}: split {split} gets no window: its frames {_span(times, first, last)} "
            f"({len(frames)} frames{gaps}) hold no window of --frames {num_frames}{every} (a "
            f"window never crosses a split boundary or a gap in the times); {needs}"
        )


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


def iso_times(times: np.ndarray, unit: str = "m") -> list[str] | None:
    """A window's frame times as ISO text (`2020-01-01T06:00`), for its `.json` member's
    `times` (predictions carry each frame's time from them); None for frame positions."""
    if times.dtype.kind != "M":
        return None
    return [str(t) for t in np.datetime_as_string(times, unit=unit)]


def stamp(time: Any, unit: str = "m") -> str:
    """A key-safe time label: `202001011200` for a timestamp (`20200101120030` with `unit`
    "s"), `f000123` for a position."""
    if isinstance(time, np.datetime64):
        text = np.datetime_as_string(time, unit=unit)
        return re.sub(r"[^0-9]", "", text)
    return f"f{int(time):06d}"
