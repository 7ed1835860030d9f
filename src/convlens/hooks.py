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


@contextmanager
def forward_hooks(
    module: nn.Module,
    names: Iterable[str],
    on_output: OutputFn,
    *,
    on_start: Callable[[str], None] | None = None,
) -> Iterator[None]:
    """Call ``on_output(name, output)`` whenever a named layer returns, inside the block.

    ``on_output`` may return a replacement output (as a PyTorch forward hook may) or ``None``
    to keep it. ``on_start(name)`` runs when a layer is entered (a pre-hook), which gives the
    true call order of nested modules. Every name is resolved before any hook is added, so
    an unknown name leaves the model untouched.
    """
    layers = [(name, get_layer(module, name)) for name in names]
    if layers and isinstance(module, torch.jit.ScriptModule):
        raise ValueError(
            "TorchScript modules do not support hooks, so their layers cannot be observed; "
            "load the eager network instead (a state_dict with factory=...)"
        )
    handles = []
    try:
        for name, layer in layers:
            handles.append(
                layer.register_forward_hook(lambda _m, _inp, out, name=name: on_output(name, out))
            )
            if on_start is not None:
                handles.append(
                    layer.register_forward_pre_hook(
                        lambda _m, _inp, name=name: on_start(name)  # type: ignore[misc]
                    )
                )
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def preserved(module: nn.Module, *, eval_mode: bool = True) -> Iterator[nn.Module]:
    """Run with ``module`` in eval mode and restore every submodule's ``training`` flag and
    every parameter's ``requires_grad`` afterwards, whatever happens inside."""
    modes = [(m, m.training) for m in module.modules()]
    grads = [(p, p.requires_grad) for p in module.parameters()]
    try:
        if eval_mode:
            module.eval()
        yield module
    finally:
        for m, training in modes:
            m.training = training
        for p, requires_grad in grads:
            p.requires_grad_(requires_grad)


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
