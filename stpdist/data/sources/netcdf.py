"""netCDF / Zarr archives through xarray (`pip install stpdist[weather]`): WeatherBench
folders (one folder per variable of yearly `*.nc` files) and single Zarr stores
(WeatherBench 2 / ERA5 style).

Each variable is a data variable with dims (time, [level,] lat, lon) (`latitude` /
`longitude` accepted too). A channel is a variable, or a variable at one pressure level:
`--vars z500,t850,t2m` (or `--vars z,t --levels 500,850`: every level of every variable
that has levels). A variable on one level held as a scalar `level` coordinate (WeatherBench
1's `geopotential_500/…` holds `z` with `level = 500`) is named the same way: `z500`.
Channels share one time axis and grid (checked: a difference is an error naming the file).
`time` must hold dates of the standard calendar (CF units `<unit> since <date>`); another
calendar, or numbers that are not dates, is refused naming the file. The series is cut
into windows by `series.py` (never across a gap in `time`; split by `--val-from` /
`--test-from` dates) and read in blocks of at most `block_frames` frames per work item, so
memory stays flat whatever the archive's size.

Stored float32 in physical units (value scale 1), with the variables (name, units), the
latitudes and longitudes, and each split's climatology (the C×H×W time mean of its frames,
each time step counted once however many windows hold it) in the index. NaN (land/sea
masks, missing values) is stored as `convert`'s `--allow-nan FILL`, and left out of the
statistics.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import InputError, MissingInput, require_extra
from ..format import (
    FLOAT32_MAX,
    SERIES_INDEX,
    as_float32,
    require_file,
    same_units,
    units_text,
)
from .series import (
    as_times,
    group_starts,
    iso_times,
    parse_bound,
    parse_step,
    plan_windows,
    stamp,
    stamp_unit,
)

log = logging.getLogger("stpdist")

LAT_NAMES = ("lat", "latitude")
LON_NAMES = ("lon", "longitude")
LEVEL_NAMES = ("level", "plev", "pressure_level", "isobaricInhPa")
STANDARD_CALENDARS = ("standard", "gregorian", "proleptic_gregorian")
"""The CF calendars whose dates are datetime64's (the others need cftime)."""


def _xarray() -> Any:
    return require_extra("xarray", "weather", "reading netCDF/Zarr")


def _is_zarr(path: str) -> bool:
    return (
        path.rstrip("/").lower().endswith(".zarr")
        or (Path(path) / ".zgroup").exists()
        or (Path(path) / "zarr.json").exists()
    )


def _open_store(path: str, decode_times: bool = True) -> Any:
    xr = _xarray()
    options = {"chunks": None, "decode_timedelta": False, "decode_times": decode_times}
    if _is_zarr(path):
        consolidated = (Path(path) / ".zmetadata").exists()
        return xr.open_zarr(path, consolidated=consolidated, **options)
    return xr.open_dataset(path, **options)


def _kept_steps(times: np.ndarray, every: int) -> np.ndarray:
    """The steps `--every` keeps: those whose time lies a whole number of `every` series
    steps (its usual spacing: the most common one) after the first's. Counted by position,
    a missing step moved every later kept step to other hours (00/12 UTC before it, 06/18
    after); an odd step between two (a 21Z in 6-hourly data) leaves the spacing as it is."""
    if every == 1 or len(times) < 2:
        return np.arange(len(times))
    spacings, counts = np.unique(np.diff(times), return_counts=True)
    stride = spacings[np.argmax(counts)] * every
    return np.flatnonzero((times - times[0]) % stride == stride.dtype.type(0))


def _as_slice(steps: np.ndarray) -> Any:
    """Evenly spaced indices as a slice (a strided read); others as they are."""
    gaps = np.diff(steps)
    if len(steps) == 1 or (gaps[0] > 0 and (gaps == gaps[0]).all()):
        spacing = int(gaps[0]) if len(steps) > 1 else 1
        return slice(int(steps[0]), int(steps[-1]) + 1, spacing)
    return steps


def _unmasked_missing_chunks(store: str, name: str, masks: list[Any]) -> str | None:
    """A warning when a Zarr array has chunks not stored that read as data (None: there
    are none, or they read as missing). Such a chunk reads as the array's `fill_value`; in a
    store xarray writes as Zarr v3, that is 0 while the variable's `_FillValue` (-32767 of
    packed ERA5) sits in its attributes: a chunk a failed write left out came out as 0 ×
    scale + offset (270 K), silently. It stays a warning: zarr itself leaves out chunks
    equal to the fill value (a dry spell's zeros), which are real. `masks`: the variable's
    `_FillValue` and `missing_value`."""
    try:
        import zarr

        array = zarr.open_group(store, mode="r")[name]
        missing = int(array.nchunks) - int(array.nchunks_initialized)
        fill = array.fill_value
    except Exception:  # noqa: BLE001 - not readable as zarr here: xarray's reading decides
        return None
    if missing <= 0 or fill is None:
        return None
    fill_value = np.asarray(fill)
    if fill_value.dtype.kind == "f" and np.isnan(fill_value).all():
        return None  # read as NaN: the converter's NaN policy applies
    if any(m is not None and np.array_equal(np.asarray(m), fill_value) for m in masks):
        return None
    shown = ", ".join(
        f"{k} {m!r}" for k, m in zip(("_FillValue", "missing_value"), masks) if m is not None
    )
    return (
        f"{store}: variable '{name}' has {missing} of {array.nchunks} chunks not stored, which "
        f"read as the array's fill value {fill_value.item()!r}"
        + (f" (not its {shown})" if shown else "")
        + " and are converted as data: zarr leaves out chunks equal to the fill value, so "
        "they may be real; if the store is incomplete (a write that failed), write the "
        "missing chunks, or rewrite it with its fill value equal to its _FillValue"
    )


TIME_NAMES = ("valid_time",)
"""Other names of the time dimension, read as `time`: the current CDS ERA5 files'."""


def _open(path: str) -> Any:
    """A lazily read dataset (no dask: values are read on indexing); its time dimension
    named `time` (ERA5 from the current CDS names it `valid_time`: refused before as holding
    no variable with a time dimension)."""
    _xarray()  # a missing extra is said as such, not as an unreadable file
    if Path(path).is_file() and Path(path).stat().st_size == 0:  # a failed download, often
        raise InputError(f"{path}: empty file (0 bytes)")
    try:
        ds = _open_store(path)
    except Exception as exc:
        undecodable = _undecodable_time(path, exc)
        if undecodable:
            raise InputError(undecodable) from None
        if "did not find a match in any of xarray's" in str(exc):  # a paragraph with links
            readers = re.search(r"\[[^\]]*\]", str(exc))
            listed = f" {readers.group(0)}" if readers else ""
            reason = f"none of xarray's installed readers{listed} can open it; expected netCDF"
        else:
            reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        raise InputError(f"{path}: unreadable ({reason})") from None
    if "time" not in ds.dims and "time" not in ds.variables:
        other = next((name for name in TIME_NAMES if name in ds.dims), None)
        if other is not None:
            ds = ds.rename({other: "time"})
    return ds


def _calendar_problem(store: str, time: Any) -> str | None:
    """Why the `time` variable (decoded or not) is not on the standard calendar (None: it
    is). xarray decodes other calendars only with cftime, to dates numpy cannot hold."""
    calendar = time.attrs.get("calendar", time.encoding.get("calendar"))
    values = np.asarray(time.values)
    if values.dtype == object and values.size:  # cftime dates carry their calendar
        calendar = getattr(values.flat[0], "calendar", calendar)
    if not calendar or str(calendar).lower() in STANDARD_CALENDARS:
        return None
    return (
        f"{store}: coordinate 'time' has calendar '{calendar}', and stpdist orders and splits "
        "data by real dates (datetime64, the standard calendar): convert the time axis to the "
        "standard calendar first, e.g. in Python with cftime installed: xarray.open_dataset("
        f"'{store}').convert_calendar('standard', align_on='date').to_netcdf(NEW_FILE) (dates "
        "the standard calendar lacks, such as 30 February, are dropped; those the file lacks, "
        "such as 29 February, become gaps that no window crosses)"
    )


def _undecodable_time(path: str, exc: Exception) -> str | None:
    """Why xarray could not decode the store's `time` (its message advises
    `decode_times=False` or installing cftime, which a stpdist user cannot act on): another
    calendar, or units that are no dates of the standard one; None for other failures."""
    if "decode time" not in str(exc):  # "unable to decode time units … with calendar …"
        return None
    try:
        raw = _open_store(path, decode_times=False)
    except Exception:
        return None
    try:
        if "time" not in raw.variables:
            return None
        time = raw.variables["time"]
        units = str(time.attrs.get("units", ""))
        return _calendar_problem(path, time) or (
            f"{path}: coordinate 'time': time values are not dates: units '{units}' cannot "
            "be read as dates of the standard calendar; give it CF units '<unit> since "
            "<date>' with a unit of seconds, minutes, hours or days (e.g. 'hours since "
            "2015-01-01')"
        )
    finally:
        raw.close()


def _times(store: str, ds: Any) -> np.ndarray:
    """The dates of the store's `time` coordinate, datetime64[ns]; refused naming the store
    when they are not dates of the standard calendar."""
    if "time" not in ds.variables:
        raise InputError(
            f"{store}: dimension 'time' has no coordinate, so its steps have no dates; add a "
            "'time' coordinate of dates"
        )
    time = ds.variables["time"]
    problem = _calendar_problem(store, time)
    if problem:
        raise InputError(problem)
    if np.asarray(time.values).dtype.kind in "biuf":  # xarray could not read them as dates
        units = str(time.attrs.get("units", ""))
        why = (
            "it has no units"
            if not units
            else f"units '{units}' were not read as dates"
            if " since " in units
            else f"units '{units}' has no reference date"
        )
        raise InputError(
            f"{store}: coordinate 'time': time values are not dates: {why}; give it CF units "
            f"'<unit> since <date>' (e.g. ncatted -a units,time,o,c,'hours since 2015-01-01' "
            f"{store})"
        )
    return as_times(time.values, f"{store}: coordinate 'time'")


def _netcdf_files(folder: Path) -> list[str]:
    """The netCDF files under `folder`, any case of `.nc` / `.nc4` (T2M_2019.NC too): `.nc`
    first, then `.nc4`, each by path (the order the stores are read in, not the time order:
    pieces are sorted by their first time)."""
    files = [f for f in folder.rglob("*") if f.suffix.lower() in (".nc", ".nc4") and not f.is_dir()]
    by_kind = sorted(files, key=lambda f: (f.suffix.lower() == ".nc4", str(f)))
    return [str(require_file(f)) for f in by_kind]


def _dim(names: tuple[str, ...], dims: tuple[str, ...]) -> str | None:
    return next((d for d in dims if d in names), None)


def _scalar_level(var: Any) -> float | None:
    """The level of a variable held on one level as a scalar coordinate (WeatherBench 1's
    `z` with `level = 500`), else None."""
    for name in LEVEL_NAMES:
        coord = var.coords.get(name)
        if coord is not None and coord.ndim == 0 and coord.dtype.kind in "iuf":
            return float(coord.values)
    return None


def _key(var_name: str, scalar_level: float | None) -> str:
    """The name a store's variable is found by: its own, or with its scalar level (z500)."""
    return var_name if scalar_level is None else f"{var_name}{scalar_level:g}"


def _valid_bounds(var: Any, *, widened: bool = False) -> tuple[float, float] | None:
    """A variable's CF valid range (`valid_range`, `valid_min`, `valid_max`) in the units
    xarray reads it in, or None when it has none. Values outside it are missing values
    (CF 2.5.1), which xarray reads as data: a -9999 marked so alone became the statistics
    (a formats review). A packed variable's range is in its packed units (CF 8.1):
    unpacked here as its values are; `widened` by half a packing step, as values are
    compared (see below)."""
    attrs = var.attrs
    low: Any = None
    high: Any = None
    if "valid_range" in attrs:
        pair = np.asarray(attrs["valid_range"]).ravel()
        if len(pair) == 2:
            low, high = pair
    low = attrs.get("valid_min", low)
    high = attrs.get("valid_max", high)
    if low is None and high is None:
        return None
    try:
        scale = float(var.encoding.get("scale_factor", 1.0))
        offset = float(var.encoding.get("add_offset", 0.0))
        bounds = [
            -np.inf if low is None else float(np.asarray(low).ravel()[0]) * scale + offset,
            np.inf if high is None else float(np.asarray(high).ravel()[0]) * scale + offset,
        ]
    except (TypeError, ValueError, IndexError):  # an attribute of text: no range it gives
        return None
    # a packed value is an integer: one outside the range lies a whole step (|scale|)
    # beyond it, while xarray's float32 unpacking of a value at an end may round past the
    # bound computed here (a diff review: clear-sky zeros of cloud cover became NaN)
    packed = "scale_factor" in var.encoding or "add_offset" in var.encoding
    slack = abs(scale) / 2 if widened and packed else 0.0
    return min(bounds) - slack, max(bounds) + slack


def _masked_outside(values: np.ndarray, bounds: tuple[float, float] | None) -> np.ndarray:
    """`values` (floats) with those outside `bounds` as NaN (missing; `--allow-nan`)."""
    values = np.asarray(values)
    if bounds is None:
        return values
    if not np.issubdtype(values.dtype, np.floating):  # (xarray's reads are floats)
        values = values.astype(np.float64)
    # the bounds in the values' precision, widened where rounding moved one inward: a
    # value at a bound stays in (compared as Python floats: a diff review found float32
    # comparisons never widening, and float64 data at 273.15 masked)
    kind, largest = values.dtype.type, float(np.finfo(values.dtype).max)
    low, high = (kind(b) if abs(b) <= largest else kind(np.copysign(np.inf, b)) for b in bounds)
    if float(low) > bounds[0]:
        low = np.nextafter(low, kind(-np.inf))
    if float(high) < bounds[1]:
        high = np.nextafter(high, kind(np.inf))
    outside = (values < low) | (values > high)
    return np.where(outside, np.float32(np.nan), values) if outside.any() else values


def _describe(store: str, ds: Any, var_name: str, var: Any) -> dict[str, Any]:
    """A time-dependent variable of one store: levels (of a level dim), scalar level,
    units, grid, where; with `problem` set (one line naming the store) when it cannot be
    read as (time, [level,] lat, lon)."""
    dims = tuple(var.dims)
    lat, lon = _dim(LAT_NAMES, dims), _dim(LON_NAMES, dims)
    level = _dim(LEVEL_NAMES, dims)
    info: dict[str, Any] = {
        "units": str(var.attrs.get("units", "")),
        "where": store,
        "variable": var_name,
        "scalar_level": None if level else _scalar_level(var),
        "valid": _valid_bounds(var),
    }
    if lat is None or lon is None or len(dims) != (4 if level else 3):
        hint = (
            " (ERA5T's expver dimension: merge its versions first, in xarray "
            "ds.sel(expver=a).combine_first(ds.sel(expver=b)) with the two values "
            "ds.expver holds, e.g. '0001' and '0005', and save that)"
            if "expver" in dims
            else _projected_hint(ds, dims)
        )
        info["problem"] = (
            f"{store}: variable '{var_name}' has dims {dims}; expected (time, [level,] lat, "
            f"lon){hint}"
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


def _projected_hint(ds: Any, dims: tuple) -> str:
    """What to do with a field on a projected grid (a radar's, a regional model's): 2-D
    latitude and longitude coordinates over its own dims (a weather review: refused with
    no word of why or what else reads it)."""
    two_d = [name for name in ds.coords if str(name).lower() in LAT_NAMES + LON_NAMES
             and getattr(ds[name], "ndim", 0) == 2]  # fmt: skip
    if not two_d:
        return ""
    return (
        f" (a projected grid: {', '.join(map(str, two_d))} are 2-D, over "
        f"{', '.join(map(str, ds[two_d[0]].dims))}; `shard netcdf` reads regular lat/lon "
        "grids: save the field as .npy/.npz arrays, T×C×H×W with its times, and convert "
        "them with `stpdist shard arrays --time-key`)"
    )


def _differs(first: dict[str, Any], info: dict[str, Any], store: str, var_name: str) -> str:
    """What differs between two stores' copies of a variable ('' when nothing)."""
    if "problem" in first:
        return ""
    if first["variable"] != info["variable"]:  # `z500` itself, and `z` at level 500
        return (
            f"{store}: variable '{info['variable']}' and variable '{first['variable']}' of "
            f"{first['where']} are both found as '{var_name}': rename one"
        )
    if first["levels"] != info["levels"]:
        return f"{store}: variable '{var_name}' levels differ from those of {first['where']}"
    if not same_units(first["units"], info["units"]):  # a weather review: all were
        # converted, labelled with the first file's units
        return (
            f"{store}: variable '{var_name}' in {units_text(info['units'])}, and in "
            f"{units_text(first['units'])} in {first['where']}: convert the files to one unit "
            "first (or, the same unit spelled otherwise, give them the same units attribute)"
        )
    how = _grid_difference(first["grid"], info["grid"])
    if how:
        return (
            f"{store}: variable '{var_name}' is on another lat/lon grid than in "
            f"{first['where']}: {how}"
        )
    return ""


def _other_times(
    variable: str, files: list, stamps: np.ndarray, reference: str, held: list, times: np.ndarray
) -> str:
    """The first time one of two channels has and the other lacks, with the file holding
    it (`files`, `held`: each one's (file, first step, steps)): a month downloaded without
    a variable was said as "variable 'msl' has other times than 't2m'", naming the series'
    first file, which was fine."""
    only_here = np.setdiff1d(stamps, times)
    if len(only_here):
        has, lacks, order, when = variable, reference, stamps, only_here[0]
        held = files
    else:
        has, lacks, order, when = reference, variable, times, np.setdiff1d(times, stamps)[0]
    at = int(np.searchsorted(order, when))
    store = next((f for f, first, count in held if first <= at < first + count), held[0][0])
    return (
        f"{store}: holds '{has}' at {np.datetime_as_string(when, unit='m')}, and no file "
        f"holds '{lacks}' at that time ({len(stamps)} steps of '{variable}', {len(times)} of "
        f"'{reference}'); the series needs every channel at every time: add '{lacks}' there, "
        "or leave it out of --vars"
    )


def _grid_difference(grid: Any, other: Any) -> str:
    """How lat/lon grid `other` differs from `grid` ('' when it does not): the sizes, an
    axis in the opposite order, or the first coordinate that differs."""
    (lat0, lon0), (lat1, lon1) = grid, other
    if len(lat0) != len(lat1) or len(lon0) != len(lon1):
        return f"{len(lat1)}×{len(lon1)} points here, {len(lat0)}×{len(lon0)} there"
    for axis, there, here in (("latitude", lat0, lat1), ("longitude", lon0, lon1)):
        if np.allclose(there, here):
            continue
        if len(here) > 1 and np.allclose(there, np.asarray(here)[::-1]):
            order = "ascending" if here[-1] > here[0] else "descending"
            return (
                f"{axis} is {order} here and the other way there (reverse one file's "
                f"{axis} axis, e.g. with xarray's sortby)"
            )
        at = int(np.flatnonzero(~np.isclose(there, here))[0])
        return f"{axis}[{at}] is {here[at]:g} here, {there[at]:g} there"
    return ""


def _found(available: dict[str, dict[str, Any]]) -> str:
    """The variables found, for messages: `t2m`, `t (levels 500, 850)`, `z500 (z at level
    500)`."""
    names = []
    for key, info in sorted(available.items()):
        if info.get("scalar_level") is not None:
            names.append(f"{key} ({info['variable']} at level {info['scalar_level']:g})")
        elif info.get("levels"):
            names.append(f"{key} (levels {', '.join(f'{v:g}' for v in info['levels'])})")
        else:
            names.append(key)
    return ", ".join(names)


def _check_order(parts: list[tuple[str, np.ndarray]]) -> None:
    """The stores of one variable, ordered by their first time, must follow each other:
    times increasing within each, each starting after the one before ends. Files that
    overlap (or a duplicate) are refused naming both."""
    for number, (store, stamps) in enumerate(parts):
        unit = stamp_unit(stamps)
        bad = np.flatnonzero(np.diff(stamps) <= np.timedelta64(0))
        if len(bad):
            i = int(bad[0])
            then = np.datetime_as_string(stamps[[i, i + 1]], unit=unit)
            raise InputError(
                f"{store}: times do not increase at step {i + 1} ({then[0]} then {then[1]}): "
                "remove the repeated or misplaced steps"
            )
        if number == 0:
            continue
        before, previous = parts[number - 1]
        if stamps[0] <= previous[-1]:
            shown = np.datetime_as_string(np.array([stamps[0], previous[-1]]), unit=unit)
            same = len(stamps) == len(previous) and (stamps == previous).all()
            what = "holds the same times as" if same else "overlaps"
            raise InputError(
                f"{store}: times go back: it starts at {shown[0]}, before the end of {before} "
                f"({shown[1]}); it {what} {before}: remove the duplicate file, or the "
                "overlapping time steps from one of them"
            )


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
    """The data variable read (`z`)."""
    level: float | None
    """Its level along a level dim, or None (no level dim)."""
    name: str
    units: str = ""
    key: str = ""
    """The series it is read from (`available`, `files`): the variable, or the variable at
    its scalar level (`z500`); default the variable."""

    def __post_init__(self) -> None:
        self.key = self.key or self.variable


UNMARKED_FILL = 1e30
"""Beyond this, a value is a fill value, not a measurement (see `XarraySource.check_index`)."""


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
    _zarr_arrays: dict[str, list] = field(default_factory=dict)
    """Per channel key: (Zarr store, variable, its masks) for the missing-chunk check."""
    kept: Any = None
    """The files' steps (indices in the series) that `--every` keeps, set by `splits`."""
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

    def check_index(self, index: Any) -> None:
        """Values beyond ±1e30 are fill values no attribute marked (netCDF's default fill is
        9.97e36, Fortran's 1e20…3e38): converted, they would be the split's statistics and
        its climatology. Refused, naming the channel."""
        for name, low, high in zip(index.variables or self.specs, index.min, index.max):
            if max(abs(low), abs(high)) * index.value_scale > UNMARKED_FILL:
                label = name["name"] if isinstance(name, dict) else name
                raise InputError(
                    f"{', '.join(map(str, self.paths))}: {index.split} values of '{label}' "
                    f"reach {max(abs(low), abs(high)) * index.value_scale:.3g}: fill values "
                    "no _FillValue or missing_value attribute marks; mark them (set the "
                    "attribute, or ds.where(abs(ds) < 1e30)) and convert with --allow-nan FILL"
                )

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
                f"(found {_found(available)})"
            )
        return [c for spec in self.specs for c in self._resolve(spec, available, problems)]

    def _resolve(
        self, spec: str, available: dict[str, dict[str, Any]], problems: dict[str, str]
    ) -> list[Channel]:
        """The channels of one spec: a variable (every `--levels` level of one with a level
        dim), `name<level>` (one level of a level dim), or a variable at a scalar level,
        by its name with the level (`z500`) or, the only one of that variable, without."""
        match = re.fullmatch(r"(.*?)(\d+(?:\.\d+)?)", spec)
        base = match.group(1) if match else None
        scalar = {k: i for k, i in available.items() if i.get("scalar_level") is not None}
        at_levels = {k: i for k, i in scalar.items() if i["variable"] == spec}
        meant = [spec] if spec in available or spec in problems else list(at_levels) or [base]
        for name in meant:  # what the spec resolves to cannot be read
            if name in problems:
                raise InputError(problems[name])
        if spec in available:
            return self._whole(spec, available[spec])
        if at_levels:
            return self._at_scalar_levels(spec, at_levels)
        if base in available and available[base]["levels"] is not None:
            info = available[base]
            level = float(match.group(2))
            if level not in info["levels"]:
                raise InputError(
                    f"{info['where']}: variable '{base}' has no level {level:g} "
                    f"(has {info['levels']})"
                )
            return [Channel(base, level, spec, info["units"])]
        held = sorted(k for k, i in scalar.items() if i["variable"] == base)
        if held:
            raise InputError(
                f"{', '.join(map(str, self.paths))}: variable '{base}' is held at no level "
                f"{match.group(2)}, only as {', '.join(held)} (a scalar level coordinate); "
                f"ask for {' or '.join(held)}, or add the files of level {match.group(2)}"
            )
        raise InputError(
            f"{', '.join(map(str, self.paths))}: missing variable '{spec}' "
            f"(found {_found(available)})"
        )

    def _whole(self, spec: str, info: dict[str, Any]) -> list[Channel]:
        """The channels of a variable found by its name (`z500` for a scalar level)."""
        if info["scalar_level"] is not None or info["levels"] is None:
            return [Channel(info["variable"], None, spec, info["units"], key=spec)]
        if not self.levels:
            raise InputError(
                f"{info['where']}: variable '{spec}' has levels {info['levels']}: "
                f"choose with --levels or name one, e.g. {spec}{int(info['levels'][0])}"
            )
        channels = []
        for level in self.levels:
            if level not in info["levels"]:
                raise InputError(
                    f"{info['where']}: variable '{spec}' has no level {level:g} "
                    f"(has {info['levels']})"
                )
            channels.append(Channel(spec, level, f"{spec}{level:g}", info["units"]))
        return channels

    def _at_scalar_levels(self, spec: str, at_levels: dict[str, dict[str, Any]]) -> list[Channel]:
        """The channels of variable `spec` held only at scalar levels (`at_levels`: by key):
        those of `--levels`, else the one level it has."""
        by_level = {i["scalar_level"]: (k, i) for k, i in at_levels.items()}
        if not self.levels and len(by_level) > 1:
            raise InputError(
                f"{', '.join(map(str, self.paths))}: variable '{spec}' is held at several "
                f"levels ({', '.join(sorted(at_levels))}): name them, e.g. --vars "
                f"{','.join(sorted(at_levels))}, or choose with --levels"
            )
        if not self.levels:
            ((key, info),) = by_level.values()
            return [Channel(spec, None, spec, info["units"], key=key)]
        channels = []
        for level in self.levels:
            if level not in by_level:
                raise InputError(
                    f"{', '.join(map(str, self.paths))}: variable '{spec}' has no level "
                    f"{level:g} (held as {', '.join(sorted(at_levels))})"
                )
            key, info = by_level[level]
            channels.append(Channel(spec, None, key, info["units"], key=key))
        return channels

    def _scan(self) -> tuple[dict[str, dict[str, Any]], dict[str, list], dict[str, str]]:
        """Every time-dependent variable of every store: ({name: levels, units, grid, where},
        {name: [(store, times)]}, {name: what is wrong with it}), by the name it is found
        by (`_key`: `z500` for `z` at a scalar level 500). Dims, levels and grids are
        checked here, but a problem is an error only for a variable asked for
        (`_channels`): an archive may hold variables this converter cannot read. Times that
        are not dates of the standard calendar are an error at once."""
        available: dict[str, dict[str, Any]] = {}
        pieces: dict[str, list[tuple[str, np.ndarray]]] = {}
        problems: dict[str, str] = {}
        for store in self._stores():
            ds = _open(store)
            try:
                timed = {n: v for n, v in ds.data_vars.items() if "time" in v.dims}
                for name, var in ds.data_vars.items():  # said if asked for as a channel
                    if "time" not in var.dims:
                        problems.setdefault(
                            name,
                            f"{store}: variable '{name}' has no time dimension (dims "
                            f"{tuple(var.dims)}: a constant field); only variables in time "
                            "can be channels",
                        )
                stamps = _times(store, ds) if timed else None  # constants have no time
                for var_name, var in timed.items():
                    info = _describe(store, ds, var_name, var)
                    key = _key(var_name, info["scalar_level"])
                    first = available.setdefault(key, info)
                    problem = info.get("problem") or _differs(first, info, store, key)
                    if _is_zarr(store):  # checked for the channels asked for (`splits`)
                        masks = [var.encoding.get(k, var.attrs.get(k))
                                 for k in ("_FillValue", "missing_value")]  # fmt: skip
                        self._zarr_arrays.setdefault(key, []).append((store, var_name, masks))
                    if problem:
                        problems.setdefault(key, problem)
                        continue
                    pieces.setdefault(key, []).append((store, stamps))
            finally:
                ds.close()
        if not available:
            raise InputError(f"{', '.join(self.paths)}: no variable with dims (time, …, lat, lon)")
        return available, pieces, problems

    def _grid(self, available: dict[str, dict[str, Any]]) -> tuple[list[float], list[float]]:
        """The lat/lon grid the channels share (a channel on another grid is an error)."""
        first = self.channels[0].key
        grid = available[first]["grid"]
        for channel in self.channels[1:]:
            info = available[channel.key]
            how = _grid_difference(grid, info["grid"])
            if how:
                raise InputError(
                    f"{info['where']}: variable '{channel.key}' is on another lat/lon grid "
                    f"than '{first}' ({available[first]['where']}): {how}"
                )
        return grid

    def splits(self) -> dict[str, list[Any]]:
        available, pieces, problems = self._scan()
        self.channels = self._channels(available, problems)
        self.variables = [{"name": c.name, "units": c.units} for c in self.channels]
        self.latitudes, self.longitudes = self._grid(available)
        empty = {
            store
            for key in {c.key for c in self.channels}
            for store, t in pieces[key]
            if not len(t)
        }
        for store in sorted(empty):  # a failed download, often: said, not passed over silently
            log.warning(
                "%s: no time steps (time has length 0); it adds nothing to the series", store
            )
        for key in dict.fromkeys(c.key for c in self.channels):
            if (bounds := available[key].get("valid")) is not None:
                log.warning(
                    "'%s' has a valid range (%s): values outside it are missing values, "
                    "read as NaN (--allow-nan FILL stores them as FILL)",
                    key,
                    " … ".join(f"{b:g}" for b in bounds),
                )
            for store, name, masks in self._zarr_arrays.get(key, []):
                if (said := _unmasked_missing_chunks(store, name, masks)) is not None:
                    log.warning("%s", said)
        times = None
        for variable in dict.fromkeys(c.key for c in self.channels):
            parts = sorted((p for p in pieces[variable] if len(p[1])), key=lambda p: p[1][0])
            _check_order(parts)
            files, first = [], 0
            for store, stamps in parts:
                files.append((store, first, len(stamps)))
                first += len(stamps)
            stamps = np.concatenate([s for _, s in parts])
            if times is None:
                times, reference = stamps, variable
            elif len(stamps) != len(times) or (stamps != times).any():
                raise InputError(
                    _other_times(variable, files, stamps, reference, self.files[reference], times)
                )
            self.files[variable] = files
        if self.every < 1:
            raise InputError(f"--every {self.every}: expected a positive step count")
        self.kept = _kept_steps(times, self.every)
        self.times = times[self.kept]
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
        # and whose windows (each a copy) hold at most ITEM_BYTES (0.25° ERA5 frames are 4 MB
        # a channel: 256 of them, times the windows overlapping them, would not fit)
        runs: list[tuple[str, list[int]]] = []
        for window in windows:
            if not runs or runs[-1][0] != window.split:
                runs.append((window.split, []))
            runs[-1][1].append(window.start)
        frame_bytes = len(self.channels) * len(self.latitudes) * len(self.longitudes) * 4
        out: dict[str, list[Any]] = {}
        for split, starts in runs:
            for run in group_starts(starts, self.num_frames, frame_bytes, self.block_frames):
                out.setdefault(split, []).append(tuple(run))
        return {
            s: [Block(starts, self._where(starts)) for starts in out[s]]
            for s in ("train", "val", "test")
            if s in out
        }

    def _series_where(self) -> str:
        """The files of the series (the first channel's), for messages about the whole of it."""
        files = [store for store, _, _ in self.files[self.channels[0].key]]
        more = len(files) - 1
        where = files[0] + (f" and {more} more file{'s' if more > 1 else ''}" if more else "")
        return where + (f" (--every {self.every})" if self.every > 1 else "")

    def _where(self, starts: tuple[int, ...]) -> str:
        first, stop = starts[0], starts[-1] + self.num_frames
        low, high = self.kept[first], self.kept[stop - 1]  # the files' steps
        stores = [
            store
            for c in dict.fromkeys(ch.key for ch in self.channels)
            for store, offset, count in self.files[c]
            if offset <= high and offset + count > low
        ]
        shown = np.datetime_as_string(self.times[[first, stop - 1]], unit=self.key_unit)
        return f"{', '.join(dict.fromkeys(stores))} (times {shown[0]}…{shown[1]})"

    # ------------------------------------------------------------------ reading
    def _read(self, channel: Channel, first: int, stop: int) -> np.ndarray:
        """Kept steps [first, stop) of one channel (`--every` e: the files' steps whose time
        lies a multiple of e steps after the first's), T×H×W float32, from the files
        holding them; only those steps are read (`--every 12` of hourly data reads a
        twelfth of it, not all)."""
        steps = self.kept[first:stop]  # the files' steps
        parts = []
        for store, offset, count in self.files[channel.key]:
            local = steps[(steps >= offset) & (steps < offset + count)] - offset
            if not len(local):
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
                part = var.isel(time=_as_slice(local)).values
                bounds = _valid_bounds(var, widened=True)
            finally:
                ds.close()
            # outside its valid range first: a fill beyond float32 is missing, not refused
            part = _masked_outside(part, bounds)
            what = f"{store}: variable '{channel.variable}'"
            if (huge := np.abs(part) > FLOAT32_MAX).any():  # where: its time, not a row
                row, y, x = (int(i) for i in np.argwhere(huge)[0])
                when = self.times[first + int(np.flatnonzero(steps == local[row] + offset)[0])]
                level = f" at level {channel.level:g}" if channel.level is not None else ""
                what = f"{what}{level} at {np.datetime_as_string(when, unit='m')}"
                as_float32(part[row], what, "y, x")  # refused, naming the pixel
            parts.append(as_float32(part, what))
        return np.concatenate(parts) if len(parts) > 1 else parts[0]

    def load(self, block: Block) -> list[tuple[str, np.ndarray, dict]]:
        starts = block.starts
        first, stop = starts[0], starts[-1] + self.num_frames
        block = np.stack([self._read(c, first, stop) for c in self.channels], axis=1)
        out = []
        for start in starts:
            frames = np.ascontiguousarray(block[start - first : start - first + self.num_frames])
            time = self.times[start]
            times = iso_times(self.times[start : start + self.num_frames], self.key_unit)
            meta = {
                "start": times[0],  # as `times` are written (it was numpy's nanoseconds)
                "times": times,
                "variables": [c.name for c in self.channels],
                SERIES_INDEX: start,  # the statistics count each time step once
            }
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
