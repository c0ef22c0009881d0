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

Batched over time: a backbone that splits its step into `encode` (the input side, which reads
no state), `advance` and `decode` (the output side, which writes none) lets the loop, with
fused kernels on (`fused.fusion_active`), encode the frames known before it — the true inputs
up to the first step that may read a prediction — in one call, and decode the predictions
that are not fed back in one call after it: fewer, larger kernels, the same values to float
rounding. Fused kernels off (and under activation checkpointing) the loop runs step by step.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from .base import BackboneOutput
from .fused import fusion, fusion_active, pointwise


class FrameRecurrent(nn.Module):
    """Subclasses define `init_state(frames_BTCHW)` and either `step(frame_BCHW, state)`,
    which returns (prediction of the next frame B×C×H×W, new state), or its three parts
    (see the module docstring): `encode(frames_NCHW)` → the encoded input of any number N
    of frames (a tensor, or a tuple of tensors, each N×…), `advance(encoded, state)` →
    (features, new state) and `decode(features)` → the prediction, for any number of steps'
    features stacked along the batch; and, when they have extra training losses,
    `aux_losses(state)`, read from the final state (e.g. PredRNN.V2 keeps its running
    decoupling loss in the state)."""

    checkpoint_steps: bool = False
    """Activation checkpointing: when training, each step's activations are recomputed in
    the backward instead of kept (memory of one step instead of T_in+T_out−1)."""

    feeds_back: bool = True
    """Whether every step predicts the next frame from the one before, from the first input
    on (the shared frame loop), so that predictions can be fed back (scheduled sampling) and
    every step's prediction scored (`model.loss_frames: all`). False for an
    encoder–forecaster that predicts only after reading every input (ConvLSTM `shi`); the
    task refuses those two settings for it when the model is built (`build.build_module`)."""

    batch_over_time: bool = True
    """With the three parts and fused kernels on, batch the known frames' encoding and the
    unread predictions' decoding over time (off: `trainer.compile` compiles `step`, the unit
    the loop must then call)."""

    def init_state(self, frames_BTCHW: torch.Tensor) -> Any:
        raise NotImplementedError

    def step(self, frame_BCHW: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
        features, state = self.advance(self.encode(frame_BCHW), state)
        return self.decode(features), state

    def encode(self, frames_NCHW: torch.Tensor) -> Any:
        """The input side of a step, which reads no state and treats each frame on its own
        (no statistics over the batch), so N frames of several steps give the same values in
        one call (default: the frames as they are)."""
        return frames_NCHW

    def advance(self, encoded: Any, state: Any) -> tuple[Any, Any]:
        """One step from an encoded frame: (the features `decode` reads, the new state)."""
        raise NotImplementedError

    def decode(self, features: Any) -> torch.Tensor:
        """The output side of a step, which writes no state and treats each sample on its
        own (default: the features)."""
        return features

    def _splits_step(self) -> bool:
        """Whether this backbone's step is its three parts (it defines `advance` and keeps
        the composed `step`)."""
        cls = type(self)
        return cls.advance is not FrameRecurrent.advance and cls.step is FrameRecurrent.step

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
        if (
            self.batch_over_time
            and self._splits_step()
            and fusion_active()
            and not (self.checkpoint_steps and torch.is_grad_enabled())
        ):
            known = t_in if first_masked is None else min(t_in, first_masked)
            predictions, state = self._batched_loop(
                frames_BTCHW, targets_BTCHW, steps, known, first_masked, teacher_mask_BT, all_frames
            )
        else:
            truth = frames_BTCHW
            if targets_BTCHW is not None:
                truth = torch.cat([frames_BTCHW, targets_BTCHW[:, : num_output_frames - 1]], dim=1)
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
                prediction, state = self.run_step(frame, state)
                predictions.append(prediction)
        outputs = torch.stack(predictions[0 if all_frames else t_in - 1 :], dim=1)
        aux = self.aux_losses(state)
        return BackboneOutput(outputs, aux) if aux else outputs

    def run_step(self, frame_BCHW: torch.Tensor | None, state: Any) -> tuple[torch.Tensor, Any]:
        """`step` (compiled by `trainer.compile`), under activation checkpointing when it is
        on and gradients are recorded: the step-by-step loop's one call per frame."""
        if self.checkpoint_steps and torch.is_grad_enabled():
            return checkpoint(
                self._step_fused_as_now, fusion_active(), frame_BCHW, state, use_reentrant=False
            )
        return self.step(frame_BCHW, state)

    def _step_fused_as_now(self, fused: bool, frame_BCHW: torch.Tensor, state: Any) -> Any:
        """`step` with its fused regions on or off as given: activation checkpointing runs it
        again in the backward, outside the caller's `fusion` block, and the recomputation
        must run the same ops as the forward did."""
        with fusion(fused):
            return self.step(frame_BCHW, state)

    def _batched_loop(
        self,
        frames_BTCHW: torch.Tensor,
        targets_BTCHW: torch.Tensor | None,
        steps: int,
        known: int,
        first_masked: int | None,
        teacher_mask_BT: torch.Tensor | None,
        all_frames: bool,
    ) -> tuple[list, Any]:
        """The loop with steps 0..`known`−1 (whose frames are the truth) encoded in one call
        before it and the predictions no step reads decoded in one call after it: (every
        step's prediction — None for those before T_in − 1 that neither `all_frames` nor a
        later step needs —, the final state)."""
        b, t_in = frames_BTCHW.shape[:2]
        # time-major, so that each step's slice is contiguous: (known·B)×C×H×W
        encoded = split_steps(
            self.encode(frames_BTCHW[:, :known].transpose(0, 1).flatten(0, 1)), known
        )
        first_returned = 0 if all_frames else t_in - 1
        state = self.init_state(frames_BTCHW)
        predictions, deferred = {}, {}  # step → its prediction, or the features to decode
        for t in range(steps):
            if t < known:
                x = encoded[t]
            else:
                frame = predictions[t - 1]
                if first_masked is not None and t >= first_masked:
                    keep = teacher_mask_BT[:, t - first_masked].view(b, 1, 1, 1)
                    truth = frames_BTCHW[:, t] if t < t_in else targets_BTCHW[:, t - t_in]
                    frame = teacher_forced(keep.to(frame.dtype), truth, frame)
                x = self.encode(frame)
            features, state = self.advance(x, state)
            if known <= t + 1 < steps:  # the next step reads it
                predictions[t] = self.decode(features)
            elif t >= first_returned:
                deferred[t] = features
        decoded = split_steps(self.decode(join_steps(list(deferred.values()))), len(deferred))
        predictions.update(zip(deferred, decoded))
        return [predictions.get(t) for t in range(steps)], state


class SplitCell(nn.Module):
    """A recurrent cell whose input side a backbone may run apart from the rest: `input_side(x)`
    (reads no state, so many frames may go in one call), then `advance(x_side, *state)`; or
    both in `forward(x, *state)`. Subclasses define their bodies, `_input_side` and
    `_advance`. Under FSDP a cell may be a unit whose parameters are gathered only around a
    forward method: `fsdp.shard` registers the two methods named in `fsdp_forward_methods`,
    and `forward` calls their bodies, not them (a nested forward method would release the
    parameters in the middle of the outer one)."""

    fsdp_forward_methods: tuple[str, ...] = ("input_side", "advance")

    def forward(self, x: torch.Tensor, *state: Any) -> Any:
        return self._advance(self._input_side(x), *state)

    def input_side(self, x: torch.Tensor) -> Any:
        """The input's convolution(s), which read no state."""
        return self._input_side(x)

    def advance(self, x_side: Any, *state: Any) -> Any:
        """The cell from its input side (`input_side(x)`, computed before)."""
        return self._advance(x_side, *state)

    def _input_side(self, x: torch.Tensor) -> Any:
        raise NotImplementedError

    def _advance(self, x_side: Any, *state: Any) -> Any:
        raise NotImplementedError


@pointwise
def teacher_forced(
    keep_B111: torch.Tensor, truth_BCHW: torch.Tensor, prediction_BCHW: torch.Tensor
) -> torch.Tensor:
    """The next input frame under scheduled sampling: the truth where `keep` is 1, the
    prediction where it is 0 (as `FrameRecurrent.forward` mixes them step by step)."""
    return keep_B111 * truth_BCHW + (1 - keep_B111) * prediction_BCHW


def split_steps(value: Any, steps: int) -> list:
    """A tensor (steps·B)×… (or a tuple of them), time-major, as one value per step."""
    if isinstance(value, torch.Tensor):
        return list(value.unflatten(0, (steps, -1)).unbind(0))
    return list(zip(*(split_steps(part, steps) for part in value)))


def join_steps(values: list) -> Any:
    """One value per step (a tensor B×…, or a tuple of them) stacked time-major: (steps·B)×…"""
    if isinstance(values[0], torch.Tensor):
        return torch.cat(values)
    return tuple(join_steps(list(parts)) for parts in zip(*values))
