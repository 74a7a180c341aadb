"""RGB colour jitter against torchvision, and the photometric unit domain of each normalisation."""

import dataclasses

import numpy as np
import pytest

from geossl.data import augment, bands, colour
from geossl.objectives import pera_views

torch = pytest.importorskip("torch")
TF = pytest.importorskip("torchvision.transforms.functional")
T = pytest.importorskip("torchvision.transforms")


def _image(seed=0, size=24):
    """(H, W, 3) float32 in [0, 1] with grey, black, white and saturated pixels mixed in."""
    x = np.random.default_rng(seed).random((size, size, 3), dtype=np.float32)
    x[0, :3] = 0.5                    # grey: hue undefined
    x[1, 0], x[1, 1] = 0.0, 1.0       # black, white
    x[1, 2] = (1.0, 0.0, 0.0)         # pure hues on the sector borders
    x[1, 3] = (1.0, 1.0, 0.0)
    x[1, 4] = (0.0, 1.0, 1.0)
    x[1, 5] = (1.0, 0.0, 1.0)
    x[2, :4] = x[2, :4, :1]           # grey again, other levels
    return x


def _torch(x):
    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))


def _numpy(t):
    return t.numpy().transpose(1, 2, 0)


@pytest.mark.parametrize("name,factor", [("brightness", 0.6), ("brightness", 1.4),
                                         ("contrast", 0.6), ("contrast", 1.4),
                                         ("saturation", 0.8), ("saturation", 1.2),
                                         ("hue", -0.1), ("hue", 0.07), ("hue", 0.5)])
def test_each_operation_equals_torchvision(name, factor):
    x = _image(1)
    ours = getattr(colour, f"adjust_{name}")(x.copy(), factor)
    ref = _numpy(getattr(TF, f"adjust_{name}")(_torch(x), factor))
    np.testing.assert_allclose(ours, ref, atol=2e-6)
    assert ours.dtype == np.float32 and ours.min() >= 0 and ours.max() <= 1


def test_hsv_round_trip_and_known_values():
    x = _image(2)
    np.testing.assert_allclose(colour.hsv_to_rgb(colour.rgb_to_hsv(x)), x, atol=1e-6)
    hsv = colour.rgb_to_hsv(np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [0.5, 0.5, 0.5],
                                      [1, 0.5, 0]], np.float32))
    np.testing.assert_allclose(hsv, [[0, 1, 1], [1 / 3, 1, 1], [2 / 3, 1, 1], [0, 0, 0.5],
                                     [1 / 12, 1, 1]], atol=1e-6)


@pytest.mark.parametrize("seed", range(6))
def test_jitter_equals_torchvision_color_jitter_with_its_own_draws(seed):
    """ColorJitter(0.4, 0.4, 0.2, 0.1) under a torch seed = colour.jitter with the order and
    factors that ColorJitter.get_params draws under the same seed."""
    x = _image(seed)
    cj = T.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1)
    torch.manual_seed(seed)
    ref = _numpy(cj(_torch(x)))
    torch.manual_seed(seed)
    order, b, c, s, h = T.ColorJitter.get_params(cj.brightness, cj.contrast, cj.saturation, cj.hue)
    ours = colour.jitter(x.copy(), [int(i) for i in order], b, c, s, h)
    np.testing.assert_allclose(ours, ref, atol=3e-6)


def test_rgb_draws_follow_torchvision_ranges_and_refuse_other_band_counts():
    policy = augment.Photometric(jitter_p=1.0, gray_p=0.0, saturation=0.2, hue=0.1, rgb=True)
    rng = np.random.default_rng(0)
    draws = [augment.sample_photometric(rng, policy, 3) for _ in range(400)]
    for name, lo, hi in (("brightness", 0.6, 1.4), ("contrast", 0.6, 1.4),
                         ("saturation", 0.8, 1.2), ("hue", -0.1, 0.1)):
        v = np.array([d[name] for d in draws])
        assert lo <= v.min() < lo + 0.05 and hi - 0.05 < v.max() <= hi, name
    orders = {d["jitter_order"] for d in draws}
    assert all(sorted(o) == [0, 1, 2, 3] for o in orders) and len(orders) == 24
    with pytest.raises(ValueError, match="expected 3 bands .* found 13 bands"):
        augment.sample_photometric(rng, policy, 13)
    with pytest.raises(ValueError, match=r"jitter_per_band\) False, found True"):
        dataclasses.replace(policy, per_band=True)


def _rgb_record(seed=0, size=40):
    img = np.random.default_rng(seed).integers(0, 256, (1, size, size, 3)).astype(np.uint8)
    return {"image": img, "bands": ("R", "G", "B"), "key": "rgb-0"}


@pytest.mark.parametrize("gray", [False, True])
def test_rgb_view_equals_torchvision_totensor_colorjitter_grayscale_normalize(gray):
    """An 8-bit R, G, B view (meanstd: ImageNet statistics) with drawn jitter = torchvision's
    x / 255 → ColorJitter → Grayscale(3) → Normalize(ImageNet) on the same crop."""
    record = _rgb_record()
    plan = augment.record_band_plan(record, ("R", "G", "B"), "meanstd")
    assert plan.bounded and plan.to_norm is not None
    geo = dict(box=(3, 5, 30, 28), hflip=True, vflip=False)
    raw = augment.render_geometry(record["image"][0], plan, augment.ViewParams(**geo), 16)
    params = augment.ViewParams(**geo, brightness=1.3, contrast=0.7, saturation=1.15, hue=0.08,
                                jitter_order=(2, 0, 3, 1), rgb=True, gray=gray)
    ours = augment.render_photometric(raw.copy(), plan, params)

    t = _torch(raw / np.float32(255))
    for i in params.jitter_order:
        fn = ("adjust_brightness", "adjust_contrast", "adjust_saturation", "adjust_hue")[i]
        t = getattr(TF, fn)(t, (1.3, 0.7, 1.15, 0.08)[i])
    if gray:
        t = TF.rgb_to_grayscale(t, num_output_channels=3)
    t = TF.normalize(t, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    np.testing.assert_allclose(ours, _numpy(t), atol=2e-5)
    # without jitter: plain ImageNet normalisation of the crop
    plain = augment.render_photometric(raw.copy(), plan, augment.ViewParams(**geo))
    np.testing.assert_allclose(plain, (raw / 255 - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225],
                               atol=2e-5)


def test_meanstd_multispectral_jitter_is_not_clipped_to_unit_range():
    """Standardised bands have no [0, 1] range: brightness / contrast act on them unclipped."""
    names = bands.S2_L1C[:4]
    plan = augment.band_plan(names, names, "meanstd")
    assert not plan.bounded and plan.to_norm is None
    raw = np.random.default_rng(0).uniform(0, 4000, (8, 8, 4)).astype(np.float32)
    z = raw * plan.scale + plan.offset
    out = augment.render_photometric(raw.copy(), plan, augment.ViewParams(box=(0, 0, 8, 8),
                                                                           brightness=1.2,
                                                                           contrast=0.8))
    expect = 0.8 * 1.2 * z + 0.2 * 1.2 * z.mean(axis=(0, 1))
    np.testing.assert_allclose(out, expect, rtol=1e-5, atol=1e-5)
    assert out.min() < -0.5 and out.max() > 1.5


def test_unit_domains():
    s, o, bounded = bands.unit_coefficients(("R", "G", "B"), "none")
    np.testing.assert_allclose(s, 1 / 255) and np.testing.assert_array_equal(o, 0)
    assert bounded and bands.unit_to_norm(("R", "G", "B"), "none")[0][0] == pytest.approx(255)
    soft = bands.unit_coefficients(bands.S2_L1C, "softcon")
    np.testing.assert_array_equal(soft[0], bands.norm_coefficients(bands.S2_L1C, "softcon")[0])
    assert soft[2] and bands.unit_to_norm(bands.S2_L1C, "softcon") is None


def test_pera_multi_crop_renders_rgb_jitter_for_rgb_policies():
    """The PerA sampler with rgb policies: student versions jittered (hue moves), teacher mostly
    not; every pixel is a valid ImageNet-normalised value of [0, 1] intensities."""
    cfg = pera_views.MultiCropConfig(global_size=16, local_size=8, num_local=2,
                                     bands=("R", "G", "B"), norm="meanstd", rgb_jitter=True)
    assert cfg.student.rgb and cfg.teacher.rgb
    out = pera_views.multi_crop_sample(_rgb_record(3), np.random.default_rng(0), cfg)
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    for v in out.values():
        unit = v * std + mean
        assert unit.min() > -1e-5 and unit.max() < 1 + 1e-5
    assert not np.allclose(out["global_student"], out["global_teacher"])
