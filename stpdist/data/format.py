"""The shard format, defined once; every writer and reader imports it.

A split folder holds `<split>-000000.tar, <split>-000001.tar, …` and `index.json`; a
shard holds at most `samples_per_shard` samples and, past its first, `SHARD_BYTES`. Each
tar member group is one sample:

    <key>.frames.npy   the whole sequence T×C×H×W in its stored dtype (uint8 for 8-bit data)
    <key>.json         optional metadata (source file, timestamps, …)

Keys contain no dots. `index.json` records the format version, every shard with its
sample count, bytes and fingerprint, the sample shape and dtype, the value scale (frames / scale lies
in [0, 1]: 255 for 8-bit images, 1292 for TaxiBJ flows), per-channel mean and std of the
scaled values, the source and the converter's arguments. The input/target split is made
at load time, never here.

Optional (written by newer converters, absent from older indexes, which stay readable):
per-channel `min`/`max` of the scaled values (for `data.normalize: minmax` and clamping),
`variables` (one `{"name", "units"}` per channel: names per-variable metrics),
`latitudes`/`longitudes` (grid coordinates in degrees, one per row/column: latitude
weights) and `climatology` (a file beside index.json, `climatology.npy`, C×H×W mean of the
scaled values over the split: anomaly correlation); per shard, a `fingerprint` of its
count and its bytes (`shard_fingerprint`: readers then check the count without reading
every tar header) and the `sha256` of all its bytes (`stpdist inspect --verify` checks it).
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import math
import os
import re
import signal
import stat
import tarfile
import time
from collections.abc import Callable, Iterator
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError, MissingInput

FORMAT_VERSION = 1
INDEX_FILE = "index.json"
MODEL_FILE = "model.safetensors"
"""A model folder's (and checkpoint's) weights: here, where commands that must not import
torch (`inspect` telling a model folder from a dataset) find it; `checkpoint` re-exports it."""
FRAMES_EXT = "frames.npy"
META_EXT = "json"
SHARD_PATTERN = "{split}-%06d.tar"
SHARD_BYTES = 1 << 30
"""Most bytes of samples a shard holds before the writer starts the next (`SplitWriter`'s
`samples_per_shard` bounds the count too): a shard is the unit a reader streams from its
start, so each worker of a rank reads up to a shard it does not use to reach its share, and
1000 large samples (SEVIR windows: 3.7 MB; ERA5 at 0.25°: 30 MB a channel) made shards of
gigabytes (past the 4 GiB a FAT32 disk takes)."""
SPLIT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")
"""Split names: letters, digits, `_` and `-`; shard names are `<split>-<6+ digits>.tar`, so
a name from an index can be put in a path or a `pipe:` command without meaning more."""
FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
"""Other files an index names (its climatology): a plain name beside index.json, never a
path (no `/`, no `..`, not absolute)."""


class ShardFormatError(InputError):
    """A shard, member or index that does not follow the format."""

    member: str | None = None
    """The damaged member's name, where its header was read (its data was not)."""


def _damaged_member(where: str, name: str) -> ShardFormatError:
    error = ShardFormatError(f"{where}: truncated member {name}")
    error.member = name
    return error


_KINDS = {
    stat.S_IFIFO: "a FIFO (named pipe)",
    stat.S_IFSOCK: "a socket",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFDIR: "a folder",
}


FLOAT32_MAX = float(np.finfo(np.float32).max)

_UNIT_ALIASES = {"kelvin": "k", "degk": "k", "deg_k": "k", "degrees_kelvin": "k",
                 "celsius": "degc", "°c": "degc", "deg_c": "degc", "degree_celsius": "degc",
                 "degrees_celsius": "degc", "degree_c": "degc", "degrees_c": "degc"}  # fmt: skip


def same_units(a: str, b: str) -> bool:
    """Whether two units attributes name one unit: spelled alike but for case, spaces and
    powers' signs (`m**2 s**-2`, `m^2 s^-2`, `m2 s-2`), or common names of kelvin and
    degrees Celsius (`K`, `kelvin`; `degC`, `°C`, `celsius`). Other spellings differ."""

    def key(units: str) -> str:
        text = " ".join(str(units).lower().replace("**", "").replace("^", "").split())
        return _UNIT_ALIASES.get(text.replace(" ", "_"), text)

    return key(a) == key(b)


def units_text(units: str) -> str:
    """A units attribute as said in a message: quoted, or that there is none."""
    return f"units '{units}'" if units else "no units attribute"


def as_float32(values: np.ndarray, what: str, axes: str = "") -> np.ndarray:
    """`values` as float32, in which float frames are stored; a value beyond its range
    (±3.4e38) is refused naming `what` holds it (and where, on `axes` such as "t, c, y,
    x"): cast, it became ±inf, said as "inf … must be finite" of a file that holds none
    (a formats review)."""
    too_big = np.abs(values) > FLOAT32_MAX
    if too_big.any():
        position = tuple(int(i) for i in np.argwhere(too_big)[0])
        at = f" at ({axes}) = {position}" if axes else ""
        if np.isinf(values[position]):  # no scale helps (a weather review)
            raise InputError(
                f"{what} holds {values[position]:g}{at}: an infinite value cannot be stored; "
                "set such values to NaN and convert with --allow-nan FILL (a value outside "
                "the data, which the model learns as no data), or fill them yourself"
            )
        raise InputError(
            f"{what} holds {values[position]:g}{at}, beyond float32's range "
            f"(±{FLOAT32_MAX:.3g}), which frames are stored in: rescale the data before "
            "converting it"
        )
    return np.asarray(values, dtype=np.float32)


def require_file(path: str | os.PathLike, *, folder_too: bool = False) -> Path:
    """`path`, if it is a regular file (or, with `folder_too`, a folder); anything else is
    refused naming it, before it is opened: opening a FIFO blocks until someone writes."""
    path = Path(path)
    try:
        mode = os.stat(path).st_mode  # follows symbolic links
    except FileNotFoundError:
        if path.is_symlink():  # the link is there, its target is not (a formats review)
            raise MissingInput(
                f"{path}: a broken symbolic link (to {os.readlink(path)}, which does not exist)"
            ) from None
        raise MissingInput(f"{path}: no such file") from None
    if stat.S_ISREG(mode) or (folder_too and stat.S_ISDIR(mode)):
        return path
    kind = _KINDS.get(stat.S_IFMT(mode), "not a regular file")
    expected = "a file or folder" if folder_too else "a regular file"
    raise InputError(f"{path} is {kind}, expected {expected}")


@dataclass
class ShardInfo:
    name: str
    num_samples: int
    bytes: int = 0
    """The bytes of its samples' members, as written (informative: not read back)."""
    fingerprint: str = ""
    """`shard_fingerprint` of the shard as written (absent from older indexes)."""
    sha256: str = ""
    """SHA-256 of the shard's every byte as written, which `stpdist inspect --verify`
    checks: a flipped byte in a sample's data changes neither its count nor, away from its
    ends, its fingerprint (absent from indexes written before 2026-12-07)."""


FINGERPRINT_SPAN = 1 << 16
"""Bytes hashed at each end of a shard by `shard_fingerprint`."""


def shard_fingerprint(path: str | os.PathLike, num_samples: int) -> str | None:
    """SHA-256 of a shard's sample count, size and first and last FINGERPRINT_SPAN bytes
    (all of a shard up to twice that size): two reads, where counting reads a header per
    member. The count is in the hash, so an index whose count was edited no longer matches;
    a shard rewritten with other samples changes its size or its ends (its first key, its
    last samples and the padding after them). None for anything but a regular file."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))  # a FIFO never blocks
    except OSError:
        return None
    try:
        found = os.fstat(fd)
        if not stat.S_ISREG(found.st_mode):
            return None
        size, span = found.st_size, min(found.st_size, FINGERPRINT_SPAN)
        digest = hashlib.sha256(f"{num_samples} {size}\n".encode())
        digest.update(os.pread(fd, span, 0))
        digest.update(os.pread(fd, span, max(size - span, 0)))
        return digest.hexdigest()
    finally:
        os.close(fd)


@dataclass
class SplitIndex:
    split: str
    shape: list[int]
    """T×C×H×W of every sample."""
    dtype: str
    value_scale: float
    shards: list[ShardInfo]
    mean: list[float] = field(default_factory=list)
    """Per-channel mean of frames / value_scale."""
    std: list[float] = field(default_factory=list)
    """Per-channel std of frames / value_scale."""
    source: str = ""
    args: dict[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION
    min: list[float] = field(default_factory=list)
    """Per-channel minimum of frames / value_scale (absent from older indexes)."""
    max: list[float] = field(default_factory=list)
    """Per-channel maximum of frames / value_scale (absent from older indexes)."""
    variables: list[dict[str, str]] = field(default_factory=list)
    """One `{"name": …, "units": …}` per channel, when the source knows them."""
    latitudes: list[float] = field(default_factory=list)
    """Latitude (degrees) of each row, for gridded geoscience data."""
    longitudes: list[float] = field(default_factory=list)
    """Longitude (degrees) of each column."""
    climatology: str = ""
    """File name (beside index.json) of the C×H×W float32 mean of the scaled frames."""

    @property
    def num_samples(self) -> int:
        return sum(s.num_samples for s in self.shards)


def check_split(split: str) -> str:
    if not isinstance(split, str) or not SPLIT_NAME.fullmatch(split):
        raise ShardFormatError(
            f"split name {split!r} must be letters, digits, '_' or '-' (not starting with '-')"
        )
    return split


def check_shard_name(name: str, split: str) -> str:
    """A shard name as the format writes it: `<split>-000000.tar`."""
    pattern = re.escape(split) + r"-[0-9]{6,}\.tar"  # ASCII digits (\d: any script's)
    if not isinstance(name, str) or not re.fullmatch(pattern, name):
        raise ShardFormatError(f"shard name {name!r} is not '{split}-<6 digits>.tar'")
    return name


def check_beside_index(key: str, name: Any) -> None:
    """`name`, from index.json's `key`, is "" (none) or a plain file name beside the index:
    a hostile index must not make stpdist open a file elsewhere."""
    if name != "" and not (isinstance(name, str) and FILE_NAME.fullmatch(name)):
        raise ShardFormatError(
            f"key {key!r}: {name!r} is not a file name beside {INDEX_FILE} (letters, digits, "
            "'_', '-' and '.', not starting with '.'; no folders), nor \"\" for none"
        )


def check_value_scale(value_scale: Any, where: str) -> float:
    if (
        isinstance(value_scale, bool)
        or not isinstance(value_scale, int | float)
        or not math.isfinite(value_scale)
        or value_scale <= 0
    ):
        raise ShardFormatError(
            f"{where}: value scale must be a positive number, got {value_scale!r}"
        )
    return float(value_scale)


def check_key(key: str) -> str:
    if not key or "." in key or "/" in key:
        raise ShardFormatError(f"sample key {key!r} must be non-empty without dots or slashes")
    return key


def encode_frames(frames_TCHW: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(frames_TCHW), allow_pickle=False)
    return buffer.getvalue()


_HEADERS: dict[bytes, tuple[np.dtype, tuple[int, ...], bool, int]] = {}
NPY_MAGIC = b"\x93NUMPY"


def _holds_objects(head: bytes) -> bool:
    """Whether .npy bytes starting with `head` declare a dtype of Python objects."""
    try:
        buffer = io.BytesIO(head)
        version = np.lib.format.read_magic(buffer)
        if version == (1, 0):
            return np.lib.format.read_array_header_1_0(buffer)[2].hasobject
        return np.lib.format.read_array_header_2_0(buffer)[2].hasobject
    except Exception:  # no header to read: not an .npy array at all
        return False


def npy_problem(head: bytes, exc: Exception) -> str:
    """Why bytes meant to be a plain .npy array (starting with `head`) are unreadable, in
    stpdist's words: numpy calls anything without the .npy header "pickled (object) data"
    and, for that and for an array of objects, advises loading it unsafely with pickle,
    which for a corrupt or hostile data file is the wrong advice. stpdist never unpickles."""
    if not head.startswith(NPY_MAGIC):
        return (
            "not a NumPy .npy array (its first bytes are not the .npy header): corrupt, "
            "or another kind of file"
        )
    if _holds_objects(head):
        return "holds Python objects (pickled), not a plain numeric array"
    text = str(exc)
    if "pickle" in text:  # numpy's advice, whatever else set it off
        return "not a plain numeric array (corrupt, or pickled Python objects)"
    return text


def decode_frames(data: bytes, where: str) -> np.ndarray:
    """An array from .npy bytes. The parsed header is cached: samples of a split share
    shape and dtype, and parsing it is most of the cost of `np.load` on small arrays."""
    try:
        major = data[6] if data[:6] == b"\x93NUMPY" else 0
        length_bytes = 2 if major == 1 else 4
        start = 8 + length_bytes
        offset = start + int.from_bytes(data[8:start], "little")
        header = data[:offset]
        if header not in _HEADERS:
            first = np.load(io.BytesIO(data), allow_pickle=False)
            fortran = first.ndim > 1 and first.flags.f_contiguous and not first.flags.c_contiguous
            _HEADERS[header] = (first.dtype, first.shape, fortran, offset)
        dtype, shape, fortran, offset = _HEADERS[header]
        array = np.frombuffer(data, dtype=dtype, offset=offset, count=int(np.prod(shape)))
        return array.reshape(shape, order="F" if fortran else "C")
    except Exception as exc:
        raise ShardFormatError(
            f"{where}: unreadable {FRAMES_EXT} ({npy_problem(data, exc)})"
        ) from exc


def write_index(folder: str | Path, index: SplitIndex) -> Path:
    """Write index.json atomically (temp file, then rename)."""
    path = Path(folder) / INDEX_FILE
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(asdict(index), indent=2))
    os.replace(tmp, path)
    return path


def _known(kind: type, entries: dict[str, Any]) -> dict[str, Any]:
    """The entries of `entries` that are fields of `kind`: an index written by a newer
    stpdist may add optional ones (as `fingerprint` was added), which this one does not
    use; a change that must not be ignored raises FORMAT_VERSION instead."""
    if not isinstance(entries, dict):
        raise TypeError(f"expected a mapping, got {type(entries).__name__}")
    required = [
        f.name for f in fields(kind) if f.default is MISSING and f.default_factory is MISSING
    ]
    lacking = [name for name in required if name not in entries]
    if lacking:
        what = "a shard entry" if kind is ShardInfo else "it"
        raise ValueError(f"{what} lacks {', '.join(map(repr, lacking))}")
    names = {f.name for f in fields(kind)}
    return {k: v for k, v in entries.items() if k in names}


def read_index(folder: str | Path) -> SplitIndex:
    path = Path(folder) / INDEX_FILE
    if not os.path.lexists(path):
        from .staging import recover

        recover(Path(folder).absolute().parent)  # a crash while the dataset was replaced
    if not os.path.lexists(path):
        raise MissingInput(f"no {INDEX_FILE} in {folder} (not a stpdist split folder)")
    require_file(path)
    try:
        raw = json.loads(path.read_text())
        _known(SplitIndex, raw)  # the entries it must have, named when it lacks one
        raw["shards"] = [ShardInfo(**_known(ShardInfo, s)) for s in raw["shards"]]
        if raw.get("variables") is None:  # null: none (another tool's writer)
            raw.pop("variables", None)
        index = SplitIndex(**_known(SplitIndex, raw))
    except (KeyError, TypeError, ValueError) as exc:
        raise ShardFormatError(f"{path}: malformed index ({exc})") from exc
    if index.format_version != FORMAT_VERSION:
        raise ShardFormatError(
            f"{path}: format version {index.format_version}, this stpdist reads {FORMAT_VERSION}"
        )
    try:
        check_split(index.split)
        _check_layout(index.shape, index.dtype)
        for shard in index.shards:
            check_shard_name(shard.name, index.split)
            if isinstance(shard.num_samples, bool) or not isinstance(shard.num_samples, int):
                raise ShardFormatError(f"shard {shard.name}: num_samples {shard.num_samples!r}")
            if shard.num_samples < 0:
                raise ShardFormatError(f"shard {shard.name}: num_samples {shard.num_samples} < 0")
        if len({s.name for s in index.shards}) != len(index.shards):
            raise ShardFormatError("a shard is listed twice")
        check_value_scale(index.value_scale, "index")
        check_beside_index("climatology", index.climatology)
        _check_variables(index.variables)
    except ShardFormatError as exc:
        raise ShardFormatError(f"{path}: {exc}") from None
    return index


def _check_variables(variables: Any) -> None:
    """`variables`: a list of {"name": …, "units": …} (an index written by hand held a list
    of names, and training failed on `'str' object has no attribute 'get'`)."""
    fits = isinstance(variables, list) and all(
        isinstance(v, dict) and all(isinstance(v.get(k, ""), str) for k in ("name", "units"))
        for v in variables
    )
    if not fits:
        raise ShardFormatError(
            f"variables {str(variables)[:80]}: expected a list of "
            '{"name": …, "units": …} objects, one per channel'
        )


def _check_layout(shape: Any, dtype: Any) -> None:
    """An index's sample `shape` (T×C×H×W: 4 positive integers) and `dtype` (a NumPy name
    of booleans, integers or floats, as the writer records), each named when not."""
    sizes_ok = isinstance(shape, list) and len(shape) == 4
    if not sizes_ok or not all(
        isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in shape
    ):
        raise ShardFormatError(
            f"shape {json.dumps(shape)}: expected the samples' T×C×H×W, 4 positive integers"
        )
    try:
        kind = np.dtype(dtype).kind if isinstance(dtype, str) else None
    except TypeError:
        kind = None
    if kind is None or kind not in "biuf":
        raise ShardFormatError(
            f"dtype {json.dumps(dtype)}: expected the samples' NumPy dtype (uint8, float32, …)"
        )


CLIMATOLOGY_FILE = "climatology.npy"


def variable_names(index: SplitIndex) -> list[str]:
    """A name per channel: the index's variable names, else `c0`, `c1`, …"""
    channels = index.shape[1]
    if len(index.variables) == channels:
        return [str(v.get("name") or f"c{i}") for i, v in enumerate(index.variables)]
    return [f"c{i}" for i in range(channels)]


def read_climatology(folder: str | Path, index: SplitIndex) -> np.ndarray | None:
    """The split's stored climatology (C×H×W, scaled units), or None when it has none."""
    if not index.climatology:
        return None
    path = Path(folder) / index.climatology  # a plain file name (`read_index`)
    try:
        clim = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        problem = str(exc)
        if isinstance(exc, ValueError):  # not an I/O failure: the content
            with open(path, "rb") as handle:
                problem = npy_problem(handle.read(1 << 16), exc)
        raise ShardFormatError(f"{path}: unreadable climatology ({problem})") from exc
    if list(clim.shape) != index.shape[1:]:
        raise ShardFormatError(f"{path}: shape {list(clim.shape)}, expected {index.shape[1:]}")
    return clim


SERIES_INDEX = "series_index"
"""Optional entry of a sample's metadata, written by the sources that cut one long series
into windows: the position in the series of the window's first frame (its frames are the
next T). The split's statistics count each frame of the series once, however many
overlapping windows (`--stride` below `--frames`) hold it."""

SERIES_ID = "series_id"
"""Optional entry beside `SERIES_INDEX` where a split holds several series (SEVIR's events,
TaxiBJ's files): which series the window is cut from (a string). Positions count within
their series: frame 0 of one event is not frame 0 of another. Without it the split's
windows are of one series."""


class StatsAccumulator:
    """Per-channel mean/std/min/max of scaled frames, accumulated in float64; with
    `per_pixel`, also the C×H×W mean over all frames (the climatology).

    `add`'s `first`: the sample is a window of a series (`series`: which one, None for the
    split's one series) starting at that frame; only the frames of that series not counted
    yet are added (overlapping windows would weigh a frame once per window holding it).
    `valid`: a T×C×H×W mask of the values to count (False: a NaN filled with `--allow-nan`'s
    value); the rest are left out of every statistic. A channel with no valid value gets the
    fill's statistics (mean = min = max = fill, std 0), a pixel never valid the fill as its
    climatology."""

    def __init__(self, per_pixel: bool = False) -> None:
        self.count: np.ndarray | None = None
        self.total: np.ndarray | None = None
        self.total_sq: np.ndarray | None = None
        self.low: np.ndarray | None = None
        self.high: np.ndarray | None = None
        self.fill: np.ndarray | None = None
        """Per channel, a value left out as filled (for a channel with no valid value)."""
        self.per_pixel = per_pixel
        self.pixel_total: np.ndarray | None = None
        self.pixel_count: np.ndarray | None = None
        """Valid values per pixel, once a sample came with a mask (before: `frames` each)."""
        self.pixel_fill: np.ndarray | None = None
        self.frames = 0
        self.counted: dict[Any, np.ndarray] = {}
        """Per series (`add`'s `series`), the positions already counted (`first`): one flag
        per frame of the series."""

    def _not_counted(self, first: int, length: int, series: Any = None) -> np.ndarray:
        """Which of the frames `first`…`first + length − 1` of `series` are new; marks them
        counted."""
        stop = first + length
        counted = self.counted.get(series, np.zeros(0, bool))
        if stop > len(counted):
            grown = np.zeros(max(stop, 2 * len(counted)), bool)
            grown[: len(counted)] = counted
            counted = self.counted[series] = grown
        new = ~counted[first:stop]
        counted[first:stop] = True
        return new

    def add(
        self,
        frames_TCHW: np.ndarray,
        scale: float,
        *,
        first: int | None = None,
        series: Any = None,
        valid: np.ndarray | None = None,
    ) -> None:
        if first is not None:
            new = self._not_counted(int(first), len(frames_TCHW), series)
            if not new.all():
                frames_TCHW = frames_TCHW[new]
                valid = None if valid is None else valid[new]
            if not len(frames_TCHW):
                return
        # in C order: sums that do not depend on how the frames lie in memory (a video's
        # T×H×W×C frames seen as T×C×H×W here, a contiguous copy from a worker process)
        values = np.ascontiguousarray(frames_TCHW, dtype=np.float64) / scale
        channels = values.shape[1]
        per_channel = values.transpose(1, 0, 2, 3).reshape(channels, -1)
        if self.total is None:
            self.count = np.zeros(channels, np.int64)
            self.total = np.zeros(channels)
            self.total_sq = np.zeros(channels)
            self.low = np.full(channels, np.inf)
            self.high = np.full(channels, -np.inf)
        if valid is None:
            self.total += per_channel.sum(axis=1)
            self.total_sq += (per_channel**2).sum(axis=1)
            self.count += per_channel.shape[1]
            self.low = np.minimum(self.low, per_channel.min(axis=1))
            self.high = np.maximum(self.high, per_channel.max(axis=1))
        else:
            self._add_masked(values, per_channel, valid)
        if self.per_pixel:
            self._add_pixels(values, valid)

    def _add_masked(self, values: np.ndarray, per_channel: np.ndarray, valid: np.ndarray) -> None:
        """The per-channel statistics of the `valid` values only."""
        channels = values.shape[1]
        mask = valid.transpose(1, 0, 2, 3).reshape(channels, -1)
        kept = np.where(mask, per_channel, 0.0)
        self.total += kept.sum(axis=1)
        self.total_sq += (kept**2).sum(axis=1)
        self.count += mask.sum(axis=1)
        self.low = np.minimum(self.low, np.where(mask, per_channel, np.inf).min(axis=1))
        self.high = np.maximum(self.high, np.where(mask, per_channel, -np.inf).max(axis=1))
        if self.fill is None:
            self.fill = np.zeros(channels)
        filled = ~mask.all(axis=1)
        for c in np.flatnonzero(filled):
            self.fill[c] = per_channel[c][~mask[c]][0]

    def _add_pixels(self, values: np.ndarray, valid: np.ndarray | None) -> None:
        """The per-pixel sums of the climatology (of the `valid` values, when given)."""
        if valid is not None and self.pixel_count is None:  # every earlier value was valid
            self.pixel_count = np.full(values.shape[1:], self.frames, np.int64)
            self.pixel_fill = np.zeros(values.shape[1:])
        if valid is None:
            summed = values.sum(axis=0)
            if self.pixel_count is not None:
                self.pixel_count += values.shape[0]
        else:
            summed = np.where(valid, values, 0.0).sum(axis=0)
            self.pixel_count += valid.sum(axis=0)
            filled = ~valid.all(axis=0)  # pixels filled in some frame: each holds the fill
            self.pixel_fill[filled] = values.max(axis=0, where=~valid, initial=-np.inf)[filled]
        self.pixel_total = summed if self.pixel_total is None else self.pixel_total + summed
        self.frames += values.shape[0]

    _ARRAYS = ("count", "total", "total_sq", "low", "high", "fill", "pixel_total", "pixel_count",
               "pixel_fill")  # fmt: skip

    def state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """What `restore` takes to go on as this one: JSON fields and arrays (a conversion's
        checkpoint, `resume.py`)."""
        arrays = {name: getattr(self, name) for name in self._ARRAYS}
        arrays = {name: value for name, value in arrays.items() if value is not None}
        series = list(self.counted)
        for number, which in enumerate(series):
            arrays[f"counted_{number}"] = self.counted[which]
        return {"per_pixel": self.per_pixel, "frames": self.frames, "series": series}, arrays

    def restore(self, fields: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        """Go on from a `state`."""
        self.per_pixel, self.frames = bool(fields["per_pixel"]), int(fields["frames"])
        for name in self._ARRAYS:
            setattr(self, name, arrays.get(name))
        self.counted = {
            # a series id read back from JSON: a list was a tuple (dict keys are hashable)
            tuple(which) if isinstance(which, list) else which: arrays[f"counted_{number}"]
            for number, which in enumerate(fields["series"])
        }

    def result(self) -> tuple[list[float], list[float]]:
        if self.total is None:
            return [], []
        none = self.count == 0  # only filled values: the fill's statistics
        count = np.maximum(self.count, 1)
        mean = self.total / count
        std = np.sqrt(np.maximum(self.total_sq / count - mean**2, 0.0))
        if none.any():
            mean, std = np.where(none, self.fill, mean), np.where(none, 0.0, std)
        return mean.tolist(), std.tolist()

    def range(self) -> tuple[list[float], list[float]]:
        """Per-channel (min, max)."""
        if self.low is None:
            return [], []
        low, high = self.low, self.high
        none = self.count == 0  # only filled values: the fill's range
        if none.any():
            low, high = np.where(none, self.fill, low), np.where(none, self.fill, high)
        return low.tolist(), high.tolist()

    def climatology(self) -> np.ndarray | None:
        """C×H×W mean over every frame added (with `per_pixel`), float32; of the valid values
        where masks came, the fill where a pixel never held a valid value."""
        if self.pixel_total is None:
            return None
        if self.pixel_count is None:
            return (self.pixel_total / self.frames).astype(np.float32)
        mean = self.pixel_total / np.maximum(self.pixel_count, 1)
        return np.where(self.pixel_count > 0, mean, self.pixel_fill).astype(np.float32)


def _span(values: list[float]) -> str:
    return f"{min(values):g}…{max(values):g}" if values else "none"


class SplitWriter:
    """Writes one split's shards and, on `close`, its index. Samples must share shape/dtype.

    Use as a context manager; on an exception the partial index is never written, so the
    folder does not look valid.
    """

    def __init__(
        self,
        folder: str | Path,
        split: str,
        *,
        value_scale: float,
        samples_per_shard: int = 1000,
        source: str = "",
        args: dict[str, Any] | None = None,
        variables: list[dict[str, str]] | None = None,
        latitudes: list[float] | None = None,
        longitudes: list[float] | None = None,
        climatology: bool = False,
    ) -> None:
        self.split = check_split(split)
        self.value_scale = check_value_scale(value_scale, f"split '{split}'")
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.source = source
        self.args = args or {}
        self.samples_per_shard = samples_per_shard
        self.shape: list[int] | None = None
        self.dtype: str | None = None
        self.first_key: str | None = None
        """The key of the first sample: the one whose shape and dtype the split holds."""
        self.counts: list[int] = []
        self.shard_bytes = 0
        """Bytes of the samples in the current shard (their members' data)."""
        self.keys: set[str] = set()
        self.stats = StatsAccumulator(per_pixel=climatology)
        self.variables = [dict(v) for v in variables or []]
        self.latitudes = [float(x) for x in latitudes] if latitudes is not None else []
        self.longitudes = [float(x) for x in longitudes] if longitudes is not None else []
        coords = self.latitudes + self.longitudes
        if not all(map(math.isfinite, coords)) or any(abs(x) > 90 for x in self.latitudes):
            raise ShardFormatError(
                f"split '{split}': latitudes must be finite and in [-90, 90], longitudes "
                f"finite; got latitudes {_span(self.latitudes)}, longitudes "
                f"{_span(self.longitudes)}"
            )
        self._writer: _TarShard | None = None
        self.digests: list[str] = []  # each closed shard's SHA-256, in shard order
        self.on_shard_closed: Callable[[], None] | None = None
        """Called as a shard is closed, before the sample that starts the next one is
        written: every sample before that one is in the closed shards (a conversion's
        checkpoint, `resume.py`)."""

    def _pattern(self) -> str:
        return SHARD_PATTERN.format(split=self.split)

    def _refuse_other_layout(self, key: str, shape: list[int], dtype: str) -> None:
        """A sample whose shape or dtype is not the split's, named beside the sample the
        split's came from (the odd one may be either: the first sample sets them)."""
        parts = []
        if shape != self.shape:
            parts.append(("shape", shape, self.shape))
        if dtype != self.dtype:
            parts.append(("dtype", dtype, self.dtype))
        what = " and ".join(name for name, _, _ in parts)
        theirs = " ".join(str(value) for _, value, _ in parts)
        first = " ".join(str(value) for _, _, value in parts)
        raise ShardFormatError(
            f"sample {key}: {what} {theirs} differs from {first} of sample {self.first_key}, "
            f"the split's first (every sample of a split has one shape and dtype)"
        )

    def write(
        self,
        key: str,
        frames_TCHW: np.ndarray,
        meta: dict[str, Any] | None = None,
        valid: np.ndarray | None = None,
    ) -> None:
        """Add one sample. `valid` (T×C×H×W bool): the values that count in the statistics
        (False where a NaN was filled); a `meta` with `SERIES_INDEX` marks a window of a
        series (`SERIES_ID`: which one, where the split holds several), whose frames count
        once however many windows hold them."""
        if frames_TCHW.ndim != 4:
            raise ShardFormatError(f"sample {key}: expected T×C×H×W, got shape {frames_TCHW.shape}")
        if frames_TCHW.size == 0 or frames_TCHW.dtype.kind not in "biuf":
            raise ShardFormatError(
                f"sample {key}: {frames_TCHW.dtype} {list(frames_TCHW.shape)}; frames must be "
                "numbers (bool, integers or floats) with no dimension of size 0"
            )
        if self.shape is None:
            self.shape, self.dtype = list(frames_TCHW.shape), str(frames_TCHW.dtype)
            self.first_key = key
        elif list(frames_TCHW.shape) != self.shape or str(frames_TCHW.dtype) != self.dtype:
            self._refuse_other_layout(key, list(frames_TCHW.shape), str(frames_TCHW.dtype))
        check_key(key)
        if key in self.keys:
            raise ShardFormatError(f"split '{self.split}': sample key {key!r} written twice")
        if np.issubdtype(frames_TCHW.dtype, np.floating) and not np.isfinite(frames_TCHW).all():
            bad = tuple(int(i) for i in np.argwhere(~np.isfinite(frames_TCHW))[0])
            raise ShardFormatError(
                f"sample {key}: {frames_TCHW[bad]} at (t, c, y, x) = {bad}; frames must be finite"
            )
        if valid is not None and valid.shape != frames_TCHW.shape:
            raise ShardFormatError(
                f"sample {key}: mask of shape {list(valid.shape)} for frames {self.shape}"
            )
        members = {FRAMES_EXT: encode_frames(frames_TCHW)}
        if meta:
            members[META_EXT] = json.dumps(meta).encode()
        size = sum(map(len, members.values()))
        if (
            self._writer is None  # the first sample, or the first after `restore`
            or self.counts[-1] >= self.samples_per_shard
            or (self.counts[-1] and self.shard_bytes + size > SHARD_BYTES)
        ):
            self.new_shard()
        self.keys.add(key)
        self._writer.write(key, members)
        self.counts[-1] += 1
        self.shard_bytes += size
        # a window of a series: its frames count once
        first, series = (meta or {}).get(SERIES_INDEX), (meta or {}).get(SERIES_ID)
        self.stats.add(frames_TCHW, self.value_scale, first=first, series=series, valid=valid)

    def new_shard(self) -> None:
        """Start a new shard now (the next sample goes into it)."""
        if self._writer is not None:
            self._writer.close()
            self.digests.append(self._writer.sha256())
            self._writer = None
            if self.on_shard_closed is not None:
                self.on_shard_closed()
        self._writer = _TarShard(self.folder / (self._pattern() % len(self.counts)))
        self.counts.append(0)
        self.shard_bytes = 0

    def closed_shards(self) -> list[Path]:
        return [self.folder / (self._pattern() % n) for n in range(len(self.digests))]

    def state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """Between shards (`on_shard_closed`): what `restore` takes to go on from there, the
        sample keys apart (JSON fields and arrays)."""
        if self._writer is not None:
            raise RuntimeError("a SplitWriter's state is taken between shards")
        stats, arrays = self.stats.state()
        fields = {"shape": self.shape, "dtype": self.dtype, "first_key": self.first_key,
                  "counts": self.counts, "digests": self.digests, "stats": stats}  # fmt: skip
        return fields, arrays

    def restore(
        self, fields: dict[str, Any], arrays: dict[str, np.ndarray], keys: set[str]
    ) -> None:
        """Go on from a `state` whose closed shards are in the folder (the next sample
        starts a new shard); `keys`: those of the samples in them."""
        self.shape, self.dtype = fields["shape"], fields["dtype"]
        self.first_key = fields["first_key"]
        self.counts, self.digests = list(fields["counts"]), list(fields["digests"])
        self.keys = set(keys)
        self.stats.restore(fields["stats"], arrays)

    def close(self) -> SplitIndex:
        if self._writer is not None:
            self._writer.close()
            self.digests.append(self._writer.sha256())
            self._writer = None
        if self.shape is None:
            raise ShardFormatError(f"split '{self.split}' received no samples")
        shards = []
        for number, count in enumerate(self.counts):
            name = self._pattern() % number
            path = self.folder / name
            fingerprint = shard_fingerprint(path, count) or ""
            digest = self.digests[number] if number < len(self.digests) else ""
            shards.append(ShardInfo(name, count, path.stat().st_size, fingerprint, digest))
        mean, std = self.stats.result()
        low, high = self.stats.range()
        channels, height, width = self.shape[1:]
        for what, values, size in (
            ("variables", self.variables, channels),
            ("latitudes", self.latitudes, height),
            ("longitudes", self.longitudes, width),
        ):
            if values and len(values) != size:
                raise ShardFormatError(
                    f"split '{self.split}': {len(values)} {what} for frames C×H×W "
                    f"{channels}×{height}×{width}"
                )
        clim_name = ""
        clim = self.stats.climatology()
        if clim is not None:
            np.save(self.folder / CLIMATOLOGY_FILE, clim, allow_pickle=False)
            clim_name = CLIMATOLOGY_FILE
        index = SplitIndex(
            split=self.split,
            shape=self.shape,
            dtype=self.dtype,
            value_scale=self.value_scale,
            shards=shards,
            mean=mean,
            std=std,
            source=self.source,
            args=self.args,
            min=low,
            max=high,
            variables=self.variables,
            latitudes=self.latitudes,
            longitudes=self.longitudes,
            climatology=clim_name,
        )
        verify_counts(self.folder, index)
        write_index(self.folder, index)
        return index

    def __enter__(self) -> SplitWriter:
        return self

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        if exc_type is None:
            self.close()
        elif self._writer is not None:
            self._writer.close()


class _Hashed:
    """A file being written that hashes what is written through it (all `tarfile` calls)."""

    def __init__(self, file: Any, digest: Any) -> None:
        self.file, self.digest = file, digest

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        return self.file.write(data)

    def tell(self) -> int:
        return self.file.tell()


class _TarShard:
    """One shard being written: a sample's members `<key>.<ext>` in extension order, each
    read-only (mode 444) and dated now, as webdataset's TarWriter writes them; written with
    the standard library, so converting needs neither webdataset nor torch."""

    def __init__(self, path: Path) -> None:
        self.file = open(path, "wb")  # noqa: SIM115 (closed by close)
        self._digest = hashlib.sha256()  # of every byte written (`ShardInfo.sha256`)
        # not the stream mode ("w|"): its buffer, left unclosed by an interrupt, was
        # written into the closed file when collected (the same bytes either way)
        self.tar = tarfile.open(fileobj=_Hashed(self.file, self._digest), mode="w")

    def sha256(self) -> str:
        return self._digest.hexdigest()

    def write(self, key: str, members: dict[str, bytes]) -> None:
        # no time in a member: the same samples make the same bytes, so a dataset converted
        # again from the same files is the same dataset, its index and hashes too (an
        # MLOps review: a regenerated dataset was "other data" to `validate`)
        for ext in sorted(members):
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size, info.mtime, info.mode = len(members[ext]), 0, 0o444
            self.tar.addfile(info, io.BytesIO(members[ext]))

    def close(self) -> None:
        """Ends the archive and closes the file, once: a second call (the writer's exit
        after Ctrl-C interrupted the first) does nothing; it wrote the archive's end into
        the closed file ("ValueError: write to closed file" over the interrupt)."""
        if self.file.closed:
            return
        try:
            self.tar.close()
        finally:
            self.file.close()


def _tar_header(
    stream: Any, where: str, first: bool = False, end_required: bool = False
) -> tuple[str, bytes, int] | None:
    """(name, type flag, data size) of the next tar header (the archive's `first`); None at
    the end of the archive (its zero block, or the end of the stream: refused with
    `end_required`, a tar cut at a member boundary)."""
    header = stream.read(512)
    if len(header) == 0 and end_required:
        raise ShardFormatError(
            f"{where}: it is empty (0 bytes: no tar)"
            if first
            else f"{where}: it ends without the tar end-of-archive block: cut short (at a "
            "member's end) while it was written or copied?"
        )
    if len(header) == 0 or header == b"\0" * 512:
        return None
    if len(header) < 512:
        if first:
            _refuse_compressed(header, where)
        raise ShardFormatError(f"{where}: truncated tar header")
    try:
        _check_header_sum(header, where)
    except ShardFormatError:
        if first:  # a compressed file is no header: said so
            _refuse_compressed(header, where)
        raise
    try:
        size = int(header[124:136].rstrip(b"\0 ").decode() or "0", 8)
        name = header[0:100].split(b"\0", 1)[0].decode()
        ustar = header[257:262] == b"ustar"
        prefix = header[345:500].split(b"\0", 1)[0].decode() if ustar else ""
    except ValueError as exc:  # not octal, not UTF-8
        raise ShardFormatError(f"{where}: corrupt tar header") from exc
    if size < 0:  # a signed size field: the next header would lie behind this one
        raise ShardFormatError(f"{where}: corrupt tar header (size {size})")
    return (f"{prefix}/{name}" if prefix else name), header[156:157], size


_COMPRESSED = {
    b"\x1f\x8b": "gzip",
    b"BZh": "bzip2",
    b"\xfd7zXZ\0": "xz",
    b"\x28\xb5\x2f\xfd": "zstd",
}
"""The magic bytes of the compressions a tar is often written with, and their names."""


def _refuse_compressed(header: bytes, where: str) -> None:
    """A header block that begins as a compressed file does (a shard written compressed,
    e.g. webdataset's `TarWriter(compress=True)`): said by name, not as a corrupt header."""
    for magic, name in _COMPRESSED.items():
        if header.startswith(magic):
            raise ShardFormatError(
                f"{where}: {name}-compressed; stpdist reads shards as uncompressed tar "
                "files: decompress it (or let a data.url_template `pipe:` command decompress "
                "shards as they are read, with STPDIST_ALLOW_PIPE=1)"
            )


def _check_header_sum(header: bytes, where: str) -> None:
    """A tar header's checksum: the sum of its bytes with the checksum field read as
    spaces, as unsigned bytes (POSIX) or signed ones (old Sun tars), as `tarfile` checks.
    A flipped bit in a name or size otherwise reads on as another sample's key or as the
    next header found at a wrong offset."""
    field = header[148:156].split(b"\0", 1)[0].strip(b" ")
    try:
        stored = int(field.decode(), 8)
    except ValueError as exc:  # not octal
        raise ShardFormatError(f"{where}: corrupt tar header (checksum field {field!r})") from exc
    rest = header[:148] + b" " * 8 + header[156:]
    unsigned = sum(rest)
    if stored != unsigned and stored != unsigned - 256 * sum(byte > 127 for byte in rest):
        raise ShardFormatError(f"{where}: corrupt tar header (its checksum does not match)")


def _long_name(kind: bytes, data: bytes) -> str | None:
    """The path a pax (`x`) or GNU long-name (`L`) header gives the next member."""
    if kind == b"L":
        return data.rstrip(b"\0").decode()
    path, at = None, 0
    while at < len(data):  # records "<length> <key>=<value>\n", the length counting it all
        space = data.find(b" ", at)
        if space <= at or not data[at:space].isdigit():
            break  # not a record: the rest is ignored, as tar readers do
        length = int(data[at:space])
        if length <= space - at:
            break
        key, _, value = data[space + 1 : at + length - 1].partition(b"=")
        if key == b"path":  # a value may hold any character, line separators included
            path = value.decode("utf-8", "replace")
        at += length
    return path


def _tar_members(
    stream: Any,
    where: str,
    keep: Callable[[str], bool] | None = None,
    end_required: bool = False,
) -> Iterator[tuple[str, bytes | None]]:
    """(name, data) of the regular files of an uncompressed tar stream; a member whose
    name `keep` refuses comes with None, its data passed over unread (`_pass_over`).

    A small reader for what tar writers produce (ustar, pax and GNU long names): python's
    `tarfile` spends most of a loader's time parsing headers.
    """
    long_name: str | None = None
    first = True
    while (header := _tar_header(stream, where, first, end_required)) is not None:
        first = False
        name, kind, size = header
        if kind in (b"0", b"\0") and keep is not None and not keep(long_name or name):
            _pass_over(stream, size, where, long_name or name)
            yield (long_name or name), None
            long_name = None
            continue
        data = _read_member(stream, size)
        if len(data) < size:
            if kind not in (b"0", b"\0"):  # a pax or long-name header: of a member unknown
                raise ShardFormatError(f"{where}: truncated member {name}")
            raise _damaged_member(where, long_name or name)
        stream.read((512 - size % 512) % 512)
        if kind in (b"x", b"L"):  # the real path of the next member
            long_name = _long_name(kind, data) or long_name
            continue
        if kind not in (b"0", b"\0"):
            continue  # directories, links, global headers
        yield (long_name or name), data
        long_name = None


_MEMBER_CHUNK = 1 << 26
"""Members above this size are read in pieces of it: a header's size field is untrusted,
and one read of what it claims (64 GiB) would fail to allocate before the short read
shows the shard is truncated."""


def _pass_over(stream: Any, size: int, where: str, name: str) -> None:
    """Past a member's data and padding: sought over in a local file (nothing read), read
    and dropped from a command's or download's stream. A member running past the end of
    the shard is a ShardFormatError, as when read."""
    padded = size + (512 - size % 512) % 512
    if isinstance(stream, io.BufferedReader) and stream.seekable():
        position = stream.tell()
        if position + size > os.fstat(stream.fileno()).st_size:
            raise _damaged_member(where, name)
        stream.seek(position + padded)
        return
    left = padded
    while left and (part := stream.read(min(left, 1 << 20))):
        left -= len(part)
    if left > padded - size:
        raise _damaged_member(where, name)


def _read_member(stream: Any, size: int) -> bytes:
    """Up to `size` bytes of `stream` (fewer at its end)."""
    if size <= _MEMBER_CHUNK:
        return stream.read(size)
    parts, left = [], size
    while left and (part := stream.read(min(left, _MEMBER_CHUNK))):
        parts.append(part)
        left -= len(part)
    return b"".join(parts)


def _sample_key(name: str, folders: bool = False) -> str | None:
    """The sample key of a member name (`<key>.<ext>`; None for a member without one: no
    dot, or a name beginning with one, as macOS's `.DS_Store` and `._<name>` files that its
    tar adds, which webdataset passes over too); with `folders`, the member's folders before
    it (`clip/0001`: webdataset's keys; a leading `./` left out)."""
    folder, _, base = name.rpartition("/")
    key = base.split(".", 1)[0] or None if "." in base else None
    folder = folder.removeprefix("./").strip("/")
    return f"{folder}/{key}" if folders and key and folder not in ("", ".") else key


def _member_again(where: str, name: str, key: str) -> ShardFormatError:
    """A second member of one name (key and extension) in a sample: read on, the later one
    would replace the earlier."""
    return ShardFormatError(
        f"{where}: member {name}: sample {key!r} holds a member of this name already (keys "
        "are file names up to their first dot, folders left out: two folders holding one "
        "file name?)"
    )


class _MemberOrder:
    """The order a shard's members must come in, as counting and reading both check it: a
    sample's members next to each other (a key again after other samples is an error, not
    another sample), each member name once in a sample."""

    def __init__(self, where: str) -> None:
        self.where, self.last = where, None
        self.seen: set[str] = set()  # the keys so far
        self.exts: set[str] = set()  # the current sample's extensions

    def begins(self, name: str, key: str) -> bool:
        """Whether member `name`, of sample `key`, begins a sample."""
        new = key != self.last
        if new:
            if key in self.seen:
                raise _key_again(self.where, name, key)
            self.seen.add(key)
            self.last, self.exts = key, set()
        ext = name.rsplit("/", 1)[-1].split(".", 1)[1]
        if ext in self.exts:
            raise _member_again(self.where, name, key)
        self.exts.add(ext)
        return new


def _key_again(where: str, name: str, key: str) -> ShardFormatError:
    """A member of a sample whose members came earlier in the shard, other samples' between:
    read on, it would count as another sample (and stpdist reads keys by file name alone,
    so `a/s0.frames.npy` and `b/s0.frames.npy` are one key)."""
    return ShardFormatError(
        f"{where}: member {name}: sample key {key!r} comes again after other samples; a "
        "sample's members must be next to each other and keys unique in a shard (keys are "
        "file names up to their first dot, folders left out; GNU tar: --sort=name)"
    )


class _At:
    """A file read with `os.pread` from a moving offset: one system call a header."""

    def __init__(self, fd: int) -> None:
        self.fd, self.offset = fd, 0

    def read(self, size: int) -> bytes:
        data = os.pread(self.fd, size, self.offset)
        self.offset += len(data)
        return data


def count_samples(path: str | os.PathLike) -> tuple[int, bool]:
    """(samples, whether the archive ends with its end-of-archive block) of a local shard,
    from its tar headers alone: member data is skipped, never read or decoded (one 512-byte
    read a member). A member running past the end of the file is a ShardFormatError naming
    the shard; anything but a regular file is an InputError (a FIFO is never opened)."""
    path = require_file(path)
    fd = os.open(path, os.O_RDONLY)
    try:
        size_on_disk = os.fstat(fd).st_size
        stream, count, long_name, order = _At(fd), 0, None, _MemberOrder(str(path))
        while stream.offset < size_on_disk:
            header = _tar_header(stream, str(path), stream.offset == 0)
            if header is None:
                _check_nothing_after(lambda n, at: os.pread(fd, n, at), stream.offset,
                                     size_on_disk, str(path))  # fmt: skip
                return count, True
            name, kind, size = header
            if stream.offset + size > size_on_disk:
                raise ShardFormatError(f"{path}: truncated member {long_name or name}")
            end = stream.offset + size + (512 - size % 512) % 512
            if kind in (b"x", b"L"):
                long_name = _long_name(kind, stream.read(size)) or long_name
            elif kind in (b"0", b"\0"):
                full = long_name or name
                key, long_name = _sample_key(full), None
                if key is not None and order.begins(full, key):
                    count += 1
            stream.offset = end
        return count, False  # cut at a member boundary: no end-of-archive block
    finally:
        os.close(fd)


def unlisted_shards(folder: Path, index: SplitIndex) -> list[str]:
    """The `.tar` files in a split's folder that its index does not list: never read (the
    index, not the folder, is the dataset), named where a person would think them part of
    it (a dataops review: a tar dropped in beside the shards was ignored without a word)."""
    listed = {shard.name for shard in index.shards}
    try:
        return sorted(
            p.name for p in folder.iterdir() if p.suffix == ".tar" and p.name not in listed
        )
    except OSError:
        return []


def check_unchanged(path: Path, shard: ShardInfo) -> str | None:
    """A shard's bytes against what its writer recorded: every byte's SHA-256 (indexes
    since 2026-12-07), else its fingerprint (count, size, ends); a difference is an error:
    damaged or changed since it was written, though its samples may still read. Returns
    which was compared ("sha256", "fingerprint"; None: the index records neither)."""
    try:
        require_file(path)  # never open a FIFO: it would block (InputError)
    except FileNotFoundError:
        raise ShardFormatError(f"{path}: cannot open (no such file)") from None
    if shard.sha256:
        digest = hashlib.sha256()
        with open(path, "rb") as file:
            while chunk := file.read(1 << 22):
                digest.update(chunk)
        changed = digest.hexdigest() != shard.sha256
        recorded = "the SHA-256 its writer recorded in index.json"
    else:
        changed = bool(shard.fingerprint) and (
            shard_fingerprint(path, shard.num_samples) != shard.fingerprint
        )
        recorded = "the fingerprint its writer recorded in index.json (size and ends)"
    if changed:
        raise ShardFormatError(
            f"{path}: its bytes are not those written ({recorded} differs): damaged or "
            "changed since it was converted; convert the data again, or restore the shard"
        )
    return "sha256" if shard.sha256 else "fingerprint" if shard.fingerprint else None


def iter_shard(
    url: str | os.PathLike,
    where: str | None = None,
    *,
    skip: int = 0,
    folders: bool = False,
    members: frozenset[str] | None = None,
    end_required: bool = False,
) -> Iterator[tuple[str, dict[str, Any]]]:
    """(key, members by extension) of every sample of one shard, in stored order; the first
    `skip` samples with their key alone (`{"__key__": key}`), their data unread: sought
    past in a local file, read and dropped from a URL's stream. `folders`: keys keep the
    members' folders, as webdataset's do (`clip/0001`; stpdist's own shards have none).
    `members`: only the members of these extensions are read (`{"json"}`: the metadata,
    the frames passed over as the skipped samples' are). `end_required`: a stream that ends
    without the end-of-archive block is refused (a user's tar to convert; stpdist's own
    shards are counted against their index instead).

    A `Path` is a local file, always (a folder named `pipe:…` is just a folder). A `str` is
    a URL: anything webdataset's `gopen` opens, including `pipe:<shell command>` (run by a
    shell!) and `https://…`; callers pass a `str` only for an explicit URL template. Any
    failure, a command's or a download's included, is a ShardFormatError naming `where`."""
    where = where or str(url)
    stream = _open_shard(url, where)
    try:
        yield from _samples(stream, where, skip, folders, members, end_required)
        _drain(stream, where)
    except Exception as exc:
        failed = _close_shard(stream)  # a failed command or download explains a short read
        if isinstance(exc, ShardFormatError):
            if failed is None:
                raise
            raise ShardFormatError(f"{exc}; {failed}") from exc
        why = failed or f"corrupt or truncated shard ({exc or type(exc).__name__})"  # I/O errors
        raise ShardFormatError(f"{where}: {why}") from exc
    except BaseException:  # GeneratorExit: the reader stopped early, or an interrupt
        _close_shard(stream)  # a command cut off mid-write may end on SIGPIPE: not an error
        raise
    failed = _close_shard(stream)
    if failed is not None:
        raise ShardFormatError(f"{where}: {failed}")


URL_STALL_S = 120
"""A download (`http://`, `https://` shards behind a `url_template`) that receives less than
`URL_MIN_BYTES_S` a second for this long fails (curl's status 28; curl averages over its
last ~6 s, so a stall is seen that much later), naming the shard: a stalled server or a
half-open connection hung the training without a word, for ever."""
URL_MIN_BYTES_S = 1
URL_RETRY_S = 300
"""How long a shard's download that fails before its first byte (no connection: a server
restarting; a timeout; a 5xx) is tried again, `URL_RETRY_DELAY_S` apart; then it fails."""
URL_RETRY_DELAY_S = 2
CURL_STATUS = {
    6: "cannot resolve the host",
    7: "cannot connect to the server",
    22: "the server answered with an HTTP error (404: no such shard?)",
    28: "timed out: no connection in 30 s, or no data for {stall} s",
    35: "the TLS handshake failed",
    56: "the connection was reset while receiving",
}
"""What curl's exit statuses mean, said beside them."""


RETRIED_CURL = frozenset({7, 28, 52, 56})
"""curl's statuses of a download that may go through when tried again (no connection, a
timeout, an empty reply, a reset), retried only before its first byte; an HTTP error too
when the server's status is 5xx (an overloaded gateway), never a 4xx (no such shard)."""


def _curl(url: str) -> Any:
    """An HTTP(S) shard's stream through curl, run without a shell (as webdataset's `gopen`
    runs it), failing when no data comes for `URL_STALL_S` seconds (webdataset's waited for
    ever); a download that fails before its first byte is tried again (`_Download`)."""
    return _Download(url)


class _Download:
    """curl's output as a stream. A download that fails before its first byte (a server
    restarting, a 503) is started again, `URL_RETRY_DELAY_S` apart for `URL_RETRY_S`; one
    that fails after it is not: a stream read on cannot be entered part-way (curl's own
    retry appended a second copy of the shard to the first's start)."""

    def __init__(self, url: str) -> None:
        self.url, self.received = url, 0
        self.deadline = time.monotonic() + URL_RETRY_S
        self.pipe = self._open()

    def _open(self) -> Any:
        import subprocess

        from webdataset.gopen import Pipe  # imports torch: only for a `url_template`'s URLs

        command = ["curl", "--connect-timeout", "30",
                   "--speed-limit", str(URL_MIN_BYTES_S), "--speed-time", str(URL_STALL_S),
                   "-f", "-s", "-L", "-w", "%{stderr}%{http_code}", "--", self.url]  # fmt: skip
        try:
            return Pipe(command, mode="rb", bufsize=8192, ignore_status=[141, 23],
                        stderr=subprocess.PIPE)  # fmt: skip
        except FileNotFoundError:
            raise OSError(f"curl is needed to read {self.url.split(':', 1)[0]} shards and is not "
                          "installed (apt install curl)") from None  # fmt: skip

    def read(self, *args: Any) -> bytes:
        while True:
            try:
                data = self.pipe.read(*args)
            except OSError:
                if self._again():
                    continue
                raise
            if not data and self._again():
                continue
            self.received += len(data)
            return data

    def _again(self) -> bool:
        """Whether the download was started again: it failed before its first byte, in a
        way worth another try, with time left."""
        if self.received:
            return False
        status = self.pipe.proc.wait()
        code = self.pipe.proc.stderr.read().decode(errors="replace").strip()[-3:]
        worth = status in RETRIED_CURL or (status == 22 and code.startswith("5"))
        if not worth or time.monotonic() + URL_RETRY_DELAY_S > self.deadline:
            return False
        self.pipe.proc.stdout.close()
        time.sleep(URL_RETRY_DELAY_S)
        self.pipe = self._open()
        return True

    @property
    def status(self) -> Any:
        return self.pipe.status

    @property
    def proc(self) -> Any:
        return self.pipe.proc

    def close(self) -> None:
        self.pipe.close()
        if self.pipe.proc.stderr is not None:
            self.pipe.proc.stderr.close()


def _open_shard(url: str | os.PathLike, where: str) -> Any:
    if isinstance(url, os.PathLike):
        try:
            require_file(url)  # never open a FIFO: it would block (InputError)
        except FileNotFoundError:
            raise ShardFormatError(f"{where}: cannot open (no such file)") from None
    try:
        if isinstance(url, os.PathLike):
            return open(url, "rb")  # noqa: SIM115 (closed by iter_shard)
        if url.split("://", 1)[0].lower() in ("http", "https"):
            return _curl(url)
        import webdataset  # imports torch: only for a `url_template`'s URLs

        return webdataset.gopen(url, "rb")
    except OSError as exc:
        if exc.errno in (errno.EMFILE, errno.ENFILE):  # the process' limit, not the shard
            raise InputError(
                f"{where}: cannot open: too many open files (this process' limit, `ulimit "
                "-n`, is reached); raise it before training, e.g. `ulimit -n 65536`"
            ) from exc
        raise ShardFormatError(f"{where}: cannot open ({exc})") from exc
    except Exception as exc:
        raise ShardFormatError(f"{where}: cannot open ({exc})") from exc


def _check_nothing_after(
    read: Callable[[int, int], bytes], start: int, end: int, where: str
) -> None:
    """Refuse tar data after the end-of-archive block (found before byte `start`; `read(n,
    offset)` reads the file): the end block of archives joined with `cat`, or blocks of a
    shard zeroed by damage, would otherwise end it there, its rest unread and unsaid (tar
    pads an archive with zeros to whole records: those are fine)."""
    at = start
    while at < end and (chunk := read(min(1 << 20, end - at), at)):
        if chunk.strip(b"\0"):
            raise _data_after_end(where, start - 512)
        at += len(chunk)


def _data_after_end(where: str, block: int | None) -> ShardFormatError:
    at = "" if block is None else f" (byte {block})"
    return ShardFormatError(
        f"{where}: tar data after its end-of-archive block{at}: blocks zeroed by damage, or "
        "archives joined with cat (each one's end block ends the whole; join them with tar "
        "--concatenate)"
    )


def _drain(stream: Any, where: str, most: int = 1 << 20) -> None:
    """Read what a command or download still sends after the end-of-archive block (tar
    pads archives to whole records), up to `most` bytes: a command cut off mid-write by
    the close may exit non-zero, and that would be no failure of the shard. A local file
    is checked to hold nothing but zeros there (`_check_nothing_after`)."""
    if isinstance(stream, io.IOBase):  # a local file: nothing is cut off
        if isinstance(stream, io.BufferedReader) and stream.seekable():
            start, fd = stream.tell(), stream.fileno()
            _check_nothing_after(lambda n, at: os.pread(fd, n, at), start,
                                 os.fstat(fd).st_size, where)  # fmt: skip
        return
    left = most
    while left > 0 and (chunk := stream.read(min(left, 1 << 16))):
        if chunk.strip(b"\0"):
            raise _data_after_end(where, None)
        left -= len(chunk)


def _close_shard(stream: Any) -> str | None:
    """Close a shard's stream; None, or why the command behind it failed. webdataset runs
    `pipe:` URLs, and curl (with `-f`: a 404 fails) for `https://` ones, as a `Pipe`, whose
    `close` raises an OSError holding its arguments' repr for a non-zero exit status."""
    try:
        stream.close()
    except Exception as exc:
        status = getattr(stream, "status", None)
        if not isinstance(status, int):
            return f"cannot read ({type(exc).__name__}: {exc})"
        if status == -signal.SIGPIPE:  # it wrote on after the reader stopped: not its failure
            return None
        command = getattr(getattr(stream, "proc", None), "args", None)
        curl = isinstance(command, list) and command[:1] == ["curl"]
        what = "curl" if curl else "the command"
        how = f"was killed by signal {-status}" if status < 0 else f"exited with status {status}"
        meaning = CURL_STATUS.get(status, "") if curl else ""
        return f"cannot read: {what} {how}" + (
            f" ({meaning.format(stall=URL_STALL_S)})" if meaning else ""
        )
    return None


def _samples(
    stream: Any,
    where: str,
    skip: int = 0,
    folders: bool = False,
    members: frozenset[str] | None = None,
    end_required: bool = False,
) -> Iterator[tuple[str, dict[str, Any]]]:
    """(key, members by extension) of a tar stream's samples; the first `skip` come with
    their key alone, their members' data passed over unread, as are the members of other
    extensions than `members` when given; `folders`: keys keep the members' folders
    (`_sample_key`)."""
    last: str | None = None  # the key of the sample last begun, and how many were
    begun = 0

    def keep(name: str) -> bool:
        nonlocal last, begun
        member_key = _sample_key(name, folders)
        if member_key is not None and member_key != last:
            last, begun = member_key, begun + 1
        if members is not None and name.rsplit("/", 1)[-1].split(".", 1)[-1] not in members:
            return False
        return begun > skip

    key, sample, order = None, {}, _MemberOrder(where)
    try:
        filtered = skip or members is not None
        for name, data in _tar_members(stream, where, keep if filtered else None, end_required):
            member_key = _sample_key(name, folders)
            if member_key is None:
                continue
            if order.begins(name, member_key):
                if key is not None:
                    yield key, sample
                key, sample = member_key, {"__key__": member_key}
            if data is not None:
                sample[name.rsplit("/", 1)[-1].split(".", 1)[1]] = data
    except ShardFormatError as exc:
        # the sample begun is whole when the damaged member is the next sample's (a header
        # that cannot be read leaves that unknown: the sample is lost with the rest)
        damaged = None if exc.member is None else _sample_key(exc.member, folders)
        if key is not None and damaged is not None and damaged != key:
            yield key, sample
        raise
    if key is not None:
        yield key, sample


def time_span(folder: str | Path, index: SplitIndex) -> tuple[str, str] | None:
    """(the first frame's time of the split's first sample, the last frame's of its last),
    from their `.json` members' `times` (the time-series converters write samples in time
    order); None where they hold none. Reads two shards' metadata alone, the frames passed
    over; a shard that cannot be read gives None too (`inspect --verify` says why)."""
    if not index.shards:
        return None
    ends = []
    for shard, pick in ((index.shards[0], 0), (index.shards[-1], -1)):
        try:
            samples = list(iter_shard(Path(folder) / shard.name, members=frozenset({META_EXT})))
            times = json.loads(samples[pick][1][META_EXT]).get("times")
        except (ShardFormatError, OSError, IndexError, KeyError, ValueError, AttributeError):
            return None
        if not isinstance(times, list) or not times or not all(isinstance(t, str) for t in times):
            return None
        ends.append(times[pick])
    return ends[0], ends[1]


def verify_counts(folder: str | Path, index: SplitIndex) -> None:
    """Re-read every shard and check its sample count against the index."""
    for shard in index.shards:
        url = Path(folder) / shard.name  # a Path: never a `pipe:` command
        found = sum(1 for _ in iter_shard(url))
        if found != shard.num_samples:
            raise ShardFormatError(f"{url}: holds {found} samples, index says {shard.num_samples}")
