"""Helpers shared by the source readers."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import InputError
from ..format import require_file

# the seed project names its validation folder "validation"; stpdist calls the split "val"
SEED_SPLITS = {"train": "train", "validation": "val", "val": "val", "test": "test"}
NEAR_SPLITS = ("training", "testing", "valid", "eval", "evaluation", "dev")
"""Folder names that look like splits but are none (`shard images` refuses them at the top
of a folder without split folders: its test data would be trained on)."""


def split_folders(root: Path) -> dict[str, Path]:
    """The split folders of `root` by split: `train/`, `val/` or `validation/`, `test/`, in
    any case (`Train/`); two folders of one split (`val/` and `validation/`, `Test/` and
    `test/`) are refused, naming both."""
    found: dict[str, Path] = {}
    for path in sorted(root.iterdir()):
        split = SEED_SPLITS.get(path.name.lower())
        if split is None or not path.is_dir():
            continue
        if split in found:
            raise InputError(
                f"{root} has both {found[split].name}/ and {path.name}/ (the same split, "
                f"{split}): keep one"
            )
        found[split] = path
    return {split: found[split] for split in ("train", "val", "test") if split in found}


# a frame is at least this wide: a last axis this small after a larger one is channels last
MOST_CHANNELS_LAST = 4


def natural_key(name: str, *, any_case: bool = False) -> tuple[Any, ...]:
    """Sort key of a file name with its digit runs compared as numbers: `2.png` before
    `10.png`; zero-padded names (`0002.png`, `0010.png`) keep their text order. `any_case`:
    letters compared without their case (`Frame_2` between `frame_1` and `frame_3`, as file
    browsers list them; names alike but for case in their text order): `frame_key`."""
    text = name.casefold() if any_case else name
    parts = re.split(r"(\d+)", text)  # text, number, text, …: the same kinds at each position
    # each part tagged with its kind, so that where `seq`'s parts end and `seq2`'s number
    # follows, the tags compare (Python orders no text against a number): the shorter first
    keyed = ((1, int(p), "") if i % 2 else (0, 0, p) for i, p in enumerate(parts))
    return (*keyed, (-1, 0, name))


def frame_key(name: str) -> tuple[Any, ...]:
    """Sort key of the frame files of one sequence: natural order, letters of any case (a
    formats review: Frame_0, frame_1, Frame_2, frame_3 were read 0, 2, 1, 3). Sequences,
    whose order a seeded `--splits` deals, keep `natural_key`'s (the same split as before)."""
    return natural_key(name, any_case=True)


PNG_MODES = ("1", "L", "LA", "P", "PA", "RGB", "RGBA")
"""PIL modes of 8-bit (or fewer bits) PNGs: grayscale, palette, colour, with alpha."""
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _png_header(path: Path) -> bytes | None:
    """A PNG's signature and IHDR chunk (26 bytes: width, height, bit depth), read without
    decoding it; None: not a PNG by its first bytes."""
    with open(path, "rb") as handle:
        head = handle.read(26)
    if len(head) < 26 or head[:8] != PNG_SIGNATURE or head[12:16] != b"IHDR":
        return None
    return head


def _png_bit_depth(path: Path) -> int | None:
    """Bits per sample of a PNG, from its header (None: not a PNG by its first bytes). PIL
    reads 16-bit colour as "RGB", keeping the high byte: its mode alone does not tell."""
    head = _png_header(path)
    return None if head is None else head[24]


def png_size(path: Path) -> tuple[int, int] | None:
    """(height, width) of a PNG, from its header (None: not a PNG by its first bytes), read
    without decoding it (nor PIL's refusal of a huge image before it tells its size)."""
    head = _png_header(path)
    if head is None:
        return None
    return int.from_bytes(head[20:24], "big"), int.from_bytes(head[16:20], "big")


def png_8bit(path: Path, mode: str, reader: str, advice: str) -> np.ndarray:
    """A PNG frame of 8 bits or fewer, converted to `mode` ("L": H×W, "RGB": H×W×3, uint8).
    One of more bits, which the conversion would clip to 255 without a word, is refused
    naming the file, its bit depth and mode: `reader` says what reads 8-bit frames,
    `advice` what to do instead."""
    from PIL import Image

    require_file(path)  # a FIFO would block the reader
    try:
        with Image.open(path) as image:
            found, bits = image.mode, _png_bit_depth(path)
            if found in PNG_MODES and (bits is None or bits <= 8):
                return np.asarray(image.convert(mode))
    except Exception as exc:  # PIL's UnidentifiedImageError is an OSError
        raise InputError(f"{path}: not a readable PNG image ({exc})") from None
    what = f"a {bits}-bit PNG" if bits is not None else "not an 8-bit PNG"
    raise InputError(f"{path}: {what} (mode {found}); {reader} and would clip the rest: {advice}")


def listed(names: list[str], limit: int = 3, unit: str = "files") -> str:
    """`a, b, c` or `a, b, c, … (7 files)`: names in a message, the first `limit` of them."""
    more = f", … ({len(names)} {unit})" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def check_frames(
    shape: tuple[int, ...],
    dtype: np.dtype,
    where: str | Path,
    *,
    channels_last: bool | None = None,
) -> None:
    """Frames must be T×C×H×W or T×H×W (T×H×W×C with `channels_last`), none of them of size
    0, of a numeric dtype (bool, integers, floats); anything else is an error naming `where`.
    With `channels_last` False (a reader that has the `--channels-last` flag), T×C×H×W whose
    last axis (W) is at most 4 while C is larger is refused: that is T×H×W×C (frames a few
    pixels wide are not a thing); with `channels_last` True, likewise T×H×W×C whose H is at
    most 4 while C is larger: that is T×C×H×W. None: no such guess (layouts that are T×C×H×W
    by name)."""
    layout = "T×H×W×C" if channels_last else "T×C×H×W"
    if len(shape) not in (3, 4):
        raise InputError(f"{where}: expected {layout} or T×H×W, got shape {tuple(shape)}")
    if 0 in shape:
        raise InputError(f"{where}: shape {tuple(shape)} holds no frames (a dimension of size 0)")
    if np.dtype(dtype).kind not in "biuf":
        raise InputError(
            f"{where}: dtype {np.dtype(dtype)}, expected numbers (bool, integers or floats)"
        )
    if channels_last is False and len(shape) == 4 and shape[3] <= MOST_CHANNELS_LAST < shape[1]:
        _, c, h, w = shape
        raise InputError(
            f"{where}: shape {tuple(shape)} looks channels-last (T×H×W×C, {w} channels); read "
            f"as T×C×H×W it would be {c} channels of {h}×{w} pixels: pass --channels-last, "
            "or store the arrays T×C×H×W"
        )
    if channels_last and len(shape) == 4 and shape[1] <= MOST_CHANNELS_LAST < shape[3]:
        _, h, w, c = shape
        raise InputError(
            f"{where}: shape {tuple(shape)} looks T×C×H×W ({h} channel(s)); read as T×H×W×C "
            f"(--channels-last) it would be {c} channels of {h}×{w} pixels: drop "
            "--channels-last, or store the arrays T×H×W×C"
        )


def frame_CHW(shape: tuple[int, ...], *, channels_last: bool | None = None) -> tuple[int, ...]:
    """C×H×W of frames of `shape` (checked by `check_frames`)."""
    if len(shape) == 3:
        return (1, *shape[1:])
    return (shape[3], *shape[1:3]) if channels_last else tuple(shape[1:])


def as_TCHW(
    array: np.ndarray, where: str | Path, *, channels_last: bool | None = None
) -> np.ndarray:
    """T×C×H×W from T×C×H×W or T×H×W (T×H×W×C with `channels_last`), checked by
    `check_frames`."""
    check_frames(array.shape, array.dtype, where, channels_last=channels_last)
    if not array.dtype.isnative:  # a big-endian >f4 file: the same data as float32
        array = array.astype(array.dtype.newbyteorder("="))
    if array.ndim == 3:
        return array[:, None]
    return np.ascontiguousarray(np.moveaxis(array, -1, 1)) if channels_last else array


NPY_MAGIC = b"\x93NUMPY"
ZIP_MAGIC = b"PK\x03\x04"


def check_array_file(path: Path) -> None:
    """Refuse, naming `path`, a file that is not a .npy (or .npz) by its first bytes, before
    numpy reads it: numpy takes any other file for a pickle and says so, which misleads."""
    with open(path, "rb") as handle:
        head = handle.read(len(NPY_MAGIC))
    suffix = path.suffix.lower()  # SEQ0.NPY is an .npy file too
    expected = {".npy": NPY_MAGIC, ".npz": ZIP_MAGIC}.get(suffix)
    if expected is not None and not head.startswith(expected):
        kind = "an .npz (zip) archive" if suffix == ".npz" else "a NumPy .npy array"
        raise InputError(
            f"{path}: not a valid {path.suffix} file (its first bytes are not those of {kind}); "
            "expected a file written by numpy.save / numpy.savez"
        )


def array_shape(path: Path, key: str | None = None) -> tuple[int, ...] | None:
    """The shape of an .npy file's array, or of an .npz member's (`key`, default the only
    one), read from its header without its data; None when the file cannot tell (not an
    array file, several members and no key, a damaged header: `load_array` says why)."""
    try:
        return array_header(path, key)[0]
    except InputError:
        return None


def array_header(
    path: Path, key: str | None, key_option: str | None = "--key"
) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype (in this machine's byte order: a big-endian `>f4` file holds the
    same data as a float32 one) of a .npy file or an .npz member, from its header alone;
    an InputError naming the file when it cannot tell (`key_option` as for `load_array`)."""
    import zipfile

    require_file(path)  # a FIFO would block the reader
    check_array_file(path)
    try:
        if path.suffix.lower() == ".npy":
            array = np.load(path, mmap_mode="r", allow_pickle=False)
            return tuple(array.shape), array.dtype.newbyteorder("=")
        with zipfile.ZipFile(path) as archive:
            key = _member(
                [n[:-4] for n in archive.namelist() if n.endswith(".npy")], key, key_option
            )
            with archive.open(key + ".npy") as member:
                shape, _, dtype = member_header(member)
                return shape, dtype.newbyteorder("=")
    except Exception as exc:
        raise unreadable(path, exc) from exc


def member_header(member: Any) -> tuple[tuple[int, ...], bool, np.dtype]:
    """(shape, Fortran order, dtype as stored) from an .npy stream's header, the stream
    left at the array's first byte (format versions 1 and 2)."""
    version = np.lib.format.read_magic(member)
    read = (
        np.lib.format.read_array_header_1_0
        if version == (1, 0)
        else np.lib.format.read_array_header_2_0
    )
    shape, fortran, dtype = read(member)
    return tuple(shape), bool(fortran), np.dtype(dtype)


def load_array(path: Path, key: str | None = None, key_option: str | None = None) -> np.ndarray:
    """An array from .npy, or `key` (default: the only array) from .npz; errors name the file.

    `key_option`: the caller's option that names an .npz member (`--key`), named in the
    error when the file holds several arrays; None for callers without one."""
    require_file(path)  # a FIFO would block np.load
    check_array_file(path)
    try:
        if path.suffix.lower() == ".npy":
            return np.load(path, allow_pickle=False)
        with np.load(path, allow_pickle=False) as data:
            return data[_member(list(data.keys()), key, key_option)]
    except Exception as exc:
        raise unreadable(path, exc) from exc


def _member(names: list[str], key: str | None, key_option: str | None) -> str:
    """The .npz member to read: `key`, or the only one (`key_option` names the caller's
    option that chooses one, in the error when there are several)."""
    if key is None:
        if len(names) != 1:
            choose = (
                f"choose one with {key_option}" if key_option else "expected a file of one array"
            )
            raise ValueError(f"holds {len(names)} arrays {names}; {choose}")
        return names[0]
    if key not in names:
        raise ValueError(f"missing key '{key}' (has {names})")
    return key


def unreadable(path: Path, exc: Exception) -> InputError:
    """Why numpy could not read `path`, said for a user: a file cut short (a copy or
    download that did not finish) as such, with the bytes it holds and should hold."""
    short = _cut_short(Path(path))
    if short is not None:
        return InputError(f"{path}: cut short ({short}): a copy or download that did not finish?")
    if isinstance(exc, ValueError):
        return InputError(f"{path}: {_said(exc)}")
    return InputError(f"{path}: unreadable ({type(exc).__name__}: {exc})")


def _cut_short(path: Path) -> str | None:
    """How an .npy file falls short of the size its header gives, or that an .npz file is
    no whole zip archive (its directory, at the end, missing); None where neither shows."""
    import zipfile

    try:
        size = path.stat().st_size
    except OSError:
        return None
    if path.suffix.lower() == ".npz":
        return (
            None if zipfile.is_zipfile(path) else f"{size} bytes, with no zip directory at the end"
        )
    prefix = b""
    try:
        with open(path, "rb") as handle:
            prefix = handle.read(12)  # magic, version, header length (2 bytes; 4 from v2)
            handle.seek(0)
            shape, _, dtype = member_header(handle)
            start = handle.tell()
    except Exception:  # a header cut short, or a damaged one (said as numpy says it)
        wide = prefix[6:7] not in (b"\x01", b"")
        length = 8 + (4 if wide else 2)
        if len(prefix) >= length:
            length += int.from_bytes(prefix[8:length], "little")
        whole = size >= length and len(prefix) >= min(length, 12)
        return None if whole else f"{size} bytes, not even a whole .npy header"
    if dtype.hasobject:  # pickled: no size to expect (refused as objects)
        return None
    expected = start + math.prod(shape) * dtype.itemsize
    return f"{size} bytes, its header says {expected}" if size < expected else None


def _said(exc: ValueError) -> str:
    """numpy's ValueError in a user's words: an object array's ("Object arrays cannot be
    loaded when …", "… can't be memory-mapped: Python objects in dtype") says what it is."""
    if "pickle" in str(exc).lower() or "python objects" in str(exc).lower():
        return (
            "holds Python objects (an object array: sequences of different lengths, or "
            "values of mixed types), expected an array of numbers: save each sequence as "
            "a numeric array of its own"
        )
    return str(exc)


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


class ArrayRows:
    """An .npy file's array, or an .npz member's, read a few rows (along its first axis) at
    a time: through a memory map for .npy; for .npz, from the member's stream in the
    archive, which decompresses on the way to a read and keeps only what was asked for.
    Memory is bounded by a read, not by the file: a file of many sequences is never held
    whole. Reads come in this machine's byte order. No file stays open between reads but
    an .npz member's stream, until `close` (a folder of thousands of inputs held a
    descriptor each); reads in increasing order decompress a member once a pass."""

    def __init__(self, path: Path, key: str | None = None, key_option: str | None = None) -> None:
        import zipfile

        # refuses non-array files, naming them
        self.shape, dtype = array_header(path, key, key_option)
        self.path = path
        self._whole: np.ndarray | None = None  # an array whose rows are not contiguous
        self._name, self._start, self._stream = "", 0, None
        stored: np.dtype | None = None
        if path.suffix.lower() != ".npy":
            with zipfile.ZipFile(path) as archive:
                names = [n for n in archive.namelist() if n.endswith(".npy")]
                self._name = f"{key}.npy" if key else names[0]  # array_header checked it
                with archive.open(self._name) as member:
                    _, fortran, stored = member_header(member)
                    self._start = member.tell()
            if fortran or stored.hasobject:  # not rows one after another: read whole
                self._whole = load_array(path, key)
        self.dtype = dtype  # this machine's byte order, as every read returns
        self._stored = stored

    def __len__(self) -> int:
        return self.shape[0]

    def rows(self, start: int, stop: int) -> np.ndarray:
        """Rows `start`…`stop` - 1, a copy in this machine's byte order."""
        mapped = self._mapped()
        if mapped is not None:
            return _native(np.array(mapped[start:stop]))
        values = math.prod(self.shape[1:])
        return self._read(start * values, (stop - start) * values, (stop - start, *self.shape[1:]))

    def last(self, row: int | None, count: int) -> np.ndarray:
        """The last `count` rows (`row` None), or the last `count` entries of row `row`'s
        first axis (a sequence's newest frames in an N×T×… array): read alone."""
        mapped = self._mapped()
        if mapped is not None:
            return _native(np.array(mapped[-count:] if row is None else mapped[row, -count:]))
        if row is None:
            return self.rows(len(self) - count, len(self))
        inner = self.shape[1:]
        per = math.prod(inner[1:])
        first = row * math.prod(inner) + (inner[0] - count) * per
        return self._read(first, count * per, (count, *inner[1:]))

    def close(self) -> None:
        """Close an .npz member's stream (reopened by the next read)."""
        if self._stream is not None:
            self._stream[2].close()
            self._stream[1].close()
            self._stream = None

    def _mapped(self) -> np.ndarray | None:
        """The whole array as read whole, or an .npy's memory map (opened for this read:
        its descriptor goes with it), or None for an .npz member's stream."""
        if self._whole is not None:
            return self._whole
        if self._stored is None:
            return np.load(self.path, mmap_mode="r", allow_pickle=False)
        return None

    def _read(self, first: int, count: int, shape: tuple[int, ...]) -> np.ndarray:
        """`count` values from value `first` of the member, as an array of `shape`."""
        import os
        import zipfile

        assert self._stored is not None
        if self._stream is None or self._stream[0] != os.getpid():  # one stream a process
            archive = zipfile.ZipFile(self.path)
            self._stream = (os.getpid(), archive, archive.open(self._name))
        stream, size = self._stream[2], self._stored.itemsize
        try:
            stream.seek(self._start + first * size)
            data = stream.read(count * size)
        except Exception as exc:
            raise InputError(f"{self.path}: unreadable ({type(exc).__name__}: {exc})") from exc
        if len(data) != count * size:
            raise InputError(f"{self.path}: cut short: its array {self.shape} ends early")
        return _native(np.frombuffer(data, self._stored).reshape(shape).copy())


def _native(array: np.ndarray) -> np.ndarray:
    """`array` in this machine's byte order (a big-endian `>f4` file's values as float32)."""
    return array if array.dtype.isnative else array.astype(array.dtype.newbyteorder("="))
