"""One way to name things everywhere, and helpful errors for names that do not exist.

Layers are named by the dotted path of ``named_modules()`` (``features.14.conv.0``), and one
channel of a layer by ``layer:channel`` (``features.14:17``).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass

from torch import nn


class UnknownNameError(LookupError):
    """A layer, class, model or method name that does not exist; the message lists close ones."""


def close_matches(name: str, candidates: Iterable[str], n: int = 5) -> list[str]:
    """Up to ``n`` candidates that look like ``name`` (difflib ratio, then substring hits)."""
    pool = list(candidates)
    found = difflib.get_close_matches(name, pool, n=n, cutoff=0.5)
    if len(found) < n:
        lowered = name.lower()
        found += [c for c in pool if lowered in c.lower() and c not in found][: n - len(found)]
    return found


def unknown(kind: str, name: str, candidates: Iterable[str]) -> UnknownNameError:
    """An :class:`UnknownNameError` for ``name`` with suggestions from ``candidates``."""
    pool = list(candidates)
    near = close_matches(name, pool)
    hint = f"; did you mean {', '.join(repr(c) for c in near)}?" if near else ""
    examples = "" if near else f" (there are {len(pool)}, e.g. {', '.join(pool[:5])})"
    return UnknownNameError(f"unknown {kind} {name!r}{hint}{examples}")


@dataclass(frozen=True)
class LayerRef:
    """A parsed layer name: ``features.14`` or ``features.14:17`` (channel 17)."""

    name: str
    channel: int | None = None

    def __str__(self) -> str:
        return self.name if self.channel is None else f"{self.name}:{self.channel}"


def parse_layer(spec: str) -> LayerRef:
    """Split ``"layer"`` / ``"layer:channel"`` into a :class:`LayerRef`."""
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"expected a layer name such as 'features.14' or 'conv1:7', got {spec!r}")
    name, sep, channel = spec.strip().rpartition(":")
    if not sep:
        return LayerRef(spec.strip())
    if not channel.isdigit():
        raise ValueError(f"expected 'layer:channel' with a whole channel number, got {spec!r}")
    return LayerRef(name, int(channel))


def get_layer(module: nn.Module, name: str) -> nn.Module:
    """The submodule called ``name`` (dotted path); unknown names list close matches.

    The empty string and ``"output"`` name the whole network.
    """
    if name in ("", "output"):
        return module
    try:
        return module.get_submodule(name)
    except AttributeError:
        pass
    except RuntimeError:  # TorchScript modules have no get_submodule
        found = dict(module.named_modules()).get(name)
        if found is not None:
            return found
    raise unknown("layer", name, (n for n, _ in module.named_modules() if n))
