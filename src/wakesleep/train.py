"""Backward-compatible names of the former ``wakesleep.train`` module; new code imports :mod:`wakesleep.training`.

The Trainer, its checkpoints and its monitoring live in :mod:`wakesleep.training`; building a run from a config
dict lives, for now, in ``wakesleep.training._legacy_config``. Every name is re-exported (``import x as x``) as it
was importable from here before, private ones included.
"""

from __future__ import annotations

from wakesleep.training._legacy_config import _train_from_config as _train_from_config
from wakesleep.training._legacy_config import apply_threads as apply_threads
from wakesleep.training._legacy_config import build_algorithm_from_config as build_algorithm_from_config
from wakesleep.training._legacy_config import build_model_from_config as build_model_from_config
from wakesleep.training._legacy_config import config_threads as config_threads
from wakesleep.training._legacy_config import load_data as load_data
from wakesleep.training._legacy_config import load_run as load_run
from wakesleep.training._legacy_config import train_from_config as train_from_config
from wakesleep.training._legacy_config import trainer_from_config as trainer_from_config
from wakesleep.training._legacy_config import validate_data as validate_data
from wakesleep.training._legacy_config import write_run as write_run
from wakesleep.training.checkpoint import CHECKPOINT_FORMAT as CHECKPOINT_FORMAT
from wakesleep.training.checkpoint import Checkpoint as Checkpoint
from wakesleep.training.checkpoint import _check_optimizer as _check_optimizer
from wakesleep.training.checkpoint import _check_tensors as _check_tensors
from wakesleep.training.checkpoint import _truncate_metrics as _truncate_metrics
from wakesleep.training.checkpoint import adam as adam
from wakesleep.training.checkpoint import algorithm_name as algorithm_name
from wakesleep.training.checkpoint import read_checkpoint as read_checkpoint
from wakesleep.training.loop import Trainer as Trainer
from wakesleep.training.loop import TrainingDiverged as TrainingDiverged
from wakesleep.training.loop import dynamic_binarizer_generator as dynamic_binarizer_generator
from wakesleep.training.monitor import _moments as _moments
from wakesleep.training.monitor import _stream_is_tty as _stream_is_tty
from wakesleep.training.monitor import moment_gap as moment_gap
from wakesleep.training.monitor import sample_observations as sample_observations

_sample_x = sample_observations  # imported by wakesleep.cli
_Checkpoint = Checkpoint
_algorithm_name = algorithm_name

__all__ = [
    "Trainer",
    "TrainingDiverged",
    "build_model_from_config",
    "build_algorithm_from_config",
    "load_data",
    "validate_data",
    "moment_gap",
    "train_from_config",
    "write_run",
    "load_run",
    "config_threads",
    "apply_threads",
]
