"""A 2-rank script that trains and never closes its Trainer, which is then freed; an exit
hook registered before stpdist's (so run after it) prints whether a process group is
still alive then."""

from __future__ import annotations

import atexit
import gc
import sys
from pathlib import Path

import torch.distributed as dist


@atexit.register
def _report() -> None:
    print(f"process group alive after stpdist's exit hook: {dist.is_initialized()}", flush=True)


sys.path.insert(0, str(Path(__file__).parent))
from helpers import TinyModule, TinySequences  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from stpdist import Trainer  # noqa: E402

trainer = Trainer(max_steps=2, output_dir=sys.argv[1], progress_bar=False)
trainer.fit(TinyModule(), DataLoader(TinySequences(8), batch_size=2))
del trainer
gc.collect()
