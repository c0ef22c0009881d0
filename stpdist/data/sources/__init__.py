"""One reader per raw format; each builds a `convert.Source`.

`FORMATS` is the registry `stpdist shard FORMAT SRC… --out DIR` reads: each format
declares its help line, how many source paths it takes, its own command-line flags and how
a source is built from them. A new format is one entry here (and its reader module); the
CLI needs no change.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ...errors import InputError
from .common import check_split_sizes


def _ranges(text: str, flag: str) -> list[int]:
    """`17-25,30` → [17, …, 25, 30]; anything else (`abc`, `5-`, `9-3`) is an error naming
    `flag`."""
    out: list[int] = []
    for part in text.split(","):
        match = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        if match is None or int(match.group(2) or match.group(1)) < int(match.group(1)):
            raise InputError(
                f"{flag} {text}: {part!r} is not a number or a range low-high "
                "(expected e.g. 17-25 or 1,3,17-25)"
            )
        out += range(int(match.group(1)), int(match.group(2) or match.group(1)) + 1)
    return out


def _numbers(text: str, flag: str) -> list[float]:
    """`500,850` → [500.0, 850.0]; anything else is an error naming `flag`."""
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise InputError(
            f"{flag} {text}: expected numbers separated by commas (e.g. 500,850)"
        ) from None


def _split_sizes(text: str) -> dict[str, float]:
    """`train=8000,val=1000,test=-1` → {"train": 8000.0, …}: counts, fractions, or -1 (the
    rest) for at most one split; what a source cannot use it refuses (see `split_counts`)."""
    sizes: dict[str, float] = {}
    for part in text.split(","):
        name, _, size = part.partition("=")
        if not name or not size:
            raise InputError(f"--splits item {part!r} is not name=size")
        if name in sizes:
            raise InputError(f"--splits {text}: split '{name}' is given twice")
        try:
            sizes[name] = float(size)
        except ValueError:
            raise InputError(f"--splits item {part!r}: {size!r} is not a number") from None
    check_split_sizes(sizes)
    return sizes


class FirstFrames:
    """Any source, keeping only the first `count` frames of each sequence: input-only data
    for `stpdist forecast` (`stpdist shard … --inputs-only T_IN`)."""

    def __init__(self, source: Any, count: int) -> None:
        if count < 1:
            raise InputError(f"--inputs-only {count}: expected at least 1 frame")
        self.source, self.count = source, count

    def __getattr__(self, name: str) -> Any:  # name, grid, value_scale, root, … of the source
        if name.startswith("__") or name == "source":  # pickling (worker processes)
            raise AttributeError(name)
        return getattr(self.source, name)

    def splits(self) -> dict[str, list[Any]]:
        return self.source.splits()

    def load(self, item: Any) -> list[tuple[str, Any, dict]]:
        samples = []
        for key, frames, meta in self.source.load(item):
            if frames.shape[0] < self.count:
                raise InputError(f"sample {key}: {frames.shape[0]} frames, fewer than {self.count}")
            if isinstance(meta.get("times"), list):  # a time series': the frames kept
                meta = {**meta, "times": meta["times"][: self.count]}
            samples.append((key, frames[: self.count], meta))
        return samples

    def args(self) -> dict[str, Any]:
        return {**self.source.args(), "inputs_only": self.count}


@dataclass(frozen=True)
class SourceFormat:
    help: str
    build: Callable[[list[str], Any], Any]
    """(source paths, parsed flags) → a `convert.Source`."""
    flags: dict[str, dict[str, Any]] = field(default_factory=dict)
    """`--flag` → argparse keyword arguments."""
    many_paths: bool = False
    """Takes several source paths (else exactly one)."""
    paths_help: str = ""
    """Help of the source paths argument: what they may be (files, folders)."""


def _mmnist(paths: list[str], a: Any) -> Any:
    from .moving_mnist import MovingMnistNpy

    return MovingMnistNpy(paths[0], _split_sizes(a.splits))  # counts: checked there


def _seed(kind: str) -> Callable[[list[str], Any], Any]:
    def build(paths: list[str], a: Any) -> Any:
        from .seed_layout import SeedLayout

        return SeedLayout(paths[0], kind, require_all=True)  # the docs: all three folders

    return build


def _taxibj(paths: list[str], a: Any) -> Any:
    from .taxibj import TaxiBJ

    return TaxiBJ(
        paths,
        num_frames=a.frames,
        stride=a.stride,
        test_days=a.test_days,
        val_days=a.val_days,
        slot_minutes=a.slot_minutes,
    )


def _kth(paths: list[str], a: Any) -> Any:
    from .kth import KTHVideos

    return KTHVideos(
        paths[0],
        num_frames=a.frames,
        stride=a.stride,
        image_size=a.size,
        test_persons=_ranges(a.test_persons, "--test-persons"),
    )


def _arrays(paths: list[str], a: Any) -> Any:
    from .generic import GenericArrays

    return GenericArrays(
        paths[0],
        key=a.key,
        value_scale=a.value_scale,
        **_split_flags(a),
        seed=a.seed,
        num_frames=a.frames,
        stride=a.stride,
        time_key=a.time_key,
        step=a.step,
        val_from=a.val_from,
        test_from=a.test_from,
        channels_last=a.channels_last,
        per_file=a.per_file,
    )


def _split_flags(a: Any) -> dict[str, Any]:
    """`--split` (the one split of a folder without split folders) and `--splits` (a cut
    of it) as a converter's fields; both given is refused."""
    if a.splits and a.split is not None:
        raise InputError(
            f"--split {a.split} and --splits {a.splits}: --splits cuts the folder into the "
            "splits it names; drop --split"
        )
    return {
        "split": a.split or "train",
        "split_given": a.split is not None,
        "split_sizes": _split_sizes(a.splits) if a.splits else None,
    }


def _merge(paths: list[str], a: Any) -> Any:
    from .merge import MergedDatasets

    return MergedDatasets(paths)


def _tars(paths: list[str], a: Any) -> Any:
    from .tars import TarSamples

    return TarSamples(
        paths[0],
        member=a.member,
        value_scale=a.value_scale,
        split=a.split or "train",
        split_given=a.split is not None,
        channels_last=a.channels_last,
    )


def _frame_sequences(kind: str) -> Callable[[list[str], Any], Any]:
    """`shard images` / `shard videos` (see `frames.py`)."""

    def build(paths: list[str], a: Any) -> Any:
        from .frames import ImageSequences, VideoSequences

        return {"images": ImageSequences, "videos": VideoSequences}[kind](
            paths[0],
            gray=a.gray,
            rgb=a.rgb,
            size=a.size,
            num_frames=a.frames,
            stride=a.stride,
            every=a.every,
            **_split_flags(a),
            seed=a.seed,
        )

    return build


def _frames_flags(kind: str) -> dict[str, dict[str, Any]]:
    """The flags of `shard images` and `shard videos`."""
    first = (
        "as the first frame: 1 channel for a grayscale image file, else 3"
        if kind == "images"
        else "3 (RGB)"
    )
    unit = "sequence folders" if kind == "images" else "videos"
    return {
        "--gray": {
            "action": "store_true",
            "help": f"store 1 channel, grayscale (default: {first})",
        },
        "--rgb": {"action": "store_true", "help": f"store 3 channels, RGB (default: {first})"},
        "--size": {
            "default": None,
            "help": "resize every frame to H×H (--size 64) or H×W (--size 64x80), bilinear "
            "(default: the first frame's size, which every frame must then have)",
        },
        "--frames": {
            "type": int,
            "default": None,
            "help": "cut each sequence into windows of this many frames, keyed <key>_<first "
            "frame> (default: each sequence whole, one sample, and all must be of one length); "
            "a sequence shorter than one window is left out, said in a warning",
        },
        "--stride": {
            "type": int,
            "default": None,
            "help": "frames between window starts (default: --frames, windows side by side)",
        },
        "--every": {
            "type": int,
            "default": 1,
            "help": "keep every k-th frame (0, k, 2k, …; before --frames): a lower frame rate",
        },
        "--split": {
            "default": None,
            "help": "split name of a folder without split folders (default train; not with "
            "--splits)",
        },
        "--splits": {
            "default": None,
            "help": f"cut a folder without split folders into splits of whole {unit}: "
            "fractions summing to 1 (train=0.8,val=0.1,test=0.1) or counts; one "
            "split may be -1, the rest",
        },
        "--seed": {"type": int, "default": 0, "help": "seed of the --splits sequence order"},
    }


def _xarray(paths: list[str], a: Any) -> Any:
    from .netcdf import XarraySource

    return XarraySource(
        paths,
        var_specs=a.vars,
        levels=_numbers(a.levels, "--levels") if a.levels else None,
        num_frames=a.frames,
        stride=a.stride,
        step=a.step,
        val_from=a.val_from,
        test_from=a.test_from,
        block_frames=a.block_frames,
        every=a.every,
    )


def _window(frames: int, stride: int) -> dict[str, dict[str, Any]]:
    return {
        "--frames": {"type": int, "default": frames, "help": f"window length (default {frames})"},
        "--stride": {"type": int, "default": stride, "help": f"window stride (default {stride})"},
    }


def _series_flags(frames: int | None) -> dict[str, dict[str, Any]]:
    """Flags of converters that cut one long series into windows (see `series.py`)."""
    return {
        "--frames": {
            "type": int,
            "default": frames,
            "help": "cut one long series (a file or a folder of consecutive chunks) into "
            "windows of this many frames",
        },
        "--stride": {"type": int, "default": 1, "help": "frames between window starts"},
        "--time-key": {"default": None, "help": "npz member with each frame's timestamp"},
        "--step": {
            "default": None,
            "help": "time step, e.g. 6h (default: the most common spacing; any other is a gap)",
        },
        "--val-from": {"default": None, "help": "first date (or frame index) of val"},
        "--test-from": {"default": None, "help": "first date (or frame index) of test"},
    }


_GUESSED_SCALE: dict[str, Any] = {
    "type": float,
    "default": None,
    "help": "stored values ÷ this lie in [0, 1] (default 255 for uint8, else 1; data a "
    "default leaves outside [0, 1] is refused: give it)",
}
"""The --value-scale of converters that guess it from the data's dtype (arrays, tars)."""


FORMATS: dict[str, SourceFormat] = {
    "mmnist-npy": SourceFormat(
        "Moving MNIST mnist_test_seq.npy (T×N×H×W uint8)",
        _mmnist,
        {
            "--splits": {
                "default": "test=-1",
                "help": "consecutive sequences per split, counts that take every sequence; one "
                "split may be -1, the rest (e.g. train=8000,val=1000,test=-1)",
            }
        },
        paths_help="the .npy file",
    ),
    "seed-mmnist": SourceFormat(
        "the seed project's Moving MNIST npz folders (inputs/labels)",
        _seed("mmnist"),
        paths_help="the dataset folder (train/, validation/, test/)",
    ),
    "seed-kth": SourceFormat(
        "the seed project's KTH PNG-frame folders",
        _seed("kth"),
        paths_help="the dataset folder (train/, validation/, test/)",
    ),
    "seed-taxibj": SourceFormat(
        "the seed project's TaxiBJ npy folders",
        _seed("taxibj"),
        paths_help="the dataset folder (train/, validation/, test/)",
    ),
    "taxibj-h5": SourceFormat(
        "TaxiBJ BJ*_M32x32_T30_InOut.h5 files, gap-free windows, split by date",
        _taxibj,
        {
            **_window(8, 1),
            "--test-days": {"type": int, "default": 28, "help": "last days as test"},
            "--val-days": {"type": int, "default": 0, "help": "days before test as val"},
            "--slot-minutes": {
                "type": int,
                "default": None,
                "help": "the slots' length (default: the _M<H>x<W>_T<minutes>_ of the file names, "
                "_T30_ for TaxiBJ, _T60_ for BikeNYC; else 30)",
            },
        },
        many_paths=True,
        paths_help="one or more .h5 files",
    ),
    "kth-avi": SourceFormat(
        "KTH personNN_<action>_dM_uncomp.avi videos, gray, resized, windows, split by person",
        _kth,
        {
            **_window(20, 20),
            "--size": {"type": int, "default": 128, "help": "resized frame size"},
            "--test-persons": {"default": "17-25", "help": "persons in the test split"},
        },
        paths_help="the folder of .avi videos (and its sub-folders)",
    ),
    "merge": SourceFormat(
        "datasets stpdist wrote, merged into one: a new month added to a dataset, or the "
        "parts of a long conversion joined (samples read back and written again)",
        _merge,
        many_paths=True,
        paths_help="two or more dataset folders (each holding split folders), in order",
    ),
    "tars": SourceFormat(
        "tar shards of other tools (webdataset's, tar's): each sample's .npy member "
        "(T×C×H×W, T×H×W×C or T×H×W)",
        _tars,
        {
            "--member": {
                "default": None,
                "help": "the member holding a sample's frames, by extension (e.g. video.npy; "
                "default: its only .npy member)",
            },
            "--value-scale": _GUESSED_SCALE,
            "--split": {
                "default": None,
                "help": "split name of a folder without split folders (default train)",
            },
            "--channels-last": {
                "action": "store_true",
                "help": "frames are T×H×W×C (else T×C×H×W; T×H×W either way)",
            },
        },
        paths_help="a folder of .tar files (split folders train/, val/, test/ inside, or "
        "one split), or one .tar file",
    ),
    "arrays": SourceFormat(
        "a folder of per-sequence .npy/.npz arrays (T×C×H×W, T×H×W×C or T×H×W)",
        _arrays,
        {
            "--key": {"default": None, "help": "array name inside .npz files"},
            "--value-scale": _GUESSED_SCALE,
            "--split": {
                "default": None,
                "help": "split name of a flat folder (default train; not with --splits)",
            },
            "--splits": {
                "default": None,
                "help": "cut a flat folder into splits that take every file: fractions summing "
                "to 1 (train=0.8,val=0.1,test=0.1) or counts summing to the number of files; "
                "one split may be -1, the rest (train=0.8,val=0.1,test=-1); anything that "
                "leaves files out is refused",
            },
            "--seed": {"type": int, "default": 0, "help": "seed of the --splits file order"},
            "--channels-last": {
                "action": "store_true",
                "help": "arrays are T×H×W×C (else T×C×H×W; T×H×W either way); without it, "
                "arrays whose last axis is ≤ 4 while the axis read as C is larger are refused",
            },
            **_series_flags(None),
            "--per-file": {
                "action": "store_true",
                "help": "with --frames on a folder: each file is a clip of its own, cut into "
                "windows inside it (without it the files are consecutive chunks of one "
                "series and a window may span two)",
            },
        },
        paths_help="a folder of arrays, or (with --frames) one .npy/.npz file or a folder of "
        "them (consecutive chunks, or clips with --per-file)",
    ),
}

FORMATS["images"] = SourceFormat(
    "one folder of image frames per sequence (PNG, JPEG, BMP, TIFF, WebP, GIF, PPM/PGM; "
    "frames in natural name order), in split folders train/, val/, test/ or cut by --splits",
    _frame_sequences("images"),
    _frames_flags("images"),
    paths_help="a folder of sequence folders (ROOT/seq1/0001.png …, at any depth), or of "
    "split folders (train/, val/ or validation/, test/) holding them",
)
FORMATS["videos"] = SourceFormat(
    "video files, one sequence each (.mp4 .avi .mov .mkv .webm .m4v …; decoded with PyAV, "
    "pip install 'stpdist[formats]'), in split folders train/, val/, test/ or cut by --splits",
    _frame_sequences("videos"),
    _frames_flags("videos"),
    paths_help="a folder of video files (at any depth), or of split folders (train/, val/ "
    "or validation/, test/) holding them",
)

_XARRAY = SourceFormat(
    "netCDF files / folders (WeatherBench: one folder per variable) or a Zarr store "
    "(WeatherBench 2, ERA5) via xarray: variables, levels, gap-free windows, split by date",
    _xarray,
    {
        "--vars": {"required": True, "help": "channels, e.g. z500,t850,t2m (name<level>)"},
        "--levels": {"default": None, "help": "levels of every variable that has them"},
        **{k: v for k, v in _series_flags(8).items() if k != "--time-key"},
        "--every": {
            "type": int,
            "default": 1,
            "help": "keep the time steps k series steps apart (from the first; after a gap "
            "on the same hours)",
        },
        "--block-frames": {
            "type": int,
            "default": 256,
            "help": "most frames read at once per worker (memory)",
        },
    },
    many_paths=True,
    paths_help="netCDF files, folders of them (searched recursively), or Zarr stores",
)
FORMATS.update({"xarray": _XARRAY, "netcdf": _XARRAY, "zarr": _XARRAY})


def _sevir(paths: list[str], a: Any) -> Any:
    from .sevir import Sevir

    return Sevir(
        paths[0],
        data_root=a.data_root,
        img_type=a.img_type,
        num_frames=a.frames,
        stride=a.stride,
        val_from=a.val_from or None,
        test_from=a.test_from or None,
    )


FORMATS["sevir"] = SourceFormat(
    "SEVIR CATALOG.csv (or the folder holding it) + HDF5 files (VIL): 49-frame events cut "
    "into windows (13→12: --frames 25 --stride 12), split by event time",
    _sevir,
    {
        **_window(25, 12),
        "--data-root": {
            "default": None,
            "help": "folder of the HDF5 files (default: data/ beside CATALOG.csv)",
        },
        "--img-type": {
            "default": "vil",
            "help": "image type (catalog img_type): 8-bit types such as vil",
        },
        "--val-from": {"default": "2019-01-01", "help": "first event date of val"},
        "--test-from": {"default": "2019-06-01", "help": "first event date of test"},
    },
    paths_help="CATALOG.csv, or the folder holding it",
)
