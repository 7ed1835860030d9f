"""Feature visualization: the input patterns a channel, a neuron, a layer or a class responds
to most, found by gradient ascent on the input (activation maximisation).

- :func:`featurevis` runs it and returns a :class:`FeatureVis`;
- :mod:`.objectives` says what is maximised (``channel``, ``neuron``, ``deepdream``,
  ``class_logit``, ``direction``, ``diversity``, regularisers; ``+``, ``-``, scalar ``*``);
- :mod:`.param` how the image is parameterised (pixels, Fourier, decorrelated colour);
- :mod:`.transforms` the random transforms for robustness;
- :mod:`.presets` the named recipes (``"lucent"``, ``"classic"``, ``"pixels"``).

The package is called ``visualize`` (not ``featurevis``) so that ``convlens.featurevis`` stays
the function even after a submodule is imported.
"""

from __future__ import annotations

from convlens.techniques.visualize import objectives, param, presets, transforms
from convlens.techniques.visualize.core import FeatureVis, featurevis

__all__ = ["FeatureVis", "featurevis", "objectives", "param", "presets", "transforms"]
