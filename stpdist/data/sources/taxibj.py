"""TaxiBJ `BJ{13,14,15,16}_M32x32_T30_InOut.h5`: `data` N×2×32×32 flows, `date` N byte
strings YYYYMMDDSS (SS = half-hour slot 01..48).

Windows of `num_frames` consecutive half-hour slots (stride `stride`), never across a gap
in the record nor across files. Date-based split: windows starting in the last `test_days`
days of the whole record are test, the `val_days` before them validation, the rest train;
a window that straddles a split boundary is dropped, so no frame is shared between splits.
Stored as float32 raw flows, value scale 1292 (the maximum flow); the split's statistics
count each slot of a file once, however many overlapping windows hold it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import InputError, MissingInput
from ..format import SERIES_ID, SERIES_INDEX, require_file
from .series import check_window

SLOT = timedelta(minutes=30)
SCALE = 1292.0


def parse_slot(raw: bytes | str) -> datetime:
    text = raw.decode() if isinstance(raw, bytes) else str(raw)
    day, slot = datetime.strptime(text[:8], "%Y%m%d"), int(text[8:])
    if not 1 <= slot <= 48:
        raise InputError(f"slot {slot} of {text} outside 01..48")
    return day + (slot - 1) * SLOT


def _read(path: str) -> tuple[np.ndarray, list[datetime]]:
    import h5py

    try:
        with h5py.File(path, "r") as f:
            if "data" not in f or "date" not in f:
                raise InputError(f"missing dataset 'data' or 'date' (has {list(f.keys())})")
            data, dates = f["data"][()], [parse_slot(d) for d in f["date"][()]]
    except Exception as exc:  # h5py raises several types; every one names the file here
        raise InputError(f"{path}: {type(exc).__name__}: {exc}") from exc
    if data.ndim != 4 or data.shape[0] != len(dates):
        raise InputError(f"{path}: 'data' has shape {data.shape}, 'date' {len(dates)} entries")
    return data, dates


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

    def __post_init__(self) -> None:  # before any file is read
        check_window(self.num_frames, self.stride)
        for flag, days in (("--test-days", self.test_days), ("--val-days", self.val_days)):
            if days < 0:
                raise InputError(f"{flag} {days}: expected a number of days ≥ 0")

    def _bounds(self) -> tuple[datetime, datetime]:
        import h5py

        last = None
        for path in self.paths:
            try:
                with h5py.File(path, "r") as f:
                    end = parse_slot(f["date"][-1])
            except Exception as exc:  # h5py raises several types; name the file
                raise InputError(f"{path}: {type(exc).__name__}: {exc}") from exc
            last = end if last is None or end > last else last
        test_start = (last + SLOT) - timedelta(days=self.test_days)
        return test_start - timedelta(days=self.val_days), test_start

    def windows(self, dates: list[datetime]) -> list[int]:
        """Start indexes of windows of consecutive slots."""
        starts = []
        run = 1  # length of the consecutive run ending at i
        for i in range(1, len(dates) + 1):
            if i < len(dates) and dates[i] - dates[i - 1] == SLOT:
                run += 1
                continue
            first = i - run
            starts += range(first, i - self.num_frames + 1, self.stride)
            run = 1
        return starts

    def describe(self, item: tuple[str, str]) -> str:
        return item[0]

    def splits(self) -> dict[str, list[Any]]:
        if not self.paths:
            raise MissingInput("no TaxiBJ .h5 files given")
        for path in self.paths:
            require_file(path)  # missing: FileNotFoundError; a FIFO would block h5py
        self.bounds = self._bounds()
        names = ("train", "val", "test") if self.val_days > 0 else ("train", "test")
        return {split: [(p, split) for p in self.paths] for split in names}

    def _split_of(
        self, start: datetime, end: datetime, bounds: tuple[datetime, datetime]
    ) -> str | None:
        val_start, test_start = bounds

        def which(t: datetime) -> str:
            return "test" if t >= test_start else "val" if t >= val_start else "train"

        return which(start) if which(start) == which(end) else None

    def load(self, item: tuple[str, str]) -> list[tuple[str, np.ndarray, dict]]:
        path, split = item
        data, dates = _read(path)
        bounds = self.bounds or self._bounds()
        stem = Path(path).stem.replace(".", "_")
        out = []
        for s in self.windows(dates):
            end = s + self.num_frames - 1
            if self._split_of(dates[s], dates[end], bounds) == split:
                frames = np.asarray(data[s : end + 1], dtype=np.float32)
                stamp = dates[s].strftime("%Y%m%d%H%M")
                meta = {
                    "source": Path(path).name,
                    "start": dates[s].isoformat(),
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
        }
