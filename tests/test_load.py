"""convlens.load on every kind of source, and every kind of bad file."""

from __future__ import annotations

import sys
import textwrap

import pytest
import torch
from conftest import TinyNet

import convlens as cl
from convlens.core.formats.registry import sniff
from convlens.core.loading import ModelLoadError, PickleRefusedError

X = torch.arange(16, dtype=torch.float32).view(1, 1, 4, 4) * 0.01
GREY = {
    "preprocess": cl.Preprocessing(crop=None, resize=None, mean=(0.0,), std=(1.0,), channels=1),
    "input_size": (1, 4, 4),
}


@pytest.fixture
def factory_module(tmp_path, monkeypatch):
    """An importable module `tinyfactory` with a factory `build()` returning a TinyNet."""
    (tmp_path / "tinyfactory.py").write_text(
        textwrap.dedent(
            """
            from torch import nn
            from conftest import TinyNet

            def build():
                return TinyNet()

            def wrong():
                return nn.Linear(3, 3)
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "tinyfactory"
    sys.modules.pop("tinyfactory", None)


def expected_logits() -> torch.Tensor:
    return TinyNet().eval()(X)


def test_module_and_model_pass_through(tiny):
    assert cl.load(tiny) is tiny
    renamed = cl.load(tiny, name="other")
    assert renamed.name == "other" and renamed.module is tiny.module
    wrapped = cl.load(TinyNet(), **GREY)
    torch.testing.assert_close(wrapped(X), expected_logits())


@pytest.mark.filterwarnings("ignore:`torch.jit")
def test_torchscript(tmp_path):
    path = tmp_path / "tiny.pt"
    torch.jit.script(TinyNet()).save(str(path))
    assert sniff(path) == "torchscript"
    model = cl.load(path, **GREY)
    torch.testing.assert_close(model(X), expected_logits())
    table = cl.layer_table(model)
    assert table.names[:2] == ["conv", "relu"] and table.get("conv").type == "Conv2d"
    assert table.get("conv").params == 20 and table.get("conv").output_shape is None
    with pytest.raises(ValueError, match="TorchScript modules do not support hooks"):
        cl.activations(model, X, ["conv"])


def test_state_dict_with_factory(tmp_path, factory_module):
    path = tmp_path / "weights.pth"
    torch.save(TinyNet().state_dict(), path)
    with pytest.raises(ModelLoadError, match="holds only weights.*factory="):
        cl.load(path)
    model = cl.load(path, factory=f"{factory_module}:build", **GREY)
    torch.testing.assert_close(model(X), expected_logits())
    nested = tmp_path / "nested.ckpt"
    torch.save({"epoch": 3, "state_dict": TinyNet().state_dict()}, nested)
    torch.testing.assert_close(cl.load(nested, factory=TinyNet, **GREY)(X), expected_logits())
    with pytest.raises(ModelLoadError, match="do not fit the factory's network"):
        cl.load(path, factory=f"{factory_module}:wrong")
    with pytest.raises(ModelLoadError, match="has no attribute 'nope'"):
        cl.load(path, factory=f"{factory_module}:nope")


def test_npz_weights_with_factory(tmp_path, factory_module):
    import numpy as np

    path = tmp_path / "weights.npz"
    np.savez(path, **{k: v.numpy() for k, v in TinyNet().state_dict().items()})
    assert sniff(path) == "zip"
    with pytest.raises(ModelLoadError, match="holds only weights.*factory="):
        cl.load(path)
    model = cl.load(path, factory=f"{factory_module}:build", **GREY)
    torch.testing.assert_close(model(X), expected_logits())
    assert model.name == "weights"
    objects = tmp_path / "objects.npz"
    np.savez(objects, w=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ModelLoadError, match="object arrays are refused"):
        cl.load(objects, factory=f"{factory_module}:build")


def test_formats_register_themselves():
    from convlens.core.formats import FORMATS, suffixes

    assert {"torch", "onnx", "keras", "safetensors", "npz", "plugin"} <= set(FORMATS.names())
    assert suffixes()[".npz"] == "npz" and suffixes()[".pth"] == "torch"
    for name in FORMATS.names():
        entry = FORMATS.get(name)
        assert entry.suffixes and entry.content and entry.description


def test_factory_string(factory_module):
    model = cl.load(f"{factory_module}:build", **GREY)
    assert model.name == "tinyfactory:build"
    assert model(X).shape == (1, 3)


def test_pickled_model_is_refused_unless_trusted(tmp_path):
    path = tmp_path / "whole.pt"
    torch.save(TinyNet(), path)
    with pytest.raises(PickleRefusedError, match="pickled Python objects.*trust_pickle=True"):
        cl.load(path)
    model = cl.load(path, trust_pickle=True, **GREY)
    torch.testing.assert_close(model(X), expected_logits())


def test_plugin_file(tmp_path):
    plugin = tmp_path / "my_plugin.py"
    plugin.write_text(
        textwrap.dedent(
            """
            import torch
            import convlens as cl

            net = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())

            def preprocess(images):
                return torch.stack([cl.images.to_tensor(im.resize((8, 8))) for im in images])

            model = cl.Model(net, preprocess=preprocess, postprocess="none",
                             labels=["r", "g", "b"], name="colour means", input_size=(3, 8, 8))
            """
        )
    )
    model = cl.load(plugin)
    assert model.name == "colour means"
    from PIL import Image

    probs = model.probabilities(Image.new("RGB", (20, 10), (255, 0, 0)))
    torch.testing.assert_close(probs, torch.tensor([[1.0, 0.0, 0.0]]))
    broken = tmp_path / "broken.py"
    broken.write_text("raise RuntimeError('no model here')\n")
    with pytest.raises(ModelLoadError, match="broken.py raised RuntimeError"):
        cl.load(broken)
    empty = tmp_path / "empty.py"
    empty.write_text("x = 1\n")
    with pytest.raises(ModelLoadError, match="must define `model`"):
        cl.load(empty)


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("empty.pt", b"", "is empty"),
        ("text.pt", b"hello, I am not a model\n", "content looks like"),
        ("fake.keras", b"just some text", "content looks like"),
        ("weights.xyz", b"123", "unknown model file type '.xyz'"),
    ],
)
def test_bad_files(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ModelLoadError, match=message):
        cl.load(path)


def test_checkpoint_renamed_to_onnx(tmp_path):
    path = tmp_path / "model.onnx"
    torch.save(TinyNet().state_dict(), path)
    with pytest.raises(
        ModelLoadError, match=r"suffix \.onnx \(onnx\) but its content looks like 'torch'"
    ):
        cl.load(path)


def test_truncated_checkpoint(tmp_path):
    path = tmp_path / "cut.pt"
    torch.save(TinyNet().state_dict(), path)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(ModelLoadError):
        cl.load(path)


def test_names_that_are_nothing(tmp_path):
    with pytest.raises(cl.UnknownNameError, match="did you mean 'mobilenet_v2'"):
        cl.load("mobilenet_v3")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        cl.load(tmp_path / "missing.onnx")
    with pytest.raises(ModelLoadError, match="is a folder"):
        cl.load(tmp_path)
    with pytest.raises(TypeError, match="expected a Model"):
        cl.load(42)
