"""Forecaster: one EnhancedModule for every backbone, configured, never subclassed.

Legend: B batch, T time, C channels, H×W frame size. Inputs B×T_in×C×H×W in [0, 1],
targets B×T_out×C×H×W; patching happens around the backbone.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from .. import metrics
from ..data.transforms import reshape_patch, reshape_patch_back
from ..module import EnhancedModule
from . import build_backbone
from .recurrent import FrameRecurrent

_LOSSES = {
    "mse": lambda p, t: nn.functional.mse_loss(p, t),
    "l1": lambda p, t: nn.functional.l1_loss(p, t),
    "mse+l1": lambda p, t: nn.functional.mse_loss(p, t) + nn.functional.l1_loss(p, t),
}


class Forecaster(EnhancedModule):
    """Wraps backbone `backbone` (registry name) with loss, optimizer, schedule, patching
    and output clamping."""

    def __init__(
        self,
        backbone: str,
        frame_shape: tuple[int, int, int],
        num_input_frames: int,
        num_output_frames: int,
        *,
        backbone_args: dict[str, Any] | None = None,
        patch_size: int = 1,
        loss: str = "mse",
        optimizer: str = "adam",
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        lr_schedule: str = "none",
        warmup_steps: int = 0,
        total_steps: int | None = None,
        clamp_output: bool = True,
        scheduled_sampling: str = "none",
        sampling_start: float = 1.0,
        sampling_decay: float = 2e-5,
        sampling_stop_step: int = 50_000,
        reverse_sampling_steps: tuple[int, int] = (25_000, 50_000),
        reverse_sampling_alpha: float = 5_000.0,
        aux_loss_weight: float = 0.1,
        metric_thresholds: list[float] | tuple[float, ...] = (),
        value_scale: float = 1.0,
    ) -> None:
        super().__init__()
        channels, height, width = frame_shape
        if height % patch_size or width % patch_size:
            raise ValueError(
                f"frame size {height}×{width} is not divisible by patch_size {patch_size}"
            )
        if loss not in _LOSSES:
            raise ValueError(f"unknown loss '{loss}'; expected one of {', '.join(_LOSSES)}")
        self.backbone = build_backbone(
            backbone,
            channels * patch_size * patch_size,
            height // patch_size,
            width // patch_size,
            **(backbone_args or {}),
        )
        self.num_input_frames = num_input_frames
        self.num_output_frames = num_output_frames
        self.patch_size = patch_size
        self.loss_name = loss
        self.optimizer_name = optimizer
        self.lr = lr
        self.weight_decay = weight_decay
        self.lr_schedule = lr_schedule
        self.warmup_steps = warmup_steps
        self.total_steps = total_steps
        self.clamp_output = clamp_output
        if scheduled_sampling not in ("none", "linear", "reverse"):
            raise ValueError(
                f"scheduled_sampling must be none, linear or reverse; got {scheduled_sampling!r}"
            )
        if scheduled_sampling != "none" and not isinstance(self.backbone, FrameRecurrent):
            raise ValueError(
                f"'{backbone}' does not feed frames back: scheduled sampling does not apply to it"
            )
        self.scheduled_sampling = scheduled_sampling
        self.sampling_start = sampling_start
        self.sampling_decay = sampling_decay
        self.sampling_stop_step = sampling_stop_step
        self.reverse_sampling_steps = tuple(reverse_sampling_steps)
        self.reverse_sampling_alpha = reverse_sampling_alpha
        self.aux_loss_weight = aux_loss_weight
        self.frame_pixels = channels * height * width
        self.metric_thresholds = list(metric_thresholds)
        self.value_scale = value_scale  # stored units per 1.0 of scaled data (thresholds)

    def forward(
        self,
        inputs_BTCHW: torch.Tensor,
        targets_BTCHW: torch.Tensor | None = None,
        teacher_mask_BT: torch.Tensor | None = None,
    ) -> torch.Tensor:
        p = self.patch_size
        pred = self.backbone(
            reshape_patch(inputs_BTCHW, p),
            self.num_output_frames,
            targets_BTCHW=None if targets_BTCHW is None else reshape_patch(targets_BTCHW, p),
            teacher_mask_BT=teacher_mask_BT,
        )
        pred = reshape_patch_back(pred, p)
        return pred.clamp(0, 1) if self.clamp_output and not self.training else pred

    # ------------------------------------------------------------------ hooks
    def configure_optimizer(self) -> torch.optim.Optimizer:
        kind = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[self.optimizer_name]
        return kind(self.parameters(), lr=self.lr, weight_decay=self.weight_decay)

    def configure_lr_scheduler(self, optimizer: torch.optim.Optimizer) -> Any:
        if self.lr_schedule == "none":
            return None
        total = self.total_steps or getattr(self, "planned_steps", None)
        if not total:
            raise ValueError(f"lr_schedule '{self.lr_schedule}' needs total_steps")
        if self.lr_schedule == "onecycle":
            return torch.optim.lr_scheduler.OneCycleLR(optimizer, self.lr, total_steps=total)
        warmup = self.warmup_steps

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

        linear (OpenSTL): outputs start at `sampling_start`, fall by `sampling_decay` per
        step, and are 0 from `sampling_stop_step` on; inputs are always true.
        reverse (PredRNN.V2): inputs rise from 0.5 towards 1 (exponentially, time constant
        `reverse_sampling_alpha`) between the two `reverse_sampling_steps`; outputs fall
        linearly from 0.5 to 0 over the same interval.
        """
        if self.scheduled_sampling == "linear":
            if step >= self.sampling_stop_step:
                return 1.0, 0.0
            return 1.0, max(0.0, self.sampling_start - self.sampling_decay * step)
        if self.scheduled_sampling == "reverse":
            first, second = self.reverse_sampling_steps
            if step < first:
                return 0.5, 0.5
            if step < second:
                into = step - first
                return (
                    1 - 0.5 * math.exp(-into / self.reverse_sampling_alpha),
                    0.5 - 0.5 * into / (second - first),
                )
            return 1.0, 0.0
        return 1.0, 0.0

    def teacher_mask(self, inputs: torch.Tensor, step: int) -> torch.Tensor | None:
        """Per-sample choices of true (1) or predicted (0) frames, built on the device."""
        if self.scheduled_sampling == "none":
            return None
        b, t_in = inputs.shape[:2]
        p_in, p_out = self.teacher_probabilities(step)
        draws_out = torch.rand(b, self.num_output_frames - 1, device=inputs.device) < p_out
        if self.scheduled_sampling == "linear":
            return draws_out.to(inputs.dtype)
        draws_in = torch.rand(b, t_in - 1, device=inputs.device) < p_in
        return torch.cat([draws_in, draws_out], dim=1).to(inputs.dtype)

    def training_step(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        mask = self.teacher_mask(inputs, self.global_step)
        pred = self(inputs, targets if mask is not None else None, mask)
        loss = _LOSSES[self.loss_name](pred, targets)
        aux = getattr(self.backbone, "aux_loss", None)
        if aux is not None:  # e.g. PredRNN.V2's decoupling loss
            loss = loss + self.aux_loss_weight * aux
        return loss

    def validation_step(self, inputs: torch.Tensor, targets: torch.Tensor) -> dict[str, Any]:
        pred = self(inputs)
        copy_last = inputs[:, -1:].expand_as(targets)
        thresholds = [t / self.value_scale for t in self.metric_thresholds]
        return {
            "loss": _LOSSES[self.loss_name](pred, targets),
            "copy_last_mse": nn.functional.mse_loss(copy_last, targets),
            "sums": metrics.batch_sums(pred, targets, thresholds),
            "predictions": pred,
        }

    def metrics_from_sums(self, sums: dict[str, torch.Tensor]) -> dict[str, float]:
        return metrics.summarize(sums, self.frame_pixels, self.metric_thresholds)

    def predict_step(self, inputs: torch.Tensor, targets: torch.Tensor | None) -> torch.Tensor:
        return self(inputs)
