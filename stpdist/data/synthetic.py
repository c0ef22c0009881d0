"""Synthetic moving digits (Srivastava et al., 2015): the embedded default dataset.

Digits of 28×28 move on a square canvas with a fixed step (0.1 of the free range per
frame), bounce off the borders and combine by max. Without MNIST digits at hand, glyphs
are rendered with Pillow's built-in font at varied size, rotation and stroke, so nothing
is downloaded. Sample i of a split is a pure function of (seed, split, i): the output
does not depend on the number of workers.
"""

from __future__ import annotations

import gzip
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from tqdm.auto import tqdm

from .format import SplitWriter

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
    path = Path(path)
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
    digits: np.ndarray | None = None,
) -> np.ndarray:
    """Sequence `index` of `split`: T×1×H×W uint8, a function of its arguments alone."""
    rng = np.random.default_rng([seed, SPLIT_IDS.get(split, 3), index])
    free = image_size - DIGIT
    step = 0.1 * free
    frames = np.zeros((num_frames, 1, image_size, image_size), dtype=np.uint8)
    for _ in range(num_digits):
        glyph = digits[rng.integers(len(digits))] if digits is not None else render_glyph(rng)
        y, x = rng.uniform(0, free, size=2)
        theta = rng.uniform(0, 2 * np.pi)
        vy, vx = np.sin(theta) * step, np.cos(theta) * step
        for t in range(num_frames):
            top, left = int(round(y)), int(round(x))
            region = frames[t, 0, top : top + DIGIT, left : left + DIGIT]
            np.maximum(region, glyph, out=region)
            y, x = y + vy, x + vx
            if not 0 <= y <= free:  # bounce off the top/bottom border
                vy = -vy
                y = min(max(y, 0.0), free)
            if not 0 <= x <= free:
                vx = -vx
                x = min(max(x, 0.0), free)
    return frames


def _make(args: tuple) -> np.ndarray:
    seed, split, index, kwargs, digits_path = args
    digits = load_mnist_digits(digits_path) if digits_path else None
    return moving_digits_sample(seed, split, index, digits=digits, **kwargs)


def write_moving_digits(
    out: str | Path,
    counts: dict[str, int],
    *,
    seed: int = 0,
    num_frames: int = 20,
    image_size: int = 64,
    num_digits: int = 2,
    digits_path: str | Path | None = None,
    samples_per_shard: int = 128,
    workers: int = 1,
    progress: bool = True,
) -> Path:
    """Generate `counts[split]` sequences per split into `out/<split>/` shards + index."""
    out = Path(out)
    kwargs = {"num_frames": num_frames, "image_size": image_size, "num_digits": num_digits}
    args = {"seed": seed, **kwargs, "digits": str(digits_path) if digits_path else None}
    if digits_path is not None:
        load_mnist_digits(digits_path)  # fail early, naming the file
    pool = ProcessPoolExecutor(workers) if workers > 1 else None
    try:
        for split, count in counts.items():
            if count <= 0:
                continue
            jobs = [(seed, split, i, kwargs, digits_path) for i in range(count)]
            samples = pool.map(_make, jobs, chunksize=16) if pool else map(_make, jobs)
            with SplitWriter(
                out / split,
                split,
                value_scale=255,
                samples_per_shard=samples_per_shard,
                source="synthetic moving digits",
                args={**args, "split": split, "count": count},
            ) as writer:
                for i, frames in enumerate(
                    tqdm(samples, total=count, desc=f"synth {split}", disable=not progress)
                ):
                    writer.write(f"{split}_{i:07d}", frames, {"index": i})
    finally:
        if pool is not None:
            pool.shutdown()
    return out
