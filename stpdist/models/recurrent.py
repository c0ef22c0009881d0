"""The frame loop shared by next-frame recurrent backbones (ConvLSTM, PredRNN family).

Legend: B batch, T time, C channels, H×W frame size (after patching).
At step t the backbone sees one frame and predicts frame t+1. Frame 0 is always the
first input; later frames are the truth (inputs, then targets when given) or the
model's own previous prediction, chosen per sample by a teacher mask:

* `teacher_mask_BT` of B×(T_out−1): scheduled sampling over the output steps (inputs are
  always true frames);
* `teacher_mask_BT` of B×(T_in+T_out−2): over every step after the first (PredRNN.V2's
  reverse scheduled sampling);
* no mask: true inputs, then the model's own predictions (inference).

With `all_frames=True` the forward returns every next-frame prediction, frames 1..T_in+T_out−1
predicted from frames 0..T_in+T_out−2 (B×(T_in+T_out−1)×C×H×W): OpenSTL's training
objective supervises all of them (`model.loss_frames: all`); the last T_out are the outputs.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from .base import BackboneOutput


class FrameRecurrent(nn.Module):
    """Subclasses define `init_state(frames_BTCHW)` and `step(frame_BCHW, state)`, which
    returns (prediction of the next frame B×C×H×W, new state); and, when they have extra
    training losses, `aux_losses(state)`, read from the final state (e.g. PredRNN.V2 keeps
    its running decoupling loss in the state)."""

    checkpoint_steps: bool = False
    """Activation checkpointing: when training, each step's activations are recomputed in
    the backward instead of kept (memory of one step instead of T_in+T_out−1)."""

    def init_state(self, frames_BTCHW: torch.Tensor) -> Any:
        raise NotImplementedError

    def step(self, frame_BCHW: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
        raise NotImplementedError

    def aux_losses(self, state: Any) -> dict[str, torch.Tensor]:
        """Named, weighted extra losses of the whole sequence (default: none)."""
        return {}

    def forward(
        self,
        frames_BTCHW: torch.Tensor,
        num_output_frames: int,
        *,
        targets_BTCHW: torch.Tensor | None = None,
        teacher_mask_BT: torch.Tensor | None = None,
        all_frames: bool = False,
    ) -> torch.Tensor | BackboneOutput:
        b, t_in = frames_BTCHW.shape[:2]
        steps = t_in + num_output_frames - 1
        truth = frames_BTCHW
        if targets_BTCHW is not None:
            truth = torch.cat([frames_BTCHW, targets_BTCHW[:, : num_output_frames - 1]], dim=1)
        first_masked = None
        if teacher_mask_BT is not None:
            if teacher_mask_BT.shape[1] == num_output_frames - 1:
                first_masked = t_in
            elif teacher_mask_BT.shape[1] == steps - 1:
                first_masked = 1
            else:
                raise ValueError(
                    f"teacher_mask_BT has {teacher_mask_BT.shape[1]} steps; expected "
                    f"{num_output_frames - 1} (outputs) or {steps - 1} (all steps)"
                )
            if targets_BTCHW is None:
                raise ValueError("a teacher mask needs targets_BTCHW")
        state = self.init_state(frames_BTCHW)
        predictions = []
        for t in range(steps):
            if t == 0:
                frame = frames_BTCHW[:, 0]
            elif first_masked is not None and t >= first_masked:
                keep = teacher_mask_BT[:, t - first_masked].view(b, 1, 1, 1).to(truth.dtype)
                frame = keep * truth[:, t] + (1 - keep) * predictions[-1]
            elif t < t_in:
                frame = frames_BTCHW[:, t]
            else:
                frame = predictions[-1]
            if self.checkpoint_steps and torch.is_grad_enabled():
                prediction, state = checkpoint(self.step, frame, state, use_reentrant=False)
            else:
                prediction, state = self.step(frame, state)
            predictions.append(prediction)
        outputs = torch.stack(predictions[0 if all_frames else t_in - 1 :], dim=1)
        aux = self.aux_losses(state)
        return BackboneOutput(outputs, aux) if aux else outputs
