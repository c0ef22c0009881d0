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

import contextlib
import dataclasses
import inspect
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
    constructor (after the positional `leading` arguments)."""
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


def build_user_backbone(cls: type[nn.Module], spec: Any, values: dict[str, Any]) -> nn.Module:
    """A backbone given by import path: with `Args` like the built-in ones, else keywords."""
    args_cls = getattr(cls, "Args", None)
    if dataclasses.is_dataclass(args_cls):
        return cls(spec, args_cls(**values))
    check_keywords(cls, values, spec)
    return cls(spec, **values)
