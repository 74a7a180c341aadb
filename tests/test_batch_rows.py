"""Views rendered straight into the batch being stacked (geossl.data.batch_rows, the kernels'
``out=``): the same values as a new array, and no copy where a row was offered."""

import functools

import numpy as np
import pytest

from geossl.data import augment as aug
from geossl.data import bands as bl
from geossl.data import batch_rows, blur, pipeline
from geossl.objectives import dense_views, softcon_views


def _draws(rng, policy, channels, n, height=31, width=27):
    for _ in range(n):
        geo = aug.sample_geometry(rng, height, width, (0.08, 1.0), (3 / 4, 4 / 3), 0.5, 0.5)
        yield aug.ViewParams(**geo, **aug.sample_photometric(rng, policy, channels))


@pytest.mark.parametrize("norm", ["softcon", "meanstd"])
def test_render_view_into_a_row_equals_a_new_view(norm, resize_path):
    """Every path of render_view (in place, blur, grayscale, flips, dropped bands, no-data, a
    resize to the crop's own size) writes into ``out`` exactly the values it returns without."""
    policy = aug.Photometric(jitter_p=0.7, gray_p=0.4, blur_p=0.6, solarize_p=0.4,
                             channel_drop_p=0.5, channel_drop_min=1, channel_drop_max=4)
    rng = np.random.default_rng(5)
    image = rng.integers(0, 9000, (31, 27, 13)).astype(np.uint16)
    image[3:6, 4:9, 2] = 0
    plan = aug.band_plan(bl.S2_L1C, bl.S2_L1C, norm)
    batch = np.full((3, 20, 20, 13), np.nan, np.float32)
    seen = set()
    for i, p in enumerate(_draws(rng, policy, 13, 64)):
        seen |= {(p.gray, p.blur_sigma is not None, p.hflip or p.vflip)}
        want = aug.render_view(image, plan, p, 20, nodata=0.0)
        got = aug.render_view(image, plan, p, 20, nodata=0.0, out=batch[1])
        assert np.shares_memory(got, batch) and got.shape == (20, 20, 13)
        np.testing.assert_array_equal(batch[1], want, err_msg=f"view {i}: {p}")
        batch[1] = np.nan
    assert len(seen) == 8                  # every combination of gray, blur, flip was drawn
    assert np.isnan(batch[[0, 2]]).all()   # nothing written outside the row
    same_size = aug.ViewParams(box=(0, 0, 20, 20), hflip=True)
    np.testing.assert_array_equal(aug.render_view(image, plan, same_size, 20, out=batch[0]),
                                  aug.render_view(image, plan, same_size, 20))


@pytest.mark.parametrize("gray", [False, True])
def test_rgb_jitter_view_into_a_row_equals_a_new_view(gray):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (40, 40, 3)).astype(np.uint8)
    plan = aug.band_plan(("R", "G", "B"), ("R", "G", "B"), "meanstd")
    params = aug.ViewParams(box=(3, 5, 30, 28), hflip=True, brightness=1.3, contrast=0.7,
                            saturation=1.15, hue=0.08, jitter_order=(2, 0, 3, 1), rgb=True,
                            gray=gray, blur_sigma=0.8)
    out = np.zeros((16, 16, 3), np.float32)
    got = aug.render_view(image, plan, params, 16, out=out)
    assert got is out
    np.testing.assert_array_equal(out, aug.render_view(image, plan, params, 16))


def test_gaussian_blur_into_out_and_onto_its_own_input(resize_path):
    x = np.random.default_rng(0).random((33, 29, 4), dtype=np.float32)
    want = blur.gaussian_blur(x, 1.3)
    out = np.empty_like(x)
    assert blur.gaussian_blur(x, 1.3, out=out) is out
    np.testing.assert_array_equal(out, want)
    same = x.copy()
    assert blur.gaussian_blur(same, 1.3, out=same) is same     # overlapping: through a copy
    np.testing.assert_array_equal(same, want)
    np.testing.assert_array_equal(blur.gaussian_blur(x, 0.1, out=out), x)   # radius 0


def test_claim_takes_a_matching_row_once_and_only_while_offered():
    rows = {"view1": np.zeros((4, 4, 2), np.float32)}
    assert batch_rows.claim("view1", (4, 4, 2), np.float32) is None
    with batch_rows.offering(rows):
        assert batch_rows.claim("view1", (4, 4, 3), np.float32) is None     # another shape
        assert batch_rows.claim("view1", (4, 4, 2), np.float64) is None     # another dtype
        assert batch_rows.claim("view2", (4, 4, 2), np.float32) is None     # not offered
        with batch_rows.offering(None):                                     # a nested stack
            assert batch_rows.claim("view1", (4, 4, 2), np.float32) is None
        assert batch_rows.claim("view1", (4, 4, 2), np.float32) is rows["view1"]
        assert batch_rows.claim("view1", (4, 4, 2), np.float32) is None     # taken
    assert batch_rows.claim("view1", (4, 4, 2), np.float32) is None


def _records(n=5, size=48, seasons=2):
    rng = np.random.default_rng(1)
    return [{"image": rng.integers(0, 6000, (seasons, size, size, 13)).astype(np.uint16),
             "bands": list(bl.S2_L1C), "labels": np.array([i % 9]), "key": f"r{i}"}
            for i in range(n)]


@pytest.mark.parametrize("sampler", ["softcon", "dense"])
def test_stack_renders_samples_into_the_batch_without_a_copy(sampler):
    """Samples 1.. of a stacked batch are rendered in their rows (their returned views are the
    batch's memory); the batch equals the stack of the same samples rendered beforehand."""
    if sampler == "softcon":
        cfg = softcon_views.ViewConfig(img_size=32, blur_p=(0.5, 0.5), gray_p=0.3)
        view_fn = functools.partial(softcon_views.two_view_sample, cfg=cfg)
    else:
        cfg = dense_views.DenseViewConfig(img_size=32)
        view_fn = functools.partial(dense_views.two_view_sample, cfg=cfg)
    records, kept = _records(), []

    def made(seed):
        rng = np.random.default_rng(seed)
        for i in range(6):
            kept.append(view_fn(records[i % len(records)], rng))
            yield kept[-1]

    batch = pipeline.stack(made(0), size=6)
    rng = np.random.default_rng(0)
    want = pipeline.stack([view_fn(records[i % len(records)], rng) for i in range(6)])
    assert batch.keys() == want.keys()
    for k in batch:
        np.testing.assert_array_equal(batch[k], want[k], err_msg=k)
    for key in ("view1", "view2"):
        in_place = [np.shares_memory(sample[key], batch[key]) for sample in kept]
        assert in_place == [False] + [True] * 5, key


def test_a_sampler_that_returns_another_array_is_copied_and_nested_stacks_keep_their_rows():
    """A row that is claimed but not returned is overwritten by the returned value; a sampler
    that stacks a batch of its own neither takes the outer rows nor loses them."""
    def sampler(i):
        row = batch_rows.claim("x", (2, 3), np.float32)
        if row is not None:
            row[:] = -1                                # claimed, then a new array returned
        inner = pipeline.stack(({"y": np.full((2, 3), j, np.float32)} for j in range(3)), size=3)
        return {"x": np.full((2, 3), i, np.float32), "inner": inner["y"].sum(0)}

    batch = pipeline.stack((sampler(i) for i in range(4)), size=4)
    np.testing.assert_array_equal(batch["x"][:, 0, 0], [0, 1, 2, 3])
    np.testing.assert_array_equal(batch["inner"], np.full((4, 2, 3), 3, np.float32))
