"""EnhancedModule: the hook contract the Trainer drives (kept from the seed project).

Tensors are `inputs` B×T_in×C×H×W and `targets` B×T_out×C×H×W.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

StepOutput = torch.Tensor | dict[str, Any] | None


def cpu_compile_defaults(device: torch.device) -> bool:
    """Before compiling for a CPU device: turn off inductor's layout optimisation (which
    converts convolutions to channels-last) unless TORCHINDUCTOR_LAYOUT_OPTIMIZATION is
    set. Measured on a 2-core AVX2 host, ConvLSTM recipe step: compiled with it 0.84× of
    eager, without it 1.01×; channels-last convolutions alone 0.91× of eager. Returns
    whether the setting was changed (it is process-wide, like the thread settings)."""
    if device.type != "cpu" or "TORCHINDUCTOR_LAYOUT_OPTIMIZATION" in os.environ:
        return False
    import torch._inductor.config as inductor_config

    inductor_config.layout_optimization = False
    return True


def to_channels_last(module: nn.Module) -> nn.Module:
    """`module` with every 4-D parameter and buffer (a 2-D convolution's weight) stored
    channels-last, in place (the same Parameter objects: an optimizer built on them keeps
    them); returns it. A convolution whose weight is channels-last writes its output so,
    and the pointwise arithmetic after it keeps that layout, so a recurrent cell's states
    stay channels-last step after step: on a GPU that is cuDNN's native layout for bf16
    and fp16 tensor cores, where a channels-first convolution converts its operands.
    Tensors of other ranks are left as they are: `module.to(memory_format=
    torch.channels_last)` refuses a module with any 5-D tensor (a Forecaster's normaliser
    statistics, a 3-D convolution), this does not. Values are unchanged; checkpoints store
    weights contiguous (channels-first) either way."""
    for tensor in (*module.parameters(), *module.buffers()):
        if tensor.dim() == 4 and not tensor.is_contiguous(memory_format=torch.channels_last):
            tensor.data = tensor.data.contiguous(memory_format=torch.channels_last)
    return module


class EnhancedModule(nn.Module):
    """A `torch.nn.Module` with Lightning-style hooks.

    Required: `configure_optimizer`, `training_step`. `validation_step` is needed for
    validation and `predict_step` for prediction.

    Batches may be `(inputs, targets)`, `(inputs, targets, keys)` or a dict with `inputs`,
    `targets`, `keys` and any extra entries (masks, timestamps, static fields). Extras (and
    `keys`) are moved to the device and passed to every hook that declares a parameter of
    that name, or `**kwargs`: `def training_step(self, inputs, targets, mask)`. Hooks
    written as `(inputs, targets)` get only those, whatever the batch carries.

    Facts the Trainer sets (read them, never write them):
    - `global_step` (optimizer steps taken) and `current_epoch`, before every step, for
      schedules such as scheduled sampling;
    - `planned_steps`, the optimizer steps `fit` will run in all (from max_steps /
      max_epochs and the data), before `configure_lr_scheduler`, for schedules that need
      their length; None outside `fit`.
    """

    skips_batches: bool = True
    """Whether `training_step` may return None to skip a batch. Then every micro-batch
    ends with a small all-reduce read on the host, so that all ranks skip together (on a
    GPU the host waits for the device there). A module that never skips sets this False:
    its steps read nothing on the host, and a non-finite loss or a stop request is acted
    on at the next check point (log steps, checkpoints, validations, epoch ends) — still
    the same step on every rank, and never saved."""

    validation_predicts: bool = False
    """Whether the "predictions" `validation_step` returns are what `predict_step` returns for
    the same batch. Then `Trainer.predict`, on data with targets, writes those and runs one
    forward a batch, not two (the `Forecaster` does); otherwise it writes what `predict_step`
    returns, whatever the data carry."""

    def __init__(self) -> None:
        super().__init__()
        self.global_step: int = 0
        self.current_epoch: int = 0
        self.planned_steps: int | None = None

    in_step_graph: bool = False
    """True while the Trainer runs the code a CUDA graph replays (`trainer.cuda_graphs`):
    values `refresh_graph_inputs` wrote to the device are to be read then, host values in
    an eager step (a batch the graph does not take, another `fit` without graphs)."""

    def refresh_graph_inputs(self, step: int) -> None:
        """Under `trainer.cuda_graphs`, before the step numbered `step` (1-based) is
        replayed from its graph: write into device tensors the host values that change per
        step and that `training_step` reads (a graph replays the values of its capture
        otherwise). Default: none; the Forecaster refreshes scheduled sampling's
        probabilities."""

    def configure_optimizer(self) -> torch.optim.Optimizer:
        """Return the optimizer over this module's parameters."""
        raise NotImplementedError(f"{type(self).__name__} must implement configure_optimizer()")

    def configure_lr_scheduler(self, optimizer: torch.optim.Optimizer) -> Any:
        """Return None, a scheduler (stepped once per optimizer step), or a dict
        `{"scheduler": s, "interval": "step" | "epoch"}`."""
        return None

    def training_step(
        self, inputs: torch.Tensor, targets: torch.Tensor, /, *args: Any, **extras: Any
    ) -> StepOutput:
        """Return the loss tensor, a dict holding "loss" (plus scalars to log), or None to
        skip this batch (it is then skipped on every rank).

        Logged as `train/<name>`: the loss averaged over every rank's batches of the log
        window; each other scalar (one number: a one-element tensor, int or float) averaged
        over the main process' batches only (as Lightning's `self.log` without
        `sync_dist`). Entries that are not one number are not logged (a warning names each
        once)."""
        raise NotImplementedError(f"{type(self).__name__} must implement training_step()")

    def training_step_end(self, output: StepOutput) -> StepOutput:
        """Post-process the output of `training_step` (default: unchanged): called on every
        micro-batch, on every rank, inside the (DDP-)wrapped forward, with what
        `training_step` returned (None for a batch it skips). What it returns is what the
        Trainer uses, so it must return the output (None for an output is an error)."""
        return output

    def validation_step(
        self, inputs: torch.Tensor, targets: torch.Tensor, /, *args: Any, **extras: Any
    ) -> StepOutput:
        """Return the batch-mean loss tensor, or a dict of batch-mean scalars (and, under
        "predictions", the B×T_out×C×H×W predictions; under "sums", additive tensors for
        `metrics_from_sums`); None is an error. Runs under `torch.no_grad()` in eval mode.
        Each scalar is weighted by the batch size and summed over every batch of every rank
        (`val/<name>`, equal to a one-process evaluation). On data with targets,
        `Trainer.predict` calls this hook too, for the metrics (and for the predictions it
        writes, with `validation_predicts`)."""
        raise NotImplementedError(f"{type(self).__name__} must implement validation_step()")

    def metrics_from_sums(self, sums: dict[str, torch.Tensor]) -> dict[str, float]:
        """Optional. When `validation_step` returns `"sums"` (a dict of additive tensors,
        summed over its batch), the Trainer adds them over all batches and ranks and asks
        this hook for the metric values."""
        raise NotImplementedError(
            f"{type(self).__name__}.validation_step returned 'sums' but does not implement "
            "metrics_from_sums()"
        )

    def validation_step_end(self, output: StepOutput) -> StepOutput:
        """Post-process the output of `validation_step` (default: unchanged): called on every
        batch, on the rank that ran it, before its results are added up; it must return the
        output."""
        return output

    def compile_for_training(self, mode: str = "default") -> None:
        """Called by the Trainer before training when `trainer.compile` is set. Default:
        `torch.compile` of this module's forward (in place: checkpoint keys unchanged).
        Override to compile regions — code that branches on Python values changing every
        step (e.g. `global_step`) must stay outside, or it recompiles every step."""
        self.compile(mode=mode)

    def enable_activation_checkpointing(self) -> None:
        """Called by the Trainer when `trainer.activation_checkpointing` is set: recompute
        activations in the backward instead of keeping them. Modules that support it
        override this."""
        raise NotImplementedError(
            f"{type(self).__name__} does not support trainer.activation_checkpointing"
        )

    def predict_step(
        self, inputs: torch.Tensor, targets: torch.Tensor | None, /, *args: Any, **extras: Any
    ) -> torch.Tensor:
        """Return predictions B×T_out×C×H×W (shaped as the targets where the batch has
        them), under `torch.inference_mode()` in eval mode; `targets` is None where `predict`
        computes no metrics (data without targets, `metrics=False`, a module without
        `validation_step`)."""
        raise NotImplementedError(f"{type(self).__name__} must implement predict_step()")
