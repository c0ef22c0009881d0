"""What the commands print, read as a user reads a terminal or a SLURM log file: a warning
about the config once per command (not once per rank, not once per build), a user's error
in one line from one rank, no progress-bar redraws in a log file."""

from __future__ import annotations

import subprocess
import sys
import tarfile
from pathlib import Path

import yaml
from conftest import launcher, run_cli, run_ranks

TAU = {
    "trainer": {"output_dir": "run", "max_epochs": 1, "checkpoint": {"every_epoch": True}},
    "data": {
        "root": "digits",
        "batch_size": 2,
        "num_input_frames": 2,
        "num_output_frames": 1,
        "synthesize": {
            "root": "elsewhere",  # not data.root: only --synthesize generates into it
            "train": 4,
            "val": 4,
            "test": 4,
            "num_frames": 3,
            "image_size": 8,
            "digit_size": 4,
        },
    },
    "logging": {"num_samples": 0},
    "model": {
        "name": "tau",
        "backbone": {
            "spatial_channels": 2,
            "temporal_channels": 4,
            "num_spatial_blocks": 1,
            "num_translator_blocks": 2,
        },
        "divergence_weight": 0.1,  # with 1 output frame: no effect, said
    },
}
NO_EFFECT = "model.divergence_weight 0.1 has no effect"


def config(folder: Path) -> str:
    path = folder / "tau.yaml"
    path.write_text(yaml.safe_dump(TAU))
    return str(path)


def ranks(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """`stpdist ARGS` on 2 ranks over gloo; the exit status is the caller's to check."""
    cmd = [*launcher(2), "--no-python", sys.executable, "-m", "stpdist", *args]
    env = {**__import__("os").environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_a_config_warning_is_said_once_a_command_on_two_ranks(tmp_path):
    """TAU's divergence that cannot act: said by each rank, and twice more by the main
    one with --synthesize (the model checked before generating), again at validate; the
    Trainer's warnings about its config likewise."""
    cfg = config(tmp_path)
    argv = ["--no-python", sys.executable, "-m", "stpdist"]
    unused = "trainer.compile_mode=max-autotune"  # the Trainer's own: said on each rank too
    trained = run_ranks([*argv, "train", cfg, "--synthesize", unused], 2, cwd=tmp_path)
    assert trained.stderr.count(NO_EFFECT) == 1, trained.stderr
    assert trained.stderr.count("'max-autotune' has no effect") == 1, trained.stderr
    validated = run_ranks([*argv, "validate", cfg], 2, cwd=tmp_path)
    assert validated.stderr.count(NO_EFFECT) == 1, validated.stderr


def test_a_config_error_is_one_line_from_one_rank(tmp_path):
    proc = ranks("train", config(tmp_path), "model.nosuch=1", cwd=tmp_path)
    assert proc.returncode != 0
    said = [line for line in proc.stderr.splitlines() if line.startswith("stpdist:")]
    assert said == [said[0]] and "unknown key 'model.nosuch'" in said[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_an_input_error_before_the_ranks_join_is_said_once(tmp_path):
    proc = ranks("train", config(tmp_path), "--resume", str(tmp_path / "none"), cwd=tmp_path)
    assert proc.returncode != 0
    said = [line for line in proc.stderr.splitlines() if line.startswith("stpdist:")]
    assert len(said) == 1 and "--resume" in said[0], proc.stderr


def test_a_config_error_under_torchrun_is_said_by_the_main_rank_every_time(tmp_path):
    """The main rank closed its Trainers before it said the error; the other rank, silent,
    exited at once, and torchrun ended the main one first: no line at all, only torchrun's
    report (3 runs in 8). Each rank runs the CLI until the config is read (well under a
    second), so the race was there at every run; now the line comes first."""
    cmd = [*launcher(2, torchrun=True), "--no-python", sys.executable, "-m", "stpdist",
           "train", config(tmp_path), "trainer.max_epochs=-3"]  # fmt: skip
    env = {**__import__("os").environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    said = [line for line in proc.stderr.splitlines() if line.startswith("stpdist: config error")]
    assert len(said) == 1 and "trainer.max_epochs" in said[0], proc.stderr[-3000:]


def test_an_unknown_checkpoint_on_two_ranks_is_said_once(tmp_path):
    """The main rank's choice, sent to every rank, failed alike on each: once per rank."""
    run_cli("train", config(tmp_path), "--synthesize", cwd=tmp_path, check=True)
    proc = ranks("validate", config(tmp_path), "--ckpt", "step-99", cwd=tmp_path)
    assert proc.returncode != 0
    said = [line for line in proc.stderr.splitlines() if line.startswith("stpdist:")]
    assert len(said) == 1 and "no checkpoint 'step-99'" in said[0], proc.stderr[-3000:]


def test_no_progress_bar_redraws_in_a_log_file(tmp_path):
    """stderr not a terminal (a SLURM log): tqdm's bar redrew itself ten times a second
    into the file; the trainer's bar was already off there, the data writers' were not."""
    out = tmp_path / "digits"
    proc = run_cli(
        "synth", "moving-digits", "--out", str(out), "--train", "64", "--val", "8",
        "--test", "8", "--frames", "3", "--size", "8", "--digit-size", "4", "--workers", "1",
        cwd=tmp_path, check=True,
    )  # fmt: skip
    assert "\r" not in proc.stderr and "item/s" not in proc.stderr, proc.stderr
    assert f"wrote moving digits to {out}" in proc.stdout
    trained = run_cli("train", config(tmp_path), "--synthesize", cwd=tmp_path, check=True)
    assert "\r" not in trained.stderr and "item/s" not in trained.stderr, trained.stderr
    assert trained.stderr.count(NO_EFFECT) == 1, trained.stderr


def test_one_process_commands_run_once_on_two_ranks(tmp_path):
    """synth, inspect, export under torchrun: each rank did the work: lines printed twice,
    and the second writer failed on the folder the first had filled (exit 1)."""
    synth = ranks(
        "synth", "moving-digits", "--out", "digits", "--train", "4", "--val", "4",
        "--test", "4", "--frames", "3", "--size", "8", "--digit-size", "4", cwd=tmp_path,
    )  # fmt: skip
    assert synth.returncode == 0, synth.stderr[-3000:]
    assert synth.stdout.count("wrote moving digits") == 1, synth.stdout
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no staging left
    shown = ranks("inspect", "digits", "--out", "pics", cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr[-3000:]
    assert shown.stdout.count("rendered") == 3, shown.stdout  # one line a split


def test_a_failed_run_ends_its_wandb_run_itself(tmp_path):
    """A run that fails mid-training (a validation sample damaged inside its shard: the
    counts checked before the first step pass) left its wandb run to wandb's exit hook:
    colour codes on stdout (a log file's too), and no `wandb sync` line of stpdist's for
    the offline run. The error line stays the last line."""
    from stpdist.data.synthetic import write_moving_digits

    settings = {"num_frames": 3, "image_size": 8, "digit_size": 4}
    write_moving_digits(tmp_path / "digits", {"train": 4, "val": 4}, **settings, progress=False)
    (shard,) = (tmp_path / "digits" / "val").glob("*.tar")
    with tarfile.open(shard) as tar:
        first = tar.getmembers()[0].offset_data  # the first sample's frames (.npy)
    data = bytearray(shard.read_bytes())
    data[first : first + 6] = b"GARBAG"  # its .npy magic; every header intact
    shard.write_bytes(bytes(data))
    cmd = [sys.executable, "-m", "stpdist", "train", config(tmp_path), "logging.trackers=[wandb]"]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]  # after wandb's summary, not amid it
    assert last.startswith("stpdist: error: ") and "val-000000.tar" in last, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    assert "\x1b[" not in proc.stdout + proc.stderr, proc.stdout[-2000:]
    assert "; upload it with: wandb sync " in proc.stdout, proc.stdout[-2000:]


class _Recorder:
    """A stream that keeps each write apart."""

    def __init__(self, writes: list[str]) -> None:
        self.writes = writes

    def write(self, text: str) -> int:
        self.writes.append(text)
        return len(text)

    def flush(self) -> None:
        pass


def test_a_log_record_is_one_write_with_its_newline(monkeypatch):
    """Under `python -u` (PYTHONUNBUFFERED, which SLURM jobs often set) each write is a
    syscall of its own: a record written as its text and then its newline let the ranks
    sharing one log put one rank's line inside another's ("a line: …a line: …" and then
    two newlines, as a CI run read)."""
    import logging

    from stpdist.console import _TqdmHandler

    writes: list[str] = []

    for stream in ("stdout", "stderr"):
        monkeypatch.setattr(sys, stream, _Recorder(writes))
    handler = _TqdmHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    for level, text in ((logging.INFO, "a result"), (logging.WARNING, "a warning")):
        handler.emit(logging.LogRecord("stpdist", level, __file__, 1, text, None, None))
    assert [w for w in writes if w] == ["a result\n", "a warning\n"]


def test_an_error_line_is_one_write_with_its_newline(tmp_path, monkeypatch):
    """Every rank may say its own error ("stpdist: error: …"): `print` wrote the text and
    its newline apart, so under `python -u` two ranks' errors could share a line."""
    from stpdist.cli import main

    writes: list[str] = []

    monkeypatch.setattr(sys, "stderr", _Recorder(writes))
    assert main(["inspect", str(tmp_path / "no-such-folder")]) == 2
    said = [w for w in writes if w]
    assert len(said) == 1 and said[0].startswith("stpdist: error: "), said
    assert said[0].endswith("\n") and said[0].count("\n") == 1


_SIBLINGS = """
import subprocess, sys
# a sibling that ends when its stdin closes: after the waiter has looked at its siblings
sibling = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"],
                           stdin=subprocess.PIPE)
waiter = subprocess.Popen([sys.executable, "-c", f'''
import time
from stpdist import cli
cli.SILENT_RANK_WAIT_S = {sys.argv[1]}
first = cli._sibling_pids
def looked():  # the siblings seen at the start: then the test may end one
    cli._sibling_pids = first
    found = first()
    print("looked", flush=True)
    return found
cli._sibling_pids = looked
start = time.monotonic()
cli._wait_for_the_speaker()
print(time.monotonic() - start, flush=True)
'''], stdout=subprocess.PIPE, text=True)
assert waiter.stdout.readline() == "looked\\n"
if sys.argv[2] == "ends":
    sibling.stdin.close()  # it ends; a zombie, not waited for, until the waiter is done
print(waiter.stdout.read().strip())
waiter.wait()
sibling.kill()
sibling.wait()
"""


def test_a_silent_rank_waits_until_a_rank_beside_it_has_ended():
    """A rank that leaves a refusal to the main process waited a fixed 2 s before exiting
    (so that the launcher, which ends every rank once one exits, left the main process the
    moment to say it): now it exits once another child of its launcher has ended, an
    unreaped one (a zombie) included, and waits the whole time while they all run."""
    import os

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("STPDIST_TEST_FORK_SERVER", None)  # the parent and children are the test's

    def waited(ceiling: float, sibling: str) -> float:
        proc = subprocess.run([sys.executable, "-c", _SIBLINGS, str(ceiling), sibling],
                              capture_output=True, text=True, timeout=180, env=env)  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        return float(proc.stdout.split()[-1])

    assert waited(60, "ends") < 30  # not the 60 s ceiling
    assert waited(1, "runs") >= 1
