"""stpdist: distributed training for spatiotemporal prediction."""

from .config import Config, ConfigError, load_config
from .inference import load
from .module import EnhancedModule
from .trainer import Trainer

__all__ = ["Config", "ConfigError", "EnhancedModule", "Trainer", "load", "load_config"]
__version__ = "0.1.0"
