"""How work over many pictures runs: the engine interface, and the in-process reference engine.

A job over a data set splits into two halves:

``work.loader(item)``
    runs where pictures are read (a decoding worker process, a Ray actor): a picklable
    callable that turns one item (a path, a tar member, ...) into what the model side needs,
    usually a picture already resized and cropped as an ``uint8`` array. Any exception marks
    that one item as :class:`Failed` (with the reason); the job goes on.
``work.compute(model, loaded)``
    runs where the model is: a list of loaded items -> one output per item (predictions,
    maps, layer activations, ...).

An :class:`Engine` runs both halves over batches of items and hands the outputs back in the
order of the batches, whatever ran where. This module is the interface (layer 0), so methods
(``techniques/``) can take an engine without knowing the engines that ``workflows/`` builds
(``convlens.dataset.engine("local")``, ``("ray")``); :class:`SerialEngine` is the plain
in-process loop the others must agree with.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable


@dataclass(frozen=True)
class Failed:
    """An item that could not be loaded, and why (``"ImageError: ... is not an image"``)."""

    reason: str


class Cancelled(Exception):
    """Raised by an engine when ``cancelled()`` said to stop (between batches)."""


@runtime_checkable
class Work(Protocol):
    """One kind of per-picture job (see the module docstring)."""

    @property
    def loader(self) -> Callable[[Any], Any]: ...

    def compute(self, model: Any, loaded: list[Any]) -> list[Any]: ...


@runtime_checkable
class Engine(Protocol):
    """Runs a :class:`Work` over batches of items.

    ``map`` yields, for each batch in order, a list with one entry per item: the output of
    ``work.compute`` for items that loaded, :class:`Failed` for those that did not. It holds
    only a bounded number of batches in flight (memory stays flat however many there are),
    checks ``cancelled()`` between batches (raising :class:`Cancelled`), and releases what
    it started (processes, actors) on every exit path.
    """

    name: str

    def map(
        self,
        model: Any,
        work: Work,
        batches: Iterable[Sequence[Any]],
        *,
        cancelled: Callable[[], bool] | None = None,
    ) -> Iterator[list[Any]]: ...

    def describe(self) -> dict[str, Any]: ...


def load_all(loader: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
    """``loader`` on each item; an item whose loading raises becomes :class:`Failed`."""
    out: list[Any] = []
    for item in items:
        try:
            out.append(loader(item))
        except Exception as err:  # any reason a picture cannot be read is that item's failure
            out.append(Failed(f"{type(err).__name__}: {err}"))
    return out


def compute_loaded(model: Any, work: Work, loaded: list[Any]) -> list[Any]:
    """``work.compute`` on the items that loaded; the failures keep their places."""
    good = [x for x in loaded if not isinstance(x, Failed)]
    outputs = iter(work.compute(model, good) if good else [])
    merged = [x if isinstance(x, Failed) else next(outputs, None) for x in loaded]
    if any(x is None for x in merged) or next(outputs, None) is not None:
        raise RuntimeError(
            f"{type(work).__name__}.compute must return one output per loaded item ({len(good)})"
        )
    return merged


def check_cancelled(cancelled: Callable[[], bool] | None) -> None:
    if cancelled is not None and cancelled():
        raise Cancelled("cancelled")


class SerialEngine:
    """Everything in this process, one batch after another: the reference the parallel
    engines are tested against."""

    name = "serial"

    def map(
        self,
        model: Any,
        work: Work,
        batches: Iterable[Sequence[Any]],
        *,
        cancelled: Callable[[], bool] | None = None,
    ) -> Iterator[list[Any]]:
        for items in batches:
            check_cancelled(cancelled)
            yield compute_loaded(model, work, load_all(work.loader, items))

    def describe(self) -> dict[str, Any]:
        return {"engine": self.name}

    def __repr__(self) -> str:
        return "SerialEngine()"
