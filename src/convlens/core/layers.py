"""The layer table: every named layer with its type, output shape and parameter count."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import torch
from torch import nn

from convlens.core.hooks import first_tensor, forward_hooks, preserved
from convlens.core.naming import call_name, unknown


class _Handle(Protocol):
    """What the table needs of a :class:`~convlens.core.model.Model`."""

    module: nn.Module

    @property
    def input_shape(self) -> tuple[int, ...]: ...

    @property
    def device(self) -> torch.device: ...

    @property
    def dtype(self) -> torch.dtype: ...

    def forward(self, inputs: torch.Tensor) -> Any: ...


# Coarse kinds for filtering the table, by module type.
_KINDS: tuple[tuple[str, tuple[type[nn.Module], ...]], ...] = (
    ("conv", (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d)),
    (
        "pool",
        (
            nn.MaxPool2d,
            nn.AvgPool2d,
            nn.AdaptiveAvgPool2d,
            nn.AdaptiveMaxPool2d,
            nn.LPPool2d,
        ),
    ),
    (
        "act",
        (
            nn.ReLU,
            nn.ReLU6,
            nn.LeakyReLU,
            nn.ELU,
            nn.GELU,
            nn.SiLU,
            nn.Hardswish,
            nn.Hardsigmoid,
            nn.Sigmoid,
            nn.Tanh,
            nn.PReLU,
            nn.Softmax,
            nn.Mish,
        ),
    ),
    ("norm", (nn.BatchNorm1d, nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm, nn.InstanceNorm2d)),
    ("linear", (nn.Linear,)),
    ("dropout", (nn.Dropout, nn.Dropout2d)),
)
KINDS = (*(k for k, _ in _KINDS), "block")


def layer_kind(module: nn.Module) -> str:
    """``conv``, ``pool``, ``act``, ``norm``, ``linear``, ``dropout``, ``block`` or ``other``."""
    for kind, types in _KINDS:
        if isinstance(module, types):
            return kind
    if any(True for _ in module.children()):
        return "block"
    # Leaf layers converted from ONNX or Keras carry their own class names.
    type_name = type(module).__name__.lower()
    for kind, words in (
        ("conv", ("conv",)),
        ("pool", ("pool",)),
        ("act", ("relu", "sigmoid", "tanh", "swish", "activation")),
        ("linear", ("gemm", "dense", "linear")),
        ("norm", ("norm",)),
    ):
        if any(w in type_name for w in words):
            return kind
    return "other"


@dataclass(frozen=True)
class LayerInfo:
    """One row of the layer table."""

    name: str
    type: str
    kind: str
    output_shape: tuple[int, ...] | None
    params: int
    depth: int
    calls: int = 0
    returned: int = -1  # rank in the order layers returned in the dry run (-1: never called)
    call: int | None = None  # for the row of one call (``name#k``) of a reused module: k
    channels_last: bool = False  # computed in (N, H, W, C); shape and captures are (N, C, H, W)
    own: tuple[str, ...] = ()  # parameters a container holds itself (ConvNeXt's layer_scale)
    norm_act: bool = False  # a norm that applies its activation too (timm's BatchNormAct2d)

    @property
    def note(self) -> str:
        """What a reader of the table should know about this row ("" for most)."""
        notes = []
        if self.channels_last:
            notes.append("channels-last inside (N, H, W, C); shown and captured as (N, C, H, W)")
        if self.norm_act:
            notes.append("norm and activation in one module: its output is after the activation")
        if self.own:
            notes.append(f"own parameters: {', '.join(self.own)}")
        if self.call is not None:
            notes.append(f"call {self.call} of {self.name.rpartition('#')[0]}")
        elif self.calls > 1:
            notes.append(
                f"runs {self.calls} times; shape of call 1; each call is {self.name}#1.."
                f"#{self.calls}"
            )
        return "; ".join(notes)

    @property
    def spatial(self) -> bool:
        """Whether the output is an image-like map (N, C, h, w)."""
        return self.output_shape is not None and len(self.output_shape) == 4


@dataclass
class LayerTable(Sequence[LayerInfo]):
    """Every named layer of a model, in forward order, with output shapes from one dry run.

    ``output_shape`` includes the batch dimension (1 for the dry run); layers never called in
    the forward pass keep ``None`` and sit at the end.
    """

    rows: list[LayerInfo]
    input_shape: tuple[int, ...]
    total_params: int = field(default=0)

    def __getitem__(self, i):  # type: ignore[override]
        return self.rows[i]

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def names(self) -> list[str]:
        return [r.name for r in self.rows]

    def get(self, name: str) -> LayerInfo:
        for row in self.rows:
            if row.name == name:
                return row
        raise unknown("layer", name, self.names)

    def filter(
        self, kinds: str | Iterable[str] | None = None, *, leaves_only: bool = False
    ) -> LayerTable:
        """Only rows of the given kinds (see :data:`KINDS`), e.g. ``filter("conv")``."""
        wanted = {kinds} if isinstance(kinds, str) else set(kinds or ())
        bad = wanted - set(KINDS) - {"other"}
        if bad:
            raise ValueError(f"expected layer kinds among {', '.join(KINDS)}, got {sorted(bad)}")
        rows = [
            r
            for r in self.rows
            if (not wanted or r.kind in wanted) and (not leaves_only or r.kind != "block")
        ]
        return LayerTable(rows, self.input_shape, self.total_params)

    def spatial(self) -> LayerTable:
        """Only layers whose output is a 4-D map."""
        return LayerTable([r for r in self.rows if r.spatial], self.input_shape, self.total_params)

    def channels_last(self) -> set[str]:
        """The layers computed in (N, H, W, C) (ConvNeXt's norm and MLP): hooks hand them over
        as (N, C, H, W) (:func:`~convlens.core.hooks.forward_hooks`, ``channels_last=``)."""
        return {r.name for r in self.rows if r.channels_last}

    def last_spatial(self) -> LayerInfo:
        """The last layer to return a map larger than 1x1 in the forward pass, among single
        outputs: layers called once and each call of a reused module (``_swish#2``; the module
        itself has no single output). This is the default layer of the CAM methods."""
        rows = [
            r
            for r in self.rows
            if r.spatial
            and r.calls == 1
            and r.output_shape is not None
            and r.output_shape[2] * r.output_shape[3] > 1
        ]
        if not rows:
            raise ValueError("the model has no layer with a spatial (N, C, h, w) output")
        return max(rows, key=lambda r: r.returned)

    def why_default(self, row: LayerInfo) -> str:
        """Why ``row`` (from :meth:`last_spatial`) is the default layer, in a sentence."""
        shape = "x".join(map(str, row.output_shape[1:])) if row.output_shape else "?"
        why = f"default: {row.name}, the last layer with a spatial output ({shape})"
        if row.call is not None:
            module = row.name.rpartition("#")[0]
            why += (
                f"; {module} is one module that runs {self.get(module).calls} times in a "
                f"forward pass, and its call {row.call} is the last map (the module itself "
                "names every call)"
            )
        if row.channels_last:
            why += "; computed channels-last, captured as (N, C, H, W)"
        return why

    def to_dicts(self) -> list[dict[str, Any]]:
        return [
            {
                "name": r.name,
                "type": r.type,
                "kind": r.kind,
                "output_shape": list(r.output_shape) if r.output_shape else None,
                "params": r.params,
                "calls": r.calls,
                "channels_last": r.channels_last,
                "note": r.note,
            }
            for r in self.rows
        ]

    def __str__(self) -> str:
        header = ("layer", "type", "output shape", "params", "note")
        present = set(self.names)
        nested = all(
            r.depth == 0 or r.name.split("#")[0].rsplit(".", 1)[0] in present for r in self.rows
        )
        # indent only when every parent is in the table
        lines = [
            (
                "  " * r.depth * nested + r.name,
                r.type,
                "x".join(map(str, r.output_shape)) if r.output_shape else "-",
                f"{r.params:,}",
                r.note,
            )
            for r in self.rows
        ]
        widths = [max([len(h), *(len(line[i]) for line in lines)]) for i, h in enumerate(header)]
        fmt = (
            "  ".join(f"{{:<{w}}}" for w in widths[:-2])
            + f"  {{:>{widths[-2]}}}  {{:<{widths[-1]}}}"
        )
        out = [fmt.format(*header).rstrip(), fmt.format(*("-" * w for w in widths))]
        out += [fmt.format(*line).rstrip() for line in lines]
        out.append(f"total parameters: {self.total_params:,}")
        return "\n".join(out)

    def _repr_html_(self) -> str:
        from html import escape

        body = "".join(
            f"<tr><td style='padding-left:{0.3 + r.depth}em'><code>{escape(r.name)}</code></td>"
            f"<td>{escape(r.type)}</td><td>{'x'.join(map(str, r.output_shape or ())) or '-'}"
            f"</td><td style='text-align:right'>{r.params:,}</td><td>{escape(r.note)}</td></tr>"
            for r in self.rows
        )
        return (
            "<table><thead><tr><th>layer</th><th>type</th><th>output shape</th><th>params</th>"
            "<th>note</th>"
            f"</tr></thead><tbody>{body}</tbody></table><p>total parameters: "
            f"{self.total_params:,}</p>"
        )


class _Layouts:
    """Which 4-D outputs of a dry run are channels-last (N, H, W, C), the layout ConvNeXt's
    norm and MLP run in: a ``Linear`` or a plain ``LayerNorm`` on a 4-D tensor works on its
    last dimension, so that dimension is the channels; a permute module to (0, 2, 3, 1)
    (torchvision's ``Permute``) makes channels last and one to (0, 3, 1, 2) undoes it; a layer
    fed a channels-last tensor that returns the same shape (an activation, dropout, stochastic
    depth, a container of such) keeps it; a container returns its last child's tensor, which
    is recognised by identity. The channels-last tensors are kept until the table is made, so
    no other tensor can take over one's identity."""

    def __init__(self) -> None:
        self.kept: dict[int, torch.Tensor] = {}

    def _is_last(self, tensor: torch.Tensor | None) -> bool:
        return tensor is not None and self.kept.get(id(tensor)) is tensor

    def mark(self, module: nn.Module, given: torch.Tensor | None, out: torch.Tensor) -> bool:
        if out.dim() != 4:
            return False
        dims = getattr(module, "dims", None)
        if self._is_last(out):
            last = True
        elif isinstance(dims, (list, tuple)) and len(dims) == 4:
            last = list(dims) == [0, 2, 3, 1]
        elif (
            given is not None
            and given.dim() == 4
            and (
                isinstance(module, nn.Linear)
                or (
                    isinstance(module, nn.LayerNorm)
                    and type(module).forward is nn.LayerNorm.forward
                )
            )
        ):
            last = True
        else:
            last = self._is_last(given) and given is not None and given.shape == out.shape
        if last:
            self.kept[id(out)] = out
        return last


def may_run_channels_last(module: nn.Module) -> bool:
    """Whether a network has the layers that make channels-last regions (a plain
    ``LayerNorm``, a permute module): only then does a capture need the layer table to know
    its layouts."""
    return any(
        (isinstance(m, nn.LayerNorm) and type(m).forward is nn.LayerNorm.forward)
        or isinstance(getattr(m, "dims", None), (list, tuple))
        for m in module.modules()
    )


def layer_table(model: _Handle, input_size: Sequence[int] | None = None) -> LayerTable:
    """The layer table of ``model`` from one dry forward pass of a zero image.

    ``input_size`` is ``(C, H, W)``; by default the model's preprocessing decides it.
    Shapes are taken in eval and ``inference_mode`` by hooks that record ``.shape`` (only
    channels-last outputs are kept, to recognise them), so the cost is about one forward pass.
    """
    module = model.module
    shape = tuple(input_size) if input_size is not None else model.input_shape
    if len(shape) != 3:
        raise ValueError(f"expected input_size (C, H, W), got {shape}")
    names = [n for n, _ in module.named_modules() if n]
    # per call of each module: when it was entered, when it returned, what shape it returned
    entered_at: dict[tuple[str, int], int] = {}
    returned_at: dict[tuple[str, int], int] = {}
    shapes: dict[tuple[str, int], tuple[int, ...]] = {}
    # the calls of a module under way (innermost last), with the input each was given
    running: dict[str, list[tuple[int, torch.Tensor | None]]] = {}
    calls: dict[str, int] = {}
    modules = dict(module.named_modules())
    layouts = _Layouts()

    def entered(name: str, inputs: tuple[Any, ...]) -> None:
        calls[name] = calls.get(name, 0) + 1
        entered_at[name, calls[name]] = len(entered_at)
        running.setdefault(name, []).append((calls[name], first_tensor(inputs)))

    def returned(name: str, output: Any) -> None:
        call, given = running[name].pop() if running.get(name) else (calls.get(name, 1), None)
        returned_at[name, call] = len(returned_at)
        tensor = first_tensor(output)
        if tensor is not None:
            shape = tuple(tensor.shape)
            if layouts.mark(modules[name], given, tensor):
                shape = (shape[0], shape[3], shape[1], shape[2])
                channels_last.add((name, call))
            shapes[name, call] = shape

    channels_last: set[tuple[str, int]] = set()

    if not isinstance(module, torch.jit.ScriptModule):  # no hooks there: no shapes
        x = torch.zeros((1, *shape), device=model.device, dtype=model.dtype)
        with (
            preserved(module),
            forward_hooks(module, names, returned, on_start=entered),
            torch.inference_mode(),
        ):
            model.forward(x)
    rows = []
    for n in names:
        m = modules[n]
        row = LayerInfo(
            name=n,
            type=getattr(m, "original_name", type(m).__name__),
            kind=layer_kind(m),
            output_shape=shapes.get((n, 1)),
            params=sum(p.numel() for p in m.parameters()),
            depth=n.count("."),
            calls=calls.get(n, 0),
            returned=returned_at.get((n, 1), -1),
            channels_last=(n, 1) in channels_last,
            own=tuple(k for k, v in m._parameters.items() if v is not None)
            if any(True for _ in m.children())
            else (),
            norm_act=layer_kind(m) == "norm" and isinstance(getattr(m, "act", None), nn.Module),
        )
        rows.append((entered_at.get((n, 1), len(entered_at)), row))
        reused = calls.get(n, 0) > 1  # one row per call too: name#1, name#2, ...
        for k in range(1, calls[n] + 1) if reused else ():
            rows.append(
                (
                    entered_at[n, k],
                    replace(
                        row,
                        name=call_name(n, k),
                        output_shape=shapes.get((n, k)),
                        params=0,
                        calls=1,
                        returned=returned_at.get((n, k), -1),
                        call=k,
                        channels_last=(n, k) in channels_last,
                        own=(),
                        norm_act=False,
                    ),
                )
            )
    rows.sort(key=lambda item: item[0])
    total = sum(p.numel() for p in module.parameters())
    return LayerTable([row for _, row in rows], shape, total)
