"""What a feature visualization maximises: a small algebra of objectives (the Lucent manner).

An :class:`Objective` maps what one forward pass produced to one score per image, ``(B,)``,
to be *maximised*. Objectives add, subtract, negate and scale by numbers::

    channel("features.14", 17) - 0.1 * l2()

The forward pass hands each objective a dict of tensors: every layer the objective names
(``(B, C, h, w)`` or ``(B, C)``), ``"output"`` (the network output, ``(B, K)``) and
``IMAGE`` (the ``(B, 3, H, W)`` pixels in ``[0, 1]`` as parameterised, before the
robustness transforms), so regularisers see the picture the user gets.

Batch-aware: an objective may define one image per entry of a list (``channel(layer,
[0, 5, 9])``, ``channels(layer)`` for a whole layer, ``class_logit(["jessie", "james"])``);
its :attr:`~Objective.batch` is then that length, and :func:`convlens.featurevis` optimises
all images together, in chunks that fit a memory budget (:meth:`Objective.select` cuts a
chunk out). Objectives without a list (``l2()``, ``channel(layer, 17)``) apply to any batch.

Regularisers (:func:`l1`, :func:`l2`, :func:`total_variation`, :func:`blur`) return
penalties, positive numbers to be *subtracted*.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from convlens.core.naming import parse_layer

if TYPE_CHECKING:
    from convlens.core.model import Model

__all__ = [
    "IMAGE",
    "OUTPUT",
    "Objective",
    "as_objective",
    "blur",
    "channel",
    "channels",
    "class_logit",
    "class_probability",
    "deepdream",
    "direction",
    "diversity",
    "l1",
    "l2",
    "neuron",
    "total_variation",
]

IMAGE = "@image"
OUTPUT = "output"

Acts = dict[str, torch.Tensor]
ScoreFn = Callable[[Acts], torch.Tensor]


class Objective:
    """A score per image, ``acts -> (B,)``, to maximise.

    ``layers``: the layer names the score reads (``OUTPUT`` for the network output, ``IMAGE``
    for the pixels). ``batch``: how many images the objective defines (``None``: any).
    ``name``: a readable description, also used for labels. ``labels``: one label per image
    when ``batch`` is set. Build objectives with the functions of this module and combine
    them with ``+``, ``-`` and scalar ``*``.
    """

    def __init__(
        self,
        fn: ScoreFn,
        layers: Sequence[str] = (),
        *,
        name: str,
        batch: int | None = None,
        labels: Sequence[str] | None = None,
        bind: Callable[[Model], Objective] | None = None,
        select: Callable[[slice], Objective] | None = None,
    ) -> None:
        self.fn = fn
        self.layers = frozenset(layers)
        self.name = name
        self.batch = batch
        self.labels = list(labels) if labels is not None else None
        self._bind = bind
        self._select = select

    def __call__(self, acts: Acts) -> torch.Tensor:
        return self.fn(acts)

    def __repr__(self) -> str:
        batch = f", batch={self.batch}" if self.batch is not None else ""
        return f"Objective({self.name}{batch})"

    def bind(self, model: Model) -> Objective:
        """This objective with names resolved against ``model`` (class labels, layer widths)."""
        return self._bind(model) if self._bind is not None else self

    def select(self, index: slice) -> Objective:
        """The objective of images ``index`` of the batch (objectives without a list: self)."""
        if self._select is None or self.batch is None:
            return self
        return self._select(index)

    # -- arithmetic ------------------------------------------------------------------------
    def _terms(self) -> list[tuple[float, Objective]]:
        return [(1.0, self)]

    def __add__(self, other: Any) -> Objective:
        if isinstance(other, (int, float)) and not isinstance(other, bool):
            return _Sum([*self._terms(), (float(other), _constant())]) if other else self
        if not isinstance(other, Objective):
            return NotImplemented
        return _Sum([*self._terms(), *other._terms()])

    def __radd__(self, other: Any) -> Objective:
        return self.__add__(other)  # sum() starts at 0

    def __neg__(self) -> Objective:
        return _Sum([(-w, t) for w, t in self._terms()])

    def __sub__(self, other: Any) -> Objective:
        if isinstance(other, Objective):
            return self + (-other)
        if isinstance(other, (int, float)) and not isinstance(other, bool):
            return self + (-float(other))
        return NotImplemented

    def __rsub__(self, other: Any) -> Objective:
        return (-self) + other

    def __mul__(self, other: Any) -> Objective:
        if isinstance(other, bool) or not isinstance(other, (int, float)):
            if isinstance(other, Objective):
                raise TypeError("objectives combine with +, - and scalar *, not with each other")
            return NotImplemented
        return _Sum([(w * float(other), t) for w, t in self._terms()])

    __rmul__ = __mul__

    def __truediv__(self, other: Any) -> Objective:
        if isinstance(other, bool) or not isinstance(other, (int, float)):
            return NotImplemented
        return self * (1.0 / float(other))


def _constant() -> Objective:
    return Objective(lambda acts: torch.ones((), device=_any(acts).device), name="1")


def _any(acts: Acts) -> torch.Tensor:
    return next(iter(acts.values()))


def _fmt(weight: float) -> str:
    return f"{weight:g}"


class _Sum(Objective):
    """A weighted sum of objectives (what ``+``, ``-`` and ``*`` build)."""

    def __init__(self, terms: list[tuple[float, Objective]]) -> None:
        batches = {t.batch for _, t in terms if t.batch is not None}
        if len(batches) > 1:
            raise ValueError(
                f"objectives that define different batches cannot be combined, got batches "
                f"{sorted(batches)} ({', '.join(t.name for _, t in terms if t.batch)})"
            )
        self.terms = terms
        parts = []
        for i, (w, t) in enumerate(terms):
            sign = "-" if w < 0 else ("+" if i else "")
            mag = abs(w)
            parts.append(f"{sign} {'' if mag == 1 else _fmt(mag) + ' * '}{t.name}".strip())
        labelled = [t for _, t in terms if t.labels is not None]
        super().__init__(
            self._score,
            sorted(set().union(*(t.layers for _, t in terms))),
            name=" ".join(parts),
            batch=next(iter(batches)) if batches else None,
            labels=labelled[0].labels if labelled else None,
        )

    def _score(self, acts: Acts) -> torch.Tensor:
        total: torch.Tensor | None = None
        for w, t in self.terms:
            part = w * t(acts)
            total = part if total is None else total + part
        assert total is not None
        return total

    def _terms(self) -> list[tuple[float, Objective]]:
        return list(self.terms)

    def bind(self, model: Model) -> Objective:
        return _Sum([(w, t.bind(model)) for w, t in self.terms])

    def select(self, index: slice) -> Objective:
        if self.batch is None:
            return self
        return _Sum([(w, t.select(index)) for w, t in self.terms])


# -- helpers -------------------------------------------------------------------------------------


def _layer_and_channel(layer: str, channel: Any) -> tuple[str, Any]:
    ref = parse_layer(layer)
    if ref.channel is not None:
        if channel is not None:
            raise ValueError(f"give the channel once: in {layer!r} or as an argument, not both")
        return ref.name, ref.channel
    return ref.name, channel


def _spatial_mean(x: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) -> (B, C); (B, C) stays."""
    return x.flatten(2).mean(-1) if x.dim() > 2 else x


def _channel_list(channel: Any) -> list[int] | None:
    if channel is None or (isinstance(channel, int) and not isinstance(channel, bool)):
        return None
    items = channel.tolist() if isinstance(channel, torch.Tensor) else list(channel)
    if not items or not all(isinstance(c, int) and not isinstance(c, bool) for c in items):
        raise ValueError(f"expected a channel number or a non-empty list of them, got {channel!r}")
    return [int(c) for c in items]


def _check_channels(x: torch.Tensor, layer: str, wanted: Sequence[int]) -> None:
    if x.dim() < 2:
        raise ValueError(f"layer {layer!r} gave {tuple(x.shape)}, not (B, C, ...)")
    bad = [c for c in wanted if not 0 <= c < x.shape[1]]
    if bad:
        raise ValueError(
            f"layer {layer!r} has {x.shape[1]} channels (0..{x.shape[1] - 1}), got {bad}"
        )


def _per_image(
    layer: str, channels: list[int] | int, reduce: Callable[[torch.Tensor], torch.Tensor]
) -> ScoreFn:
    """Score image i by ``reduce`` of channel ``channels[i]`` (or one channel for all)."""

    def score(acts: Acts) -> torch.Tensor:
        x = acts[layer]
        wanted = [channels] if isinstance(channels, int) else channels
        _check_channels(x, layer, wanted)
        if isinstance(channels, int):
            return reduce(x[:, channels])
        if x.shape[0] != len(channels):
            raise ValueError(f"expected a batch of {len(channels)} images, got {x.shape[0]}")
        index = torch.as_tensor(channels, device=x.device)
        return reduce(x[torch.arange(x.shape[0], device=x.device), index])

    return score


def _listed(
    make: Callable[[list[int]], Objective], items: list[int], label: Callable[[int], str]
) -> Objective:
    obj = make(items)
    obj.batch = len(items)
    obj.labels = [label(c) for c in items]
    obj._select = lambda index: _listed(make, items[index], label)
    return obj


# -- layer objectives -----------------------------------------------------------------------------


def channel(layer: str, channel: int | Sequence[int] | None = None) -> Objective:
    """Mean activation of one channel over all positions: ``mean_{y,x} A[b, c, y, x]``.

    ``channel("features.14", 17)`` or ``channel("features.14:17")``; a list of channels
    defines one image per channel (optimised as one batch). Works on (B, C) layers too.
    (Olah et al., 2017, "Feature Visualization", Distill.)
    """
    name, ch = _layer_and_channel(layer, channel)
    if ch is None:
        raise ValueError(f"expected a channel: channel({layer!r}, 17) or '{layer}:17'")
    items = _channel_list(ch)

    def reduce(x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1).mean(1) if x.dim() > 1 else x

    if items is None:
        return Objective(_per_image(name, int(ch), reduce), [name], name=f"{name}:{ch}")
    return _listed(
        lambda cs: Objective(_per_image(name, cs, reduce), [name], name=f"{name}:{_span(cs)}"),
        items,
        lambda c: f"{name}:{c}",
    )


def channels(layer: str, which: Sequence[int] | None = None) -> Objective:
    """One image per channel of ``layer`` (all of them by default): the whole layer as one
    batch. ``which`` picks a channel list; the width is read from the model when bound."""
    if which is not None:
        return channel(layer, list(which))
    name = parse_layer(layer).name

    def bind(model: Model) -> Objective:
        width = _layer_width(model, name)
        return channel(name, list(range(width)))

    def unbound(acts: Acts) -> torch.Tensor:
        raise ValueError("channels(layer) needs a model: call .bind(model) first")

    return Objective(unbound, [name], name=f"{name}:*", bind=bind)


def _layer_width(model: Model, name: str) -> int:
    table = model.layers()
    row = next((r for r in table if r.name == name), None)
    if row is None:
        from convlens.core.naming import get_layer

        get_layer(model.module, name)  # raises with close matches
        raise ValueError(f"layer {name!r} does not appear in a forward pass")
    if row.output_shape is None or len(row.output_shape) < 2:
        raise ValueError(f"layer {name!r} has no channel axis (output {row.output_shape})")
    return int(row.output_shape[1])


def _span(items: Sequence[int]) -> str:
    if len(items) > 2 and list(items) == list(range(items[0], items[0] + len(items))):
        return f"{items[0]}-{items[-1]}"
    return ",".join(map(str, items)) if len(items) <= 4 else f"{items[0]},...,{items[-1]}"


def neuron(
    layer: str,
    channel: int | Sequence[int] | None = None,
    x: int | None = None,
    y: int | None = None,
) -> Objective:
    """One position of a channel: ``A[b, c, y, x]`` (default: the centre ``(h // 2, w // 2)``).
    A list of channels gives one image per channel."""
    name, ch = _layer_and_channel(layer, channel)
    if ch is None:
        raise ValueError(f"expected a channel: neuron({layer!r}, 17) or '{layer}:17'")
    items = _channel_list(ch)

    def reduce(a: torch.Tensor) -> torch.Tensor:
        if a.dim() != 3:
            raise ValueError(f"neuron needs a spatial layer, {name!r} gave (B, {a.shape[1:]})")
        yy = a.shape[1] // 2 if y is None else y
        xx = a.shape[2] // 2 if x is None else x
        return a[:, yy, xx]

    where = f"@{'c' if x is None else x},{'c' if y is None else y}"
    if items is None:
        return Objective(_per_image(name, int(ch), reduce), [name], name=f"{name}:{ch}{where}")
    return _listed(
        lambda cs: Objective(_per_image(name, cs, reduce), [name], name=f"{name}:{_span(cs)}"),
        items,
        lambda c: f"{name}:{c}{where}",
    )


def deepdream(layer: str) -> Objective:
    """The whole layer: ``mean(A ** 2)`` over channels and positions (Mordvintsev et al., 2015,
    "Inceptionism")."""
    name = parse_layer(layer).name
    return Objective(
        lambda acts: acts[name].pow(2).flatten(1).mean(1), [name], name=f"deepdream({name})"
    )


def direction(layer: str, vector: Any, *, cosine: bool = False) -> Objective:
    """Activation along a direction ``v`` of the layer's channel space (a CAV plugs in here):
    ``mean_{y,x} <A[b, :, y, x], v / |v|>``; ``cosine=True`` divides each position by its norm
    (Lucent's direction with cosine similarity). ``vector`` is ``(C,)`` for all images or
    ``(B, C)``, one direction per image."""
    name = parse_layer(layer).name
    v = torch.as_tensor(vector, dtype=torch.float32)
    if v.dim() not in (1, 2) or v.shape[-1] == 0:
        raise ValueError(f"expected a direction (C,) or (B, C), got {tuple(v.shape)}")
    v = v / v.norm(dim=-1, keepdim=True).clamp_min(1e-12)

    def make(vectors: torch.Tensor) -> Objective:
        def score(acts: Acts) -> torch.Tensor:
            a = acts[name]
            if a.shape[1] != vectors.shape[-1]:
                raise ValueError(
                    f"direction has {vectors.shape[-1]} entries, layer {name!r} has "
                    f"{a.shape[1]} channels"
                )
            d = vectors.to(a.device, a.dtype)
            d = d.view(-1, d.shape[-1], *([1] * (a.dim() - 2)))
            dots = (a * d).sum(1)
            if cosine:
                dots = dots / a.norm(dim=1).clamp_min(1e-6)
            return dots.flatten(1).mean(1) if dots.dim() > 1 else dots

        obj = Objective(score, [name], name=f"direction({name})")
        if vectors.dim() == 2:
            obj.batch = vectors.shape[0]
            obj.labels = [f"{name}·v{i}" for i in range(vectors.shape[0])]
            obj._select = lambda index: make(vectors[index])
        return obj

    return make(v)


def diversity(layer: str) -> Objective:
    """Pushes the images of a batch apart: image ``b`` scores ``-(1 / B) sum_{j != b}
    cos(G_b, G_j)``, ``G`` the Gram matrix of the layer's channels (Lucent's diversity,
    after Olah et al., 2017). Zero for a batch of one; couples the images of a chunk."""
    name = parse_layer(layer).name

    def score(acts: Acts) -> torch.Tensor:
        a = acts[name]
        b, c = a.shape[:2]
        flat = a.reshape(b, c, -1)
        gram = torch.bmm(flat, flat.transpose(1, 2)).flatten(1)
        gram = F.normalize(gram, dim=1)
        sim = gram @ gram.t()
        return -(sim.sum(1) - sim.diagonal()) / b

    return Objective(score, [name], name=f"diversity({name})")


# -- class objectives ------------------------------------------------------------------------------


def _class_objective(target: Any, probability: bool) -> Objective:
    kind = "p" if probability else "logit"

    def make(
        indices: list[int],
        names: list[str],
        postprocess: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> Objective:
        def score(acts: Acts) -> torch.Tensor:
            out = acts[OUTPUT]
            if out.dim() != 2:
                raise ValueError(f"class objectives need (B, K) outputs, got {tuple(out.shape)}")
            values = out
            if probability:  # the model's own (a sigmoid for multi-label), else a softmax
                values = postprocess(out) if postprocess is not None else out.softmax(1)
            index = torch.as_tensor(indices, device=out.device)
            if len(indices) == 1:
                return values[:, index[0]]
            if out.shape[0] != len(indices):
                raise ValueError(f"expected a batch of {len(indices)} images, got {out.shape[0]}")
            return values[torch.arange(out.shape[0], device=out.device), index]

        obj = Objective(score, [OUTPUT], name=f"{kind}({','.join(names)})", labels=names)
        if isinstance(target, (list, tuple)):
            obj.batch = len(indices)
            obj.labels = list(names)
            obj._select = lambda index: make(indices[index], names[index], postprocess)
        return obj

    def bind(model: Model) -> Objective:
        items = list(target) if isinstance(target, (list, tuple)) else [target]
        indices = [model.class_index(t) for t in items]
        return make(indices, [model.label(i) for i in indices], model.postprocess)

    items = list(target) if isinstance(target, (list, tuple)) else [target]
    if not items:
        raise ValueError("expected a class index or name, or a non-empty list of them")
    if all(isinstance(t, int) and not isinstance(t, bool) for t in items):
        obj = make([int(t) for t in items], [str(t) for t in items])
        obj._bind = bind
        return obj

    def unbound(acts: Acts) -> torch.Tensor:
        raise ValueError("a class given by name needs a model: call .bind(model) first")

    obj = Objective(
        unbound,
        [OUTPUT],
        name=f"{kind}({','.join(map(str, items))})",
        batch=len(items) if isinstance(target, (list, tuple)) else None,
        bind=bind,
    )
    return obj


def class_logit(target: int | str | Sequence[int | str]) -> Objective:
    """The raw score (logit) of a class, by index or label; a list gives one image per class."""
    return _class_objective(target, probability=False)


def class_probability(target: int | str | Sequence[int | str]) -> Objective:
    """The probability of a class (a list: one image per class) as the model computes it (its
    ``postprocess``: a softmax, or a sigmoid per label for a multi-label model; a softmax
    until bound to a model). Saturates quickly; the logit is usually the better objective."""
    return _class_objective(target, probability=True)


# -- regularisers (penalties: subtract them) ----------------------------------------------------


def l1(constant: float = 0.5) -> Objective:
    """Penalty ``mean |x - constant|`` over the pixels of each image (values in [0, 1])."""
    return Objective(
        lambda acts: (acts[IMAGE] - constant).abs().flatten(1).mean(1), [IMAGE], name="l1"
    )


def l2(constant: float = 0.5) -> Objective:
    """Penalty ``sqrt(mean (x - constant)^2)``, the RMS distance of each image from grey
    (pixels in [0, 1], so at most 0.5; independent of the image size)."""
    return Objective(
        lambda acts: ((acts[IMAGE] - constant).pow(2).flatten(1).mean(1) + 1e-12).sqrt(),
        [IMAGE],
        name="l2",
    )


def total_variation() -> Objective:
    """Penalty: mean absolute difference of neighbouring pixels (anisotropic TV), per image."""

    def score(acts: Acts) -> torch.Tensor:
        x = acts[IMAGE]
        dy = (x[..., 1:, :] - x[..., :-1, :]).abs().flatten(1).mean(1)
        dx = (x[..., :, 1:] - x[..., :, :-1]).abs().flatten(1).mean(1)
        return dx + dy

    return Objective(score, [IMAGE], name="tv")


def blur(sigma: float = 1.0) -> Objective:
    """Penalty ``mean (x - blur(x))^2`` with the blurred image held fixed: each step pulls the
    image toward a Gaussian-blurred copy of itself (Lucent's blur_input_each_step)."""
    radius = max(1, math.ceil(2 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel1d = torch.exp(-(t**2) / (2 * sigma**2))
    kernel1d = kernel1d / kernel1d.sum()

    def score(acts: Acts) -> torch.Tensor:
        x = acts[IMAGE]
        with torch.no_grad():
            k = kernel1d.to(x.device, x.dtype)
            c = x.shape[1]
            padded = F.pad(x, (radius, radius, radius, radius), mode="replicate")
            smooth = F.conv2d(padded, k.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
            smooth = F.conv2d(smooth, k.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)
        return (x - smooth).pow(2).flatten(1).mean(1)

    return Objective(score, [IMAGE], name="blur")


# -- from what a user typed -------------------------------------------------------------------


def as_objective(spec: Objective | str) -> Objective:
    """An objective from an :class:`Objective` or a name: ``"features.14:17"`` (one channel),
    ``"features.14"`` (every channel of the layer, one image each)."""
    if isinstance(spec, Objective):
        return spec
    if isinstance(spec, str):
        ref = parse_layer(spec)
        return channel(ref.name, ref.channel) if ref.channel is not None else channels(ref.name)
    raise ValueError(
        f"expected an objective (convlens.objectives.channel(...), ...) or a layer name such as "
        f"'features.14:17', got {type(spec).__name__}"
    )
