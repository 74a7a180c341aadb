"""PerA objective: disjoint index sets, what the sparse student reads, the loss terms against
numpy, and one trainer step advancing the DINO centre."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import pera_vit_b
from geossl import masking, objectives
from geossl.parallel import mesh as mesh_lib
from geossl.parallel.multihost import global_batch
from geossl.train.loop import build_trainer

K = 16  # prototypes
P = 4   # patch size: 16 px global crops → 16 tokens, 8 px local crops → 4 tokens


def tiny_config():
    c = pera_vit_b.get_config("demo")
    c.model.update(dict(depth=2, embed_dim=32, num_heads=2, img_size=16, patch_size=P))
    c.objective.update(dict(insert_at_block=1, num_prototypes=K, head_hidden=32, head_bottleneck=8,
                            teacher_temp_warmup_steps=100))
    c.data.local_size = 8
    c.data.num_local = 3
    c.data.jitter_per_band = True
    c.global_batch = 8
    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, model=1))
    return c


def record(bands, seed):
    rng = np.random.default_rng(seed)
    return {"image": rng.integers(500, 4000, (2, 20, 20, len(bands)), dtype=np.uint16),
            "labels": np.array([1], np.int64), "bands": list(bands), "sensor": "s2_l1c",
            "key": f"loc{seed}", "label_set": "dynamic_world_9"}


def batch_of(obj, n=8):
    samples = [obj.make_views(record(obj.config.data.bands, i), np.random.default_rng(i))
               for i in range(n)]
    return {k: np.stack([s[k] for s in samples]) for k in samples[0]}


@pytest.fixture(scope="module")
def setup():
    """The objective, a batch of 8 samples, the trainer and its initial state (host copies)."""
    obj = objectives.create(tiny_config())
    batch = batch_of(obj)
    mesh = mesh_lib.make_mesh(obj.config.mesh)
    trainer = build_trainer(obj.config, obj, mesh, {k: val[:2] for k, val in batch.items()})
    state = trainer.init_state()
    return obj, batch, mesh, trainer, state, jax.device_get(state)


@pytest.mark.parametrize("num_tokens", [16, 4, 36, 784])  # tiny global / local; 96 px, 448 px
def test_index_sets_are_disjoint_with_the_stated_sizes(num_tokens):
    obj = objectives.create(tiny_config())
    si, li, ti = (np.asarray(a) for a in obj.split(jax.random.PRNGKey(3), 5, num_tokens))
    ns = int(np.floor(0.2 * num_tokens + 0.5))
    nl = int(np.floor(0.4 * num_tokens + 0.5)) - ns
    assert (si.shape[1], li.shape[1], ti.shape[1]) == (ns, nl, num_tokens - ns - nl)
    for row in range(5):
        together = np.concatenate([si[row], li[row], ti[row]])
        assert sorted(together.tolist()) == list(range(num_tokens))  # disjoint and covering


def _pixel_mask(idx, n_rows, grid):
    """(n, K) patch indices → (n, grid·P, grid·P, 1) bool pixel mask of those patches."""
    m = np.asarray(masking.indices_to_mask(idx, grid * grid)).reshape(n_rows, grid, grid)
    return np.repeat(np.repeat(m, P, axis=1), P, axis=2)[..., None]


def test_student_reads_only_its_positions_and_the_mask_token(setup):
    obj, batch, _, _, _, v = setup
    x = jnp.asarray(batch["global_student"][:, 0])
    n = x.shape[0]
    si, li, ti = obj.split(jax.random.PRNGKey(5), n, 16)
    rng = jax.random.PRNGKey(6)
    student = jax.jit(lambda params, x: obj.student(params, x, si, li, rng))
    logits, pred = student(v.params, x)
    assert logits.shape == (n, K) and pred.shape == (n, li.shape[1], P * P * 13)
    noise = np.random.default_rng(0).normal(size=x.shape).astype(np.float32) * 5
    others = _pixel_mask(li, n, 4) | _pixel_mask(ti, n, 4)
    x2 = jnp.where(others, x + noise, x)
    logits2, pred2 = student(v.params, x2)
    np.testing.assert_array_equal(np.asarray(logits2), np.asarray(logits))
    np.testing.assert_array_equal(np.asarray(pred2), np.asarray(pred))
    # its own positions do matter
    x3 = jnp.where(_pixel_mask(si, n, 4), x + noise, x)
    assert not np.allclose(np.asarray(student(v.params, x3)[0]), np.asarray(logits))
    # the mask token (entering before block 1) reaches the class token and the predictions;
    # (a random direction: a constant shift would vanish in the LayerNorms)
    shift = jax.random.normal(jax.random.PRNGKey(8), v.params["mask_token"].shape)
    moved = dict(v.params, mask_token=v.params["mask_token"] + shift)
    logits4, pred4 = student(moved, x)
    assert np.abs(np.asarray(logits4) - np.asarray(logits)).max() > 1e-4
    assert np.abs(np.asarray(pred4) - np.asarray(pred)).max() > 1e-4
    # the backbone's own mask_token is not the one used
    other = dict(v.params, backbone=dict(v.params["backbone"],
                                         mask_token=v.params["backbone"]["mask_token"] + shift))
    np.testing.assert_array_equal(np.asarray(student(other, x)[0]), np.asarray(logits))


def _np_log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def _np_patchify(x):
    b, h, w, c = x.shape
    out = np.zeros((b, (h // P) * (w // P), P * P * c))
    for i in range(h // P):
        for j in range(w // P):
            out[:, i * (w // P) + j] = x[:, i * P:(i + 1) * P, j * P:(j + 1) * P, :].reshape(b, -1)
    return out


def test_trainer_step_loss_terms_equal_numpy_and_the_centre_advances(setup):
    """One build_trainer step at step 50 (teacher τ mid-warmup) from a non-zero centre: each loss
    term against numpy on the same forwards, and the new centre 0.9·c + 0.1·mean(teacher logits
    over every crop)."""
    obj, batch, mesh, trainer, state, v = setup
    step = 50
    center = 0.1 * np.random.default_rng(1).normal(size=(1, K)).astype(np.float32)
    state = state.replace(step=jnp.asarray(step, jnp.int32), extra={"center": jnp.asarray(center)})
    new_state, metrics = trainer.train_step(state, global_batch(batch, mesh))
    m = {k: float(x) for k, x in metrics.items()}
    for name in ("loss", "loss_dino", "loss_koleo", "loss_mse", "teacher_temp", "center_norm",
                 "momentum"):
        assert np.isfinite(m[name]), name
    assert int(new_state.step) == step + 1

    # the step's forwards, with the keys the objective draws from fold_in(rng, step)
    params, teacher = v.params, v.teacher
    r_gm, r_lm, r_gd, r_ld = jax.random.split(jax.random.fold_in(v.rng, step), 4)
    b, g = batch["global_student"].shape[:2]
    nl = batch["local_student"].shape[1]
    xg = batch["global_student"].reshape(b * g, 16, 16, 13)
    xl = batch["local_student"].reshape(b * nl, 8, 8, 13)

    @jax.jit
    def forwards(params, teacher):
        si, li, ti = obj.split(r_gm, b * g, 16)
        lsi, _, lti = obj.split(r_lm, b * nl, 4)
        sg, pred = obj.student(params, xg, si, li, r_gd)
        sl = obj.student(params, xl, lsi, None, r_ld)[0]
        tg = obj.teacher(teacher, batch["global_teacher"].reshape(xg.shape), ti)
        tl = obj.teacher(teacher, batch["local_teacher"].reshape(xl.shape), lti)
        return sg, pred, sl, tg, tl, li

    *outs, li = jax.device_get(forwards(params, teacher))
    sg, pred, sl, tg, tl = (np.asarray(a, np.float64) for a in outs)

    tau_t = 0.03 + (0.05 - 0.03) * step / 99   # official: np.linspace(0.03, 0.05, W)[step]
    c64 = center.astype(np.float64)
    sg3, tg3 = sg.reshape(b, g, K), tg.reshape(b, g, K)
    sl3, tl3 = sl.reshape(b, nl, K), tl.reshape(b, nl, K)
    pairs = [(sg3[:, i], tg3[:, i]) for i in range(g)] + [(sl3[:, i], tl3[:, i]) for i in range(nl)]
    dino = []
    for s, t in pairs:  # same-index pairs only, each a mean over the batch
        target = np.exp(_np_log_softmax((t - c64) / tau_t))
        dino.append(np.mean(-(target * _np_log_softmax(s / 0.1)).sum(-1)))
    dino = np.mean(dino)
    koleo = 0.0
    for i in range(g):  # per global crop, over the global batch, summed
        z = sg3[:, i] / np.linalg.norm(sg3[:, i], axis=1, keepdims=True)
        d = np.linalg.norm(z[:, None] - z[None], axis=-1) + np.diag(np.full(b, np.inf))
        koleo += -np.mean(np.log(d.min(1) + 1e-8))
    patches = _np_patchify(xg.astype(np.float64))
    target = np.stack([patches[r, np.asarray(li)[r]] for r in range(b * g)])
    mse = np.mean(((pred - target) ** 2).sum(-1))

    np.testing.assert_allclose(m["teacher_temp"], tau_t, rtol=1e-6)
    np.testing.assert_allclose(m["loss_dino"], dino, rtol=1e-4)
    np.testing.assert_allclose(m["loss_koleo"], koleo, rtol=1e-4)
    np.testing.assert_allclose(m["loss_mse"], mse, rtol=1e-4)
    np.testing.assert_allclose(m["loss"], dino + 0.1 * koleo + 0.01 * mse, rtol=1e-4)
    new_center = 0.9 * c64 + 0.1 * np.concatenate([tg, tl]).mean(0, keepdims=True)
    np.testing.assert_allclose(np.asarray(jax.device_get(new_state.extra["center"])), new_center,
                               atol=1e-6)
    np.testing.assert_allclose(m["center_norm"], np.linalg.norm(new_center), rtol=1e-5)


def test_dense_student_reads_every_token_and_views_jitter_per_band(setup):
    """objective.dense_student (the memory benchmark's reference) sees the teacher positions too;
    multispectral variants draw brightness / contrast per band, the RGB default one factor."""
    _, batch, _, _, _, v = setup
    c = tiny_config()
    c.objective.dense_student = True
    dense = objectives.create(c)
    x = jnp.asarray(batch["global_student"][:, 0])
    si, li, ti = dense.split(jax.random.PRNGKey(5), x.shape[0], 16)
    student = jax.jit(lambda x: dense.student(v.params, x, si, li, jax.random.PRNGKey(6)))
    logits, pred = student(x)
    assert pred.shape == (x.shape[0], li.shape[1], P * P * 13)
    noise = np.random.default_rng(0).normal(size=x.shape).astype(np.float32) * 5
    moved = student(jnp.where(_pixel_mask(ti, x.shape[0], 4), x + noise, x))[0]
    assert np.abs(np.asarray(moved) - np.asarray(logits)).max() > 1e-4

    assert dense.view_config.student.per_band and dense.view_config.teacher.per_band
    rgb = objectives.create(pera_vit_b.get_config())
    assert not (rgb.view_config.student.per_band or rgb.view_config.teacher.per_band)
    assert objectives.create(pera_vit_b.get_config("ms")).view_config.student.per_band
    assert not pera_vit_b.get_config("demo").data.jitter_per_band  # spectra define its classes


def test_exported_student_loads_strictly_into_timm_vit_base_patch16_224(tmp_path):
    """The paper config's export names timm vit_base_patch16_224 at 448 px, 3 channels, no
    classifier, with timm's own ViT-B/16 structure; a 2-block 32 px variant of that config goes
    the same way (objective.backbone_variables → convert.export_backbone, as the trainer exports)
    into timm strictly, with the same embedding."""
    torch = pytest.importorskip("torch")
    timm = pytest.importorskip("timm")
    import json
    from geossl import convert
    from geossl.convert.lib import io
    from geossl.models.from_config import architecture_kwargs

    c = pera_vit_b.get_config()
    name, kw = convert.timm_model(c.model.name, **architecture_kwargs(c.model))
    assert (name, kw["img_size"], kw["in_chans"], kw["num_classes"]) == ("vit_base_patch16_224", 448, 3, 0)
    with torch.device("meta"):  # shapes only: timm's defaults vs the recorded keywords
        ref = timm.create_model(name, img_size=448, in_chans=3, num_classes=0).state_dict()
        ours = timm.create_model(name, **kw).state_dict()
    assert {k: t.shape for k, t in ours.items()} == {k: t.shape for k, t in ref.items()}

    c.model.update(dict(depth=2, img_size=32))
    c.objective.update(dict(num_prototypes=K, head_hidden=32, head_bottleneck=8,
                            insert_at_block=1))
    obj = objectives.create(c)
    shapes = jax.eval_shape(obj.backbone.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    rng = np.random.default_rng(0)
    backbone = jax.tree.map(lambda a: (0.2 * rng.normal(size=a.shape) + (len(a.shape) == 1))
                            .astype(np.float32), shapes)["params"]
    variables = objectives.Variables(params={"backbone": backbone}, teacher=None, extra={})
    path = str(tmp_path / "pera.safetensors")
    exported = obj.backbone_variables(variables)
    convert.export_backbone(exported, obj.backbone_name, architecture_kwargs(c.model), path, c)
    meta = convert.read_metadata(path)
    assert meta["timm_model"] == "vit_base_patch16_224"
    net = timm.create_model(meta["timm_model"], **json.loads(meta["timm_kwargs"])).eval()
    net.load_state_dict({k: torch.from_numpy(a) for k, a in io.load_state_dict(path).items()},
                        strict=True)
    x = rng.normal(size=(2, 32, 32, 3)).astype(np.float32)
    ours = np.asarray(jax.jit(obj.backbone.apply)(exported, x)["embedding"])
    with torch.no_grad():
        theirs = net(torch.from_numpy(x).permute(0, 3, 1, 2)).numpy()
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5 * np.abs(theirs).max())
