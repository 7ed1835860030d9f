"""Training: one loop (:mod:`.loop`) with the classifier (:mod:`.classify`), the detector
(:mod:`.detect`) and the segmenter (:mod:`.segment`) as its heads."""

from convlens.workflows.training.classify import train
from convlens.workflows.training.loop import TrainEvent, TrainResult

__all__ = ["TrainEvent", "TrainResult", "train"]
