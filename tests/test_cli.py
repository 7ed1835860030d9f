"""The command line, end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TinyNet
from PIL import Image
from typer.testing import CliRunner

import convlens as cl
from convlens.apps.cli import app

runner = CliRunner()
DEMO_NAMES = ["gradcam", "gradcam++", "layercam", "integrated_gradients", "smoothgrad", "occlusion"]


@pytest.fixture
def files(tmp_path):
    """A plugin model (TinyNet on grey 4x4 pictures) and two pictures."""
    plugin = tmp_path / "tiny_plugin.py"
    plugin.write_text(
        "import sys\n"
        f"sys.path.insert(0, {str(__import__('pathlib').Path(__file__).parent)!r})\n"
        "import convlens as cl\n"
        "from conftest import TinyNet\n"
        "model = cl.Model(TinyNet(), labels=['alpha', 'beta', 'gamma'], name='tiny',\n"
        "    preprocess=cl.Preprocessing(crop=4, resize=4, mean=(0.0,), std=(1.0,), channels=1))\n"
    )
    Image.new("RGB", (8, 8), (255, 255, 255)).save(tmp_path / "white.png")
    Image.new("RGB", (8, 8), (0, 0, 0)).save(tmp_path / "black.png")
    return tmp_path


def test_help_does_not_import_torch():
    code = "import sys, convlens.apps.cli; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_layers_table_and_json(files):
    result = runner.invoke(app, ["layers", str(files / "tiny_plugin.py")])
    assert result.exit_code == 0, result.output
    assert (
        "conv" in result.output
        and "1x2x4x4" in result.output
        and "total parameters: 29" in result.output
    )
    result = runner.invoke(
        app, ["layers", str(files / "tiny_plugin.py"), "--kind", "pool", "--json"]
    )
    rows = json.loads(result.output)["layers"]
    assert [r["name"] for r in rows] == ["pool", "gap"]
    assert rows[0]["output_shape"] == [1, 2, 2, 2]


def test_predict_json_numbers(files):
    result = runner.invoke(
        app,
        [
            "predict",
            str(files / "tiny_plugin.py"),
            str(files / "white.png"),
            "--top",
            "3",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    (entry,) = json.loads(result.output)
    # a white 4x4 picture (all ones): each 2x2 pool window holds one full 3x3 sum, 9
    logits = torch.tensor([9.0, 0.0, 9.0])
    probs = logits.softmax(0)
    by_label = {t["label"]: t["probability"] for t in entry["top"]}
    assert by_label["beta"] == pytest.approx(float(probs[1]), rel=1e-5)
    assert by_label["alpha"] == pytest.approx(float(probs[0]), rel=1e-5)


def test_activations_writes_grids_heatmaps_and_npz(files):
    out = files / "out"
    result = runner.invoke(
        app,
        [
            "activations",
            str(files / "tiny_plugin.py"),
            str(files),
            "--layer",
            "conv,pool:0",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    written = sorted(p.name for p in out.iterdir())
    assert written == [
        "activations.npz",
        "black__conv.png",
        "black__pool_0.png",
        "white__conv.png",
        "white__pool_0.png",
    ]
    with np.load(out / "activations.npz") as npz:
        assert npz["__images__"].tolist() == ["black", "white"]
        expected = TinyNet().conv(torch.ones(1, 1, 4, 4)).detach().numpy()
        np.testing.assert_allclose(npz["conv"][1:2], expected, rtol=1e-6)


def test_errors_are_one_line(files):
    bad = files / "broken.jpg"
    bad.write_text("not a picture")
    result = runner.invoke(app, ["predict", str(files / "tiny_plugin.py"), str(bad)])
    assert result.exit_code == 2
    assert "error:" in result.output and "broken.jpg" in result.output
    assert "Traceback" not in result.output
    result = runner.invoke(
        app, ["activations", str(files / "tiny_plugin.py"), str(files / "white.png"), "-l", "cnv"]
    )
    assert result.exit_code == 2 and "did you mean 'conv'" in result.output
    result = runner.invoke(app, ["layers", "resnet9000"])
    assert result.exit_code == 2 and "unknown model" in result.output
    pickled = files / "whole.pt"
    torch.save(TinyNet(), pickled)
    result = runner.invoke(app, ["layers", str(pickled)])
    assert result.exit_code == 2 and "--trust-pickle" in result.output


def test_zoo_lists_mobilenet():
    result = runner.invoke(app, ["zoo"])
    assert result.exit_code == 0 and "mobilenet_v2" in result.output


@pytest.mark.slow
def test_demo_writes_a_self_contained_page(tmp_path):
    result = runner.invoke(app, ["demo", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    page = tmp_path / "index.html"
    assert str(page) in result.output.replace("\n", "")
    html = page.read_text()
    assert "Egyptian cat" in html and "espresso" in html
    assert "http://" not in html and "https://" not in html
    assert html.count("data:image/png;base64,") >= 10
    assert len(list((tmp_path / "activations").glob("*.png"))) == 6
    assert cl.load_image(tmp_path / "activations" / "features.3.png").width > 200
    assert "Why this decision" in html
    overlays = {p.name for p in (tmp_path / "explanations").glob("chelsea__*.png")}
    assert overlays == {f"chelsea__{m}.png" for m in DEMO_NAMES}


def test_explain_takes_scorecams_channels(files):
    """``--channels`` comes from Score-CAM's settings table: the map is the library's."""
    out = files / "scorecam"
    args = [str(files / "tiny_plugin.py"), str(files / "white.png"), "--method", "scorecam"]
    result = runner.invoke(
        app, ["explain", *args, "--layer", "pool", "--channels", "1", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["explanations"][0]["settings"]["channels"] == 1
    with np.load(out / "scorecam.npz") as npz:
        reference = cl.explain(
            cl.load(files / "tiny_plugin.py"), files / "white.png", "scorecam", layer="pool",
            channels=1,
        )  # fmt: skip
        np.testing.assert_allclose(npz["map"], reference.map.numpy())
    bad = runner.invoke(app, ["explain", *args, "--channels", "0", "--out", str(out)])
    assert bad.exit_code != 0 and "channels" in bad.output


def test_explain_writes_overlays_maps_summary_and_page(files):
    out = files / "explain"
    result = runner.invoke(
        app,
        [
            "explain",
            str(files / "tiny_plugin.py"),
            str(files / "white.png"),
            str(files / "black.png"),
            "--method",
            "gradcam,ig,occlusion",
            "--target",
            "beta,gamma",
            "--window",
            "2",
            "--stride",
            "1",
            "--steps",
            "8",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["images"] == ["white", "black"]
    runs = [(e["method"], e["target_labels"]) for e in summary["explanations"]]
    assert runs == [
        ("gradcam", ["beta", "beta"]),
        ("gradcam", ["gamma", "gamma"]),
        ("integrated_gradients", ["beta", "beta"]),
        ("integrated_gradients", ["gamma", "gamma"]),
        ("occlusion", ["beta", "beta"]),
        ("occlusion", ["gamma", "gamma"]),
    ]
    assert summary["explanations"][4]["settings"]["window"] in (2, [2, 2])
    with np.load(out / "occlusion__beta.npz") as npz:
        reference = cl.explain(
            cl.load(files / "tiny_plugin.py"),
            [files / "white.png", files / "black.png"],
            "occlusion",
            "beta",
            window=2,
            stride=1,
        )
        np.testing.assert_allclose(npz["map"], reference.map.numpy())
    assert (out / "white__gradcam__gamma.png").is_file()
    html = (out / "index.html").read_text()
    assert "integrated_gradients" in html and "https://" not in html.replace("https://arxiv", "")


def test_explain_errors(files):
    result = runner.invoke(
        app, ["explain", str(files / "tiny_plugin.py"), str(files / "white.png"), "-m", "gradcma"]
    )
    assert result.exit_code == 2 and "did you mean 'gradcam'" in result.output
    result = runner.invoke(
        app,
        ["explain", str(files / "tiny_plugin.py"), str(files / "white.png"), "-t", "zeta"],
    )
    assert result.exit_code == 2 and "unknown class 'zeta'" in result.output
    result = runner.invoke(
        app,
        ["explain", str(files / "tiny_plugin.py"), str(files / "white.png"), "-l", "pol"],
    )
    assert result.exit_code == 2 and "did you mean 'pool'" in result.output


def test_methods_lists_the_registry():
    result = runner.invoke(app, ["methods"])
    assert result.exit_code == 0
    for name in cl.methods():
        assert name in result.output


def test_an_extreme_aspect_ratio_is_refused_in_one_line(tmp_path):
    """85 bytes of PNG that preprocessing would blow up to a gigabyte: exit 2, one line, no
    MemoryError (issue 18, finding 1)."""
    Image.new("RGB", (8000, 1), (200, 10, 10)).save(tmp_path / "strip.png", optimize=True)
    for command in (["predict"], ["explain", "--out", str(tmp_path / "x")]):
        result = runner.invoke(
            app, [command[0], "toon-cnn", str(tmp_path / "strip.png"), *command[1:]]
        )
        assert result.exit_code == 2, result.output
        (line,) = result.output.strip().splitlines()
        assert line.startswith("error: strip: ") and "8000x1" in line and "aspect ratio" in line


@pytest.mark.parametrize(
    "command", [["predict"], ["activations", "--layer", "conv"], ["explain", "-m", "saliency"]]
)
def test_one_unreadable_picture_in_a_folder_costs_only_itself(files, command):
    """The bad picture is named, the good ones are done, the exit status is 2 at the end
    (issue 18)."""
    folder = files / "pictures"
    folder.mkdir()
    for name in ("white.png", "black.png"):
        (folder / name).write_bytes((files / name).read_bytes())
    (folder / "broken.png").write_text("not a picture")
    out = files / "out"
    result = runner.invoke(
        app,
        [command[0], str(files / "tiny_plugin.py"), str(folder), *command[1:], "--out", str(out)]
        if command[0] != "predict"
        else [command[0], str(files / "tiny_plugin.py"), str(folder), "--json"],
    )
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 2 and "broken.png" in errors[0] and "1 of 3" in errors[1]
    assert "Traceback" not in result.output
    if command[0] == "predict":
        assert '"image": "black"' in result.output and '"image": "white"' in result.output
    elif command[0] == "explain":
        assert {p.name for p in out.glob("*__saliency.png")} == {
            "black__saliency.png",
            "white__saliency.png",
        }
    else:
        assert (out / "activations.npz").exists()


def test_demo_says_what_it_does_when_not_on_a_terminal(monkeypatch, tmp_path):
    """`make demo` into a log: one line per step, not a silent progress bar (issue 18)."""
    import convlens.apps.demo as demo

    def fake_run(out, *, model, progress):
        for i, step in enumerate(["predictions", "activations", "explanations"]):
            progress(i, 3, step)
        progress(3, 3, "done")
        return Path(out) / "index.html"

    monkeypatch.setattr(demo, "run", fake_run)
    result = runner.invoke(app, ["demo", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("demo: step")]
    assert [line.split(" (")[0] for line in lines] == [
        "demo: step 1/3 predictions",
        "demo: step 2/3 activations",
        "demo: step 3/3 explanations",
        "demo: step 3/3 done",
    ]
    help_text = " ".join(runner.invoke(app, ["demo", "--help"]).output.replace("│", " ").split())
    for promised in ("Grad-CAM", "Integrated Gradients", "occlusion", "colour bar", "feature"):
        assert promised in help_text
