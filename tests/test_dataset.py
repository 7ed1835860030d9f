"""Data set runs (``cl.dataset``): inputs, shards, resuming, engines, metrics, report, CLI.

The numbers are checked against the library's own single-picture calls: a stored map equals
``cl.explain`` on that picture within float16 precision, the metrics equal
``convlens.workflows.metrics`` on the toons' own masks, the top-k equals ``model.predict``.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import Exploding, model_state
from PIL import Image
from typer.testing import CliRunner

import convlens as cl
from convlens.apps.cli import app
from convlens.core.engine import Cancelled, SerialEngine
from convlens.core.hooks import has_hooks
from convlens.data import toons
from convlens.workflows import metrics as m
from convlens.workflows.datasets import RunMismatchError, list_items
from convlens.workflows.masked import network_input

SRC = Path(__file__).resolve().parent.parent / "src"
FLOAT16_EPS = float(np.finfo(np.float16).eps)


@pytest.fixture(scope="module")
def model() -> cl.Model:
    return cl.load("toon-cnn")


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """24 clean toons (128 px) in train / val / test, with part masks and boxes."""
    return toons.write(
        tmp_path_factory.mktemp("toons") / "toons", n=24, seed=3, splits=(0.5, 0.25, 0.25)
    )


@pytest.fixture(scope="module")
def folders(root, tmp_path_factory) -> Path:
    """The same pictures as class folders, a flat folder, lists and a tar, plus one broken
    picture in each."""
    base = tmp_path_factory.mktemp("inputs")
    index = json.loads((root / "index.json").read_text())
    classes, flat = base / "classes", base / "flat"
    rows = ["path,label,mask"]
    with tarfile.open(base / "pictures.tar", "w") as tar:
        for record in index["items"]:
            picture = root / record["image"]
            name = Path(record["image"]).name.replace(".png", f"-{record['split']}.png")
            key = f"{record['label']}-{name[:-4]}"
            for target in (classes / record["label"] / name, flat / f"{key}.png"):
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(picture.read_bytes())
            parts = np.asarray(Image.open(root / record["mask"]))
            binary = np.isin(parts, [1, 2, 3, 4]).astype(np.uint8) * 255
            Image.fromarray(binary).save(base / f"{key}.mask.png")
            rows.append(f"flat/{key}.png,{record['label']},{key}.mask.png")
            tar.add(picture, arcname=f"{key}.png")
            label = record["label"].encode()
            info = tarfile.TarInfo(f"{key}.cls")
            info.size = len(label)
            tar.addfile(info, io.BytesIO(label))
        broken = b"\x89PNG\r\n\x1a\n not really a picture"
        info = tarfile.TarInfo("zz-broken.png")
        info.size = len(broken)
        tar.addfile(info, io.BytesIO(broken))
    (classes / "james" / "zz-broken.png").write_bytes(broken)
    (flat / "zz-broken.png").write_bytes(broken)
    rows.append("flat/missing.png,james,")
    (base / "list.csv").write_text("\n".join(rows) + "\n")
    (base / "list.txt").write_text(
        "# one path per line\n" + "\n".join(r.split(",")[0] for r in rows[1:]) + "\n"
    )
    return base


def explain(model, source, out, **options):
    options = {"engine": "serial", "shard_size": 8, "batch_size": 4, "report": False} | options
    return cl.dataset.explain(model, source, "gradcam", out=out, **options)


# -- inputs -----------------------------------------------------------------------------------


def test_each_input_kind_lists_its_pictures_labels_and_masks(root, folders):
    expected = {"toons": 24, "class-folders": 25, "folder": 25, "list": 25, "tar": 25}
    sources = {
        "toons": root,
        "class-folders": folders / "classes",
        "folder": folders / "flat",
        "list": folders / "list.csv",
        "tar": folders / "pictures.tar",
    }
    for kind, source in sources.items():
        listing = list_items(source)
        assert listing.kind == kind
        assert len(listing) == expected[kind]  # the list: 24 pictures and a missing file
        assert [i.id for i in listing.items] == sorted(i.id for i in listing.items)
    assert list_items(folders / "classes").classes == ["cassidy", "james", "jessie"]
    assert list_items(folders / "flat").items[0].label is None
    assert {i.label for i in list_items(folders / "pictures.tar").items} == {
        "cassidy",
        "james",
        "jessie",
        None,
    }
    csv = list_items(folders / "list.csv")
    assert sum(i.mask is not None for i in csv.items) == 24
    assert list_items(folders / "list.txt").items[0].label is None
    test_only = list_items(root, split="test")
    assert len(test_only) == 6 and all(i.id.startswith("test/") for i in test_only.items)
    assert json.loads(list_items(root).items[0].boxes)[0]["box"]


def test_bad_sources_say_what_was_expected(tmp_path, folders):
    with pytest.raises(FileNotFoundError, match="not found"):
        list_items(tmp_path / "nowhere")
    (tmp_path / "notes.md").write_text("hello")
    with pytest.raises(ValueError, match="expected a folder of pictures"):
        list_items(tmp_path / "notes.md")
    (tmp_path / "x.tar.gz").write_bytes(b"")
    with pytest.raises(ValueError, match="uncompressed .tar"):
        list_items(tmp_path / "x.tar.gz")
    with pytest.raises(ValueError, match="needs a toons folder"):
        list_items(folders / "flat", split="test")
    twice = tmp_path / "twice.txt"
    twice.write_text(f"{folders}/flat/zz-broken.png\n{folders}/flat/zz-broken.png\n")
    with pytest.raises(ValueError, match="more than once"):
        list_items(twice)


def test_every_kind_gives_the_same_numbers_and_failed_rows_carry_the_reason(
    model, folders, tmp_path
):
    runs = {
        kind: explain(model, folders / name, tmp_path / kind)
        for kind, name in (
            ("classes", "classes"),
            ("flat", "flat"),
            ("csv", "list.csv"),
            ("tar", "pictures.tar"),
        )
    }
    tables = {kind: run.table() for kind, run in runs.items()}
    for kind, table in tables.items():
        failed = table[table["status"] == "failed"]
        assert len(failed) == 1, kind  # a broken picture, or (csv) a missing file
        assert failed["error"].str.contains("ImageError|FileNotFoundError").all()
        assert runs[kind].counts()["failed"] == len(failed)
        assert table["prediction"].notna().sum() == len(table) - len(failed)
    # labels from folder names, .cls members and the csv's column all match the model by name
    for kind in ("classes", "csv", "tar"):
        ok = tables[kind][tables[kind]["status"] == "ok"]
        assert (ok["target"] == ok["label_index"]).all()
        assert ok["correct"].notna().all()
    flat = tables["flat"][tables["flat"]["status"] == "ok"]
    assert flat["label"].isna().all() and (flat["target"] == flat["prediction"]).all()
    # the same picture gives the same map whichever way it was listed
    by_key = {}
    for kind, table in tables.items():
        maps = runs[kind].maps("gradcam")
        for row in table[table["status"] == "ok"].itertuples():
            key = Path(row.source.split("::")[-1]).name
            key = key if kind != "classes" else f"{row.label}-{key}"
            by_key.setdefault(key, []).append(np.asarray(maps[row.id], np.float32))
    assert len(by_key) == 24
    for key, maps_of in by_key.items():
        for other in maps_of[1:]:
            np.testing.assert_array_equal(maps_of[0], other, err_msg=key)
    # the csv's binary masks give the toons' numbers
    csv_ok = tables["csv"][tables["csv"]["status"] == "ok"]
    assert csv_ok["energy_in_mask"].notna().all() and csv_ok["object_area"].gt(0).all()


def test_stored_maps_scores_and_top_k_equal_the_single_picture_calls(model, root, tmp_path):
    run = explain(model, root, tmp_path / "run", top_k=2)
    table = run.table()
    maps = run.maps("gradcam")
    assert len(maps) == 24 and maps.shapes() == {(16, 16)}
    for row in table.iloc[::5].itertuples():
        single = cl.explain(model, row.source, "gradcam", row.target)
        stored = np.asarray(maps[row.id], np.float32)
        assert isinstance(maps[row.id].base, np.memmap) or isinstance(maps[row.id], np.memmap)
        peak = float(single.map.abs().max())
        np.testing.assert_allclose(stored, single.map[0].numpy(), atol=peak * FLOAT16_EPS)
        assert row.target_score == pytest.approx(float(single.scores[0]), rel=1e-5)
        prediction = model.predict(row.source, top=2)
        assert list(row.top_k) == [k for k, _, _ in prediction.topk(0)]
        np.testing.assert_allclose(
            list(row.top_k_probability), [p for _, _, p in prediction.topk(0)], rtol=1e-5
        )
        assert row.layer == "pool3" and list(row.map_shape) == [16, 16]


def test_a_batch_runs_in_the_chunks_cl_explain_uses_with_the_same_rows(
    model, root, tmp_path, monkeypatch
):
    """Methods that take a picture chunk run on a batch chunk by chunk (the chunk
    ``cl.explain`` uses: what fits a CPU's cache); a method that sizes its own batches keeps
    the whole batch. Chunks of one picture give the rows of whole batches."""
    from convlens.techniques.attribution.base import get_method
    from convlens.techniques.attribution.explain import picture_chunk
    from convlens.workflows.datasets import work

    def explain_work(*methods: str) -> work.ExplainWork:
        return work.ExplainWork(None, [(m, {}) for m in methods])  # type: ignore[arg-type]

    assert explain_work("gradcam").chunk(model) == picture_chunk(model, get_method("gradcam"), {})
    assert explain_work("gradcam", "ig").chunk(model) is None
    common = {"engine": "serial", "split": "test", "batch_size": 4, "report": False}
    whole = cl.dataset.explain(model, root, "gradcam,saliency", out=tmp_path / "all", **common)
    monkeypatch.setattr(work, "picture_chunk", lambda *_: 1)
    assert explain_work("gradcam", "saliency").chunk(model) == 1
    one = cl.dataset.explain(model, root, "gradcam,saliency", out=tmp_path / "one", **common)
    a, b = one.table(), whole.table()
    assert len(a) == 2 * len(list((root / "test").rglob("*.png")))
    pd.testing.assert_frame_equal(a, b, check_exact=False, rtol=1e-5, atol=1e-6)
    for (_, x), (_, y) in zip(one.maps("gradcam"), whole.maps("gradcam"), strict=True):
        np.testing.assert_allclose(x, y, atol=2 * float(np.abs(y).max()) * FLOAT16_EPS)


def test_mask_metrics_equal_the_metrics_on_the_toons_masks(model, root, tmp_path):
    run = explain(model, root, tmp_path / "run", deletion=5)
    table = run.table().set_index("id")
    data = toons.read(root, split=None)
    inputs, masks = network_input(
        model, torch.from_numpy(data.pixels).permute(0, 3, 1, 2).float() / 255, data.object_mask()
    )
    labels = torch.tensor([model.class_index(data.classes[k]) for k in data.labels])
    attribution = cl.explain(model, inputs, "gradcam", labels)
    energy = m.energy_in_mask(attribution, masks, empty="nan").values
    pointing = m.pointing_game(attribution, masks, empty="nan").values
    deletion = m.deletion(model, inputs, attribution, labels, steps=5).auc.values
    rows = table.loc[data.names]
    np.testing.assert_allclose(rows["energy_in_mask"], energy, rtol=1e-4)
    np.testing.assert_allclose(rows["pointing_game"], pointing)
    np.testing.assert_allclose(rows["deletion_auc"], deletion, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(rows["object_area"], masks.double().mean((1, 2)), rtol=1e-6)
    index = {r["image"]: r["boxes"] for r in json.loads((root / "index.json").read_text())["items"]}
    assert all(json.loads(b) == index[i] for i, b in rows["boxes"].items())


# -- shards, identity, resuming -----------------------------------------------------------------


def test_shards_are_parquet_anyone_reads_and_maps_numpy_reads(model, root, tmp_path):
    run = explain(model, root, tmp_path / "run")
    assert sorted(p.name for p in (run.folder / "shards").iterdir()) == [
        "00000.parquet",
        "00001.parquet",
        "00002.parquet",
    ]
    plain = pd.read_parquet(run.folder / "shards").sort_values("id", ignore_index=True)
    ours = run.table().sort_values("id", ignore_index=True)
    pd.testing.assert_frame_equal(plain, ours, check_dtype=False)
    assert str(ours["prediction"].dtype) == "Int64"
    row = plain.iloc[7]
    flat = np.load(run.folder / row["map_file"], mmap_mode="r")
    stored = flat[row["map_offset"] : row["map_offset"] + 256].reshape(row["map_shape"])
    np.testing.assert_array_equal(stored, run.maps("gradcam")[row["id"]])
    manifest = json.loads((run.folder / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["counts"]["pictures"] == 24
    identity = manifest["identity"]
    assert identity["model"]["weights"] == cl.dataset.manifest.weights_hash(model.module)
    assert identity["methods"] == [
        {"name": "gradcam", "settings": {"relu": True, "layer": "pool3"}}
    ]
    assert manifest["input"]["digest"] == list_items(root).digest()


def test_rerunning_skips_finished_shards_and_redoes_changed_ones(model, root, tmp_path):
    out = tmp_path / "run"
    explain(model, root, out)
    first = {p.name: p.stat().st_mtime_ns for p in (out / "shards").iterdir()}
    calls = []
    explain(model, root, out, progress=lambda done, total: calls.append(done))
    assert calls == [24]  # nothing left to do
    assert {p.name: p.stat().st_mtime_ns for p in (out / "shards").iterdir()} == first
    # a picture changed on disk: only its shard is redone
    copy = tmp_path / "toons"
    import shutil

    shutil.copytree(root, copy)
    changed = copy / list_items(copy).items[9].id  # in shard 1
    Image.open(changed).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(changed)
    os.utime(changed, ns=(1, 1))
    out2 = tmp_path / "run2"
    explain(model, copy, out2)
    before = {p.name: p.stat().st_mtime_ns for p in (out2 / "shards").iterdir()}
    calls.clear()
    changed.write_bytes(changed.read_bytes())
    explain(model, copy, out2, progress=lambda done, total: calls.append(done))
    after = {p.name: p.stat().st_mtime_ns for p in (out2 / "shards").iterdir()}
    assert calls == [16, 20, 24]
    assert [k for k in before if before[k] != after[k]] == ["00001.parquet"]


def test_a_different_model_or_setting_is_refused_not_mixed(model, root, tmp_path):
    out = tmp_path / "run"
    explain(model, root, out)
    with pytest.raises(
        RunMismatchError, match=r"methods\[0\]\.settings\.layer: 'pool3' -> 'conv3'"
    ):
        cl.dataset.explain(model, root, {"gradcam": {"layer": "conv3"}}, out=out, engine="serial",
                           shard_size=8, report=False)  # fmt: skip
    other = cl.load("toon-cnn-spurious")
    with pytest.raises(RunMismatchError, match=r"model\.weights"):
        explain(other, root, out)
    with pytest.raises(ValueError, match="not empty and holds no convlens run"):
        explain(model, root, tmp_path)  # a folder with other things in it
    run = explain(other, root, out, overwrite=True)
    assert run.manifest["identity"]["model"]["name"] == "toon-cnn-spurious"
    assert len(run.table()) == 24


def test_same_seed_same_rows_and_the_seed_matters(model, root, tmp_path):
    def rise(out, seed):
        return cl.dataset.explain(
            model, root, {"rise": {"masks": 16}}, out=out, engine="serial", seed=seed,
            split="test", shard_size=4, batch_size=2, report=False,
        )  # fmt: skip

    a, b, c = rise(tmp_path / "a", 5), rise(tmp_path / "b", 5), rise(tmp_path / "c", 6)
    pd.testing.assert_frame_equal(a.table(), b.table())
    for (_, x), (_, y) in zip(a.maps("rise"), b.maps("rise"), strict=True):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a.maps("rise")[0], c.maps("rise")[0])
    assert a.manifest["identity"]["methods"][0]["settings"]["seed"] == 5


KILLED = """
import os, signal, sys
import torch
torch.set_num_threads(1)
import convlens as cl

def progress(done, total):
    if done == 12:  # shard 0 (8 pictures) written, shard 1 half computed
        os.kill(os.getpid(), signal.SIGKILL)

cl.dataset.explain("toon-cnn", sys.argv[1], "gradcam", out=sys.argv[2], engine="local",
                   workers=1, shard_size=8, batch_size=4, report=False, progress=progress)
"""


def test_killed_mid_shard_then_rerun_gives_every_picture_exactly_once(model, root, tmp_path):
    out = tmp_path / "run"
    script = tmp_path / "killed.py"
    script.write_text(textwrap.dedent(KILLED))
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    done = subprocess.run(
        [sys.executable, str(script), str(root), str(out)], env=env, timeout=300, check=False
    )
    assert done.returncode == -signal.SIGKILL
    assert [p.name for p in (out / "shards").glob("*.parquet")] == ["00000.parquet"]
    assert json.loads((out / "manifest.json").read_text())["status"] == "running"
    # what a kill during a write leaves: a torn temporary shard and a map with no shard
    (out / "shards" / ".00001.parquet.4242.tmp").write_bytes(b"PAR1 torn")
    (out / "maps" / "00001.gradcam.npy").write_bytes(b"\x93NUMPY torn")
    run = explain(model, root, out, engine="local", workers=1)
    assert not list(out.rglob("*.tmp"))
    table = run.table()
    assert len(table) == 24 and table["id"].is_unique
    assert sorted(table["id"]) == [i.id for i in list_items(root).items]
    clean_run = explain(model, root, tmp_path / "clean")
    clean = clean_run.table()
    pd.testing.assert_frame_equal(
        table.sort_values("id", ignore_index=True), clean.sort_values("id", ignore_index=True)
    )
    for (name, x), (other, y) in zip(run.maps("gradcam"), clean_run.maps("gradcam"), strict=True):
        assert name == other
        np.testing.assert_array_equal(x, y)


# -- engines, hooks, cancelling -------------------------------------------------------------------


def test_local_engine_gives_the_serial_rows_and_leaves_the_model_alone(model, root, tmp_path):
    before = model_state(model.module)
    local = explain(model, root, tmp_path / "local", engine="local", workers=1).table()
    serial = explain(model, root, tmp_path / "serial").table()
    pd.testing.assert_frame_equal(local, serial)
    assert model_state(model.module) == before and has_hooks(model.module) == []


def test_a_model_that_raises_leaves_no_hooks_and_an_incomplete_run(folders, tmp_path):
    broken = cl.Model(
        Exploding(),
        preprocess=cl.Preprocessing(crop=8, resize=8, mean=(0.0,), std=(1.0,), channels=1),
    )
    with pytest.raises(RuntimeError, match="boom halfway"):
        cl.dataset.explain(broken, folders / "flat", "gradcam", out=tmp_path / "r",
                           settings={"layer": "first"}, engine="serial", report=False)  # fmt: skip
    assert has_hooks(broken.module) == []
    manifest = json.loads((tmp_path / "r" / "manifest.json").read_text())
    assert manifest["status"] == "incomplete"


def test_cancelling_keeps_finished_shards_and_the_same_job_resumes(model, root, tmp_path):
    seen = []

    def progress(done, total):
        seen.append(done)

    with pytest.raises(Cancelled):
        cl.dataset.run_dataset(model, root, "gradcam", tmp_path / "job", engine="serial",
                               shard_size=8, batch_size=4, progress=progress,
                               cancelled=lambda: len(seen) > 3)  # fmt: skip
    assert len(list((tmp_path / "job" / "shards").glob("*.parquet"))) == 1
    run = cl.dataset.run_dataset(model, root, "gradcam", tmp_path / "job", engine="serial",
                                 shard_size=8, batch_size=4)  # fmt: skip
    assert run.counts() == {"pictures": 24, "failed": 0, "rows": 24}
    assert run.report_path.is_file()


def test_engine_names_and_bad_options(model, root, tmp_path):
    assert isinstance(cl.dataset.engine("serial"), SerialEngine)
    assert cl.dataset.engine("local", workers=0).workers == 0
    with pytest.raises(ValueError, match="expected an engine among"):
        cl.dataset.engine("spark")
    with pytest.raises(ValueError, match="workers >= 0"):
        cl.dataset.engine("local", workers=-1)
    with pytest.raises(ValueError, match="address= joins a Ray cluster"):
        explain(model, root, tmp_path / "x", address="auto")
    with pytest.raises(ValueError, match="target 'label' or 'predicted'"):
        explain(model, root, tmp_path / "x", target="truth")
    with pytest.raises(cl.UnknownNameError, match="'stpes'"):
        cl.dataset.explain(model, root, "gradcam", out=tmp_path / "x", settings={"stpes": 3})


def _niceness(_item: object) -> int:
    return os.nice(0)


class NicenessWork:
    """Each item -> the niceness of the process that loaded it."""

    loader = staticmethod(_niceness)

    def compute(self, model: object, loaded: list[int]) -> list[int]:
        return loaded


def test_local_engine_nice_lowers_only_the_decoding_workers():
    here = os.nice(0)
    engine = cl.dataset.engine("local", workers=1, nice=3)
    assert engine.describe()["nice"] == 3
    lower = min(19, here + 3)
    assert list(engine.map(None, NicenessWork(), [[0, 1], [2]])) == [[lower] * 2, [lower]]
    assert os.nice(0) == here
    with pytest.raises(ValueError, match="nice in 0..19"):
        cl.dataset.engine("local", nice=-1)


def test_ray_actors_ask_for_a_gpu_each_when_the_cluster_has_gpus():
    from convlens.workflows.datasets.ray_engine import RayEngine

    class FakeRay:
        def __init__(self, resources):
            self.resources = resources

        def cluster_resources(self):
            return self.resources

    assert RayEngine()._plan(FakeRay({"CPU": 16.0, "GPU": 2.0})) == (2, 1.0)
    assert RayEngine()._plan(FakeRay({"CPU": 2.0})) == (2, 0.0)
    assert RayEngine(gpus_per_worker=0.25)._plan(FakeRay({"CPU": 16.0, "GPU": 1.0})) == (4, 0.25)
    assert RayEngine(workers=3, gpus_per_worker=0)._plan(FakeRay({"GPU": 1.0})) == (3, 0.0)
    with pytest.raises(ValueError, match="workers >= 1"):
        RayEngine(workers=0)


# -- activations on an engine ---------------------------------------------------------------------


def test_activations_on_an_engine_equal_the_plain_call(model, root, tmp_path):
    files = sorted(str(p) for p in (root / "test").rglob("*.png"))
    plain = cl.activations(model, files, ["conv2", "pool3"], batch_size=4)
    streamed = cl.activations(
        model, files, ["conv2", "pool3"], batch_size=4,
        engine=cl.dataset.engine("local", workers=1), stream_to=tmp_path / "acts.npz",
    )  # fmt: skip
    assert streamed.names == plain.names
    for layer in ("conv2", "pool3"):
        torch.testing.assert_close(streamed[layer], plain[layer], rtol=0, atol=0)
    from convlens.techniques.activations import layer_batches

    inputs = model.prepare(files).inputs.requires_grad_(True)
    kept = {}
    handle = model.module.get_submodule("conv3").register_forward_hook(
        lambda _m, _i, out: kept.setdefault("conv3", out)
    )
    try:
        logits = model.module(inputs)
    finally:
        handle.remove()
    (expected,) = torch.autograd.grad(logits[:, 1].sum(), [kept["conv3"]])
    batches = list(layer_batches(model, files, "conv3", engine=SerialEngine(), batch_size=4,
                                 gradient_of=1, flatten=True))  # fmt: skip
    got = torch.cat([g["conv3"] for _, g in batches])
    torch.testing.assert_close(got, expected.flatten(1), rtol=1e-5, atol=1e-7)
    assert has_hooks(model.module) == []
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"nope")
    with pytest.raises(cl.ImageError, match="bad"):
        cl.activations(model, [*files[:2], str(bad)], "conv2", engine=SerialEngine())
    with pytest.raises(ValueError, match="in memory already"):
        cl.activations(model, torch.zeros(1, 3, 128, 128), "conv2", engine=SerialEngine())


# -- report and CLI -------------------------------------------------------------------------------


def test_report_has_the_audit_means_examples_and_confusions(model, root, tmp_path):
    run = explain(model, root, tmp_path / "run")
    html = run.report().read_text()
    for title in (
        "gradcam: mean map per class",
        "gradcam: on the object or on the background?",
        "gradcam: the most evidence off the object",
        "gradcam: the lowest scores for the target",
        "Accuracy and confusions",
    ):
        assert title in html
    assert html.count("data:image/png;base64,") >= 3 + 2 * 8
    assert "http://" not in html and "https://" not in html and "<script" not in html
    audit = run.audit()
    table = run.table()
    assert audit.share_inside == pytest.approx(table["energy_in_mask"].mean())
    assert [r["class"] for r in audit.classes()] == ["cassidy", "james", "jessie"]
    accuracy = float(table["correct"].mean())
    assert f"Top-1 accuracy {accuracy:.1%}" in html


def test_cli_explain_resume_refuse_and_report(root, tmp_path):
    runner = CliRunner()
    out = tmp_path / "run"
    args = ["dataset", "explain", "toon-cnn", str(root), "--out", str(out), "--engine",
            "serial", "--shard-size", "8", "--batch-size", "6"]  # fmt: skip
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    assert "24 pictures (0 failed) x 1 method(s)" in first.output
    again = runner.invoke(app, args)
    assert again.exit_code == 0
    refused = runner.invoke(app, [*args, "--relu", "false"])
    assert refused.exit_code == 2
    assert "relu: true -> false" in refused.output
    bad = runner.invoke(app, [*args, "--rleu", "false"])
    assert bad.exit_code == 2 and "unknown setting of gradcam 'rleu'" in bad.output
    (out / "report.html").unlink()
    report = runner.invoke(app, ["dataset", "report", str(out)])
    assert report.exit_code == 0 and (out / "report.html").is_file()
    audit = runner.invoke(
        app, ["dataset", "audit", "toon-cnn", str(root), "--out", str(tmp_path / "audit"),
              "--engine", "serial", "--steps", "4", "--split", "test"],
    )  # fmt: skip
    assert audit.exit_code == 0, audit.output
    assert "integrated_gradients: " in audit.output and "characters" in audit.output
    table = cl.dataset.open_run(tmp_path / "audit").table()
    assert len(table) == 6 and table["energy_in_mask"].notna().all()
