"""Bands, normalisation and multispectral views (geossl.data.bands, geossl.data.augment)."""

import dataclasses
import math

import numpy as np
import pytest
from scipy import ndimage

from geossl.data import augment as aug
from geossl.data import bands as bl


def _bilinear_reference(x, out_h, out_w):
    """Per-pixel bilinear resize (align_corners=False, no antialias), written out directly."""
    h, w, _ = x.shape
    y = np.zeros((out_h, out_w, x.shape[2]), np.float64)
    for i in range(out_h):
        sy = max((i + 0.5) * h / out_h - 0.5, 0.0)
        y0 = min(int(math.floor(sy)), h - 1)
        y1, fy = min(y0 + 1, h - 1), sy - y0
        for j in range(out_w):
            sx = max((j + 0.5) * w / out_w - 0.5, 0.0)
            x0 = min(int(math.floor(sx)), w - 1)
            x1, fx = min(x0 + 1, w - 1), sx - x0
            y[i, j] = ((1 - fy) * ((1 - fx) * x[y0, x0] + fx * x[y0, x1])
                       + fy * ((1 - fx) * x[y1, x0] + fx * x[y1, x1]))
    return y


def _record(t=4, size=24, bands=bl.S2_L1C, seed=0, dtype=np.uint16):
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 5000, (t, size, size, len(bands))).astype(dtype)
    return {"image": image, "bands": list(bands), "labels": np.array([2, 5]), "key": f"loc-{seed}"}


# ----- bands ------------------------------------------------------------------------------------
def test_band_constants_and_statistics():
    assert bl.S2_L1C[10] == "B10" and len(bl.S2_L1C) == 13 and len(bl.S2_L2A) == 12
    assert "B10" not in bl.S2_L2A and bl.S1 == ("VV", "VH")
    assert bl.MEAN["B8A"] == 2560.30 and bl.STD["B12"] == 1136.54
    assert bl.MEAN["VH"] == -20.192 and bl.STD["VV"] == 5.257


def test_select_bands_by_name_and_errors():
    x = np.arange(2 * 3 * 4).reshape(2, 3, 4)
    y = bl.select_bands(x, ["B02", "B3", "b4", "B8A"], ["B8A", "B2"])
    np.testing.assert_array_equal(y, x[..., [3, 0]])
    assert bl.select_bands(x, ["B2", "B3", "B4", "B8"], ["B2", "B3", "B4", "B8"]) is x
    with pytest.raises(ValueError, match=r"band 'B5' requested.*\['B2', 'B3', 'B4', 'B8'\]"):
        bl.select_bands(x, ["B2", "B3", "B4", "B8"], ["B5"], where="rec-7")
    with pytest.raises(ValueError, match="rec-7"):
        bl.select_bands(x, ["B2", "B3", "B4", "B8"], ["B5"], where="rec-7")
    with pytest.raises(ValueError, match="3 band names.*4 channels"):
        bl.select_bands(x, ["B2", "B3", "B4"], ["B2"])
    with pytest.raises(ValueError, match="B10"):
        bl.select_bands(x, ["B2", "B3", "B4", "B8"], ["B10"], zero_fill=())


def test_l2a_to_l1c_inserts_zero_b10():
    x = np.random.default_rng(0).integers(1, 100, (5, 6, 12)).astype(np.uint16)
    y = bl.l2a_to_l1c(x)
    assert y.shape == (5, 6, 13) and y.dtype == np.uint16
    np.testing.assert_array_equal(y[..., 10], 0)
    np.testing.assert_array_equal(y[..., :10], x[..., :10])
    np.testing.assert_array_equal(y[..., 11:], x[..., 10:])


def test_normalize_matches_softcon_formula():
    rng = np.random.default_rng(1)
    x = rng.uniform(-500, 6000, (7, 8, 13)).astype(np.float32)
    mu = np.array([bl.MEAN[b] for b in bl.S2_L1C])
    sd = np.array([bl.STD[b] for b in bl.S2_L1C])
    want = np.clip((x - (mu - 2 * sd)) / (4 * sd), 0, 1)
    got = bl.normalize(x, bl.S2_L1C, "softcon")
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, want, atol=1e-6)
    assert 0 < (got == 0).sum() and 0 < (got == 1).sum()   # the clip is exercised
    np.testing.assert_allclose(bl.normalize(x, bl.S2_L1C, "meanstd"), (x - mu) / sd, atol=1e-5)
    s1 = rng.normal(-15, 5, (3, 3, 2))
    np.testing.assert_allclose(bl.normalize(s1, bl.S1, "meanstd"),
                               (s1 - [-12.548, -20.192]) / [5.257, 5.912], atol=1e-5)
    np.testing.assert_array_equal(bl.normalize(x, bl.S2_L1C, "none"), x)
    with pytest.raises(ValueError, match="expected one of.*'minmax'"):
        bl.normalize(x, bl.S2_L1C, "minmax")
    with pytest.raises(ValueError, match="no statistics for bands \\['QQ'\\]"):
        bl.normalize(x[..., :1], ["QQ"], "softcon")


def test_normalize_nodata_and_nan():
    x = np.array([[[100.0, 2000.0], [np.nan, 4000.0]], [[0.0, 3000.0], [300.0, 0.0]]], np.float32)
    bands = ["B2", "B3"]
    zero = bl.normalize(x, bands, "meanstd", nodata=0.0, fill="zero")
    assert zero[1, 0, 0] == 0 and zero[1, 1, 1] == 0 and zero[0, 1, 0] == 0
    np.testing.assert_allclose(zero[0, 0, 0], (100 - 1390.78) / 850.35, rtol=1e-6)
    mean = bl.normalize(x, bands, "meanstd", nodata=0.0, fill="mean")
    b2_mean = (100.0 + 300.0) / 2          # valid B2 pixels; B3 valid: 2000, 4000, 3000
    np.testing.assert_allclose(mean[1, 0, 0], (b2_mean - 1390.78) / 850.35, rtol=1e-6)
    np.testing.assert_allclose(mean[0, 1, 0], (b2_mean - 1390.78) / 850.35, rtol=1e-6)
    np.testing.assert_allclose(mean[1, 1, 1], (3000 - 1314.87) / 875.06, rtol=1e-6)
    assert np.isfinite(bl.normalize(x, bands, "softcon")).all()   # NaN handled without nodata


# ----- geometry ---------------------------------------------------------------------------------
def test_random_resized_crop_box_bounds():
    rng = np.random.default_rng(0)
    for _ in range(300):
        top, left, h, w = aug.random_resized_crop_box(rng, 64, 80, (0.2, 0.7), (0.5, 2.0))
        assert 0 <= top and top + h <= 64 and 0 <= left and left + w <= 80
        # rounding of h and w moves area and aspect by at most one pixel each
        assert 0.2 * 64 * 80 - (h + w + 1) <= h * w <= 0.7 * 64 * 80 + (h + w + 1)
        assert 0.5 * (h - 1) / (h + 0.5) <= w / h <= 2.0 * (w + 0.5) / (w - 1)


def test_random_resized_crop_box_fallback_is_torchvision_centre_crop():
    rng = np.random.default_rng(0)
    # impossible scale → every try fails → centre crop
    assert aug.random_resized_crop_box(rng, 40, 40, (2.0, 3.0)) == (0, 0, 40, 40)
    assert aug.random_resized_crop_box(rng, 20, 100, (2.0, 3.0), (0.75, 4 / 3)) == (0, 36, 20, 27)
    assert aug.random_resized_crop_box(rng, 100, 20, (2.0, 3.0), (0.75, 4 / 3)) == (36, 0, 27, 20)
    tv = pytest.importorskip("torchvision.transforms")
    torch = pytest.importorskip("torch")
    img = torch.zeros(1, 20, 100)
    assert tuple(tv.RandomResizedCrop.get_params(img, [2.0, 3.0], [0.75, 4 / 3])) == (0, 36, 20, 27)


def test_crop_and_resize_matches_direct_bilinear():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 1000, (30, 40, 3)).astype(np.uint16)
    for box, out in [((3, 5, 17, 23), 9), ((0, 0, 30, 40), (11, 7)), ((10, 20, 6, 5), 13),
                     ((2, 2, 8, 8), 8)]:
        top, left, h, w = box
        want = _bilinear_reference(image[top:top + h, left:left + w].astype(np.float64),
                                   *aug._pair(out))
        got = aug.crop_and_resize(image, box, out)
        assert got.dtype == np.float32 and got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-3)
        np.testing.assert_allclose(aug.crop_and_resize(image, box, out, hflip=True),
                                   want[:, ::-1], rtol=1e-5, atol=1e-3)
        np.testing.assert_allclose(aug.crop_and_resize(image, box, out, vflip=True),
                                   want[::-1], rtol=1e-5, atol=1e-3)
    with pytest.raises(ValueError, match="outside the image"):
        aug.crop_and_resize(image, (25, 0, 10, 10), 4)


def test_crop_and_resize_matches_torch_interpolate():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    image = rng.random((50, 60, 13), dtype=np.float32)
    for box, out in [((4, 7, 37, 45), 24), ((10, 3, 12, 15), 32), ((0, 0, 50, 60), (20, 25))]:
        top, left, h, w = box
        crop = torch.from_numpy(np.ascontiguousarray(image[top:top + h, left:left + w]))
        want = torch.nn.functional.interpolate(crop.permute(2, 0, 1)[None], size=aug._pair(out),
                                               mode="bilinear", align_corners=False,
                                               antialias=False)[0].permute(1, 2, 0).numpy()
        np.testing.assert_allclose(aug.crop_and_resize(image, box, out), want, atol=1e-5)


def test_flips():
    x = np.arange(2 * 3 * 2).reshape(2, 3, 2)
    np.testing.assert_array_equal(aug.hflip(x)[:, 0], x[:, 2])
    np.testing.assert_array_equal(aug.vflip(x)[0], x[1])
    np.testing.assert_array_equal(aug.hflip(aug.hflip(x)), x)


# ----- photometric ------------------------------------------------------------------------------
def test_brightness_contrast_math():
    x = np.array([[[0.2, 0.5], [0.4, 0.9]]], np.float32)      # (1, 2, 2)
    y = aug.brightness_contrast(x, 1.2, 0.5, clip=False)
    bright = x * 1.2
    mean = bright.mean(axis=(0, 1))                            # per band: [0.36, 0.84]
    np.testing.assert_allclose(y, (bright - mean) * 0.5 + mean, rtol=1e-6)
    np.testing.assert_allclose(y[0, :, 0], [0.3, 0.42], rtol=1e-6)
    per_band = aug.brightness_contrast(x, np.array([1.0, 2.0]), np.array([1.0, 0.0]), clip=False)
    np.testing.assert_allclose(per_band[..., 0], x[..., 0], rtol=1e-6)
    np.testing.assert_allclose(per_band[..., 1], [[1.4, 1.4]], rtol=1e-6)   # flat at 2·mean
    assert aug.brightness_contrast(x, 1.4, 1.4).max() == 1.0


def test_grayscale_and_solarize():
    x = np.random.default_rng(0).random((4, 5, 13), dtype=np.float32)
    g = aug.grayscale(x)
    np.testing.assert_allclose(g, np.repeat(x.mean(-1, keepdims=True), 13, -1), rtol=1e-6)
    s = aug.solarize(np.array([0.2, 0.5, 0.9], np.float32))
    np.testing.assert_allclose(s, [0.2, 0.5, 0.1], rtol=1e-6)


@pytest.mark.parametrize("sigma,shape", [(0.1, (33, 29, 4)), (0.7, (33, 29, 4)),
                                         (1.9, (70, 41, 2)), (1.9, (5, 4, 3))])
def test_gaussian_blur_matches_scipy_gaussian_filter1d(sigma, shape):
    x = np.random.default_rng(0).random(shape, dtype=np.float32)   # (5, 4): radius 6 > size
    want = ndimage.gaussian_filter1d(x.astype(np.float64), sigma, axis=0, mode="reflect",
                                     truncate=3.0)
    want = ndimage.gaussian_filter1d(want, sigma, axis=1, mode="reflect", truncate=3.0)
    got = aug.gaussian_blur(x, sigma)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, want, atol=1e-6)
    k = aug.gaussian_kernel(1.0)
    assert len(k) == 7 and abs(k.sum() - 1) < 1e-12


# ----- fused views ------------------------------------------------------------------------------
def _reference_view(image, bands_in, cfg, params, size):
    """The unfused chain: normalise → crop/resize/flip → jitter → gray → blur → solarize."""
    x = bl.normalize(bl.select_bands(image, bands_in, cfg.bands), cfg.bands, cfg.norm,
                     nodata=cfg.nodata)
    x = aug.crop_and_resize(x, params.box, size, hflip=params.hflip, vflip=params.vflip)
    if params.brightness is not None:
        x = aug.brightness_contrast(x, params.brightness, params.contrast, clip=cfg.jitter_clip)
    if params.gray:
        x = aug.grayscale(x)
    if params.blur_sigma is not None:
        x = aug.gaussian_blur(x, params.blur_sigma)
    if params.solarize:
        x = aug.solarize(x)
    return x


@pytest.mark.parametrize("norm,per_band,l2a", [("softcon", False, False),
                                               ("meanstd", True, True)])
def test_render_view_equals_unfused_chain(norm, per_band, l2a):
    cfg = aug.ViewConfig(img_size=20, norm=norm, jitter_per_band=per_band, jitter_clip=not l2a,
                         jitter_p=0.7, gray_p=0.4, blur_p=(0.6, 0.6), solarize_p=(0.4, 0.4),
                         vflip=True, nodata=0.0)
    stored = bl.S2_L2A if l2a else bl.S2_L1C
    rng = np.random.default_rng(3)
    image = rng.integers(0, 9000, (31, 27, len(stored))).astype(np.uint16)
    image[3:6, 4:9, 2] = 0                                     # no-data patch
    plan = aug.band_plan(stored, cfg.bands, norm)
    seen = set()
    for i in range(12):
        p = aug.sample_view_params(rng, 31, 27, 13, cfg, i % 2)
        seen |= {p.gray, p.blur_sigma is not None, p.solarize, p.brightness is not None}
        got = aug.render_view(image, plan, p, 20, nodata=0.0, jitter_clip=cfg.jitter_clip)
        want = _reference_view(image, stored, cfg, p, 20)
        assert got.shape == (20, 20, 13) and got.dtype == np.float32 and got.flags.c_contiguous
        np.testing.assert_allclose(got, want, atol=2e-5, err_msg=f"view {i}: {p}")
    assert seen == {True, False}


def test_two_view_sample_picks_two_acquisitions_and_their_labels():
    t, k = 4, 9
    image = np.stack([np.full((16, 16, 13), 100 * (i + 1), np.uint16) for i in range(t)])
    acq = np.zeros((t, k), np.int64)
    acq[np.arange(t), [1, 3, 5, 7]] = 1
    record = {"image": image, "bands": list(bl.S2_L1C), "labels": np.array([0]), "key": "a",
              "acq_labels": acq.reshape(-1), "num_classes": np.array([k])}
    cfg = aug.ViewConfig(img_size=8, norm="none", jitter_p=0.0, gray_p=0.0, blur_p=(0.0, 0.0))
    pairs = set()
    for seed in range(40):
        s = aug.two_view_sample(record, np.random.default_rng(seed), cfg)
        assert s["view1"].shape == (8, 8, 13) and s["labels1"].shape == (k,)
        assert s["labels1"].dtype == np.float32
        t1, t2 = int(s["view1"][0, 0, 0]) // 100 - 1, int(s["view2"][0, 0, 0]) // 100 - 1
        assert t1 != t2
        np.testing.assert_array_equal(s["labels1"], acq[t1])
        np.testing.assert_array_equal(s["labels2"], acq[t2])
        pairs.add((t1, t2))
    assert len(pairs) >= 8                                     # both indices vary
    # without acq_labels: the record's labels for every acquisition; T == 1 gives the same one twice
    single = {"image": image[:1], "bands": list(bl.S2_L1C), "labels": np.array([2, 6]), "key": "b"}
    s = aug.two_view_sample(single, np.random.default_rng(0), cfg)
    np.testing.assert_array_equal(s["view1"], s["view2"])
    np.testing.assert_array_equal(np.flatnonzero(s["labels1"]), [2, 6])
    with pytest.raises(ValueError, match=r"record b: labels \[2, 6\] outside \[0, 4\)"):
        aug.two_view_sample(single, np.random.default_rng(0), dataclasses.replace(cfg, num_classes=4))


def test_two_view_sample_is_deterministic_and_converts_l2a():
    record = _record(t=2, bands=bl.S2_L2A, seed=4)
    cfg = aug.ViewConfig(img_size=12)
    a = aug.two_view_sample(record, np.random.default_rng(7), cfg)
    b = aug.two_view_sample(record, np.random.default_rng(7), cfg)
    c = aug.two_view_sample(record, np.random.default_rng(8), cfg)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    assert not np.array_equal(a["view1"], c["view1"])
    assert a["view1"].shape == (12, 12, 13)
    assert np.all((a["view1"] >= 0) & (a["view1"] <= 1))
    with pytest.raises(ValueError, match="B10"):
        aug.two_view_sample(record, np.random.default_rng(7),
                            dataclasses.replace(cfg, zero_fill_b10=False))
    record["image"] = record["image"].astype(np.float32)
    np.testing.assert_allclose(aug.two_view_sample(record, np.random.default_rng(7), cfg)["view1"],
                               a["view1"], atol=1e-6)


def test_multi_crop_sample_pairs_share_geometry():
    record = _record(t=2, size=32, seed=1)
    same = aug.MultiCropConfig(global_size=16, local_size=8, num_global=2, num_local=3,
                               student=aug.Photometric(jitter_p=0.0, gray_p=0.0),
                               teacher=aug.Photometric(jitter_p=0.0, gray_p=0.0))
    s = aug.multi_crop_sample(record, np.random.default_rng(0), same)
    assert s["global_student"].shape == (2, 16, 16, 13) and s["local_teacher"].shape == (3, 8, 8, 13)
    np.testing.assert_array_equal(s["global_student"], s["global_teacher"])
    np.testing.assert_array_equal(s["local_student"], s["local_teacher"])
    assert not np.array_equal(s["global_student"][0], s["global_student"][1])
    jitter = dataclasses.replace(same, student=aug.Photometric(jitter_p=1.0, gray_p=0.0))
    j = aug.multi_crop_sample(record, np.random.default_rng(0), jitter)
    assert not np.array_equal(j["global_student"], j["global_teacher"])
    gray = dataclasses.replace(same, student=aug.Photometric(jitter_p=1.0, gray_p=1.0,
                                                             gray_replaces_jitter=True))
    g = aug.multi_crop_sample(record, np.random.default_rng(0), gray)
    np.testing.assert_allclose(g["global_student"],
                               aug.grayscale(g["global_teacher"].reshape(-1, 16, 13)).reshape(
                                   g["global_student"].shape), atol=1e-6)


def test_masked_crop_sample_with_teacher_view():
    record = _record(t=1, size=40, seed=2)
    cfg = aug.MaskedCropConfig(img_size=24, teacher_size=32, teacher_bands=bl.S2_RGB)
    s = aug.masked_crop_sample(record, np.random.default_rng(0), cfg)
    assert s["image"].shape == (24, 24, 13) and s["teacher_image"].shape == (32, 32, 3)
    # the same crop: resizing the student's source box at 32 px gives the teacher's RGB
    full = dataclasses.replace(cfg, img_size=32)
    big = aug.masked_crop_sample(record, np.random.default_rng(0), full)["image"]
    np.testing.assert_allclose(big[..., [3, 2, 1]], s["teacher_image"], atol=1e-6)
