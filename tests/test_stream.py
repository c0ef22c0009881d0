"""Shard streams: equal batches per rank, no duplicates, bounded drop, determinism,
mid-epoch resume, eval exactly once — over real tar shards of uneven sizes."""

from __future__ import annotations

import numpy as np
import pytest

from stpdist.data.format import ShardFormatError, SplitWriter, read_index
from stpdist.data.stream import LoaderContext, ShardEvalStream, ShardTrainStream

SIZES = [10, 10, 10, 10, 3, 1, 9]


@pytest.fixture(scope="module")
def uneven(tmp_path_factory):
    folder = tmp_path_factory.mktemp("uneven") / "train"
    with SplitWriter(folder, "train", value_scale=255) as writer:
        number = 0
        for size in SIZES:
            writer.new_shard()
            for _ in range(size):
                frames = np.full((6, 1, 4, 4), number % 256, dtype=np.uint8)
                writer.write(f"s{number:04d}", frames)
                number += 1
    return folder


def keys_of(batches):
    return [k for batch in batches for k in batch[2]]


def train(folder, batch=2):
    return ShardTrainStream(
        folder, batch_size=batch, num_input_frames=3, num_output_frames=3, shuffle_buffer=8
    )


def test_index_counts_match_shards(uneven):
    assert [s.num_samples for s in read_index(uneven).shards] == SIZES


@pytest.mark.parametrize("world, workers", [(1, 0), (2, 2), (2, 0), (3, 2)])
def test_equal_batches_no_duplicates_bounded_drop(uneven, world, workers):
    stream = train(uneven)
    total = sum(SIZES)
    dropped_per_epoch = []
    for epoch in range(3):
        seen = []
        counts = []
        for rank in range(world):
            ctx = LoaderContext(rank=rank, world_size=world, seed=3, num_workers=workers)
            batches = list(stream.iterate(ctx, epoch))
            assert len(batches) == stream.batches_per_epoch(ctx)
            counts.append(len(batches))
            seen += keys_of(batches)
        assert len(set(counts)) == 1
        assert len(seen) == len(set(seen)), "a sample came twice in one epoch"
        dropped = set(f"s{i:04d}" for i in range(total)) - set(seen)
        assert len(dropped) < world * max(1, workers) * 2
        dropped_per_epoch.append(frozenset(dropped))
    if any(dropped_per_epoch):
        assert len(set(dropped_per_epoch)) > 1, "the same samples are dropped every epoch"


def test_values_and_split(uneven):
    inputs, targets, keys = next(iter(train(uneven).iterate(LoaderContext(), 0)))
    assert inputs.shape == (2, 3, 1, 4, 4) and targets.shape == (2, 3, 1, 4, 4)
    number = int(keys[0][1:])
    assert inputs[0].max().item() == pytest.approx(number / 255)


def test_order_is_deterministic_and_changes_per_epoch(uneven):
    ctx = LoaderContext(rank=1, world_size=2, seed=5, num_workers=2)
    first = keys_of(train(uneven).iterate(ctx, 0))
    assert keys_of(train(uneven).iterate(ctx, 0)) == first
    assert keys_of(train(uneven).iterate(ctx, 1)) != first


@pytest.mark.parametrize("workers", [0, 2])
def test_mid_epoch_resume_equals_continuation(uneven, workers):
    ctx = LoaderContext(rank=0, world_size=2, seed=1, num_workers=workers)
    full = keys_of(train(uneven).iterate(ctx, 2))
    for start in (1, 3, len(full) // 2 - 1):
        resumed = keys_of(train(uneven).iterate(ctx, 2, start))
        assert resumed == full[start * 2 :]


@pytest.mark.parametrize("world, workers", [(1, 0), (2, 2), (3, 0)])
def test_eval_every_sample_exactly_once(uneven, world, workers):
    stream = ShardEvalStream(uneven, batch_size=4, num_input_frames=3, num_output_frames=3)
    seen = []
    for rank in range(world):
        seen += keys_of(
            stream.iterate(LoaderContext(rank=rank, world_size=world, num_workers=workers))
        )
    assert sorted(seen) == [f"s{i:04d}" for i in range(sum(SIZES))]


def test_too_many_frames_requested_is_clear(uneven):
    with pytest.raises(ValueError, match="hold 6 frames"):
        ShardTrainStream(uneven, batch_size=2, num_input_frames=4, num_output_frames=4)


def test_truncated_shard_names_the_shard(tmp_path, uneven):
    import shutil

    folder = tmp_path / "train"
    shutil.copytree(uneven, folder)
    shard = folder / "train-000001.tar"
    shard.write_bytes(shard.read_bytes()[:3000])
    stream = ShardEvalStream(folder, batch_size=4, num_input_frames=3, num_output_frames=3)
    with pytest.raises(ShardFormatError, match="train-000001.tar"):
        list(stream.iterate(LoaderContext()))
