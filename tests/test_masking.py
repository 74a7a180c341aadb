"""geossl.masking: exact counts, disjoint covering sets, uniformity, static shapes under jit."""

import functools

import jax
import numpy as np
import pytest

from geossl import masking


def as_sets(*idx_arrays):
    """Per sample, the list of python sets of each index array."""
    arrays = [np.asarray(a) for a in idx_arrays]
    return [[set(a[b].tolist()) for a in arrays] for b in range(arrays[0].shape[0])]


def test_counts_follow_the_official_code():
    """PerA's int(round(L·f)) (half to even) and MAE's int(L·(1 − r)) (down), float products as the
    official code computes them; a wrong rounding moves one of these by a token."""
    assert masking.count_for(0.5, 7) == 4 and masking.count_for(0.5, 5) == 2  # 3.5 → 4, 2.5 → 2
    assert masking.count_for(0.1, 5) == 0 and masking.count_for(0.15, 30) == 4
    assert masking.count_for(0.7, 10) == 7  # 7.000000000000001
    assert masking.count_for(0.2, 196) == 39 and masking.count_for(0.4, 196) == 78
    assert masking.count_for(0.0, 9) == 0 and masking.count_for(1.0, 9) == 9
    for ratio, total, kept in [(0.75, 196, 49), (0.9, 196, 19), (0.7, 196, 58), (0.8, 144, 28),
                               (0.6, 64, 25), (0.5, 49, 24), (0.0, 16, 16), (1.0, 16, 0)]:
        assert masking.kept_count(ratio, total) == kept, (ratio, total)
    for ratio in np.linspace(0, 1, 101):
        for total in (49, 64, 196, 256):
            assert masking.kept_count(float(ratio), total) == int(total * (1 - float(ratio)))
            assert masking.count_for(float(ratio), total) == int(round(total * float(ratio)))
    for count in (masking.count_for, masking.kept_count):
        with pytest.raises(ValueError, match=r"fraction in \[0, 1\], found 1.5"):
            count(1.5, 10)


def test_random_split_counts_disjoint_cover_sorted():
    parts = masking.random_split(jax.random.key(0), 6, 20, (3, 5, 12))
    assert [p.shape for p in parts] == [(6, 3), (6, 5), (6, 12)]
    assert all(p.dtype == np.int32 for p in parts)
    for sets in as_sets(*parts):
        assert sum(len(s) for s in sets) == 20 and set().union(*sets) == set(range(20))
    for p in parts:
        assert (np.diff(np.asarray(p), axis=1) > 0).all()
    # a partial split: no duplicates, fewer than N positions
    (a, b) = masking.random_split(jax.random.key(1), 4, 10, (2, 3), sort=False)
    for sa, sb in as_sets(a, b):
        assert len(sa) == 2 and len(sb) == 3 and not sa & sb


def test_random_split_errors():
    with pytest.raises(ValueError, match=r"counts \(5, 6\) sum to 11, more than num_tokens=10"):
        masking.random_split(jax.random.key(0), 2, 10, (5, 6))
    with pytest.raises(ValueError, match="counts\\[1\\]: expected a Python int >= 0"):
        masking.random_split(jax.random.key(0), 2, 10, (5, -1))


def test_keep_mask_indices_and_indices_to_mask():
    keep, masked = masking.keep_mask_indices(jax.random.key(2), 5, 49, 0.5)
    assert keep.shape == (5, 24) and masked.shape == (5, 25)  # int(49 · 0.5) = 24 kept
    for sk, sm in as_sets(keep, masked):
        assert not sk & sm and sk | sm == set(range(49))
    m = np.asarray(masking.indices_to_mask(masked, 49))
    assert m.shape == (5, 49) and m.dtype == bool
    assert (m.sum(axis=1) == 25).all()
    for b in range(5):
        assert set(np.flatnonzero(m[b]).tolist()) == set(np.asarray(masked)[b].tolist())
    k0, m0 = masking.keep_mask_indices(jax.random.key(2), 3, 16, 0.0)
    assert k0.shape == (3, 16) and m0.shape == (3, 0)


def test_same_key_same_draw_different_key_differs():
    a = masking.keep_mask_indices(jax.random.key(7), 4, 64, 0.75)
    b = masking.keep_mask_indices(jax.random.key(7), 4, 64, 0.75)
    c = masking.keep_mask_indices(jax.random.key(8), 4, 64, 0.75)
    np.testing.assert_array_equal(np.asarray(a[0]), np.asarray(b[0]))
    assert not np.array_equal(np.asarray(a[0]), np.asarray(c[0]))
    # samples of one batch get different masks
    assert not np.array_equal(np.asarray(a[0])[0], np.asarray(a[0])[1])


def test_masking_is_uniform_over_positions():
    n, ratio, batch = 16, 0.25, 4000
    _, masked = masking.keep_mask_indices(jax.random.key(3), batch, n, ratio)
    freq = np.asarray(masking.indices_to_mask(masked, n)).mean(axis=0)
    # each position is masked with probability 4/16; binomial sd ≈ 0.007
    np.testing.assert_allclose(freq, 0.25, atol=0.03)
    # the three PerA sets: each position is in each set with probability S/N, L/N, T/N
    s, l, t = masking.pera_split(jax.random.key(4), batch, 10)
    for idx, p in ((s, 0.2), (l, 0.2), (t, 0.6)):
        f = np.asarray(masking.indices_to_mask(idx, 10)).mean(axis=0)
        np.testing.assert_allclose(f, p, atol=0.04)


@pytest.mark.parametrize("n", [196, 36, 49])
def test_pera_split_counts(n):
    s, l, t = masking.pera_split(jax.random.key(5), 3, n)
    ns, nsl = round(0.2 * n), round(0.4 * n)
    assert (s.shape[1], l.shape[1], t.shape[1]) == (ns, nsl - ns, n - nsl)
    for ss, sl, st in as_sets(s, l, t):
        assert not ss & sl and not ss & st and not sl & st
        assert ss | sl | st == set(range(n))
    with pytest.raises(ValueError, match="student <= learn"):
        masking.pera_split(jax.random.key(5), 3, n, student=0.5, learn=0.4)


def test_simmim_mask_exact_units_and_upsampling():
    grid, unit, ratio = (6, 8), 2, 0.6  # 3 × 4 = 12 units, ceil(7.2) = 8 masked (SimMIM)
    m = np.asarray(masking.simmim_mask(jax.random.key(6), 5, grid, unit, ratio))
    assert m.shape == (5, 6, 8) and m.dtype == bool
    units = m.reshape(5, 3, 2, 4, 2)
    # every unit is all-masked or all-visible, and exactly 8 units are masked per sample
    assert (units.all(axis=(2, 4)) == units.any(axis=(2, 4))).all()
    assert (units.all(axis=(2, 4)).sum(axis=(1, 2)) == 8).all()
    assert (m.sum(axis=(1, 2)) == 8 * unit * unit).all()
    assert masking.ceil_count(0.6, 36) == 22 and masking.ceil_count(0.6, 10) == 6
    # GFM's float64 ceil(U · r) at every square unit count and ratio of two digits
    for side in range(1, 16):
        for hundredths in range(1, 100):
            units, ratio = side * side, hundredths / 100
            assert masking.ceil_count(ratio, units) == int(np.ceil(units * ratio)), (units, ratio)
    assert masking.ceil_count(0.28, 25) == 8     # 25 · 0.28 = 7.000000000000001 in float64
    px = np.asarray(masking.upsample_mask(m, 4))
    assert px.shape == (5, 24, 32)
    np.testing.assert_array_equal(px, np.repeat(np.repeat(m, 4, axis=1), 4, axis=2))
    assert masking.upsample_mask(m, (2, 3)).shape == (5, 12, 24)
    with pytest.raises(ValueError, match=r"grid \(6, 7\) is not divisible by the mask unit 2"):
        masking.simmim_mask(jax.random.key(6), 5, (6, 7), 2, 0.6)


def test_jit_with_static_shapes():
    @functools.partial(jax.jit, static_argnums=(1,))
    def f(rng, ratio):
        keep, masked = masking.keep_mask_indices(rng, 4, 32, ratio)
        s, l, t = masking.pera_split(rng, 4, 32)
        sim = masking.simmim_mask(rng, 4, (4, 4), 2, ratio)
        return keep, masked, masking.indices_to_mask(masked, 32), s, l, t, sim

    out = f(jax.random.key(9), 0.5)
    assert [o.shape for o in out] == [(4, 16), (4, 16), (4, 32), (4, 6), (4, 7), (4, 19), (4, 4, 4)]
    eager = masking.keep_mask_indices(jax.random.key(9), 4, 32, 0.5)
    np.testing.assert_array_equal(np.asarray(out[0]), np.asarray(eager[0]))
    # vmapped over keys (e.g. per micro-batch), shapes stay static
    keys = jax.random.split(jax.random.key(10), 3)
    keep, _ = jax.vmap(lambda k: masking.keep_mask_indices(k, 2, 8, 0.25))(keys)
    assert keep.shape == (3, 2, 6)
