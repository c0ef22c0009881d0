"""A folder of per-sequence `.npy` / `.npz` arrays (T×C×H×W or T×H×W): users' own data.

Split sub-folders (`train`, `val`/`validation`, `test`) become splits; a folder that has
them must hold nothing else to convert (no other sub-folder of arrays, no loose arrays):
what would be left out is refused, named. A folder without them becomes the single split
`split`, or, with `split_sizes` (`--splits
train=0.8,val=0.1,test=0.1`: fractions summing to 1, or counts summing to the number of
files; one split may be -1, the rest), is cut into several: whole files (sequences) per
split, in an order shuffled by `seed`, so the same seed gives the same splits, no file
lands in two and none is left out.

With `num_frames` (`--frames N --stride S`) the input is instead one long series, a file or
a folder of consecutive chunks (T×C×H×W or T×H×W each, in name order), cut into windows
(see `series.py`): never across a gap in the timestamps (`.npz` member `time_key`, as
datetime64 or ISO strings; without it the chunks are one gap-free series), split by time
(`val_from`, `test_from`: dates, or frame indexes without timestamps).

The value scale (`--value-scale`) defaults to 255 for uint8 arrays, else 1. Training scales
frames to stored / value_scale and, by default, clamps predictions to [0, 1]; data that a
guessed scale leaves outside [0, 1] (floats of 0–100, int16 counts) is refused once the
first split's statistics are in, naming the range seen and the option that sets the scale.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ...console import counted, log
from ...errors import InputError, MissingInput
from ..format import SERIES_INDEX, SplitIndex, require_file
from .common import (
    SEED_SPLITS,
    array_header,
    array_shape,
    as_TCHW,
    check_array_file,
    check_frames,
    frame_CHW,
    key_of,
    listed,
    load_array,
    natural_key,
    split_counts,
    split_folders,
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


@dataclass
class GenericArrays:
    root: str
    key: str | None = None
    """Array name inside .npz files (default: the only one)."""
    value_scale: float | None = None
    """Stored value range (default: 255 for uint8 arrays, else 1)."""
    split: str = "train"
    split_given: bool = False
    """Whether `--split` was given (it names the split of a flat folder only)."""
    split_sizes: dict[str, float] | None = None
    """Cut a flat folder into these splits: fractions summing to 1 or counts summing to the
    number of files (one split may be -1: the rest); see `split_counts`."""
    seed: int = 0
    """Seeds the file order that `split_sizes` cuts."""
    num_frames: int | None = None
    """Cut one long series into windows of this many frames (None: a file is a sequence)."""
    stride: int = 1
    """Frames between window starts."""
    time_key: str | None = None
    """`.npz` member holding each frame's timestamp (series mode)."""
    step: str | None = None
    """Expected time step (e.g. `6h`; default: the most common spacing of the record)."""
    val_from: str | None = None
    """First date (or frame index) of the validation split (series mode)."""
    test_from: str | None = None
    """First date (or frame index) of the test split (series mode)."""
    channels_last: bool = False
    """Arrays are T×H×W×C (else T×C×H×W; T×H×W either way). Without it, T×C×H×W whose W is
    at most 4 while C is larger is refused as channels-last (see `check_frames`)."""
    per_file: bool = False
    """Series mode on a folder: each file is a separate clip, windows never span two (else
    the files are consecutive chunks of one series)."""
    name: str = "arrays"
    grid: float | None = None
    scale_given: bool | None = None
    """Whether `value_scale` was given (set at construction: None is guessed in `splits`)."""
    guessed_from: str = ""
    """The dtype of the first file, which a guessed `value_scale` was guessed from."""
    chunks: list[tuple[str, int, int]] | None = None
    """Series mode, set by `splits`: (file, first frame, frame count) per chunk."""
    times: Any = None
    """Series mode, set by `splits`: the time of every frame."""
    key_unit: str = "m"
    """Series mode, set by `splits`: time unit of the keys (minutes unless steps are finer)."""

    def __post_init__(self) -> None:  # before any file is read
        if self.scale_given is None:
            self.scale_given = self.value_scale is not None
        if self.seed < 0:
            raise InputError(f"--seed {self.seed}: expected an integer ≥ 0")

    def _files(self, folder: Path, *, natural: bool = False) -> list[str]:
        """The .npy/.npz files of `folder` (any case: SEQ0.NPY too), by name; `natural`: digit
        runs compared as numbers (`chunk2` before `chunk10`: the order of a series' chunks)."""
        found = [folder / name for name in _arrays_in(folder)]
        if natural:
            found.sort(key=lambda p: natural_key(p.name))
        return [str(require_file(p)) for p in found]  # a FIFO would block the reader

    def splits(self) -> dict[str, list[Any]]:
        if self.num_frames is not None:
            return self._series_splits()
        root = Path(self.root)
        if root.is_file():
            raise InputError(
                f"{root} is a file; shard arrays takes a folder of per-sequence .npy/.npz "
                "files, or one long series with --frames N (windows of N frames)"
            )
        if not root.is_dir():
            raise MissingInput(f"{root}: no such folder")
        by_split = split_folders(root)  # train/, val/ or validation/, test/, in any case
        subs = list(by_split.values())
        if subs and self.split_sizes:
            raise InputError(f"{root} already has split folders; --splits cuts a flat folder")
        if subs and self.split_given:
            raise InputError(
                f"{root} already has split folders ({', '.join(p.name + '/' for p in subs)}); "
                f"--split {self.split} names the one split of a flat folder: drop it"
            )
        _check_nothing_left_out(root, subs)
        out = {split: self._files(sub) for split, sub in by_split.items()} or self._cut(root)
        listed = [f for files in out.values() for f in files]
        _refuse_one_file_twice(listed)
        if listed:
            self._say_many_channels(Path(listed[0]))
        if self.key is not None and listed and not any(f.lower().endswith(".npz") for f in listed):
            raise InputError(
                f"--key {self.key} names an array inside .npz files; {root} holds .npy files "
                "only (one array each): drop --key"
            )
        if self.value_scale is None:
            first = next((f for files in out.values() for f in files), None)
            if first is None:
                raise MissingInput(f"{root}: no .npy/.npz files")
            array = as_TCHW(load_array(Path(first), self.key, key_option="--key"), first,
                            **self._layout)  # fmt: skip
            self.value_scale = 255.0 if array.dtype == np.uint8 else 1.0
            self.guessed_from = str(array.dtype)
            if array.dtype == np.uint8 and array.max() == 1:  # a mask, or 0/1 labels (not a
                # dark first clip, all 0: a diff review)
                log.warning(
                    "%s: uint8 values 0…%d, read as 8-bit pictures (value scale 255: "
                    "they train as 0…%.4f); for masks or labels pass --value-scale 1",
                    first, int(array.max()), int(array.max()) / 255,
                )  # fmt: skip
            # its first file already out of range: said now, not after a whole split
            self._check_file_range(array, first)
        return out

    def _say_many_channels(self, first: Path) -> None:
        """A first file of T×C×H×W with more channels than frames of pictures have: said,
        with what it is read as, for it is often N×T×H×W, many sequences in one file (a
        formats review: 50 sequences of 20 frames became one of 50 frames of 20 channels,
        silently). Not refused: weather and sensor stacks have many channels."""
        shape = array_shape(first, self.key)
        if shape is None or len(shape) != 4 or self.channels_last or shape[1] <= 4:
            return
        t, c = shape[:2]
        log.warning(
            "%s: shape %s read as T×C×H×W: %d frames of %d channels; if it holds %d "
            "sequences of %d frames (N×T×H×W), save each sequence as a file of its own "
            "(for i, s in enumerate(a): np.save(f'seq{i}.npy', s))",
            first, tuple(shape), t, c, t, c,
        )  # fmt: skip

    def _check_file_range(self, frames: np.ndarray, where: str | Path) -> None:
        """A file's values against a guessed value scale, naming it (`check_frames_range`):
        the split's statistics, checked at its end, cannot say which file."""
        check_frames_range(frames, self.value_scale, self.guessed_from, f"{where}:",
                           given=bool(self.scale_given))  # fmt: skip

    def check_index(self, index: SplitIndex) -> None:
        """Refuse values that the guessed value scale leaves outside [0, 1]: training scales
        frames by it and clamps predictions to [0, 1], so they would be garbage. Read from the
        statistics the writer gathered (min/max of stored / value_scale, per channel). With
        a scale given, a warning: such data trains only standardised."""
        if not index.min or not index.max:
            return
        self._check_range(min(index.min), max(index.max), index.value_scale, index.dtype,
                          f"{self.root}: {index.split}")  # fmt: skip

    def _check_range(self, low: float, high: float, scale: float, dtype: str, where: str) -> None:
        """`check_index`'s check of scaled values [low, high] of `where` (a split, or a
        file, checked before anything is written)."""
        check_value_range(low, high, scale, dtype, where, given=bool(self.scale_given))

    def _cut(self, root: Path) -> dict[str, list[str]]:
        files = self._files(root)
        if not self.split_sizes:
            return {self.split: files}
        counts = split_counts(self.split_sizes, len(files), str(root), allow_empty=False)
        order = np.random.default_rng(self.seed).permutation(len(files))
        out, start = {}, 0
        for split, count in counts.items():
            out[split] = sorted(files[i] for i in order[start : start + count])
            start += count
        return out

    # ------------------------------------------------------------------ one long series
    def _series_splits(self) -> dict[str, list[Any]]:
        root = Path(self.root)
        if root.is_dir():
            files = self._files(root, natural=True)
        elif root.is_file():
            files = [str(root)]
        else:
            raise MissingInput(f"{root}: no such file or folder")
        if not files:
            raise MissingInput(f"{root}: no .npy/.npz files")
        if self.split_sizes:
            raise InputError(
                "--splits cuts whole files; a series is split by --val-from/--test-from"
            )
        cut = self.val_from is not None or self.test_from is not None
        if self.split_given and self.split != "train" and cut:  # train: the default, spelt out
            raise InputError(
                f"--split {self.split} names the one split of a series; with --val-from or "
                "--test-from its windows go to train, val and test: drop one or the other"
            )
        if self.key is None and self.time_key is not None and files[0].lower().endswith(".npz"):
            check_array_file(require_file(files[0]))
            with np.load(files[0], allow_pickle=False) as data:
                others = [n for n in data.keys() if n != self.time_key]
            if len(others) == 1:  # the frames: the one member besides the timestamps
                self.key = others[0]
        chunks, times, frame, dtype, frame_shape = [], [], 0, None, None
        for file in files:
            shape, chunk_dtype = array_header(Path(file), self.key)
            check_frames(shape, chunk_dtype, file, channels_last=self.channels_last)
            here = frame_CHW(shape, channels_last=self.channels_last)  # C×H×W
            if dtype is not None and (chunk_dtype != dtype or here != frame_shape):
                raise InputError(
                    f"{file}: frames C×H×W {here} {chunk_dtype} differ from the first "
                    f"chunk's ({files[0]}) {frame_shape} {dtype}"
                )
            dtype, frame_shape = chunk_dtype, here
            if self.time_key is not None:
                stamps = as_times(load_array(Path(file), self.time_key, "--time-key"), file)
                if len(stamps) != shape[0]:
                    raise InputError(
                        f"{file}: {len(stamps)} timestamps in '{self.time_key}' for {shape[0]} frames"
                    )
                times.append(stamps)
            chunks.append((file, frame, shape[0]))
            frame += shape[0]
        self.chunks = chunks
        timestamps = self.time_key is not None
        self.times = np.concatenate(times) if timestamps else np.arange(frame)
        if timestamps:
            _check_chunk_order(chunks, self.times)
        self.key_unit = stamp_unit(self.times)  # keys need seconds for 30-second steps
        if self.value_scale is None:
            self.value_scale = 255.0 if dtype == np.uint8 else 1.0
        self._say_how_files_join(root, files, timestamps)
        windows = plan_windows(
            self.times,
            self.num_frames,
            self.stride,
            step=parse_step(self.step) if timestamps else None,
            val_from=parse_bound(self.val_from, timestamps),
            test_from=parse_bound(self.test_from, timestamps),
            where=str(root),
            clips=[first for _, first, _ in chunks] if self.per_file else None,
        )
        firsts = [first for _, first, _ in chunks]
        grouped: dict[str, dict[int, list[int]]] = {}
        for window in windows:
            chunk = int(np.searchsorted(firsts, window.start, side="right")) - 1
            grouped.setdefault(window.split, {}).setdefault(chunk, []).append(window.start)
        # a .npy chunk is read in windows: items of at most ITEM_BYTES of windows each, so
        # memory stays flat however large the file; an .npz member is read whole, once
        frame_bytes = math.prod(frame_shape) * np.dtype(dtype).itemsize
        order = ("train", "val", "test")
        named = {"train": self.split}  # `--split NAME`: the one split of a series uncut
        return {
            named.get(split, split): [
                (chunk, run)
                for chunk, starts in grouped[split].items()
                for run in (
                    group_starts(starts, self.num_frames, frame_bytes)
                    if chunks[chunk][0].lower().endswith(".npy")
                    else [starts]
                )
            ]
            for split in order
            if split in grouped
        }

    def _say_how_files_join(self, root: Path, files: list[str], timestamps: bool) -> None:
        """One line when several files are read as one series without `--per-file` or
        timestamps: a window then spans two files, which is right for consecutive chunks
        of one record and wrong for separate clips (it joined two unrelated clips)."""
        if self.per_file or timestamps or len(files) < 2:
            return
        log.warning(
            "%s: %d files read as consecutive chunks of one series in name order (%s, %s, "
            "…): a window may span two of them; if each file is a clip of its own, pass "
            "--per-file",
            root,
            len(files),
            Path(files[0]).name,
            Path(files[1]).name,
        )

    def _frames(self, first: int, stop: int) -> np.ndarray:
        """Frames [first, stop) of the series, read from the chunks that hold them."""
        parts = []
        for file, offset, count in self.chunks:
            if offset + count <= first or offset >= stop:
                continue
            path = Path(file)
            data = (
                np.load(path, mmap_mode="r", allow_pickle=False)
                if path.suffix.lower() == ".npy"
                else load_array(path, self.key, "--key")
            )
            frames = as_TCHW(data[max(first - offset, 0) : stop - offset], path, **self._layout)
            parts.append(frames)
        return np.concatenate(parts) if len(parts) > 1 else np.asarray(parts[0])

    def _load_windows(self, item: tuple[int, list[int]]) -> list[tuple[str, np.ndarray, dict]]:
        chunk, starts = item
        span = self._frames(starts[0], starts[-1] + self.num_frames)
        file = Path(self.chunks[chunk][0])
        out = []
        for start in starts:
            frames = np.array(span[start - starts[0] : start - starts[0] + self.num_frames])
            times = iso_times(self.times[start : start + self.num_frames], self.key_unit)
            # the first frame's time, written as `times` are (it was numpy's nanoseconds)
            first = times[0] if times is not None else str(self.times[start])
            meta = {"source": file.name, "start": first, SERIES_INDEX: start}
            if times is not None:  # a --time-key's: predictions carry each frame's time
                meta["times"] = times
            key = f"{key_of(file)}_{stamp(self.times[start], self.key_unit)}"
            out.append((key, frames, meta))
        return out

    def describe(self, item: Any) -> str:
        """The file a work item reads (for messages)."""
        if self.num_frames is None:
            return str(item)
        chunk, starts = item
        return f"{self.chunks[chunk][0]} (windows from frame {starts[0]})"

    def load(self, item: Any) -> list[tuple[str, np.ndarray, dict]]:
        if self.num_frames is not None:
            return self._load_windows(item)
        path = Path(item)
        frames = as_TCHW(load_array(path, self.key, "--key"), path, **self._layout)
        self._check_file_range(frames, path)
        return [(key_of(path), frames, {"source": path.name})]

    @property
    def _layout(self) -> dict[str, bool]:
        return {"channels_last": self.channels_last}

    def args(self) -> dict[str, Any]:
        return {
            "root": str(self.root),
            "key": self.key,
            "value_scale": self.value_scale,
            "split_sizes": self.split_sizes,
            "seed": self.seed,
            **({"channels_last": True} if self.channels_last else {}),
            **(
                {
                    "num_frames": self.num_frames,
                    "stride": self.stride,
                    "time_key": self.time_key,
                    "step": self.step,
                    "val_from": self.val_from,
                    "test_from": self.test_from,
                    **({"per_file": True} if self.per_file else {}),
                }
                if self.num_frames is not None
                else {}
            ),
        }


def check_frames_range(
    frames: np.ndarray, scale: float | None, guessed_from: str, where: str, *, given: bool
) -> None:
    """One file's or sample's values against a value scale guessed (not `given`: the split's
    warning alone) from the first one's dtype `guessed_from` (`check_value_range`). Not
    frames of another dtype (the writer refuses the mix as such), unless both are floats
    (float64 is stored as float32: no mix to refuse); not integers whose whole range fits
    the scale (uint8 with 255); NaN is said where it is written."""
    if given or scale is None or not frames.size:
        return
    guessed = np.dtype(guessed_from or frames.dtype)
    if frames.dtype != guessed and not (frames.dtype.kind == guessed.kind == "f"):
        return
    kind = frames.dtype.kind
    if kind == "b" or (kind in "iu" and 0 <= np.iinfo(frames.dtype).min
                       and np.iinfo(frames.dtype).max <= scale):  # fmt: skip
        return
    if not np.isfinite(frames).all():
        return
    low, high = float(frames.min()) / scale, float(frames.max()) / scale
    check_value_range(low, high, scale, str(frames.dtype), where, given=False)


def check_value_range(
    low: float, high: float, scale: float, dtype: str, where: str, *, given: bool
) -> None:
    """Scaled values [low, high] of `where` against [0, 1]: outside it, with a value scale
    `given` by the user, a warning (right for standardised training only); with a guessed
    one, an InputError that says which --value-scale would fit."""
    if low >= 0 and high <= 1:
        return
    seen = f"{low * scale:g}…{high * scale:g}"
    if given:  # the user's choice, right for standardised training only
        log.warning(
            "%s values span %s, outside [0, %g] (--value-scale %g): training takes "
            "them only with data.normalize: standardize (else it refuses them); for "
            "[0, 1] training give a --value-scale at or above the largest value",
            where, seen, scale, scale,
        )  # fmt: skip
        return
    keep = "or --value-scale 1 to keep the units and train with data.normalize: standardize"
    if low < 0:  # no scale maps negative values into [0, 1]
        fix = f"shift them to be ≥ 0 before converting, {keep}"
    else:  # high > 1: a scale at or above the largest stored value
        suggested = _suggested_scale(high * scale, dtype)
        fix = f"pass --value-scale {suggested:g} (≥ the largest value), {keep}"
    raise InputError(
        f"{where} values span {seen} ({dtype}), outside [0, {scale:g}], the value scale "
        f"guessed for {dtype} data (training divides by it and clamps predictions to "
        f"[0, 1]): {fix}"
    )


def _suggested_scale(largest: float, dtype: str) -> float:
    """A value scale for data whose largest stored value is `largest`: 255 for integers of
    8 bits (saved as int64, as np.save of a list of ints does), 65535 for uint16 (images,
    as the docs advise), else a power of ten at or above it."""
    kind = np.dtype(dtype)
    if kind.kind in "iu" and largest <= 255:
        return 255.0
    if kind == np.uint16:
        return 65535.0
    return float(10 ** math.ceil(math.log10(largest)))


def _check_chunk_order(chunks: list[tuple[str, int, int]], times: np.ndarray) -> None:
    """Times increase through the chunks in the order they are read (name order, digit runs
    as numbers): within each chunk, and from each chunk's last frame to the next one's
    first. A chunk that breaks it is refused naming its file (and the chunk before it)."""
    unit = stamp_unit(times)

    def shown(frame: int) -> str:
        return np.datetime_as_string(times[frame], unit=unit)

    previous = None  # (file, last frame) of the chunk before
    for file, first, count in chunks:
        bad = np.flatnonzero(np.diff(times[first : first + count]) <= np.timedelta64(0))
        if len(bad):
            i = int(bad[0])
            raise InputError(
                f"{file}: times do not increase at frame {i + 1} ({shown(first + i)} then "
                f"{shown(first + i + 1)}): remove the repeated or misplaced frames"
            )
        if previous is not None and count and times[first] <= times[previous[1]]:
            raise InputError(
                f"{file}: times go back: it starts at {shown(first)}, not after the end of "
                f"{previous[0]} ({shown(previous[1])}), the chunk before it in name order "
                "(digit runs compared as numbers: chunk2 before chunk10); chunks are read in "
                "name order: name them in time order, or remove the time steps they both hold"
            )
        if count:
            previous = (file, first + count - 1)


def _refuse_one_file_twice(files: list[str]) -> None:
    """Refuse two names of one file (a symbolic or hard link beside its target): it would
    be converted twice, as two sequences, and could land in two splits (a test sequence
    that is also a training one). Copies are other files: not seen here."""
    seen: dict[tuple[int, int], str] = {}
    for name in files:
        found = os.stat(name)
        identity = (found.st_dev, found.st_ino)
        if identity in seen:
            raise InputError(
                f"{seen[identity]} and {name} are one file (a link to it): it would be "
                "converted twice, as two sequences, perhaps into two splits; remove one"
            )
        seen[identity] = name


def _arrays_in(folder: Path) -> list[str]:
    """Names of the .npy/.npz files in `folder` (not opened); hidden ones (`.name`, such as
    the `._name.npy` copies macOS leaves on shared drives) are not data."""
    return [
        p.name
        for p in sorted(folder.iterdir())
        if p.suffix.lower() in (".npy", ".npz") and not p.name.startswith(".")
    ]


def _check_nothing_left_out(root: Path, subs: list[Path]) -> None:
    """Every array under `root` must be converted: arrays in sub-folders that are not split
    folders, or loose beside split folders, would be left out silently; `val/` beside
    `validation/` would be one split twice. Refused, naming them."""
    names = [p.name for p in subs]
    others = [
        f"{p.name}/ ({counted(len(_arrays_in(p)), 'file')})"
        for p in sorted(root.iterdir())
        if p.is_dir() and p not in subs and not p.name.startswith(".") and _arrays_in(p)
    ]
    loose = _arrays_in(root) if subs else []  # without split folders they are the data
    if not others and not loose:
        return
    left = []
    if others:
        left.append(f"the arrays in {', '.join(others)}")
    if loose:
        left.append(f"the loose files {listed(loose)}")
    recognised = ", ".join(f"{name}/" for name in SEED_SPLITS) + " (in any case)"
    found = f"has split folders {', '.join(f'{n}/' for n in names)}" if subs else "is flat"
    raise InputError(
        f"{root} {found}; {' and '.join(left)} would be left out (split folders are named "
        f"{recognised}): move every array into a split folder, or all into {root} itself "
        "(cut with --splits)"
    )
