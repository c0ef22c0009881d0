"""netCDF / Zarr archives through xarray (`pip install stpdist[weather]`): WeatherBench
folders (one folder per variable of yearly `*.nc` files) and single Zarr stores
(WeatherBench 2 / ERA5 style).

Each variable is a data variable with dims (time, [level,] lat, lon) (`latitude` /
`longitude` accepted too). A channel is a variable, or a variable at one pressure level:
`--vars z500,t850,t2m` (or `--vars z,t --levels 500,850`: every level of every variable
that has levels). Channels share one time axis and grid (checked: a difference is an
error naming the file). The series is cut into windows by `series.py` (never across a gap
in `time`; split by `--val-from` / `--test-from` dates) and read in blocks of at most
`block_frames` frames per work item, so memory stays flat whatever the archive's size.

Stored float32 in physical units (value scale 1), with the variables (name, units), the
latitudes and longitudes, and each split's climatology (the C×H×W mean of its frames) in the
index. NaN (land/sea masks, missing values) is stored as `convert`'s `--allow-nan FILL`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import InputError, MissingInput
from ..format import require_file
from .series import parse_bound, parse_step, plan_windows, stamp, stamp_unit

LAT_NAMES = ("lat", "latitude")
LON_NAMES = ("lon", "longitude")
LEVEL_NAMES = ("level", "plev", "pressure_level", "isobaricInhPa")


def _xarray() -> Any:
    try:
        import xarray
    except ImportError:  # pragma: no cover - the extra is missing
        raise ImportError(
            "reading netCDF/Zarr needs xarray: pip install 'stpdist[weather]'"
        ) from None
    return xarray


def _open(path: str) -> Any:
    """A lazily read dataset (no dask: values are read on indexing)."""
    xr = _xarray()
    try:
        if (
            path.rstrip("/").lower().endswith(".zarr")
            or (Path(path) / ".zgroup").exists()
            or (Path(path) / "zarr.json").exists()
        ):
            consolidated = (Path(path) / ".zmetadata").exists()
            return xr.open_zarr(
                path, chunks=None, decode_timedelta=False, consolidated=consolidated
            )
        return xr.open_dataset(path, chunks=None, decode_timedelta=False)
    except Exception as exc:
        if "did not find a match in any of xarray's" in str(exc):  # a paragraph with links
            readers = re.search(r"\[[^\]]*\]", str(exc))
            listed = f" {readers.group(0)}" if readers else ""
            reason = f"none of xarray's installed readers{listed} can open it; expected netCDF"
        else:
            reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        raise InputError(f"{path}: unreadable ({reason})") from None


def _netcdf_files(folder: Path) -> list[str]:
    """The netCDF files under `folder`, any case of `.nc` / `.nc4` (T2M_2019.NC too): `.nc`
    first, then `.nc4`, each by path (the order the stores are read in, not the time order:
    pieces are sorted by their first time)."""
    files = [f for f in folder.rglob("*") if f.suffix.lower() in (".nc", ".nc4") and not f.is_dir()]
    by_kind = sorted(files, key=lambda f: (f.suffix.lower() == ".nc4", str(f)))
    return [str(require_file(f)) for f in by_kind]


def _dim(names: tuple[str, ...], dims: tuple[str, ...]) -> str | None:
    return next((d for d in dims if d in names), None)


def _describe(store: str, ds: Any, var_name: str, var: Any) -> dict[str, Any]:
    """A time-dependent variable of one store: levels, units, grid, where; with `problem`
    set (one line naming the store) when it cannot be read as (time, [level,] lat, lon)."""
    dims = tuple(var.dims)
    lat, lon = _dim(LAT_NAMES, dims), _dim(LON_NAMES, dims)
    level = _dim(LEVEL_NAMES, dims)
    info: dict[str, Any] = {"units": str(var.attrs.get("units", "")), "where": store}
    if lat is None or lon is None or len(dims) != (4 if level else 3):
        info["problem"] = (
            f"{store}: variable '{var_name}' has dims {dims}; expected (time, [level,] lat, lon)"
        )
        return info
    info["levels"] = [float(v) for v in ds[level].values] if level else None
    lats = np.asarray(ds[lat].values, dtype=np.float64)
    lons = np.asarray(ds[lon].values, dtype=np.float64)
    info["grid"] = (lats.tolist(), lons.tolist())
    for name, values in ((lat, lats), (lon, lons)):
        if not np.isfinite(values).all():
            bad = values[~np.isfinite(values)][0]
            info["problem"] = f"{store}: coordinate '{name}' holds {bad} (of '{var_name}')"
    if "problem" not in info and np.abs(lats).max(initial=0) > 90:
        info["problem"] = (
            f"{store}: coordinate '{lat}' holds {lats[np.abs(lats) > 90][0]:g}, outside the "
            f"latitudes -90…90 (of '{var_name}')"
        )
    return info


def _differs(first: dict[str, Any], info: dict[str, Any], store: str, var_name: str) -> str:
    """What differs between two stores' copies of a variable ('' when nothing)."""
    if "problem" in first:
        return ""
    if first["levels"] != info["levels"]:
        return f"{store}: variable '{var_name}' levels differ from those of {first['where']}"
    (lat0, lon0), (lat1, lon1) = first["grid"], info["grid"]
    if (
        len(lat0) != len(lat1)
        or len(lon0) != len(lon1)
        or not (np.allclose(lat0, lat1) and np.allclose(lon0, lon1))
    ):
        return f"{store}: variable '{var_name}' is on another lat/lon grid than in {first['where']}"
    return ""


@dataclass(frozen=True)
class Block:
    """One work item: window starts of one split, read together; printed as the file and
    frames it covers (errors name it)."""

    starts: tuple[int, ...]
    where: str

    def __str__(self) -> str:
        return self.where


@dataclass
class Channel:
    variable: str
    level: float | None
    name: str
    units: str = ""


@dataclass
class XarraySource:
    paths: list[str]
    """netCDF files, folders of them (searched recursively), or Zarr stores."""
    var_specs: Any = None
    """Channel specs, e.g. ["z500", "t850", "t2m"] (`name<level>` selects a level)."""
    levels: list[float] | None = None
    """Every variable with a level dim is taken at these levels."""
    num_frames: int = 8
    stride: int = 1
    step: str | None = None
    val_from: str | None = None
    test_from: str | None = None
    block_frames: int = 256
    """Most frames one work item reads (flat memory)."""
    every: int = 1
    """Keep every k-th time step (e.g. 12 on hourly data: 12 h steps)."""
    name: str = "xarray"
    value_scale: float = 1.0
    grid: float | None = None
    climatology: bool = True
    channels: list[Channel] = field(default_factory=list)
    files: dict[str, list[tuple[str, int, int]]] = field(default_factory=dict)
    """Per variable: (file, first frame, frame count), set by `splits`."""
    times: Any = None
    latitudes: list[float] | None = None
    longitudes: list[float] | None = None
    specs: list[str] = field(default_factory=list)
    variables: list[dict[str, str]] = field(default_factory=list)
    """(name, units) per channel, set by `splits`; the index keeps them."""
    key_unit: str = "m"
    """Time unit of the sample keys (`w<time>`), set by `splits`: minutes unless the time
    steps need seconds or less."""

    def __post_init__(self) -> None:
        specs = self.var_specs
        if isinstance(specs, str):
            specs = [v.strip() for v in specs.split(",") if v.strip()]
        self.specs = list(specs or [])

    # ------------------------------------------------------------------ discovery
    def _stores(self) -> list[str]:
        stores = []
        for path in self.paths:
            p = Path(path)
            if not p.exists():
                raise MissingInput(f"{p}: no such file or folder")
            require_file(p, folder_too=True)  # a FIFO would block the reader
            if p.is_dir() and not (
                p.suffix.lower() == ".zarr"
                or (p / ".zgroup").exists()
                or (p / "zarr.json").exists()
            ):
                found = _netcdf_files(p)
                if not found:
                    raise MissingInput(f"{p}: no .nc files")
                stores += found
            else:
                stores.append(str(p))
        return stores

    def _channels(
        self, available: dict[str, dict[str, Any]], problems: dict[str, str]
    ) -> list[Channel]:
        """Resolve the specs against the variables found ({name: {levels, units}}); a
        variable asked for that cannot be read is an error saying why."""
        if not self.specs:
            raise InputError(
                f"{', '.join(map(str, self.paths))}: choose variables with --vars "
                f"(found {sorted(available)})"
            )
        channels = []
        for spec in self.specs:
            match = re.fullmatch(r"(.*?)(\d+(?:\.\d+)?)", spec)
            name = spec if spec in available or not match else match.group(1)
            if name in problems:
                raise InputError(problems[name])
            if spec in available:
                info = available[spec]
                if info["levels"] is None:
                    channels.append(Channel(spec, None, spec, info["units"]))
                    continue
                if not self.levels:
                    raise InputError(
                        f"{info['where']}: variable '{spec}' has levels {info['levels']}: "
                        f"choose with --levels or name one, e.g. {spec}{int(info['levels'][0])}"
                    )
                for level in self.levels:
                    if level not in info["levels"]:
                        raise InputError(
                            f"{info['where']}: variable '{spec}' has no level {level:g} "
                            f"(has {info['levels']})"
                        )
                    channels.append(Channel(spec, level, f"{spec}{level:g}", info["units"]))
                continue
            base = match.group(1) if match else None
            if base in available and available[base]["levels"] is not None:
                level = float(match.group(2))
                if level not in available[base]["levels"]:
                    raise InputError(
                        f"{available[base]['where']}: variable '{base}' has no level {level:g} "
                        f"(has {available[base]['levels']})"
                    )
                channels.append(Channel(base, level, spec, available[base]["units"]))
                continue
            raise InputError(
                f"{', '.join(map(str, self.paths))}: missing variable '{spec}' "
                f"(found {sorted(available)})"
            )
        return channels

    def _scan(self) -> tuple[dict[str, dict[str, Any]], dict[str, list], dict[str, str]]:
        """Every time-dependent variable of every store: ({name: levels, units, grid, where},
        {name: [(store, times)]}, {name: what is wrong with it}). Dims, levels and grids
        are checked here, but a problem is an error only for a variable asked for
        (`_channels`): an archive may hold variables this converter cannot read."""
        from .series import as_times

        available: dict[str, dict[str, Any]] = {}
        pieces: dict[str, list[tuple[str, np.ndarray]]] = {}
        problems: dict[str, str] = {}
        for store in self._stores():
            ds = _open(store)
            try:
                for var_name, var in ds.data_vars.items():
                    if "time" not in var.dims:
                        continue  # constants (orography, land-sea mask)
                    info = _describe(store, ds, var_name, var)
                    first = available.setdefault(var_name, info)
                    problem = info.get("problem") or _differs(first, info, store, var_name)
                    if problem:
                        problems.setdefault(var_name, problem)
                        continue
                    pieces.setdefault(var_name, []).append(
                        (store, as_times(ds["time"].values, store))
                    )
            finally:
                ds.close()
        if not available:
            raise InputError(f"{', '.join(self.paths)}: no variable with dims (time, …, lat, lon)")
        return available, pieces, problems

    def _grid(self, available: dict[str, dict[str, Any]]) -> tuple[list[float], list[float]]:
        """The lat/lon grid the channels share (a channel on another grid is an error)."""
        first = self.channels[0].variable
        grid = available[first]["grid"]
        for channel in self.channels[1:]:
            info = available[channel.variable]
            here = info["grid"]
            if not (
                len(here[0]) == len(grid[0])
                and len(here[1]) == len(grid[1])
                and np.allclose(grid[0], here[0])
                and np.allclose(grid[1], here[1])
            ):
                raise InputError(
                    f"{info['where']}: variable '{channel.variable}' is on another lat/lon grid "
                    f"({len(here[0])}×{len(here[1])}) than '{first}' ({len(grid[0])}×"
                    f"{len(grid[1])})"
                )
        return grid

    def splits(self) -> dict[str, list[Any]]:
        available, pieces, problems = self._scan()
        self.channels = self._channels(available, problems)
        self.variables = [{"name": c.name, "units": c.units} for c in self.channels]
        self.latitudes, self.longitudes = self._grid(available)
        times = None
        for variable in dict.fromkeys(c.variable for c in self.channels):
            parts = sorted(pieces[variable], key=lambda p: p[1][0] if len(p[1]) else 0)
            files, first = [], 0
            for store, stamps in parts:
                files.append((store, first, len(stamps)))
                first += len(stamps)
            stamps = np.concatenate([s for _, s in parts])
            if times is None:
                times, reference = stamps, variable
            elif len(stamps) != len(times) or (stamps != times).any():
                raise InputError(
                    f"{files[0][0]}: variable '{variable}' has other times than '{reference}' "
                    f"({len(stamps)} vs {len(times)} steps)"
                )
            self.files[variable] = files
        if self.every < 1:
            raise InputError(f"--every {self.every}: expected a positive step count")
        self.times = times[:: self.every]
        self.key_unit = stamp_unit(self.times)  # keys need seconds for 30-second steps
        times = self.times
        windows = plan_windows(
            times,
            self.num_frames,
            self.stride,
            step=parse_step(self.step),
            val_from=parse_bound(self.val_from, True),
            test_from=parse_bound(self.test_from, True),
            where=self._series_where(),
        )
        # work items: runs of windows of one split whose frames span at most block_frames
        out: dict[str, list[Any]] = {}
        block: list[int] = []
        split = None
        for window in windows:
            if block and (
                window.split != split
                or window.start + self.num_frames - block[0] > self.block_frames
            ):
                out.setdefault(split, []).append(tuple(block))
                block = []
            split = window.split
            block.append(window.start)
        if block:
            out.setdefault(split, []).append(tuple(block))
        return {
            s: [Block(starts, self._where(starts)) for starts in out[s]]
            for s in ("train", "val", "test")
            if s in out
        }

    def _series_where(self) -> str:
        """The files of the series (the first channel's), for messages about the whole of it."""
        files = [store for store, _, _ in self.files[self.channels[0].variable]]
        more = len(files) - 1
        where = files[0] + (f" and {more} more file{'s' if more > 1 else ''}" if more else "")
        return where + (f" (--every {self.every})" if self.every > 1 else "")

    def _where(self, starts: tuple[int, ...]) -> str:
        first, stop = starts[0], starts[-1] + self.num_frames
        e = self.every
        stores = [
            store
            for c in dict.fromkeys(ch.variable for ch in self.channels)
            for store, offset, count in self.files[c]
            if offset < (stop - 1) * e + 1 and offset + count > first * e
        ]
        return (
            f"{', '.join(dict.fromkeys(stores))} (times {self.times[first]}…{self.times[stop - 1]})"
        )

    # ------------------------------------------------------------------ reading
    def _read(self, channel: Channel, first: int, stop: int) -> np.ndarray:
        """Frames [first, stop) of one channel, T×H×W float32, from the files holding them."""
        parts = []
        for store, offset, count in self.files[channel.variable]:
            if offset + count <= first or offset >= stop:
                continue
            ds = _open(store)
            try:
                var = ds[channel.variable]
                dims = tuple(var.dims)
                lat, lon = _dim(LAT_NAMES, dims), _dim(LON_NAMES, dims)
                level = _dim(LEVEL_NAMES, dims)
                if channel.level is not None:
                    var = var.sel({level: channel.level})
                var = var.transpose("time", lat, lon)
                part = var.isel(time=slice(max(first - offset, 0), stop - offset)).values
            finally:
                ds.close()
            parts.append(np.asarray(part, dtype=np.float32))
        return np.concatenate(parts) if len(parts) > 1 else parts[0]

    def load(self, block: Block) -> list[tuple[str, np.ndarray, dict]]:
        starts = block.starts
        first, stop = starts[0], starts[-1] + self.num_frames
        e = self.every  # window indexes count kept steps; files hold every step
        block = np.stack(
            [self._read(c, first * e, (stop - 1) * e + 1)[::e] for c in self.channels], axis=1
        )
        out = []
        for start in starts:
            frames = np.ascontiguousarray(block[start - first : start - first + self.num_frames])
            time = self.times[start]
            meta = {"start": str(time), "variables": [c.name for c in self.channels]}
            out.append((f"w{stamp(time, self.key_unit)}", frames, meta))
        return out

    def args(self) -> dict[str, Any]:
        return {
            "paths": [str(p) for p in self.paths],
            "variables": self.specs,
            "levels": self.levels,
            "num_frames": self.num_frames,
            "stride": self.stride,
            "every": self.every,
            "step": self.step,
            "val_from": self.val_from,
            "test_from": self.test_from,
        }
