"""stpdist: distributed training for spatiotemporal prediction."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .threads import prefer_passive_waiting
from .userdirs import private_matplotlib_folder

prefer_passive_waiting()  # before torch is first imported: OpenMP reads it once
private_matplotlib_folder()  # where the home folder cannot be written: before matplotlib

if TYPE_CHECKING:  # imported on first use (`__getattr__`): `stpdist shard` needs no torch
    from .config import Config, ConfigError, load_config
    from .inference import load
    from .module import EnhancedModule
    from .trainer import Trainer

_EXPORTS = {
    "Config": ".config",
    "ConfigError": ".config",
    "load_config": ".config",
    "load": ".inference",
    "EnhancedModule": ".module",
    "Trainer": ".trainer",
}
__all__ = ["Config", "ConfigError", "EnhancedModule", "Trainer", "load", "load_config"]
__version__ = "0.1.0"


if not TYPE_CHECKING:  # type checkers read the imports above: a misspelt name is theirs to say

    def __getattr__(name: str) -> Any:
        if name not in _EXPORTS:
            raise AttributeError(f"module 'stpdist' has no attribute {name!r}")
        value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
        globals()[name] = value  # once
        return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
