"""Networks by name, rebuilt exactly from a JSON-able config (see :mod:`.registry`); the
networks register themselves when this package is imported."""

from convlens.core.architectures import cnns, segnet  # noqa: F401  (registration)
from convlens.core.architectures.registry import (
    Architecture,
    build,
    config,
    get,
    is_factory,
    looks_like_factory,
    names,
    register,
    resolve_factory,
)

__all__ = [
    "Architecture",
    "build",
    "config",
    "get",
    "is_factory",
    "looks_like_factory",
    "names",
    "register",
    "resolve_factory",
]
