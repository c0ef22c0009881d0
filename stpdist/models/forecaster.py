"""Forecaster: one EnhancedModule for every backbone, configured, never subclassed.

Legend: B batch, T time, C channels, H×W frame size. Inputs B×T_in×C×H×W in [0, 1],
targets B×T_out×C×H×W; patching happens around the backbone.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ..data.transforms import reshape_patch, reshape_patch_back
from ..module import EnhancedModule
from . import build_backbone

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

    def training_step(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return _LOSSES[self.loss_name](self(inputs), targets)

    def validation_step(self, inputs: torch.Tensor, targets: torch.Tensor) -> dict[str, Any]:
        pred = self(inputs)
        copy_last = inputs[:, -1:].expand_as(targets)
        return {
            "loss": _LOSSES[self.loss_name](pred, targets),
            "mse": nn.functional.mse_loss(pred, targets),
            "mae": nn.functional.l1_loss(pred, targets),
            "copy_last_mse": nn.functional.mse_loss(copy_last, targets),
            "predictions": pred,
        }

    def predict_step(self, inputs: torch.Tensor, targets: torch.Tensor | None) -> torch.Tensor:
        return self(inputs)
