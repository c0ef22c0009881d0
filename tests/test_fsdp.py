"""`trainer.strategy: fsdp` on 2 CPU ranks over gloo (real processes): the same
parameters as DDP after k steps, with and without accumulation; 1/N of DDP's bytes per
rank for parameters + gradients + optimizer state (local shards' storage)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from conftest import run_ranks
from helpers import TinyModule

from stpdist.checkpoint import load_weights

SCRIPT = str(Path(__file__).parent / "dist_fsdp.py")
STEPS = 5


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fsdp")
    jobs = [
        {"out": str(tmp / f"{strategy}-{accum}"), "strategy": strategy, "accum": accum,
         "steps": STEPS}
        for strategy in ("ddp", "fsdp")
        for accum in (1, 2)
    ]  # fmt: skip
    jobs[3]["wrap"] = ["Linear"]  # fsdp, accumulation 2: each Linear a unit of its own
    jobs.append({"out": str(tmp / "fsdp-long"), "strategy": "fsdp", "accum": 1, "steps": 8})
    # test_an_fsdp_run_stopped_during_a_validation_…'s runs, in this launch (each launch
    # costs seconds of imports): uninterrupted, stopped in its first validation, resumed
    stop = {"strategy": "fsdp", "accum": 1, "steps": 6, "wrap": ["Linear"], "val_every": 3}
    jobs += [
        {**stop, "out": str(tmp / "straight")},
        {**stop, "out": str(tmp / "stopped"), "stop_in_validation": True},
        {**stop, "out": str(tmp / "stopped"), "resume": "auto"},
    ]
    (tmp / "jobs.json").write_text(json.dumps(jobs))
    run_ranks([SCRIPT, str(tmp / "jobs.json")], 2, timeout=240)
    return tmp


def _weights(run: Path, step: int = STEPS) -> dict[str, torch.Tensor]:
    """The weights of `run`'s checkpoint `step`, full or sharded, loaded in this process."""
    module = TinyModule()
    load_weights(run / "checkpoints" / f"step-{step:08d}", module)
    return module.state_dict()


@pytest.mark.parametrize("accum", [1, 2])
def test_fsdp_trains_to_the_parameters_of_ddp(runs, accum):
    ddp, fsdp = _weights(runs / f"ddp-{accum}"), _weights(runs / f"fsdp-{accum}")
    assert sorted(ddp) == sorted(fsdp)
    for name, value in ddp.items():
        assert fsdp[name].shape == value.shape  # consolidated from the shards
        torch.testing.assert_close(fsdp[name], value, rtol=1e-6, atol=1e-6)
    start = _weights(runs / f"ddp-{accum}")
    assert any(v.abs().sum() > 0 for v in start.values())


def test_fsdp_stores_one_nth_of_ddp_per_rank(runs):
    for accum in (1, 2):
        ddp = [json.loads((runs / f"ddp-{accum}" / f"bytes-r{r}.json").read_text()) for r in (0, 1)]
        fsdp = [
            json.loads((runs / f"fsdp-{accum}" / f"bytes-r{r}.json").read_text()) for r in (0, 1)
        ]
        assert min(ddp) > 0
        for stored in fsdp:
            assert 0 < stored <= ddp[0] / 2 * 1.10, (stored, ddp)


@pytest.mark.parametrize("ranks", [2, 1])
def test_fsdp_checkpoint_resumes_on_the_same_and_another_number_of_ranks(tmp_path, runs, ranks):
    """The FSDP run stopped at step 5 (mid-epoch) continues to step 8: on 2 ranks bitwise as
    the uninterrupted FSDP run; on 1 rank (the rest of the epoch redistributed, the global
    batch kept by accumulating 2) to 1e-6."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(runs / "fsdp-1", run)
    job = {"out": str(run), "strategy": "fsdp", "accum": 1, "steps": 8, "resume": "auto"}
    (tmp_path / "jobs.json").write_text(json.dumps([{**job, "keep": True}]))
    run_ranks([SCRIPT, str(tmp_path / "jobs.json")], ranks, timeout=240)
    final = run / "checkpoints" / f"step-{8:08d}"
    state = json.loads((final / "trainer_state.json").read_text())
    assert (state["world_size"], state["gradient_accumulation_steps"]) == (ranks, 2 // ranks)
    got, expected = _weights(run, 8), _weights(runs / "fsdp-long", 8)
    for name, value in expected.items():
        if ranks == 2:
            assert torch.equal(got[name], value), name
        else:
            torch.testing.assert_close(got[name], value, rtol=1e-6, atol=1e-6)


def test_an_fsdp_run_stopped_during_a_validation_resumes_to_the_uninterrupted_weights(runs):
    """The resume runs the validation the stop cut off before any training forward: with
    units beside the root, a unit then took itself for the root, and the first training
    step failed ("FSDP state has already been lazily initialized for module.net.1"). (The
    three runs, straight, stopped and resumed, are jobs of the `runs` launch.)"""
    assert (runs / "stopped" / "checkpoints" / "step-00000003").is_dir()  # the stop
    got, expected = _weights(runs / "stopped", 6), _weights(runs / "straight", 6)
    for name, value in expected.items():
        assert torch.equal(got[name], value), name


@pytest.mark.parametrize(
    ("name", "args", "expected"),
    [
        ("predformer", {"patch_size": 4, "embed_dim": 16, "num_heads": 2, "num_groups": 1},
         ["GatedTransformerBlock"] * 4),
        ("simvp", {"translator": "gsta", "spatial_channels": 4, "temporal_channels": 8,
                   "num_spatial_blocks": 2, "num_translator_blocks": 3},
         ["SpatialEncoder", "Sequential", "Sequential", "Sequential", "SpatialDecoder"]),
        ("simvp", {"translator": "incepu", "spatial_channels": 4, "temporal_channels": 8,
                   "num_spatial_blocks": 2, "num_translator_blocks": 2,
                   "inception_groups": 2},
         ["SpatialEncoder", *["InceptionBlock"] * 4, "SpatialDecoder"]),
    ],
)  # fmt: skip
def test_backbones_name_their_fsdp_units(name, args, expected):
    """PredFormer: each transformer block; SimVP: the encoder, each translator block, the
    decoder (not the generic fallback, which would take every nested ModuleList's
    entries: the encoder's conv blocks, an Inception block's branches). Every parameter
    lies in a unit or in what the root keeps; a unit's parameters are no other unit's."""
    from stpdist.fsdp import fsdp_units
    from stpdist.models import build_backbone
    from stpdist.models.base import FrameSpec

    backbone = build_backbone(name, FrameSpec(1, 16, 16, 4, 4), args)
    units = fsdp_units(backbone)
    assert [type(u).__name__ for u in units] == expected
    owned = [id(p) for u in units for p in u.parameters()]
    assert len(owned) == len(set(owned))
    assert len(owned) > len(list(backbone.parameters())) // 2  # most sit in units


def test_recurrent_backbones_shard_with_their_cells_as_units(tmp_path):
    """Every frame-recurrent backbone (and TrajGRU) sharded over 2 ranks with its default
    units, the cell layers: a backbone calls a cell's input side and the rest of it apart
    (`SplitCell`), and each call gathers the cell's parameters. One forward and backward on
    the same batch on both ranks: the loss and every full gradient equal the unsharded
    backbone's, fused kernels off and, for TrajGRU, on (its first level batched over time)."""
    run_ranks([str(Path(__file__).parent / "dist_fsdp_backbones.py"), str(tmp_path)], 2)
    worst = json.loads((tmp_path / "result.json").read_text())
    assert len(worst) == 9
    for case, difference in worst.items():
        assert difference <= 1e-6, case


def test_fsdp_trains_through_a_window_whose_last_micro_batch_every_rank_skipped(tmp_path):
    """A review on 2 ranks: with FSDP, accumulation 2 and a window whose last micro-batch is
    skipped on every rank, the window's gradients were never reduce-scattered (the skipped
    forward gathered the parameters, no backward put them back): no weight changed from
    there, silently, and the next checkpoint failed; then the run stopped there, saying
    why. FSDP's reduction now runs by hand, and FSDP (one unit, and a unit a Linear) ends
    on DDP's weights; so it does when a whole window, or a step without accumulation, is
    skipped (a whole window left the root's parameters gathered: the checkpoint failed)."""
    from conftest import run_ranks

    script = str(Path(__file__).parent / "dist_fsdp_skip.py")
    proc = run_ranks([script, str(tmp_path / "run")], 2)
    said = re.findall(
        r"rank (\d): (\w+) trained, wrap (\S+), max\|fsdp - ddp\| ([\d.e+-]+)", proc.stdout
    )
    assert sorted((rank, case, wrap) for rank, case, wrap, _ in said) == [
        (rank, case, wrap)
        for rank in "01"
        for case, wrap in (("last", "None"), ("last", "['Linear']"), ("step", "None"),
                           ("window", "None"))
    ], proc.stdout[-2000:] + proc.stderr[-2000:]  # fmt: skip
    assert all(float(gap) < 1e-6 for *_, gap in said), said


def test_a_resume_the_main_rank_cannot_resolve_fails_on_every_rank_at_once(tmp_path):
    """The main rank alone resolves `resume` (hashing the checkpoint once); an error of
    another kind than the user-input ones (a TypeError: `resume=True`) was raised on the
    main rank only, and the other waited for its answer until the process group's timeout."""
    from conftest import run_ranks

    script = str(Path(__file__).parent / "dist_resume_type.py")
    proc = run_ranks([script, str(tmp_path / "run")], 2, timeout=120)
    said = re.findall(r"rank (\d): TypeError after 0 s: resume is True", proc.stdout)
    assert sorted(said) == ["0", "1"], proc.stdout[-2000:] + proc.stderr[-2000:]
