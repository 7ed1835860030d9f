"""SmoothGrad, SmoothGrad² and VarGrad: a wrapper around any gradient method (the base), which
it runs on noisy copies of each image and averages (Captum's NoiseTunnel, composed rather than
a flag of each method). ``smoothed(base)`` makes a method of the same signature."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch

from convlens.core.hooks import preserved
from convlens.core.model import Model
from convlens.core.registry import spec
from convlens.techniques.attribution.base import (
    Attribution,
    Method,
    Target,
    TargetSpec,
    checked_batch_size,
    chunks,
    get_method,
    make_attribution,
    make_generator,
    methods,
    register,
    resolve_target,
)
from convlens.techniques.attribution.gradients import BACKWARD_FACTOR, clean_scores

KINDS = ("mean", "squared", "var")
Progress = Callable[[int, int], None]


def smoothed(base: str | Method) -> Method:
    """A method that runs ``base`` (a registered name or any method function) on noisy copies
    of the input and aggregates: SmoothGrad (``kind="mean"``), SmoothGrad² (``"squared"``),
    VarGrad (``"var"``). Options of the returned function: ``samples``, ``noise``, ``kind``,
    ``seed`` / ``generator``, ``batch_size``, ``memory_budget_mb``, ``progress``; any other
    option goes to ``base``. See :func:`smoothgrad`."""
    if isinstance(base, str):
        info = get_method(base)
        base_fn, base_name = info.fn, info.name
    elif callable(base):
        base_fn = base
        base_name = next(
            (name for name, info in methods().items() if info.fn is base),
            getattr(base, "__name__", "method"),
        )
    else:
        raise ValueError(f"expected a method name or function, got {type(base).__name__}")

    def method(
        model: Model,
        images: Any,
        target: TargetSpec = None,
        *,
        layer: str | None = None,
        samples: int = 25,
        noise: float = 0.15,
        kind: str = "mean",
        seed: int | None = None,
        generator: torch.Generator | None = None,
        batch_size: int | None = None,
        memory_budget_mb: float | None = None,
        progress: Progress | None = None,
        **base_options: Any,
    ) -> Attribution:
        return _noise_tunnel(
            base_fn,
            base_name,
            model,
            images,
            target,
            layer=layer,
            samples=samples,
            noise=noise,
            kind=kind,
            seed=seed,
            generator=generator,
            batch_size=batch_size,
            memory_budget_mb=memory_budget_mb,
            progress=progress,
            base_options=base_options,
        )

    method.__name__ = f"smoothed_{base_name}"
    method.__doc__ = (
        f"SmoothGrad over {base_name}: see convlens.techniques.attribution.smoothgrad.smoothgrad."
    )
    return method


@register(
    "smoothgrad",
    family="gradient",
    paper="Smilkov et al. 2017, arXiv:1706.03825; SmoothGrad²: Hooker et al. 2019, "
    "arXiv:1806.10758; VarGrad: Adebayo et al. 2018, arXiv:1810.03307",
    description="a gradient method (base=, saliency by default) averaged over noisy copies; "
    "kind=mean|squared|var",
    settings={
        "base": spec(
            "gradient method averaged",
            choices=("saliency", "gradient_x_input", "integrated_gradients", "guided_backprop"),
        ),
        "samples": spec("noisy copies averaged", min=2, max=1000),
        "noise": spec("noise std as a share of the input range", min=0.0, max=1.0, step=0.01),
        "kind": spec("mean (SmoothGrad), squared (SmoothGrad²) or var (VarGrad)", choices=KINDS),
    },
)
def smoothgrad(
    model: Model,
    images: Any,
    target: TargetSpec = None,
    *,
    layer: str | None = None,
    base: str = "saliency",
    samples: int = 25,
    noise: float = 0.15,
    kind: str = "mean",
    seed: int | None = None,
    generator: torch.Generator | None = None,
    batch_size: int | None = None,
    memory_budget_mb: float | None = None,
    progress: Progress | None = None,
    **base_options: Any,
) -> Attribution:
    """SmoothGrad, SmoothGrad² and VarGrad over any registered gradient method ``base``.

    The map has the base method's shape (N, H, W) or (N, C, H, W); ``kind="mean"`` keeps the
    base's sign, ``"squared"`` (mean of squared maps) and ``"var"`` (their variance over the
    copies) are >= 0.

    Parameters
    ----------
    base:
        A registered gradient method (``saliency``, ``gradient_x_input``,
        ``integrated_gradients``, ``guided_backprop``); its options are passed through
        (``absolute=False``, ``steps=16``, ...).
    samples:
        Noisy copies per image.
    noise:
        Standard deviation of the Gaussian noise as a fraction of each image's value range
        ``max(x) - min(x)`` in input space (the paper's noise level; 0.1 to 0.2 works well).
    seed, generator:
        Where the noise comes from (seed 0 by default); a base method that draws random
        numbers (IG's ``"noise"`` baseline) draws from the same generator.
    batch_size:
        Noisy copies per call of the base (and per forward pass, for bases that take it).

    ``extras``: ``noise_std`` (N,) the noise's standard deviation per image, and the base's
    per-copy diagnostics (``completeness_error``, ...) averaged over each image's copies.
    """
    if not isinstance(base, str):
        raise ValueError(f"expected base to be a method name, got {type(base).__name__}")
    info = get_method(base)
    if info.family != "gradient" or info.name == "smoothgrad":
        gradient = sorted(n for n, i in methods().items() if i.family == "gradient")
        gradient.remove("smoothgrad")
        raise ValueError(
            f"expected base among the gradient methods {', '.join(gradient)}, got {base!r}"
        )
    return _noise_tunnel(
        info.fn,
        info.name,
        model,
        images,
        target,
        layer=layer,
        samples=samples,
        noise=noise,
        kind=kind,
        seed=seed,
        generator=generator,
        batch_size=batch_size,
        memory_budget_mb=memory_budget_mb,
        progress=progress,
        base_options=base_options,
    )


class _NoisyCopies:
    """The base method on noisy copies of each image, its maps averaged as ``kind`` says."""

    def __init__(
        self,
        base_fn: Method,
        model: Model,
        x: torch.Tensor,
        goal: Target,
        std: torch.Tensor,
        gen: torch.Generator,
        layer: str | None,
        passed: dict[str, Any],
        kind: str,
        samples: int,
    ) -> None:
        self.base_fn, self.model, self.x, self.goal, self.std = base_fn, model, x, goal, std
        self.gen, self.layer, self.passed, self.kind, self.samples = (
            gen,
            layer,
            passed,
            kind,
            samples,
        )
        self.done = 0

    def average(
        self, images_part: slice, per_image: int, progress: Progress | None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor], Attribution]:
        """The smoothed maps of the images ``images_part``, the base's per-copy extras
        averaged over the copies, and the base's last result (its settings and layer)."""
        x, kind, samples = self.x, self.kind, self.samples
        count = images_part.stop - images_part.start
        # Sums of (map - the first copy's map) and of its square: exact for identical maps,
        # stable for VarGrad; for SmoothGrad² the sum of squared maps.
        shift: torch.Tensor | None = None
        sums: torch.Tensor | None = None
        extras_sums: dict[str, torch.Tensor] = {}
        result: Attribution | None = None
        for samples_part in chunks(samples, per_image):
            k = samples_part.stop - samples_part.start
            draw = torch.randn(
                (count * k, *x.shape[1:]), generator=self.gen, device=self.gen.device
            )
            sigma = self.std[images_part].repeat_interleave(k).view(-1, 1, 1, 1)
            noisy = x[images_part].repeat_interleave(k, dim=0) + draw.to(x.device, x.dtype) * sigma
            chosen = self.goal.select(images_part).repeat(k)
            spec = chosen.indices if chosen.indices is not None else chosen.fn
            result = self.base_fn(self.model, noisy, spec, layer=self.layer, **self.passed)
            maps = result.map.view(count, k, *result.map.shape[1:])
            if shift is None:
                shift = maps[:, 0]
            if kind == "squared":
                chunk_sums = (maps * maps).sum(1)
            else:
                centred = maps - shift.unsqueeze(1)
                chunk_sums = torch.stack([centred.sum(1), (centred * centred).sum(1)])
            sums = chunk_sums if sums is None else sums + chunk_sums
            for key, value in result.extras.items():
                if isinstance(value, torch.Tensor) and value.shape[:1] == (count * k,):
                    per_image_sum = value.float().view(count, k, *value.shape[1:]).sum(1)
                    extras_sums[key] = extras_sums.get(key, 0) + per_image_sum
            self.done += count * k
            if progress is not None:
                progress(self.done, len(x) * samples)
        assert shift is not None and sums is not None and result is not None
        total = sums / samples
        if kind == "squared":
            smoothed = total
        elif kind == "mean":
            smoothed = shift + total[0]
        else:
            smoothed = (total[1] - total[0] * total[0]).clamp(min=0)
        return smoothed, {k: v / samples for k, v in extras_sums.items()}, result


def _noise_tunnel(
    base_fn: Method,
    base_name: str,
    model: Model,
    images: Any,
    target: TargetSpec,
    *,
    layer: str | None,
    samples: int,
    noise: float,
    kind: str,
    seed: int | None,
    generator: torch.Generator | None,
    batch_size: int | None,
    memory_budget_mb: float | None,
    progress: Progress | None,
    base_options: dict[str, Any],
) -> Attribution:
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ValueError(f"expected samples >= 1, got {samples!r}")
    if isinstance(noise, bool) or not isinstance(noise, (int, float)) or not noise >= 0:
        raise ValueError(f"expected noise >= 0 (a fraction of the value range), got {noise!r}")
    if kind not in KINDS:
        raise ValueError(f"expected kind among {', '.join(map(repr, KINDS))}, got {kind!r}")
    size = checked_batch_size(model, batch_size, memory_budget_mb, factor=BACKWARD_FACTOR)
    batch = model.prepare(images)
    goal = resolve_target(model, batch.inputs, target)
    x = batch.inputs.detach()
    n = len(x)
    gen, seed_setting = make_generator(seed, generator, x.device)
    # Batching and randomness are shared with a base that takes them (IG's steps, its noise
    # baseline); every other option is the base's own.
    accepted = inspect.signature(base_fn).parameters
    passed = dict(base_options)
    shared = {"batch_size": batch_size, "memory_budget_mb": memory_budget_mb, "generator": gen}
    passed.update({k: v for k, v in shared.items() if k in accepted and v is not None})
    std = noise * (x.amax(dim=(1, 2, 3)) - x.amin(dim=(1, 2, 3)))  # (N,)
    group = min(n, size)
    per_image = max(1, size // group)
    with preserved(model.module):
        scores = clean_scores(model, x, goal, size)
    parts: list[torch.Tensor] = []
    extras_parts: dict[str, list[torch.Tensor]] = {}
    base_result: Attribution | None = None
    noisy = _NoisyCopies(base_fn, model, x, goal, std, gen, layer, passed, kind, samples)
    for images_part in chunks(n, group):
        part_map, part_extras, base_result = noisy.average(images_part, per_image, progress)
        parts.append(part_map)
        for key, value in part_extras.items():
            extras_parts.setdefault(key, []).append(value)
    assert base_result is not None
    smoothed_map = torch.cat(parts)
    settings = {key: value for key, value in base_result.settings.items() if key != "signed"}
    settings.update(
        {
            "signed": kind == "mean" and bool(base_result.settings.get("signed", False)),
            "base": base_name,
            "samples": samples,
            "noise": float(noise),
            "kind": kind,
            "seed": seed_setting,
        }
    )
    extras: dict[str, Any] = {"noise_std": std.float().cpu()}
    extras.update({key: torch.cat(values) for key, values in extras_parts.items()})
    return make_attribution(
        smoothed_map,
        method="smoothgrad",
        settings=settings,
        model=model,
        batch=batch,
        target=goal,
        scores=scores,
        layer=base_result.layer,
        extras=extras,
    )
