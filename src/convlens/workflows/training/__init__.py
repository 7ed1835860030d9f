"""Training: one loop (:mod:`.loop`) with the classifier (:mod:`.classify`) and the detector
(:mod:`.detect`) as its heads."""

from convlens.workflows.training.classify import train
from convlens.workflows.training.loop import TrainEvent, TrainResult

__all__ = ["TrainEvent", "TrainResult", "train"]
