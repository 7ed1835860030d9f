"""Networks the trainer can build by name, each rebuilt exactly from a JSON-able config.

``build(name, **options)`` returns an ``nn.Module``; :func:`config` returns every option with
its default filled in, which is what a convlens checkpoint records, so ``build(**config)``
rebuilds the same network. Layers are named children of an ``nn.Sequential`` (``conv1``,
``pool1``, ``dense1``, ``logits``), so ``model.layers()`` reads like the table below and a
user types ``--layer conv3``.

The networks themselves are in :mod:`~convlens.core.architectures.cnns`,
:mod:`~convlens.core.architectures.segnet` and :mod:`~convlens.core.architectures.centernet`:

* ``explorer_cnn`` — the small classifier of the activation explorer (system 1 of the
  mission): three times conv 3x3 + ReLU + max-pool 2, dropout, dense + ReLU, dense to the
  classes. With the default widths (16, 32, 64) and a 32-unit dense layer a 128x128 model
  has about 0.55 M parameters (2.2 MB of float32 weights).
* ``scratch_cnn`` — the network built from scratch and watched while it trains (system 3):
  two blocks of two conv 3x3 + ReLU layers, each block closed by max-pool 2 and dropout, then
  dense + ReLU, dropout and a dense layer to the classes (the Keras CIFAR-10 example's layout).
* ``toon_segnet`` — the toon segmentation network: a small encoder-decoder with additive skips
  that labels every pixel; it returns torchvision's segmentation dict
  ``{"out": (N, classes, H, W)}`` (plus ``"aux"`` with ``aux=True``).

The classifiers output logits (N, classes); the softmax is the
:class:`~convlens.core.model.Model`'s postprocess. A user's own network comes from
``"package.module:factory"`` (see :func:`build`).
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from convlens.core.errors import ModelLoadError
from convlens.core.util import jsonable


@dataclass(frozen=True)
class Architecture:
    """A registered network: its name, the function that builds it and a one-line summary."""

    name: str
    fn: Callable[..., nn.Module]
    description: str


_REGISTRY: dict[str, Architecture] = {}


def register(name: str, description: str = "") -> Callable[[Callable[..., nn.Module]], Any]:
    """Decorator: make ``fn(**options) -> nn.Module`` buildable as ``build(name, ...)``.

    Every option must be a keyword with a JSON-able default (numbers, strings, lists).
    """

    def wrap(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"architecture {name!r} is already registered")
        summary = description or (inspect.getdoc(fn) or "").split("\n")[0]
        _REGISTRY[name] = Architecture(name, fn, summary)
        return fn

    return wrap


def names() -> list[str]:
    """The registered architecture names."""
    return sorted(_REGISTRY)


def get(name: str) -> Architecture:
    """The registered architecture ``name``; an unknown name lists the close ones."""
    if name not in _REGISTRY:
        from convlens.core.naming import unknown

        raise unknown("architecture", name, names())
    return _REGISTRY[name]


def is_factory(name: str) -> bool:
    """``"package.module:function"`` (a user's own network) rather than a registered name."""
    return ":" in name


def _bind(fn: Callable[..., Any], name: str, options: dict[str, Any]) -> dict[str, Any]:
    signature = inspect.signature(fn)
    takes_any = any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values())
    unknown = sorted(set(options) - set(signature.parameters))
    if unknown and not takes_any:
        accepted = ", ".join(signature.parameters)
        raise ValueError(f"{name} has no option(s) {', '.join(unknown)}; it takes {accepted}")
    bound = signature.bind_partial(**options)
    bound.apply_defaults()
    return {k: jsonable(v) for k, v in bound.arguments.items()}


def config(name: str, **options: Any) -> dict[str, Any]:
    """Every option of ``name`` with defaults filled in (lists for tuples), JSON-able.

    Raises ``ValueError`` for an option the architecture does not take.
    """
    return _bind(get(name).fn, name, options)


def build(name: str | Callable[..., nn.Module], **options: Any) -> nn.Module:
    """Build the network ``name`` with ``options``.

    ``name`` is a registered name (:func:`names`), ``"package.module:factory"`` or a callable;
    a factory is called with ``options``, and ``num_classes`` / ``in_channels`` /
    ``input_size`` are passed only when its signature takes them.
    """
    if callable(name) or is_factory(name):
        try:
            fn = resolve_factory(name)
        except ModelLoadError as err:
            raise ValueError(str(err)) from None
        accepted = inspect.signature(fn).parameters
        takes_any = any(p.kind is p.VAR_KEYWORD for p in accepted.values())
        implicit = {"num_classes", "in_channels", "input_size"}
        given = {
            k: v for k, v in options.items() if k not in implicit or k in accepted or takes_any
        }
        built = fn(**given)
        module = getattr(built, "module", built)  # a factory may return a convlens Model
        if not isinstance(module, nn.Module):
            raise ValueError(
                f"factory {name!r} returned {type(built).__name__}, expected an nn.Module"
            )
        return module
    arch = get(name)
    return arch.fn(**config(name, **options))


def looks_like_factory(text: str) -> bool:
    """Whether ``text`` reads as ``"package.module:function"``."""
    module, sep, attr = text.partition(":")
    return bool(sep) and module.replace(".", "").replace("_", "").isalnum() and attr.isidentifier()


def resolve_factory(spec: str | Callable[[], Any]) -> Callable[..., Any]:
    """The callable a ``"package.module:function"`` spec names (imported), or ``spec`` itself."""
    if callable(spec):
        return spec
    if not looks_like_factory(spec):
        raise ModelLoadError(f"expected a factory 'package.module:function', got {spec!r}")
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ModelLoadError(f"cannot import {module_name!r} for factory {spec!r}: {err}") from err
    try:
        fn = getattr(module, attr)
    except AttributeError:
        raise ModelLoadError(f"module {module_name!r} has no attribute {attr!r}") from None
    if not callable(fn):
        raise ModelLoadError(f"{spec!r} is not callable")
    return fn  # type: ignore[no-any-return]
