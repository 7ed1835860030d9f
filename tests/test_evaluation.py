"""evaluate() and audit() over data sets with masks: aggregation equals the metrics computed
directly, and the audit tells a model that looks at the object from one that looks at the
background."""

from __future__ import annotations

import json

import pytest
import scipy.stats
import torch
from conftest import model_state
from rich.console import Console
from torch import nn

import convlens as cl
from convlens.core.model import Preprocessing
from convlens.workflows import metrics as m
from convlens.workflows.audit import audit
from convlens.workflows.evaluation import METRICS, evaluate
from convlens.workflows.masked import MaskedImages

PLAIN = Preprocessing(crop=None, resize=None, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
SIZE = 12


def centre_mask(n: int) -> torch.Tensor:
    mask = torch.zeros(n, SIZE, SIZE, dtype=torch.bool)
    mask[:, 3:9, 3:9] = True
    return mask


class Looker(nn.Module):
    """Two logits, each a weighted sum of the pixels of one region: the object (the centre
    6 x 6) or the background. Its gradients are exactly the weights, so where the saliency
    falls is known."""

    def __init__(self, where: str) -> None:
        super().__init__()
        inside = centre_mask(1)[0].float()
        region = inside if where == "object" else 1 - inside
        weight = torch.stack([region, -region])[:, None].repeat(1, 3, 1, 1)
        self.conv = nn.Conv2d(3, 2, SIZE, bias=False)
        self.flat = nn.Flatten()
        with torch.no_grad():
            self.conv.weight.copy_(weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.flat(self.conv(x))


def looker(where: str) -> cl.Model:
    return cl.Model(
        Looker(where), preprocess=PLAIN, labels=["up", "down"], input_size=(3, SIZE, SIZE)
    )


class Small(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.act = nn.ReLU()
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.act(self.conv(x)))


def data(n: int = 10, seed: int = 0) -> MaskedImages:
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(n, 3, SIZE, SIZE, generator=g)
    hair = torch.zeros(n, SIZE, SIZE, dtype=torch.bool)
    hair[:, 3:5, 3:9] = True
    face = centre_mask(n) & ~hair
    labels = torch.arange(n) % 2
    return MaskedImages(images, {"hair": hair, "face": face}, labels, ("up", "down"))


def test_evaluate_equals_the_metrics_computed_directly():
    model = cl.Model(Small(), preprocess=PLAIN, input_size=(3, SIZE, SIZE))
    ds = data(10)
    before = model_state(model.module)
    seen = []
    result = evaluate(
        model,
        ds,
        ["saliency", "gradcam"],
        parts=["hair"],
        batch_size=4,
        steps=6,
        progress=lambda done, total: seen.append((done, total)),
    )
    assert model_state(model.module) == before
    assert seen[-1] == (6, 6)  # 3 batches x 2 methods
    x, masks, target = ds.images, ds.mask("hair"), ds.labels
    for method in ("saliency", "gradcam"):
        maps = m.input_maps(cl.explain(model, x, method, target=target.tolist()), (SIZE, SIZE))
        direct = {
            "pointing_game": m.pointing_game(maps, masks, empty="nan"),
            "energy_in_mask": m.energy_in_mask(maps, masks, empty="nan"),
            "deletion": m.deletion(model, x, maps, target, steps=6).auc,
            "insertion": m.insertion(model, x, maps, target, steps=6).auc,
        }
        change = m.confidence_change(model, x, maps, target, empty="nan")
        direct["average_drop"] = change.average_drop
        direct["increase_in_confidence"] = change.increase_in_confidence
        for metric, scores in direct.items():
            got = result.scores[(method, metric)]
            torch.testing.assert_close(got.values, scores.values, equal_nan=True)
    row = next(r for r in result.rows() if r["method"] == "gradcam" and r["metric"] == "deletion")
    values = result.scores[("gradcam", "deletion")].values.numpy()
    low, high = scipy.stats.t.interval(
        0.95, len(values) - 1, loc=values.mean(), scale=scipy.stats.sem(values)
    )
    assert (row["low"], row["high"]) == pytest.approx((low, high))
    assert row["better"] == "lower" and row["n"] == 10


def test_evaluation_table_json_and_errors():
    model = looker("object")
    result = evaluate(model, data(6), ["saliency"], ["pointing_game", "energy_in_mask"], n=4)
    assert result.images == 4
    # the object model's saliency lies on the centre only: a hit every time, all energy inside
    assert result.scores[("saliency", "pointing_game")].mean == 1.0
    assert result.scores[("saliency", "energy_in_mask")].mean == pytest.approx(1.0)
    assert result.cell("saliency", "pointing_game") == "1.000 ± 0.000"
    console = Console(record=True, width=120)
    console.print(result)
    text = console.export_text()
    assert "saliency" in text and "pointing ↑" in text and "1.000 ± 0.000" in text
    assert "energy ↑" in str(result)
    loaded = json.loads(result.to_json())
    assert loaded["images"] == 4 and loaded["results"][0]["mean"] == 1.0
    assert "Student-t" in loaded["interval"]
    # the page and the record say which model saw which data (issue 18)
    assert loaded["model"] == model.name and model.name
    assert loaded["data"] and f"{model.name} on {loaded['data']}" in text
    assert "<table>" in result._repr_html_()
    with pytest.raises(ValueError, match="metrics among"):
        evaluate(model, data(2), ["saliency"], ["accuracy"])
    with pytest.raises(cl.UnknownNameError):
        evaluate(model, data(2), ["gradcamm"])
    with pytest.raises(ValueError, match="expected data with masks"):
        evaluate(model, torch.rand(2, 3, SIZE, SIZE), ["saliency"])
    with pytest.raises(ValueError, match="like the images"):
        MaskedImages(torch.rand(2, 3, SIZE, SIZE), torch.ones(2, 5, 5, dtype=torch.bool))
    assert set(METRICS) == {
        "pointing_game",
        "energy_in_mask",
        "deletion",
        "insertion",
        "average_drop",
        "increase_in_confidence",
    }


def test_tuple_data_and_maps_without_positive_mass_are_counted():
    model = looker("background")
    images = torch.rand(4, 3, SIZE, SIZE)
    masks = centre_mask(4)
    result = evaluate(model, (images, masks), ["gradient_x_input"], ["energy_in_mask"])
    scores = result.scores[("gradient_x_input", "energy_in_mask")]
    assert scores.values.tolist() == [0.0] * 4  # every bit of evidence on the background
    # for class 1 (weights -region) on positive pixels gradient x input is all negative
    none = evaluate(model, (images, masks, torch.ones(4, dtype=torch.long)), ["gradient_x_input"])
    assert none.scores[("gradient_x_input", "energy_in_mask")].invalid == 4
    assert none.cell("gradient_x_input", "energy_in_mask") == "n/a"


def test_audit_tells_object_from_background(tmp_path):
    ds = data(8)
    good = audit(looker("object"), ds, "saliency", examples=2)
    bad = audit(looker("background"), ds, "saliency", examples=2)
    assert good.share_inside == pytest.approx(1.0) and not good.relies_on_background
    assert bad.share_inside == pytest.approx(0.0) and bad.relies_on_background
    assert bad.verdict == "relies on the background: 100 % of attribution is outside the objects"
    assert good.verdict.startswith("looks at the objects: 100 %")
    rows = good.classes()
    assert [r["class"] for r in rows] == ["up", "down"]
    assert [r["images"] for r in rows] == [4, 4]
    assert rows[0]["object area"] == pytest.approx(36 / 144)
    page = bad.save(tmp_path / "audit.html").read_text()
    assert "relies on the background" in page and page.count("<img") == 2 * 2 * 3
    assert json.loads(bad.to_json())["relies_on_background"] is True


def test_audit_share_is_the_mean_of_per_image_energy():
    model = cl.Model(Small(), preprocess=PLAIN, labels=["a", "b", "c"], input_size=(3, SIZE, SIZE))
    ds = data(6, seed=2)
    result = audit(model, ds, "gradcam", threshold=0.3, batch_size=4, examples=0)
    maps = cl.explain(model, ds.images, "gradcam", target=ds.labels.tolist())
    direct = m.energy_in_mask(maps, ds.object_mask(), empty="nan")
    assert result.share_inside == pytest.approx(direct.mean)
    assert result.relies_on_background == (1 - direct.mean > 0.3)
    with pytest.raises(ValueError, match="threshold"):
        audit(model, ds, threshold=1.5)


# -- toons and the command line ---------------------------------------------------------------


@pytest.fixture
def toon_folder(tmp_path):
    """A small toons folder and a plugin model for 32 x 32 toons (untrained, 3 classes)."""
    from convlens.data import toons

    root = toons.write(tmp_path / "toons", n=24, size=32, splits=(0.5, 0.25, 0.25))
    plugin = tmp_path / "toon_plugin.py"
    plugin.write_text(
        "import torch\n"
        "from torch import nn\n"
        "import convlens as cl\n"
        "torch.manual_seed(0)\n"
        "net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),\n"
        "    nn.Flatten(), nn.Linear(4, 3))\n"
        "model = cl.Model(net, labels=['jessie', 'james', 'cassidy'], name='toy',\n"
        "    preprocess=cl.Preprocessing(crop=32, resize=None, mean=(0.5,) * 3, std=(0.25,) * 3))\n"
    )
    return root, plugin


def test_toonset_works_with_evaluate_and_audit(toon_folder):
    from convlens.data import toons

    root, _ = toon_folder
    ts = toons.read(root, split="test")
    model = cl.Model(Small(), preprocess=PLAIN, labels=list(ts.classes), input_size=(3, 32, 32))
    result = evaluate(model, ts, ["gradcam"], ["pointing_game"], parts=["hair", "face"])
    maps = cl.explain(model, ts.images, "gradcam", target=ts.labels.tolist())
    direct = m.pointing_game(maps, ts.mask("hair", "face"), empty="nan")
    assert result.scores[("gradcam", "pointing_game")].mean == pytest.approx(direct.mean)
    report = audit(model, root, examples=1)  # a folder is read as its test split
    assert report.object_name == "characters"
    assert "of attribution is" in report.verdict and "characters" in report.verdict
    assert {r["class"] for r in report.classes()} <= set(ts.classes)


def test_cli_evaluate_and_audit(toon_folder, tmp_path):
    from typer.testing import CliRunner

    from convlens.apps.cli import app

    root, plugin = toon_folder
    runner = CliRunner()
    out = tmp_path / "eval"
    args = ["evaluate", str(plugin), str(root), "-m", "gradcam,saliency", "--n", "4"]
    result = runner.invoke(app, [*args, "--steps", "4", "--out", str(out)])
    assert result.exit_code == 0, result.output
    for word in ("gradcam", "saliency", "pointing", "energy", "deletion", "insert", "drop", "±"):
        assert word in result.output
    saved = json.loads((out / "evaluation.json").read_text())
    assert saved["images"] == 4 and saved["methods"] == ["gradcam", "saliency"]
    assert len(saved["results"]) == 2 * len(METRICS)
    out = tmp_path / "audit"
    result = runner.invoke(app, ["audit", str(plugin), str(root), "--n", "6", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "of attribution is" in result.output
    assert (out / "audit.html").read_text().count("<img") > 0
    assert json.loads((out / "audit.json").read_text())["images"] == 6
    bad = runner.invoke(app, ["evaluate", str(plugin), str(tmp_path), "--out", str(out)])
    assert bad.exit_code == 2 and "index.json" in bad.output
    bad = runner.invoke(app, ["evaluate", str(plugin), str(root), "--metrics", "nope"])
    assert bad.exit_code == 2 and "metrics among" in bad.output


def test_true_labels_are_matched_to_the_model_classes_by_name():
    """A data set numbers its classes ("up", "down"); a model trained elsewhere numbers them
    the other way round: the explained class must be the image's class, by name."""
    ds = data(6)
    swapped = cl.Model(
        Looker("object"), preprocess=PLAIN, labels=["down", "up"], input_size=(3, SIZE, SIZE)
    )
    result = evaluate(swapped, ds, ["gradient_x_input"], ["energy_in_mask"])
    by_name = ["up" if k == 0 else "down" for k in ds.labels.tolist()]
    maps = cl.explain(swapped, ds.images, "gradient_x_input", target=by_name)
    direct = m.energy_in_mask(maps, ds.object_mask(), empty="nan")
    assert result.scores[("gradient_x_input", "energy_in_mask")].mean == pytest.approx(direct.mean)
    wrong = cl.explain(swapped, ds.images, "gradient_x_input", target=ds.labels.tolist())
    assert not torch.equal(maps.map, wrong.map)  # the numbering matters for this model
    partly = cl.Model(
        Looker("object"), preprocess=PLAIN, labels=["up", "left"], input_size=(3, SIZE, SIZE)
    )
    with pytest.raises(ValueError, match="only some of the data's classes"):
        evaluate(partly, ds, ["gradient_x_input"], ["energy_in_mask"])
