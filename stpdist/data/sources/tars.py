"""Tar shards of other tools (webdataset's `TarWriter`/`ShardWriter`, GNU tar, Python's
`tarfile`): each sample's `.npy` member (a sequence T×C×H×W, T×H×W×C or T×H×W) written
again as stpdist shards, with the splits, statistics and checks of every conversion.

The source is a folder of `.tar` files (or one `.tar` file): with split sub-folders
(`train/`, `val/` or `validation/`, `test/`) those are the splits, else the folder is the
one split `--split` (default train). A sample is the members of one key: the member's
path up to the first dot of its file name, as webdataset keys it (`clip/0001.npy`: key
`clip/0001`, stored as `clip_0001`, since a stored key holds no slash or dot; a leading
`./` is left out). Keys must be unique in a split (one in two tars is refused, naming both).
Its frames are its one
`.npy` member, or the one `--member` names (`video.npy`, `frames.npy`, …). The value scale
is `--value-scale`, or guessed from the first sample's dtype (255 for uint8, else 1), as
`shard arrays` does; values a guessed scale leaves outside [0, 1] are refused, naming the
tar and the sample. Reading stops at nothing the stream readers would not: a member cut
short, a compressed tar, members of a sample apart from each other are each an error
naming the tar (see `format.iter_shard`).
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import InputError, MissingInput
from ..format import ShardFormatError, iter_shard, require_file
from .common import SEED_SPLITS, as_TCHW, listed, natural_key
from .generic import check_frames_range, check_value_range


@dataclass
class TarSamples:
    root: str
    member: str | None = None
    """The extension of the member holding a sample's frames (default: its only .npy)."""
    value_scale: float | None = None
    """Stored value range (default: 255 for uint8 frames, else 1)."""
    split: str = "train"
    """The split of a folder without split sub-folders (or of one .tar file)."""
    split_given: bool = False
    channels_last: bool = False
    name: str = "tars"
    grid: float | None = None
    scale_given: bool | None = None
    guessed_from: str = ""
    """The dtype of the first sample, which a guessed `value_scale` was guessed from."""

    def __post_init__(self) -> None:
        if self.scale_given is None:
            self.scale_given = self.value_scale is not None
        if self.member is not None and (not self.member or "/" in self.member):
            raise InputError(f"--member {self.member!r}: expected a member's extension (video.npy)")

    def splits(self) -> dict[str, list[Any]]:
        root = Path(self.root)
        if root.is_file():
            out = {self.split: [str(require_file(root))]}
        elif root.is_dir():
            out = self._folders(root)
        else:
            raise MissingInput(f"{root}: no such file or folder")
        if self.value_scale is None:
            tar, key, frames = self._first_sample(out)
            self.value_scale = 255.0 if frames.dtype == np.uint8 else 1.0
            self.guessed_from = str(frames.dtype)
            self._check_range(frames, f"{tar}: sample {key}")  # before any is written
        return out

    def _first_sample(self, out: dict[str, list[str]]) -> tuple[str, str, np.ndarray]:
        """(tar, key, frames) of the first sample of the first tar that holds one."""
        for tar in (t for tars in out.values() for t in tars):
            samples = self._samples(tar)
            try:
                found = next(samples, None)
            finally:
                samples.close()  # the tar closed now
            if found is not None:
                return tar, found[0], found[1]
        raise MissingInput(f"{self.root}: its tars hold no sample")

    def _folders(self, root: Path) -> dict[str, list[str]]:
        subs = [p for p in sorted(root.iterdir()) if p.is_dir() and p.name in SEED_SPLITS]
        if {"val", "validation"} <= {p.name for p in subs}:
            raise InputError(f"{root} has both val/ and validation/ (the same split): keep one")
        if subs and self.split_given:
            raise InputError(
                f"{root} has split folders ({', '.join(p.name + '/' for p in subs)}); --split "
                f"{self.split} names the one split of a flat folder: drop it"
            )
        others = [p.name + "/" for p in sorted(root.iterdir()) if p.is_dir()
                  and p.name not in SEED_SPLITS and not p.name.startswith(".") and _tars_in(p)]  # fmt: skip
        if others:
            recognised = ", ".join(f"{name}/" for name in SEED_SPLITS)
            raise InputError(
                f"{root}: the tars in {listed(others)} would be left out (split folders are "
                f"named {recognised}; a folder without them holds its tars itself)"
            )
        loose = _tars_in(root)
        if subs and loose:
            raise InputError(
                f"{root} has split folders and the loose tars {listed(loose)}, which would be "
                "left out: move them into a split folder"
            )
        out = {SEED_SPLITS[p.name]: [str(p / t) for t in _tars_in(p)] for p in subs}
        out = {s: out[s] for s in ("train", "val", "test") if s in out}
        if not subs:
            out = {self.split: [str(root / t) for t in loose]}
        empty = [split for split, tars in out.items() if not tars]
        if empty:
            where = (
                root / next(p.name for p in subs if SEED_SPLITS[p.name] == empty[0])
                if subs
                else root
            )
            raise MissingInput(f"{where}: no .tar files")
        return out

    def load(self, item: Any) -> list[tuple[str, np.ndarray, dict]]:
        return list(self._samples(item))

    def _samples(self, tar: str) -> Any:
        path = Path(tar)
        named: dict[str, str] = {}  # key → the member name that gave it
        try:
            for found, sample in iter_shard(path, folders=True, end_required=True):
                key = re.sub(r"[/.]", "_", found)  # a key holds no slash or dot
                if named.get(key, found) != found:  # said by the writer without the names
                    raise InputError(
                        f"{tar}: samples {named[key]} and {found} both give the sample key "
                        f"{key!r} (a key holds no '/' or '.'): rename one"
                    )
                named[key] = found
                where = f"{tar}: sample {found}"
                frames = as_TCHW(_decode(sample, self.member, where), where,
                                 channels_last=self.channels_last)  # fmt: skip
                self._check_range(frames, where)
                yield key, frames, {"source": _relative(path, Path(self.root))}
        except ShardFormatError as exc:
            raise InputError(str(exc)) from None

    def _check_range(self, frames: np.ndarray, where: str) -> None:
        """A sample's values against a guessed value scale, as `shard arrays` checks a file
        (the first sample, before the guess: checked once it is made)."""
        check_frames_range(frames, self.value_scale, self.guessed_from, f"{where}:",
                           given=bool(self.scale_given))  # fmt: skip

    def check_index(self, index: Any) -> None:
        """The split's values against the value scale once written: a given scale that
        leaves them outside [0, 1] is said (as `shard arrays` says it)."""
        if index.min and index.max:
            check_value_range(min(index.min), max(index.max), index.value_scale, index.dtype,
                              f"{self.root}: {index.split}", given=bool(self.scale_given))  # fmt: skip

    def describe(self, item: Any) -> str:
        return str(item)

    def args(self) -> dict[str, Any]:
        return {
            "root": str(self.root),
            "member": self.member,
            "value_scale": self.value_scale,
            **({"channels_last": True} if self.channels_last else {}),
        }


def _tars_in(folder: Path) -> list[str]:
    """The `.tar` files of `folder` (any case), in natural name order."""
    found = [  # not macOS's `._<name>` files beside them
        p.name
        for p in folder.iterdir()
        if p.suffix.lower() == ".tar" and not p.name.startswith(".") and p.is_file()
    ]
    return sorted(found, key=natural_key)


def _relative(path: Path, root: Path) -> str:
    """`path` as a source's samples record it: from the folder converted (train/a.tar)."""
    try:
        return path.relative_to(root).as_posix() if root.is_dir() else path.name
    except ValueError:
        return path.name


def _is_npy(ext: str) -> bool:
    return ext.lower() == "npy" or ext.lower().endswith(".npy")


IMAGES = (".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff")


def _decode(sample: dict[str, Any], member: str | None, where: str) -> np.ndarray:
    """The frames of a sample: its `member`, or its only `.npy` member."""
    members = sorted(ext for ext in sample if ext != "__key__")
    if member is None:
        arrays = [ext for ext in members if _is_npy(ext)]
        if len(arrays) != 1:
            raise InputError(f"{where}: {len(arrays)} .npy members among "
                             f"{', '.join(members) or 'none'}; {_why(arrays, members)}")  # fmt: skip
        member = arrays[0]
    if member not in sample:
        raise InputError(
            f"{where}: no {member} member (it has {', '.join(members) or 'none'}; a key with "
            "a dot in it splits at its first dot)"
        )
    data = sample[member]
    if not data.startswith(b"\x93NUMPY"):
        raise InputError(f"{where}: {member} is no .npy array (shard tars reads .npy members)")
    try:
        frames = np.load(io.BytesIO(data), allow_pickle=False)
    except Exception as exc:  # a pickle, cut short
        raise InputError(f"{where}: {member} is no readable .npy ({exc})") from exc
    return frames


def _why(arrays: list[str], members: list[str]) -> str:
    """What to do about a sample with `arrays` (.npy members) other than one."""
    if len(arrays) > 1:  # `1.npy`, `2.npy` of keys `run.1`, `run.2` come here too
        return (
            "choose one with --member, unless they are samples of their own whose keys hold "
            "a dot (run.1.npy, run.2.npy): a key is the file name up to its first dot, so "
            "rename those keys (run_1)"
        )
    if any(ext.lower().endswith(IMAGES) for ext in members):
        return "frames as images are not read: store each sequence as one .npy member"
    return (
        "name its frames with --member (or its members lie apart in the tar: a sample's "
        "members must be next to each other; GNU tar: --sort=name)"
    )
