"""`stpdist shard merge`: datasets stpdist wrote (`shard`, `synth`), merged into one: a
new month of data added to a dataset without converting its raw files again, or a long
conversion done in parts (each part restarted alone when it is killed) and joined.

Each part is a dataset folder holding split folders (`train/`, `val/`, …, each with its
`index.json`); a split is the samples of that split of every part, in the order the parts
are given, each part's in its shard order. Samples are read back from the shards (their
frames and their metadata, frame times included) and written again with the checks and
statistics of every conversion, so the merged split's mean, std, range and climatology
are those of all its samples, exactly. What the parts must share, per split: the frame
shape and dtype, the value scale, the variables and the grid, and the NaN fill value
(`--allow-nan`) those with NaN were converted with, which must lie outside every part's
values (a fill among real values cannot be told from them once stored); any difference is
refused naming both parts.
A key must be unique in a split across parts (one in two parts is refused naming both:
two months of files named alike need other names, e.g. converted from folders named by
month). Windows of a time series count each frame once in the statistics within a part;
two parts holding the same frames (overlapping windows at their join) count them twice.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import InputError, MissingInput
from ..format import (
    FRAMES_EXT,
    INDEX_FILE,
    META_EXT,
    SERIES_ID,
    SERIES_INDEX,
    ShardFormatError,
    ShardInfo,
    SplitIndex,
    check_unchanged,
    decode_frames,
    iter_shard,
    read_index,
)

SHARED = ("shape", "dtype", "value_scale", "variables", "latitudes", "longitudes")
"""What every part's split must hold alike (and every split its value scale)."""


@dataclass
class MergedDatasets:
    paths: list[str]
    name: str = "merge"
    value_scale: float = 1.0
    grid: float | None = None
    variables: list[dict[str, str]] = field(default_factory=list)
    latitudes: list[float] | None = None
    longitudes: list[float] | None = None
    climatology: bool = False
    fill: float | None = None
    indexes: dict[str, list[tuple[int, Path, SplitIndex]]] = field(default_factory=dict)
    """Per split: (part number, split folder, index) of each part that has it."""

    @property
    def nan_fill(self) -> float | None:
        """The parts' NaN fill value (`--allow-nan`), which the merge stores NaN as again."""
        self._read()
        return self.fill

    def _read(self) -> None:
        """The parts' indexes alone, checked alike (once, before anything is written)."""
        if self.indexes:
            return
        if len(self.paths) < 2:
            raise InputError(
                f"shard merge takes two or more datasets, got {len(self.paths)}: the datasets "
                "to merge, each a folder of split folders"
            )
        resolved = [Path(p).resolve() for p in self.paths]
        for number, path in enumerate(resolved):
            if path in resolved[:number]:
                raise InputError(
                    f"{self.paths[number]}: given twice (as {self.paths[resolved.index(path)]})"
                )
        for number, path in enumerate(self.paths):
            for folder in self._split_folders(Path(path)):
                index = read_index(folder)
                self.indexes.setdefault(index.split, []).append((number, folder, index))
        self._check_alike()
        first = next(iter(self.indexes.values()))[0][2]
        self.value_scale = first.value_scale
        self.variables = first.variables
        self.latitudes = first.latitudes or None
        self.longitudes = first.longitudes or None
        self.climatology = any(i.climatology for parts in self.indexes.values()
                               for _, _, i in parts)  # fmt: skip

    def _split_folders(self, root: Path) -> list[Path]:
        if not root.is_dir():
            raise MissingInput(f"{root}: no such folder")
        if (root / INDEX_FILE).is_file():
            raise InputError(
                f"{root} is a split folder (it holds {INDEX_FILE}): name the dataset folder "
                f"above it, {root.parent}"
            )
        found = sorted(p for p in root.iterdir() if p.is_dir() and (p / INDEX_FILE).is_file())
        if not found:
            raise MissingInput(f"{root}: no split folder (with its {INDEX_FILE}) in it")
        return found

    def _check_alike(self) -> None:
        """Every part's split alike in `SHARED`, every split one value scale, and every part
        converted with one NaN fill: the first difference refused, naming both parts."""
        fills: dict[Any, str] = {}
        scales: dict[float, str] = {}
        for parts in self.indexes.values():
            _, first_folder, first = parts[0]
            for _, folder, index in parts:
                for name in SHARED:
                    if getattr(index, name) != getattr(first, name):
                        raise InputError(
                            f"{folder}: {name} {getattr(index, name)}, and {first_folder} "
                            f"{getattr(first, name)}: the parts of a split must hold alike "
                            "samples"
                        )
                if index.args.get("nan_fill") is not None:  # a part without NaN needs none
                    fills.setdefault(index.args["nan_fill"], str(folder))
                scales.setdefault(index.value_scale, str(folder))
        if len(scales) > 1:
            (a, where_a), (b, where_b) = list(scales.items())[:2]
            raise InputError(f"{where_b}: value scale {b:g}, and {where_a} {a:g}: the splits of "
                             "a dataset share one")  # fmt: skip
        if len(fills) > 1:
            (a, where_a), (b, where_b) = list(fills.items())[:2]
            raise InputError(
                f"{where_b}: NaN stored as {b:g} (--allow-nan), and {where_a} as {a:g}: convert "
                "the parts with one fill value"
            )
        self.fill = next(iter(fills), None)
        if self.fill is not None:
            self._check_fill_apart()

    def _check_fill_apart(self) -> None:
        """The fill must lie outside every part's values (the index's range leaves filled
        values out): only then are the filled values told from real ones again. A fill
        such as 0 among real zeros (radar's no rain) would turn them missing: refused."""
        assert self.fill is not None
        for parts in self.indexes.values():
            for _, folder, index in parts:
                if not index.min or not index.max:
                    continue
                low = min(index.min) * index.value_scale
                high = max(index.max) * index.value_scale
                if low <= self.fill <= high:
                    raise InputError(
                        f"{folder}: its values run from {low:g} to {high:g}, and NaN was stored "
                        f"as {self.fill:g} among them: a merge cannot tell the filled values from "
                        "real ones (it reads samples back); convert the raw files of all the parts "
                        "together, or each again with a fill outside the data (--allow-nan -999)"
                    )

    def splits(self) -> dict[str, list[Any]]:
        self._read()
        order = {"train": 0, "val": 1, "test": 2}
        return {
            split: [
                (number, str(folder / shard.name), shard)
                for number, folder, index in parts
                for shard in index.shards
            ]  # fmt: skip
            for split, parts in sorted(self.indexes.items(), key=lambda s: order.get(s[0], 3))
        }

    def load(self, item: tuple[int, str, ShardInfo]) -> list[tuple[str, np.ndarray, dict]]:
        """A part's shard's samples, its bytes and count checked against the part's index
        first (a dataops review: a merge copied a damaged or cut shard, and the merged
        set, its hashes written afresh, then verified)."""
        number, tar, shard = item
        out = []
        try:
            check_unchanged(Path(tar), shard)
            for key, sample in iter_shard(Path(tar)):
                where = f"{tar}: member {key}.{FRAMES_EXT}"
                if FRAMES_EXT not in sample:
                    raise ShardFormatError(f"{tar}: sample '{key}' has no {FRAMES_EXT}")
                frames = decode_frames(sample[FRAMES_EXT], where)
                meta = json.loads(sample[META_EXT]) if META_EXT in sample else {}
                if not isinstance(meta, dict):
                    raise ShardFormatError(f"{tar}: sample '{key}': its {META_EXT} is no object")
                if SERIES_INDEX in meta:  # a window of a part's series: its own series
                    meta[SERIES_ID] = f"{number}:{meta.get(SERIES_ID, '')}"
                out.append((key, self._unfilled(frames), meta))
            if len(out) != shard.num_samples:
                raise ShardFormatError(
                    f"{tar}: holds {len(out)} samples, its part's index.json says "
                    f"{shard.num_samples}: damaged (cut short?); restore it or convert that "
                    "part again"
                )
        except (ShardFormatError, ValueError) as exc:
            raise InputError(f"{tar}: {exc}" if tar not in str(exc) else str(exc)) from None
        return out

    def _unfilled(self, frames: np.ndarray) -> np.ndarray:
        """The parts' filled values as NaN again, to be filled and left out of the
        statistics as they were (a real value equal to the fill is taken for one too)."""
        if self.fill is None or frames.dtype.kind != "f":
            return frames
        filled = frames == np.asarray(self.fill, frames.dtype)
        if not filled.any():
            return frames
        return np.where(filled, np.nan, frames).astype(frames.dtype)

    def check_out(self, out: str | Path) -> None:
        """An --out inside a part is refused: the part would hold a folder no conversion
        wrote (its own later --overwrite is refused for it)."""
        where = Path(out).resolve()
        for path in self.paths:
            if where != Path(path).resolve() and where.is_relative_to(Path(path).resolve()):
                raise InputError(
                    f"--out {out} lies inside the part {path}: name a folder outside it"
                )

    def describe(self, item: tuple[int, str]) -> str:
        return item[1]

    def __getstate__(self) -> dict[str, Any]:
        """What a worker needs to load samples: not the parts' indexes (pickled with every
        item a worker is sent: thousands of shards made the merge slower the more it had)."""
        return {**self.__dict__, "indexes": {}}

    def args(self) -> dict[str, Any]:
        """The parts, and the conversion settings every part's every split shares (a
        series' `num_frames` and `stride`: the streams' notes on windows read them)."""
        shared: dict[str, Any] | None = None
        for parts in self.indexes.values():
            for _, _, index in parts:
                items = {k: v for k, v in index.args.items() if k not in ("split", "paths", "root")}
                shared = items if shared is None else {
                    k: v for k, v in shared.items() if items.get(k) == v
                }  # fmt: skip
        return {**(shared or {}), "paths": [str(Path(p)) for p in self.paths]}


def check_fill(value: float | None, given: float | None) -> float | None:
    """The fill to store NaN as: the parts' own; `--allow-nan` may only repeat it."""
    if given is not None and value is not None and not math.isclose(given, value):
        raise InputError(f"--allow-nan {given:g}: the parts store NaN as {value:g}")
    return value if value is not None else given
