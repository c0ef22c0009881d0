"""SEVIR (Storm EVent ImagRy, the radar-nowcasting benchmark): `CATALOG.csv` and the HDF5
files under `data/<img_type>/<year>/*.h5`.

Each catalog row names an event (`id`), its image type (`img_type`: `vil` first), the file
holding it (`file_name`, relative to the data folder) and its row there (`file_index`),
and the event time (`time_utc`). A VIL file holds `id` (N event ids) and `vil`, N×H×W×49
uint8 (384×384 frames, 5 minutes apart). Each event is cut into windows of `num_frames`
frames every `stride` frames (25 = 13 inputs + 12 targets, stride 12: starts 0, 12, 24),
stored T×1×H×W uint8, value scale 255; the split's statistics count each frame of an event
once, however many overlapping windows hold it. Split by event time: events from `val_from`
on are validation, from `test_from` on test (Earthformer: 2019-01-01 and 2019-06-01). The
usual VIL thresholds in stored units: 16, 74, 133, 160, 181, 219.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ...console import log
from ...errors import InputError, require_extra
from ..format import SERIES_ID, SERIES_INDEX, require_file
from .series import check_window

VIL_THRESHOLDS = [16, 74, 133, 160, 181, 219]
EVENTS_PER_ITEM = 8
"""Most events one work item reads: a VIL event is 7 MB (384×384×49), its windows each a
copy once handed to the writer, while a file holds hundreds of events (gigabytes)."""
COLUMNS = ("id", "file_name", "file_index", "img_type", "time_utc")
CATALOG = "CATALOG.csv"


def _date(text: str | None, flag: str) -> np.datetime64 | None:
    """A split boundary (`2019-06-01`, `2019-06-01 12:00`); not a date: an error naming `flag`."""
    if not text:
        return None
    try:
        return np.datetime64(str(text).strip().replace(" ", "T"))
    except ValueError:
        raise InputError(f"{flag} {text!r}: not a date (expected YYYY-MM-DD[THH:MM])") from None


def _catalog_time(text: str) -> np.datetime64 | None:
    """A catalog's `time_utc` (`YYYY-MM-DD HH:MM:SS`, a trailing `Z` or `+00:00` of UTC
    read past); None for a blank or unreadable one."""
    text = text.strip().replace(" ", "T")
    for utc in ("Z", "+00:00"):
        text = text.removesuffix(utc)
    try:
        time = np.datetime64(text)
    except ValueError:
        return None
    return None if np.isnat(time) else time


@dataclass
class Sevir:
    catalog: str
    """`CATALOG.csv`, or the folder that holds it (and, by default, the data folder)."""
    data_root: str | None = None
    """Folder that the catalog's `file_name`s are relative to (default: `<catalog dir>/data`)."""
    img_type: str = "vil"
    num_frames: int = 25
    stride: int = 12
    val_from: str | None = "2019-01-01"
    test_from: str | None = "2019-06-01"
    name: str = "sevir"
    value_scale: float = 255.0
    grid: float | None = None

    def __post_init__(self) -> None:  # before any file is read
        if Path(self.catalog).is_dir():
            self.catalog = str(Path(self.catalog) / CATALOG)
        check_window(self.num_frames, self.stride)
        val_from, test_from = (
            _date(self.val_from, "--val-from"),
            _date(self.test_from, "--test-from"),
        )
        if val_from is not None and test_from is not None and test_from < val_from:
            raise InputError(
                f"--test-from {self.test_from} is before --val-from {self.val_from}: the test "
                "split must start after the validation split"
            )

    @property
    def paths(self) -> list[str]:  # what `convert` must never overwrite
        return [self.catalog, self._root()]

    def _root(self) -> str:
        return self.data_root or str(Path(self.catalog).parent / "data")

    def splits(self) -> dict[str, list[Any]]:
        path = require_file(self.catalog)  # missing: FileNotFoundError; a FIFO would block
        with open(path, newline="", encoding="utf-8-sig") as f:  # a BOM (Excel's) read past
            reader = csv.DictReader(f)
            missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise InputError(f"{path}: missing columns {missing} (has {reader.fieldnames})")
            # each with its line in the file (the header is line 1), for errors to name
            rows, types = [], set()
            for row in reader:
                types.add(row["img_type"])
                if row["img_type"] == self.img_type:
                    rows.append((reader.line_num, row))
        if not rows:
            held = ", ".join(sorted(t for t in types if t)) or "none"
            raise InputError(
                f"{path}: no events of image type '{self.img_type}' (the catalog's types: "
                f"{held}; --img-type takes one of them)"
            )
        val_from, test_from = (
            _date(self.val_from, "--val-from"),
            _date(self.test_from, "--test-from"),
        )
        by_split: dict[str, dict[str, list[tuple[str, int]]]] = {}
        for line, row in rows:
            time = _catalog_time(row["time_utc"])
            if time is None:  # blank read as NaT: no split bound held, and it went to train
                raise InputError(
                    f"{path}: line {line} ({row['id']}): time_utc {row['time_utc']!r}: "
                    "expected a date and time, YYYY-MM-DD HH:MM:SS"
                ) from None
            try:
                index = int(row["file_index"])
            except ValueError:
                raise InputError(
                    f"{path}: line {line} ({row['id']}): file_index {row['file_index']!r}: "
                    "expected an integer"
                ) from None
            split = (
                "test"
                if test_from is not None and time >= test_from
                else "val"
                if val_from is not None and time >= val_from
                else "train"
            )
            by_split.setdefault(split, {}).setdefault(row["file_name"], []).append(
                (row["id"], index)
            )
        _say_empty_splits(by_split, val_from, test_from, path)
        # work items of one file's events each, a few at a time (a file is gigabytes)
        return {
            split: [
                (file, events[first : first + EVENTS_PER_ITEM])
                for file, events in sorted(by_split[split].items())
                for first in range(0, len(events), EVENTS_PER_ITEM)
            ]
            for split in ("train", "val", "test")
            if split in by_split
        }

    def describe(self, item: tuple[str, list[tuple[str, int]]]) -> str:
        return str(Path(self._root()) / item[0])

    def load(self, item: tuple[str, list[tuple[str, int]]]) -> list[tuple[str, np.ndarray, dict]]:
        h5py = require_extra("h5py", "formats", "reading SEVIR HDF5 files")

        file, events = item
        path = require_file(Path(self._root()) / file)
        out = []
        try:
            with h5py.File(path, "r") as f:
                if self.img_type not in f or "id" not in f:
                    raise InputError(f"missing dataset '{self.img_type}' or 'id' (has {list(f)})")
                data = f[self.img_type]
                if data.ndim != 4:
                    raise InputError(f"'{self.img_type}' has shape {data.shape}, expected N×H×W×T")
                if data.dtype != np.uint8:  # its values are not 0–255 (the scale written)
                    raise InputError(
                        f"'{self.img_type}' holds {data.dtype}; this converter reads SEVIR's "
                        "8-bit image types (vil), whose values are 0–255: another type needs "
                        "its own scale (export its events as arrays: stpdist shard arrays … "
                        "--value-scale S)"
                    )
                if data.shape[1] != data.shape[2]:  # N×T×H×W read as N×H×W×T: cut along W
                    raise InputError(
                        f"'{self.img_type}' has shape {data.shape}: expected N×H×W×T (square "
                        "frames, time last, as SEVIR stores them)"
                    )
                if data.shape[3] < self.num_frames:
                    raise InputError(
                        f"'{self.img_type}' holds {data.shape[3]} frames an event, fewer than "
                        f"--frames {self.num_frames}"
                    )
                ids = [i.decode() if isinstance(i, bytes) else str(i) for i in f["id"][()]]
                for event, index in events:
                    if not 0 <= index < data.shape[0]:
                        raise InputError(
                            f"event {event}: file_index {index} outside 0..{data.shape[0] - 1}"
                        )
                    if ids[index] != event:
                        raise InputError(f"event {event}: row {index} holds '{ids[index]}'")
                    frames_HWT = data[index]
                    frames = np.ascontiguousarray(np.moveaxis(frames_HWT, -1, 0)[:, None])
                    for start in range(0, frames.shape[0] - self.num_frames + 1, self.stride):
                        key = f"{event}_{start:02d}".replace(".", "_").replace("/", "_")
                        window = frames[start : start + self.num_frames]
                        meta = {"event": event, "start": start, "file": file}
                        meta |= {SERIES_INDEX: start, SERIES_ID: event}  # counted once each
                        out.append((key, window, meta))
        except (OSError, KeyError, ValueError) as exc:
            raise InputError(f"{path}: {exc}") from exc
        return out

    def args(self) -> dict[str, Any]:
        return {
            "catalog": self.catalog,
            "data_root": self._root(),
            "img_type": self.img_type,
            "num_frames": self.num_frames,
            "stride": self.stride,
            "val_from": self.val_from,
            "test_from": self.test_from,
        }


def _say_empty_splits(
    by_split: dict[str, Any], val_from: Any, test_from: Any, catalog: Path
) -> None:
    """A warning for each split the dates ask for that no event falls into (it is not
    written): a catalog of older events has no test split under the default dates."""
    bounds = {
        "train": f"before {val_from or test_from}" if (val_from or test_from) else "",
        "val": (
            f"from --val-from {val_from}"
            + (f" until --test-from {test_from}" if test_from is not None else " on")
            if val_from is not None
            else ""
        ),
        "test": f"from --test-from {test_from} on" if test_from is not None else "",
    }
    for split, span in bounds.items():
        if span and split not in by_split:
            log.warning(
                "%s: no event falls %s: no %s split is written (set --val-from/--test-from "
                "to dates within the catalog's events)",
                catalog,
                span,
                split,
            )
