"""The optimisation loop of feature visualization: a checked :class:`Plan` and the
:class:`Ascent` that runs it chunk by chunk.

Inside an :class:`Ascent` the weights are frozen (their ``requires_grad`` comes back on exit),
conv + eval-mode batch norm pairs run folded, and a hook records the layers the objective
reads and stops the forward pass once they are all in. Each step draws the image from its
parameterisation, applies the random transforms, runs the network, and takes
``torch.autograd.grad`` of the summed scores with respect to the image parameters only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from types import TracebackType

import torch
import torch.nn.functional as F

from convlens.core.hooks import (
    StopForward,
    call_fast,
    first_tensor,
    folded_batchnorm,
    forward_hooks,
    preserved,
    recorder,
)
from convlens.core.model import Model
from convlens.techniques.visualize import param as params_mod
from convlens.techniques.visualize import transforms as tf
from convlens.techniques.visualize.objectives import IMAGE, OUTPUT, Objective
from convlens.techniques.visualize.presets import Preset

Progress = Callable[[int, int], None]
ParamFn = Callable[..., params_mod.Param]


@dataclass
class Plan:
    """A feature-visualization run, every setting resolved."""

    preset: Preset
    objective: Objective
    normalize: Callable[[torch.Tensor], torch.Tensor]
    hw: tuple[int, int]
    input_hw: tuple[int, int] | None
    resize: bool | None
    generator: torch.Generator
    seed: int | str
    total: int
    chunk: int
    make_param: ParamFn
    transform: tf.Transform
    keep: set[int]  # the steps whose image is kept as an animation frame


@dataclass
class Chunk:
    """What one chunk of images gave: final pixels (B, 3, H, W), the objective per step
    (steps, B), the final scores (B,) and the kept frames (frames, B, 3, H, W) uint8."""

    pixels: torch.Tensor
    history: torch.Tensor
    scores: torch.Tensor
    frames: torch.Tensor


class Ascent:
    """Runs a :class:`Plan` on a model: ``with Ascent(handle, plan) as a: a.optimise(part)``."""

    def __init__(self, handle: Model, plan: Plan) -> None:
        self.module = handle.module
        # layers computed channels-last (ConvNeXt's norm and MLP) are read as (N, C, H, W)
        self.channels_last = handle.channels_last()
        self.dtype, self.device = handle.dtype, handle.device
        self.plan = plan
        self.layers = sorted(plan.objective.layers - {IMAGE, OUTPUT})
        self.needs_output = OUTPUT in plan.objective.layers
        self.acts: dict[str, torch.Tensor] = {}
        self.resize_to: tuple[int, int] | None = None
        self.done = 0
        self._stack = ExitStack()

    def __enter__(self) -> Ascent:
        stack = self._stack
        stack.enter_context(preserved(self.module, out_of_place=True))
        for p in self.module.parameters():
            if p.requires_grad:
                p.requires_grad_(False)
        on_output = recorder(self.acts, None if self.needs_output else self.layers)
        stack.enter_context(folded_batchnorm(self.module, keep=self.layers))
        stack.enter_context(
            forward_hooks(self.module, self.layers, on_output, channels_last=self.channels_last)
        )
        plan = self.plan
        if plan.input_hw is not None and (
            plan.resize or (plan.resize is None and not self._any_size())
        ):
            self.resize_to = plan.input_hw
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self._stack.close()

    def _any_size(self) -> bool:
        """Whether the network (as far as the objective reads) runs on an image of about 1.5x
        the size: then no resize is needed."""
        hw = self.plan.hw
        probe = torch.full((1, 3, hw[0] * 3 // 2 + 1, hw[1] * 3 // 2 + 3), 0.5, device=self.device)
        try:
            with torch.inference_mode():
                self.module(self.plan.normalize(probe).to(self.dtype))
        except StopForward:
            pass
        except RuntimeError:  # shape mismatch in a dense layer: the network needs its own size
            return False
        finally:
            self.acts.clear()
        return True

    def scores(
        self, objective: Objective, image: torch.Tensor, transformed: torch.Tensor
    ) -> torch.Tensor:
        """(B,) scores: ``transformed`` through the network, ``image`` for the regularisers."""
        x = transformed
        if self.resize_to is not None and tuple(x.shape[-2:]) != self.resize_to:
            x = F.interpolate(x, size=self.resize_to, mode="bilinear", align_corners=False)
        inputs = self.plan.normalize(x).to(self.dtype)
        acts = self.acts

        def forward(x: torch.Tensor) -> None:
            acts.clear()
            try:
                out = self.module(x)
                if self.needs_output:
                    found = out if isinstance(out, torch.Tensor) else first_tensor(out)
                    if found is None:
                        raise ValueError("the network output holds no tensor")
                    acts[OUTPUT] = found
            except StopForward:
                pass

        call_fast(self.module, inputs, forward)  # channels-last on CPU where the network takes it
        missing = [n for n in self.layers if n not in acts]
        if missing:
            raise ValueError(f"layer(s) {missing} did not run in the forward pass")
        acts[IMAGE] = image
        try:
            return objective(acts).float()
        finally:
            acts.clear()

    def optimise(self, part: slice, progress: Progress | None, chunks: int) -> Chunk:
        """Gradient ascent on the images ``part`` of the objective's batch."""
        plan, preset = self.plan, self.plan.preset
        objective = plan.objective.select(part)
        n = part.stop - part.start
        params, image_fn = plan.make_param((n, 3, *plan.hw), plan.generator, self.device)
        opt = _Adam(params, preset.lr) if preset.optimizer == "adam" else None
        history = torch.empty(preset.steps, n)
        kept = []
        for step in range(preset.steps):
            image = image_fn()
            scores = self.scores(objective, image, plan.transform(image, plan.generator))
            if scores.shape != (n,):
                raise ValueError(
                    f"the objective must give one score per image ({n},), got {tuple(scores.shape)}"
                )
            grads = torch.autograd.grad(scores.sum(), params)
            with torch.no_grad():
                _ascend(params, grads, opt, preset.lr)
                history[step] = scores.detach().cpu()
                if step in plan.keep:
                    kept.append(_to_uint8(display(image_fn(), preset)))
            self.done += 1
            if progress is not None:
                progress(self.done, preset.steps * chunks)
        with torch.no_grad():
            shown = display(image_fn(), preset)
            final = self.scores(objective, shown, shown)  # no transforms
        frames = torch.stack(kept) if kept else torch.empty(0, n, 3, *plan.hw, dtype=torch.uint8)
        return Chunk(shown.float().cpu(), history, final.cpu(), frames)


class _Adam:
    """Adam (Kingma & Ba, 2015) with torch.optim.Adam's defaults (betas 0.9, 0.999, eps 1e-8),
    written out because importing torch.optim costs seconds (it loads torch._dynamo)."""

    def __init__(self, params: list[torch.Tensor], lr: float) -> None:
        self.params, self.lr, self.t = params, lr, 0
        self.m = [torch.zeros_like(p) for p in params]
        self.v = [torch.zeros_like(p) for p in params]

    def step(self, grads: Sequence[torch.Tensor]) -> None:
        """One step *down* ``grads`` (as torch's optimisers), in place, under no_grad."""
        self.t += 1
        c1 = 1 - 0.9**self.t
        c2 = 1 - 0.999**self.t
        for p, g, m, v in zip(self.params, grads, self.m, self.v, strict=True):
            m.mul_(0.9).add_(g, alpha=0.1)
            v.mul_(0.999).addcmul_(g, g, value=0.001)
            denom = (v / c2).sqrt_().add_(1e-8)
            p.addcdiv_(m, denom, value=-self.lr / c1)


def _ascend(
    params: list[torch.Tensor], grads: Sequence[torch.Tensor], opt: _Adam | None, lr: float
) -> None:
    """One step up the objective: Adam, or ``lr * g / rms(g)`` per image (the classic)."""
    if opt is not None:
        opt.step([-g for g in grads])  # Adam descends
        return
    for p, g in zip(params, grads, strict=True):
        rms = g.pow(2).flatten(1).mean(1).sqrt().view(-1, *[1] * (g.dim() - 1))
        p.add_(lr * g / (rms + 1e-5 / 255))


def _to_uint8(x: torch.Tensor) -> torch.Tensor:
    return x.mul(255).round().clamp(0, 255).to(torch.uint8).cpu()


def display(image: torch.Tensor, preset: Preset) -> torch.Tensor:
    """An image as shown: the classic deprocessing, or clipped to [0, 1]."""
    if preset.deprocess == "classic":
        return _deprocess_classic(image)
    return image.clamp(0, 1)


def _deprocess_classic(x: torch.Tensor) -> torch.Tensor:
    """Per image: ``0.5 + 0.1 * (x - mean) / (std + 1e-5)``, clipped to [0, 1] (Chollet)."""
    flat = x.flatten(1)
    mean = flat.mean(1).view(-1, 1, 1, 1)
    std = flat.std(1, unbiased=False).view(-1, 1, 1, 1)
    return (0.5 + 0.1 * (x - mean) / (std + 1e-5)).clamp(0, 1)
