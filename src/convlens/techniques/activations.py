"""Activations of any set of layers, from one forward pass per batch, and how to draw them.

The classic recipe (every channel of an intermediate layer, tiled, each channel standardised
for display) is :meth:`Activations.grid`; one channel as a heatmap is
:meth:`Activations.heatmap`.

For large sets of pictures, ``engine=`` runs the passes on an engine
(:class:`~convlens.core.engine.Engine`: ``cl.dataset.engine("local")`` decodes in worker
processes, ``cl.dataset.engine("ray")`` runs Ray actors); :func:`layer_batches` is the same
pass as an iterator of batches, for other methods that need layer outputs (TCAV's activation
and gradient passes): :class:`LayerCapture` is the work the engine runs.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import weakref
import zipfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from convlens.core import render
from convlens.core.engine import Engine, Failed
from convlens.core.hooks import first_tensor, forward_hooks, preserved
from convlens.core.images import ImageError, list_images, load_image
from convlens.core.model import Model, Preprocessing, count_pictures
from convlens.core.naming import LayerRef, parse_layer, unknown
from convlens.core.tasks import as_model
from convlens.core.util import safe_filename

Progress = Callable[[int, int], None]


def activations(
    model: Any,
    images: Any,
    layers: str | Sequence[str] | None = None,
    *,
    batch_size: int = 16,
    dtype: torch.dtype | None = None,
    stream_to: str | os.PathLike[str] | None = None,
    progress: Progress | None = None,
    engine: Engine | None = None,
) -> Activations:
    """Capture the outputs of ``layers`` for ``images``.

    Parameters
    ----------
    model:
        A :class:`~convlens.model.Model` (or anything :func:`convlens.load` takes).
    images:
        Pictures (paths, folders, PIL, arrays) or an input tensor (N, C, H, W).
    layers:
        Layer names (``"features.3"``; ``"conv1:7"`` names one channel, the layer is kept
        whole). ``None`` captures every layer whose output is a 4-D map.
    batch_size:
        Pictures per forward pass; memory grows with it.
    dtype:
        Store activations in this dtype (``torch.float16`` halves memory).
    stream_to:
        Write activations to this ``.npz`` file batch by batch instead of keeping them in
        memory; the result then reads layers from the file on demand.
    progress:
        ``progress(done, total)`` after every batch.
    engine:
        Run the passes on this engine (``cl.dataset.engine("local")``: pictures decoded in
        worker processes; ``cl.dataset.engine("ray")``: Ray actors): for large sets of
        picture files, usually with ``stream_to``. The pictures are then not kept for
        overlays. The numbers are those of the plain call.

    Returns
    -------
    Activations
        ``acts["features.3"]`` is a float tensor (N, C, h, w) on the CPU, exactly the layer's
        output as it was produced: in-place operations that follow (``ReLU(inplace=True)``,
        ``out += identity``) do not change it. Layers whose outputs are one tensor (a block and
        its last layer) share memory; treat the tensors as read-only.
    """
    model = as_model(model)
    if batch_size < 1:
        raise ValueError(f"expected batch_size >= 1, got {batch_size}")
    if isinstance(layers, str):
        layers = [layers]
    refs = [parse_layer(spec) for spec in layers] if layers is not None else None
    names = list(dict.fromkeys(r.name for r in refs)) if refs is not None else None
    if engine is not None:
        return _on_engine(
            model, images, refs, names, batch_size, dtype, stream_to, progress, engine
        )
    module = model.module
    hook_names = names if names is not None else [n for n, _ in module.named_modules() if n]

    store: _Store = _DiskStore(Path(stream_to)) if stream_to else _MemoryStore()
    recorder = _Recorder(spatial_only=names is None, must_copy=_MUST_COPY.setdefault(module, set()))
    total = count_pictures(images)
    image_names: list[str] = []
    picture_parts: list[Sequence[Image.Image]] = []
    try:
        with (
            preserved(module, out_of_place=True),
            forward_hooks(module, hook_names, recorder.keep, channels_last=model.channels_last()),
            torch.no_grad(),  # not inference_mode: its tensors have no version counter
        ):
            for batch in model.batches(images, batch_size):
                captured = recorder.run(model, batch.inputs)
                if names is not None:
                    missed = [n for n in names if n not in captured]
                    if missed:
                        raise ValueError(
                            f"layers {missed} were not called in the forward pass (or returned "
                            "no tensor); pick layers from model.layers()"
                        )
                store.add({n: t.to("cpu", dtype or torch.float32) for n, t in captured.items()})
                image_names += batch.names
                if not stream_to:
                    picture_parts.append(batch.pictures)
                if progress is not None:
                    progress(len(image_names), total)
        data = store.finish(image_names)
    except BaseException:
        store.abort()
        raise
    pictures = (
        picture_parts[0] if len(picture_parts) == 1 else [p for part in picture_parts for p in part]
    )
    order = names if names is not None else list(data)
    return Activations(
        model, image_names, pictures, {n: data[n] for n in order if n in data}, refs or []
    )


def _on_engine(
    model: Model,
    images: Any,
    refs: list[LayerRef] | None,
    names: list[str] | None,
    batch_size: int,
    dtype: torch.dtype | None,
    stream_to: str | os.PathLike[str] | None,
    progress: Progress | None,
    engine: Engine,
) -> Activations:
    store: _Store = _DiskStore(Path(stream_to)) if stream_to else _MemoryStore()
    image_names: list[str] = []
    total = count_pictures(images)
    try:
        for batch_names, captured in layer_batches(
            model, images, names, batch_size=batch_size, dtype=dtype, engine=engine
        ):
            store.add(captured)
            image_names += batch_names
            if progress is not None:
                progress(len(image_names), total)
        data = store.finish(image_names)
    except BaseException:
        store.abort()
        raise
    order = names if names is not None else list(data)
    return Activations(model, image_names, [], {n: data[n] for n in order if n in data}, refs or [])


def picture_sources(images: Any) -> list[Any]:
    """Single picture sources: folders listed (sorted, recursively), lists flattened. Network
    input tensors are refused: they are in memory already, an engine has nothing to read."""
    if isinstance(images, (str, os.PathLike)) and Path(os.fspath(images)).is_dir():
        return list(list_images(images))
    if isinstance(images, (list, tuple)):
        return [item for source in images for item in picture_sources(source)]
    if isinstance(images, torch.Tensor) or (isinstance(images, np.ndarray) and images.ndim == 4):
        raise ValueError(
            "an engine reads pictures (files, folders, PIL images, arrays); this batch is in "
            "memory already: call without engine="
        )
    return [images]


def _picture_name(source: Any, index: int) -> str:
    if isinstance(source, (str, os.PathLike)):
        return Path(os.fspath(source)).stem
    return f"image{index}"


class PictureSourceLoader:
    """An engine's loader for picture sources: the picture as the network sees it (resized
    and cropped by the model's :class:`Preprocessing`; as decoded for a custom preprocess),
    (H, W, 3) uint8."""

    def __init__(self, preprocess: Preprocessing | None) -> None:
        self.preprocess = preprocess

    def __call__(self, source: Any) -> np.ndarray:
        image = load_image(source)
        if self.preprocess is not None:
            image = self.preprocess.picture(image)
        return np.asarray(image, dtype=np.uint8)


class LayerCapture:
    """The engine work of :func:`layer_batches`: network input from the loaded pictures (as
    ``model.prepare`` makes it), one pass with hooks on ``layers`` (``None``: every layer with
    a 4-D output), each picture's outputs (or, with ``gradient_of=k``, the gradients of logit
    ``k`` with respect to them) as CPU tensors of their own (``flatten``: (F,) each)."""

    def __init__(
        self,
        preprocess: Preprocessing | None,
        layers: Sequence[str] | None,
        *,
        flatten: bool = False,
        gradient_of: int | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        if gradient_of is not None and layers is None:
            raise ValueError("gradients need the layers named (layers=[...])")
        self.loader = PictureSourceLoader(preprocess)
        self.layers = list(layers) if layers is not None else None
        self.flatten = flatten
        self.gradient_of = gradient_of
        self.dtype = dtype

    def compute(self, model: Model, loaded: list[np.ndarray]) -> list[dict[str, torch.Tensor]]:
        pictures = [Image.fromarray(p) for p in loaded]
        if isinstance(model.preprocess, Preprocessing):
            inputs = model.preprocess.inputs(pictures)
        else:
            inputs = model.preprocess(pictures)
        inputs = inputs.to(model.device, model.dtype)
        if self.gradient_of is None:
            captured = _capture_batch(model, inputs, self.layers)
        else:
            assert self.layers is not None
            captured = _gradients(model, inputs, self.layers, self.gradient_of)
        out = []
        for i in range(len(loaded)):
            one = {}
            for name, tensor in captured.items():
                value = tensor[i].to("cpu", self.dtype or torch.float32)
                one[name] = (value.flatten() if self.flatten else value).clone()
            out.append(one)
        return out


def _capture_batch(
    model: Model, inputs: torch.Tensor, names: list[str] | None
) -> dict[str, torch.Tensor]:
    """What :func:`activations` captures from one batch (the same hooks and checks)."""
    module = model.module
    hook_names = names if names is not None else [n for n, _ in module.named_modules() if n]
    recorder = _Recorder(spatial_only=names is None, must_copy=_MUST_COPY.setdefault(module, set()))
    with (
        preserved(module, out_of_place=True),
        forward_hooks(module, hook_names, recorder.keep, channels_last=model.channels_last()),
        torch.no_grad(),
    ):
        captured = recorder.run(model, inputs)
    if names is not None:
        missed = [n for n in names if n not in captured]
        if missed:
            raise ValueError(
                f"layers {missed} were not called in the forward pass (or returned no tensor); "
                "pick layers from model.layers()"
            )
    return captured


def _gradients(
    model: Model, inputs: torch.Tensor, names: list[str], target: int
) -> dict[str, torch.Tensor]:
    """d logit[target] / d output of each layer, (N, ...) per layer, in one forward pass."""
    module = model.module
    kept: dict[str, torch.Tensor] = {}

    def keep(name: str, output: Any) -> None:
        tensor = first_tensor(output)
        if tensor is not None and name not in kept:
            kept[name] = tensor

    with (
        preserved(module, out_of_place=True),
        forward_hooks(module, names, keep),
        torch.enable_grad(),
    ):
        outputs = first_tensor(module(inputs.detach().requires_grad_(True)))
        missed = [n for n in names if n not in kept]
        if missed or outputs is None or outputs.dim() != 2:
            raise ValueError(
                f"expected every layer to run ({missed} did not) and (N, classes) logits"
            )
        if not 0 <= target < outputs.shape[1]:
            raise ValueError(f"target class {target} is outside the {outputs.shape[1]} outputs")
        grads = torch.autograd.grad(outputs[:, target].sum(), [kept[n] for n in names])
    # Channels-last layers (ConvNeXt's norm and MLP) are kept as they ran, so the gradient
    # reaches them; their gradients are handed over as (N, C, H, W) like their activations.
    last = model.channels_last()
    return {
        n: (g.permute(0, 3, 1, 2) if n in last and g.dim() == 4 else g).detach()
        for n, g in zip(names, grads, strict=True)
    }


def layer_batches(
    model: Any,
    images: Any,
    layers: str | Sequence[str] | None = None,
    *,
    engine: Engine,
    batch_size: int = 16,
    flatten: bool = False,
    gradient_of: int | None = None,
    dtype: torch.dtype | None = None,
    cancelled: Callable[[], bool] | None = None,
) -> Iterator[tuple[list[str], dict[str, torch.Tensor]]]:
    """Layer outputs of picture sources, batch by batch in order, computed on ``engine``:
    ``(names, {layer: (B, ...) tensor})`` per batch (``(B, F)`` with ``flatten``; with
    ``gradient_of=k`` the gradients of logit ``k`` with respect to the layers instead). A
    picture that cannot be read raises :class:`~convlens.core.images.ImageError` naming it."""
    handle = as_model(model)
    if isinstance(layers, str):
        layers = [layers]
    names = list(dict.fromkeys(parse_layer(s).name for s in layers)) if layers else None
    sources = picture_sources(images)
    preprocess = handle.preprocess if isinstance(handle.preprocess, Preprocessing) else None
    work = LayerCapture(preprocess, names, flatten=flatten, gradient_of=gradient_of, dtype=dtype)
    chunks = [sources[i : i + batch_size] for i in range(0, len(sources), batch_size)]
    taken: set[str] = set()
    start = 0
    for items, outputs in zip(
        chunks, engine.map(handle, work, chunks, cancelled=cancelled), strict=True
    ):
        batch_names = []
        for source, output in zip(items, outputs, strict=True):
            name = _picture_name(source, start)
            if isinstance(output, Failed):
                raise ImageError(f"{name}: {output.reason}")
            unique, count = name, 1
            while unique in taken:  # as load_images names them: stem, stem_2, ...
                count += 1
                unique = f"{name}_{count}"
            taken.add(unique)
            batch_names.append(unique)
            start += 1
        yield batch_names, {k: torch.stack([o[k] for o in outputs]) for k in outputs[0]}


# Layers whose output a later in-place operation (``out += identity`` in a forward method)
# overwrites, learnt per network on the first call: those are copied when produced.
_MUST_COPY: weakref.WeakKeyDictionary[nn.Module, set[str]] = weakref.WeakKeyDictionary()


class _Recorder:
    """Keeps layer outputs during a forward pass, copying only those that get overwritten.

    Outputs are kept by reference (a container's output is usually its last child's tensor,
    so nothing is stored twice). torch's own in-place layers run out of place during the pass
    (``preserved(..., out_of_place=True)``); any other in-place operation (``out += x`` in a
    ``forward`` method) is caught by the kept tensor's version counter after the pass: the
    batch then runs again copying those layers when they are produced, and the network is
    remembered so later calls copy them straight away.
    """

    def __init__(self, *, spatial_only: bool, must_copy: set[str]) -> None:
        self.spatial_only = spatial_only
        self.must_copy = must_copy
        self.kept: dict[str, tuple[torch.Tensor, int]] = {}

    def keep(self, name: str, output: Any) -> None:
        tensor = first_tensor(output)
        if tensor is None or name in self.kept:  # a module called twice: its first output
            return
        if self.spatial_only and tensor.dim() != 4:
            return
        tensor = tensor.detach()
        if name in self.must_copy:
            tensor = tensor.clone()
        self.kept[name] = (tensor, tensor._version)

    def run(self, model: Model, inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        for _attempt in range(2):
            self.kept = {}
            model.forward(inputs)
            stale = {n for n, (t, version) in self.kept.items() if t._version != version}
            if not stale:
                return {n: t for n, (t, _) in self.kept.items()}
            self.must_copy |= stale
        raise RuntimeError(f"layer outputs kept changing after they were produced: {sorted(stale)}")


class _Store:
    def add(self, captured: Mapping[str, torch.Tensor]) -> None: ...

    def finish(self, names: Sequence[str]) -> Mapping[str, Any]:
        raise NotImplementedError

    def abort(self) -> None: ...


class _MemoryStore(_Store):
    def __init__(self) -> None:
        self.parts: dict[str, list[torch.Tensor]] = {}

    def add(self, captured: Mapping[str, torch.Tensor]) -> None:
        for name, tensor in captured.items():
            self.parts.setdefault(name, []).append(tensor)

    def finish(self, names: Sequence[str]) -> dict[str, torch.Tensor]:
        return {
            n: parts[0] if len(parts) == 1 else torch.cat(parts) for n, parts in self.parts.items()
        }

    def abort(self) -> None:
        self.parts.clear()


def _npz_key(name: str) -> str:
    return name.replace("/", "|")


class _DiskStore(_Store):
    """Each layer is appended to a raw file in a scratch folder beside the target; at the end
    each becomes one ``.npy`` entry of the ``.npz`` (uncompressed, copied in chunks), which
    then replaces the target atomically. Memory stays at one batch."""

    def __init__(self, target: Path) -> None:
        if target.suffix != ".npz":
            raise ValueError(f"expected stream_to to end in .npz, got {target.name!r}")
        target.parent.mkdir(parents=True, exist_ok=True)
        self.target = target
        self.scratch = Path(tempfile.mkdtemp(prefix=".convlens-", dir=target.parent))
        self.layers: dict[str, tuple[Path, np.dtype, tuple[int, ...], int]] = {}

    def add(self, captured: Mapping[str, torch.Tensor]) -> None:
        for name, tensor in captured.items():
            array = np.ascontiguousarray(tensor.numpy())
            path, dtype, shape, count = self.layers.get(
                name, (self.scratch / f"{len(self.layers)}.raw", array.dtype, array.shape[1:], 0)
            )
            with open(path, "ab") as f:
                f.write(array.tobytes())
            self.layers[name] = (path, dtype, shape, count + len(array))

    def finish(self, names: Sequence[str]) -> Mapping[str, Any]:
        partial = self.target.with_name(self.target.name + ".partial")
        with zipfile.ZipFile(partial, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
            for name, (path, dtype, shape, count) in self.layers.items():
                with (
                    open(path, "rb") as src,
                    archive.open(_npz_key(name) + ".npy", "w", force_zip64=True) as dst,
                ):
                    header = {
                        "descr": np.lib.format.dtype_to_descr(dtype),
                        "fortran_order": False,
                        "shape": (count, *shape),
                    }
                    np.lib.format.write_array_header_1_0(dst, header)
                    shutil.copyfileobj(src, dst, 1 << 20)
            with archive.open("__images__.npy", "w") as dst:
                np.lib.format.write_array(dst, np.array(names))
        os.replace(partial, self.target)
        shutil.rmtree(self.scratch, ignore_errors=True)
        return _NpzLayers(self.target, list(self.layers))

    def abort(self) -> None:
        shutil.rmtree(self.scratch, ignore_errors=True)
        self.target.with_name(self.target.name + ".partial").unlink(missing_ok=True)


class _NpzLayers(Mapping[str, torch.Tensor]):
    """Layers read from an .npz on demand (one layer in memory at a time)."""

    def __init__(self, path: Path, names: list[str]) -> None:
        self.path = path
        self.names = names

    def __getitem__(self, name: str) -> torch.Tensor:
        if name not in self.names:
            raise KeyError(name)
        with np.load(self.path) as npz:
            return torch.from_numpy(npz[_npz_key(name)])

    def __iter__(self) -> Iterator[str]:
        return iter(self.names)

    def __len__(self) -> int:
        return len(self.names)


class Activations(Mapping[str, torch.Tensor]):
    """Captured layer outputs of a batch of pictures.

    A mapping from layer name to a CPU tensor (N, C, h, w) (other shapes for non-spatial
    layers); ``acts["conv1:7"]`` gives one channel (N, h, w). ``names`` are the pictures'
    names, ``pictures`` the RGB pictures as the network saw them.
    """

    def __init__(
        self,
        model: Model,
        names: list[str],
        pictures: Sequence[Image.Image],
        data: Mapping[str, torch.Tensor],
        requested: Sequence[LayerRef] = (),
    ) -> None:
        self.model = model
        self.names = names
        self.pictures = pictures
        self._data = data
        self.requested = list(requested)

    # Mapping interface
    def __getitem__(self, spec: str) -> torch.Tensor:
        ref = parse_layer(spec)
        if ref.name not in self._data:
            raise unknown("captured layer", ref.name, list(self._data))
        tensor = self._data[ref.name]
        if ref.channel is None:
            return tensor
        if tensor.dim() < 2 or not 0 <= ref.channel < tensor.shape[1]:
            raise ValueError(
                f"layer {ref.name} has {tensor.shape[1] if tensor.dim() > 1 else 0} channels, "
                f"got channel {ref.channel}"
            )
        return tensor[:, ref.channel]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    @property
    def layers(self) -> list[str]:
        return list(self._data)

    def _image_index(self, image: int | str) -> int:
        if isinstance(image, str):
            if image not in self.names:
                raise unknown("image", image, self.names)
            return self.names.index(image)
        if not -len(self.names) <= image < len(self.names):
            raise IndexError(f"image index {image} out of range for {len(self.names)} images")
        return image % len(self.names)

    def _spatial(self, layer: str) -> torch.Tensor:
        tensor = self[layer]
        if tensor.dim() != 4:
            raise ValueError(
                f"layer {layer} has output shape {tuple(tensor.shape)}; a grid needs (N, C, h, w)"
            )
        return tensor

    # Drawing
    def heatmap(
        self,
        spec: str,
        image: int | str = 0,
        *,
        cmap: str = "viridis",
        overlay: bool = False,
        alpha: float = 0.5,
        size: int | None = 224,
    ) -> render.Figure:
        """One channel (``"layer:channel"``) of one picture as a heatmap, scaled to its own
        min..max (the range is printed under it), optionally over the picture."""
        ref = parse_layer(spec)
        if ref.channel is None:
            raise ValueError(f"expected 'layer:channel' for a heatmap, got {spec!r}")
        i = self._image_index(image)
        channel_map = self[spec][i].float()
        if channel_map.dim() != 2:
            raise ValueError(f"{spec} is not a 2-D map (shape {tuple(channel_map.shape)})")
        lo, hi = float(channel_map.min()), float(channel_map.max())
        if overlay and self.pictures:
            picture = render.overlay(self.pictures[i], channel_map, alpha=alpha, cmap=cmap)
        else:
            picture = render.heatmap(channel_map, cmap, size=(size, size) if size else None)
        bar = render.colorbar(cmap, lo, hi, width=picture.width)
        canvas = Image.new("RGB", (picture.width, picture.height + bar.height), "white")
        canvas.paste(picture, (0, 0))
        canvas.paste(bar, (0, picture.height))
        return render.Figure(canvas, caption=f"{self.names[i]} · {spec} · range {lo:.3g}..{hi:.3g}")

    def grid(
        self,
        layer: str,
        image: int | str = 0,
        *,
        norm: str = "standardize",
        cmap: str = "viridis",
        max_channels: int | None = None,
        ncols: int | None = None,
        tile_size: int | None = None,
        labels: bool = True,
    ) -> render.Figure:
        """Every channel of ``layer`` for one picture, tiled in one image.

        ``norm="standardize"`` shows each channel standardised (the classic recipe),
        ``"per_map"`` scales each channel to its own range, ``"shared"`` uses one scale for
        the whole layer (so channels compare). Tiles are labelled with their channel number.
        """
        i = self._image_index(image)
        maps = self._spatial(layer)[i].float()
        if max_channels is not None:
            maps = maps[:max_channels]
        scaled = render.normalize(maps, mode=norm)
        lut = render.colormap(cmap)
        size = tile_size or max(32, min(96, maps.shape[-1] * 2))
        tiles = [
            Image.fromarray(lut[np.round(s * 255).astype(np.uint8)]).resize(
                (size, size), Image.Resampling.NEAREST
            )
            for s in scaled
        ]
        scale = {"standardize": "each channel standardised", "per_map": "each channel min..max"}
        note = scale.get(norm, f"one scale {float(maps.min()):.3g}..{float(maps.max()):.3g}")
        title = f"{self.names[i]} · {layer} · {tuple(maps.shape)} · {note}"
        figure = render.grid(
            tiles,
            ncols=ncols,
            labels=[str(c) for c in range(len(tiles))] if labels else None,
            title=title,
        )
        return render.Figure(figure, caption=title)

    def save(self, out_dir: str | os.PathLike[str], *, npz: bool = True) -> list[Path]:
        """Write one grid PNG per (picture, spatial layer) and the raw ``activations.npz``."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        written = []
        whole = {r.name for r in self.requested if r.channel is None}
        for layer, tensor in self._data.items():
            if tensor.dim() != 4 or (self.requested and layer not in whole):
                continue  # a layer asked for by one channel only gets that channel's heatmap
            for i, name in enumerate(self.names):
                path = out / f"{safe_filename(name)}__{safe_filename(layer)}.png"
                self.grid(layer, i).save(path)
                written.append(path)
        for ref in self.requested:
            if ref.channel is not None:
                for i, name in enumerate(self.names):
                    path = out / f"{safe_filename(name)}__{safe_filename(str(ref))}.png"
                    self.heatmap(str(ref), i).save(path)
                    written.append(path)
        if npz:
            written.append(self.to_npz(out / "activations.npz"))
        return written

    def to_npz(self, path: str | os.PathLike[str]) -> Path:
        """All layers as arrays (key: layer name, '/' replaced by '|'), plus the image names."""
        path = Path(path)
        arrays = {_npz_key(n): t.numpy() for n, t in self._data.items()}
        arrays["__images__"] = np.array(self.names)
        partial = path.with_name(path.name + ".partial.npz")
        np.savez(partial, **arrays)  # type: ignore[arg-type]
        os.replace(partial, path)
        return path

    def numpy(self, layer: str) -> np.ndarray:
        return self[layer].numpy()

    def __repr__(self) -> str:
        shapes = ", ".join(f"{n}: {tuple(t.shape)}" for n, t in list(self._data.items())[:6])
        more = f", ... ({len(self._data)} layers)" if len(self._data) > 6 else ""
        return f"Activations({len(self.names)} images; {shapes}{more})"

    def _repr_html_(self) -> str:
        from html import escape

        rows = "".join(
            f"<tr><td><code>{escape(n)}</code></td><td>{tuple(t.shape)}</td>"
            f"<td>{float(t.float().mean()):.3g}</td>"
            f"<td>{float((t > 0).float().mean()):.1%}</td></tr>"
            for n, t in self._data.items()
        )
        first = next((n for n, t in self._data.items() if t.dim() == 4), None)
        preview = self.grid(first)._repr_html_() if first else ""
        return (
            f"<p>Activations of {len(self.names)} image(s)</p><table><tr><th>layer</th>"
            f"<th>shape</th><th>mean</th><th>active</th></tr>{rows}</table>{preview}"
        )
