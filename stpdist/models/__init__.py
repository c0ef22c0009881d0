"""Backbone registry: name → class. Every backbone follows `base.py`'s contract: built as
`Backbone(spec, args)` with its own `Args` dataclass, forward
`(frames_BTCHW, num_output_frames, *, targets_BTCHW=None, teacher_mask_BT=None)`."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from torch import nn

from .base import BackboneOutput, FrameSpec, as_output
from .convlstm import ConvLSTM
from .e3dlstm import E3DLSTM
from .mau import MAU
from .mim import MIM
from .phydnet import PhyDNet
from .predformer import PredFormer
from .predrnn import PredRNN, PredRNNpp, PredRNNv2
from .simvp import TAU, SimVP
from .swinlstm import SwinLSTM
from .trajgru import TrajGRU

__all__ = [
    "BACKBONES",
    "BackboneOutput",
    "FrameSpec",
    "as_output",
    "available",
    "build_backbone",
    "register",
]

BACKBONES: dict[str, type[nn.Module]] = {}


def register(name: str, cls: type[nn.Module]) -> type[nn.Module]:
    """Add backbone `cls` (which must carry an `Args` dataclass) under `name`."""
    if not dataclasses.is_dataclass(getattr(cls, "Args", None)):
        raise TypeError(f"backbone {cls.__name__} needs an `Args` dataclass attribute")
    if name in BACKBONES and BACKBONES[name] is not cls:
        raise KeyError(f"backbone name '{name}' is taken by {BACKBONES[name].__name__}")
    BACKBONES[name] = cls
    return cls


for _name, _cls in {
    "convlstm": ConvLSTM,
    "predrnn": PredRNN,
    "predrnnpp": PredRNNpp,
    "predrnnv2": PredRNNv2,
    "trajgru": TrajGRU,
    "simvp": SimVP,
    "tau": TAU,
    "mim": MIM,
    "e3dlstm": E3DLSTM,
    "phydnet": PhyDNet,
    "mau": MAU,
    "swinlstm": SwinLSTM,
    "predformer": PredFormer,
}.items():
    register(_name, _cls)


def available() -> list[str]:
    return sorted(BACKBONES)


def backbone_class(name: str) -> type[nn.Module]:
    if name not in BACKBONES:
        raise KeyError(f"unknown model '{name}'; available: {', '.join(available())}")
    return BACKBONES[name]


def backbone_args(name: str, values: Mapping[str, Any] | Any = None) -> Any:
    """Backbone `name`'s `Args` from a mapping (a key it does not have is an error naming
    the valid ones) or an `Args` instance (returned as is)."""
    args_cls = backbone_class(name).Args
    if isinstance(values, args_cls):
        return values
    values = dict(values or {})
    valid = [f.name for f in dataclasses.fields(args_cls)]
    unknown = sorted(set(values) - set(valid))
    if unknown:
        raise KeyError(
            f"model '{name}' has no argument {', '.join(unknown)}; valid: {', '.join(valid)}"
        )
    return args_cls(**values)


def build_backbone(name: str, spec: FrameSpec, args: Mapping[str, Any] | Any = None) -> nn.Module:
    """Instantiate backbone `name` for `spec` (frames after patching) with `args`."""
    return backbone_class(name)(spec, backbone_args(name, args))
