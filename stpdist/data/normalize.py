"""Per-variable normalisation, built from a split's index, applied on the device.

The streams yield frames in *scaled* units (stored values / the index's `value_scale`,
as always); physical units are scaled × value_scale. The task owns a `Normalizer` and
maps scaled batches into the model's space right after they reach the device, and the
model's outputs back, so losses are computed where the variables are comparable while
metrics, pictures and written predictions stay in data units.

Modes (`data.normalize`), per channel c, for scaled values x:

* `scale` (default): x itself — the behaviour before per-variable normalisation; the
  identity returns its input untouched (bitwise the same runs).
* `none`: physical units, x × value_scale.
* `standardize`: (x − mean_c) / std_c with the index's per-channel mean and std.
* `minmax`: (x − min_c) / (max_c − min_c) with the index's per-channel range (needs an
  index written by a converter that stores `min`/`max`).

A channel with zero spread (std or range 0) is only shifted. Legend: B batch, T time,
C channels, H×W frame size.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import nn

from .format import SplitIndex

Mode = Literal["none", "scale", "standardize", "minmax"]
UNIT_SLACK = 1e-6
"""How far scaled values may stray from [0, 1] (float rounding) and still count as in it."""
MODES = ("none", "scale", "standardize", "minmax")


class Normalizer(nn.Module):
    """x_model = (x_scaled − shift_c) / spread_c, per channel; the buffers follow the module
    to its device and into checkpoints."""

    def __init__(
        self,
        mode: Mode = "scale",
        *,
        shift: list[float] | None = None,
        spread: list[float] | None = None,
        value_scale: float = 1.0,
        low: list[float] | None = None,
        high: list[float] | None = None,
    ) -> None:
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"normalize mode {mode!r}: expected one of {', '.join(MODES)}")
        self.mode = mode
        self.value_scale = float(value_scale)
        channels = len(shift or low or [])
        shift_C = torch.tensor(shift or [0.0] * channels, dtype=torch.float64)
        spread_C = torch.tensor(spread or [1.0] * channels, dtype=torch.float64)
        spread_C = torch.where(spread_C > 0, spread_C, torch.ones_like(spread_C))
        self.register_buffer("shift", shift_C.float().view(1, 1, -1, 1, 1), persistent=False)
        self.register_buffer("spread", spread_C.float().view(1, 1, -1, 1, 1), persistent=False)
        # per-channel data range in scaled units, for clamping outputs (None: [0, 1])
        self.bounds = None if low is None or high is None else (list(low), list(high))

    def _apply(self, fn: Any, recurse: bool = True) -> Normalizer:
        """Moves follow the module; the statistics stay float32 whatever it is cast to: a
        model loaded in bfloat16 rounded a mean of 0.1325 to 0.1328, an offset in every
        forecast (the values meet them in float32: `Forecaster.predict_frames`)."""
        shift, spread = self.shift, self.spread
        super()._apply(fn, recurse)
        device = self.shift.device  # where `fn` moved them: the float32 values go there
        self.shift, self.spread = shift.to(device), spread.to(device)
        return self

    @classmethod
    def from_index(cls, mode: Mode, index: SplitIndex) -> Normalizer:
        """The normaliser of `mode` with the statistics of `index` (the training split's)."""
        where = f"data.normalize={mode} with the {index.split} index"
        low = index.min or None
        high = index.max or None
        if mode in ("scale", "none"):
            return cls(mode, value_scale=index.value_scale, low=low, high=high)
        if mode == "standardize":
            if len(index.mean) != index.shape[1] or len(index.std) != index.shape[1]:
                raise ValueError(f"{where}: the index holds no per-channel mean/std")
            return cls(
                mode,
                shift=index.mean,
                spread=index.std,
                value_scale=index.value_scale,
                low=low,
                high=high,
            )
        if low is None or high is None or len(low) != index.shape[1]:
            raise ValueError(
                f"{where}: the index holds no per-channel min/max (convert the data again "
                "with this stpdist)"
            )
        spread = [h - lo for lo, h in zip(low, high)]
        return cls(
            mode, shift=low, spread=spread, value_scale=index.value_scale, low=low, high=high
        )

    @property
    def identity(self) -> bool:
        return self.mode == "scale"

    @property
    def unit_range(self) -> bool:
        """Whether the data's scaled values lie in [0, 1] (the index's per-channel min and
        max; true when it records none): what image scores (PSNR, SSIM, LPIPS) compare."""
        if self.bounds is None or not self.bounds[0]:
            return True
        return min(self.bounds[0]) >= -UNIT_SLACK and max(self.bounds[1]) <= 1 + UNIT_SLACK

    def forward(self, scaled_BTCHW: torch.Tensor) -> torch.Tensor:
        """Scaled units → the model's space."""
        if self.mode == "scale":
            return scaled_BTCHW
        if self.mode == "none":
            return scaled_BTCHW * self.value_scale
        if self.shift.numel() == 0:  # no statistics (built without an index): unit ones
            return scaled_BTCHW
        return (scaled_BTCHW - self.shift) / self.spread

    def inverse(self, model_BTCHW: torch.Tensor) -> torch.Tensor:
        """The model's space → scaled units."""
        if self.mode == "scale":
            return model_BTCHW
        if self.mode == "none":
            return model_BTCHW / self.value_scale
        if self.shift.numel() == 0:
            return model_BTCHW
        return model_BTCHW * self.spread + self.shift

    def physical(self, scaled_BTCHW: torch.Tensor) -> torch.Tensor:
        """Scaled units → physical (stored) units."""
        return scaled_BTCHW * self.value_scale

    def clamp(self, model_BTCHW: torch.Tensor) -> torch.Tensor:
        """Model-space outputs clamped to the data's range: [0, 1] scaled for `scale` (as
        before), else each channel's stored [min, max] (unclamped without one)."""
        if self.mode == "scale":
            return model_BTCHW.clamp(0, 1)
        if self.bounds is None:
            return model_BTCHW
        shape = (1, 1, -1, 1, 1)
        low = torch.tensor(self.bounds[0], device=model_BTCHW.device, dtype=model_BTCHW.dtype)
        high = torch.tensor(self.bounds[1], device=model_BTCHW.device, dtype=model_BTCHW.dtype)
        low = self(low.view(shape))
        high = self(high.view(shape))
        return torch.maximum(torch.minimum(model_BTCHW, high), low)
