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
from torch.utils.data import Dataset

from .loading import (
    LoaderContext,
    PlannedTrainSource,
    leave_stop_signals_to_the_trainer,
    planned_batches,
)
from .synthetic import DIGIT, _digits, draw_moving_digits

_STREAM_ID = 7  # keeps these draws apart from the shard writer's (seed, split, index) keys


class MovingDigitsTrainSource(PlannedTrainSource):
    """A `TrainSource` of `samples_per_epoch` fresh moving-digit sequences per epoch,
    batches `(inputs B×T_in×1×H×W, targets B×T_out×1×H×W)` in [0, 1] (uint8 / 255)."""

    value_scale = 255.0
    source_name = "moving digits on the fly: an epoch"

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

    @property
    def num_samples(self) -> int:
        return self.samples_per_epoch

    def _order(self, ctx: LoaderContext, epoch: int) -> np.ndarray:
        return np.arange(self.samples_per_epoch)  # sequence j is drawn afresh each epoch

    def _load(self, batches: list[list[int]], ctx: LoaderContext, epoch: int) -> Iterator[Any]:
        workers = self.num_workers if ctx.num_workers is None else ctx.num_workers
        epoch_data, init = _Epoch(self, epoch, ctx.seed), leave_stop_signals_to_the_trainer
        return planned_batches(epoch_data, batches, self._collate, workers, init, ctx, epoch)

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
