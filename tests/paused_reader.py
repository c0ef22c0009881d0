"""A reader of a run's checkpoints, paused where a race with that run's retention bites
(tests/test_read_leases.py, tests/test_concurrency_review.py). A script under tests/, so
that the suite's fork server starts it warm.

    python tests/paused_reader.py MODULE:FUNCTION WHAT ARGS...

MODULE:FUNCTION is paused at its first call. With `GO` in the environment, the process
writes "paused <rank>" to the file `$PAUSED_<rank>` and waits until the file `$GO` exists;
without it, it prints "paused" and waits for a line on stdin. WHAT: `load RUN` (prints the
folder and step of `stpdist.load(RUN, "last")` as JSON), `export RUN OUT` (exports RUN's
last checkpoint into OUT), `run SCRIPT` (runs SCRIPT as __main__) or `cli ARGS...` (the
stpdist command line). `NO_FLOCK` in the environment: flock fails as on a filesystem
without it (some NFS mounts).
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import time


def _wait() -> None:
    rank = os.environ.get("RANK", "0")
    if "GO" not in os.environ:
        print("paused", flush=True)
        sys.stdin.readline()
        return
    with open(os.environ[f"PAUSED_{rank}"], "w") as note:
        note.write(f"paused {rank}")
    while not os.path.exists(os.environ["GO"]):
        time.sleep(0.05)


def _pause_at(hook: str) -> None:
    where, attribute = hook.rsplit(":", 1)
    module = importlib.import_module(where)
    original, paused = getattr(module, attribute), []

    def pause(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        if not paused:
            paused.append(1)
            _wait()
        return original(*args, **kwargs)

    setattr(module, attribute, pause)


def _without_flock() -> None:
    import errno
    import fcntl

    def no_flock(fd, how):  # noqa: ANN001, ANN202, ARG001
        raise OSError(errno.ENOLCK, "No locks available")

    fcntl.flock = no_flock


def main(argv: list[str]) -> int:
    import stpdist
    from stpdist import inference

    _pause_at(argv[0])
    if os.environ.get("NO_FLOCK"):
        _without_flock()
    what, args = argv[1], argv[2:]
    if what == "load":
        model = stpdist.load(args[0], "last")
        print(json.dumps({"folder": str(model.model_folder), "step": model.global_step}))
    elif what == "export":
        inference.export(args[0], args[1], ckpt="last")
        print(json.dumps({"exported": args[1]}))
    elif what == "run":
        import runpy

        runpy.run_path(args[0], run_name="__main__")
    else:
        from stpdist.cli import main as cli

        return cli(args)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
