"""Exact resume on real ranks: SIGKILL mid-run and SIGTERM (preemption) both resume to
weights bitwise equal to an uninterrupted run, on 1 and 2 processes (split from
test_trainer_dist.py so parallel test workers share the load)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from conftest import launcher as ranks_launcher
from conftest import run_ranks, unserved
from safetensors.torch import load_file

SCRIPT = str(Path(__file__).parent / "dist_train.py")
pytestmark = pytest.mark.multiprocess


def _run_until_killed(cmd: list[str], ckpt: Path, env: dict) -> None:
    proc = subprocess.Popen(
        cmd,
        env=unserved(env),
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.time() + 120
    try:
        while not (ckpt / "trainer_state.json").is_file():
            assert proc.poll() is None, (
                f"run ended before its checkpoint: {proc.stderr.read()[-3000:]}"
            )
            assert time.time() < deadline, "checkpoint never appeared"
            time.sleep(0.2)
        time.sleep(0.5)  # the run is now hanging inside the step after
        assert proc.poll() is None
    finally:
        # torchrun starts each rank in a session of its own: killing torchrun's process
        # group would leave the ranks alive, so every descendant is killed by pid
        import psutil

        ranks = psutil.Process(proc.pid).children(recursive=True)
        for child in ranks:
            child.kill()
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        gone, alive = psutil.wait_procs(ranks, timeout=30)
        assert not alive, f"ranks survived SIGKILL: {alive}"


REFERENCE = ["--batch", "4", "--steps", "12", "--ckpt-every", "6", "--dropout", "0.2"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The uninterrupted reference run per rank count, shared by the SIGKILL and SIGTERM
    tests (checkpointing every 6 steps does not change the trajectory)."""
    runs: dict[int, Path] = {}

    def run(nproc: int) -> Path:
        if nproc not in runs:
            out = tmp_path_factory.mktemp(f"straight{nproc}")
            run_ranks([SCRIPT, "--out", str(out), *REFERENCE], nproc)
            runs[nproc] = out
        return runs[nproc]

    return run


@pytest.mark.parametrize("nproc", [1, 2])
def test_resume_after_sigkill_is_bitwise_identical(tmp_path, nproc, uninterrupted):
    common = REFERENCE
    straight = uninterrupted(nproc)

    killed = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launcher = ranks_launcher(nproc)
    _run_until_killed(
        [*launcher, SCRIPT, "--out", str(killed), *common, "--hang-at", "8"],
        killed / "checkpoints" / "step-00000006",
        env,
    )
    assert not (killed / "checkpoints" / "step-00000012").exists()
    run_ranks([SCRIPT, "--out", str(killed), *common, "--resume", "auto"], nproc)

    a, b = straight / "checkpoints" / "step-00000012", killed / "checkpoints" / "step-00000012"
    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert wa.keys() == wb.keys()
    for key in wa:
        assert torch.equal(wa[key], wb[key]), key
    oa = torch.load(a / "optimizer.pt", weights_only=True)
    ob = torch.load(b / "optimizer.pt", weights_only=True)
    for pid, st in oa["state"].items():
        for name, value in st.items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(ob["state"][pid][name]))
    steps_per_epoch = 40 // (4 * nproc)
    assert json.loads((a / "trainer_state.json").read_text())["epoch"] == 12 // steps_per_epoch


# 2 ranks (one process stopping on SIGTERM with exit 75 is the CLI test of
# test_checkpoint_truth.py, DataLoader workers included; its bitwise resume, the SIGKILL one)
@pytest.mark.parametrize("nproc", [2])
def test_sigterm_stops_after_a_step_with_checkpoint_and_resumes_bitwise(
    tmp_path, nproc, uninterrupted
):
    common = ["--batch", "4", "--steps", "12", "--dropout", "0.2"]
    straight = uninterrupted(nproc)

    stopped = tmp_path / "stopped"
    launcher = ranks_launcher(nproc)
    env = unserved({**os.environ, "OMP_NUM_THREADS": "1"})  # its ranks are its children
    proc = subprocess.Popen(
        [*launcher, SCRIPT, "--out", str(stopped), *common, "--step-sleep", "0.3"],
        env=env,
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    metrics = stopped / "metrics.jsonl"
    deadline = time.time() + 120
    while not (metrics.is_file() and len(metrics.read_text().splitlines()) >= 3):
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.1)
    # what SLURM or torchrun does: every rank gets SIGTERM (ranks are the launcher's children)
    if nproc == 1:
        targets = [proc.pid]
    else:
        out = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True)
        targets = [int(pid) for pid in out.stdout.split()]
        assert len(targets) == nproc
    for pid in targets:
        os.kill(pid, signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    if nproc == 1:
        assert proc.returncode == 75, stderr[-2000:]
    assert "stopped on a signal after step" in stdout + stderr
    saved = sorted((stopped / "checkpoints").glob("step-*"))
    stop_step = int(saved[-1].name.split("-")[1])
    assert 3 <= stop_step < 12
    state = json.loads((saved[-1] / "trainer_state.json").read_text())
    assert state["global_step"] == stop_step

    run_ranks([SCRIPT, "--out", str(stopped), *common, "--resume", "auto"], nproc)
    final_a = load_file(str(straight / "checkpoints" / "step-00000012" / "model.safetensors"))
    final_b = load_file(str(stopped / "checkpoints" / "step-00000012" / "model.safetensors"))
    for key in final_a:
        assert torch.equal(final_a[key], final_b[key]), key


def test_a_stop_during_a_long_validation_leaves_it_and_stops_with_a_checkpoint(tmp_path):
    """SIGTERM to both ranks in the middle of a validation (each of its batches takes
    0.3 s, 10 s in all): the ranks leave it together and stop with a checkpoint within
    seconds, where they used to finish it first (and torchrun SIGKILLs a rank 30 s after
    its SIGTERM: no checkpoint). The resume runs the validation that was cut off."""
    out = tmp_path / "run"
    common = ["--out", str(out), "--steps", "8", "--val-every", "4", "--eval-batch", "1"]
    env = unserved({**os.environ, "OMP_NUM_THREADS": "1"})  # its ranks are its children
    proc = subprocess.Popen(
        [*ranks_launcher(2), SCRIPT, *common, "--val-sleep", "0.3"],
        env=env, start_new_session=True, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    deadline = time.time() + 120
    while not (out / "validating").is_file():
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.05)
    ranks = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True)
    signalled = time.time()
    for pid in [int(p) for p in ranks.stdout.split()]:
        os.kill(pid, signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    took = time.time() - signalled
    assert "step 4: validation left unfinished to stop" in stdout + stderr, stderr[-2000:]
    assert "stopped on a signal after step 4" in stdout + stderr
    assert took < 8, f"{took:.1f} s: the validation (20 batches of 0.3 s per rank) ran on"
    assert (out / "checkpoints" / "step-00000004").is_dir()
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert not [r for r in rows if "val/loss" in r]

    run_ranks([SCRIPT, *common, "--resume", "auto"], 2)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "val/loss" in r] == [4, 5, 8]  # 5: the epoch's end


def test_another_lr_schedule_on_resume_is_refused_naming_it(tmp_path):
    """onecycle → cosine failed with "KeyError: 'lr_lambdas'", none → cosine with a
    FileNotFoundError (exit 1), cosine → onecycle loaded one state into the other and went
    on at its step, step → epoch intervals counted steps as epochs, and onecycle → none
    kept onecycle's last rate, all without a word: each is refused naming the key."""
    from conftest import ROOT, run_cli

    debug = str(ROOT / "configs" / "debug.yaml")
    first = ["logging.num_samples=0", "trainer.max_epochs=1"]
    for name in ("onecycle", "none", "cosine"):
        run_cli("train", debug, *first, f"trainer.output_dir=runs/{name}",
                f"model.schedule.name={name}", cwd=tmp_path, check=True)  # fmt: skip
    resume = ["logging.num_samples=0", "trainer.max_epochs=2", "--resume", "auto"]
    for name, change, said in [
        ("onecycle", ["model.schedule.name=cosine"], "model.schedule.name onecycle (the "
         "checkpoint's) → cosine"),
        ("none", ["model.schedule.name=cosine"], "model.schedule.name none (the checkpoint's) → "
         "cosine"),
        ("cosine", ["model.schedule.name=onecycle"], "model.schedule.name cosine (the "
         "checkpoint's) → onecycle"),
        ("cosine", ["model.schedule.name=none"], "model.schedule.name cosine (the checkpoint's) "
         "→ none"),
        ("cosine", ["model.schedule.name=cosine", "model.schedule.interval=epoch",
                    "model.schedule.total_steps=16"],
         "model.schedule.interval step (the checkpoint's) → epoch"),
    ]:  # fmt: skip
        proc = run_cli("train", debug, *resume, f"trainer.output_dir=runs/{name}", *change,
                       cwd=tmp_path)  # fmt: skip
        assert proc.returncode == 2, (name, change, proc.stderr[-2000:])
        assert said in proc.stderr, (name, change, proc.stderr[-2000:])
        # the reason given is the schedule's; an epoch's end would not help (it said so)
        assert "restores the lr scheduler's state" in proc.stderr
        assert "epoch's end" not in proc.stderr and "shuffle buffer" not in proc.stderr


def test_a_scheduler_of_another_kind_from_python_is_refused_naming_both(tmp_path):
    """From Python (no config to compare): a StepLR's state loaded into a LambdaLR failed
    with a bare KeyError; a module that dropped its scheduler kept the last rate unsaid."""
    from helpers import TinyModule, loader

    from stpdist import Trainer
    from stpdist.errors import InputError

    class Lambda(TinyModule):
        def configure_lr_scheduler(self, optimizer):
            return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)

    class Without(TinyModule):
        def configure_lr_scheduler(self, optimizer):
            return None

    Trainer(max_epochs=1, output_dir=tmp_path, progress_bar=False).fit(TinyModule(), loader(16))
    with pytest.raises(InputError, match=r"holds another kind of lr scheduler's state than "
                                         r"the module's LambdaLR \(KeyError"):  # fmt: skip
        Trainer(max_epochs=2, output_dir=tmp_path, progress_bar=False).fit(
            Lambda(), loader(16), resume="auto"
        )
