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
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        data = handle.read()
    magic, count, rows, cols = (int.from_bytes(data[i : i + 4], "big") for i in range(0, 16, 4))
    if magic != 2051 or rows != DIGIT or cols != DIGIT or len(data) != 16 + count * rows * cols:
        raise ValueError(f"{path}: not an MNIST idx3 image file of 28×28 digits")
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

    def __post_init__(self) -> None:
        for split, count in self.counts.items():
            if count < 0:
                raise ValueError(f"synthetic moving digits: {split} count {count} is negative")
        if not 0 < self.digit_size <= self.image_size:  # before any work, not in a worker
            raise ValueError(
                f"digit_size {self.digit_size} does not fit a {self.image_size}-pixel canvas"
            )
        if self.digits is not None:
            self.digits = str(self.digits)
            _digits(self.digits)  # fail early, naming the file

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
    """Generate `counts[split]` sequences per split into `out/<split>/` shards + index."""
    from .convert import convert

    for split, count in counts.items():
        if count < 0:
            raise ValueError(f"synthetic moving digits: --{split} {count} is negative")
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
