"""One reader per raw format; each builds a `convert.Source`.

`FORMATS` is the registry `stpdist shard FORMAT SRC… --out DIR` reads: each format
declares its help line, how many source paths it takes, its own command-line flags and how
a source is built from them. A new format is one entry here (and its reader module); the
CLI needs no change.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


def _ranges(text: str) -> list[int]:
    """`17-25,30` → [17, …, 25, 30]."""
    out: list[int] = []
    for part in text.split(","):
        low, _, high = part.partition("-")
        out += range(int(low), int(high or low) + 1)
    return out


def _split_sizes(text: str, kind: type = int) -> dict[str, Any]:
    """`train=8000,val=1000,test=-1` → {"train": 8000, …} (`kind` float: fractions too)."""
    sizes = {}
    for part in text.split(","):
        name, _, size = part.partition("=")
        if not name or not size:
            raise ValueError(f"--splits item {part!r} is not name=size")
        try:
            sizes[name] = kind(size)
        except ValueError:
            raise ValueError(f"--splits item {part!r}: {size!r} is not a number") from None
    return sizes


@dataclass(frozen=True)
class SourceFormat:
    help: str
    build: Callable[[list[str], Any], Any]
    """(source paths, parsed flags) → a `convert.Source`."""
    flags: dict[str, dict[str, Any]] = field(default_factory=dict)
    """`--flag` → argparse keyword arguments."""
    many_paths: bool = False
    """Takes several source paths (else exactly one)."""


def _mmnist(paths: list[str], a: Any) -> Any:
    from .moving_mnist import MovingMnistNpy

    return MovingMnistNpy(paths[0], _split_sizes(a.splits))


def _seed(kind: str) -> Callable[[list[str], Any], Any]:
    def build(paths: list[str], a: Any) -> Any:
        from .seed_layout import SeedLayout

        return SeedLayout(paths[0], kind)

    return build


def _taxibj(paths: list[str], a: Any) -> Any:
    from .taxibj import TaxiBJ

    return TaxiBJ(
        paths,
        num_frames=a.frames,
        stride=a.stride,
        test_days=a.test_days,
        val_days=a.val_days,
    )


def _kth(paths: list[str], a: Any) -> Any:
    from .kth import KTHVideos

    return KTHVideos(
        paths[0],
        num_frames=a.frames,
        stride=a.stride,
        image_size=a.size,
        test_persons=_ranges(a.test_persons),
    )


def _arrays(paths: list[str], a: Any) -> Any:
    from .generic import GenericArrays

    sizes = _split_sizes(a.splits, float) if a.splits else None
    return GenericArrays(
        paths[0],
        key=a.key,
        value_scale=a.value_scale,
        split=a.split,
        split_sizes=sizes,
        seed=a.seed,
    )


def _window(frames: int, stride: int) -> dict[str, dict[str, Any]]:
    return {
        "--frames": {"type": int, "default": frames, "help": f"window length (default {frames})"},
        "--stride": {"type": int, "default": stride, "help": f"window stride (default {stride})"},
    }


FORMATS: dict[str, SourceFormat] = {
    "mmnist-npy": SourceFormat(
        "Moving MNIST mnist_test_seq.npy (T×N×H×W uint8)",
        _mmnist,
        {"--splits": {"default": "test=-1", "help": "e.g. train=8000,val=1000,test=-1"}},
    ),
    "seed-mmnist": SourceFormat(
        "the seed project's Moving MNIST npz folders (inputs/labels)", _seed("mmnist")
    ),
    "seed-kth": SourceFormat("the seed project's KTH PNG-frame folders", _seed("kth")),
    "seed-taxibj": SourceFormat("the seed project's TaxiBJ npy folders", _seed("taxibj")),
    "taxibj-h5": SourceFormat(
        "TaxiBJ BJ*_M32x32_T30_InOut.h5 files, gap-free windows, split by date",
        _taxibj,
        {
            **_window(8, 1),
            "--test-days": {"type": int, "default": 28, "help": "last days as test"},
            "--val-days": {"type": int, "default": 0, "help": "days before test as val"},
        },
        many_paths=True,
    ),
    "kth-avi": SourceFormat(
        "KTH personNN_<action>_dM_uncomp.avi videos, gray, resized, windows, split by person",
        _kth,
        {
            **_window(20, 20),
            "--size": {"type": int, "default": 128, "help": "resized frame size"},
            "--test-persons": {"default": "17-25", "help": "persons in the test split"},
        },
    ),
    "arrays": SourceFormat(
        "a folder of per-sequence .npy/.npz arrays (T×C×H×W or T×H×W)",
        _arrays,
        {
            "--key": {"default": None, "help": "array name inside .npz files"},
            "--value-scale": {"type": float, "default": None, "help": "stored value range"},
            "--split": {"default": "train", "help": "split name without sub-folders"},
            "--splits": {
                "default": None,
                "help": "cut a flat folder: train=0.8,val=0.1,test=0.1 (fractions or counts)",
            },
            "--seed": {"type": int, "default": 0, "help": "seed of the --splits file order"},
        },
    ),
}
