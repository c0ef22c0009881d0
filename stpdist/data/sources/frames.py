"""Frames as video-prediction users keep them: a folder of image files per sequence
(`shard images`), or video files (`shard videos`, decoded with PyAV), stored as uint8
T×C×H×W, value scale 255.

Layout (both): a ROOT with split folders (`train/`, `val/` or `validation/`, `test/`) is
those splits, each holding sequences, and nothing that holds frames may lie beside them
(refused, named, as `shard arrays` refuses it); else ROOT holds the sequences of one split
(`--split`, default train), or is cut into splits by `--splits` (whole sequences, in an
order shuffled by `--seed`, as `shard arrays` cuts files). A sequence is a folder holding
image files (at any depth: `walk/person01/0001.png`; image files lying in ROOT or a split
folder itself are refused: a sequence is a folder), or a video file (at any depth). Its key
is its path under the split folder (or ROOT), folders joined with `_`, dots replaced and a
video's suffix left out (`walk/person01` → `walk_person01`, as `shard tars` keys
`clip/0001`); two sequences of one key in a split are refused, naming both.

Frames: a folder's images in natural name order (`2.png` before `10.png`), a video's as
decoded. `every` keeps frames 0, k, 2k, …; `num_frames` cuts the kept frames into windows
(`stride` apart, default side by side) keyed `<key>_<first frame>` (its index in the
sequence, 5 digits, as `kth-avi` keys windows); a sequence shorter than one window gives
none and is said (one warning: how many, the first named). Without `num_frames` each
sequence is one sample and all must have one length. Channels: 1 with `gray`, 3 (RGB)
with `rgb`, else as the first sequence's first frame (a grayscale image file: 1; a video:
RGB); alpha is dropped, palette images converted. Size: `size` (bilinear, which Pillow
filters over the whole source area when shrinking), else the first frame's, which every
frame must then have. Images of more than 8 bits are refused, as `seed-kth` refuses them.

Memory: a work item is one sequence (a folder, a video), read whole: its kept frames.
"""

from __future__ import annotations

import math
import os
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from ...console import log
from ...errors import InputError, MissingInput, require_extra
from ..format import require_file
from .common import (
    NEAR_SPLITS,
    SEED_SPLITS,
    frame_key,
    listed,
    natural_key,
    png_8bit,
    split_counts,
    split_folders,
)
from .series import check_window

# Legend: frames_TCHW: frames × channels × height × width; frame_HW(C): one decoded frame.

IMAGE_SUFFIXES = (
    ".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm", ".pnm",
)  # fmt: skip
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv")
COLOUR_MODES = ("P", "PA", "RGB", "RGBA", "RGBX", "RGBa", "CMYK", "YCbCr")
"""PIL modes read as colour; "1", "L", "LA" are grayscale (more bits are refused)."""
EIGHT_BIT_MODES = ("1", "L", "LA", "La", *COLOUR_MODES)
READER = "shard images reads 8-bit frames (value scale 255)"
ADVICE = (
    "convert the frames to 8-bit, or save each sequence as an .npy array (T×H×W, uint16 "
    "kept) and convert it with `stpdist shard arrays --value-scale 65535`"
)


class Sequence(NamedTuple):
    """One work item: a sequence, read whole by one worker."""

    path: str
    """Its folder of images, or its video file."""
    key: str
    """Its sample key (windows: with their first frame appended)."""
    source: str
    """Its path relative to the folder converted (the samples' `source`)."""
    length: int
    """Its frames, before `--every`."""
    files: tuple[str, ...] = ()
    """Images: the frame files' names, in natural order."""


def parse_size(text: str | None) -> tuple[int, int] | None:
    """`--size 64` → (64, 64), `--size 64x80` → (64, 80) (H×W); None stays None."""
    if text is None:
        return None
    match = re.fullmatch(r"\s*(\d+)\s*(?:[x×X]\s*(\d+)\s*)?", str(text))
    if match is None or int(match.group(1)) < 1 or int(match.group(2) or 1) < 1:
        raise InputError(f"--size {text}: expected H (square frames) or HxW, e.g. 64 or 64x80")
    height = int(match.group(1))
    return height, int(match.group(2) or height)


def read_image(path: Path, mode: str | None) -> tuple[np.ndarray, str]:
    """An image file's frame as uint8 converted to `mode` ("L": H×W, "RGB": H×W×3; None:
    "L" for a grayscale file, else "RGB"), alpha dropped, and the mode it is stored in.
    A file PIL cannot read, an animated or multi-page one, and one of more than 8 bits per
    sample (a 16-bit PNG or TIFF, which the conversion would clip) are refused, naming it."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    require_file(path)  # a FIFO would block the reader
    is_png = path.suffix.lower() == ".png"
    try:
        with Image.open(path) as image, warnings.catch_warnings():
            # "Palette images with Transparency …": converted as asked, a line a frame
            warnings.simplefilter("ignore", UserWarning)
            found, count = image.mode, getattr(image, "n_frames", 1)
            target = mode or ("RGB" if found in COLOUR_MODES else "L")
            bits = _stored_bits(image)  # a 16-bit colour TIFF or PPM reads as "RGB" too
            if count == 1 and found in EIGHT_BIT_MODES and not is_png and bits <= 8:
                # turned as its EXIF orientation says (a phone's JPEG): as viewers show it
                return np.asarray(ImageOps.exif_transpose(image).convert(target)), found
    except UnidentifiedImageError:
        raise InputError(f"{path}: not an image file Pillow reads (damaged?)") from None
    except Exception as exc:  # a truncated JPEG: OSError at decoding
        raise InputError(f"{path}: not a readable image ({exc})") from None
    if count > 1:
        raise InputError(
            f"{path}: {count} frames in one file (an animated or multi-page image); shard "
            "images reads one frame a file: save the frames as files of their own"
        )
    if is_png:  # 16-bit PNGs read as "RGB" too: its header tells
        return png_8bit(path, target, READER, ADVICE), found
    if found.startswith(("I", "F")) or bits > 8:  # I;16, I (32-bit integers), F (floats)
        depth = f"{bits} bits per sample" if bits > 8 else "more than 8 bits per sample"
        raise InputError(f"{path}: {depth} (mode {found}); {READER} and "
                         f"would clip the rest: {ADVICE}")  # fmt: skip
    raise InputError(f"{path}: mode {found}, not a grayscale, palette or colour image "
                     "(convert it to RGB)")  # fmt: skip


def _gray(path: Path) -> bool:
    """Whether a palette image shows grays alone (each pixel's red, green and blue alike):
    a grayscale frame saved with a palette, not a colour one (a formats review)."""
    rgb = read_image(path, "RGB")[0]
    return bool((rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all())


def _stored_bits(image: Any) -> int:
    """The bits per sample an image file stores where Pillow's mode hides them (a TIFF's
    BitsPerSample tag; a PPM/PGM's maxval above 255), else 8: Pillow reads a 16-bit
    colour TIFF or PPM as "RGB", keeping the high byte alone (a formats review)."""
    if image.format == "TIFF":
        bits = getattr(image, "tag_v2", {}).get(258)  # BitsPerSample: one, or one a channel
        values = bits if isinstance(bits, tuple) else (bits,)
        return max((int(v) for v in values if isinstance(v, int)), default=8)
    if image.format == "PPM" and image.tile:
        args = image.tile[0].args
        maxval = args[1] if isinstance(args, tuple) and len(args) > 1 else None
        if isinstance(maxval, int) and maxval > 255:
            return maxval.bit_length()
    return 8


def _why(exc: Exception) -> str:
    """PyAV's error in words: its strerror, not `[Errno 1094995529] …`."""
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__


def video_frames_and_rate(path: Path) -> tuple[int, float | None]:
    """The frames of a video's first video stream as its container declares them, or, where
    it does not (Matroska, WebM), its packets counted (read, not decoded); and the stream's
    average frame rate (None: not declared)."""
    av = require_extra("av", "formats", "decoding videos")
    require_file(path)  # a FIFO would block the demuxer
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise InputError(  # a video review: an .mp4 cut short read so, its index lost
                    f"{path}: no video stream (a file cut short, whose index is lost, or not "
                    "a video)"
                )
            stream = container.streams.video[0]
            rate = float(stream.average_rate) if stream.average_rate else None
            if stream.frames:
                return int(stream.frames), rate
            counted = sum(1 for packet in container.demux(stream) if packet.size)
            _say_if_cut_short(path, counted, container.duration, stream.average_rate)
            return counted, rate
    except InputError:
        raise
    except Exception as exc:
        raise InputError(f"{path}: not a readable video ({_why(exc)})") from None


def _say_if_cut_short(path: Path, counted: int, duration_us: Any, rate: Any) -> None:
    """A Matroska or WebM file declares no frame count, so its packets are counted: a file
    cut short then matched itself, converted short without a word (a video review). Its
    duration (in its header) at its frame rate says how many it should hold."""
    if not duration_us or not rate:
        return
    seconds = duration_us / 1e6
    declared = round(seconds * float(rate))
    if counted < declared - 1:  # a frame of rounding either way
        log.warning(
            "%s: %d frames read, where its duration, %.3g s at %g frames/s, makes %d: a file "
            "cut short? Its samples are cut from the %d read",
            path, counted, seconds, float(rate), declared, counted,
        )  # fmt: skip


def _say_other_rates(sequences: list[Sequence], rates: dict[str, float | None]) -> None:
    """Videos of other frame rates than the first's, said once (the first that differs,
    and how many): a window of --frames N spans another time in each (a video review:
    KTH's 25 frames/s mixed with 30 without a word)."""
    known = [(s.source, rates[s.source]) for s in sequences if rates.get(s.source)]
    if not known:
        return
    first, rate = known[0]
    other = [(source, r) for source, r in known if abs(r - rate) > 0.01 * rate]
    if other:
        log.warning(
            "%s: %g frames/s, the first video (%s) %g (%d video(s) of other rates): a window "
            "of --frames spans another time in each; convert them apart, or take every k-th "
            "frame of the faster ones (--every) in a conversion of their own",
            other[0][0], other[0][1], first, rate, len(other),
        )  # fmt: skip


def _upright(frame_HWC: np.ndarray, degrees: int) -> np.ndarray:
    """A video frame turned as players show it, by the rotation of its display matrix
    (phones store portrait video as landscape frames with a rotation of ±90°): stored as
    it was, portrait clips lay on their side. Quarter turns only; mirroring is not read."""
    turns = round(degrees / 90) % 4  # `degrees` counter-clockwise
    return np.ascontiguousarray(np.rot90(frame_HWC, turns)) if turns else frame_HWC


def _gray_content(frame: np.ndarray) -> bool:
    """Whether a colour frame (H×W×3) holds gray: its three channels equal (a gray video
    decoded as RGB, a palette image of grays)."""
    return frame.ndim == 3 and bool((frame == frame[..., :1]).all())


def _kept(length: int, every: int) -> int:
    """Frames 0, k, 2k, … of `length`."""
    return math.ceil(length / every)


def _key(relative: Path) -> str:
    """A sample key from a sequence's path under its split folder: folders joined with `_`,
    dots replaced (a stored key holds neither slash nor dot)."""
    return re.sub(r"[/.]", "_", relative.as_posix())


def _walk(folder: Path) -> Iterator[tuple[str, list[str], list[str]]]:
    """`os.walk` of `folder`'s visible folders, into linked folders too (splits made of
    symbolic links to the data, a common way not to copy it), each real folder once (a
    link back up would loop)."""
    seen: set[str] = set()
    for path, dirs, names in os.walk(folder, followlinks=True):
        real = os.path.realpath(path)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = _visible(dirs)
        yield path, dirs, names


def _visible(names: list[str]) -> list[str]:
    """Not hidden: macOS's `._name` copies, `.DS_Store`, `.ipynb_checkpoints`."""
    return [name for name in names if not name.startswith(".")]


@dataclass
class _FrameSequences:
    """What `shard images` and `shard videos` share: the layout, splits, channels, size,
    lengths and windows; a subclass finds its sequences and reads their frames."""

    root: str
    gray: bool = False
    """Store one channel (grayscale)."""
    rgb: bool = False
    """Store three channels (RGB); neither flag: as the first frame."""
    size: str | None = None
    """Resize every frame to H×H (`64`) or H×W (`64x80`); None: the first frame's size."""
    num_frames: int | None = None
    """Cut each sequence into windows of this many (kept) frames; None: each whole."""
    stride: int | None = None
    """Kept frames between window starts (None: `num_frames`, windows side by side)."""
    every: int = 1
    """Keep every k-th frame (0, k, 2k, …): a lower frame rate."""
    split: str = "train"
    split_given: bool = False
    """Whether `--split` was given (it names the split of a folder without split folders)."""
    split_sizes: dict[str, float] | None = None
    """Cut a folder without split folders into these splits, by sequence (see
    `split_counts`)."""
    seed: int = 0
    """Seeds the sequence order that `split_sizes` cuts."""
    name: str = ""
    value_scale: float = 255.0
    grid: float | None = None
    channels: int = 0
    """Set by `splits`: 1 or 3."""
    frame_size: tuple[int, int] | None = None
    """Set by `splits`: the stored H×W."""
    first: str = ""
    """Set by `splits`: the first frame's file (messages)."""
    length: int | None = None
    """Set by `splits`, without `num_frames`: every sequence's kept frames."""

    unit = "sequences"
    layout = ""
    keyed = "folders joined with _, dots replaced"
    """How a key is made of a sequence's path (said when two collide)."""

    def __post_init__(self) -> None:  # before any file is read
        if self.gray and self.rgb:
            raise InputError("--gray and --rgb: choose one (1 channel, or 3)")
        if self.every < 1:
            raise InputError(f"--every {self.every}: expected at least 1 (1 keeps every frame)")
        if self.num_frames is None and self.stride is not None:
            raise InputError(f"--stride {self.stride} needs --frames (the window length)")
        if self.num_frames is not None:
            self.stride = self.num_frames if self.stride is None else self.stride
            check_window(self.num_frames, self.stride)
        parse_size(self.size)
        if self.seed < 0:
            raise InputError(f"--seed {self.seed}: expected an integer ≥ 0")

    # ------------------------------------------------------------------ a subclass's
    def _sequences_in(self, folder: Path) -> list[Sequence]:
        """Every sequence under `folder` (a split folder or ROOT), keyed from it."""
        raise NotImplementedError

    def _holds_data(self, folder: Path) -> bool:
        """Whether `folder` holds frames (image files, videos) at any depth."""
        raise NotImplementedError

    def _first_frame(self, sequence: Sequence) -> tuple[np.ndarray, str, bool]:
        """(frame H×W or H×W×3, its file, whether it is colour) of `sequence`."""
        raise NotImplementedError

    def _frames(self, sequence: Sequence) -> np.ndarray:
        """The kept frames of `sequence`, T×C×H×W uint8, each checked by `_fit`."""
        raise NotImplementedError

    # ------------------------------------------------------------------ the layout
    def splits(self) -> dict[str, list[Any]]:
        root = Path(self.root)
        if root.is_file():
            raise InputError(f"{root} is a file; shard {self.name} takes a folder of {self.layout}")
        if not root.is_dir():
            raise MissingInput(f"{root}: no such folder")
        found = self._found(root)
        everything = [s for sequences in found.values() for s in sequences]
        if not everything:
            raise MissingInput(f"{root}: no {self.layout}")
        self._settle_frames(everything[0])
        if self.num_frames is None:
            self._check_lengths(everything)
        return found

    def _found(self, root: Path) -> dict[str, list[Sequence]]:
        """The sequences of each split: split folders', or ROOT's (cut by `--splits`); those
        shorter than one window left out first (said), and a split they would empty refused."""
        subs = split_folders(root)
        if not subs:
            self._refuse_near_split_names(root)
            sequences = self._long_enough(self._unique(self._sequences_in(root)))
            return self._cut(root, sequences) if self.split_sizes else {self.split: sequences}
        given = ", ".join(p.name + "/" for p in subs.values())
        if self.split_sizes:
            raise InputError(f"{root} already has split folders ({given}); --splits cuts a "
                             "folder without them: drop --splits")  # fmt: skip
        if self.split_given:
            raise InputError(f"{root} already has split folders ({given}); --split "
                             f"{self.split} names the one split of a folder without them: "
                             "drop it")  # fmt: skip
        self._check_nothing_left_out(root, list(subs.values()))
        found = {split: self._unique(self._sequences_in(sub)) for split, sub in subs.items()}
        for split, sub in subs.items():
            if not found[split]:
                raise MissingInput(f"{sub}: no {self.layout}")
        kept = set(self._long_enough([s for sequences in found.values() for s in sequences]))
        for split, sub in subs.items():
            found[split] = [s for s in found[split] if s in kept]
            if not found[split]:
                raise InputError(
                    f"{sub}: every sequence is shorter than {self._window()}, so the split "
                    "would hold no sample: lower --frames"
                )
        return found

    def _refuse_near_split_names(self, root: Path) -> None:
        """A folder without split folders whose folders are named like splits (`training/`,
        `testing/`, `valid/`): taken as one split, its test data would be trained on."""
        if self.split_given or self.split_sizes:  # one split named, or cut by sequence:
            return  # its folders are the user's own
        near = [
            p.name for p in sorted(root.iterdir()) if p.is_dir() and p.name.lower() in NEAR_SPLITS
        ]
        if near:
            raise InputError(
                f"{root}: {', '.join(n + '/' for n in near)} look like split folders, which "
                "are named train/, val/ (or validation/) and test/ (in any case): rename them, "
                "or pass --split train (the whole folder one split) or --splits (cut by "
                "sequence)"
            )

    def _check_nothing_left_out(self, root: Path, subs: list[Path]) -> None:
        """Beside split folders, frames in another folder (`valid/`) or loose in ROOT would
        be left out: refused, named."""
        others = [
            f"{p.name}/"
            for p in sorted(root.iterdir(), key=lambda p: natural_key(p.name))
            if p.is_dir() and p not in subs and not p.name.startswith(".") and self._holds_data(p)
        ]
        loose = self._loose(root)
        if others or loose:
            recognised = ", ".join(f"{name}/" for name in SEED_SPLITS) + " (in any case)"
            raise InputError(
                f"{root} has split folders; {listed(others + loose, unit='entries')} would be "
                f"left out (split folders are named {recognised}): move them into a split "
                "folder"
            )

    def _loose(self, folder: Path) -> list[str]:
        """Files of frames lying in `folder` itself (beside split folders: left out)."""
        return []

    def _unique(self, sequences: list[Sequence]) -> list[Sequence]:
        """`sequences` (of one split folder or ROOT), refused when two give one key."""
        seen: dict[str, Sequence] = {}
        for sequence in sequences:
            other = seen.setdefault(sequence.key, sequence)
            if other is not sequence:
                raise InputError(
                    f"{other.path} and {sequence.path} both give the sample key "
                    f"{sequence.key!r} ({self.keyed}): rename one"
                )
        return sequences

    def _cut(self, root: Path, sequences: list[Sequence]) -> dict[str, list[Sequence]]:
        """ROOT's sequences cut by `--splits`, whole sequences in an order shuffled by
        `--seed` (as `shard arrays` cuts files): every one in one split."""
        assert self.split_sizes is not None
        counts = split_counts(self.split_sizes, len(sequences), str(root), unit=self.unit,
                              allow_empty=False)  # fmt: skip
        order = np.random.default_rng(self.seed).permutation(len(sequences))
        out, start = {}, 0
        for split, count in counts.items():
            out[split] = [sequences[i] for i in sorted(order[start : start + count])]
            start += count
        return out

    # ------------------------------------------------------------------ frames
    def _settle_frames(self, first: Sequence) -> None:
        """Channels and frame size from the flags, else from the first sequence's first
        frame (read now: an unreadable one is said before anything is written)."""
        frame, self.first, colour = self._first_frame(first)
        self.channels = 1 if self.gray else 3 if self.rgb or colour else 1
        self.frame_size = parse_size(self.size) or (frame.shape[0], frame.shape[1])
        if self.channels == 3 and not self.rgb and _gray_content(frame):
            log.warning(
                "%s: the first frame is gray (its 3 channels are equal) and is stored as 3 "
                "channels, 3 times the size and compute of 1: pass --gray to store 1, or "
                "--rgb to keep 3 without this warning",
                self.first,
            )  # fmt: skip

    def _fit(self, frame: np.ndarray, where: Path | str) -> np.ndarray:
        """A frame (H×W or H×W×3) as C×H×W of the stored size: resized to `--size`, or
        refused when it is not the first frame's size."""
        assert self.frame_size is not None
        height, width = frame.shape[:2]
        if (height, width) != self.frame_size:
            if self.size is None:
                h0, w0 = self.frame_size
                raise InputError(
                    f"{where}: frame of {height}×{width} pixels (H×W), the first frame "
                    f"({self.first}) {h0}×{w0}; without --size every frame must have the "
                    "first one's size: pass --size H or HxW to resize them all"
                )
            from PIL import Image

            size = (self.frame_size[1], self.frame_size[0])  # PIL: W, H
            frame = np.asarray(Image.fromarray(frame).resize(size, Image.Resampling.BILINEAR))
        return frame[None] if frame.ndim == 2 else frame.transpose(2, 0, 1)

    def _check_lengths(self, sequences: list[Sequence]) -> None:
        """Without `--frames` every sequence is one sample: all of one length, else the
        first that differs is refused, named."""
        first = sequences[0]
        self.length = _kept(first.length, self.every)
        for sequence in sequences[1:]:
            kept = _kept(sequence.length, self.every)
            if kept != self.length:
                raise InputError(
                    f"{sequence.path}: {kept} frames{self._after_every()}, the first sequence "
                    f"({first.path}) {self.length}; each sequence is one sample, so all "
                    "must have one length: cut them into windows with --frames N (and "
                    "--stride S)"
                )

    def _after_every(self) -> str:
        return f" (after --every {self.every})" if self.every > 1 else ""

    def _window(self) -> str:
        return f"--frames {self.num_frames}{self._after_every()}"

    def _long_enough(self, sequences: list[Sequence]) -> list[Sequence]:
        """The sequences of at least one window: the shorter give none, said in one warning
        (how many, the first named), never left out without a word; all of them: refused."""
        if self.num_frames is None or not sequences:
            return sequences
        short = [s for s in sequences if _kept(s.length, self.every) < self.num_frames]
        if not short:
            return sequences
        if len(short) == len(sequences):
            longest = max(_kept(s.length, self.every) for s in sequences)
            raise InputError(
                f"{self.root}: every sequence is shorter than {self._window()} (the longest: "
                f"{longest} frames): lower --frames"
            )
        log.warning(
            "%s: %d of %d %s are shorter than %s and give no window: left out (the first: "
            "%s, %d frames); lower --frames to keep them",
            self.root, len(short), len(sequences), self.unit, self._window(), short[0].path,
            _kept(short[0].length, self.every),
        )  # fmt: skip
        left_out = set(short)
        return [s for s in sequences if s not in left_out]

    def load(self, item: Sequence) -> list[tuple[str, np.ndarray, dict]]:
        frames_TCHW = self._frames(item)
        meta: dict[str, Any] = {"source": item.source}
        if item.files and self.num_frames is None:
            meta["first_file"] = item.files[0]
        if self.num_frames is None:
            if len(frames_TCHW) != self.length:  # a video that decodes to another count
                raise InputError(
                    f"{item.path}: {len(frames_TCHW)} frames{self._after_every()} decoded, "
                    f"the first sequence {self.length}; each sequence is one sample, so all "
                    "must have one length: cut them into windows with --frames N"
                )
            return [(item.key, frames_TCHW, meta)]
        assert self.stride is not None
        if len(frames_TCHW) < self.num_frames:  # a video that decodes to fewer than declared
            log.warning("%s: %d frames decoded, fewer than %s: no window", item.path,
                        len(frames_TCHW), self._window())  # fmt: skip
        out = []
        for start in range(0, len(frames_TCHW) - self.num_frames + 1, self.stride):
            first = start * self.every  # in the sequence's own frames
            window = frames_TCHW[start : start + self.num_frames]  # a view: no copy
            start_meta = {**meta, "start_frame": first}
            if item.files:  # images: the window's first frame's file (names need not count 0…)
                start_meta["first_file"] = item.files[first]
            out.append((f"{item.key}_{first:05d}", window, start_meta))
        return out

    def describe(self, item: Sequence) -> str:
        """The folder or video a work item reads (for messages)."""
        return item.path

    def args(self) -> dict[str, Any]:
        return {
            "root": str(self.root),
            "channels": self.channels,
            "size": list(self.frame_size) if self.frame_size else None,
            "every": self.every,
            "num_frames": self.num_frames,
            "stride": self.stride,
            "split_sizes": self.split_sizes,
            "seed": self.seed,
        }


@dataclass
class ImageSequences(_FrameSequences):
    """`shard images`: one folder of image frames per sequence."""

    name: str = "images"
    unit = "sequence folders"
    layout = "sequence folders of image frames (ROOT/seq1/0001.png, …)"

    def _images(self, names: list[str]) -> list[str]:
        found = [n for n in _visible(names) if n.lower().endswith(IMAGE_SUFFIXES)]
        return sorted(found, key=frame_key)

    def _sequences_in(self, folder: Path) -> list[Sequence]:
        out = []
        for path, _, names in _walk(folder):
            images = self._images(names)
            here = Path(path)
            if images and here == folder:
                raise InputError(
                    f"{folder}: the image files {listed(images)} lie in it directly; shard "
                    f"images reads one folder per sequence ({folder / 'seq1' / images[0]}, "
                    "…): move them into a sequence folder"
                )
            if images:
                relative = here.relative_to(folder)
                source = here.relative_to(self.root).as_posix()
                out.append(Sequence(str(here), _key(relative), source, len(images), tuple(images)))
        return sorted(out, key=lambda s: natural_key(s.source))

    def _holds_data(self, folder: Path) -> bool:
        return any(self._images(names) for _, _, names in _walk(folder))

    def _loose(self, folder: Path) -> list[str]:
        return self._images(os.listdir(folder))

    def _first_frame(self, sequence: Sequence) -> tuple[np.ndarray, str, bool]:
        path = Path(sequence.path) / sequence.files[0]
        mode = "L" if self.gray else "RGB" if self.rgb else None
        frame, found = read_image(path, mode)
        return frame, str(path), found in COLOUR_MODES

    def _frames(self, sequence: Sequence) -> np.ndarray:
        mode = "L" if self.channels == 1 else "RGB"
        frames = []
        for name in sequence.files[:: self.every]:
            path = Path(sequence.path) / name
            frame, found = read_image(path, mode)
            colour = found in COLOUR_MODES and not (found in ("P", "PA") and _gray(path))
            if colour and self.channels == 1 and not self.gray:
                raise InputError(
                    f"{path}: a colour frame (mode {found}), while the first frame "
                    f"({self.first}) is grayscale, and so the dataset (1 channel): pass --rgb "
                    "to store 3 channels, or --gray to store every frame as grayscale"
                )
            frames.append(self._fit(frame, path))
        return np.stack(frames)


@dataclass
class VideoSequences(_FrameSequences):
    """`shard videos`: one video file per sequence, decoded with PyAV."""

    name: str = "videos"
    unit = "videos"
    keyed = "folders joined with _, dots replaced, the video's suffix left out"
    layout = f"video files ({', '.join(VIDEO_SUFFIXES)})"

    def _videos(self, names: list[str]) -> list[str]:
        found = [n for n in _visible(names) if n.lower().endswith(VIDEO_SUFFIXES)]
        return sorted(found, key=natural_key)

    def _sequences_in(self, folder: Path) -> list[Sequence]:
        out, rates = [], {}
        for path, _, names in _walk(folder):
            for name in self._videos(names):
                video = Path(path) / name
                if video.is_dir():  # a folder named clip.mp4
                    continue
                relative = video.relative_to(folder).with_suffix("")
                source = video.relative_to(self.root).as_posix()
                count, rates[source] = video_frames_and_rate(video)
                out.append(Sequence(str(video), _key(relative), source, count))
        out = sorted(out, key=lambda s: natural_key(s.source))
        _say_other_rates(out, rates)
        return out

    def _holds_data(self, folder: Path) -> bool:
        return any(self._videos(names) for _, _, names in _walk(folder))

    def _loose(self, folder: Path) -> list[str]:
        return [n for n in self._videos(os.listdir(folder)) if (folder / n).is_file()]

    def _decoded(self, path: Path, first_only: bool = False) -> tuple[list[np.ndarray], int]:
        """The kept frames of a video (H×W or H×W×3, the stored channels), each fitted, and
        how many it decoded; `first_only`: its first frame, as it is (RGB unless --gray)."""
        av = require_extra("av", "formats", "decoding videos")
        colour = "gray" if self.gray or self.channels == 1 else "rgb24"
        kept, decoded = [], 0
        try:
            with av.open(str(path)) as container:
                for decoded, frame in enumerate(container.decode(video=0), start=1):
                    if (decoded - 1) % self.every:
                        continue
                    turned = getattr(frame, "rotation", 0) or 0  # PyAV < 14 has none
                    frame_HWC = _upright(frame.to_ndarray(format=colour), turned)
                    if first_only:
                        return [frame_HWC], decoded
                    where = f"{path} (turned {turned}° by its display rotation)" if turned else path
                    kept.append(self._fit(frame_HWC, where))
        except InputError:
            raise
        except Exception as exc:
            raise InputError(f"{path}: cannot decode video ({_why(exc)})") from None
        if not decoded:
            raise InputError(f"{path}: no video frames")
        return kept, decoded

    def _first_frame(self, sequence: Sequence) -> tuple[np.ndarray, str, bool]:
        frames, _ = self._decoded(Path(sequence.path), first_only=True)
        return frames[0], sequence.path, not self.gray

    def _frames(self, sequence: Sequence) -> np.ndarray:
        path = Path(sequence.path)
        kept, decoded = self._decoded(path)
        if decoded < sequence.length:  # said, not refused: a trimmed clip decodes to fewer
            log.warning(
                "%s: decoded %d of the %d frames its container declares (a clip trimmed "
                "without re-encoding, whose edit list drops its first frames, or a file cut "
                "short): its samples are cut from the %d decoded",
                path, decoded, sequence.length, decoded,
            )  # fmt: skip
        return np.stack(kept)
