"""Defects a chaos campaign (SIGKILL at many points, full disks) reproduced, each a test that
failed before its fix: a full disk or read-only folder anywhere in a command is one line
naming the path; a checkpoint's disk-full line is clean and says KiB below 1 MiB; a model
folder whose replacement a kill interrupted is put right by the next reader (forecast,
`stpdist.load`) and by the next writer before it checks `--out`; a backbone's refusal of a
hyper-parameter is a config error naming `model.backbone` (exit 2); a lost gloo peer is
said as another rank's stop."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, run_cli

DEBUG = str(ROOT / "configs" / "debug.yaml")
TINY = (
    "data.root=digits",
    "data.synthesize=null",
    "model.patch_size=2",
    "trainer.max_epochs=null",
    "trainer.max_steps=2",
    "trainer.checkpoint.every_n_steps=2",
    "trainer.val_every_n_steps=2",
)


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """A folder with tiny moving digits (`digits`, 1×16×16), the debug config trained for 2
    steps on them (`run`), that run exported (`model`) and two input arrays (`inputs.npy`)."""
    root = tmp_path_factory.mktemp("chaos")
    run_cli("synth", "moving-digits", "--out", "digits", "--train", "8", "--val", "4",
            "--test", "4", "--frames", "8", "--size", "16", "--digit-size", "8",
            "--workers", "1", cwd=root, check=True)  # fmt: skip
    run_cli("train", DEBUG, *TINY, "trainer.output_dir=run", cwd=root, check=True)
    run_cli("export", "run", "--out", "model", cwd=root, check=True)
    rng = np.random.default_rng(0)
    np.save(root / "inputs.npy", (rng.random((2, 4, 1, 16, 16)) * 255).astype(np.float32))
    return root


def one_error(proc, code: int) -> str:
    """The one `stpdist:` line of a failed command (and nothing else on stderr)."""
    lines = [line for line in proc.stderr.strip().splitlines() if line]
    assert proc.returncode == code, (proc.returncode, proc.stderr[-3000:])
    assert len(lines) == 1 and lines[0].startswith("stpdist: "), proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    return lines[0]


def hidden(parent: Path, name: str) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith(f".{name}."))


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


# ------------------------------------------------------------ 3: a full disk anywhere
def test_a_full_disk_while_train_writes_its_config_is_one_line_naming_the_file(base, tmp_path):
    """A real ENOSPC (the kernel's, from /dev/full) where `train` writes the run's
    config.yaml at its start (`replace_text`): the chaos run printed `OSError: [Errno 28] No
    space left on device`, naming nothing. Now one line names config.yaml and the free
    space, exit 1, and no file set aside stays behind."""
    shutil.copytree(base / "digits", tmp_path / "digits")
    run = tmp_path / "run"
    run.mkdir()
    (run / ".config.yaml.tmp").symlink_to("/dev/full")  # what replace_text writes first
    proc = run_cli("train", DEBUG, *TINY, "trainer.output_dir=run", cwd=tmp_path)
    line = one_error(proc, 1)
    assert ": error: run/config.yaml: No space left on device (" in line, line
    assert "free there)" in line and "Errno" not in line and "OSError" not in line
    assert not (run / ".config.yaml.tmp").exists() and not (run / "config.yaml").exists()


def test_a_run_folder_in_use_exits_75_and_a_retry_after_it_ended_goes_on(base, tmp_path):
    """`train --resume auto` into a folder a live run holds: one line naming the holder,
    exit 75 ("again later", as a stop with a checkpoint), not 2 (a bad config), and the
    folder untouched; once the holder let go, the same command resumes."""
    from stpdist.runlock import RunLock

    shutil.copytree(base / "digits", tmp_path / "digits")
    shutil.copytree(base / "run", tmp_path / "run")
    before = (tmp_path / "run" / "metrics.jsonl").read_bytes()
    command = ("train", DEBUG, *TINY, "trainer.output_dir=run", "trainer.max_steps=4",
               "--resume", "auto")  # fmt: skip
    with RunLock(tmp_path / "run"):
        refused = run_cli(*command, cwd=tmp_path)
    line = one_error(refused, 75)
    assert "run is in use by another run (host " in line and f"pid {os.getpid()}," in line
    assert (tmp_path / "run" / "metrics.jsonl").read_bytes() == before
    run_cli(*command, cwd=tmp_path, check=True)
    assert (tmp_path / "run" / "checkpoints" / "step-00000004").is_dir()


def test_a_write_error_without_a_file_name_names_the_file_replace_text_wrote(tmp_path):
    """A write or fsync error carries no file name: replace_text's names its file."""
    import errno

    from stpdist.checkpoint import replace_text

    (tmp_path / ".notes.txt.tmp").symlink_to("/dev/full")
    with pytest.raises(OSError) as caught:
        replace_text(tmp_path / "notes.txt", "x" * 10000)
    assert caught.value.errno == errno.ENOSPC
    assert caught.value.filename == str(tmp_path / "notes.txt")
    assert not (tmp_path / ".notes.txt.tmp").exists() and not (tmp_path / "notes.txt").exists()


FILL = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    import torch
    import stpdist.checkpoint as ckpt
    from stpdist.config import CheckpointConfig

    class Acc:  # what CheckpointManager.save asks of accelerate, in one process
        is_main_process = True
        process_index = 0
        num_processes = 1
        scaler = None
        def wait_for_everyone(self):
            pass
        def unwrap_model(self, model):
            return model
        def get_state_dict(self, model):
            return model.state_dict()

    manager = ckpt.CheckpointManager(Path(sys.argv[1]), CheckpointConfig(keep_last=2))
    model = torch.nn.Linear(300, 300)  # 360 KB of weights, twice that of Adam state
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.ones(1, 300)).sum().backward()
    optimizer.step()
    try:
        manager.save(Acc(), model, optimizer, None, ckpt.TrainState(global_step=1))
    except ckpt.CheckpointError as exc:
        print("ERROR", exc)
    """
)


def test_a_checkpoint_on_a_full_disk_is_one_clean_line_in_kib(tmp_path):
    """A 1 MiB tmpfs (a private mount namespace: nothing on the machine changes) filled to
    ~440 KiB free: the weights fit, torch's optimizer.pt does not. The chaos line said "(0
    MiB free there)" and carried torch's `[enforce fail at inline_container.cc:672] .
    unexpected pos A vs B`; now KiB below 1 MiB and a plain cause."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare for a private tmpfs")
    small = tmp_path / "small"
    small.mkdir()
    (tmp_path / "fill.py").write_text(FILL)
    command = (
        f"mount -t tmpfs -o size=1m tmpfs {small} && head -c 600000 /dev/zero > {small}/filler"
        f" && {sys.executable} {tmp_path / 'fill.py'} {small}"
    )
    proc = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", command],
        capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    if "mount" in proc.stderr and "ERROR" not in proc.stdout:
        pytest.skip(f"no private tmpfs here: {proc.stderr.strip()[:200]}")
    lines = [line for line in proc.stdout.splitlines() if line.startswith("ERROR")]
    assert len(lines) == 1, proc.stdout + proc.stderr[-2000:]
    assert f"cannot write checkpoint .tmp-step-00000001 in {small} (" in lines[0]
    assert " KiB free there): " in lines[0] and "0 MiB" not in lines[0], lines[0]
    assert "enforce fail" not in lines[0] and "unexpected pos" not in lines[0], lines[0]
    cause = lines[0].split("): ", 1)[1]
    assert "disk or the quota is full" in cause or "No space left" in cause, lines[0]


# ------------------------------------------------------------ 4, 5: interrupted model swaps
KILL_AT_RENAME = textwrap.dedent(
    """
    import os, signal, sys
    from stpdist.cli import main

    out, which = os.path.abspath(sys.argv[1]), sys.argv[2]
    rename = os.rename

    def dying_rename(src, dst, *args, **kwargs):
        # "aside": the rename that moves the old `out` away (2nd); "in": the one that puts
        # the new folder in its place (3rd)
        if os.path.abspath(src if which == "aside" else dst) == out:
            os.kill(os.getpid(), signal.SIGKILL)
        return rename(src, dst, *args, **kwargs)

    os.rename = dying_rename
    sys.exit(main(sys.argv[3:]))
    """
)


def kill_export_at(base: Path, folder: Path, which: str) -> None:
    """A real `stpdist export --overwrite` of the run into `folder` (already a model folder),
    SIGKILLed at one of the swap's renames."""
    script = folder.parent / "kill.py"
    script.write_text(KILL_AT_RENAME)
    proc = subprocess.run(
        [sys.executable, str(script), str(folder), which, "export", str(base / "run"),
         "--out", str(folder), "--overwrite", "--ckpt", "last"],
        capture_output=True, text=True, timeout=120, cwd=folder.parent,
        env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]


def test_forecast_and_load_finish_a_model_swap_a_kill_interrupted(base, tmp_path):
    """`export --overwrite` killed at its 3rd rename leaves no `m`, only `.m.old-…` and
    `.m.ready-…`: `forecast` refused the folder as "neither a model folder nor a run folder"
    (exit 2) until another export came. Now the reader finishes the swap, saying so in words
    that fit a model folder, and forecasts; `stpdist.load` does the same."""
    import stpdist

    for name in ("w3", "w4"):
        (tmp_path / name).mkdir()
        shutil.copytree(base / "model", tmp_path / name / "m")
        kill_export_at(base, tmp_path / name / "m", "in")
        assert not (tmp_path / name / "m").exists() and len(hidden(tmp_path / name, "m")) == 2
    proc = run_cli("forecast", "w3/m", str(base / "inputs.npy"), "--out", "fc", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    said = [line for line in proc.stderr.splitlines() if "was interrupted" in line]
    assert len(said) == 1 and "finished the replacement with the complete new version" in said[0], (
        proc.stderr
    )
    assert "dataset" not in said[0]
    assert (
        hidden(tmp_path / "w3", "m") == []
        and (tmp_path / "w3" / "m" / "model.safetensors").is_file()
    )
    assert len(list((tmp_path / "fc").glob("predictions-r*.npz"))) == 1
    module = stpdist.load(tmp_path / "w4" / "m")
    assert module.frame_shape == (1, 16, 16) and hidden(tmp_path / "w4", "m") == []


def test_export_recovers_an_interrupted_swap_before_refusing_a_used_out(base, tmp_path):
    """`export --overwrite` killed at the 2nd rename (before the swap): `m` is intact and a
    complete `.m.ready-…` copy lies beside it. Rerun without `--overwrite`, export refused
    "not empty" before recovery ran and left that copy silently; now (as `shard`) it first
    deletes the copy, saying so, then refuses."""
    (tmp_path / "w2").mkdir()
    shutil.copytree(base / "model", tmp_path / "w2" / "m")
    kill_export_at(base, tmp_path / "w2" / "m", "aside")
    assert [n.split("-")[0] for n in hidden(tmp_path / "w2", "m")] == [".m.ready"]
    proc = run_cli("export", str(base / "run"), "--out", "w2/m", cwd=tmp_path)
    assert proc.returncode == 2 and "--overwrite" in proc.stderr.splitlines()[-1], proc.stderr
    said = [line for line in proc.stderr.splitlines() if "was interrupted" in line]
    assert len(said) == 1 and "never swapped in" in said[0], proc.stderr
    assert hidden(tmp_path / "w2", "m") == []
    assert (tmp_path / "w2" / "m" / "model.safetensors").is_file()


def test_forecast_out_recovers_before_it_refuses_a_used_out(base, tmp_path):
    """The same for `forecast --out`: a leftover `.fc.ready-…` (its process dead) beside a
    used `fc` is deleted, with a line, before `fc` is refused without `--overwrite`."""
    from stpdist.data.staging import _host

    fc = tmp_path / "fc"
    fc.mkdir()
    (fc / "predictions-r000-000000.npz").write_bytes(b"earlier")
    ready = tmp_path / f".fc.ready-{_host()}-{dead_pid()}"
    ready.mkdir()
    (ready / "predictions-r000-000000.npz").write_bytes(b"newer")
    proc = run_cli("forecast", str(base / "model"), str(base / "inputs.npy"), "--out", "fc",
                   cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 2 and "--overwrite" in proc.stderr.splitlines()[-1], proc.stderr
    assert "never swapped in" in proc.stderr and not ready.exists()
    assert (fc / "predictions-r000-000000.npz").read_bytes() == b"earlier"


# ------------------------------------------------------------ 6: a backbone's refusal
@pytest.mark.parametrize(
    ("model", "key"),
    [
        ("{name: simvp, backbone: {spatial_channels: 4, temporal_channels: 8, "
         "num_spatial_blocks: 1, num_translator_blocks: 1}}",
         "'model.backbone' (num_spatial_blocks, num_translator_blocks) of simvp"),
        ("{name: convlstm, backbone: {hidden_channels: []}}",
         "'model.backbone.hidden_channels' of convlstm"),
        ("{name: predformer, backbone: {patch_size: 4, embed_dim: 30, num_heads: 4, "
         "num_groups: 1}}", "'model.backbone' (embed_dim, num_heads) of predformer"),
    ],
)  # fmt: skip
def test_a_backbone_refusing_a_hyper_parameter_is_a_config_error(base, tmp_path, model, key):
    """`num_translator_blocks: 1` (SimVP) was `stpdist: error: ValueError: …`, exit 1; a
    backbone constructor's refusal is now a config error naming `model.backbone` (and the
    keys the message names), exit 2, before any step or checkpoint."""
    shutil.copytree(base / "digits", tmp_path / "digits")
    (tmp_path / "cfg.yaml").write_text(
        "trainer: {output_dir: run, max_steps: 2, progress_bar: false}\n"
        "data: {root: digits, batch_size: 4, num_input_frames: 4, num_output_frames: 4}\n"
        f"model: {model}\n"
    )
    proc = run_cli("train", "cfg.yaml", cwd=tmp_path)
    line = one_error(proc, 2)
    assert line.startswith(f"stpdist: config error: {key}: "), line
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_genuine_error_inside_a_backbone_constructor_keeps_its_type(tmp_path):
    """Only a backbone's own `raise` is a config error: a TypeError that torch raises
    while the backbone builds its layers (here a layer size that is a float, as a bug in a
    backbone would make) stays the TypeError it is, traceback and all."""
    from stpdist import build
    from stpdist.config import ConfigError, load_config

    code = tmp_path / "buggy_backbone.py"
    code.write_text(textwrap.dedent(
        """
        import dataclasses
        from torch import nn

        class Net(nn.Module):
            @dataclasses.dataclass
            class Args:
                width: int = 4

            def __init__(self, spec, args):
                super().__init__()
                self.conv = nn.Conv2d(spec.channels, args.width / 2, 3)  # the bug: a float
        """
    ))  # fmt: skip
    sys.path.insert(0, str(tmp_path))
    try:
        cfg = load_config(DEBUG, ["model.name=buggy_backbone:Net", "model.backbone={}"])
        with pytest.raises(TypeError) as caught:
            build.build_module(cfg, (1, 16, 16))
        assert not isinstance(caught.value, ConfigError)
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("buggy_backbone", None)


# ------------------------------------------------------------ 7: a lost peer rank
PEER = textwrap.dedent(
    """
    import os, sys
    import torch
    import torch.distributed as dist
    import stpdist.cli as cli

    rank = int(sys.argv[1])
    dist.init_process_group("gloo", init_method="file://" + sys.argv[2], rank=rank, world_size=2)
    dist.barrier()
    if rank == 1:
        os._exit(9)  # a rank that dies (killed, crashed) without a word

    def step(args):  # stands in for `train`'s work: a collective the dead rank never joins
        dist.all_reduce(torch.ones(1))

    cli.cmd_train = step  # what `stpdist train` runs, looked up when main builds its parser
    sys.exit(cli.main(["train", "unused.yaml"]))
    """
)


def test_a_lost_peer_rank_is_said_as_such(tmp_path):
    """Two real gloo ranks; rank 1 exits mid-run. The survivor's error, through the CLI's
    `main` (gloo's "[…/pair.cc:N] Connection closed (or reset) by peer … remote worker
    crashing"), becomes one stpdist line saying another rank stopped and how to go on."""
    script = tmp_path / "peer.py"
    script.write_text(PEER)
    store = tmp_path / "store"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen([sys.executable, str(script), str(rank), str(store)], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for rank in (0, 1)
    ]  # fmt: skip
    try:
        out, err = procs[0].communicate(timeout=120)
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
    lines = [line for line in err.splitlines() if line.startswith("stpdist:")]
    assert procs[0].returncode == 1 and len(lines) == 1, err[-3000:]
    assert lines[0].startswith(
        "stpdist: error: another rank of this run stopped (crashed or killed): see its output; "
        "resume with --resume auto (RuntimeError: "
    ), lines[0]
    assert "pair.cc" not in lines[0] and "by peer" in lines[0], lines[0]


def test_a_reset_connection_in_one_process_is_not_called_a_lost_rank(monkeypatch):
    """The lost-peer line matched the text alone: a single-process command that met a
    reset socket was told another rank of its run had stopped."""
    from stpdist.cli import _environment_error

    reset = ConnectionResetError(104, "Connection reset by peer")
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert _environment_error(reset, "forecast") is None
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert _environment_error(reset, "train").startswith("another rank of this run stopped")


def test_a_backbone_refusal_comes_before_the_dataset_is_generated(tmp_path):
    """With `data.synthesize`, a backbone's refusal of its arguments came after the digits
    were generated (minutes at the recipes' sizes); it now comes first, and nothing is
    written."""
    (tmp_path / "cfg.yaml").write_text(
        "trainer: {output_dir: run, max_steps: 2, progress_bar: false}\n"
        "data: {root: digits, batch_size: 4, num_input_frames: 4, num_output_frames: 4,\n"
        "       synthesize: {root: digits, train: 8, val: 4, test: 4, num_frames: 8,\n"
        "                    image_size: 32}}\n"
        "model: {name: convlstm, backbone: {hidden_channels: []}}\n"
    )
    proc = run_cli("train", "cfg.yaml", cwd=tmp_path)
    line = one_error(proc, 2)
    assert line.startswith("stpdist: config error: 'model.backbone.hidden_channels' of convlstm")
    assert "generating" not in proc.stdout + proc.stderr
    assert not (tmp_path / "digits").exists() and not (tmp_path / "run" / "checkpoints").exists()
