"""One pass per picture: layer activations (and, for target pictures, the gradients of the
class logit, at the picture or integrated along a path to it) read from every requested layer,
with an optional on-disk cache keyed by content."""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from convlens.core.hooks import StopForward, call_fast, first_tensor, forward_hooks, recorder
from convlens.core.model import Model
from convlens.core.render import write_atomic
from convlens.techniques.concepts.local import picture_stats

_CACHE_VERSION = "convlens-tcav-activations-2"


def fingerprint(model: Model) -> str:
    """A content key for a model: its class, every parameter and buffer (names, shapes, dtypes,
    bytes) and its preprocessing. Two models with equal weights share it."""
    h = hashlib.blake2b(digest_size=16)
    module = model.module
    h.update(f"{type(module).__module__}.{type(module).__qualname__}".encode())
    h.update(repr(getattr(model, "preprocess", None)).encode())
    for name, tensor in module.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


class _Cache:
    """Per-picture activations on disk (``cache_dir/<key>.pt``, ``torch.load(weights_only=True)``)
    keyed by model, layers, pass kind and the picture's network input."""

    def __init__(
        self, folder: str | os.PathLike[str] | None, model_key: str, layers: Sequence[str]
    ):
        self.folder = None if folder is None else Path(os.fspath(folder)).expanduser()
        self.prefix = f"{_CACHE_VERSION}|{model_key}|{','.join(layers)}".encode()
        self.hits = 0
        self.misses = 0

    def counts(self) -> dict[str, int]:
        return {"hits": self.hits, "misses": self.misses}

    def keys(self, inputs: torch.Tensor, kind: str) -> list[str] | None:
        if self.folder is None:
            return None
        out = []
        for x in inputs.detach().cpu().contiguous():
            h = hashlib.blake2b(self.prefix + kind.encode(), digest_size=20)
            h.update(f"{x.dtype}:{tuple(x.shape)}".encode())
            h.update(x.numpy().tobytes())
            out.append(h.hexdigest())
        return out

    def get(self, key: str) -> dict[str, torch.Tensor] | None:
        assert self.folder is not None
        path = self.folder / f"{key}.pt"
        if not path.is_file():
            self.misses += 1
            return None
        try:
            found = torch.load(path, weights_only=True, map_location="cpu")
        except Exception:  # a damaged entry is recomputed (and rewritten)
            self.misses += 1
            return None
        self.hits += 1
        return found

    def put(self, key: str, value: dict[str, torch.Tensor]) -> None:
        assert self.folder is not None
        self.folder.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        torch.save({k: v.clone() for k, v in value.items()}, buffer)  # not the whole batch
        write_atomic(self.folder / f"{key}.pt", buffer.getvalue())


def _input_batches(
    model: Model, images: list[Any] | torch.Tensor, batch_size: int
) -> Iterator[torch.Tensor]:
    if isinstance(images, torch.Tensor):
        for start in range(0, len(images), batch_size):
            yield model.prepare(images[start : start + batch_size]).inputs
        return
    for start in range(0, len(images), batch_size):
        yield model.prepare(list(images[start : start + batch_size])).inputs


def _run_layers(
    model: Model,
    inputs: torch.Tensor,
    layers: Sequence[str],
    target: int | None,
) -> dict[str, torch.Tensor]:
    """The outputs of ``layers`` as they come (``target`` None: no gradient, the pass stops
    after the last layer), or, with a target class, ``"<layer>:grad"`` the gradients of its
    logit with respect to them and ``"<layer>:act"`` the outputs themselves."""
    module = model.module
    acts: dict[str, torch.Tensor] = {}
    keep = recorder(acts, layers if target is None else None)  # no gradient: stop early

    def run(x: torch.Tensor) -> torch.Tensor | None:
        acts.clear()
        with forward_hooks(module, layers, keep):
            if target is None:
                with torch.inference_mode(), contextlib.suppress(StopForward):
                    module(x)
                return None
            x = x.detach().requires_grad_(True)  # a graph from the layers to the logit
            return first_tensor(module(x))

    out = call_fast(module, inputs, run)
    missing = [n for n in layers if n not in acts]
    if missing:
        raise ValueError(f"layer(s) {missing} did not run in the forward pass")
    if target is None:
        return {n: acts[n].float().cpu() for n in layers}
    if out is None or out.dim() != 2:
        shape = None if out is None else tuple(out.shape)
        raise ValueError(f"expected the network to return (N, classes) logits, got {shape}")
    if not 0 <= target < out.shape[1]:
        raise ValueError(f"target class {target} is outside the {out.shape[1]} outputs")
    grads = torch.autograd.grad(out[:, target].sum(), [acts[n] for n in layers])
    found = {f"{n}:grad": g.float().cpu() for n, g in zip(layers, grads, strict=True)}
    found.update({f"{n}:act": acts[n].detach().float().cpu() for n in layers})
    return found


PATH_VALUES = 1 << 24  # layer values per batch of path points (memory for the backward pass)


def _integrated(
    model: Model, inputs: torch.Tensor, layers: Sequence[str], target: int, steps: int
) -> dict[str, torch.Tensor]:
    """What :func:`_run_layers` gives with a target, but ``"<layer>:grad"`` the gradient of the
    class logit *integrated* along the straight path from a zero map to the picture's output
    of that layer (the rest of the network as it is), by the midpoint rule in ``steps`` points:
    ``IG(a) = (1 / K) sum_k grad f(alpha_k a)``, ``alpha_k = (k + 1/2) / K`` (integrated
    gradients, Sundararajan et al. 2017, taken at the layer). ``IG(a) . a`` approximates
    ``f(a) - f(0)`` (completeness), and ``IG(a) . d`` at a position is the mean over the path of
    the derivative along ``d`` there.

    One pass serves every layer: each layer's output gets its ``K`` path points appended along
    the batch (the pictures' own rows stay first), so the network before the first layer runs
    once and only what follows a layer runs its points (:func:`_stacked`). A network that
    cannot take the wider batch (a skip connection from before a layer) is run layer by layer
    on its input repeated ``K`` times instead (:func:`_one_by_one`)."""
    module = model.module

    def run(x: torch.Tensor) -> dict[str, torch.Tensor]:
        try:
            return _stacked(module, x, layers, target, steps)
        except _Unstackable:
            return _one_by_one(module, x, layers, target, steps)

    return call_fast(module, inputs, run)


class _Unstackable(Exception):
    """The network did not give one logit row per picture and path point."""


def _alphas(start: int, stop: int, steps: int) -> torch.Tensor:
    return (torch.arange(start, stop, dtype=torch.float64) + 0.5) / steps


def _points(acts: torch.Tensor, alphas: torch.Tensor) -> torch.Tensor:
    """(K T, ...) the path points ``alpha acts`` for each alpha (K,), a leaf that needs grad, in
    the memory layout of ``acts`` (channels-last stays channels-last: oneDNN's fast kernels)."""
    scale = alphas.to(acts.dtype).view(len(alphas), *[1] * acts.dim())
    points = (scale * acts.unsqueeze(0)).flatten(0, 1)
    if acts.dim() == 4 and acts.is_contiguous(memory_format=torch.channels_last):
        points = points.contiguous(memory_format=torch.channels_last)
    return points.requires_grad_(True)


def _logits(out: Any, rows: int, target: int) -> torch.Tensor:
    """The target's logits from a network output that must have ``rows`` rows."""
    found = first_tensor(out)
    if found is None or found.dim() != 2 or len(found) != rows:
        raise _Unstackable
    if not 0 <= target < found.shape[1]:
        raise ValueError(f"target class {target} is outside the {found.shape[1]} outputs")
    return found[:, target]


def _stacked(
    module: torch.nn.Module, x: torch.Tensor, layers: Sequence[str], target: int, steps: int
) -> dict[str, torch.Tensor]:
    """:func:`_integrated` in passes that append every layer's path points to its output (as
    many points as :data:`PATH_VALUES` allows per layer and pass; usually all in one pass)."""
    T = len(x)
    acts: dict[str, torch.Tensor] = {}
    totals: dict[str, torch.Tensor] = {}
    done = dict.fromkeys(layers, 0)
    leaves: dict[str, tuple[torch.Tensor, int]] = {}

    def insert(name: str, output: Any) -> Any:
        _check_tensor(name, output)
        if name in leaves:  # a module called again in the same pass: left alone
            return None
        own = output[:T].detach()
        acts.setdefault(name, own)
        per = max(1, PATH_VALUES // max(1, own.numel()))
        stop = min(steps, done[name] + per)
        if stop <= done[name]:
            return None
        leaf = _points(own, _alphas(done[name], stop, steps))
        leaves[name] = (leaf, stop)
        later = [output[T:]] if len(output) > T else []  # (an empty part would drop the layout)
        return torch.cat([output[:T], leaf, *later])  # a copy: in-place ops are safe on it

    while min(done.values()) < steps:
        leaves.clear()
        try:
            with torch.enable_grad(), forward_hooks(module, layers, insert):
                out = module(x)
        except RuntimeError as error:
            raise _Unstackable from error
        missing = [n for n in layers if n not in acts]
        if missing:
            raise ValueError(f"layer(s) {missing} did not run in the forward pass")
        rows = T + sum(len(leaf) for leaf, _ in leaves.values())
        names = list(leaves)
        grads = torch.autograd.grad(_logits(out, rows, target).sum(), [leaves[n][0] for n in names])
        for name, grad in zip(names, grads, strict=True):
            summed = grad.view(-1, T, *grad.shape[1:]).sum(0)
            totals[name] = totals[name] + summed if name in totals else summed
            done[name] = leaves[name][1]
    return {
        key: value
        for name in layers
        for key, value in (
            (f"{name}:grad", (totals[name] / steps).float().cpu()),
            (f"{name}:act", acts[name].float().cpu()),
        )
    }


def _check_tensor(name: str, output: Any) -> None:
    if not isinstance(output, torch.Tensor):
        raise ValueError(
            f"layer {name!r} returns {type(output).__name__}, not a tensor, so the local test's "
            "path cannot replace it: use steps=0"
        )


def _swap(leaf: torch.Tensor) -> Callable[[str, Any], torch.Tensor]:
    """A hook that replaces a layer's output by (a copy of, so in-place ops are safe) ``leaf``."""

    def swap(name: str, output: Any) -> torch.Tensor:
        _check_tensor(name, output)
        return leaf.clone()

    return swap


def _one_by_one(
    module: torch.nn.Module, x: torch.Tensor, layers: Sequence[str], target: int, steps: int
) -> dict[str, torch.Tensor]:
    """:func:`_integrated` for a network that cannot take a wider batch at a layer: each layer
    in turn, its output replaced by path points, the input repeated once per point."""
    acts: dict[str, torch.Tensor] = {}
    keep = recorder(acts, layers)

    def copy(name: str, output: Any) -> None:  # as it comes out, before any in-place op after it
        _check_tensor(name, output)
        keep(name, output.detach().clone() if name not in acts else output)

    with torch.no_grad(), forward_hooks(module, layers, copy), contextlib.suppress(StopForward):
        module(x)
    missing = [n for n in layers if n not in acts]
    if missing:
        raise ValueError(f"layer(s) {missing} did not run in the forward pass")
    found: dict[str, torch.Tensor] = {}
    for name in layers:
        own = acts[name]
        per = max(1, PATH_VALUES // max(1, own.numel()))
        total = torch.zeros_like(own)
        for start in range(0, steps, per):
            leaf = _points(own, _alphas(start, min(steps, start + per), steps))
            K = len(leaf) // len(own)
            with torch.enable_grad(), forward_hooks(module, [name], _swap(leaf)):
                out = module(x.repeat(K, *[1] * (x.dim() - 1)))
            try:
                logits = _logits(out, len(leaf), target)
            except _Unstackable:
                got = first_tensor(out)
                shape = None if got is None else tuple(got.shape)
                raise ValueError(
                    f"expected the network to return (N, classes) logits, got {shape}"
                ) from None
            (grad,) = torch.autograd.grad(logits.sum(), leaf)
            total += grad.view(K, len(own), *grad.shape[1:]).sum(0)
        found[f"{name}:grad"] = (total / steps).float().cpu()
        found[f"{name}:act"] = own.float().cpu()
    return found


def _flat(name: str, x: torch.Tensor) -> dict[str, torch.Tensor]:
    return {name: x.flatten(1)}


def _stats(name: str, x: torch.Tensor) -> dict[str, torch.Tensor]:
    return {f"{name}:{key}": value for key, value in picture_stats(x).items()}


REDUCTIONS: dict[str, Callable[[str, torch.Tensor], dict[str, torch.Tensor]]] = {
    "flat": _flat,  # (B, F) flattened activations: CAVs on whole maps (tests "sets", "paper")
    "stats": _stats,  # channel means and a grid of positions: the local test
}


def _reduce(
    fresh: dict[str, torch.Tensor], layers: Sequence[str], target: int | None, reduce: str
) -> dict[str, torch.Tensor]:
    if target is None:
        out: dict[str, torch.Tensor] = {}
        for n in layers:
            out.update(REDUCTIONS[reduce](n, fresh[n]))
        return out
    out = {n: fresh[f"{n}:grad"].flatten(1) for n in layers}  # what the set tests read
    out.update({f"{n}:act": fresh[f"{n}:act"].flatten(1) for n in layers})
    return out


def _collect(
    model: Model,
    images: list[Any] | torch.Tensor,
    layers: Sequence[str],
    target: int | None,
    batch_size: int,
    cache: _Cache,
    tick: Callable[[int], None],
    reduce: str = "flat",
    steps: int = 0,
) -> dict[str, torch.Tensor]:
    """Every picture's layer data, stacked: without ``target``, ``reduce`` (see
    :data:`REDUCTIONS`) of each layer's activations; with one, ``<layer>`` the flattened
    gradients of its logit (with ``steps`` > 0 integrated along the path from a zero map:
    :func:`_integrated`) and ``<layer>:act`` the flattened activations."""
    if target is None:
        kind = f"activations:{reduce}"
    else:
        kind = f"gradients:{target}" if steps == 0 else f"integrated:{target}:{steps}"
    parts: dict[str, list[torch.Tensor]] = {}
    for inputs in _input_batches(model, images, batch_size):
        keys = cache.keys(inputs, kind)
        found: list[dict[str, torch.Tensor] | None] = (
            [cache.get(k) for k in keys] if keys is not None else [None] * len(inputs)
        )
        todo = [i for i, f in enumerate(found) if f is None]
        if todo:
            if target is not None and steps > 0:
                raw = _integrated(model, inputs[todo], layers, target, steps)
            else:
                raw = _run_layers(model, inputs[todo], layers, target)
            fresh = _reduce(raw, layers, target, reduce)
            for j, i in enumerate(todo):
                entry = {n: v[j] for n, v in fresh.items()}
                found[i] = entry
                if keys is not None:
                    cache.put(keys[i], entry)
        for n in found[0]:  # type: ignore[union-attr]
            parts.setdefault(n, []).append(torch.stack([f[n] for f in found]))  # type: ignore[index]
        tick(len(inputs))
    return {n: torch.cat(v) for n, v in parts.items()}


def _layer_shapes(
    model: Model, layers: Sequence[str], example: torch.Tensor
) -> dict[str, tuple[int, ...]]:
    """Each layer's output shape (C, h, w) for one picture (a pass that stops at the last)."""
    kept: dict[str, torch.Tensor] = {}
    with (
        forward_hooks(model.module, layers, recorder(kept, layers)),
        torch.inference_mode(),
        contextlib.suppress(StopForward),
    ):
        model.module(example[:1])
    return {name: tuple(t.shape[1:]) for name, t in kept.items()}
