"""Tar shards of other tools (webdataset's `TarWriter`/`ShardWriter`, GNU tar, Python's
`tarfile`): each sample's `.npy` member (a sequence T×C×H×W, T×H×W×C or T×H×W) written
again as stpdist shards, with the splits, statistics and checks of every conversion.

The source is a folder of `.tar` files (or one `.tar` file): with split sub-folders
(`train/`, `val/` or `validation/`, `test/`) those are the splits, else the folder is the
one split `--split` (default train). A sample is the members of one key, the file name up
to its first dot (webdataset's rule; folders in member names are left out, so keys must be
unique: two samples of one key are refused, naming both places). Its frames are its one
`.npy` member, or the one `--member` names (`video.npy`, `frames.npy`, …). The value scale
is `--value-scale`, or guessed from the first sample's dtype (255 for uint8, else 1), as
`shard arrays` does; values a guessed scale leaves outside [0, 1] are refused, naming the
tar and the sample. Reading stops at nothing the stream readers would not: a member cut
short, a compressed tar, members of a sample apart from each other are each an error
naming the tar (see `format.iter_shard`).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import InputError, MissingInput
from ..format import ShardFormatError, iter_shard, require_file
from .common import SEED_SPLITS, as_TCHW, listed, natural_key
from .generic import check_value_range


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
            first = next(t for tars in out.values() for t in tars)
            samples = self._samples(first)
            try:
                found = next(samples, None)
            finally:
                samples.close()  # the tar closed now
            if found is None:
                raise MissingInput(f"{first}: holds no sample")
            self.value_scale = 255.0 if found[1].dtype == np.uint8 else 1.0
            self.guessed_from = str(found[1].dtype)
            self._check_range(found[1], f"{first}: sample {found[0]}")  # before any is written
        return out

    def _folders(self, root: Path) -> dict[str, list[str]]:
        subs = [p for p in sorted(root.iterdir()) if p.is_dir() and p.name in SEED_SPLITS]
        if {"val", "validation"} <= {p.name for p in subs}:
            raise InputError(f"{root} has both val/ and validation/ (the same split): keep one")
        if subs and self.split_given:
            raise InputError(
                f"{root} has split folders ({', '.join(p.name + '/' for p in subs)}); --split "
                f"{self.split} names the one split of a flat folder: drop it"
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
        try:
            for key, sample in iter_shard(path):
                where = f"{tar}: sample {key}"
                frames = as_TCHW(_decode(sample, self.member, where), where,
                                 channels_last=self.channels_last)  # fmt: skip
                self._check_range(frames, where)
                yield key, frames, {"source": path.name}
        except ShardFormatError as exc:
            raise InputError(str(exc)) from None

    def _check_range(self, frames: np.ndarray, where: str) -> None:
        """A sample's values against a guessed value scale, as `shard arrays` checks a file
        (a given scale, or another dtype than the guess's: the split's own checks)."""
        scale = self.value_scale
        if self.scale_given or not frames.size or str(frames.dtype) != self.guessed_from:
            return
        if frames.dtype == np.uint8 or frames.dtype.kind == "b":
            return  # 255 fits every uint8
        if not np.isfinite(frames).all():
            return  # said where it is written
        low, high = float(frames.min()) / scale, float(frames.max()) / scale
        check_value_range(low, high, scale, str(frames.dtype), f"{where}:", given=False)

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
    found = [p.name for p in folder.iterdir() if p.suffix.lower() == ".tar" and p.is_file()]
    return sorted(found, key=natural_key)


def _decode(sample: dict[str, Any], member: str | None, where: str) -> np.ndarray:
    """The frames of a sample: its `member`, or its only `.npy` member."""
    members = sorted(ext for ext in sample if ext != "__key__")
    if member is None:
        arrays = [ext for ext in members if ext.endswith("npy")]
        if len(arrays) != 1:
            choose = "choose one with --member" if arrays else "name its frames with --member"
            raise InputError(
                f"{where}: {len(arrays)} .npy members among {', '.join(members) or 'none'}; "
                f"{choose}"
            )
        member = arrays[0]
    if member not in sample:
        raise InputError(
            f"{where}: no {member} member (it has {', '.join(members) or 'none'}; a key with "
            "a dot in it splits at its first dot)"
        )
    try:
        return np.load(io.BytesIO(sample[member]), allow_pickle=False)
    except Exception as exc:  # not an .npy, a pickle, cut short
        raise InputError(f"{where}: {member} is no readable .npy ({exc})") from exc
