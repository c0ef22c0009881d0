"""Start a program on N local ranks with the environment torchrun gives its ranks, without
torchrun's agent: the suite's multi-process launcher.

    python tests/ranks.py --nproc_per_node N --master_port P [--no-python] PROGRAM ARGS...

Each rank is a real process of its own that joins the others over gloo from `MASTER_ADDR`,
`MASTER_PORT`, `RANK`, `LOCAL_RANK`, `WORLD_SIZE` and `LOCAL_WORLD_SIZE`, as under torchrun.
What it leaves out is the agent: torchrun imports torch and starts its rendezvous before
the ranks start (about 1.5 s of a core a launch here, and the suite launches dozens). The
tests about launching itself (tests/test_launch.py, the 2-rank CLI run of
tests/test_cli_dist.py) keep torchrun and `accelerate launch`.

Like torchrun: SIGTERM and SIGINT are passed on to every rank; when a rank fails, the
others get a few seconds to end on their own (a rank waiting on a dead peer's collective
fails by itself), then SIGTERM, then SIGKILL; the exit status is the first failure's (a
signal's number as 128 + N), else 0. This file imports nothing of torch.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

GRACE_S = 5.0  # after a rank fails, before the others get SIGTERM
TERM_S = 10.0  # after SIGTERM, before SIGKILL


def _parse(argv: list[str]) -> tuple[int, int, list[str]]:
    nproc, port, no_python, i = 1, 29500, False, 0
    while i < len(argv) and argv[i].startswith("--"):
        flag = argv[i]
        if flag == "--no-python":
            no_python, i = True, i + 1
        elif flag in ("--nproc_per_node", "--master_port"):
            value = int(argv[i + 1])
            nproc, port = (value, port) if flag == "--nproc_per_node" else (nproc, value)
            i += 2
        else:
            raise SystemExit(f"tests/ranks.py: unknown flag {flag}")
    program = argv[i:]
    if not program:
        raise SystemExit("tests/ranks.py: no program to run")
    return nproc, port, program if no_python else [sys.executable, *program]


def _status(code: int) -> int:
    return 128 - code if code < 0 else code


def main(argv: list[str]) -> int:
    nproc, port, command = _parse(argv)
    shared = {
        **os.environ,
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
        "WORLD_SIZE": str(nproc),
        "LOCAL_WORLD_SIZE": str(nproc),
        "GROUP_RANK": "0",
        "GROUP_WORLD_SIZE": "1",
        "ROLE_WORLD_SIZE": str(nproc),
    }
    shared.setdefault("OMP_NUM_THREADS", "1")
    ranks = [
        subprocess.Popen(
            command, env={**shared, "RANK": str(r), "LOCAL_RANK": str(r), "ROLE_RANK": str(r)}
        )
        for r in range(nproc)
    ]

    def forward(signum, frame):  # noqa: ANN001, ARG001
        for rank in ranks:
            if rank.poll() is None:
                rank.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)

    failure, failed_at, sent = None, 0.0, None
    while any(rank.poll() is None for rank in ranks):
        if failure is None:
            failure = next((r.returncode for r in ranks if r.returncode not in (None, 0)), None)
            failed_at = time.monotonic()
        else:
            waited = time.monotonic() - failed_at
            due = "kill" if waited > GRACE_S + TERM_S else "term" if waited > GRACE_S else None
            if due and due != sent:
                for rank in ranks:
                    if rank.poll() is None:
                        rank.kill() if due == "kill" else rank.terminate()
                sent = due
        time.sleep(0.02)
    if failure is None:
        failure = next((r.returncode for r in ranks if r.returncode != 0), 0)
    return _status(failure)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
