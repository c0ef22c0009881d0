"""End-to-end CLI runs on the debug config in a temp dir: train → resume → validate → predict,
and a 2-rank train with torchrun.

Single-process runs call the CLI's `main` in this process (`run_cli`): a process of its own
costs seconds of imports on 2 cores. The new user's walk-through trains in a process of its
own (`python -m stpdist`, the user's package found through PYTHONPATH); test_config checks
a CLI error's one line on a fresh interpreter's stderr; the multi-process tests start
`python -m stpdist` on every rank."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli, run_ranks
from PIL import Image

DEBUG = str(Path(__file__).parent.parent / "configs" / "debug.yaml")
checked = functools.partial(run_cli, check=True)  # in this process; a failure fails the test


def stpdist(*args: str, cwd: Path, nproc: int = 1, torchrun: bool = False):
    return run_ranks(
        ["-m", "stpdist", *args]
        if nproc == 1
        else ["--no-python", sys.executable, "-m", "stpdist", *args],
        nproc,
        cwd=cwd,
        torchrun=torchrun,
    )


def test_train_resume_validate_predict(tmp_path):
    out = checked("train", DEBUG, cwd=tmp_path).stdout
    assert "final validation MSE per pixel" in out
    run = tmp_path / "runs" / "debug"
    assert (run / "config.yaml").is_file()
    steps = [p.name for p in (run / "checkpoints").iterdir()]
    assert steps == ["step-00000016", "step-00000008"] or sorted(steps) == [
        "step-00000008",
        "step-00000016",
    ]

    # resume: two more epochs from the newest checkpoint
    out = checked("train", DEBUG, "trainer.max_epochs=4", "--resume", "auto", cwd=tmp_path).stdout
    assert "resumed from runs/debug/checkpoints/step-00000016" in out
    state = json.loads((run / "checkpoints" / "step-00000032" / "trainer_state.json").read_text())
    assert state["epoch"] == 4 and state["global_step"] == 32

    out = checked("validate", DEBUG, "--ckpt", "last", cwd=tmp_path).stdout
    assert "step-00000032" in out and "val/mse" in out
    header = next(line for line in out.splitlines() if line.startswith("metric"))
    assert header.split() == ["metric", "all", "t1", "t2", "t3", "t4"]
    assert any(line.startswith("val/ssim") for line in out.splitlines())
    assert "\nmetrics in stored values ÷ 255\n" in out  # the units, under the table
    assert (run / "lead_time_val.png").is_file()
    assert json.loads((run / "metrics_val.json").read_text())["val/num_samples"] == 8

    out = checked("predict", DEBUG, "--ckpt", "last", cwd=tmp_path).stdout
    pred_dir = run / "predictions" / "test"
    # made in a staging folder: "wrote" only once swapped in (the swap may still refuse)
    assert f"made 8 predictions for {Path('runs/debug/predictions/test')}\n" in out, out
    assert "wrote" not in out
    assert "metrics.json)\nmetrics in stored values ÷ 255\n" in out
    keys = []
    for file in sorted(pred_dir.glob("predictions-*.npz")):
        data = np.load(file)
        assert data["predictions"].shape[1:] == (4, 1, 32, 32)
        # data.normalize: scale → the model's units, said in each file
        assert (str(data["units"]), float(data["value_scale"])) == ("scaled", 255.0)
        assert "variables" not in data  # digits: no dataset variables to name
        keys += data["keys"].tolist()
    assert sorted(keys) == [f"test_{i:07d}" for i in range(8)]
    panel = Image.open(pred_dir / "samples" / "test_0000000.png")
    # 4 input frames, then 4 lead times in truth, prediction, persistence and error rows
    from stpdist.visualize import DPI, sample_figure

    z = np.zeros((4, 1, 32, 32))
    assert panel.size == tuple(round(v) for v in sample_figure(z, z, z).get_size_inches() * DPI)
    metrics = json.loads((pred_dir / "metrics.json").read_text())
    assert metrics["test/num_samples"] == 8 and "test/psnr/t01" in metrics  # split's name

    # the predictions are the checkpoint's predict_step on the test split
    import torch

    from stpdist.build import build_module, eval_stream
    from stpdist.checkpoint import load_weights
    from stpdist.config import load_config
    from stpdist.data.loading import LoaderContext

    cfg = load_config(DEBUG, [f"data.root={tmp_path / 'data' / 'debug-digits'}"])
    module = build_module(cfg).eval()
    load_weights(run / "checkpoints" / "step-00000032", module)
    inputs, targets, keys = next(iter(eval_stream(cfg, "test").iterate(LoaderContext())))
    with torch.no_grad():
        expected = module.predict_step(inputs, targets).numpy()
    got = np.load(pred_dir / "predictions-r000-000000.npz")
    assert got["keys"].tolist() == keys
    np.testing.assert_allclose(got["predictions"], expected, rtol=1e-5, atol=1e-6)


def test_predict_without_checkpoint_fails_clearly(tmp_path):
    proc = run_cli("predict", DEBUG, cwd=tmp_path)
    assert proc.returncode == 2
    assert "no checkpoint in runs/debug/checkpoints" in proc.stderr


def test_bench_trainer_prints_ratio(tmp_path):
    proc = checked("bench", "trainer", "--repeats", "1", "--steps", "10", cwd=tmp_path)
    out = proc.stdout
    assert "Trainer / raw" in out and "steps/s" in out
    assert "medians of 1 interleaved runs each" in out and "3-convolution net" in out
    assert "process(es) on" not in out + proc.stderr  # the Trainer's banner: not bench output


def test_bench_model_prints_figures(tmp_path):
    out = checked(
        "bench",
        "model",
        "predrnn",
        "--shape",
        "2x3x1x16x16",
        "--output-frames",
        "2",
        "--backbone",
        '{"hidden_channels": [4, 4], "kernel_size": 3}',
        "--model-steps",
        "1",
        cwd=tmp_path,
    ).stdout
    assert "predrnn" in out and "GMACs" in out and "params" in out
    assert "threads: torch" in out and "OMP_WAIT_POLICY=" in out


def test_mistyped_root_with_synthesis_configured_refuses_instead_of_faking_data(tmp_path):
    proc = run_cli("train", DEBUG, "data.root=data/debug-digts", cwd=tmp_path)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "data.root data/debug-digts holds no dataset" in lines[0]
    assert "--synthesize" in lines[0] and "stpdist shard" in lines[0]
    assert not (tmp_path / "data" / "debug-digts").exists()  # nothing generated


def test_bad_backbone_argument_exits_2_naming_the_valid_ones_before_data_work(tmp_path):
    proc = run_cli("train", DEBUG, "model.backbone.hiddenchannels=[8]", cwd=tmp_path)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "hidden_channels, kernel_size, forget_bias" in lines[0]
    assert not (tmp_path / "data").exists()  # refused before generating any data


USER_PACKAGE = '''
import torch
from torch import nn


class TinyNet(nn.Module):
    """A user's backbone: no Args dataclass, keyword arguments checked by signature."""

    def __init__(self, spec, hidden=4):
        super().__init__()
        self.t_in, self.t_out = spec.num_input_frames, spec.num_output_frames
        self.net = nn.Sequential(
            nn.Conv2d(spec.channels * self.t_in, hidden, 3, padding=1),
            nn.Tanh(),
            nn.Conv2d(hidden, spec.channels * self.t_out, 3, padding=1),
        )

    def forward(self, frames, num_output_frames, **_):
        b, t, c, h, w = frames.shape
        out = self.net(frames.reshape(b, t * c, h, w))
        return torch.sigmoid(out).reshape(b, num_output_frames, c, h, w)
'''


def test_new_user_walk_through_arrays_to_predictions_with_own_model(tmp_path, monkeypatch):
    """A folder of the user's arrays → shards cut into three splits → their own backbone
    named in YAML → train → validate → predict, on files this test makes."""
    rng = np.random.default_rng(0)
    raw = tmp_path / "raw"
    raw.mkdir()
    for i in range(12):
        np.save(raw / f"seq{i:02d}.npy", rng.random((8, 16, 16), dtype=np.float32))
    (tmp_path / "mypkg").mkdir()
    (tmp_path / "mypkg" / "__init__.py").write_text("")
    (tmp_path / "mypkg" / "nets.py").write_text(USER_PACKAGE)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))

    out = checked(
        "shard", "arrays", "raw", "--out", "ds", "--splits", "train=0.5,val=0.25,test=0.25",
        "--seed", "1", "--workers", "1", cwd=tmp_path,
    ).stdout  # fmt: skip
    assert "ds/train: 6 samples" in out and "ds/val: 3 samples" in out and "ds/test: 3" in out
    from stpdist.data.format import iter_shard, read_index

    keys = {}
    for split in ("train", "val", "test"):
        index = read_index(tmp_path / "ds" / split)
        keys[split] = {
            k for s in index.shards for k, _ in iter_shard(tmp_path / "ds" / split / s.name)
        }
    assert sum(map(len, keys.values())) == 12
    assert len(set().union(*keys.values())) == 12  # no sequence in two splits

    (tmp_path / "mine.yaml").write_text(
        "trainer: {output_dir: runs/mine, max_epochs: 2, progress_bar: false}\n"
        "data: {root: ds, batch_size: 2, num_input_frames: 4, num_output_frames: 4}\n"
        "model: {name: 'mypkg.nets:TinyNet', backbone: {hidden: 6}}\n"
    )
    out = stpdist("train", "mine.yaml", cwd=tmp_path).stdout  # a process of its own
    assert "train: 6 sequences" in out and "frames 0–7 are used" not in out  # all 8 used
    assert "final validation MSE per pixel" in out
    out = checked("validate", "mine.yaml", cwd=tmp_path).stdout
    assert "val/mse" in out
    checked("predict", "mine.yaml", cwd=tmp_path)
    metrics = json.loads((tmp_path / "runs/mine/predictions/test/metrics.json").read_text())
    assert metrics["test/num_samples"] == 3

    bad = tmp_path / "bad.yaml"
    bad.write_text((tmp_path / "mine.yaml").read_text().replace("hidden: 6", "hiden: 6"))
    proc = run_cli("train", str(bad), cwd=tmp_path)
    assert proc.returncode == 2 and "TinyNet takes: hidden" in proc.stderr

    # a forward whose keywords are not the Forecaster's: refused before any work (it failed
    # at the first step, data generated and all)
    nets = tmp_path / "mypkg" / "nets.py"
    nets.write_text(
        USER_PACKAGE.replace("def forward(self, frames, num_output_frames, **_):",
                             "def forward(self, frames, num_output_frames, *, targets=None):")
    )  # fmt: skip
    proc = run_cli("train", "mine.yaml", "trainer.output_dir=runs/other", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert (
        "TinyNet.forward(self, frames, num_output_frames, *, targets=None) cannot be called as "
        "the "
        "Forecaster calls it: forward(self, frames_BTCHW, num_output_frames, *, "
        "targets_BTCHW=None, teacher_mask_BT=None)"
    ) in proc.stderr


def test_own_enhanced_module_by_import_path(tmp_path, monkeypatch):
    from stpdist.build import build_module
    from stpdist.config import load_config

    (tmp_path / "mytask.py").write_text(
        "import torch\nfrom stpdist import EnhancedModule\n\n\n"
        "class Mine(EnhancedModule):\n"
        "    def __init__(self, width: int = 3):\n"
        "        super().__init__()\n"
        "        self.layer = torch.nn.Linear(width, width)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = load_config(None, ["model.name=mytask:Mine", "model.backbone.width=5"])
    module = build_module(cfg)
    assert type(module).__name__ == "Mine" and module.layer.in_features == 5
    from stpdist.config import ConfigError

    with pytest.raises(ConfigError, match="Mine takes: width"):
        load_config(None, ["model.name=mytask:Mine", "model.backbone.depth=5"])
    # a value of another type than the annotation: it failed inside torch's Linear
    with pytest.raises(ConfigError, match="width='three' is a str; Mine takes width: int"):
        load_config(None, ["model.name=mytask:Mine", "model.backbone.width=three"])


def test_command_line_page_block_lists_every_subcommand_of_help():
    """The hand-written synopsis on the documentation's command-line page (the rest of that
    page is generated from the parser)."""
    import re

    from stpdist.cli import parser

    page = Path(__file__).parent.parent / "docs" / "pages" / "reference" / "cli.md"
    block = page.read_text().split("## Command line", 1)[1].split("```bash", 1)[1]
    block = block.split("```", 1)[0]
    documented = set(re.findall(r"^stpdist (\w+)", block, re.M))
    sub = next(a for a in parser()._actions if a.dest == "command")
    assert documented == set(sub.choices), (documented, set(sub.choices))


def test_every_option_of_every_command_says_what_it_does():
    """`inspect --help` (and five other commands) listed a bare `--debug`."""
    import argparse

    from stpdist.cli import parser

    def commands(p):
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    yield name, sub
                    yield from ((f"{name} {n}", s) for n, s in commands(sub))

    bare = [
        f"{name} {action.option_strings[0]}"
        for name, sub in commands(parser())
        for action in sub._actions
        if action.option_strings and not action.help and action.dest != "help"
    ]
    assert bare == []


def stop_at_step(monkeypatch, step: int, where: str = "") -> None:
    """SIGTERM this process (what SLURM or torchrun sends before a preemption) once the
    training of a run folder whose path holds `where` has logged `step`: the Trainer
    checkpoints after that step and raises Preempted."""
    import os
    import signal

    from stpdist import tracking

    log = tracking.Tracker.log

    def stopping_log(self, values, *, step: int, epoch: int) -> None:
        log(self, values, step=step, epoch=epoch)
        if step == at and "train/loss" in values and where in str(self.output_dir):
            os.kill(os.getpid(), signal.SIGTERM)

    at = step
    monkeypatch.setattr(tracking.Tracker, "log", stopping_log)


def _stop_line(stderr: str) -> str:
    (line,) = [x for x in stderr.splitlines() if "stopped on a signal" in x]
    return line


def test_stop_advice_keeps_the_runs_flags_says_how_to_relaunch_once(tmp_path, monkeypatch):
    """After a SIGTERM, the resume advice keeps --keep-global-batch and --synthesize (a
    resume without them would change the global batch or find no data); under a launcher
    (torchrun) it says to launch the same way, not a bare single-process command; only
    rank 0 says it (RANK: what the launcher gives each rank)."""
    flags = ["logging.num_samples=0", "--keep-global-batch", "--synthesize"]
    stop_at_step(monkeypatch, 4)
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "none")  # torchrun sets it on every rank
    proc = run_cli("train", DEBUG, *flags, cwd=tmp_path)
    assert proc.returncode == 75, proc.stderr[-3000:]
    line = _stop_line(proc.stderr)
    step = int(line.split("after step ")[1].split(";")[0])  # one process: the next step
    saved = f"runs/debug/checkpoints/step-{step:08d}"
    command = f"stpdist train {DEBUG} {' '.join(flags)} --resume auto"
    assert line == (
        f"stpdist: stopped on a signal after step {step}; saved checkpoint {saved}; resume "
        f"with the same torchrun launch as before (same options) running: {command}"
    )

    # what the advice says, on a rank other than 0: stopped again, silently
    stop_at_step(monkeypatch, step - step % 2 + 2)  # the next logged step (every 2)
    monkeypatch.setenv("RANK", "1")
    proc = run_cli(*command.split()[1:], cwd=tmp_path)
    assert proc.returncode == 75, proc.stderr[-3000:]
    assert f"resumed from {saved}" in proc.stdout
    assert "stopped on" not in proc.stderr


def test_final_line_compares_with_persistence_in_the_data_units_under_any_normalize(tmp_path):
    """The summary after training divides `val/mse` by `val/persistence_mse`, both in the
    data's units: with `standardize`, `val/copy_last_mse` is in the normalised space and
    gave ratios off by orders of magnitude."""
    out = checked(
        "train",
        DEBUG,
        "data.normalize=standardize",
        "trainer.max_epochs=1",
        "logging.num_samples=0",
        cwd=tmp_path,
    ).stdout
    rows = [json.loads(line) for line in (tmp_path / "runs/debug/metrics.jsonl").open()]
    final = [r for r in rows if "val/mse" in r][-1]
    mse, persistence = final["val/mse"], final["val/persistence_mse"]
    assert abs(final["val/copy_last_mse"] / persistence - 1) > 0.5  # the spaces differ here
    line = next(s for s in out.splitlines() if s.startswith("final validation MSE"))
    assert line == (
        f"final validation MSE per pixel {mse:.5g} vs copy-last-input-frame baseline "
        f"{persistence:.5g} ({mse / persistence:.2f}×), of stored values ÷ 255"
    )


def test_inspect_picture_labels_and_ranges_every_channel(tmp_path):
    """Stored frames of 2 channels in physical units (z ~5e4, t ~280): a row per channel,
    each labelled "stored frames cN" and numbered 1…T, each drawn on its own range (the
    t row is not flat), with a colour bar each."""
    from stpdist.cli import stored_frames_figure
    from stpdist.visualize import DPI

    rng = np.random.default_rng(0)
    centre = np.array([5e4, 280.0], np.float32)[None, :, None, None]
    spread = np.array([1e3, 5.0], np.float32)[None, :, None, None]
    frames = centre + spread * rng.uniform(-1, 1, (5, 2, 8, 16)).astype(np.float32)
    fig = stored_frames_figure(frames, "w2000")
    rows = [ax for ax in fig.axes if not hasattr(ax, "_colorbar")]
    bars = [ax.get_ylabel() for ax in fig.axes if hasattr(ax, "_colorbar")]
    assert [ax.get_ylabel().replace("\n", " ") for ax in rows] == [
        "stored frames c0",
        "stored frames c1",
    ]
    assert bars == ["value c0", "value c1"]
    for ax in rows:
        assert [t.get_text() for t in ax.get_xticklabels()] == ["1", "2", "3", "4", "5"]
    fig.savefig(tmp_path / "w.png", dpi=DPI)
    png = np.asarray(Image.open(tmp_path / "w.png").convert("RGB"))
    for c, ax in enumerate(rows):
        np.testing.assert_allclose(
            ax.get_images()[0].get_clim(), (frames[:, c].min(), frames[:, c].max()), rtol=1e-6
        )
        box = ax.get_window_extent()
        cells = png[png.shape[0] - int(box.y1) + 1 : png.shape[0] - int(box.y0) - 1,
                    int(box.x0) + 1 : int(box.x1) - 1]  # fmt: skip
        assert len(np.unique(cells.reshape(-1, 3), axis=0)) >= 30, f"channel {c} drawn flat"


def test_a_resume_refuses_settings_it_would_not_honour(tmp_path):
    """The restored optimizer keeps its learning rate and weight decay, the seed fixed the
    data order, and the rest of an epoch cannot be dealt in another batch size: such a
    change on resume trained on the old values while config.yaml recorded the new ones."""
    checked(
        "train", DEBUG, "trainer.max_steps=3", "logging.num_samples=0", cwd=tmp_path
    )  # stops mid-epoch
    config = (tmp_path / "runs/debug/config.yaml").read_text()
    # the training split changed (here: moved, with 8 samples less): the rest of the epoch
    # was dealt over the new shards from the old batch count, samples repeated and missed
    checked("synth", "moving-digits", "--out", "data/fewer", "--train", "24", "--val", "8",
            "--test", "8", "--frames", "8", "--size", "32", cwd=tmp_path)  # fmt: skip
    shards = "data.shards 1 shard of 32 samples (digest "
    for overrides, message in [
        (
            ["model.optimizer.weight_decay=0.1"],
            "model.optimizer.weight_decay 0.0 (the checkpoint's) → 0.1",
        ),  # fmt: skip
        (["trainer.seed=5"], "trainer.seed 0 (the checkpoint's) → 5"),
        (["data.batch_size=2"], "data.batch_size 4 (the checkpoint's) → 2"),
        (["data.root=data/fewer"], shards),
        # what val/loss and the monitor measure (a review: accepted, and the numbers before
        # and after the resume were ranked together)
        (["model.loss=l1"], "model.loss mse (the checkpoint's) → l1"),
        (["data.normalize=standardize"], "data.normalize scale (the checkpoint's) → standardize"),
        # a test-suite review: these four passed the suite with their check removed
        (["model.optimizer.name=adamw"], "model.optimizer.name adam (the checkpoint's) → adamw"),
        (["model.loss_frames=all"], "model.loss_frames outputs (the checkpoint's) → all"),
        (["data.num_output_frames=3"], "data.num_output_frames 4 (the checkpoint's) → 3"),
        (["data.shuffle_buffer=8"], "data.shuffle_buffer 16 (the checkpoint's) → 8"),
    ]:
        done = run_cli("train", DEBUG, *overrides, "--resume", "auto", cwd=tmp_path)
        assert done.returncode == 2, done.stderr
        assert message in done.stderr
        assert (tmp_path / "runs/debug/config.yaml").read_text() == config  # not rewritten
    done = checked(
        "train",
        DEBUG,
        "trainer.max_steps=3",
        "logging.num_samples=0",
        "--resume",
        "auto",
        cwd=tmp_path,
    )
    assert "resumed from runs/debug/checkpoints/step-00000003" in done.stdout


def test_a_resume_refuses_another_length_of_a_onecycle_schedule(tmp_path):
    """OneCycleLR's length is part of its restored state: `total_steps` 100 → 16 on resume
    went on rising toward the old peak while config.yaml recorded 16."""
    schedule = ["model.schedule.name=onecycle", "logging.num_samples=0"]
    checked("train", DEBUG, *schedule, "model.schedule.total_steps=100", "trainer.max_steps=3",
            cwd=tmp_path)  # fmt: skip
    done = run_cli("train", DEBUG, *schedule, "model.schedule.total_steps=16", "--resume",
                   "auto", cwd=tmp_path)  # fmt: skip
    assert done.returncode == 2
    assert "model.schedule.total_steps 100 (the checkpoint's) → 16" in done.stderr
    assert "its length" in done.stderr
    # a cosine schedule's length comes from the config on resume: another one is honoured
    cosine = ["model.schedule.name=cosine", "logging.num_samples=0",
              "trainer.output_dir=runs/cosine"]  # fmt: skip
    checked("train", DEBUG, *cosine, "model.schedule.total_steps=16", "trainer.max_steps=3",
            cwd=tmp_path)  # fmt: skip
    checked("train", DEBUG, *cosine, "model.schedule.total_steps=40", "trainer.max_steps=4",
            "--resume", "auto", cwd=tmp_path)  # fmt: skip


def test_a_resume_from_an_older_checkpoint_sets_the_newer_ones_aside(tmp_path):
    """Resumed from step 16 of a run that reached step 40: its steps 24–40 stayed `step-*`
    folders, so retention kept the abandoned step 40 as the newest and deleted the new
    run's step 24, and a later `--resume auto` went on from the abandoned step 40. They
    are now renamed superseded-step-… (kept, never used) at the resumed run's first save;
    a resume refused before it (here: Ctrl-C's stand-in, a bad override) renames nothing."""
    quiet = ["logging.num_samples=0", "trainer.checkpoint.keep_best=0"]
    checked("train", DEBUG, *quiet, "trainer.max_epochs=5", "trainer.checkpoint.keep_last=5",
            cwd=tmp_path)  # fmt: skip
    root = tmp_path / "runs/debug/checkpoints"
    refused = run_cli("train", DEBUG, *quiet, "trainer.max_epochs=4", "trainer.seed=5",
                      "--resume", str(root / "step-00000016"), cwd=tmp_path)  # fmt: skip
    assert refused.returncode == 2 and "trainer.seed 0 (the checkpoint's) → 5" in refused.stderr
    assert not list(root.glob("superseded-*"))
    resumed = checked("train", DEBUG, *quiet, "trainer.max_epochs=4", "--resume",
                      str(root / "step-00000016"), cwd=tmp_path)  # fmt: skip
    assert (
        "resumed from step 16: the newer checkpoint(s) in runs/debug/checkpoints are another "
        "trajectory's, renamed (kept, not used): step-00000032 → superseded-step-00000032, "
        "step-00000040 → superseded-step-00000040"
    ) in resumed.stderr  # at its first save, step 24 (the step saved is the save's to judge:
    # the same weights here, the same seed and data, so the old copy went)
    assert sorted(p.name for p in root.iterdir() if not p.name.startswith(".")) == [
        "step-00000024", "step-00000032",  # this run's two newest (keep_last 2)
        "superseded-step-00000032", "superseded-step-00000040",
    ]  # fmt: skip
    again = checked("train", DEBUG, *quiet, "trainer.max_epochs=5", "--resume", "auto",
                    cwd=tmp_path)  # fmt: skip
    assert "resumed from runs/debug/checkpoints/step-00000032" in again.stdout


def test_a_mistyped_fsdp_wrap_is_refused_on_one_process_too(tmp_path):
    """It trained on one process without a word and failed on two, as a ValueError (exit 1,
    once per rank)."""
    done = run_cli("train", DEBUG, "trainer.strategy=fsdp", "trainer.fsdp_wrap=[Nope]",
                   cwd=tmp_path)  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        "stpdist: error: trainer.fsdp_wrap ['Nope'] names no submodule of Forecaster; its "
        "classes: Conv2d, ConvLSTM, ConvLSTMCell, Forecaster, Identity, ModuleList, Normalizer"
    )


def test_a_bad_sample_met_in_a_data_worker_is_one_line_naming_shard_and_member(tmp_path):
    """torch re-raises a worker's error with the worker's traceback in its message: the CLI
    prints the error's own line, as without workers. And the process ends: the workers,
    which ignore SIGTERM, kept multiprocessing's exit hook waiting on them for ever."""
    from test_stream import corrupt_member

    checked("synth", "moving-digits", "--out", "data/debug-digits", "--train", "32", "--val", "8",
            "--test", "8", "--frames", "8", "--size", "32", cwd=tmp_path)  # fmt: skip
    shard = sorted((tmp_path / "data/debug-digits/train").glob("*.tar"))[0]
    member = corrupt_member(shard, 1)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "stpdist", "train", DEBUG, "trainer.num_workers=2"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.startswith("stpdist:")]
    assert lines == [
        f"stpdist: error: {shard.relative_to(tmp_path)}: member {member}: unreadable frames.npy "
        "(not a NumPy .npy array (its first bytes are not the .npy header): corrupt, or another "
        "kind of file)"
    ]
    assert "Traceback" not in done.stderr


def test_settings_read_from_the_environment_are_compared_as_their_values(tmp_path, monkeypatch):
    """config.yaml keeps `${oc.env:…}` as text; the state records the resolved values: the
    same value written otherwise resumes, another value behind the same text is refused."""
    monkeypatch.setenv("STPDIST_TEST_WD", "0.002")
    checked("train", DEBUG, "trainer.max_steps=3", "logging.num_samples=0", "model.optimizer.weight_decay=${oc.env:STPDIST_TEST_WD}",
            cwd=tmp_path)  # fmt: skip
    monkeypatch.setenv("STPDIST_TEST_WD", "0.01")
    done = run_cli("train", DEBUG, "trainer.max_steps=4", "model.optimizer.weight_decay=${oc.env:STPDIST_TEST_WD}",
                   "--resume", "auto", cwd=tmp_path)  # fmt: skip
    assert done.returncode == 2 and (
        "model.optimizer.weight_decay 0.002 (the checkpoint's) → 0.01" in done.stderr
    )
    # the same value written out: accepted (nothing left to train, so it is quick)
    done = checked("train", DEBUG, "trainer.max_steps=3", "model.optimizer.weight_decay=0.002",
                   "--resume", "auto", cwd=tmp_path)  # fmt: skip
    assert "resumed from runs/debug/checkpoints/step-00000003" in done.stdout
