"""`stpdist` (and `python -m stpdist`) end through `stpdist.cli.run`: the interpreter's
exit (status, atexit hooks, non-daemon threads, flushed output) without its teardown of
every object, which took about 0.9 s of CPU a command once torch was loaded."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

PROGRAM = textwrap.dedent(
    """
    import atexit, sys, threading, time
    import stpdist.cli

    class Teardown:
        def __del__(self):
            print("torn down", flush=True)

    stpdist.cli.kept = Teardown()  # freed only by the interpreter's teardown
    atexit.register(lambda: sys.stdout.write("at exit\\n"))
    threading.Thread(target=lambda: (time.sleep(0.3), print("thread done"))).start()
    sys.stdout.write("unflushed ")  # a pipe: held in the buffer until the end
    sys.argv = ["stpdist", *sys.argv[1:]]
    stpdist.cli.run()
    """
)


@pytest.mark.parametrize(
    ("args", "status", "err"),
    [
        (["--version"], 0, ""),
        (["inspect", "no/such/folder"], 2, "no/such/folder"),  # an input error: status 2
        (["train"], 2, "the following arguments are required"),  # argparse's SystemExit(2)
    ],
)
def test_run_ends_as_the_interpreter_but_frees_nothing(tmp_path, args, status, err):
    proc = subprocess.run(
        [sys.executable, "-c", PROGRAM, *args], cwd=tmp_path, capture_output=True, text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=120,
    )  # fmt: skip
    assert proc.returncode == status, proc.stderr[-2000:]
    assert err in proc.stderr
    assert proc.stdout.startswith("unflushed ")
    assert proc.stdout.endswith("thread done\nat exit\n"), proc.stdout  # joined, then hooks
    assert "torn down" not in proc.stdout  # no teardown after the hooks


def test_the_module_and_the_command_both_end_through_run():
    from pathlib import Path

    import stpdist

    main = (Path(stpdist.__file__).parent / "__main__.py").read_text()
    assert "run()" in main
    scripts = Path(sys.executable).parent / "stpdist"
    if scripts.is_file():  # the installed command (an editable install's script)
        assert "from stpdist.cli import run" in scripts.read_text()


def _env() -> dict[str, str]:
    """Output buffered, as a terminal-less run without PYTHONUNBUFFERED has it: what is
    left to write at the end is written by the exit's flush."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("PYTHONUNBUFFERED", None)
    return env


def test_a_profiler_still_writes_its_results(tmp_path):
    """Profilers, tracers and debuggers write their results once the program returns (or
    raises SystemExit): under one, `run` returns that way instead of ending the process
    (`python -m cProfile -o F -m stpdist …` wrote no F)."""
    out = tmp_path / "profile.out"
    proc = subprocess.run(
        [sys.executable, "-m", "cProfile", "-o", str(out), "-m", "stpdist", "--version"],
        capture_output=True, text=True, env=_env(), timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("stpdist ")
    assert out.is_file() and out.stat().st_size > 0


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (Linux)")
def test_output_that_cannot_be_written_at_the_end_is_status_120_and_said():
    """The interpreter's exit says a failed final flush and exits 120; ending early must
    not turn a full disk into a silent success."""
    with open("/dev/full", "w") as full:
        proc = subprocess.run(
            [sys.executable, "-m", "stpdist", "--version"],
            stdout=full, stderr=subprocess.PIPE, text=True, env=_env(), timeout=120,
        )  # fmt: skip
    assert proc.returncode == 120
    assert "stpdist: could not write the output: [Errno 28]" in proc.stderr


def test_an_error_with_no_stderr_is_still_status_2(tmp_path, monkeypatch):
    """`stpdist … 2>&-` has no sys.stderr: the error line has nowhere to go, and the status
    stays the user error's."""
    from stpdist.cli import main

    monkeypatch.setattr(sys, "stderr", None)
    assert main(["inspect", str(tmp_path / "no-such-folder")]) == 2
