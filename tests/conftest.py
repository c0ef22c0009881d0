from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def pytest_configure(config):
    import torch

    # One intra-op thread in the test process too: on 2 shared cores, oversubscribed
    # threads made the overfit tests 10–30× slower (ranks get OMP_NUM_THREADS=1 below).
    torch.set_num_threads(1)
    # the Trainer keeps torch's setting when OMP_NUM_THREADS is set (stpdist/threads.py);
    # subprocesses inherit it
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    # fused regions (stpdist/models/fused.py) compiled without code generation: the same
    # custom ops, traced and run op by op. A cold inductor compile is seconds of C++ per
    # region and shape on a CPU (CI's cache starts empty: ~3 min of the suite); the tests of
    # the kernel itself (tests/test_fused.py) set inductor back. Subprocesses inherit it.
    os.environ.setdefault("STPDIST_FUSED_BACKEND", "aot_eager")
    # Hugging Face's caches (the `datasets` the docs' examples write; accelerate reads its
    # config folder from it at import) in a folder of the session's, never the user's
    import tempfile

    config._stpdist_hf_home = os.environ["HF_HOME"] = tempfile.mkdtemp(prefix="stpdist-hf-")
    # the caches of the tools the tests run, likewise: wandb-core writes two debug logs a
    # run into $XDG_CACHE_HOME/wandb/logs (~/.cache: thousands after a few suites),
    # matplotlib its font list into MPLCONFIGDIR (built once a session, in a second)
    cache = Path(config._stpdist_hf_home) / "cache"
    os.environ["XDG_CACHE_HOME"] = str(cache)
    os.environ["MPLCONFIGDIR"] = str(cache / "matplotlib")
    # no display in any test (the docs' examples set it too): one value for the fork
    # server's warm-up, which imports matplotlib, and the processes it serves
    os.environ["MPLBACKEND"] = "Agg"
    _start_fork_server(config)


def _start_fork_server(config) -> None:
    """tests/forkserver.py for this worker's fresh Python processes (each would spend ~3 s
    of a core importing torch); `STPDIST_TEST_FORK_SERVER=0` starts none. Every process a
    test starts from here on finds it through the environment (unset it for a process
    that must be fresh); the controller of `-n 2` runs no test and starts none."""
    import tempfile

    if os.environ.get("STPDIST_TEST_FORK_SERVER") == "0":
        os.environ.pop("STPDIST_TEST_FORK_SERVER")
        return
    if getattr(config.option, "numprocesses", None) and "PYTEST_XDIST_WORKER" not in os.environ:
        return
    folder = tempfile.mkdtemp(prefix="stpdist-fork-")
    path = os.path.join(folder, "server")
    client = str(Path(__file__).parent / "forkclient")
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (client, os.environ.get("PYTHONPATH")) if p
    )
    os.environ["STPDIST_TEST_FORK_SERVER"] = path
    server = subprocess.Popen(
        [sys.executable, str(Path(__file__).parent / "forkserver.py"), path],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=open(
            os.environ.get("STPDIST_TEST_FORK_LOG", os.path.join(folder, "server.log")), "ab"
        ),  # noqa: SIM115
        start_new_session=True,
        env={
            k: v
            for k, v in os.environ.items()
            if k not in ("PYTHONUNBUFFERED", "STPDIST_TEST_FORK_SERVER")
        },
    )
    config._stpdist_fork_server = (server, folder)


def unserved(env: dict[str, str]) -> dict[str, str]:
    """`env` for a process that tests/forkserver.py must not start: one the test kills
    from outside with SIGKILL (a served program dies just after the process the test
    started, which a next run could race), or whose pid or children the test looks at."""
    return {key: value for key, value in env.items() if key != "STPDIST_TEST_FORK_SERVER"}


def pytest_unconfigure(config):
    import shutil

    if getattr(config, "_stpdist_hf_home", None):
        shutil.rmtree(config._stpdist_hf_home, ignore_errors=True)
    server, folder = getattr(config, "_stpdist_fork_server", (None, None))
    if server is not None:
        server.terminate()
        server.wait(timeout=30)
        shutil.rmtree(folder, ignore_errors=True)


def pytest_addoption(parser):
    parser.addoption(
        "--slurm",
        action="store_true",
        help="run the local-SLURM tests (installs slurm/munge if missing, edits /etc/hosts)",
    )


def pytest_collection_modifyitems(config, items):
    import torch

    skips = []
    if not torch.cuda.is_available():
        skips.append(("gpu", pytest.mark.skip(reason="needs a CUDA device; none on this host")))
    if not config.getoption("--slurm"):
        reason = "local SLURM tests change the machine: opt in with --slurm (make test-slurm)"
        skips.append(("slurm", pytest.mark.skip(reason=reason)))
    if os.geteuid() != 0:
        skips.append(("slurm", pytest.mark.skip(reason="a local SLURM cluster needs root")))
    for item in items:
        for marker, skip in skips:
            if marker in item.keywords:
                item.add_marker(skip)
    # the files of long multi-process tests first (each file's tests kept together and in
    # order): with two workers, the run then ends on short tests, not on one worker
    # finishing a 20 s test while the other idles
    first = {name: rank for rank, name in enumerate(LONG_FILES_FIRST)}
    items.sort(key=lambda item: first.get(item.path.name, len(first)))


LONG_FILES_FIRST = (
    "test_docs.py",
    "test_fsdp_checkpoint.py",
    "test_trainer_resume.py",
    "test_simvp_dist.py",
    "test_launch.py",
    "test_fsdp.py",
    "test_cli_dist.py",
    "test_reshard.py",
    "test_tracking_resume.py",
    "test_init_weights.py",
)
"""Test files whose tests run for seconds each (processes of several ranks, whole CLI
runs), slowest first (`make test`'s durations, 2026-12-05)."""


class _ToCaplog(logging.Handler):
    """Hands each record to the handler pytest's caplog reads in the running phase, unless
    pytest put that handler on the logger itself (it does so for a logger that does not
    propagate when a phase starts, not for one that stops propagating within it) or the
    logger propagates to the root logger, where pytest's handler is."""

    def __init__(self, caplog, logger: logging.Logger) -> None:
        super().__init__()
        self.caplog, self.logger = caplog, logger

    def emit(self, record: logging.LogRecord) -> None:
        if self.caplog.handler not in self.logger.handlers and not self.logger.propagate:
            self.caplog.handler.handle(record)


@pytest.fixture
def caplog(caplog):
    """pytest's caplog, seeing the `stpdist` logger's records: stpdist's console handler
    stops them there (`propagate = False` once a Trainer or command has set it up), so
    after a worker's first Trainer pytest saw none of them: a check that a warning was
    said failed when its test ran alone, and one that it was not could not fail. Each
    record reaches caplog once (through this handler, not also through the root logger)."""
    logger = logging.getLogger("stpdist")
    forward, propagate = _ToCaplog(caplog, logger), logger.propagate
    logger.addHandler(forward)
    logger.propagate = False
    try:
        yield caplog
    finally:
        logger.removeHandler(forward)
        logger.propagate = propagate


@pytest.fixture(autouse=True)
def _offline_wandb(monkeypatch, tmp_path):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb"))
    # an in-process wandb run of an earlier test leaves WANDB_SERVICE in this worker's
    # environment: a test's subprocesses would log through that worker's service, where
    # a run id an earlier process held (killed) is still "in use"
    os.environ.pop("WANDB_SERVICE", None)


def free_port() -> int:
    """A TCP port nobody listens on now (asked from the OS: safe with parallel workers)."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def launcher(nproc: int, *, torchrun: bool = False) -> list[str]:
    """The command prefix that starts a script on `nproc` CPU ranks (plain python for 1):
    tests/ranks.py, which gives each rank torchrun's environment without torchrun's agent
    (1.5 s of a core less a launch), or with `torchrun` torchrun itself (the tests of
    launching). Both take torchrun's `--no-python` before a program that is not a script."""
    if nproc == 1:
        return [sys.executable]
    start = (
        ["-m", "torch.distributed.run"] if torchrun else [str(Path(__file__).parent / "ranks.py")]
    )
    return [
        sys.executable,
        *start,
        "--nproc_per_node",
        str(nproc),
        "--master_port",
        str(free_port()),
    ]


def run_ranks(
    script: list[str], nproc: int, *, timeout: float = 180, torchrun: bool = False, **popen
) -> subprocess.CompletedProcess:
    """Run `script` (a file and its arguments) on `nproc` CPU ranks over gloo, started by
    tests/ranks.py or with `torchrun` by torchrun (see `launcher`), or as a plain process
    when nproc == 1. Fails the test on a non-zero exit."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    cmd = [*launcher(nproc, torchrun=torchrun), *script]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, **popen)
    if proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} exited {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
        )
    return proc


class _LastResort(logging.Handler):
    """Where a warning logged on the `stpdist` logger goes in a fresh `stpdist` process
    before `console.setup` gave the logger its handler: logging's last-resort handler,
    which writes WARNING and above to stderr."""

    def __init__(self, logger: logging.Logger) -> None:
        super().__init__(logging.WARNING)
        self.logger = logger

    def emit(self, record: logging.LogRecord) -> None:
        from stpdist.console import _TqdmHandler

        if not any(isinstance(h, _TqdmHandler) for h in self.logger.handlers):
            sys.stderr.write(self.format(record) + "\n")


def run_cli(*args: str, cwd: Path, check: bool = False) -> subprocess.CompletedProcess:
    """`stpdist ARGS` run by the CLI's `main` in this process, in `cwd`: the completed
    process (exit status, stdout, stderr); a non-zero exit fails the test only with
    `check`. A process of its
    own costs seconds of imports on 2 cores; use this where process isolation is not what a
    test checks (signals, several ranks, launchers, settings made at import).

    What a fresh `python -m stpdist` would have, it gets: `cwd` first on sys.path, the
    `stpdist` logger without handlers (warnings before its setup go to stderr), Python's
    default warning filters with warnings printed to stderr. What the run changes is undone
    afterwards: the working directory, environment, sys.path, modules imported from `cwd`,
    the logger and torch's thread count."""
    import contextlib
    import io
    import warnings

    import torch

    from stpdist.cli import main

    logger = logging.getLogger("stpdist")
    saved_logger = (logger.handlers[:], logger.level, logger.propagate)
    saved_env, saved_path, saved_cwd = dict(os.environ), sys.path[:], os.getcwd()
    saved_modules, threads = set(sys.modules), torch.get_num_threads()
    out, err = io.StringIO(), io.StringIO()
    cwd = Path(cwd).resolve()

    def show(message, category, filename, lineno, file=None, line=None):
        sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))

    try:
        os.chdir(cwd)
        sys.path.insert(0, str(cwd))
        logger.handlers[:] = [_LastResort(logger)]
        logger.setLevel(logging.NOTSET)
        logger.propagate = False
        with (
            contextlib.redirect_stdout(out),
            contextlib.redirect_stderr(err),
            warnings.catch_warnings(),
        ):
            warnings.resetwarnings()  # Python's defaults, as in a fresh interpreter
            for category in (PendingDeprecationWarning, ImportWarning, ResourceWarning):
                warnings.simplefilter("ignore", category)
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.showwarning = show
            try:
                code = main(list(args))
            except SystemExit as exc:  # argparse errors
                if isinstance(exc.code, str):
                    print(exc.code, file=sys.stderr)
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        os.chdir(saved_cwd)
        sys.path[:] = saved_path
        os.environ.clear()
        os.environ.update(saved_env)
        logger.handlers[:], logger.propagate = saved_logger[0], saved_logger[2]
        logger.setLevel(saved_logger[1])
        torch.set_num_threads(threads)
        for name in set(sys.modules) - saved_modules:
            where = getattr(sys.modules[name], "__file__", None) or ""
            if where.startswith(str(cwd) + os.sep):
                del sys.modules[name]
    proc = subprocess.CompletedProcess(["stpdist", *args], code, out.getvalue(), err.getvalue())
    if check and code != 0:
        raise AssertionError(
            f"stpdist {' '.join(args)} exited {code}\n{out.getvalue()[-3000:]}\n{err.getvalue()[-3000:]}"
        )
    return proc


def terminal_signals() -> None:
    """`preexec_fn` of a subprocess that a test signals as a terminal would: SIGINT and
    SIGTERM back to their default action and unblocked. A test runner started in the
    background (a CI job, `make test &`) passes SIGINT on ignored, and a command that
    ignores Ctrl-C cannot be tested for it."""
    import signal

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})


@pytest.fixture
def ctrl_c_as_in_a_terminal():
    """This process's SIGINT as a terminal-started Python has it (Python's handler,
    unblocked) for the test, and as it was after (see `terminal_signals`)."""
    import signal

    handler = signal.getsignal(signal.SIGINT)
    mask = signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, handler)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
