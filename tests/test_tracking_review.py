"""Tracking review (R18): what the trackers get, read back from real files. The epoch
summary under `logging.trackers_every_n_steps`, the wandb config's shape beside tensorboard,
a tracker that fails mid-training (wandb's service killed: a real process, SIGKILLed), and
the `wandb sync` line after a preempted `stpdist train`. wandb runs offline in subprocesses
(an in-process run would stay in this worker's wandb state); tensorboard in-process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from helpers import PYTHON_C, TinyModule, loader

from stpdist import Trainer
from stpdist.config import LoggingConfig

ROOT = Path(__file__).resolve().parent.parent


def _scalar_steps(folder: Path) -> dict[str, list[int]]:
    """tag → the steps of its scalar events in the tensorboard run `folder`."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [e.step for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_thinned_tracker_scalars_keep_every_epoch_summary(tmp_path):
    """`trackers_every_n_steps: 2` with 5-step epochs: the training windows reach the
    tracker at even steps, the epoch summaries (train/epoch_loss, time_s) at each epoch's
    end, steps 5 and 10 (the odd one was dropped: step 5 is not a multiple of 2)."""
    pytest.importorskip("tensorboard")
    logging = LoggingConfig(trackers=["tensorboard"], trackers_every_n_steps=2, num_samples=0)
    trainer = Trainer(output_dir=tmp_path, progress_bar=False, log_every_n_steps=1,
                      max_epochs=2, logging=logging)  # fmt: skip
    trainer.fit(TinyModule(), loader(20, 4, shuffle=False))
    trainer.close()
    steps = _scalar_steps(tmp_path / "stpdist")
    assert steps["train/loss"] == [2, 4, 6, 8, 10]
    assert steps["train/epoch_loss"] == [5, 10]
    assert steps["time_s"] == [5, 10]
    # metrics.jsonl holds every window, thinned or not
    logged = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged if "train/loss" in r] == list(range(1, 11))


# a training of the tiny module, tracked by offline wandb and tensorboard, that kills its
# own wandb service (wandb-core, a child process) at step KILL_AT when KILL_AT is set
SCRIPT = """
import os, signal, sys
from pathlib import Path
sys.path.insert(0, {tests!r})
from helpers import TinyModule, loader
from stpdist import Trainer
from stpdist.config import load_config

out, kill_at = Path(sys.argv[1]), int(os.environ.get("KILL_AT", "0"))

class Module(TinyModule):
    def training_step(self, inputs, targets):
        if self.global_step == kill_at and kill_at:
            for pid in os.listdir("/proc"):
                try:
                    cmd = Path(f"/proc/{{pid}}/cmdline").read_bytes()
                    ppid = Path(f"/proc/{{pid}}/stat").read_text().rsplit(")", 1)[1].split()[1]
                except (OSError, IndexError):
                    continue
                if b"wandb-core" in cmd and int(ppid) == os.getpid():
                    os.kill(int(pid), signal.SIGKILL)
        return super().training_step(inputs, targets)

cfg = load_config(None, [f"trainer.output_dir={{out}}", "trainer.max_epochs=2",
                         "trainer.log_every_n_steps=1", "trainer.progress_bar=false",
                         "logging.num_samples=1", "logging.trackers=[wandb,tensorboard]"])
trainer = Trainer(cfg.trainer, logging=cfg.logging, run_config=cfg)
trainer.fit(Module(), loader(16, 4, shuffle=False), loader(8, 4, shuffle=False))
trainer.close()
print("TRAINED", flush=True)
"""


def _run_tiny(out: Path, kill_at: int = 0) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline", "KILL_AT": str(kill_at)}
    env["WANDB_DIR"] = str(out / "wandb-dir")
    env.pop("WANDB_SERVICE", None)  # an in-process wandb run elsewhere in this worker
    script = SCRIPT.format(tests=str(ROOT / "tests"))
    return subprocess.run([sys.executable, PYTHON_C, script, str(out)], env=env, cwd=out.parent,
                          capture_output=True, text=True, timeout=180)  # fmt: skip


def _wandb_config(run_file: Path) -> dict:
    """The config record of an offline `.wandb` run file: key → its JSON value."""
    from wandb.proto import wandb_internal_pb2

    from stpdist.tracking import _log_records

    config = {}
    for data in _log_records(run_file.read_bytes()):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(data)
        if record.WhichOneof("record_type") == "config":
            config.update({i.key: json.loads(i.value_json) for i in record.config.update})
    return config


@pytest.fixture(scope="module")
def killed_wandb_run(tmp_path_factory):
    pytest.importorskip("wandb")
    pytest.importorskip("tensorboard")
    out = tmp_path_factory.mktemp("killed") / "run"
    return out, _run_tiny(out, kill_at=2)


def test_a_killed_wandb_service_warns_once_and_training_goes_on(killed_wandb_run):
    """wandb's service SIGKILLed at step 2 (as an OOM killer does): one warning naming wandb
    and the step, training runs to its end (4 steps × 2 epochs, its checkpoints written) and
    tensorboard still gets every step; before, the run ended there with
    `ConnectionResetError: Connection lost`, its steps since the last checkpoint lost."""
    out, done = killed_wandb_run
    assert done.returncode == 0, done.stderr[-3000:]
    assert "TRAINED" in done.stdout
    warnings = [line for line in done.stderr.splitlines() if line.startswith("wandb failed")]
    assert len(warnings) == 1, done.stderr[-3000:]
    assert "ConnectionResetError" in warnings[0] and "metrics.jsonl" in warnings[0]
    assert sorted(p.name for p in (out / "checkpoints").iterdir())[-1] == "step-00000008"
    steps = _scalar_steps(out / "stpdist")
    assert steps["train/loss"] == list(range(1, 9))
    assert steps["val/loss"] == [4, 8]


# a `stpdist train` that preempts itself (SIGTERM) after its step 2 is logged
PREEMPTING = """
import os, signal, sys
from stpdist import tracking
from stpdist.cli import main

log = tracking.Tracker.log

def stopping_log(self, values, *, step, epoch):
    log(self, values, step=step, epoch=epoch)
    if step == 2 and "train/loss" in values:
        os.kill(os.getpid(), signal.SIGTERM)

tracking.Tracker.log = stopping_log
sys.exit(main(sys.argv[1:]))
"""


def _preempted(script: str, tmp_path: Path, trackers: str, env: dict) -> Any:
    """`stpdist train` of the debug config (3 steps, into tmp_path/run) run by `script`,
    which stops it with SIGTERM after step 2 is logged; the completed process."""
    data, out = tmp_path / "data", tmp_path / "run"
    args = ["train", str(ROOT / "configs" / "debug.yaml"), f"data.root={data}",
            f"data.synthesize.root={data}", f"trainer.output_dir={out}", "trainer.max_steps=3",
            "trainer.log_every_n_steps=1", "trainer.val_every_n_epochs=0",
            "logging.num_samples=0", f"logging.trackers={trackers}"]  # fmt: skip
    return subprocess.run([sys.executable, PYTHON_C, script, *args], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=180)  # fmt: skip


def test_a_preempted_training_prints_the_sync_command_of_its_run(tmp_path):
    """A `stpdist train` stopped by SIGTERM (exit 75) printed wandb's own hint for its
    newest folder only, never stpdist's `wandb sync` line naming every folder of the run
    (the Trainer was left to the exit hook and freed before it ran). With tensorboard on
    too, wandb got the config flattened (`trainer.max_epochs` keys, unlike the nested
    config of a wandb-only run): it keeps its sections either way."""
    pytest.importorskip("wandb")
    pytest.importorskip("tensorboard")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}
    env["WANDB_DIR"] = str(tmp_path / "wandb-dir")
    env.pop("WANDB_SERVICE", None)
    out = tmp_path / "run"
    first = _preempted(PREEMPTING, tmp_path, "[wandb,tensorboard]", env)
    assert first.returncode == 75, first.stderr[-3000:]
    run_id = json.loads((out / "tracker.json").read_text())["run_id"]
    (folder,) = sorted((out / "wandb").glob(f"offline-run-*-{run_id}"))
    assert f"upload it with: wandb sync {folder}" in first.stdout + first.stderr
    (run_file,) = folder.glob("run-*.wandb")
    config = _wandb_config(run_file)
    assert {"trainer", "data", "model", "logging"} <= set(config), sorted(config)[:8]
    assert config["trainer"]["max_steps"] == 3
    assert not [key for key in config if "." in key]
    # tensorboard's hparams keep the flat form it takes
    (hparams,) = (out / "stpdist").glob("*/hparams.yml")
    assert "trainer.max_steps: 3" in hparams.read_text()


# the same self-preempting `stpdist train`, with a tracker that cannot finish (as wandb's
# service killed with the job by scancel): the stop must stay a stop
FAILING_FINISH = PREEMPTING.replace(
    "tracking.Tracker.log = stopping_log",
    "tracking.Tracker.log = stopping_log\n"
    "from accelerate.tracking import TensorBoardTracker\n"
    "def finish(self):\n"
    "    raise ConnectionResetError('Connection lost')\n"
    "TensorBoardTracker.finish = finish",
)


def test_a_preempted_training_whose_tracker_cannot_finish_still_stops_as_a_stop(tmp_path):
    """Closing the Trainer at a preemption (for the sync line) re-raised a tracker's failure
    to finish: exit 1 and `ConnectionResetError` instead of exit 75 and the line saying how
    to resume, which requeue scripts rely on."""
    pytest.importorskip("tensorboard")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = _preempted(FAILING_FINISH, tmp_path, "[tensorboard]", env)
    assert done.returncode == 75, done.stderr[-3000:]
    assert "stopped on a signal after step" in done.stderr and "--resume auto" in done.stderr
    assert "ConnectionResetError" not in done.stderr


def test_wandb_mode_of_the_environment_rules_over_the_configs(tmp_path, monkeypatch, capsys):
    """A monitoring review: `WANDB_MODE=offline` exported on a cluster's nodes was ignored by
    a config saying online (the run died at start: no API key), and `disabled` still wrote
    an offline run."""
    from stpdist.config import WandbConfig
    from stpdist.errors import InputError
    from stpdist.tracking import Tracker

    online = LoggingConfig(trackers=["wandb", "tensorboard"], wandb=WandbConfig(mode="online"))
    monkeypatch.setenv("WANDB_MODE", "offline")
    tracker = Tracker(tmp_path / "a", online)
    assert tracker.config.wandb.mode == "offline" and online.wandb.mode == "online"
    assert tracker._mode_note == (
        "WANDB_MODE=offline in the environment: the wandb run is offline (logging.wandb.mode "
        "is online)"
    )
    offline = LoggingConfig(trackers=["wandb"])  # the default, offline: nothing to say
    assert Tracker(tmp_path / "b", offline)._mode_note is None
    monkeypatch.setenv("WANDB_MODE", "dryrun")
    assert Tracker(tmp_path / "c", online).config.wandb.mode == "offline"
    monkeypatch.setenv("WANDB_MODE", "shared")  # wandb's own too
    assert Tracker(tmp_path / "s", online).config.wandb.mode == "shared"
    monkeypatch.setenv("WANDB_MODE", "offlne")  # refused as a wandb run would start
    note = Tracker(tmp_path / "d", online)._mode_note
    assert isinstance(note, InputError)
    assert str(note).startswith("WANDB_MODE='offlne' in the environment: expected online")
    typo = Trainer(output_dir=tmp_path / "typo", progress_bar=False, max_epochs=1,
                   logging=LoggingConfig(trackers=["wandb"], num_samples=0))  # fmt: skip
    with pytest.raises(InputError, match=r"WANDB_MODE='offlne' in the environment"):
        typo.fit(TinyModule(), loader(8, 4, shuffle=False))
    typo.close()
    monkeypatch.delenv("WANDB_MODE")
    assert Tracker(tmp_path / "e", online).config.wandb.mode == "online"  # the config's

    # disabled: no wandb run at all, said once; the other trackers and metrics.jsonl stay
    pytest.importorskip("tensorboard")
    monkeypatch.setenv("WANDB_MODE", "disabled")
    logging = LoggingConfig(trackers=["wandb", "tensorboard"], num_samples=0)
    trainer = Trainer(output_dir=tmp_path / "run", progress_bar=False, max_epochs=1,
                      log_every_n_steps=1, logging=logging)  # fmt: skip
    trainer.fit(TinyModule(), loader(8, 4, shuffle=False))
    trainer.close()
    out = capsys.readouterr().out
    assert out.count("WANDB_MODE=disabled in the environment: no wandb run") == 1
    assert not (tmp_path / "run" / "wandb").exists()
    assert _scalar_steps(tmp_path / "run" / "stpdist")["train/loss"]
    assert (tmp_path / "run" / "metrics.jsonl").is_file()
