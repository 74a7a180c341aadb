"""Every objective with a wavelength-conditioned backbone (a tiny DOFA): the batch's wavelengths
reach the student, the EMA teacher and GFM's frozen teacher (its own bands' wavelengths).

DOFA generates each band's patch-kernel slice from that band's wavelength, so permuting the bands
of every image together with the wavelengths leaves its features unchanged (to float rounding),
and permuting the images alone does not. Objectives whose pixel heads have one band order (MAE,
PerA, GFM) get those heads' band columns permuted too. A DOFA that ignored the wavelengths, or got
another view's, fails these checks.
"""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import dense_vit_s, gfm_swin_b, mae_vit_b, pera_vit_b, softcon_vit_s
from geossl import models, objectives
from geossl.data import bands
from geossl.patches import resize_align_corners
from geossl.train import teacher as teacher_lib

DOFA = dict(name="dofa_small_patch16_224", depth=1, embed_dim=32, num_heads=2, patch_size=8,
            img_size=32, in_chans=13, dtype="float32")
BATCH = 8
RNG = jax.random.PRNGKey(2)


def record(names, seed: int) -> dict:
    """A two-season 40 px record of ``names`` with labels and a land-cover map."""
    rng = np.random.default_rng(seed)
    acq = (rng.random((2, 9)) < 0.4).astype(np.int64)
    return {"image": rng.integers(500, 4000, (2, 40, 40, len(names)), dtype=np.uint16),
            "labels": np.flatnonzero(acq.any(0)).astype(np.int64), "bands": list(names),
            "sensor": "s2_l1c", "key": f"loc{seed}", "label_set": "dynamic_world_9",
            "acq_labels": acq.reshape(-1), "num_classes": np.array([9], np.int64),
            "land_cover": rng.integers(0, 9, (2, 40, 40), dtype=np.uint8)}


# ----- the five objectives from their demo configs, with a tiny DOFA ------------------------------
def softcon_config():
    c = softcon_vit_s.get_config("demo")
    c.model.update(DOFA)
    c.objective.update(dict(proj_hidden=32, proj_dim=16, pred_hidden=32))
    return c


def dense_config():
    c = dense_vit_s.get_config("demo")
    c.model.update(DOFA)
    c.objective.update(dict(num_locations=6, proj_hidden=32, proj_dim=16))
    c.data.min_overlap = 0.0
    return c


def mae_config():
    c = mae_vit_b.get_config("demo")
    c.model.update(DOFA)
    c.objective.update(dict(decoder_dim=32, decoder_depth=1, decoder_heads=2))
    return c


def pera_config():
    c = pera_vit_b.get_config("demo")
    c.model.update(dict(DOFA, depth=2))
    c.objective.update(dict(insert_at_block=1, num_prototypes=16, head_hidden=32,
                            head_bottleneck=8))
    c.data.update(dict(local_size=16, num_local=2))
    return c


def gfm_config(student=DOFA, teacher=DOFA):
    """GFM's demo (13 bands, teacher on the same 13) with these student and teacher models."""
    c = gfm_swin_b.get_config("demo")
    c.model = ml_collections.ConfigDict(dict(student, drop_path_rate=0.0))
    c.objective.distill_block = 0
    c.teacher.model = ml_collections.ConfigDict(teacher)
    return c


CONFIGS = {"softcon": softcon_config, "dense": dense_config, "mae": mae_config,
           "pera": pera_config, "gfm": gfm_config}


def permute_pixel_head(name: str, params: dict, perm: np.ndarray, obj) -> dict:
    """``params`` with the band columns of the pixel head (one band order) permuted by ``perm``,
    so that it predicts the permuted bands: MAE / PerA (p, p, C) patches (``patchify``), GFM's
    decoder c·s² + i·s + j (``pixel_shuffle``)."""
    def columns(x, split):
        return x.reshape(*x.shape[:-1], *split)

    c = len(perm)
    if name == "mae":
        pred = params["decoder"]["decoder_pred"]
        pred = {k: columns(v, (-1, c))[..., perm].reshape(v.shape) for k, v in pred.items()}
        return dict(params, decoder=dict(params["decoder"], decoder_pred=pred))
    if name == "pera":
        last = params["pixel_head"]["last_layer"]
        last = {k: columns(v, (-1, c))[..., perm].reshape(v.shape) for k, v in last.items()}
        return dict(params, pixel_head=dict(params["pixel_head"], last_layer=last))
    if name == "gfm":
        s2 = obj.stride ** 2
        decoder = {k: columns(v, (c, s2))[..., perm, :].reshape(v.shape)
                   for k, v in params["decoder"].items()}
        return dict(params, decoder=decoder)
    return params


def make_case(config):
    """(objective, batch with "wavelengths" [and per view], variables, teacher)."""
    obj = objectives.create(config)
    samples = [obj.make_views(record(config.data.bands, i), np.random.default_rng(i))
               for i in range(BATCH)]
    batch = {k: np.stack([s[k] for s in samples]) for k in samples[0]}
    batch["wavelengths"] = np.tile(bands.wavelengths(config.data.bands), (BATCH, 1))
    if "view2" in batch:  # two views: per-view wavelengths (as from two sensors) take precedence
        batch.update(wavelengths1=batch["wavelengths"].copy(),
                     wavelengths2=batch["wavelengths"].copy())
    variables = jax.jit(obj.init)(jax.random.PRNGKey(0), batch)
    if obj.teacher_spec.kind == "frozen":
        t = config.teacher.model
        x = jnp.zeros((1, t.img_size, t.img_size, t.in_chans))
        teacher = {"params": jax.jit(obj.teacher_model.init)(jax.random.PRNGKey(1), x)["params"]}
    else:
        teacher = teacher_lib.initial(obj, variables)
    return obj, batch, variables, teacher


def make_objective_case(name: str):
    """(name, objective, batch, variables, teacher, jitted (params, batch) → (loss, grads))."""
    obj, batch, variables, teacher = make_case(CONFIGS[name]())

    def loss(params, b):
        return obj.loss(params, teacher, variables.extra, b, RNG, 0)[0]

    return name, obj, batch, variables, teacher, jax.jit(jax.value_and_grad(loss))


@pytest.mark.parametrize("name", list(CONFIGS))
def test_objective_trains_a_dofa_backbone(name):
    """Each objective with a tiny DOFA, its loss and gradient compiled once (one test per
    objective, so that no two test workers compile the same one): the checks below."""
    case = make_objective_case(name)
    check_loss_is_finite_and_trains_the_weight_generator(case)
    check_permuting_bands_with_their_wavelengths_leaves_the_loss(case)
    check_a_batch_without_wavelengths_is_one_line_error(case)
    check_pixel_heads_fix_the_band_list_and_softcon_takes_pairs(case)


def check_loss_is_finite_and_trains_the_weight_generator(case):
    _, _, batch, variables, _, loss_and_grad = case
    loss, grads = loss_and_grad(variables.params, batch)
    assert np.isfinite(float(loss))
    generator = grads["backbone"]["patch_embed"]["weight_generator"]
    for leaf in jax.tree_util.tree_leaves([generator, grads["backbone"]["patch_embed"]["fclayer"]]):
        assert np.all(np.isfinite(leaf))
    assert float(jnp.abs(generator["fc_weight"]["kernel"]).max()) > 0


def _generator_grad(grads) -> np.ndarray:
    return np.asarray(grads["backbone"]["patch_embed"]["weight_generator"]["fc_weight"]["kernel"])


def _relative(a, b) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def check_permuting_bands_with_their_wavelengths_leaves_the_loss(case):
    """The loss and the weight generator's gradient (a function of band-agnostic parameters) are
    unchanged; with the images permuted alone both move (the gradient by 20-200%: MAE's loss at
    initialisation hardly depends on the encoder, 7e-5 relative)."""
    name, obj, batch, variables, _, loss_and_grad = case
    perm = np.random.default_rng(0).permutation(13)
    images = {k: (x[..., perm] if x.ndim >= 4 else x) for k, x in batch.items()}  # views, crops
    both = {k: (x[:, perm] if k.startswith("wavelengths") else x) for k, x in images.items()}
    loss, grads = loss_and_grad(variables.params, batch)
    params = permute_pixel_head(name, variables.params, perm, obj)
    same, same_grads = loss_and_grad(params, both)
    np.testing.assert_allclose(float(same), float(loss), rtol=1e-5)
    assert _relative(_generator_grad(same_grads), _generator_grad(grads)) < 1e-3
    moved, moved_grads = loss_and_grad(params, images)  # the images alone: other kernels per band
    assert abs(float(moved) - float(loss)) > 2e-5 * abs(float(loss))
    assert _relative(_generator_grad(moved_grads), _generator_grad(grads)) > 0.1
    if "view2" in batch:  # view 2 (student and teacher) reads wavelengths2 only
        view2 = dict(batch, view2=batch["view2"][..., perm],
                     wavelengths2=batch["wavelengths2"][:, perm])
        np.testing.assert_allclose(float(loss_and_grad(params, view2)[0]), float(loss), rtol=1e-5)


def check_a_batch_without_wavelengths_is_one_line_error(case):
    _, obj, batch, variables, teacher, _ = case
    bare = {k: x for k, x in batch.items() if not k.startswith("wavelengths")}
    with pytest.raises(ValueError, match="dofa_small_patch16_224: a wavelength-conditioned "
                                         "backbone needs the bands' central wavelengths") as e:
        jax.eval_shape(lambda b: obj.loss(variables.params, teacher, variables.extra, b, RNG, 0),
                       bare)
    assert "\n" not in str(e.value)


# ----- GFM's frozen DOFA teacher sees its own bands' wavelengths ----------------------------------
def test_gfm_dofa_teacher_gets_the_wavelengths_of_its_bands():
    """A ViT student (no wavelengths) and a DOFA teacher on B4, B3, B2 (rescaled, 24 px)."""
    vit = dict(DOFA, name="vit_tiny_patch16")
    c = gfm_config(student=vit, teacher=dict(DOFA, img_size=24, in_chans=3))
    scale, offset = (0.5, 1.0, 2.0), (0.1, -0.2, 0.3)
    c.teacher.update(dict(bands=("B4", "B3", "B2"), input_scale=scale, input_offset=offset))
    obj, batch, variables, teacher = make_case(c)
    w = batch["wavelengths"]
    x = jnp.asarray(batch["image"])
    picked = [3, 2, 1]  # B4, B3, B2 among B1..B12

    @jax.jit
    def got_and_want(teacher):
        t_x = resize_align_corners(x[..., picked], 24) * np.float32(scale) + np.float32(offset)
        want = obj.teacher_model.apply(teacher, t_x, wavelengths=w[0, picked])["patch_tokens"]
        return obj.teacher_feature(teacher, x, obj.teacher_wavelengths(batch)), want.mean(1)

    np.testing.assert_allclose(*got_and_want(teacher), rtol=1e-5, atol=1e-6)

    loss = jax.jit(lambda b: obj.loss(variables.params, teacher, variables.extra, b, RNG, 0)[1])
    base = loss(batch)["metrics"]
    others = w.copy()
    others[:, [0, 4, 5, 6, 7, 8, 9, 10, 11, 12]] *= 1.3  # bands the teacher does not read
    same = loss(dict(batch, wavelengths=others))["metrics"]
    assert float(same["loss_feat"]) == float(base["loss_feat"])
    b4 = w.copy()
    b4[:, 3] = 0.56  # B4 read as B3's wavelength: the teacher's patch kernel changes
    moved = loss(dict(batch, wavelengths=b4))["metrics"]
    assert float(moved["loss_mim"]) == float(base["loss_mim"])  # the ViT student ignores them
    assert abs(float(moved["loss_feat"]) - float(base["loss_feat"])) > 1e-5

    with pytest.raises(ValueError, match="^dofa_small_patch16_224: a wavelength-conditioned"):
        obj.teacher_wavelengths({"image": batch["image"]})


# ----- DOFA's insert_idx (PerA), the ViT's semantics ----------------------------------------------
def test_dofa_inserts_mask_tokens_as_the_vit():
    model = models.create("dofa_small_patch16_224", patch_size=4, embed_dim=16, depth=2,
                          num_heads=2, img_size=16, in_chans=5)
    x = np.random.default_rng(0).normal(size=(2, 16, 16, 5)).astype(np.float32)
    w = np.linspace(0.45, 2.2, 5).astype(np.float32)
    variables = jax.jit(model.init)(jax.random.PRNGKey(0), x)
    token = jax.random.normal(jax.random.PRNGKey(1), (1, 16))  # the zero init would hide it
    variables = {"params": dict(variables["params"], mask_token=token)}
    perm = np.stack([np.random.default_rng(s).permutation(16) for s in (0, 1)]).astype(np.int32)
    keep, ins = perm[:, :6], perm[:, 6:]
    mask = np.zeros((2, 16), bool)
    mask[np.arange(2)[:, None], ins] = True

    @jax.jit
    def forwards(v):
        def call(**kw):
            return model.apply(v, x, wavelengths=w, **kw)
        return (call(keep_idx=keep, insert_idx=ins, insert_at_block=0),
                call(keep_idx=perm, mask=mask),
                call(keep_idx=keep, insert_idx=ins, insert_at_block=1, return_layers=(0, 1)),
                call(keep_idx=keep, return_layers=(0,)))

    inserted, masked, later, kept = forwards(variables)
    # inserted before block 0 == a masked forward over [kept, inserted] (mask_token + pos_embed)
    np.testing.assert_allclose(inserted["patch_tokens"], masked["patch_tokens"], atol=2e-5)
    np.testing.assert_allclose(inserted["embedding"], masked["embedding"], atol=2e-5)
    # inserted before block 1: block 0 sees the kept tokens only
    np.testing.assert_allclose(later["intermediates"][0], kept["intermediates"][0], atol=1e-6)
    assert later["patch_tokens"].shape == (2, 16, 16)
    assert [t.shape for t in later["intermediates"]] == [(2, 7, 16), (2, 17, 16)]
    assert not np.allclose(later["embedding"], inserted["embedding"], atol=1e-3)

    with pytest.raises(ValueError, match="insert_at_block: expected 0..1, found 2"):
        model.apply(variables, x, wavelengths=w, insert_idx=ins, insert_at_block=2)
    with pytest.raises(ValueError, match="insert_idx and insert_at_block go together"):
        model.apply(variables, x, wavelengths=w, insert_idx=ins)


def check_pixel_heads_fix_the_band_list_and_softcon_takes_pairs(case):
    """What ``config.data.sets`` may mix: MAE, PerA and GFM predict ``config.data.bands`` (one
    band order); SoftCon's two views may come from two sensors."""
    name, obj = case[:2]
    heads = name in ("mae", "pera", "gfm")
    assert obj.fixed_bands == (tuple(obj.config.data.bands) if heads else None)
    assert obj.cross_sensor_pairs == (name == "softcon")
