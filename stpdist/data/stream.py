"""Loaders the Trainer consumes: deterministic, equal batches per rank, resumable.

The Trainer speaks to data through two small protocols (duck-typed):

* train source: `batches_per_epoch(ctx) -> int` (the same on every rank) and
  `iterate(ctx, epoch, start) -> Iterator[(inputs, targets[, keys])]`, which yields the batches
  of `epoch` from batch index `start` on, exactly those an uninterrupted pass yields.
* eval source: `iterate(ctx) -> Iterator[(inputs, targets, keys)]`; every sample exactly
  once across all ranks, ranks may hold different batch counts.

`ctx` (a `LoaderContext`) carries rank, world size, seed and workers, known only once
the Trainer has started the distributed backend. Plain map-style `DataLoader`s, as the
seed project's users pass them, are adapted by `as_train_source` / `as_eval_source`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, SequentialSampler

from .format import FRAMES_EXT, ShardFormatError, decode_frames, iter_shard, read_index


@dataclass(frozen=True)
class LoaderContext:
    rank: int = 0
    world_size: int = 1
    seed: int = 0
    batch_multiple: int = 1
    """Batches per epoch are a multiple of this (the gradient accumulation steps), so
    every epoch ends on an optimizer step."""
    num_workers: int | None = None
    """Overrides the loader's own worker count when set."""


def epoch_permutation(num_samples: int, seed: int, epoch: int) -> np.ndarray:
    """The sample order of one epoch: a function of (seed, epoch) alone."""
    return np.random.default_rng([seed, epoch]).permutation(num_samples)


def contiguous_share(num_items: int, rank: int, world_size: int) -> range:
    """Rank `rank`'s contiguous slice of `num_items` items (sizes differ by at most one)."""
    base, extra = divmod(num_items, world_size)
    start = rank * base + min(rank, extra)
    return range(start, start + base + (1 if rank < extra else 0))


class MapTrainLoader:
    """Training batches from a map-style dataset, sharded across ranks.

    Global micro-batch i of an epoch is `perm[i*W*B:(i+1)*W*B]` and rank r takes its
    r-th slice of B, so W ranks × batch B see exactly the samples of 1 rank × batch W·B.
    Fewer than W·B·batch_multiple samples are dropped per epoch, a different set each
    epoch.
    """

    def __init__(
        self,
        dataset: Dataset,
        batch_size: int,
        *,
        shuffle: bool = True,
        collate_fn: Any = None,
        num_workers: int = 0,
    ) -> None:
        self.dataset = dataset
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.collate_fn = collate_fn
        self.num_workers = num_workers

    def batches_per_epoch(self, ctx: LoaderContext) -> int:
        per_group = self.batch_size * ctx.world_size * ctx.batch_multiple
        count = (len(self.dataset) // per_group) * ctx.batch_multiple
        if count == 0:
            raise ValueError(
                f"training set of {len(self.dataset)} samples is smaller than one optimizer "
                f"step ({ctx.world_size} ranks × batch {self.batch_size} × "
                f"{ctx.batch_multiple} accumulation steps)"
            )
        return count

    def iterate(self, ctx: LoaderContext, epoch: int, start: int = 0) -> Iterator[Any]:
        num = len(self.dataset)
        order = epoch_permutation(num, ctx.seed, epoch) if self.shuffle else np.arange(num)
        width = self.batch_size * ctx.world_size
        batches = [
            order[i * width + ctx.rank * self.batch_size :][: self.batch_size].tolist()
            for i in range(start, self.batches_per_epoch(ctx))
        ]
        workers = self.num_workers if ctx.num_workers is None else ctx.num_workers
        loader = DataLoader(
            self.dataset,
            batch_sampler=batches,
            collate_fn=self.collate_fn,
            num_workers=workers,
            # its own generator: a DataLoader otherwise draws worker seeds from the global
            # RNG, and a run resumed mid-epoch would then drift from an uninterrupted one
            generator=torch.Generator().manual_seed(ctx.seed * 100_003 + epoch),
        )
        yield from loader


class _Keyed(Dataset):
    """Wraps a map-style dataset so each item carries its index as the sample key."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[Any, str]:
        return self.dataset[index], f"{index:08d}"


class MapEvalLoader:
    """Evaluation batches from a map-style dataset: each rank a contiguous share, every
    sample exactly once, keys = zero-padded dataset indices."""

    def __init__(
        self, dataset: Dataset, batch_size: int, *, collate_fn: Any = None, num_workers: int = 0
    ) -> None:
        self.dataset = dataset
        self.batch_size = batch_size
        self.collate_fn = collate_fn
        self.num_workers = num_workers

    def __len__(self) -> int:
        return len(self.dataset)

    def iterate(self, ctx: LoaderContext) -> Iterator[tuple[Any, Any, list[str]]]:
        share = contiguous_share(len(self.dataset), ctx.rank, ctx.world_size)
        subset = torch.utils.data.Subset(_Keyed(self.dataset), list(share))
        collate = self.collate_fn or torch.utils.data.default_collate

        def collate_keyed(items: Sequence[tuple[Any, str]]) -> tuple[Any, Any, list[str]]:
            inputs, targets = unpack_batch(collate([item for item, _ in items]))[:2]
            return inputs, targets, [key for _, key in items]

        workers = self.num_workers if ctx.num_workers is None else ctx.num_workers
        yield from DataLoader(
            subset,
            batch_size=self.batch_size,
            collate_fn=collate_keyed,
            num_workers=workers,
            generator=torch.Generator().manual_seed(ctx.seed),
        )


def unpack_batch(batch: Any) -> tuple[torch.Tensor, torch.Tensor | None, list[str] | None]:
    """(inputs, targets, keys) from a tuple/list of 2 or 3 items or a dict."""
    if isinstance(batch, dict):
        return batch["inputs"], batch.get("targets"), batch.get("keys")
    if isinstance(batch, list | tuple) and len(batch) in (2, 3):
        return batch[0], batch[1], (batch[2] if len(batch) == 3 else None)
    raise TypeError(
        "a batch must be (inputs, targets), (inputs, targets, keys) or a dict with "
        f"'inputs'/'targets'/'keys'; got {type(batch).__name__}"
    )


def _map_style(data: Any, role: str) -> DataLoader:
    if not isinstance(data, DataLoader):
        raise TypeError(
            f"{role} data must be a stpdist stream or a torch DataLoader; got {type(data).__name__}"
        )
    if isinstance(data.dataset, IterableDataset):
        raise TypeError(
            f"{role} DataLoader wraps an IterableDataset, which cannot be split exactly across "
            "ranks; use a map-style dataset or a stpdist shard stream"
        )
    if data.batch_size is None:
        raise TypeError(f"{role} DataLoader has no batch_size (custom batch_sampler unsupported)")
    return data


def as_train_source(data: Any) -> Any:
    """A train source for `data`: a stpdist stream as is, a DataLoader adapted."""
    if hasattr(data, "iterate") and hasattr(data, "batches_per_epoch"):
        return data
    loader = _map_style(data, "training")
    return MapTrainLoader(
        loader.dataset,
        loader.batch_size,
        shuffle=not isinstance(loader.sampler, SequentialSampler),
        collate_fn=loader.collate_fn,
        num_workers=loader.num_workers,
    )


def as_eval_source(data: Any) -> Any:
    """An eval source for `data`: a stpdist stream as is, a DataLoader adapted."""
    if hasattr(data, "iterate") and not hasattr(data, "batches_per_epoch"):
        return data
    loader = _map_style(data, "evaluation")
    return MapEvalLoader(
        loader.dataset,
        loader.batch_size,
        collate_fn=loader.collate_fn,
        num_workers=loader.num_workers,
    )


# ---------------------------------------------------------------------------- shard streams
# Frames are stored T×C×H×W; batches are inputs B×T_in×C×H×W, targets B×T_out×C×H×W.


_Raw = tuple[str, bytes, str]  # key, frames.npy bytes, where it came from (for errors)
log = logging.getLogger("stpdist")


class _ShardSource:
    """Shared by the train and eval streams: index, shard URLs, decoding, frame split."""

    def __init__(
        self,
        folder: str | Path,
        *,
        batch_size: int,
        num_input_frames: int,
        num_output_frames: int,
        url_template: str | None = None,
        skip_bad: bool = False,
    ) -> None:
        self.folder = Path(folder)
        self.skip_bad = skip_bad
        """Skip unreadable samples and truncated shards (counted and reported) instead of
        raising; training batches are then filled up with repeats of good samples."""
        self.bad_samples = 0
        self.index = read_index(self.folder)
        self.batch_size = batch_size
        self.num_input_frames = num_input_frames
        self.num_output_frames = num_output_frames
        # a local folder by default; `pipe:…{name}…` or `https://…/{name}` for remote shards
        self.url_template = url_template or str(self.folder / "{name}")
        stored = self.index.shape[0]
        if num_input_frames + num_output_frames > stored:
            raise ValueError(
                f"{self.folder}: sequences hold {stored} frames, fewer than "
                f"num_input_frames + num_output_frames = {num_input_frames + num_output_frames}"
            )
        self.offsets = np.cumsum([0] + [s.num_samples for s in self.index.shards])

    @property
    def num_samples(self) -> int:
        return int(self.offsets[-1])

    def _url(self, shard: int) -> str:
        return self.url_template.format(name=self.index.shards[shard].name)

    def _read_span(self, order: Sequence[int], start: int, stop: int) -> Iterator[_Raw]:
        """Raw samples (key, frames bytes, where) at positions [start, stop) of the sequence
        formed by the shards in `order`; only the shards overlapping the span are opened."""
        position = 0
        for shard in order:
            count = self.index.shards[shard].num_samples
            if position + count <= start:
                position += count
                continue
            if position >= stop:
                return
            url = self._url(shard)
            first, seen = position, 0
            try:
                for key, sample in iter_shard(url):
                    if start <= position < stop:
                        where = f"{url}: member {key}.{FRAMES_EXT}"
                        if FRAMES_EXT not in sample:
                            raise ShardFormatError(f"{url}: sample '{key}' has no {FRAMES_EXT}")
                        yield key, sample[FRAMES_EXT], where
                    position += 1
                    seen += 1
                    if position >= stop:
                        return
                if seen != count:
                    raise ShardFormatError(f"{url}: holds {seen} samples, index says {count}")
            except ShardFormatError as exc:
                if not self.skip_bad:
                    raise
                # the rest of this shard inside the span is lost
                lost = min(first + count, stop) - max(position, start)
                self._skip(max(lost, 0), str(exc))
                position = first + count

    def _skip(self, count: int, why: str) -> None:
        self.bad_samples += count
        log.warning("skipping %d sample(s): %s", count, why)

    def _decode(self, items: list[_Raw]) -> list[tuple[str, np.ndarray]]:
        """Decoded (key, frames); in skip mode a bad sample is left out (and counted)."""
        good = []
        for key, raw, where in items:
            try:
                frames = decode_frames(raw, where)
                if list(frames.shape) != self.index.shape:
                    raise ShardFormatError(
                        f"{where}: shape {list(frames.shape)} differs from the index's "
                        f"{self.index.shape}"
                    )
            except ShardFormatError as exc:
                if not self.skip_bad:
                    raise
                self._skip(1, str(exc))
                continue
            good.append((key, frames))
        return good

    def _batch(
        self, decoded: list[tuple[str, np.ndarray]]
    ) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
        frames = torch.from_numpy(np.stack([f for _, f in decoded]))
        t_in, t_out = self.num_input_frames, self.num_output_frames
        scale = self.index.value_scale
        # .float() of a time slice writes a fresh contiguous tensor: one pass per part
        inputs = frames[:, :t_in].float().div_(scale)
        targets = frames[:, t_in : t_in + t_out].float().div_(scale)
        return inputs, targets, [key for key, _ in decoded]

    def _report(self, what: str) -> None:
        if self.bad_samples:
            log.warning("%s: %d bad sample(s) skipped", what, self.bad_samples)


def _worker() -> tuple[int, int]:
    info = torch.utils.data.get_worker_info()
    return (0, 1) if info is None else (info.id, info.num_workers)


def _loader(dataset: IterableDataset, workers: int, seed: int) -> DataLoader:
    return DataLoader(
        dataset,
        batch_size=None,
        num_workers=workers,
        generator=torch.Generator().manual_seed(seed),
    )


class ShardTrainStream(_ShardSource):
    """Training batches from a split's shards.

    Each epoch the shards are ordered by a permutation of (seed, epoch); the resulting
    sample sequence is cut into equal contiguous spans per rank, and each span into equal
    chunks per worker, each chunk a whole number of batches. So every rank yields the same,
    known number of batches; no sample comes twice; fewer than ranks × workers × batch
    samples are dropped, a different set each epoch. Within a chunk, samples pass a seeded
    shuffle buffer (raw bytes; only emitted batches are decoded). Batch j of a rank comes
    from worker j mod K (DataLoader's round robin), so resuming at batch b rotates the
    workers and each skips the batches it had already produced.
    """

    def __init__(self, folder: str | Path, *, shuffle_buffer: int = 256, **kwargs: Any) -> None:
        super().__init__(folder, **kwargs)
        self.shuffle_buffer = shuffle_buffer

    def _layout(self, ctx: LoaderContext) -> tuple[int, int, int, int]:
        """(workers K, span per rank, chunk per worker, batches per epoch per rank)."""
        workers = max(1, ctx.num_workers or 0)
        span = self.num_samples // ctx.world_size
        batches_per_worker = (span // workers) // self.batch_size
        total = (workers * batches_per_worker // ctx.batch_multiple) * ctx.batch_multiple
        if total == 0:
            raise ValueError(
                f"{self.folder}: {self.num_samples} samples are too few for {ctx.world_size} "
                f"ranks × {workers} workers × batch {self.batch_size} × "
                f"{ctx.batch_multiple} accumulation steps"
            )
        return workers, span, span // workers, total

    def batches_per_epoch(self, ctx: LoaderContext) -> int:
        return self._layout(ctx)[3]

    def iterate(self, ctx: LoaderContext, epoch: int, start: int = 0) -> Iterator[Any]:
        workers = self._layout(ctx)[0]
        dataset = _TrainEpoch(self, ctx, epoch, start)
        yield from _loader(dataset, workers if workers > 1 else 0, ctx.seed)


class _TrainEpoch(IterableDataset):
    def __init__(self, stream: ShardTrainStream, ctx: LoaderContext, epoch: int, start: int):
        self.stream, self.ctx, self.epoch, self.start = stream, ctx, epoch, start

    def __iter__(self) -> Iterator[Any]:
        stream, ctx = self.stream, self.ctx
        workers, span, chunk, total = stream._layout(ctx)
        physical, _ = _worker()
        logical = (physical + self.start) % workers
        skip = len(range(logical, self.start, workers))
        emit = len(range(logical, total, workers))
        order = epoch_permutation(len(stream.index.shards), ctx.seed, self.epoch)
        first = ctx.rank * span + logical * chunk
        raw = stream._read_span(order, first, first + emit * stream.batch_size)
        rng = np.random.default_rng([ctx.seed, self.epoch, ctx.world_size, ctx.rank, logical])
        stream.bad_samples = 0
        spares: list[tuple[str, np.ndarray]] = []  # good samples to fill in for bad ones
        batch: list[_Raw] = []
        produced = 0

        def complete(decoded: list[tuple[str, np.ndarray]]) -> Any:
            if len(decoded) < stream.batch_size and not (decoded or spares):
                raise ShardFormatError(f"{stream.folder}: no readable sample to fill a batch")
            pool = decoded + spares
            while len(decoded) < stream.batch_size:
                decoded.append(pool[len(decoded) % len(pool)])
            spares[:] = decoded
            return stream._batch(decoded)

        for item in _shuffled(raw, stream.shuffle_buffer, rng):
            batch.append(item)
            if len(batch) == stream.batch_size:
                if produced >= skip:
                    yield complete(stream._decode(batch))
                produced += 1
                batch = []
                if produced == emit:
                    break
        while produced < emit:  # samples lost to bad shards: keep the batch count
            if produced >= skip:
                yield complete(stream._decode(batch))
            batch = []
            produced += 1
        stream._report(f"epoch {self.epoch}, rank {ctx.rank}, worker {logical}")


def _shuffled(items: Iterator[Any], size: int, rng: np.random.Generator) -> Iterator[Any]:
    """A seeded shuffle buffer of `size` items."""
    buffer: list[Any] = []
    for item in items:
        if len(buffer) < size:
            buffer.append(item)
            continue
        slot = int(rng.integers(size))
        buffer[slot], item = item, buffer[slot]
        yield item
    rng.shuffle(buffer)
    yield from buffer


class ShardEvalStream(_ShardSource):
    """Evaluation/predict batches: every sample exactly once across ranks, in index order
    split contiguously by rank then by worker; keys carried."""

    def __len__(self) -> int:
        return self.num_samples

    def iterate(self, ctx: LoaderContext) -> Iterator[tuple[torch.Tensor, torch.Tensor, list[str]]]:
        workers = max(1, ctx.num_workers or 0)
        yield from _loader(_EvalShare(self, ctx, workers), workers if workers > 1 else 0, ctx.seed)


class _EvalShare(IterableDataset):
    def __init__(self, stream: ShardEvalStream, ctx: LoaderContext, workers: int):
        self.stream, self.ctx, self.workers = stream, ctx, workers

    def __iter__(self) -> Iterator[Any]:
        stream = self.stream
        share = contiguous_share(stream.num_samples, self.ctx.rank, self.ctx.world_size)
        physical, _ = _worker()
        part = contiguous_share(len(share), physical, self.workers)
        first = share.start + part.start
        order = range(len(stream.index.shards))
        stream.bad_samples = 0
        batch: list[_Raw] = []
        for item in stream._read_span(order, first, first + len(part)):
            batch.append(item)
            if len(batch) == stream.batch_size:
                decoded = stream._decode(batch)
                if decoded:
                    yield stream._batch(decoded)
                batch = []
        decoded = stream._decode(batch)
        if decoded:
            yield stream._batch(decoded)
        stream._report(f"evaluation, rank {self.ctx.rank}, worker {physical}")
