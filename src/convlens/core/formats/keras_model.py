"""Keras 3 files as plain ``torch.nn.Module`` s (the torch backend), so hooks, gradients and
every convlens method work on them as on native PyTorch models.

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

from convlens.core.errors import ModelLoadError
from convlens.core.formats.registry import (
    LoadRequest,
    first_line,
    register_format,
    size_from_graph,
)

_KERAS_HINT = "pip install 'convlens[keras]'"


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
            f"{path.name} could not be read as a Keras model: {first_line(err)}"
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


@register_format(
    "keras",
    suffixes=(".keras", ".h5", ".hdf5"),
    content=("keras", "hdf5"),
    description="Keras 3 models, run by Keras' torch backend (needs convlens[keras])",
)
def read_keras(path: Path, request: LoadRequest) -> Any:
    module = load_keras(path)
    if module.output_activation in ("softmax", "sigmoid"):
        request.options.setdefault("postprocess", "none")  # it returns probabilities already
    size_from_graph(getattr(module, "input_size", None), request.options)
    return module
