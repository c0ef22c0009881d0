"""Pure-torch tensor transforms (B×T×C×H×W); importable by models."""

from __future__ import annotations

import torch


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
