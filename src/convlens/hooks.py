"""Scoped hooks and a guard that leaves the user's model as it was.

Hooks exist only inside a ``with`` block and are removed on every exit path, errors
included. Nothing here registers a hook that outlives the block.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from convlens.naming import get_layer

OutputFn = Callable[[str, Any], Any]
StartFn = Callable[[str, tuple[Any, ...]], Any]


@contextmanager
def forward_hooks(
    module: nn.Module,
    names: Iterable[str],
    on_output: OutputFn | None,
    *,
    on_start: StartFn | None = None,
) -> Iterator[None]:
    """Call ``on_output(name, output)`` whenever a named layer returns, inside the block.

    ``on_output`` may return a replacement output (as a PyTorch forward hook may) or ``None``
    to keep it. ``on_start(name, inputs)`` runs when a layer is entered (a pre-hook), which
    gives the true call order of nested modules. Every name is resolved before any hook is
    added, so an unknown name leaves the model untouched.
    """
    names = list(names)
    if not names:
        yield
        return
    if isinstance(module, torch.jit.ScriptModule):
        raise ValueError(
            "TorchScript modules do not support hooks, so their layers cannot be observed; "
            "load the eager network instead (a state_dict with factory=...)"
        )
    modules = dict(module.named_modules())
    layers = [
        (name, modules[name] if name in modules else get_layer(module, name)) for name in names
    ]
    handles = []
    try:
        for name, layer in layers:
            if on_output is not None:
                handles.append(
                    layer.register_forward_hook(
                        lambda _m, _inp, out, name=name: on_output(name, out)
                    )
                )
            if on_start is not None:
                handles.append(
                    layer.register_forward_pre_hook(
                        lambda _m, inp, name=name: on_start(name, inp)  # type: ignore[misc]
                    )
                )
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def preserved(
    module: nn.Module, *, eval_mode: bool = True, out_of_place: bool = False
) -> Iterator[nn.Module]:
    """Run with ``module`` in eval mode; afterwards, whatever happened inside, every
    submodule's ``training`` flag and every parameter's ``requires_grad`` are as they were.

    ``out_of_place=True`` also runs torch's own in-place layers (``ReLU(inplace=True)``, ...)
    out of place inside the block, so outputs that were kept are not overwritten by the next
    layer (the numbers are the same; only memory use differs); the flags come back on exit.

    One walk over the modules; only what changes is restored (this sits on hot paths).
    """
    modules = list(module.modules())
    training = [m for m in modules if m.training]
    grads = [(p, p.requires_grad) for m in modules for p in m._parameters.values() if p is not None]
    flipped = [
        m
        for m in modules
        if out_of_place
        and getattr(m, "inplace", None) is True
        and type(m).__module__.startswith("torch.nn.")
    ]
    try:
        if eval_mode and training:
            module.eval()  # through eval(), so a module's own train() override still runs
        for m in flipped:
            m.inplace = False  # type: ignore[assignment]
        yield module
    finally:
        for m in flipped:
            m.inplace = True  # type: ignore[assignment]
        if eval_mode and training:
            module.train(False)  # flags set inside the block are undone too
            for m in training:
                m.training = True
        for p, requires_grad in grads:
            if p.requires_grad != requires_grad:
                p.requires_grad_(requires_grad)


def first_tensor(output: Any) -> torch.Tensor | None:
    """The first tensor in a layer output (a tensor, or nested lists/tuples/dicts of them)."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (list, tuple)):
        for item in output:
            found = first_tensor(item)
            if found is not None:
                return found
    if isinstance(output, dict):
        for item in output.values():
            found = first_tensor(item)
            if found is not None:
                return found
    return None


def has_hooks(module: nn.Module) -> list[str]:
    """Names of submodules that still carry forward/backward hooks (for tests and checks)."""
    found = []
    for name, m in module.named_modules():
        if (
            m._forward_hooks
            or m._forward_pre_hooks
            or m._backward_hooks
            or getattr(m, "_backward_pre_hooks", None)
        ):
            found.append(name or "<root>")
    return found
