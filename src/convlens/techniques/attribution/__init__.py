"""Attribution methods, one module per family; each registers itself on import.

Every method is a plain function ``fn(model, images, target=None, *, layer=None, **options)``
registered with its task, family, paper and settings (:mod:`.base`). A new method is one
function with ``@register(...)`` in its family's module (or a new module imported below).
"""

from convlens.techniques.attribution import (  # noqa: F401  (each family registers its methods)
    cam,
    detection,
    gradients,
    occlusion,
    rise,
    segmentation,
    smoothgrad,
)
from convlens.techniques.attribution.base import (
    Attribution,
    MethodInfo,
    Target,
    get_method,
    method_options,
    methods,
    register,
    resolve_target,
)
from convlens.techniques.attribution.display import shared_scale
from convlens.techniques.attribution.explain import explain

__all__ = [
    "Attribution",
    "MethodInfo",
    "Target",
    "explain",
    "get_method",
    "method_options",
    "methods",
    "register",
    "resolve_target",
    "shared_scale",
]
