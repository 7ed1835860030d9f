"""Capturing a layer's activations, and the target's gradient with respect to them, in one
forward pass: what every CAM variant (:mod:`.cam`) starts from.

A layer is any dotted ``named_modules()`` name, or ``name#k`` for one call of a module that
runs several times; channels-last layers are captured as (N, C, H, W). ``layer=None`` takes the
default layer and says why (:func:`~convlens.techniques.attribution.base.default_layer_choice`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from convlens.core.hooks import forward_hooks, preserved
from convlens.core.model import Batch, Model
from convlens.core.naming import get_layer, parse_layer
from convlens.techniques.attribution.base import (
    Target,
    TargetSpec,
    default_layer_choice,
    resolve_target,
)

LayerSpec = str | Sequence[str] | None


@dataclass
class Captured:
    layers: list[str]
    activations: list[torch.Tensor]
    gradients: list[torch.Tensor] | None
    target: Target
    scores: torch.Tensor
    note: str | None = None  # why the layer was chosen, when it was the default


def layer_names(model: Model, layer: LayerSpec) -> tuple[list[str], str | None]:
    """The layers to explain, resolved before anything runs (unknown names list close ones),
    and, for the default layer, why it was chosen."""
    if layer is None:
        name, why = default_layer_choice(model)
        return [name], why
    if isinstance(layer, str):
        specs = [s.strip() for s in layer.split(",") if s.strip()]
    elif isinstance(layer, Sequence) and all(isinstance(s, str) for s in layer):
        specs = [s.strip() for s in layer]
    else:
        raise ValueError(f"expected a layer name or a list of layer names, got {layer!r}")
    if not specs:
        raise ValueError(f"expected at least one layer name, got {layer!r}")
    names: list[str] = []
    for text in specs:
        ref = parse_layer(text)
        if ref.channel is not None:
            raise ValueError(
                f"CAM methods explain a whole layer; expected a layer name such as "
                f"{ref.name!r}, got the channel {text!r}"
            )
        get_layer(model.module, ref.name)
        if ref.name not in names:
            names.append(ref.name)
    return names, None


def _target_from_outputs(
    model: Model, batch: Batch, target: TargetSpec, outputs: torch.Tensor
) -> Target:
    """:func:`resolve_target`, reading top-1 from outputs already computed (no extra pass)."""
    if target is not None:
        return resolve_target(model, batch.inputs, target)
    if outputs.dim() != 2:
        raise ValueError(
            f"top-1 needs (N, K) outputs, got {tuple(outputs.shape)}; pass a callable target"
        )
    return Target(outputs.detach().argmax(1).cpu(), description="top-1")


def capture(
    model: Model,
    batch: Batch,
    target: TargetSpec,
    layers: list[str],
    *,
    gradients: bool,
    note: str | None = None,
) -> Captured:
    """One forward pass: the activations (N, C, h, w) of ``layers`` and, with ``gradients``,
    ``d score.sum() / d activations`` (one ``autograd.grad``; no parameter gradients).

    The hook hands the rest of the network a copy of each captured output, so in-place
    operations downstream (``ReLU(inplace=True)``, ``out += identity``) never change what
    was captured. The pass runs without recording a graph up to the first captured layer and
    records only from there, so the cost before the layer is that of an inference pass.
    Channels-last layers (ConvNeXt's norm and MLP) are captured as (N, C, H, W).
    """
    channels_last = model.channels_last() & set(layers)
    found: dict[str, list[torch.Tensor]] = {name: [] for name in layers}

    def keep(name: str, output: Any) -> Any:
        if not isinstance(output, torch.Tensor) or output.dim() != 4:
            got = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output)
            raise ValueError(
                f"CAM methods need a layer with a spatial (N, C, h, w) output; {name!r} "
                f"returned {got}"
            )
        if gradients and output.requires_grad:  # a later layer, already on the graph
            captured = output
        elif gradients:
            # The first captured layer: the graph starts here. Everything before it ran
            # without recording (as fast as an inference pass); from here on it records.
            captured = output.detach().requires_grad_(True)
            torch.set_grad_enabled(True)
        else:
            captured = output.detach()
        found[name].append(captured)
        return captured.clone()

    with preserved(model.module), torch.inference_mode(False):
        inputs = batch.inputs.clone() if batch.inputs.is_inference() else batch.inputs
        # no_grad's exit restores the caller's grad mode, also after the hook turned it on
        with (
            torch.no_grad(),
            forward_hooks(model.module, layers, keep, channels_last=channels_last),
        ):
            outputs = model.forward(inputs.detach())
        for name, outs in found.items():
            if len(outs) != 1:
                how = "did not run" if not outs else f"ran {len(outs)} times"
                calls = f"; name one call: {name}#1 .. {name}#{len(outs)}" if outs else ""
                raise ValueError(
                    f"layer {name!r} {how} in one forward pass; CAM methods need a layer "
                    f"that runs once{calls}"
                )
        activations = [found[name][0] for name in layers]
        resolved = _target_from_outputs(model, batch, target, outputs)
        with torch.set_grad_enabled(gradients):
            score = resolved.score(outputs)
        grads = None
        if gradients:
            found_grads: Sequence[torch.Tensor | None] = [None] * len(activations)
            if score.requires_grad:  # else no layer reaches the score: zero gradients
                found_grads = torch.autograd.grad(score.sum(), activations, allow_unused=True)
            grads = [
                g if g is not None else torch.zeros_like(a)
                for g, a in zip(found_grads, activations, strict=True)
            ]
    return Captured(
        layers,
        [a.detach() for a in activations],
        [g.detach() for g in grads] if grads is not None else None,
        resolved,
        score.detach(),
        note,
    )
