"""Training engine: typed configs, the loop, atomic checkpoints and exact resume, torchrun DDP."""

from .config import Config, ConfigError, load_config, save_config
from .engine import METRIC_KEYS, Trainer, TrainingDiverged, evaluate_checkpoint

__all__ = ["Config", "ConfigError", "load_config", "save_config", "METRIC_KEYS", "Trainer", "TrainingDiverged",
           "evaluate_checkpoint"]
