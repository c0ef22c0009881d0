"""Where results go, main process only: `<output_dir>/metrics.jsonl` (always), sample
pictures in `<output_dir>/samples/`, and the trackers named in `logging.trackers` (wandb,
tensorboard) through accelerate's tracker API.

No other rank builds media or talks to a tracker. Without a tracker configured, training
works the same and the local files are still written. A tracker that fails while training
(wandb's service killed, a full disk) is one warning and is left out from then on: training
and `metrics.jsonl` go on (`Tracker._sent`).

One tracker run per training: a fresh training creates a run id (wandb's run id; the
tensorboard folder with it) and keeps it in `<output_dir>/tracker.json`; every resume
(`--resume auto`, a requeued SLURM job, another number of ranks) continues that run, its
steps in increasing order with none twice. What a killed process had sent but the tracker
had not stored yet is lost with it (offline wandb keeps nothing of a SIGKILLed process'
unflushed history, measured with wandb 0.31): on resume, wandb gets the steps up to the
checkpoint's that it lacks from `metrics.jsonl`, then the run goes on above the newest
step wandb holds; tensorboard drops the earlier events above the checkpoint's step
(`purge_step`) and gets them again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib.util
import json
import os
import secrets
import shutil
import string
import sys
import time
from collections.abc import Iterator, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from .checkpoint import replace_text
from .config import Config, LoggingConfig, check_values, to_dict
from .console import json_number, log, plain, say
from .errors import InputError

_PACKAGES = {"wandb": ("wandb", "wandb"), "tensorboard": ("tensorboard", "tensorboard")}
"""tracker → (module to find, stpdist extra that installs it)."""
TRACKER_FILE = "tracker.json"
"""In the output folder: this training's tracker run (`run_id`, `project`,
`tensorboard_dir`), written once, when the training starts from step 0."""


FOREIGN_ROWS_KEPT = 10_000
"""The most rows of others (`validate`s) a pending record lists."""


def _row_digest(line: str) -> str:
    """A metrics.jsonl row's digest, as `log` writes it and as it reads back (each holds
    its time to the millisecond: two rows alike are one row logged twice)."""
    return hashlib.sha256(line.strip("\n").encode()).hexdigest()[:32]


PENDING_FILE = ".metrics.pending.json"
"""In the output folder, while a training resumed from an older checkpoint than the newest
has not saved yet: where its rows begin in `metrics.jsonl` (`MetricsLog.begin_pending`)."""


class MetricsLog:
    """Appends one JSON object per `log` call to `metrics.jsonl`."""

    def __init__(self, output_dir: str | Path) -> None:
        self.path = Path(output_dir) / "metrics.jsonl"
        self.pending = Path(output_dir) / PENDING_FILE
        self._inherited: int | None = None  # bytes in the file before this process wrote
        self._pending_mine = False  # whether `pending` is this training's, while it runs

    def log(self, values: dict[str, Any], *, step: int, epoch: int) -> None:
        record = {"step": step, "epoch": epoch, "time": round(time.time(), 3)}
        record.update({k: plain(v) for k, v in values.items()})
        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = json.dumps(record) + "\n"
        if self._inherited is None:
            self._own_file()
            self._inherited = self.path.stat().st_size if self.path.is_file() else 0
            if self._inherited and not self._ends_a_line():
                line = "\n" + line  # a line torn by a killed process: ours starts anew
        if not self._pending_mine:
            self._note_foreign_row(line)  # not the recorded training's (a `validate`'s)
        try:
            with open(self.path, "a") as handle:
                handle.write(line)
        except OSError as exc:  # a write's error names no file (a dataops review)
            if exc.filename is not None or exc.errno is None:
                raise
            raise OSError(exc.errno, exc.strerror, str(self.path)) from exc

    def _own_file(self) -> None:
        """A `metrics.jsonl` that is a link (a run copied with `cp -al` or `cp -rs`, then
        resumed: the copy's lines went into the original run's file) becomes a file of
        this run's own, with the same lines, before anything is appended."""
        if not (self.path.is_symlink() or (self.path.is_file() and self.path.stat().st_nlink > 1)):
            return
        copy = self.path.with_name(f".{self.path.name}.own-{os.getpid()}")
        copy.write_bytes(self.path.read_bytes() if self.path.exists() else b"")  # dangling
        os.replace(copy, self.path)  # the link's entry replaced; its target untouched
        log.info("%s was a link to another file: this run keeps a copy of its own", self.path)

    def _ends_a_line(self) -> bool:
        with open(self.path, "rb") as handle:
            handle.seek(-1, os.SEEK_END)
            return handle.read(1) == b"\n"

    def forget_own_lines(self) -> None:
        """From now on, the lines already in the file count as an earlier start's."""
        self._inherited = None

    def set_aside(self) -> Path | None:
        """A training that starts from step 0 begins a new file: the lines of metrics.jsonl
        that this process did not write (a run that stopped before its first checkpoint, a
        file of the user's) move to `metrics.earlier-N.jsonl`, N the first free number,
        instead of mixing with the new run's. Returns that file (None: nothing moved)."""
        self.pending.unlink(missing_ok=True)  # an earlier start's: its rows go with the rest
        if not self.path.is_file():
            return None
        data = self.path.read_bytes()
        inherited = len(data) if self._inherited is None else self._inherited
        if not inherited:
            return None
        number = 1
        while (aside := self.path.with_name(f"metrics.earlier-{number}.jsonl")).exists():
            number += 1
        aside.write_bytes(data[:inherited])
        replace_text(self.path, data[inherited:].decode())
        self._inherited = 0
        return aside

    def set_aside_after(self, step: int) -> tuple[Path, int] | None:
        """A training resumed at `step` goes on from there: the lines of steps after it (a
        process killed past its last checkpoint, a resume from an older checkpoint) were
        written by a run that is trained again, and move to `metrics.replaced-N.jsonl`, N
        the first free number, so that the file holds each step once, as an uninterrupted
        run's does. Lines that are no JSON record (torn by a kill) move with them. Returns
        (that file, the records moved), None when nothing moved."""
        # the rows of this file are one trajectory's from here on (this run's first save,
        # or a resume whose earlier stopped attempt `set_aside_orphans` dealt with)
        self.pending.unlink(missing_ok=True)
        if not self.path.is_file():
            return None
        kept: list[str] = []
        moved: list[str] = []
        count = 0
        data = self.path.read_bytes()
        inherited = len(data) if self._inherited is None else self._inherited
        # this process's lines: kept (without the newline `log` put before its first when
        # the file ended in a torn line, which moves aside)
        own = data[inherited:].decode(errors="replace").lstrip("\n")
        for line in data[:inherited].decode(errors="replace").splitlines(keepends=True):
            try:
                record = json.loads(line)
            except ValueError:
                record = None
            if not line.strip():
                continue
            at = record.get("step") if isinstance(record, dict) else None
            if isinstance(at, int) and at <= step:
                kept.append(line if line.endswith("\n") else line + "\n")
            else:
                moved.append(line if line.endswith("\n") else line + "\n")
                count += isinstance(at, int)
        if not moved:
            return None
        number = 1
        while (aside := self.path.with_name(f"metrics.replaced-{number}.jsonl")).exists():
            number += 1
        replace_text(aside, "".join(moved))  # first: a kill between keeps both copies
        replace_text(self.path, "".join(kept) + own)
        if self._inherited is not None:
            self._inherited = len("".join(kept).encode())
        return aside, count

    def begin_pending(self, from_step: int) -> None:
        """A training resumed from `from_step`, older than the newest checkpoint, leaves the
        rows of later steps (that trajectory's, which `--resume auto` still goes on along)
        until its first save moves them aside (`set_aside_after`); its own rows follow
        them. Where they begin is written down (`PENDING_FILE`, with a digest of the lines
        before): should it stop before that save, the next start knows them as rows of no
        checkpoint (`set_aside_orphans`), where they kept steps twice (stop 53's case)."""
        data = self.path.read_bytes() if self.path.is_file() else b""
        record = {"offset": len(data), "from_step": from_step,
                  "sha256": hashlib.sha256(data).hexdigest()}  # fmt: skip
        replace_text(self.pending, json.dumps(record))
        self._pending_mine = True

    def release_pending(self) -> None:
        """The training that wrote `pending` (`begin_pending`) has ended, saved or not: rows
        this process logs from now on (a `validate` after a failed fit) are not its."""
        self._pending_mine = False

    def _note_foreign_row(self, line: str) -> None:
        """A row another than the training `pending` records logs (a `validate` of a
        checkpoint, run while that training runs or after it stopped): its digest is added
        to the record, so that the row stays where it is when that training's rows go aside
        (diff reviews: a checkpoint's test results went aside with them; an `end` put
        where another logged left the training's later rows)."""
        found = self._pending_record(quiet=True)
        if found is None:
            return
        offset, from_step, digest, foreign = found
        if len(foreign) >= FOREIGN_ROWS_KEPT:
            return  # the record stays small; the rows beyond go aside with the training's
        foreign = [*foreign, _row_digest(line)]
        record = {"offset": offset, "from_step": from_step, "sha256": digest, "foreign": foreign}
        replace_text(self.pending, json.dumps(record))

    def _pending_record(self, *, quiet: bool = False) -> tuple[int, int, str, list[str]] | None:
        """`PENDING_FILE`'s (offset, from step, digest, the digests of rows others logged
        since); None without one (or a damaged one, removed: rows are then left as they
        are, as before it existed)."""
        try:
            flags = os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_NONBLOCK", 0)  # a link, a FIFO
            with open(os.open(self.pending, flags), "rb") as handle:
                record = json.loads(handle.read(1 << 20))
            found = (
                record["offset"],
                record["from_step"],
                record["sha256"],
                record.get("foreign", []),
            )
        except FileNotFoundError:
            return None
        except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
            if not quiet:
                say(f"{self.pending} does not read ({exc}): removed, metrics.jsonl left as it is")
                self.pending.unlink(missing_ok=True)
            return None
        offset, from_step, digest, foreign = found
        numbers = all(isinstance(n, int) and not isinstance(n, bool) for n in (offset, from_step))
        listed = isinstance(foreign, list) and all(isinstance(f, str) for f in foreign)
        if not (numbers and isinstance(digest, str) and listed):
            if not quiet:
                say(f"{self.pending} holds no offset, step and digest: removed, metrics.jsonl left")
                self.pending.unlink(missing_ok=True)
            return None
        return offset, from_step, digest, foreign

    def set_aside_orphans(self) -> tuple[Path, int, int] | None:
        """At a resume: the rows that a training resumed from an older checkpoint wrote
        before it stopped without saving (`begin_pending`) belong to no checkpoint. Those
        of steps after the one it resumed from move to `metrics.replaced-N.jsonl` (lines
        that are no JSON record with them); the rest stay, and so does every other line.
        A file changed since (its lines before them differ) is left as it is, with a line.
        Returns (that file, the records moved, the step that training resumed from)."""
        found = self._pending_record()
        if found is None:
            return None
        offset, from_step, digest, foreign = found
        data = self.path.read_bytes() if self.path.is_file() else b""
        if not 0 <= offset <= len(data) or hashlib.sha256(data[:offset]).hexdigest() != digest:
            say(
                f"{self.pending} names lines of {self.path} that changed since (edited?): "
                "the rows of the training it recorded are left as they are"
            )
            self.pending.unlink(missing_ok=True)
            return None
        kept: list[str] = []
        moved: list[str] = []
        count = 0
        # every line after them (also those an earlier fit of this process wrote) but the
        # rows others logged meanwhile (`_note_foreign_row`)
        others = set(foreign)
        for line in data[offset:].decode(errors="replace").splitlines(keepends=True):
            if not line.strip():
                continue
            line = line if line.endswith("\n") else line + "\n"
            try:
                record = json.loads(line)
            except ValueError:
                record = None
            at = record.get("step") if isinstance(record, dict) else None
            if _row_digest(line) in others or (isinstance(at, int) and at <= from_step):
                kept.append(line)  # another's; or the resumed step's (validated again)
            else:
                moved.append(line)
                count += isinstance(at, int)
        if moved:
            number = 1
            while (aside := self.path.with_name(f"metrics.replaced-{number}.jsonl")).exists():
                number += 1
            replace_text(aside, "".join(moved))  # first: a kill between keeps both copies
            before = data[:offset].decode(errors="replace")
            if before and not before.endswith("\n"):
                before += "\n"  # a torn line ends (it stays; no record reads it)
            replace_text(self.path, before + "".join(kept))
            self._inherited = None  # every line is an earlier start's now
        self.pending.unlink(missing_ok=True)
        return (aside, count, from_step) if moved else None

    def records(self) -> Iterator[dict[str, Any]]:
        """Every record so far, oldest first (a line torn by a killed process skipped)."""
        if not self.path.is_file():
            return
        with open(self.path) as handle:
            for line in handle:
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                if isinstance(record, dict):
                    yield record


def _finish_another_wandb_run(run_id: str) -> None:
    """wandb keeps one run a process: an earlier Trainer's, not closed (a loop over trials
    without `trainer.close()`), made wandb.init return that run, and every later trial
    logged into the first trial's run. It is finished first, with a line."""
    wandb = sys.modules.get("wandb")
    active = getattr(wandb, "run", None)
    if active is None or active.id == run_id:  # none, or this training's own (a second fit)
        return
    say(
        f"finishing wandb run {active.id}, of an earlier Trainer of this process that was not "
        "closed: call trainer.close() when a Trainer is done"
    )
    active.finish()


WANDB_MODES = {"online": "online", "run": "online", "offline": "offline", "dryrun": "offline",
               "shared": "shared", "disabled": None}  # fmt: skip
"""`WANDB_MODE` values (wandb's, its older names included) → the mode a run takes (None:
no wandb run)."""


def _wandb_mode_of_environment(
    config: LoggingConfig,
) -> tuple[LoggingConfig, str | InputError | None]:
    """`config` with the wandb mode `WANDB_MODE` sets, when it is set: the environment rules
    over `logging.wandb.mode` (cluster nodes without internet export `offline`; `disabled`
    drops the wandb tracker), and a line to say when it changes anything."""
    env = os.environ.get("WANDB_MODE")
    if "wandb" not in config.trackers or not env:
        return config, None
    if env not in WANDB_MODES:  # raised when a wandb run would start (`Tracker.start`)
        return config, InputError(
            f"WANDB_MODE={env!r} in the environment: expected online, offline, shared or "
            "disabled (or wandb's older names run, dryrun)"
        )
    mode = WANDB_MODES[env]
    if mode is None:
        trackers = [name for name in config.trackers if name != "wandb"]
        return dataclasses.replace(config, trackers=trackers), (
            "WANDB_MODE=disabled in the environment: no wandb run (logging.trackers names wandb)"
        )
    if mode == config.wandb.mode:
        return config, None
    wandb = dataclasses.replace(config.wandb, mode=mode)
    return dataclasses.replace(config, wandb=wandb), (
        f"WANDB_MODE={env} in the environment: the wandb run is {mode} (logging.wandb.mode "
        f"is {config.wandb.mode})"
    )


class Tracker:
    """metrics.jsonl + sample pictures + the configured trackers, from `logging`."""

    def __init__(
        self, output_dir: str | Path, config: LoggingConfig, *, run_config: Config | None = None
    ) -> None:
        check_values(config, "logging.")  # a LoggingConfig built in Python: checked here
        self.output_dir = Path(output_dir)
        self.config, self._mode_note = _wandb_mode_of_environment(config)
        self.run_config = run_config
        self.is_main = False  # set by the Trainer once the Accelerator knows
        self.metrics = MetricsLog(output_dir)
        self.accelerator: Any = None
        self._record: dict[str, Any] = {}  # tracker.json's content, once started
        self._wandb_floor: int | None = None  # the newest step wandb held at the start
        self._wandb_offline: Path | None = None  # the offline run's wandb folder
        self._wandb_step: int | None = None  # the newest step this process sent wandb
        self._validation: tuple[int, int] | None = None  # (number, step) of the newest
        self._pictures_failed = False  # whether a validation's pictures failed to be written

    @property
    def num_samples(self) -> int:
        return self.config.num_samples

    @property
    def log_with(self) -> list[str]:
        """The accelerate trackers to create; a missing package is a clear error."""
        for name in self.config.trackers:
            module, extra = _PACKAGES[name]
            if importlib.util.find_spec(module) is None:
                raise ImportError(
                    f"logging.trackers holds {name} but it is not installed "
                    f"(pip install 'stpdist[{extra}]')"
                )
        return list(self.config.trackers)

    def start(self, accelerator: Any, *, step: int = 0) -> None:
        """Initialise the trackers (accelerate does it on the main process only): a fresh
        training (`step` 0) starts a new tracker run, a resumed one (`step`: the
        checkpoint's) continues the run `tracker.json` names."""
        self.accelerator = accelerator
        # lines of an earlier fit of this process (one that failed before its first
        # checkpoint) are an earlier start's; a validation before the first fit (a
        # baseline at step 0) is this run's own
        if getattr(self, "_started", False):
            self.metrics.forget_own_lines()
        self._started = True
        if self.is_main and step == 0 and (aside := self.metrics.set_aside()) is not None:
            say(f"{self.metrics.path} held lines of an earlier start: moved to {aside}")
        if self.is_main and isinstance(self._mode_note, str):
            say(self._mode_note)
            self._mode_note = None
        if self.is_main:
            self._clear_unfinished_pictures()
        if not self.config.trackers or not self.is_main:
            return
        if isinstance(self._mode_note, InputError):  # a wandb run starts: its mode unknown
            raise self._mode_note
        run = self._run_record(step)
        w = self.config.wandb
        # as saved: values read from the environment stay `${oc.env:NAME}` (secrets)
        config = to_dict(self.run_config) if self.run_config is not None else {}
        init_kwargs: dict[str, dict[str, Any]] = {
            "wandb": {
                "entity": w.entity,
                "name": w.name,
                "tags": list(w.tags),
                "mode": w.mode,
                "dir": str(self.output_dir),
                "id": run["run_id"],
                "resume": "allow",  # the run if it exists (online), else a new one of this id
            }
        }
        # tensorboard hides the events an earlier process wrote above the steps this one
        # starts after (all of them for a fresh training): they are logged again
        init_kwargs["tensorboard"] = {"purge_step": step + 1 if step else 0}
        if "wandb" in self.config.trackers:
            _finish_another_wandb_run(run["run_id"])
        accelerator.init_trackers(run["project"], init_kwargs=init_kwargs)
        for tracker in accelerator.trackers:
            # tensorboard's hparams take flat scalars only; wandb keeps the nesting, the
            # same whatever other trackers are on (`config.trainer.max_epochs` in every run)
            tracker.store_init_configuration(
                flat_dict(config) if tracker.name == "tensorboard" else config
            )
        self._wandb_floor = None
        if "wandb" in self.config.trackers:
            wandb_run = accelerator.get_tracker("wandb", unwrap=True)
            self._wandb_offline = _offline_folder(wandb_run)
            if step:
                self._wandb_floor = self._wandb_newest_step(wandb_run)
                self._replay(wandb_run, step)

    def replace_rows_of_stopped_attempt(self, step: int) -> None:
        """At a resume (at `step`, not 0: a fresh training's `start` sets every row aside):
        the rows of an earlier training resumed from an older checkpoint that stopped
        before its first save (see `MetricsLog.set_aside_orphans`) are moved aside and
        said (main process)."""
        if step and self.is_main and (replaced := self.metrics.set_aside_orphans()):
            aside, count, step = replaced
            say(
                f"{self.metrics.path} held {count} record(s) of a training resumed from step "
                f"{step} that stopped before its first checkpoint: no checkpoint holds them, "
                f"moved to {aside}"
            )

    def keep_rows_pending(self, step: int) -> None:
        """A resume at `step`, older than the newest checkpoint: the rows of later steps
        stay until this run's first save (`replace_rows_after`); where this run's own
        begin is written down (`MetricsLog.begin_pending`, main process)."""
        if self.is_main:
            self.metrics.begin_pending(step)

    def replace_rows_after(self, step: int) -> None:
        """A resume at `step` goes on from there: the earlier processes' rows of later steps
        (see `MetricsLog.set_aside_after`) are moved aside and said (main process)."""
        if self.is_main and (replaced := self.metrics.set_aside_after(step)):
            say(
                f"{self.metrics.path} held {replaced[1]} record(s) of steps after {step}, "
                f"the checkpoint's, which this run trains again: moved to {replaced[0]}"
            )

    def _run_record(self, step: int) -> dict[str, Any]:
        """This training's tracker run from `tracker.json` (resumed), or a new one written
        there (a fresh training, or a resumed one that has none)."""
        path = self.output_dir / TRACKER_FILE
        project = self.config.wandb.project
        known = _read_record(path) if step else None
        if known is None:
            # a wandb sweep agent names its trial's run in WANDB_RUN_ID (wandb then ignores
            # init's `id`): this training's record must hold that id (stpdist/sweep.py)
            run_id = os.environ.get("WANDB_RUN_ID") or _new_run_id()
            self._say_earlier_run(path, run_id)
            known = {"run_id": run_id, "project": project, "tensorboard_dir": project}
            _write_record(path, known)  # tensorboard: accelerate's <output_dir>/<project>
        elif known["project"] != project:
            say(
                f"logging.wandb.project is {project!r}, but this training's tracker run "
                f"{known['run_id']} is in {known['project']!r} ({path}): continuing it there"
            )
        self._record = known
        return known

    def _say_earlier_run(self, path: Path, run_id: str) -> None:
        """A training from step 0 where `tracker.json` names a run (a start that stopped
        before its first checkpoint): a new tracker run, and a line naming the earlier's,
        whose wandb folders stay (each such restart left one that no line named)."""
        if "wandb" not in self.config.trackers:  # tensorboard hides the earlier events
            return
        with contextlib.suppress(InputError, OSError):
            earlier = _read_record(path)
            if earlier is not None and earlier["run_id"] != run_id:
                say(
                    f"{path} named the tracker run {earlier['run_id']} of an earlier start, "
                    f"which left no checkpoint: this training is a new run, {run_id}; the "
                    f"earlier run's wandb folders stay ({self.output_dir / 'wandb'}/*-"
                    f"{earlier['run_id']}): delete them if you do not want them"
                )

    def _wandb_newest_step(self, wandb_run: Any) -> int:
        """The newest step the resumed wandb run holds (-1: none): online, the server's
        (wandb starts a resumed run at the step after it); offline, the newest history
        step in the run files of this run id's earlier folders."""
        if self._wandb_offline is None:
            return int(wandb_run.starting_step) - 1
        current = Path(wandb_run.dir).parent.resolve()
        steps = [
            max(history_steps(folder / f"run-{self._record['run_id']}.wandb"), default=-1)
            for folder in self._wandb_offline.glob(f"offline-run-*-{self._record['run_id']}")
            if folder.resolve() != current
        ]
        return max(steps, default=-1)

    def _replay(self, wandb_run: Any, step: int) -> None:
        """Send wandb the logged scalars of steps it lacks up to `step` (the checkpoint's),
        from `metrics.jsonl`: those the stopped process' wandb never stored."""
        rows: dict[int, dict[str, Any]] = {}
        for record in self.metrics.records():
            at = record.get("step")
            if isinstance(at, int) and self._wandb_floor < at <= step:
                values = {k: v for k, v in record.items() if k not in ("step", "epoch", "time")}
                if not self._thinned(values, at):
                    rows.setdefault(at, {}).update(_numbers(values))
        tracker = self.accelerator.get_tracker("wandb")
        drawn = []
        for at in sorted(rows):
            if not self._sent(tracker, at, partial(wandb_run.log, rows[at], step=at)):
                return
            folder = self.output_dir / "samples" / f"step-{at:08d}"
            if folder.is_dir():  # its validation's pictures, as drawn then
                images, gifs = _drawn_pictures(folder)
                if images or gifs:
                    send = (
                        partial(_log_wandb_media, tracker, images, gifs, at)
                        if gifs
                        else partial(tracker.log_images, images, step=at)
                    )
                    if not self._sent(tracker, at, send):
                        return
                    drawn.append(at)
        if rows:
            pictures = f" (and the pictures of step(s) {', '.join(map(str, drawn))})" * bool(drawn)
            say(
                f"wandb run {self._record['run_id']} lacked steps {min(rows)}–{max(rows)}: "
                f"sent them from metrics.jsonl{pictures}"
            )
        self._wandb_floor = max(self._wandb_floor, step - 1)  # the rest follows live

    def _takes(self, tracker: Any, step: int) -> bool:
        """Whether `tracker` takes a result of `step`: wandb never one at or below the
        newest step it held when this process started (it would refuse it online, and
        keep a second copy offline)."""
        floor = self._wandb_floor
        return tracker.name != "wandb" or floor is None or step > floor

    def _thinned(self, values: dict[str, Any], step: int) -> bool:
        """Training scalars of a step that `trackers_every_n_steps` leaves out: a training
        window's (`train/loss`, `train/lr`, …), never an epoch's summary (`train/epoch_loss`,
        `time_s`), which comes once an epoch, at a step the thinning knows nothing of."""
        every = self.config.trackers_every_n_steps
        window = any(k.startswith("train/") and not k.startswith("train/epoch_") for k in values)
        return bool(every and step % every and window)

    def _sent(self, tracker: Any, step: int, send: Any) -> bool:
        """`send()` to `tracker`; whether it went. A tracker that fails (wandb's service
        killed, a full disk under tensorboard's folder) is a view of the run, not its result:
        one warning naming it and the error, it is dropped from this process's trackers and
        training goes on (metrics.jsonl holds every result; a resume sends wandb the steps
        up to its checkpoint that wandb lacks). KeyboardInterrupt and SystemExit still stop."""
        try:
            send()
            if tracker.name == "wandb":
                self._wandb_step = max(step, self._wandb_step or step)
        except Exception as exc:
            error = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            log.warning(
                "%s failed at step %d (%s%s): training goes on without it; %s holds every result",
                tracker.name,
                step,
                type(exc).__name__,
                f": {error}" if error else "",
                self.metrics.path,
            )
            with contextlib.suppress(ValueError):
                self.accelerator.trackers.remove(tracker)  # not logged to, nor finished
            return False
        return True

    def set_wandb_summary(self, values: dict[str, Any]) -> None:
        """`values` into the wandb run's summary (none without a wandb run), to stay there.
        wandb holds the newest step's row until a later step or its finish, and sending it
        then overwrites the summary with that row's values: a sweep trial's best value
        became its last (the sweep ranked trials by it). So that row is sent first."""
        if not self.is_main:
            return
        run = self.accelerator.get_tracker("wandb", unwrap=True)
        if not hasattr(run, "summary"):  # accelerate's blank stand-in: no wandb run
            return
        if self._wandb_step is not None and run.step == self._wandb_step:  # still held
            run.log({}, step=self._wandb_step, commit=True)
        run.summary.update(values)

    def finish(self) -> None:
        """After the trackers ended (`Trainer.close`): for an offline wandb run, the
        command that uploads it, every folder of this training's run, oldest first."""
        folder = self._wandb_offline
        if folder is None:
            return
        self._wandb_offline = None
        run_id = self._record["run_id"]
        parts = sorted(folder.resolve().glob(f"offline-run-*-{run_id}"))
        if not parts:  # nothing of this run was written offline
            return
        say(
            f"offline wandb run {run_id}; upload it with: "
            f"wandb sync {' '.join(str(p) for p in parts)}"
        )

    @property
    def _tracking(self) -> bool:
        return self.is_main and self.accelerator is not None and bool(self.accelerator.trackers)

    def log_unless_logged(self, values: dict[str, Any], *, step: int, epoch: int) -> bool:
        """`log`, unless `metrics.jsonl` holds a record of `step` with all of `values`' keys
        (results a checkpoint stored whose logging a killed process never reached);
        returns whether it logged."""
        if not self.is_main or not values:
            return False
        for record in self.metrics.records():
            if record.get("step") == step and set(values) <= set(record):
                return False
        self.log(values, step=step, epoch=epoch)
        return True

    def log(self, values: dict[str, Any], *, step: int, epoch: int) -> None:
        if not self.is_main:
            return
        self.metrics.log(values, step=step, epoch=epoch)
        if not self._tracking:
            return
        if self._thinned(values, step):
            return
        scalars = _numbers(values)
        for tracker in list(self.accelerator.trackers):
            if self._takes(tracker, step):
                self._sent(tracker, step, partial(tracker.log, scalars, step=step))

    def log_samples(
        self,
        samples: list[tuple[str, np.ndarray, np.ndarray, np.ndarray]],
        results: dict[str, Any],
        *,
        step: int,
        channel_names: Sequence[str] | None = None,
    ) -> Path | None:
        """Panels (PNG), GIFs and the per-lead-time plot of a validation, in
        `samples/step-N/` and on every tracker (images; GIF videos on wandb); channels
        labelled by `channel_names` (the dataset's variables) where given. Drawn at the
        validations `logging.samples_every_n_validations` picks (`_pictures_due`). Pictures
        never stop a run: a failure to draw or write them (a full disk) is a warning naming
        the folder, this validation's picture files are removed, and None is returned."""
        if not self.is_main or not samples or not self._pictures_due(step):
            return None
        from .visualize import plot_lead_times, sample_file_stems, save_samples

        folder = self.output_dir / "samples" / f"step-{step:08d}"
        # drawn aside, moved in once all are drawn: a process killed while drawing leaves
        # no half a validation's pictures in `folder` (`_clear_unfinished_pictures`)
        drawing = folder.with_name(f".{folder.name}{DRAWING}")
        # file names (and tracker tags) from sanitised keys: a key never leaves `folder`
        stems = sample_file_stems(key for key, *_ in samples)
        try:
            shutil.rmtree(drawing, ignore_errors=True)
            written = save_samples(
                drawing,
                samples,
                self.config.colormap,
                step=step,
                channel_names=channel_names,
                strict=True,  # removed below with the lead-time plot, in one warning
            )
            plot = plot_lead_times(results, drawing / "lead_time.png")
            written, plot = _move_drawn(drawing, folder, written, plot)
            images = _read_pictures(written, plot) if self._tracking else {}
        except Exception as exc:  # (not KeyboardInterrupt, SystemExit: those stop the run)
            # pictures are a view of the run, not its result: a full disk, a folder that
            # cannot be made or a drawing error must not end hours of training
            shutil.rmtree(drawing, ignore_errors=True)
            names = [f"{stem}{suffix}" for stem in stems for suffix in (".png", ".gif")]
            self._picture_failure(folder, step, exc, [*names, "lead_time.png"])
            return None
        except BaseException:  # Ctrl-C, SystemExit: stop, leaving no half-drawn folder
            shutil.rmtree(drawing, ignore_errors=True)
            raise
        if self._tracking:
            gifs = [(stem, gif) for stem, _, gif in written if gif is not None]
            self._send_pictures(images, gifs, step)
        return folder

    def _clear_unfinished_pictures(self) -> None:
        """The pictures a stopped process was drawing (`samples/.step-N.drawing`): removed,
        and said; that validation's results are in metrics.jsonl (or the validation runs
        again on resume, drawing them again)."""
        for drawing in sorted((self.output_dir / "samples").glob(f".step-*{DRAWING}")):
            shutil.rmtree(drawing, ignore_errors=True)
            name = drawing.name[1 : -len(DRAWING)]
            say(
                f"{drawing.parent / name}: the pictures of that validation were being drawn "
                "when the run stopped: removed (drawn again only where this resume runs that "
                "validation again)"
            )

    def _pictures_due(self, step: int) -> bool:
        """Whether the validation at `step` is drawn: validations are numbered 1, 2, … and
        number 1 and every `samples_every_n_validations`-th after it are (1, N+1, 2N+1, …).
        Its number is one more than the steps before `step` that `metrics.jsonl` holds
        validation results of (`val/num_samples`), read once per process: across resumes
        the same validations are drawn as in an uninterrupted run (a training started from
        step 0 moves older lines aside, so it starts at 1)."""
        every = self.config.samples_every_n_validations
        if every == 1:
            return True
        if self._validation is None:
            earlier = {
                record["step"]
                for record in self.metrics.records()
                if "val/num_samples" in record
                and isinstance(record.get("step"), int)
                and record["step"] < step
            }
            number = len(earlier) + 1
        else:
            newest, newest_step = self._validation
            number = newest + (step != newest_step)  # the same step again: the same number
        self._validation = (number, step)
        return (number - 1) % every == 0

    def _picture_failure(self, folder: Path, step: int, exc: Exception, names: list[str]) -> None:
        """Warn, in one line naming `folder` and the error, and remove the picture files
        `names` of this validation from it (complete or partly written), and the folder if
        that leaves it empty."""
        error = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        message = (
            f"{folder}: the sample pictures of step {step} were not written "
            f"({type(exc).__name__}{': ' + error if error else ''}); training goes on"
        )
        if not self._pictures_failed:
            message += " (later validations still try to write theirs)"
        self._pictures_failed = True
        log.warning("%s", message)
        if folder.is_dir():
            for name in names:
                with contextlib.suppress(OSError):
                    (folder / name).unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                folder.rmdir()  # only when empty: files of others stay

    def _send_pictures(
        self, images: dict[str, list[np.ndarray]], gifs: list[tuple[str, Path]], step: int
    ) -> None:
        trackers = [t for t in self.accelerator.trackers if self._takes(t, step)]
        for tracker in trackers:
            if tracker.name == "tensorboard":
                stacked = {k: np.stack(v) for k, v in images.items()}
                send = partial(tracker.log_images, stacked, step=step, dataformats="NHWC")
            elif tracker.name == "wandb" and gifs:  # animations: wandb's own media type
                send = partial(_log_wandb_media, tracker, images, gifs, step)
            else:
                send = partial(tracker.log_images, images, step=step)
            self._sent(tracker, step, send)


def _log_wandb_media(
    tracker: Any, images: dict[str, list[np.ndarray]], gifs: list[tuple[str, Path]], step: int
) -> None:
    """The images (accelerate's `log_images`) and the GIFs as `wandb.Video`s."""
    import wandb

    tracker.log_images(images, step=step)
    videos = [wandb.Video(str(gif), caption=stem, format="gif") for stem, gif in gifs]
    tracker.tracker.log({"samples/gifs": videos}, step=step)


DRAWING = ".drawing"
"""Suffix of the folder a validation's pictures are drawn in, beside `samples/step-N`."""


def _move_drawn(
    drawing: Path, folder: Path, written: list[tuple[str, Path, Path | None]], plot: Path | None
) -> tuple[list[tuple[str, Path, Path | None]], Path | None]:
    """The pictures drawn in `drawing` moved into `folder`, `drawing` removed; returns their
    new paths. A new `folder` is `drawing` renamed (one step: a kill leaves all or none);
    into one that exists (another split's pictures of the step) they move one by one."""
    try:
        os.rename(drawing, folder)  # fails where `folder` exists (and holds anything)
    except OSError:
        folder.mkdir(parents=True, exist_ok=True)
        for path in sorted(drawing.iterdir()):
            os.replace(path, folder / path.name)
        drawing.rmdir()

    def moved(path: Path | None) -> Path | None:
        return None if path is None else folder / path.name

    return [(stem, folder / png.name, moved(gif)) for stem, png, gif in written], moved(plot)


def _drawn_pictures(folder: Path) -> tuple[dict[str, list[np.ndarray]], list[tuple[str, Path]]]:
    """The pictures of a validation as `log_samples` drew them in `folder`, for a tracker
    that lacks them: panels, the lead-time plot, GIFs."""
    panels = sorted(p for p in folder.glob("*.png") if p.name != "lead_time.png")
    written = [(png.stem, png, None) for png in panels]
    plot = folder / "lead_time.png"
    images = _read_pictures(written, plot if plot.is_file() else None)
    return images, [(gif.stem, gif) for gif in sorted(folder.glob("*.gif"))]


def _read_pictures(
    written: list[tuple[str, Path, Path | None]], plot: Path | None
) -> dict[str, list[np.ndarray]]:
    """The panels (`save_samples`' [(stem, png, gif)]) and the lead-time plot as RGB arrays
    for the trackers, tagged `samples/<stem>` and `val/lead_time`."""
    from PIL import Image

    pictures = [(f"samples/{stem}", png) for stem, png, _ in written]
    if plot is not None:
        pictures.append(("val/lead_time", plot))
    return {tag: [np.asarray(Image.open(path).convert("RGB"))] for tag, path in pictures}


def _numbers(values: dict[str, Any]) -> dict[str, Any]:
    """The values a tracker takes as scalars: numbers, NaN and ±inf included (as
    metrics.jsonl writes them, "nan", too); other text left out. A score undefined at a
    step (FAR with no forecast event) is NaN there: left out, the run's summary kept an
    earlier step's value (a metrics review)."""
    numbers = {k: json_number(plain(v)) for k, v in values.items()}
    return {k: v for k, v in numbers.items() if not isinstance(v, str)}


def _offline_folder(wandb_run: Any) -> Path | None:
    """The `wandb` folder that holds an offline run's `offline-run-*` folders (None online)."""
    return Path(wandb_run.dir).parent.parent if getattr(wandb_run, "offline", False) else None


_BLOCK, _HEADER = 32768, 7  # the LevelDB log format of a `.wandb` run file


def history_steps(path: Path) -> list[int]:
    """The steps of the history records in an offline wandb run file, in file order, read
    with wandb's own protobuf `Record` (wandb 0.31 has no Python reader of its own). The
    file is LevelDB's log format: a 7-byte header (`:W&B`, magic, version), then 32 KiB
    blocks of chunks, each with a 7-byte header (CRC, length, type: full, first, middle,
    last). A file torn by a killed writer ends the read."""
    from google.protobuf.message import DecodeError
    from wandb.proto import wandb_internal_pb2

    steps = []
    for data in _log_records(path.read_bytes() if path.is_file() else b""):
        record = wandb_internal_pb2.Record()
        try:
            record.ParseFromString(data)
        except DecodeError:  # a torn last record
            break
        if record.WhichOneof("record_type") == "history":
            steps.append(int(record.history.step.num))
    return steps


def _log_records(data: bytes) -> Iterator[bytes]:
    """The records of a LevelDB-format log (`data` starting with wandb's 7-byte header)."""
    if data[:4] != b":W&B":
        return
    pos, pending = _HEADER, b""
    while pos + _HEADER <= len(data):
        left = _BLOCK - pos % _BLOCK
        if left < _HEADER:  # a block's tail too short for a header is padding
            pos += left
            continue
        length, kind = int.from_bytes(data[pos + 4 : pos + 6], "little"), data[pos + 6]
        if kind == 0:  # zeros: preallocated, never written
            return
        pending += data[pos + _HEADER : pos + _HEADER + length]
        pos += _HEADER + length
        if kind in (1, 4):  # full, last
            yield pending
            pending = b""


def _new_run_id() -> str:
    """8 characters of [a-z0-9], as wandb's own ids."""
    alphabet = string.ascii_lowercase + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(8))


def _read_record(path: Path) -> dict[str, Any] | None:
    """`tracker.json`, or None when absent; a damaged one is an error naming it."""
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
        if not isinstance(record.get("run_id"), str) or not isinstance(record.get("project"), str):
            raise ValueError("no run_id and project strings")
    except (ValueError, AttributeError) as exc:
        raise InputError(
            f"{path}: not a tracker record ({exc}); expected JSON with run_id and project "
            "(delete it to start a new tracker run)"
        ) from None
    return record


def _write_record(path: Path, record: dict[str, Any]) -> None:
    """Atomically: a reader (a requeued job) sees the old file or the new, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(json.dumps(record, indent=1) + "\n")
    os.replace(partial, path)


def flat_dict(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts → `a.b.c` keys; lists and None as strings (tensorboard's hparams; a
    config compared key by key, `reproduce`)."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(flat_dict(value, f"{prefix}{key}."))
        else:
            keep = isinstance(value, int | float | str | bool)
            flat[f"{prefix}{key}"] = value if keep else str(value)
    return flat
