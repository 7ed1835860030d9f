"""What a catalogue gives: :class:`ModelParts` (a network and how to talk to it, before it is a
handle) and :class:`CatalogueEntry` (one name on offer, for listings)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from torch import nn

from convlens.core.model import Preprocessing
from convlens.core.zoo.weights import WeightsFile, cached


@dataclass
class ModelParts:
    """A catalogue model before it is a handle: ``module`` (eval mode, weights loaded),
    ``preprocessing`` (``None``: pictures in [0, 1] as they are, torchvision's detection
    convention), ``labels`` (one name or list of synonyms per class, or ``None``), ``task``
    (``classify``, ``detect`` or ``segment``), where it came from, the weights file read and
    ``notes`` (what the mapping could not reproduce exactly)."""

    name: str
    module: nn.Module
    preprocessing: Preprocessing | None
    labels: list[str] | list[list[str]] | None
    task: str
    source: str
    weights: Path | None = None
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class CatalogueEntry:
    """One name a catalogue offers: its task, source, a line of description and the weights
    file (``None`` when the catalogue has none for it)."""

    name: str
    task: str
    source: str
    description: str
    weights: WeightsFile | None

    @property
    def cached(self) -> Path | None:
        """The weights file when it is on this machine."""
        return cached(self.weights) if self.weights is not None else None
