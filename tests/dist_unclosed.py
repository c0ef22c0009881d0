"""A 2-rank script that trains and never closes its Trainer, which is then freed; at exit,
stpdist's exit hook runs and then the script says whether a process group is still alive
(the interpreter's teardown would then destroy it)."""

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


@atexit.register
def _report() -> None:
    trainer._close_open_trainers()
    print(f"process group alive after stpdist's exit hook: {dist.is_initialized()}", flush=True)


run = Trainer(max_steps=2, output_dir=sys.argv[1], progress_bar=False)
run.fit(TinyModule(), DataLoader(TinySequences(8), batch_size=2))
del run
gc.collect()
