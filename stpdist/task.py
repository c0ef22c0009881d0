"""Forecaster: the forecasting task, one EnhancedModule for every backbone, configured
from the `model` section of a config, never subclassed.

The task owns what is not architecture: patching around the backbone, the loss (plus the
backbone's explicit auxiliary losses), optimizer, learning-rate schedule, scheduled
sampling, output clamping and metrics. Backbones live in `stpdist/models/`.

Legend: B batch, T time, C channels, H×W frame size. Inputs B×T_in×C×H×W in [0, 1],
targets B×T_out×C×H×W.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from . import metrics, plugins
from .config import ModelConfig
from .models import BackboneOutput, FrameSpec, as_output, backbone_args, build_backbone
from .models.recurrent import FrameRecurrent
from .models.simvp import differential_divergence
from .module import EnhancedModule

_LOSSES = {
    "mse": lambda p, t: nn.functional.mse_loss(p, t),
    "l1": lambda p, t: nn.functional.l1_loss(p, t),
    "mse+l1": lambda p, t: nn.functional.mse_loss(p, t) + nn.functional.l1_loss(p, t),
}


class Forecaster(EnhancedModule):
    """Backbone `config.name` with loss, optimizer, schedule, scheduled sampling, patching,
    clamping and metrics, all read from `config` (the `model` section)."""

    def __init__(
        self,
        config: ModelConfig,
        frame_shape: tuple[int, int, int],
        num_input_frames: int,
        num_output_frames: int,
        *,
        value_scale: float = 1.0,
    ) -> None:
        super().__init__()
        self.config = config
        channels, height, width = frame_shape
        p = config.patch_size
        if height % p or width % p:
            raise ValueError(f"frame size {height}×{width} is not divisible by patch_size {p}")
        spec = FrameSpec(
            channels * p * p, height // p, width // p, num_input_frames, num_output_frames
        )
        if plugins.is_import_path(config.name):  # a user's backbone, by import path
            cls = plugins.resolve_model(config.name)
            self.backbone = plugins.build_user_backbone(cls, spec, dict(config.backbone))
        else:
            self.backbone = build_backbone(
                config.name, spec, backbone_args(config.name, config.backbone)
            )
        if config.sampling.mode != "none" and not isinstance(self.backbone, FrameRecurrent):
            raise ValueError(
                f"'{config.name}' does not feed frames back: scheduled sampling does not apply"
            )
        self.num_input_frames = num_input_frames
        self.num_output_frames = num_output_frames
        self.frame_pixels = channels * height * width
        self.value_scale = value_scale  # stored units per 1.0 of scaled data (thresholds)

    def forward(
        self,
        inputs_BTCHW: torch.Tensor,
        targets_BTCHW: torch.Tensor | None = None,
        teacher_mask_BT: torch.Tensor | None = None,
    ) -> BackboneOutput:
        """The backbone's output in the data's frame layout (predictions B×T_out×C×H×W,
        clamped to [0, 1] outside training when configured) with its auxiliary losses."""
        p = self.config.patch_size
        out = as_output(
            self.backbone(
                reshape_patch(inputs_BTCHW, p),
                self.num_output_frames,
                targets_BTCHW=None if targets_BTCHW is None else reshape_patch(targets_BTCHW, p),
                teacher_mask_BT=teacher_mask_BT,
            )
        )
        pred = reshape_patch_back(out.predictions, p)
        if self.config.evaluation.clamp_output and not self.training:
            pred = pred.clamp(0, 1)
        return BackboneOutput(pred, out.aux_losses)

    def forecast(self, inputs_BTCHW: torch.Tensor) -> torch.Tensor:
        """Predictions B×T_out×C×H×W from the inputs alone."""
        return self(inputs_BTCHW).predictions

    # ------------------------------------------------------------------ hooks
    def configure_optimizer(self) -> torch.optim.Optimizer:
        o = self.config.optimizer
        kind = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[o.name]
        return kind(self.parameters(), lr=o.lr, weight_decay=o.weight_decay)

    def configure_lr_scheduler(self, optimizer: torch.optim.Optimizer) -> Any:
        schedule = self.config.schedule
        if schedule.name == "none":
            return None
        total = schedule.total_steps or self.planned_steps
        if not total:
            raise ValueError(f"lr schedule '{schedule.name}' needs model.schedule.total_steps")
        if schedule.name == "onecycle":
            peak = self.config.optimizer.lr
            return torch.optim.lr_scheduler.OneCycleLR(optimizer, peak, total_steps=total)
        warmup = schedule.warmup_steps

        def cosine(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            progress = min(1.0, (step - warmup) / max(1, total - warmup))
            return 0.5 * (1 + math.cos(math.pi * progress))

        return {
            "scheduler": torch.optim.lr_scheduler.LambdaLR(optimizer, cosine),
            "interval": "step",
        }

    # ------------------------------------------------------------------ scheduled sampling
    def teacher_probabilities(self, step: int) -> tuple[float, float]:
        """(P(true input frame), P(true output frame)) at optimizer step `step`.

        linear (OpenSTL): outputs start at `start`, fall by `decay` per step, and are 0
        from `stop_step` on; inputs are always true.
        reverse (PredRNN.V2): inputs rise from 0.5 towards 1 (exponentially, time constant
        `reverse_alpha`) between the two `reverse_steps`; outputs fall linearly from 0.5
        to 0 over the same interval.
        """
        sampling = self.config.sampling
        if sampling.mode == "linear":
            if step >= sampling.stop_step:
                return 1.0, 0.0
            return 1.0, max(0.0, sampling.start - sampling.decay * step)
        if sampling.mode == "reverse":
            first, second = sampling.reverse_steps
            if step < first:
                return 0.5, 0.5
            if step < second:
                into = step - first
                return (
                    1 - 0.5 * math.exp(-into / sampling.reverse_alpha),
                    0.5 - 0.5 * into / (second - first),
                )
        return 1.0, 0.0

    def teacher_mask(self, inputs: torch.Tensor, step: int) -> torch.Tensor | None:
        """Per-sample choices of true (1) or predicted (0) frames, built on the device."""
        mode = self.config.sampling.mode
        if mode == "none":
            return None
        b, t_in = inputs.shape[:2]
        p_in, p_out = self.teacher_probabilities(step)
        draws_out = torch.rand(b, self.num_output_frames - 1, device=inputs.device) < p_out
        if mode == "linear":
            return draws_out.to(inputs.dtype)
        draws_in = torch.rand(b, t_in - 1, device=inputs.device) < p_in
        return torch.cat([draws_in, draws_out], dim=1).to(inputs.dtype)

    def training_step(
        self, inputs: torch.Tensor, targets: torch.Tensor
    ) -> torch.Tensor | dict[str, Any]:
        """The loss on the output frames plus the backbone's auxiliary losses, each also
        returned on its own for the logs."""
        mask = self.teacher_mask(inputs, self.global_step)
        out = self(inputs, targets if mask is not None else None, mask)
        loss = _LOSSES[self.config.loss](out.predictions, targets)
        logged = {"frames_loss": loss.detach()}
        aux = dict(out.aux_losses)
        if self.config.divergence_weight:
            divergence = differential_divergence(out.predictions, targets)
            aux["divergence"] = self.config.divergence_weight * divergence
        for name, value in aux.items():
            loss = loss + value
            logged[name] = value.detach()
        return {"loss": loss, **logged} if aux else loss

    def validation_step(self, inputs: torch.Tensor, targets: torch.Tensor) -> dict[str, Any]:
        pred = self.forecast(inputs)
        copy_last = inputs[:, -1:].expand_as(targets)
        thresholds = [t / self.value_scale for t in self.config.evaluation.metric_thresholds]
        return {
            "loss": _LOSSES[self.config.loss](pred, targets),
            "copy_last_mse": nn.functional.mse_loss(copy_last, targets),
            "sums": metrics.batch_sums(pred, targets, thresholds),
            "predictions": pred,
        }

    def metrics_from_sums(self, sums: dict[str, torch.Tensor]) -> dict[str, float]:
        thresholds = self.config.evaluation.metric_thresholds
        return metrics.summarize(sums, self.frame_pixels, thresholds)

    def predict_step(self, inputs: torch.Tensor, targets: torch.Tensor | None) -> torch.Tensor:
        return self.forecast(inputs)


# ---------------------------------------------------------------------- patching
def reshape_patch(frames_BTCHW: torch.Tensor, patch_size: int) -> torch.Tensor:
    """B×T×C×H×W → B×T×(p·p·C)×(H/p)×(W/p): fold p×p pixel patches into channels."""
    if patch_size == 1:
        return frames_BTCHW
    b, t, c, h, w = frames_BTCHW.shape
    p = patch_size
    if h % p or w % p:
        raise ValueError(f"frame size {h}×{w} is not divisible by patch_size {p}")
    x = frames_BTCHW.reshape(b, t, c, h // p, p, w // p, p)
    return x.permute(0, 1, 4, 6, 2, 3, 5).reshape(b, t, p * p * c, h // p, w // p)


def reshape_patch_back(patches_BTCHW: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Inverse of `reshape_patch`."""
    if patch_size == 1:
        return patches_BTCHW
    b, t, pc, hp, wp = patches_BTCHW.shape
    p = patch_size
    c = pc // (p * p)
    x = patches_BTCHW.reshape(b, t, p, p, c, hp, wp)
    return x.permute(0, 1, 4, 5, 2, 6, 3).reshape(b, t, c, hp * p, wp * p)
