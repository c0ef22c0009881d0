"""stpdist: distributed training for spatiotemporal prediction."""

from .threads import prefer_passive_waiting

prefer_passive_waiting()  # before torch is imported below: OpenMP reads it once

# ruff: noqa: E402

from .config import Config, ConfigError, load_config
from .inference import load
from .module import EnhancedModule
from .trainer import Trainer

__all__ = ["Config", "ConfigError", "EnhancedModule", "Trainer", "load", "load_config"]
__version__ = "0.1.0"
