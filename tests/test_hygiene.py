"""Every public entry point that runs a model leaves no hooks and no changes behind, also
when the model's forward raises halfway."""

from __future__ import annotations

import inspect

import pytest
import torch
from conftest import Exploding, model_state, tiny_model

import convlens as cl
from convlens.core.hooks import has_hooks

X = torch.rand(2, 1, 4, 4, generator=torch.Generator().manual_seed(0))

# name -> how to call it on a model; extend when a public function that runs a model is added.
OPERATIONS = {
    "activations": lambda m: cl.activations(m, X, ["conv"] if _has(m, "conv") else ["first"]),
    "activations_all_layers": lambda m: cl.activations(m, X),
    "activations_streamed": lambda m: cl.activations(m, X, stream_to=_TMP["dir"] / "a.npz"),
    "layer_table": lambda m: cl.layer_table(m),
    "Model.predict": lambda m: m.predict(X),
    "Model.probabilities": lambda m: m.probabilities(X),
    "Model.layers": lambda m: m.layers(),
    "evaluate": lambda m: cl.evaluate(
        m, _masked(), ["saliency"], ["pointing_game", "deletion"], steps=4
    ),
    "audit": lambda m: cl.audit(m, _masked(), "saliency", examples=1),
    "sanity_check": lambda m: cl.sanity_check(m, X, "saliency"),
    "featurevis": lambda m: cl.featurevis(
        m,
        cl.objectives.channel("conv" if _has(m, "conv") else "second", 0),
        size=8,
        steps=2,
        normalize=lambda x: x.mean(1, keepdim=True),
    ),
    "filter_weights": lambda m: cl.filter_weights(m, "conv" if _has(m, "conv") else "first"),
    "tcav": lambda m: cl.tcav(
        m,
        0,
        X,
        {"up": X + 1.0, "down": X - 1.0},
        random={f"random_{k}": X.flip(k % 2 + 2) for k in range(3)},
        layers=["conv" if _has(m, "conv") else "first"],
        n_random=3,
        test_fraction=0,
    ),
}
_TMP: dict = {}

# Small settings so every registered attribution method runs on the 4x4 tiny model.
SMALL = {
    "occlusion": {"window": 2, "stride": 1},
    "rise": {"masks": 8, "cell": 2},
    "integrated_gradients": {"steps": 4},
    "smoothgrad": {"samples": 3},
}
for _name in cl.methods():
    OPERATIONS[f"explain:{_name}"] = lambda m, _name=_name: cl.explain(
        m, X, _name, **SMALL.get(_name, {})
    )


def _masked():
    from convlens.workflows.masked import MaskedImages

    masks = torch.zeros(2, 4, 4, dtype=torch.bool)
    masks[:, 1:3, 1:3] = True
    return MaskedImages(X, masks, is_input=True)


def _has(model: cl.Model, name: str) -> bool:
    return name in dict(model.module.named_modules())


def _exploding() -> cl.Model:
    return cl.Model(Exploding(), preprocess=None, input_size=(1, 4, 4))


def test_every_public_model_function_is_covered():
    public = {
        name
        for name in cl.__all__
        if inspect.isfunction(getattr(cl, name))
        and next(iter(inspect.signature(getattr(cl, name)).parameters), None) == "model"
    }
    covered = {name.split("_all")[0].split("_streamed")[0].split(":")[0] for name in OPERATIONS}
    assert public <= covered, f"add {sorted(public - covered)} to OPERATIONS"


@pytest.mark.parametrize("operation", sorted(OPERATIONS))
@pytest.mark.parametrize("make", [tiny_model, _exploding], ids=["working", "raising"])
def test_no_hooks_and_no_changes_left(operation, make, tmp_path):
    _TMP["dir"] = tmp_path
    model = make()
    model.module.train()  # the user's flags must come back as they were
    first = next(model.module.parameters())
    first.requires_grad_(False)
    before = model_state(model.module)
    try:
        OPERATIONS[operation](model)
    except RuntimeError as err:
        assert "boom halfway" in str(err)
    assert has_hooks(model.module) == []
    assert model_state(model.module) == before
    assert [p.name for p in tmp_path.iterdir()] in ([], ["a.npz"])


def test_package_exports_match_the_lazy_table():
    assert sorted(cl.__all__) == sorted(cl._WHERE)
    for name in cl.__all__:
        assert getattr(cl, name) is not None
