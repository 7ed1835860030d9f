"""Incremental inference: run a network on many copies of a picture that each differ from it
only inside one small box, recomputing only what each box changes.

Krypton (Nakandala, Kumar & Papakonstantinou, SIGMOD 2019, "Incremental and Approximate
Inference for Faster Occlusion-based Deep CNN Explanations", doi:10.1145/3299869.3319874).
An occluding window changes a small box of the input; a convolution or pooling layer turns a
changed box of its input into a (slightly larger) changed box of its output, its projective
field; an element-wise layer keeps the box. So the network runs once on the clean picture,
every node's output is kept, and for a batch of windows each node computes only its changed
box: the input region that box needs is gathered from the stored clean output, with the
changed values of the previous box pasted in, and the operation runs on that region without
padding (the clean output was padded once as the operation pads, so borders are exact).
Per node only the changed box of each window is kept, one tensor for the batch: boxes have one
size across a batch (near a border a box is shifted inside the map, not clipped).

Where an operation mixes all positions (global or adaptive pooling, flatten + linear,
squeeze-and-excitation, attention) or is not known here, the boxes are pasted into full
copies of the clean output for the batch and the rest of the network runs in full from there.
A box that grows to cover its whole map becomes a full tensor too. :class:`Incremental` raises
:class:`NotIncremental` where a network cannot run this way (``torch.fx`` cannot trace it, or
its input goes straight into an operation that mixes all positions); callers fall back to plain
forward passes.

Supported in box form: ``nn.Conv2d`` (any stride, dilation, groups including depthwise, zero
padding including ``"same"``), ``nn.MaxPool2d`` / ``nn.AvgPool2d`` (padding, ``ceil_mode``,
``count_include_pad``, ``divisor_override``), eval-mode ``nn.BatchNorm2d``, dropout in eval mode,
element-wise activations (modules, functions and tensor methods: ReLU, ReLU6 / hardtanh, SiLU,
GELU, sigmoid, ...), add / subtract / multiply / divide of two changed tensors or of a changed
tensor and a per-channel constant, and concatenation along channels. In-place operations run
out of place (refused when another node reads the overwritten tensor afterwards).

Approximation (Krypton's projective-field threshold): ``cap=tau`` stops a box from growing past
``ceil(tau * side)`` of its map's side; the box is cut around its centre and the clean values
are used outside it, so boxes never reach the mixing layers at full size. ``cap=None`` (the
default) is exact. :func:`drill_down` is the other approximate mode (a coarse grid of windows,
then the fine grid only where the coarse result is large).

Where this does not apply: RISE and D-RISE multiply the whole picture by a smooth random mask,
and Score-CAM by an upsampled activation map, so every pixel of every copy changes and the
changed box is the whole picture; incremental inference saves nothing there.
"""

from __future__ import annotations

import bisect
import math
import operator
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

__all__ = ["Box", "Incremental", "NotIncremental", "drill_down", "occluded_patches"]

POINTWISE_MODULES: tuple[type[nn.Module], ...] = (
    nn.ReLU,
    nn.ReLU6,
    nn.Hardtanh,
    nn.LeakyReLU,
    nn.PReLU,
    nn.ELU,
    nn.SELU,
    nn.CELU,
    nn.GELU,
    nn.SiLU,
    nn.Mish,
    nn.Sigmoid,
    nn.Tanh,
    nn.Hardsigmoid,
    nn.Hardswish,
    nn.Softplus,
    nn.Identity,
    nn.Dropout,
    nn.Dropout2d,
    nn.AlphaDropout,
    nn.BatchNorm2d,
)
POINTWISE_FUNCTIONS: set[Any] = {
    torch.relu,
    F.relu,
    F.relu6,
    F.hardtanh,
    F.leaky_relu,
    F.elu,
    F.gelu,
    F.silu,
    F.mish,
    F.hardswish,
    F.hardsigmoid,
    F.softplus,
    torch.sigmoid,
    F.sigmoid,
    torch.tanh,
    F.tanh,
    torch.clamp,
    torch.abs,
    torch.neg,
    torch.exp,
    operator.neg,
}
POINTWISE_METHODS = {
    "relu",
    "sigmoid",
    "tanh",
    "clamp",
    "clamp_min",
    "clamp_max",
    "abs",
    "neg",
    "exp",
    "detach",
    "contiguous",
    "clone",
    "float",
}
BINARY_FUNCTIONS: set[Any] = {
    operator.add,
    operator.sub,
    operator.mul,
    operator.truediv,
    torch.add,
    torch.sub,
    torch.mul,
    torch.div,
    torch.maximum,
    torch.minimum,
}
BINARY_METHODS = {"add", "sub", "mul", "div", "maximum", "minimum"}
CONCATENATIONS: set[Any] = {torch.cat, torch.concat}
IN_PLACE_FUNCTIONS: dict[Any, Any] = {
    operator.iadd: operator.add,
    operator.isub: operator.sub,
    operator.imul: operator.mul,
    operator.itruediv: operator.truediv,
    torch.relu_: torch.relu,
    F.relu_: F.relu,
}
SHAPE_ATTRIBUTES = {"shape", "ndim", "dtype"}


class NotIncremental(Exception):
    """The network cannot run incrementally; the message says why (callers fall back)."""


@dataclass
class Box:
    """The changed part of one node's output, for a batch of B windows.

    ``values`` (B, C, h, w): the output inside each window's box, one size for the batch;
    ``starts`` (B, 2) long: each box's top-left corner (row, column) in the node's full
    (N, C, H, W) output; ``images`` (B,) long: which of the N clean pictures each window changes.
    """

    values: torch.Tensor
    starts: torch.Tensor
    images: torch.Tensor


@dataclass(frozen=True)
class _Window:
    """How a sliding-window operation maps input rows/columns to output ones, per axis
    (height, width): output ``o`` reads padded input ``[o * stride, o * stride + reach]``."""

    kind: str  # "conv", "max" or "avg"
    kernel: tuple[int, int]
    stride: tuple[int, int]
    dilation: tuple[int, int]
    before: tuple[int, int]  # padding above / left of the input
    after: tuple[int, int]  # padding below / right so the last output's window fits
    out: tuple[int, int]  # the output's (H, W)
    divisor: torch.Tensor | None = None  # avg pooling: (H_out, W_out) divisor of each output

    def reach(self, axis: int) -> int:
        return self.dilation[axis] * (self.kernel[axis] - 1)


class Incremental:
    """A network traced with ``torch.fx`` and run once on clean pictures, then run on copies
    that each differ from one clean picture inside one box (see the module docstring).

    Parameters
    ----------
    module:
        The network, in eval mode (its forward is traced once: its Python code runs with
        ``torch.fx`` proxies instead of tensors).
    inputs:
        (N, C, H, W) the clean network inputs.
    cap:
        ``None`` (exact) or Krypton's projective-field threshold tau in (0, 1]: no changed box
        grows past ``ceil(tau * side)`` of its map (an approximation).

    ``clean_output`` is the traced network's output on ``inputs``; ``full_from`` names the
    nodes where changed boxes are pasted into full maps. Raises :class:`NotIncremental`.
    """

    def __init__(self, module: nn.Module, inputs: torch.Tensor, *, cap: float | None = None):
        if inputs.dim() != 4:
            raise ValueError(f"expected inputs (N, C, H, W), got {tuple(inputs.shape)}")
        if cap is not None and not 0 < cap <= 1:
            raise ValueError(f"expected cap in (0, 1] or None, got {cap!r}")
        self.cap = cap
        try:
            self._graph = fx.symbolic_trace(module)
        except Exception as error:  # fx raises many kinds on code it cannot follow
            first = str(error).strip().splitlines()[0] if str(error).strip() else ""
            raise NotIncremental(
                f"torch.fx cannot trace {type(module).__name__}: {type(error).__name__}: {first}"
            ) from None
        self._modules = dict(self._graph.named_modules())
        self._nodes = list(self._graph.graph.nodes)
        inputs_nodes = [n for n in self._nodes if n.op == "placeholder"]
        if len(inputs_nodes) != 1:
            raise NotIncremental(f"expected a network of one input, got {len(inputs_nodes)}")
        self._input = inputs_nodes[0]
        self._ops = {n: self._callable(n) for n in self._nodes if n.op.startswith("call_")}
        self._in_place = [m for m in self._modules.values() if getattr(m, "inplace", None) is True]
        self._clean = self._run_clean(inputs)
        self.clean_output = self._clean[self._nodes[-1]]
        self._plan()
        self._sources: dict[tuple[fx.Node, tuple[int, ...], float], torch.Tensor] = {}

    # -- set-up ------------------------------------------------------------------------------

    def _callable(self, node: fx.Node) -> Callable[[tuple, dict], Any]:
        """The node's operation as ``fn(args, kwargs)``, in-place forms replaced by their
        out-of-place twins (refused when another node reads the overwritten tensor later)."""
        kwargs_fix = {"inplace": False} if node.kwargs.get("inplace") is True else {}
        target, in_place = node.target, bool(kwargs_fix)
        if node.op == "call_module":
            module = self._modules[str(target)]
            in_place = getattr(module, "inplace", None) is True
            op: Callable[[tuple, dict], Any] = lambda a, k: module(*a, **k)  # noqa: E731
        elif node.op == "call_function":
            in_place = in_place or target in IN_PLACE_FUNCTIONS
            fn = IN_PLACE_FUNCTIONS.get(target, target)
            op = lambda a, k: fn(*a, **{**k, **kwargs_fix})  # noqa: E731
        else:
            name = str(target)
            if name.endswith("_") and not name.startswith("_") and hasattr(torch.Tensor, name[:-1]):
                name, in_place = name[:-1], True
            op = lambda a, k: getattr(a[0], name)(*a[1:], **{**k, **kwargs_fix})  # noqa: E731
        if in_place and node.args and isinstance(node.args[0], fx.Node):
            overwritten = node.args[0]
            later = [u for u in overwritten.users if u is not node and _after(u, node)]
            if later:
                raise NotIncremental(
                    f"{node.name} overwrites {overwritten.name}, which {later[0].name} reads later"
                )
        return op

    def _run_clean(self, inputs: torch.Tensor) -> dict[fx.Node, Any]:
        """Every node's output on the clean inputs (the traced graph run once, kept)."""
        values: dict[fx.Node, Any] = {}
        with torch.inference_mode(), self._out_of_place():
            for node in self._nodes:
                if node.op == "placeholder":
                    values[node] = inputs
                elif node.op == "get_attr":
                    values[node] = operator.attrgetter(str(node.target))(self._graph)
                elif node.op == "output":
                    values[node] = fx.node.map_arg(node.args[0], values.__getitem__)
                else:
                    args, kwargs = fx.node.map_arg((node.args, node.kwargs), values.__getitem__)
                    values[node] = self._ops[node](args, kwargs)
        return values

    def _plan(self) -> None:
        """Which nodes a window changes, how each runs in box form, when states can go."""
        changed = {self._input}
        for node in self._nodes:
            if any(n in changed for n in node.all_input_nodes):
                changed.add(node)
        used = {n for node in self._nodes for n in node.all_input_nodes}
        self._order = [
            n
            for n in self._nodes
            if n in changed and (n in used or n.op == "output" or n.op == "placeholder")
        ]
        self._kinds = {n: self._kind(n, changed) for n in self._order}
        self._windows = {n: w for n in self._order if (w := self._window_of(n)) is not None}
        self._kinds.update({n: "window" for n in self._windows if self._kinds[n] == "window?"})
        self._kinds.update({n: "full" for n, k in self._kinds.items() if k == "window?"})
        boxed = {"input", "pointwise", "union", "window"}
        self.full_from = [
            n.name
            for n in self._order
            if self._kinds[n] == "full"
            and any(self._kinds.get(i) in boxed for i in n.all_input_nodes)
        ]
        first_users = [self._kinds[u] for u in self._input.users if u in self._kinds]
        if first_users and all(kind == "full" for kind in first_users):
            names = ", ".join(u.name for u in self._input.users)
            raise NotIncremental(f"the input goes straight into {names}, which mixes positions")
        index = {n: i for i, n in enumerate(self._order)}
        self._free_after: list[list[fx.Node]] = [[] for _ in self._order]
        for node in self._order:
            last = max((index[u] for u in node.users if u in index), default=index[node])
            self._free_after[last].append(node)

    def _kind(self, node: fx.Node, changed: set[fx.Node]) -> str:
        """``input``, ``output``, ``pointwise``, ``union``, ``window?``, ``shape`` or ``full``."""
        if node.op in ("placeholder", "output"):
            return "input" if node.op == "placeholder" else "output"
        target = node.target
        moving = [n for n in node.all_input_nodes if n in changed]
        constants = [self._clean[n] for n in node.all_input_nodes if n not in changed]
        if not all(_spatial(self._clean[n]) for n in moving):
            return "shape" if self._is_shape(node) else "full"
        if node.op == "call_module":
            module = self._modules[str(target)]
            if type(module) in (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d):
                return "window?"
            if isinstance(module, POINTWISE_MODULES) and _pointwise_module(module):
                return "pointwise"
            return "full"
        if self._is_shape(node):
            return "shape"
        if not all(_broadcasts(c) for c in constants):
            return "full"
        if node.op == "call_function":
            target = IN_PLACE_FUNCTIONS.get(target, target)
            if target in POINTWISE_FUNCTIONS or (
                target is F.dropout and node.kwargs.get("training", _arg(node, 2)) is False
            ):
                return "pointwise" if len(moving) == 1 else "full"
            if target in BINARY_FUNCTIONS:
                return self._binary(node, moving)
            if target in CONCATENATIONS and node.kwargs.get("dim", _arg(node, 1, 0)) in (1, -3):
                tensors = node.args[0]
                if isinstance(tensors, (list, tuple)) and all(t in changed for t in tensors):
                    return "union" if self._same_map(node, moving) else "full"
            return "full"
        name = str(target).removesuffix("_")
        if name in POINTWISE_METHODS and len(moving) == 1:
            return "pointwise"
        if name in BINARY_METHODS:
            return self._binary(node, moving)
        return "full"

    def _binary(self, node: fx.Node, moving: list[fx.Node]) -> str:
        """One changed operand and a per-channel constant: element-wise; two: a union box."""
        if len(moving) == 1:
            return "pointwise"
        return "union" if self._same_map(node, moving) else "full"

    def _is_shape(self, node: fx.Node) -> bool:
        if node.op == "call_method":
            return node.target in ("size", "dim")
        return node.target is getattr and len(node.args) == 2 and node.args[1] in SHAPE_ATTRIBUTES

    def _same_map(self, node: fx.Node, moving: list[fx.Node]) -> bool:
        """Every changed operand is an (N, C, H, W) map of the output's H x W."""
        out = self._clean[node]
        return _spatial(out) and all(self._clean[n].shape[-2:] == out.shape[-2:] for n in moving)

    def _window_of(self, node: fx.Node) -> _Window | None:
        """The sliding-window geometry of a conv / pooling module node, or None (run in full)."""
        if node.op != "call_module" or len(node.args) != 1 or node.kwargs:
            return None
        module = self._modules[str(node.target)]
        if type(module) not in (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d):
            return None
        source, out = self._clean[node.args[0]], self._clean[node]  # type: ignore[index]
        if not (_spatial(source) and _spatial(out)):
            return None
        size, out_size = tuple(source.shape[-2:]), tuple(out.shape[-2:])
        if isinstance(module, nn.Conv2d):
            if module.padding_mode != "zeros":
                return None
            kernel, stride, dilation = module.kernel_size, module.stride, module.dilation
            if module.padding == "same":
                before = tuple(d * (k - 1) // 2 for k, d in zip(kernel, dilation, strict=True))
            else:
                before = (0, 0) if module.padding == "valid" else _pair(module.padding)
            kind = "conv"
        elif isinstance(module, nn.MaxPool2d):
            if module.return_indices:
                return None
            kernel, before = _pair(module.kernel_size), _pair(module.padding)
            stride, dilation = _pair(module.stride or module.kernel_size), _pair(module.dilation)
            kind = "max"
        else:
            kernel, before = _pair(module.kernel_size), _pair(module.padding)
            stride, dilation, kind = _pair(module.stride or module.kernel_size), (1, 1), "avg"
        after = tuple(
            max(0, (o - 1) * s + d * (k - 1) + 1 - n - b)
            for o, s, d, k, n, b in zip(
                out_size, stride, dilation, kernel, size, before, strict=True
            )
        )
        window = _Window(kind, _pair(kernel), _pair(stride), _pair(dilation), _pair(before),
                         _pair(after), _pair(out_size))  # fmt: skip
        if kind == "avg":
            window = _with_divisor(window, module, size, source.device)  # type: ignore[arg-type]
        return window

    @contextmanager
    def _out_of_place(self) -> Iterator[None]:
        """torch's in-place layers (``ReLU(inplace=True)``) run out of place inside the block,
        so kept outputs are not overwritten; their flags come back on every exit."""
        for m in self._in_place:
            m.inplace = False  # type: ignore[assignment]
        try:
            yield
        finally:
            for m in self._in_place:
                m.inplace = True  # type: ignore[assignment]

    # -- a batch of windows --------------------------------------------------------------------

    def __call__(self, images: torch.Tensor, starts: torch.Tensor, patches: torch.Tensor) -> Any:
        """The network's output on B copies of the clean inputs, copy b being
        ``inputs[images[b]]`` with the box at ``starts[b]`` (row, column) replaced by
        ``patches[b]``.

        ``images`` (B,) long, ``starts`` (B, 2) long, ``patches`` (B, C, h, w), all on the
        inputs' device; the boxes must lie inside the picture. Returns what the network returns
        (e.g. (B, K) logits), as ``module(copies)`` would, up to float rounding (exact unless
        ``cap`` is set).
        """
        height, width = self._clean[self._input].shape[-2:]
        h, w = patches.shape[-2:]
        if patches.dim() != 4 or len(images) != len(patches) or starts.shape != (len(images), 2):
            raise ValueError(
                f"expected images (B,), starts (B, 2), patches (B, C, h, w); got "
                f"{tuple(images.shape)}, {tuple(starts.shape)}, {tuple(patches.shape)}"
            )
        if h > height or w > width:
            raise ValueError(f"expected patches within ({height}, {width}), got ({h}, {w})")
        states: dict[fx.Node, Any] = {}
        with torch.inference_mode(), self._out_of_place():
            for i, node in enumerate(self._order):
                if node.op == "placeholder":
                    states[node] = self._boxed(node, Box(patches, starts, images))
                else:
                    states[node] = self._step(node, states)
                for done in self._free_after[i]:
                    if done.op != "output":
                        del states[done]
            return states[self._order[-1]]

    def _step(self, node: fx.Node, states: dict[fx.Node, Any]) -> Any:
        kind = self._kinds[node]
        if kind == "output":
            return fx.node.map_arg(node.args[0], lambda n: self._value(n, states))
        boxes = [states[n] for n in node.all_input_nodes if n in states]
        if kind == "shape":
            return self._shape(node, states)
        if kind == "full" or not all(isinstance(b, Box) for b in boxes):
            return self._full(node, states)
        if kind == "pointwise":
            (box,) = boxes
            args, kwargs = fx.node.map_arg(
                (node.args, node.kwargs), lambda n: box.values if n in states else self._clean[n]
            )
            return self._boxed(node, Box(self._ops[node](args, kwargs), box.starts, box.images))
        if kind == "window":
            return self._boxed(node, self._window(node, boxes[0]))
        return self._union(node, states)

    def _value(self, node: fx.Node, states: dict[fx.Node, Any]) -> Any:
        """A node's full value for this batch: a box pasted into the clean map (kept, so a
        second reader does not paste again), a full value, or the clean value."""
        if node not in states:
            return self._clean[node]
        state = states[node]
        if isinstance(state, Box):
            height, width = self._clean[node].shape[-2:]
            zero = torch.zeros_like(state.starts)
            state = _region(self._source(node), (0, 0), state, zero, (height, width))
            states[node] = state = state.contiguous()
        return state

    def _full(self, node: fx.Node, states: dict[fx.Node, Any]) -> Any:
        args, kwargs = fx.node.map_arg((node.args, node.kwargs), lambda n: self._value(n, states))
        return self._ops[node](args, kwargs)

    def _shape(self, node: fx.Node, states: dict[fx.Node, Any]) -> Any:
        """``x.size()`` and the like on a box: the full shape, without pasting anything."""

        def meta(n: fx.Node) -> Any:
            state = states.get(n, self._clean[n])
            if isinstance(state, Box):
                clean = self._clean[n]
                shape = (len(state.images), *clean.shape[1:])
                return torch.empty(shape, dtype=clean.dtype, device="meta")
            return state

        args, kwargs = fx.node.map_arg((node.args, node.kwargs), meta)
        return self._ops[node](args, kwargs)

    def _boxed(self, node: fx.Node, box: Box) -> Any:
        """The box, or the plain tensor when it covers the node's whole map."""
        if box.values.shape[-2:] == self._clean[node].shape[-2:]:
            return box.values
        return box

    def _window(self, node: fx.Node, box: Box) -> Box:
        """A conv / pooling node's changed box: the output positions whose window reads the
        input box (at most ``ceil(tau * side)`` with a cap), computed from the input region
        they read, taken from the padded clean input with the box pasted in."""
        window = self._windows[node]
        firsts, counts, sizes = [], [], []
        for axis in (0, 1):
            stride, reach, out = window.stride[axis], window.reach(axis), window.out[axis]
            length = box.values.shape[2 + axis]
            count = min(out, (length - 1 + reach) // stride + 1)
            first = _ceil_div(box.starts[:, axis] + window.before[axis] - reach, stride)
            first, count = self._capped(first, count, count, out)
            firsts.append(first.clamp(0, out - count))
            counts.append(count)
            sizes.append((count - 1) * stride + reach + 1)
        starts = torch.stack(firsts, 1)
        stride_t = torch.tensor(window.stride, device=starts.device)
        source = self._source(node.args[0], window)  # type: ignore[arg-type]
        region = _region(source, window.before, box, starts * stride_t, (sizes[0], sizes[1]))
        module = self._modules[str(node.target)]
        if window.kind == "conv":
            values = F.conv2d(
                region, module.weight, module.bias, module.stride, 0, module.dilation, module.groups
            )
        elif window.kind == "max":
            values = F.max_pool2d(region, window.kernel, window.stride, 0, window.dilation)
        else:
            assert window.divisor is not None
            sums = F.avg_pool2d(region, window.kernel, window.stride, 0, divisor_override=1)
            values = sums / _crop2d(window.divisor, starts, (counts[0], counts[1]))[:, None]
        return Box(values, starts, box.images)

    def _union(self, node: fx.Node, states: dict[fx.Node, Any]) -> Any:
        """An element-wise or concatenating node of changed maps: its box is the smallest one
        (of one size across the batch) holding every operand's box; each operand is read over
        it from its clean map with its own box pasted in."""
        boxes = [(n, states[n]) for n in node.all_input_nodes if n in states]
        shape = self._clean[node].shape[-2:]
        firsts, sizes = [], []
        for axis in (0, 1):
            low = torch.stack([b.starts[:, axis] for _, b in boxes]).amin(0)
            high = torch.stack([b.starts[:, axis] + b.values.shape[2 + axis] for _, b in boxes])
            spans = high.amax(0) - low
            size = min(int(spans.max()), shape[axis])
            low, size = self._capped(low, size, spans, shape[axis])
            firsts.append(low.clamp(0, shape[axis] - size))
            sizes.append(size)
        if tuple(sizes) == tuple(shape):
            return self._full(node, states)
        starts = torch.stack(firsts, 1)
        regions = {
            n: _region(self._source(n), (0, 0), b, starts, (sizes[0], sizes[1])) for n, b in boxes
        }
        args, kwargs = fx.node.map_arg(
            (node.args, node.kwargs), lambda n: regions[n] if n in regions else self._clean[n]
        )
        return Box(self._ops[node](args, kwargs), starts, boxes[0][1].images)

    def _capped(
        self, first: torch.Tensor, count: int, spans: torch.Tensor | int, side: int
    ) -> tuple[torch.Tensor, int]:
        """With a cap, a box longer than ``ceil(tau * side)`` keeps its middle part."""
        if self.cap is None:
            return first, count
        limit = max(1, math.ceil(self.cap * side))
        if count <= limit:
            return first, count
        extra = (spans - limit) // 2
        shift = extra.clamp(min=0) if isinstance(extra, torch.Tensor) else max(0, extra)
        return first + shift, limit

    def _source(self, node: fx.Node, window: _Window | None = None) -> torch.Tensor:
        """A node's clean output, padded as ``window`` pads it (-inf for max pooling), as
        (N, H, W, C) contiguous so a region's gather reads whole channel vectors; cached."""
        before, after = (window.before, window.after) if window else ((0, 0), (0, 0))
        fill = -math.inf if window is not None and window.kind == "max" else 0.0
        key = (node, (*before, *after), fill)
        if key not in self._sources:
            clean = self._clean[node]
            padded = F.pad(clean, (before[1], after[1], before[0], after[0]), value=fill)
            self._sources[key] = padded.permute(0, 2, 3, 1).contiguous()
        return self._sources[key]

    # -- memory --------------------------------------------------------------------------------

    def bytes_per_window(self, window: tuple[int, int]) -> int:
        """A rough bound on the memory one window needs in a batch: every changed node's box
        or full output for one window at the top-left corner, twice (regions gathered)."""
        inputs = self._clean[self._input]
        patch = inputs[:1, :, : window[0], : window[1]]
        zero = torch.zeros(1, 2, dtype=torch.long, device=inputs.device)
        images = torch.zeros(1, dtype=torch.long, device=inputs.device)
        total = 0
        states: dict[fx.Node, Any] = {}
        with torch.inference_mode(), self._out_of_place():
            for node in self._order:
                if node.op == "placeholder":
                    states[node] = self._boxed(node, Box(patch, zero, images))
                else:
                    states[node] = self._step(node, states)
                state = states[node]
                tensor = state.values if isinstance(state, Box) else state
                if isinstance(tensor, torch.Tensor):
                    total += tensor.numel() * tensor.element_size()
        return 2 * total

    def batch_size(self, window: tuple[int, int], memory_budget_mb: float | None) -> int:
        """Windows per batch under ``memory_budget_mb`` (default: 1024 MiB on the CPU, half the
        free memory of a CUDA device, from ``torch.cuda.mem_get_info``), at most 1024."""
        device = self._clean[self._input].device
        if memory_budget_mb is not None:
            budget = memory_budget_mb * 2**20
        elif device.type == "cuda":
            budget = torch.cuda.mem_get_info(device)[0] / 2
        else:
            budget = 1024 * 2**20
        return int(max(1, min(1024, budget // self.bytes_per_window(window))))


# -- helpers for the engine --------------------------------------------------------------------


def _region(
    source: torch.Tensor,
    offset: tuple[int, int],
    box: Box,
    corners: torch.Tensor,
    size: tuple[int, int],
) -> torch.Tensor:
    """(B, C, h, w) (channels-last memory) the region of ``size`` at ``corners`` (B, 2) of a
    padded clean map ``source`` (N, H', W', C), with ``box`` pasted in; ``offset`` is the
    padding above / left of ``source``, so the box's row r sits at row r + offset[0]."""
    device = source.device
    rows = corners[:, :1] + torch.arange(size[0], device=device)  # (B, h)
    cols = corners[:, 1:] + torch.arange(size[1], device=device)  # (B, w)
    region = source[box.images[:, None, None], rows[:, :, None], cols[:, None, :]]  # (B,h,w,C)
    height, width = box.values.shape[-2:]
    in_rows = rows - offset[0] - box.starts[:, :1]
    in_cols = cols - offset[1] - box.starts[:, 1:]
    inside = ((in_rows >= 0) & (in_rows < height))[:, :, None] & (
        (in_cols >= 0) & (in_cols < width)
    )[:, None, :]
    batch = torch.arange(len(rows), device=device)[:, None, None]
    pasted = box.values.permute(0, 2, 3, 1)[
        batch, in_rows.clamp(0, height - 1)[:, :, None], in_cols.clamp(0, width - 1)[:, None, :]
    ]
    return torch.where(inside[..., None], pasted, region).permute(0, 3, 1, 2)


def _crop2d(table: torch.Tensor, starts: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, h, w): ``table`` (H, W) cropped at each of ``starts`` (B, 2)."""
    rows = starts[:, :1] + torch.arange(size[0], device=starts.device)
    cols = starts[:, 1:] + torch.arange(size[1], device=starts.device)
    return table[rows[:, :, None], cols[:, None, :]]


def _with_divisor(
    window: _Window, pool: nn.AvgPool2d, size: tuple[int, int], device: torch.device
) -> _Window:
    """Average pooling's divisor of each output, as the full op counts it: the window's
    positions inside the picture (``count_include_pad=False``), or inside the padded picture
    (not the extra rows ``ceil_mode`` adds), or ``divisor_override``."""
    total = tuple(n + b + a for n, b, a in zip(size, window.before, window.after, strict=True))
    real = torch.zeros(1, 1, *total, device=device)
    top, left = window.before
    real[..., top : top + size[0], left : left + size[1]] = 1
    padded = torch.zeros(1, 1, *total, device=device)
    padded[..., : size[0] + 2 * top, : size[1] + 2 * left] = 1
    counts = real if not pool.count_include_pad else padded
    divisor = F.avg_pool2d(counts, window.kernel, window.stride, 0, divisor_override=1)[0, 0]
    divisor = divisor[: window.out[0], : window.out[1]]
    if pool.divisor_override:
        divisor = torch.full_like(divisor, float(pool.divisor_override))
    return replace(window, divisor=divisor)


def _ceil_div(numerator: torch.Tensor, denominator: int) -> torch.Tensor:
    return -torch.div(-numerator, denominator, rounding_mode="floor")


def _pair(value: Any) -> tuple[int, int]:
    if isinstance(value, int):
        return (value, value)
    first, second = value
    return (int(first), int(second))


def _spatial(value: Any) -> bool:
    return isinstance(value, torch.Tensor) and value.dim() == 4


def _broadcasts(value: Any) -> bool:
    """A constant that an element-wise op may broadcast over a box: not a tensor, one number,
    or a tensor whose last two dimensions are 1 (per channel)."""
    if not isinstance(value, torch.Tensor) or value.numel() == 1:
        return True
    return value.dim() >= 3 and value.shape[-1] == 1 and value.shape[-2] == 1


def _pointwise_module(module: nn.Module) -> bool:
    """Batch norm and dropout are element-wise only in eval mode (batch norm with statistics)."""
    if isinstance(module, nn.BatchNorm2d):
        return not module.training and module.running_mean is not None
    if isinstance(module, (nn.Dropout, nn.Dropout2d, nn.AlphaDropout)):
        return not module.training
    return True


def _arg(node: fx.Node, index: int, default: Any = None) -> Any:
    return node.args[index] if len(node.args) > index else default


def _after(node: fx.Node, other: fx.Node) -> bool:
    """Whether ``node`` comes after ``other`` in their graph."""
    current = other.next
    while current.op != "root":
        if current is node:
            return True
        current = current.next
    return False


# -- occlusion windows -------------------------------------------------------------------------


def occluded_patches(
    inputs: torch.Tensor,
    fills: torch.Tensor,
    images: torch.Tensor,
    corners: torch.Tensor,
    window: tuple[int, int],
) -> tuple[torch.Tensor, torch.Tensor]:
    """The changed box of each occluded copy, for :class:`Incremental`.

    ``inputs`` (N, C, H, W); ``fills`` what the window puts in, (N or 1, C, H, W) (expanded
    views are fine); ``images`` (B,) long; ``corners`` (B, 2) long, each window's top-left
    corner (a window may run past the bottom / right border, where it is cut off). Returns
    ``starts`` (B, 2), the boxes of size ``window`` shifted inside the picture, and
    ``patches`` (B, C, h, w): the fill inside the window, the input elsewhere in the box.
    """
    height, width = inputs.shape[-2:]
    device = inputs.device
    limit = torch.tensor([height - window[0], width - window[1]], device=device)
    starts = torch.minimum(corners, limit)
    rows = starts[:, :1] + torch.arange(window[0], device=device)  # (B, h)
    cols = starts[:, 1:] + torch.arange(window[1], device=device)  # (B, w)
    inside = ((rows >= corners[:, :1]) & (rows < corners[:, :1] + window[0]))[:, :, None] & (
        (cols >= corners[:, 1:]) & (cols < corners[:, 1:] + window[1])
    )[:, None, :]
    where_rows, where_cols = rows[:, :, None], cols[:, None, :]
    clean = inputs[images[:, None, None], :, where_rows, where_cols]  # (B, h, w, C)
    fill_images = images if fills.shape[0] > 1 else torch.zeros_like(images)
    filled = fills[fill_images[:, None, None], :, where_rows, where_cols]
    patches = torch.where(inside[..., None], filled, clean).permute(0, 3, 1, 2).contiguous()
    return starts, patches


def drill_down(
    evaluate: Callable[[torch.Tensor], torch.Tensor],
    grid: tuple[int, int, int],
    factor: int,
    fraction: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Krypton's adaptive drill-down on a grid of windows (approximate).

    ``evaluate(jobs)`` gives the (J,) results of the windows ``jobs`` (J,) long, indices into
    the flattened ``grid`` (N, rows, columns). First every ``factor``-th row and column of
    windows is evaluated (plus the last row and column); the others get the bilinear
    interpolation of those. Then, per picture, the ``fraction`` of the remaining windows whose
    interpolated value is largest in magnitude is evaluated exactly. Returns the results
    (N, rows, columns) float64 and which were evaluated, (N, rows, columns) bool.
    """
    n, nh, nw = grid
    coarse_rows, coarse_cols = _coarse(nh, factor), _coarse(nw, factor)
    done = torch.zeros(n, nh, nw, dtype=torch.bool)
    done[:, coarse_rows[:, None], coarse_cols[None, :]] = True
    values = torch.zeros(n, nh, nw, dtype=torch.float64)
    first = done.flatten().nonzero().squeeze(1)
    values.view(-1)[first] = evaluate(first).double().cpu()
    coarse = values[:, coarse_rows[:, None], coarse_cols[None, :]]
    estimate = _interpolation(coarse_rows, nh) @ coarse @ _interpolation(coarse_cols, nw).T
    values = torch.where(done, values, estimate)
    picks = []
    for i in range(n):
        candidates = torch.nonzero(~done[i].flatten()).squeeze(1)
        order = estimate[i].flatten()[candidates].abs().argsort(descending=True)
        picks.append(candidates[order[: math.ceil(fraction * len(candidates))]] + i * nh * nw)
    second = torch.cat(picks)
    if len(second):
        values.view(-1)[second] = evaluate(second).double().cpu()
        done.view(-1)[second] = True
    return values, done


def _coarse(count: int, factor: int) -> torch.Tensor:
    """Every ``factor``-th index of ``range(count)``, and the last one."""
    picked = list(range(0, count, factor))
    if picked[-1] != count - 1:
        picked.append(count - 1)
    return torch.tensor(picked)


def _interpolation(picked: torch.Tensor, count: int) -> torch.Tensor:
    """(count, len(picked)) float64: linear interpolation from the picked indices to all."""
    matrix = torch.zeros(count, len(picked), dtype=torch.float64)
    if len(picked) == 1:
        matrix[:, 0] = 1.0
        return matrix
    points = picked.tolist()
    for i in range(count):
        right = min(max(bisect.bisect_left(points, i), 1), len(points) - 1)
        low, high = points[right - 1], points[right]
        t = (i - low) / (high - low)
        matrix[i, right - 1], matrix[i, right] = 1 - t, t
    return matrix
