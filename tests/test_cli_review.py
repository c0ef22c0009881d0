"""The command line flag by flag (review R20): a bad value is one line naming the flag and
the value, exit 2, with nothing written; an output folder never replaces a dataset, the
working folder or the config the command reads, even with --overwrite.

Every run is the CLI's `main` in this process (`run_cli`); one tiny training (1 step of a
2-channel ConvLSTM on 8×8 frames) gives predict, forecast and export a run to read."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_cli
from safetensors.torch import save_file

from stpdist.config import ConfigError, load_config
from stpdist.data.synthetic import write_moving_digits
from stpdist.errors import InputError
from stpdist.inference import check_output_folder

TINY = """\
trainer: {output_dir: run, max_steps: 1, max_epochs: null, progress_bar: false}
data: {root: ds, batch_size: 2, num_input_frames: 2, num_output_frames: 2, shuffle_buffer: 2}
logging: {num_samples: 0}
model: {name: convlstm, backbone: {hidden_channels: [2], kernel_size: 1}, patch_size: 2}
"""


def error(proc) -> str:
    """The one line a refused command prints (exit 2, no traceback, no usage block)."""
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    return lines[0]


def tree(folder: Path) -> dict[str, int]:
    """Every file under `folder` with its size: what a refused command must leave as it was."""
    return {str(p.relative_to(folder)): p.stat().st_size for p in folder.rglob("*")}


def dataset(folder: Path) -> Path:
    write_moving_digits(
        folder,
        {"train": 4, "val": 0, "test": 2},
        num_frames=4,
        image_size=8,
        digit_size=4,
        progress=False,
    )
    return folder


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A folder with a dataset `ds`, the config `c.yaml` and its run `run` (1 step)."""
    folder = tmp_path_factory.mktemp("trained")
    dataset(folder / "ds")
    (folder / "c.yaml").write_text(TINY)
    run_cli("train", "c.yaml", cwd=folder, check=True)
    return folder


# ------------------------------------------------------------------ argparse's errors
def test_flag_errors_are_one_line_naming_flag_and_value(tmp_path):
    line = error(run_cli("synth", "moving-digits", "--out", "s", "--workers", "0", cwd=tmp_path))
    assert "argument --workers: '0'" in line and "`stpdist synth --help`" in line
    line = error(run_cli("forecast", "m", "x.npy", "--out", "f", "--batch-size", "0", cwd=tmp_path))
    assert "argument --batch-size: '0': expected a positive integer" in line
    line = error(
        run_cli("forecast", "m", "x.npy", "--out", "f", "--colormap", "viridus", cwd=tmp_path)
    )
    assert "argument --colormap: 'viridus': expected a matplotlib colormap" in line
    line = error(run_cli("forecast", "m", "x.npy", "--out", "", cwd=tmp_path))
    assert "argument --out: '': expected a non-empty value" in line
    line = error(run_cli("bench", "data", "d", "--loader-workers", "0,100000", cwd=tmp_path))
    assert "'0,100000'" in line and "each at most 1024" in line
    assert not any(tmp_path.iterdir())


def test_worker_counts_are_bounded_before_a_pool_forks(tmp_path):
    """`--workers 100000` started 100000 processes at once (killed by the kernel); -1 and 0
    passed silently as 1. The source does not exist: the flag is refused before it is read."""
    for value in ("-1", "0", "100000"):
        line = error(
            run_cli("shard", "arrays", "nosuch", "--out", "o", "--workers", value, cwd=tmp_path)
        )
        assert f"argument --workers: '{value}': expected an integer in [1, 1024]" in line
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize(
    "flag, value, most",
    [("--frames", "1001", 1000), ("--num-digits", "101", 100), ("--size", "4097", 4096)],
)
def test_synth_flags_have_the_bounds_of_data_synthesize(tmp_path, flag, value, most):
    args = ["synth", "moving-digits", "--out", "s", "--train", "1", "--val", "0", "--test", "0"]
    size = [] if flag == "--size" else ["--size", "8"]
    line = error(
        run_cli(*args, *size, "--digit-size", "4", "--workers", "1", flag, value, cwd=tmp_path)
    )
    assert f"{flag} {value}: expected at most {most}" in line
    assert not (tmp_path / "s").exists()


# ------------------------------------------------------------------ output folders
def test_an_output_folder_is_never_a_dataset_or_the_working_folder(tmp_path, monkeypatch):
    """forecast/export/predict/import replace --out as a whole: with --overwrite a dataset
    root or split was deleted, and `--out .` staged inside itself and failed half-way."""
    ds = dataset(tmp_path / "ds")
    for out in (ds, ds / "test", ds / "test" / "deeper"):
        with pytest.raises(InputError, match="dataset split .*even --overwrite"):
            check_output_folder(out, overwrite=True)
    work = tmp_path / "work" / "inner"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    for out in (".", "..", str(work)):
        with pytest.raises(InputError, match="is the current folder or holds it"):
            check_output_folder(out, overwrite=True)
    # a model folder keeps its data's index.json: replacing it is an ordinary --overwrite
    model = tmp_path / "model"
    model.mkdir()
    save_file({"w": torch.zeros(1)}, str(model / "model.safetensors"))
    (model / "index.json").write_text("{}")
    assert check_output_folder(model, overwrite=True) == model


def test_synth_and_shard_into_the_working_folder_are_refused_before_any_work(tmp_path):
    """`synth --out .` generated the data, then refused its own staging folder (`.` has
    no name, so it was staged inside the output); `shard` alike."""
    work = tmp_path / "work"
    work.mkdir()
    np.save(tmp_path / "seq.npy", np.zeros((4, 8, 8), np.uint8))
    for command in (
        ["synth", "moving-digits", "--train", "2", "--val", "1", "--test", "1", "--frames",
         "2", "--size", "8", "--digit-size", "4", "--out", "."],
        ["shard", "arrays", str(tmp_path / "seq.npy"), "--out", "."],
    ):  # fmt: skip
        line = error(run_cli(*command, cwd=work))
        assert "is the current folder or holds it" in line, line
        assert not any(work.iterdir())


def test_export_and_forecast_keep_a_dataset_even_with_overwrite(trained, tmp_path):
    """Before: `export run --out ds --overwrite` and `forecast … --out ds --overwrite`
    replaced the whole dataset with a model folder or forecasts."""
    ds = trained / "ds"
    before = tree(ds)
    line = error(run_cli("export", "run", "--out", "ds", "--overwrite", cwd=trained))
    assert "--out ds is or holds the dataset split" in line
    np.save(tmp_path / "in.npy", np.zeros((1, 2, 1, 8, 8), np.uint8))
    inputs = str(tmp_path / "in.npy")
    proc = run_cli("forecast", "run", inputs, "--out", "ds/test", "--overwrite", cwd=trained)
    assert "--out ds/test is or holds the dataset split" in error(proc)
    assert tree(ds) == before


def test_predict_never_replaces_the_folder_holding_its_config(trained):
    conf = trained / "conf"
    conf.mkdir()
    (conf / "c.yaml").write_text(TINY)
    line = error(run_cli("predict", "conf/c.yaml", "--out", "conf", "--overwrite", cwd=trained))
    assert "--out conf is or holds conf/c.yaml, which this command reads" in line
    assert sorted(p.name for p in conf.iterdir()) == ["c.yaml"]


def test_train_output_dir_is_checked_before_any_data_work(tmp_path):
    """Before: a file as output_dir failed after the data were read (exit 1, 'FileExistsError'),
    and the dataset root or a split folder took the run's checkpoints and logs."""
    ds = dataset(tmp_path / "ds")
    (tmp_path / "c.yaml").write_text(TINY)
    before = tree(ds)
    line = error(run_cli("train", "c.yaml", "trainer.output_dir=c.yaml", cwd=tmp_path))
    assert line == (
        "stpdist: config error: 'trainer.output_dir' is c.yaml; expected a folder for the run "
        "(checkpoints, metrics.jsonl, config.yaml)"
    )
    for out in ("ds", "ds/train", "ds/test/x"):
        line = error(run_cli("train", "c.yaml", f"trainer.output_dir={out}", cwd=tmp_path))
        assert f"'trainer.output_dir' is {out}, in the dataset (data.root ds)" in line
    line = error(run_cli("train", "c.yaml", "--resume", "nothere", cwd=tmp_path))
    assert "--resume nothere: no such checkpoint folder" in line
    assert tree(ds) == before and not (tmp_path / "run").exists()


def test_train_synthesize_without_its_section_says_so(tmp_path):
    (tmp_path / "c.yaml").write_text(TINY)
    line = error(run_cli("train", "c.yaml", "--synthesize", cwd=tmp_path))
    assert "--synthesize generates with the settings of 'data.synthesize'" in line


def test_inspect_never_renders_into_a_split_folder(tmp_path):
    """`inspect ds --out ds` wrote its PNGs into ds/train, ds/test (out/<split>)."""
    ds = dataset(tmp_path / "ds")
    before = tree(ds)
    line = error(run_cli("inspect", "ds", "--out", "ds", cwd=tmp_path))
    assert "the pictures would go inside the split folder ds/t" in line
    assert tree(ds) == before
    model = tmp_path / "m"
    model.mkdir()
    (model / "model.safetensors").write_bytes(b"")
    (model / "index.json").write_text((ds / "test" / "index.json").read_text())
    assert "m: a model folder (model.safetensors), not a dataset" in error(
        run_cli("inspect", "m", cwd=tmp_path)
    )


# ------------------------------------------------------------------ config and splits
def test_split_names_are_names_not_paths(tmp_path):
    """`--split ../ds/train` wrote run/metrics_../ds/train.json (folders made on the way)."""
    (tmp_path / "c.yaml").write_text(TINY)
    line = error(run_cli("validate", "c.yaml", "--split", "../ds/train", cwd=tmp_path))
    assert "argument --split: '../ds/train': expected a split name" in line
    line = error(run_cli("predict", "c.yaml", "--split", "", cwd=tmp_path))
    assert "argument --split: '': expected a split name" in line
    for key in ("train_split", "val_split", "test_split"):
        with pytest.raises(ConfigError, match=f"'data.{key}' is '../x'; expected a split name"):
            load_config(tmp_path / "c.yaml", [f"data.{key}=../x"])
    assert not any(p.name != "c.yaml" for p in tmp_path.iterdir())


def test_config_path_and_list_errors_say_what_is_wrong(tmp_path):
    (tmp_path / "folder.yaml").mkdir()
    with pytest.raises(ConfigError, match="folder.yaml is a folder; expected a YAML config file"):
        load_config(tmp_path / "folder.yaml")
    with pytest.raises(ConfigError, match=r"the config file comes first, the key=value overrides"):
        load_config("trainer.max_steps=3")
    message = "'model.backbone.hidden_channels' is \"8,8\"; expected a list"
    with pytest.raises(ConfigError, match=message):
        load_config(None, ["model.backbone.hidden_channels=8,8"])


# ------------------------------------------------------------------ reproduce and sweep
def test_reproduce_refuses_flags_it_would_ignore_or_misapply(tmp_path):
    (tmp_path / "c.yaml").write_text(TINY)
    line = error(run_cli("reproduce", "c.yaml", "--digits", "d.gz", cwd=tmp_path))
    assert "--digits d.gz: only the --small recipe draws digits" in line
    line = error(run_cli("reproduce", "c.yaml", "--out", "c.yaml", cwd=tmp_path))
    assert (
        line
        == "stpdist: error: --out c.yaml is a file; expected a folder for the runs and the table"
    )
    simvp = str(Path(__file__).parent.parent / "configs" / "mmnist" / "simvp.yaml")
    line = error(run_cli("reproduce", simvp, "--small", "--out", "r", cwd=tmp_path))
    assert "--small: the scaled-down recipe sets model.backbone's hidden_channels" in line
    assert "'simvp' does not take" in line
    # TrajGRU takes the keys, not their form (one entry per level, three): an error about
    # keys the user never wrote, before
    trajgru = str(Path(__file__).parent.parent / "configs" / "mmnist" / "trajgru.yaml")
    line = error(run_cli("reproduce", trajgru, "--small", "--out", "r", cwd=tmp_path))
    assert "'trajgru' does not take as set (conv_channels, hidden_channels and links" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.yaml"]


def test_sweep_errors_name_their_origin(tmp_path):
    (tmp_path / "c.yaml").write_text(TINY)
    (tmp_path / "bad.yaml").write_text("method: grid\nmetric: {name: val/mse\n")
    line = error(run_cli("sweep", "c.yaml", "bad.yaml", cwd=tmp_path))
    assert "bad.yaml: not valid YAML (line 3, column 1)" in line
    (tmp_path / "s.yaml").write_text(
        "method: grid\nmetric: {name: val/mse}\nparameters:\n  model.optimizer.lr: {values: [0.001]}\n"
    )
    line = error(
        run_cli("sweep", "c.yaml", "s.yaml", "trainer.max_stepz=1", "--params", "{}", cwd=tmp_path)
    )
    assert line.startswith("stpdist: config error: override 'trainer.max_stepz=1': unknown key"), (
        line
    )
    params = '{"model.optimizer.lr": -1}'
    line = error(run_cli("sweep", "c.yaml", "s.yaml", "--params", params, cwd=tmp_path))
    assert line.startswith("stpdist: config error: --params: 'model.optimizer.lr' is -1.0"), line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.yaml", "c.yaml", "s.yaml"]


def test_bench_compile_backend_is_checked_before_timing(tmp_path):
    args = ["bench", "model", "convlstm", "--shape", "1x2x1x8x8", "--compile"]
    line = error(run_cli(*args, "--compile-backend", "nosuch", cwd=tmp_path))
    assert "--compile-backend nosuch: not a torch.compile backend; expected one of" in line
    assert "inductor" in line and os.listdir(tmp_path) == []


def test_a_runs_config_resumed_from_another_folder_is_refused_naming_both(tmp_path):
    """A config review: `train RUN/config.yaml --resume auto` from another folder than the
    run's began a new run from step 0 in another folder (its relative output_dir read from
    here), saying "no checkpoint in runs/rel/checkpoints", the run's own path."""
    from test_cli import DEBUG

    data = tmp_path / "data"
    common = ("logging.num_samples=0", f"data.root={data}", f"data.synthesize.root={data}")
    run_cli("train", DEBUG, "trainer.output_dir=runs/rel", "trainer.max_steps=1", *common,
            cwd=tmp_path, check=True)  # fmt: skip
    elsewhere = tmp_path / "t"
    elsewhere.mkdir()
    config = Path("..") / "runs" / "rel" / "config.yaml"
    proc = run_cli("train", str(config), "trainer.max_steps=2", "--resume", "auto", cwd=elsewhere)
    assert proc.returncode == 2, proc.stderr
    run = tmp_path / "runs" / "rel"
    assert f"is the config of the run in {run}, which holds checkpoints" in proc.stderr
    assert f"add trainer.output_dir={run}" in proc.stderr
    assert not (elsewhere / "runs").exists()
    resumed = run_cli("train", str(config), "trainer.max_steps=2", f"trainer.output_dir={run}",
                      "--resume", "auto", cwd=elsewhere, check=True)  # fmt: skip
    assert f"resumed from {run / 'checkpoints' / 'step-00000001'}" in resumed.stdout
    # a new run from its config, its folder named: not refused (a diff review)
    run_cli("train", str(config), "trainer.max_steps=1", "trainer.output_dir=new",
            "--resume", "auto", cwd=elsewhere, check=True)  # fmt: skip
    assert (elsewhere / "new" / "checkpoints").is_dir()


def test_a_log_file_gets_each_line_as_said_and_an_ascii_one_escapes(tmp_path):
    """An admin review: stdout to a file (a SLURM log) was block-buffered, so a killed job's
    log lacked its last lines; an ASCII stdout made a finished training exit 1 on `×`."""
    import signal
    import subprocess
    import sys
    import time

    from test_cli import DEBUG

    data = tmp_path / "data"
    args = [sys.executable, "-m", "stpdist", "train", DEBUG, "logging.num_samples=0",
            f"data.root={data}", f"data.synthesize.root={data}"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONIOENCODING": "ascii"}
    env.pop("PYTHONUNBUFFERED", None)
    log = tmp_path / "job.log"
    with open(log, "w") as handle:
        proc = subprocess.Popen([*args, "trainer.max_steps=100000"], cwd=tmp_path, env=env,
                                stdout=handle, stderr=subprocess.STDOUT)  # fmt: skip
        try:
            deadline = time.time() + 120
            while "checkpoint" not in log.read_text() and time.time() < deadline:
                assert proc.poll() is None, log.read_text()
                time.sleep(0.2)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
    said = log.read_text()
    assert "checkpoint" in said and "sequences of T\\xd7C" in said, said[-2000:]
    done = subprocess.run([*args, "trainer.max_steps=1", "trainer.output_dir=runs/two"],
                          cwd=tmp_path, env=env, capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0 and "Logging error" not in done.stderr, done.stderr[-2000:]


def test_srun_tasks_without_a_process_group_are_refused(tmp_path, monkeypatch):
    """An admin review: `srun -n 2 stpdist train …` without torchrun or the RANK mapping
    ran two separate trainings, the second refused by the first's run lock."""
    from test_cli import DEBUG

    monkeypatch.setenv("SLURM_STEP_NUM_TASKS", "2")
    monkeypatch.setenv("SLURM_PROCID", "1")
    for name in ("WORLD_SIZE", "RANK", "TORCHELASTIC_RUN_ID"):
        monkeypatch.delenv(name, raising=False)
    proc = run_cli("train", DEBUG, cwd=tmp_path)
    assert proc.returncode == 2
    assert "one of the 2 tasks of a SLURM step (srun -n 2), but no process group" in proc.stderr
    assert not (tmp_path / "runs").exists() and not (tmp_path / "data").exists()
    # a command writing an output is refused too (its tasks would race for it); one alone
    # in each task (inspect, a sweep's trials) is not (two diff reviews)
    synth = ("synth", "moving-digits", "--out", "ds", "--train", "2", "--val", "0", "--test",
             "0", "--size", "16", "--frames", "4", "--digit-size", "8")  # fmt: skip
    assert run_cli(*synth, cwd=tmp_path).returncode == 2
    monkeypatch.setenv("SLURM_STEP_NUM_TASKS", "1")
    assert run_cli(*synth, cwd=tmp_path).returncode == 0
    monkeypatch.setenv("SLURM_STEP_NUM_TASKS", "2")
    proc = run_cli("inspect", "ds", "--samples", "0", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr


def test_a_launcher_variable_that_is_no_number_is_named(tmp_path, monkeypatch):
    """An admin review: `LOCAL_RANK=` (an export outside a SLURM step) ended in accelerate's
    "invalid literal for int() with base 10: ''", naming no variable."""
    from test_cli import DEBUG

    monkeypatch.setenv("LOCAL_RANK", "")
    proc = run_cli("train", DEBUG, cwd=tmp_path)
    assert proc.returncode == 2
    assert "the environment variable LOCAL_RANK is '', not a number: unset it" in proc.stderr


def _trained_once(tmp_path: Path) -> tuple[list[str], dict[str, str]]:
    """(`python -m stpdist train` of configs/debug.yaml on data in `tmp_path`, its
    environment), after one training of a step has generated that data."""
    import subprocess
    import sys

    from test_cli import DEBUG

    data = tmp_path / "data"
    args = [sys.executable, "-m", "stpdist", "train", DEBUG, "logging.num_samples=0",
            f"data.root={data}", f"data.synthesize.root={data}"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    made = subprocess.run([*args, "trainer.max_steps=1", "trainer.output_dir=first"],
                          cwd=tmp_path, env=env, capture_output=True, text=True)  # fmt: skip
    assert made.returncode == 0, made.stderr[-2000:]
    return args, env


def test_too_many_open_files_ends_the_command_naming_the_limit(tmp_path):
    """A dataops review: with a low `ulimit -n` and 8 data workers, the error line came,
    then the process hung until killed: the workers started before the failure ignore
    SIGTERM, and the exit hook joined them for ever."""
    import resource
    import subprocess

    args, env = _trained_once(tmp_path)

    def few_files():
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))

    proc = subprocess.run([*args, "trainer.num_workers=8", "trainer.max_steps=2"], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=120,
                          preexec_fn=few_files)  # fmt: skip
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "too many open files (this process may open 64: `ulimit -n`)" in proc.stderr


def test_a_data_worker_that_cannot_hand_over_a_batch_ends_the_run(tmp_path):
    """A dataops review: a worker whose batch could not be put in shared memory (a full
    /dev/shm; here a file-size limit) lived on, and training waited for the batch for
    ever, a SIGTERM too."""
    import resource
    import subprocess
    import sys

    assert run_cli("synth", "moving-digits", "--out", "ds", "--train", "16", "--val", "4",
                   "--test", "4", "--size", "32", "--frames", "6", "--digit-size", "12",
                   cwd=tmp_path).returncode == 0  # fmt: skip
    (tmp_path / "c.yaml").write_text(
        "trainer: {output_dir: run, max_epochs: 1, progress_bar: false, num_workers: 2}\n"
        "data: {root: ds, batch_size: 8, num_input_frames: 3, num_output_frames: 3,"
        " shuffle_buffer: 16}\n"
        "logging: {num_samples: 0}\n"
        "model: {name: convlstm, backbone: {hidden_channels: [4]}, patch_size: 8}\n"
    )

    def small_files():
        resource.setrlimit(resource.RLIMIT_FSIZE, (8 * 1024, 8 * 1024))

    proc = subprocess.run([sys.executable, "-m", "stpdist", "train", "c.yaml"], cwd=tmp_path,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True,
                          text=True, timeout=120, preexec_fn=small_files)  # fmt: skip
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "a data worker could not hand over a batch" in proc.stderr
    assert "exited unexpectedly: a data worker ended, its own error above" in proc.stderr


def test_a_file_size_limit_is_named_where_a_write_stops(tmp_path):
    """A dataops review: a checkpoint stopped by `ulimit -f` was said as torch's "iostream
    error" beside the disk's free space, and a metrics.jsonl line as "File too large (the
    error names no file)"."""
    import resource
    import subprocess

    from stpdist.tracking import MetricsLog

    args, env = _trained_once(tmp_path)

    def small_files():
        resource.setrlimit(resource.RLIMIT_FSIZE, (16 * 1024, 16 * 1024))

    proc = subprocess.run([*args, "trainer.max_steps=2"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120, preexec_fn=small_files)  # fmt: skip
    assert "cannot write checkpoint" in proc.stderr, proc.stderr[-2000:]
    assert "(files of this process: at most 16 KiB, `ulimit -f`)" in proc.stderr
    log = MetricsLog(tmp_path / "run")
    log.log({"x": 1}, step=1, epoch=0)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (log.path.stat().st_size, hard))
    try:
        with pytest.raises(OSError) as stopped:
            log.log({"x": 2}, step=2, epoch=0)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert stopped.value.filename == str(log.path)


def test_a_terminal_stays_line_buffered(tmp_path):
    """A diff review: the CLI set stdout to block buffering on a terminal (lines came at
    exit); line by line everywhere."""
    import pty
    import subprocess
    import sys

    code = (
        "import sys; from stpdist.cli import _readable_streams; _readable_streams(); "
        "sys.stderr.write(str(sys.stdout.line_buffering) + '\\n')"
    )
    primary, secondary = pty.openpty()
    try:
        proc = subprocess.run([sys.executable, "-c", code], stdout=secondary,
                              stderr=subprocess.PIPE, text=True, timeout=60)  # fmt: skip
    finally:
        os.close(primary)
        os.close(secondary)
    assert proc.stderr.strip().splitlines()[-1] == "True", proc.stderr


def test_a_training_whose_reader_closed_the_pipe_finishes_quietly(tmp_path):
    """An MLOps review: `stpdist train … | head -2` went on training (right) but wrote a
    traceback per log line to stderr and exited 141 after the work was done."""
    import subprocess

    args, env = _trained_once(tmp_path)
    proc = subprocess.Popen([*args, "trainer.log_every_n_steps=1", "trainer.max_steps=6"],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)  # fmt: skip
    proc.stdout.readline()
    proc.stdout.close()  # the reader goes, as `head -1` does
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 0, err[-2000:]
    assert "Logging error" not in err and "BrokenPipeError" not in err, err[-2000:]
    assert (tmp_path / "runs" / "debug" / "checkpoints" / "step-00000006").is_dir()


def test_debug_keeps_the_exit_status_and_a_pipe_config_is_said_as_such(tmp_path):
    """An MLOps review: `--debug` turned a refusal's 2 into 1, and `train /dev/stdin` said
    "config file not found"."""
    proc = run_cli("train", "nope.yaml", "--debug", cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("stpdist: config error: config file")
    os.mkfifo(tmp_path / "fifo.yaml")
    proc = run_cli("train", "fifo.yaml", cwd=tmp_path)
    assert proc.returncode == 2 and "fifo.yaml is no regular file (a pipe or device)" in proc.stderr


def test_a_resume_with_other_frame_counts_is_refused(tmp_path):
    """A config review: a resume with another `data.num_input_frames` went on, its val/loss
    then measuring other predictions than the best checkpoints were ranked by."""
    from test_cli import DEBUG

    common = ("logging.num_samples=0", "trainer.max_steps=1")
    run_cli("train", DEBUG, *common, cwd=tmp_path, check=True)
    proc = run_cli("train", DEBUG, "logging.num_samples=0", "trainer.max_steps=2",
                   "data.num_input_frames=3", "--resume", "auto", cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert "data.num_input_frames 4 (the checkpoint's) → 3" in proc.stderr


def test_a_stop_while_training_generates_its_data_is_said(tmp_path):
    """An MLOps review: SIGTERM while `train` generated its dataset exited 143 with nothing
    on stderr (`synth` says its line)."""
    import signal
    import subprocess
    import sys
    import time

    from test_cli import DEBUG

    data = tmp_path / "data"
    proc = subprocess.Popen([sys.executable, "-m", "stpdist", "train", DEBUG,
                             f"data.root={data}", f"data.synthesize.root={data}",
                             "data.synthesize.train=20000"], cwd=tmp_path,
                            env={**os.environ, "OMP_NUM_THREADS": "1"},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        deadline = time.time() + 60
        while "generating" not in proc.stdout.readline() and time.time() < deadline:
            pass
        time.sleep(1)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 143, err[-2000:]
    assert "stpdist train: stopped (SIGTERM) before training began; nothing was trained" in err
