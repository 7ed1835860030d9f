"""The explorer's panels, one line each, in the order the page shows them.

A panel is one server module, ``panels/<name>.py``, and one page module,
``static/panels/<name>.js``:

- the server module has ``router(state) -> APIRouter`` (its endpoints, built over the
  :class:`~convlens.apps.server.state.ServerState`) and may have ``describe(state, key) ->
  dict`` (its fields of a model's entry in ``/api/models``);
- the page module exports ``mount()``, which puts the panel's markup on the page, binds its
  controls and subscribes to the page's events (``static/lib/state.js``: ``model``,
  ``image``, ...).

``create_app`` includes every panel's router; the page (``static/main.js``) reads this list
from ``/api/panels`` and mounts the page modules in this order. A new panel is its two modules
and its line here.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fastapi import APIRouter

    from convlens.apps.server.state import ServerState

PANELS: tuple[str, ...] = (
    "image",  # sample pictures, uploads, the picture as the model sees it
    "predictions",  # a classifier's top classes
    "activations",  # one layer's activation, channel by channel (the slider)
    "filters",  # that layer's filter weights
    "explanation",  # attribution maps: every registered method as a form
    "detection",  # a detector's boxes, and one box explained
    "segmentation",  # a segmenter's classes, and the region clicked explained
    "jobs",  # long work in the background: feature visualization, TCAV, ...
    "layers",  # the layer table: every layer's type, output shape and parameters
)


def modules() -> list[ModuleType]:
    """The server module of every panel, in page order."""
    return [importlib.import_module(f"{__name__}.{name}") for name in PANELS]


def routers(state: ServerState) -> list[APIRouter]:
    """Every panel's router over ``state``."""
    return [module.router(state) for module in modules()]


def describe(state: ServerState, key: str) -> dict[str, Any]:
    """The fields the panels add to model ``key``'s entry in ``/api/models``."""
    out: dict[str, Any] = {}
    for module in modules():
        if hasattr(module, "describe"):
            out.update(module.describe(state, key))
    return out
