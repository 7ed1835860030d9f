"""ONNX files as plain ``torch.nn.Module`` s (converted with onnx2torch), so hooks, gradients
and every convlens method work on them as on native PyTorch models.

ONNX (:func:`load_onnx`)
    The graph is converted with `onnx2torch <https://github.com/ENOT-AutoDL/onnx2torch>`_ into a
    ``torch.fx.GraphModule`` with one submodule per ONNX node. Layer names are the ONNX node
    names with ``.`` replaced by ``/`` and the leading ``/`` dropped (onnx2torch's rule), and
    ``:`` replaced by ``_`` (convlens uses ``:`` for ``layer:channel``). A model exported by
    ``torch.onnx.export(..., dynamo=False)`` therefore names the first convolution of
    ``features[0]`` ``features/features/0/Conv``; nodes without a name are named by their
    operator (``Conv``, ``Conv_1``, ...). The names hold no dots, so each is one step of a
    dotted path and ``module.get_submodule(name)`` finds every name ``named_modules()`` lists.
    onnx2torch knows operators up to about opset 17: graphs from the dynamo exporter (the
    default of ``torch.onnx.export`` since torch 2.9, opset 18 and later) often fail to
    convert; re-export them with ``dynamo=False, opset_version=17``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from convlens.core.errors import ModelLoadError
from convlens.core.formats.registry import (
    LoadRequest,
    first_line,
    register_format,
    size_from_graph,
)

_ONNX_HINT = "pip install 'convlens[onnx]'"


# -- ONNX -------------------------------------------------------------------------------------


def load_onnx(path: str | Path) -> nn.Module:
    """An ONNX file as a ``torch.fx.GraphModule`` in eval mode (see the module docstring for
    layer names). Raises :class:`~convlens.loading.ModelLoadError` for a file that is not a
    valid ONNX model or holds operators onnx2torch cannot convert."""
    try:
        import onnx
        import onnx2torch
    except ImportError as err:
        raise ImportError(
            f"loading .onnx files needs the onnx and onnx2torch packages: {_ONNX_HINT} ({err})"
        ) from err
    path = Path(path)
    try:
        model = onnx.load(str(path))
        onnx.checker.check_model(str(path))
    except Exception as err:
        raise ModelLoadError(f"{path.name} is not a valid ONNX model: {first_line(err)}") from None
    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)
    try:
        module = onnx2torch.convert(model)
    except Exception as err:
        hint = (
            f"; the graph uses opset {opset}, newer than onnx2torch supports for some "
            "operators: re-export it with torch.onnx.export(..., dynamo=False, "
            "opset_version=17)"
            if opset > 17
            else ""
        )
        raise ModelLoadError(
            f"{path.name} is valid ONNX but cannot be converted to PyTorch by onnx2torch: "
            f"{first_line(err)}{hint}"
        ) from err
    _rename_submodules(module, lambda name: name.replace(":", "_").replace(".", "/"))
    module.input_size = _onnx_input_size(model)
    return module.eval()


def _onnx_input_size(model: Any) -> tuple[int | None, ...] | None:
    """(C, H, W) of the graph's first 4-D input (``None`` for symbolic sizes), if it has one."""
    initializers = {t.name for t in model.graph.initializer}
    for graph_input in model.graph.input:
        if graph_input.name in initializers:
            continue
        dims = graph_input.type.tensor_type.shape.dim
        if len(dims) == 4:
            return tuple(d.dim_value if d.HasField("dim_value") else None for d in dims[1:])
        return None
    return None


def _rename_submodules(module: torch.fx.GraphModule, clean: Callable[[str], str]) -> None:
    """Rename the direct submodules of ``module`` with ``clean`` (kept unique, order kept)
    and point the graph at the new names."""
    names = list(module._modules)
    renames: dict[str, str] = {}
    taken = set(names)
    for name in names:
        new = clean(name)
        if new == name:
            continue
        base, k = new, 1
        while new in taken:
            new, k = f"{base}_{k}", k + 1
        taken.add(new)
        renames[name] = new
    if not renames:
        return
    children = [(renames.get(n, n), module._modules[n]) for n in names]
    for name in names:
        delattr(module, name)
    for name, child in children:
        module.add_module(name, child)
    for node in module.graph.nodes:
        if node.op == "call_module" and node.target in renames:
            node.target = renames[node.target]
    module.recompile()


@register_format(
    "onnx",
    suffixes=(".onnx",),
    content=("onnx",),
    description="ONNX graphs, converted with onnx2torch (needs convlens[onnx])",
)
def read_onnx(path: Path, request: LoadRequest) -> Any:
    module = load_onnx(path)
    size_from_graph(getattr(module, "input_size", None), request.options)
    return module
