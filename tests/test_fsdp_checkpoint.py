"""Sharded checkpoints of `trainer.strategy: fsdp` (torch.distributed.checkpoint), on real
CPU ranks over gloo: each rank writes its shard; the manifest lists every shard
with its sha256; retention and the fallback from a damaged checkpoint work as for full
checkpoints; a run SIGKILLed in a step or in a save resumes bitwise; a checkpoint written
by 2 ranks resumes on 3 (FSDP, resharded), on 1 and on 2 DDP ranks; the metadata file is
never unpickled beyond DCP's own classes. And `--keep-global-batch`'s refusal."""

from __future__ import annotations

import json
import os
import pickle
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import free_port, launcher, run_ranks
from helpers import TinyModule

from stpdist.checkpoint import CheckpointError, CheckpointManager, damage, load_weights

pytestmark = pytest.mark.multiprocess

SCRIPT = str(Path(__file__).parent / "dist_fsdp.py")
STEPS = 16  # 48 samples / (2 ranks × batch 2): 12 steps an epoch, so the runs cross one


def _launch(tmp: Path, jobs: list[dict], ranks: int = 2, *, check: bool = True):
    file = tmp / f"jobs-{len(list(tmp.glob('jobs-*.json')))}.json"
    file.write_text(json.dumps(jobs))
    if check:
        return run_ranks([SCRIPT, str(file)], ranks, timeout=240)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [*launcher(ranks), SCRIPT, str(file)]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """Uninterrupted FSDP runs on 2 ranks: `ref` (16 steps, a checkpoint every 2, the last
    2 kept), `accum3` (accumulation 3, 8 steps) and `part3` (the same, stopped at step 3,
    mid-epoch)."""
    tmp = tmp_path_factory.mktemp("fsdp-ckpt")
    base = {"strategy": "fsdp", "every": 2}
    _launch(
        tmp,
        [
            {**base, "out": str(tmp / "ref"), "accum": 1, "steps": STEPS},
            {**base, "out": str(tmp / "accum3"), "accum": 3, "steps": 8},
            {**base, "out": str(tmp / "part3"), "accum": 3, "steps": 3},
        ],
    )
    return tmp


def _step(run: Path, step: int) -> Path:
    return run / "checkpoints" / f"step-{step:08d}"


def _shards(folder: Path) -> dict[str, str]:
    """The sha256 of each DCP shard (weights and optimizer state) in the manifest."""
    files = json.loads((folder / "manifest.json").read_text())["files"]
    return {name: entry["sha256"] for name, entry in files.items() if name.endswith(".distcp")}


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    """A checkpoint's weights, consolidated in this process (no process group)."""
    module = TinyModule()
    load_weights(folder, module)
    return module.state_dict()


def test_fsdp_checkpoints_are_sharded_listed_and_retained(runs):
    folders = sorted(p.name for p in (runs / "ref" / "checkpoints").iterdir())
    assert folders == ["step-00000014", "step-00000016"]  # keep_last 2 of every 2 steps
    final = _step(runs / "ref", STEPS)
    assert not (final / "model.safetensors").exists()  # no rank gathered the full model
    assert not (final / "optimizer.pt").exists()
    assert sorted(_shards(final)) == ["sharded/__0_0.distcp", "sharded/__1_0.distcp"]
    listed = json.loads((final / "manifest.json").read_text())["files"]
    assert "sharded/.metadata" in listed and "optimizer-groups.pt" in listed
    assert damage(final, deep=True) is None
    state = json.loads((final / "trainer_state.json").read_text())
    assert (state["global_step"], state["world_size"]) == (STEPS, 2)


def test_damaged_sharded_checkpoint_is_passed_over(runs, tmp_path, caplog):
    run = tmp_path / "run"
    shutil.copytree(runs / "ref", run)
    shard = _step(run, STEPS) / "sharded" / "__1_0.distcp"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size: only the sha256 tells
    shard.write_bytes(bytes(data))
    manager = CheckpointManager(run / "checkpoints")
    with caplog.at_level("WARNING", logger="stpdist"):
        assert manager.resolve("auto") == _step(run, 14)
    assert "step-00000016 is damaged (sharded/__1_0.distcp does not match its sha256" in caplog.text
    with pytest.raises(CheckpointError, match="sharded/__1_0.distcp"):
        manager.choose("step-16")


@pytest.mark.parametrize("where", ["step", "save"])
def test_sigkilled_fsdp_run_resumes_bitwise(runs, tmp_path, where):
    """Rank 0 SIGKILLs itself at a random step (seeded), in the training step or while
    that step's checkpoint is written (every shard there, no manifest yet); `--resume auto`
    on the same 2 ranks ends with shards byte-identical to the uninterrupted run's."""
    rng = random.Random(26)
    kill = rng.randrange(3, STEPS - 1) if where == "step" else 2 * rng.randrange(2, STEPS // 2)
    out = tmp_path / "run"
    job = {"out": str(out), "strategy": "fsdp", "accum": 1, "steps": STEPS, "every": 2}
    key = "kill_at" if where == "step" else "kill_in_save"
    killed = _launch(tmp_path, [{**job, key: kill}], check=False)
    assert killed.returncode != 0, killed.stdout[-2000:]
    assert not (out / "checkpoints" / f"step-{STEPS:08d}").exists()
    if where == "save":
        assert (out / "checkpoints" / f".tmp-step-{kill:08d}" / "sharded").is_dir()
        assert CheckpointManager(out / "checkpoints").latest() == _step(out, kill - 2)
    _launch(tmp_path, [{**job, "resume": "auto"}])
    assert not any((out / "checkpoints").glob(".tmp-*"))  # the torn save was swept
    final, expected = _step(out, STEPS), _step(runs / "ref", STEPS)
    assert len(_shards(expected)) == 2
    assert _shards(final) == _shards(expected)  # weights and optimizer state, bitwise
    got, want = _weights(final), _weights(expected)
    assert all(torch.equal(got[k], want[k]) for k in want)


@pytest.mark.parametrize(("ranks", "strategy"), [(3, "fsdp"), (1, "fsdp"), (2, "ddp")])
def test_sharded_checkpoint_resumes_resharded(runs, tmp_path, ranks, strategy):
    """Written by 2 FSDP ranks × accumulation 3 at step 3 (mid-epoch); resumed with the
    global batch kept on 3 FSDP ranks (DCP reshards 2 → 3 shards), on 1 process and on 2
    DDP ranks: the weights of the uninterrupted run at step 8 to 1e-6."""
    run = tmp_path / "run"
    shutil.copytree(runs / "part3", run)
    job = {"out": str(run), "strategy": strategy, "accum": 3, "steps": 8, "every": 2}
    _launch(tmp_path, [{**job, "resume": "auto", "keep": True}], ranks)
    final = _step(run, 8)
    state = json.loads((final / "trainer_state.json").read_text())
    assert (state["world_size"], state["gradient_accumulation_steps"]) == (ranks, 6 // ranks)
    sharded = strategy == "fsdp" and ranks > 1
    assert len(_shards(final)) == (ranks if sharded else 0)
    got, want = _weights(final), _weights(_step(runs / "accum3", 8))
    for name, value in want.items():
        torch.testing.assert_close(got[name], value, rtol=1e-6, atol=1e-6)


def test_a_full_checkpoint_resumes_sharded(runs, tmp_path):
    """Written by 2 DDP ranks (a full checkpoint: optimizer.pt keyed by parameter index) at
    step 3, mid-epoch; resumed under FSDP on 2 ranks, which failed with KeyError
    'state.0.step' (torch's full-state loader takes parameter names): the uninterrupted
    FSDP run's weights at step 8 to 1e-6."""
    run = tmp_path / "run"
    job = {"out": str(run), "accum": 3, "every": 2}
    _launch(tmp_path, [{**job, "strategy": "ddp", "steps": 3},
                       {**job, "strategy": "fsdp", "steps": 8, "resume": "auto"}])  # fmt: skip
    assert len(_shards(_step(run, 8))) == 2  # sharded from then on
    got, want = _weights(_step(run, 8)), _weights(_step(runs / "accum3", 8))
    for name, value in want.items():
        torch.testing.assert_close(got[name], value, rtol=1e-6, atol=1e-6)


class _Payload:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_sharded_metadata_naming_code_is_refused(runs, tmp_path, monkeypatch):
    folder = tmp_path / "step"
    shutil.copytree(_step(runs / "ref", STEPS), folder)
    (folder / "sharded" / ".metadata").write_bytes(pickle.dumps(_Payload()))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CheckpointError, match=r"\.metadata.*posix\.system|\.metadata.*os\.system"):
        load_weights(folder, TinyModule())
    assert not (tmp_path / "pwned").exists()


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory) -> Path:
    """`stpdist train` of a tiny ConvLSTM with `trainer.strategy=fsdp` on 2 ranks
    (no `fsdp_units()`: the ModuleList fallback makes each cell layer a unit), 2 steps,
    a sharded checkpoint and its validation at the end."""
    from stpdist.data.synthetic import write_moving_digits

    tmp = tmp_path_factory.mktemp("fsdp-cli")
    write_moving_digits(tmp / "data", {"train": 8, "val": 4}, num_frames=4, image_size=32,
                        progress=False)  # fmt: skip
    (tmp / "cfg.yaml").write_text(_TINY_CONFIG.format(root=tmp / "data"))
    done = run_ranks(["--no-python", sys.executable, "-m", "stpdist", "train", "cfg.yaml",
                      "trainer.strategy=fsdp", "trainer.channels_last=true"], 2, cwd=tmp,
                     timeout=120)  # fmt: skip
    (tmp / "output.txt").write_text(done.stdout + done.stderr)
    return tmp


def test_convlstm_trains_under_fsdp_with_its_cell_layers_as_units(cli_run):
    from stpdist.build import build_module
    from stpdist.config import load_config
    from stpdist.fsdp import fsdp_units

    cfg = load_config(cli_run / "cfg.yaml")
    cfg.data.root = str(cli_run / "data")
    units = fsdp_units(build_module(cfg))
    assert [type(u).__name__ for u in units] == ["ConvLSTMCell", "ConvLSTMCell"]
    final = _step(cli_run / "runs" / "x", 2)
    assert len(_shards(final)) == 2  # each rank wrote its shard
    assert json.loads((final / "trainer_state.json").read_text())["world_size"] == 2
    # FSDP keeps parameters contiguous: channels-last is not applied, and said once
    said = (cli_run / "output.txt").read_text()
    assert said.count("trainer.channels_last: not applied with strategy fsdp on 2 processes") == 1


def test_sharded_checkpoint_consolidates_to_the_same_forecasts(cli_run, tmp_path):
    """`stpdist export` of the sharded checkpoint writes one model.safetensors; validated in
    one process it scores what the sharded model scored in its own (2-rank) validation;
    `stpdist.load` of the sharded folder and of the export forecast the same, bitwise."""
    from conftest import run_cli

    import stpdist

    work = tmp_path / "work"
    shutil.copytree(cli_run, work)
    sharded = _step(work / "runs" / "x", 2)
    run_cli("export", "runs/x", "--ckpt", "last", "--out", "exported", cwd=work, check=True)
    assert sorted(p.name for p in (work / "exported").iterdir()) == [
        "config.yaml", "export.json", "index.json", "model.safetensors"
    ]  # fmt: skip
    run_cli("validate", "cfg.yaml", "--ckpt", "exported", cwd=work, check=True)
    own = json.loads((sharded / "validation.json").read_text())
    scored = json.loads((work / "runs" / "x" / "metrics_val.json").read_text())
    assert own["val/num_samples"] == scored["val/num_samples"] == 4
    for name, value in own.items():
        assert scored[name] == pytest.approx(value, rel=1e-6, abs=1e-9), name
    inputs = torch.rand(3, 2, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        from_shards = stpdist.load(sharded).predict_frames(inputs)
        from_export = stpdist.load(work / "exported").predict_frames(inputs)
    assert torch.equal(from_shards, from_export)
    assert from_shards.abs().sum() > 0


def test_keep_global_batch_refusal_is_one_line_and_writes_nothing(cli_run, tmp_path):
    """The 2-rank checkpoint (accumulation 1) resumed on 3 ranks with --keep-global-batch:
    2 micro-batches a step do not split over 3. Every rank exits 2; the main one says it in
    one line on stderr, the others nothing (each said it, three times in one log); the run
    folder is byte for byte as it was."""
    work = tmp_path / "work"
    shutil.copytree(cli_run, work)
    before = _listing(work / "runs")
    port, procs = free_port(), []
    for rank in range(3):
        env = {**os.environ, "OMP_NUM_THREADS": "1", "RANK": str(rank), "LOCAL_RANK": str(rank),
               "WORLD_SIZE": "3", "LOCAL_WORLD_SIZE": "3", "MASTER_ADDR": "127.0.0.1",
               "MASTER_PORT": str(port)}  # fmt: skip
        cmd = [sys.executable, "-m", "stpdist", "train", "cfg.yaml", "trainer.strategy=fsdp",
               "--resume", "auto", "--keep-global-batch"]  # fmt: skip
        procs.append(subprocess.Popen(cmd, cwd=work, env=env, text=True,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE))  # fmt: skip
    said = []
    for proc in procs:
        _, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 2, stderr[-2000:]
        said.append(stderr.strip().splitlines())
    assert [len(lines) for lines in said] == [1, 0, 0], said
    assert "keep_global_batch" in said[0][0] and "2 ranks × 1" in said[0][0]
    assert "3 ranks cannot split evenly" in said[0][0]
    assert _listing(work / "runs") == before


_TINY_CONFIG = """\
trainer:
  output_dir: runs/x
  max_epochs: 1
  progress_bar: false
  checkpoint: {{every_epoch: true, keep_best: 1}}
data:
  root: {root}
  batch_size: 2
  num_input_frames: 2
  num_output_frames: 2
  shuffle_buffer: 4
model:
  name: convlstm
  backbone: {{hidden_channels: [4, 4], kernel_size: 3}}
  patch_size: 4
"""


def _listing(root: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_fsdp_composes_with_activation_checkpointing_clipping_and_ema(cli_run, tmp_path):
    """The tiny ConvLSTM trained by `stpdist train` on 2 ranks with activation
    checkpointing, gradient clipping (a norm every step exceeds) and an EMA of the weights:
    under FSDP the same weights and the same average as under DDP, to 1e-6."""
    extra = ["trainer.activation_checkpointing=true", "trainer.grad_clip_norm=0.05",
             "trainer.ema.decay=0.5"]  # fmt: skip
    folders = {}
    for strategy in ("ddp", "fsdp"):
        work = tmp_path / strategy
        work.mkdir()
        shutil.copy(cli_run / "cfg.yaml", work / "cfg.yaml")
        run_ranks(["--no-python", sys.executable, "-m", "stpdist", "train", "cfg.yaml",
                   f"trainer.strategy={strategy}", f"data.root={cli_run / 'data'}", *extra],
                  2, cwd=work, timeout=120)  # fmt: skip
        folders[strategy] = _step(work / "runs" / "x", 2)
    assert len(_shards(folders["fsdp"])) == 2 and not _shards(folders["ddp"])
    from safetensors.torch import load_file

    from stpdist.build import build_module
    from stpdist.config import load_config

    weights = {}
    for strategy, folder in folders.items():
        module = build_module(load_config(folder / "config.yaml"), (1, 32, 32))
        load_weights(folder, module)
        weights[strategy] = module.state_dict()
        weights[strategy + "-ema"] = load_file(str(folder / "ema.safetensors"))
    for kind in ("", "-ema"):
        ddp, fsdp = weights["ddp" + kind], weights["fsdp" + kind]
        assert sorted(ddp) == sorted(fsdp)
        for name, value in ddp.items():
            torch.testing.assert_close(fsdp[name], value, rtol=1e-6, atol=1e-6)
    start = build_module(load_config(folders["ddp"] / "config.yaml"), (1, 32, 32)).state_dict()
    assert any(not torch.equal(start[k], v) for k, v in weights["ddp"].items())
    assert any(not torch.equal(weights["ddp"][k], v) for k, v in weights["ddp-ema"].items())
