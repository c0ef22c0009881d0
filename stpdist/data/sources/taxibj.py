"""TaxiBJ `BJ{13,14,15,16}_M32x32_T30_InOut.h5`: `data` N×2×32×32 flows (inflow, outflow),
`date` N byte strings YYYYMMDDSS (SS = half-hour slot 01..48). Files of the same layout
with other slots (BikeNYC's hourly `NYC14_M16x8_T60_NewEnd.h5`: slots 01..24) take their
slot length from the `_M<H>x<W>_T<minutes>_` of their names, or `--slot-minutes`.

Windows of `num_frames` consecutive half-hour slots (stride `stride`), never across a gap
in the record nor across files. Date-based split: windows starting in the last `test_days`
days of the whole record are test, the `val_days` before them validation, the rest train;
a window that straddles a split boundary is dropped, so no frame is shared between splits.
Stored as float32 raw flows, value scale 1292 (the maximum flow); the split's statistics
count each slot of a file once, however many overlapping windows hold it.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from ...console import log, say
from ...errors import InputError, MissingInput, require_extra
from ..format import SERIES_ID, SERIES_INDEX, require_file
from .series import check_window, group_starts

SLOT = timedelta(minutes=30)
SCALE = 1292.0
CHANNELS = ("inflow", "outflow")


def parse_slot(raw: bytes | str, slot_length: timedelta = SLOT) -> datetime:
    text = raw.decode() if isinstance(raw, bytes) else str(raw)
    per_day = timedelta(days=1) // slot_length
    try:
        day, slot = datetime.strptime(text[:8], "%Y%m%d"), int(text[8:])
    except ValueError:
        raise InputError(f"date entry {text!r}: expected YYYYMMDDSS (slot 01..{per_day})") from None
    if not 1 <= slot <= per_day:
        minutes = slot_length // timedelta(minutes=1)
        raise InputError(f"slot {slot} of {text} outside 01..{per_day} (slots of {minutes} min)")
    return day + (slot - 1) * slot_length


NAMED_SLOTS = re.compile(r"_M\d+x\d+_T(\d+)_")
"""The grid and slot length in a file name of the layout: `BJ13_M32x32_T30_InOut.h5`,
`NYC14_M16x8_T60_NewEnd.h5` (a `_T8_` elsewhere in a name is no slot length)."""


def slot_minutes_of(paths: list[str], given: int | None) -> int:
    """The slot length in minutes: `given` (--slot-minutes), else the `_M<H>x<W>_T<minutes>_`
    of the files' names (TaxiBJ's `_T30_`, BikeNYC's `_T60_`), else 30; names that disagree
    are refused (one record, one slot length), and a length other than 30 is said."""
    if given is not None:
        if given < 1 or (24 * 60) % given:
            raise InputError(f"--slot-minutes {given}: expected a divisor of a day's 1440")
        return given
    named = {p: int(m.group(1)) for p in paths if (m := NAMED_SLOTS.search(Path(p).name))}
    lengths = sorted(set(named.values()))
    if len(lengths) > 1:
        raise InputError(
            f"files of slots of {' and '.join(map(str, lengths))} minutes by their names "
            f"({', '.join(Path(p).name for p in named)}): convert them apart, or pass "
            "--slot-minutes"
        )
    minutes = lengths[0] if lengths else 30
    if minutes < 1 or (24 * 60) % minutes:
        raise InputError(
            f"slots of {minutes} minutes (the _T{minutes}_ of the file names) do not divide a "
            "day: pass --slot-minutes"
        )
    if minutes != 30:
        say(f"slots of {minutes} minutes, by the _T{minutes}_ of the file names "
            "(--slot-minutes says otherwise)")  # fmt: skip
    return minutes


def _read(
    path: str, first: int = 0, stop: int | None = None, slot_length: timedelta = SLOT
) -> tuple[np.ndarray, list[datetime], tuple[int, ...]]:
    """(`data` slots [first, stop), every slot's date, the shape of the whole of `data`):
    only those slots are read (a file is 80–120 MB of float64; its windows, 8 frames each
    at stride 1, eight times that)."""
    h5py = require_extra("h5py", "formats", "reading TaxiBJ .h5 files")

    try:
        with h5py.File(path, "r") as f:
            if "data" not in f or "date" not in f:
                raise InputError(f"missing dataset 'data' or 'date' (has {list(f.keys())})")
            dates = [parse_slot(d, slot_length) for d in f["date"][()]]
            shape = tuple(f["data"].shape)
            if len(shape) != 4 or shape[0] != len(dates):
                raise InputError(f"'data' has shape {shape}, 'date' {len(dates)} entries")
            if shape[1] != 2:  # TaxiBJ's inflow and outflow: N×2×H×W
                raise InputError(
                    f"'data' has shape {shape}: expected N×2×H×W (inflow, outflow; a file "
                    "stored channels-last, N×H×W×2, needs transposing first)"
                )
            data = f["data"][first:stop]
    except InputError as exc:
        raise InputError(f"{path}: {exc}") from exc
    except Exception as exc:  # h5py raises several types; every one names the file here
        raise InputError(f"{path}: {type(exc).__name__}: {exc}") from exc
    return data, dates, shape


def _newest_in_order(raw_dates: Any, slot_length: timedelta = SLOT) -> datetime:
    """The newest slot of a file's `date`, whose slots must come in time order (a slot
    repeated breaks a window run, as a gap does): out of order, the test split, the record's
    last days, was taken from the last entry and covered other days, without a word."""
    dates = [parse_slot(d, slot_length) for d in raw_dates]
    for i in range(1, len(dates)):
        if dates[i] < dates[i - 1]:
            raise InputError(
                f"'date' entry {i} ({dates[i]:%Y-%m-%d %H:%M}) comes before entry {i - 1} "
                f"({dates[i - 1]:%Y-%m-%d %H:%M}): the slots must be in time order; sort the "
                "file's 'data' and 'date' by date"
            )
    if not dates:
        raise InputError("'date' holds no slot")
    return dates[-1]


def _check_flows(data: np.ndarray, dates: list[datetime], path: str) -> None:
    """Flows are counts, 0 to TaxiBJ's largest (1 292): the first value outside, named by
    its slot, channel and cell as it is read (the split's range was checked only once the
    whole split was written). NaN is left to the writer (refused, or `--allow-nan`)."""
    with np.errstate(invalid="ignore"):
        bad = (data < 0) | (data > SCALE)
    if not bad.any():
        return
    t, c, y, x = (int(i) for i in np.argwhere(bad)[0])
    raise InputError(
        f"{path}: flow {data[t, c, y, x]:g} at {dates[t]:%Y-%m-%d %H:%M}, {CHANNELS[c]}, cell "
        f"(y, x) = ({y}, {x}): outside TaxiBJ's 0…{SCALE:g}; not TaxiBJ's flows (convert "
        "other grids with stpdist shard arrays, which takes a --value-scale)"
    )


@dataclass
class TaxiBJ:
    paths: list[str]
    num_frames: int = 8
    stride: int = 1
    test_days: int = 28
    val_days: int = 0
    name: str = "taxibj-h5"
    value_scale: float = SCALE
    grid: float | None = None
    bounds: tuple[datetime, datetime] | None = None
    """(validation start, test start), computed from the files by `splits`."""
    slot_minutes: int | None = None
    """The slots' length (--slot-minutes); None: from the files' names (`_T30_`), else 30."""

    def __post_init__(self) -> None:  # before any file is read
        check_window(self.num_frames, self.stride)
        self.slot_minutes = slot_minutes_of(self.paths, self.slot_minutes)
        for flag, days in (("--test-days", self.test_days), ("--val-days", self.val_days)):
            if days < 0:
                raise InputError(f"{flag} {days}: expected a number of days ≥ 0")

    def _bounds(self) -> tuple[datetime, datetime]:
        h5py = require_extra("h5py", "formats", "reading TaxiBJ .h5 files")

        last = None
        for path in self.paths:
            try:
                with h5py.File(path, "r") as f:
                    if "data" not in f or "date" not in f:
                        raise InputError(
                            f"missing dataset 'data' or 'date' (has {list(f.keys())}): a TaxiBJ "
                            "file holds both"
                        )
                    end = _newest_in_order(f["date"][()], self.slot)
            except InputError as exc:
                raise InputError(f"{path}: {exc}") from exc
            except Exception as exc:  # h5py raises several types; name the file
                raise InputError(f"{path}: {type(exc).__name__}: {exc}") from exc
            last = end if last is None or end > last else last
        test_start = (last + self.slot) - timedelta(days=self.test_days)
        return test_start - timedelta(days=self.val_days), test_start

    @property
    def slot(self) -> timedelta:
        return timedelta(minutes=self.slot_minutes or 30)

    @property
    def variables(self) -> list[dict[str, str]]:
        """The channels' names and units: per-channel scores in flows (`rmse/inflow`),
        pictures and forecasts labelled by them."""
        units = f"flow per {self.slot_minutes} min"
        return [{"name": name, "units": units} for name in CHANNELS]

    def windows(self, dates: list[datetime]) -> list[int]:
        """Start indexes of windows of consecutive slots."""
        starts = []
        run = 1  # length of the consecutive run ending at i
        for i in range(1, len(dates) + 1):
            if i < len(dates) and dates[i] - dates[i - 1] == self.slot:
                run += 1
                continue
            first = i - run
            starts += range(first, i - self.num_frames + 1, self.stride)
            run = 1
        return starts

    def describe(self, item: tuple[str, str, tuple[int, ...]]) -> str:
        return item[0]

    def splits(self) -> dict[str, list[Any]]:
        """Work items (file, split, window starts): runs of one file's windows of one split,
        at most `ITEM_BYTES` of windows each (see `series.group_starts`)."""
        if not self.paths:
            raise MissingInput("no TaxiBJ .h5 files given")
        for path in self.paths:
            require_file(path)  # missing: FileNotFoundError; a FIFO would block h5py
        self.bounds = self._bounds()
        names = ("train", "val", "test") if self.val_days > 0 else ("train", "test")
        out: dict[str, list[Any]] = {split: [] for split in names}
        # the dates and the shape alone, each file's; windows written in time order
        read = {path: _read(path, 0, 0, self.slot)[1:] for path in self.paths}
        ordered = sorted(self.paths, key=lambda path: read[path][0][:1])
        first = min((dates[0] for dates, _ in read.values() if dates), default=None)
        self._say_slots(read)
        for path in ordered:
            dates, shape = read[path]
            starts: dict[str, list[int]] = {}
            for s in self.windows(dates):
                split = self._split_of(dates[s], dates[s + self.num_frames - 1], self.bounds)
                if split is not None:
                    starts.setdefault(split, []).append(s)
            frame_bytes = math.prod(shape[1:]) * 4  # stored as float32
            for split in names:
                for run in group_starts(starts.get(split, []), self.num_frames, frame_bytes):
                    out[split].append((path, split, tuple(run)))
        self._check_every_split(out, first)
        return out

    def _say_slots(self, read: dict[str, tuple[list[datetime], tuple[int, ...]]]) -> None:
        """One line a file with gaps or repeated slots (windows never cross either: the
        windows they cost were lost without a word), and one where half-hour slots never
        pass 24 in a day: an hourly file (BikeNYC's `_T60_`) read as half hours."""
        for path, (dates, _) in read.items():
            steps = [b - a for a, b in zip(dates, dates[1:])]
            gaps = [(a, b) for a, b in zip(dates, dates[1:]) if b - a > self.slot]
            missing = sum((b - a) // self.slot - 1 for a, b in gaps)
            repeated = sum(step == timedelta(0) for step in steps)
            said = []
            if gaps:
                said.append(
                    f"{missing} slot{'s' * (missing != 1)} missing in {len(gaps)} "
                    f"gap{'s' * (len(gaps) != 1)} (the first after {gaps[0][0]:%Y-%m-%d %H:%M})"
                )
            if repeated:
                first = next(a for a, step in zip(dates, steps) if step == timedelta(0))
                said.append(f"{repeated} slot{'s' * (repeated != 1)} repeated (the first "
                            f"{first:%Y-%m-%d %H:%M})")  # fmt: skip
            if said:
                log.warning("%s: %s; windows never cross them", path, ", ".join(said))
            days = {d.date() for d in dates}
            latest = max(((d - datetime.combine(d.date(), datetime.min.time())) // self.slot
                          for d in dates), default=0)  # fmt: skip
            if self.slot_minutes == 30 and len(days) > 1 and latest < 24:
                log.warning(
                    "%s: no day has a slot past 24 of its 48 half hours: hourly data (as "
                    "BikeNYC's _T60_ files)? Its times are read as half hours; pass "
                    "--slot-minutes 60",
                    path,
                )

    def _check_every_split(self, out: dict[str, list[Any]], first: datetime | None) -> None:
        """Refuse a split that gets no window (the train split of a record shorter than
        --test-days): converting without it exited 0, and training then said the folder
        held no dataset."""
        empty = [split for split, items in out.items() if not items]
        if not empty:
            return
        val_start, test_start = self.bounds or (None, None)
        cut = f"test from {test_start:%Y-%m-%d %H:%M} (--test-days {self.test_days})"
        if self.val_days > 0:
            cut = f"validation from {val_start:%Y-%m-%d %H:%M} (--val-days {self.val_days}), {cut}"
        since = f"from {first:%Y-%m-%d %H:%M} " if first is not None else ""
        raise InputError(
            f"{', '.join(self.paths)}: the {' and '.join(empty)} split gets no window of "
            f"{self.num_frames} consecutive slots: the record runs {since}on, {cut}; lower "
            "--test-days/--val-days (or --frames)"
        )

    def _split_of(
        self, start: datetime, end: datetime, bounds: tuple[datetime, datetime]
    ) -> str | None:
        val_start, test_start = bounds

        def which(t: datetime) -> str:
            return "test" if t >= test_start else "val" if t >= val_start else "train"

        return which(start) if which(start) == which(end) else None

    def load(self, item: tuple[str, str, tuple[int, ...]]) -> list[tuple[str, np.ndarray, dict]]:
        path, split, starts = item
        first = starts[0]
        data, dates, _ = _read(path, first, starts[-1] + self.num_frames, self.slot)
        _check_flows(data, dates[first:], path)
        bounds = self.bounds or self._bounds()
        stem = Path(path).stem.replace(".", "_")
        out = []
        for s in starts:
            end = s + self.num_frames - 1
            if self._split_of(dates[s], dates[end], bounds) == split:
                frames = np.asarray(data[s - first : end + 1 - first], dtype=np.float32)
                stamp = dates[s].strftime("%Y%m%d%H%M")
                meta = {
                    "source": Path(path).name,
                    # as the other series' times (`2013-07-01T00:30`; they had seconds)
                    "start": f"{dates[s]:%Y-%m-%dT%H:%M}",
                    "times": [f"{d:%Y-%m-%dT%H:%M}" for d in dates[s : end + 1]],
                    SERIES_INDEX: s,  # the statistics count each slot of the file once
                    SERIES_ID: Path(path).name,
                }
                out.append((f"{stem}_{stamp}", frames, meta))
        return out

    def args(self) -> dict[str, Any]:
        return {
            "paths": [str(p) for p in self.paths],
            "num_frames": self.num_frames,
            "stride": self.stride,
            "test_days": self.test_days,
            "val_days": self.val_days,
            "slot_minutes": self.slot_minutes,
        }
