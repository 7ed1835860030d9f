"""Feature visualization against Lucent, in the same process, on the CPU (issue 5's targets).

Settings shared by every variant: MobileNetV2 with its real weights, ``features.14``, a 128x128
image in Lucent's Fourier parameterisation with decorrelated colour and a sigmoid, Lucent's
standard transforms, Adam at 0.05, 128 steps, ImageNet normalisation inside the loop.

1. One channel (``features.14:17``): Lucent's ``render_vis`` as it is used (the weights keep
   ``requires_grad``, so every step also computes every weight's gradient), Lucent with the
   weights frozen, and ``convlens.featurevis`` (which stops the forward pass at
   ``features.14`` and differentiates with respect to the image only). Lucent runs with
   ``fixed_image_size=128``, so that its network sees the same 128-px image as ours (by default
   it upsamples anything smaller than 224 px to 224: that row is printed too, but it is not
   like for like). Target: convlens at least 1.5x faster than Lucent (ratio <= 0.67x).
2. A 32-channel layer (``features.14`` channels 0-31) as one batched run, per channel, against
   our own one-channel-at-a-time path (case 1's convlens row). Target: at least 2x faster per
   channel (ratio <= 0.5x).
3. Hooks left on the model after one call of each.
4. Every channel of ``features.14`` (160), visualized with ``LAYER_STEPS`` steps in batches of
   32, against the largest activation that any crop of the bundled photos gives (128x128
   crops, stride 48, of each photo at a 192 short side, and each whole photo as the model sees
   it): how many channels' visualizations beat every crop, and the ratio (min / median / max)
   over the channels the photos activate at all (``layer_activations`` returns both).

Lucent (``torch-lucent==0.1.8``) declares ``kornia<=0.4.1``, which no longer installs with
current torch; it is installed with ``--no-deps`` from ``requirements/peers.txt`` together with
``kornia==0.5.11`` (later kornia dropped the ``kornia.get_rotation_matrix2d`` it calls).
Without it, the Lucent rows are skipped and the rest still runs.

One-channel cases take ``min(repeats, ONE_REPEATS)`` interleaved runs after one warm-up; the
batched run (about 100 s) ``min(repeats, BATCH_REPEATS)`` runs; the layer, about 4 minutes.
About 11 minutes in all on the 2-core VM with one thread.
"""

from __future__ import annotations

import importlib.util
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from _timing import Quantity, Row, Timing, compare, interleaved

import convlens as cl
from convlens.core.hooks import has_hooks

LAYER = "features.14"
CHANNEL = 17
SIZE = 128
STEPS = 128
BATCH = 32
ONE_REPEATS = 5
BATCH_REPEATS = 2


def lucent_missing() -> str | None:
    """Why Lucent cannot be used here, or ``None``."""
    if importlib.util.find_spec("lucent") is None:
        return "torch-lucent is not installed (requirements/peers.txt, python3 tools/venv.py)"
    try:
        from lucent.optvis import render  # noqa: F401
    except Exception as err:
        return f"lucent does not import: {type(err).__name__}: {err}"
    return None


def _lucent(
    model: torch.nn.Module, frozen: bool, clean: bool = True, matched: bool = True
) -> Callable[[], Any]:
    """One ``render_vis`` call; ``clean`` removes the hooks it leaves behind (else every
    later call, ours included, would run them all: they pile up, 212 per call). Lucent
    upsamples an image smaller than 224 px to 224 before the network; ``matched`` passes
    ``fixed_image_size=SIZE`` so that the network sees the 128-px image, as convlens's does."""
    from lucent.optvis import param, render

    def run() -> Any:
        flags = [p.requires_grad for p in model.parameters()]
        if frozen:
            for p in model.parameters():
                p.requires_grad_(False)
        try:
            return render.render_vis(
                model,
                f"{LAYER.replace('.', '_')}:{CHANNEL}",
                param_f=lambda: param.image(SIZE, fft=True, decorrelate=True),
                thresholds=(STEPS,),
                fixed_image_size=SIZE if matched else None,
                show_image=False,
                progress=False,
                verbose=False,
            )
        finally:
            for p, flag in zip(model.parameters(), flags, strict=True):
                p.requires_grad_(flag)
            if clean:
                _remove_all_hooks(model)

    return run


def _ours(model: cl.Model, channels: int | list[int], batch_size: int | None = None) -> Any:
    objective = cl.objectives.channel(LAYER, channels)
    return cl.featurevis(
        model, objective, size=SIZE, steps=STEPS, seed=0, frames=0, batch_size=batch_size
    )


def run(repeats: int = 25) -> list[Row]:
    model = cl.load("mobilenet_v2")
    module = model.module.eval()
    missing = lucent_missing()
    rows: list[Row] = []

    variants: dict[str, Callable[[], Any]] = {
        "convlens one channel": lambda: _ours(model, CHANNEL),
    }
    if missing is None:
        variants["lucent render_vis"] = _lucent(module, frozen=False)
        variants["lucent render_vis, weights frozen"] = _lucent(module, frozen=True)
        variants["lucent render_vis at 224 px"] = _lucent(module, frozen=False, matched=False)
    else:
        print(f"  lucent rows skipped: {missing}", flush=True)
    one = interleaved(variants, repeats=min(repeats, ONE_REPEATS), warmup=1)
    if missing is None:
        rows += compare(
            "featurevis",
            {f"b1 {k}": v for k, v in one.items()},
            "b1 lucent render_vis",
            {"b1 convlens one channel": (1 / 1.5, False)},
        )
        frozen = one["lucent render_vis, weights frozen"].median
        ours = one["convlens one channel"].median
        print(f"  convlens / lucent frozen: {ours / frozen:.2f}x", flush=True)
    else:
        rows += [Row("featurevis", "b1 convlens one channel", one["convlens one channel"])]

    samples = []
    for _ in range(min(repeats, BATCH_REPEATS)):
        start = time.perf_counter()
        result = _ours(model, list(range(BATCH)), batch_size=BATCH)
        samples.append((time.perf_counter() - start) / BATCH)
        del result
    per_channel = {
        "one channel at a time, per channel": one["convlens one channel"],
        f"{BATCH} channels as one batch, per channel": Timing(tuple(samples)),
    }
    rows += compare(
        "featurevis",
        per_channel,
        "one channel at a time, per channel",
        {f"{BATCH} channels as one batch, per channel": (0.5, False)},
    )

    hooks: dict[str, Quantity] = {}
    _ours(model, CHANNEL)
    hooks["hooks left: convlens"] = Quantity((float(len(_hook_count(module))),), "hooks")
    if missing is None:
        _lucent(module, frozen=False, clean=False)()
        hooks["hooks left: lucent"] = Quantity((float(len(_hook_count(module))),), "hooks")
        _remove_all_hooks(module)
    rows += [Row("featurevis", case, q) for case, q in hooks.items()]

    visualized, best = layer_activations(model)
    positive = best > 0
    ratios = visualized[positive] / best[positive]
    summary = {
        "channels whose visualization beats every photo crop": float((visualized > best).sum()),
        "channels the photos activate (best crop > 0)": float(positive.sum()),
        "ratio min (those channels)": float(ratios.min()),
        "ratio median": float(ratios.median()),
        "ratio max": float(ratios.max()),
    }
    print(f"  {LAYER}, {len(best)} channels, activation / best photo crop: {summary}", flush=True)
    rows += [Row("featurevis", f"{LAYER}: {k}", Quantity((v,), "")) for k, v in summary.items()]
    return rows


LAYER_STEPS = 64


def layer_activations(
    model: cl.Model, steps: int = LAYER_STEPS
) -> tuple[torch.Tensor, torch.Tensor]:
    """(C,) and (C,) per channel of ``LAYER``: its visualization's activation (channel mean)
    and the largest that any crop of the bundled photos gives."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from test_featurevis import _best_crop_activations

    width = cl.objectives.channels(LAYER).bind(model).batch or 1
    channels = list(range(width))
    fv = cl.featurevis(
        model,
        cl.objectives.channel(LAYER, channels),
        size=SIZE,
        steps=steps,
        batch_size=32,
        frames=0,
    )
    return fv.scores, _best_crop_activations(model, LAYER, channels, SIZE)


def _hook_count(module: torch.nn.Module) -> list[str]:
    """One entry per forward (pre-)hook on any submodule (``has_hooks`` lists modules)."""
    count = []
    for name, m in module.named_modules():
        count += [name] * (len(m._forward_hooks) + len(m._forward_pre_hooks))
    assert bool(count) == bool(has_hooks(module))
    return count


def _remove_all_hooks(module: torch.nn.Module) -> None:
    """Lucent leaves its hooks on the model; clear them so later calls are not slowed."""
    for m in module.modules():
        m._forward_hooks.clear()
        m._forward_pre_hooks.clear()


if __name__ == "__main__":
    from run import table

    print(table(run()))
