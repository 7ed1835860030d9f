"""Toons: a procedural cartoon data set where we know where the evidence is.

Three characters wear the same uniform and differ only in their hair:

========== ====================================== =====================
class      hair shape                              hair colour
========== ====================================== =====================
``jessie`` long, falling behind the shoulders      red
``james``  short, a cap with a side fringe         blue
``cassidy`` two side buns with hanging curls       yellow
========== ====================================== =====================

Position, scale, a small rotation, skin tone, uniform shade, background (flat, gradient,
smooth noise, clutter of random shapes) and distractor objects (shapes in any colour, red,
blue and yellow included) vary at random, so the hair is the only reliable cue.

Every image comes with exact masks: :attr:`ToonSet.parts` holds one part id per pixel
(:data:`PARTS`: background, body, face, hair, hat, distractor), drawn with the same
polygons as the picture (no anti-aliasing), and :attr:`ToonSet.instances` says which
character (1, 2, ...) a pixel belongs to. Boxes are the visible extent of each character.

Variants (:data:`VARIANTS`):

``clean``
    one character per image; background brightness independent of the class.
``spurious``
    in the ``train`` and ``val`` splits the background brightness agrees with the class
    95 % of the time (dark for jessie, middle for james, bright for cassidy); in ``test``
    it is drawn independently, the camouflaged-tank story. The characters are smaller
    (35-60 % of the frame's height instead of 50-85 %), so the background is most of the
    picture and the shortcut is easier to learn than the hair.
``dyed``
    hair colours swapped round (:data:`DYED`: jessie's hair is blue, james's yellow,
    cassidy's red); labels stay.
``hat``
    the hair is hidden under a hat of random colour; labels stay.
``crowd``
    two or three characters per frame, a box for each (for detection).

Everything is deterministic from ``seed``: image ``i`` of a split is drawn from its own
random stream (seed, variant, split, i), so any subset can be regenerated on its own.

Written to disk (:func:`write`, CLI ``convlens toons make``) as an image-folder layout that
other tools read too::

    ROOT/index.json                      format, classes, parts, one record per image
    ROOT/<split>/<class>/<id>.png        pictures (crowd frames: ROOT/<split>/crowd/<id>.png)
    ROOT/masks/<split>/<id>.png          8-bit part ids
    ROOT/instances/<split>/<id>.png      8-bit character index (0 = none)

For segmentation the part masks become class maps (:func:`class_map`: background, hair, face,
body; hats and distractors are background), in memory (:func:`segmentation_data`) or read from
toons folders (:func:`read_segmentation`).

Concept sets for TCAV (:func:`write_concepts`): ``ROOT/<concept>/*.png`` for the colours
and textures in :data:`CONCEPTS` and ``ROOT/random_0 .. random_<N-1>`` of background and
clutter crops.
"""

from convlens.data.toons.concepts import (
    concept_image,
    concept_images,
    random_image,
    write_concepts,
)
from convlens.data.toons.dataset import (
    CHARACTER_PARTS,
    CLASSES,
    CONCEPTS,
    DYED,
    HAIR_HUE,
    PARTS,
    SPLITS,
    SPURIOUS_AGREEMENT,
    SPURIOUS_BRIGHTNESS,
    VARIANTS,
    ToonsError,
    ToonSet,
)
from convlens.data.toons.draw import BACKGROUNDS, CHARACTER_EXTENT, hair_colour
from convlens.data.toons.folders import (
    FORMAT,
    crowd_frames,
    read,
    read_boxes,
    split_counts,
    write,
)
from convlens.data.toons.scenes import generate
from convlens.data.toons.segmentation import (
    PART_TO_CLASS,
    SEGMENT_CLASSES,
    class_map,
    read_segmentation,
    segmentation_data,
    toons_folders,
)

__all__ = [
    "BACKGROUNDS",
    "CHARACTER_EXTENT",
    "CHARACTER_PARTS",
    "CLASSES",
    "CONCEPTS",
    "DYED",
    "FORMAT",
    "HAIR_HUE",
    "PARTS",
    "PART_TO_CLASS",
    "SEGMENT_CLASSES",
    "SPLITS",
    "SPURIOUS_AGREEMENT",
    "SPURIOUS_BRIGHTNESS",
    "VARIANTS",
    "ToonSet",
    "ToonsError",
    "class_map",
    "concept_image",
    "concept_images",
    "crowd_frames",
    "generate",
    "hair_colour",
    "random_image",
    "read",
    "read_boxes",
    "read_segmentation",
    "segmentation_data",
    "split_counts",
    "toons_folders",
    "write",
    "write_concepts",
]
