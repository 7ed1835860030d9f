"""One way to name things everywhere, and helpful errors for names that do not exist.

Layers are named by the dotted path of ``named_modules()`` (``features.14.conv.0``), and one
channel of a layer by ``layer:channel`` (``features.14:17``). A module that runs more than once
in one forward pass (EfficientNet-Lite's ReLU6 ``_swish``, used by the stem and by the head;
ResNet's ``relu`` in every block) is one module but several layer outputs: ``name#k`` is its
``k``-th call (from 1) in each forward pass (``_swish#2``, ``_swish#2:17``), while the plain
name still names the module (hooks on it see every call).
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
    """A parsed layer name: ``features.14``, ``features.14:17`` (channel 17) or ``_swish#2``
    (the module's second call in a forward pass; ``name`` keeps the ``#2``)."""

    name: str
    channel: int | None = None

    def __str__(self) -> str:
        return self.name if self.channel is None else f"{self.name}:{self.channel}"

    @property
    def module_name(self) -> str:
        """The module's dotted path (without ``#k``)."""
        return split_call(self.name)[0]

    @property
    def call(self) -> int | None:
        """Which call of the module (from 1), or ``None`` for the module itself."""
        return split_call(self.name)[1]


def split_call(name: str) -> tuple[str, int | None]:
    """``"_swish#2"`` -> ``("_swish", 2)``; ``"features.14"`` -> ``("features.14", None)``."""
    base, sep, call = name.rpartition("#")
    if not sep or not base or not call.isdigit():
        return name, None
    if int(call) < 1:
        raise ValueError(
            f"expected 'layer#k' with k the call number (1, 2, ...) of a module that runs "
            f"several times, got {name!r}"
        )
    return base, int(call)


def call_name(name: str, call: int) -> str:
    """The name of call ``call`` (from 1) of module ``name``: ``_swish#2``."""
    return f"{name}#{call}"


def parse_layer(spec: str) -> LayerRef:
    """Split ``"layer"`` / ``"layer:channel"`` / ``"layer#k[:channel]"`` into a
    :class:`LayerRef`."""
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"expected a layer name such as 'features.14' or 'conv1:7', got {spec!r}")
    name, sep, channel = spec.strip().rpartition(":")
    if not sep:
        name, channel = spec.strip(), ""
    elif not channel.isdigit():
        raise ValueError(f"expected 'layer:channel' with a whole channel number, got {spec!r}")
    split_call(name)  # a malformed '#k' is refused here
    return LayerRef(name, int(channel) if channel else None)


def get_layer(module: nn.Module, name: str) -> nn.Module:
    """The submodule called ``name`` (dotted path; ``name#k``, one call of it, gives the
    module too); unknown names list close matches.

    The empty string and ``"output"`` name the whole network.
    """
    if name in ("", "output"):
        return module
    for candidate in dict.fromkeys((name, split_call(name)[0])):
        try:
            return module.get_submodule(candidate)
        except AttributeError:
            continue
        except RuntimeError:  # TorchScript modules have no get_submodule
            found = dict(module.named_modules()).get(candidate)
            if found is not None:
                return found
    raise unknown("layer", name, (n for n, _ in module.named_modules() if n))
