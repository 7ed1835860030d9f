"""Segmenters: the handle on a hand-built network with known output, Seg-Grad-CAM and its
Layer-CAM variant against closed forms, occlusion and RISE of a region against
obviously-correct references, torchvision's dict convention and its segmentation names (random
weights in a temporary hub cache), the shipped toon segmenter against fresh toons (IoU, and
the energy of its region explanations in the explained part's true mask), the CLI, and a
user's model left as it was."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import model_state
from torch import nn
from typer.testing import CliRunner

import convlens as cl
from convlens.core import segmenter as S
from convlens.core.hooks import has_hooks
from convlens.core.model import Preprocessing
from convlens.core.naming import UnknownNameError
from convlens.core.render import PALETTE
from convlens.techniques.attribution import segmentation as R

PLAIN = Preprocessing(crop=None, resize=None, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
METHODS = ("gradcam", "layercam", "occlusion", "rise")


class TinySeg(nn.Module):
    """conv 3x3 (3 -> 2) -> ReLU -> 1x1 classifier (2 -> 3 classes), torchvision's dict.

    Channel 0 of the conv copies the red value of the centre pixel, channel 1 the green one
    (bias 0), so after the ReLU ``A = (red, green)``. The classifier gives
    ``background = 0.5``, ``red thing = 2 red``, ``green thing = 2 green - red``; ``"aux"``
    (ignored by convlens) is the negated logits."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 3, padding=1)
        self.relu = nn.ReLU()
        self.classifier = nn.Conv2d(2, 3, 1)
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.weight[0, 0, 1, 1] = 1.0
            self.conv.weight[1, 1, 1, 1] = 1.0
            self.conv.bias.zero_()
            self.classifier.weight.copy_(W.view(3, 2, 1, 1))
            self.classifier.bias.copy_(B)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out = self.classifier(self.relu(self.conv(x)))
        return {"out": out, "aux": -out}


class Exploding(TinySeg):
    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        self.relu(self.conv(x))
        raise RuntimeError("boom halfway")


W = torch.tensor([[0.0, 0.0], [2.0, 0.0], [-1.0, 2.0]])
B = torch.tensor([0.5, 0.0, 0.0])


def tiny(module: nn.Module | None = None) -> cl.Segmenter:
    return cl.Segmenter(
        module or TinySeg(), ["background", "red", "green"], name="tiny", preprocess=PLAIN,
        layer="relu",
    )  # fmt: skip


def picture(seed: int = 0, size: int = 8) -> torch.Tensor:
    return torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(seed))


def hand_logits(x: torch.Tensor) -> torch.Tensor:
    """(K, H, W) logits of TinySeg computed on paper."""
    red, green = x[0, 0], x[0, 1]
    return torch.stack([torch.full_like(red, 0.5), 2 * red, 2 * green - red])


# -- the handle ------------------------------------------------------------------------------------


def test_segmenter_gives_the_hand_computed_classes_and_probabilities():
    x = torch.zeros(1, 3, 6, 6)
    x[0, 0, :, :3] = 0.9  # left half red: red logit 1.8 beats 0.5 and -0.9
    x[0, 1, 2:5, 4:] = 0.8  # a green patch on the right: 1.6 > 0.5
    seg = cl.segment(tiny(), x)
    expected = torch.zeros(6, 6, dtype=torch.long)
    expected[:, :3] = 1
    expected[2:5, 4:] = 2
    assert torch.equal(seg.class_map, expected)
    assert torch.allclose(seg.probabilities, hand_logits(x).softmax(0), atol=1e-6)
    assert seg.shares() == {"background": 12 / 36, "red": 18 / 36, "green": 6 / 36}
    assert torch.equal(seg.mask("green"), expected == 2)
    assert int(seg.mask(1).sum()) == 18
    index, region = seg.region_at(5, 3)
    assert index == 2 and torch.equal(region, expected == 2)
    record = json.loads(seg.to_json())
    assert [c["pixels"] for c in record["classes"]] == [12, 18, 6]
    p_red = math.exp(1.8) / (math.exp(0.5) + math.exp(1.8) + math.exp(-0.9))
    assert record["classes"][1]["mean_probability"] == pytest.approx(p_red, abs=1e-5)
    drawn = torch.tensor(np.array(seg.draw(min_side=0, legend=False)), dtype=torch.float64)
    assert drawn[0, 5].tolist() == [0, 0, 0]  # background left clear
    assert drawn[0, 2].tolist() == list(PALETTE[1])  # the region's edge: the class colour
    blend = 0.45 * torch.tensor([230.0, 0, 0]) + 0.55 * torch.tensor(PALETTE[1])
    assert drawn[1, 1].tolist() == blend.round().tolist()  # inside: 55 % of the colour
    with_legend = seg.draw()
    assert with_legend.width == 384 and with_legend.height > 384


def test_dict_output_aux_ignored_and_coarse_logits_resized():
    x = picture(1)
    assert torch.allclose(tiny().raw(x)[0], hand_logits(x), atol=1e-6)  # "out", not "aux"
    coarse = torch.randn(2, 3, 4, 4)
    expected = F.interpolate(coarse, size=(8, 8), mode="bilinear", align_corners=False)
    assert torch.equal(S.segmentation_logits({"out": coarse, "aux": coarse}, (8, 8)), expected)
    with pytest.raises(ValueError, match="'out'"):
        S.segmentation_logits({"logits": coarse})


def test_a_module_that_says_segment_loads_as_a_segmenter_and_others_refuse_it():
    module = TinySeg()
    module.task = "segment"  # type: ignore[assignment]
    handle = cl.load(module, labels=["background", "red", "green"], preprocess=PLAIN)
    assert isinstance(handle, cl.Segmenter) and handle.labels == ["background", "red", "green"]
    x = picture(9)
    assert torch.equal(handle(x)[0].class_map, hand_logits(x).argmax(0))
    with pytest.raises(cl.ModelLoadError, match="segment handle; task='classify'"):
        cl.load(handle, task="classify")
    with pytest.raises(cl.ModelLoadError, match="is a segmenter; this takes a classifier"):
        from convlens.core.tasks import load_classifier

        load_classifier(handle)


# -- explanations of a region ----------------------------------------------------------------------


def test_seg_gradcam_equals_the_closed_form():
    """S = sum_R (W[k] . A + b_k), so dS/dA_c = W[k, c] inside R and 0 outside: Grad-CAM's
    weights are W[k, c] |R| / (H W) and the map relu(sum_c w_c A_c) (Vinogradova et al.)."""
    x = picture(3)
    segmenter = tiny()
    red, green = x[0, 0], x[0, 1]
    for k in (1, 2):
        region = hand_logits(x).argmax(0) == k
        assert region.any()
        result = cl.explain(segmenter, x, "seg_gradcam", target=k)
        assert result.method == "gradcam" and torch.equal(result.region, region)
        weights = W[k] * region.sum() / 64
        expected = (weights[0] * red + weights[1] * green).clamp_min(0)
        assert torch.allclose(result.map, expected, atol=1e-6)
        assert result.score == pytest.approx(float(hand_logits(x)[k][region].sum()), rel=1e-5)
    # a hand-given region, class by name: 6 pixels, w = (-1, 2) * 6 / 64
    region = torch.zeros(8, 8, dtype=torch.bool)
    region[:2, :3] = True
    result = cl.explain(segmenter, x, "gradcam", target="green", region=region)
    expected = (-1 * 6 / 64 * red + 2 * 6 / 64 * green).clamp_min(0)
    assert torch.allclose(result.map, expected, atol=1e-6)
    # a box: the pixels labelled green inside it, the same closed form over them
    labelled = hand_logits(x).argmax(0) == 2
    inside = torch.zeros_like(labelled)
    inside[:4, :8] = labelled[:4, :8]
    boxed = cl.explain(segmenter, x, "gradcam", target="green", region=(0, 0, 8, 4))
    assert torch.equal(boxed.region, inside)
    w = W[2] * inside.sum() / 64
    assert torch.allclose(boxed.map, (w[0] * red + w[1] * green).clamp_min(0), atol=1e-6)


def test_a_point_explains_the_connected_region_of_the_class_found_there():
    x = torch.zeros(1, 3, 8, 8)
    x[0, 0, 1:3, 1:3] = 0.9  # two red squares, apart
    x[0, 0, 5:8, 5:8] = 0.9
    result = cl.explain(tiny(), x, "layercam", region=(6, 6))  # no target: the class there
    assert result.target == 1 and result.label == "red"
    expected = torch.zeros(8, 8, dtype=torch.bool)
    expected[5:8, 5:8] = True
    assert torch.equal(result.region, expected)
    # Layer-CAM's weight relu(dS/dA) = relu(W[1]) = (2, 0) inside the region: 2 * red there
    assert torch.allclose(result.map, expected * 2 * x[0, 0], atol=1e-6)
    with pytest.raises(ValueError, match="labelled class 0, not 'red'"):
        cl.explain(tiny(), x, "gradcam", target="red", region=(0, 7))
    with pytest.raises(ValueError, match="a point inside the 8x8 picture"):
        cl.explain(tiny(), x, "gradcam", target="red", region=(8, 0))


def test_seg_layercam_keeps_the_gradient_inside_the_region():
    """Layer-CAM's weight relu(dS/dA) is relu(W[k, c]) inside R, 0 outside: the map is
    1[R] * sum_c relu(W[k, c]) A_c, all of its energy in the region."""
    x = picture(4)
    region = hand_logits(x).argmax(0) == 2
    result = cl.explain(tiny(), x, "seg_layercam", target="green")
    assert torch.allclose(result.map, region * 2 * x[0, 1], atol=1e-6)
    assert result.energy_in_region() == pytest.approx(1.0)
    assert result.energy_in_mask(~region) == 0.0


def test_region_occlusion_equals_a_loop_over_windows():
    x = picture(5)
    k = 1
    region = hand_logits(x).argmax(0) == k

    def score(pixels: torch.Tensor) -> float:
        return float(hand_logits(pixels)[k][region].sum())

    base = score(x)
    total = torch.zeros(8, 8, dtype=torch.float64)
    counts = torch.zeros(8, 8, dtype=torch.float64)
    for top in range(0, 5, 2):  # window 4, stride 2 on 8 pixels: starts 0, 2, 4
        for left in range(0, 5, 2):
            covered = x.clone()
            covered[..., top : top + 4, left : left + 4] = 0
            total[top : top + 4, left : left + 4] += base - score(covered)
            counts[top : top + 4, left : left + 4] += 1
    result = cl.explain(tiny(), x, "occlusion", target=k, window=4, stride=2)
    assert torch.allclose(result.map.double(), total / counts, atol=1e-5)


def test_region_rise_with_every_cell_kept_is_the_region_probability_everywhere():
    x = picture(6)
    k = 2
    region = hand_logits(x).argmax(0) == k
    probability = float(hand_logits(x).softmax(0)[k][region].sum())
    result = cl.explain(tiny(), x, "rise", target=k, masks=4, cell=2, p=1.0)
    assert torch.allclose(result.map, torch.full((8, 8), probability), rtol=1e-5)


def test_region_occlusion_and_rise_show_first_maps_while_they_run():
    """The explorer's previews of a region: occlusion's coarse passes (every 4th, then every
    2nd row and column of a 10 x 10 grid of windows: 16 %, then 36 %) and RISE's first 128
    masks, each a RegionExplanation of the same region; the map returned is unchanged."""
    x = picture(7, size=20)
    k = 1
    shown: list[R.RegionExplanation] = []
    result = cl.explain(tiny(), x, "occlusion", target=k, window=2, stride=2, preview=shown.append)
    plain = cl.explain(tiny(), x, "occlusion", target=k, window=2, stride=2)
    torch.testing.assert_close(result.map, plain.map, atol=0, rtol=0)
    assert [round(p.extras["preview"], 2) for p in shown] == [0.16, 0.36]
    assert {p.extras["preview_of"] for p in shown} == {"windows"} and result.extras == {}
    for first, lattice in zip(shown, [(0, 4, 8, 9), (0, 2, 4, 6, 8, 9)], strict=True):
        assert (first.method, first.target, first.label) == ("occlusion", k, "red")
        assert torch.equal(first.region, result.region)
        for row in lattice:  # a window computed: exact there (window = stride: its pixels only)
            for col in lattice:
                block = (slice(2 * row, 2 * row + 2), slice(2 * col, 2 * col + 2))
                torch.testing.assert_close(first.map[block], result.map[block])
    assert not torch.allclose(shown[0].map, result.map, atol=1e-3)  # interpolated between
    drawn: list[R.RegionExplanation] = []
    rise = cl.explain(tiny(), x, "rise", target=k, masks=300, cell=4, preview=drawn.append)
    assert [p.extras["preview"] for p in drawn] == [128 / 300, 256 / 300]
    for first in drawn:  # each the map of a run with that many masks
        fewer = cl.explain(
            tiny(), x, "rise", target=k, masks=round(first.extras["preview"] * 300), cell=4
        )
        torch.testing.assert_close(first.map, fewer.map)
    assert rise.extras == {} and first.energy_in_region() == pytest.approx(fewer.energy_in_region())


def test_region_errors_say_what_was_expected():
    x = torch.zeros(1, 3, 8, 8)  # all background: no pixel labelled red
    with pytest.raises(ValueError, match="no pixel of this region is labelled 'red'"):
        cl.explain(tiny(), x, "gradcam", target="red")
    with pytest.raises(ValueError, match="boolean mask of the picture's size"):
        cl.explain(tiny(), x, "gradcam", target="red", region=torch.ones(4, 4, dtype=torch.bool))
    with pytest.raises(UnknownNameError, match="oclusion"):
        cl.explain(tiny(), x, "oclusion", target=1)
    with pytest.raises(ValueError, match="target= the class"):
        cl.explain(tiny(), x, "gradcam")
    with pytest.raises(ValueError, match="not classes="):
        cl.explain(tiny(), x, "gradcam", classes=[1, 2])


@pytest.mark.parametrize("method", ["segment", *METHODS])
@pytest.mark.parametrize("make", [TinySeg, Exploding], ids=["working", "raising"])
def test_no_hooks_and_no_changes_left(method, make):
    module = make()
    module.train()
    module.conv.weight.requires_grad_(False)
    before = model_state(module)
    region = torch.zeros(8, 8, dtype=torch.bool)
    region[2:6, 2:6] = True
    small = {"occlusion": {"window": 4, "stride": 4}, "rise": {"masks": 4, "cell": 2}}
    try:
        if method == "segment":
            tiny(module)(picture(7))
        else:
            cl.explain(
                tiny(module), picture(7), method, target=1, region=region, **small.get(method, {})
            )
    except RuntimeError as err:
        assert "boom halfway" in str(err)
    assert has_hooks(module) == []
    assert model_state(module) == before


def test_checkpoint_round_trip(tmp_path: Path):
    from convlens.core import architectures

    options = {"widths": [4, 4, 4, 4, 4], "decoder": [4, 4, 4, 4]}
    module = architectures.build("toon_segnet", num_classes=3, **options).eval()
    preprocess = Preprocessing(crop=None, resize=None, mean=(0.5, 0.4, 0.3), std=(0.2, 0.2, 0.2))
    architecture = {"name": "toon_segnet", **architectures.config("toon_segnet", num_classes=3)}
    architecture.update(options)
    path = S.save(
        module, tmp_path / "seg.pt", architecture=architecture, classes=["a", "b", "c"],
        preprocess=preprocess, layer="enc4",
    )  # fmt: skip
    loaded = cl.load(path)
    assert isinstance(loaded, cl.Segmenter)
    assert loaded.labels == ["a", "b", "c"] and loaded.layer == "enc4"
    assert loaded.preprocess.mean == (0.5, 0.4, 0.3) and loaded.preprocess.std == (0.2, 0.2, 0.2)
    x = picture(8, 32)
    with torch.no_grad():
        expected = module(preprocess.normalize(x))["out"]
    assert torch.equal(loaded.raw(x), expected)


# -- torchvision's segmentation names, random weights in a temporary hub cache ------------------


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """An empty torch hub cache (TORCH_HOME) for one test; downloads stay off."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("CONVLENS_OFFLINE", "1")
    from convlens.core.zoo.weights import hub_checkpoints

    folder = hub_checkpoints()
    folder.mkdir(parents=True)
    return folder


@pytest.mark.parametrize(
    "name, layer",
    [
        ("deeplabv3_mobilenet_v3_large", "backbone.16"),
        ("lraspp_mobilenet_v3_large", "backbone.16"),
        ("fcn_resnet50", "backbone.layer4"),
    ],
)
def test_torchvision_segmentation_names_load_as_segmenters(hub, name, layer):
    import torchvision

    from convlens.core.zoo import catalogue

    torch.manual_seed(0)
    options = {"weights_backbone": None, "num_classes": 21}
    if name != "lraspp_mobilenet_v3_large":
        options["aux_loss"] = True
    module = torchvision.models.get_model(name, weights=None, **options)
    torch.save(module.state_dict(), hub / catalogue.entry(name).weights.filename)
    segmenter = cl.load(name)
    assert isinstance(segmenter, cl.Segmenter) and segmenter.task == "segment"
    assert segmenter.labels[:2] == ["__background__", "aeroplane"] and len(segmenter.labels) == 21
    assert R.default_segment_layer(segmenter) == layer
    module.eval()
    x = picture(2, 48)
    with torch.no_grad():  # torchvision's forward: normalised pixels, "out" at the input size
        expected = module(segmenter.preprocess.normalize(x))["out"]
    assert torch.allclose(segmenter.raw(x), expected, atol=1e-5)
    found = segmenter(x)[0]
    assert torch.equal(found.class_map, expected[0].argmax(0))
    k = int(found.class_map.flatten().mode().values)
    result = cl.explain(segmenter, x, "seg_gradcam", target=k)
    assert result.map.shape == (48, 48) and result.settings["layer"] == layer
    assert torch.isfinite(result.map).all() and result.map.min() >= 0
    assert has_hooks(segmenter.module) == []


def test_a_segmentation_name_without_its_weights_is_refused_offline(hub):
    from convlens.core.zoo.weights import OfflineError

    with pytest.raises(OfflineError, match=r"not in the hub cache .* \(CONVLENS_OFFLINE=1"):
        cl.load("deeplabv3_mobilenet_v3_large")
    assert list(hub.iterdir()) == []  # nothing was fetched


# -- the shipped toon segmenter --------------------------------------------------------------------


@pytest.fixture(scope="module")
def toon() -> cl.Segmenter:
    found = cl.load("toon-segmenter")
    assert isinstance(found, cl.Segmenter)
    return found


def test_toon_segmenter_labels_fresh_toons(toon):
    """21 fresh toons (split test, seed 7; training used split train, seed 0), clean, hat and
    crowd: mean IoU over hair, face and body >= 0.9 (the record holds the score on 300 fresh
    toons: 0.971)."""
    from convlens.core.zoo.toons import shipped_record
    from convlens.data.toons import segmentation_data
    from convlens.workflows.segmentation_eval import segmentation_scores

    record = shipped_record("toon-segmenter")
    assert record["check"]["miou_foreground"] >= 0.9
    assert toon.labels == ["background", "hair", "face", "body"] and toon.layer == "dec2"
    pixels, truth = segmentation_data(21, split="test", seed=7)
    scores = segmentation_scores(toon, pixels, truth)
    print("fresh toons:", {k: round(v, 3) for k, v in scores["iou"].items()})
    assert scores["miou_foreground"] >= 0.9
    assert min(scores["iou"][k] for k in ("hair", "face", "body")) >= 0.85


# energy in the explained part's own true mask, mean over regions (the record, 60 toons at
# dec2: gradcam 0.67 / 0.86 / 0.88, layercam 0.76 / 0.83 / 0.90); a uniform map scores the
# part's area, 3-8 %
ENERGY_FLOORS = {
    "gradcam": {"hair": 0.5, "face": 0.7, "body": 0.75},
    "layercam": {"hair": 0.6, "face": 0.7, "body": 0.8},
}


def test_toon_region_explanations_sit_on_the_explained_part(toon):
    """Seg-Grad-CAM and Layer-CAM of each part over its predicted region, 9 fresh toons (3 of
    each variant): most positive attribution lies in that part's true mask."""
    from convlens.data.toons import segmentation_data
    from convlens.workflows.segmentation_eval import region_energy

    pixels, truth = segmentation_data(9, split="test", seed=8)
    energy = region_energy(toon, pixels, truth, ("gradcam", "layercam"))
    print(json.dumps({m: {p: energy[m][p]["own"] for p in ENERGY_FLOORS[m]} for m in energy}))
    for method, floors in ENERGY_FLOORS.items():
        for part, floor in floors.items():
            row = energy[method][part]
            assert row["count"] >= 6  # hair: none under a hat
            assert row["own"] >= floor, (method, part, row["own"])
            assert row["own"] > 5 * row["area"]


def test_in_a_crowd_layercam_keeps_to_the_clicked_character(toon):
    """A click on one character's hair in a crowd frame: Layer-CAM's map stays on that
    region (its gradient keeps the position), Seg-Grad-CAM's spatial-mean weights light every
    character's hair (the README's figures)."""
    from convlens.data import toons

    crowd = toons.generate(4, variant="crowd", split="test", seed=5).pixels[3]
    found = cl.segment(toon, crowd)
    hair = found.mask("hair")
    ys, xs = torch.nonzero(hair, as_tuple=True)
    for i in (0, len(xs) // 2, len(xs) - 1):
        point = (int(xs[i]), int(ys[i]))
        _, region = found.region_at(*point)
        assert int(region.sum()) < int(hair.sum())  # one character's hair of several
        layer = cl.explain(toon, crowd, "seg_layercam", region=point)
        grad = cl.explain(toon, crowd, "seg_gradcam", region=point)
        assert torch.equal(layer.region, region) and layer.label == "hair"
        assert layer.energy_in_region() > 0.55
        assert layer.energy_in_mask(hair & ~region) < 0.05
        assert grad.energy_in_mask(hair & ~region) > 0.2
        assert layer.energy_in_region() > grad.energy_in_region() + 0.25


def test_toon_occlusion_of_a_region_falls_mostly_on_its_part(toon):
    """Occlusion of the face's score on a clean toon: more of its positive part on the face
    than a uniform map would put there (the face covers ~3 % of the picture)."""
    from convlens.data.toons import segmentation_data

    pixels, truth = segmentation_data(1, variants=("clean",), split="test", seed=9)
    result = cl.explain(toon, pixels[0], "occlusion", target="face", window=8, stride=4)
    face = truth[0] == 2
    area = float(face.float().mean())
    assert result.energy_in_mask(face) > 5 * area


# -- the command line --------------------------------------------------------------------------


def test_cli_segment_explain_and_exit_codes(tmp_path: Path, monkeypatch):
    from convlens.apps.cli import app
    from convlens.data.toons import segmentation_data

    monkeypatch.setenv("CONVLENS_OFFLINE", "1")
    pixels, _truth = segmentation_data(1, variants=("clean",), split="test", seed=5)
    path = tmp_path / "toon.png"
    from PIL import Image

    Image.fromarray(pixels[0].permute(1, 2, 0).numpy()).save(path)
    runner = CliRunner()
    out = tmp_path / "out"
    result = runner.invoke(
        app, ["segment", "toon-segmenter", str(path), "--explain", "seg_gradcam", "-o", str(out)]
    )
    assert result.exit_code == 0, result.output
    record = json.loads((out / "segmentation.json").read_text())
    rows = {row["class"]: row for row in record["explanations"]}
    assert set(rows) == {"hair", "face", "body"}
    pixels_by_class = {c["name"]: c["pixels"] for c in record["classes"]}
    for name, row in rows.items():
        assert row["region_pixels"] == pixels_by_class[name]
        assert row["energy_in_region"] > 0.5
        assert (out / row["file"]).is_file()
    maps = np.load(out / "gradcam.npz")
    assert maps["face__gradcam"].shape == (128, 128)
    classes = np.array(Image.open(out / "segmentation.classes.png"))
    assert int((classes == 2).sum()) == pixels_by_class["face"]
    # --at X,Y: the one region found at that pixel
    ys, xs = np.nonzero(classes == 1)
    at = f"{xs[0]},{ys[0]}"
    result = runner.invoke(
        app, ["segment", "toon-segmenter", str(path), "--explain", "layercam", "--at", at,
              "-o", str(tmp_path / "at")],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    row = json.loads((tmp_path / "at" / "segmentation.json").read_text())["explanations"][0]
    assert row["class"] == "hair" and 0 < row["region_pixels"] <= pixels_by_class["hair"]
    # errors: exit code 2 with one line that says what was expected
    for args, message in [
        (["segment", "toon-cnn", str(path)], "takes a segmenter"),
        (["segment", "toon-segmenter", str(path), "--explain", "gradcam", "-c", "hat"], "class"),
        (["segment", "toon-segmenter", str(path), "--explain", "nope"], "nope"),
        (["segment", "toon-segmenter", str(path), "--window", "8"], "need --explain"),
        (["train", str(tmp_path), "--task", "segment", "--size", "big"], "--size N"),
    ]:
        result = runner.invoke(app, [*args, "-o", str(tmp_path / "bad")])
        assert result.exit_code == 2, (args, result.output)
        assert message in result.output, (args, result.output)


def test_cli_train_segment_then_evaluate(tmp_path: Path, monkeypatch):
    """``convlens train --task segment`` on a toons folder writes a segmenter checkpoint that
    every command loads; ``convlens evaluate`` scores it (IoU, energy in the part)."""
    from convlens.apps.cli import app

    monkeypatch.setenv("CONVLENS_OFFLINE", "1")
    runner = CliRunner()
    toons = tmp_path / "toons"
    result = runner.invoke(app, ["toons", "make", "-o", str(toons), "--n", "20", "--seed", "3"])
    assert result.exit_code == 0, result.output
    trained = tmp_path / "trained"
    result = runner.invoke(
        app, ["train", str(toons), "--task", "segment", "--epochs", "1", "--batch-size", "8",
              "--arch-option", "widths=4,4,4,4,4", "--arch-option", "decoder=4,4,4,4",
              "--seed", "1", "-o", str(trained)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    metrics = json.loads((trained / "metrics.json").read_text())
    assert metrics["task"] == "segment" and metrics["epochs_run"] == 1
    assert metrics["config"]["architecture"]["widths"] == [4, 4, 4, 4, 4]
    loaded = cl.load(trained / "model.pt")
    assert isinstance(loaded, cl.Segmenter)
    assert loaded.labels == ["background", "hair", "face", "body"]
    assert not any(p.requires_grad is False for p in loaded.module.parameters())
    result = runner.invoke(
        app, ["evaluate", str(trained / "model.pt"), str(toons), "--method", "gradcam",
              "--split", "test", "-o", str(tmp_path / "ev")],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    scored = json.loads((tmp_path / "ev" / "evaluation.json").read_text())
    # the IoU it reports is the pooled intersection over union, counted here by hand
    from convlens.data.toons import read_segmentation

    pixels, truth = read_segmentation(toons, "test")
    predicted = loaded.class_maps(pixels)
    iou = scored["segmentation"]["iou"]
    for k, name in enumerate(loaded.labels):
        inter = int(((predicted == k) & (truth == k)).sum())
        union = int(((predicted == k) | (truth == k)).sum())
        assert iou[name] == pytest.approx(inter / union if union else math.nan, nan_ok=True)
    rows = [row for row in scored["explanations"] if row["method"] == "gradcam"]
    assert {row["class"] for row in rows} == {"hair", "face", "body"}
    for row in rows:  # own part, other parts and background share the positive energy
        if row["own"] is not None:
            total = row["own"] + row["other_parts"] + row["background"]
            assert total == pytest.approx(1.0, abs=1e-6)
