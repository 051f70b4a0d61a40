"""The trainer behind ``augmat train``: the seed CNN on a stream of pre-rendered images.

``augmat_train.trainer`` reads top to bottom: hyperparameters, data, model, the record of
the run, training, the final report.
"""

from .trainer import TrainConfig, run

__all__ = ["TrainConfig", "run"]
