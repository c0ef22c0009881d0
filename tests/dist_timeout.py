"""Two ranks with `trainer.dist_timeout_s`: the main rank works alone for longer than it
(a long dataset generation, say) while the other waits in a barrier. The other rank prints
how long it waited before the process group gave up. Run by test_scale_review.py."""

from __future__ import annotations

import sys
import time

import torch.distributed as dist

from stpdist import Trainer

trainer = Trainer(max_epochs=1, output_dir=sys.argv[1], dist_timeout_s=float(sys.argv[2]))
start = time.monotonic()
if trainer.is_main:
    time.sleep(float(sys.argv[3]))  # the main rank's work alone
    print("main: done", flush=True)
    sys.exit(0)
try:
    dist.barrier()
    print(f"rank {dist.get_rank()}: joined after {time.monotonic() - start:.0f} s", flush=True)
except Exception as exc:  # gloo's timeout
    print(
        f"rank {dist.get_rank()}: gave up after {time.monotonic() - start:.0f} s: "
        f"{type(exc).__name__}",
        flush=True,
    )
sys.exit(0)
