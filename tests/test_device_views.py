"""Views rendered inside the step equal the host's numpy views drawn from the same seed."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from geossl.data import augment, bands, blur, device_views, pipeline
from geossl.objectives import softcon_views
from geossl.objectives.softcon_views import ViewConfig


def _record(rng, t=3, h=37, w=41, band_names=bands.S2_L1C, dtype=np.uint16, key="loc"):
    if np.dtype(dtype).kind == "f":
        image = rng.normal(-15, 5, (t, h, w, len(band_names))).astype(dtype)
    else:
        image = rng.integers(0, 7000, (t, h, w, len(band_names))).astype(dtype)
    return {"image": image, "bands": list(band_names), "labels": np.array([0, 4]), "key": key}


_render = jax.jit(device_views.render_views, static_argnums=2)


def _device(sample, cfg, view):
    return np.asarray(_render(jnp.asarray(sample[f"raw{view}"])[None],
                              jnp.asarray(sample[f"view_params{view}"])[None],
                              cfg.render_spec()))[0]


CASES = {
    "softcon": (ViewConfig(img_size=24), {}),
    "per_band_jitter_solarize_vflip": (ViewConfig(
        img_size=16, jitter_per_band=True, solarize_p=(0.5, 0.5), vflip=True, gray_p=0.5,
        blur_p=(0.5, 0.5), crop_scale=(0.2, 1.0)), {}),
    "meanstd_no_clip": (ViewConfig(img_size=20, norm="meanstd", jitter_clip=False), {}),
    "l2a_zero_b10": (ViewConfig(img_size=16), {"band_names": bands.S2_L2A}),
    "s1_nan_mean_fill": (ViewConfig(img_size=16, bands=bands.S1, nodata_fill="mean"),
                         {"band_names": bands.S1, "dtype": np.float32, "nan": True}),
    "nodata_zero_value": (ViewConfig(img_size=16, nodata=0.0), {"zeros": True}),
    "upsample_tiny_blur": (ViewConfig(img_size=5, crop_scale=(0.01, 0.05)), {}),
    "padded_raw": (ViewConfig(img_size=16, raw_size=48), {}),
    "channel_drop": (ViewConfig(img_size=16, channel_drop_p=0.6), {}),
    "channel_drop_gray_meanstd": (ViewConfig(img_size=16, norm="meanstd", gray_p=0.5,
                                             channel_drop_p=0.7, channel_drop_min=2,
                                             channel_drop_max=13), {}),
    "channel_drop_s1": (ViewConfig(img_size=12, bands=bands.S1, channel_drop_p=0.5,
                                   channel_drop_max=1),
                        {"band_names": bands.S1, "dtype": np.float32}),
    "independent_seasons_t2": (ViewConfig(img_size=16, distinct_seasons=False), {"t": 2}),
    "distinct_seasons_t2": (ViewConfig(img_size=16, distinct_seasons=True), {"t": 2}),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_device_views_equal_host_views(name):
    cfg, opts = CASES[name]
    opts = dict(opts)
    nan, zeros = opts.pop("nan", False), opts.pop("zeros", False)
    worst, dropped, same_season = 0.0, 0, 0
    for seed in range(12):
        record = _record(np.random.default_rng(100 + seed), **opts)
        if nan:
            record["image"][:, 3:20, 5:9, 0] = np.nan
        if zeros:
            record["image"][:, :15, :, 2] = 0
        host = softcon_views.two_view_sample(record, np.random.default_rng(seed), cfg)
        raw = softcon_views.raw_two_view_sample(record, np.random.default_rng(seed), cfg)
        views = softcon_views.two_view_draws(record, np.random.default_rng(seed), cfg)
        dropped += sum(len(v[3].dropped) > 0 for v in views)
        same_season += views[0][0] == views[1][0]
        assert raw["raw1"].shape[-1] == len(cfg.bands)
        if cfg.raw_size:
            assert raw["raw1"].shape[:2] == (cfg.raw_size, cfg.raw_size)
        for view in (1, 2):
            np.testing.assert_array_equal(raw[f"labels{view}"], host[f"labels{view}"])
            got = _device(raw, cfg, view)
            assert got.shape == host[f"view{view}"].shape and np.isfinite(got).all()
            want = host[f"view{view}"]   # float32 rounding, relative to the value's size
            worst = max(worst, float((np.abs(got - want) / (1 + np.abs(want))).max()))
    assert worst < 5e-5, worst
    assert (dropped > 0) == (cfg.channel_drop_p > 0)     # the drop is exercised where enabled
    if cfg.distinct_seasons:
        assert same_season == 0
    elif "t" in opts:
        assert same_season > 0                           # the same season twice, drawn freely


def test_pack_params_layout():
    params = augment.ViewParams(box=(3, 4, 20, 30), hflip=True, vflip=False, brightness=1.2,
                                contrast=np.array([0.9, 1.1]), gray=True, blur_sigma=0.7,
                                solarize=False, dropped=(1,))
    p = device_views.pack_params(params, 2)
    assert p.tolist() == pytest.approx([3, 4, 20, 30, 1, 0, 1, 1, 0.7, 0, 1.2, 1.2, 0.9, 1.1,
                                        1, 0])
    plain = device_views.pack_params(augment.ViewParams(box=(0, 0, 5, 5)), 2)
    assert plain[6] == 0 and plain[8] == 0 and plain[10:].tolist() == [1] * 6


def test_render_views_rejects_a_packed_vector_of_the_wrong_length():
    spec = ViewConfig(img_size=8, bands=bands.S1).render_spec()
    with pytest.raises(ValueError, match=r"expected raw \(..., 2\) and params \(..., 16\)"):
        device_views.render_views(jnp.zeros((1, 8, 8, 2)), jnp.zeros((1, 14)), spec)


def test_blur_weights_match_numpy_kernel():
    for sigma in (0.1, 0.4, 1.0, 1.7, 2.0):
        k = np.asarray(device_views.blur_weights(jnp.float32(sigma), 3.0, 2.0))
        ref = blur.gaussian_kernel(sigma, 3.0)
        r = len(ref) // 2
        np.testing.assert_allclose(k[6 - r:6 + r + 1], ref, rtol=1e-5, atol=1e-7)
        assert np.all(k[:6 - r] == 0) and np.all(k[6 + r + 1:] == 0)
    assert np.asarray(device_views.blur_weights(jnp.float32(0.0), 3.0, 2.0)).tolist() == \
        [0.0] * 6 + [1.0] + [0.0] * 6


def test_raw_size_smaller_than_record_is_an_error():
    cfg = ViewConfig(img_size=16, raw_size=32)
    record = _record(np.random.default_rng(0), h=40, w=30, key="big-one")
    with pytest.raises(ValueError, match=r"big-one.*40x30.*raw_size=32"):
        softcon_views.raw_two_view_sample(record, np.random.default_rng(0), cfg)


def test_views_setting():
    assert device_views.views_on_device("device") and not device_views.views_on_device("host")
    assert device_views.views_on_device("auto") == (jax.default_backend() != "cpu")
    with pytest.raises(ValueError, match="expected one of"):
        device_views.views_on_device("gpu")


def test_softcon_step_inputs_equal_in_both_modes():
    """The objective's device-mode batch renders, inside jit, to its host-mode views."""
    from configs.softcon import softcon
    from geossl import objectives
    rng = np.random.default_rng(0)
    records = [_record(rng, t=4, h=40, w=40, key=f"r{i}") for i in range(4)]
    batches = {}
    for mode in ("host", "device"):
        c = softcon("vit_tiny_patch16", "demo", optim="adamw", lr=1e-3)
        c.data.views = mode
        obj = objectives.create(c)
        samples = [obj.make_views(r, np.random.default_rng(i)) for i, r in enumerate(records)]
        batch = pipeline.stack(samples)
        render = jax.jit(lambda b: [obj._view(b, 1), obj._view(b, 2)])
        batches[mode] = [np.asarray(v) for v in render(batch)]
        assert ("raw1" in batch) == (mode == "device")
    for host, device in zip(batches["host"], batches["device"]):
        assert host.shape == (4, 32, 32, 13)
        np.testing.assert_allclose(device, host, atol=2e-5)


def test_view_config_forwards_data_fields():
    from configs.softcon import softcon
    from geossl import objectives

    def _view_config(c):
        return objectives.create(c).view_config

    c = softcon("vit_tiny_patch16", "demo", optim="adamw", lr=1e-3)
    default = dataclasses.asdict(_view_config(c))
    assert not default["distinct_seasons"] and default["channel_drop_p"] == 0.0
    assert (default["channel_drop_min"], default["channel_drop_max"]) == (1, 6)
    c.data.raw_size = 64
    c.data.distinct_seasons = True
    c.data.channel_drop_p, c.data.channel_drop_min, c.data.channel_drop_max = 0.5, 2, 4
    got = dataclasses.asdict(_view_config(c))
    assert got["raw_size"] == 64 and got["distinct_seasons"]
    assert (got["channel_drop_p"], got["channel_drop_min"], got["channel_drop_max"]) == (0.5, 2, 4)
