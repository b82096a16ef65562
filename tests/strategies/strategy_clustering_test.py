"""TypiClust, ProbCover and their blocked kernels against NumPy references with full N x N matrices."""

import jax
import numpy as np
import pytest
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score

from alpeft_jax import strategies
from alpeft_jax.strategies import typiclust
from alpeft_jax.strategies.base import as_key
from alpeft_jax.strategies.distances import knn_sq_dist, min_sq_dist, nearest_other_label_sq_dist, radius_graph
from alpeft_jax.strategies.kmeans import kmeans
from alpeft_jax.strategies.probcover import purity_delta


def normalized(x):
    x = x.astype(np.float64)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def full_sq(x):
    return ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)


def blobs(n, d, k, seed, spread=0.3):
    g = np.random.default_rng(seed)
    c = g.normal(size=(k, d))
    y = g.integers(0, k, n)
    return (c[y] + spread * g.normal(size=(n, d))).astype(np.float32), y


def test_blocked_kernels_match_full_matrices():
    g = np.random.default_rng(0)
    x = g.normal(size=(103, 6)).astype(np.float32)
    y = g.normal(size=(29, 6)).astype(np.float32)
    d = ((x[:, None].astype(np.float64) - y[None]) ** 2).sum(-1)
    m, a = min_sq_dist(x, y, block=8)
    np.testing.assert_allclose(m, d.min(1), rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(a, d.argmin(1))
    full = full_sq(x.astype(np.float64))
    np.testing.assert_allclose(knn_sq_dist(x, 5, block=16), np.sort(full, 1)[:, 1:6], rtol=1e-4, atol=1e-5)
    lab = g.integers(0, 3, 103)
    ref = np.where(lab[:, None] != lab[None], full, np.inf).min(1)
    np.testing.assert_allclose(nearest_other_label_sq_dist(x, lab, block=16), ref, rtol=1e-4, atol=1e-5)
    for device_compaction in (False, True):
        indptr, idx = radius_graph(x, 3.0, block=16, device_compaction=device_compaction)
        for i in range(103):
            np.testing.assert_array_equal(idx[indptr[i] : indptr[i + 1]], np.flatnonzero(full[i] < 9.0))


def test_kmeans_recovers_separated_blobs_like_sklearn():
    x, y = blobs(600, 8, 5, seed=1, spread=0.05)
    _, ours = kmeans(jax.random.key(0), x, 5)
    theirs = KMeans(5, n_init=10, random_state=0).fit_predict(x)
    assert adjusted_rand_score(y, ours) == 1.0 and adjusted_rand_score(theirs, ours) == 1.0


def numpy_kmeanspp_seeds(key, x, k):
    """k-means++ seeds by kmeans.lloyd's documented draws: randint(k1) first, then D^2 inverse CDF at uniform(k2)."""
    k1, k2 = jax.random.split(key)
    seeds = [int(jax.random.randint(k1, (), 0, len(x)))]
    u = np.asarray(jax.random.uniform(k2, (k,)), np.float64)
    d2 = ((x - x[seeds[0]]) ** 2).sum(1)
    for i in range(1, k):
        cdf = np.cumsum(d2)
        seeds.append(int(np.searchsorted(cdf, u[i] * cdf[-1], side="right")))
        d2 = np.minimum(d2, ((x - x[seeds[-1]]) ** 2).sum(1))
    return np.asarray(seeds)


@pytest.mark.parametrize("seed", [0, 1])
def test_kmeans_equals_sklearn_lloyd_from_the_same_seeds_on_overlapping_data(seed):
    # overlapping Gaussians (no cluster structure to recover): labels and inertia depend on every Lloyd step
    g, k = np.random.default_rng(seed), 8
    x = (g.normal(size=(500, 5)) + 0.7 * g.normal(size=(4, 5))[g.integers(0, 4, 500)]).astype(np.float32)
    key = jax.random.key(seed)
    x64 = x.astype(np.float64)
    seeds = numpy_kmeanspp_seeds(key, x64, k)
    init, _ = kmeans(key, x, k, iters=0)  # no Lloyd step: the centres are the seeds
    np.testing.assert_array_equal(np.asarray(init)[:k], x[seeds])
    centres, ours = kmeans(key, x, k, iters=50)
    ref = KMeans(k, init=x64[seeds], n_init=1, max_iter=50, tol=0.0, algorithm="lloyd").fit(x64)
    assert ref.n_iter_ > 3  # several Lloyd steps, not a one-step agreement
    np.testing.assert_array_equal(ours, ref.labels_)  # the same initial order, so the same cluster ids
    np.testing.assert_allclose(np.asarray(centres)[:k], ref.cluster_centers_, atol=1e-4)
    inertia = ((x64 - np.asarray(centres, np.float64)[:k][ours]) ** 2).sum()
    assert inertia == pytest.approx(ref.inertia_, rel=1e-5)
    assert len(set(ours.tolist())) == k


def numpy_typiclust(x, clusters, labeled, budget, k_nn=20, min_size=5):
    n_cl = clusters.max() + 1
    sizes = np.bincount(clusters, minlength=n_cl)
    existing = np.bincount(clusters[labeled], minlength=n_cl)
    order = sorted((c for c in range(n_cl) if sizes[c] > min_size), key=lambda c: (existing[c], -sizes[c], c))
    members = clusters.copy()
    members[labeled] = -1
    out = []
    for i in range(budget):
        m = np.flatnonzero(members == order[i % len(order)])
        kk = min(k_nn, len(m) // 2)
        dist = np.sort(full_sq(x[m]), axis=1)[:, 1 : kk + 1].mean(1)
        idx = m[np.argmax(1 / (dist + 1e-5))]
        out.append(idx)
        members[idx] = -1
    return np.asarray(out)


@pytest.mark.parametrize("seed", [0, 1])
def test_typiclust_matches_numpy_reference(seed):
    x, _ = blobs(500, 10, 8, seed=seed, spread=0.8)
    labeled = np.zeros(500, bool)
    labeled[np.random.default_rng(seed).choice(500, 10, replace=False)] = True
    budget = 30
    got = strategies.get("typiclust")(seed, {"features": x}, labeled, budget, block=64)
    # the same k-means as the strategy (same key), checked against sklearn above
    _, clusters = kmeans(jax.random.split(as_key(seed))[0], normalized(x).astype(np.float32), 10 + budget)
    ref = numpy_typiclust(normalized(x), clusters, labeled, budget)
    np.testing.assert_array_equal(got, ref)


def test_typiclust_clusters_larger_than_the_member_block_match_numpy_reference():
    # 1,500 rows in 8 clusters of ~190 with a 500-centre buffer: 32-row member blocks, each pick loops over ~36
    x, _ = blobs(1500, 12, 8, seed=3, spread=0.8)
    assert typiclust.member_block(1500, 500) == 32
    labeled = np.zeros(1500, bool)
    labeled[np.random.default_rng(3).choice(1500, 3, replace=False)] = True
    got = strategies.get("typiclust")(3, {"features": x}, labeled, 5)
    _, clusters = kmeans(jax.random.split(as_key(3))[0], normalized(x).astype(np.float32), 3 + 5)
    np.testing.assert_array_equal(got, numpy_typiclust(normalized(x), clusters, labeled, 5))


def numpy_probcover(x, labeled, budget, delta):
    dist = np.sqrt(full_sq(x))
    edges = np.argwhere(dist < delta)
    covered = np.isin(np.arange(len(x)), edges[np.isin(edges[:, 0], np.flatnonzero(labeled)), 1])
    edges = edges[~covered[edges[:, 1]]]
    out = []
    for _ in range(budget):
        deg = np.bincount(edges[:, 0], minlength=len(x))
        cur = int(deg.argmax())
        assert deg[cur] > 0
        new = edges[edges[:, 0] == cur, 1]
        edges = edges[~np.isin(edges[:, 1], new)]
        out.append(cur)
    return np.asarray(out)


def gap_delta(x, q):
    """A radius in the middle of a gap between pairwise distances, so float rounding cannot flip an edge."""
    d = np.unique(np.round(np.sqrt(full_sq(x)), 9))
    i = int(q * len(d))
    i += int(np.argmax(np.diff(d[i : i + 50])))
    assert d[i + 1] - d[i] > 1e-5
    return float((d[i] + d[i + 1]) / 2)


@pytest.mark.parametrize("seed", [0, 1])
def test_probcover_matches_numpy_reference(seed):
    x, _ = blobs(400, 6, 6, seed=seed, spread=0.6)
    xn = normalized(x)
    labeled = np.zeros(400, bool)
    labeled[np.random.default_rng(seed).choice(400, 5, replace=False)] = True
    delta = gap_delta(xn, 0.03)
    got = strategies.get("probcover")(seed, {"features": x}, labeled, 20, delta=delta, block=64)
    np.testing.assert_array_equal(got, numpy_probcover(xn, labeled, 20, delta))


def test_purity_delta_is_the_largest_alpha_pure_radius():
    x, _ = blobs(300, 5, 4, seed=3, spread=0.5)
    xn = normalized(x).astype(np.float32)
    key = jax.random.key(7)
    delta = purity_delta(key, xn, 4, alpha=0.9)
    _, lab = kmeans(key, xn, 4)
    dist = np.sqrt(full_sq(xn.astype(np.float64)))
    purity = lambda r: np.mean([(lab[dist[i] < r] == lab[i]).all() for i in range(len(xn))])
    assert purity(delta * (1 - 1e-4)) >= 0.9
    assert purity(delta * (1 + 1e-3)) < 0.9
    out = strategies.get("probcover")(0, {"features": xn, "logits": np.zeros((300, 4))}, np.zeros(300, bool), 4)
    assert len(set(out.tolist())) == 4


def test_ball_counts_match_full_matrix():
    from alpeft_jax.strategies.probcover import ball_counts

    x, _ = blobs(203, 5, 4, seed=4, spread=0.7)
    xn = normalized(x)
    delta = gap_delta(xn, 0.1)
    w = np.random.default_rng(4).random(203) < 0.6
    ref = ((np.sqrt(full_sq(xn)) < delta) & w[None, :]).sum(1)
    for block in (16, 64, 256):
        got = ball_counts(jax.numpy.asarray(xn, jax.numpy.float32), jax.numpy.asarray(w), delta**2, block)
        np.testing.assert_array_equal(np.asarray(got), ref)


def test_probcover_random_picks_once_all_covered():
    # delta beyond the diameter of the unit sphere: the first pick covers everything, the rest are random
    x, _ = blobs(120, 4, 3, seed=5)
    labeled = np.zeros(120, bool)
    labeled[:10] = True
    out = strategies.get("probcover")(3, {"features": x}, labeled, 30, delta=2.5)
    assert len(set(out.tolist())) == 30 and not labeled[out].any()
    out2 = strategies.get("probcover")(3, {"features": x}, np.zeros(120, bool), 30, delta=2.5)
    assert out2[0] == 0 and len(set(out2.tolist())) == 30  # every ball holds all points: first index wins


def numpy_random_fill(labeled, u):
    """ProbCover's documented fill: pick i is the floor(u[i] * n_free)-th point neither labelled nor picked."""
    free, out = ~labeled, []
    for ui in u:
        ids = np.flatnonzero(free)
        out.append(int(ids[min(int(np.floor(ui * ids.size)), ids.size - 1)]))
        free[out[-1]] = False
    return np.asarray(out)


def test_probcover_random_fill_is_seeded_uniform_and_follows_its_draws():
    # delta beyond the unit sphere's diameter: the labelled rows cover everything, so every pick is a random fill
    x, _ = blobs(30, 4, 3, seed=6)
    labeled = np.zeros(30, bool)
    labeled[:10] = True
    select = lambda s, lab=labeled, b=4: strategies.get("probcover")(s, {"features": x}, lab, b, delta=2.5)
    runs = np.array([select(s) for s in range(200)])
    for s in (0, 1, 2):  # the draws are the second half of split(key), as documented
        u = np.asarray(jax.random.uniform(jax.random.split(as_key(s))[1], (4,)))
        np.testing.assert_array_equal(runs[s], numpy_random_fill(labeled, u))
    np.testing.assert_array_equal(select(7), runs[7])  # the same seed, the same fill
    assert len({tuple(r) for r in runs}) > 190  # different seeds, different fills
    assert not labeled[runs].any() and all(len(set(r)) == 4 for r in runs)
    # uniform over the 20 unlabelled: a deterministic fill (e.g. the first free rows) fails these
    from scipy.stats import chisquare

    assert chisquare(np.bincount(runs[:, 0], minlength=30)[10:]).pvalue > 1e-3  # 10 expected per point
    assert chisquare(np.bincount(runs.ravel(), minlength=30)[10:]).pvalue > 1e-3  # 40 expected per point
    # after a greedy pick that covers everything (no labelled row), the rest is the same random fill
    out = select(3, np.zeros(30, bool), 6)
    u = np.asarray(jax.random.uniform(jax.random.split(as_key(3))[1], (6,)))
    assert out[0] == 0  # every ball holds all points: the first index wins
    np.testing.assert_array_equal(out[1:], numpy_random_fill(np.eye(30, dtype=bool)[0], u[1:]))


def test_row_subset_kernels_match_full_matrices():
    from alpeft_jax.strategies.distances import count_within

    g = np.random.default_rng(8)
    x = g.normal(size=(150, 7)).astype(np.float32)
    lab = g.integers(0, 3, 150)
    full = full_sq(x.astype(np.float64))
    rows = np.sort(g.choice(150, 37, replace=False))
    other = np.where(lab[None, :] != lab[:, None], full, np.inf).min(1)
    got = nearest_other_label_sq_dist(x, lab, block=16, rows=rows)
    np.testing.assert_allclose(got, other[rows], rtol=1e-4, atol=1e-5)
    r2 = float(np.quantile(full, 0.2))
    cols = g.choice(150, 60, replace=False)
    np.testing.assert_array_equal(count_within(x, x[cols], r2, block=16), (full[:, cols] < r2).sum(1))
    assert np.asarray(count_within(x, x[:0], r2)).tolist() == [0] * 150


def test_probcover_with_a_mostly_covered_pool_matches_numpy_reference():
    # the labelled set covers over half the pool: gains come from N x (uncovered) pairs only
    x, _ = blobs(400, 6, 6, seed=9, spread=0.6)
    xn = normalized(x)
    labeled = np.zeros(400, bool)
    labeled[np.random.default_rng(9).choice(400, 120, replace=False)] = True
    delta = gap_delta(xn, 0.1)
    covered = (np.sqrt(full_sq(xn))[:, labeled] < delta).any(1)
    assert 0.5 <= covered.mean() < 1.0
    got = strategies.get("probcover")(9, {"features": x}, labeled, 6, delta=delta, block=64)
    np.testing.assert_array_equal(got, numpy_probcover(xn, labeled, 6, delta))


def test_sampled_purity_delta_is_alpha_pure_on_the_whole_pool():
    x, _ = blobs(3000, 8, 5, seed=10, spread=0.9)
    xn = normalized(x).astype(np.float32)
    key = jax.random.key(2)
    exact = purity_delta(key, xn, 5, alpha=0.9, sample=None)
    assert purity_delta(key, xn, 5, alpha=0.9, sample=1500) == exact  # sampling pays only below N / 2 rows
    sampled = purity_delta(key, xn, 5, alpha=0.9, sample=600)
    _, lab = kmeans(key, xn, 5)
    full = np.sqrt(full_sq(xn.astype(np.float64)))
    nn_other = np.where(lab[None, :] != lab[:, None], full, np.inf).min(1)
    assert abs(np.mean(nn_other >= sampled) - 0.9) < 0.03  # share of pure balls on the whole pool at that delta
    with pytest.raises(ValueError, match="sample"):
        purity_delta(key, xn, 5, sample=0)
