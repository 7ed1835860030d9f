"""What a data set run computes for one batch of pictures, wherever the model is: predictions,
each method's map, and the metrics of each map.

The logits come from the methods' own forward pass where one of them runs the batch itself (a
CAM does: it reads top-1 from its own pass), caught by a hook on the network that lives only
for the batch; a separate inference pass runs only when no method ran the clean batch. So a
run costs what the methods cost, plus reading pictures (done elsewhere, in parallel).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image

from convlens.core.hooks import forward_hooks, preserved
from convlens.core.model import Batch, Model, Preprocessing
from convlens.techniques.attribution.base import Attribution, Target, get_method
from convlens.techniques.attribution.explain import picture_chunk
from convlens.workflows import metrics as m
from convlens.workflows.datasets.inputs import Loaded, PictureLoader

TARGETS = ("label", "predicted")
FLOAT16_MAX = float(np.finfo(np.float16).max)


@dataclass
class MethodResult:
    """One method's result for one picture: the explained class, its raw score (logit) and
    probability, the map (float16, as the method returns it: a CAM at its layer's
    resolution) and the metrics (``None`` where they do not apply)."""

    target: int
    target_score: float
    target_probability: float
    map: np.ndarray
    layer: str | None
    energy_in_mask: float | None = None
    pointing_game: float | None = None
    deletion_auc: float | None = None


@dataclass
class PictureResult:
    """What one picture gets: the top-k classes with their probabilities, the object's share
    of the picture (where there is a mask) and one :class:`MethodResult` per method."""

    top_k: list[int]
    top_k_probability: list[float]
    object_area: float | None
    methods: dict[str, MethodResult] = field(default_factory=dict)


@dataclass
class ExplainWork:
    """The :class:`~convlens.core.engine.Work` of a data set run (picklable: the Ray engine
    ships it to its actors).

    ``methods`` are ``(registered name, options)`` with the options already parsed; ``labels``
    maps a source label to the model's class index (``None``: no usable labels);
    ``target`` is ``"label"`` (the true class where known, else the top-1 class) or
    ``"predicted"`` (always the top-1 class); ``deletion_steps`` adds the deletion AUC."""

    loader: PictureLoader
    methods: list[tuple[str, dict[str, Any]]]
    labels: Mapping[str, int] | None = None
    target: str = "label"
    top_k: int = 5
    deletion_steps: int | None = None

    def __post_init__(self) -> None:
        if self.target not in TARGETS:
            raise ValueError(f"expected target 'label' or 'predicted', got {self.target!r}")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 1:
            raise ValueError(f"expected top_k >= 1, got {self.top_k!r}")

    def compute(self, model: Model, loaded: list[Loaded]) -> list[PictureResult]:
        size = self.chunk(model)
        if size is None or len(loaded) <= size:
            return self._compute(model, loaded)
        out: list[PictureResult] = []
        for start in range(0, len(loaded), size):
            out += self._compute(model, loaded[start : start + size])
        return out

    def chunk(self, model: Model) -> int | None:
        """Pictures per model call: the chunk ``cl.explain`` uses (what fits a CPU's cache or
        half a GPU's free memory; 16 MobileNetV2 pictures at once cost a CPU about twice as
        much per picture as chunks of 6) when every method takes one, else ``None`` (the
        whole batch: methods that size their own batches of copies keep their draws)."""
        sizes = [picture_chunk(model, get_method(name), options) for name, options in self.methods]
        if not sizes or any(s is None for s in sizes):
            return None
        return min(s for s in sizes if s is not None)

    def _compute(self, model: Model, loaded: list[Loaded]) -> list[PictureResult]:
        batch = _batch(model, loaded)
        wanted = self._wanted(loaded)
        logits: list[torch.Tensor] = []
        results: dict[str, tuple[Attribution, torch.Tensor]] = {}
        with preserved(model.module), _logits_of(model, batch.inputs, logits):
            for name, options in self.methods:
                targets = _targets(model, batch, wanted, logits)
                info = get_method(name)
                attribution = info.fn(model, batch, targets, **options)
                if not isinstance(attribution, Attribution) or attribution.targets is None:
                    raise ValueError(f"{name} did not explain one class per picture")
                results[name] = (attribution, torch.tensor(attribution.targets))
        if not logits:
            with preserved(model.module), torch.inference_mode():
                logits.append(model.forward(batch.inputs).detach().float().cpu())
        probabilities = model.postprocess(logits[0]).float()
        k = min(self.top_k, probabilities.shape[1])
        top_p, top_i = probabilities.topk(k, dim=1)
        masks = _masks(loaded, batch)
        out = [
            PictureResult(
                top_i[i].tolist(),
                top_p[i].double().tolist(),
                None if masks[i] is None else float(masks[i].double().mean()),  # type: ignore[union-attr]
            )
            for i in range(len(loaded))
        ]
        for name, (attribution, targets) in results.items():
            self._add(
                model, batch, name, attribution, targets, logits[0], probabilities, masks, out
            )
        return out

    def _wanted(self, loaded: Sequence[Loaded]) -> list[int | None]:
        """Each picture's class to explain when known before any pass (its label)."""
        if self.target == "predicted" or self.labels is None:
            return [None] * len(loaded)
        return [None if x.item.label is None else self.labels.get(x.item.label) for x in loaded]

    def _add(
        self,
        model: Model,
        batch: Batch,
        name: str,
        attribution: Attribution,
        targets: torch.Tensor,
        logits: torch.Tensor,
        probabilities: torch.Tensor,
        masks: list[torch.Tensor | None],
        out: list[PictureResult],
    ) -> None:
        scores = (
            attribution.scores.double()
            if attribution.scores is not None
            else logits.gather(1, targets[:, None]).squeeze(1).double()
        )
        chosen = probabilities.gather(1, targets[:, None]).squeeze(1).double()
        maps = attribution.map.detach().float().clamp(-FLOAT16_MAX, FLOAT16_MAX)
        inside, pointing = _mask_metrics(attribution, masks)
        auc: list[float | None] = [None] * len(out)
        if self.deletion_steps is not None:
            curves = m.deletion(
                model,
                batch,
                attribution,
                Target(targets, description="explained"),
                steps=self.deletion_steps,
            )
            auc = [float(v) for v in curves.auc.values]
        for i, picture in enumerate(out):
            picture.methods[name] = MethodResult(
                int(targets[i]),
                float(scores[i]),
                float(chosen[i]),
                maps[i].numpy().astype(np.float16),
                attribution.layer,
                inside[i],
                pointing[i],
                auc[i],
            )


def _batch(model: Model, loaded: Sequence[Loaded]) -> Batch:
    """Network input from the loaded pictures, exactly as ``model.prepare`` makes it from the
    same files (the pictures are already resized and cropped)."""
    pictures = [Image.fromarray(x.picture) for x in loaded]
    if isinstance(model.preprocess, Preprocessing):
        inputs = model.preprocess.inputs(pictures)
    else:
        inputs = model.preprocess(pictures)
        if not isinstance(inputs, torch.Tensor) or inputs.dim() != 4:
            got = tuple(inputs.shape) if isinstance(inputs, torch.Tensor) else type(inputs)
            raise ValueError(f"preprocess must return an (N, C, H, W) tensor, got {got}")
    names = [x.item.id for x in loaded]
    return Batch(names, inputs.to(model.device, model.dtype), [])


class _logits_of:
    """Inside the block, the output of the first forward pass of the network on exactly
    ``inputs`` is appended to ``found`` (detached, float, on the CPU). The hooks go on entry
    and come off on every exit."""

    def __init__(self, model: Model, inputs: torch.Tensor, found: list[torch.Tensor]) -> None:
        self.model = model
        self.inputs = inputs
        self.found = found
        self.clean = False
        self.hooks: Any = None

    def _start(self, _name: str, args: tuple[Any, ...]) -> None:
        self.clean = False
        if self.found or not args or not isinstance(args[0], torch.Tensor):
            return
        x = args[0]
        if x.shape == self.inputs.shape and x.dtype == self.inputs.dtype:
            self.clean = x.data_ptr() == self.inputs.data_ptr() or torch.equal(
                x.detach(), self.inputs
            )

    def _output(self, _name: str, output: Any) -> None:
        if (
            self.clean
            and not self.found
            and isinstance(output, torch.Tensor)
            and output.dim() == 2
            and output.shape[0] == self.inputs.shape[0]
        ):
            self.found.append(output.detach().float().cpu())
        self.clean = False

    def __enter__(self) -> _logits_of:
        if isinstance(self.model.module, torch.jit.ScriptModule):
            return self  # no hooks on TorchScript: the logits come from their own pass
        self.hooks = forward_hooks(self.model.module, [""], self._output, on_start=self._start)
        self.hooks.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.hooks is not None:
            self.hooks.__exit__(*exc)
            self.hooks = None


def _targets(
    model: Model, batch: Batch, wanted: list[int | None], logits: list[torch.Tensor]
) -> torch.Tensor | None:
    """The classes to explain: the labels where known, else top-1 (from logits already caught,
    else ``None`` so the method finds top-1 in its own pass; an inference pass first only when
    some pictures have labels and others do not)."""
    if all(w is not None for w in wanted):
        return torch.tensor(wanted, dtype=torch.long)
    if not logits and all(w is None for w in wanted):
        return None
    if not logits:
        with torch.inference_mode():
            outputs = model.forward(batch.inputs).detach().float().cpu()
        if not logits:  # the hook did not catch it (TorchScript)
            logits.append(outputs)
    top = logits[0].argmax(1)
    return torch.tensor([int(top[i]) if w is None else w for i, w in enumerate(wanted)])


def _masks(loaded: Sequence[Loaded], batch: Batch) -> list[torch.Tensor | None]:
    size = tuple(batch.inputs.shape[-2:])
    out: list[torch.Tensor | None] = []
    for x in loaded:
        if x.mask is None or x.mask.shape != size:
            out.append(None)
        else:
            out.append(torch.from_numpy(np.ascontiguousarray(x.mask)))
    return out


def _mask_metrics(
    attribution: Attribution, masks: list[torch.Tensor | None]
) -> tuple[list[float | None], list[float | None]]:
    """Energy in the mask and the pointing game for the pictures with masks (``None`` for
    the others; NaN, stored as null, where a metric is undefined: an empty mask, a map with
    no positive mass)."""
    inside: list[float | None] = [None] * len(masks)
    pointing: list[float | None] = [None] * len(masks)
    chosen = [i for i, mask in enumerate(masks) if mask is not None]
    if not chosen:
        return inside, pointing
    index = torch.tensor(chosen)
    maps = m.input_maps(attribution)[index]
    stacked = torch.stack([masks[i] for i in chosen])  # type: ignore[misc]
    energy = m.energy_in_mask(maps, stacked, empty="nan").values
    hits = m.pointing_game(maps, stacked, empty="nan").values
    for j, i in enumerate(chosen):
        inside[i] = _finite(float(energy[j]))
        pointing[i] = _finite(float(hits[j]))
    return inside, pointing


def _finite(value: float) -> float | None:
    return None if math.isnan(value) else value
