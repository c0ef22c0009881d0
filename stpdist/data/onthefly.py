"""Moving digits generated on the fly: a train source with fresh sequences every epoch,
as OpenSTL trains on Moving MNIST (`data.train_source: moving_digits`).

Legend: B batch, T time, C channels (1), H×W canvas.

Sequence j of epoch e is a pure function of (generator seed, trainer seed, e, j), drawn by
the same generator that writes synthetic shards (`synthetic.draw_moving_digits`; MNIST
idx digits when given, else Pillow glyphs). Global micro-batch i of an epoch holds
sequences [i·W·B, (i+1)·W·B) and rank r takes its r-th slice of B: every rank yields the
same number of batches, no two ranks share a sequence (OpenSTL's generator gives every
GPU the same ones), W ranks × batch B see exactly what 1 rank × batch W·B sees, and a run
resumed at batch b yields exactly the batches an uninterrupted epoch yields from b on. An
epoch begun on W ranks continues on another number of ranks as `MapTrainLoader`'s does
(`iterate_rest`, see `loading.EpochOrigin`): the sequences it had not yet consumed, each
once.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .loading import (
    EpochOrigin,
    LoaderContext,
    leave_stop_signals_to_the_trainer,
    shielded_batches,
)
from .synthetic import DIGIT, _digits, draw_moving_digits

_STREAM_ID = 7  # keeps these draws apart from the shard writer's (seed, split, index) keys


class MovingDigitsTrainSource:
    """A `TrainSource` of `samples_per_epoch` fresh moving-digit sequences per epoch,
    batches `(inputs B×T_in×1×H×W, targets B×T_out×1×H×W)` in [0, 1] (uint8 / 255)."""

    value_scale = 255.0

    def __init__(
        self,
        samples_per_epoch: int,
        *,
        batch_size: int,
        num_input_frames: int,
        num_output_frames: int,
        seed: int = 0,
        image_size: int = 64,
        num_digits: int = 2,
        digit_size: int = DIGIT,
        digits: str | None = None,
        num_workers: int = 0,
    ) -> None:
        if samples_per_epoch < 1 or batch_size < 1:
            raise ValueError("moving digits on the fly: samples per epoch and batch must be ≥ 1")
        self.samples_per_epoch = samples_per_epoch
        self.batch_size = batch_size
        self.num_input_frames = num_input_frames
        self.num_output_frames = num_output_frames
        self.seed = seed
        self.shape = {
            "num_frames": num_input_frames + num_output_frames,
            "image_size": image_size,
            "num_digits": num_digits,
            "digit_size": digit_size,
        }
        self.digits = str(digits) if digits else None
        if self.digits:
            _digits(self.digits)  # fail early, naming the file
        self.num_workers = num_workers

    def sample(self, epoch: int, index: int, trainer_seed: int = 0) -> np.ndarray:
        """Sequence `index` of `epoch`: T×1×H×W uint8 (T = T_in + T_out)."""
        rng = np.random.default_rng([self.seed, trainer_seed, _STREAM_ID, epoch, index])
        return draw_moving_digits(rng, digits=_digits(self.digits), **self.shape)

    def batches_per_epoch(self, ctx: LoaderContext) -> int:
        per_group = self.batch_size * ctx.world_size * ctx.batch_multiple
        count = (self.samples_per_epoch // per_group) * ctx.batch_multiple
        if count == 0:
            raise ValueError(
                f"moving digits on the fly: {self.samples_per_epoch} sequences per epoch are "
                f"fewer than one optimizer step ({ctx.world_size} ranks × batch "
                f"{self.batch_size} × {ctx.batch_multiple} accumulation steps)"
            )
        return count

    def iterate(self, ctx: LoaderContext, epoch: int, start: int = 0) -> Iterator[Any]:
        count = self.batches_per_epoch(ctx)
        batches = [self._indices(ctx, ctx.rank, i) for i in range(start, count)]
        yield from self._load(batches, ctx, epoch)

    def batches_in_rest(self, ctx: LoaderContext, origin: EpochOrigin) -> int:
        """Batches per rank in the rest of an epoch begun as `origin` says."""
        return origin.rest_batches(self.batches_per_epoch(origin.first_context(ctx)), ctx)

    def iterate_rest(
        self, ctx: LoaderContext, epoch: int, origin: EpochOrigin, start: int = 0
    ) -> Iterator[Any]:
        """The rest of an epoch begun on `origin.world_size` ranks, continued on
        `ctx.world_size`: the first layout's unconsumed batches, each exactly once across
        ranks, in its global order (see `EpochOrigin`), from this layout's batch `start`.
        The first layout's workers do not matter: a sequence is a function of its index."""
        first = origin.first_context(ctx)
        batches = [
            self._indices(first, *origin.source_batch(ctx, i))
            for i in range(start, self.batches_in_rest(ctx, origin))
        ]
        yield from self._load(batches, ctx, epoch)

    def _indices(self, ctx: LoaderContext, rank: int, index: int) -> list[int]:
        """Sequence indices of batch `index` of rank `rank` in the layout of `ctx`."""
        first = index * self.batch_size * ctx.world_size + rank * self.batch_size
        return list(range(first, first + self.batch_size))

    def _load(self, batches: list[list[int]], ctx: LoaderContext, epoch: int) -> Iterator[Any]:
        workers = self.num_workers if ctx.num_workers is None else ctx.num_workers
        loader = DataLoader(
            _Epoch(self, epoch, ctx.seed),
            batch_sampler=batches,
            collate_fn=self._collate,
            num_workers=workers,
            worker_init_fn=leave_stop_signals_to_the_trainer,
            # a generator of its own: the global RNG is left alone (resume stays exact)
            generator=torch.Generator().manual_seed(ctx.seed * 100_003 + epoch),
        )
        yield from shielded_batches(loader)

    def _collate(self, items: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        frames = torch.from_numpy(np.stack(items))
        t_in = self.num_input_frames
        inputs = frames[:, :t_in].float().div_(self.value_scale)
        targets = frames[:, t_in:].float().div_(self.value_scale)
        return inputs, targets


class _Epoch(Dataset):
    """One epoch's sequences, by index (generated when asked for)."""

    def __init__(self, source: MovingDigitsTrainSource, epoch: int, trainer_seed: int) -> None:
        self.source, self.epoch, self.trainer_seed = source, epoch, trainer_seed

    def __len__(self) -> int:
        return self.source.samples_per_epoch

    def __getitem__(self, index: int) -> np.ndarray:
        return self.source.sample(self.epoch, index, self.trainer_seed)
