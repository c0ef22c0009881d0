"""Keeping ranks in lockstep: every rank must take the same decisions at the same step, or
DDP's collectives hang. The Trainer asks; these objects decide, on `accelerator.reduce`.

- `Lockstep.agree`: for modules that may skip batches (`EnhancedModule.skips_batches`), one
  small reduce per micro-batch, read on the host, makes every rank agree on skipping (any
  rank's `training_step` returned None), on a non-finite loss and on a stop request
  (SIGTERM / SIGUSR1 / a first Ctrl-C on any rank).
- `Lockstep.note` / `Lockstep.settle`: for modules that never skip, nothing is read on the
  host in the steady state. `note` keeps, on the device, the first step whose loss was not
  finite; `settle`, at a check point (log steps, before a checkpoint or a validation, epoch
  ends, the last step), gathers that and the stop requests from every rank in one read. A
  non-finite loss then stops every rank, naming its step, before anything is saved; a stop
  request stops every rank after the same check point. On a GPU the host can so queue the
  next steps while the device works.
- `Lockstep.average_grads_by_hand`: when the micro-batch that would carry DDP's gradient
  all-reduce is skipped on every rank, gradients of the window's earlier micro-batches are
  averaged here instead.
- `Lockstep.rebucket_like_a_fresh_run`: DDP's gradient buckets after a resume, beyond 2
  ranks, must match an uninterrupted run's for bitwise-equal sums.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, NamedTuple

import torch
from torch import nn


class StopFlag:
    """Set by SIGTERM, SIGUSR1 (SLURM's warning signal) or a first Ctrl-C (SIGINT); read at
    step boundaries. A second Ctrl-C raises KeyboardInterrupt at once. Forked children
    (DataLoader workers inherit the handlers, and a terminal's Ctrl-C reaches them too)
    ignore the signals: the process that installed the flag decides."""

    SIGNALS = tuple(
        getattr(signal, name) for name in ("SIGTERM", "SIGUSR1", "SIGINT") if hasattr(signal, name)
    )

    def __init__(self) -> None:
        self.requested = False
        self.signum: int | None = None
        """The first signal received."""
        self.announce = False
        """Whether a Ctrl-C says, on stderr, what happens next (the main process only)."""
        self._owner: int | None = None

    def _handle(self, signum: int, frame: Any) -> None:
        if os.getpid() != self._owner:
            return  # a forked DataLoader worker: the training process stops it in turn
        if signum == signal.SIGINT and self.requested:
            raise KeyboardInterrupt  # the second Ctrl-C: abort at once
        self.requested = True
        self.signum = self.signum or signum
        if signum == signal.SIGINT and self.announce:
            # os.write: safe inside a signal handler, unlike logging's locks
            os.write(
                2,
                b"\nstpdist: Ctrl-C: stopping with a checkpoint after this step (several "
                b"ranks: at the next check point, within trainer.log_every_n_steps steps); "
                b"Ctrl-C again to abort at once\n",
            )

    @contextmanager
    def installed(self) -> Iterator[StopFlag]:
        """Handlers on for the body (main thread only: Python allows no other), then the
        previous ones back."""
        self.requested, self.signum, self._owner = False, None, os.getpid()
        previous = {}
        if threading.current_thread() is threading.main_thread():
            previous = {sig: signal.signal(sig, self._handle) for sig in self.SIGNALS}
        try:
            yield self
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


class Agreement(NamedTuple):
    skipped: bool
    """Some rank's training_step returned None: every rank skips the backward."""
    nonfinite: bool
    """Some rank's loss is NaN or Inf."""
    stop: bool
    """Some rank was asked to stop: every rank stops after this optimizer step."""


class Lockstep:
    def __init__(self, accelerator: Any, stop: StopFlag) -> None:
        self.accelerator = accelerator
        self.stop = stop
        self._first_bad: torch.Tensor | None = None  # device: first non-finite step, or 0
        self._settled: tuple[int, bool] | None = None  # (step, stop) of the last check

    def reset(self) -> None:
        """Forget the notes of an earlier `fit`."""
        self._first_bad, self._settled = None, None

    def agree(self, loss: torch.Tensor | None) -> Agreement:
        """The same `Agreement` on every rank, from one 3-number reduce read on the host."""
        flags = torch.zeros(3, dtype=torch.float64, device=self.accelerator.device)
        flags[2] = float(self.stop.requested)
        if loss is None:
            flags[0] = 1
        else:
            flags[1] = (~torch.isfinite(loss.detach())).double()
        flags = self.accelerator.reduce(flags, reduction="sum")
        skipped, nonfinite, stop = flags.tolist()  # host sync: waits for the device
        return Agreement(skipped > 0, nonfinite > 0, stop > 0)

    def note(self, loss: torch.Tensor, step: int) -> None:
        """Remember, on the device, whether optimizer step `step`'s loss is finite (the
        first bad step wins). No host read."""
        bad = ~torch.isfinite(loss.detach())
        if self._first_bad is None:
            self._first_bad = torch.zeros((), dtype=torch.float64, device=loss.device)
        first = self._first_bad
        self._first_bad = torch.where(bad & (first == 0), float(step), first)

    def settle(self, step: int, where: str = "") -> bool:
        """A check point, at the same step on every rank: raises `FloatingPointError` if
        any rank's loss was not finite since the run began (naming the first such step);
        returns whether any rank was asked to stop. One gather, one host read; repeated
        calls at the same step reuse the answer."""
        if self._settled is not None and self._settled[0] == step:
            return self._settled[1]
        device = self.accelerator.device
        mine = torch.zeros(1, 2, dtype=torch.float64, device=device)
        if self._first_bad is not None:
            mine[0, 0] = self._first_bad
        mine[0, 1] = float(self.stop.requested)
        rows = self.accelerator.gather(mine).tolist()  # the host read of this check point
        bad = [int(first) for first, _ in rows if first > 0]
        if bad:
            raise FloatingPointError(
                f"non-finite loss at step {min(bad)} (found at the check after step {step}); "
                f"nothing after it was saved{where}"
            )
        stop = any(flag > 0 for _, flag in rows)
        self._settled = (step, stop)
        return stop

    def average_grads_by_hand(self, module: nn.Module) -> None:
        """Average gradients across ranks, as DDP would have on the window's last
        micro-batch had it not been skipped everywhere."""
        if self.accelerator.num_processes == 1:
            return
        for param in module.parameters():
            if param.grad is not None:
                param.grad.copy_(self.accelerator.reduce(param.grad, reduction="mean"))

    def rebucket_like_a_fresh_run(
        self,
        model: nn.Module,
        optimizer: Any,
        first_batch: Callable[[], tuple[tuple, dict] | None],
        restore: Callable[[], None],
    ) -> None:
        """DDP re-buckets gradients after its first backward, in the order they became
        ready. A fresh run's later steps use those buckets; a resumed run's first step would
        use the initial ones and, beyond 2 ranks, sum gradients in another order (off by
        float rounding). One throwaway forward/backward on the next batch lets DDP re-bucket
        as a fresh run did; `restore` then puts back weights, buffers and this rank's RNG."""
        if self.accelerator.num_processes <= 2:
            return  # two-term sums do not depend on the order
        batch = first_batch()
        if batch is None:
            return
        tensors, extras = batch
        loss = loss_of(model(*tensors, **extras), step=0)
        agreed = self.agree(loss)
        if not (agreed.skipped or agreed.nonfinite):
            loss.backward()  # all-reduced by DDP; the gradients are dropped below
        optimizer.zero_grad(set_to_none=True)
        restore()


def loss_of(output: Any, step: int, hook: str = "training_step") -> torch.Tensor | None:
    """The loss in a `training_step` output (a tensor, a dict with "loss", or None): a
    one-element tensor, else an error naming what came instead and the `hook` that returned
    it (`training_step_end` where the module defines it: the output passes through it)."""
    if output is None:
        return output
    if isinstance(output, dict):
        if "loss" not in output:
            raise KeyError(
                f"{hook} returned a dict without 'loss' at step {step} "
                f"(keys: {sorted(output)}); return the loss or None to skip the batch"
            )
        output = output["loss"]
    elif not isinstance(output, torch.Tensor):
        raise TypeError(
            f"{hook} returned a {type(output).__name__} at step {step}; expected the "
            "loss (a one-element tensor), a dict with 'loss', or None to skip the batch"
        )
    if not isinstance(output, torch.Tensor) or output.numel() != 1:
        what = (
            f"a tensor of shape {tuple(output.shape)}"
            if isinstance(output, torch.Tensor)
            else f"a {type(output).__name__}"
        )
        raise TypeError(
            f"{hook} returned {what} as its loss at step {step}; expected a tensor of "
            "one element (reduce it, e.g. .mean()) that autograd can differentiate"
        )
    if not output.is_floating_point():
        raise TypeError(
            f"{hook} returned a {output.dtype} loss at step {step}; expected a floating "
            "point loss that autograd can differentiate"
        )
    if not output.requires_grad and torch.is_grad_enabled():
        raise TypeError(
            f"{hook} returned a loss at step {step} that autograd cannot differentiate "
            "(detached, made under torch.no_grad, or of frozen parameters only); return the "
            "loss as computed from the model's outputs, or None to skip the batch"
        )
    return output
