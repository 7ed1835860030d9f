"""Scoped hooks and a guard that leaves the user's model as it was.

Hooks exist only inside a ``with`` block and are removed on every exit path, errors
included. Nothing here registers a hook that outlives the block.
"""

from __future__ import annotations

import itertools
import weakref
from collections.abc import Callable, Collection, Iterable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import torch
from torch import nn

from convlens.core.naming import get_layer, split_call

T = TypeVar("T")
OutputFn = Callable[[str, Any], Any]
StartFn = Callable[[str, tuple[Any, ...]], Any]


@contextmanager
def forward_hooks(
    module: nn.Module,
    names: Iterable[str],
    on_output: OutputFn | None,
    *,
    on_start: StartFn | None = None,
    channels_last: Collection[str] = (),
) -> Iterator[None]:
    """Call ``on_output(name, output)`` whenever a named layer returns, inside the block.

    ``on_output`` may return a replacement output (as a PyTorch forward hook may) or ``None``
    to keep it. ``on_start(name, inputs)`` runs when a layer is entered (a pre-hook), which
    gives the true call order of nested modules. A plain name sees every call of its module;
    ``name#k`` (:func:`~convlens.core.naming.split_call`) only the ``k``-th call in each forward
    pass of ``module`` (the count restarts whenever ``module`` itself is called). Every name is
    resolved before any hook is added, so an unknown name leaves the model untouched.

    The layers in ``channels_last`` compute in (N, H, W, C) (the layer table knows which:
    :meth:`~convlens.core.layers.LayerTable.channels_last`); ``on_output`` gets their output
    as an (N, C, H, W) view, and a replacement it returns is turned back before the network
    goes on.
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
        (name, *split_call(name), modules[name] if name in modules else get_layer(module, name))
        for name in names
    ]
    counts: dict[str, int] = {}  # calls so far in this forward pass, per module name counted
    handles = []

    def restart(_m: nn.Module, _inputs: Any) -> None:
        counts.clear()

    def count(base: str) -> Callable[..., None]:
        def pre(_m: nn.Module, _inputs: Any) -> None:
            counts[base] = counts.get(base, 0) + 1

        return pre

    try:
        if any(call is not None for _, _, call, _ in layers):
            handles.append(module.register_forward_pre_hook(restart))
            for base, layer in {b: m for _, b, c, m in layers if c is not None}.items():
                handles.append(layer.register_forward_pre_hook(count(base)))
        for name, base, call, layer in layers:
            if on_output is not None:
                see = _as_nchw(on_output) if name in channels_last else on_output
                handles.append(
                    layer.register_forward_hook(_output_hook(name, base, call, counts, see))
                )
            if on_start is not None:
                handles.append(
                    layer.register_forward_pre_hook(_start_hook(name, base, call, counts, on_start))
                )
        yield
    finally:
        for handle in handles:
            handle.remove()


def _as_nchw(on_output: OutputFn) -> OutputFn:
    """``on_output`` seeing a channels-last (N, H, W, C) output as (N, C, H, W)."""

    def see(name: str, output: Any) -> Any:
        if not isinstance(output, torch.Tensor) or output.dim() != 4:
            return on_output(name, output)
        replaced = on_output(name, output.permute(0, 3, 1, 2))
        if isinstance(replaced, torch.Tensor) and replaced.dim() == 4:
            return replaced.permute(0, 2, 3, 1)
        return replaced

    return see


def _output_hook(
    name: str, base: str, call: int | None, counts: dict[str, int], on_output: OutputFn
) -> Callable[..., Any]:
    if call is None:
        return lambda _m, _inp, out: on_output(name, out)

    def hook(_m: nn.Module, _inp: Any, out: Any) -> Any:
        return on_output(name, out) if counts.get(base) == call else None

    return hook


def _start_hook(
    name: str, base: str, call: int | None, counts: dict[str, int], on_start: StartFn
) -> Callable[..., Any]:
    if call is None:
        return lambda _m, inp: on_start(name, inp)

    def hook(_m: nn.Module, inp: Any) -> Any:
        return on_start(name, inp) if counts.get(base) == call else None

    return hook


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


@contextmanager
def folded_batchnorm(module: nn.Module, keep: Iterable[str] = ()) -> Iterator[int]:
    """Inside the block, every ``Conv2d`` directly followed by an eval-mode ``BatchNorm2d`` in
    the same ``nn.Sequential`` runs as one convolution with the normalisation folded into its
    weights and bias, and the ``BatchNorm2d`` passes its input through: the same numbers (to
    float rounding) for a third less work in a forward and backward pass (batch norm's backward
    costs about as much as the convolution's on CPU). Yields how many pairs were folded.

    The convolutions named in ``keep`` (layers whose own output is read), any with hooks, and
    any whose ``forward`` is already overridden are left alone. A hook on a folded
    ``BatchNorm2d`` sees what it would have seen. Nothing is folded when gradients with respect
    to the weights are wanted (a parameter with ``requires_grad``). The model's modules and
    parameters are not changed; the overrides are removed on every exit path.
    """
    kept = {split_call(name)[0] for name in keep}
    uses: dict[int, int] = {}
    for _, m in module.named_modules(remove_duplicate=False):
        uses[id(m)] = uses.get(id(m), 0) + 1  # a module used in two places is left alone
    pairs: list[tuple[nn.Conv2d, nn.BatchNorm2d]] = []
    for name, parent in module.named_modules():
        if not isinstance(parent, nn.Sequential):
            continue
        children = list(parent.named_children())
        for (conv_name, conv), (_, bn) in itertools.pairwise(children):
            full = f"{name}.{conv_name}" if name else conv_name
            if (
                type(conv) is nn.Conv2d
                and type(bn) is nn.BatchNorm2d
                and full not in kept
                and uses[id(conv)] == 1
                and uses[id(bn)] == 1
                and not bn.training
                and bn.running_mean is not None
                and bn.running_var is not None
                and bn.num_features == conv.out_channels
                and not (conv._forward_hooks or conv._forward_pre_hooks)
                and "forward" not in vars(conv)
                and "forward" not in vars(bn)
                and not any(p.requires_grad for p in (*conv.parameters(), *bn.parameters()))
            ):
                pairs.append((conv, bn))
    patched: list[nn.Module] = []
    try:
        with torch.no_grad():
            for conv, bn in pairs:
                assert bn.running_var is not None and bn.running_mean is not None
                scale = (bn.running_var.double() + bn.eps).rsqrt()
                if bn.weight is not None:
                    scale = scale * bn.weight.double()
                shift = -bn.running_mean.double() * scale
                if bn.bias is not None:
                    shift = shift + bn.bias.double()
                if conv.bias is not None:
                    shift = shift + conv.bias.double() * scale
                weight = (conv.weight.double() * scale.view(-1, 1, 1, 1)).to(conv.weight.dtype)
                bias = shift.to(conv.weight.dtype)
                conv.forward = _folded_forward(conv, weight, bias)  # type: ignore[method-assign, assignment]
                patched.append(conv)
                bn.forward = _identity  # type: ignore[method-assign, assignment]
                patched.append(bn)
        yield len(pairs)
    finally:
        for m in patched:
            del m.forward


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def _folded_forward(
    conv: nn.Conv2d, weight: torch.Tensor, bias: torch.Tensor
) -> Callable[[torch.Tensor], torch.Tensor]:
    def forward(x: torch.Tensor) -> torch.Tensor:
        return conv._conv_forward(x, weight, bias)

    return forward


_NCHW_ONLY: weakref.WeakSet[nn.Module] = weakref.WeakSet()


def call_fast(module: nn.Module, inputs: torch.Tensor, call: Callable[[torch.Tensor], T]) -> T:
    """``call(x)`` with ``x`` the (N, C, H, W) ``inputs`` in channels-last layout on the CPU,
    where oneDNN's kernels are 1.3-2.5x faster (depthwise convolutions most). A network that
    refuses that layout (a RuntimeError, e.g. from ``.view``) is run again with the inputs as
    they came, and remembered, so it is not tried again. ``call`` must start from a clean
    state: it may run twice."""
    if inputs.device.type != "cpu" or inputs.dim() != 4 or module in _NCHW_ONLY:
        return call(inputs)
    try:
        return call(inputs.contiguous(memory_format=torch.channels_last))
    except RuntimeError:
        _NCHW_ONLY.add(module)
        return call(inputs.contiguous())


class StopForward(Exception):
    """Raised by a :func:`recorder` once every layer it waits for has run: the rest of the
    forward pass is skipped (catch it around the call)."""


def recorder(store: dict[str, torch.Tensor], stop_after: Iterable[str] | None) -> OutputFn:
    """An ``on_output`` for :func:`forward_hooks` that keeps each layer's first output tensor in
    ``store`` (a layer that returns no tensor is an error) and raises :class:`StopForward` once
    every layer in ``stop_after`` is there (``None``: never)."""
    wanted = None if stop_after is None else set(stop_after)

    def keep(name: str, output: Any) -> None:
        if name in store:
            return
        tensor = first_tensor(output)
        if tensor is None:
            raise ValueError(f"layer {name!r} returned no tensor")
        store[name] = tensor
        if wanted is not None and wanted <= store.keys():
            raise StopForward

    return keep


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
