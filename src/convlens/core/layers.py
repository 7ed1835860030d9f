"""The layer table: every named layer with its type, output shape and parameter count."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import nn

from convlens.core.hooks import first_tensor, forward_hooks
from convlens.core.naming import unknown


class _Handle(Protocol):
    """What the table needs of a :class:`~convlens.core.model.Model`."""

    module: nn.Module
    input_shape: tuple[int, ...]
    device: torch.device
    dtype: torch.dtype

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

    def last_spatial(self) -> LayerInfo:
        """The last layer to return a map larger than 1x1 in the forward pass, among layers
        called once (a module reused several times, like ResNet's shared ReLU, has no single
        output). This is the default layer of the CAM methods."""
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

    def to_dicts(self) -> list[dict[str, Any]]:
        return [
            {
                "name": r.name,
                "type": r.type,
                "kind": r.kind,
                "output_shape": list(r.output_shape) if r.output_shape else None,
                "params": r.params,
            }
            for r in self.rows
        ]

    def __str__(self) -> str:
        header = ("layer", "type", "output shape", "params")
        present = set(self.names)
        nested = all(r.depth == 0 or r.name.rsplit(".", 1)[0] in present for r in self.rows)
        # indent only when every parent is in the table
        lines = [
            (
                "  " * r.depth * nested + r.name,
                r.type,
                "x".join(map(str, r.output_shape)) if r.output_shape else "-",
                f"{r.params:,}",
            )
            for r in self.rows
        ]
        widths = [max([len(h), *(len(line[i]) for line in lines)]) for i, h in enumerate(header)]
        fmt = "  ".join(f"{{:<{w}}}" for w in widths[:-1]) + f"  {{:>{widths[-1]}}}"
        out = [fmt.format(*header), fmt.format(*("-" * w for w in widths))]
        out += [fmt.format(*line) for line in lines]
        out.append(f"total parameters: {self.total_params:,}")
        return "\n".join(out)

    def _repr_html_(self) -> str:
        from html import escape

        body = "".join(
            f"<tr><td style='padding-left:{0.3 + r.depth}em'><code>{escape(r.name)}</code></td>"
            f"<td>{escape(r.type)}</td><td>{'x'.join(map(str, r.output_shape or ())) or '-'}"
            f"</td><td style='text-align:right'>{r.params:,}</td></tr>"
            for r in self.rows
        )
        return (
            "<table><thead><tr><th>layer</th><th>type</th><th>output shape</th><th>params</th>"
            f"</tr></thead><tbody>{body}</tbody></table><p>total parameters: "
            f"{self.total_params:,}</p>"
        )


def layer_table(model: _Handle, input_size: Sequence[int] | None = None) -> LayerTable:
    """The layer table of ``model`` from one dry forward pass of a zero image.

    ``input_size`` is ``(C, H, W)``; by default the model's preprocessing decides it.
    Shapes are taken in ``inference_mode`` by hooks that only record ``.shape`` (no tensors
    are kept), so the cost is about one forward pass.
    """
    module = model.module
    shape = tuple(input_size) if input_size is not None else model.input_shape
    if len(shape) != 3:
        raise ValueError(f"expected input_size (C, H, W), got {shape}")
    names = [n for n, _ in module.named_modules() if n]
    shapes: dict[str, tuple[int, ...]] = {}
    order: dict[str, int] = {}

    calls: dict[str, int] = {}
    returns: dict[str, int] = {}

    def entered(name: str, _inputs: tuple[Any, ...]) -> None:
        order.setdefault(name, len(order))
        calls[name] = calls.get(name, 0) + 1

    def returned(name: str, output: Any) -> None:
        tensor = first_tensor(output)
        returns.setdefault(name, len(returns))
        if name not in shapes and tensor is not None:
            shapes[name] = tuple(tensor.shape)

    if not isinstance(module, torch.jit.ScriptModule):  # no hooks there: no shapes
        x = torch.zeros((1, *shape), device=model.device, dtype=model.dtype)
        with forward_hooks(module, names, returned, on_start=entered), torch.inference_mode():
            model.forward(x)
    modules = dict(module.named_modules())
    called = sorted(names, key=lambda n: order.get(n, len(names)))
    rows = [
        LayerInfo(
            name=n,
            type=getattr(modules[n], "original_name", type(modules[n]).__name__),
            kind=layer_kind(modules[n]),
            output_shape=shapes.get(n),
            params=sum(p.numel() for p in modules[n].parameters()),
            depth=n.count("."),
            calls=calls.get(n, 0),
            returned=returns.get(n, -1),
        )
        for n in called
    ]
    total = sum(p.numel() for p in module.parameters())
    return LayerTable(rows, shape, total)
