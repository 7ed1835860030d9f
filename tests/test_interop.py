"""ONNX and Keras models through ``convlens.load``: same outputs, activations and gradients
as the original framework, layers reachable by name, clear errors for bad files."""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "torch")  # before anything imports keras

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import convlens
from convlens.core.hooks import has_hooks
from convlens.core.loading import ModelLoadError, load

# Keras' torch backend calls np.array(tensor, copy=False) inside predict (numpy 2 warns).
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

# -- helpers ----------------------------------------------------------------------------------


def small_cnn(seed: int = 0) -> nn.Module:
    """conv-relu-maxpool-conv-relu-avgpool-flatten-linear, seeded, in eval mode."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(4, 8, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 5),
    ).eval()


def export_onnx(net: nn.Module, path: Path, size: int = 16) -> Path:
    """A classic (TorchScript-based) ONNX export with a free batch size."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter is deprecated, still supported
        torch.onnx.export(
            net,
            (torch.zeros(1, 3, size, size),),
            str(path),
            dynamo=False,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        )
    return path


def capture(module: nn.Module, layer: str, inputs: torch.Tensor) -> tuple[torch.Tensor, Any]:
    """(output of ``module``, output of its submodule ``layer``) for ``inputs``."""
    seen: list[torch.Tensor] = []
    handle = module.get_submodule(layer).register_forward_hook(lambda _m, _i, out: seen.append(out))
    try:
        output = module(inputs)
    finally:
        handle.remove()
    assert len(seen) == 1
    return output, seen[0]


def input_gradient(module: nn.Module, inputs: torch.Tensor, index: int) -> torch.Tensor:
    x = inputs.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(module(x)[:, index].sum(), x)
    return grad


# -- ONNX -------------------------------------------------------------------------------------

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnx2torch")


def test_onnx_matches_the_original_network(tmp_path: Path) -> None:
    net = small_cnn()
    model = load(export_onnx(net, tmp_path / "small.onnx"))
    module = model.module
    assert not module.training
    x = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(1))

    # every layer is reachable under the name named_modules() reports
    names = [name for name, _ in module.named_modules() if name]
    for name in names:
        assert module.get_submodule(name) is dict(module.named_modules())[name]
    convs = [name for name in names if isinstance(module.get_submodule(name), nn.Conv2d)]
    assert convs == ["0/Conv", "3/Conv"]  # torch.onnx's "/0/Conv", leading "/" dropped

    with torch.no_grad():
        output, activation = capture(module, convs[0], x)
        torch.testing.assert_close(output, net(x), atol=1e-5, rtol=0)
        torch.testing.assert_close(activation, net[0](x), atol=1e-5, rtol=0)
        torch.testing.assert_close(model(x), net(x), atol=1e-5, rtol=0)

    torch.testing.assert_close(
        input_gradient(module, x, 2), input_gradient(net, x, 2), atol=1e-4, rtol=0
    )
    assert has_hooks(module) == []


def test_onnx_names_with_dots_become_single_path_steps(tmp_path: Path) -> None:
    class Nested(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.features = small_cnn()[:5]
            self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.features(x))

    net = Nested().eval()
    module = load(export_onnx(net, tmp_path / "nested.onnx")).module
    names = [name for name, _ in module.named_modules() if name]
    assert "features/features/0/Conv" in names  # ONNX node "/features/features.0/Conv"
    assert all("." not in name and ":" not in name for name in names)
    for name in names:
        module.get_submodule(name)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(module(x), net(x), atol=1e-5, rtol=0)


def test_onnx_colons_in_node_names_are_replaced(tmp_path: Path) -> None:
    path = export_onnx(small_cnn(), tmp_path / "colons.onnx")
    proto = onnx.load(str(path))
    for node in proto.graph.node:
        node.name = node.name.replace("/Conv", ":conv")
    onnx.save(proto, str(path))
    module = load(path).module
    names = [name for name, _ in module.named_modules() if name]
    assert "0_conv" in names  # "/0:conv" and all(":" not in name for name in names)
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(module(x), small_cnn()(x), atol=1e-5, rtol=0)


def test_onnx_garbage_is_refused_with_a_clear_message(tmp_path: Path) -> None:
    path = tmp_path / "garbage.onnx"
    path.write_bytes(b"\x08" + bytes(range(256)) * 4)  # a protobuf-like first byte, then noise
    with pytest.raises(ModelLoadError, match=r"garbage\.onnx is not a valid ONNX model"):
        load(path)


def test_onnx_suffix_on_a_torch_checkpoint_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "weights.onnx"
    torch.save(small_cnn().state_dict(), path)
    with pytest.raises(ModelLoadError, match=r"suffix \.onnx .* content looks like 'torch'"):
        load(path)


def test_onnx_operators_onnx2torch_lacks_give_a_hint(tmp_path: Path) -> None:
    # ReduceMean from opset 18 takes its axes as an input; onnx2torch has no converter for it.
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["x", "axes"], ["y"], name="mean")],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 1, 1])],
        [helper.make_tensor("axes", TensorProto.INT64, [2], [2, 3])],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    path = tmp_path / "opset18.onnx"
    onnx.save(proto, str(path))
    with pytest.raises(ModelLoadError, match=r"cannot be converted .* dynamo=False"):
        load(path)


# -- Keras ------------------------------------------------------------------------------------


def keras_cnn(seed: int = 0) -> Any:
    """Input 32x32x3, Conv2D 4 relu, MaxPool, Conv2D 8, global average pool, Dense 3 softmax."""
    keras = pytest.importorskip("keras")
    keras.backend.clear_session()  # layer names restart at conv2d, dense
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(4, 3, activation="relu")(inputs)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Conv2D(8, 3)(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(3, activation="softmax")(x)
    return keras.Model(inputs, outputs)


def keras_ready() -> None:
    pytest.importorskip("keras")
    import keras

    if keras.backend.backend() != "torch":
        pytest.skip(f"keras was imported with the {keras.backend.backend()!r} backend")


def images(n: int = 4, size: int = 32) -> torch.Tensor:
    """(N, 3, size, size) random images in [0, 1], seeded."""
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(2))


def check_keras_model(keras_model: Any, path: Path) -> None:
    model = load(path)
    module = model.module
    assert not module.training
    x = images()
    expected = keras_model.predict(x.permute(0, 2, 3, 1).numpy(), verbose=0)

    with torch.no_grad():
        output = model(x)
    assert isinstance(output, torch.Tensor)
    np.testing.assert_allclose(output.cpu().numpy(), expected, atol=1e-5, rtol=0)

    names = [name for name, _ in module.named_modules() if name]
    assert names == ["conv2d", "max_pooling2d", "conv2d_1", "global_average_pooling2d", "dense"]
    for name in names:
        assert module.get_submodule(name).keras_layer.name == name
    assert type(module.get_submodule("conv2d")).__name__ == "Conv2D"

    # a hook on a conv layer sees its output channels-first, equal to Keras' own activation
    keras = pytest.importorskip("keras")
    probe = keras.Model(keras_model.inputs, keras_model.get_layer("conv2d_1").output)
    expected_activation = probe.predict(x.permute(0, 2, 3, 1).numpy(), verbose=0)
    with torch.no_grad():
        _, activation = capture(module, "conv2d_1", x.to(model.device))
    assert tuple(activation.shape) == (4, 8, 13, 13)
    np.testing.assert_allclose(
        activation.cpu().numpy(), expected_activation.transpose(0, 3, 1, 2), atol=1e-5, rtol=0
    )
    assert has_hooks(module) == []

    # gradients reach the input and a captured activation
    grad = input_gradient(module, x.to(model.device), 1)
    assert grad.shape == x.shape and torch.isfinite(grad).all() and grad.abs().sum() > 0
    output, activation = capture(module, "conv2d", x.to(model.device))
    (layer_grad,) = torch.autograd.grad(output[:, 1].sum(), activation)
    assert layer_grad.shape == activation.shape == (4, 4, 30, 30)
    assert layer_grad.abs().sum() > 0

    # the weights are Keras' own tensors, named as Keras names them
    params = dict(module.named_parameters())
    assert set(params) == {
        f"{layer}.{w}" for layer in ("conv2d", "conv2d_1", "dense") for w in ("kernel", "bias")
    }
    assert params["conv2d.kernel"] is keras_model_weight(module, "conv2d")


def keras_model_weight(module: Any, layer: str) -> Any:
    return module.keras_model.get_layer(layer).kernel.value


def test_keras_matches_predict(tmp_path: Path) -> None:
    keras_ready()
    keras_model = keras_cnn()
    path = tmp_path / "tiny.keras"
    keras_model.save(path)
    check_keras_model(keras_model, path)
    module = load(path).module
    assert module.input_size == (3, 32, 32)
    assert module.output_activation == "softmax"


def test_keras_legacy_h5(tmp_path: Path) -> None:
    keras_ready()
    pytest.importorskip("h5py")
    keras_model = keras_cnn()
    path = tmp_path / "tiny.h5"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            keras_model.save(path)
        except Exception as err:  # pragma: no cover - a Keras without the legacy writer
            pytest.skip(f"this Keras no longer writes .h5 files: {err}")
    check_keras_model(keras_model, path)


def test_keras_hooks_can_replace_a_layer_output(tmp_path: Path) -> None:
    keras_ready()
    keras_model = keras_cnn()
    path = tmp_path / "tiny.keras"
    keras_model.save(path)
    module = load(path).module
    x = images(2)
    handle = module.get_submodule("conv2d_1").register_forward_hook(
        lambda _m, _i, out: torch.zeros_like(out)
    )
    try:
        with torch.no_grad():
            output = module(x)
    finally:
        handle.remove()
    # zero features -> the dense layer sees only its (zero-initialised) bias -> uniform
    torch.testing.assert_close(output, torch.full((2, 3), 1 / 3), atol=1e-6, rtol=0)


def test_keras_nested_models_and_shared_layers(tmp_path: Path) -> None:
    keras_ready()
    import keras

    keras.backend.clear_session()
    keras.utils.set_random_seed(3)
    inputs = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(4, 3, padding="same", name="stem")(inputs)
    x = keras.layers.BatchNormalization(name="bn")(x)
    shared = keras.layers.Conv2D(4, 3, padding="same", name="shared")
    a = shared(x)
    x = keras.layers.Concatenate()([keras.layers.Add()([a, shared(a)]), x])
    base = keras.Model(inputs, x, name="base.v1")
    keras_model = keras.Sequential(
        [
            keras.Input((16, 16, 3)),
            base,
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(5),
        ]
    )
    bn = base.get_layer("bn")
    bn.moving_mean.assign(np.linspace(-1, 1, 4).astype("float32"))
    bn.moving_variance.assign(np.linspace(0.5, 2, 4).astype("float32"))
    path = tmp_path / "nested.keras"
    keras_model.save(path)

    module = load(path).module
    names = [name for name, _ in module.named_modules() if name]
    assert names[:3] == ["base_v1", "base_v1.stem", "base_v1.bn"]  # "." in a name becomes "_"
    assert "base_v1.shared" in names
    assert {n for n, _ in module.get_submodule("base_v1.bn").named_buffers()} == {
        "moving_mean",
        "moving_variance",
    }
    x = images(2, 16)
    calls: list[tuple[int, ...]] = []
    handle = module.get_submodule("base_v1.shared").register_forward_hook(
        lambda _m, _i, out: calls.append(tuple(out.shape))
    )
    try:
        with torch.no_grad():
            output = module(x)
    finally:
        handle.remove()
    assert calls == [(2, 4, 16, 16), (2, 4, 16, 16)]  # the shared layer ran twice
    expected = keras_model.predict(x.permute(0, 2, 3, 1).numpy(), verbose=0)
    np.testing.assert_allclose(output.cpu().numpy(), expected, atol=1e-5, rtol=0)


def test_keras_text_file_is_refused(tmp_path: Path) -> None:
    keras_ready()
    from convlens.core.formats.keras_model import load_keras

    path = tmp_path / "notes.keras"
    path.write_text("these are my notes, not a model\n")
    with pytest.raises(ModelLoadError, match=r"notes\.keras .*content looks like 'unknown'"):
        load(path)
    with pytest.raises(ModelLoadError, match=r"notes\.keras is not a Keras archive"):
        load_keras(path)


def test_keras_broken_archive_is_refused(tmp_path: Path) -> None:
    keras_ready()
    import zipfile

    path = tmp_path / "broken.keras"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("config.json", "{not json")
    with pytest.raises(ModelLoadError, match=r"broken\.keras could not be read as a Keras model"):
        load(path)


def test_keras_with_another_backend_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    keras_ready()
    import keras

    from convlens.core.formats.keras_model import load_keras

    monkeypatch.setattr(keras.backend, "backend", lambda: "jax")
    with pytest.raises(ImportError, match="KERAS_BACKEND=torch"):
        load_keras(tmp_path / "any.keras")


def test_keras_handle_uses_its_input_size_and_probabilities(tmp_path: Path) -> None:
    keras_ready()
    keras_model = keras_cnn()
    path = tmp_path / "cnn.keras"
    keras_model.save(path)
    model = load(path)
    assert model.input_shape == (3, 32, 32)
    table = model.layers()
    assert table.get("conv2d").output_shape == (1, 4, 30, 30)  # channels-first, as everywhere
    assert table.get("conv2d").kind == "conv" and table.get("dense").kind == "linear"
    x = images()
    expected = keras_model.predict(x.permute(0, 2, 3, 1).numpy(), verbose=0)
    # the model ends in softmax: convlens must not apply a second one
    np.testing.assert_allclose(model.probabilities(x).numpy(), expected, atol=1e-5, rtol=0)
    acts = convlens.activations(model, x, ["conv2d_1"])
    assert acts["conv2d_1"].shape == (4, 8, 13, 13)


def test_onnx_handle_reads_the_graph_input_size(tmp_path: Path) -> None:
    model = load(export_onnx(small_cnn(), tmp_path / "small.onnx"))
    assert model.input_shape == (3, 16, 16)
    assert model.layers().get("0/Conv").kind == "conv"
    picture = Image.new("RGB", (40, 20), (255, 0, 0))
    assert model.prepare(picture).inputs.shape == (1, 3, 16, 16)
