"""The Ray engine on a real local cluster (2 CPUs, no dashboard, no usage stats), started once
for the test session (``ray_cluster`` in conftest.py): it gives the rows of the local engine,
and the activations of the plain call. Few and small: a cluster and its actors take seconds
to start."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import convlens as cl
from convlens.data import toons

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.ray

FLOAT16_EPS = float(np.finfo(np.float16).eps)


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return toons.write(tmp_path_factory.mktemp("toons") / "toons", n=24, seed=5)


def test_ray_engine_gives_the_rows_of_the_local_engine(ray_cluster, root, tmp_path):
    model = cl.load("toon-cnn")
    common = {"shard_size": 8, "batch_size": 4, "report": False, "deletion": 4}
    local = cl.dataset.explain(model, root, "gradcam,saliency", out=tmp_path / "local",
                               engine="local", workers=1, **common)  # fmt: skip
    remote = cl.dataset.explain(model, root, "gradcam,saliency", out=tmp_path / "ray",
                                engine="ray", workers=2, **common)  # fmt: skip
    assert remote.manifest["engine"]["actors"] == 2
    assert remote.manifest["engine"]["gpus_per_actor"] == 0
    a, b = local.table(), remote.table()
    assert len(b) == 48 and b.groupby(["id", "method"]).size().eq(1).all()
    pd.testing.assert_frame_equal(a, b, check_exact=False, rtol=1e-5, atol=1e-6)
    for method in ("gradcam", "saliency"):
        for (name, x), (other, y) in zip(local.maps(method), remote.maps(method), strict=True):
            assert name == other
            peak = float(np.abs(np.asarray(x, np.float32)).max())
            np.testing.assert_allclose(y, x, atol=2 * peak * FLOAT16_EPS, rtol=0)


def test_activations_on_ray_equal_the_plain_call(ray_cluster, root):
    model = cl.load("toon-cnn")
    files = sorted(str(p) for p in (root / "test").rglob("*.png"))
    plain = cl.activations(model, files, ["conv3"], batch_size=2)
    remote = cl.activations(model, files, ["conv3"], batch_size=2,
                            engine=cl.dataset.engine("ray", workers=2))  # fmt: skip
    assert remote.names == plain.names
    torch.testing.assert_close(remote["conv3"], plain["conv3"], rtol=1e-5, atol=1e-6)
