"""Training: the :class:`Trainer` loop, its checkpoints and its progress monitoring.

- :mod:`wakesleep.training.loop`: :class:`Trainer` (scikit-learn style: hyperparameters in ``__init__``,
  ``fit(data, resume_from=None)`` sets the attributes ending in ``_``) and :class:`TrainingDiverged`;
- :mod:`wakesleep.training.checkpoint`: checkpoint directories (:func:`read_checkpoint`, :class:`Checkpoint`) and
  the optimiser (:func:`adam`);
- :mod:`wakesleep.training.monitor`: the logged records, the progress metric (:func:`moment_gap`), model samples
  (:func:`sample_observations`) and the log callbacks (``metrics.jsonl``, the progress bar).
"""

from wakesleep.training.checkpoint import Checkpoint, adam, read_checkpoint
from wakesleep.training.loop import Trainer, TrainingDiverged, TrainingInterrupted, dynamic_binarizer_generator
from wakesleep.training.monitor import moment_gap, sample_observations

__all__ = [
    "Trainer",
    "TrainingDiverged",
    "TrainingInterrupted",
    "Checkpoint",
    "read_checkpoint",
    "moment_gap",
    "sample_observations",
    "dynamic_binarizer_generator",
    "adam",
]
