"""Shard streams: equal batches per rank, no duplicates, bounded drop, determinism,
mid-epoch resume, eval exactly once — over real tar shards of uneven sizes."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch

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


def _stored_positions(stream, epoch: int) -> list[int]:
    ctx = LoaderContext(rank=0, world_size=1, seed=3)
    return [int(k[1:]) for k in keys_of(stream.iterate(ctx, epoch))]


def test_a_split_smaller_than_the_shuffle_buffer_is_shuffled_not_read_in_stored_order(uneven):
    """A test-suite audit: the shuffle buffer's final shuffle (all of a split smaller than
    the buffer) could be dropped with no test failing: such a split then trained in its
    stored order, shard runs read in turn (steps of 7–8 samples along the stored order,
    neighbours in time for a series), every epoch. Shuffled, no step between consecutive
    samples' stored positions comes back often."""
    stream = ShardTrainStream(
        uneven, batch_size=2, num_input_frames=3, num_output_frames=3, shuffle_buffer=256
    )
    for epoch in range(3):
        steps = np.diff(_stored_positions(stream, epoch))
        share = np.unique(steps, return_counts=True)[1].max() / len(steps)
        assert share < 0.2, (epoch, share)  # in stored order: 0.35–0.47 of them alike


def test_each_epoch_reads_the_shards_in_another_order(uneven):
    """A test-suite audit: every epoch could read the shards in epoch 0's order (only the
    rotation of where each band starts still changed) with no test failing. Read with a
    buffer of 1 (the stored order), the order the large shards first appear in, as a
    cycle, differs between epochs."""
    stream = ShardTrainStream(
        uneven, batch_size=2, num_input_frames=3, num_output_frames=3, shuffle_buffer=1
    )
    bounds = np.cumsum(SIZES)
    large = {i for i, size in enumerate(SIZES) if size >= 9}
    cycles = set()
    for epoch in range(4):
        order: list[int] = []
        for position in _stored_positions(stream, epoch):
            shard = int(np.searchsorted(bounds, position, side="right"))
            if shard in large and shard not in order:
                order.append(shard)
        start = order.index(0)
        cycles.add(tuple(order[start:] + order[:start]))
    assert len(cycles) > 1, cycles


def test_a_shuffle_buffer_below_one_is_refused_in_words(uneven):
    with pytest.raises(ValueError, match="shuffle_buffer 0: at least 1"):
        ShardTrainStream(uneven, batch_size=2, num_input_frames=3, num_output_frames=3,
                         shuffle_buffer=0)  # fmt: skip


@pytest.mark.parametrize("workers", [0, 2])
def test_mid_epoch_resume_equals_continuation(uneven, workers):
    ctx = LoaderContext(rank=0, world_size=2, seed=1, num_workers=workers)
    full = keys_of(train(uneven).iterate(ctx, 2))
    for start in (1, 3, len(full) // 2 - 1):
        resumed = keys_of(train(uneven).iterate(ctx, 2, start))
        assert resumed == full[start * 2 :]


def test_one_worker_is_one_process_with_the_batches_of_none(uneven):
    """`num_workers: 1` read in the training process itself (as 0), while provenance and
    `bench data` said 1 (a CPU-speed review): one worker process, as torch's DataLoader
    has, yielding the very batches of none (the layout is the same)."""
    import psutil

    me = psutil.Process()

    def batches_and_children(kind, workers):
        ctx = LoaderContext(rank=0, world_size=1, seed=4, num_workers=workers)
        stream = train(uneven) if kind == "train" else ShardEvalStream(
            uneven, batch_size=4, num_input_frames=3, num_output_frames=3)  # fmt: skip
        before = {p.pid for p in me.children()}  # (a forkserver, a resource tracker)
        batches = stream.iterate(ctx, 1) if kind == "train" else stream.iterate(ctx)
        first = next(batches)
        children = len({p.pid for p in me.children()} - before)
        rest = list(batches)
        return [first, *rest], children

    for kind in ("train", "eval"):
        alone, none = batches_and_children(kind, 0)
        worker, one = batches_and_children(kind, 1)
        assert (none, one) == (0, 1), kind
        assert keys_of(worker) == keys_of(alone)
        assert all(torch.equal(a[0], b[0]) for a, b in zip(worker, alone))


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


def corrupt_member(
    shard, member_index: int, garbage: Callable[[bytes], bytes] | None = None
) -> str:
    """Replace one frames.npy member of a tar shard with garbage (`garbage(data)` when
    given, the member's data in); returns its name."""
    import io
    import tarfile

    with tarfile.open(shard) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    name = [m.name for m, _ in members if m.name.endswith("frames.npy")][member_index]
    with tarfile.open(shard, "w") as tar:
        for member, data in members:
            if member.name == name:
                data = b"not an npy file at all" if garbage is None else garbage(data)
                member.size = len(data)
            tar.addfile(member, io.BytesIO(data))
    return name


@pytest.fixture()
def damaged(tmp_path, uneven):
    import shutil

    folder = tmp_path / "train"
    shutil.copytree(uneven, folder)
    name = corrupt_member(folder / "train-000002.tar", 3)
    truncated = folder / "train-000000.tar"
    truncated.write_bytes(truncated.read_bytes()[:5000])
    return folder, name


def test_bad_member_error_names_shard_and_member(damaged):
    folder, name = damaged
    (folder / "train-000000.tar").write_bytes(b"")  # leave only the bad member to hit
    stream = ShardEvalStream(folder, batch_size=4, num_input_frames=3, num_output_frames=3)
    with pytest.raises(ShardFormatError) as err:
        list(stream.iterate(LoaderContext()))
    assert "train-000000.tar" in str(err.value)
    stream.index.shards[0].num_samples = 0  # skip the empty shard: now the bad member
    stream.offsets = np.cumsum([0] + [s.num_samples for s in stream.index.shards])
    with pytest.raises(ShardFormatError, match=f"train-000002.tar: member {name}"):
        list(stream.iterate(LoaderContext()))


@pytest.mark.parametrize("workers", [0, 2])
def test_skip_mode_keeps_batch_counts_and_reports(damaged, workers, caplog):
    folder, _ = damaged
    stream = train(folder)
    stream.skip_bad = True
    counts = []
    for rank in range(2):
        ctx = LoaderContext(rank=rank, world_size=2, seed=3, num_workers=workers)
        batches = list(stream.iterate(ctx, 0))
        assert all(b[0].shape[0] == 2 for b in batches)
        counts.append(len(batches))
        assert len(batches) == stream.batches_per_epoch(ctx)
    assert counts[0] == counts[1]
    if workers == 0:  # in-process: the report reaches this log
        assert any("bad sample(s) skipped" in r.getMessage() for r in caplog.records)
    evaluated = ShardEvalStream(
        folder, batch_size=4, num_input_frames=3, num_output_frames=3, skip_bad=True
    )
    seen = keys_of(evaluated.iterate(LoaderContext()))
    assert len(seen) == len(set(seen)) and len(seen) < sum(SIZES)
    assert evaluated.bad_samples >= 2


@pytest.mark.parametrize("workers", [0, 2])
def test_skip_mode_resumes_to_the_batches_of_the_uninterrupted_pass(damaged, workers):
    """A batch short of good samples is filled with the worker's previous batch's samples:
    a resume, which skipped decoding the batches before it, filled it with others."""
    folder, _ = damaged
    stream = train(folder)
    stream.skip_bad = True
    ctx = LoaderContext(seed=3, num_workers=workers)
    full = [keys for _, _, keys in stream.iterate(ctx, 0)]
    seen = [key for keys in full for key in keys]
    filled = [b for b, keys in enumerate(full) if any(seen.count(key) > 1 for key in keys[1:])]
    assert filled and max(filled) > 0, full  # a filled batch after the first: the case here
    for start in range(1, len(full)):
        assert [keys for _, _, keys in stream.iterate(ctx, 0, start)] == full[start:], start


@pytest.mark.parametrize("first_workers", [0, 2])
def test_skip_mode_rest_of_an_epoch_on_other_ranks_is_the_first_layouts_batches(
    damaged, first_workers
):
    """Moved from 2 ranks to 1 mid-epoch in skip mode: each batch of the rest is the one
    the first layout would have yielded, short ones filled alike (its batches skipped
    over were not decoded, so their fills came from other samples)."""
    from stpdist.data.loading import EpochOrigin

    folder, _ = damaged
    stream = train(folder)
    stream.skip_bad = True
    first = [
        [keys for _, _, keys in stream.iterate(LoaderContext(r, 2, 3, 1, first_workers), 0)]
        for r in range(2)
    ]
    consumed = 2
    left = [first[r][j] for j in range(consumed, len(first[0])) for r in range(2)]
    seen = [key for keys in left for key in keys]
    assert any(seen.count(key) > 1 for key in seen), left  # filled batches in the rest
    origin = EpochOrigin(2, first_workers, 1, consumed)
    rest = [keys for _, _, keys in stream.iterate_rest(LoaderContext(0, 1, 3, 1, 0), 0, origin)]
    assert rest == left


def test_loader_memory_does_not_grow_with_dataset_size(tmp_path):
    """Peak RSS of one epoch over 2 000 samples (160 MB of shards) stays within +50 MB of
    the same over 200 samples."""
    import subprocess
    import sys
    from pathlib import Path

    rng = np.random.default_rng(0)
    sample = rng.integers(0, 256, size=(20, 1, 64, 64), dtype=np.uint8)
    for name, count in (("small", 200), ("large", 2000)):
        with SplitWriter(tmp_path / name, "train", value_scale=255, samples_per_shard=250) as w:
            for i in range(count):
                w.write(f"s{i:05d}", sample)
    probe = str(Path(__file__).parent / "rss_probe.py")
    peak = {}
    for name in ("small", "large"):
        out = subprocess.run(
            [sys.executable, probe, str(tmp_path / name), "0"],
            check=True,
            capture_output=True,
            text=True,
            timeout=120,
        ).stdout
        peak[name] = float(out.strip().splitlines()[-1])
    assert peak["large"] - peak["small"] < 50, peak


def test_fewer_shards_than_ranks_times_workers(tmp_path):
    with SplitWriter(tmp_path / "one", "train", value_scale=255) as writer:
        for i in range(21):
            writer.write(f"k{i:03d}", np.full((6, 1, 4, 4), i, np.uint8))
    stream = train(tmp_path / "one")
    seen, counts = [], []
    for rank in range(2):
        ctx = LoaderContext(rank=rank, world_size=2, num_workers=2)
        batches = list(stream.iterate(ctx, 0))
        counts.append(len(batches))
        seen += keys_of(batches)
    # 10 samples a rank: 5 batches of 2, dealt to the 2 workers in turn (3 and 2)
    assert counts == [5, 5] and len(set(seen)) == 20


@pytest.mark.parametrize("workers", [0, 1, 3, 4])
def test_workers_drop_no_more_than_a_step_of_samples(tmp_path, workers):
    """Each worker used to read an equal chunk of whole batches: on 2 ranks × batch 4 over
    60 samples (30 a rank), 4 workers trained 4 batches a rank where 7 fit, 16 samples of
    60 left out every epoch (half an epoch at 8 workers and larger data). Now the rank's
    whole batches are dealt to the workers: the same 7 a rank whatever their number (6 at
    accumulation 2: whole optimizer steps), each sample at most once."""
    with SplitWriter(tmp_path / "d", "train", value_scale=255) as writer:
        for i in range(60):
            writer.write(f"k{i:03d}", np.full((6, 1, 4, 4), i, np.uint8))
    stream = train(tmp_path / "d", batch=4)
    for multiple, per_rank in [(1, 7), (2, 6)]:
        seen = []
        for rank in range(2):
            ctx = LoaderContext(rank=rank, world_size=2, batch_multiple=multiple,
                                num_workers=workers)  # fmt: skip
            batches = list(stream.iterate(ctx, 0))
            assert len(batches) == stream.batches_per_epoch(ctx) == per_rank
            assert all(len(keys) == 4 for _, _, keys in batches)
            seen += keys_of(batches)
        assert len(seen) == len(set(seen)) == 2 * 4 * per_rank
        # resumed at batch 3: the rest of the uninterrupted pass
        ctx = LoaderContext(rank=1, world_size=2, batch_multiple=multiple, num_workers=workers)
        assert keys_of(stream.iterate(ctx, 0, 3)) == keys_of(list(stream.iterate(ctx, 0))[3:])


def test_pipe_url_template(uneven):
    stream = ShardEvalStream(
        uneven,
        batch_size=8,
        num_input_frames=3,
        num_output_frames=3,
        url_template=f"pipe:cat {uneven}/{{name}}",
    )
    assert len(keys_of(stream.iterate(LoaderContext()))) == sum(SIZES)


@pytest.mark.parametrize("workers", [0, 2])
def test_stored_frames_travel_as_uint8_and_scale_like_the_float_path(uneven, workers):
    """With `stored_dtype` the stream yields the stored uint8 frames (through worker
    processes too); the Trainer's device move scales them to exactly the float batch."""
    import torch

    from stpdist import Trainer
    from stpdist.data.loading import StoredFrames

    rng = np.random.default_rng(0)
    folder = uneven.parent / f"noisy{workers}"
    with SplitWriter(folder, "train", value_scale=255) as writer:
        for number in range(12):
            writer.write(f"n{number:03d}", rng.integers(0, 256, (6, 1, 4, 4), dtype=np.uint8))
    stream = train(folder)
    floats = list(stream.iterate(LoaderContext(num_workers=workers), 0))
    stored = list(stream.iterate(LoaderContext(num_workers=workers, stored_dtype=True), 0))
    assert len(stored) == len(floats) == 6
    trainer = Trainer(output_dir=folder.parent / "run", max_epochs=1, progress_bar=False)
    for (inputs, targets, keys), item in zip(floats, stored, strict=True):
        assert isinstance(item, StoredFrames) and item.frames.dtype == torch.uint8
        moved = trainer._to_device(item)
        assert moved.inputs.dtype == torch.float32 and moved.keys == keys
        assert torch.equal(moved.inputs, inputs) and torch.equal(moved.targets, targets)
    assert stored[0].frames.nbytes * 4 == (floats[0][0].nbytes + floats[0][1].nbytes)


def _template_missing_shard(tmp_path, uneven, missing: str) -> str:
    """A `pipe:cat …{split}/{name}` template over a copy of `uneven` without `missing`:
    a shard behind a URL whose command fails (as an https download with curl -f fails)."""
    import shutil

    remote = tmp_path / "remote" / "train"
    remote.mkdir(parents=True)
    for shard in uneven.glob("*.tar"):
        if shard.name != missing:
            shutil.copy(shard, remote / shard.name)
    return f"pipe:cat {tmp_path / 'remote'}/{{split}}/{{name}}"


def test_a_shard_whose_url_command_fails_is_named_and_skipped_in_skip_mode(tmp_path, uneven):
    """Once: webdataset's `Pipe.close` raised its OSError (a tuple repr, exit 1) past the
    error handling, so skip mode never saw it and the run was lost."""
    template = _template_missing_shard(tmp_path, uneven, "train-000002.tar")
    args = dict(batch_size=4, num_input_frames=3, num_output_frames=3, url_template=template)
    with pytest.raises(ShardFormatError) as err:
        list(ShardEvalStream(uneven, **args).iterate(LoaderContext()))
    message = str(err.value)
    assert message.startswith(f"pipe:cat {tmp_path}/remote/train/train-000002.tar: ")
    assert "the command exited with status 1" in message
    assert "\n" not in message and "{" not in message  # no repr of webdataset's arguments

    shard2 = {f"s{i:04d}" for i in range(20, 30)}
    evaluated = ShardEvalStream(uneven, skip_bad=True, **args)
    seen = keys_of(evaluated.iterate(LoaderContext()))
    assert sorted(seen) == sorted({f"s{i:04d}" for i in range(sum(SIZES))} - shard2)
    assert evaluated.bad_samples == 10

    # the train stream: equal full batches per rank, the shard's samples skipped and counted
    skipping, local = train(uneven), train(uneven)
    skipping.url_template, skipping.skip_bad = template, True
    counts, bad, seen, planned = [], 0, set(), set()
    for rank in range(2):
        ctx = LoaderContext(rank=rank, world_size=2, seed=3)
        batches = list(skipping.iterate(ctx, 0))
        assert all(len(b[2]) == 2 for b in batches)
        counts.append(len(batches))
        bad += skipping.bad_samples
        seen |= set(keys_of(batches))
        # behind a url_template the shards are read in order, as in layout 3
        planned |= set(keys_of(local.iterate(LoaderContext(rank, 2, seed=3, layout=3), 0)))
    assert counts == [local.batches_per_epoch(ctx)] * 2
    assert seen == planned - shard2 and bad == len(planned & shard2) > 0


def _object_npy(_: bytes) -> bytes:
    import io

    buffer = io.BytesIO()
    np.save(buffer, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    return buffer.getvalue()


@pytest.mark.parametrize(
    "garbage, says",
    [
        (lambda data: b"GARBAG" + data[6:], "not a NumPy .npy array"),  # the review's case
        (lambda data: b"not an npy file at all", "not a NumPy .npy array"),
        (_object_npy, "holds Python objects (pickled), not a plain numeric array"),
    ],
    ids=["garbage-magic", "text", "objects"],
)
def test_a_member_that_is_no_plain_array_is_named_without_advice_to_unpickle(
    tmp_path, uneven, garbage, says
):
    """numpy's message for these advises loading the file "unsafely" with `allow_pickle=` or
    `pickle.load`: for a corrupt or hostile data file, the wrong advice."""
    import shutil

    folder = tmp_path / "train"
    shutil.copytree(uneven, folder)
    name = corrupt_member(folder / "train-000000.tar", 1, garbage)
    stream = ShardEvalStream(folder, batch_size=4, num_input_frames=3, num_output_frames=3)
    with pytest.raises(ShardFormatError) as err:
        list(stream.iterate(LoaderContext()))
    message = str(err.value)
    assert message.startswith(f"{folder}/train-000000.tar: member {name}: unreadable")
    assert says in message and "\n" not in message
    assert "allow_pickle" not in message and "unsafe" not in message
    assert "pickle.load" not in message and "If you trust" not in message


def test_a_series_windows_mixed_by_a_small_buffer_are_said_once(tmp_path, caplog):
    """A review measured how a split of windows cut from a series (written in time order)
    mixes in layout 3: with 20 shards of 500 and the buffer's default 256, a batch drew from
    2–3 neighbouring stretches (as much seasonal information as 1.3–1.7 independent windows,
    against 16 for a shuffle), and nothing said so. One warning says it for a run that keeps
    that layout, with what helps; none for a buffer that reaches a quarter of the split,
    nor for independent samples, nor in layout 4 (tests/test_mixing.py)."""
    from stpdist.data.format import SplitWriter
    from stpdist.data.stream import LoaderContext, ShardTrainStream

    def split(folder, args):
        with SplitWriter(folder, "train", value_scale=255, samples_per_shard=500,
                         args=args) as writer:  # fmt: skip
            for i in range(10_000):
                writer.write(f"w{i:06d}", np.full((3, 1, 2, 2), i % 256, np.uint8))
        return folder

    series = split(tmp_path / "series", {"num_frames": 3, "stride": 1})
    ctx = LoaderContext(rank=0, world_size=2, seed=0, num_workers=2, layout=3)

    def note(folder, buffer):
        return ShardTrainStream(folder, batch_size=16, num_input_frames=2, num_output_frames=1,
                                shuffle_buffer=buffer).mixing_note(ctx)  # fmt: skip

    said = note(series, 256)
    assert (
        said is not None and "each batch draws from about 272 neighbouring ones (2.7% of " in said
    )
    assert "a shuffle buffer of 256 in runs of 2500 per worker, shards of 500" in said
    assert note(series, 2500) is None  # the worker's whole run
    assert note(split(tmp_path / "sequences", {}), 256) is None  # independent sequences
    # layout 4 (runs begun since 2026-12-07) deals from 16 bands: nothing to say
    ctx = LoaderContext(rank=0, world_size=2, seed=0, num_workers=2)
    assert note(series, 256) is None


def test_a_dataset_replaced_while_read_stops_the_reading(tmp_path):
    """A dataops review: `shard … --overwrite` (which swaps the folder in) while a run
    trained on it switched the run to the new shards, read by the old index, silently."""
    import os

    def write(folder, value):
        with SplitWriter(folder, "train", value_scale=255) as writer:
            for shard in range(2):
                writer.new_shard()
                for i in range(4):
                    writer.write(f"s{shard}{i}", np.full((6, 1, 4, 4), value, np.uint8))

    folder = tmp_path / "ds" / "train"
    write(folder, 1)
    stream = train(folder)
    ctx = LoaderContext(rank=0, world_size=1)
    assert len(keys_of(stream.iterate(ctx, 0))) == 8
    (folder / "index.json").touch()  # no other dataset (a scratch filesystem's touch)
    (folder / "index.json").write_bytes((folder / "index.json").read_bytes())
    assert len(keys_of(stream.iterate(ctx, 1))) == 8
    write(tmp_path / "new" / "train", 200)  # swapped in as `--overwrite` does: a rename
    os.rename(tmp_path / "ds", tmp_path / "old")
    os.rename(tmp_path / "new", tmp_path / "ds")
    with pytest.raises(ShardFormatError, match="the dataset was replaced while this run read it"):
        list(stream.iterate(ctx, 1))
    evaluation = ShardEvalStream(folder, batch_size=2, num_input_frames=3, num_output_frames=3)
    assert len(keys_of(evaluation.iterate(ctx))) == 8  # a stream begun on the new: reads it


def test_the_same_samples_make_the_same_shard_bytes(tmp_path):
    """An MLOps review: shards written twice from the same samples differed (each tar member
    carried the time it was written), so a dataset converted again was other data to
    `validate`, its index's hash another."""
    import hashlib
    import time

    def written(folder):
        with SplitWriter(folder, "train", value_scale=255) as writer:
            for i in range(3):
                writer.write(f"s{i}", np.full((6, 1, 4, 4), i, np.uint8))
        return hashlib.sha256((folder / "index.json").read_bytes()).hexdigest()

    first = written(tmp_path / "a" / "train")
    time.sleep(1.1)  # a second later: the member times used to differ
    assert written(tmp_path / "b" / "train") == first
