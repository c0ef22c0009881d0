"""Resharding on resume: a checkpoint written mid-epoch by 4 ranks continues on 2 and on 3
ranks (real processes over gloo, real tar shards): the rest of the epoch is
redistributed, every planned sample seen exactly once, and with `keep_global_batch` the
parameters equal an uninterrupted 4-rank run's."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_ranks

from stpdist.data.format import SplitWriter

SCRIPT = str(Path(__file__).parent / "dist_reshard.py")
# 4 ranks × batch 1 × accumulation 3: 12 micro-batches per optimizer step, 48 samples =
# 4 steps an epoch. Stopped after step 1 (3 batches a rank), 36 rank-batches are left:
# 3 steps on 3 ranks × 4 accumulation or 2 ranks × 6 (keep_global_batch).
SAMPLES, SHARD_SIZES, ACCUM = 48, [7, 13, 5, 11, 12], 3


def _jobs(tmp: Path, jobs: list[dict]) -> str:
    file = tmp / f"jobs-{len(list(tmp.glob('jobs-*.json')))}.json"
    file.write_text(json.dumps(jobs))
    return str(file)


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """Shards; an uninterrupted 4-rank epoch; a 4-rank run stopped after step 1."""
    tmp = tmp_path_factory.mktemp("reshard")
    shards = tmp / "data" / "train"
    rng = np.random.default_rng(0)
    with SplitWriter(shards, "train", value_scale=255) as writer:
        number = 0
        for size in SHARD_SIZES:
            writer.new_shard()
            for _ in range(size):
                writer.write(f"s{number:04d}", rng.integers(0, 256, (5, 1, 4, 4), dtype=np.uint8))
                number += 1
    assert number == SAMPLES
    common = {"shards": str(shards), "accum": ACCUM}
    jobs = [
        {**common, "out": str(tmp / "straight"), "tag": "straight"},
        {**common, "out": str(tmp / "stopped"), "tag": "first", "steps": 1},
        {**common, "out": str(tmp / "stopped-fsdp"), "tag": "first", "steps": 1,
         "strategy": "fsdp"},
    ]  # fmt: skip
    run_ranks([SCRIPT, _jobs(tmp, jobs)], 4, timeout=240)
    return tmp, shards


def _seen(folder: Path, tag: str) -> list[str]:
    keys = []
    for file in sorted(folder.glob(f"keys-{tag}-r*.json")):
        keys += [k for _, batch in json.loads(file.read_text()) for k in batch]
    return keys


@pytest.mark.parametrize("ranks", [2, 3])
def test_mid_epoch_checkpoint_of_4_ranks_resumes_on_other_ranks(tmp_path, written, ranks):
    """DDP and FSDP (a sharded checkpoint, 4 shards resharded to 2 or 3), two jobs of one
    launch; the parameters are held to the uninterrupted 4-rank DDP run's (FSDP trains to
    DDP's, tests/test_fsdp.py)."""
    tmp, shards = written
    jobs = []
    for strategy in ("ddp", "fsdp"):
        run = tmp_path / strategy
        shutil.copytree(tmp / ("stopped" if strategy == "ddp" else "stopped-fsdp"), run)
        state = json.loads((run / "checkpoints/step-00000001/trainer_state.json").read_text())
        assert (state["world_size"], state["batch"], state["epoch"]) == (4, ACCUM, 0)  # mid-epoch
        assert len(_shards_of(run, 1)) == (4 if strategy == "fsdp" else 0)
        jobs.append({"shards": str(shards), "accum": ACCUM, "out": str(run), "tag": "rest",
                     "strategy": strategy, "resume": "auto", "keep": True})  # fmt: skip
    proc = run_ranks([SCRIPT, _jobs(tmp_path, jobs)], ranks)
    assert (proc.stdout + proc.stderr).count(f"redistributed over {ranks}") == 2  # once a job

    planned = _seen(tmp / "straight", "straight")
    assert len(planned) == len(set(planned)) == SAMPLES
    steps: dict[int, set] = {}
    for file in sorted((tmp / "straight").glob("keys-straight-r*.json")):
        for step, batch in json.loads(file.read_text()):
            steps.setdefault(step, set()).update(batch)
    expected = torch.load(tmp / "straight" / "params-straight.pt")
    for strategy in ("ddp", "fsdp"):
        run = tmp_path / strategy
        # every sample of the epoch exactly once: before the stop + after the resume
        before, after = _seen(run, "first"), _seen(run, "rest")
        assert len(before) == 4 * ACCUM and len(after) == SAMPLES - 4 * ACCUM, strategy
        assert sorted(before + after) == sorted(planned), strategy
        # each optimizer step after the resume holds the samples of the uninterrupted run's
        resumed: dict[int, set] = {}
        for file in sorted(run.glob("keys-rest-r*.json")):
            for step, batch in json.loads(file.read_text()):
                resumed.setdefault(step, set()).update(batch)
        assert resumed == {s: keys for s, keys in steps.items() if s >= 1}, strategy

        # keep_global_batch: the accumulation became 12 / ranks, the parameters 4 ranks'
        final = json.loads((run / "state-rest.json").read_text())
        assert final == {"global_step": 4, "epoch": 1}, strategy
        saved = json.loads((run / "checkpoints/step-00000004/trainer_state.json").read_text())
        assert (saved["world_size"], saved["gradient_accumulation_steps"]) == (ranks, 12 // ranks)
        assert len(_shards_of(run, 4)) == (ranks if strategy == "fsdp" else 0)
        got = torch.load(run / "params-rest.pt")
        for name, value in expected.items():
            torch.testing.assert_close(got[name], value, rtol=1e-6, atol=1e-6, msg=strategy)
        # the epoch's loss: its part on 4 ranks (carried by the checkpoint) and the rest
        assert _epoch_losses(run) == pytest.approx(_epoch_losses(tmp / "straight"), rel=1e-5)


def _epoch_losses(run: Path) -> list[float]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r["train/epoch_loss"] for r in rows if "time_s" in r]


def _shards_of(run: Path, step: int) -> list[Path]:
    return sorted((run / "checkpoints" / f"step-{step:08d}").glob("sharded/*.distcp"))


@pytest.mark.parametrize(
    "first_workers, workers, first_accum, ranks, accum",
    [(0, 0, 1, 3, 1), (2, 0, 1, 3, 1), (0, 2, 3, 2, 2)],
)
def test_rest_of_an_epoch_is_every_unconsumed_batch_once(
    written, first_workers, workers, first_accum, ranks, accum
):
    """Stream level, with data-loading workers on either side: the rest of an epoch begun on
    4 ranks, continued on `ranks` (and resumed again inside the rest), holds each batch the
    4-rank layout had still to yield once, less fewer than ranks × accumulation batches."""
    from stpdist.data.loading import EpochOrigin, LoaderContext
    from stpdist.data.stream import ShardTrainStream

    _, shards = written
    stream = ShardTrainStream(
        shards, batch_size=2, num_input_frames=3, num_output_frames=2, shuffle_buffer=4
    )

    def ctx(rank, world, workers, multiple):
        return LoaderContext(rank, world, 5, multiple, workers)

    first = [list(stream.iterate(ctx(r, 4, first_workers, first_accum), 1)) for r in range(4)]
    consumed = first_accum
    origin = EpochOrigin(4, first_workers, first_accum, consumed)
    left = [b[2] for j in range(consumed, len(first[0])) for r in range(4) for b in [first[r][j]]]
    rest, counts = [], set()
    for rank in range(ranks):
        here = ctx(rank, ranks, workers, accum)
        batches = list(stream.iterate_rest(here, 1, origin))
        counts.add(len(batches))
        assert len(batches) == stream.batches_in_rest(here, origin)
        assert [b[2] for b in stream.iterate_rest(here, 1, origin, 1)] == [
            b[2] for b in batches[1:]
        ]
        rest += [(i * ranks + rank, b[2]) for i, b in enumerate(batches)]
    assert len(counts) == 1  # equal batches on every rank
    dropped = len(left) - len(rest)
    assert 0 <= dropped < ranks * accum
    assert [keys for _, keys in sorted(rest)] == left[: len(rest)]


# ---------------------------------------------------------------- on-the-fly moving digits
def _digest(frames) -> str:
    import hashlib

    return hashlib.sha1(frames.contiguous().numpy().tobytes()).hexdigest()[:16]


@pytest.mark.parametrize(
    "first_workers, workers, first_accum, ranks, accum",
    [(0, 0, 1, 3, 1), (2, 0, 1, 3, 1), (0, 2, 3, 2, 2), (0, 0, 1, 1, 2)],
)
def test_rest_of_an_on_the_fly_epoch_is_every_unconsumed_sequence_once(
    first_workers, workers, first_accum, ranks, accum
):
    """`data.train_source: moving_digits` (every configs/mmnist recipe) resumes mid-epoch on
    another number of ranks, as the shard stream does: the rest of an epoch begun on 4 ranks,
    continued on `ranks` (and resumed inside the rest, and moved on again to 2 ranks), holds
    each batch the 4-rank layout had still to yield once, less fewer than ranks ×
    accumulation batches; data-loading workers on either side."""
    from dataclasses import replace

    from stpdist.data.loading import EpochOrigin, LoaderContext
    from stpdist.data.onthefly import MovingDigitsTrainSource

    source = MovingDigitsTrainSource(
        50, batch_size=2, num_input_frames=2, num_output_frames=1, image_size=8, digit_size=6
    )

    def ctx(rank, world, workers, multiple):
        return LoaderContext(rank, world, 5, multiple, workers)

    def names(batches):
        return [[_digest(torch.cat([x, y], 1)[i]) for i in range(len(x))] for x, y in batches]

    first = [names(source.iterate(ctx(r, 4, first_workers, first_accum), 1)) for r in range(4)]
    assert len({len(batches) for batches in first}) == 1
    consumed = first_accum
    origin = EpochOrigin(4, first_workers, first_accum, consumed)
    left = [first[r][j] for j in range(consumed, len(first[0])) for r in range(4)]
    assert len({name for batch in left for name in batch}) == 2 * len(left)  # all told apart
    rest, counts = [], set()
    for rank in range(ranks):
        here = ctx(rank, ranks, workers, accum)
        batches = names(source.iterate_rest(here, 1, origin))
        counts.add(len(batches))
        assert len(batches) == source.batches_in_rest(here, origin)
        assert names(source.iterate_rest(here, 1, origin, 1)) == batches[1:]
        rest += [(i * ranks + rank, b) for i, b in enumerate(batches)]
    assert len(counts) == 1 and counts.pop() > 0  # equal batches on every rank
    assert 0 <= len(left) - len(rest) < ranks * accum
    assert [batch for _, batch in sorted(rest)] == left[: len(rest)]

    # moved again after one batch a rank: 2 ranks take the list on where `ranks` left it
    again = replace(origin, later=ranks)
    moved = [names(source.iterate_rest(ctx(r, 2, 0, 1), 1, again)) for r in range(2)]
    assert len(moved[0]) == len(moved[1]) == source.batches_in_rest(ctx(0, 2, 0, 1), again)
    assert [moved[r][i] for i in range(len(moved[0])) for r in range(2)] == left[ranks:][
        : 2 * len(moved[0])
    ]


def test_an_on_the_fly_epoch_stopped_on_2_ranks_resumes_on_1_rank(tmp_path):
    """End to end, real processes over gloo: 2 ranks × batch 2 over 20 generated sequences
    an epoch (5 steps), stopped after step 2 and resumed on 1 rank with the global batch
    kept (accumulating 2): every sequence of the epoch is seen exactly once, each later step
    holds the uninterrupted run's sequences, and the parameters are its parameters."""
    from stpdist.data.onthefly import MovingDigitsTrainSource

    common = {"digits": 20, "accum": 1}
    first = [{**common, "out": str(tmp_path / "straight"), "tag": "straight"},
             {**common, "out": str(tmp_path / "run"), "tag": "first", "steps": 2}]  # fmt: skip
    run_ranks([SCRIPT, _jobs(tmp_path, first)], 2)
    rest = [{**common, "out": str(tmp_path / "run"), "tag": "rest", "resume": "auto", "keep": True}]
    proc = run_ranks([SCRIPT, _jobs(tmp_path, rest)], 1)
    assert "redistributed over 1" in proc.stdout + proc.stderr

    source = MovingDigitsTrainSource(  # as in the script
        20,
        batch_size=2,
        num_input_frames=3,
        num_output_frames=2,
        image_size=8,
        digit_size=6,
        seed=1,
    )
    epoch = [_digest(torch.from_numpy(source.sample(0, j)).float().div_(255)) for j in range(20)]
    assert len(set(epoch)) == 20
    before, after = _seen(tmp_path / "run", "first"), _seen(tmp_path / "run", "rest")
    assert len(before) == 8 and len(after) == 12
    assert sorted(before + after) == sorted(epoch)
    assert sorted(_seen(tmp_path / "straight", "straight")) == sorted(epoch)

    def steps(folder: Path, tag: str) -> dict[int, set]:
        found: dict[int, set] = {}
        for file in sorted(folder.glob(f"keys-{tag}-r*.json")):
            for step, batch in json.loads(file.read_text()):
                found.setdefault(step, set()).update(batch)
        return found

    straight = steps(tmp_path / "straight", "straight")
    assert steps(tmp_path / "run", "rest") == {s: k for s, k in straight.items() if s >= 2}
    assert json.loads((tmp_path / "run" / "state-rest.json").read_text()) == {
        "global_step": 5, "epoch": 1}  # fmt: skip
    expected = torch.load(tmp_path / "straight" / "params-straight.pt")
    got = torch.load(tmp_path / "run" / "params-rest.pt")
    for name, value in expected.items():
        torch.testing.assert_close(got[name], value, rtol=1e-6, atol=1e-6)


def test_a_mid_epoch_checkpoint_resumed_with_other_workers_or_accumulation_sees_each_sample_once(
    tmp_path, written
):
    """A shard stream's layout depends on its workers (each reads its own shards), and an
    epoch ends on an optimizer step: a mid-epoch resume on the same 2 ranks with
    `trainer.num_workers` 0 → 2 laid out the rest anew but started at the old batch count
    (samples seen twice, others skipped); with another accumulation the steps lost their
    alignment with the epoch (one spanned two epochs), or, standing past the epoch's new
    end, the run looped for ever. Both are now redistributed as a move to other ranks is
    (one launch runs both cases, each a stop and its resume). Also a run begun by an
    earlier stpdist, whose workers' layout (layout 1) differs from today's with the same 5
    workers: it goes on in its own layout, its epoch as it was begun."""
    _, shards = written
    changes = {"workers": {"workers": 2}, "accumulation": {"accum": 2}, "layout": {}}
    jobs = []
    for name, change in changes.items():
        common = {"shards": str(shards), "accum": ACCUM, "out": str(tmp_path / name)}
        workers = 5 if name == "layout" else 0
        jobs += [
            {**common, "tag": "first", "steps": 1, "workers": workers, "layout": 1},
            {**common, "tag": "rest", "resume": "auto", "workers": workers, **change},
        ]
    proc = run_ranks([SCRIPT, _jobs(tmp_path, jobs)], 2, timeout=180)
    said = proc.stdout + proc.stderr
    assert said.count("the rest of epoch 0 is redistributed over 2") == 2  # not "layout"
    for name, change in changes.items():
        before, after = _seen(tmp_path / name, "first"), _seen(tmp_path / name, "rest")
        assert len(before) == 2 * ACCUM, name
        seen = before + after
        assert len(seen) == len(set(seen)), f"{name}: a sample seen twice in the epoch"
        accumulation = change.get("accum", ACCUM)
        if name == "layout":  # the epoch as the earlier layout planned it, every sample once
            assert sorted(seen) == sorted(_layout_1_epoch(shards)), name
            continue
        assert SAMPLES - len(seen) < 2 * max(ACCUM, accumulation), name  # < a step's worth


def _layout_1_epoch(shards: Path) -> list[str]:
    """The keys of epoch 0 on 2 ranks × 5 workers, accumulation ACCUM, in layout 1."""
    from stpdist.config import TrainerConfig
    from stpdist.data.loading import LoaderContext
    from stpdist.data.stream import ShardTrainStream

    stream = ShardTrainStream(
        shards, batch_size=1, num_input_frames=3, num_output_frames=2, shuffle_buffer=4
    )
    seed = TrainerConfig().seed
    keys = []
    for rank in range(2):
        ctx = LoaderContext(rank, 2, seed, ACCUM, num_workers=5, layout=1)
        keys += [key for batch in stream.iterate(ctx, 0) for key in batch[2]]
    return keys
