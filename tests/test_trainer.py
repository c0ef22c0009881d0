"""Single-process trainer behaviour: precision, determinism, checkpoints, errors, seed-style modules."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import TinyModule, TinySequences, loader
from safetensors.torch import load_file
from torch import nn
from torch.utils.data import DataLoader

import stpdist.checkpoint as checkpoint_module
from stpdist import EnhancedModule, Trainer
from stpdist.config import CheckpointConfig
from stpdist.errors import InputError


def make_trainer(tmp_path, **kwargs) -> Trainer:
    kwargs.setdefault("max_epochs", 2)
    return Trainer(output_dir=tmp_path, progress_bar=False, log_every_n_steps=1, **kwargs)


def losses(out) -> list[float]:
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return [x["train/loss"] for x in lines if "train/loss" in x]


def test_bf16_on_cpu_runs_and_learns(tmp_path):
    torch.manual_seed(0)
    module = TinyModule(lr=0.01, scheduler=False)
    trainer = make_trainer(tmp_path, mixed_precision="bf16", max_epochs=6)
    assert trainer.accelerator.mixed_precision == "bf16"
    before = trainer.validate(module, loader(20, 5, False))["val/loss"]
    trainer.fit(module, loader(40, 8), loader(20, 5, False))
    after = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])["val/loss"]
    assert after < 0.5 * before


def test_fp16_on_cpu_is_refused():
    with pytest.raises(ValueError, match="fp16.*CUDA"):
        Trainer(mixed_precision="fp16")


def test_same_seed_gives_bitwise_identical_weights(tmp_path):
    weights = []
    for run in ("one", "two"):
        torch.manual_seed(0)
        module = TinyModule(dropout=0.3)
        make_trainer(tmp_path / run, seed=7).fit(module, loader(40, 4))
        weights.append({k: v.clone() for k, v in module.state_dict().items()})
    for key in weights[0]:
        assert torch.equal(weights[0][key], weights[1][key]), key


def test_lr_scheduler_steps_once_per_optimizer_step(tmp_path):
    torch.manual_seed(0)
    module = TinyModule()  # StepLR(step_size=3, gamma=0.5), lr 0.05
    make_trainer(tmp_path, max_epochs=None, max_steps=7, gradient_accumulation_steps=2).fit(
        module, loader(40, 4)
    )
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    lrs = [x["train/lr"] for x in lines if "train/lr" in x]
    # lr logged after step k's scheduler step: 0.05 * 0.5 ** (k // 3)
    assert lrs == pytest.approx([0.05 * 0.5 ** (k // 3) for k in range(1, 8)])


def test_crash_during_checkpoint_write_keeps_previous(tmp_path, monkeypatch):
    torch.manual_seed(0)
    policy = CheckpointConfig(every_n_steps=5, every_epoch=False, keep_last=5)
    trainer = make_trainer(tmp_path, max_epochs=None, max_steps=15, checkpoint=policy)
    real_save, calls = checkpoint_module.save_file, []

    def crashing_save(tensors, filename, *args, **kwargs):
        calls.append(filename)
        if len(calls) == 2:  # second checkpoint: half a file, then the process "dies"
            open(filename, "wb").write(b"partial")
            raise OSError("disk went away")
        return real_save(tensors, filename, *args, **kwargs)

    monkeypatch.setattr(checkpoint_module, "save_file", crashing_save)
    # a failed write is one line naming the folder and the cause; the half-written folder
    # is removed (a process killed mid-write leaves it: tests/test_faults.py)
    with pytest.raises(
        checkpoint_module.CheckpointError, match=r"\.tmp-step-00000010 .*disk went away"
    ):
        trainer.fit(TinyModule(), loader(40, 4))
    monkeypatch.setattr(checkpoint_module, "save_file", real_save)
    ckpts = tmp_path / "checkpoints"
    assert not (ckpts / ".tmp-step-00000010").exists()
    assert trainer.checkpoints.latest() == ckpts / "step-00000005"

    module = TinyModule()
    resumed = make_trainer(tmp_path, max_epochs=None, max_steps=15, checkpoint=policy)
    state = resumed.fit(module, loader(40, 4), resume="auto")
    assert state.global_step == 15
    assert [p.name for p in resumed.checkpoints.complete()] == [
        "step-00000005",
        "step-00000010",
        "step-00000015",
    ]
    assert not (ckpts / ".tmp-step-00000010").exists()


def test_retention_keeps_last_k_and_best_k(tmp_path):
    torch.manual_seed(0)
    policy = CheckpointConfig(every_epoch=True, keep_last=2, keep_best=1, monitor="val/loss")
    trainer = make_trainer(tmp_path, max_epochs=5, checkpoint=policy)
    trainer.fit(TinyModule(lr=0.01, scheduler=False), loader(40, 8), loader(12, 4, False))
    names = [p.name for p in trainer.checkpoints.complete()]
    scores = {}
    for line in (tmp_path / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if "val/loss" in record:
            scores[f"step-{record['step']:08d}"] = record["val/loss"]
    best = min(scores, key=scores.get)
    assert set(names) == {best, "step-00000020", "step-00000025"}
    assert (tmp_path / "checkpoints" / names[-1] / "optimizer.pt").is_file()


def test_retention_by_a_score_to_maximise_keeps_its_highest(tmp_path):
    """`mode: max` (PSNR, SSIM, CSI): the best checkpoint is the highest score's (a
    test-suite review: ranking as `min` passed the suite, and `keep_best` on PSNR would
    have deleted the best checkpoint and kept the worst)."""

    class Scored(TinyModule):
        scores = [0.2, 0.9, 0.1, 0.5]

        def validation_step(self, inputs, targets):
            loss = nn.functional.mse_loss(self(inputs), targets)
            return {"loss": loss, "score": torch.tensor(self.scores.pop(0))}

    policy = CheckpointConfig(every_epoch=True, keep_last=1, keep_best=1, monitor="val/score",
                              mode="max")  # fmt: skip
    trainer = make_trainer(tmp_path, max_epochs=4, checkpoint=policy)
    trainer.fit(Scored(lr=0.01, scheduler=False), loader(16, 8), loader(4, 4, False))
    names = [p.name for p in trainer.checkpoints.complete()]
    assert names == ["step-00000004", "step-00000008"]  # 0.9's, and the last
    assert trainer.checkpoints.best() == tmp_path / "checkpoints" / "step-00000004"


def test_nan_loss_stops_with_step_and_keeps_last_good_checkpoint(tmp_path):
    class Explodes(TinyModule):
        def training_step(self, inputs, targets):
            loss = super().training_step(inputs, targets)
            return loss * float("nan") if self.global_step >= 7 else loss

    torch.manual_seed(0)
    policy = CheckpointConfig(every_n_steps=5, every_epoch=False)
    trainer = make_trainer(tmp_path, max_epochs=None, max_steps=20, checkpoint=policy)
    with pytest.raises(FloatingPointError, match="step 8"):
        trainer.fit(Explodes(), loader(40, 4))
    assert [p.name for p in trainer.checkpoints.complete()] == ["step-00000005"]
    weights = load_file(str(tmp_path / "checkpoints" / "step-00000005" / "model.safetensors"))
    assert all(torch.isfinite(w).all() for w in weights.values())


def test_dict_without_loss_is_an_error(tmp_path):
    class NoLoss(TinyModule):
        def training_step(self, inputs, targets):
            return {"mse": super().training_step(inputs, targets)}

    with pytest.raises(KeyError, match="without 'loss'"):
        make_trainer(tmp_path).fit(NoLoss(), loader(40, 4))


def test_resume_path_must_be_complete(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a complete checkpoint"):
        make_trainer(tmp_path).fit(TinyModule(), loader(40, 4), resume=tmp_path / "nope")


def test_predict_refuses_missing_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint weights"):
        make_trainer(tmp_path).predict(TinyModule(), loader(8, 4, False), ckpt=tmp_path / "x")


class SeedStyleModel(EnhancedModule):
    """Written as the seed project's users write modules: (inputs, labels), tensors out."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 3, padding=1)
        self.criterion = nn.MSELoss()

    def forward(self, inputs):
        b, t, c, h, w = inputs.shape
        return self.conv(inputs.reshape(b, t * c, h, w)).reshape(b, 2, 1, h, w)

    def configure_optimizer(self):
        return torch.optim.Adam(self.parameters(), lr=1e-2)

    def configure_lr_scheduler(self, optimizer):
        return torch.optim.lr_scheduler.ExponentialLR(optimizer, 0.99)

    def training_step(self, inputs, labels):
        return self.criterion(self(inputs), labels)

    def validation_step(self, inputs, labels):
        return self.criterion(self(inputs), labels)

    def predict_step(self, inputs, labels):
        return self(inputs)


def test_seed_style_module_trains_validates_predicts(tmp_path):
    torch.manual_seed(0)
    module = SeedStyleModel()
    train = DataLoader(TinySequences(32), batch_size=4, shuffle=True)
    val = DataLoader(TinySequences(10, seed=5), batch_size=1)
    trainer = make_trainer(tmp_path, max_epochs=3)
    before = trainer.validate(module, val)["val/loss"]
    trainer.fit(module, train, val)
    ckpt = trainer.checkpoints.latest()
    after = trainer.validate(SeedStyleModel(), val, ckpt=ckpt)["val/loss"]
    assert after < before
    results = trainer.predict(SeedStyleModel(), val, ckpt=ckpt, out=tmp_path / "pred")
    assert results["test/loss"] == pytest.approx(after, rel=1e-6)  # one pass, metrics too
    files = sorted((tmp_path / "pred").glob("*.npz"))
    assert len(files) == 10
    first = np.load(files[0])
    assert first["keys"].tolist() == ["00000000"] and first["predictions"].shape == (1, 2, 1, 4, 4)
    with torch.no_grad():
        expected = module(TinySequences(10, seed=5).inputs[:1])
    np.testing.assert_allclose(first["predictions"], expected.numpy(), rtol=1e-6)


def test_fresh_run_refuses_to_mix_with_earlier_checkpoints(tmp_path):
    torch.manual_seed(0)
    make_trainer(tmp_path, max_epochs=1).fit(TinyModule(), loader(40, 8))
    with pytest.raises(FileExistsError, match="checkpoints of an earlier run"):
        make_trainer(tmp_path, max_epochs=1).fit(TinyModule(), loader(40, 8))


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_mixed_precision_on_cuda_learns(tmp_path, precision):
    torch.manual_seed(0)
    module = TinyModule(lr=0.01, scheduler=False)
    trainer = make_trainer(tmp_path, mixed_precision=precision, max_epochs=6)
    assert trainer.accelerator.device.type == "cuda"
    assert (trainer.accelerator.scaler is not None) == (precision == "fp16")
    before = trainer.validate(module, loader(20, 5, False))["val/loss"]
    state = trainer.fit(module, loader(40, 8), loader(20, 5, False))
    assert state.metrics["val/loss"] < 0.5 * before


def test_tensorboard_tracker_gets_scalars_and_sample_images(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from stpdist.config import LoggingConfig

    logging = LoggingConfig(trackers=["tensorboard"], num_samples=2)
    trainer = Trainer(
        output_dir=tmp_path, progress_bar=False, log_every_n_steps=1, max_epochs=1, logging=logging
    )
    trainer.fit(TinyModule(), loader(16, 4), loader(8, 4, False))
    trainer.close()
    run = tmp_path / "stpdist"  # <output_dir>/<project>
    assert list(run.glob("events.out.tfevents*")), "no tensorboard event file"
    acc = EventAccumulator(str(run), size_guidance={"images": 0})
    acc.Reload()
    tags = acc.Tags()
    assert {"train/loss", "val/loss"} <= set(tags["scalars"])
    assert {"samples/00000000", "samples/00000001"} <= set(tags["images"])
    assert len(acc.Scalars("train/loss")) == 4  # 16 samples / batch 4, logged every step


def test_second_run_on_a_locked_output_dir_is_refused_naming_the_holder(tmp_path):
    """Two `--resume auto` runs on one folder (a duplicated SLURM job): the second, on 2
    ranks, stops at once on both, the main one naming the first run, before any rank reads
    a checkpoint the first may be retiring; the first's checkpoints are untouched."""
    import os
    import subprocess
    import sys
    import time

    from conftest import launcher, unserved

    script = str(Path(__file__).parent / "dist_train.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = ["--out", str(tmp_path), "--batch", "4", "--steps", "12", "--ckpt-every", "2"]
    first = subprocess.Popen(
        [sys.executable, script, *args, "--hang-at", "6"],
        env=unserved(env),  # its pid is the holder's
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.time() + 120
        while not (tmp_path / "checkpoints" / "step-00000004").is_dir():
            assert first.poll() is None, first.stderr.read()[-2000:]
            assert time.time() < deadline
            time.sleep(0.2)
        second = subprocess.run(
            [*launcher(2), script, *args, "--resume", "auto"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert second.returncode != 0
        assert f"pid {first.pid}" in second.stderr and "in use by another run" in second.stderr
        assert "in use by another run (the main process names it)" in second.stderr  # rank 1
        assert "trainer_state.json" not in second.stderr  # no rank read the first's files
        assert first.poll() is None  # the first run is still going
    finally:
        first.kill()
        first.wait(timeout=30)
    # a lock the main process cannot judge (another host's): the other ranks do not say
    # "in use" (their exit status would say "again later", 75; a diff review)
    (tmp_path / ".stpdist.lock").write_text('{"host": "elsewhere", "pid": 123, "since": 1}')
    third = subprocess.run([*launcher(2), script, *args, "--resume", "auto"], env=env,
                           capture_output=True, text=True, timeout=120)  # fmt: skip
    assert "may be in use by a run on another host" in third.stderr, third.stderr[-3000:]
    assert "could not take the run lock (it says why)" in third.stderr
    assert "the main process names it" not in third.stderr


def test_epoch_checkpoint_is_written_before_a_failing_validation(tmp_path):
    """A bad validation shard must not throw away the epoch's training."""

    class BadValidation(TinyModule):
        def validation_step(self, inputs, targets):
            raise RuntimeError("unreadable validation shard")

    trainer = make_trainer(tmp_path, max_epochs=1)
    with pytest.raises(RuntimeError, match="unreadable validation shard"):
        trainer.fit(BadValidation(), loader(16, 4), loader(8, 4, False))
    assert trainer.checkpoints.latest() == tmp_path / "checkpoints" / "step-00000004"


def test_unknown_monitor_is_an_error_at_the_first_validation_not_silent(tmp_path):
    policy = CheckpointConfig(monitor="val/msee")
    trainer = make_trainer(tmp_path, max_epochs=2, checkpoint=policy)
    with pytest.raises(ValueError, match=r"'val/msee' is not among .*val/loss, val/mae"):
        trainer.fit(TinyModule(), loader(16, 4), loader(8, 4, False))
    assert trainer.checkpoints.latest() is not None  # the epoch's checkpoint came first


class NeverSkips(TinyModule):
    skips_batches = False


def test_steady_state_steps_read_nothing_on_the_host(tmp_path, monkeypatch):
    """A module that never skips: between check points (log steps every 4, checkpoint
    and validation at 6, the epoch's end at 10) a step makes no host read of a tensor;
    the check points do (the counter works), and the losses logged equal the per-step
    agreement path's."""
    from helpers import HostReads

    runs = {}
    for cls in (TinyModule, NeverSkips):
        torch.manual_seed(0)
        module = cls(lr=0.01)
        reads = HostReads(monkeypatch) if cls is NeverSkips else None
        if reads is not None:
            step_of = module.training_step

            def marked(inputs, targets, _step=step_of, _module=module, _reads=reads):
                _reads.mark(_module.global_step + 1)
                return _step(inputs, targets)

            module.training_step = marked
        out = tmp_path / cls.__name__
        trainer = Trainer(
            output_dir=out,
            progress_bar=False,
            max_epochs=1,
            log_every_n_steps=4,
            grad_clip_norm=1.0,
            val_every_n_steps=6,
            checkpoint=CheckpointConfig(every_n_steps=6, every_epoch=False, keep_last=1),
        )
        trainer.fit(module, loader(40, 4), loader(8, 4, False))
        monkeypatch.undo()
        runs[cls] = losses(out)
        if reads is not None:
            reading = {step for step, found in reads.per_step.items() if found}
            assert sorted(reads.per_step) == list(range(1, 11))
            assert reading == {4, 6, 8, 10}, reads.per_step
    assert runs[NeverSkips] == pytest.approx(runs[TinyModule], rel=1e-12)
    assert len(runs[TinyModule]) == 2


def test_nan_stop_without_per_step_agreement_names_the_step(tmp_path):
    """With no host read per step, a NaN at step 8 is found at the check point before
    step 10's checkpoint: named, and that checkpoint is never written."""

    class Explodes(NeverSkips):
        def training_step(self, inputs, targets):
            loss = super().training_step(inputs, targets)
            return loss * float("nan") if self.global_step >= 7 else loss

    torch.manual_seed(0)
    policy = CheckpointConfig(every_n_steps=5, every_epoch=False)
    trainer = make_trainer(tmp_path, max_epochs=None, max_steps=20, checkpoint=policy)
    trainer.config.log_every_n_steps = 50
    with pytest.raises(FloatingPointError, match="non-finite loss at step 8 .*after step 10"):
        trainer.fit(Explodes(), loader(40, 4))
    assert [p.name for p in trainer.checkpoints.complete()] == ["step-00000005"]


def test_none_from_a_module_that_never_skips_is_an_error(tmp_path):
    class Lies(NeverSkips):
        def training_step(self, inputs, targets):
            return None if self.global_step == 2 else super().training_step(inputs, targets)

    with pytest.raises(ValueError, match="returned None at step 3.*skips_batches"):
        make_trainer(tmp_path).fit(Lies(), loader(40, 4))


def test_thread_defaults_divide_the_cpus_among_a_nodes_ranks():
    from stpdist.threads import available_cpus, default_threads

    assert default_threads({}, cpus=8) == 8
    assert default_threads({"LOCAL_WORLD_SIZE": "2"}, cpus=8) == 4
    assert default_threads({"LOCAL_WORLD_SIZE": "4"}, cpus=2) == 1  # never 0
    assert default_threads({"OMP_NUM_THREADS": "3", "LOCAL_WORLD_SIZE": "2"}, cpus=8) is None
    import os

    mine = len(os.sched_getaffinity(0))
    slurm = {"SLURM_CPUS_PER_TASK": "1", "LOCAL_WORLD_SIZE": "2"}
    assert available_cpus(slurm) == 1 and default_threads(slurm) == 1
    # more than the process may use (salloc's variables left on a login node): the affinity
    slurm = {"SLURM_CPUS_PER_TASK": str(mine + 6), "LOCAL_WORLD_SIZE": "1"}
    assert available_cpus(slurm) == mine and default_threads(slurm) == mine


def test_num_threads_is_applied_and_passive_waiting_is_the_default(tmp_path):
    import os
    import subprocess
    import sys

    before = torch.get_num_threads()
    try:
        make_trainer(tmp_path, num_threads=2)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    # a fresh process importing stpdist before torch waits passively...
    probe = "import stpdist, os; print(os.environ.get('OMP_WAIT_POLICY'))"
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True)
    assert out.stdout.strip() == "PASSIVE", out.stderr
    # ...unless told otherwise
    from stpdist.threads import prefer_passive_waiting

    chosen = {"OMP_WAIT_POLICY": "ACTIVE"}
    prefer_passive_waiting(chosen)
    assert chosen == {"OMP_WAIT_POLICY": "ACTIVE"}


@pytest.mark.parametrize("amx", [False, True])
def test_bf16_on_a_cpu_warns_without_amx_only(tmp_path, caplog, monkeypatch, amx):
    """Both answers of the AMX probe (a test-suite audit: the test skipped on this AMX
    machine and checked nothing; the probe is torch's, the warning ours)."""
    monkeypatch.setattr("stpdist.trainer._fast_bf16_cpu", lambda: amx)
    with caplog.at_level("WARNING", logger="stpdist"):
        make_trainer(tmp_path, mixed_precision="bf16")
    warned = any("SLOWER than fp32" in r.getMessage() for r in caplog.records)
    assert warned is not amx


def test_stop_signal_on_one_process_stops_after_that_step(tmp_path):
    """Ranks act on a stop at their next check point (they must agree); a process alone
    waited for it too (up to log_every_n_steps slow steps): it now stops after the step."""
    import os
    import signal

    from stpdist.trainer import Preempted

    class SignalledAtStep2(NeverSkips):
        def training_step(self, inputs, targets):
            if self.global_step == 1:
                os.kill(os.getpid(), signal.SIGTERM)  # the handler fit installed sets a flag
            return super().training_step(inputs, targets)

    trainer = make_trainer(tmp_path, checkpoint=CheckpointConfig(every_epoch=False))
    trainer.config.log_every_n_steps = 4
    with pytest.raises(Preempted, match="after step 2"):
        trainer.fit(SignalledAtStep2(), loader(40, 4))
    assert [p.name for p in trainer.checkpoints.complete()] == ["step-00000002"]


def test_resume_at_another_steps_per_epoch_trains_the_epochs_it_has_left(tmp_path):
    """`max_epochs` counts epochs: a resume whose steps per epoch differ (another batch size,
    number of ranks or accumulation) trains its remaining epochs at the new rate, not up to
    max_epochs × the new steps per epoch counted from step 0."""
    torch.manual_seed(0)
    make_trainer(tmp_path, max_epochs=1).fit(TinyModule(), loader(16, 2))  # 8 steps
    state = make_trainer(tmp_path, max_epochs=2).fit(TinyModule(), loader(16, 4), resume="auto")
    assert (state.epoch, state.global_step) == (2, 8 + 4)  # epoch 1 at 4 steps an epoch
    state = make_trainer(tmp_path, max_epochs=3).fit(TinyModule(), loader(16, 1), resume="auto")
    assert (state.epoch, state.global_step) == (3, 12 + 16)
    saved = json.loads((tmp_path / "checkpoints/step-00000028/trainer_state.json").read_text())
    assert (saved["epoch"], saved["batch"]) == (3, 0)


def test_a_config_of_the_users_in_the_output_dir_is_never_written_over(tmp_path):
    """`output_dir/config.yaml` is the run's resolved config, but a file there that stpdist did
    not write (the user keeps the config in the run folder) stays as it is: the resolved
    config goes beside it. A config.yaml of stpdist's own is rewritten on resume."""
    from stpdist.config import load_config

    mine = tmp_path / "config.yaml"
    mine.write_text("# my notes\ntrainer: {max_epochs: 1}\n")
    cfg = load_config(mine, [f"trainer.output_dir={tmp_path}"])
    make_trainer(tmp_path, max_epochs=1, run_config=cfg).fit(TinyModule(), loader(8, 4))
    assert mine.read_text() == "# my notes\ntrainer: {max_epochs: 1}\n"
    resolved = tmp_path / "config.resolved.yaml"
    assert load_config(resolved).trainer.output_dir == str(tmp_path)

    other = tmp_path / "other"
    make_trainer(other, max_epochs=1, run_config=cfg).fit(TinyModule(), loader(8, 4))
    assert not (other / "config.resolved.yaml").exists()
    cfg = load_config(other / "config.yaml", ["trainer.max_epochs=2"])  # a resume, changed
    make_trainer(other, max_epochs=2, run_config=cfg).fit(TinyModule(), loader(8, 4), resume="auto")
    assert load_config(other / "config.yaml").trainer.max_epochs == 2
    assert not (other / "config.resolved.yaml").exists()


def test_a_run_config_of_an_earlier_stpdist_is_rewritten_on_resume(tmp_path):
    """Before 2026-12-05 the run's config.yaml carried no header: a resume took it for the
    user's and left it describing the old settings (config.resolved.yaml beside it). It is
    stpdist's when it is the resumed checkpoint's config.yaml."""
    from stpdist.config import load_config
    from stpdist.trainer import RESOLVED_CONFIG_HEADER

    run = tmp_path / "run"
    mine = tmp_path / "mine.yaml"
    mine.write_text("trainer: {max_epochs: 1}\n")
    cfg = load_config(mine, [f"trainer.output_dir={run}"])
    make_trainer(run, max_epochs=1, run_config=cfg).fit(TinyModule(), loader(8, 4))
    (checkpoint,) = (run / "checkpoints").glob("step-*")
    unmarked = (run / "config.yaml").read_text().removeprefix(RESOLVED_CONFIG_HEADER)
    assert (checkpoint / "config.yaml").read_text() == unmarked  # as earlier versions wrote
    (run / "config.yaml").write_text(unmarked)
    cfg = load_config(mine, [f"trainer.output_dir={run}", "trainer.max_epochs=2"])
    make_trainer(run, max_epochs=2, run_config=cfg).fit(TinyModule(), loader(8, 4), resume="auto")
    assert not (run / "config.resolved.yaml").exists()
    assert load_config(run / "config.yaml").trainer.max_epochs == 2


def test_a_fresh_start_sets_an_earlier_metrics_log_aside(tmp_path):
    """Lines of a run that stopped before its first checkpoint (or a file of the user's) are
    not mixed with a new run's: moved to metrics.earlier-N.jsonl; a resume appends."""
    (tmp_path / "metrics.jsonl").write_text('{"old": 1}\n')
    trainer = make_trainer(tmp_path, max_epochs=1)
    trainer.validate(TinyModule(), loader(8, 4, False))  # this run's own line: kept
    trainer.fit(TinyModule(), loader(8, 4))
    assert (tmp_path / "metrics.earlier-1.jsonl").read_text() == '{"old": 1}\n'
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert "val/loss" in lines[0] and all("old" not in x for x in lines)
    make_trainer(tmp_path, max_epochs=2).fit(TinyModule(), loader(8, 4), resume="auto")
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) > len(lines)
    assert not (tmp_path / "metrics.earlier-2.jsonl").exists()


def test_a_resume_sets_the_lines_past_its_checkpoint_aside(tmp_path, capsys):
    """Steps trained past the checkpoint a run resumes from (a process killed after it, or
    an older checkpoint chosen) are trained again: their lines move to
    metrics.replaced-N.jsonl, so metrics.jsonl holds each step once, as an uninterrupted
    run's does (it held those steps twice, the later rows the ones the run went on from)."""
    policy = CheckpointConfig(every_n_steps=4, every_epoch=False, keep_last=5)
    make_trainer(tmp_path, max_epochs=None, max_steps=10, checkpoint=policy).fit(
        TinyModule(), loader(40, 4)
    )
    with open(tmp_path / "metrics.jsonl", "a") as handle:
        handle.write('{"step": 11, "train/lo')  # torn by a kill
    first = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()[:-1]]
    older = tmp_path / "checkpoints" / "step-00000004"
    resumed = make_trainer(tmp_path, max_epochs=None, max_steps=10, checkpoint=policy)
    resumed.fit(TinyModule(), loader(40, 4), resume=older)
    assert "held 7 record(s) of steps after 4, the checkpoint's" in capsys.readouterr().out
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    steps = [x["step"] for x in lines if "train/loss" in x]
    assert steps == list(range(1, 11))
    replaced = (tmp_path / "metrics.replaced-1.jsonl").read_text().splitlines()
    assert [json.loads(x) for x in replaced[:-1]] == [x for x in first if x["step"] > 4]
    assert replaced[-1] == '{"step": 11, "train/lo'
    assert [x for x in lines if x["step"] <= 4] == [x for x in first if x["step"] <= 4]


class CrashesAt(TinyModule):
    def __init__(self, step: int) -> None:
        super().__init__()
        self.crash_at = step

    def training_step(self, inputs, targets):
        if self.global_step + 1 == self.crash_at:
            raise RuntimeError("killed")
        return super().training_step(inputs, targets)


def _eight_steps_then_a_resume_from_step_4_killed_at_6(tmp_path):
    """Checkpoints at steps 4 and 8, then a training resumed from step 4 that fails at step
    6, before its first save. Returns (the checkpoint policy, step 4's checkpoint)."""
    policy = CheckpointConfig(every_n_steps=4, every_epoch=False, keep_last=5)
    make_trainer(tmp_path, max_epochs=None, max_steps=8, checkpoint=policy).fit(
        TinyModule(), loader(40, 4)
    )
    older = tmp_path / "checkpoints" / "step-00000004"
    with pytest.raises(RuntimeError, match="killed"):
        make_trainer(tmp_path, max_epochs=None, max_steps=8, checkpoint=policy).fit(
            CrashesAt(6), loader(40, 4), resume=older
        )
    return policy, older


def test_rows_of_checkpoints_still_standing_stay_until_this_run_saves(tmp_path):
    """A diff review: resumed from an older checkpoint, the run moved the later rows aside
    at once; killed before its first save, `--resume auto` went on from the newer
    checkpoints, whose rows were gone from metrics.jsonl. They move once this run's first
    save puts those checkpoints aside."""
    policy, older = _eight_steps_then_a_resume_from_step_4_killed_at_6(tmp_path)
    assert not (tmp_path / "metrics.replaced-1.jsonl").exists()
    steps = [json.loads(x)["step"] for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert {7, 8} <= set(steps)  # the rows of the trajectory that still stands
    resumed = make_trainer(tmp_path, max_epochs=None, max_steps=12, checkpoint=policy)
    resumed.fit(TinyModule(), loader(40, 4), resume=older)  # saves at 8: the other goes
    assert (tmp_path / "metrics.replaced-1.jsonl").exists()
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train = [r["step"] for r in rows if "train/loss" in r]
    assert train[:4] == [1, 2, 3, 4] and train[-8:] == list(range(5, 13))


def _train_steps(path) -> list[int]:
    rows = [json.loads(x) for x in path.read_text().splitlines()]
    return [r["step"] for r in rows if "train/loss" in r]


def test_rows_of_a_resume_stopped_before_its_first_save_go_aside_at_the_next_start(
    tmp_path, capsys
):
    """Left since stop 53: resumed from an older checkpoint and killed before its first
    save, then resumed along the newer checkpoints (`--resume auto`), a run kept the killed
    attempt's steps twice in metrics.jsonl. Two such attempts in a row here."""
    policy = CheckpointConfig(every_n_steps=4, every_epoch=False, keep_last=5)
    make_trainer(tmp_path, max_epochs=None, max_steps=8, checkpoint=policy).fit(
        TinyModule(), loader(40, 4)
    )
    older = tmp_path / "checkpoints" / "step-00000004"
    for crash in (7, 6):  # rows of steps 5, 6; then of step 5
        trainer = make_trainer(tmp_path, max_epochs=None, max_steps=12, checkpoint=policy)
        with pytest.raises(RuntimeError, match="killed"):
            trainer.fit(CrashesAt(crash), loader(40, 4), resume=older)
    # along step 8's trajectory, by the same Trainer (a notebook's second fit)
    trainer.fit(TinyModule(), loader(40, 4), resume="auto")
    assert _train_steps(tmp_path / "metrics.jsonl") == list(range(1, 13))
    said = capsys.readouterr().out
    assert "held 2 record(s) of a training resumed from step 4 that stopped before" in said
    assert "held 1 record(s) of a training resumed from step 4" in said
    assert _train_steps(tmp_path / "metrics.replaced-1.jsonl") == [5, 6]
    assert _train_steps(tmp_path / "metrics.replaced-2.jsonl") == [5]
    assert not (tmp_path / ".metrics.pending.json").exists()


def test_rows_another_logs_after_a_stopped_resume_stay(tmp_path):
    """A diff review: the test results of checkpoint 8, validated between the stop of a
    resume from step 4 and the next start, went aside with the stopped training's rows
    (a validate in another process, and one in the stopped training's own, as a notebook's
    after a failed fit)."""
    policy, older = _eight_steps_then_a_resume_from_step_4_killed_at_6(tmp_path)
    newest = tmp_path / "checkpoints" / "step-00000008"
    make_trainer(tmp_path).validate(TinyModule(), loader(8, 4), ckpt=newest, split="test")
    stopped = make_trainer(tmp_path, max_epochs=None, max_steps=12, checkpoint=policy)
    with pytest.raises(RuntimeError, match="killed"):
        stopped.fit(CrashesAt(7), loader(40, 4), resume=older)
    stopped.validate(TinyModule(), loader(8, 4), ckpt=older, split="test")  # same process
    make_trainer(tmp_path, max_epochs=None, max_steps=9, checkpoint=policy).fit(
        TinyModule(), loader(40, 4), resume="auto"
    )
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "test/loss" in r] == [8, 4]
    assert _train_steps(tmp_path / "metrics.jsonl") == list(range(1, 10))
    assert _train_steps(tmp_path / "metrics.replaced-1.jsonl") == [5]
    assert _train_steps(tmp_path / "metrics.replaced-2.jsonl") == [5, 6]


def test_a_validate_while_a_resume_runs_stays_and_the_resumes_later_rows_go(tmp_path):
    """A second diff review: a `validate` of checkpoint 8 from another shell while a resume
    from step 4 ran put an end to that resume's rows where it logged; the resume, killed at
    step 8, left its steps 6 and 7 beside the trajectory's."""
    policy = CheckpointConfig(every_n_steps=4, every_epoch=False, keep_last=5)
    make_trainer(tmp_path, max_epochs=None, max_steps=8, checkpoint=policy).fit(
        TinyModule(), loader(40, 4)
    )
    older, newest = (tmp_path / "checkpoints" / f"step-0000000{n}" for n in (4, 8))

    class ValidatedMeanwhile(CrashesAt):
        def training_step(self, inputs, targets):
            if self.global_step + 1 == 6:  # another process validates checkpoint 8
                other = make_trainer(tmp_path)
                other.validate(TinyModule(), loader(8, 4), ckpt=newest, split="test")
            return super().training_step(inputs, targets)

    with pytest.raises(RuntimeError, match="killed"):
        make_trainer(tmp_path, max_epochs=None, max_steps=12, checkpoint=policy).fit(
            ValidatedMeanwhile(8), loader(40, 4), resume=older
        )
    make_trainer(tmp_path, max_epochs=None, max_steps=9, checkpoint=policy).fit(
        TinyModule(), loader(40, 4), resume="auto"
    )
    assert _train_steps(tmp_path / "metrics.jsonl") == list(range(1, 10))
    assert _train_steps(tmp_path / "metrics.replaced-1.jsonl") == [5, 6, 7]
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "test/loss" in r] == [8]


def test_a_stopped_resumes_record_is_left_when_the_file_changed_or_a_fresh_run_starts(
    tmp_path, capsys
):
    """The record of where a stopped resume's rows began names bytes of metrics.jsonl: a
    file edited since keeps every row (with a line), as before the record existed; a
    damaged record is removed; a fresh training starts a new file and drops the record."""
    policy, older = _eight_steps_then_a_resume_from_step_4_killed_at_6(tmp_path)
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text(metrics.read_text().split("\n", 1)[1])  # the first row edited out
    make_trainer(tmp_path, max_epochs=None, max_steps=9, checkpoint=policy).fit(
        TinyModule(), loader(40, 4), resume="auto"
    )
    assert "that changed since (edited?)" in capsys.readouterr().out
    assert _train_steps(metrics) == [2, 3, 4, 5, 6, 7, 8, 5, 9]  # left as they were
    assert not (tmp_path / ".metrics.pending.json").exists()
    (tmp_path / ".metrics.pending.json").write_text("{not json")
    make_trainer(tmp_path, max_epochs=None, max_steps=10, checkpoint=policy).fit(
        TinyModule(), loader(40, 4), resume="auto"
    )
    assert ".metrics.pending.json does not read" in capsys.readouterr().out
    assert not (tmp_path / ".metrics.pending.json").exists()
    with pytest.raises(RuntimeError, match="killed"):
        make_trainer(tmp_path, max_epochs=None, max_steps=10, checkpoint=policy).fit(
            CrashesAt(6), loader(40, 4), resume=older
        )
    assert (tmp_path / ".metrics.pending.json").is_file()
    shutil.rmtree(tmp_path / "checkpoints")  # a fresh training of the folder
    make_trainer(tmp_path, max_epochs=None, max_steps=2).fit(TinyModule(), loader(8, 4))
    assert not (tmp_path / ".metrics.pending.json").exists()
    assert _train_steps(metrics) == [1, 2]


def test_a_resume_mid_epoch_on_another_dataset_length_or_order_is_refused(tmp_path):
    """A Python API review: a map-style dataset of another length, or `shuffle` changed,
    re-dealt the epoch begun silently (samples seen twice, others never), while a changed
    batch size was refused, in words of a config the Python user has not."""
    policy = CheckpointConfig(every_n_steps=2, every_epoch=False)
    make_trainer(tmp_path, max_epochs=None, max_steps=2, checkpoint=policy).fit(
        TinyModule(), loader(16, 4)
    )  # stops at step 2 of 4 in epoch 0
    for data, changed in ((loader(24, 4), "data.shards 16 samples (the checkpoint's) → 24 "),
                          (loader(16, 4, shuffle=False), "data.reading shuffled (the ")):  # fmt: skip
        trainer = make_trainer(tmp_path, max_epochs=None, max_steps=4, checkpoint=policy)
        with pytest.raises(InputError, match="resuming from") as refused:
            trainer.fit(TinyModule(), data, resume="auto")
        said = str(refused.value)
        assert changed in said and "samples would be seen twice" in said, said
        assert "config.yaml" not in said and "model.init_weights" not in said, said
        trainer.close()
    resumed = make_trainer(tmp_path, max_epochs=None, max_steps=4, checkpoint=policy)
    assert resumed.fit(TinyModule(), loader(16, 4), resume="auto").global_step == 4


def test_validating_another_runs_checkpoint_logs_nothing_into_this_run(tmp_path):
    """A Python API review: `validate(ckpt=<another run's checkpoint>)` wrote that run's
    results into this run's metrics.jsonl, at that run's step."""
    other = make_trainer(tmp_path / "b", max_epochs=1)
    other.fit(TinyModule(), loader(8, 4))
    mine = make_trainer(tmp_path / "a", max_epochs=1)
    mine.fit(TinyModule(), loader(16, 4))
    before = (tmp_path / "a" / "metrics.jsonl").read_text()
    results = mine.validate(TinyModule(), loader(8, 4, False), ckpt=other.checkpoints.latest())
    assert "val/loss" in results
    assert (tmp_path / "a" / "metrics.jsonl").read_text() == before
    mine.validate(TinyModule(), loader(8, 4, False), ckpt=mine.checkpoints.latest())
    rows = [json.loads(x) for x in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 4 and "val/loss" in rows[-1]  # its own: logged


class SkipsEverySecond(TinyModule):
    """Skips (returns None for) every second training batch it sees."""

    def __init__(self, skipping: bool) -> None:
        super().__init__(lr=0.1, scheduler=False)
        self.skipping, self.seen = skipping, 0

    def configure_optimizer(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr)

    def training_step(self, inputs, targets):
        self.seen += 1
        if self.skipping and self.seen % 2 == 0:
            return None
        return super().training_step(inputs, targets)


def test_a_window_with_skipped_micro_batches_steps_by_the_mean_of_those_used(tmp_path):
    """A Python API review: under accumulation, a micro-batch skipped (None) still counted in
    the divisor, so the step shrank by used/length (an lr that no log showed). Windows of
    2 whose second micro-batch is skipped step as the first micro-batches alone do."""
    data = TinySequences(16)
    torch.manual_seed(0)
    skipping = SkipsEverySecond(skipping=True)
    Trainer(output_dir=tmp_path / "a", max_epochs=1, progress_bar=False,
            gradient_accumulation_steps=2).fit(skipping, DataLoader(data, batch_size=2))  # fmt: skip
    used = torch.utils.data.Subset(data, [i for i in range(16) if (i // 2) % 2 == 0])
    torch.manual_seed(0)
    alone = SkipsEverySecond(skipping=False)
    Trainer(output_dir=tmp_path / "b", max_epochs=1, progress_bar=False).fit(
        alone, DataLoader(used, batch_size=2)
    )
    for mine, theirs in zip(skipping.parameters(), alone.parameters(), strict=True):
        torch.testing.assert_close(mine, theirs, rtol=1e-6, atol=1e-7)


class OneCycle(TinyModule):
    def configure_lr_scheduler(self, optimizer):
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, 0.05, total_steps=self.planned_steps)


def test_a_resume_that_outruns_a_one_cycle_schedule_is_refused_before_any_step(tmp_path):
    """OneCycleLR cannot step past its length (restored from the checkpoint): more epochs,
    or more steps per epoch, would stop with torch's error at its end; refused at start."""
    make_trainer(tmp_path, max_epochs=1).fit(OneCycle(), loader(16, 4))  # 4 steps
    before = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    provenance = (tmp_path / "provenance.jsonl").read_text()
    with pytest.raises(InputError, match=r"has 0 steps left, this run plans 4 more"):
        make_trainer(tmp_path, max_epochs=2).fit(OneCycle(), loader(16, 4), resume="auto")
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == before
    # a config review: the refused resume had recorded itself (and rewritten config.yaml)
    assert (tmp_path / "provenance.jsonl").read_text() == provenance
    fresh = make_trainer(tmp_path / "refused", max_epochs=2)
    with pytest.raises(InputError, match=r"lasts 3 steps, this run plans 8"):
        fresh.fit(OneCycleOf3(), loader(16, 4))
    assert not (tmp_path / "refused" / "provenance.jsonl").exists()
    make_trainer(tmp_path / "b", max_epochs=2).fit(OneCycle(), loader(16, 4))  # 8 steps
    halfway = tmp_path / "b" / "checkpoints" / "step-00000004"
    trainer = make_trainer(tmp_path / "b", max_epochs=2)  # 16 steps an epoch from here
    with pytest.raises(InputError, match=r"has 4 steps left, this run plans 16 more.*=8,"):
        trainer.fit(OneCycle(), loader(16, 1), resume=halfway)
    fresh = make_trainer(tmp_path / "c", max_epochs=2)
    # the module's own schedule: the fix is in its code (a config key would not apply)
    with pytest.raises(InputError, match=r"lasts 3 steps, this run plans 8") as refused:
        fresh.fit(OneCycleOf3(), loader(16, 4))
    assert "total_steps=self.planned_steps" in str(refused.value)
    assert "model.schedule" not in str(refused.value)


class OneCycleOf3(TinyModule):
    def configure_lr_scheduler(self, optimizer):
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, 0.05, total_steps=3)


def test_a_launcher_asking_for_another_precision_is_refused_not_ignored(tmp_path, monkeypatch):
    """`accelerate launch` passes its config's or flag's precision in
    ACCELERATE_MIXED_PRECISION; stpdist's is trainer.mixed_precision: a disagreement is
    refused in one line (a launcher that asks for nothing, "no", is not a disagreement)."""
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    with pytest.raises(InputError, match="asks for mixed precision bf16.*'no'.*=bf16"):
        make_trainer(tmp_path)
    assert make_trainer(tmp_path, mixed_precision="bf16").accelerator.mixed_precision == "bf16"
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "no")
    assert make_trainer(tmp_path, mixed_precision="bf16").accelerator.mixed_precision == "bf16"


class ReportsNoLoss(TinyModule):
    def validation_step(self, inputs, targets):
        return {"mse": nn.functional.mse_loss(self(inputs), targets)}


def test_default_settings_train_a_module_whose_validation_reports_no_loss(tmp_path, capsys):
    """The default monitor (val/loss) absent from a conforming module's results: no best-k
    ranking, said once, and training goes on; a monitor the user set stays an error."""
    state = make_trainer(tmp_path, max_epochs=2).fit(
        ReportsNoLoss(), loader(16, 4), loader(8, 4, False)
    )
    assert state.global_step == 8
    said = capsys.readouterr().out
    assert said.count("hold no val/loss (the default trainer.checkpoint.monitor)") == 1
    policy = CheckpointConfig(monitor="val/ssim")
    with pytest.raises(InputError, match="'val/ssim' is not among the validation results"):
        make_trainer(tmp_path / "b", checkpoint=policy).fit(
            ReportsNoLoss(), loader(16, 4), loader(8, 4, False)
        )


def test_best_k_that_could_only_ever_rank_the_last_checkpoint_is_warned_at_start(tmp_path):
    """Checkpoints every 3 steps, validations every 4, 8 steps: no checkpoint before the last
    has its step's validation, so "best" could only be the last; said once, at start.
    Aligned cadences (and the defaults) say nothing."""
    records: list[logging.LogRecord] = []
    collect = logging.Handler(logging.WARNING)
    collect.emit = records.append
    logging.getLogger("stpdist").addHandler(collect)
    try:
        for name, every, val_every in (("misaligned", 3, 4), ("aligned", 2, 4)):
            policy = CheckpointConfig(every_n_steps=every, every_epoch=False)
            trainer = make_trainer(tmp_path / name, max_epochs=None, max_steps=8,
                                   val_every_n_steps=val_every, val_every_n_epochs=0,
                                   checkpoint=policy)  # fmt: skip
            trainer.fit(TinyModule(), loader(32, 4), loader(8, 4, False))
        make_trainer(tmp_path / "defaults").fit(TinyModule(), loader(16, 4), loader(8, 4, False))
    finally:
        logging.getLogger("stpdist").removeHandler(collect)
    warned = [r.getMessage() for r in records if "keep_best ranks" in r.getMessage()]
    assert (
        len(warned) == 1 and "every_n_steps 3" in warned[0] and "val_every_n_steps 4" in warned[0]
    )


def test_ranks_of_two_seeds_never_share_their_random_draws():
    """A reproducibility review: rank r drew with seed + r, so seed 0's rank 1 drew exactly
    seed 1's rank 0 (the scheduled-sampling masks of `reproduce --seeds` on several ranks).
    Rank 0 keeps the seed (a one-process run unchanged); no two (seed, rank) pairs alike."""
    from stpdist.trainer import rank_seed

    assert [rank_seed(s, 0) for s in range(5)] == list(range(5))
    seeds = {rank_seed(s, r) for s in range(64) for r in range(16)}
    assert len(seeds) == 64 * 16 and rank_seed(0, 1) != 1
    assert all(0 <= value < 2**32 for value in seeds)  # numpy's and torch's seed range
