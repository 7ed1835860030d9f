"""Networks the trainer can build by name, each rebuilt exactly from a JSON-able config.

``build(name, **options)`` returns an ``nn.Module``; :func:`config` returns every option with
its default filled in, which is what a convlens checkpoint records, so ``build(**config)``
rebuilds the same network. Layers are named children of an ``nn.Sequential`` (``conv1``,
``pool1``, ``dense1``, ``logits``), so ``model.layers()`` reads like the table below and a
user types ``--layer conv3``.

* ``explorer_cnn`` — the small classifier of the activation explorer (system 1 of the
  mission): three times conv 3x3 + ReLU + max-pool 2, dropout, dense + ReLU, dense to the
  classes. With the default widths (16, 32, 64) and a 32-unit dense layer a 128x128 model
  has about 0.55 M parameters (2.2 MB of float32 weights).
* ``scratch_cnn`` — the network built from scratch and watched while it trains (system 3):
  two blocks of two conv 3x3 + ReLU layers, each block closed by max-pool 2 and dropout, then
  dense + ReLU, dropout and a dense layer to the classes (the Keras CIFAR-10 example's layout).

Both output logits (N, classes); the softmax is the :class:`~convlens.model.Model`'s
postprocess. A user's own network comes from ``"package.module:factory"`` (see
:func:`build`).
"""

from __future__ import annotations

import inspect
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

__all__ = ["Architecture", "build", "config", "names", "register"]


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
        from convlens.naming import unknown

        raise unknown("architecture", name, names())
    return _REGISTRY[name]


def is_factory(name: str) -> bool:
    """``"package.module:function"`` (a user's own network) rather than a registered name."""
    return ":" in name


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    return value


def _bind(fn: Callable[..., Any], name: str, options: dict[str, Any]) -> dict[str, Any]:
    signature = inspect.signature(fn)
    takes_any = any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values())
    unknown = sorted(set(options) - set(signature.parameters))
    if unknown and not takes_any:
        accepted = ", ".join(signature.parameters)
        raise ValueError(f"{name} has no option(s) {', '.join(unknown)}; it takes {accepted}")
    bound = signature.bind_partial(**options)
    bound.apply_defaults()
    return {k: _jsonable(v) for k, v in bound.arguments.items()}


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
        from convlens.loading import ModelLoadError, _resolve_factory

        try:
            fn = _resolve_factory(name)
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


def _pair(size: Any, what: str) -> tuple[int, int]:
    values = (size, size) if isinstance(size, int) else tuple(size)
    if len(values) != 2 or not all(isinstance(v, int) and v > 0 for v in values):
        raise ValueError(f"expected {what} as H or (H, W) of positive ints, got {size!r}")
    return int(values[0]), int(values[1])


def _check_common(num_classes: int, in_channels: int, dropout: float) -> None:
    if not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"expected num_classes >= 2, got {num_classes!r}")
    if in_channels not in (1, 3):
        raise ValueError(f"expected in_channels 1 or 3, got {in_channels!r}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"expected dropout in [0, 1), got {dropout!r}")


@register("explorer_cnn")
def explorer_cnn(
    num_classes: int = 2,
    in_channels: int = 3,
    input_size: int | tuple[int, int] = (128, 128),
    widths: tuple[int, ...] = (16, 32, 64),
    dense: int = 32,
    dropout: float = 0.5,
    head: str = "flatten",
) -> nn.Module:
    """The explorer's small CNN: (conv 3x3 + ReLU + max-pool 2) per width, dropout, dense.

    ``head="flatten"`` (the original) feeds every position of the last pooled map to the
    dense layer, so the network can learn where things are; ``head="gap"`` averages each
    channel over the image first (global average pooling, Lin et al. 2014), which makes the
    classifier blind to position and its class evidence local: CAM-style maps of such a
    network point at the object (Zhou et al. 2016), and it has far fewer weights.
    """
    _check_common(num_classes, in_channels, dropout)
    if head not in ("flatten", "gap"):
        raise ValueError(f"expected head 'flatten' or 'gap', got {head!r}")
    height, width = _pair(input_size, "input_size")
    if not widths or not all(isinstance(w, int) and w > 0 for w in widths):
        raise ValueError(f"expected widths as positive ints, got {widths!r}")
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    channels = in_channels
    for i, out in enumerate(widths, start=1):
        layers[f"conv{i}"] = nn.Conv2d(channels, out, 3, padding=1)
        layers[f"relu{i}"] = nn.ReLU()
        layers[f"pool{i}"] = nn.MaxPool2d(2)
        channels = out
        height, width = height // 2, width // 2
    if height < 1 or width < 1:
        raise ValueError(f"input_size {input_size!r} is too small for {len(widths)} poolings")
    if head == "gap":
        layers["gap"] = nn.AdaptiveAvgPool2d(1)
        height = width = 1
    layers["flatten"] = nn.Flatten()
    layers["dropout"] = nn.Dropout(dropout)
    layers["dense1"] = nn.Linear(channels * height * width, dense)
    layers[f"relu{len(widths) + 1}"] = nn.ReLU()
    layers["logits"] = nn.Linear(dense, num_classes)
    return nn.Sequential(layers)


@register("scratch_cnn")
def scratch_cnn(
    num_classes: int = 10,
    in_channels: int = 3,
    input_size: int | tuple[int, int] = (32, 32),
    widths: tuple[int, int, int, int] = (32, 32, 64, 64),
    dense: int = 128,
    dropout: float = 0.25,
    dense_dropout: float = 0.5,
) -> nn.Module:
    """The from-scratch CNN: 2 x (conv, conv, max-pool, dropout), dense, dropout, dense."""
    _check_common(num_classes, in_channels, dropout)
    _check_common(num_classes, in_channels, dense_dropout)
    height, width = _pair(input_size, "input_size")
    if len(widths) != 4 or not all(isinstance(w, int) and w > 0 for w in widths):
        raise ValueError(f"expected 4 positive conv widths, got {widths!r}")
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    channels = in_channels
    for i, out in enumerate(widths, start=1):
        layers[f"conv{i}"] = nn.Conv2d(channels, out, 3, padding=1)
        layers[f"relu{i}"] = nn.ReLU()
        channels = out
        if i % 2 == 0:
            layers[f"pool{i // 2}"] = nn.MaxPool2d(2)
            layers[f"dropout{i // 2}"] = nn.Dropout(dropout)
            height, width = height // 2, width // 2
    if height < 1 or width < 1:
        raise ValueError(f"input_size {input_size!r} is too small for 2 poolings")
    layers["flatten"] = nn.Flatten()
    layers["dense1"] = nn.Linear(channels * height * width, dense)
    layers["relu5"] = nn.ReLU()
    layers["dropout3"] = nn.Dropout(dense_dropout)
    layers["logits"] = nn.Linear(dense, num_classes)
    return nn.Sequential(layers)
