"""BADGE, TypiClust and ProbCover against scikit-activeml's implementations, where the two definitions agree.

Where they agree and where they differ:

- BADGE (skactiveml.pool.Badge): the same gradient embedding up to sign ((p - onehot(argmax p)) x embedding, ours
  onehot - p: the same distances), the same first centre (largest norm) and the same D^2 sampling. skactiveml draws
  each later centre with `RandomState.choice(p=D^2 / sum)`, one uniform per draw and an inverse-CDF search, as we do
  with `jax.random.uniform`; fed our uniforms, it must pick the same sequence. Ours L2-normalises the features
  first, so skactiveml gets the normalised features as its embeddings. skactiveml's D^2 also keeps the origin as
  a centre (a point nearer the origin than to every centre has D^2 = its squared norm); the original BADGE and ours
  do not, so the sequences are compared on a pool where the origin is never the nearest centre.
- TypiClust (skactiveml.pool.TypiClust): the same number of clusters (|labelled| + budget) and the same order of
  clusters while uncovered ones last (largest first; skactiveml breaks size ties at random, ours by id, and never
  picks a covered cluster, where ours goes round-robin). Typicality differs: ours is 1 / mean squared distance to
  min(20, size // 2) neighbours (the authors' code, FAISS squared L2), skactiveml's 1 / mean Euclidean distance to
  min(k, size - 1). So the comparison runs on the same clustering (ours, handed to skactiveml), clusters larger than
  40 (both use 20 neighbours), distinct cluster sizes, and a pool where both typicalities name the same point in
  each picked cluster (checked in NumPy first).
- ProbCover (skactiveml.pool.ProbCover): the same greedy (the most uncovered points in the ball, self included,
  edges into points covered by the labelled set or earlier picks removed). skactiveml's delta is the largest of a
  grid of deltas that is alpha-pure, ours the exact largest alpha-pure radius, so delta is passed to both; its ball
  is d <= delta, ours d < delta (the same at a delta in a gap between distances); its ties are broken at random,
  ours by lowest index. So each of our picks must reach skactiveml's maximal utility given the same history, and
  equal its pick whenever that maximum is unique.
"""

import jax
import numpy as np
import pytest
import skactiveml.base
from skactiveml.base import SkactivemlClassifier
from skactiveml.pool import Badge, ProbCover, TypiClust

from alpeft_jax import strategies
from alpeft_jax.strategies.base import as_key
from alpeft_jax.strategies.kmeans import kmeans


def normalized(x):
    x = x.astype(np.float64)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def sq_dists(x):
    return ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)


class GivenEmbedding(SkactivemlClassifier):
    """predict_proba returns (probabilities, embeddings) of the rows whose index is X[:, 0]."""

    def __init__(self, probas=None, embeddings=None, classes=None, missing_label=-1):
        super().__init__(classes=classes, missing_label=missing_label)
        self.probas = probas
        self.embeddings = embeddings

    def fit(self, X, y, sample_weight=None):
        self._validate_data(X, y)
        return self

    def predict_proba(self, X):
        rows = np.asarray(X)[:, 0].astype(int)
        return self.probas[rows], self.embeddings[rows]


class GivenUniforms(np.random.RandomState):
    """A RandomState whose `rand` returns the given uniforms in order (what `choice(p=...)` draws from)."""

    def __init__(self, uniforms):
        super().__init__(0)
        self.uniforms = list(uniforms)

    def rand(self, *shape):
        return np.asarray([self.uniforms.pop(0) for _ in range(int(np.prod(shape)))])


def _badge_inputs(seed, n, d, k, n_lab, cone):
    g = np.random.default_rng(seed)
    if cone:  # features in a narrow cone, one predicted class with varying confidence
        feats = np.ones(d) + 0.1 * g.normal(size=(n, d))
        p0 = g.uniform(0.5, 0.65, size=(n, 1))
        logits = np.log(np.concatenate([p0, (1 - p0) * g.dirichlet(np.full(k - 1, 50.0), size=n)], axis=1))
    else:
        feats = g.normal(size=(n, d)) * g.uniform(0.5, 2.0, size=(n, 1))
        logits = g.normal(size=(n, k)) * 2
    labeled = np.zeros(n, bool)
    labeled[g.choice(n, n_lab, replace=False)] = True
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    return feats.astype(np.float32), logits.astype(np.float32), labeled, p


def _skactiveml_badge(p, feats, labeled, budget):
    clf = GivenEmbedding(p, normalized(feats), classes=np.arange(p.shape[1]))
    y = np.where(labeled, 0, -1)
    return Badge(missing_label=-1).query(np.arange(len(p))[:, None], y, clf, batch_size=budget)


def test_badge_same_first_centre_as_skactiveml():
    feats, logits, labeled, p = _badge_inputs(0, 300, 8, 5, 20, cone=False)
    got = strategies.get("badge")(3, {"features": feats, "logits": logits}, labeled, 20)  # the shapes below
    assert got[0] == _skactiveml_badge(p, feats, labeled, 1)[0]


@pytest.mark.parametrize("seed, n_lab", [(0, 15), (1, 0)])
def test_badge_same_picks_as_skactiveml_with_the_same_uniforms(seed, n_lab, monkeypatch):
    # skactiveml's D^2 also counts the origin as a centre (its first D^2 is the squared norm, later ones the
    # minimum with it); the original BADGE and ours do not. On this pool every squared norm exceeds every
    # squared distance between two embeddings, so the origin is never the nearest centre and the rules agree.
    n, d, k, budget = 300, 8, 5, 20  # one compilation for the three BADGE tests
    feats, logits, labeled, p = _badge_inputs(seed, n, d, k, n_lab, cone=True)
    unl = ~labeled
    grad = ((np.eye(k)[p.argmax(1)] - p)[:, :, None] * normalized(feats)[:, None, :]).reshape(n, -1)[unl]
    assert (grad**2).sum(1).min() > sq_dists(grad).max()
    key = jax.random.key(seed + 10)
    got = strategies.get("badge")(key, {"features": feats, "logits": logits}, labeled, budget)
    u = np.asarray(jax.random.uniform(key, (budget,)), np.float64)  # ours: u[i] draws centre i (u[0] unused)
    shim = GivenUniforms(u[1:])
    monkeypatch.setattr(skactiveml.base, "check_random_state", lambda *_a, **_k: shim)
    ref = _skactiveml_badge(p, feats, labeled, budget)
    assert not shim.uniforms  # skactiveml drew exactly one uniform per sampled centre
    np.testing.assert_array_equal(got, ref)


class GivenClusters:
    """A clustering 'algorithm' that returns the given labels (skactiveml's `cluster_algo` hook)."""

    def __init__(self, n_clusters, labels):
        self.n_clusters = n_clusters
        self.labels = labels

    def fit_predict(self, X):
        return self.labels


def test_typiclust_same_picks_as_skactiveml_where_the_definitions_agree():
    seed, budget, n_lab = 4, 5, 3
    g = np.random.default_rng(seed)
    sizes = [60, 70, 80, 90, 100, 110, 120, 130]  # distinct, > 40: both use 20 neighbours
    centres = g.normal(size=(8, 10)) * 10
    x = np.concatenate([c + g.normal(size=(s, 10)) for c, s in zip(centres, sizes, strict=True)]).astype(np.float32)
    n = len(x)
    labeled = np.zeros(n, bool)
    labeled[g.choice(n, n_lab, replace=False)] = True
    got = strategies.get("typiclust")(seed, {"features": x}, labeled, budget)

    xn = normalized(x)
    _, clusters = kmeans(jax.random.split(as_key(seed))[0], xn.astype(np.float32), n_lab + budget)  # ours
    clusters = np.asarray(clusters)
    counts = np.bincount(clusters, minlength=n_lab + budget)
    assert len(set(counts.tolist())) == len(counts) and counts.min() > 40  # no size ties, 20 neighbours each
    uncovered = sorted(set(range(n_lab + budget)) - set(clusters[labeled].tolist()), key=lambda c: -counts[c])
    for c in uncovered[:budget]:  # the two typicalities name the same point in every cluster that gets a pick
        m = np.flatnonzero(clusters == c)
        near = np.sort(sq_dists(xn[m]), axis=1)[:, 1:21]
        assert np.argmax(1 / near.mean(1)) == np.argmax(1 / np.sqrt(near).mean(1))

    y = np.where(labeled, 0, -1)
    ref = TypiClust(
        missing_label=-1, random_state=0, cluster_algo=GivenClusters, cluster_algo_dict={"labels": clusters}, k=20
    ).query(xn, y, batch_size=budget)
    np.testing.assert_array_equal(got, ref)
    assert [clusters[i] for i in got] == uncovered[:budget]  # largest uncovered cluster first


def gap_delta(x, q):
    """A radius in a gap between pairwise distances, so float rounding and < vs <= cannot flip an edge."""
    d = np.unique(np.round(np.sqrt(sq_dists(x)), 9))
    i = int(q * len(d))
    i += int(np.argmax(np.diff(d[i : i + 50])))
    assert d[i + 1] - d[i] > 1e-5
    return float((d[i] + d[i + 1]) / 2)


@pytest.mark.filterwarnings("ignore:The maximum purity was")  # given one delta, skactiveml skips its purity check
@pytest.mark.parametrize("seed, n_lab, q", [(0, 5, 0.03), (1, 60, 0.08)])
def test_probcover_greedy_reaches_skactiveml_maximum_at_every_step(seed, n_lab, q):
    g = np.random.default_rng(seed)
    n, budget = 300, 15
    x = (g.normal(size=(6, 6))[g.integers(0, 6, n)] + 0.6 * g.normal(size=(n, 6))).astype(np.float32)
    xn = normalized(x)
    labeled = np.zeros(n, bool)
    labeled[g.choice(n, n_lab, replace=False)] = True
    delta = gap_delta(xn, q)
    got = strategies.get("probcover")(seed, {"features": x}, labeled, budget, delta=delta)
    ref = ProbCover(n_classes=2, deltas=[delta], missing_label=-1, random_state=0)  # one delta: used as it is
    taken = labeled.copy()
    unique = 0
    for pick in got:  # skactiveml's first pick given the labelled set plus our earlier picks
        theirs, util = ref.query(xn, np.where(taken, 0, -1), batch_size=1, return_utilities=True, update=True)
        best = np.nanmax(util[0])
        assert best > 0  # still covering: this comparison is about the greedy, not the random fill
        assert util[0][pick] == best, (pick, util[0][pick], best)
        if np.sum(util[0] == best) == 1:
            assert theirs[0] == pick
            unique += 1
        taken[pick] = True
    assert unique >= 3  # several steps had a single best ball, where the picks must be equal
