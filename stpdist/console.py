"""The one message channel: everything stpdist tells a person goes through the `stpdist`
logger. `setup(is_main)` gives it a handler that writes through tqdm (so progress bars stay
whole) and lets only the main process speak below warnings. Also the console formats of
results: one-line summaries and the metric × lead-time table.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import sys
from collections.abc import Iterator
from typing import Any, NoReturn

from tqdm.auto import tqdm

log = logging.getLogger("stpdist")
LEAD = re.compile(r"^(.+)/t(\d{2,})$")
"""What a per-lead-time key looks like: `<split>/<metric>[/<variable>]/t<lead>`."""


def lead_keys(keys: Any) -> dict[str, tuple[str, int]]:
    """key → (metric key, lead) for the per-lead-time keys among `keys`. Leads run 1..N
    without a gap for each metric, so a variable that merely looks like a lead (ERA5's
    `t850`, in `val/rmse/t850`) is not taken for lead 850 of `val/rmse`."""
    found: dict[str, dict[int, str]] = {}
    for key in keys:
        match = LEAD.match(key)
        if match:
            found.setdefault(match.group(1), {})[int(match.group(2))] = key
    leads = {}
    for metric, by_lead in found.items():
        lead = 1
        while lead in by_lead:
            leads[by_lead[lead]] = (metric, lead)
            lead += 1
    return leads


class _TqdmHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        try:  # warnings on stderr, where scripts look for them; results on stdout
            stream = sys.stderr if record.levelno >= logging.WARNING else sys.stdout
            # one write a record, newline included: under `python -u` (SLURM jobs often set
            # PYTHONUNBUFFERED) each write is a syscall of its own, and the ranks sharing one
            # log would otherwise put a line's end after another rank's line
            tqdm.write(self.format(record) + "\n", file=stream, end="")
        except BrokenPipeError:  # its reader is gone (`… | head -2`): it hears nothing more
            _to_devnull(stream)
        except Exception:  # logging must never raise into training
            self.handleError(record)


def _to_devnull(stream: Any) -> None:
    """A stream whose pipe was closed, written to /dev/null from now on: the work goes on
    without a traceback a line, and the command ends as it would have (an MLOps review: a
    finished training printed 27 tracebacks and exited 141)."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, stream.fileno())
        os.close(devnull)


_main: bool | None = None
"""Whether this process is the main one, as `setup` was told; None before it was called."""


def setup(is_main: bool) -> None:
    """Messages at INFO from the main process, warnings from every process (a warning
    about what the ranks share from the main one: `warn_main`)."""
    global _main
    _main = is_main
    if not any(isinstance(h, _TqdmHandler) for h in log.handlers):
        handler = _TqdmHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(handler)
        log.propagate = False  # printed once, here, whatever the root logger does
    log.setLevel(logging.INFO if is_main else logging.WARNING)


def warn_main(message: str, *args: Any) -> None:
    """A warning about what every rank shares (the config, the module, the run's plan):
    said by the main process only (rank 0 of a launch before `setup`), not once per rank.
    A warning about one rank's own state goes to `log.warning`."""
    if launched_as_main() if _main is None else _main:
        log.warning(message, *args)


def launched_as_main() -> bool:
    """Whether this process is rank 0 of its launch (`RANK`; a plain process is): the one
    that speaks for all, as the Trainer's main process does."""
    rank = os.environ.get("RANK", "")
    return not rank.isdigit() or int(rank) == 0


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Below errors, nothing said inside: for work done twice (a check before the real
    thing), whose warnings the real thing says."""
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def shows_progress() -> bool:
    """Whether a progress bar would be seen as one: stderr is a terminal. In a log file
    (a SLURM job's, stdout and stderr redirected) tqdm's redraws pile up, ten a second."""
    isatty = getattr(sys.stderr, "isatty", None)
    return bool(isatty and isatty())


def counted(count: int, noun: str) -> str:
    """ "1 shard", "3 shards": `count` with `noun` (its singular), plural unless it is 1."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def error_line(text: str) -> None:
    """`text` and its newline on stderr in one write, flushed: every rank may say its own
    error, and under `python -u` (PYTHONUNBUFFERED) `print` writes the text and the newline
    apart, so two ranks sharing a log could put one's line inside the other's."""
    with contextlib.suppress(Exception):  # no stderr (`2>&-`), a full disk: nowhere to say it
        sys.stderr.write(text + "\n")
        sys.stderr.flush()


def end_process(status: object, *, interrupted: bool = False) -> NoReturn:
    """End this process as the interpreter ends a program that ended with `sys.exit(status)`
    (None: 0; a number; anything else printed, and 1): non-daemon threads joined, the atexit
    hooks run, the standard streams flushed (status 120 and a line when the output cannot
    be written), then killed by SIGINT where `interrupted` (an uncaught KeyboardInterrupt),
    but without freeing every object and module first: that teardown adds nothing to a
    finished program and took about 0.9 s of CPU once torch was loaded, 1.3 s in a forked
    process (freeing the heap it shares with its parent copies its pages). What it leaves
    undone: files a program left open without flushing them stay unflushed."""
    import atexit
    import signal
    import threading

    if status is None:
        code = 0
    elif isinstance(status, int):
        code = status & 0xFF
    else:  # `sys.exit("text")`: the text on stderr, status 1
        error_line(str(status))
        code = 1
    shutdown = getattr(threading, "_shutdown", None)  # what the interpreter's exit calls
    if shutdown is not None:
        shutdown()
    atexit._run_exitfuncs()
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        try:
            if stream is not None:
                stream.flush()
        except OSError as exc:  # a full disk, a closed pipe: said, and status 120
            code = code or 120
            if name == "stdout":
                error_line(f"stpdist: could not write the output: {exc}")
        except Exception:  # noqa: BLE001 (a closed stream: ignored, as the interpreter does)
            pass
    if interrupted:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
    os._exit(code)


def say(message: str) -> None:
    """A line for the person running stpdist (main process only, after `setup`)."""
    log.info(message)


def plain(value: Any) -> Any:
    """A JSON-friendly scalar (tensors to numbers, non-finite floats to strings)."""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def finite_json(value: Any) -> Any:
    """`value` with every non-finite float as a string ("nan", "inf"), in lists and
    mappings too: strict JSON (Node's, Python's with `parse_constant` refusing) rejects
    the bare `NaN` that `json.dumps` writes, and metrics_*.json say "nan" already (an
    MLOps review: reproduce.json held `NaN`)."""
    if isinstance(value, dict):
        return {k: finite_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite_json(v) for v in value]
    return plain(value) if isinstance(value, float) else value


def strict_json(value: Any, **options: Any) -> str:
    """`json.dumps` of `value` as strict JSON: non-finite floats as "nan"/"inf"/"-inf"
    (`finite_json`), so that jq, Node and Python with `parse_constant` refusing read it
    (a checkpoint's validation.json and trainer_state.json held bare `NaN`)."""
    import json

    return json.dumps(finite_json(value), allow_nan=False, **options)


NON_FINITE_TEXTS = ("nan", "inf", "-inf")
"""How `plain` writes the floats JSON has no number for."""


def json_number(value: Any) -> Any:
    """A number that `strict_json` wrote: "nan"/"inf"/"-inf" back to floats; anything else
    as it is (the caller checks it is a number)."""
    return float(value) if isinstance(value, str) and value in NON_FINITE_TEXTS else value


def format_scalars(values: dict[str, Any]) -> str:
    """`a 0.0123, b 4` — compact, for one-line summaries (per-lead-time values left out)."""
    parts = []
    leads = lead_keys(values)
    for key, value in values.items():
        if key in leads:
            continue
        value = plain(value)
        parts.append(f"{key} {value:.5g}" if isinstance(value, float) else f"{key} {value}")
    return ", ".join(parts)


def lead_time_table(results: dict[str, Any]) -> str:
    """Rows = metrics, columns = all and each lead time; each column as wide as its widest
    entry, two spaces apart (a fixed width ran `-0.0001503` into its neighbour, and a long
    name such as `test/csi_pool16@181` shifted its row)."""
    per_lead: dict[str, dict[int, float]] = {}
    lead_of = lead_keys(results)
    for key, (metric, lead) in lead_of.items():
        per_lead.setdefault(metric, {})[lead] = results[key]
    leads = sorted({t for values in per_lead.values() for t in values})
    rows = [["metric", "all", *(f"t{t}" for t in leads)]]
    for key, value in results.items():
        if key not in lead_of:
            values = per_lead.get(key, {})
            rows.append([key, _fmt(value), *(_fmt(values.get(t)) for t in leads)])
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        (
            row[0].ljust(widths[0]) + "".join(f"  {v:>{w}}" for v, w in zip(row[1:], widths[1:]))
        ).rstrip()
        for row in rows
    )


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


class Terminated(KeyboardInterrupt):
    """SIGTERM to a command outside a training (a training stops with a checkpoint on it):
    raised in the main thread, so that what the command was writing is undone as on Ctrl-C
    (a staging folder as big as its output was left behind: SLURM, torchrun and `kill`
    send SIGTERM)."""

    exit_code = 128 + 15


_INTERRUPTS: list[int] = []
"""The Ctrl-Cs of the command now running (see `interrupts_noted`)."""


@contextlib.contextmanager
def interrupts_noted() -> Iterator[None]:
    """Ctrl-C raises `KeyboardInterrupt` as by default, and is noted as well, for the body
    (main thread, and only where SIGINT has Python's own handler: the Trainer's stop flag,
    a program's handler, are left alone). Python raises it in whatever code runs next;
    inside a weakref callback or a `__del__` it is printed as "ignored" and the command
    runs on: a conversion stopped in its first second (its imports) wrote its whole output
    and exited 0. `check_not_interrupted`, at a point of no return, stops it there."""
    import signal
    import threading

    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGINT) is not signal.default_int_handler
    ):
        yield
        return
    owner = os.getpid()

    def handle(signum: int, frame: Any) -> None:
        if os.getpid() == owner:
            _INTERRUPTS.append(signum)
        raise KeyboardInterrupt

    _INTERRUPTS.clear()
    signal.signal(signal.SIGINT, handle)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        _INTERRUPTS.clear()


def check_not_interrupted() -> None:
    """Raise `KeyboardInterrupt` if a Ctrl-C came during this command (under
    `interrupts_noted`) and was swallowed where it landed: called before an output is put
    in place, so that a Ctrl-C never ends in a complete output and exit status 0."""
    if _INTERRUPTS:
        raise KeyboardInterrupt


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[bool]:
    """SIGTERM raises `Terminated` in this process for the body, where it would end the
    process (its default action; the main thread only: a handler can be set there alone).
    A process forked meanwhile (a DataLoader worker) ends on it as by default. The default
    is put back after. A handler of the caller's (the Trainer's stop flag, an outer
    `sigterm_as_interrupt`, a program's own) or an ignored SIGTERM is left alone. Yields
    whether it set the handler."""
    import signal
    import threading

    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL
    ):
        yield False
        return
    owner = os.getpid()

    def handle(signum: int, frame: Any) -> None:
        if os.getpid() != owner:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        raise Terminated()

    signal.signal(signal.SIGTERM, handle)
    try:
        yield True
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
