"""Raw source → shards + index: the driver behind `stpdist shard …`.

A source (see `sources/`) lists work items per split and turns one item into samples
`(key, frames T×C×H×W, meta)`. The driver loads items in parallel worker processes, writes
them in item order (so the output does not depend on the worker count), shows progress,
verifies the written counts, and never leaves a half-written split looking valid: a split
folder gets its `index.json` only once complete, and is removed on error.
"""

from __future__ import annotations

import shutil
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from tqdm.auto import tqdm

from .format import SplitIndex, SplitWriter, read_index

Sample = tuple[str, np.ndarray, dict[str, Any]]


class Source(Protocol):
    name: str
    value_scale: float
    """Scale of the stored values (frames / scale in [0, 1])."""
    grid: float | None
    """When set, float frames that lie exactly on the k/grid lattice are stored as uint8."""

    def splits(self) -> dict[str, list[Any]]: ...

    def load(self, item: Any) -> list[Sample]: ...

    def args(self) -> dict[str, Any]: ...


class _Empty(Exception):
    """A split that yielded no samples: it is not written."""


class OffGrid(Exception):
    """A sample's values do not lie on the uint8 grid: the split is stored as float32."""


def _quantize(frames: np.ndarray, grid: float) -> np.ndarray:
    scaled = frames.astype(np.float64) * grid
    rounded = np.round(scaled)
    if (
        rounded.min() < 0
        or rounded.max() > 255
        or not np.array_equal((rounded / grid).astype(frames.dtype), frames)
    ):
        raise OffGrid
    return rounded.astype(np.uint8)


def prepare_output(out: str | Path, overwrite: bool) -> Path:
    """Refuse a non-empty `out` unless `overwrite`, which empties it."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{out} is not empty; pass --overwrite to replace it")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    return out


def _write_split(
    source: Source,
    folder: Path,
    split: str,
    items: list[Any],
    pool: Any,
    quantize: bool,
    samples_per_shard: int,
    progress: bool,
) -> SplitIndex:
    scale = 255.0 if quantize else source.value_scale
    args = {**source.args(), "split": split, "stored_as_uint8": quantize}
    loaded = pool.map(source.load, items) if pool else map(source.load, items)
    with SplitWriter(
        folder,
        split,
        value_scale=scale,
        samples_per_shard=samples_per_shard,
        source=source.name,
        args=args,
    ) as writer:
        for samples in tqdm(
            loaded,
            total=len(items),
            desc=f"{source.name} {split}",
            disable=not progress,
            unit="item",
        ):
            for key, frames, meta in samples:
                if quantize:
                    frames = _quantize(frames, source.grid)
                elif frames.dtype == np.float64:
                    frames = frames.astype(np.float32)
                writer.write(key, frames, meta)
        if writer.shape is None:
            raise _Empty
    return read_index(folder)


def convert(
    source: Source,
    out: str | Path,
    *,
    workers: int = 1,
    overwrite: bool = False,
    samples_per_shard: int = 1000,
    progress: bool = True,
) -> dict[str, SplitIndex]:
    """Write every split of `source` under `out`; returns the indexes."""
    out = prepare_output(out, overwrite)
    splits = source.splits()
    if not any(splits.values()):
        raise FileNotFoundError(f"{source.name}: found nothing to convert")
    written: dict[str, SplitIndex] = {}
    pool = ProcessPoolExecutor(workers) if workers > 1 else None
    try:
        for split, items in splits.items():
            if not items:
                continue
            folder = out / split
            quantize = source.grid is not None
            try:
                try:
                    written[split] = _write_split(
                        source, folder, split, items, pool, quantize, samples_per_shard, progress
                    )
                except OffGrid:
                    shutil.rmtree(folder, ignore_errors=True)
                    tqdm.write(
                        f"{split}: values are not all on the 1/{source.grid:g} grid; "
                        "storing float32"
                    )
                    written[split] = _write_split(
                        source, folder, split, items, pool, False, samples_per_shard, progress
                    )
            except _Empty:
                shutil.rmtree(folder, ignore_errors=True)
                tqdm.write(f"{split}: no samples; not written")
            except BaseException:
                shutil.rmtree(folder, ignore_errors=True)
                raise
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    return written
