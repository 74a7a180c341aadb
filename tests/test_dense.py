"""Dense objective: positive pairs see the same ground point (flips, non-overlap excluded), class
maps move with their images, and one shared-trainer step whose loss terms equal numpy."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import dense_rn50, dense_vit_s
from geossl import models, objectives
from geossl.data import augment, synthetic, views
from geossl.errors import ConfigError
from geossl.objectives import dense, dense_views
from geossl.parallel import mesh as mesh_lib
from geossl.parallel.multihost import global_batch
from geossl.train.loop import build_trainer

S = 16        # view size in the geometry tests
GROUND = 40   # acquisition size in the geometry tests


# ----- positive pairs ---------------------------------------------------------------------------
def coordinate_record():
    """One acquisition whose two bands are each pixel's ground row and column (pixel centres),
    so a rendered view holds, at each of its pixels, the ground point it sees."""
    yy, xx = np.mgrid[0:GROUND, 0:GROUND].astype(np.float32) + 0.5
    return {"image": np.stack([yy, xx], axis=-1)[None], "bands": ["B2", "B3"], "key": "coords"}


def coordinate_views():
    """Dense samples of the coordinate record, no photometric change, independent crops."""
    cfg = dense_views.DenseViewConfig(
        img_size=S, bands=("B2", "B3"), norm="none", crop_scale=(0.15, 0.6), min_overlap=0.0,
        jitter_p=0.0, gray_p=0.0, blur_p=(0.0, 0.0), flip=True, vflip=True)
    return [dense_views.two_view_sample(coordinate_record(), np.random.default_rng(seed), cfg)
            for seed in range(24)]


def avg_pool(x, f):
    b, h, w, c = x.shape
    return x.reshape(b, h // f, f, w // f, f, c).mean(axis=(2, 4))


@pytest.mark.parametrize("stride", [1, 4])
def test_positive_pairs_see_the_same_ground_point(stride):
    """Feature maps = the coordinate views (average-pooled by ``stride``): for every cell of view
    1, the objective's positive (bilinear in view 2) holds the ground point the query cell holds,
    and exactly the cells whose ground point lies outside view 2's crop are invalid."""
    obj = objectives.create(tiny_config())
    obj.grid_origin, obj.grid_pitch = stride / 2, stride   # an average-pooled map's cells
    samples = coordinate_views()
    flips = {tuple(s["geometry1"][4:]) for s in samples} | {tuple(s["geometry2"][4:]) for s in samples}
    assert flips == {(0, 0), (0, 1), (1, 0), (1, 1)}   # every flip combination is exercised
    x1 = avg_pool(np.stack([s["view1"] for s in samples]), stride)
    x2 = avg_pool(np.stack([s["view2"] for s in samples]), stride)
    g1 = np.stack([s["geometry1"] for s in samples])
    g2 = np.stack([s["geometry2"] for s in samples])
    n, g = len(samples), S // stride
    idx = np.tile(np.arange(g * g, dtype=np.int32), (n, 1))
    pair = jax.jit(obj.pair_features, static_argnums=5)
    q, k, valid = (np.asarray(a) for a in pair(x1, x2, idx, g1, g2, (S, S)))
    # the query cell's rendered content is the ground point the geometry says it is (interior
    # cells: the renderer clamps at the crop border)
    rows, cols = np.divmod(np.arange(g * g), g)
    centre = np.stack([(rows + 0.5) * stride, (cols + 0.5) * stride], axis=-1)   # view pixels
    interior = (rows > 0) & (rows < g - 1) & (cols > 0) & (cols < g - 1)
    for i in range(n):
        top, left, h, w, vf, hf = g1[i]
        u = np.where([vf, hf], S - centre, centre)
        ground = np.stack([top + u[:, 0] * h / S, left + u[:, 1] * w / S], axis=-1)
        np.testing.assert_allclose(q[i][interior], ground[interior], atol=1e-3)
        top2, left2, h2, w2 = g2[i, :4]
        inside = ((ground[:, 0] >= top2) & (ground[:, 0] <= top2 + h2)
                  & (ground[:, 1] >= left2) & (ground[:, 1] <= left2 + w2))
        np.testing.assert_array_equal(valid[i], inside)
        # away from view 2's border cells the positive holds the same ground point
        v = (ground - [top2, left2]) * S / [h2, w2]
        v = np.where(g2[i, 4:] > 0.5, S - v, v) / stride - 0.5          # view 2 cell coordinates
        deep = inside & np.all((v >= 1) & (v <= g - 2), axis=-1)
        np.testing.assert_allclose(k[i][deep], q[i][deep], atol=1e-3)
    assert 0.2 < valid.mean() < 0.95   # some cells fall outside the other crop, most do not
    assert any(0 < valid[i].mean() < 1 for i in range(n))   # partial overlaps are exercised


def test_feature_grid_is_where_each_cell_looks():
    """The cell centres the pairing uses. A ResNet's: the centre of the cell's receptive field,
    measured as the midpoint of the input gradient's support of an interior cell (not clipped by
    the border): its paddings centre stage s's cell j on pixel 2^(s+1)·j (origin 0.5 in pixel-edge
    coordinates, not pitch / 2, which put about half the positives a cell off with flips). A
    transformer's cells attend beyond their pixels: a cell is centred on its own patch."""
    size = 160
    x = jnp.asarray(np.random.default_rng(0).normal(size=(1, size, size, 1)), jnp.float32)
    model = models.create("resnet18", in_chans=1, stage_sizes=(1, 1, 1, 1), width=8)
    variables = model.init(jax.random.key(0), x)
    for stage in (1, 2, 3):
        origin, pitch = dense.feature_grid(model, False, stage)
        assert pitch == 2 ** (stage + 1)
        j = int(size / pitch) // 2
        grad = jax.grad(lambda z: model.apply(variables, z)["features"][stage - 1][0, j, j].sum())
        rows = np.flatnonzero(np.abs(np.asarray(grad(x)))[0, :, :, 0].sum(1) > 0)
        assert rows[0] > 0 and rows[-1] < size - 1, stage                # the field is whole
        assert (rows[0] + rows[-1] + 1) / 2 == origin + pitch * j, (stage, rows[0], rows[-1])
    swin = models.create("swin_tiny_patch4_window7_224", in_chans=1)
    assert [dense.feature_grid(swin, False, s) for s in (1, 2, 3, 4)] == [
        (2.0, 4.0), (4.0, 8.0), (8.0, 16.0), (16.0, 32.0)]
    assert dense.feature_grid(models.create("vit_small_patch14"), True, 4) == (7.0, 14.0)


# ----- class maps -------------------------------------------------------------------------------
def test_class_map_moves_with_its_image_nearest():
    """A class map rendered with a view's params takes, at each output pixel, the source pixel
    nearest to the ground point the bilinear view sees there; full-box flips mirror it exactly."""
    h, w = 23, 29
    ids = (np.arange(h * w).reshape(h, w) % 251).astype(np.uint8)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    image = np.stack([yy, xx], axis=-1)
    plan = augment.band_plan(("B2", "B3"), ("B2", "B3"), "none")
    rng = np.random.default_rng(0)
    for i in range(12):
        geo = augment.sample_geometry(rng, h, w, (0.1, 1.0), (0.5, 2.0), 0.5, 0.5)
        params = augment.ViewParams(**geo)
        size = (17, 13) if i % 2 else 40        # downsampled and upsampled
        view = augment.render_view(image, plan, params, size)
        got = augment.render_class_map(ids, params, size)
        assert got.dtype == np.uint8 and got.shape == view.shape[:2]
        src = np.floor(view + 0.5).astype(int)   # the source pixel the view's sample lies in
        top, left, bh, bw = params.box
        src[..., 0] = np.clip(src[..., 0], top, top + bh - 1)
        src[..., 1] = np.clip(src[..., 1], left, left + bw - 1)
        near = np.abs(view - np.floor(view) - 0.5) < 1e-3   # float ties: either pixel is nearest
        ok = ids[src[..., 0], src[..., 1]] == got
        assert (ok | near.any(-1)).all()
    full = augment.ViewParams(box=(0, 0, h, w), hflip=True, vflip=True)
    np.testing.assert_array_equal(augment.render_class_map(ids, full, (h, w)), ids[::-1, ::-1])
    up = augment.render_class_map(np.array([[1, 2], [3, 255]], np.uint8),
                                  augment.ViewParams(box=(0, 0, 2, 2), hflip=True), 4)
    np.testing.assert_array_equal(up, np.repeat(np.repeat([[2, 1], [255, 3]], 2, 0), 2, 1))


def test_views_carry_their_masks():
    """keep_masks: each view's mask is the record's land_cover through that view's geometry."""
    rec = synthetic.make_location(0, split="train", seasons=2, size=24, seed=0)
    cfg = dense_views.DenseViewConfig(img_size=16, keep_masks=True, seasons="distinct")
    sample = dense_views.two_view_sample(rec, np.random.default_rng(3), cfg)
    # replay the draws: acquisitions, then view 1 and view 2 (same rng order)
    rng = np.random.default_rng(3)
    acq = views.pick_acquisitions(rng, 2, "distinct")
    assert acq[0] != acq[1]
    for v in (1, 2):
        g = sample[f"geometry{v}"]
        params = augment.ViewParams(box=tuple(int(a) for a in g[:4]), vflip=bool(g[4]),
                                    hflip=bool(g[5]))
        want = augment.render_class_map(rec["land_cover"][acq[v - 1]], params, 16)
        np.testing.assert_array_equal(sample[f"mask{v}"], want)
    with pytest.raises(ValueError, match="land_cover"):
        dense_views.two_view_sample({k: v for k, v in rec.items() if k != "land_cover"},
                                    np.random.default_rng(0), cfg)


# ----- loss through the shared trainer ----------------------------------------------------------
def tiny_config(**objective):
    c = dense_vit_s.get_config("demo")
    c.model.update(dict(depth=1, embed_dim=32, num_heads=2, img_size=16, patch_size=4))
    c.objective.update(dict(num_locations=6, proj_hidden=32, proj_dim=16, image_weight=0.5,
                            **objective))
    c.data.min_overlap = 0.0
    c.global_batch = 8
    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, model=1))
    return c


def np_info_nce(q, k, valid, tau):
    """Mean over valid anchors a of −log softmax over valid keys c of q̂_a·k̂_c/τ at c = a."""
    qn = q / np.linalg.norm(q, axis=-1, keepdims=True)
    kn = k / np.linalg.norm(k, axis=-1, keepdims=True)
    cols = np.flatnonzero(valid)
    terms = []
    for a in cols:
        logits = np.array([qn[a] @ kn[c] for c in cols]) / tau
        m = logits.max()
        terms.append(m + np.log(np.exp(logits - m).sum()) - logits[list(cols).index(a)])
    return np.mean(terms) if terms else 0.0


def np_positive(fmap, geometry_q, geometry_k, cell, grid, size):
    """Positive of ``cell`` of the query view: (bilinear value in the key map, inside)."""
    r, c = divmod(int(cell), grid)
    u = np.array([(r + 0.5) * size / grid, (c + 0.5) * size / grid])
    u = np.where(geometry_q[4:] > 0.5, size - u, u)
    ground = geometry_q[:2] + u * geometry_q[2:4] / size
    v = (ground - geometry_k[:2]) * size / geometry_k[2:4]
    inside = bool(np.all((v >= 0) & (v <= size)))
    v = np.where(geometry_k[4:] > 0.5, size - v, v) * grid / size - 0.5
    v = np.clip(v, 0, grid - 1)
    r0, c0 = np.floor(v).astype(int)
    r1, c1 = min(r0 + 1, grid - 1), min(c0 + 1, grid - 1)
    fr, fc = v - [r0, c0]
    value = ((1 - fr) * ((1 - fc) * fmap[r0, c0] + fc * fmap[r0, c1])
             + fr * ((1 - fc) * fmap[r1, c0] + fc * fmap[r1, c1]))
    return value, inside


def test_trainer_step_loss_equals_numpy_and_reports_metrics():
    """One shared-trainer step (EMA teacher, image term on): finite loss with its terms and the
    overlap fraction; each term equals numpy on the same forwards and cell draws."""
    obj = objectives.create(tiny_config())
    recs = [synthetic.make_location(i, split="train", seasons=2, size=24, seed=0) for i in range(8)]
    samples = [obj.make_views(r, np.random.default_rng(i)) for i, r in enumerate(recs)]
    batch = {k: np.stack([s[k] for s in samples]) for k in samples[0]}
    mesh = mesh_lib.make_mesh(obj.config.mesh)
    trainer = build_trainer(obj.config, obj, mesh, {k: v[:2] for k, v in batch.items()})
    state = trainer.init_state()
    v = jax.device_get(state)
    new_state, metrics = trainer.train_step(state, global_batch(batch, mesh))
    m = {k: float(x) for k, x in metrics.items()}
    for name in ("loss", "loss_dense", "loss_image", "overlap_fraction", "momentum"):
        assert np.isfinite(m[name]), name
    assert int(new_state.step) == 1

    r_cells1, r_cells2, _, _ = jax.random.split(jax.random.fold_in(v.rng, 0), 4)

    forward = jax.jit(lambda w, x: obj.forward(w, x)[0])   # one compile, four calls
    student = {"params": v.params, "batch_stats": v.extra["batch_stats"]}
    s1, s2, t1, t2 = jax.device_get([forward(w, batch[f"view{i}"]) for w, i in (
        (student, 1), (student, 2), (v.teacher, 1), (v.teacher, 2))])
    idx1, idx2 = (obj.sample_cells(r, 8, (4, 4)) for r in (r_cells1, r_cells2))
    geo = {1: batch["geometry1"], 2: batch["geometry2"]}
    tau, dense, fractions = 0.2, [], []
    for (s, t, idx, a, b) in ((s1, t2, idx1, 1, 2), (s2, t1, idx2, 2, 1)):
        q, k, ok = [], [], []
        for i in range(8):
            for cell in np.asarray(idx)[i]:
                q.append(s["dense"][i].reshape(16, -1)[cell])
                value, inside = np_positive(t["dense"][i], geo[a][i], geo[b][i], cell, 4, 16)
                k.append(value)
                ok.append(inside)
        dense.append(np_info_nce(np.array(q, np.float64), np.array(k, np.float64),
                                 np.array(ok), tau))
        fractions.append(np.mean(ok))
    image = [np_info_nce(s["image"].astype(np.float64), t["image"].astype(np.float64),
                         np.ones(8, bool), tau) for s, t in ((s1, t2), (s2, t1))]
    np.testing.assert_allclose(m["loss_dense"], np.mean(dense), rtol=1e-4)
    np.testing.assert_allclose(m["loss_image"], np.mean(image), rtol=1e-4)
    np.testing.assert_allclose(m["loss"], np.mean(dense) + 0.5 * np.mean(image), rtol=1e-4)
    np.testing.assert_allclose(m["overlap_fraction"], np.mean(fractions), rtol=1e-6)
    assert 0.0 < m["overlap_fraction"] < 1.0


# ----- config -----------------------------------------------------------------------------------
@pytest.mark.parametrize("field,value,match", [
    ("teacher_mode", "frozen", "teacher_mode: expected one of"),
    ("temperature", 0.0, r"temperature: expected a number in \(0, inf\)"),
    ("feature_stage", 5, r"feature_stage: expected an integer in \[1, 4\]"),
])
def test_bad_objective_fields_are_named(field, value, match):
    c = dense_rn50.get_config("demo")
    c.objective[field] = value
    with pytest.raises(ConfigError, match=match):
        objectives.create(c)
