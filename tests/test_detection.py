"""Detection: box maths and NMS checked exactly, mAP against hand computation, a detector whose
behaviour is known (it finds coloured squares), and D-RISE on it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

import convlens as cl
from convlens.core import detector as D
from convlens.data import toons
from convlens.techniques.attribution import detection as DM
from convlens.workflows import detection_eval as DE


def test_iou_by_hand():
    a = [[0, 0, 2, 2], [0, 0, 1, 1], [5, 5, 5, 9]]  # the last is degenerate (zero width)
    b = [[1, 1, 3, 3], [0, 0, 2, 2]]
    iou = D.box_iou(a, b)
    expected = torch.tensor([[1 / 7, 1.0], [0.0, 0.25], [0.0, 0.0]])
    torch.testing.assert_close(iou, expected)
    assert D.box_iou(torch.zeros(0, 4), b).shape == (0, 2)
    with pytest.raises(ValueError, match=r"\(N, 4\)"):
        D.box_iou([[0, 0, 1]], b)


def test_nms_exact():
    boxes = [[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [0, 0, 10, 10], [2, 0, 12, 10]]
    scores = [0.9, 0.8, 0.7, 0.9, 0.6]
    # 0 and 3 tie (identical boxes): the earlier wins; 1 overlaps 0 by 81/119 = 0.68; 4 by 0.67
    assert D.nms(boxes, scores, 0.5).tolist() == [0, 2]
    assert D.nms(boxes, scores, 0.7).tolist() == [0, 1, 2, 4]
    # class-aware: box 1 has another class, so box 0 does not suppress it
    assert D.nms(boxes, scores, 0.5, labels=[0, 1, 0, 0, 0]).tolist() == [0, 1, 2]
    assert D.nms(torch.zeros(0, 4), [], 0.5).tolist() == []
    with pytest.raises(ValueError, match="one score per box"):
        D.nms(boxes, [0.1], 0.5)


def test_select_drops_degenerate_and_low_scores_and_caps():
    boxes = [[0, 0, 10, 10], [3, 3, 3, 8], [20, 20, 30, 30], [40, 40, 50, 50]]
    keep = D.select(boxes, [0, 0, 1, 1], [0.9, 0.95, 0.4, 0.8], score_threshold=0.5)
    assert keep.tolist() == [0, 3]
    assert D.select(boxes, [0, 0, 1, 1], [0.9, 0.95, 0.6, 0.8], max_detections=1).tolist() == [0]
    for bad in ({"score_threshold": 1.5}, {"iou_threshold": 0.0}, {"max_detections": 0}):
        with pytest.raises(ValueError, match="expected"):
            D.select(boxes, [0] * 4, [0.9] * 4, **bad)


def test_average_precision_by_hand():
    # 3 ground truths; detections by score: TP, FP, TP, TP -> precision 1, .5, .67, .75 at
    # recall 1/3, 1/3, 2/3, 1: the envelope is 1 up to recall 1/3 (34 of COCO's 101 points),
    # then 0.75
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6])
    matched = torch.tensor([True, False, True, True])
    ap = DE.average_precision(scores, matched, 3)
    assert ap == pytest.approx((34 * 1 + 67 * 0.75) / 101)


def test_map_perfect_and_partial():
    truth = [([[0, 0, 10, 10], [20, 20, 30, 30]], [0, 1])]
    perfect = D.Detections(
        torch.tensor([[0, 0, 10, 10], [20, 20, 30, 30]], dtype=torch.float32),
        torch.tensor([0, 1]),
        torch.tensor([0.9, 0.8]),
    )
    assert DE.mean_average_precision([perfect], truth)["map"] == pytest.approx(1.0)
    shifted = D.Detections(
        torch.tensor([[0, 0, 10, 10], [23, 20, 33, 30]], dtype=torch.float32),
        torch.tensor([0, 1]),
        torch.tensor([0.9, 0.8]),
    )
    # class 1's box has IoU 70/130 = 0.54: a hit at 0.5, a miss from 0.55 on
    result = DE.mean_average_precision([shifted], truth, iou_thresholds=DE.COCO_IOUS)
    assert result["per_iou"][0.5] == pytest.approx(1.0)
    assert result["per_iou"][0.55] == pytest.approx(0.5)
    assert result["map"] == pytest.approx((1.0 + 9 * 0.5) / 10)


class SquareFinder(nn.Module):
    """Finds a red square (label 0) and a green one (label 1): the box around the pixels of
    that colour, scored by the share of the square's expected area that is visible."""

    def __init__(self, expected_area: float = 256.0) -> None:
        super().__init__()
        self.expected_area = expected_area
        self.dummy = nn.Parameter(torch.zeros(1), requires_grad=False)

    def forward(self, images):
        out = []
        for x in images:
            boxes, labels, scores = [], [], []
            for label, channel in ((0, 0), (1, 1)):
                others = [c for c in range(3) if c != channel]
                mask = (x[channel] > 0.6) & (x[others].max(0).values < 0.3)
                if int(mask.sum()) >= 8:
                    ys, xs = torch.nonzero(mask, as_tuple=True)
                    boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
                    labels.append(label)
                    scores.append(min(1.0, float(mask.sum()) / self.expected_area))
            out.append(
                {
                    "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                    "labels": torch.tensor(labels, dtype=torch.long),
                    "scores": torch.tensor(scores),
                }
            )
        return out


def _scene() -> torch.Tensor:
    x = torch.zeros(3, 64, 64)
    x[0, 8:24, 6:22] = 1.0  # red, 16 x 16
    x[1, 36:52, 40:56] = 1.0  # green, 16 x 16
    return x


@pytest.fixture
def finder() -> D.Detector:
    return D.Detector(SquareFinder(), ["red", "green"], name="squares")


def test_detector_finds_and_draws(finder, tmp_path):
    found = cl.detect(finder, _scene())
    assert [d.name for d in found] == ["red", "green"]
    assert found[0].box == (6.0, 8.0, 22.0, 24.0) and found[0].score == pytest.approx(1.0)
    picture = found.draw()
    assert picture.size == (64, 64)
    edge = np.asarray(picture)[8, 14]  # on the red box's top edge: the class colour
    assert tuple(edge) != (255, 0, 0) and edge.sum() > 0
    paths = found.save(tmp_path)
    data = json.loads(paths[1].read_text())
    assert data["detections"][1]["name"] == "green"
    assert data["settings"]["iou_threshold"] == 0.5
    none = cl.detect(finder, torch.zeros(3, 64, 64))
    assert len(none) == 0 and none.draw().size == (64, 64)
    assert len(cl.detect(finder, _scene(), score_threshold=1.0)) == 2
    with pytest.raises(ValueError, match="score_threshold"):
        cl.detect(finder, _scene(), score_threshold=2)
    with pytest.raises(ValueError, match="pictures"):
        finder.raw(torch.zeros(1, 1, 8, 8))


def _share(saliency: torch.Tensor, box) -> float:
    x0, y0, x1, y1 = (int(v) for v in box)
    positive = saliency.clamp_min(0)
    return float(positive[y0:y1, x0:x1].sum() / positive.sum())


def test_drise_explains_each_box_on_its_own_square(finder):
    """Each box's map peaks inside it and holds several times more of its positive mass there
    than in the other box. (The mass also spills about one mask cell around the box: masks are
    smooth, so a pixel next to the square moves with it; on this 64-pixel scene with 16-pixel
    squares that ring is as large as the box, so the share inside is 0.4-0.55 here.)"""
    scene = _scene()
    found = cl.detect(finder, scene)
    for index in (0, 1):
        result = DM.drise(finder, scene, index, masks=300, cell=8, seed=0)
        x0, y0, x1, y1 = result.target.box
        px, py = result.peak()
        assert x0 <= px < x1 and y0 <= py < y1, (index, result.peak())
        own = result.energy_in_box()
        other = _share(result.map, found[1 - index].box)
        assert own == pytest.approx(_share(result.map, result.target.box))
        assert own > 0.35 and own > 4 * other, (own, other)
    shown: list[DM.BoxExplanation] = []
    again = DM.drise(
        finder, scene, 1, masks=300, cell=8, seed=0, batch_size=7, preview=shown.append
    )
    torch.testing.assert_close(again.map, result.map)  # the masks do not depend on the batch
    # first maps after 128 and 256 masks, each the map of a run with that many masks
    assert [p.extras for p in shown] == [
        {"preview": 128 / 300, "preview_of": "masks"},
        {"preview": 256 / 300, "preview_of": "masks"},
    ]
    for first, masks in zip(shown, (128, 256), strict=True):
        fewer = DM.drise(finder, scene, 1, masks=masks, cell=8, seed=0)
        torch.testing.assert_close(first.map, fewer.map)
        assert first.target == result.target and first.settings["masks"] == 300
    assert again.extras == {}
    assert result.overlay().size == (384, 384)  # enlarged 6x: the tag stays small
    assert result.overlay(min_side=0).size == (64, 64)
    shown = result.overlay().scale  # its colour bar: the positive map's range, the box's score
    positive = result.map.clamp_min(0)
    assert (shown.vmin, shown.vmax) == (float(positive.min()), float(positive.max()))
    assert shown.note == f"score {result.target.score:.3g}"
    assert result.overlay().framed().height > 384 + 20
    assert result._repr_png_().startswith(b"\x89PNG") and "energy in box" in repr(result)
    with pytest.raises(ValueError, match="below 2"):
        DM.drise(finder, scene, 5, masks=10)
    with pytest.raises(ValueError, match="masks"):
        DM.drise(finder, scene, 0, masks=0)


@pytest.mark.slow
def test_mtcnn_finds_the_astronauts_face_and_drise_peaks_on_it():
    """skimage's astronaut: MTCNN (facenet-pytorch's weights, through our wrapper) finds the
    one face, where facenet-pytorch's own pipeline puts it, and D-RISE's map of that box
    peaks inside it."""
    from facenet_pytorch import MTCNN
    from skimage import data

    picture = data.astronaut()
    faces = cl.load("mtcnn-faces")
    found = cl.detect(faces, picture)
    assert len(found) == 1 and found[0].name == "face" and found[0].score > 0.99
    theirs, _ = MTCNN(keep_all=True).detect(picture)
    assert len(theirs) == 1
    expected = torch.tensor(np.asarray(theirs[0], dtype=np.float32))
    torch.testing.assert_close(found.boxes[0], expected, atol=1.0, rtol=0)
    x0, y0, x1, y1 = found[0].box
    small = DM.drise(faces, picture, 0, masks=64, cell=8, batch_size=16, seed=0)
    px, py = small.peak()
    assert x0 <= px < x1 and y0 <= py < y1, (small.peak(), found[0].box)


# -- the CenterNet toon detector -------------------------------------------------------------------


def test_centernet_targets_decode_back_to_the_boxes():
    from convlens.core.architectures import centernet as C
    from convlens.workflows.training import detect as CT

    boxes = [[(0, 10.0, 20.0, 50.0, 70.0), (2, 60.0, 8.0, 100.0, 40.0)]]
    t = CT.targets(boxes, 3, (128, 128))
    logit = torch.logit(t["heatmap"].clamp(1e-6, 1 - 1e-6))  # heads that reproduce the targets
    out = C.decode({"heatmap": logit, "size": t["size"], "offset": t["offset"]}, top_k=2)[0]
    order = torch.argsort(out["labels"])
    torch.testing.assert_close(
        out["boxes"][order], torch.tensor([b[1:] for b in boxes[0]]), atol=1e-4, rtol=0
    )
    assert out["labels"][order].tolist() == [0, 2]
    assert torch.allclose(out["scores"], torch.ones(2), atol=1e-5)


def test_centernet_augmentation_moves_boxes_with_the_picture():
    from convlens.workflows.training import detect as CT

    pixels = torch.zeros(8, 3, 64, 64)
    pixels[:, :, 10:30, 5:25] = 1.0  # a white square at x 5..25, y 10..30
    boxes = [[(1, 5.0, 10.0, 25.0, 30.0)] for _ in range(8)]
    moved, new_boxes = CT.augment_batch(pixels, boxes, torch.Generator().manual_seed(0))
    for picture, kept in zip(moved, new_boxes, strict=True):
        (cls, x0, y0, x1, y1) = kept[0]
        inside = picture[0, int(y0) + 2 : int(y1) - 2, int(x0) + 2 : int(x1) - 2]
        assert cls == 1 and float(inside.mean()) > 0.95
        white = torch.nonzero(picture[0] > 0.5)
        assert (
            abs(float(white[:, 1].min()) - x0) <= 1.5 and abs(float(white[:, 0].min()) - y0) <= 1.5
        )


def test_centernet_checkpoint_round_trip_and_cli(tmp_path):
    from typer.testing import CliRunner

    from convlens.apps.cli import app
    from convlens.core.architectures import centernet as C

    torch.manual_seed(0)
    model = C.CenterNet(3, width=16).eval()
    with torch.no_grad():
        model.size.bias.fill_(0.3)  # untrained, but boxes of about 19 pixels
    path = C.save(model, ["cassidy", "james", "jessie"], tmp_path / "det.pt")
    again, classes = C.load(path)
    assert classes == ["cassidy", "james", "jessie"]
    x = torch.rand(1, 3, 64, 64)
    torch.testing.assert_close(again(x)[0]["boxes"], model(x)[0]["boxes"])
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(Exception, match="bad.pt|load"):
        C.load(tmp_path / "bad.pt")
    from PIL import Image

    Image.fromarray((torch.rand(64, 64, 3) * 255).byte().numpy()).save(tmp_path / "p.png")
    result = CliRunner().invoke(
        app,
        [
            "detect",
            str(path),
            str(tmp_path / "p.png"),
            "--score-threshold",
            "0",
            "--explain",
            "drise",
            "--masks",
            "8",
            "--max-detections",
            "2",
            "--out",
            str(tmp_path / "out"),
        ],
    )
    assert result.exit_code == 0, result.output
    names = {p.name for p in (tmp_path / "out").iterdir()}
    assert {"detections.png", "detections.json", "box_0_drise.png"} <= names
    bad = CliRunner().invoke(app, ["detect", "no-such-detector", str(tmp_path / "p.png")])
    assert bad.exit_code == 2 and "no-such-detector" in bad.output


def test_all_found_counts_only_complete_pictures():
    truths = [([[0, 0, 10, 10], [20, 20, 30, 30]], [0, 1]), ([[0, 0, 10, 10]], [0])]
    both = D.Detections(
        torch.tensor([[0, 0, 10, 10], [21, 20, 30, 30]], dtype=torch.float32),
        torch.tensor([0, 1]),
        torch.tensor([0.9, 0.8]),
    )
    wrong_class = D.Detections(
        torch.tensor([[0, 0, 10, 10]], dtype=torch.float32), torch.tensor([1]), torch.tensor([0.9])
    )
    assert DE.all_found([both, wrong_class], truths) == 0.5
    assert DE.all_found([both, both], truths) == 1.0


# -- one front door: cl.load, cl.detect, cl.explain with detectors ---------------------------------


class GradientFree(nn.Module):
    """A detector whose scores are computed outside torch (as MTCNN's cascade is): the box of
    the bright pixels, its score through numpy."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, images):
        features = self.backbone(torch.stack(list(images)))
        out = []
        for f in features:
            value = float(np.asarray(f.detach()).mean())
            out.append(
                {
                    "boxes": torch.tensor([[4.0, 4.0, 20.0, 20.0]]),
                    "labels": torch.tensor([0]),
                    "scores": torch.tensor([1 / (1 + np.exp(-value))], dtype=torch.float32),
                }
            )
        return out


def test_explain_and_detect_take_detectors_through_the_front_door():
    import convlens as cl

    pixels, _ = toons.crowd_frames(1, split="test", seed=5)
    det = cl.load("toon-detector")
    assert isinstance(det, D.Detector) and det.layer == "backbone"
    dets = cl.detect("toon-detector", pixels[0], score_threshold=0.5, max_detections=20)
    torch.testing.assert_close(dets.boxes, cl.detect(det, pixels[0], score_threshold=0.5).boxes)
    rise = cl.explain(det, pixels[0], method="drise", target=dets[1], masks=64, seed=3)
    direct = DM.drise(det, pixels[0], dets[1], masks=64, seed=3)
    torch.testing.assert_close(rise.map, direct.map)
    by_index = cl.explain(det, pixels[0], method="gradcam", target=1)
    torch.testing.assert_close(by_index.map, DM.box_cam(det, pixels[0], dets[1]).map)
    assert by_index.target == dets[1] and by_index.settings["layer"] == "backbone"
    for bad, match in (
        ({"method": "gradcam", "target": None}, "target"),
        ({"method": "gradcam", "target": 9}, "below"),
        ({"method": "occlusion", "target": 0}, "drise"),
        ({"method": "gradcam", "target": 0, "layer": "heatmap.nope"}, "heatmap"),
    ):
        with pytest.raises((ValueError, LookupError), match=match):
            cl.explain(det, pixels[0], **bad)
    moved = D.Detection((90.0, 90.0, 120.0, 120.0), dets[0].label, dets[0].name, 0.9)
    with pytest.raises(ValueError, match="IoU"):
        cl.explain(det, pixels[0], method="gradcam", target=moved)
    with pytest.raises(cl.ModelLoadError, match="detector"):
        cl.activations("toon-detector", pixels)


def test_gradient_cams_refuse_detectors_without_gradients():
    picture = torch.rand(3, 32, 32)
    det = D.Detector(GradientFree(), ["thing"], score_threshold=0.0)
    with pytest.raises(ValueError, match="drise"):
        DM.box_cam(det, picture, 0)
    assert DM.explain_box(det, picture, 0, "drise", masks=8).map.shape == (32, 32)


def test_load_makes_detectors_of_checkpoints_plugins_and_torchvision(tmp_path):
    import convlens as cl
    from convlens.core.architectures import centernet as C

    torch.manual_seed(0)
    net = C.CenterNet(3, width=8).eval()
    path = C.save(net, ["a", "b", "c"], tmp_path / "mine.pt")
    loaded = cl.load(path, score_threshold=0.2)
    assert isinstance(loaded, D.Detector) and loaded.name == "mine"
    assert loaded.labels == ["a", "b", "c"] and loaded.score_threshold == 0.2
    x = torch.rand(1, 3, 32, 32)
    torch.testing.assert_close(loaded.raw(x)[0]["scores"], net(x)[0]["scores"])
    plugin = tmp_path / "plugin_det.py"
    plugin.write_text(
        "import torch\n"
        "from convlens.core.architectures.centernet import CenterNet\n"
        "from convlens.core.detector import Detector\n"
        "torch.manual_seed(0)\n"
        "model = Detector(CenterNet(2, width=8).eval(), ['x', 'y'], name='pd', layer='backbone')\n"
    )
    from_plugin = cl.load(plugin)
    assert isinstance(from_plugin, D.Detector) and from_plugin.name == "pd"
    assert cl.load(net, task="detect", labels=["a", "b", "c"]).labels == ["a", "b", "c"]
    with pytest.raises(cl.ModelLoadError, match="input_size"):  # the option list says it
        cl.load(net, preprocess=None)
    assert cl.load(net, task="detect", input_size=(3, 8, 8)).input_size == (8, 8)
    with pytest.raises(ValueError, match="score_threshold"):
        cl.load("toon-detector", score_threshold=3)


def test_torchvision_detectors_load_and_explain_without_their_padding():
    """torchvision's R-CNNs resize and pad the batch to a multiple of 32: the box CAM is cut to
    the resized picture before it is brought back to the picture's size."""
    from torchvision.models.detection import fasterrcnn_mobilenet_v3_large_320_fpn

    import convlens as cl

    torch.manual_seed(0)
    net = fasterrcnn_mobilenet_v3_large_320_fpn(
        weights=None, weights_backbone=None, num_classes=3, box_score_thresh=0.0
    ).eval()
    det = cl.load(net, labels=["bg", "cat", "dog"], score_threshold=0.0)
    assert isinstance(det, D.Detector) and DM.default_box_layer(det).startswith("backbone.body.")
    picture = torch.rand(3, 150, 200)
    found = cl.detect(det, picture)
    assert len(found) > 0
    result = cl.explain(det, picture, method="gradcam", target=0)
    assert result.map.shape == (150, 200) and torch.isfinite(result.map).all()
    # the same map computed by hand: the score of the output box that is target 0 again,
    # its gradient at the layer, Grad-CAM, cut to the resized (unpadded) picture, resized
    captured, padded = {}, {}
    layer = dict(net.named_modules())[DM.default_box_layer(det)]

    def grab(_m, _i, out):
        captured["a"] = out

    def sizes(_m, _i, out):
        padded["sizes"] = (tuple(out[0].image_sizes[0]), tuple(out[0].tensors.shape[-2:]))

    handles = [layer.register_forward_hook(grab), net.transform.register_forward_hook(sizes)]
    try:
        out = net([picture])[0]
    finally:
        for h in handles:
            h.remove()
    (rh, rw), (ph, pw) = padded["sizes"]
    assert (ph, pw) != (rh, rw)  # this picture is padded
    same = out["labels"] == found[0].label
    best = int((D.box_iou([found[0].box], out["boxes"].detach())[0] * same).argmax())
    activations = captured["a"]
    (grad,) = torch.autograd.grad(out["scores"][best], activations)
    cam = (grad.mean((2, 3))[:, :, None, None] * activations).sum(1).clamp_min(0)[0].detach()
    fh, fw = cam.shape
    cam = cam[: round(fh * rh / ph), : round(fw * rw / pw)]
    assert cam.shape[1] < fw
    expected = torch.nn.functional.interpolate(cam[None, None], size=(150, 200), mode="bilinear")
    torch.testing.assert_close(result.map, expected[0, 0], rtol=1e-4, atol=1e-7)
