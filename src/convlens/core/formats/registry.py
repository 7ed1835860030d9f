"""The table of model file formats: suffixes, what the content must look like, the reader.

A format registers itself in its own module (``@register_format(...)`` on its reader), so a
new format is one new file plus one import line in :mod:`convlens.core.formats`. A file is
recognised by its content (:func:`sniff`), and the suffix must agree: a ``.onnx`` file that
is really a pickle is refused before anything reads it.

A reader gets the path and a :class:`LoadRequest` (the user's ``factory``, ``trust_pickle``
and the handle options, which it may fill in: a name, a preprocessing) and returns what it
found: a :class:`~convlens.core.model.Model`, a :class:`~convlens.core.detector.Detector` or a
bare ``nn.Module``; :func:`convlens.core.loading.load` makes the handle.
"""

from __future__ import annotations

import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from convlens.core.errors import ModelLoadError
from convlens.core.model import Preprocessing
from convlens.core.registry import Registry


@dataclass
class LoadRequest:
    """What the user asked for beside the path."""

    factory: str | Callable[[], Any] | None = None
    trust_pickle: bool = False
    options: dict[str, Any] = field(default_factory=dict)
    content: str = ""  # what sniff() found, set by read()


Reader = Callable[[Path, LoadRequest], Any]


@dataclass(frozen=True)
class ModelFormat:
    """One file format: ``suffixes`` it is saved with, the :func:`sniff` results its content
    may give, and its reader."""

    name: str
    suffixes: tuple[str, ...]
    content: tuple[str, ...]
    read: Reader
    description: str


FORMATS: Registry[ModelFormat] = Registry("model format")


def register_format(
    name: str, *, suffixes: tuple[str, ...], content: tuple[str, ...], description: str
) -> Callable[[Reader], Reader]:
    """Add a file format whose reader is the decorated function."""

    def add(read: Reader) -> Reader:
        taken = {s for f in FORMATS.entries.values() for s in f.suffixes} & set(suffixes)
        if taken:
            raise ValueError(f"model format {name!r}: suffixes {sorted(taken)} are taken")
        FORMATS.add(name, ModelFormat(name, suffixes, content, read, description))
        return read

    return add


def suffixes() -> dict[str, str]:
    """Every known model file suffix -> its format's name."""
    return {s: f.name for f in FORMATS.entries.values() for s in f.suffixes}


def format_of(path: Path) -> ModelFormat | None:
    """The format a file's suffix declares, or ``None``."""
    name = suffixes().get(path.suffix.lower())
    return FORMATS.entries[name] if name else None


def sniff(path: Path) -> str:
    """What a file holds, from its first bytes: ``torchscript``, ``torch`` (a ``torch.save``
    zip), ``torch-legacy`` (old pickle format), ``keras``, ``hdf5``, ``safetensors``, ``onnx``
    (protobuf: checked by parsing later), ``zip`` (any other zip, e.g. NumPy's ``.npz``),
    ``python`` or ``unknown``."""
    with path.open("rb") as f:
        head = f.read(16)
    if not head:
        return "empty"
    if head.startswith(b"PK\x03\x04"):
        return _sniff_zip(path)
    if head.startswith(b"\x89HDF\r\n\x1a\n"):
        return "hdf5"
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "torch-legacy"
    if len(head) >= 8 and int.from_bytes(head[:8], "little") < 100_000_000 and head[8:9] == b"{":
        return "safetensors"
    if path.suffix.lower() == ".py":
        return "python"
    if head[:1] in (b"\x08", b"\x0a", b"\x12", b"\x1a", b"\x22", b"\x3a", b"\x42"):
        return "onnx"  # a protobuf field tag; parsing decides
    return "unknown"


def _sniff_zip(path: Path) -> str:
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except zipfile.BadZipFile:
        return "unknown"
    if any(n.endswith("config.json") for n in names) and not any(
        n.endswith("data.pkl") for n in names
    ):
        return "keras"
    if any("/code/" in n or n.endswith("constants.pkl") for n in names):
        return "torchscript"
    if any(n.endswith("data.pkl") for n in names):
        return "torch"
    return "zip"


def read(path: Path, request: LoadRequest) -> Any:
    """Read a model file: its suffix names the format, its content must agree."""
    if path.is_dir():
        raise ModelLoadError(f"{path} is a folder; expected a model file")
    fmt = format_of(path)
    if fmt is None:
        raise ModelLoadError(
            f"{path.name}: unknown model file type {path.suffix!r}; expected one of "
            f"{', '.join(sorted(suffixes()))}"
        )
    found = sniff(path)
    if found == "empty":
        raise ModelLoadError(f"{path} is empty (0 bytes)")
    if found not in fmt.content:
        raise ModelLoadError(
            f"{path.name} has the suffix {path.suffix} ({fmt.name}) but its content looks like "
            f"{found!r}; rename it or re-export it"
        )
    request.content = found
    request.options.setdefault("name", path.stem)
    return fmt.read(path, request)


# -- what several readers share ----------------------------------------------------------------


def first_line(err: BaseException) -> str:
    text = str(err).strip() or type(err).__name__
    return text.splitlines()[0]


def size_from_graph(size: tuple[int | None, ...] | None, options: dict[str, Any]) -> None:
    """A graph with a fixed (C, H, W) input gets pictures resized and cropped to that size
    and scaled to [0, 1] (no normalisation: pass ``preprocess=`` when the model wants one)."""
    if not size or len(size) != 3 or None in size or size[0] not in (1, 3):
        return
    channels, height, width = (int(v) for v in size)  # type: ignore[arg-type]
    options.setdefault("input_size", (channels, height, width))
    options.setdefault(
        "preprocess",
        Preprocessing(
            crop=(height, width),
            resize=min(height, width),
            mean=(0.0,) * channels,
            std=(1.0,) * channels,
            channels=channels,
        ),
    )


def state_dict_of(content: Mapping[str, Any]) -> Mapping[str, torch.Tensor] | None:
    """The tensors of a state dict, also when a checkpoint nests them under a usual key."""
    if content and all(isinstance(v, torch.Tensor) for v in content.values()):
        return content
    for key in ("state_dict", "model_state_dict", "model", "net", "weights"):
        inner = content.get(key)
        if (
            isinstance(inner, Mapping)
            and inner
            and all(isinstance(v, torch.Tensor) for v in inner.values())
        ):
            return inner
    return None


def fill(module: nn.Module, state: Mapping[str, torch.Tensor], path: Path, what: str) -> None:
    """Load ``state`` into ``module`` strictly and put it in eval mode; a mismatch says which
    keys are missing or unexpected, or which shapes differ."""
    expected = set(module.state_dict())
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise ModelLoadError(
            f"the weights in {path.name} do not fit {what}: {len(missing)} missing "
            f"(e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]})"
        )
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as err:  # shape mismatches
        raise ModelLoadError(f"the weights in {path.name} do not fit: {err}") from None
    module.eval()


def with_factory(
    path: Path, state: Mapping[str, Any], request: LoadRequest, resolve: Callable[[Any], Any]
) -> Any:
    """Weights without a network: the user's ``factory`` builds the network, the weights fill
    it strictly. ``resolve`` turns the factory spec into a callable."""
    tensors = state_dict_of(state)
    if tensors is None:
        keys = ", ".join(list(map(str, state))[:8])
        raise ModelLoadError(
            f"{path.name} is a mapping but holds no state_dict of tensors (keys: {keys})"
        )
    if request.factory is None:
        raise ModelLoadError(
            f"{path.name} holds only weights (a state_dict of {len(tensors)} tensors); say which "
            "network they belong to with factory='package.module:function' (CLI: --factory)"
        )
    built = resolve(request.factory)()
    module = getattr(built, "module", built)
    if not isinstance(module, nn.Module):
        raise ModelLoadError(f"factory returned {type(built).__name__}, expected an nn.Module")
    fill(module, tensors, path, "the factory's network")
    return built
