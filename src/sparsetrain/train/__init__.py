"""Training: config, the plain loop, checkpoints, metrics and the end-of-run summary."""
from .checkpoint import CheckpointError, latest_checkpoint, load_checkpoint, save_checkpoint
from .config import DEMO, SCHEMA, resolve, validate
from .engine import Trainer, train
from .evaluate import evaluate
from .schedule import LRSchedule

__all__ = ["Trainer", "train", "evaluate", "resolve", "validate", "DEMO", "SCHEMA", "LRSchedule",
           "CheckpointError", "save_checkpoint", "load_checkpoint", "latest_checkpoint"]
