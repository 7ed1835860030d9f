"""The shipped toon detector: every character in a crowded frame, and an explanation of each
box that sits on its own character."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import convlens as cl
from convlens.core import detector as D
from convlens.core.zoo import shipped_record
from convlens.data import toons
from convlens.techniques.attribution import detection as DM
from convlens.workflows import detection_eval as DE

RECORD = shipped_record("toon-detector")


@pytest.fixture(scope="module")
def detector() -> D.Detector:
    return cl.load("toon-detector")


@pytest.mark.slow
def test_finds_every_character_in_fresh_crowd_frames(detector):
    """300 fresh frames (seed 1; training used seed 0): mAP@0.5 >= 0.9 and all characters
    found in >= 90 % of frames; the numbers equal the record the shipping tool wrote (measured:
    mAP@0.5 1.0, mAP@0.5:0.95 0.91, all found in 300 of 300 frames)."""
    check = RECORD["check"]
    pixels, boxes = toons.crowd_frames(check["frames"], split=check["split"], seed=check["seed"])
    found = []
    for start in range(0, len(pixels), 64):
        found += detector(pixels[start : start + 64])
    truths = [([b[1:] for b in frame], [b[0] for b in frame]) for frame in boxes]
    result = DE.mean_average_precision(found, truths, iou_thresholds=DE.COCO_IOUS)
    complete = DE.all_found(found, truths)
    assert result["per_iou"][0.5] >= 0.9 and complete >= 0.9
    assert result["per_iou"][0.5] == pytest.approx(check["map50"], abs=1e-6)
    assert result["map"] == pytest.approx(check["map50_95"], abs=1e-6)
    assert complete == pytest.approx(check["all_found"])
    assert all(len(frame) >= 2 for frame in boxes)  # crowd frames: two or three characters


@pytest.mark.slow
def test_drise_sits_on_each_box_own_character(detector):
    """Two crowd frames (seed 5), every box explained with D-RISE (2,000 masks, 16 x 16 cells):
    each map peaks inside its own box and not inside another box, and the share of positive
    attribution inside the box averages >= 0.6 (measured 0.68 over these boxes; about 0.5 with 500
    masks, where the noise outside the box still weighs)."""
    pixels, _ = toons.crowd_frames(2, split="test", seed=5)
    shares = []
    for picture in pixels:
        found = cl.detect(detector, picture)
        assert len(found) >= 2
        for k in range(len(found)):
            result = DM.drise(detector, picture, found[k], masks=2000, cell=16, batch_size=100)
            px, py = result.peak()
            for j, other in enumerate(found):
                x0, y0, x1, y1 = other.box
                inside = x0 <= px < x1 and y0 <= py < y1
                overlap = float(D.box_iou([found[k].box], [other.box])[0, 0])
                if j == k:
                    assert inside, (k, result.peak(), other.box)
                elif overlap == 0:
                    assert not inside, (k, j, result.peak())
            shares.append(result.energy_in_box())
    print("energy in box per box:", [round(s, 3) for s in shares])
    assert sum(shares) / len(shares) >= 0.6


def _inside(point: tuple[int, int], box) -> bool:
    x0, y0, x1, y1 = box
    return x0 <= point[0] < x1 and y0 <= point[1] < y1


def test_box_cams_sit_on_their_own_characters(detector):
    """20 crowd frames (seed 5), every box explained by gradient CAMs at the backbone's output.
    Grad-CAM: energy in box averages >= 0.6 (measured 0.79) and every box whose class appears
    once in its frame peaks inside itself; two boxes of one class get the same map (the
    channel mean makes class weights), so it cannot tell them apart. Layer-CAM keeps the
    gradient's position: every box peaks inside itself."""
    pixels, _ = toons.crowd_frames(20, split="test", seed=5)
    energy: dict[str, list[float]] = {"gradcam": [], "layercam": []}
    unique_seen = duplicated_seen = 0
    for picture in pixels:
        found = cl.detect(detector, picture)
        labels = [d.label for d in found]
        for k in range(len(found)):
            grad = DM.box_cam(detector, picture, found[k], method="gradcam")
            layer = DM.box_cam(detector, picture, found[k], method="layercam")
            energy["gradcam"].append(grad.energy_in_box())
            energy["layercam"].append(layer.energy_in_box())
            assert _inside(layer.peak(), found[k].box), (k, layer.peak(), found[k].box)
            if labels.count(found[k].label) == 1:
                unique_seen += 1
                assert _inside(grad.peak(), found[k].box), (k, grad.peak(), found[k].box)
            else:
                duplicated_seen += 1
                twin = next(j for j, d in enumerate(found) if j != k and d.label == labels[k])
                other = DM.box_cam(detector, picture, found[twin], method="gradcam")
                scale = grad.map.max() / other.map.max()
                torch.testing.assert_close(grad.map, other.map * scale, rtol=1e-4, atol=1e-7)
    means = {k: sum(v) / len(v) for k, v in energy.items()}
    print("energy in box:", {k: round(v, 3) for k, v in means.items()})
    assert unique_seen >= 20 and duplicated_seen >= 4  # both cases occur in these frames
    assert means["gradcam"] >= 0.6 and means["layercam"] >= 0.6


def test_box_gradcam_is_its_closed_form_on_centernet(detector):
    """At the backbone's output f, a CenterNet box score is s = sigmoid(w_c . f[:, i, j] + b_c)
    at the box's centre cell, so d s / d f is s (1 - s) w_c at that cell and 0 elsewhere:
    Grad-CAM's channel weights are s (1 - s) w_c / (h w) and its map is
    s (1 - s) / (h w) * relu(w_c . f) everywhere; Layer-CAM's is s (1 - s) relu(w_c) . f at the
    centre cell only. Both checked to float precision before and after the bilinear resize."""
    pixels, _ = toons.crowd_frames(1, split="test", seed=5)
    found = cl.detect(detector, pixels[0])
    net = detector.module
    with torch.no_grad():
        f = net.backbone(pixels)[0]  # (K, 16, 16)
        weights = net.heatmap.weight[:, :, 0, 0].detach()
        heat = torch.sigmoid(net.heatmap(f[None]))[0]
    h, w = f.shape[-2:]
    for k in range(len(found)):
        target = found[k]
        s = target.score
        linear = torch.einsum("k,khw->hw", weights[target.label], f)
        expected = s * (1 - s) / (h * w) * linear.clamp_min(0)
        resized = F.interpolate(expected[None, None], size=(128, 128), mode="bilinear")[0, 0]
        result = DM.box_cam(detector, pixels[0], target, method="gradcam")
        torch.testing.assert_close(result.map, resized, rtol=1e-4, atol=1e-9)
        cell = int((heat[target.label] - s).abs().flatten().argmin())
        one = torch.zeros(h, w)
        one.view(-1)[cell] = (
            s * (1 - s) * float(weights[target.label].clamp_min(0) @ f.flatten(1)[:, cell])
        )
        resized = F.interpolate(one[None, None], size=(128, 128), mode="bilinear")[0, 0]
        layer = DM.box_cam(detector, pixels[0], target, method="layercam")
        torch.testing.assert_close(layer.map, resized, rtol=1e-4, atol=1e-9)


class _CornerBox(torch.nn.Module):
    """A fake detector: one box from (1, 1) to (w/2, h/2) of whatever it is given."""

    def forward(self, images):
        h, w = images.shape[-2:]
        return [
            {
                "boxes": torch.tensor([[1.0, 1.0, w / 2, h / 2]]),
                "labels": torch.tensor([0]),
                "scores": torch.tensor([0.9]),
            }
            for _ in images
        ]


def test_pictures_are_resized_to_the_input_size_and_boxes_mapped_back():
    """Issue 17, item 7: a detector with ``input_size`` (h, w) = (32, 64) sees every picture at
    that size; a box (1, 1, 32, 16) found there is (3, 2, 96, 32) on a 64 x 192 picture (x
    times 3, y times 2); pictures already at the size pass unchanged."""
    seen = []
    net = _CornerBox()
    net.register_forward_pre_hook(lambda m, args: seen.append(tuple(args[0].shape[-2:])))
    det = D.Detector(net, ["thing"], to_input=lambda x: x, input_size=(32, 64))
    found = det(torch.rand(2, 3, 64, 192))
    assert seen == [(32, 64)]
    torch.testing.assert_close(found[0].boxes, torch.tensor([[3.0, 2.0, 96.0, 32.0]]))
    same = det(torch.rand(1, 3, 32, 64))[0].boxes
    torch.testing.assert_close(same, torch.tensor([[1.0, 1.0, 32.0, 16.0]]))
    assert "input 32x64" in repr(det)
    with pytest.raises(ValueError, match="input_size"):
        D.Detector(net, input_size=(32,))  # type: ignore[arg-type]


@pytest.mark.slow
def test_the_toon_detector_finds_characters_in_256_pixel_frames(detector):
    """Issue 17, item 7: the toon detector was trained on 128 x 128 frames and states it
    (``input_size``, also after ``cl.load`` with other options); 256-px crowd frames, the size
    the D-RISE benchmark uses, are resized to it, so mAP@0.5 there is within 0.05 of 128 px
    (measured on 60 fresh frames: 1.00 at both; 0.20 before the resize) and a box Grad-CAM of a
    256-px frame is found and sized to the frame."""
    assert detector.input_size == (128, 128)
    assert cl.load("toon-detector", score_threshold=0.5).input_size == (128, 128)
    got = {}
    for size in (128, 256):
        pixels, boxes = toons.crowd_frames(60, split="test", seed=1717, size=size)
        found = detector(pixels)
        truths = [([b[1:] for b in frame], [b[0] for b in frame]) for frame in boxes]
        got[size] = DE.mean_average_precision(found, truths, iou_thresholds=(0.5,))["per_iou"][0.5]
    assert got[256] >= got[128] - 0.05 and got[256] >= 0.9, got
    box = found[0][0]
    cam = DM.box_cam(detector, pixels[0], box, method="layercam")  # the box is found again
    assert tuple(cam.map.shape) == (256, 256) and _inside(cam.peak(), box.box)
