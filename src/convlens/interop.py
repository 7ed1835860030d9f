"""Models from other frameworks as plain ``torch.nn.Module`` s: ONNX and Keras 3.

Both loaders return a module that maps an (N, C, H, W) float tensor to the network's output,
so hooks, gradients and every convlens method work on them as on native PyTorch models.

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

Keras 3 (:func:`load_keras`)
    The file is read by Keras with its PyTorch backend (``KERAS_BACKEND=torch``; set it before
    anything imports keras). Under that backend every Keras layer is a ``torch.nn.Module`` and
    is called through ``nn.Module.__call__``, but Keras does not register sublayers as children
    (``named_modules()`` of a Keras model lists only a ``_torch_params`` dict) and its
    tensors are channels-last (N, H, W, C).

    :class:`KerasModule` therefore mirrors the Keras layer tree with one proxy module per layer
    (:class:`KerasLayer`), named by the Keras layer name (``conv2d``, ``dense``, nested models
    as ``base.block_1_expand``; ``.`` and ``:`` in names become ``_``; input layers are left
    out). Each proxy's class is named after the Keras class (``Conv2D``, ``Dense``), and it
    holds the layer's own weights (trainable ones as parameters named by Keras, ``kernel`` and
    ``bias``; non-trainable ones such as ``moving_mean`` as buffers), so ``parameters()``,
    ``device`` and weight hashes see the real Keras tensors (the same objects, not copies).

    The Keras layer's ``forward`` is routed through its proxy: the proxy is called with the
    layer's inputs in channels-first layout, runs the Keras layer on them in channels-last
    layout and returns its output in channels-first layout, which the Keras graph turns back
    into channels-last. Numerically the permutations cancel (they are views), but every hook
    on a proxy -- forward pre-hooks, forward hooks and full backward hooks -- fires at the
    layer's place in the call order and sees (N, C, h, w) tensors, a tensor a forward hook
    returns replaces the layer's output downstream, and ``torch.autograd.grad(score,
    activation)`` works on a captured activation. In a channels-last model every 4-D tensor
    between layers is taken to be (N, H, W, C); other ranks pass unchanged. A model whose
    layers all use ``data_format="channels_first"`` takes (N, C, H, W) directly and nothing
    is permuted.

    The device is the one Keras chose for the weights (``KERAS_TORCH_DEVICE``, else CUDA when
    available). ``train()`` / ``eval()`` on the wrapper set Keras' ``training`` argument.
"""

from __future__ import annotations

import os
import sys
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from convlens.loading import ModelLoadError

__all__ = ["KerasLayer", "KerasModule", "load_keras", "load_onnx"]

_ONNX_HINT = "pip install 'convlens[onnx]'"
_KERAS_HINT = "pip install 'convlens[keras]'"


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
        raise ModelLoadError(f"{path.name} is not a valid ONNX model: {_first_line(err)}") from None
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
            f"{_first_line(err)}{hint}"
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


def _first_line(err: BaseException) -> str:
    text = str(err).strip() or type(err).__name__
    return text.splitlines()[0]


# -- Keras ------------------------------------------------------------------------------------


def _import_keras() -> Any:
    os.environ.setdefault("KERAS_BACKEND", "torch")
    already = "keras" in sys.modules
    try:
        import keras
    except ImportError as err:
        raise ImportError(
            f"loading Keras models needs Keras 3 with its PyTorch backend: {_KERAS_HINT} ({err})"
        ) from err
    backend = keras.backend.backend()
    if backend != "torch":
        how = "keras was imported" if already else f"KERAS_BACKEND={os.environ['KERAS_BACKEND']}"
        raise ImportError(
            f"convlens runs Keras models with the 'torch' backend, but Keras uses {backend!r} "
            f"({how}). Set the environment variable KERAS_BACKEND=torch before anything "
            "imports keras (e.g. at the top of your script, or in the shell)."
        )
    return keras


def load_keras(path: str | Path) -> KerasModule:
    """A Keras 3 ``.keras`` / ``.h5`` file as a :class:`KerasModule` in eval mode.

    The file is read with ``keras.saving.load_model(path, compile=False)`` (Keras' safe mode
    stays on: ``Lambda`` layers holding Python code are refused). Raises
    :class:`~convlens.loading.ModelLoadError` when Keras cannot read it.
    """
    keras = _import_keras()
    path = Path(path)
    _check_keras_container(path)
    try:
        model = keras.saving.load_model(str(path), compile=False)
    except ImportError as err:  # h5py for .h5 files
        raise ImportError(f"reading {path.name} needs {err}: {_KERAS_HINT}") from err
    except Exception as err:
        raise ModelLoadError(
            f"{path.name} could not be read as a Keras model: {_first_line(err)}"
        ) from None
    if not isinstance(model, keras.Model):
        raise ModelLoadError(f"{path.name} holds a {type(model).__name__}, expected a Keras Model")
    return KerasModule(model).eval()


def _check_keras_container(path: Path) -> None:
    """Keras' own message for a file of the wrong kind is "File not found"; say what is wrong."""
    if not path.is_file():
        raise FileNotFoundError(f"model file {str(path)!r} does not exist")
    with path.open("rb") as f:
        head = f.read(8)
    if path.suffix.lower() in (".h5", ".hdf5"):
        if head != b"\x89HDF\r\n\x1a\n":
            raise ModelLoadError(
                f"{path.name} is not an HDF5 file (a legacy Keras .h5 model starts with the "
                "HDF5 signature)"
            )
    elif not zipfile.is_zipfile(path):
        raise ModelLoadError(
            f"{path.name} is not a Keras archive (a .keras model is a zip archive holding "
            "config.json and the weights)"
        )


def _sublayers(layer: Any) -> list[Any]:
    """The direct sublayers of a Keras layer or model (input layers left out)."""
    if hasattr(layer, "_flatten_layers"):
        found = list(layer._flatten_layers(include_self=False, recursive=False))
    else:  # pragma: no cover - other Keras versions
        found = list(getattr(layer, "layers", []))
    return [sub for sub in found if type(sub).__name__ != "InputLayer"]


def _clean_name(name: str) -> str:
    return name.replace(".", "_").replace(":", "_") or "layer"


def _unique(name: str, taken: set[str]) -> str:
    new, k = name, 1
    while new in taken:
        new, k = f"{name}_{k}", k + 1
    taken.add(new)
    return new


def _map_tensors(fn: Callable[[torch.Tensor], torch.Tensor], value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return fn(value)
    if isinstance(value, (list, tuple)):
        return type(value)(_map_tensors(fn, v) for v in value)
    if isinstance(value, dict):
        return {k: _map_tensors(fn, v) for k, v in value.items()}
    return value


def _to_channels_first(x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, 3, 1, 2) if x.dim() == 4 else x


def _to_channels_last(x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, 2, 3, 1) if x.dim() == 4 else x


_PROXY_CLASSES: dict[str, type[KerasLayer]] = {}


class KerasLayer(nn.Module):
    """The torch face of one Keras layer inside a :class:`KerasModule`.

    Calling it with (N, C, H, W) inputs runs the Keras layer on (N, H, W, C) views and
    returns its output as (N, C, h, w); 4-D tensors only, other ranks pass unchanged. The
    class of each proxy is a subclass named after the Keras class (``Conv2D``), so layer
    tables show Keras types. The Keras layer is ``keras_layer`` (not a registered child).
    """

    keras_layer: Any
    channels_last: bool

    def __init__(self, keras_layer: Any, *, channels_last: bool) -> None:
        super().__init__()
        object.__setattr__(self, "keras_layer", keras_layer)
        self.channels_last = channels_last
        taken: set[str] = set()
        for variable in _own_variables(keras_layer):
            value = variable.value
            if not isinstance(value, torch.Tensor):
                continue
            name = _unique(_clean_name(str(variable.name).rsplit("/", 1)[-1]), taken)
            if isinstance(value, nn.Parameter) and variable.trainable:
                self.register_parameter(name, value)
            else:
                self.register_buffer(name, value)

    @classmethod
    def for_layer(cls, keras_layer: Any, *, channels_last: bool) -> KerasLayer:
        kind = type(keras_layer).__name__
        proxy_class = _PROXY_CLASSES.get(kind)
        if proxy_class is None:
            proxy_class = type(kind, (cls,), {"__module__": __name__, "__doc__": cls.__doc__})
            _PROXY_CLASSES[kind] = proxy_class
        return proxy_class(keras_layer, channels_last=channels_last)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        layer = self.keras_layer
        if self.channels_last:
            args = _map_tensors(_to_channels_last, args)
        # The class's forward (Keras' Operation.__call__), not the routed instance one.
        output = type(layer).forward(layer, *args, **kwargs)
        if self.channels_last:
            output = _map_tensors(_to_channels_first, output)
        return output

    def _from_keras(self, *args: Any, **kwargs: Any) -> Any:
        """What the Keras layer's ``forward`` does inside a :class:`KerasModule`."""
        if self.channels_last:
            args = _map_tensors(_to_channels_first, args)
        output = self(*args, **kwargs)
        return _map_tensors(_to_channels_last, output) if self.channels_last else output

    def extra_repr(self) -> str:
        return f"keras name={self.keras_layer.name!r}"


def _own_variables(layer: Any) -> list[Any]:
    own = [
        *getattr(layer, "_trainable_variables", []),
        *getattr(layer, "_non_trainable_variables", []),
    ]
    seen: set[int] = set()
    return [v for v in own if not (id(v) in seen or seen.add(id(v)))]  # type: ignore[func-returns-value]


class KerasModule(nn.Module):
    """A Keras 3 model (PyTorch backend) as a module taking (N, C, H, W) input.

    ``forward`` permutes the input to (N, H, W, C), calls the Keras model with
    ``training=self.training`` and returns its output (a torch tensor, or the Keras output
    structure for several outputs). Gradients flow to the input. The Keras layers appear as
    children named by their Keras names (see the module docstring for how their hooks see
    channels-first tensors).

    Attributes
    ----------
    keras_model:
        The Keras model (not a registered child; its weights are the proxies' parameters).
    channels_last:
        ``True`` unless every layer with a ``data_format`` says ``channels_first``.
    input_size:
        (C, H, W) of one input from the Keras input shape (``None`` for free sizes), or
        ``None`` when the model does not take one 4-D input.
    output_activation:
        The activation of the output layer (``"softmax"``, ``"sigmoid"``, ``"linear"``...),
        or ``None`` when unknown: a ``"softmax"`` model returns probabilities, not logits.
    """

    keras_model: Any

    def __init__(self, keras_model: Any) -> None:
        super().__init__()
        object.__setattr__(self, "keras_model", keras_model)
        formats = {
            getattr(layer, "data_format", None)
            for layer in keras_model._flatten_layers(include_self=True, recursive=True)
        }
        self.channels_last = not ("channels_first" in formats and "channels_last" not in formats)
        self._mirror(keras_model, self, set())
        self.input_size = self._input_size()
        self.output_activation = _output_activation(keras_model)

    def _mirror(self, keras_layer: Any, parent: nn.Module, seen: set[int]) -> None:
        taken: set[str] = set()
        for sub in _sublayers(keras_layer):
            if id(sub) in seen:  # shared layer: one proxy, under its first name
                continue
            seen.add(id(sub))
            proxy = KerasLayer.for_layer(sub, channels_last=self.channels_last)
            parent.add_module(_unique(_clean_name(sub.name), taken), proxy)
            # Route the Keras layer's forward through its proxy (see the module docstring).
            object.__setattr__(sub, "forward", proxy._from_keras)
            self._mirror(sub, proxy, seen)

    def _input_size(self) -> tuple[int | None, ...] | None:
        shape = getattr(self.keras_model, "input_shape", None)
        if not isinstance(shape, tuple) or len(shape) != 4:
            return None
        _, *dims = shape
        return (dims[2], dims[0], dims[1]) if self.channels_last else tuple(dims)

    def forward(self, inputs: torch.Tensor) -> Any:
        """(N, C, H, W) input -> the Keras model's output (e.g. (N, K) scores)."""
        if not isinstance(inputs, torch.Tensor) or inputs.dim() != 4:
            got = tuple(inputs.shape) if isinstance(inputs, torch.Tensor) else type(inputs).__name__
            raise ValueError(f"expected an input batch (N, C, H, W), got {got}")
        x = _to_channels_last(inputs) if self.channels_last else inputs
        return self.keras_model(x, training=self.training)

    def named_keras_layers(self) -> Iterator[tuple[str, Any]]:
        """``(name, keras layer)`` for every proxy, names as in ``named_modules()``."""
        for name, module in self.named_modules():
            if isinstance(module, KerasLayer):
                yield name, module.keras_layer

    def extra_repr(self) -> str:
        return f"keras model={self.keras_model.name!r}, channels_last={self.channels_last}"


def _output_activation(model: Any) -> str | None:
    outputs = getattr(model, "outputs", None) or []
    if len(outputs) != 1:
        return None
    history = getattr(outputs[0], "_keras_history", None)
    layer = getattr(history, "operation", None)
    if layer is None:
        return None
    if type(layer).__name__ == "Softmax":
        return "softmax"
    activation = getattr(layer, "activation", None)
    name = getattr(activation, "__name__", None)
    return str(name) if name is not None else None
