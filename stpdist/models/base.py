"""The backbone contract every model in `stpdist/models/` follows (pure torch).

Legend: B batch, T time, C channels, H×W frame size (after patching).

A backbone is an `nn.Module` built as `Backbone(spec, args)`: `spec` a `FrameSpec` (the
frame shape after patching and the frame counts), `args` an instance of the backbone's own
`Args` dataclass (a class attribute; one docstring per field: the schema of
`model.backbone` in a config). Its forward is

    forward(frames_BTCHW, num_output_frames, *, targets_BTCHW=None, teacher_mask_BT=None)

and returns the predictions B×T_out×C×H×W, or a `BackboneOutput` when it also has extra
training losses (PredRNN.V2's decoupling loss, PhyDNet's moment constraint). Those come
back explicitly, already weighted by the backbone's own argument, never stored on the
module for someone to read later.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import nn


@dataclass(frozen=True)
class FrameSpec:
    """What a backbone is built for (after patching)."""

    channels: int
    height: int
    width: int
    num_input_frames: int
    num_output_frames: int


REGISTERED_HINT = (
    " (a name given to stpdist.models.register or register_translator exists only in the "
    "process that registered it: name the class by its import path to train, load, "
    "forecast or export it anywhere)"
)
"""Said where a short model or translator name is unknown."""


class BackboneOutput(NamedTuple):
    predictions: torch.Tensor
    """B×T_out×C×H×W."""
    aux_losses: dict[str, torch.Tensor]
    """Named extra training losses (weighted, scalar), added to the task's loss and logged
    one by one as `train/<name>`."""


def as_output(returned: torch.Tensor | BackboneOutput) -> BackboneOutput:
    """A backbone's return value in its full form."""
    if isinstance(returned, BackboneOutput):
        return returned
    return BackboneOutput(returned, {})


def gate_norm(channels: int, size: tuple[int, ...] | None) -> nn.Module:
    """What follows a recurrent cell's gate convolution: OpenSTL's `layer_norm`, a
    LayerNorm over [channels, *size] (`size` the frame H×W, or D×H×W after a 3D
    convolution), or, when `size` is None, the identity (no parameters, no state-dict
    entries, no random draws: a model built without it is unchanged)."""
    return nn.Identity() if size is None else nn.LayerNorm([channels, *size])


def check_odd_kernels(**kernel_sizes: int | list[int]) -> None:
    """Refuse an even kernel size, naming its argument: the backbones pad k//2 on each
    side to keep H×W, which an even kernel grows by one pixel (a shape error mid-step, or a
    frame silently resampled back to size)."""
    for name, value in kernel_sizes.items():
        even = [k for k in (value if isinstance(value, list) else [value]) if k % 2 == 0]
        if even:
            what = (
                f"{name} {value} holds {even[0]}" if isinstance(value, list) else f"{name} {value}"
            )
            raise ValueError(
                f"{what}: kernel sizes must be odd (padding k//2 on each side keeps the frame "
                "size H×W only for odd k)"
            )


class UntrustedImportPath(ValueError):
    """An import path met while import paths are refused (see `UNTRUSTED_SOURCES`)."""


UNTRUSTED_SOURCES: list[str] = []
"""While not empty, `import_class` refuses every import path, naming the last entry: importing
a module runs its code, and a model folder's config.yaml is not the user's own
(`plugins.refusing_import_paths` fills it around `stpdist.load`; `trust_code=True` opts in)."""


def import_class(path: str, what: str) -> type[nn.Module]:
    """The `nn.Module` class at import path `package.module:Class` (a user's backbone, task
    or translator block); failures are one line naming `what`, the path and the cause. The
    module must be importable on every rank: installed, or its folder on PYTHONPATH."""
    found = import_object(path, what)
    if not (isinstance(found, type) and issubclass(found, nn.Module)):
        raise TypeError(f"{what} '{path}' is {found!r}, not an nn.Module class")
    return found


def import_object(path: str, what: str) -> Any:
    """The object at import path `package.module:name` (dotted attributes allowed), as
    `import_class` finds it, of any kind."""
    if UNTRUSTED_SOURCES:  # checked before anything is imported
        raise UntrustedImportPath(
            f"{what} '{path}' in {UNTRUSTED_SOURCES[-1]} is an import path: loading it would "
            "run that code; pass trust_code=True (command line: --trust-code) if you trust "
            "this model folder and the module is installed or on your PYTHONPATH"
        )
    module_name, _, attribute = path.partition(":")
    if not module_name or not attribute:
        raise ValueError(f"{what} '{path}': expected an import path package.module:Class")
    try:
        found: Any = importlib.import_module(module_name)
    except SyntaxError as exc:  # found, but not Python: said as such
        raise ImportError(
            f"{what} '{path}': module '{module_name}' has a syntax error ({exc})"
        ) from exc
    except ImportError as exc:
        raise ImportError(
            f"{what} '{path}': cannot import module '{module_name}' ({exc}); is it "
            "installed, or its folder on PYTHONPATH?"
        ) from exc
    for part in attribute.split("."):
        if not hasattr(found, part):
            raise ImportError(f"{what} '{path}': module '{module_name}' has no '{attribute}'")
        found = getattr(found, part)
    return found
