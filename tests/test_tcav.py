"""TCAV (techniques/concepts): CAV fits checked against direct optimisation, scores against hand
computation and against Captum, significance against ground truth on the toon model."""

from __future__ import annotations

import json
import math
import warnings
from statistics import NormalDist

import numpy as np
import pytest
import torch
from torch import nn

import convlens as cl
from convlens.core.naming import UnknownNameError
from convlens.data import toons
from convlens.techniques import concepts as C
from convlens.techniques.concepts import cavs, collect, local, significance

# -- CAV fits -----------------------------------------------------------------------------------


def _two_clouds(n: int = 30, f: int = 50, shift: float = 1.5, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(f, generator=g)
    u = u / u.norm()
    concept = torch.randn(n, f, generator=g) + shift * u
    rand = torch.randn(n, f, generator=g)
    return torch.cat([concept, rand]), u


@pytest.mark.parametrize("classifier", C.CLASSIFIERS)
def test_cav_points_toward_the_concept(classifier):
    acts, u = _two_clouds(shift=4.0)
    fitted = C.fit_cavs(acts, [(range(30), range(30, 60))], classifier=classifier)
    assert fitted.vectors.shape == (1, 50)
    assert float(fitted.vectors.norm()) == pytest.approx(1.0, abs=1e-5)
    cos = float(fitted.vectors[0] @ u)
    assert cos > 0.6, cos  # 50 noisy dimensions, 20 training points a side
    assert float(fitted.accuracy[0]) >= 0.9
    swapped = C.fit_cavs(acts, [(range(30, 60), range(30))], classifier=classifier)
    assert float(swapped.vectors[0] @ u) < -0.6  # the sign follows the positive set


def _primal(x, y, lam, kind):
    """The same objective minimised directly over (w, b) in feature space with L-BFGS."""
    w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS(
        [w, b],
        lr=1,
        max_iter=5000,
        tolerance_grad=1e-13,
        tolerance_change=1e-16,
        line_search_fn="strong_wolfe",
    )

    def closure():
        opt.zero_grad()
        z = y * (x @ w + b)
        loss = nn.functional.softplus(-z) if kind == "logistic" else (1 - z).clamp_min(0) ** 2
        value = loss.mean() + 0.5 * lam * w @ w
        value.backward()
        return value

    opt.step(closure)
    return w.detach()


@pytest.mark.parametrize("kind", ["logistic", "svm"])
def test_newton_in_the_span_equals_the_primal_optimum(kind):
    """The representer-theorem solver finds the same hyperplane as a direct L-BFGS fit of the
    L2-penalised loss over all features (features scaled as fit_cavs scales them)."""
    acts, _ = _two_clouds(n=12, f=40, shift=1.0, seed=3)  # overlapping: a real trade-off
    fitted = C.fit_cavs(
        acts, [(range(12), range(12, 24))], classifier=kind, regularization=0.05, test_fraction=0
    )
    x = acts.double() * fitted.scale
    y = torch.cat([torch.ones(12), -torch.ones(12)]).double()
    w = _primal(x, y, 0.05, kind)
    cos = float(fitted.vectors[0].double() @ (w / w.norm()))
    assert cos > 1 - 1e-6, cos


def test_mean_cav_is_the_difference_of_means_and_batches_are_independent():
    acts, _ = _two_clouds(n=9, f=7, seed=1)
    fitted = C.fit_cavs(acts, [(range(9), range(9, 18))], classifier="mean", test_fraction=0)
    expected = acts[:9].mean(0) - acts[9:].mean(0)
    torch.testing.assert_close(fitted.vectors[0], expected / expected.norm(), rtol=1e-5, atol=1e-6)
    # fitting several problems together gives what fitting each alone gives
    problems = [(range(9), range(9, 18)), (range(9, 18), range(9)), (range(4), range(9, 13))]
    together = C.fit_cavs(acts, problems, classifier="logistic", test_fraction=0)
    for i, p in enumerate(problems):
        alone = C.fit_cavs(acts, [p], classifier="logistic", test_fraction=0)
        torch.testing.assert_close(together.vectors[i], alone.vectors[0], rtol=1e-4, atol=1e-5)


def test_split_is_balanced_and_held_out():
    gen = torch.Generator().manual_seed(0)
    tr_p, tr_n, te_p, te_n = cavs._split(30, 45, 1 / 3, gen)
    assert (len(tr_p), len(tr_n), len(te_p), len(te_n)) == (20, 20, 10, 10)
    assert not set(tr_p.tolist()) & set(te_p.tolist())
    assert not set(tr_n.tolist()) & set(te_n.tolist())


def test_fit_cavs_rejects_bad_input():
    acts = torch.randn(10, 4)
    with pytest.raises(UnknownNameError, match="classifier"):
        C.fit_cavs(acts, [(range(5), range(5, 10))], classifier="forest")
    with pytest.raises(ValueError, match="rows must lie"):
        C.fit_cavs(acts, [(range(5), range(5, 12))])
    with pytest.raises(ValueError, match="at least 2"):
        C.fit_cavs(acts, [(range(1), range(5, 10))])
    with pytest.raises(ValueError, match=r"\(N, F\)"):
        C.fit_cavs(torch.randn(10), [(range(5), range(5, 10))])


# -- scores on a model whose gradient is known --------------------------------------------------


class KnownGradient(nn.Module):
    """``feat`` passes the (1, 2, 2) input through; logit k = <g_k, feat> + bias, so the
    gradient of logit k with respect to ``feat`` is g_k for every input."""

    def __init__(self) -> None:
        super().__init__()
        self.feat = nn.Identity()
        self.g = torch.tensor([[1.0, 2.0, -1.0, 0.5], [-1.0, 0.0, 0.0, 3.0]])

    def forward(self, x):
        return self.feat(x).flatten(1) @ self.g.T


def _known_model() -> cl.Model:
    pre = cl.Preprocessing(resize=None, crop=None, mean=(0.0,), std=(1.0,), channels=1)
    return cl.Model(KnownGradient(), preprocess=pre, labels=["a", "b"], input_size=(1, 2, 2))


def test_scores_are_hand_computable():
    model = _known_model()
    g = torch.Generator().manual_seed(0)
    up = torch.randn(8, 1, 2, 2, generator=g) + torch.tensor([1.0, 0, 0, 0]).view(1, 1, 2, 2) * 3
    randoms = {f"random_{k}": torch.randn(8, 1, 2, 2, generator=g) for k in range(4)}
    targets = torch.randn(5, 1, 2, 2, generator=g)
    res = cl.tcav(
        model,
        "a",
        targets,
        {"up": up},
        random=randoms,
        layers="feat",
        n_random=4,
        classifier="mean",
        test_fraction=0,
        test="sets",
    )
    run = res.runs[("up", "feat")]
    for k, name in enumerate(run.partners):
        v = up.flatten(1).mean(0) - randoms[name].flatten(1).mean(0)
        d = float(model.module.g[0] @ (v / v.norm()))  # the same for every target picture
        assert float(run.mean[k]) == pytest.approx(d, rel=1e-5)
        assert float(run.sign_count[k]) == (1.0 if d > 0 else 0.0)
        assert float(run.magnitude[k]) == (1.0 if d > 0 else 0.0)
    # class "b" has gradient (-1, 0, 0, 3): the "up" direction (first pixel) lowers it
    res_b = cl.tcav(
        model,
        "b",
        targets,
        {"up": up},
        random=randoms,
        layers="feat",
        n_random=4,
        classifier="mean",
        test_fraction=0,
        test="sets",
    )
    assert res.row("up", "feat")["score"] == 1.0
    assert res_b.row("up", "feat")["score"] == 0.0


def test_score_formulas():
    s = torch.tensor([[1.0, -2.0, 3.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    out = C.scores(s)
    torch.testing.assert_close(out["sign_count"], torch.tensor([0.5, 0.0]))
    torch.testing.assert_close(out["magnitude"], torch.tensor([4 / 6, 0.5]))
    torch.testing.assert_close(out["mean"], torch.tensor([0.5, 0.0]))
    d = C.directional_derivatives(
        torch.tensor([[1.0, 0.0], [0.0, 2.0]]), torch.tensor([[3.0, 4.0]])
    )
    torch.testing.assert_close(d, torch.tensor([[3.0, 8.0]]))


# -- the toon model: ground truth -----------------------------------------------------------------


@pytest.fixture(scope="module")
def toon_model():
    return cl.load("toon-cnn")


def _class_pictures(name: str, n: int = 30, seed: int = 7) -> list[np.ndarray]:
    data = toons.generate(4 * n, variant="clean", split="test", seed=seed)
    return [p for p, label in zip(data.pixels, data.label_names, strict=True) if label == name][:n]


@pytest.mark.slow
def test_toon_hair_colours_are_the_significant_concepts(toon_model):
    """The set tests on the toon sets of 30 pictures. pool1 (after the first conv block): red
    rises jessie's logit (red hair) for almost every picture and blue james's; each other's
    colour lowers it. With the paper's test both are significant after Bonferroni. With the
    "sets" test (is the score a plausible draw from the scores random sets get in the
    concept's place?) they are the top score of all, above every random set, but random sets
    alone already score 0.09-0.86 here (a random direction gives nearly all-or-nothing signs
    when the target gradients agree), so 10 random sets cannot make them significant:
    measured p 0.06 (red) and 0.04 (blue) before correction."""
    sets, randoms = C.concept_sets("toons", toon_images=30)  # the sets these numbers came from
    for cls, colour, other in (("jessie", "red", "blue"), ("james", "blue", "red")):
        pictures = _class_pictures(cls)
        by_sets = cl.tcav(
            toon_model, cls, pictures, sets, random=randoms, layers="pool1", test="sets"
        )
        # the paper's test on the same CAVs and scores
        rows, _ = significance._set_rows(
            by_sets.runs, by_sets.null, by_sets.concepts, by_sets.randoms, ["pool1"], "paper", 0.05
        )
        paper = {r["concept"]: r for r in rows}
        hit = paper[colour]
        assert hit["significant"] and hit["score"] > 0.9 and hit["cav_accuracy"] > 0.9, hit
        assert paper[other]["score"] < 0.1  # the other hair colour lowers the logit
        null = C.null_scores(by_sets.null["pool1"], by_sets.randoms)
        assert by_sets.row(colour, "pool1")["score"] > float(null.max())
        assert by_sets.row(colour, "pool1")["p"] < 0.1


@pytest.mark.slow
def test_green_is_used_by_the_toon_model(toon_model):
    """Why green is not a concept the toon model cannot use: tinting jessie's hair toward green
    (adding green to her red hair makes it yellow, cassidy's colour) lowers jessie's logit."""
    data = toons.generate(60, variant="clean", split="test", seed=7)
    keep = [i for i, label in enumerate(data.label_names) if label == "jessie"]
    pixels = torch.as_tensor(data.pixels[keep]).permute(0, 3, 1, 2).float() / 255
    hair = torch.as_tensor(data.mask("hair")[keep]).unsqueeze(1)
    tinted = pixels.clone()
    tinted[:, 1:2] = torch.where(hair, (tinted[:, 1:2] + 0.4).clamp(max=1), tinted[:, 1:2])
    index = toon_model.class_index("jessie")
    with torch.no_grad():
        before = toon_model(toon_model.preprocess.normalize(pixels))[:, index]
        after = toon_model(toon_model.preprocess.normalize(tinted))[:, index]
    assert float((after < before).float().mean()) > 0.9


@pytest.mark.slow
def test_a_random_concept_is_rarely_significant(toon_model):
    """A random set posing as a concept comes out significant (alpha 0.05, one test) in at most
    5 % of 40 seeded trials with the default test; each trial draws 11 disjoint sets of 20 from
    400 random toon pictures. The paper's two-sample test, on the same trials, does not keep
    its level (measured: 16 of 40): its concept runs all share one concept set."""
    pool = toons.concept_images("random_0", 400, seed=11)
    targets = _class_pictures("jessie", 20)
    layer = "pool2"
    nothing = collect._Cache(None, "", [])
    acts = collect._collect(toon_model, list(pool), [layer], None, 64, nothing, lambda n: None)
    index = toon_model.class_index("jessie")
    grads = collect._collect(toon_model, targets, [layer], index, 64, nothing, lambda n: None)
    hits = {"sets": 0, "paper": 0}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random "concepts" are near chance, by design
        for trial in range(40):
            order = torch.randperm(400, generator=torch.Generator().manual_seed(trial))
            sets = {f"s{k}": {layer: acts[layer][order[20 * k : 20 * k + 20]]} for k in range(11)}
            randoms = [f"s{k}" for k in range(1, 11)]
            res = significance._analyse(
                sets, grads, {layer: (1,)}, ["s0"], randoms, [layer], seed=trial, test="sets"
            )
            hits["sets"] += res.rows[0]["significant"]
            # the paper's test on the same CAVs and scores
            rows, _ = significance._set_rows(
                res.runs, res.null, ["s0"], randoms, [layer], "paper", 0.05
            )
            hits["paper"] += rows[0]["significant"]
    print(f"random concept significant in {hits} of 40 trials")
    assert hits["sets"] <= 2
    assert hits["paper"] > hits["sets"]


# -- the local test (the default) --------------------------------------------------------------


def test_local_statistic_by_hand():
    """Two concept pictures at (1, 0), two random at (0, 0): the CAV d = (1, 0); the threshold
    tau = max(|d|^2 / 2, the concept positions' 10 % quantile of (a - mu_random) . d = 1) = 1;
    the target's positions project to 1, 0.5 and 2, so the first and last show the concept,
    where g . d is 3 and -1: S = (3 - 1) / sqrt(2)."""
    means = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 0.0], [0.0, 0.0]], dtype=torch.float64)
    grid = means.unsqueeze(-1).float()
    acts = torch.tensor([[[1.0, 0.5, 2.0], [0.0, 0.0, 1.0]]])  # (T=1, C=2, P=3)
    grads = torch.tensor([[[3.0, 7.0, -1.0], [5.0, 0.0, 2.0]]])
    got = local.local_statistic(means, grid, torch.tensor([[0, 1], [2, 3]]), acts, grads)
    torch.testing.assert_close(
        got["direction"], torch.tensor([[1.0, 0.0], [-1.0, 0.0]], dtype=torch.float64)
    )
    assert got["present"].tolist() == [[2], [0]]  # relabelled: no position looks like (0, 0)
    assert float(got["statistic"][0]) == pytest.approx(2 / math.sqrt(2))
    assert float(got["statistic"][1]) == 0.0


def test_permutation_p_values_and_pictures_needed():
    null = torch.arange(1, 100).float()  # 99 relabellings
    assert local.permutation_p(100.0, null) == pytest.approx(2 / 100)  # observed counted once
    assert local.permutation_p(50.0, null) == 1.0
    assert local.sequential_p(10, 500, 40, stopped=True) == pytest.approx(0.5)  # Besag-Clifford
    assert local.sequential_p(0, 999, 999, stopped=False) == pytest.approx(2 / 1000)
    need = NormalDist().inv_cdf(1 - 0.05 / 2) + NormalDist().inv_cdf(0.8)
    assert local.pictures_needed(need, 0.05, 1) == pytest.approx(1.0)
    assert local.pictures_needed(need / 2, 0.05, 1) == pytest.approx(4.0)  # half the effect
    assert local.pictures_needed(0.0, 0.05, 1) == math.inf


def test_local_test_keeps_its_level_when_the_concept_is_random():
    """Concept and random pictures from one distribution, target gradients that agree (the
    case that makes the sign-count score saturate): p < 0.05 in about 5 % of trials; more
    than 18 of 200 has probability < 1 % if the level is right."""
    g = torch.Generator().manual_seed(4242)
    hits = 0
    for _ in range(200):
        stats = local.picture_stats(torch.randn(60, 4, 3, 3, generator=g).relu())
        concept = [{k: v[:15] for k, v in stats.items()}]
        rest = [{k: v[15:] for k, v in stats.items()}]
        acts = torch.randn(8, 4, 9, generator=g).relu()
        grads = torch.randn(8, 4, 9, generator=g) + 0.5
        run = local.local_run("c", "l", concept, rest, acts, grads, permutations=99, generator=g)
        hits += run.p < 0.05
    assert hits <= 18, hits


def test_too_few_pictures_warn_with_how_many_are_needed():
    """Item 3: three concept and three random pictures have only C(6, 3) = 20 relabellings, so
    p >= 2 / 20 = 0.1 whatever the data: the row is "not significant" and a warning says that 5
    concept pictures would be needed (C(8, 5) = 56 > 2 / 0.05)."""
    g = torch.Generator().manual_seed(1)
    stats = local.picture_stats(torch.randn(6, 4, 3, 3, generator=g).relu())
    concept = [{k: v[:3] for k, v in stats.items()}]
    rest = [{k: v[3:] for k, v in stats.items()}]
    acts = torch.randn(8, 4, 9, generator=g).relu()
    grads = torch.randn(8, 4, 9, generator=g)
    run = local.local_run("c", "l", concept, rest, acts, grads, permutations=999, generator=g)
    row, notes = local.local_row(run, alpha=0.05, tests=1, n_concept=3, n_negative=3)
    assert not row["significant"] and row["p"] >= 0.1 - 1e-9
    assert any("only 20 distinct relabellings" in n and "about 5 concept" in n for n in notes)
    assert math.comb(8, 5) > 2 / 0.05 > math.comb(7, 4)


def test_the_set_test_warns_when_no_score_could_be_significant():
    """Random sets' scores 0.3, 0.5, 0.7 (mean 0.5, sd 0.2): even a score of 1 has prediction
    p = 2 t_sf(0.5 / (0.2 sqrt(4 / 3)), 2) = 0.16 with three sets, but with enough sets (the
    limit is a normal test, p = 0.012) it would be found: the warning names that number. With
    scores spread 0.1-0.9 no number of sets would do, and the warning says so."""
    from convlens.core.stats import t_sf

    few = significance._sets_power(torch.tensor([0.3, 0.5, 0.7]), "l", 0.05, 1)
    assert few is not None and "random sets would be needed" in few
    needed = int(few.split("about ")[1].split()[0])
    t = 0.5 / (0.2 * math.sqrt(1 + 1 / needed))
    assert 2 * t_sf(t, needed - 1) < 0.05, few
    wide = significance._sets_power(torch.tensor([0.1, 0.5, 0.9]), "l", 0.05, 1)
    assert wide is not None and "any number of random sets" in wide
    assert significance._sets_power(torch.tensor([0.45, 0.5, 0.55]), "l", 0.05, 1) is None


def _toon_targets(cls: str, seed: int, n: int = 90) -> list[np.ndarray]:
    data = toons.generate(n, split="test", seed=seed)
    return [p for p, label in zip(data.pixels, data.label_names, strict=True) if label == cls]


@pytest.mark.slow
def test_intervention_shows_which_hair_colour_each_class_uses(toon_model):
    """Ground truth: painting the hair in the class's own colour raises its logit (against grey
    hair) by more than one logit; green, a colour no character wears, moves no class."""
    data = toons.generate(60, split="test", seed=5151)
    got = C.intervention_table(toon_model, data, ("red", "blue", "yellow", "green"), seed=5151)
    verdicts = got.verdicts()
    for cls, colour in (("jessie", "red"), ("james", "blue"), ("cassidy", "yellow")):
        assert verdicts[(cls, colour)] == "+", got
        assert verdicts[(cls, "green")] == "0", got
    assert got.effect("jessie", "red").mean > 5
    assert "jessie" in got.table() and "[" in str(got)


@pytest.mark.slow
def test_default_test_finds_each_class_own_hair_colour(toon_model):
    """Fresh seeds, the layer the README names (pool2), the built-in toon sets' size (60
    pictures per concept, 10 random sets of 60): each class's own hair colour is significant
    and raises its logit; green, which no character wears, is not significant."""
    seed, layer = 5150, "pool2"
    randoms = {f"random_{k}": toons.concept_images(f"random_{k}", 60, seed=seed) for k in range(10)}
    green = toons.concept_images("green", 60, seed=seed)
    for cls, colour in (("jessie", "red"), ("james", "blue"), ("cassidy", "yellow")):
        concepts = {colour: toons.concept_images(colour, 60, seed=seed), "green": green}
        res = cl.tcav(
            toon_model, cls, _toon_targets(cls, seed), concepts, random=randoms, layers=layer
        )
        assert res.test == "local" and res.settings["test"] == C.TESTS["local"]
        row = res.row(colour, layer)
        assert row["significant"] and row["direction"] == "+", res
        assert not res.row("green", layer)["significant"], res
        assert "test 'local'" in str(res) and json.loads(res.to_json())["test"] == "local"


@pytest.mark.slow
def test_random_sets_posing_as_concepts_stay_within_the_level(toon_model):
    """20 trials, each a fresh split of 330 random toon pictures into 30 posing as a concept
    and 300 random: uncorrected p < 0.05 in at most 4 (binomial(20, 0.05): P(X >= 5) < 0.3 %)."""
    layer = "pool2"
    nothing = collect._Cache(None, "", [])
    pool = toons.concept_images("random_0", 330, seed=5152)
    stats = collect._collect(
        toon_model, list(pool), [layer], None, 64, nothing, lambda n: None, "stats"
    )
    index = toon_model.class_index("cassidy")
    targets = _toon_targets("cassidy", 5152)
    found = collect._collect(
        toon_model, targets, [layer], index, 64, nothing, lambda n: None, steps=local.STEPS
    )
    hits = 0
    for trial in range(20):
        order = torch.randperm(330, generator=torch.Generator().manual_seed(trial))
        sets = {"posing": {k: v[order[:30]] for k, v in stats.items()}}
        sets |= {"random": {k: v[order[30:]] for k, v in stats.items()}}
        res = significance._analyse_local(
            sets,
            found,
            {layer: (32, 32, 32)},
            ["posing"],
            ["random"],
            [layer],
            permutations=199,
            seed=trial,
        )
        hits += res.rows[0]["p"] < 0.05
    assert hits <= 4, hits


# -- Captum parity ----------------------------------------------------------------------------


@pytest.mark.slow
def test_scores_equal_captums_for_the_same_cavs(toon_model, tmp_path):
    """With our CAVs handed to Captum's TCAV (through its Classifier interface), its
    ``sign_count`` equals ours and its "magnitude" (in code: the mean directional derivative,
    not the ratio its docstring states) equals our ``mean``, per random partner."""
    captum_concept = pytest.importorskip("captum.concept")
    from captum.concept._utils.classifier import Classifier

    layer = "pool2"
    red = toons.concept_images("red", 20, seed=0)
    randoms = {f"random_{k}": toons.concept_images(f"random_{k}", 20, seed=0) for k in range(3)}
    targets = _class_pictures("jessie", 12)
    ours = cl.tcav(
        toon_model,
        "jessie",
        targets,
        {"red": red},
        random=randoms,
        layers=layer,
        n_random=3,
        test="sets",
    )
    run = ours.runs[("red", layer)]
    vectors = {name: run.vectors[i] for i, name in enumerate(run.partners)}

    def inputs(pictures):
        return toon_model.prepare(list(pictures)).inputs

    concept = captum_concept.Concept(0, "red", [inputs(red)])
    rand = [
        captum_concept.Concept(k + 1, name, [inputs(p)])
        for k, (name, p) in enumerate(randoms.items())
    ]
    by_id = {c.id: c.name for c in rand}

    class Given(Classifier):
        def __init__(self):
            self._classes = [0, 1]

        def train_and_eval(self, dataloader, **kwargs):
            labels = torch.cat([y for _, y in dataloader]).unique().tolist()
            self._classes = [0, next(c for c in labels if c != 0)]
            return {"accs": torch.tensor(1.0)}

        def weights(self):
            v = vectors[by_id[self._classes[1]]]
            return torch.stack([v, -v])

        def classes(self):
            return self._classes

    tcav = captum_concept.TCAV(
        toon_model.module.eval(), [layer], classifier=Given(), save_path=str(tmp_path)
    )
    sets = [[concept, r] for r in rand]
    got = tcav.interpret(inputs(targets), sets, target=toon_model.class_index("jessie"))
    for r in rand:
        theirs = got[f"0-{r.id}"][layer]
        i = run.partners.index(r.name)
        assert float(theirs["sign_count"][0]) == pytest.approx(float(run.sign_count[i]), abs=1e-6)
        assert float(theirs["magnitude"][0]) == pytest.approx(
            float(run.mean[i]), rel=1e-4, abs=1e-7
        )


# -- the API around it ----------------------------------------------------------------------------


def _write_sets(root, names, n=6, seed=0):
    from PIL import Image

    for name in names:
        folder = root / name
        folder.mkdir(parents=True)
        pics = toons.concept_images(
            name if name in toons.CONCEPTS else f"random_{names.index(name)}", n, seed=seed, size=48
        )
        for i, p in enumerate(pics):
            Image.fromarray(p).save(folder / f"{i}.png")
    return root


def test_cache_is_keyed_by_content_not_folder(toon_model, tmp_path):
    from PIL import Image

    root = _write_sets(tmp_path / "concepts", ["red", "random_0", "random_1", "random_2"])
    targets = _class_pictures("jessie", 4)
    cache = tmp_path / "cache"
    kw = dict(layers="pool1", n_random=3, cache_dir=cache)
    first = cl.tcav(toon_model, "jessie", targets, root, **kw)
    assert first.settings["cache"]["hits"] == 0
    features = math.prod(first.shapes["pool1"])
    for entry in cache.iterdir():  # one picture per file, not its whole batch: a target
        assert entry.stat().st_size < 2 * 4 * features + 4000  # picture's gradient + activation
    second = cl.tcav(toon_model, "jessie", targets, root, **kw)
    assert second.settings["cache"]["misses"] == 0
    assert second.rows == first.rows
    # one picture of "red" replaced by a blue one under the same file name: recomputed
    Image.fromarray(toons.concept_images("blue", 1, seed=5, size=48)[0]).save(
        root / "red" / "0.png"
    )
    third = cl.tcav(toon_model, "jessie", targets, root, **kw)
    assert third.settings["cache"]["misses"] == 1
    fresh = cl.tcav(toon_model, "jessie", targets, root, layers="pool1", n_random=3)
    assert third.rows == fresh.rows


def test_deterministic_and_saved(toon_model, tmp_path):
    root = _write_sets(tmp_path / "c", ["red", "blue", "random_0", "random_1", "random_2"])
    targets = _class_pictures("james", 5)
    a = cl.tcav(
        toon_model,
        "james",
        targets,
        root,
        layers=["pool1", "pool2"],
        n_random=3,
        seed=3,
        relative=[("blue", "red")],
    )
    b = cl.tcav(
        toon_model,
        "james",
        targets,
        root,
        layers="pool1,pool2",
        n_random=3,
        seed=3,
        relative=[("blue", "red")],
    )
    assert a.rows == b.rows
    assert [r["concept"] for r in a.rows] == ["blue"] * 2 + ["red"] * 2 + ["blue/red"] * 2
    assert a.settings["correction"].startswith("Bonferroni over 6")
    files = a.save(tmp_path / "out")
    data = json.loads(files[0].read_text())
    assert data["target"] == "james" and len(data["rows"]) == 6
    assert files[1].read_text().splitlines()[0].startswith("concept,layer,score")
    assert files[2].stat().st_size > 1000
    for r in a.rows:
        assert r["p_corrected"] == pytest.approx(min(1.0, r["p"] * 6))
        assert r["significant"] == (r["p_corrected"] < 0.05)
    cav = a.cav("blue", "pool1")
    assert cav.shape == a.shapes["pool1"]
    assert float(cav.double().norm()) == pytest.approx(1.0, abs=1e-5)  # float32 norm: 1e-5 off
    # the CAV drives feature visualization through the direction objective
    fv = cl.featurevis(
        toon_model,
        cl.objectives.direction("pool1", a.channel_direction("blue", "pool1")),
        steps=8,
        frames=0,
    )
    assert fv.history[-1, 0] > fv.history[0, 0]


def test_bad_input_gets_clear_errors(toon_model, tmp_path):
    root = _write_sets(tmp_path / "c", ["red", "random_0", "random_1"])
    targets = _class_pictures("james", 3)
    with pytest.raises(UnknownNameError, match="pool9"):
        cl.tcav(toon_model, "james", targets, root, layers="pool9")
    with pytest.raises(UnknownNameError, match="class"):
        cl.tcav(toon_model, "bob", targets, root, layers="pool1")
    with pytest.raises(UnknownNameError, match="concept"):
        cl.tcav(toon_model, "james", targets, root, layers="pool1", relative=[("red", "teal")])
    with pytest.raises(ValueError, match="at least 2 random sets"):
        cl.tcav(
            toon_model,
            "james",
            targets,
            {"red": root / "red"},
            random=[root / "random_0"],
            layers="pool1",
        )
    with pytest.raises(ValueError, match="random counterexamples"):
        cl.tcav(toon_model, "james", targets, {"red": root / "red"}, layers="pool1")
    with pytest.raises(FileNotFoundError, match="no folders match"):
        cl.tcav(
            toon_model, "james", targets, root, random=str(tmp_path / "nothing_*"), layers="pool1"
        )
    with pytest.raises(ValueError, match="batch_size"):
        cl.tcav(toon_model, "james", targets, root, layers="pool1", batch_size=0)


def test_random_sets_from_a_pool_and_a_glob(tmp_path):
    from PIL import Image

    pool = tmp_path / "pool"
    pool.mkdir()
    for i, p in enumerate(toons.concept_images("random_0", 12, seed=0, size=16)):
        Image.fromarray(p).save(pool / f"{i}.png")
    _, randoms = C.concept_sets(
        {"red": toons.concept_images("red", 4, size=16)}, pool, n_random=5, seed=1
    )
    assert [r.name for r in randoms] == [f"random_{k}" for k in range(5)]
    assert all(len(r) == 4 and len(set(r.images)) == 4 for r in randoms)
    again = C.concept_sets(
        {"red": toons.concept_images("red", 4, size=16)}, pool, n_random=5, seed=1
    )[1]
    assert [r.images for r in again] == [r.images for r in randoms]
    root = _write_sets(tmp_path / "c", ["red", "random_0", "random_1", "random_2"], n=3)
    _, globbed = C.concept_sets(root / "red", str(root / "random_*"))
    assert [r.name for r in globbed] == ["random_0", "random_1", "random_2"]


def test_cli_writes_table_json_csv_and_chart(tmp_path):
    from typer.testing import CliRunner

    from convlens.apps.cli import app

    root = _write_sets(tmp_path / "concepts", ["red", "blue", "random_0", "random_1", "random_2"])
    images = tmp_path / "jessie"
    images.mkdir()
    from PIL import Image

    for i, p in enumerate(_class_pictures("jessie", 4)):
        Image.fromarray(p).save(images / f"{i}.png")
    out = tmp_path / "out"
    args = [
        "tcav",
        "toon-cnn",
        "--target",
        "jessie",
        "--images",
        str(images),
        "--concepts",
        str(root),
        "--random",
        str(root / "random_0"),
        str(root / "random_1"),
        str(root / "random_2"),
        "--layers",
        "pool1,pool2",
        "--out",
        str(out),
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "red" in result.output and "pool2" in result.output and "p corr" in result.output
    assert "test 'local'" in result.output and "test: local;" in result.output  # the default
    assert {p.name for p in out.iterdir()} == {"tcav.json", "tcav.csv", "tcav.png"}
    saved = json.loads((out / "tcav.json").read_text())
    assert saved["test"] == "local" and saved["settings"]["steps"] == local.STEPS
    helped = CliRunner().invoke(app, ["tcav", "--help"], env={"COLUMNS": "240"})
    assert "[default: local]" in helped.output and "local (the default" in helped.output
    assert "--steps" in helped.output and "[default: 4]" in helped.output
    assert "with the paper's t-test" not in helped.output
    paper = CliRunner().invoke(app, [*args, "--test", "paper"])
    assert paper.exit_code == 0 and "test 'paper'" in paper.output, paper.output
    bad = CliRunner().invoke(
        app,
        [
            "tcav",
            "toon-cnn",
            "--target",
            "jessie",
            "--images",
            str(images),
            "--concepts",
            str(root),
            "--layers",
            "nope",
        ],
    )
    assert bad.exit_code != 0 and "nope" in bad.output
    assert math.isfinite(json.loads((out / "tcav.json").read_text())["rows"][0]["score"])


class ViewNet(nn.Module):
    """A network whose ``.view`` fails on channels-last input: the fast path falls back."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 8 * 8, 2)

    def forward(self, x):
        h = self.conv(x)
        return self.fc(h.view(h.size(0), -1))


def test_models_that_need_the_default_layout_still_work():
    pre = cl.Preprocessing(resize=None, crop=None)
    model = cl.Model(ViewNet(), preprocess=pre, labels=["a", "b"], input_size=(3, 8, 8))
    g = torch.Generator().manual_seed(0)
    sets = {"up": torch.rand(6, 3, 8, 8, generator=g) + 1}
    randoms = {f"random_{k}": torch.rand(6, 3, 8, 8, generator=g) for k in range(3)}
    with pytest.raises(RuntimeError):  # the network itself refuses channels-last input
        model.module(torch.rand(2, 3, 8, 8).contiguous(memory_format=torch.channels_last))
    res = cl.tcav(
        model,
        "a",
        torch.rand(4, 3, 8, 8, generator=g),
        sets,
        random=randoms,
        layers="conv",
        n_random=3,
    )
    from convlens.core.hooks import _NCHW_ONLY

    assert model.module in _NCHW_ONLY
    assert 0 < res.row("up", "conv")["p"] <= 1


def test_fingerprint_follows_the_weights():
    net = nn.Sequential(nn.Conv2d(3, 2, 3), nn.BatchNorm2d(2)).eval()  # 0-d buffers too
    model = cl.Model(net, preprocess=cl.Preprocessing(resize=None, crop=None))
    same = cl.Model(
        nn.Sequential(nn.Conv2d(3, 2, 3), nn.BatchNorm2d(2)).eval(),
        preprocess=cl.Preprocessing(resize=None, crop=None),
    )
    same.module.load_state_dict(net.state_dict())
    assert C.fingerprint(model) == C.fingerprint(same)
    with torch.no_grad():
        net[0].weight[0, 0, 0, 0] += 1e-6
    assert C.fingerprint(model) != C.fingerprint(same)


def test_activation_pass_on_an_engine_gives_the_same_result(toon_model, tmp_path):
    """engine=: the concept and random pictures' activations computed on a data set engine
    (decoding in a worker process) give the rows of the in-process pass."""
    from convlens.core.engine import SerialEngine
    from convlens.workflows.datasets.engines import LocalEngine

    root = _write_sets(tmp_path / "c", ["red", "blue", "random_0", "random_1", "random_2"])
    targets = _class_pictures("jessie", 8)
    kw = dict(layers="pool1,pool2", n_random=3, permutations=199)
    here = cl.tcav(toon_model, "jessie", targets, root, **kw)
    for engine in (SerialEngine(), LocalEngine(workers=1)):
        seen: list[int] = []

        def counted(*a, seen=seen, mapped=engine.map, **k):
            seen.append(len(a[2]))
            return mapped(*a, **k)

        engine.map = counted  # type: ignore[method-assign]
        there = cl.tcav(toon_model, "jessie", targets, root, engine=engine, **kw)
        assert len(seen) == 5  # one map per set, the 5 sets' pictures read by the engine
        assert len(there.rows) == len(here.rows) == 4
        for a, b in zip(here.rows, there.rows, strict=True):
            assert (a["concept"], a["layer"]) == (b["concept"], b["layer"])
            assert b["score"] == pytest.approx(a["score"], abs=0.02, nan_ok=True), (a, b)
            assert b["significant"] == a["significant"], (a, b)
