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
size across a batch (near a border a box is shifted inside the map). On the CPU that size is
the batch's longest box once each is cut where the map ends (``tight``), so batches near a
border run fewer operations; on a GPU it is one size per node, so cuDNN plans once.

Where an operation mixes all positions (global or adaptive pooling, flatten + linear,
squeeze-and-excitation, attention) or is not known here, the boxes are pasted into full
copies of the clean output for the batch and the rest of the network runs in full from there.
A box that grows to cover its whole map becomes a full tensor too. :class:`Incremental` raises
:class:`NotIncremental` where a network cannot run this way (``torch.fx`` cannot trace it, or
its input goes straight into an operation that mixes all positions); callers fall back to plain
forward passes.

Supported in box form: convolutions (``nn.Conv2d`` or ``F.conv2d``: any stride, dilation,
groups including depthwise, zero padding including ``"same"``), max and average pooling
(modules or functions: padding, ``ceil_mode``, ``count_include_pad``, ``divisor_override``),
eval-mode ``nn.BatchNorm2d`` (folded into the convolution before it), dropout in eval mode,
element-wise activations (modules, functions and tensor methods: ReLU, ReLU6 / hardtanh, SiLU,
GELU, sigmoid, ...), add / subtract / multiply / divide of two changed tensors or of a changed
tensor and a per-channel constant, and concatenation along channels. In-place operations run
out of place (refused when another node reads the overwritten tensor afterwards).

Approximation (Krypton's projective-field threshold): ``cap=tau`` stops a box from growing past
``ceil(tau * side)`` of its map's side; the box keeps the part around where its window's
centre lands in that map (tracked layer by layer) and the clean values are used outside it, so
boxes never reach the mixing layers at full size. ``cap=None`` (the default) is exact.

Where this does not apply: RISE and D-RISE multiply the whole picture by a smooth random mask,
and Score-CAM by an upsampled activation map, so every pixel of every copy changes and the
changed box is the whole picture; incremental inference saves nothing there. (The toon
detector's CenterNet does not trace as a whole, its peak decoding branches on data; its
backbone and heads do, and a window's box stays a box up to the heat maps.)
"""

from __future__ import annotations

import math
import operator
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from convlens.techniques.attribution.boxes import (
    Box,
    Window,
    arg,
    broadcasts,
    ceil_div,
    geometry,
    pointwise_module,
    region,
    spatial,
)

POINTWISE_MODULES = (
    nn.ReLU, nn.ReLU6, nn.Hardtanh, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU,
    nn.SiLU, nn.Mish, nn.Sigmoid, nn.Tanh, nn.Hardsigmoid, nn.Hardswish, nn.Softplus,
    nn.Identity, nn.Dropout, nn.Dropout2d, nn.AlphaDropout, nn.BatchNorm2d,
)  # fmt: skip
POINTWISE_FUNCTIONS: set[Any] = {
    F.relu, F.relu6, F.hardtanh, F.leaky_relu, F.elu, F.gelu, F.silu, F.mish, F.hardswish,
    F.hardsigmoid, F.softplus, F.sigmoid, F.tanh, torch.relu, torch.sigmoid, torch.tanh,
    torch.clamp, torch.abs, torch.neg, torch.exp, operator.neg,
}  # fmt: skip
POINTWISE_METHODS = {
    "relu", "sigmoid", "tanh", "clamp", "clamp_min", "clamp_max", "abs", "neg", "exp", "detach",
    "contiguous", "clone", "float",
}  # fmt: skip
BINARY_FUNCTIONS: set[Any] = {
    operator.add, operator.sub, operator.mul, operator.truediv,
    torch.add, torch.sub, torch.mul, torch.div, torch.maximum, torch.minimum,
}  # fmt: skip
BINARY_METHODS = {"add", "sub", "mul", "div", "maximum", "minimum"}
CONCATENATIONS: set[Any] = {torch.cat, torch.concat}
IN_PLACE_FUNCTIONS: dict[Any, Any] = {
    operator.iadd: operator.add, operator.isub: operator.sub, operator.imul: operator.mul,
    operator.itruediv: operator.truediv, torch.relu_: torch.relu, F.relu_: F.relu,
}  # fmt: skip
SHAPE_ATTRIBUTES = {"shape", "ndim", "dtype"}
# sliding-window operations: kind, the functional form's arguments after the input, defaults
WINDOW_FUNCTIONS: dict[Any, tuple[str, tuple[str, ...], tuple[Any, ...]]] = {
    F.conv2d: ("conv", ("weight", "bias", "stride", "padding", "dilation", "groups"),
               (None, None, 1, 0, 1, 1)),
    F.max_pool2d: ("max", ("kernel_size", "stride", "padding", "dilation", "ceil_mode",
                           "return_indices"), (None, None, 0, 1, False, False)),
    F.avg_pool2d: ("avg", ("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad",
                           "divisor_override"), (None, None, 0, False, True, None)),
}  # fmt: skip
BOX_KINDS = {"input", "pointwise", "union", "window", "folded"}


class NotIncremental(Exception):
    """The network cannot run incrementally; the message says why (callers fall back)."""


class _OneThreadTracer(fx.Tracer):
    """``torch.fx``'s tracer, harmless to other threads: while it traces, fx replaces
    ``nn.Module.__call__`` and ``__getattr__`` for the whole process, so a network that another
    thread runs meanwhile (the explorer's other lane, a background job) would be traced into
    this graph and fail ("module is not installed as a submodule"). Calls from any thread but
    the tracing one run as they would without fx."""

    def __init__(self) -> None:
        super().__init__()
        self._thread = threading.get_ident()

    def call_module(self, m: nn.Module, forward: Callable[..., Any], args: Any, kwargs: Any) -> Any:
        if threading.get_ident() != self._thread:
            return forward(*args, **kwargs)
        return super().call_module(m, forward, args, kwargs)

    def getattr(self, attr: str, attr_val: Any, parameter_proxy_cache: dict[str, Any]) -> Any:
        if threading.get_ident() != self._thread:
            return attr_val
        return super().getattr(attr, attr_val, parameter_proxy_cache)


def trace(module: nn.Module) -> fx.GraphModule:
    """``torch.fx.symbolic_trace(module)``, safe while other threads run networks."""
    tracer = _OneThreadTracer()
    graph = tracer.trace(module)
    return fx.GraphModule(tracer.root, graph, type(module).__name__)


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
    tight:
        Whether a batch's boxes are cut where the map ends (their size: the largest cut box of
        the batch, so windows near a border cost less), rather than each box keeping its full
        size shifted inside the map, one size per node for every batch. Default: on the CPU,
        where the operations saved are time saved; on a GPU one shape per node lets cuDNN
        plan its convolutions once. The same numbers either way; with a ``cap`` the cap cuts
        the boxes instead.

    ``clean_output`` is the traced network's output on ``inputs``; ``full_from`` names the
    nodes where changed boxes are pasted into full maps. Eval-mode batch norms right after a
    convolution are folded into it (the same numbers up to float rounding). Raises
    :class:`NotIncremental`.
    """

    def __init__(
        self,
        module: nn.Module,
        inputs: torch.Tensor,
        *,
        cap: float | None = None,
        tight: bool | None = None,
    ):
        if inputs.dim() != 4:
            raise ValueError(f"expected inputs (N, C, H, W), got {tuple(inputs.shape)}")
        if cap is not None and not 0 < cap <= 1:
            raise ValueError(f"expected cap in (0, 1] or None, got {cap!r}")
        self.cap = cap
        self.tight = inputs.device.type == "cpu" if tight is None else bool(tight)
        try:
            self._graph = trace(module)
        except Exception as error:  # fx raises many kinds on code it cannot follow
            first = (str(error).strip().splitlines() or [""])[0]
            raise NotIncremental(
                f"torch.fx cannot trace {type(module).__name__}: {type(error).__name__}: {first}"
            ) from None
        self._modules = dict(self._graph.named_modules())
        self._nodes = list(self._graph.graph.nodes)
        placeholders = [n for n in self._nodes if n.op == "placeholder"]
        if len(placeholders) != 1:
            raise NotIncremental(f"expected a network of one input, got {len(placeholders)}")
        self._input = placeholders[0]
        self._position = {n: i for i, n in enumerate(self._nodes)}
        self._ops = {n: self._callable(n) for n in self._nodes if n.op.startswith("call_")}
        self._in_place = [m for m in self._modules.values() if getattr(m, "inplace", None) is True]
        self._clean = self._run_clean(inputs)
        self.clean_output = self._clean[self._nodes[-1]]
        self._sources: dict[tuple[fx.Node, tuple[int, ...], float], torch.Tensor] = {}
        self._plan()

    # -- set-up ------------------------------------------------------------------------------

    def _callable(self, node: fx.Node) -> Callable[[tuple, dict], Any]:
        """The node's operation as ``fn(args, kwargs)``, in-place forms replaced by their
        out-of-place twins (refused when another node reads the overwritten tensor later)."""
        fix = {"inplace": False} if node.kwargs.get("inplace") is True else {}
        target, in_place = node.target, bool(fix)
        if node.op == "call_module":
            module = self._modules[str(target)]
            in_place = getattr(module, "inplace", None) is True
            op: Callable[[tuple, dict], Any] = lambda a, k: module(*a, **k)  # noqa: E731
        elif node.op == "call_function":
            in_place = in_place or target in IN_PLACE_FUNCTIONS
            fn = IN_PLACE_FUNCTIONS.get(target, target)
            op = lambda a, k: fn(*a, **{**k, **fix})  # noqa: E731
        else:
            name = str(target)
            if name.endswith("_") and not name.startswith("_") and hasattr(torch.Tensor, name[:-1]):
                name, in_place = name[:-1], True
            op = lambda a, k: getattr(a[0], name)(*a[1:], **{**k, **fix})  # noqa: E731
        if in_place and node.args and isinstance(node.args[0], fx.Node):
            overwritten = node.args[0]
            later = [u for u in overwritten.users if self._position[u] > self._position[node]]
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
        """Which nodes a window changes, how each runs, which stay boxes, when states go."""
        changed = {self._input}
        for node in self._nodes:
            if any(n in changed for n in node.all_input_nodes):
                changed.add(node)
        used = {n for node in self._nodes for n in node.all_input_nodes}
        ends = ("output", "placeholder")
        self._order = [n for n in self._nodes if n in changed and (n in used or n.op in ends)]
        self._windows = {n: w for n in self._order if (w := self._window_of(n, changed))}
        self._kinds = {n: self._kind(n, changed) for n in self._order}
        with torch.no_grad():
            self._fold_batch_norms()
        boxed = {self._input}
        for node in self._order:
            inputs = [n for n in node.all_input_nodes if n in self._kinds]
            if self._kinds[node] in BOX_KINDS and all(n in boxed for n in inputs):
                boxed.add(node)
        self.full_from = [
            n.name
            for n in self._order
            if n not in boxed and self._kinds[n] != "shape"
            and any(i in boxed for i in n.all_input_nodes)
        ]  # fmt: skip
        if not any(u in boxed for u in self._input.users):
            names = ", ".join(u.name for u in self._input.users)
            raise NotIncremental(f"the input goes straight into {names}, which mixes positions")
        index = {n: i for i, n in enumerate(self._order)}
        self._free_after: list[list[fx.Node]] = [[] for _ in self._order]
        for node in self._order:
            last = max((index[u] for u in node.users if u in index), default=index[node])
            self._free_after[last].append(node)

    def _kind(self, node: fx.Node, changed: set[fx.Node]) -> str:
        """``input``, ``output``, ``window``, ``pointwise``, ``union``, ``shape`` or ``full``."""
        if node.op in ("placeholder", "output"):
            return "input" if node.op == "placeholder" else "output"
        if node in self._windows:
            return "window"
        moving = [n for n in node.all_input_nodes if n in changed]
        constants = [self._clean[n] for n in node.all_input_nodes if n not in changed]
        if self._is_shape(node):
            return "shape"
        if not all(spatial(self._clean[n]) for n in moving):
            return "full"
        if node.op == "call_module":
            module = self._modules[str(node.target)]
            pointwise = isinstance(module, POINTWISE_MODULES) and pointwise_module(module)
            return "pointwise" if pointwise else "full"
        if not all(broadcasts(c) for c in constants):
            return "full"
        target = IN_PLACE_FUNCTIONS.get(node.target, node.target)
        name = str(target).removesuffix("_") if node.op == "call_method" else ""
        dropout = target is F.dropout and node.kwargs.get("training", arg(node, 2)) is False
        if target in POINTWISE_FUNCTIONS or dropout or name in POINTWISE_METHODS:
            return "pointwise" if len(moving) == 1 else "full"
        if target in BINARY_FUNCTIONS or name in BINARY_METHODS:
            if len(moving) == 1:
                return "pointwise"  # a changed map and a per-channel constant
            return "union" if self._same_map(node, moving) else "full"
        if target in CONCATENATIONS and node.kwargs.get("dim", arg(node, 1, 0)) in (1, -3):
            tensors = node.args[0]
            if isinstance(tensors, (list, tuple)) and all(t in changed for t in tensors):
                return "union" if self._same_map(node, moving) else "full"
        return "full"

    def _is_shape(self, node: fx.Node) -> bool:
        if node.op == "call_method":
            return node.target in ("size", "dim")
        return node.target is getattr and len(node.args) == 2 and node.args[1] in SHAPE_ATTRIBUTES

    def _same_map(self, node: fx.Node, moving: list[fx.Node]) -> bool:
        """Every changed operand is an (N, C, H, W) map of the output's H x W."""
        out = self._clean[node]
        return spatial(out) and all(self._clean[n].shape[-2:] == out.shape[-2:] for n in moving)

    def _window_of(self, node: fx.Node, changed: set[fx.Node]) -> Window | None:
        """A conv / pooling node's geometry (modules and functional forms), or None."""
        if not node.args or not isinstance(node.args[0], fx.Node):
            return None
        if node.op == "call_module" and len(node.args) == 1 and not node.kwargs:
            module = self._modules[str(node.target)]
            kinds = {nn.Conv2d: F.conv2d, nn.MaxPool2d: F.max_pool2d, nn.AvgPool2d: F.avg_pool2d}
            function = kinds.get(type(module))  # type: ignore[call-overload]
            if function is None or getattr(module, "padding_mode", "zeros") != "zeros":
                return None
            kind, names, _ = WINDOW_FUNCTIONS[function]
            options = {k: getattr(module, "kernel_size" if k == "weight" else k) for k in names}
            if kind == "conv":
                options.update(weight=module.weight, bias=module.bias)
        elif node.op == "call_function" and node.target in WINDOW_FUNCTIONS:
            kind, names, defaults = WINDOW_FUNCTIONS[node.target]
            given = {**dict(zip(names, node.args[1:], strict=False)), **node.kwargs}
            if any(isinstance(v, fx.Node) and v in changed for v in given.values()):
                return None
            options = {**dict(zip(names, defaults, strict=True)), **given}
            options = {
                k: self._clean[v] if isinstance(v, fx.Node) else v for k, v in options.items()
            }
        else:
            return None
        source, out = self._clean[node.args[0]], self._clean[node]
        if not (spatial(source) and spatial(out)) or options.get("return_indices"):
            return None
        size, out_size = tuple(source.shape[-2:]), tuple(out.shape[-2:])
        return geometry(kind, options, size, out_size, source.device)  # type: ignore[arg-type]

    def _fold_batch_norms(self) -> None:
        """An eval batch norm that alone reads a convolution is folded into it: the conv's box
        holds the normalised values and the batch norm passes it on."""
        for node in self._order:
            if self._kinds[node] != "pointwise" or node.op != "call_module":
                continue
            conv, norm = node.args[0], self._modules[str(node.target)]
            window = self._windows.get(conv)  # type: ignore[arg-type]
            if type(norm) is not nn.BatchNorm2d or window is None or window.kind != "conv":
                continue
            if len(conv.users) != 1:  # type: ignore[union-attr]
                continue
            assert norm.running_var is not None and norm.running_mean is not None
            scale = torch.rsqrt(norm.running_var + norm.eps)
            scale = scale if norm.weight is None else scale * norm.weight
            shift = -norm.running_mean * scale + (0 if norm.bias is None else norm.bias)
            weight, bias = window.options["weight"], window.options["bias"]
            folded = {
                "weight": weight * scale.view(-1, 1, 1, 1).to(weight.dtype),
                "bias": shift if bias is None else bias * scale + shift,
            }
            self._windows[conv] = replace(window, options={**window.options, **folded})  # type: ignore[index]
            self._kinds[node] = "folded"

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
        if patches.dim() != 4 or len(images) != len(patches) or starts.shape != (len(images), 2):
            raise ValueError(
                f"expected images (B,), starts (B, 2), patches (B, C, h, w); got "
                f"{tuple(images.shape)}, {tuple(starts.shape)}, {tuple(patches.shape)}"
            )
        if patches.shape[-2] > height or patches.shape[-1] > width:
            raise ValueError(f"expected patches within {height} x {width}, got {patches.shape}")
        centres = None
        if self.cap is not None:  # the cap keeps each box's part around its window's centre
            size = torch.tensor(patches.shape[-2:], device=starts.device)
            centres = starts.double() + (size.double() - 1) / 2
        return self._run(Box(patches, starts, images, centres))[self._order[-1]]

    def _run(self, box: Box, keep: bool = False) -> dict[fx.Node, Any]:
        """Every changed node's state for the batch of ``box``: a :class:`Box`, or a full value
        where the box covers the whole map or an operation mixes positions. States are dropped
        after their last reader unless ``keep``."""
        states: dict[fx.Node, Any] = {}
        with torch.inference_mode(), self._out_of_place():
            for i, node in enumerate(self._order):
                if node is self._input:
                    states[node] = self._boxed(node, box)
                else:
                    states[node] = self._step(node, states)
                for done in self._free_after[i] if not keep else ():
                    if done.op != "output":
                        del states[done]
        return states

    def _step(self, node: fx.Node, states: dict[fx.Node, Any]) -> Any:
        kind = self._kinds[node]
        if kind == "output":
            return fx.node.map_arg(node.args[0], lambda n: self._value(n, states))
        if kind == "folded":
            return states[node.args[0]]  # type: ignore[index]
        if kind == "shape":
            return self._shape(node, states)
        boxes = [states[n] for n in node.all_input_nodes if n in states]
        if all(isinstance(b, Box) for b in boxes):
            if kind == "pointwise":
                (box,) = boxes
                args, kwargs = fx.node.map_arg(
                    (node.args, node.kwargs),
                    lambda n: box.values if n in states else self._clean[n],
                )
                values = self._ops[node](args, kwargs)
                return self._boxed(node, replace(box, values=values))
            if kind == "window":
                return self._boxed(node, self._window(node, boxes[0]))
            if kind == "union":
                return self._union(node, states)
        if kind == "window" and self._windows[node].kind == "conv":
            window, x = self._windows[node], self._value(node.args[0], states)  # type: ignore[arg-type]
            o = window.options
            return F.conv2d(x, o["weight"], o["bias"], window.stride, o["padding"], window.dilation,
                            o["groups"])  # fmt: skip
        return self._full(node, states)

    def _value(self, node: fx.Node, states: dict[fx.Node, Any]) -> Any:
        """A node's full value for this batch: a box pasted into the clean map (kept, so a
        second reader does not paste again), a full value, or the clean value."""
        if node not in states:
            return self._clean[node]
        state = states[node]
        if isinstance(state, Box):
            height, width = self._clean[node].shape[-2:]
            zero = torch.zeros_like(state.starts)
            state = region(self._source(node), (0, 0), state, zero, (height, width))
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
        centres = None if box.centres is None else window.centres(box.centres)
        firsts, sizes = [], []
        for axis in (0, 1):
            stride, reach, out = window.stride[axis], window.reach(axis), window.out[axis]
            length, start = box.values.shape[2 + axis], box.starts[:, axis] + window.before[axis]
            first = ceil_div(start - reach, stride)
            count = min(out, (length - 1 + reach) // stride + 1)
            if self.tight and centres is None and count < out:
                # each box cut where the map ends, the batch's longest one giving the size (a
                # box of the whole map stays whole: a full map runs without gathering)
                last = torch.div(start + length - 1, stride, rounding_mode="floor")
                first = first.clamp(min=0)
                count = int((last.clamp(max=out - 1) - first).max()) + 1
            first, count = self._capped(first, count, centres, axis, out)
            firsts.append(first.clamp(0, out - count))
            sizes.append((count - 1) * stride + reach + 1)
        starts = torch.stack(firsts, 1)
        corners = starts * torch.tensor(window.stride, device=starts.device)
        source = self._source(node.args[0], window)  # type: ignore[arg-type]
        gathered = region(source, window.before, box, corners, (sizes[0], sizes[1]))
        return Box(window.run(gathered, starts), starts, box.images, centres)

    def _union(self, node: fx.Node, states: dict[fx.Node, Any]) -> Any:
        """An element-wise or concatenating node of changed maps: its box is the smallest one
        (of one size across the batch) holding every operand's box; each operand is read over
        it from its clean map with its own box pasted in."""
        boxes = [(n, states[n]) for n in node.all_input_nodes if n in states]
        shape = self._clean[node].shape[-2:]
        known = [b.centres for _, b in boxes if b.centres is not None]
        centres = torch.stack(known).mean(0) if known else None
        firsts, sizes = [], []
        for axis in (0, 1):
            low = torch.stack([b.starts[:, axis] for _, b in boxes]).amin(0)
            high = torch.stack([b.starts[:, axis] + b.values.shape[2 + axis] for _, b in boxes])
            spans = high.amax(0) - low
            size = min(int(spans.max()), shape[axis])
            low, size = self._capped(low, size, centres, axis, shape[axis])
            firsts.append(low.clamp(0, shape[axis] - size))
            sizes.append(size)
        if tuple(sizes) == tuple(shape):
            return self._full(node, states)
        starts = torch.stack(firsts, 1)
        regions = {
            n: region(self._source(n), (0, 0), b, starts, (sizes[0], sizes[1])) for n, b in boxes
        }
        args, kwargs = fx.node.map_arg(
            (node.args, node.kwargs), lambda n: regions[n] if n in regions else self._clean[n]
        )
        return Box(self._ops[node](args, kwargs), starts, boxes[0][1].images, centres)

    def _capped(
        self, first: torch.Tensor, count: int, centres: torch.Tensor | None, axis: int, side: int
    ) -> tuple[torch.Tensor, int]:
        """With a cap, a box longer than ``ceil(tau * side)`` keeps the part of that length
        centred on its window's centre (``centres`` (B, 2) in this map; the caller shifts a
        box that runs past the border back inside). Centring on the box itself would be wrong
        once a box has grown to the whole map: its middle no longer says where the window is."""
        if self.cap is None or centres is None:
            return first, count
        limit = max(1, math.ceil(self.cap * side))
        if count <= limit:
            return first, count
        return (centres[:, axis] - (limit - 1) / 2).round().long(), limit

    def _source(self, node: fx.Node, window: Window | None = None) -> torch.Tensor:
        """A node's clean output, padded as ``window`` pads it (-inf for max pooling), as
        (N, H, W, C) contiguous, so a region's gather copies whole channel vectors; cached."""
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
        states = self._run(Box(patch, zero, zero[:, 0]), keep=True)
        tensors = [s.values if isinstance(s, Box) else s for s in states.values()]
        return 2 * sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor))

    def batch_size(self, window: tuple[int, int], memory_budget_mb: float | None) -> int:
        """Windows per batch under ``memory_budget_mb`` (default: 1024 MiB on the CPU, half the
        free memory of a CUDA device, from ``torch.cuda.mem_get_info``), at most 1024 (256 on
        a GPU, where one batch already fills the device)."""
        device = self._clean[self._input].device
        if memory_budget_mb is not None:
            budget = memory_budget_mb * 2**20
        elif device.type == "cuda":
            budget = torch.cuda.mem_get_info(device)[0] / 2
        else:
            budget = 1024 * 2**20
        most = 256 if device.type == "cuda" else 1024
        return int(max(1, min(most, budget // self.bytes_per_window(window))))
