"""Synthetic moving digits (Srivastava et al., 2015): the embedded default dataset.

Digits of 28×28 move on a square canvas with a fixed step (0.1 of the free range per
frame), bounce off the borders and combine by max. Without MNIST digits at hand, glyphs
are rendered with Pillow's built-in font at varied size, rotation and stroke, so nothing
is downloaded. Sample i of a split is a pure function of (seed, split, i): the output
does not depend on the number of workers.
"""

from __future__ import annotations

import functools
import gzip
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..errors import InputError

DIGIT = 28
SPLIT_IDS = {"train": 0, "val": 1, "test": 2}


def render_glyph(rng: np.random.Generator) -> np.ndarray:
    """A 28×28 uint8 digit drawn with Pillow's font: random digit, size, rotation, stroke."""
    digit = str(int(rng.integers(10)))
    font = ImageFont.load_default(size=int(rng.integers(18, 27)))
    canvas = Image.new("L", (2 * DIGIT, 2 * DIGIT), 0)
    draw = ImageDraw.Draw(canvas)
    stroke = int(rng.integers(0, 3))
    draw.text(
        (DIGIT, DIGIT),
        digit,
        fill=255,
        font=font,
        anchor="mm",
        stroke_width=stroke,
        stroke_fill=255,
    )
    canvas = canvas.rotate(
        float(rng.uniform(-20, 20)), resample=Image.BILINEAR, center=(DIGIT, DIGIT)
    )
    left = DIGIT // 2
    return np.asarray(canvas.crop((left, left, left + DIGIT, left + DIGIT)), dtype=np.uint8)


def load_mnist_digits(path: str | Path) -> np.ndarray:
    """MNIST images from `train-images-idx3-ubyte(.gz)`: N×28×28 uint8."""
    from .format import require_file

    path = require_file(path)  # a FIFO would block the reader
    expected = "expected MNIST images in idx3 format (train-images-idx3-ubyte, optionally .gz)"
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            data = handle.read()
    except (OSError, EOFError, gzip.BadGzipFile) as exc:  # not gzip, truncated, unreadable
        raise InputError(f"{path}: unreadable ({exc}); {expected}") from None
    magic, count, rows, cols = (int.from_bytes(data[i : i + 4], "big") for i in range(0, 16, 4))
    if magic != 2051 or rows != DIGIT or cols != DIGIT or len(data) != 16 + count * rows * cols:
        raise InputError(f"{path}: not an MNIST idx3 image file of 28×28 digits; {expected}")
    if count == 0:
        raise InputError(f"{path}: holds no images; {expected}")
    return np.frombuffer(data, dtype=np.uint8, offset=16).reshape(count, DIGIT, DIGIT)


def moving_digits_sample(
    seed: int,
    split: str,
    index: int,
    *,
    num_frames: int = 20,
    image_size: int = 64,
    num_digits: int = 2,
    digit_size: int = DIGIT,
    digits: np.ndarray | None = None,
) -> np.ndarray:
    """Sequence `index` of `split`: T×1×H×W uint8, a function of its arguments alone.
    `digit_size` below 28 shrinks the glyphs (so they have room to move on a small canvas)."""
    rng = np.random.default_rng([seed, SPLIT_IDS.get(split, 3), index])
    return draw_moving_digits(
        rng,
        num_frames=num_frames,
        image_size=image_size,
        num_digits=num_digits,
        digit_size=digit_size,
        digits=digits,
    )


def draw_moving_digits(
    rng: np.random.Generator,
    *,
    num_frames: int = 20,
    image_size: int = 64,
    num_digits: int = 2,
    digit_size: int = DIGIT,
    digits: np.ndarray | None = None,
) -> np.ndarray:
    """The generator shared by the shard writer and the on-the-fly train source
    (`data/onthefly.py`): one T×1×H×W uint8 sequence drawn from `rng` (digit choice, start,
    direction; step 0.1 of the free range per frame, bounce, max-combine)."""
    if not 0 < digit_size <= image_size:
        raise ValueError(f"digit_size {digit_size} does not fit a {image_size}-pixel canvas")
    free = image_size - digit_size
    step = 0.1 * free
    frames = np.zeros((num_frames, 1, image_size, image_size), dtype=np.uint8)
    for _ in range(num_digits):
        glyph = digits[rng.integers(len(digits))] if digits is not None else render_glyph(rng)
        if digit_size != DIGIT:
            size = (digit_size, digit_size)
            glyph = np.asarray(Image.fromarray(glyph).resize(size, Image.Resampling.BILINEAR))
        y, x = rng.uniform(0, free, size=2)
        theta = rng.uniform(0, 2 * np.pi)
        vy, vx = np.sin(theta) * step, np.cos(theta) * step
        for t in range(num_frames):
            top, left = int(round(y)), int(round(x))
            region = frames[t, 0, top : top + digit_size, left : left + digit_size]
            np.maximum(region, glyph, out=region)
            y, x = y + vy, x + vx
            if not 0 <= y <= free:  # bounce off the top/bottom border
                vy = -vy
                y = min(max(y, 0.0), free)
            if not 0 <= x <= free:
                vx = -vx
                x = min(max(x, 0.0), free)
    return frames


def check_settings(
    counts: dict[str, int], num_frames: int, image_size: int, digit_size: int, num_digits: int
) -> None:
    """The generator's settings, before any work; errors name `stpdist synth`'s flags."""
    for split, count in counts.items():
        if isinstance(count, bool) or not isinstance(count, int | np.integer):
            raise InputError(f"synthetic moving digits: --{split} {count!r}: expected a count")
        if count < 0:
            raise InputError(
                f"synthetic moving digits: --{split} {count} is negative: expected a count ≥ 0"
            )
    for flag, value in (
        ("--frames", num_frames),
        ("--size", image_size),
        ("--num-digits", num_digits),
    ):
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
            raise InputError(f"synthetic moving digits: {flag} {value}: expected at least 1")
    if not 0 < digit_size <= image_size:
        raise InputError(
            f"synthetic moving digits: --digit-size {digit_size} does not fit --size "
            f"{image_size}: expected 1 ≤ digit size ≤ frame size"
        )


def check_synth_counts(train: int, val: int, test: int) -> dict[str, int]:
    """`stpdist synth`'s `--train/--val/--test` as counts per split: train at least 1 (as the
    config's `data.synthesize.train`), val and test at least 0."""
    if isinstance(train, bool) or not isinstance(train, int | np.integer) or train < 1:
        raise InputError(
            f"synthetic moving digits: --train {train}: expected at least 1 training sequence"
        )
    counts = {"train": train, "val": val, "test": test}
    check_settings(counts, 1, DIGIT, DIGIT, 1)
    return counts


_CHUNK = 16  # sequences per work item: fewer, larger pieces for the worker pool


@functools.lru_cache(maxsize=2)
def _digits(path: str | None) -> np.ndarray | None:
    """MNIST digits, read once per process (not once per sample)."""
    return load_mnist_digits(path) if path else None


@dataclass
class MovingDigits:
    """Synthetic moving digits as a raw-format source: `convert()` writes them as it writes
    every other format (staging folder, workers, progress, verification, cleanup)."""

    counts: dict[str, int]
    """Sequences per split."""
    seed: int = 0
    num_frames: int = 20
    image_size: int = 64
    num_digits: int = 2
    digit_size: int = DIGIT
    digits: str | None = None
    """MNIST `train-images-idx3-ubyte(.gz)` (None: Pillow glyphs)."""
    name: str = "synthetic moving digits"
    value_scale: float = 255.0
    grid: float | None = None

    def __post_init__(self) -> None:  # before any work, not in a worker
        check_settings(
            self.counts, self.num_frames, self.image_size, self.digit_size, self.num_digits
        )
        if self.digits is not None:
            self.digits = str(self.digits)
            _digits(self.digits)  # fail early, naming the file

    @property
    def paths(self) -> list[str]:  # what `convert` must never overwrite
        return [self.digits] if self.digits else []

    def describe(self, item: tuple[str, int, int]) -> str:
        """What a work item generates (for messages)."""
        return f"synthetic moving digits, {item[0]} sequences {item[1]}..{item[2] - 1}"

    def splits(self) -> dict[str, list[Any]]:
        return {
            split: [(split, a, min(a + _CHUNK, count)) for a in range(0, count, _CHUNK)]
            for split, count in self.counts.items()
        }

    def load(self, item: tuple[str, int, int]) -> list[tuple[str, np.ndarray, dict]]:
        split, start, stop = item
        shape = {
            "num_frames": self.num_frames,
            "image_size": self.image_size,
            "num_digits": self.num_digits,
            "digit_size": self.digit_size,
        }
        digits = _digits(self.digits)
        return [
            (
                f"{split}_{i:07d}",
                moving_digits_sample(self.seed, split, i, digits=digits, **shape),
                {"index": i},
            )
            for i in range(start, stop)
        ]

    def args(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "num_frames": self.num_frames,
            "image_size": self.image_size,
            "num_digits": self.num_digits,
            "digit_size": self.digit_size,
            "digits": self.digits,
            "counts": self.counts,
        }


def write_moving_digits(
    out: str | Path,
    counts: dict[str, int],
    *,
    seed: int = 0,
    num_frames: int = 20,
    image_size: int = 64,
    num_digits: int = 2,
    digit_size: int = DIGIT,
    digits_path: str | Path | None = None,
    samples_per_shard: int = 128,
    workers: int = 1,
    progress: bool = True,
    overwrite: bool = False,
) -> Path:
    """Generate `counts[split]` sequences per split into `out/<split>/` shards + index (a
    split of 0 is not written: on-the-fly training generates its own train sequences)."""
    from .convert import convert

    check_settings(counts, num_frames, image_size, digit_size, num_digits)
    if not any(counts.values()):
        raise InputError(
            f"synthetic moving digits: {', '.join(f'--{s} 0' for s in counts)}: nothing to generate"
        )
    source = MovingDigits(
        {split: count for split, count in counts.items() if count > 0},
        seed=seed,
        num_frames=num_frames,
        image_size=image_size,
        num_digits=num_digits,
        digit_size=digit_size,
        digits=str(digits_path) if digits_path else None,
    )
    convert(
        source,
        out,
        workers=workers,
        overwrite=overwrite,
        samples_per_shard=samples_per_shard,
        progress=progress,
    )
    return Path(out)


def synthesized_differently(
    root: str | Path,
    counts: dict[str, int],
    *,
    seed: int = 0,
    num_frames: int = 20,
    image_size: int = 64,
    num_digits: int = 2,
    digit_size: int = DIGIT,
    digits_path: str | Path | None = None,
    advice: str | None = None,
) -> str | None:
    """When `root` holds moving digits generated with other settings than these (the
    arguments of `write_moving_digits`, as `data.synthesize` gives them), one line naming
    the settings that differ and how to regenerate (or `advice`, what to do, in its place);
    None when they agree (or `root` holds no generated digits). Reads the generator
    arguments each split's index records; a split of count 0 (on-the-fly training) is not
    compared."""
    from .format import INDEX_FILE, read_index

    wanted = {
        "seed": seed,
        "num_frames": num_frames,
        "image_size": image_size,
        "num_digits": num_digits,
        "digit_size": digit_size,
        "digits": str(digits_path) if digits_path else None,
    }
    differ: dict[str, tuple[Any, Any]] = {}
    for split, count in counts.items():
        folder = Path(root) / split
        if count < 1 or not (folder / INDEX_FILE).is_file():
            continue
        index = read_index(folder)
        if index.source != MovingDigits.name:
            return None  # converted data: not ours to compare
        had = index.args
        for name, value in wanted.items():
            if name in had and had[name] != value:
                differ.setdefault(name, (had[name], value))
        stored = index.num_samples
        if stored != count:
            differ.setdefault(split, (stored, count))
    if not differ:
        return None
    changes = ", ".join(f"{name} {old} → {new}" for name, (old, new) in differ.items())
    advice = advice or f"training on the existing data; delete {root} to regenerate it"
    return (
        f"{root} holds moving digits generated with other settings than data.synthesize "
        f"({changes}): {advice}"
    )
