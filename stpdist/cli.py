"""The `stpdist` command: train, validate, predict, reproduce (train models and score
them), sweep (a wandb hyper-parameter search), forecast, export (use a trained model),
import (an OpenSTL checkpoint), synth, shard, inspect (make and look at datasets), bench
(measure speed).

    stpdist train configs/debug.yaml trainer.max_epochs=2 data.batch_size=8 [--resume auto]
    stpdist validate CONFIG [overrides] [--ckpt best|last|step-N|PATH] [--overwrite]
    stpdist predict CONFIG [overrides] [--ckpt best|last|step-N|PATH] [--out DIR] [--overwrite]
    stpdist reproduce CONFIG --seeds N [--small] [--resume auto]
    stpdist forecast RUN_OR_MODEL INPUTS --out DIR [--overwrite]
    stpdist export RUN_OR_MODEL --out DIR [--format onnx] [--overwrite]
    stpdist import openstl CKPT --method NAME [--config OpenSTL-config.py] [--dataset NAME] --out DIR
    stpdist synth moving-digits --out DIR --train N --val N --test N --seed S
    stpdist shard FORMAT SRC --out DIR   (formats: stpdist shard --help)
    stpdist inspect DIR
    stpdist sweep CONFIG SWEEP.yaml [--count N] [--project P] [--agent ID] [--params JSON]
    stpdist bench trainer | data DIR | model NAME [--config RECIPE] [--shape BxTxCxHxW] [--compile] [--ops]

Errors exit non-zero with one readable line (2 for a bad config); `--debug` shows the
traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import os
import re
import sys
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .config import MOST_WORKERS, Config, ConfigError, check_output_dir, load_config
from .console import (
    Terminated,
    counted,
    end_process,
    error_line,
    interrupts_noted,
    launched_as_main,
    say,
    sigterm_as_interrupt,
)
from .errors import InputError, MissingInput, OutputExists, alike, peer_lost

if TYPE_CHECKING:
    from .data.convert import EarlierOutput


def _config(args: argparse.Namespace) -> Config:
    return load_config(args.config, args.overrides)


def _trainer(cfg: Config) -> Any:
    from .trainer import Trainer

    return Trainer.from_config(cfg)


def _resolve_ckpt(trainer: Any, choice: str) -> Path:
    """`--ckpt`: a path, else best, last or a step (step-320, step-00000320) of the run's
    checkpoints; damaged ones are refused (by name) or passed over (best, last)."""
    from .checkpoint import MODEL_FILE, STATE_FILE, is_sharded_checkpoint, verify

    path = Path(choice)
    if not choice:
        raise InputError("--ckpt is empty: expected best, last, a step (step-320) or a path")
    if choice not in ("best", "last") and path.exists():
        weights = any((path / name).is_file() for name in (STATE_FILE, MODEL_FILE))
        if path.is_dir() and not weights and (path / "checkpoints").is_dir():
            # a run folder, as model.init_weights, stpdist.load and export take it: its best
            from .checkpoint import CheckpointManager

            chosen = CheckpointManager(path / "checkpoints").choose("best")
            say(f"--ckpt {choice}: a run folder; its best checkpoint, {chosen}")
            return chosen
        if path.is_dir() and not weights and not is_sharded_checkpoint(path):
            raise InputError(
                f"--ckpt {choice}: a folder that is neither a checkpoint nor a model folder "
                f"(no {STATE_FILE} or {MODEL_FILE}); expected one of those, a run folder, a "
                ".safetensors file, or best, last or a step of the run's checkpoints"
            )
        return verify(path)
    return trainer.checkpoints.choose(choice)


def _check_named_files(cfg: Config) -> None:
    """Files the config names that training reads later: missing ones are refused now, in
    one line naming the key, not after the dataset was generated."""
    # (model.init_weights is not among them: a resume does not read it)
    named = {"model.evaluation.lpips_weights": cfg.model.evaluation.lpips_weights}
    for key, value in named.items():
        if value and not Path(value).exists():
            raise ConfigError(f"'{key}': {value} does not exist")


def _check_resume_flag(resume: str | None) -> None:
    """`--resume`: 'auto', or a checkpoint folder that exists (refused before any work)."""
    if resume is None or resume == "auto":
        return
    expected = "expected 'auto' or a checkpoint folder (runs/x/checkpoints/step-N)"
    if not resume.strip():
        raise InputError(f"--resume is empty: {expected}")
    if not Path(resume).exists():
        if resume in ("last", "latest"):  # as `--ckpt` takes it
            expected = (
                "to go on from the newest checkpoint, --resume auto; else a checkpoint folder"
            )
        raise InputError(f"--resume {resume}: no such checkpoint folder; {expected}")


def _refuse_a_run_config_resumed_elsewhere(args: argparse.Namespace, cfg: Config) -> None:
    """`train RUN/config.yaml --resume auto` from another folder than the run was started
    in: a relative `trainer.output_dir` names another folder from here, which holds no
    checkpoint, and a new run began there from step 0, its printed path the run's own (a
    config review). Refused, naming both folders, when the config is one a run wrote and
    its run folder holds checkpoints."""
    from .checkpoint import CheckpointManager
    from .trainer import RESOLVED_CONFIG_HEADER

    config = Path(args.config)
    if args.resume != "auto" or config.name != "config.yaml":
        return
    if any(item.partition("=")[0].strip() == "trainer.output_dir" for item in args.overrides):
        return  # the folder named on the command line (a diff review: refused)
    try:
        with open(config) as handle:
            written_by_a_run = handle.readline() == RESOLVED_CONFIG_HEADER
    except (OSError, UnicodeDecodeError):
        return
    run, here = config.parent.resolve(), Path(cfg.trainer.output_dir).absolute()
    if not written_by_a_run or run.resolve() == here.resolve():
        return
    if CheckpointManager(here / "checkpoints").latest() is not None:
        return  # it resumes the folder it names
    if CheckpointManager(run / "checkpoints").latest() is None:
        return
    raise InputError(
        f"{config} is the config of the run in {run}, which holds checkpoints, but its "
        f"trainer.output_dir {cfg.trainer.output_dir!r} is {here} from this folder, which "
        f"holds none: --resume auto would start a new run there. To resume the run, add "
        f"trainer.output_dir={run} (or run from the folder it was started in); to start a "
        "new run from its config, leave out --resume auto"
    )


def cmd_train(args: argparse.Namespace) -> None:
    from . import build
    from .trainer import STOPS, stopped

    cfg = _config(args)
    if args.keep_global_batch:  # the flag is trainer.keep_global_batch=true
        cfg.trainer.keep_global_batch = True
    _check_resume_flag(args.resume)  # these before any data is made or read
    _refuse_a_run_config_resumed_elsewhere(args, cfg)
    check_output_dir(cfg)
    _check_named_files(cfg)
    trainer = _trainer(cfg)
    try:
        build.ensure_dataset(cfg, trainer, synthesize=args.synthesize)
    except MissingInput as exc:
        if not args.synthesize or cfg.data.synthesize is not None:
            raise
        raise MissingInput(
            f"{exc}. --synthesize generates with the settings of 'data.synthesize', which this "
            "config does not have: add that section (data.synthesize={} for its defaults)"
        ) from None
    from accelerate.utils import set_seed

    set_seed(cfg.trainer.seed)  # identical initial weights on every rank and every run
    module = build.build_module(cfg)
    if args.resume is None and trainer.checkpoints.latest() is not None:
        # fit refuses it: before "initialised the model from …" is said of a run refused
        raise alike(OutputExists(
            f"{trainer.checkpoints.root} holds checkpoints of an earlier run; resume it "
            "(resume='auto', CLI --resume auto) or use another output_dir"
        ))  # fmt: skip
    # fine-tuning: every rank loads the weights before fit wraps the model (a resume wins)
    build.init_weights(cfg, module, trainer.checkpoints, args.resume)
    has_val = build.describe_dataset(cfg)
    build.keep_index(cfg, trainer)  # every checkpoint a model folder
    val = build.eval_stream(cfg, cfg.data.val_split) if has_val else None
    try:
        state = trainer.fit(module, build.train_stream(cfg), val, resume=args.resume)
    except STOPS as stop:  # the same line, with the command that continues the run
        # the trackers end now, not at exit (this Trainer is freed by then): an offline wandb
        # run's `wandb sync` line names every folder of the run; a tracker that cannot finish
        # (wandb's service killed with the job) is passed over, as at exit: the stop stays a
        # stop (exit 75, its line)
        trainer._close_at_exit()
        raise stopped(stop.step, stop.checkpoint, stop.signum, _resume_command(args)) from None
    except KeyboardInterrupt as exc:  # a second Ctrl-C, or SIGTERM before fit took it
        if trainer.is_main:
            latest = trainer.checkpoints.latest()
            why = _abort_reason(exc)
            print(
                f"stpdist: {why}; "
                + (
                    f"newest checkpoint {latest}; resume with {_resume_command(args)}"
                    if latest is not None
                    else f"no checkpoint yet: {_resume_command(args)} starts over"
                ),
                file=sys.stderr,
            )
        raise
    from .sweep import finish_trial

    trial = finish_trial(Path(cfg.trainer.output_dir), trainer)  # a sweep trial's, resumed
    trainer.close()
    if trial is not None and trainer.is_main:
        metric = trial["metric"]
        print(f"sweep trial {trial.get('run_id')} finished: best {metric['name']} "
              f"{metric['value']} (in sweep.json and the run's summary)")  # fmt: skip
    metrics = state.metrics
    # both in the data's units (`val/copy_last_mse` is in the model's normalised space)
    if trainer.is_main and "val/mse" in metrics and metrics.get("val/persistence_mse"):
        # the last validation's: at the final step, or (no validation since, a resume onto
        # data without a validation split) the step it ran at, named
        at = state.metrics_step
        which = (
            "final validation" if at in (None, state.global_step) else f"validation at step {at}"
        )
        scale = getattr(module, "value_scale", 1.0)  # the units, where they are not stored
        print(
            f"{which} MSE per pixel {metrics['val/mse']:.5g} vs copy-last-input-frame "
            f"baseline {metrics['val/persistence_mse']:.5g} "
            f"({metrics['val/mse'] / metrics['val/persistence_mse']:.2f}×)"
            + (f", of stored values ÷ {scale:g}" if scale != 1 else "")
        )


def _resume_command(args: argparse.Namespace) -> str:
    """How to continue this `stpdist train` or `stpdist reproduce`: its command with every
    flag that shapes the run and `--resume auto`; under a launcher (several ranks), the
    same launch running that command."""
    import shlex

    words = ["stpdist", args.command, args.config, *args.overrides]
    # without --keep-global-batch a resume on other ranks would change the global batch
    words += ["--keep-global-batch"] if args.keep_global_batch else []
    if args.command == "reproduce":
        words += ["--seeds", str(args.seeds)]
        words += ["--small"] if args.small else []
        words += ["--out", args.out] if args.out else []
        words += ["--digits", args.digits] if args.digits else []
    else:  # without it a resume would find no data
        words += ["--synthesize"] if args.synthesize else []
    return _relaunch(shlex.join([*words, "--resume", "auto"]))


def _relaunch(command: str) -> str:
    """`command`, or under a launcher: run by the same launch (its ranks, its options)."""
    launcher = _launcher()
    if launcher is None:
        return command
    return f"the same {launcher} launch as before (same options) running: {command}"


def _launcher() -> str | None:
    """The launcher that started this process with its ranks (None: a plain process),
    from the environment it gives its processes."""
    env = os.environ
    if "ACCELERATE_DYNAMO_BACKEND" in env:  # set by `accelerate launch` alone
        return "accelerate"
    if "TORCHELASTIC_RUN_ID" in env:  # torchrun (python -m torch.distributed.run)
        return "torchrun"
    if _env_int("SLURM_STEP_NUM_TASKS") > 1:
        return "srun"
    if _env_int("WORLD_SIZE") > 1 or _env_int("LOCAL_WORLD_SIZE") > 1:
        return "multi-process"
    return None


GROUP_COMMANDS = ("train", "validate", "predict", "reproduce")
"""The commands whose ranks form one process group (a SLURM step's tasks without one are
refused); other commands run alone in each task."""


def _bad_rank_variable() -> str | None:
    """A launcher's variable set to no number (`export LOCAL_RANK=$SLURM_LOCALID` outside a
    step: empty), named: accelerate's `int()` said only "invalid literal" (an admin
    review)."""
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        value = os.environ.get(name)
        if value is not None and not value.strip().isdigit():
            return (
                f"the environment variable {name} is {value!r}, not a number: unset it (one "
                "process), or let a launcher (torchrun, accelerate launch) set it"
            )
    return None


def _srun_tasks_without_a_group() -> str | None:
    """The refusal for one of several tasks of a SLURM step (`srun -n 2 stpdist …`) that no
    launcher gave a rank: each task ran alone, the second refused by the first's run lock
    (an admin review). None elsewhere."""
    env = os.environ
    tasks = _env_int("SLURM_STEP_NUM_TASKS")
    if tasks <= 1 or any(k in env for k in ("WORLD_SIZE", "RANK", "TORCHELASTIC_RUN_ID")):
        return None
    return (
        f"this process is one of the {tasks} tasks of a SLURM step (srun -n {tasks}), but no "
        "process group was set up: each task would run alone. Use the job scripts in "
        "launch/slurm/, or in each task export RANK=$SLURM_PROCID WORLD_SIZE=$SLURM_NTASKS "
        "LOCAL_RANK=$SLURM_LOCALID MASTER_ADDR MASTER_PORT, or run torchrun in one task a "
        "node; for one process, srun -n 1"
    )


LAUNCHER_POLL_S = 2.0
"""How often a rank started by torchrun looks whether its launcher is still there."""
_watching_launcher = False


def _stop_when_launcher_dies() -> None:
    """Under torchrun (and `accelerate launch`, which runs torchrun's agent in its own
    process): torch starts each rank in a session of its own, so when the launcher dies
    without stopping its ranks (SIGKILL, the out-of-memory killer), nothing reaches them and
    they train on as orphans, holding the devices and the run lock. A thread of each rank
    watches its parent; once it is gone (the rank re-parented), the rank signals itself
    SIGTERM, as a preemption would: a run stops after an agreed step with a checkpoint."""
    global _watching_launcher
    if "TORCHELASTIC_RUN_ID" not in os.environ or _watching_launcher:
        return
    _watching_launcher = True
    import atexit
    import signal
    import threading
    import time

    launcher = os.getppid()
    once = threading.Lock()  # taken by the first say(), never given back

    def say() -> None:
        """One line a launcher, not one a rank: the first local rank's, from its watch or,
        where another rank noticed first and the agreed stop ended this one before its
        next look, as it ends."""
        if os.environ.get("LOCAL_RANK", "0") != "0" or not once.acquire(blocking=False):
            return
        error_line(
            f"stpdist: the launcher of the ranks (pid {launcher}) is gone; stopping as on SIGTERM"
        )

    def watch() -> None:
        while os.getppid() == launcher:
            time.sleep(LAUNCHER_POLL_S)
        say()
        os.kill(os.getpid(), signal.SIGTERM)

    rank = os.getpid()  # a process forked from this one (its parent is this rank) says nothing
    atexit.register(lambda: os.getpid() == rank and os.getppid() != launcher and say())
    threading.Thread(target=watch, name="stpdist-launcher-watch", daemon=True).start()


def _env_int(name: str) -> int:
    value = os.environ.get(name, "")
    return int(value) if value.isdigit() else 1


def _with_checkpoint(
    args: argparse.Namespace, split_key: str
) -> tuple[Config, Any, Path, Any, str, Any]:
    """(config, trainer, checkpoint path, module, split, the index of the data the
    checkpoint was trained on or None) for validate and predict: the split is `--split`,
    else the config's `split_key` (data.val_split, data.test_split)."""
    from . import build

    cfg = _config(args)
    split = args.split or getattr(cfg.data, split_key.removeprefix("data."))
    trainer = _trainer(cfg)
    # chosen once, on the main process, and held there until every rank holds it
    again = args.ckpt in ("best", "last")
    ckpt = trainer.choose_checkpoint(lambda: _resolve_ckpt(trainer, args.ckpt), again=again)
    _check_split(cfg, split, f"--split {split}" if args.split else f"{split_key} {split!r}")
    kept = build.trained_on(cfg, Path(ckpt))
    folder = Path(ckpt) if Path(ckpt).is_dir() else Path(ckpt).parent  # a weights file's
    module = build.build_module(cfg, trained_on=kept, trained_in=folder)
    return cfg, trainer, ckpt, module, split, kept


def _check_split(cfg: Config, split: str, named: str) -> None:
    """A split the dataset does not hold, refused before the model is built: `named` says
    where it came from, and the message lists the splits the dataset has."""
    from .build import split_dir
    from .data.format import INDEX_FILE
    from .inference import is_split_folder

    folder = split_dir(cfg, split)
    if is_split_folder(folder):
        return
    root = Path(cfg.data.root)
    held = sorted(p.name for p in root.iterdir() if is_split_folder(p)) if root.is_dir() else []
    listed = ", ".join(held) if held else "none"
    raise MissingInput(
        f"{named}: data.root {root} holds no such split (no {folder / INDEX_FILE}); its "
        f"splits: {listed}"
    )


def cmd_validate(args: argparse.Namespace) -> None:
    from . import build
    from .console import lead_time_table
    from .visualize import plot_lead_times

    cfg, trainer, ckpt, module, split, kept = _with_checkpoint(args, "data.val_split")
    out = Path(cfg.trainer.output_dir)
    record = {**_checkpoint_record(ckpt, args.raw_weights), **_data_record(cfg, split)}
    record["precision"] = cfg.trainer.mixed_precision
    earlier = _json_file(out / f"metrics_{split}.json")
    # the best checkpoint moves as a run goes on: its newer results replace the older, but
    # results of its EMA and of its raw weights (--raw-weights) do not replace each other
    # (nor do float32 results and those of another precision: `precision`, recorded since
    # 2026-12-07, "no" where not recorded)
    same_kind = (
        earlier is not None
        and earlier.get("raw_weights", False) == args.raw_weights
        and earlier.get("precision", "no") == record["precision"]
    )
    if earlier is not None and not (args.overwrite or (args.ckpt == "best" and same_kind)):
        _refuse_other_checkpoint(str(out / f"metrics_{split}.json"), earlier, record, args.ckpt, "")
    if earlier is not None and not args.overwrite:
        _refuse_other_data(str(out / f"metrics_{split}.json"), earlier, record)
    _say_precision(record["precision"], trainer)  # after the refusals
    _check_results_folder(out)  # on every rank: each refuses alike, none waits
    own = build.trained_on_this_data(cfg, Path(ckpt), kept)
    results = trainer.validate(
        module, build.eval_stream(cfg, split), ckpt=ckpt, split=split,
        raw_weights=args.raw_weights, log=own,
    )  # fmt: skip
    if not own and trainer.is_main:
        print("results on other data or frame counts than the checkpoint was trained on: "
              "not logged into the run's metrics.jsonl")  # fmt: skip
    if trainer.is_main:
        written = _write_json(
            out / f"metrics_{split}.json", {**record, **_units_of(module), **results}
        )
        print(f"checkpoint {ckpt}{_step_text(record)}, split {split}")
        print(lead_time_table(results) + _units_note(module))
        plot = plot_lead_times(results, out / f"lead_time_{split}.png")
        print(f"results: {written}" + (f"; per-lead-time plot: {plot}" if plot else ""))
    trainer.close()


def _check_results_folder(out: Path) -> None:
    """`validate` writes its results into the run folder: one this user cannot write is
    refused before the validation runs (it ran in full, then failed on its file: an admin
    review), saying how to write them elsewhere."""
    import tempfile

    existing = next((f for f in (out, *out.absolute().parents) if f.exists()), out)
    try:
        if existing == out:
            with tempfile.TemporaryFile(dir=out, prefix=".stpdist-probe-"):
                pass
        elif not os.access(existing, os.W_OK | os.X_OK):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))
    except OSError as exc:
        raise alike(InputError(
            f"cannot write the results into {out} ({exc.strerror}): add "
            "trainer.output_dir=<a folder of yours> to write them there, with --ckpt naming "
            "this run's folder or checkpoint"
        )) from None  # fmt: skip


def _units_of(module: Any) -> dict[str, Any]:
    """The units a results file's metrics are in, written beside them: the data's scaled
    units (stored / `value_scale`; physical for data stored with value scale 1), per-variable
    scores physical. The predictions beside them may be in other units (`units` in each
    predictions file)."""
    scale = getattr(module, "value_scale", None)
    if not isinstance(scale, (int, float)):
        return {}
    return {
        "metric_units": "scaled: stored values / value_scale (per-variable scores: physical)",
        "value_scale": float(scale),
    }


def _units_note(module: Any) -> str:
    """A line under printed metrics of scaled data: their units (TaxiBJ's MSE of 0.0188 is
    of flows ÷ 1292), said only in the results file before."""
    scale = getattr(module, "value_scale", 1.0)
    if not isinstance(scale, (int, float)) or scale == 1:
        return ""
    named = " (per-variable scores such as rmse/<name>: physical units)" if getattr(
        module, "geo", None) is not None else ""  # fmt: skip
    return f"\nmetrics in stored values ÷ {scale:g}{named}"


def _write_json(path: Path, results: dict[str, Any]) -> Path:
    """`results` as JSON into `path`, atomically: a kill or a full disk mid-write leaves the
    earlier results whole (see `checkpoint.replace_text`)."""
    from .checkpoint import replace_text
    from .console import plain

    path.parent.mkdir(parents=True, exist_ok=True)
    replace_text(path, json.dumps({k: plain(v) for k, v in results.items()}, indent=2))
    return path


def _raised_in_user_code(exc: BaseException) -> str:
    """` (in FILE:LINE, FUNCTION; …)` for an error raised in code of the user's own (a model,
    a module, a translator named by import path), the innermost of its frames outside
    stpdist, torch and the installed packages; "" for any other (a plugins review: a shape
    error in one's own forward named no file)."""
    import sysconfig
    import traceback

    ours = Path(__file__).resolve().parent
    paths = sysconfig.get_paths()
    libraries = [Path(paths[k]) for k in ("stdlib", "platstdlib", "purelib", "platlib")]
    for frame in reversed(traceback.extract_tb(exc.__traceback__)):
        if frame.filename.startswith("<"):
            continue
        where = Path(frame.filename).resolve()
        installed = {"site-packages", "dist-packages"} & set(where.parts) or any(
            part.startswith("torchinductor") for part in where.parts
        )  # packages installed elsewhere (PYTHONPATH, the system's), generated kernels
        if installed or any(where.is_relative_to(p) for p in (ours, *libraries)):
            continue
        return (
            f" (in {frame.filename}:{frame.lineno}, {frame.name}; stpdist --debug shows the "
            "traceback)"
        )
    return ""


def _say_precision(precision: str, trainer: Any) -> None:
    """The precision `validate`/`predict` run in (the config's `trainer.mixed_precision`,
    recorded in the results file), said when it is not float32: its outputs then differ
    from `forecast`'s and an export's (float32) by the rounding of bf16/fp16."""
    if precision != "no" and trainer.is_main:
        print(f"running in {precision} (the config's trainer.mixed_precision; "
              "trainer.mixed_precision=no for float32)")  # fmt: skip


def _checkpoint_record(ckpt: Path, raw_weights: bool) -> dict[str, Any]:
    """Which weights produced a result: the checkpoint's path and global step (None for a
    weights file or an exported model folder, which keep no trainer state), and whether
    its raw weights were used instead of the EMA it may hold (`--raw-weights`)."""
    from .checkpoint import STATE_FILE, read_state

    step = read_state(ckpt).global_step if (ckpt / STATE_FILE).is_file() else None
    # absolute, as the data's and the exports' paths are (an MLOps review: relative to
    # wherever the command ran)
    return {"checkpoint": str(ckpt.resolve()), "checkpoint_step": step, "raw_weights": raw_weights}


def _data_record(cfg: Config, split: str) -> dict[str, Any]:
    """Which data a result was computed on: the split's folder, the SHA-256 of its
    index.json (the same data reached by another path, copied to a job's scratch, is the
    same), and the frame counts."""
    import hashlib

    from .build import split_dir
    from .data.format import INDEX_FILE

    folder = split_dir(cfg, split)
    try:
        index = hashlib.sha256((folder / INDEX_FILE).read_bytes()).hexdigest()
    except OSError:
        index = None
    return {
        "data": {
            "split": str(folder.resolve()),
            "index_sha256": index,
            "num_input_frames": cfg.data.num_input_frames,
            "num_output_frames": cfg.data.num_output_frames,
        }
    }


_SAME_DATA = ("index_sha256", "num_input_frames", "num_output_frames")
"""What makes results of one data: the split's index and the frame counts (not its path)."""


def _refuse_other_data(where: str, earlier: dict[str, Any], record: dict[str, Any]) -> None:
    """An InputError when the results in `where` were computed on other data or frame
    counts than `record`'s (results that record none, from before 2026-12-07: not compared):
    a validation on other data never silently replaces the run's results."""
    theirs, ours = earlier.get("data"), record["data"]
    if not isinstance(theirs, dict) or all(theirs.get(k) == ours[k] for k in _SAME_DATA):
        return

    def said(data: dict[str, Any]) -> str:
        text = (
            f"{data.get('split')} ({data.get('num_input_frames')} → "
            f"{data.get('num_output_frames')} frames)"
        )
        if said_alike:  # the same folder and frames: its index.json changed (an MLOps review)
            text += f" whose index.json had SHA-256 {str(data.get('index_sha256'))[:12]}…"
        return text

    said_alike = all(theirs.get(k) == ours[k] for k in _SAME_DATA if k != "index_sha256")
    said_alike = said_alike and theirs.get("split") == ours.get("split")

    raise InputError(
        f"{where} holds results on {said(theirs)}, not on {said(ours)}; pass --overwrite to "
        "replace them, or write them elsewhere (validate: another trainer.output_dir; "
        "predict: --out)"
    )


def _step_text(record: dict[str, Any]) -> str:
    step = record.get("checkpoint_step")
    return "" if step is None else f" (step {step})"


def _json_file(path: Path) -> dict[str, Any] | None:
    """The JSON object in `path` (an earlier run's results); None when absent or not one."""
    try:
        found = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return found if isinstance(found, dict) else None


def _refuse_other_checkpoint(
    where: str, earlier: dict[str, Any], record: dict[str, Any], choice: str, keep_both: str
) -> None:
    """An InputError when the results in `where` came from another checkpoint than
    `record`'s (or do not say which): a `--ckpt` other than the default never silently
    replaces them. `keep_both`: how to write elsewhere instead, if there is a way."""
    recorded = earlier.get("checkpoint")
    same = (
        isinstance(recorded, str)
        and Path(recorded).name == Path(record["checkpoint"]).name
        and earlier.get("checkpoint_step") == record["checkpoint_step"]
        and earlier.get("raw_weights", False) == record["raw_weights"]
        and earlier.get("precision", "no") == record.get("precision", "no")
    )
    if same:
        return
    theirs = (
        f"checkpoint {Path(recorded).name}{_step_text(earlier)}"
        if isinstance(recorded, str)
        else "a checkpoint they do not record (written by an stpdist before 2026-12-05)"
    )
    ours = Path(record["checkpoint"]).name
    if record["checkpoint_step"] is not None:
        ours += f", step {record['checkpoint_step']}"
    if earlier.get("raw_weights", False) != record["raw_weights"]:
        raw = "its raw weights"
        theirs += f" ({raw if earlier.get('raw_weights') else 'its EMA when it holds one'})"
        ours += f", {raw if record['raw_weights'] else 'its EMA when it holds one'}"
    if earlier.get("precision", "no") != record.get("precision", "no"):
        theirs += f" in precision {earlier.get('precision', 'no')}"
        ours += f", precision {record['precision']}"
    raise InputError(
        f"{where} holds the results of {theirs}, not of --ckpt {choice} ({ours}); pass "
        f"{keep_both}--overwrite to replace them"
    )


PICTURES = ("samples", ("*.png", "*.gif"))
"""The sample pictures' folder and what is in it (`visualize.save_samples`)."""


def _earlier_output(command: str) -> EarlierOutput:
    """What `stpdist predict` or `forecast` writes, which its `--overwrite` replaces
    (forecast's `--shards`: shards/forecast/)."""
    from .data.convert import EarlierOutput

    if command == "predict":
        files = ("predictions-r*.npz", "metrics.json")
        # `.predicting`: where `Trainer.predict` writes first; a pass killed leaves it alone
        # and `.predicted`, a pass whose swap was stopped (Trainer.predict finishes it)
        folders = (
            PICTURES,
            (".predicting", ("predictions-r*.npz",)),
            (".predicted", ("predictions-r*.npz", ".names.json")),
        )
        markers = (*files, ".predicting", ".predicted")
        return EarlierOutput(command, files, markers=markers, folders=folders)
    files = ("predictions-r*.npz", "forecast.json")
    # the shards' card too (a diff review: with it, a second `--overwrite` was refused)
    shards = ("README.md", "forecast/index.json", "forecast/forecast-*.tar")
    folders = (PICTURES, ("shards", shards))
    return EarlierOutput(command, files, markers=files[:1], folders=folders)


def _check_predict_out(out: Path, args: argparse.Namespace, record: dict[str, Any]) -> None:
    """Refuse, before anything is written, a predict folder whose contents `predict` would
    replace without leave: a non-empty one that holds files of its own (not an earlier
    predict's output), or an earlier predict's output of another checkpoint when `--ckpt`
    is not the default. `--overwrite` replaces either."""
    if args.overwrite or not out.is_dir() or not any(out.iterdir()):
        return
    where = f"--out {out}" if args.out else str(out)
    _earlier_output("predict").refuse_foreign(out)  # which --overwrite would not replace
    earlier = _json_file(out / "metrics.json")
    if earlier is None:  # no readable metrics.json: not a whole earlier predict's output
        raise InputError(
            f"{where} is not empty and holds no earlier predict's output; pass --overwrite "
            "to replace it"
        )
    if args.ckpt != "best":
        _refuse_other_checkpoint(where, earlier, record, args.ckpt, "--out DIR to keep both, or ")
    # as `validate`: predictions of other data never replace the run's silently (an MLOps
    # review: 8 test predictions were replaced by 2 of another folder)
    _refuse_other_data(where, earlier, record)


def cmd_predict(args: argparse.Namespace) -> None:
    """One pass: predictions written, metrics accumulated, the first samples drawn. Written
    into a staging folder that replaces the predict folder at the end (as `forecast`
    does): a failure leaves it as it was, and no picture of an earlier predict stays."""
    from . import build
    from .console import format_scalars
    from .inference import check_output_folder
    from .trainer import SampleKeeper
    from .visualize import names_for_pictures, north_up, save_samples

    cfg, trainer, ckpt, module, split, _ = _with_checkpoint(args, "data.test_split")
    out = Path(args.out) if args.out else Path(cfg.trainer.output_dir) / "predictions" / split
    protected = (build.split_dir(cfg, split), ckpt, args.config)
    # a file, the data, the config, a run or its checkpoints: refused even with --overwrite
    check_output_folder(out, overwrite=True, protected=protected)
    record = {**_checkpoint_record(ckpt, args.raw_weights), **_data_record(cfg, split)}
    record["precision"] = cfg.trainer.mixed_precision
    _check_predict_out(out, args, record)
    _say_precision(record["precision"], trainer)
    data = build.eval_stream(cfg, split)
    keeper = SampleKeeper(args.samples if trainer.is_main else 0)
    earlier = _earlier_output("predict")
    with _shared_staging(trainer, out, True, protected, earlier) as tmp:
        results = trainer.predict(
            module,
            data,
            ckpt=ckpt,
            out=tmp,
            split=split,
            keeper=keeper,
            raw_weights=args.raw_weights,
            shown_as=out,
        )
        trainer.close()
        if trainer.is_main:
            _write_json(tmp / "metrics.json", {**record, **_units_of(module), **results})
            # sanitised names; none without --samples or samples with predictions
            pictures = save_samples(
                tmp / "samples",
                north_up(module, keeper.samples),
                cfg.logging.colormap,
                channel_names=names_for_pictures(module, keeper.samples),
            )
    if not trainer.is_main:
        return
    print(
        f"checkpoint {ckpt}{_step_text(record)}; metrics: {format_scalars(results)} "
        f"(all in {out / 'metrics.json'})" + _units_note(module)
    )
    if pictures:
        print(f"sample pictures: {out / 'samples'}")


def cmd_forecast(args: argparse.Namespace) -> None:
    """Forecasts from inputs alone: no targets, no metrics; outputs in physical units.
    Everything is checked before anything is written (model, every input, `--out`); the
    outputs go into a staging folder swapped in at the end, so a failure leaves `--out` as
    it was and `--overwrite` leaves no file of an earlier forecast mixed in."""
    import torch

    from .inference import check_output_folder, load, require_forecaster
    from .trainer import SampleKeeper, Trainer
    from .visualize import names_for_pictures, north_up, save_samples

    if args.precision == "fp16" and not torch.cuda.is_available():
        raise InputError(
            "--precision fp16 needs a CUDA device (on CPU it would run in fp32); use "
            "--precision bf16 or no"
        )
    module = load(args.model, args.ckpt, trust_code=args.trust_code, raw_weights=args.raw_weights)
    require_forecaster(module, "forecast")
    earlier = _earlier_output("forecast")
    protected = (args.inputs, module.model_folder)
    # `--out` first: its refusal is cheap, and the inputs' survey (a large file's minutes,
    # its units warnings) was wasted before it
    out = check_output_folder(
        args.out, overwrite=args.overwrite, protected=protected, earlier=earlier
    )
    data = _forecast_inputs(Path(args.inputs), module, args)
    trainer = Trainer(output_dir=out, progress_bar=False, mixed_precision=args.precision)
    keeper = SampleKeeper(args.samples if trainer.is_main else 0)
    with _shared_staging(trainer, out, args.overwrite, protected, earlier) as tmp:
        trainer.predict(
            module,
            data,
            out=tmp,
            metrics=False,
            keeper=keeper,
            postprocess=module.to_physical,
            units="physical",
            shown_as=out,
        )
        trainer.close()
        if trainer.is_main:
            # sanitised names; none with --samples 0
            pictures = save_samples(
                tmp / "samples",
                north_up(module, keeper.samples),
                args.colormap or getattr(module, "colormap", None),  # the run's, by default
                channel_names=names_for_pictures(module, keeper.samples),
            )
            if args.shards:
                _forecast_shards(tmp, args, module)
            _write_json(tmp / "forecast.json", _forecast_record(module, args))
    if not trainer.is_main:
        return
    print(
        f"forecasts of {module.model_folder} in physical units: {out}/predictions-r*.npz"
        + (f"; pictures: {out / 'samples'}" if pictures else "")
    )
    if args.shards:
        print(f"as a shard split (stpdist inspect renders it): {out / 'shards' / 'forecast'}")


def _forecast_record(module: Any, args: argparse.Namespace) -> dict[str, Any]:
    """What made a forecast (`forecast.json` beside it): the model folder and its step, the
    weights, precision and inputs, the frame counts and units (a deployment review: the
    forecast files named none of them)."""
    from . import __version__

    return {
        "model": str(Path(module.model_folder).resolve()),
        "checkpoint_step": getattr(module, "global_step", None) or None,
        "raw_weights": args.raw_weights,
        "precision": args.precision,
        "inputs": str(Path(args.inputs).resolve()),
        "num_input_frames": module.num_input_frames,
        "num_output_frames": module.num_output_frames,
        "units": "physical",
        "stpdist_version": __version__,
    }


def _forecast_inputs(source: Path, module: Any, args: argparse.Namespace) -> Any:
    """The inputs of `stpdist forecast`, each checked against the model (frame size,
    channels, frame count, dtype, finiteness, units) before any forecast is made."""
    from torch.utils.data import DataLoader

    from .data.format import INDEX_FILE
    from .data.stream import ShardEvalStream
    from .inference import InputFrames

    if not (source / INDEX_FILE).is_file():
        frames = InputFrames(source, module, allow_nonfinite=args.allow_nonfinite, key=args.key,
                             channels_last=args.channels_last)  # fmt: skip
        return DataLoader(frames, batch_size=args.batch_size)
    if args.key is not None:  # chosen for nothing: the user meant other inputs
        raise InputError(
            f"--key {args.key} names an array inside .npz inputs; {source} is a shard split: "
            "drop --key"
        )
    if args.channels_last:
        raise InputError(
            f"--channels-last reads arrays of …×H×W×C; {source} is a shard split (stored "
            "channels first): drop --channels-last"
        )
    data = ShardEvalStream(  # a shard split: its first T_in frames
        source,
        batch_size=args.batch_size,
        num_input_frames=module.num_input_frames,
        num_output_frames=0,
    )
    index = data.index
    if index.value_scale != module.value_scale:
        raise InputError(
            f"{source}: stored with value scale {index.value_scale:g}, the model was "
            f"trained on {module.value_scale:g}; convert the inputs like the training data"
        )
    if (
        tuple(index.shape[1:]) != tuple(module.frame_shape)
        or index.shape[0] < module.num_input_frames
    ):
        raise InputError(
            f"{source}: samples of T×C×H×W {'×'.join(map(str, index.shape))}; the model takes "
            f"at least {module.num_input_frames}×{'×'.join(map(str, module.frame_shape))}"
        )
    if index.num_samples == 0:
        raise InputError(f"{source}: the split holds no sample")
    from .build import check_same_fill, check_same_layout

    check_same_fill(str(source), index, getattr(module, "nan_fill", None))
    if getattr(module, "trained_on", None) is not None:  # variables and grid (a weather review)
        check_same_layout(str(source), index, module.trained_on)
    return data


@contextlib.contextmanager
def _shared_staging(
    trainer: Any,
    out: Path,
    overwrite: bool,
    protected: tuple[Any, ...],
    earlier: EarlierOutput,
) -> Iterator[Path]:
    """The staging folder every rank writes into (the main process's `staged_output`,
    its path sent to the others); on the main process's clean exit it replaces `out`,
    which may hold nothing but `earlier` output of the command."""
    from .data.convert import staged_output

    with contextlib.ExitStack() as stack:
        staging = None
        if trainer.is_main:
            staging = stack.enter_context(
                staged_output(out, overwrite, sources=protected, earlier=earlier)
            )
        if trainer.accelerator.num_processes > 1:
            from accelerate.utils import broadcast_object_list

            shared = broadcast_object_list([None if staging is None else str(staging)])
            staging = Path(shared[0])
        yield staging


def _forecast_shards(folder: Path, args: argparse.Namespace, module: Any) -> None:
    """The forecasts in `folder` also as a shard split, `folder/shards/forecast`; a
    forecast of a time series keeps its frames' valid times (the sample's `times`, as the
    converters write them) and the time it was made from (`reference_time`)."""
    from .data.convert import write_card
    from .data.format import SplitWriter, read_index
    from .trainer import iter_predictions, load_predictions

    times: dict[str, np.ndarray] = {}
    with contextlib.suppress(KeyError):  # no times: not a time series
        times = load_predictions(folder, "valid_times")
        made_from = load_predictions(folder, "reference_times")
    with SplitWriter(
        folder / "shards" / "forecast",
        "forecast",
        value_scale=module.value_scale,
        source=f"stpdist forecast of {args.inputs} with {module.model_folder}",
    ) as writer:
        for key, frames in iter_predictions(folder):  # a file's predictions at a time
            meta: dict[str, Any] = {"forecast_of": key}
            if key in times and not np.isnat(times[key]).all():
                meta["times"] = [_iso(t) for t in times[key]]
                meta["reference_time"] = _iso(made_from[key])
            writer.write(key, frames.astype(np.float32), meta)
    # the card `shard` writes, so that Hugging Face `datasets` reads the tars (without it,
    # it took index.json for the data; an interop review)
    shards, final = folder / "shards", Path(args.out) / "shards"  # (folder: its staging)
    write_card(shards, final, "forecasts", {"forecast": read_index(shards / "forecast")},
               written_by="stpdist forecast --shards")  # fmt: skip


def _iso(time: np.datetime64) -> str | None:
    """A datetime64 as the ISO text the converters store; NaT as None."""
    return None if np.isnat(time) else str(time.astype("datetime64[s]"))


def cmd_export(args: argparse.Namespace) -> None:
    from . import console
    from .inference import export

    console.setup(True)  # one process: export says which checkpoint it exports
    differences = export(
        args.model,
        args.out,
        ckpt=args.ckpt,
        formats=tuple(args.format),
        overwrite=args.overwrite,
        trust_code=args.trust_code,
        raw_weights=args.raw_weights,
    )
    kept = sorted(p.name for p in Path(args.out).iterdir() if p.is_file())
    print(f"model folder: {args.out} ({', '.join(kept)})")
    for fmt, difference in differences.items():
        print(
            f"  {fmt}: max |exported − eager| = {difference:.3g} on test batches of 2 and 3 "
            "(inputs and outputs in scaled units: stored / value_scale)"
        )


def cmd_import(args: argparse.Namespace) -> None:
    """An OpenSTL checkpoint as a model folder (see stpdist/openstl.py)."""
    from .openstl import import_checkpoint

    import_checkpoint(
        args.checkpoint,
        args.method,
        args.out,
        config=args.config,
        overwrite=args.overwrite,
        dataset=args.dataset,
        in_shape=args.in_shape,
        pre=args.pre,
        aft=args.aft,
        ema=args.ema,
    )


def _openstl_shape(text: str) -> list[int]:
    """`--in-shape T,C,H,W`: four positive sizes."""
    try:
        sizes = [int(v) for v in text.split(",")]
    except ValueError:
        sizes = []
    if len(sizes) != 4 or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected four positive sizes T,C,H,W")
    return sizes


def cmd_synth(args: argparse.Namespace) -> None:
    from .config import LARGEST_FRAME_SIDE, MOST_DIGITS, MOST_FRAMES, MOST_ITEMS
    from .data.synthetic import check_synth_counts, write_moving_digits

    if args.seed < 0:  # numpy's message would name neither the flag nor the value
        raise InputError(f"synthetic moving digits: --seed {args.seed}: expected a seed ≥ 0")
    # data.synthesize's bounds: beyond them a typo, hours of work or memory no machine has
    for flag, value, most in (
        ("--train", args.train, MOST_ITEMS),
        ("--val", args.val, MOST_ITEMS),
        ("--test", args.test, MOST_ITEMS),
        ("--frames", args.frames, MOST_FRAMES),
        ("--size", args.size, LARGEST_FRAME_SIDE),
        ("--digit-size", args.digit_size, LARGEST_FRAME_SIDE),
        ("--num-digits", args.num_digits, MOST_DIGITS),
    ):
        if value > most:
            raise InputError(
                f"synthetic moving digits: {flag} {value}: expected at most {most} (the "
                "bound data.synthesize has)"
            )
    out = write_moving_digits(
        args.out,
        check_synth_counts(args.train, args.val, args.test),
        seed=args.seed,
        num_frames=args.frames,
        image_size=args.size,
        digits_path=args.digits,
        digit_size=args.digit_size,
        num_digits=args.num_digits,
        workers=args.workers,
        overwrite=args.overwrite,
    )
    print(f"wrote moving digits to {out}")


def cmd_shard(args: argparse.Namespace) -> None:
    from .data.convert import convert
    from .data.sources import FORMATS, FirstFrames

    spec = FORMATS[args.format]
    if not spec.many_paths and len(args.sources) != 1:
        raise InputError(f"shard {args.format} takes one source path, got {len(args.sources)}")
    source = spec.build(args.sources, args)
    if args.inputs_only is not None:
        source = FirstFrames(source, args.inputs_only)
    fill = args.allow_nan
    if args.format == "merge":  # the parts' fill, which NaN is stored as again
        from .data.sources.merge import check_fill

        source.check_out(args.out)
        fill = check_fill(source.nan_fill, args.allow_nan)
    indexes = convert(
        source,
        args.out,
        workers=args.workers,
        overwrite=args.overwrite,
        samples_per_shard=args.samples_per_shard,
        nan_fill=fill,
    )
    for split, index in indexes.items():
        print(
            f"{Path(args.out) / split}: {counted(index.num_samples, 'sample')} in "
            f"{counted(len(index.shards), 'shard')}, shape {index.shape} {index.dtype}, scale {index.value_scale:g}"
        )


def cmd_inspect(args: argparse.Namespace) -> None:
    from .data.format import INDEX_FILE, read_index, require_file, variable_names
    from .data.staging import recover

    root = Path(args.dir)
    # a crash while the dataset (`root`, or the one `root` is a split of) was being replaced
    if not root.exists():
        recover(root.parent)
    recover(root)
    if root.exists():
        require_file(root, folder_too=True)  # a FIFO: refused, never opened
    from .data.format import MODEL_FILE  # checkpoint's, without its import of torch

    def is_split(folder: Path) -> bool:  # a model folder keeps its data's index.json too
        return (folder / INDEX_FILE).exists() and not (folder / MODEL_FILE).exists()

    folders = (
        [root]
        if is_split(root)
        else sorted(p for p in root.iterdir() if is_split(p))
        if root.is_dir()
        else []
    )
    if not folders:
        what = (
            "no such folder"
            if not root.exists()
            else f"a model folder ({MODEL_FILE}), not a dataset"
            if (root / MODEL_FILE).exists()
            else f"no {INDEX_FILE} in it or its sub-folders"
        )
        raise InputError(f"{root}: {what}; expected a dataset")
    if args.out and Path(args.out).exists() and not Path(args.out).is_dir():
        raise InputError(f"--out {args.out} is a file; expected a folder for the pictures")
    # pictures never go into the dataset: a folder the user names, or a temp folder we name
    # (none made where no pictures are drawn: --samples 0)
    out = Path(args.out) if args.out else _inspect_pictures(root) if args.samples > 0 else None
    # each split's pictures go to out/<split>: neither may lie in a split folder
    targets = [out, *(out / f.name for f in folders)] if out is not None else []
    inside = [f for f in folders for t in targets if t.resolve().is_relative_to(f.resolve())]
    if inside:
        raise InputError(
            f"--out {out}: the pictures would go inside the split folder {inside[0]}; pictures "
            "never go among a dataset's shards: name another folder"
        )
    damaged: list[str] = []
    for folder in folders:
        index = read_index(folder)  # index.json must be a regular file: a FIFO is refused
        print(
            f"{folder}: {counted(index.num_samples, 'sample')} in "
            f"{counted(len(index.shards), 'shard')}, "
            f"shape {index.shape} {index.dtype}, scale {index.value_scale:g}, "
            f"mean {np.round(index.mean, 4).tolist()}, std {np.round(index.std, 4).tolist()}, "
            f"source: {index.source}"
        )
        _describe_split(folder, index)
        if args.verify and not _verified(folder, damaged):
            continue  # no pictures of a damaged split; the next split is verified still
        if args.samples <= 0:
            continue
        from .data.stream import LoaderContext, ShardEvalStream  # torch: pictures only

        stream = ShardEvalStream(
            folder,
            batch_size=args.samples,
            num_input_frames=index.shape[0],
            num_output_frames=0,
        )
        frames, _, keys = next(iter(stream.iterate(LoaderContext())))
        samples = [(k, frames[i].numpy()) for i, k in enumerate(keys)]
        if not args.out:  # ours: the pictures of an earlier inspect replaced
            import shutil

            shutil.rmtree(out / folder.name, ignore_errors=True)
        lats = index.latitudes
        if len(lats) > 1 and lats[0] < lats[-1]:  # south first (WeatherBench 1): north up
            samples = [(k, np.flip(f, axis=-2).copy()) for k, f in samples]
        save_stored_frames(out / folder.name, samples, channel_names=variable_names(index))
        print(
            f"  rendered {counted(len(keys), 'sample')} (all {index.shape[0]} frames) to "
            f"{out / folder.name}"
        )
    if damaged:  # every split's damaged shards, in one error (exit status 2)
        from .data.format import ShardFormatError

        raise ShardFormatError("\n".join(damaged))


def _describe_split(folder: Path, index: Any) -> None:
    """`inspect`'s lines of a split's variables, grid and period, where it has them."""
    from .data.format import time_span

    if index.variables:  # per-channel names and units (geoscience converters)
        names = [f"{v.get('name')} [{v.get('units') or '-'}]" for v in index.variables]
        print(f"  variables: {', '.join(names)}")
    if index.latitudes:
        lat, lon = index.latitudes, index.longitudes
        print(
            f"  grid: latitudes {lat[0]:g}…{lat[-1]:g} ({len(lat)}), "
            f"longitudes {lon[0]:g}…{lon[-1]:g} ({len(lon)})"
            + (f", climatology {index.climatology}" if index.climatology else "")
        )
    span = time_span(folder, index)  # a time series': the period the split covers
    if span is not None:
        print(f"  times: {span[0]} … {span[1]} (its first and last samples' frames)")


def _verified(folder: Path, damaged: list[str]) -> bool:
    """`inspect --verify` of one split: its line, or its damage kept in `damaged` (a shard
    that is no file, or that cannot be read, too: the damage of the splits before it was
    dropped)."""
    from .data.format import ShardFormatError

    try:
        print(f"  verified: {verify_split(folder)}")
    except (ShardFormatError, InputError, OSError) as exc:
        print(f"  damaged: see the error below ({str(exc).splitlines()[0]})")
        damaged.append(str(exc))
        return False
    return True


def _inspect_pictures(root: Path) -> Path:
    """`inspect`'s pictures without --out: one folder a dataset (and user) in the temp dir,
    its pictures replaced by each inspect of it; a folder per call piled up. One that is
    not this user's own folder (a link, another user's) is passed over for a new one."""
    import hashlib
    import stat
    import tempfile

    digest = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:12]
    folder = Path(tempfile.gettempdir()) / f"stpdist-inspect-{os.getuid()}-{digest}"
    try:
        folder.mkdir(mode=0o700, exist_ok=True)
        found = folder.lstat()
        if stat.S_ISDIR(found.st_mode) and found.st_uid == os.getuid():
            return folder
    except OSError:
        pass
    return Path(tempfile.mkdtemp(prefix="stpdist-inspect-"))


STORED_LABEL = "stored\nframes"
"""Row label of `inspect`'s pictures: a shard stores whole sequences; which frames are
inputs and which targets is chosen at load time (data.num_input_frames), not here."""


def stored_frames_figure(
    frames_TCHW: np.ndarray, key: str, *, channel_names: list[str] | None = None
) -> Any:
    """The sample panel of the stored frames as they are (no prediction), labelled as
    stored frames numbered 1…T, not as inputs: the input/target split is made at load time.
    Several channels: a row each, "stored frames" over the channel's name ("c1", or "t2m"
    by `channel_names`, the index's variables), each on its own colour range."""
    from .visualize import LABEL_PT, fitted_title, sample_figure

    fig = sample_figure(frames_TCHW, None, None, key=key, channel_names=channel_names)
    numbers = [str(t + 1) for t in range(len(frames_TCHW))]
    # the rows are the input rows ("input", or "input c1" a channel); the rest colour bars
    for row in (ax for ax in fig.axes if ax.get_ylabel().startswith("input")):
        # the left margin fits "input <name>": the name on a line of its own is never wider
        name = row.get_ylabel().removeprefix("input").strip()
        label = f"stored frames\n{name}" if name else STORED_LABEL
        row.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=LABEL_PT)
        row.set_xticks(row.get_xticks(), numbers, fontsize=11)
    fitted_title(
        fig,
        f"{key}  ·  all {len(frames_TCHW)} stored frames  ·  (inputs and targets are chosen "
        "at load time)",
    )
    return fig


def save_stored_frames(
    folder: Path, samples: list[tuple[str, np.ndarray]], *, channel_names: list[str] | None = None
) -> list[Path]:
    """`stored_frames_figure` of each (key, T×C×H×W frames) as `<folder>/<key>.png`, its
    channels named by `channel_names` (one per channel) where given."""
    from .visualize import DPI, glyphs_said_once, sample_file_stems

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for stem, (key, frames) in zip(sample_file_stems(k for k, _ in samples), samples):
        path = folder / f"{stem}.png"
        with glyphs_said_once(path):
            figure = stored_frames_figure(frames, key, channel_names=channel_names)
            figure.savefig(path, dpi=DPI)
        paths.append(path)
    return paths


def _bytes_checked(compared: list[str | None]) -> str:
    """What `verify_split` says of the shards' bytes, by what `check_unchanged` compared."""
    if all(kind == "sha256" for kind in compared):
        return "bytes, counts, dtypes, shapes, keys OK"
    if not any(compared):
        return "counts, dtypes, shapes, keys OK (bytes not checked: the index records no SHA-256)"
    return (
        "counts, dtypes, shapes, keys OK (bytes checked by size and ends alone where the "
        "index records no SHA-256)"
    )


def verify_split(folder: Path) -> str:
    """Read every sample of a split: each shard's count against the index, each sample's
    dtype, shape and finiteness, keys unique. Every damaged shard is named, each by its
    first problem, in one error at the end (it stopped at the first: a large dataset took a
    run a damaged shard)."""
    from .data.format import ShardFormatError, check_unchanged, read_index, unlisted_shards

    index = read_index(folder)
    seen: dict[str, str] = {}
    compared, damaged = [], []
    for shard in index.shards:
        try:
            compared.append(check_unchanged(folder / shard.name, shard))
            _verify_shard(folder, shard, index, seen)
        except ShardFormatError as exc:
            damaged.append(str(exc))
    if damaged:
        listed = "\n  ".join(damaged)
        raise ShardFormatError(
            f"{folder}: {counted(len(damaged), 'damaged shard')} of {len(index.shards)}:\n  "
            f"{listed}"
        )
    unlisted = unlisted_shards(folder, index)
    extra = (
        f"; {counted(len(unlisted), '.tar file')} the index does not list, never read: "
        f"{', '.join(unlisted[:5])}{' …' if len(unlisted) > 5 else ''}"
        if unlisted
        else ""
    )
    return (
        f"{counted(len(seen), 'sample')} in {counted(len(index.shards), 'shard')}: "
        f"{_bytes_checked(compared)}{extra}"
    )


def _verify_shard(folder: Path, shard: Any, index: Any, seen: dict[str, str]) -> None:
    """`verify_split`'s reading of one shard; its first problem raised, naming it."""
    from .data.format import FRAMES_EXT, ShardFormatError, decode_frames, iter_shard

    count = 0
    for key, sample in iter_shard(folder / shard.name):
        where = f"{folder / shard.name}: member {key}.{FRAMES_EXT}"
        if key in seen:
            raise ShardFormatError(f"{where}: key '{key}' also in {seen[key]}")
        seen[key] = shard.name
        if FRAMES_EXT not in sample:  # as the streams say it
            raise ShardFormatError(f"{folder / shard.name}: sample '{key}' has no {FRAMES_EXT}")
        frames = decode_frames(sample[FRAMES_EXT], where)
        if list(frames.shape) != index.shape or str(frames.dtype) != index.dtype:
            raise ShardFormatError(
                f"{where}: {frames.dtype} {list(frames.shape)}, the index says "
                f"{index.dtype} {index.shape}"
            )
        if frames.dtype.kind == "f" and not np.isfinite(frames).all():
            raise ShardFormatError(f"{where}: the frames hold NaN or Inf")
        count += 1
    if count != shard.num_samples:
        raise ShardFormatError(
            f"{folder / shard.name}: holds {count} samples, the index says {shard.num_samples}"
        )


def _refuse_other_modes(args: argparse.Namespace) -> None:
    """A `bench` flag (or the folder/name) given to a mode it is not for: refused, naming
    the modes it is for (read from its help, `model: …`, `data, model: …`), not ignored."""
    bench = _command_parser(parser(), args)
    for action in bench._actions:
        head, colon, _ = (action.help or "").partition(":")
        modes = [m.strip() for m in head.split(",")] if colon else []
        if action.dest in ("what", "help") or not modes or args.what in modes:
            continue
        default = action.default
        if isinstance(default, str) and action.type is not None:  # parsed as given ones are
            default = action.type(default)
        if getattr(args, action.dest, default) != default:
            named = action.option_strings[0] if action.option_strings else f"'{args.dir}'"
            raise InputError(f"bench {args.what}: {named} is for bench {' and '.join(modes)} only")


def cmd_bench(args: argparse.Namespace) -> None:
    from .bench import bench_data, bench_trainer

    _refuse_other_modes(args)
    if args.what == "trainer":
        bench_trainer(repeats=args.repeats, steps=args.steps)
    elif args.what == "model":
        from .bench import bench_model

        name, shape, output_frames, patch, backbone, model = _bench_model_setup(args)
        if args.compile:  # before the eager rounds, not after them
            import torch._dynamo

            if args.compile_backend not in torch._dynamo.list_backends(exclude_tags=()):
                raise InputError(
                    f"--compile-backend {args.compile_backend}: not a torch.compile backend; "
                    f"expected one of {', '.join(torch._dynamo.list_backends())}"
                )
        if args.ops:
            from .bench import bench_ops
            from .config import ModelConfig

            config = model or ModelConfig(name=name, backbone=backbone or {}, patch_size=patch)
            bench_ops(config, shape, output_frames, precision=args.precision)
            return
        if args.activation_checkpointing:
            from .bench import bench_checkpointing
            from .config import ModelConfig

            config = model or ModelConfig(name=name, backbone=backbone or {}, patch_size=patch)
            bench_checkpointing(
                config, shape, output_frames, steps=args.model_steps, rounds=args.rounds
            )
            return
        bench_model(
            name,
            shape,
            output_frames,
            patch,
            backbone,
            steps=args.model_steps,
            compile_=args.compile,
            channels_last=args.channels_last,
            model_config=model,
            rounds=args.rounds,
            compile_target=args.compile_target,
            compile_backend=args.compile_backend,
            precision=args.precision,
        )
    else:
        if not args.dir:
            raise InputError("bench data needs a dataset folder: stpdist bench data DIR")
        bench_data(
            args.dir,
            batch=args.batch_size,
            workers=args.loader_workers,  # a tuple: parsed by the flag's type
            rounds=args.rounds,
        )


def _mmnist_recipe(name: str) -> Any:
    """The Moving MNIST recipe of backbone `name` (its patch size is the one its numbers in
    the guides were measured at), else the default config (patch 1). `bench model NAME`
    folded 4×4 patches for every backbone, MAU's and PredFormer's too (a zoo review)."""
    from . import recipes
    from .config import Config

    recipe = recipes.shipped(f"configs/mmnist/{name}.yaml")
    return load_config(recipe) if recipe is not None else Config()


def _bench_model_setup(args: argparse.Namespace) -> tuple:
    """(name, shape, T_out, patch, backbone args, ModelConfig or None) for `bench model`:
    from the flags, or from a recipe (`--config`: its model section, scheduled sampling
    included, and its data shapes) with the flags given on top."""
    import dataclasses

    from .config import ModelConfig, backbone_config

    cfg = load_config(args.config) if args.config else None
    name = args.dir or (cfg.model.name if cfg else None)
    if not name:
        raise InputError(
            "bench model needs a backbone name or a recipe: stpdist bench model convlstm, "
            "or stpdist bench model --config configs/mmnist/convlstm.yaml"
        )
    if cfg and name != cfg.model.name:
        raise InputError(f"bench model {name}: the recipe {args.config} is for '{cfg.model.name}'")
    backbone = dict(cfg.model.backbone) if cfg else None
    if args.backbone:  # a dict: parsed by the flag's type
        backbone = {**(backbone or {}), **args.backbone}
    if args.translator:
        backbone = {**(backbone or {}), "translator": args.translator}
    patch = args.patch if args.patch is not None else (cfg or _mmnist_recipe(name)).model.patch_size
    if args.shape:  # five positive integers: parsed by the flag's type
        shape = args.shape
    elif cfg:
        shape = (cfg.data.batch_size, cfg.data.num_input_frames, *_recipe_frame_shape(cfg))
    else:
        shape = (4, 10, 1, 64, 64)
    output_frames = args.output_frames
    if output_frames is None:
        output_frames = cfg.data.num_output_frames if cfg else 10
    # the model name, backbone arguments (--backbone, --translator) checked as a config's
    backbone_config(ModelConfig(name=name, backbone=backbone or {}, patch_size=patch))
    from . import plugins

    if plugins.is_import_path(name) and plugins.is_task(plugins.resolve_model(name)):
        raise InputError(
            f"bench model {name}: a whole task (an EnhancedModule), not a backbone; bench "
            "model times a backbone inside stpdist's Forecaster: name the backbone your task "
            "wraps, or time the task with your own loop"
        )
    height, width = shape[-2:]
    if height % patch or width % patch:
        raise InputError(
            f"--shape {'x'.join(map(str, shape))}: frames of {height}×{width} do not divide "
            f"into patches of {patch} (--patch)"
        )
    model = None
    if cfg or args.sampling:
        model = cfg.model if cfg else ModelConfig(name=name)
        sampling = model.sampling
        if args.sampling:
            sampling = dataclasses.replace(sampling, mode=args.sampling)
        model = dataclasses.replace(
            model, backbone=backbone or {}, patch_size=patch, sampling=sampling
        )
    return name, shape, output_frames, patch, backbone, model


def _recipe_frame_shape(cfg: Config) -> tuple[int, int, int]:
    """C×H×W of a recipe's frames: its dataset's index when there is one, else the moving
    digits it synthesizes."""
    from .build import dataset_index

    try:
        return tuple(dataset_index(cfg).shape[1:])
    except FileNotFoundError:
        if cfg.data.synthesize is None:
            raise InputError(
                f"no dataset under {cfg.data.root} to read the frame shape from: pass --shape"
            ) from None
        size = cfg.data.synthesize.image_size
        return (1, size, size)


def _shard_parser(sub: Any) -> None:
    """`stpdist shard FORMAT SRC… --out DIR`: one sub-command per registered raw format, each
    with the flags its source declares."""
    from .data.sources import FORMATS

    shard = sub.add_parser("shard", help="convert a raw dataset into shards")
    formats = shard.add_subparsers(dest="format", required=True, metavar="FORMAT")
    for name, spec in FORMATS.items():
        s = formats.add_parser(name, help=spec.help, description=spec.help)
        paths = "one or more files" if spec.many_paths else "file or folder"
        s.add_argument("sources", nargs="+", help=spec.paths_help or paths)
        s.add_argument(
            "--out",
            type=_non_empty,
            required=True,
            help="dataset folder (one sub-folder a split)",
        )
        s.add_argument(
            "--workers",
            type=_worker_count,
            default=2,
            help="processes reading the source (default 2)",
        )
        s.add_argument(
            "--overwrite",
            action="store_true",
            help="replace an earlier dataset in --out (only once the new one is complete; an "
            "--out holding other files is refused even so; a swap a crash interrupted is "
            "finished or undone by the next shard or reader)",
        )
        s.add_argument(
            "--samples-per-shard",
            type=int,
            default=1000,
            help="most samples per tar (default 1000); a shard also ends at 1 GiB of samples",
        )
        s.add_argument(
            "--inputs-only",
            type=int,
            default=None,
            metavar="T_IN",
            help="keep only the first T_IN frames of each sequence (inputs for forecast; "
            "windowed formats: --frames T_IN forecasts from the newest frames)",
        )
        s.add_argument(
            "--allow-nan",
            type=float,
            default=None,
            metavar="FILL",
            help="store NaN as FILL (data that marks missing values with NaN); "
            "without it NaN/Inf is an error naming the file and position",
        )
        for flag, kwargs in spec.flags.items():
            s.add_argument(flag, **kwargs)
        s.add_argument(
            "--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks"
        )
        s.set_defaults(func=cmd_shard)


def cmd_sweep(args: argparse.Namespace) -> None:
    """A wandb sweep over dotted config keys (see stpdist/sweep.py)."""
    from .sweep import sweep
    from .trainer import STOPS, stopped

    if args.summary:
        from .sweep import trials_summary

        given = [f for f, v in (("--params", args.params), ("--count", args.count),
                                ("--agent", args.agent)) if v]  # fmt: skip
        if given:
            raise InputError(f"--summary lists the trials run; {' and '.join(given)} would "
                             "be ignored: drop them")  # fmt: skip
        print(trials_summary(args.config, args.sweep, args.overrides))
        return
    params = None
    if args.params is not None:
        try:
            params = json.loads(args.params)
        except ValueError as exc:
            raise InputError(f"--params {args.params!r}: not JSON ({exc})") from None
        if not isinstance(params, dict):
            raise InputError(f"--params {args.params!r}: expected a JSON object of dotted keys")
    try:
        sweep(
            args.config,
            args.sweep,
            overrides=args.overrides,
            project=args.project,
            count=args.count,
            agent=args.agent,
            params=params,
        )
    except STOPS as stop:  # a trial continues as a training of its own folder's config
        if stop.checkpoint is None:
            raise
        import shlex

        config = Path(stop.checkpoint).parent.parent / "config.yaml"
        command = _relaunch(shlex.join(["stpdist", "train", str(config), "--resume", "auto"]))
        raise stopped(stop.step, stop.checkpoint, stop.signum, command) from None


def cmd_reproduce(args: argparse.Namespace) -> None:
    from .reproduce import reproduce
    from .trainer import STOPS, stopped

    if args.seeds < 1:
        raise InputError(f"--seeds {args.seeds}: expected at least 1")
    overrides = [*args.overrides]
    if args.keep_global_batch:  # the flag is trainer.keep_global_batch=true
        overrides.append("trainer.keep_global_batch=true")
    try:
        reproduce(
            args.config,
            args.seeds,
            small=args.small,
            out=args.out,
            digits=args.digits,
            overrides=overrides,
            resume=args.resume,
        )
    except STOPS as stop:  # the seed's stop line, with the command that continues all
        raise stopped(stop.step, stop.checkpoint, stop.signum, _resume_command(args)) from None
    except KeyboardInterrupt as exc:  # a second Ctrl-C, or SIGTERM outside a seed's fit
        if launched_as_main():
            print(
                f"stpdist: {_abort_reason(exc)}; resume with {_resume_command(args)}",
                file=sys.stderr,
            )
        raise


def _abort_reason(exc: KeyboardInterrupt) -> str:
    """What ended a command at once: SIGTERM outside a fit, or a second Ctrl-C."""
    return "stopped (SIGTERM)" if isinstance(exc, Terminated) else "aborted on a second Ctrl-C"


def _int_at_least(low: int, high: int | None = None) -> Any:
    """An argparse type (argparse names the flag before the message): an integer ≥ `low`
    (and ≤ `high`, when given: the bound beyond which a value is a typo)."""
    expected = "a positive integer" if low == 1 else f"an integer ≥ {low}"
    if high is not None:
        expected = f"an integer in [{low}, {high}]"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = low - 1
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"{text!r}: expected {expected}")
        return value

    return parse


_positive_int, _non_negative_int = _int_at_least(1), _int_at_least(0)
_worker_count = _int_at_least(1, MOST_WORKERS)


def _non_empty(text: str) -> str:
    """An argparse type: a non-empty value (an empty --out would name the working folder)."""
    if not text.strip():
        raise argparse.ArgumentTypeError(f"{text!r}: expected a non-empty value")
    return text


def _split_flag(text: str) -> str:
    """`--split NAME`: a split's name, as the config's `data.*_split` keys take it."""
    from .config import split_name

    problem = split_name(text)
    if problem:
        raise argparse.ArgumentTypeError(f"{text!r}: expected {problem}")
    return text


def _colormap_flag(text: str) -> str:
    """`--colormap NAME`: a matplotlib colormap, as `logging.colormap` takes it."""
    from .config import _colormap

    problem = _colormap(text)
    if problem:
        raise argparse.ArgumentTypeError(f"{text!r}: expected {problem}")
    return text


def _frame_shape(text: str) -> tuple[int, ...]:
    """`--shape BxTxCxHxW`: five positive integers joined by x."""
    parts = text.lower().split("x")
    if len(parts) != 5 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected BxTxCxHxW, five positive integers such as 4x10x1x64x64"
        )
    return tuple(int(p) for p in parts)


def _worker_counts(text: str) -> tuple[int, ...]:
    """`--loader-workers 0,2`: worker counts (integers >= 0) joined by commas."""
    parts = text.split(",")
    if not all(p.strip().isdigit() and int(p) <= MOST_WORKERS for p in parts):
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected worker counts such as 0,2 (each at most {MOST_WORKERS})"
        )
    return tuple(int(p) for p in parts)


def _json_object(text: str) -> dict[str, Any]:
    """An argparse type (argparse names the flag before the message): a JSON object."""
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: not JSON ({exc})") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"{text!r}: expected a JSON object")
    return value


def _trust_code_flag(s: argparse.ArgumentParser) -> None:
    s.add_argument(
        "--trust-code",
        action="store_true",
        help="import the model class that the model folder's config names by import path "
        "(package.module:Class), which runs that module's code; without it such a folder "
        "is refused. The module must be installed or on your PYTHONPATH",
    )


def _keep_global_batch_flag(s: argparse.ArgumentParser) -> None:
    s.add_argument(
        "--keep-global-batch",
        action="store_true",
        help="resuming on another number of ranks: adjust accumulation to keep the global "
        "batch (trainer.keep_global_batch=true)",
    )


def _raw_weights_flag(s: argparse.ArgumentParser) -> None:
    s.add_argument(
        "--raw-weights",
        action="store_true",
        help="use the checkpoint's raw weights, not the EMA of them it holds when trained "
        "with trainer.ema",
    )


class _Parser(argparse.ArgumentParser):
    """argparse's parser whose errors are one line, as every other error of the CLI: the
    flag, the value and what was expected, and where the options are listed (argparse
    would print the usage block above it). Sub-command parsers are of this class too."""

    def error(self, message: str) -> Any:
        self.exit(2, f"{self.prog}: error: {message} (`{self.prog} --help` lists the options)\n")


def parser() -> argparse.ArgumentParser:
    from . import __version__

    p = _Parser(
        prog="stpdist",
        description=__doc__.split("\n\n")[0].replace("\n", " "),
        epilog="`stpdist COMMAND --help` lists each command's options.",
    )
    p.add_argument("--version", action="version", version=f"stpdist {__version__}")
    # each command's own --debug defaults to nothing, so that this one (`stpdist --debug
    # CMD`) is not reset to False by the command's parser (an admin review)
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = p.add_subparsers(dest="command", required=True)

    def with_config(
        name: str, help_: str, example: str = "trainer.max_epochs=2"
    ) -> argparse.ArgumentParser:
        s = sub.add_parser(name, help=help_)
        s.add_argument("config", help="YAML config file")
        s.add_argument("overrides", nargs="*", default=[], help=f"dotted overrides, e.g. {example}")
        s.add_argument(
            "--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks"
        )
        return s

    s = with_config("train", "train a model")
    s.add_argument("--resume", default=None, help="'auto' (newest checkpoint) or a path")
    _keep_global_batch_flag(s)
    s.add_argument(
        "--synthesize",
        action="store_true",
        help="generate data.synthesize's moving digits into data.root when it holds no dataset",
    )
    s.set_defaults(func=cmd_train)
    for name, func in (("validate", cmd_validate), ("predict", cmd_predict)):
        s = with_config(name, f"{name} with a checkpoint", "data.batch_size=8")
        s.add_argument(
            "--ckpt",
            default="best",
            help="'best' (the default), 'last', a step (step-320), a checkpoint path, or another "
            "run's folder (its best checkpoint)",
        )
        s.add_argument(
            "--split",
            type=_split_flag,
            default=None,
            help="dataset split (default from the config)",
        )
        _raw_weights_flag(s)
        if name == "predict":
            s.add_argument(
                "--out",
                type=_non_empty,
                default=None,
                help="output folder (default <output_dir>/predictions/<split>); not a run's "
                "or checkpoint's folder",
            )
            s.add_argument(
                "--samples",
                type=_non_negative_int,
                default=4,
                help="samples rendered as pictures (default 4; 0: none)",
            )
            s.add_argument(
                "--overwrite",
                action="store_true",
                help="replace an earlier predict's output in --out (of any checkpoint; never "
                "other files); the old contents go only once the predictions are done",
            )
        else:
            s.add_argument(
                "--overwrite",
                action="store_true",
                help="with a --ckpt other than best: replace the metrics_<split>.json and "
                "lead_time_<split>.png of another checkpoint",
            )
        s.set_defaults(func=func)

    s = with_config(
        "reproduce",
        "train a recipe with N seeds; test-split table (beside OpenSTL's, in its setting)",
    )
    s.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1, one run each (default 3)")
    s.add_argument(
        "--small",
        action="store_true",
        help="scaled-down recipe: minutes on CPU (the recipes whose backbones take "
        "hidden_channels and kernel_size)",
    )
    s.add_argument(
        "--out", type=_non_empty, default=None, help="folder for the runs, reproduce.json/.md"
    )
    s.add_argument("--digits", default=None, help="MNIST train-images-idx3-ubyte(.gz) (--small)")
    s.add_argument(
        "--resume",
        default=None,
        choices=["auto"],
        help="'auto': continue an earlier call with the same arguments (stopped, or with "
        "fewer --seeds): each seed from its newest checkpoint; finished seeds train no more",
    )
    _keep_global_batch_flag(s)
    s.set_defaults(func=cmd_reproduce)

    s = sub.add_parser("forecast", help="forecast from inputs alone with a trained model")
    s.add_argument("model", help="a run folder or a model (checkpoint / export) folder")
    s.add_argument(
        "inputs",
        help="a shard split folder, an .npy/.npz array (T×C×H×W or N×T×C×H×W), a folder of "
        "them, or a folder of PNG frames; physical units",
    )
    s.add_argument(
        "--out", type=_non_empty, required=True, help="folder for predictions-*.npz and pictures"
    )
    s.add_argument(
        "--ckpt", default="best", help="of a run folder: best (the default), last or step-N"
    )
    s.add_argument(
        "--batch-size", type=_positive_int, default=8, help="inputs forecast at once (default 8)"
    )
    s.add_argument(
        "--samples",
        type=_non_negative_int,
        default=4,
        help="samples drawn as pictures (default 4; 0: none)",
    )
    s.add_argument(
        "--precision",
        default="no",
        choices=["no", "bf16", "fp16"],
        help="mixed precision of the forecast (default no: float32; fp16 needs a GPU)",
    )
    s.add_argument(
        "--colormap",
        type=_colormap_flag,
        default=None,
        help="matplotlib colormap of the pictures (default: the run's logging.colormap; "
        "unset, gray, or RGB for 3 channels)",
    )
    s.add_argument(
        "--shards", action="store_true", help="also write the forecasts as a shard split"
    )
    s.add_argument(
        "--channels-last",
        action="store_true",
        help="input arrays are T×H×W×C or N×T×H×W×C (else channels first, as the model takes "
        "them; T×H×W either way)",
    )
    s.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an earlier forecast's output in --out (never other files); the old "
        "contents go only once the forecast is done",
    )
    s.add_argument(
        "--allow-nonfinite",
        action="store_true",
        help="forecast from inputs that hold NaN or Inf (refused by default)",
    )
    s.add_argument(
        "--key",
        type=_non_empty,
        default=None,
        help="the array of each .npz input to forecast from, where one holds several",
    )
    _trust_code_flag(s)
    _raw_weights_flag(s)
    s.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks"
    )
    s.set_defaults(func=cmd_forecast)

    s = sub.add_parser("export", help="write a stand-alone model folder (+ exported graphs)")
    s.add_argument("model", help="a run folder or a checkpoint folder")
    s.add_argument("--out", type=_non_empty, required=True, help="the model folder to write")
    s.add_argument(
        "--ckpt", default="best", help="of a run folder: best (the default), last or step-N"
    )
    s.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an earlier export's model folder in --out (never other files); the "
        "old contents go only once the export is done",
    )
    _trust_code_flag(s)
    s.add_argument(
        "--format",
        action="append",
        default=[],
        choices=["torchscript", "exported-program", "onnx"],
        help="also export as this (repeatable); each is checked against the eager model",
    )
    _raw_weights_flag(s)
    s.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks"
    )
    s.set_defaults(func=cmd_export)

    s = sub.add_parser("import", help="turn an OpenSTL checkpoint into a stpdist model folder")
    s.add_argument("source", choices=["openstl"], help="the project the checkpoint comes from")
    s.add_argument("checkpoint", help="OpenSTL .ckpt (Lightning) or state dict (.pth)")
    s.add_argument("--method", required=True, help="OpenSTL method: ConvLSTM, SimVP, TAU, …")
    s.add_argument("--config", default=None, help="OpenSTL config .py (read, never run)")
    s.add_argument(
        "--dataset",
        default=None,
        help="OpenSTL dataset name (mmnist, taxibj, kth, …): its frame shape and counts, "
        "which OpenSTL's config files never hold (default: the checkpoint's, else mmnist's)",
    )
    s.add_argument(
        "--in-shape",
        type=_openstl_shape,
        default=None,
        metavar="T,C,H,W",
        help="OpenSTL's in_shape: input frames, channels, height, width",
    )
    s.add_argument("--pre", type=_positive_int, default=None, help="input frames (pre_seq_length)")
    s.add_argument("--aft", type=_positive_int, default=None, help="output frames (aft_seq_length)")
    s.add_argument(
        "--ema",
        action="store_true",
        help="import the EMA weights of OpenSTL's EMA hook (ema_* buffers), not the raw ones",
    )
    s.add_argument("--out", type=_non_empty, required=True, help="the model folder to write")
    s.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an earlier import's model folder in --out (never other files)",
    )
    s.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks"
    )
    s.set_defaults(func=cmd_import)

    s = sub.add_parser("synth", help="generate a synthetic dataset as shards")
    s.add_argument("kind", choices=["moving-digits"], help="what to generate")
    s.add_argument(
        "--out", type=_non_empty, required=True, help="dataset folder (one sub-folder a split)"
    )
    s.add_argument("--train", type=int, default=1000, help="train sequences (default 1000)")
    s.add_argument("--val", type=int, default=100, help="validation sequences (default 100)")
    s.add_argument("--test", type=int, default=100, help="test sequences (default 100)")
    s.add_argument(
        "--seed", type=int, default=0, help="random seed: same seed, same data (default 0)"
    )
    s.add_argument("--frames", type=int, default=20, help="frames per sequence (default 20)")
    s.add_argument("--size", type=int, default=64, help="frame size in pixels (default 64)")
    s.add_argument(
        "--num-digits",
        type=_positive_int,
        default=2,
        help="digits moving in each sequence (default 2)",
    )
    s.add_argument(
        "--digits",
        default=None,
        help="MNIST train-images-idx3-ubyte(.gz) to draw the digits from (default: glyphs "
        "drawn with Pillow's font)",
    )
    s.add_argument("--digit-size", type=int, default=28, help="glyph size in pixels (default 28)")
    s.add_argument("--workers", type=_worker_count, default=2, help="worker processes (default 2)")
    s.add_argument("--overwrite", action="store_true", help="replace an earlier dataset in --out")
    s.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks"
    )
    s.set_defaults(func=cmd_synth)

    _shard_parser(sub)

    s = sub.add_parser("sweep", help="a wandb sweep over dotted config keys")
    s.add_argument("config", help="YAML config file: every trial trains it")
    s.add_argument("sweep", help="wandb sweep YAML: method, metric, parameters (dotted keys)")
    s.add_argument("overrides", nargs="*", default=[], help="dotted overrides for every trial")
    s.add_argument("--count", type=_positive_int, default=None, help="trials this agent runs")
    s.add_argument("--project", default=None, help="wandb project (default logging.wandb.project)")
    s.add_argument("--agent", default=None, metavar="SWEEP_ID", help="join this sweep")
    s.add_argument(
        "--params",
        default=None,
        metavar="JSON",
        help="one trial with these values, no sweep server: '{\"model.optimizer.lr\": 0.001}'",
    )
    s.add_argument(
        "--summary",
        action="store_true",
        help="list the trials of the sweep's metric under the config's output_dir, best "
        "first (their sweep.json), and train nothing",
    )
    s.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks"
    )
    s.set_defaults(func=cmd_sweep)

    s = sub.add_parser("inspect", help="summarise a dataset's index and render samples")
    s.add_argument("dir", type=_non_empty, help="a dataset folder or one of its split folders")
    s.add_argument(
        "--samples",
        type=_non_negative_int,
        default=4,
        help="samples rendered per split (default 4; 0: none)",
    )
    s.add_argument(
        "--out",
        type=_non_empty,
        default=None,
        help="folder for the pictures (default: a folder of the dataset's in the temp dir, "
        "its pictures replaced by each inspect of that dataset)",
    )
    s.add_argument(
        "--verify",
        action="store_true",
        help="read every shard and sample: bytes as written (SHA-256), counts, dtypes, shapes, keys",
    )
    s.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks"
    )
    s.set_defaults(func=cmd_inspect)

    s = sub.add_parser("bench", help="print benchmarks")
    s.add_argument("what", choices=["trainer", "data", "model"])
    s.add_argument(
        "dir",
        nargs="?",
        default=None,
        help="data, model: a dataset or split folder (data); a backbone name, or --config (model)",
    )
    s.add_argument(
        "--config",
        default=None,
        help="model: a recipe (configs/mmnist/convlstm.yaml): its model section, scheduled "
        "sampling included, and its batch and frame shapes; the flags below override",
    )
    s.add_argument(
        "--shape",
        type=_frame_shape,
        default=None,
        metavar="BxTxCxHxW",
        help="model: inputs BxTxCxHxW (default 4x10x1x64x64)",
    )
    s.add_argument(
        "--output-frames", type=_positive_int, default=None, help="model: T_out (default 10)"
    )
    s.add_argument(
        "--patch",
        type=_positive_int,
        default=None,
        help="model: patch size (default: the recipe's, configs/mmnist/NAME.yaml; else 1)",
    )
    s.add_argument(
        "--backbone",
        type=_json_object,
        default=None,
        help="model: JSON args, e.g. '{\"hidden_channels\": [64, 64]}'",
    )
    s.add_argument(
        "--translator",
        default=None,
        help="model: SimVP/TAU translator (gsta, tau, ...; sets the backbone's 'translator')",
    )
    s.add_argument(
        "--sampling",
        choices=["none", "linear", "reverse"],
        default=None,
        help="model: scheduled sampling mode (default: the recipe's, else none)",
    )
    s.add_argument(
        "--model-steps", type=_positive_int, default=5, help="model: timed steps per round"
    )
    s.add_argument(
        "--compile",
        action="store_true",
        help="model: torch.compile, timed against eager in interleaved rounds",
    )
    s.add_argument(
        "--compile-target",
        choices=["trainer", "backbone", "step"],
        default="trainer",
        help="model: what --compile compiles: what trainer.compile compiles (default), the "
        "whole backbone, or the whole training step",
    )
    s.add_argument("--compile-backend", default="inductor", help="model: torch.compile backend")
    s.add_argument(
        "--precision",
        choices=["fp32", "bf16"],
        default="fp32",
        help="model: bf16 runs the step's forward under autocast (with --ops: counts it)",
    )
    s.add_argument(
        "--channels-last",
        action="store_true",
        help="model: 2-D convolution weights channels-last (trainer.channels_last)",
    )
    s.add_argument(
        "--activation-checkpointing",
        action="store_true",
        help="model: peak memory and step time with trainer.activation_checkpointing vs without",
    )
    s.add_argument(
        "--ops",
        action="store_true",
        help="model: aten ops per eager training step (forward, backward, optimizer), all "
        "and kernel-launching ones (views and allocations excluded), instead of timings",
    )
    s.add_argument(
        "--rounds",
        type=_positive_int,
        default=3,
        help="data, model: interleaved rounds (medians)",
    )
    s.add_argument("--repeats", type=_positive_int, default=5, help="trainer: interleaved repeats")
    s.add_argument(
        "--loader-workers",
        type=_worker_counts,
        default="0,2",
        help="data: DataLoader worker counts to compare",
    )
    s.add_argument("--steps", type=_positive_int, default=200, help="trainer: steps per repeat")
    s.add_argument(
        "--batch-size", type=_positive_int, default=16, help="data: batch size (default 16)"
    )
    s.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks"
    )
    s.set_defaults(func=cmd_bench)
    return p


def _command_parser(p: argparse.ArgumentParser, args: argparse.Namespace) -> Any:
    """The parser of the (sub-)command `args` were parsed for (`stpdist shard arrays`'s for
    `shard arrays`), whose `--help` lists the options that command takes."""
    found = True
    while found:
        found = False
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                chosen = action.choices.get(getattr(args, action.dest, None))
                if chosen is not None:
                    p, found = chosen, True
                    break
    return p


def _parsed(argv: list[str] | None) -> argparse.Namespace:
    p = parser()
    args, extra = p.parse_known_args(argv)
    # overrides may also stand after options (`train cfg --resume auto a.b=1`)
    unknown = [item for item in extra if "=" not in item or item.startswith("-")]
    if unknown:  # said by the command's parser: its --help lists the options it takes
        _command_parser(p, args).error(f"unrecognized arguments: {' '.join(unknown)}")
    if extra:
        if not hasattr(args, "overrides"):
            _command_parser(p, args).error(f"takes no key=value overrides: {' '.join(extra)}")
        args.overrides = [*args.overrides, *extra]
    _shipped_recipes(args)
    return args


def _shipped_recipes(args: argparse.Namespace) -> None:
    """A config or sweep file as the docs write it (`configs/debug.yaml`) that is not in
    the current folder is read from the recipes that come with stpdist (`recipes.resolved`):
    after a `pip install`, outside a checkout, the docs' commands work as written."""
    from . import recipes

    for name in ("config", "sweep"):
        value = getattr(args, name, None)
        if isinstance(value, str) and args.command != "import":  # import: OpenSTL's .py
            setattr(args, name, recipes.resolved(value))


def _interrupted(command: str, stop: KeyboardInterrupt) -> int:
    """Ctrl-C (or SIGTERM: `Terminated`) outside training (which says its own line): a
    line, exit 130 (143 after SIGTERM; 75 where a conversion kept a checkpoint)."""
    from .data.convert import exit_status

    how = "stopped (SIGTERM)" if isinstance(stop, Terminated) else "interrupted (Ctrl-C)"
    if command in STAGED and launched_as_main():
        more = (
            "; the same command goes on"
            if getattr(stop, "stpdist_kept", False)
            else "; no checkpoint was reached: the same command starts over"
            if command == "shard"
            else ""
        )
        error_line(f"stpdist {command}: {how}; its output folder is as it was{more}")
    elif command in ("train", "reproduce", "sweep") and launched_as_main():
        # before training began (generating its data): not silent (an MLOps review)
        error_line(f"stpdist {command}: {how} before training began; nothing was trained")
    return exit_status(stop)


def _stopped_line(stop: BaseException, earlier: set[Any]) -> int:
    """A training stopped with a checkpoint (`Preempted`, `Interrupted`): the command's
    Trainers closed (their trackers end now: a continuation may start at once), then its
    line, once for the run (not once per rank); exit 75, or 130 after Ctrl-C."""
    _close_command_trainers(0, earlier)
    if launched_as_main():
        print(f"stpdist: {stop}", file=sys.stderr)
    return stop.exit_code


def _pipe_closed() -> int:
    """`stpdist inspect … | head`: the reader has all it wanted. Exit as a process that
    SIGPIPE ended, with no second error when stdout is flushed at exit."""
    with contextlib.suppress(OSError):
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 141


def _readable_streams() -> None:
    """stdout to a file or pipe (a SLURM log) written line by line, as stderr is: block
    buffered, a killed job's log lacked its last lines and an error came out above lines
    said before it; a stream that cannot encode a character (an ASCII locale) writes it
    escaped: `×` made a finished training exit 1 (an admin review)."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(AttributeError, ValueError, OSError):  # not a text file
            stream.reconfigure(line_buffering=True, errors="backslashreplace")


def main(argv: list[str] | None = None) -> int:
    _readable_streams()
    args = _parsed(argv)
    from . import provenance

    # the command a run records (main may be called from Python, whose sys.argv is other)
    provenance.COMMAND = ["stpdist", *(sys.argv[1:] if argv is None else argv)]
    try:
        return _main(args)
    finally:
        provenance.COMMAND = None  # a Trainer's later fit in this program is no such command


def _main(args: argparse.Namespace) -> int:
    from .runlock import RunInUseError, RunLockedError

    refusal = _bad_rank_variable()
    if args.command in (*GROUP_COMMANDS, *STAGED):  # sweep trials, inspect: each task alone
        refusal = refusal or _srun_tasks_without_a_group()  # (an output's writers race)
    if refusal is not None:
        error_line(f"stpdist: error: {refusal}")  # every task: each is alone
        return 2
    if args.command in ONE_PROCESS and _several_ranks() and not launched_as_main():
        return 0  # the main process does it; a second rank would write the same files
    earlier = _open_trainers()  # a program's own (`main` called from Python): left open
    _stop_when_launcher_dies()
    try:
        with sigterm_as_interrupt(), interrupts_noted():
            args.func(args)
    except ConfigError as exc:
        if args.debug:  # the traceback, and the same exit status (an MLOps review: 1)
            traceback.print_exc()
        return _refused("config error", exc, earlier, alike_on_every_rank=True)
    except (InputError, RunLockedError) as exc:  # the user's inputs, or an output in use
        if args.debug:
            traceback.print_exc()
        alike = getattr(exc, "alike_on_every_rank", False) or not _group_started()
        status = IN_USE_STATUS if isinstance(exc, RunInUseError) else 2
        return _refused("error", exc, earlier, alike_on_every_rank=alike, status=status)
    except KeyboardInterrupt as exc:
        if hasattr(exc, "checkpoint"):  # a training stopped by Ctrl-C, with a checkpoint
            return _stopped_line(exc, earlier)
        return _interrupted(args.command, exc)
    except BrokenPipeError:
        return _pipe_closed()
    except Exception as exc:
        from .trainer import Preempted

        if isinstance(exc, Preempted):
            return _stopped_line(exc, earlier)
        if args.debug:
            raise
        line = _environment_error(exc, args.command)
        if line is None:
            line = f"{type(exc).__name__}: {_message(exc)}{_raised_in_user_code(exc)}"
        _close_command_trainers(1, earlier)  # first: the error is the last line a log file shows
        error_line(f"stpdist: error: {line}")
        return 1
    return 0


_WRITE_ERRNOS = {
    errno.ENOSPC,
    errno.EROFS,
    errno.EACCES,
    errno.EFBIG,
    getattr(errno, "EDQUOT", errno.ENOSPC),
}
"""A full disk or quota, a read-only or forbidden folder, a file too large for its
filesystem (FAT32's 4 GiB) or the process' file-size limit: the machine's state, not a bug."""

STAGED = ("synth", "shard", "export", "import", "forecast", "predict")
"""Commands that write their output into a staging folder swapped in at the end: an
interrupt leaves the output folder as it was (train and reproduce say their own line)."""
ONE_PROCESS = ("synth", "shard", "inspect", "export", "import")
"""Commands that are one process's work: started on several ranks (`torchrun`, a SLURM step
of several tasks) every rank wrote the same folder (a race, a rank's error for a folder
the other had filled) and printed the same lines; the main process alone does it now."""


def _several_ranks() -> bool:
    """Whether this process is one rank of several (a lost connection can be a peer's): a
    process group of more than one, or a launcher's WORLD_SIZE above 1."""
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        return dist.get_world_size() > 1
    size = os.environ.get("WORLD_SIZE", "")
    return size.isdigit() and int(size) > 1


def _open_trainers() -> set[Any]:
    """The Trainers open now (none where the Trainer's module was never loaded)."""
    trainer = sys.modules.get("stpdist.trainer")
    return set() if trainer is None else set(trainer.open_trainers())


def _close_command_trainers(exit_code: int, earlier: set[Any]) -> None:
    """The command's open Trainers (not those open before it) closed now; a failed one's
    trackers marked failed (see `trainer.close_command_trainers`)."""
    trainer = sys.modules.get("stpdist.trainer")
    if trainer is not None:
        with contextlib.suppress(Exception):  # the error (or stop) is said; not hidden
            trainer.close_command_trainers(exit_code, leave=earlier)


IN_USE_STATUS = 75
"""The exit status of a command refused because a live run holds its run folder: the
same command succeeds once that run has ended (sysexits' EX_TEMPFAIL, as a training
stopped with a checkpoint: run it again). A scheduler retries it; 2 it should not."""


def _refused(
    label: str,
    exc: BaseException,
    earlier: set[Any],
    *,
    alike_on_every_rank: bool,
    status: int = 2,
) -> int:
    """A user's error in one line, exit `status` (2; IN_USE_STATUS). An error that every
    rank meets alike (the same config, or the same arguments and files read before the
    ranks joined) is said by the main process alone: one line for the run, not one per rank.

    One process closes its Trainers first, so that the error is the last line a log file
    shows. Under a launcher (several ranks) the line comes first: a launcher ends the
    others as soon as one rank exits, and the main process was often ended before it had
    said anything (3 runs in 8 under torchrun); a silent rank waits a moment for it."""
    line = f"stpdist: {label}: {_message(exc)}"
    speaks = launched_as_main() or not alike_on_every_rank
    several = _several_ranks()
    if speaks and several:
        error_line(line)
    _close_command_trainers(status, earlier)
    if speaks and not several:
        error_line(line)
    if several and not speaks:
        _wait_for_the_speaker()
    return status


SILENT_RANK_WAIT_S = 2.0
"""How long at most a rank that leaves an error to the main process waits before it exits:
the launcher ends every rank once one exits, and the main one needs the moment to say it."""


def _wait_for_the_speaker() -> None:
    """Up to SILENT_RANK_WAIT_S, and no longer than until a rank beside this one (another
    child of the same launcher) has ended: the main process, having said the error, or the
    launcher ending them all. A main process on another node: the whole wait."""
    deadline = time.monotonic() + SILENT_RANK_WAIT_S
    siblings = _sibling_pids()
    while time.monotonic() < deadline:
        time.sleep(0.02)
        if siblings and not siblings <= _sibling_pids():
            return


def _sibling_pids() -> set[int]:
    """The running processes (zombies left out) that share this one's parent (Linux's
    /proc; none where it cannot be read)."""
    parent, found = os.getppid(), set()
    try:
        tasks = os.listdir(f"/proc/{parent}/task")
    except OSError:
        return found
    for task in tasks:
        with contextlib.suppress(OSError, ValueError):
            with open(f"/proc/{parent}/task/{task}/children") as listed:
                found.update(int(pid) for pid in listed.read().split())
    found.discard(os.getpid())
    return {pid for pid in found if _running(pid)}


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _group_started() -> bool:
    """Whether this process has joined its process group: from then on an input error can
    be its rank's own (a shard only it reads), so each rank says its own; before, every rank
    read the same arguments and files and failed alike, and the main process speaks."""
    dist = sys.modules.get("torch.distributed")
    return bool(dist is not None and dist.is_available() and dist.is_initialized())


def _environment_error(exc: BaseException, command: str) -> str | None:
    """One line for a failure that the machine caused, from anywhere in a command: an
    OSError of `_WRITE_ERRNOS` (here or as the cause of `exc`) names the path it carries
    (and the free space left for a full disk); another rank's death (a lost gloo
    connection) says so and how to go on. None for anything else."""
    if isinstance(exc, OSError) and exc.errno == errno.EMFILE:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        return (
            f"too many open files (this process may open {soft}: `ulimit -n`): raise the "
            "limit (ulimit -n 4096 in the job script) or use fewer data workers "
            "(trainer.num_workers)"
        )
    found: BaseException | None = exc
    while found is not None and not (isinstance(found, OSError) and found.errno in _WRITE_ERRNOS):
        found = found.__cause__
    if isinstance(found, OSError):
        from .checkpoint import file_size_limit, free_space

        cause = found.strerror or os.strerror(found.errno)
        if found.filename is None:
            return f"{cause} (the error names no file; --debug shows where)"
        path = Path(os.fsdecode(found.filename))
        where = str(path)
        if found.filename2 is not None:
            where += f" → {os.fsdecode(found.filename2)}"
        space = ""
        if found.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
            space = free_space(path if path.is_dir() else path.parent)
        if found.errno == errno.EFBIG:
            space = file_size_limit()
        return f"{where}: {cause}{space}"
    text = str(exc)
    if isinstance(exc, RuntimeError) and re.match(
        r"DataLoader worker \(pid.*exited unexpectedly", text
    ):
        return (
            f"{text}: a data worker ended, its own error above (shared memory full, `df -h "
            "/dev/shm`? memory? a file-size limit?); fewer workers (trainer.num_workers) or "
            "more shared memory (docker --shm-size) may help"
        )
    if peer_lost(exc) and _several_ranks():
        again = "resume with --resume auto" if command in ("train", "reproduce") else "run it again"
        first = re.sub(r"^\[[^\]]*\]\s*", "", text.strip().splitlines()[0]).split(". ")[0]
        return (
            "another rank of this run stopped (crashed or killed): see its output; "
            f"{again} ({type(exc).__name__}: {first})"
        )
    return None


def _message(exc: BaseException) -> str:
    """`str(exc)`, without the worker's traceback that torch's DataLoader puts before an
    error raised in one of its workers: that error's own last line."""
    text = str(exc)
    if not (text.startswith("Caught ") and "Original Traceback" in text):
        return text
    last = text.rstrip().splitlines()[-1]
    cls = type(exc)
    for prefix in (f"{cls.__module__}.{cls.__qualname__}: ", f"{cls.__name__}: "):
        if last.startswith(prefix):
            return last[len(prefix) :]
    return last


def run() -> None:
    """The `stpdist` command (and `python -m stpdist`): `main`, then the process ends as the
    interpreter ends a program, without its teardown of every object (`end_process`: about
    0.9 s of CPU a command once torch is loaded). Under a profiler, a tracer or a debugger
    (`python -m cProfile -m stpdist …`), which write their results once the program
    returns, it returns as `sys.exit` would. An exception `main` lets through (`--debug`)
    ends the interpreter's way, with its traceback."""
    try:
        status = main()
    except SystemExit as stop:  # argparse's errors and --help
        status = stop.code
    if _watched():
        raise SystemExit(status)
    end_process(status)


def _watched() -> bool:
    """Whether a profiler, tracer, debugger or coverage tool watches this process."""
    if sys.gettrace() is not None or sys.getprofile() is not None:
        return True
    monitoring = getattr(sys, "monitoring", None)  # Python 3.12+: coverage, debuggers
    return monitoring is not None and any(monitoring.get_tool(i) for i in range(6))


if __name__ == "__main__":
    run()
