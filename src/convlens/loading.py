"""``convlens.load``: a model handle from whatever the user has.

Accepted sources, tried in this order:

* a :class:`~convlens.model.Model` (returned as is, options applied);
* a ``torch.nn.Module``;
* a zoo name (``"mobilenet_v2"``; see :func:`convlens.zoo.names`);
* a file, recognised by its content (the suffix must agree):
  TorchScript archives, ``torch.save`` checkpoints (a ``state_dict`` plus ``factory=``),
  ``.onnx`` (converted with onnx2torch so hooks and gradients work), Keras 3 ``.keras`` / ``.h5``
  (torch backend), ``.safetensors`` (with ``factory=``), and plugin ``.py`` files that define a
  ``convlens.Model``;
* ``"package.module:factory"``, a callable returning a module or a Model.

Detectors come back as a :class:`~convlens.detection.Detector` rather than a Model: a
zoo detector name (``"toon-detector"``, ``"mtcnn-faces"``), a ``convlens train --task detect``
checkpoint, torchvision's detection networks (or any module with ``task="detect"``), and
plugin files or factories that define a Detector. Their options are the detector's settings
(``labels``, ``name``, ``score_threshold``, ``iou_threshold``, ``max_detections``, ``layer``).

Pickled whole models are refused unless ``trust_pickle=True``: unpickling runs code from the
file. Checkpoints are read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import importlib
import importlib.util
import pickle
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from convlens.model import Model, Preprocessing

if TYPE_CHECKING:
    from convlens.detection import Detector

MODEL_SUFFIXES = {
    ".pt": "torch",
    ".pth": "torch",
    ".ckpt": "torch",
    ".bin": "torch",
    ".tar": "torch",
    ".onnx": "onnx",
    ".keras": "keras",
    ".h5": "keras",
    ".hdf5": "keras",
    ".safetensors": "safetensors",
    ".py": "plugin",
}


class ModelLoadError(ValueError):
    """A model source that cannot be loaded; the message says what was expected."""


class PickleRefusedError(ModelLoadError):
    """The file holds pickled Python objects and the user did not opt in."""


def load(
    source: Any,
    *,
    factory: str | Callable[[], nn.Module] | None = None,
    trust_pickle: bool = False,
    **options: Any,
) -> Model | Detector:
    """Load a model handle from ``source`` (see the module docstring for what is accepted).

    ``factory`` builds the network for a ``state_dict`` checkpoint (``"pkg.mod:fn"`` or a
    callable). ``options`` go to :class:`~convlens.model.Model` (``preprocess``,
    ``postprocess``, ``labels``, ``name``, ``input_size``) and override what the source says.
    A detector comes back as a :class:`~convlens.detection.Detector` (see the module docstring).
    """
    from convlens.detection import DETECTORS, Detector, is_detection_module

    task = options.pop("task", None)
    if task not in (None, "classify", "detect"):
        raise ModelLoadError(f"expected task='classify' or 'detect', got {task!r}")
    if isinstance(source, Detector) or task == "detect":
        return _as_detector(source, options)
    if isinstance(source, Model):
        return _with_options(source, options)
    if isinstance(source, nn.Module):
        if is_detection_module(source):
            return _as_detector(source, options)
        return Model(source, **options)
    if isinstance(source, (str, Path)):
        text = str(source)
        path = Path(text).expanduser()
        if path.exists():
            return _load_file(path, factory=factory, trust_pickle=trust_pickle, options=options)
        from convlens import zoo

        if text in zoo.names():
            return _with_options(zoo.load(text), options)
        if text in DETECTORS:
            return _as_detector(text, options)
        if _looks_like_factory(text):
            return _from_factory(text, options)
        if path.suffix.lower() in MODEL_SUFFIXES:
            raise FileNotFoundError(f"model file {text!r} does not exist")
        from convlens.naming import unknown

        raise unknown(
            "model (not a file, a zoo name or 'pkg.module:factory')",
            text,
            [*zoo.names(), *DETECTORS],
        )
    raise TypeError(
        "expected a Model, an nn.Module, a zoo name, a model file or 'pkg.module:factory', "
        f"got {type(source).__name__}"
    )


def load_classifier(source: Any, **kwargs: Any) -> Model:
    """:func:`load`, for code that takes classifiers: a detector is refused with a pointer to
    what takes detectors."""
    handle = load(source, **kwargs)
    if not isinstance(handle, Model):
        raise ModelLoadError(
            f"{handle.name!r} is a detector; this takes a classifier. Detectors work with "
            "convlens.detect, convlens.explain (target=a box) and convlens.evaluate; on the "
            "command line with `convlens detect DETECTOR IMAGE --explain drise|gradcam|layercam` "
            "and `convlens evaluate`"
        )
    return handle


DETECTOR_OPTIONS = ("labels", "name", "score_threshold", "iou_threshold", "max_detections", "layer")


def _as_detector(source: Any, options: dict[str, Any]) -> Any:
    """A :class:`~convlens.detection.Detector` from a zoo name, a Detector, a checkpoint
    file's content or a detection module, with ``options`` as its settings."""
    from convlens.detection import Detector, load_detector

    unknown_options = sorted(set(options) - set(DETECTOR_OPTIONS))
    if unknown_options:
        raise ModelLoadError(
            f"a detector takes the options {', '.join(DETECTOR_OPTIONS)}; got "
            f"{', '.join(unknown_options)}"
        )
    if isinstance(source, str | Path):
        from convlens.detection import DETECTORS

        # a zoo detector, or a file / factory whose network is the detector
        source = load_detector(str(source)) if str(source) in DETECTORS else load(source)
    if isinstance(source, Model):
        source = source.module
    if isinstance(source, nn.Module):
        names = getattr(source, "labels", None)
        labels = list(names) if isinstance(names, list | tuple) else None
        source = Detector(source, labels, name=type(source).__name__)
    if not isinstance(source, Detector):
        raise ModelLoadError(f"expected a detector, got {type(source).__name__}")
    if not options:
        return source
    settings: dict[str, Any] = {
        "labels": source.labels,
        "name": source.name,
        "score_threshold": source.score_threshold,
        "iou_threshold": source.iou_threshold,
        "max_detections": source.max_detections,
        "layer": source.layer,
    }
    settings.update(options)
    labels = settings.pop("labels")
    return Detector(source.module, labels, to_input=source.to_input, **settings)


def _with_options(model: Model, options: dict[str, Any]) -> Model:
    if not options:
        return model
    keep: dict[str, Any] = {
        "preprocess": model.preprocess,
        "postprocess": model.postprocess,
        "labels": model.synonyms,
        "name": model.name,
        "input_size": model._input_size,
    }
    keep.update(options)
    return Model(model.module, **keep)


def _looks_like_factory(text: str) -> bool:
    module, sep, attr = text.partition(":")
    return bool(sep) and module.replace(".", "").replace("_", "").isalnum() and attr.isidentifier()


def _resolve_factory(spec: str | Callable[[], Any]) -> Callable[[], Any]:
    if callable(spec):
        return spec
    if not _looks_like_factory(spec):
        raise ModelLoadError(f"expected a factory 'package.module:function', got {spec!r}")
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ModelLoadError(f"cannot import {module_name!r} for factory {spec!r}: {err}") from err
    try:
        fn = getattr(module, attr)
    except AttributeError:
        raise ModelLoadError(f"module {module_name!r} has no attribute {attr!r}") from None
    if not callable(fn):
        raise ModelLoadError(f"{spec!r} is not callable")
    return fn  # type: ignore[no-any-return]


def _from_factory(spec: str | Callable[[], Any], options: dict[str, Any]) -> Model:
    from convlens.detection import Detector, is_detection_module

    built = _resolve_factory(spec)()
    if isinstance(built, Model):
        return _with_options(built, options)
    if isinstance(built, Detector) or (isinstance(built, nn.Module) and is_detection_module(built)):
        return _as_detector(built, options)
    if isinstance(built, nn.Module):
        options.setdefault("name", spec if isinstance(spec, str) else type(built).__name__)
        return Model(built, **options)
    raise ModelLoadError(
        f"factory {spec!r} returned {type(built).__name__}, expected an nn.Module or a Model"
    )


# -- files ----------------------------------------------------------------------------------


def sniff(path: Path) -> str:
    """What a file holds, from its first bytes: ``torchscript``, ``torch`` (a ``torch.save``
    zip), ``torch-legacy`` (old pickle format), ``keras``, ``hdf5``, ``safetensors``, ``onnx``
    (protobuf: checked by parsing later), ``python`` or ``unknown``."""
    with path.open("rb") as f:
        head = f.read(16)
    if not head:
        return "empty"
    if head.startswith(b"PK\x03\x04"):
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


_AGREES = {
    "torch": {"torchscript", "torch", "torch-legacy"},
    "onnx": {"onnx"},
    "keras": {"keras", "hdf5"},
    "safetensors": {"safetensors"},
    "plugin": {"python", "unknown", "onnx"},  # source text; imported, not parsed here
}


def _load_file(
    path: Path,
    *,
    factory: str | Callable[[], nn.Module] | None,
    trust_pickle: bool,
    options: dict[str, Any],
) -> Model:
    if path.is_dir():
        raise ModelLoadError(f"{path} is a folder; expected a model file")
    declared = MODEL_SUFFIXES.get(path.suffix.lower())
    if declared is None:
        raise ModelLoadError(
            f"{path.name}: unknown model file type {path.suffix!r}; expected one of "
            f"{', '.join(sorted(MODEL_SUFFIXES))}"
        )
    found = sniff(path)
    if found == "empty":
        raise ModelLoadError(f"{path} is empty (0 bytes)")
    if found not in _AGREES[declared]:
        raise ModelLoadError(
            f"{path.name} has the suffix {path.suffix} ({declared}) but its content looks like "
            f"{found!r}; rename it or re-export it"
        )
    options.setdefault("name", path.stem)
    if declared == "plugin":
        return _load_plugin(path, options)
    if declared in ("onnx", "keras"):
        from convlens import interop

        if declared == "onnx":
            module = interop.load_onnx(path)
        else:
            module = interop.load_keras(path)
            if module.output_activation in ("softmax", "sigmoid"):
                options.setdefault("postprocess", "none")  # it returns probabilities already
        _size_from_graph(getattr(module, "input_size", None), options)
        return Model(module, **options)
    if declared == "safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError as err:
            raise ModelLoadError("reading .safetensors needs `pip install safetensors`") from err
        return _from_state_dict(path, load_file(str(path)), factory, options)
    if found == "torchscript":
        try:
            module = torch.jit.load(str(path), map_location="cpu")
        except Exception as err:
            raise ModelLoadError(
                f"{path.name} is a TorchScript archive that failed to load: {err}"
            ) from err
        return Model(module, **options)
    return _load_checkpoint(path, factory=factory, trust_pickle=trust_pickle, options=options)


def _size_from_graph(size: tuple[int | None, ...] | None, options: dict[str, Any]) -> None:
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


def _load_checkpoint(
    path: Path,
    *,
    factory: str | Callable[[], nn.Module] | None,
    trust_pickle: bool,
    options: dict[str, Any],
) -> Model:
    try:
        content = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if not trust_pickle:
            raise PickleRefusedError(
                f"{path.name} holds pickled Python objects (probably a whole model saved with "
                "torch.save(model)). Unpickling runs code from the file, so convlens refuses it. "
                "If you trust the file, pass trust_pickle=True (CLI: --trust-pickle); better, "
                "save model.state_dict() and load it with factory='package.module:function'. "
                f"(torch said: {str(err).splitlines()[0]})"
            ) from None
        content = torch.load(str(path), map_location="cpu", weights_only=False)
    except Exception as err:
        raise ModelLoadError(f"{path.name} is not a readable torch checkpoint: {err}") from err
    from convlens import centernet

    if isinstance(content, Mapping) and content.get("format") == centernet.FORMAT:
        from convlens.detection import load_detector

        return _as_detector(load_detector(str(path)), options)  # options hold name=path.stem
    if isinstance(content, Model):
        return _with_options(content, options)
    if isinstance(content, nn.Module):
        return Model(content, **options)
    if isinstance(content, Mapping) and "convlens_checkpoint" in content:
        return _from_convlens_checkpoint(path, content, factory, options)
    if isinstance(content, Mapping):
        return _from_state_dict(path, content, factory, options)
    raise ModelLoadError(
        f"{path.name} holds a {type(content).__name__}; expected a state_dict (a mapping of "
        "tensors), a TorchScript archive or a whole model"
    )


def _from_convlens_checkpoint(
    path: Path,
    content: Mapping[str, Any],
    factory: str | Callable[[], nn.Module] | None,
    options: dict[str, Any],
) -> Model:
    """A checkpoint written by ``convlens train``: the architecture (a registered name and its
    options, or the user factory it was trained with), weights, labels and preprocessing.
    A user factory is never imported because the file names it: the caller passes it."""
    from convlens import architectures

    version = content.get("convlens_checkpoint")
    if version != 1:
        raise ModelLoadError(
            f"{path.name} is a convlens checkpoint of format {version!r}; this convlens reads "
            "format 1 (upgrade convlens)"
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
    arch_options = dict(arch.get("options") or {})
    try:
        if "factory" in arch:
            if factory is None:
                raise ModelLoadError(
                    f"{path.name} was trained with the user network {arch['factory']!r}; "
                    "convlens does not import code named by a file. If you trust it, pass "
                    f"factory={arch['factory']!r} (CLI: --factory {arch['factory']})"
                )
            module = architectures.build(factory, **arch_options)  # type: ignore[arg-type]
        else:
            name = str(arch.get("name"))
            if name not in architectures.names():
                raise ModelLoadError(
                    f"{path.name} needs the architecture {name!r}, which this convlens does not "
                    f"have (it has {', '.join(architectures.names())})"
                )
            module = architectures.build(name, **arch_options)
    except (TypeError, ValueError) as err:
        if isinstance(err, ModelLoadError):
            raise
        raise ModelLoadError(f"cannot rebuild the network of {path.name}: {err}") from None
    _fill(module, state, path, "its architecture")
    record = dict(content["preprocess"])
    for key in ("crop", "mean", "std"):
        if isinstance(record.get(key), list):
            record[key] = tuple(record[key])
    try:
        preprocess = Preprocessing(**record)
        height, width = (int(v) for v in content["input_size"])
    except (TypeError, ValueError) as err:
        raise ModelLoadError(f"{path.name} has a broken preprocessing record: {err}") from None
    if options.get("name") == path.stem and content.get("name"):
        options["name"] = str(content["name"])
    options.setdefault("preprocess", preprocess)
    options.setdefault("labels", list(content["labels"]))
    options.setdefault("input_size", (preprocess.channels, height, width))
    return Model(module, **options)


def _state_dict_of(content: Mapping[str, Any]) -> Mapping[str, torch.Tensor] | None:
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


def _from_state_dict(
    path: Path,
    content: Mapping[str, Any],
    factory: str | Callable[[], nn.Module] | None,
    options: dict[str, Any],
) -> Model:
    state = _state_dict_of(content)
    if state is None:
        keys = ", ".join(list(map(str, content))[:8])
        raise ModelLoadError(
            f"{path.name} is a mapping but holds no state_dict of tensors (keys: {keys})"
        )
    if factory is None:
        raise ModelLoadError(
            f"{path.name} holds only weights (a state_dict of {len(state)} tensors); say which "
            "network they belong to with factory='package.module:function' (CLI: --factory)"
        )
    built = _resolve_factory(factory)()
    module = built.module if isinstance(built, Model) else built
    if not isinstance(module, nn.Module):
        raise ModelLoadError(f"factory returned {type(built).__name__}, expected an nn.Module")
    _fill(module, state, path, "the factory's network")
    if isinstance(built, Model):
        built.module = module
        return _with_options(built, options)
    return Model(module, **options)


def _fill(module: nn.Module, state: Mapping[str, torch.Tensor], path: Path, what: str) -> None:
    """Load ``state`` into ``module`` strictly and put it in eval mode; a mismatch says which
    keys are missing or unexpected, or which shapes differ."""
    missing, unexpected = _key_mismatch(module, state)
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


def _key_mismatch(module: nn.Module, state: Mapping[str, torch.Tensor]) -> tuple[list, list]:
    expected = set(module.state_dict())
    given = set(state)
    return sorted(expected - given), sorted(given - expected)


def _load_plugin(path: Path, options: dict[str, Any]) -> Model:
    """Run a plugin file and take the Model it defines.

    The file defines ``model`` (a Model, a Detector or an nn.Module), or a function
    ``model()`` returning one, or exactly one Model at top level. Plugin files are code:
    load only your own.
    """
    spec = importlib.util.spec_from_file_location(f"convlens_plugin_{path.stem}", path)
    if spec is None or spec.loader is None:
        raise ModelLoadError(f"cannot import plugin {path}")
    namespace = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(namespace)
    except Exception as err:
        raise ModelLoadError(
            f"plugin {path.name} raised {type(err).__name__} while loading: {err}"
        ) from err
    from convlens.detection import Detector, is_detection_module

    found: Any = getattr(namespace, "model", None)
    if callable(found) and not isinstance(found, (Model, nn.Module, Detector)):
        found = found()
    if isinstance(found, Detector) or (isinstance(found, nn.Module) and is_detection_module(found)):
        if options.get("name") == path.stem and isinstance(found, Detector):
            options.pop("name")  # the plugin named its detector
        return _as_detector(found, options)
    if found is None:
        models = [v for v in vars(namespace).values() if isinstance(v, Model)]
        if len(models) != 1:
            raise ModelLoadError(
                f"plugin {path.name} must define `model` (a convlens.Model, an nn.Module, or a "
                f"function returning one); found {len(models)} Model objects"
            )
        found = models[0]
    if isinstance(found, Model):
        if (
            "name" in options
            and options["name"] == path.stem
            and found.name != type(found.module).__name__
        ):
            options.pop("name")  # the plugin named its model
        return _with_options(found, options)
    if isinstance(found, nn.Module):
        return Model(found, **options)
    raise ModelLoadError(
        f"plugin {path.name}: `model` is a {type(found).__name__}, expected a convlens.Model "
        "or an nn.Module"
    )
