"""Users' own models by import path: `model.name: mypkg.models:MyNet` (a backbone, wrapped by
the Forecaster) or `model.name: mypkg.task:MyModule` (an `EnhancedModule`, the whole task).

A backbone with an `Args` dataclass takes `model.backbone` as those args, as the built-in
ones do; any other class gets `model.backbone` as keyword arguments, checked against its
constructor's signature before any data work starts. Registry names need no import path.

Importing a module runs its code, so an import path is only followed from a config the user
gave (`stpdist train my.yaml`). A model folder's config is not that: `stpdist.load`,
`forecast` and `export` resolve names inside `refusing_import_paths`, which refuses every
import path before anything is imported, unless the user passes `trust_code=True` /
`--trust-code`.
"""

from __future__ import annotations

import collections.abc
import contextlib
import dataclasses
import inspect
import types
import typing
from collections.abc import Iterator
from typing import Any

from torch import nn

from .errors import InputError
from .models.base import UNTRUSTED_SOURCES, UntrustedImportPath, import_class
from .module import EnhancedModule


def is_import_path(name: str) -> bool:
    return ":" in name


@contextlib.contextmanager
def refusing_import_paths(source: str) -> Iterator[None]:
    """Within: every import path (`model.name`, a SimVP translator) is refused, naming
    `source`, before anything is imported; registered names resolve as usual. (A plain
    list in `models.base`, not a context variable: model files import torch only.)"""
    UNTRUSTED_SOURCES.append(source)
    try:
        yield
    except UntrustedImportPath as exc:  # bad input (exit 2), wherever the name was resolved
        raise InputError(str(exc)) from None
    finally:
        UNTRUSTED_SOURCES.pop()


def resolve_model(name: str) -> type[nn.Module]:
    """The class `model.name` names: a registered backbone, or one given by import path."""
    if not is_import_path(name):
        from .models import backbone_class

        return backbone_class(name)
    return import_class(name, "model.name")


def is_task(cls: type) -> bool:
    """Whether `cls` is a whole task (an EnhancedModule) rather than a backbone."""
    return issubclass(cls, EnhancedModule)


def check_keywords(cls: type, values: dict[str, Any], *leading: Any) -> None:
    """Raise TypeError naming the valid parameters when `values` do not fit `cls`'s
    constructor (after the positional `leading` arguments), or one of them is not of the
    type its parameter is annotated with (int, float, bool, str, lists and tuples of them,
    Optional; other annotations are not checked)."""
    signature = inspect.signature(cls)
    try:
        signature.bind(*leading, **values)
    except TypeError as exc:
        valid = [
            p.name
            for p in list(signature.parameters.values())[len(leading) :]
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        ]
        raise TypeError(
            f"{exc}; {cls.__name__} takes: {', '.join(valid) or 'no arguments'}"
        ) from None
    try:
        hints = typing.get_type_hints(cls.__init__)
    except Exception:  # noqa: BLE001 - an annotation that does not resolve: not checked
        return
    for name, value in values.items():
        hint = hints.get(name)
        if hint is not None and _fits(value, hint) is False:
            raise TypeError(
                f"{name}={value!r} is a {type(value).__name__}; {cls.__name__} takes "
                f"{name}: {_shown(hint)}"
            )


BACKBONE_KEYWORDS = ("targets_BTCHW", "teacher_mask_BT")
"""The keywords the Forecaster passes a backbone's forward, besides the frames and T_out."""


def check_backbone_forward(cls: type) -> None:
    """Raise TypeError when `cls.forward` cannot be called as the Forecaster calls it,
    `forward(frames, num_output_frames, targets_BTCHW=…, teacher_mask_BT=…)`: said before
    any work, where it failed at the first step (`forward() got an unexpected keyword
    argument 'targets_BTCHW'`)."""
    if cls.forward is nn.Module.forward:  # none of its own: torch says so when it is called
        return
    try:
        signature = inspect.signature(cls.forward)
    except (TypeError, ValueError):  # a builtin: nothing to read
        return
    try:
        signature.bind(None, None, None, **dict.fromkeys(BACKBONE_KEYWORDS))
    except TypeError:
        raise TypeError(
            f"{cls.__name__}.forward{signature} cannot be called as the Forecaster calls it: "
            "forward(self, frames_BTCHW, num_output_frames, *, targets_BTCHW=None, "
            "teacher_mask_BT=None) (the keywords named exactly so; **kwargs takes them too)"
        ) from None


_SIMPLE = {int: (int,), float: (int, float), str: (str,), bool: (bool,)}


def _fits(value: Any, hint: Any) -> bool | None:
    """Whether `value` is of type `hint`; None where the annotation is not one checked."""
    if hint is Any:
        return None
    if hint in _SIMPLE:
        return isinstance(value, _SIMPLE[hint]) and (hint is bool or not isinstance(value, bool))
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        verdicts = [_fits(value, arg) for arg in args]
        return None if None in verdicts else any(verdicts)
    if hint is type(None):
        return value is None
    if origin in (list, tuple, collections.abc.Sequence) and isinstance(value, (list, tuple)):
        items = args[:1] if origin is not tuple or (len(args) == 2 and args[1] is ...) else ()
        verdicts = [_fits(item, items[0]) for item in value] if items else [None]
        return None if None in verdicts else all(verdicts)
    if origin in (list, tuple, collections.abc.Sequence):
        return False
    return None


def _shown(hint: Any) -> str:
    return getattr(hint, "__name__", None) if hint in _SIMPLE else str(hint).replace("typing.", "")


def build_user_backbone(cls: type[nn.Module], spec: Any, values: Any) -> nn.Module:
    """A backbone given by import path: with `Args` like the built-in ones (`values` an
    instance of them, as `config.backbone_config` types them, or a mapping), else keywords."""
    args_cls = getattr(cls, "Args", None)
    if dataclasses.is_dataclass(args_cls):
        return cls(spec, values if isinstance(values, args_cls) else args_cls(**values))
    check_keywords(cls, values, spec)
    return cls(spec, **values)
