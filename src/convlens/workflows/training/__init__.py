"""Training: the classifier trainer and the detector trainer (:mod:`.classify`, :mod:`.detect`)."""

from convlens.workflows.training.classify import TrainEvent, TrainResult, train

__all__ = ["TrainEvent", "TrainResult", "train"]
