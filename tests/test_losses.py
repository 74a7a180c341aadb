"""geossl.losses against independent float64 numpy formulas written out here."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from geossl import losses

# ----- numpy references (loops, float64) ----------------------------------------------------------


def np_normalize(x):
    x = np.asarray(x, np.float64)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def np_log_softmax(row):
    m = row.max()
    return row - m - math.log(np.exp(row - m).sum())


def np_soft_contrastive(q, k, yq, yk, tau, lam, mode):
    qn, kn = np_normalize(q), np_normalize(k)
    b = len(q)
    cos = np.array([[qn[i] @ kn[j] for j in range(b)] for i in range(b)])
    logits = cos / tau
    instance = np.mean([-np_log_softmax(logits[i])[i] for i in range(b)])
    yq, yk = np.asarray(yq, np.float64), np.asarray(yk, np.float64)
    sim = np.zeros((b, b))
    for i in range(b):
        for j in range(b):
            ni, nj = np.linalg.norm(yq[i]), np.linalg.norm(yk[j])
            if ni > 0 and nj > 0:
                sim[i, j] = yq[i] @ yk[j] / (ni * nj)
    terms = []
    for i in range(b):
        if mode == "ce" and sim[i].sum() > 0:
            target = sim[i] / sim[i].sum()
            terms.append(-(target * np_log_softmax(logits[i])).sum())
        if mode == "mse" and yq[i].any():
            terms.append(np.mean((cos[i] - sim[i]) ** 2))
    soft = np.mean(terms) if terms else 0.0
    return instance + lam * soft


def np_info_nce(q, k, tau):
    return np_soft_contrastive(q, k, np.zeros((len(q), 1)), np.zeros((len(q), 1)), tau, 0.0, "ce")


def random_labels(rng, b, k, empty_rows=()):
    y = (rng.random((b, k)) < 0.35).astype(np.float32)
    y[np.arange(b), rng.integers(0, k, b)] = 1.0  # at least one class per row
    y[list(empty_rows)] = 0.0
    return y


# ----- soft_contrastive_loss ----------------------------------------------------------------------

CASES = [  # B, D, K, tau, lam
    (4, 8, 3, 0.2, 1.0),
    (7, 5, 9, 0.5, 0.3),
    (16, 32, 9, 0.07, 2.0),
]


@pytest.mark.parametrize("mode", ["ce", "mse"])
@pytest.mark.parametrize("b,d,k,tau,lam", CASES)
def test_soft_contrastive_matches_numpy(b, d, k, tau, lam, mode):
    rng = np.random.default_rng(b * 100 + d)
    q = rng.normal(size=(b, d)).astype(np.float32)
    kk = rng.normal(size=(b, d)).astype(np.float32)
    yq = random_labels(rng, b, k, empty_rows=[0, b - 1])
    yk = random_labels(rng, b, k, empty_rows=[1])
    got = losses.soft_contrastive_loss(q, kk, yq, yk, temperature=tau, soft_weight=lam,
                                       soft_loss=mode)
    assert got.dtype == jnp.float32 and got.shape == ()
    want = np_soft_contrastive(q, kk, yq, yk, tau, lam, mode)
    np.testing.assert_allclose(float(got), want, rtol=2e-5, atol=2e-5)


def test_soft_contrastive_hand_computed_b2():
    # P = I / 1; instance CE per row = log(1 + e) − 1.
    # S = [[1, 0], [1/√2, 1/√2]]: "ce" rows give log(1+e) − 1 and ½[log(1+e) + log(1+e) − 1].
    q = np.eye(2, dtype=np.float32) * 3.0
    k = np.eye(2, dtype=np.float32)
    yq = np.array([[1, 0], [1, 1]], np.float32)
    yk = np.array([[1, 0], [0, 1]], np.float32)
    lse = math.log(1 + math.e)
    instance = lse - 1
    ce = instance + 0.5 * ((lse - 1) + 0.5 * (2 * lse - 1))
    mse = instance + 0.5 * ((0 + 0) / 2 + (0.5 + (1 - 2 ** -0.5) ** 2) / 2)
    assert abs(ce - 0.876523375) < 1e-8
    got_ce = losses.soft_contrastive_loss(q, k, yq, yk, temperature=1.0, soft_weight=1.0)
    got_mse = losses.soft_contrastive_loss(q, k, yq, yk, temperature=1.0, soft_weight=1.0,
                                           soft_loss="mse")
    np.testing.assert_allclose(float(got_ce), ce, rtol=1e-6)
    np.testing.assert_allclose(float(got_mse), mse, rtol=1e-6)
    np.testing.assert_allclose(float(got_mse), lse - 1 + (1 - 2 ** -0.5) / 2, rtol=1e-6)


@pytest.mark.parametrize("mode", ["ce", "mse"])
def test_soft_contrastive_all_empty_batch_is_instance_loss(mode):
    rng = np.random.default_rng(1)
    q, k = rng.normal(size=(2, 6, 4)).astype(np.float32)
    empty = np.zeros((6, 9), np.float32)
    labelled = random_labels(rng, 6, 9)
    inst = losses.info_nce_loss(q, k, temperature=0.3)
    np.testing.assert_allclose(float(inst), np_info_nce(q, k, 0.3), rtol=1e-5)
    for yq, yk in [(empty, empty), (empty, labelled)]:
        got = losses.soft_contrastive_loss(q, k, yq, yk, temperature=0.3, soft_weight=5.0,
                                           soft_loss=mode)
        np.testing.assert_allclose(float(got), float(inst), rtol=1e-6)
    # labelled queries but no labelled key: "ce" has no row left, "mse" targets 0 everywhere.
    got = losses.soft_contrastive_loss(q, k, labelled, empty, temperature=0.3, soft_weight=1.0,
                                       soft_loss=mode)
    want = np_soft_contrastive(q, k, labelled, empty, 0.3, 1.0, mode)
    np.testing.assert_allclose(float(got), want, rtol=1e-5)
    if mode == "ce":
        np.testing.assert_allclose(float(got), float(inst), rtol=1e-6)


def test_soft_contrastive_identical_labels_uniform_target():
    rng = np.random.default_rng(2)
    b = 5
    q, k = rng.normal(size=(2, b, 8)).astype(np.float32)
    y = np.tile(np.array([[0, 1, 1, 0]], np.float32), (b, 1))
    got = losses.soft_contrastive_loss(q, k, y, y, temperature=0.2, soft_weight=1.0)
    logits = np_normalize(q) @ np_normalize(k).T / 0.2
    log_p = np.stack([np_log_softmax(r) for r in logits])
    want = -np.mean(np.diag(log_p)) - np.mean(log_p)  # S̃ = 1/B everywhere
    np.testing.assert_allclose(float(got), want, rtol=1e-5)


def test_soft_contrastive_disjoint_labels_rows_left_out_of_ce():
    q = np.eye(3, dtype=np.float32)
    k = np.eye(3, dtype=np.float32)
    yq = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1]], np.float32)
    yk = np.array([[1, 0, 0], [1, 0, 0], [1, 0, 0]], np.float32)  # rows 1, 2 share nothing
    got = losses.soft_contrastive_loss(q, k, yq, yk, temperature=1.0, soft_weight=1.0)
    want = np_soft_contrastive(q, k, yq, yk, 1.0, 1.0, "ce")
    np.testing.assert_allclose(float(got), want, rtol=1e-6)
    inst = float(losses.info_nce_loss(q, k, temperature=1.0))
    # only row 0 remains: S̃_0 = [1/3, 1/3, 1/3]
    lp = np_log_softmax(np.array([1.0, 0.0, 0.0]))
    np.testing.assert_allclose(float(got) - inst, -lp.mean(), rtol=1e-5)


def test_soft_weight_zero_equals_info_nce_and_traced_weight():
    rng = np.random.default_rng(3)
    q, k = rng.normal(size=(2, 4, 6)).astype(np.float32)
    y = random_labels(rng, 4, 5)
    a = losses.soft_contrastive_loss(q, k, y, y, temperature=0.2, soft_weight=0.0)
    inst = losses.info_nce_loss(q, k, temperature=0.2)
    np.testing.assert_allclose(float(a), float(inst), rtol=1e-6)
    f = jax.jit(lambda lam, tau: losses.soft_contrastive_loss(q, k, y, y, temperature=tau,
                                                              soft_weight=lam))
    np.testing.assert_allclose(float(f(0.0, 0.2)), float(a), rtol=1e-6)
    np.testing.assert_allclose(float(f(0.7, 0.2)), np_soft_contrastive(q, k, y, y, 0.2, 0.7, "ce"),
                               rtol=1e-5)


@pytest.mark.parametrize("mode", ["ce", "mse"])
def test_soft_contrastive_gradients_finite_and_jit(mode):
    rng = np.random.default_rng(4)
    q, k = rng.normal(size=(2, 6, 8)).astype(np.float32)
    q[2] = 0.0  # a zero projection must not give NaN
    yq = random_labels(rng, 6, 4, empty_rows=[1, 3])
    yk = random_labels(rng, 6, 4, empty_rows=[0])

    def f(q, k):
        return losses.soft_contrastive_loss(q, k, yq, yk, temperature=0.2, soft_weight=1.0,
                                            soft_loss=mode)

    gq, gk = jax.jit(jax.grad(f, argnums=(0, 1)))(q, k)
    assert np.isfinite(np.asarray(gq)).all() and np.isfinite(np.asarray(gk)).all()
    assert np.abs(np.asarray(gq)).sum() > 0
    np.testing.assert_allclose(float(jax.jit(f)(q, k)), float(f(q, k)), rtol=1e-6)


@pytest.mark.parametrize("mode", ["ce", "mse"])
def test_soft_contrastive_bf16_inputs(mode):
    rng = np.random.default_rng(5)
    q, k = rng.normal(size=(2, 8, 16)).astype(np.float32)
    y = random_labels(rng, 8, 9, empty_rows=[2])
    kw = dict(temperature=0.2, soft_weight=1.0, soft_loss=mode)
    q16, k16 = jnp.asarray(q, jnp.bfloat16), jnp.asarray(k, jnp.bfloat16)
    got = losses.soft_contrastive_loss(q16, k16, y.astype(jnp.bfloat16), y, **kw)
    assert got.dtype == jnp.float32
    # the same math on the bf16-rounded values, in float32
    exact = losses.soft_contrastive_loss(np.asarray(q16, np.float32), np.asarray(k16, np.float32),
                                         y, y, **kw)
    np.testing.assert_allclose(float(got), float(exact), rtol=1e-6)
    ref = losses.soft_contrastive_loss(q, k, y, y, **kw)
    np.testing.assert_allclose(float(got), float(ref), rtol=2e-2)


def test_soft_contrastive_errors():
    q = np.zeros((4, 8), np.float32)
    y = np.zeros((4, 3), np.float32)
    kw = dict(temperature=0.2, soft_weight=1.0)
    with pytest.raises(ValueError, match="soft_loss must be 'ce' or 'mse', found 'kl'"):
        losses.soft_contrastive_loss(q, q, y, y, soft_loss="kl", **kw)
    with pytest.raises(ValueError, match=r"query and key .*\(4, 8\) and \(4, 7\)"):
        losses.soft_contrastive_loss(q, np.zeros((4, 7)), y, y, **kw)
    with pytest.raises(ValueError, match=r"query_labels and key_labels .*\(4, 3\) and \(4, 2\)"):
        losses.soft_contrastive_loss(q, q, y, np.zeros((4, 2)), **kw)
    with pytest.raises(ValueError, match=r"query_labels: expected 4 rows .* found shape \(5, 3\)"):
        losses.soft_contrastive_loss(q, q, np.zeros((5, 3)), np.zeros((5, 3)), **kw)
    with pytest.raises(ValueError, match=r"query: expected a 2-D array \(B, D\), found shape \(4,"):
        losses.soft_contrastive_loss(q[..., None], q[..., None], y, y, **kw)
    with pytest.raises(ValueError, match="temperature: expected a positive number, found 0"):
        losses.soft_contrastive_loss(q, q, y, y, temperature=0, soft_weight=1.0)


# ----- dense InfoNCE ------------------------------------------------------------------------------


def np_dense_info_nce(q, k, valid, tau):
    b, n, _ = q.shape
    qn, kn = np_normalize(q).reshape(b * n, -1), np_normalize(k).reshape(b * n, -1)
    ok = np.asarray(valid).reshape(-1).astype(bool)
    cols = np.flatnonzero(ok)
    terms = []
    for a in cols:
        row = np.array([qn[a] @ kn[c] for c in cols]) / tau
        terms.append(-np_log_softmax(row)[list(cols).index(a)])
    return np.mean(terms) if terms else 0.0


def test_dense_info_nce_matches_numpy_and_grads():
    rng = np.random.default_rng(6)
    q, k = rng.normal(size=(2, 3, 5, 4)).astype(np.float32)
    valid = rng.random((3, 5)) < 0.6
    valid[0, 0] = True
    got = losses.dense_info_nce_loss(q, k, valid, temperature=0.3)
    np.testing.assert_allclose(float(got), np_dense_info_nce(q, k, valid, 0.3), rtol=1e-5)
    all_valid = np.ones((3, 5), bool)
    np.testing.assert_allclose(float(losses.dense_info_nce_loss(q, k, all_valid, temperature=0.3)),
                               np_info_nce(q.reshape(15, 4), k.reshape(15, 4), 0.3), rtol=1e-5)
    # invalid positions carry no information: changing them changes nothing
    q2 = np.where(valid[..., None], q, 100.0).astype(np.float32)
    np.testing.assert_allclose(float(losses.dense_info_nce_loss(q2, k, valid, temperature=0.3)),
                               float(got), rtol=1e-6)
    none = np.zeros((3, 5), bool)
    assert float(losses.dense_info_nce_loss(q, k, none, temperature=0.3)) == 0.0
    g = jax.jit(jax.grad(lambda q, v: losses.dense_info_nce_loss(q, k, v, temperature=0.3)))
    for v in (valid, none):
        assert np.isfinite(np.asarray(g(q, v))).all()
    with pytest.raises(ValueError, match=r"valid: expected shape \(3, 5\)"):
        losses.dense_info_nce_loss(q, k, valid.T, temperature=0.3)


# ----- DINO, KoLeo, SimMIM L1, cosine distillation ------------------------------------------------


def test_dino_loss_matches_numpy_and_stops_teacher_gradient():
    rng = np.random.default_rng(7)
    s, t = rng.normal(size=(2, 6, 10)).astype(np.float32) * 3
    c = rng.normal(size=(10,)).astype(np.float32)
    want = 0.0
    for b in range(6):
        tt = (t[b] - c) / 0.04
        p_t = np.exp(tt - tt.max()) / np.exp(tt - tt.max()).sum()
        want += -(p_t * np_log_softmax(s[b].astype(np.float64) / 0.1)).sum() / 6
    got = losses.dino_loss(s, t, c, student_temp=0.1, teacher_temp=0.04)
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(float(got), want, rtol=1e-5)
    got2 = losses.dino_loss(s, t, c[None], student_temp=0.1, teacher_temp=jnp.float32(0.04))
    np.testing.assert_allclose(float(got2), want, rtol=1e-5)
    def f(s, t, c):
        return losses.dino_loss(s, t, c, student_temp=0.1, teacher_temp=0.04)

    gs, gt, gc = jax.grad(f, argnums=(0, 1, 2))(s, t, c)
    assert np.abs(np.asarray(gs)).sum() > 0
    assert not np.asarray(gt).any() and not np.asarray(gc).any()
    with pytest.raises(ValueError, match=r"center: expected shape \(10,\) or \(1, 10\)"):
        losses.dino_loss(s, t, c[:5], student_temp=0.1, teacher_temp=0.04)


def np_koleo(x, eps):
    """DINOv2's / PerA's KoLeo in float64: F.normalize(eps), the nearest other row by dot product,
    torch's PairwiseDistance(eps=1e-8) (the eps added to the difference), −mean log(d + eps)."""
    x = np.asarray(x, np.float64)
    xn = x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), eps)
    dots = xn @ xn.T
    np.fill_diagonal(dots, -np.inf)
    nearest = dots.argmax(axis=1)
    d = np.linalg.norm(xn - xn[nearest] + 1e-8, axis=-1)
    return -np.mean(np.log(d + eps))


def test_koleo_matches_numpy():
    rng = np.random.default_rng(8)
    x = rng.normal(size=(7, 5)).astype(np.float32)
    np.testing.assert_allclose(float(losses.koleo_loss(x)), np_koleo(x, 1e-8), rtol=1e-5)
    np.testing.assert_allclose(float(losses.koleo_loss(x, eps=0.1)), np_koleo(x, 0.1), rtol=1e-5)
    # duplicated rows: each copy at 1e-8·√D from the other (PairwiseDistance's eps), not at 0, so
    # −log(1e-8·(√D + 1)). Rows of four ±1 entries normalise exactly (to ±0.5), so a copy's
    # difference is exactly 0 whatever order XLA sums a row in; gradients stay finite.
    for d in (5, 384):
        xr = np.zeros((6, d), np.float32)
        for row in xr:
            row[rng.choice(d, 4, replace=False)] = rng.choice([-1.0, 1.0], 4)
        xd = np.concatenate([xr[:3], xr[:1], xr[1:2]], axis=0)
        np.testing.assert_allclose(float(losses.koleo_loss(xd)), np_koleo(xd, 1e-8), rtol=1e-5)
        g = jax.grad(losses.koleo_loss)(xd)
        assert np.isfinite(np.asarray(g)).all()
    with pytest.raises(ValueError, match="at least 2 rows"):
        losses.koleo_loss(x[:1])


def test_masked_l1_matches_numpy():
    rng = np.random.default_rng(9)
    pred, target = rng.normal(size=(2, 2, 4, 6, 3)).astype(np.float32)
    mask = rng.random((2, 4, 6)) < 0.5
    total, count = 0.0, 0.0
    for b in range(2):
        for h in range(4):
            for w in range(6):
                if mask[b, h, w]:
                    total += np.abs(pred[b, h, w] - target[b, h, w]).sum()
                    count += 1
    want = total / (count + 1e-5) / 3
    np.testing.assert_allclose(float(losses.masked_l1_loss(pred, target, mask)), want, rtol=1e-5)
    np.testing.assert_allclose(float(losses.masked_l1_loss(pred, target, mask.astype(np.float32))),
                               want, rtol=1e-5)
    bf = losses.masked_l1_loss(jnp.asarray(pred, jnp.bfloat16), target, mask)
    assert bf.dtype == jnp.float32 and abs(float(bf) - want) < 2e-2
    with pytest.raises(ValueError, match=r"mask: expected shape \(2, 4, 6\)"):
        losses.masked_l1_loss(pred, target, mask[:, :, :5])


def test_cosine_distillation_matches_numpy():
    rng = np.random.default_rng(10)
    s, t = rng.normal(size=(2, 5, 8)).astype(np.float32)
    want = -np.mean([s[b] @ t[b] / np.linalg.norm(s[b]) / np.linalg.norm(t[b]) for b in range(5)])
    np.testing.assert_allclose(float(losses.cosine_distillation_loss(s, t)), want, rtol=1e-5)
    np.testing.assert_allclose(float(losses.cosine_distillation_loss(s, s)), -1.0, rtol=1e-6)
    gt = jax.grad(losses.cosine_distillation_loss, argnums=1)(s, t)
    assert not np.asarray(gt).any()
    with pytest.raises(ValueError, match=r"student and teacher must have the same shape"):
        losses.cosine_distillation_loss(s, t[:, :4])
