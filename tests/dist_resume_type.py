"""Two ranks calling `fit(resume=True)` (a wrong type): the main rank resolves the resume
alone; every rank must raise its error, none wait for an answer. Run by test_fsdp.py."""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from helpers import TinyModule, TinySequences  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from stpdist import Trainer  # noqa: E402

trainer = Trainer(max_epochs=1, output_dir=sys.argv[1], progress_bar=False, dist_timeout_s=60)
start = time.monotonic()
try:
    trainer.fit(TinyModule(), DataLoader(TinySequences(8), batch_size=2), resume=True)
except TypeError as exc:
    print(
        f"rank {trainer.accelerator.process_index}: TypeError after "
        f"{time.monotonic() - start:.0f} s: {exc}",
        flush=True,
    )
trainer.close()
