"""Each method's view sampler (geossl.objectives.softcon_views, .pera_views, .gfm_views) and the
kit's shared steps (geossl.data.views)."""

import dataclasses

import numpy as np
import pytest

from geossl.data import augment as aug
from geossl.data import bands as bl
from geossl.data import views
from geossl.errors import ConfigError
from geossl.objectives import gfm_views, pera_views, softcon_views


def _record(t=4, size=24, bands=bl.S2_L1C, seed=0, dtype=np.uint16):
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 5000, (t, size, size, len(bands))).astype(dtype)
    return {"image": image, "bands": list(bands), "labels": np.array([2, 5]), "key": f"loc-{seed}"}


def _season_record(t=4, k=9):
    """Acquisition i is constant 100·(i+1) and labelled with class 2i+1 (read back from a view)."""
    image = np.stack([np.full((16, 16, 13), 100 * (i + 1), np.uint16) for i in range(t)])
    acq = np.zeros((t, k), np.int64)
    acq[np.arange(t), 2 * np.arange(t) + 1] = 1
    return {"image": image, "bands": list(bl.S2_L1C), "labels": np.array([0]), "key": "a",
            "acq_labels": acq.reshape(-1), "num_classes": np.array([k])}, acq


_PLAIN = softcon_views.ViewConfig(img_size=8, norm="none", jitter_p=0.0, gray_p=0.0,
                                  blur_p=(0.0, 0.0))


def _seasons(sample):
    return int(sample["view1"][0, 0, 0]) // 100 - 1, int(sample["view2"][0, 0, 0]) // 100 - 1


# ----- SoftCon ----------------------------------------------------------------------------------
def test_two_view_sample_routes_each_acquisitions_labels():
    record, acq = _season_record()
    for cfg in (_PLAIN, dataclasses.replace(_PLAIN, distinct_seasons=True)):
        pairs = set()
        for seed in range(40):
            s = softcon_views.two_view_sample(record, np.random.default_rng(seed), cfg)
            assert s["view1"].shape == (8, 8, 13) and s["labels1"].shape == (9,)
            assert s["labels1"].dtype == np.float32
            t1, t2 = _seasons(s)
            assert t1 != t2 or not cfg.distinct_seasons
            np.testing.assert_array_equal(s["labels1"], acq[t1])
            np.testing.assert_array_equal(s["labels2"], acq[t2])
            pairs.add((t1, t2))
        assert len(pairs) >= 8                                 # both indices vary
    # without acq_labels: the record's labels for every acquisition; T == 1 gives the same one twice
    single = {"image": record["image"][:1], "bands": list(bl.S2_L1C), "labels": np.array([2, 6]),
              "key": "b"}
    s = softcon_views.two_view_sample(single, np.random.default_rng(0), _PLAIN)
    np.testing.assert_array_equal(s["view1"], s["view2"])
    np.testing.assert_array_equal(np.flatnonzero(s["labels1"]), [2, 6])
    with pytest.raises(ValueError, match=r"record b: labels \[2, 6\] outside \[0, 4\)"):
        softcon_views.two_view_sample(single, np.random.default_rng(0),
                                      dataclasses.replace(_PLAIN, num_classes=4))


def test_seasons_independent_by_default_distinct_on_request():
    """SSL4EO-S12 draws the two seasons independently: t1 == t2 with probability 1/T."""
    record, _ = _season_record(t=4)
    n = 2000
    for distinct, want in ((False, 0.25), (True, 0.0)):
        cfg = dataclasses.replace(_PLAIN, distinct_seasons=distinct)
        draws = [_seasons(softcon_views.two_view_sample(record, np.random.default_rng(s), cfg))
                 for s in range(n)]
        same = np.mean([a == b for a, b in draws])
        assert abs(same - want) < 4 * np.sqrt(0.25 * 0.75 / n), (distinct, same)
        counts = np.bincount([b for _, b in draws], minlength=4) / n
        np.testing.assert_allclose(counts, 0.25, atol=0.05)   # view 2's season is uniform
    assert views.pick_two(np.random.default_rng(0), 1, distinct=True) == (0, 0)


def test_two_view_sample_is_deterministic_and_converts_l2a():
    record = _record(t=2, bands=bl.S2_L2A, seed=4)
    cfg = softcon_views.ViewConfig(img_size=12)
    a = softcon_views.two_view_sample(record, np.random.default_rng(7), cfg)
    b = softcon_views.two_view_sample(record, np.random.default_rng(7), cfg)
    c = softcon_views.two_view_sample(record, np.random.default_rng(8), cfg)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    assert not np.array_equal(a["view1"], c["view1"])
    assert a["view1"].shape == (12, 12, 13)
    assert np.all((a["view1"] >= 0) & (a["view1"] <= 1))
    with pytest.raises(ValueError, match="B10"):
        softcon_views.two_view_sample(record, np.random.default_rng(7),
                                      dataclasses.replace(cfg, zero_fill_b10=False))
    record["image"] = record["image"].astype(np.float32)
    np.testing.assert_allclose(
        softcon_views.two_view_sample(record, np.random.default_rng(7), cfg)["view1"],
        a["view1"], atol=1e-6)


def _ssl4eo_channel_drop_counts(rng, n, channels, p, low, high):
    """Direct numpy form of SSL4EO-S12's RandomApply([RandomChannelDrop(low, high)], p): per view,
    with probability p, randint(low, high) distinct bands. Returns drop counts (n,), band hits (C,)."""
    counts = np.zeros(n, np.int64)
    hits = np.zeros(channels, np.int64)
    for i in range(n):
        if rng.random() < p:
            counts[i] = rng.integers(low, high + 1)
            hits[rng.permutation(channels)[:counts[i]]] += 1
    return counts, hits


def test_channel_drop_statistics_match_direct_numpy_formulation():
    p, low, high, c, n = 0.5, 1, 6, 13, 3000
    cfg = dataclasses.replace(_PLAIN, channel_drop_p=p, channel_drop_min=low,
                              channel_drop_max=high, img_size=4)
    record = _record(t=2, size=12, seed=3)
    rng = np.random.default_rng(11)
    counts, hits = [], np.zeros(c, np.int64)
    for _ in range(n // 2):
        s = softcon_views.two_view_sample(record, rng, cfg)
        for v in ("view1", "view2"):
            zero = np.flatnonzero((s[v] == 0).all(axis=(0, 1)))   # exactly the dropped bands
            counts.append(len(zero))
            hits[zero] += 1
    counts = np.array(counts)
    assert counts.min() == 0 and counts.max() <= high and np.all((counts == 0) | (counts >= low))
    ref_counts, ref_hits = _ssl4eo_channel_drop_counts(np.random.default_rng(5), n, c, p, low, high)
    hist = np.bincount(counts, minlength=high + 1) / n
    ref_hist = np.bincount(ref_counts, minlength=high + 1) / n
    exact = np.array([1 - p] + [p / (high - low + 1)] * (high - low + 1))
    for h in (hist, ref_hist):
        np.testing.assert_allclose(h, exact, atol=4 * np.sqrt(0.25 / n))
    np.testing.assert_allclose(hist, ref_hist, atol=6 * np.sqrt(0.25 / n))
    per_band = p * (low + high) / 2 / c                         # each band equally likely
    np.testing.assert_allclose(hits / n, per_band, atol=4 * np.sqrt(per_band / n))
    np.testing.assert_allclose(ref_hits / n, per_band, atol=4 * np.sqrt(per_band / n))


def test_channel_drop_zeroes_only_the_drawn_bands():
    cfg = softcon_views.ViewConfig(img_size=10, channel_drop_p=1.0, channel_drop_min=3,
                                   channel_drop_max=3)
    record = _record(t=2, size=20, seed=6)
    drawn = softcon_views.two_view_draws(record, np.random.default_rng(2), cfg)
    got = softcon_views.two_view_sample(record, np.random.default_rng(2), cfg)
    for v, (t, image_t, plan, params, _) in enumerate(drawn, start=1):
        np.testing.assert_array_equal(image_t, record["image"][t])
        assert len(params.dropped) == 3
        kept = dataclasses.replace(params, dropped=())
        full = aug.render_view(image_t, plan, kept, 10)
        np.testing.assert_array_equal(got[f"view{v}"][..., list(params.dropped)], 0.0)
        others = [b for b in range(13) if b not in params.dropped]
        np.testing.assert_allclose(got[f"view{v}"][..., others], full[..., others], atol=1e-6)


def test_view_config_rejects_impossible_channel_drop():
    with pytest.raises(ValueError, match=r"channel_drop_min/max: expected .* <= 2 .* found 1, 6"):
        softcon_views.ViewConfig(bands=bl.S1, channel_drop_p=0.5)
    with pytest.raises(ValueError, match="channel_drop_p: expected a probability"):
        softcon_views.ViewConfig(channel_drop_p=1.5)
    softcon_views.ViewConfig(bands=bl.S1, channel_drop_p=0.0)    # disabled: any range


# ----- PerA -------------------------------------------------------------------------------------
def test_multi_crop_sample_pairs_share_geometry():
    record = _record(t=2, size=32, seed=1)
    same = pera_views.MultiCropConfig(global_size=16, local_size=8, num_global=2, num_local=3,
                                      jitter_p=0.0, gray_p=0.0, gray_replaces_jitter=False)
    s = pera_views.multi_crop_sample(record, np.random.default_rng(0), same)
    assert s["global_student"].shape == (2, 16, 16, 13) and s["local_teacher"].shape == (3, 8, 8, 13)
    np.testing.assert_array_equal(s["global_student"], s["global_teacher"])
    np.testing.assert_array_equal(s["local_student"], s["local_teacher"])
    assert not np.array_equal(s["global_student"][0], s["global_student"][1])
    jitter = dataclasses.replace(same, jitter_p=(1.0, 0.0))       # (student, teacher)
    j = pera_views.multi_crop_sample(record, np.random.default_rng(0), jitter)
    assert not np.array_equal(j["global_student"], j["global_teacher"])
    gray = dataclasses.replace(same, jitter_p=(1.0, 0.0), gray_p=(1.0, 0.0),
                               gray_replaces_jitter=(True, False))
    g = pera_views.multi_crop_sample(record, np.random.default_rng(0), gray)
    teacher_mean = g["global_teacher"].mean(axis=-1, keepdims=True)
    np.testing.assert_allclose(g["global_student"],
                               np.broadcast_to(teacher_mean, g["global_student"].shape), atol=1e-6)


# ----- GFM --------------------------------------------------------------------------------------
def test_masked_crop_sample_is_one_plain_crop_of_a_random_acquisition():
    """rng order: the acquisition, then the crop box and the horizontal flip; no photometry; the
    resize antialiased (the official crop of PIL images)."""
    record = _record(t=3, size=40, seed=2)
    cfg = gfm_views.MaskedCropConfig(img_size=24)
    flips, seasons = 0, set()
    for seed in range(16):
        s = gfm_views.masked_crop_sample(record, np.random.default_rng(seed), cfg)
        rng = np.random.default_rng(seed)
        t = int(rng.integers(3))
        box = aug.random_resized_crop_box(rng, 40, 40, (0.67, 1.0), (3 / 4, 4 / 3))
        hflip = bool(rng.random() < 0.5)
        plan = aug.band_plan(bl.S2_L1C, bl.S2_L1C, "softcon")
        want = aug.render_view(record["image"][t], plan, aug.ViewParams(box=box, hflip=hflip), 24,
                               antialias=True)
        np.testing.assert_array_equal(s["image"], want)
        flips, seasons = flips + hflip, seasons | {t}
    assert 0 < flips < 16 and seasons == {0, 1, 2}


def test_labels_outside_the_configured_classes_name_the_config_field():
    from geossl.data.views import acquisition_labels
    record = {"image": np.zeros((2, 4, 4, 1), np.uint16), "labels": np.array([3, 17]),
              "key": "S2A_patch", "label_set": "bigearthnet_19"}
    with pytest.raises(ValueError, match=r"record S2A_patch: labels \[3, 17\] outside \[0, 9\) of "
                                         r"config.data.num_classes=9 \(the record's label set is "
                                         r"'bigearthnet_19'"):
        acquisition_labels(record, 9)
    assert acquisition_labels(record, 19).shape == (2, 19)


def test_records_without_labels_warn_at_1_10_100(monkeypatch):
    warnings = []
    monkeypatch.setattr(views, "_unlabelled_seen", 0)
    monkeypatch.setattr(views.logging, "warning", lambda msg, *a: warnings.append(msg % a))
    labelled = {"image": np.zeros((1, 4, 4, 1), np.uint16), "labels": np.array([], np.int64),
                "key": "empty-label-set"}
    views.acquisition_labels(labelled, 9)  # an explicitly empty label set is not a warning
    for i in range(100):
        hot = views.acquisition_labels({"image": labelled["image"], "key": f"r{i}"}, 9)
        assert not hot.any()
    assert [w.split(" has no")[0] for w in warnings] == ["record r0", "record r9", "record r99"]
    assert "100 such record(s)" in warnings[-1]


def test_antialiased_resize_where_the_official_crops_have_it():
    """GFM's and PerA's crops antialias (PIL / torchvision), SoftCon's follow cv2 (none); the
    device renderer has no antialiased resize and says so."""
    from configs import gfm_swin_b, pera_vit_b, softcon_vit_s
    assert gfm_views.view_config(gfm_swin_b.get_config("demo")).antialias
    assert pera_views.view_config(pera_vit_b.get_config("demo")).antialias
    softcon = softcon_views.view_config(softcon_vit_s.get_config("demo"))
    assert not softcon.antialias and softcon.render_spec().img_size == softcon.img_size
    with pytest.raises(ConfigError, match="config.data.antialias: the device renderer resizes "
                                          "without antialiasing"):
        dataclasses.replace(softcon, antialias=True).render_spec()
