"""PyTorch files: TorchScript archives, ``torch.save`` checkpoints and whole pickled models.

Checkpoints are read with ``torch.load(weights_only=True)``: a file that holds pickled Python
objects (a whole model saved with ``torch.save(model)``) is refused unless the user passes
``trust_pickle=True``, because unpickling runs code from the file. What a checkpoint may hold:

* a ``convlens train`` checkpoint (``convlens_checkpoint``: an architecture name and options,
  weights, labels, preprocessing), rebuilt through :mod:`convlens.core.architectures`;
* a ``convlens-centernet`` detector checkpoint (``convlens train --task detect``);
* a ``convlens-segmenter`` checkpoint (``convlens train --task segment``), a
  :class:`~convlens.core.segmenter.Segmenter`;
* a bare ``state_dict`` (also nested under ``state_dict``, ``model``, ...): the user's
  ``factory=`` builds the network and the weights fill it strictly.
"""

from __future__ import annotations

import pickle
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from convlens.core import architectures, segmenter
from convlens.core.architectures import centernet
from convlens.core.detector import Detector
from convlens.core.errors import ModelLoadError, PickleRefusedError
from convlens.core.formats.registry import LoadRequest, fill, register_format, with_factory
from convlens.core.model import Model, Preprocessing

CHECKPOINT_VERSION = 1


@register_format(
    "torch",
    suffixes=(".pt", ".pth", ".ckpt", ".bin", ".tar"),
    content=("torchscript", "torch", "torch-legacy"),
    description="TorchScript archives, torch.save checkpoints (state_dict + factory, convlens "
    "checkpoints); whole pickled models only with trust_pickle",
)
def read_torch(path: Path, request: LoadRequest) -> Any:
    """A TorchScript archive as a module, or what a checkpoint holds (see the module docs)."""
    if request.content == "torchscript":
        try:
            return torch.jit.load(str(path), map_location="cpu")
        except Exception as err:
            raise ModelLoadError(
                f"{path.name} is a TorchScript archive that failed to load: {err}"
            ) from err
    content = read_checkpoint(path, trust_pickle=request.trust_pickle)
    if isinstance(content, Mapping) and content.get("format") == centernet.FORMAT:
        module, classes = centernet.from_content(content, path)
        return Detector(module, classes, name=path.stem, to_input=lambda x: x, layer="backbone")
    if isinstance(content, Mapping) and content.get("format") == segmenter.FORMAT:
        return segmenter.from_content(content, path.name)
    if isinstance(content, (Model, nn.Module)):
        return content
    if isinstance(content, Mapping) and "convlens_checkpoint" in content:
        return from_convlens_checkpoint(path, content, request)
    if isinstance(content, Mapping):
        return with_factory(path, content, request, architectures.resolve_factory)
    raise ModelLoadError(
        f"{path.name} holds a {type(content).__name__}; expected a state_dict (a mapping of "
        "tensors), a TorchScript archive or a whole model"
    )


def read_checkpoint(path: Path, *, trust_pickle: bool = False) -> Any:
    """``torch.load`` with ``weights_only=True``; pickles only when ``trust_pickle``. torch's
    own warnings and advice (to load with ``weights_only=False``) are not passed on: the
    refusal says what is in the file and how to load it safely."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if not trust_pickle:
            raise PickleRefusedError(
                f"{path.name} holds pickled Python objects (probably a whole model saved with "
                "torch.save(model)). Unpickling runs code from the file, so convlens refuses it. "
                "If you trust the file, pass trust_pickle=True (CLI: --trust-pickle); better, "
                "save model.state_dict() and load it with factory='package.module:function'."
                f"{_what_torch_found(err)}"
            ) from None
        return torch.load(str(path), map_location="cpu", weights_only=False)
    except Exception as err:
        raise ModelLoadError(f"{path.name} is not a readable torch checkpoint: {err}") from err


def _what_torch_found(err: BaseException) -> str:
    """The object torch's safe unpickler refused (``GLOBAL torch.nn.Linear``), if it says."""
    for line in str(err).splitlines():
        if "Unsupported global" in line or "GLOBAL" in line:
            found = line.split("Unsupported global:")[-1].strip()
            return f" (it holds {found.split(' was not')[0]})"
    return ""


def from_convlens_checkpoint(path: Path, content: Mapping[str, Any], request: LoadRequest) -> Model:
    """A checkpoint written by ``convlens train``: the architecture (a registered name and its
    options, or the user factory it was trained with), weights, labels and preprocessing.
    A user factory is never imported because the file names it: the caller passes it."""
    version = content.get("convlens_checkpoint")
    if version != CHECKPOINT_VERSION:
        raise ModelLoadError(
            f"{path.name} is a convlens checkpoint of format {version!r}; this convlens reads "
            f"format {CHECKPOINT_VERSION} (upgrade convlens)"
        )
    needed = ("architecture", "state_dict", "labels", "preprocess", "input_size")
    missing = [key for key in needed if key not in content]
    arch = content.get("architecture")
    state = content.get("state_dict")
    if missing or not isinstance(arch, Mapping) or not isinstance(state, Mapping):
        raise ModelLoadError(
            f"{path.name} is a broken convlens checkpoint: expected the keys "
            f"{', '.join(needed)} (architecture and state_dict as mappings); missing "
            f"{', '.join(missing) or 'none'}"
        )
    module = _rebuild(path, arch, request.factory)
    fill(module, state, path, "its architecture")
    record = dict(content["preprocess"])
    for key in ("crop", "mean", "std"):
        if isinstance(record.get(key), list):
            record[key] = tuple(record[key])
    try:
        preprocess = Preprocessing(**record)
        height, width = (int(v) for v in content["input_size"])
    except (TypeError, ValueError) as err:
        raise ModelLoadError(f"{path.name} has a broken preprocessing record: {err}") from None
    options = request.options
    if options.get("name") == path.stem and content.get("name"):
        options["name"] = str(content["name"])
    options.setdefault("preprocess", preprocess)
    options.setdefault("labels", list(content["labels"]))
    options.setdefault("input_size", (preprocess.channels, height, width))
    return Model(module, **options)


def _rebuild(path: Path, arch: Mapping[str, Any], factory: Any) -> nn.Module:
    arch_options = dict(arch.get("options") or {})
    try:
        if "factory" in arch:
            if factory is None:
                raise ModelLoadError(
                    f"{path.name} was trained with the user network {arch['factory']!r}; "
                    "convlens does not import code named by a file. If you trust it, pass "
                    f"factory={arch['factory']!r} (CLI: --factory {arch['factory']})"
                )
            return architectures.build(factory, **arch_options)
        name = str(arch.get("name"))
        if name not in architectures.names():
            raise ModelLoadError(
                f"{path.name} needs the architecture {name!r}, which this convlens does not "
                f"have (it has {', '.join(architectures.names())})"
            )
        return architectures.build(name, **arch_options)
    except (TypeError, ValueError) as err:
        if isinstance(err, ModelLoadError):
            raise
        raise ModelLoadError(f"cannot rebuild the network of {path.name}: {err}") from None
