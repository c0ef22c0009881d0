"""A 2-rank script with two Trainers in turn: the first closed (its process group ended),
the second trained after it, never closed and then freed; at exit, stpdist's exit hook runs
and then the script says whether a process group is still alive (the interpreter's teardown
would then destroy it)."""

from __future__ import annotations

import atexit
import gc
import sys
from pathlib import Path

import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).parent))
from helpers import TinyModule, TinySequences  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from stpdist import Trainer, trainer  # noqa: E402

# stpdist's hook, then the report: hooks run last-registered first, and stpdist registered
# its own at import (in the suite's launcher, before this script)
atexit.unregister(trainer._close_open_trainers)


def say(line: str) -> None:
    """One write a line: the ranks share one pipe, and under PYTHONUNBUFFERED `print` writes
    the text and its newline apart (a CI run read "closed: …closed: …" and then two newlines)."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


@atexit.register
def _report() -> None:
    trainer._close_open_trainers()
    say(f"process group alive after stpdist's exit hook: {dist.is_initialized()}")


for name in ("closed", "unclosed"):
    run = Trainer(max_steps=2, output_dir=Path(sys.argv[1]) / name, progress_bar=False)
    state = run.fit(TinyModule(), DataLoader(TinySequences(8), batch_size=2))
    say(f"{name}: {state.global_step} steps on {run.accelerator.num_processes} ranks")
    if name == "closed":
        run.close()
del run
gc.collect()
