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
