"""Shard streams: the train and eval sources over WebDataset tar shards (see
`loading.py` for the protocols they implement): deterministic, equal batches per rank,
resumable mid-epoch. Before the first plan, every local shard's sample count is checked
against `index.json` (`check_counts`): read from its tar headers, unless the shard is, by
its fingerprint (count, size and ends), the one the index's writer recorded. An edited
index is never trusted to plan steps.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import shlex
import warnings
from collections.abc import Generator, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset

from .. import console
from ..errors import InputError
from .format import (
    FRAMES_EXT,
    INDEX_FILE,
    META_EXT,
    ShardFormatError,
    count_samples,
    decode_frames,
    iter_shard,
    read_index,
    shard_fingerprint,
)
from .loading import (
    EpochOrigin,
    LoaderContext,
    StoredFrames,
    contiguous_share,
    epoch_permutation,
    leave_stop_signals_to_the_trainer,
    shielded_batches,
)

__all__ = ["LoaderContext", "ShardEvalStream", "ShardTrainStream"]


# ---------------------------------------------------------------------------- shard streams
# Frames are stored T×C×H×W; batches are inputs B×T_in×C×H×W, targets B×T_out×C×H×W.


_Raw = tuple[str, bytes, str]  # key, frames.npy bytes, where it came from (for errors)
log = logging.getLogger("stpdist")

BANDS = 16
"""Layout 4 reads the epoch's sample sequence (its shards in a random order of the epoch's)
as this many equal bands, dealt in turn: position p of the sequence the ranks and workers
are cut from is sample p // BANDS of band p % BANDS. A worker's contiguous run is then a
piece of every band, read a sample of each in turn into its shuffle buffer, so a batch
draws from up to this many distant stretches of the split, at any number of ranks and
workers. Measured on 20 shards of 500 windows of a series (written in time order), a
batch of 16 carried what 12–14 independent windows do of a seasonal signal, from 1 to 64
ranks × workers (8 bands: 7; layout 3, one run read shard after shard through the buffer:
1.1–1.9). The same counts, another deal of samples; up to this many shards open per worker
at once, each entered where its piece begins (a local file is sought there). Shards behind
a `url_template` (`pipe:aws s3 cp …`, `https://…`) are read as in layout 3: a stream
cannot be sought, and entering 16 × ranks × workers shards part-way would download 7–27×
the split each epoch (measured at 4 × 4 and 8 × 8)."""


def shard_url(template: str, name: str, split: str) -> str:
    """`template` with `{name}` and `{split}` substituted; in a `pipe:` template (a shell
    command) each substitution is shell-quoted, so it stays one word whatever it holds."""
    quote = shlex.quote if template.startswith("pipe:") else str
    # plain replacement, not str.format: a command may hold other braces (`awk '{print}'`)
    return template.replace("{name}", quote(name)).replace("{split}", quote(split))


def _index_digest(folder: Path) -> str | None:
    """SHA-256 of `folder`'s index.json (None: unreadable)."""
    try:
        return hashlib.sha256((folder / INDEX_FILE).read_bytes()).hexdigest()
    except OSError:
        return None


def _index_identity(folder: Path) -> tuple[int, int, int] | None:
    """(inode, size, modification time) of `folder`'s index.json: another after the folder
    was swapped or the index rewritten; None where there is none to stat."""
    try:
        info = (folder / INDEX_FILE).stat()
    except OSError:
        return None
    return info.st_ino, info.st_size, info.st_mtime_ns


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
        self._said: set[str] = set()  # reasons for skipped samples said (`_skip`)
        self.index = read_index(self.folder)
        self.batch_size = batch_size
        self.num_input_frames = num_input_frames
        self.num_output_frames = num_output_frames
        # a local folder by default, opened as a path whatever its name (a relative folder
        # called `pipe:…` is not a command); only an explicit template, `pipe:…{name}…` or
        # `https://…/{name}`, is a URL
        self.url_template = url_template
        stored = self.index.shape[0]
        if num_input_frames + num_output_frames > stored:
            raise InputError(
                f"{self.folder}: sequences hold {stored} frames, fewer than "
                f"num_input_frames + num_output_frames = {num_input_frames + num_output_frames}"
            )
        self.offsets = np.cumsum([0] + [s.num_samples for s in self.index.shards])
        self._counts_checked = False
        self._identity = _index_identity(self.folder)  # see `_url`
        self._index_digest = _index_digest(self.folder)

    @property
    def num_samples(self) -> int:
        self.check_counts()  # every plan (batches per epoch, shares per rank) starts here
        return int(self.offsets[-1])

    def check_counts(self) -> None:
        """Each local shard's sample count, read from its tar headers (no member data is
        read), against the index, once: a shard that holds more or fewer samples than the
        index says is refused naming it and both counts, also in skip mode (the index, not
        a sample, is wrong; trusting it plans steps over samples that do not exist). In skip
        mode a damaged shard (truncated, unreadable, missing) passes here and is skipped as
        it is read. Shards behind a `url_template` are checked as they are read.

        A shard whose `shard_fingerprint` (its count, size and ends: two reads) is the one
        its writer recorded is not counted again. On a parallel filesystem this spares every
        rank a read per tar member of every shard at every start; a count edited by hand, a
        shard rewritten, or an index without fingerprints is counted from the headers. What
        the fingerprint cannot see, a shard damaged inside without a change of size (a
        corrupt member header), is found as it is read: an error naming it, or in skip mode
        its unreadable rest skipped and counted."""
        if self._counts_checked or self.url_template is not None:
            return
        for shard in self.index.shards:
            path = self.folder / shard.name
            recorded = shard.fingerprint
            if recorded and shard_fingerprint(path, shard.num_samples) == recorded:
                continue
            try:
                found, complete = count_samples(path)
            except (ShardFormatError, FileNotFoundError) as exc:
                if self.skip_bad:
                    continue
                raise ShardFormatError(str(exc)) from None
            if found != shard.num_samples and (complete or not self.skip_bad):
                raise ShardFormatError(_miscount(path, found, shard.num_samples, complete))
        self._counts_checked = True

    def _url(self, shard: int) -> str | Path:
        name = self.index.shards[shard].name  # checked against the format by read_index
        if self.url_template is None:
            # a dataset replaced while a run reads it (`shard … --overwrite`, which swaps
            # the folder): the run went on reading the new shards by the old index, its
            # statistics and checkpoints the old data's (a dataops review); one stat a shard
            if (now := _index_identity(self.folder)) != self._identity:
                # a `touch`, or the same bytes written again, is no other dataset (a diff
                # review: a scratch filesystem's purge-avoiding touch stopped runs)
                if _index_digest(self.folder) != self._index_digest:
                    raise ShardFormatError(
                        f"{self.folder}: the dataset was replaced while this run read it "
                        f"(its {INDEX_FILE} is not the one the run started with: `stpdist "
                        "shard … --overwrite`?); stopped rather than read other data by the "
                        "old index. To train on the data there now: resume from a checkpoint "
                        "written at an epoch's end, or start a new run from the weights "
                        "(model.init_weights)"
                    )
                self._identity = now
            return self.folder / name
        return shard_url(self.url_template, name, self.index.split)

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
            try:  # the samples before the span: their keys alone (counted), data unread
                for key, sample in iter_shard(url, skip=max(0, start - position)):
                    if seen == count:  # never read a sample as if it were the next shard's
                        raise ShardFormatError(
                            f"{url}: holds more than the {count} samples the index says"
                        )
                    if start <= position < stop:
                        where = f"{url}: member {key}.{FRAMES_EXT}"
                        if FRAMES_EXT in sample:
                            yield key, sample[FRAMES_EXT], where
                        elif self.skip_bad:  # this sample alone: the shard reads on
                            self._skip(1, f"{url}: sample '{key}' has no {FRAMES_EXT}")
                        else:
                            raise ShardFormatError(f"{url}: sample '{key}' has no {FRAMES_EXT}")
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

    def _read_rotated(
        self, order: Sequence[int], start: int, stop: int, ctx: LoaderContext, epoch: int
    ) -> Generator[_Raw, None, None]:
        """`_read_span` of positions [start, stop) of the epoch's sample sequence, which
        layout 3 rotates by an offset of (seed, epoch): the samples an epoch leaves out
        (each rank's span's tail, the split's) are others every epoch; in shard order alone
        they were the same samples every epoch in a split of one shard."""
        total = self.num_samples
        if ctx.layout < 3 or not total:
            yield from self._read_span(order, start, stop)
            return
        offset = int(np.random.default_rng([ctx.seed, epoch, 3]).integers(total))
        start, stop = start + offset, stop + offset  # stop - start <= total
        if start >= total:
            start, stop = start - total, stop - total
        yield from self._read_span(order, start, min(stop, total))
        if stop > total:  # wraps around to the sequence's beginning
            yield from self._read_span(order, 0, stop - total)

    def _skip(self, count: int, why: str) -> None:
        """Count `count` samples lost; say why once per reason (a damaged shard is entered
        by up to `BANDS` pieces of a worker's run: one line, not one a piece; the pass's
        total is said at its end, `_report`)."""
        self.bad_samples += count
        if why not in self._said:  # the count of this piece alone: the total comes at the end
            self._said.add(why)
            log.warning("skipping bad samples (the pass's count at its end): %s", why)

    def _decode(self, items: list[_Raw]) -> list[tuple[str, np.ndarray]]:
        """Decoded (key, frames); in skip mode a bad sample is left out (and counted)."""
        good = []
        for key, raw, where in items:
            try:
                frames = self._frames(raw, where)
            except ShardFormatError as exc:
                if not self.skip_bad:
                    raise
                self._skip(1, str(exc))
                continue
            good.append((key, frames))
        return good

    def _frames(self, raw: bytes, where: str) -> np.ndarray:
        """A sample's frames, decoded and checked against the index (ShardFormatError)."""
        frames = decode_frames(raw, where)
        if list(frames.shape) != self.index.shape or str(frames.dtype) != self.index.dtype:
            raise ShardFormatError(
                f"{where}: {frames.dtype} {list(frames.shape)} differs from the index's "
                f"{self.index.dtype} {self.index.shape}"
            )
        if frames.dtype.kind == "f" and not np.isfinite(frames).all():
            raise ShardFormatError(f"{where}: the frames hold NaN or Inf")
        return frames

    def _first_readable(self, count: int) -> list[tuple[str, np.ndarray]]:
        """Up to `count` good samples of the split, the first in its shards' order (a
        damaged shard passed over without a word: the reader of its span says it)."""
        found: list[tuple[str, np.ndarray]] = []
        for shard in range(len(self.index.shards)):
            url = self._url(shard)
            try:
                with contextlib.closing(iter_shard(url)) as samples:  # closed on return
                    for key, sample in samples:
                        with contextlib.suppress(ShardFormatError):
                            if FRAMES_EXT in sample:
                                where = f"{url}: member {key}.{FRAMES_EXT}"
                                found.append((key, self._frames(sample[FRAMES_EXT], where)))
                        if len(found) == count:
                            return found
            except ShardFormatError:
                continue
        return found

    def _batch(
        self, decoded: list[tuple[str, np.ndarray]], ctx: LoaderContext
    ) -> StoredFrames | tuple[torch.Tensor, torch.Tensor, list[str]]:
        frames = torch.from_numpy(np.stack([f for _, f in decoded]))
        t_in, t_out = self.num_input_frames, self.num_output_frames
        stored = StoredFrames(frames, t_in, t_out, self.index.value_scale, [k for k, _ in decoded])
        if ctx.stored_dtype:
            return stored  # scaled on the device by the Trainer
        inputs, targets, keys, _ = stored.floats()
        return inputs, targets, keys

    def _report(self, what: str) -> None:
        if self.bad_samples:
            log.warning("%s: %d bad sample(s) skipped", what, self.bad_samples)


def _miscount(path: Path, found: int, listed: int, complete: bool) -> str:
    if found > listed:
        return f"{path}: holds more than the {listed} samples the index says ({found})"
    cut = "" if complete else " (it ends without the tar end-of-archive block: truncated?)"
    return f"{path}: holds {found} samples, index says {listed}{cut}"


def _worker() -> tuple[int, int]:
    info = torch.utils.data.get_worker_info()
    return (0, 1) if info is None else (info.id, info.num_workers)


def _loader(dataset: IterableDataset, workers: int, ctx: LoaderContext) -> Iterator[Any]:
    loader = DataLoader(
        dataset,
        batch_size=None,
        num_workers=workers,
        worker_init_fn=leave_stop_signals_to_the_trainer,
        generator=torch.Generator().manual_seed(ctx.seed),
        pin_memory=ctx.pin_memory,
    )
    return shielded_batches(loader)


class ShardTrainStream(_ShardSource):
    """Training batches from a split's shards.

    Each epoch the shards are ordered by a permutation of (seed, epoch); the resulting
    sample sequence is cut into equal contiguous spans per rank, and each span into whole
    batches (whole optimizer steps of them), dealt to the workers in turn; each worker
    reads its batches' samples as one contiguous run of that sequence. So every rank yields
    the same, known number of batches; no sample comes twice; fewer than ranks × batch ×
    accumulation samples are dropped, drawn anew each epoch (layout 3: the epoch's sample
    sequence starts at an offset of (seed, epoch)), whatever the number of workers.
    From layout 4 that sequence deals its samples from `BANDS` bands of the shards' order
    in turn, so a worker's run is a piece of each band, read a sample of each in turn (local
    shards; shards behind a `url_template` are read as in layout 3, see `BANDS`), through a
    seeded shuffle buffer (raw bytes; only emitted batches are decoded): a batch draws from
    that many distant stretches of the split. Batch j of a rank comes from worker j mod K
    (DataLoader's round robin), so resuming at batch b rotates the workers and each skips
    the batches it had already produced.
    """

    workers_shape_layout = True
    """Each worker reads its own span: another worker count lays an epoch out anew."""

    def __init__(self, folder: str | Path, *, shuffle_buffer: int = 256, **kwargs: Any) -> None:
        super().__init__(folder, **kwargs)
        if (
            isinstance(shuffle_buffer, bool)
            or not isinstance(shuffle_buffer, int)
            or (shuffle_buffer < 1)
        ):  # 0 failed inside numpy, in a worker ("high <= 0")
            raise ValueError(
                f"shuffle_buffer {shuffle_buffer!r}: at least 1 (the samples held to shuffle "
                "them; 1 reads them in their stored order)"
            )
        self.shuffle_buffer = shuffle_buffer

    def _layout(self, ctx: LoaderContext) -> tuple[int, int, list[int], int]:
        """(workers K, span per rank, where each worker's samples begin in the rank's span,
        batches per epoch per rank).

        Layout 2 (and 3, 4): the rank's whole batches, whole optimizer steps of them, dealt
        to the workers in turn (worker k yields batches k, k + K, …) and read as one
        contiguous run of the epoch's sequence per worker (from layout 4 a piece of each of
        its bands): fewer than ranks × batch × accumulation samples are dropped.
        Layout 1 (before 2026-12-06; kept for the runs begun then) cut the span into K
        equal chunks of whole batches first, dropping up to ranks × K × batch samples:
        half of a 1000-sample epoch on 4 ranks × 8 workers at batch 16."""
        workers = max(1, ctx.num_workers or 0)
        span = self.num_samples // ctx.world_size
        if ctx.layout == 1:
            batches = workers * ((span // workers) // self.batch_size)
        else:
            batches = span // self.batch_size
        total = (batches // ctx.batch_multiple) * ctx.batch_multiple
        if total == 0:
            raise InputError(
                f"{self.folder}: {self.num_samples} samples are too few for {ctx.world_size} "
                f"ranks × batch {self.batch_size} × {ctx.batch_multiple} accumulation steps"
                + (f" × {workers} workers" if ctx.layout == 1 else "")
            )
        if ctx.layout == 1:
            starts = [k * (span // workers) for k in range(workers)]
        else:
            emitted = [len(range(k, total, workers)) for k in range(workers)]
            starts = [sum(emitted[:k]) * self.batch_size for k in range(workers)]
        return workers, span, starts, total

    def batches_per_epoch(self, ctx: LoaderContext) -> int:
        return self._layout(ctx)[3]

    def mixing_note(self, ctx: LoaderContext) -> str | None:
        """A line for a split of windows cut from a series (its index records a `stride`:
        written in time order, consecutive windows side by side in a shard) whose batches
        each draw from a short stretch of it, or None.

        None from layout 4 on (local shards): a batch draws from `BANDS` stretches spread
        over the whole split. Before, and for shards behind a `url_template`, a worker reads
        its run shard after shard through a buffer of `shuffle_buffer` samples, so a batch
        holds windows of about buffer + batch neighbouring ones (a review measured, on 20
        shards of 500 hourly windows with the buffer's 256, batches of 16 that carried what
        1.3–1.7 independent windows do of seasonal variation; an ideal shuffle, 16): said
        when that reach is under a quarter of the split."""
        if self.banded(ctx) or "stride" not in (self.index.args or {}):
            return None
        workers, span, _, _ = self._layout(ctx)
        run = max(1, span // workers)
        reach = min(self.shuffle_buffer + self.batch_size, run)
        if reach * 4 >= self.num_samples:
            return None
        sizes = sorted(s.num_samples for s in self.index.shards)
        shard = sizes[len(sizes) // 2]
        return (
            f"{self.folder}: its samples are windows of a series, stored in time order, and "
            f"each batch draws from about {reach} neighbouring ones "
            f"({100 * reach / self.num_samples:.2g}% of the split: a shuffle buffer of "
            f"{self.shuffle_buffer} in runs of {run} per worker, shards "
            f"of {shard}); batches spread over more of the series mix better: raise "
            f"data.shuffle_buffer to a few shards' samples (memory: buffer × sample × "
            "workers), or write smaller shards (--samples-per-shard), whose random order "
            "each epoch then mixes distant stretches"
        )

    def banded(self, ctx: LoaderContext) -> bool:
        """Whether an epoch of `ctx`'s layout is read by `BANDS`: from layout 4, local
        shards (a `url_template`'s are read in order, `reading`)."""
        return ctx.layout >= 4 and self.url_template is None

    @property
    def reading(self) -> str:
        """How an epoch's shards are read from layout 4 on (recorded in checkpoints: an
        epoch begun one way cannot go on the other, `Trainer`'s `MID_EPOCH_KEYS`): local
        shards by `BANDS`, shards behind a `url_template` in order."""
        return "by bands (local shards)" if self.url_template is None else "in order (url_template)"

    @property
    def shards(self) -> str:
        """The split's shards and their counts in a few words (recorded in checkpoints: an
        epoch begun cannot go on over other shards, `Trainer`'s `MID_EPOCH_KEYS`)."""
        listing = "\n".join(f"{s.name}\t{s.num_samples}" for s in self.index.shards)
        digest = hashlib.sha1(listing.encode()).hexdigest()[:10]
        count = console.counted(len(self.index.shards), "shard")
        return f"{count} of {self.num_samples} samples (digest {digest})"

    def iterate(self, ctx: LoaderContext, epoch: int, start: int = 0) -> Iterator[Any]:
        workers = self._layout(ctx)[0]
        dataset = _TrainEpoch(self, ctx, epoch, start)
        yield from _loader(dataset, workers if ctx.num_workers else 0, ctx)

    def batches_in_rest(self, ctx: LoaderContext, origin: EpochOrigin) -> int:
        """Batches per rank in the rest of an epoch begun as `origin` says."""
        return origin.rest_batches(self.batches_per_epoch(origin.first_context(ctx)), ctx)

    def iterate_rest(
        self, ctx: LoaderContext, epoch: int, origin: EpochOrigin, start: int = 0
    ) -> Iterator[Any]:
        """The rest of an epoch begun on `origin.world_size` ranks, continued on
        `ctx.world_size`: the first layout's unconsumed batches, each exactly once across
        ranks, in its global order (see `EpochOrigin`), from this layout's batch `start`."""
        workers = max(1, ctx.num_workers or 0)
        dataset = _RestOfEpoch(self, ctx, epoch, origin, start, workers)
        yield from _loader(dataset, workers if ctx.num_workers else 0, ctx)


def _raw_batches(
    stream: ShardTrainStream, ctx: LoaderContext, epoch: int, logical: int
) -> Iterator[list[_Raw]]:
    """The raw batches logical worker `logical` of rank `ctx.rank` produces in `epoch`
    (its batches j = logical, logical + K, …), read lazily: a batch is read when asked for.
    A batch short of samples lost to bad shards comes short (filled up by the consumer)."""
    workers, span, starts, total = stream._layout(ctx)
    emit = len(range(logical, total, workers))
    order = epoch_permutation(len(stream.index.shards), ctx.seed, epoch)
    first = ctx.rank * span + starts[logical]
    length = emit * stream.batch_size
    if not stream.banded(ctx):
        raw = stream._read_rotated(order, first, first + length, ctx, epoch)
    else:  # a piece of each band, read in turn: the sequence's order (see `BANDS`)
        raw = _interleaved(
            [
                stream._read_rotated(order, start, stop, ctx, epoch)
                for start, stop in _band_pieces(stream.num_samples, first, first + length)
            ]
        )
    rng = np.random.default_rng([ctx.seed, epoch, ctx.world_size, ctx.rank, logical])
    batch: list[_Raw] = []
    produced = 0
    for item in _shuffled(raw, stream.shuffle_buffer, rng):
        batch.append(item)
        if len(batch) == stream.batch_size:
            yield batch
            produced += 1
            batch = []
            if produced == emit:
                return
    while produced < emit:  # samples lost to bad shards: keep the batch count
        yield batch
        batch = []
        produced += 1


class _Filler:
    """Decodes raw batches; fills a batch short of good samples with repeats of the last
    good ones (skip mode), so the batch count and size never change; with none yet (the
    share so far lost), with the split's first readable samples."""

    def __init__(self, stream: ShardTrainStream, ctx: LoaderContext) -> None:
        self.stream, self.ctx = stream, ctx
        self.spares: list[tuple[str, np.ndarray]] = []

    def __call__(self, raw: list[_Raw]) -> Any:
        stream = self.stream
        decoded = stream._decode(raw)
        if len(decoded) < stream.batch_size and not (decoded or self.spares):
            # this worker's whole share so far was lost (a rank's or worker's run inside a
            # damaged shard): filled from the split's first readable samples instead
            self.spares = stream._first_readable(stream.batch_size)
            if not self.spares:
                raise ShardFormatError(f"{stream.folder}: no readable sample to fill a batch")
            log.warning(
                "%s: a batch with no readable sample of its own, filled with the split's "
                "first readable samples",
                stream.folder,
            )
        pool = decoded + self.spares
        while len(decoded) < stream.batch_size:
            decoded.append(pool[len(decoded) % len(pool)])
        self.spares[:] = decoded
        return stream._batch(decoded, self.ctx)


class _TrainEpoch(IterableDataset):
    def __init__(self, stream: ShardTrainStream, ctx: LoaderContext, epoch: int, start: int):
        self.stream, self.ctx, self.epoch, self.start = stream, ctx, epoch, start

    def __iter__(self) -> Iterator[Any]:
        stream, ctx = self.stream, self.ctx
        workers = stream._layout(ctx)[0]
        physical, _ = _worker()
        logical = (physical + self.start) % workers
        skip = len(range(logical, self.start, workers))
        stream.bad_samples = 0
        fill = _Filler(stream, ctx)
        for produced, raw in enumerate(_raw_batches(stream, ctx, self.epoch, logical)):
            if produced >= skip:  # the ones before were consumed before a resume
                yield fill(raw)
            elif stream.skip_bad:  # decoded unsent: the filler's spares as the pass had them
                fill(raw)
        stream._report(f"epoch {self.epoch}, rank {ctx.rank}, worker {logical}")


class _RestOfEpoch(IterableDataset):
    """This rank's batches of the rest of an epoch begun on another number of ranks (see
    `EpochOrigin`): each is a batch of the first layout, replayed by a reader of the first
    layout's worker that produced it (one reader per such worker, opened when first needed
    and read forward only: the rest is read once per rank and worker of the new layout)."""

    def __init__(
        self,
        stream: ShardTrainStream,
        ctx: LoaderContext,
        epoch: int,
        origin: EpochOrigin,
        start: int,
        workers: int,
    ) -> None:
        self.stream, self.ctx, self.epoch = stream, ctx, epoch
        self.origin, self.start, self.workers = origin, start, workers

    def __iter__(self) -> Iterator[Any]:
        stream, ctx, origin = self.stream, self.ctx, self.origin
        first_workers = stream._layout(origin.first_context(ctx))[0]
        # a reader per first-layout worker may be open at once, with a shard per band each
        _allow_open_files(origin.world_size * first_workers * BANDS + 256)
        count = stream.batches_in_rest(ctx, origin)
        physical, _ = _worker()
        # a reader per first-layout worker, with the filler that worker had (skip mode:
        # a short batch is filled from that worker's previous batch, decoded if skipped)
        readers: dict[tuple[int, int], tuple[Iterator[list[_Raw]], int, _Filler]] = {}
        stream.bad_samples = 0
        # DataLoader's round robin: the first batch asked for comes from worker 0
        for index in range(self.start + physical, count, self.workers):
            rank, batch = origin.source_batch(ctx, index)
            logical, wanted = batch % first_workers, batch // first_workers
            if (rank, logical) not in readers:
                first = origin.first_context(ctx, rank)
                reader = _raw_batches(stream, first, self.epoch, logical)
                readers[(rank, logical)] = (reader, 0, _Filler(stream, ctx))
            reader, position, fill = readers[(rank, logical)]
            for _ in range(wanted - position):  # another rank's, or consumed before
                raw = next(reader)
                if stream.skip_bad:
                    fill(raw)
            readers[(rank, logical)] = (reader, wanted + 1, fill)
            yield fill(next(reader))
        stream._report(f"epoch {self.epoch} (continued), rank {ctx.rank}, worker {physical}")


def _band_pieces(total: int, start: int, stop: int) -> list[tuple[int, int]]:
    """Where positions [start, stop) of a layout-4 sequence of `total` samples lie in the
    bands' order (see `BANDS`): a contiguous piece of each band, the band of `start`
    first, so reading them a sample of each in turn gives the positions in order."""
    bands = min(BANDS, total)
    pieces = []
    for turn in range(bands):
        band = (start + turn) % bands
        first = contiguous_share(total, band, bands).start
        # the band's samples q with q × bands + band in [start, stop)
        low, high = -(-(start - band) // bands), -(-(stop - band) // bands)
        if high > low:
            pieces.append((first + low, first + high))
    return pieces


def _allow_open_files(needed: int) -> None:
    """This process' soft limit of open files raised towards `needed`, up to its hard
    limit (an epoch continued on fewer ranks reads from every worker of the ranks it began
    on at once: 8 × 8 workers begun, 1024 shards open, the usual soft limit). Past the
    hard limit a shard's open says so (`format._open_shard`)."""
    try:
        import resource
    except ImportError:  # not a POSIX system
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return
    target = needed if hard == resource.RLIM_INFINITY else min(hard, needed)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def _interleaved(runs: list[Generator[_Raw, None, None]]) -> Iterator[_Raw]:
    """One item of each run in turn (a run that ends drops out); every run is closed when
    the reader stops, early or not (their open shards with them)."""
    live = list(runs)
    try:
        while live:
            for run in list(live):
                item = next(run, None)
                if item is None:
                    live.remove(run)
                else:
                    yield item
    finally:
        for run in runs:
            run.close()


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
        self.check_counts()  # here, not in a worker: an error is then one line
        workers = max(1, ctx.num_workers or 0)
        yield from _loader(_EvalShare(self, ctx, workers), workers if ctx.num_workers else 0, ctx)

    def frame_times(self) -> FrameTimes | None:
        """Each sample's frame times, from the `times` of its `.json` member (which the
        time-series converters write), read from the local shards' metadata alone (the
        frames passed over); None for a split without them (other sources; conversions
        before 2026-12-07) and for shards behind a `url_template` (read once, for the
        frames). Times that cannot be read are unknown (NaT), never an error: the pass
        that reads the frames says what is wrong with a shard."""
        if self.url_template is not None:
            return None
        keys: dict[str, int] = {}
        rows: list[np.ndarray] = []
        frames = self.index.shape[0]
        for shard in range(len(self.index.shards)):
            url = self._url(shard)
            try:
                for key, sample in iter_shard(url, members=frozenset({META_EXT})):
                    times = _times_of(sample.get(META_EXT), frames)
                    if times is None and not rows:
                        return None  # the first sample has none: a split without times
                    keys[key] = len(rows)
                    rows.append(
                        np.full(frames, np.datetime64("NaT", "s")) if times is None else times
                    )
            except ShardFormatError:
                continue
        return FrameTimes(keys, np.stack(rows)) if rows else None


class FrameTimes:
    """Sample key → its frames' times (datetime64[s]), and the times of a batch's
    predictions: `reference_times` (N), the time of each sample's last input frame (the
    forecast's reference time), and `valid_times` (N×T_out), each predicted frame's: the
    stored frames' times where the sample holds them, beyond that (a split of inputs only)
    continued at the step of its frames when they are evenly spaced, else NaT."""

    def __init__(self, keys: dict[str, int], times: np.ndarray) -> None:
        self.keys, self.times = keys, times

    def of(self, keys: Sequence[str], t_in: int, t_out: int) -> dict[str, np.ndarray]:
        never = np.datetime64("NaT", "s")
        unknown = np.full(self.times.shape[1], never)
        rows = np.stack([self.times[self.keys[k]] if k in self.keys else unknown for k in keys])
        valid = np.full((len(rows), t_out), never)
        held = min(t_out, rows.shape[1] - t_in)
        valid[:, :held] = rows[:, t_in : t_in + held]
        if held < t_out and rows.shape[1] > 1:
            steps = np.diff(rows, axis=1)
            even = (steps == steps[:, :1]).all(axis=1)  # NaT is never equal: not even
            continued = rows[:, -1:] + steps[:, :1] * np.arange(1, t_out - held + 1)
            valid[:, held:] = np.where(even[:, None], continued, never)
        return {"reference_times": rows[:, t_in - 1], "valid_times": valid}


def _times_of(meta: bytes | None, frames: int) -> np.ndarray | None:
    """A sample's frame times from its `.json` member (datetime64[s]), or None."""
    if meta is None:
        return None
    try:
        times = json.loads(meta).get("times")
        with warnings.catch_warnings():  # a time zone ("+00:00") is read as UTC
            warnings.simplefilter("ignore", DeprecationWarning)
            array = np.array(times, dtype="datetime64[s]")
    except (ValueError, TypeError, AttributeError, UnicodeDecodeError):
        return None
    return array if array.shape == (frames,) else None


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
                    yield stream._batch(decoded, self.ctx)
                batch = []
        decoded = stream._decode(batch)
        if decoded:
            yield stream._batch(decoded, self.ctx)
        stream._report(f"evaluation, rank {self.ctx.rank}, worker {physical}")
