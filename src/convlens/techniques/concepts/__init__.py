"""Testing with Concept Activation Vectors (TCAV; Kim et al., ICML 2018): does the model use a
human concept ("striped", "red") for a class, layer by layer, and is that more than chance?

The package, step by step:

1. **Passes** (:mod:`.collect`). Every picture of every concept set, of every
   random set and of the target class goes through the network once per batch; all requested
   layers are read from that one pass (it stops after the deepest one; concept pictures need
   no gradient). Target pictures get one backward pass from the class **logit** to the layers
   (for the local test, one per layer with that layer's output replaced by ``steps`` points on
   the path from a zero map to it: only the network after the layer runs them).
   With ``cache_dir`` each picture's numbers are stored under a key made of the model's
   weights, the layers and the picture's network input, never of a folder name.
2. **The default test** (``test="local"``, :mod:`.local`): the CAV is the
   difference of the mean channel vectors of concept and random pictures; in each target
   picture, at the positions where the concept appears (its side of the nearest-mean rule),
   the class logit's derivative along the CAV, integrated along the path from a zero map to
   the picture's activation (a finite change, not only the slope), is summed; the mean over target
   pictures is compared with the same number for relabellings of the pooled concept and
   random pictures (an exact permutation test, two-sided, with the direction).
3. **The set tests** (``"sets"``, ``"paper"``, :mod:`.significance`), as
   in the paper: CAVs fitted on whole flattened maps (:mod:`.cavs`: logistic
   regression or a linear SVM solved by Newton's method in the span of the training pictures,
   or the difference of means), the TCAV score (share of target pictures whose logit rises
   along the CAV) per (concept, random set), and random-vs-random CAVs as the null.
4. **Ground truth** (:mod:`.intervention`): paint a part of the target
   pictures (the toons' hair) in a concept's colour and measure how the class logit moves.

p-values are Bonferroni-corrected over every (concept, layer) tested. Entry points:
:func:`tcav` (and ``convlens tcav``), :func:`fit_cavs` for CAVs from your own activations,
:func:`scores` for scores from given gradients and CAVs, :func:`intervention_effect` and
:func:`intervention_table`. Results come as a :class:`TCAVResult` (table, JSON, CSV, a bar
chart, the CAVs).
"""

from __future__ import annotations

from convlens.techniques.concepts.cavs import (
    CLASSIFIERS,
    CAVs,
    directional_derivatives,
    fit_cavs,
    scores,
)
from convlens.techniques.concepts.collect import fingerprint
from convlens.techniques.concepts.intervention import (
    Intervention,
    InterventionTable,
    intervention_effect,
    intervention_table,
    recolour,
)
from convlens.techniques.concepts.local import (
    LocalRun,
    local_statistic,
    permutation_p,
    pictures_needed,
)
from convlens.techniques.concepts.result import NULL, Run, TCAVResult
from convlens.techniques.concepts.run import tcav
from convlens.techniques.concepts.sets import ConceptSet, concept_sets
from convlens.techniques.concepts.significance import (
    NEAR_CHANCE,
    TESTS,
    default_permutations,
    null_scores,
)

__all__ = [
    "CLASSIFIERS",
    "NEAR_CHANCE",
    "NULL",
    "TESTS",
    "CAVs",
    "ConceptSet",
    "Intervention",
    "InterventionTable",
    "LocalRun",
    "Run",
    "TCAVResult",
    "concept_sets",
    "default_permutations",
    "directional_derivatives",
    "fingerprint",
    "fit_cavs",
    "intervention_effect",
    "intervention_table",
    "local_statistic",
    "null_scores",
    "permutation_p",
    "pictures_needed",
    "recolour",
    "scores",
    "tcav",
]
