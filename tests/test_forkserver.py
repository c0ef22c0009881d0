"""tests/forkserver.py serves a program as a fresh `python PROGRAM` would run it, or
refuses it: each test runs this file as the program (a script under tests/ is served)
and checks what a fresh interpreter would do. `served` in the output says whether the
server ran it (torch already imported when the script starts)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

SCRIPT = str(Path(__file__).resolve())


def _env(**extra: str) -> dict[str, str]:
    """The environment of a process the server serves, once the server is ready."""
    path = os.environ.get("STPDIST_TEST_FORK_SERVER")
    if not path:
        pytest.skip("no fork server (STPDIST_TEST_FORK_SERVER=0)")
    deadline = time.time() + 120
    while not os.path.exists(path) and time.time() < deadline:
        time.sleep(0.1)
    return {**os.environ, "OMP_NUM_THREADS": "1", **extra}


def test_unbuffered_output_reaches_the_pipe_at_once():
    """PYTHONUNBUFFERED=1 as `python -u`: a line printed is readable before the program
    goes on (tests watch a run's output to signal it at a point)."""
    proc = subprocess.Popen(
        [sys.executable, SCRIPT, "stream"],
        env=_env(PYTHONUNBUFFERED="1"), stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        start = time.time()
        line = proc.stdout.readline()
        waited = time.time() - start
    finally:
        proc.kill()
        proc.wait()
    assert line == "first served\n"
    assert waited < 5  # the program sleeps 20 s after its first line


def test_a_program_killed_by_sigkill_runs_once(tmp_path):
    """The client dies by the same signal, SIGKILL too, without running the program a
    second time itself."""
    log = tmp_path / "runs"
    proc = subprocess.run([sys.executable, SCRIPT, "sigkill", str(log)], env=_env(), timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert log.read_text() == "served\n"


def test_a_closed_standard_input_stays_closed():
    """With fd 0 closed a fresh interpreter has sys.stdin None (the client's socket must
    not become the program's standard input: it would read the server's messages)."""
    proc = subprocess.run(
        [sys.executable, SCRIPT, "stdin"],
        env=_env(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True,
        timeout=60, preexec_fn=lambda: os.close(0),
    )  # fmt: skip
    assert proc.returncode == 0
    assert proc.stdout.split()[0] == "None"


def test_the_temporary_folder_is_the_programs(tmp_path):
    """torch derives its inductor cache folder from TMPDIR at import: a program with
    another TMPDIR gets the folder a fresh import would give it."""
    env = _env(TMPDIR=str(tmp_path))
    env.pop("TORCHINDUCTOR_CACHE_DIR", None)  # set by this worker's own torch._dynamo import
    proc = subprocess.run(
        [sys.executable, SCRIPT, "tmpdir"], env=env, stdout=subprocess.PIPE, text=True, timeout=60
    )
    assert proc.returncode == 0
    assert proc.stdout.startswith(str(tmp_path / "torchinductor_")), proc.stdout


def test_the_program_dies_with_the_server(tmp_path):
    """A server that goes away mid-run (here one that answers with a pid and closes) takes
    the program with it: the client exits 1 and kills it, leaving nothing running."""
    import socket
    import struct
    import tempfile
    import threading

    program = subprocess.Popen(["sleep", "60"])
    path = os.path.join(tempfile.mkdtemp(dir=tmp_path), "s")  # short: a socket's limit
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)

    def serve() -> None:
        conn, _ = listener.accept()
        head = b""
        while len(head) < 8:
            head += conn.recv(8 - len(head))
        size = struct.unpack("!Q", head)[0]
        while size > 0:
            size -= len(conn.recv(min(size, 1 << 16)))
        conn.sendall(f"pid {program.pid}\n".encode())
        conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        client = subprocess.run(
            [sys.executable, SCRIPT, "stdin"],
            env={**os.environ, "STPDIST_TEST_FORK_SERVER": path}, timeout=60,
        )  # fmt: skip
        assert client.returncode == 1
        assert program.wait(timeout=5) == -signal.SIGKILL
    finally:
        program.kill()
        program.wait()
        listener.close()


def test_a_missing_script_fails_as_python_says():
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).parent / "no_such_script.py")],
        env=_env(), stderr=subprocess.PIPE, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "can't open file" in proc.stderr


def test_a_relative_script_is_found_from_the_programs_folder(tmp_path):
    """`python tests/x.py` in another folder runs that folder's tests/x.py, a script the
    server does not serve (it judges the path from the client's folder, not its own)."""
    if Path.cwd() / "tests" != Path(__file__).parent:
        pytest.skip("the server's folder (pytest's) is not the repository's root")
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "other.py").write_text("import sys\nprint('torch' in sys.modules)\n")
    proc = subprocess.run(
        [sys.executable, "tests/other.py"],
        env=_env(), cwd=tmp_path, stdout=subprocess.PIPE, text=True, timeout=60,
    )  # fmt: skip
    assert proc.stdout == "False\n"  # fresh: nothing imported torch


def test_processes_a_launcher_starts_stay_fresh():
    """torchrun's, `accelerate launch`'s and SLURM's processes run fresh: the tests of
    launching mean the launcher's own processes (tests/ranks.py's docstring)."""
    seen = {}
    for marker in (None, "TORCHELASTIC_RUN_ID", "ACCELERATE_USE_CPU", "SLURM_JOB_ID"):
        extra = {marker: "1"} if marker else {}
        proc = subprocess.run(
            [sys.executable, SCRIPT, "who"],
            env=_env(**extra), stdout=subprocess.PIPE, text=True, timeout=60,
        )  # fmt: skip
        seen[marker] = proc.stdout.strip()
    assert seen == {
        None: "served",
        "TORCHELASTIC_RUN_ID": "fresh",
        "ACCELERATE_USE_CPU": "fresh",
        "SLURM_JOB_ID": "fresh",
    }


ENDINGS = ("return", "exit-3", "exit-text", "raise", "interrupt")


@pytest.mark.parametrize("launch", ["served", "rank"])
def test_a_served_program_ends_as_a_fresh_one(launch):
    """Served programs and forked ranks skip the interpreter's teardown (tests/ranks.py's
    `stpdist.console.end_process`), and must still end as a fresh interpreter ends them: the exit status of
    `sys.exit` (a number, or a text printed), an uncaught exception's traceback and status
    1, killed by SIGINT after an uncaught KeyboardInterrupt; a non-daemon thread joined
    first, the atexit hooks run after it, output left without a newline flushed. A rank is
    compared with a rank tests/ranks.py execs (its status is the launcher's: 128 + N for a
    signal)."""
    ranks = [str(Path(__file__).parent / "ranks.py"), "--nproc_per_node", "1"] * (launch == "rank")
    fresh = {"STPDIST_TEST_FORK_SERVER": "", "STPDIST_TEST_RANKS_EXEC": "1"}
    seen = {}
    for ending in ENDINGS:
        for how, extra in (("fresh", fresh), (launch, {})):
            proc = subprocess.run(
                [sys.executable, *ranks, SCRIPT, "end", ending],
                env=_env(**extra), capture_output=True, text=True, timeout=60,
            )  # fmt: skip
            seen[how, ending] = (proc.returncode, proc.stdout, proc.stderr.splitlines()[-1:])
    for ending in ENDINGS:
        assert seen[launch, ending] == seen["fresh", ending], ending
    assert seen["fresh", "return"] == (0, "thread done\nat exit\nno newline", [])
    assert seen["fresh", "exit-3"][0] == 3
    assert seen["fresh", "exit-text"][::2] == (1, ["a reason"])
    assert seen["fresh", "raise"][::2] == (1, ["ValueError: uncaught"])
    interrupted = 128 + signal.SIGINT if ranks else -signal.SIGINT
    assert seen["fresh", "interrupt"][0] == interrupted


def _end(ending: str) -> None:
    """A non-daemon thread and an atexit hook that leaves its output unflushed, then the
    ending."""
    import atexit
    import threading

    atexit.register(lambda: sys.stdout.write("at exit\nno newline"))
    threading.Thread(target=lambda: (time.sleep(0.3), print("thread done"))).start()
    if ending == "exit-3":
        sys.exit(3)
    elif ending == "exit-text":
        sys.exit("a reason")
    elif ending == "raise":
        raise ValueError("uncaught")
    elif ending == "interrupt":
        raise KeyboardInterrupt


def _main(mode: str, *args: str) -> None:
    served = "served" if "torch" in sys.modules else "fresh"
    if mode == "stream":
        print("first", served)
        time.sleep(20)
    elif mode == "sigkill":
        with open(args[0], "a") as f:
            f.write(f"{served}\n")
        os.kill(os.getpid(), signal.SIGKILL)
    elif mode == "stdin":
        print(sys.stdin, served)
    elif mode == "who":
        print(served)
    elif mode == "end":
        _end(*args)
    elif mode == "tmpdir":
        import torch._dynamo  # noqa: F401

        print(os.environ.get("TORCHINDUCTOR_CACHE_DIR"), served)


if __name__ == "__main__":
    _main(*sys.argv[1:])
