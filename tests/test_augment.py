"""Bands, normalisation and multispectral view kernels (geossl.data.bands, .augment, .blur)."""

import math

import numpy as np
import pytest
from scipy import ndimage

from geossl.data import augment as aug
from geossl.data import bands as bl
from geossl.data import blur


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


def _crop_and_resize(image, box, out_size, hflip=False, vflip=False, antialias=False):
    """(H, W, C) → (S_h, S_w, C) float32 through the package's geometry path, no normalisation."""
    names = bl.S2_L1C[:image.shape[-1]]
    plan = aug.band_plan(names, names, "none")
    return aug.render_geometry(image, plan, aug.ViewParams(box=box, hflip=hflip, vflip=vflip),
                               out_size, antialias=antialias)


# ----- unfused reference steps (SSL4EO-S12 forms, on normalised (H, W, C) float32) ---------------
def _brightness_contrast(x, brightness, contrast, clip=True):
    """y = x·b, then (y − mean_c(y))·c + mean_c(y) with per-band spatial means; optional clip."""
    y = x.astype(np.float32) * np.asarray(brightness, np.float32)
    mean = y.mean(axis=(0, 1), keepdims=True)
    y = (y - mean) * np.asarray(contrast, np.float32) + mean
    return np.clip(y, 0.0, 1.0) if clip else y


def _grayscale(x):
    """Every band replaced by the mean over bands."""
    return np.broadcast_to(x.mean(axis=-1, keepdims=True, dtype=np.float32), x.shape).copy()


def _solarize(x, threshold=0.5):
    """x ≥ threshold → 1 − x."""
    return np.where(x >= threshold, np.float32(1) - x, x).astype(np.float32)


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


def test_crop_and_resize_matches_direct_bilinear(resize_path):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 1000, (30, 40, 3)).astype(np.uint16)
    for box, out in [((3, 5, 17, 23), 9), ((0, 0, 30, 40), (11, 7)), ((10, 20, 6, 5), 13),
                     ((2, 2, 8, 8), 8)]:
        top, left, h, w = box
        want = _bilinear_reference(image[top:top + h, left:left + w].astype(np.float64),
                                   *aug.pair(out))
        got = _crop_and_resize(image, box, out)
        assert got.dtype == np.float32 and got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-3)
        np.testing.assert_allclose(_crop_and_resize(image, box, out, hflip=True),
                                   want[:, ::-1], rtol=1e-5, atol=1e-3)
        np.testing.assert_allclose(_crop_and_resize(image, box, out, vflip=True),
                                   want[::-1], rtol=1e-5, atol=1e-3)


def test_crop_and_resize_matches_torch_interpolate(resize_path):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    image = rng.random((50, 60, 13), dtype=np.float32)
    for box, out in [((4, 7, 37, 45), 24), ((10, 3, 12, 15), 32), ((0, 0, 50, 60), (20, 25)),
                     ((1, 2, 30, 40), (15, 20)), ((0, 0, 50, 60), (50, 17)), ((5, 5, 3, 2), 7)]:
        top, left, h, w = box
        crop = torch.from_numpy(np.ascontiguousarray(image[top:top + h, left:left + w]))
        want = torch.nn.functional.interpolate(crop.permute(2, 0, 1)[None], size=aug.pair(out),
                                               mode="bilinear", align_corners=False,
                                               antialias=False)[0].permute(1, 2, 0).numpy()
        np.testing.assert_allclose(_crop_and_resize(image, box, out), want, atol=1e-5)


def test_antialiased_crop_and_resize_matches_torch_interpolate_antialias():
    """GFM's and PerA's crops (PIL / torchvision antialias=True): shrinking axes average under a
    triangle as wide as the scale, growing ones are plain bilinear; flips reverse the output."""
    torch = pytest.importorskip("torch")
    image = np.random.default_rng(2).random((70, 60, 13), dtype=np.float32)
    for box, out in [((4, 7, 60, 50), 24), ((0, 0, 70, 60), (35, 90)), ((3, 1, 50, 41), (49, 7)),
                     ((5, 5, 9, 8), 20)]:
        top, left, h, w = box
        crop = torch.from_numpy(np.ascontiguousarray(image[top:top + h, left:left + w]))
        want = torch.nn.functional.interpolate(crop.permute(2, 0, 1)[None], size=aug.pair(out),
                                               mode="bilinear", align_corners=False,
                                               antialias=True)[0].permute(1, 2, 0).numpy()
        np.testing.assert_allclose(_crop_and_resize(image, box, out, antialias=True), want,
                                   atol=5e-6)
        np.testing.assert_allclose(_crop_and_resize(image, box, out, True, True, antialias=True),
                                   want[::-1, ::-1], atol=5e-6)
    shrunk = _crop_and_resize(image, (0, 0, 70, 60), 20)
    assert np.abs(shrunk - _crop_and_resize(image, (0, 0, 70, 60), 20, antialias=True)).max() > 0.05


# ----- photometric ------------------------------------------------------------------------------
def test_reference_brightness_contrast_math():
    x = np.array([[[0.2, 0.5], [0.4, 0.9]]], np.float32)      # (1, 2, 2)
    y = _brightness_contrast(x, 1.2, 0.5, clip=False)
    np.testing.assert_allclose(y[0, :, 0], [0.3, 0.42], rtol=1e-6)   # band means 0.36, 0.84
    per_band = _brightness_contrast(x, np.array([1.0, 2.0]), np.array([1.0, 0.0]), clip=False)
    np.testing.assert_allclose(per_band[..., 0], x[..., 0], rtol=1e-6)
    np.testing.assert_allclose(per_band[..., 1], [[1.4, 1.4]], rtol=1e-6)   # flat at 2·mean
    assert _brightness_contrast(x, 1.4, 1.4).max() == 1.0


@pytest.mark.parametrize("opencv", [True, False])
@pytest.mark.parametrize("sigma,shape", [(0.1, (33, 29, 4)), (0.7, (33, 29, 4)),
                                         (1.9, (70, 41, 2)), (1.9, (5, 4, 3)),
                                         (1.3, (40, 37, 13)), (2.0, (24, 20, 1))])
def test_gaussian_blur_matches_scipy_gaussian_filter1d(sigma, shape, opencv, monkeypatch):
    """Both paths (OpenCV's sepFilter2D and the banded matmuls) equal scipy's filter in mode
    "mirror" (cv2.GaussianBlur's BORDER_REFLECT_101: the edge pixel is not repeated)."""
    if opencv and blur.cv2 is None:
        pytest.skip("OpenCV not installed")
    if not opencv:
        monkeypatch.setattr(blur, "cv2", None)
    x = np.random.default_rng(0).random(shape, dtype=np.float32)   # (5, 4): radius 6 > size
    want = ndimage.gaussian_filter1d(x.astype(np.float64), sigma, axis=0, mode="mirror",
                                     truncate=3.0)
    want = ndimage.gaussian_filter1d(want, sigma, axis=1, mode="mirror", truncate=3.0)
    got = blur.gaussian_blur(x, sigma)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, want, atol=1e-6)
    cv2 = pytest.importorskip("cv2")
    side = 2 * int(3 * sigma + 0.5) + 1     # SSL4EO-S12's cv2.GaussianBlur, at geossl's radius
    if side // 2 < min(shape[:2]):
        ref = cv2.GaussianBlur(x, (side, side), sigma).reshape(shape)
        np.testing.assert_allclose(got, ref, atol=2e-6)
    k = blur.gaussian_kernel(1.0)
    assert len(k) == 7 and abs(k.sum() - 1) < 1e-12


def test_sample_dropped_bands_bounds_and_errors():
    rng = np.random.default_rng(0)
    for _ in range(200):
        d = aug.sample_dropped_bands(rng, 13, 1, 6)
        assert 1 <= len(d) <= 6 and len(set(d)) == len(d) and list(d) == sorted(d)
        assert all(0 <= i < 13 for i in d)
    assert aug.sample_dropped_bands(rng, 2, 2, 2) == (0, 1)
    with pytest.raises(ValueError, match=r"<= 2 \(the number of bands\), found min=1, max=6"):
        aug.sample_dropped_bands(rng, 2, 1, 6)
    off = aug.sample_photometric(np.random.default_rng(0), aug.Photometric(), 13)
    assert off["dropped"] == ()


# ----- fused views ------------------------------------------------------------------------------
def _reference_view(image, bands_in, bands, norm, nodata, jitter_clip, params, size):
    """The unfused chain: normalise → crop/resize/flip → jitter → gray → blur → solarize → drop."""
    x = bl.normalize(bl.select_bands(image, bands_in, bands), bands, norm, nodata=nodata)
    x = _bilinear_reference(x[params.box[0]:params.box[0] + params.box[2],
                              params.box[1]:params.box[1] + params.box[3]].astype(np.float64),
                            size, size).astype(np.float32)
    if params.hflip:
        x = x[:, ::-1]
    if params.vflip:
        x = x[::-1]
    if params.brightness is not None:
        x = _brightness_contrast(x, params.brightness, params.contrast, clip=jitter_clip)
    if params.gray:
        x = _grayscale(x)
    if params.blur_sigma is not None:
        x = blur.gaussian_blur(x, params.blur_sigma)
    if params.solarize:
        x = _solarize(x)
    x = np.array(x)
    x[..., list(params.dropped)] = 0.0
    return x


@pytest.mark.parametrize("norm,per_band,l2a", [("softcon", False, False),
                                               ("meanstd", True, True)])
def test_render_view_equals_unfused_chain(norm, per_band, l2a, resize_path):
    policy = aug.Photometric(jitter_p=0.7, per_band=per_band, gray_p=0.4, blur_p=0.6,
                             solarize_p=0.4, channel_drop_p=0.5, channel_drop_min=1,
                             channel_drop_max=4)
    stored = bl.S2_L2A if l2a else bl.S2_L1C
    rng = np.random.default_rng(3)
    image = rng.integers(0, 9000, (31, 27, len(stored))).astype(np.uint16)
    image[3:6, 4:9, 2] = 0                                     # no-data patch
    plan = aug.band_plan(stored, bl.S2_L1C, norm)
    seen = set()
    for i in range(12):
        geo = aug.sample_geometry(rng, 31, 27, (0.08, 1.0), (3 / 4, 4 / 3), 0.5, 0.5)
        p = aug.ViewParams(**geo, **aug.sample_photometric(rng, policy, 13))
        seen |= {p.gray, p.blur_sigma is not None, p.solarize, p.brightness is not None,
                 bool(p.dropped)}
        got = aug.render_view(image, plan, p, 20, nodata=0.0, jitter_clip=not l2a)
        want = _reference_view(image, stored, bl.S2_L1C, norm, 0.0, not l2a, p, 20)
        assert got.shape == (20, 20, 13) and got.dtype == np.float32 and got.flags.c_contiguous
        np.testing.assert_allclose(got, want, atol=2e-5, err_msg=f"view {i}: {p}")
    assert seen == {True, False}


def test_record_helpers_errors():
    with pytest.raises(ValueError, match=r"record r1: expected image \(T, H, W, C\), found"):
        aug.record_image({"image": np.zeros((4, 4, 13)), "key": "r1"})
    record = {"image": np.zeros((1, 4, 4, 12), np.uint16), "bands": list(bl.S2_L2A)}
    assert aug.record_band_plan(record, bl.S2_L1C, "softcon").index[10] == -1
    with pytest.raises(ValueError, match="B10"):
        aug.record_band_plan(record, bl.S2_L1C, "softcon", zero_fill_b10=False)
