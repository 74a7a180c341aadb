"""ResNet: torchvision-exact forward (eval and train-mode BatchNorm), layout, registry, sharding."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from geossl import convert, models
from geossl.models.resnet import BatchNorm, ResNet, stage_plan
from torch_refs import torch_resnet
from xla_env import USER_BUILD


def _torch_resnet18(in_chans: int, seed: int = 0):
    """torchvision resnet18 with a ``in_chans`` conv1, no fc, random BN (train mode)."""
    return torch_resnet("resnet18", in_chans, seed, keep_fc=False)


def _nchw(x):
    import torch
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def test_layout_and_num_features():
    for name, feats, blocks in [("resnet18", 512, 8), ("resnet50", 2048, 16), ("resnet101", 2048, 33)]:
        model = models.create(name, in_chans=13)
        assert model.num_features == feats
        assert len(stage_plan(model.stage_sizes, model.block, model.width)) == blocks
    model = models.create("resnet50", in_chans=13)
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 32, 32, 13)))
    p, s = shapes["params"], shapes["batch_stats"]
    assert p["conv1"]["kernel"].shape == (7, 7, 13, 64)
    assert p["layer1_0"]["downsample_0"]["kernel"].shape == (1, 1, 64, 256)
    assert p["layer2_0"]["conv2"]["kernel"].shape == (3, 3, 128, 128)  # v1.5: stride in the 3x3
    assert "downsample_0" not in p["layer1_1"]
    assert s["layer4_2"]["bn3"]["var"].shape == (2048,)
    r18 = jax.eval_shape(models.create("resnet18").init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    assert "downsample_0" not in r18["params"]["layer1_0"] and "conv3" not in r18["params"]["layer2_0"]


def test_registry():
    assert {"resnet18", "resnet50", "vit_small_patch14", "vit_base_patch14"} <= set(models.names())
    assert models.family("vit_tiny_patch16").name == "vit" and models.family("resnet50").name == "resnet"
    assert models.create("resnet18", img_size=32, in_chans=2).in_chans == 2  # img_size: any, ignored
    with pytest.raises(ValueError, match="expected one of .*resnet18"):
        models.create("resnet51")
    with pytest.raises(ValueError, match="expected one of"):
        ResNet(stage_sizes=(1, 1, 1, 1), block="wide").init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))


def test_eval_matches_torchvision_all_stages():
    torch = pytest.importorskip("torch")
    net = _torch_resnet18(5).eval()
    x = np.random.default_rng(0).normal(size=(2, 64, 48, 5)).astype(np.float32)
    stages = []
    hooks = [getattr(net, f"layer{i}").register_forward_hook(lambda m, i, o: stages.append(o))
             for i in range(1, 5)]
    with torch.no_grad():
        ref = net(_nchw(x)).numpy()
    for h in hooks:
        h.remove()
    variables = convert.from_torch(net.state_dict(), "resnet18")
    out = jax.jit(models.create("resnet18", in_chans=5).apply)(variables, jnp.asarray(x))
    np.testing.assert_allclose(out["embedding"], ref, atol=1e-4, rtol=1e-4)
    for ours, theirs in zip(out["features"], stages):
        np.testing.assert_allclose(ours, theirs.numpy().transpose(0, 2, 3, 1), atol=1e-4, rtol=1e-4)
    assert out["feature_map"].shape == (2, 2, 2, 512)


def test_train_mode_bn_matches_torch():
    """One train-mode forward: same outputs and same running mean / (unbiased) var as torch."""
    torch = pytest.importorskip("torch")
    net = _torch_resnet18(3, seed=1)
    variables = convert.from_torch(net.state_dict(), "resnet18")
    x = np.random.default_rng(1).normal(size=(4, 64, 64, 3)).astype(np.float32)
    net.train()
    with torch.no_grad():
        ref = net(_nchw(x)).numpy()
    apply = jax.jit(lambda v, x: models.create("resnet18").apply(v, x, train=True,
                                                                 mutable=["batch_stats"]))
    out, state = apply(variables, jnp.asarray(x))
    np.testing.assert_allclose(out["embedding"], ref, atol=1e-4, rtol=1e-4)
    expected = convert.from_torch(net.state_dict(), "resnet18")["batch_stats"]
    for (path, ours), theirs in zip(jax.tree_util.tree_leaves_with_path(state["batch_stats"]),
                                    jax.tree_util.tree_leaves(expected)):
        np.testing.assert_allclose(ours, theirs, atol=1e-5, rtol=1e-5, err_msg=jax.tree_util.keystr(path))


def _torch_grads(name, x, w, dtype):
    """Gradients of sum(embedding · w) (train-mode BN) w.r.t. the input (NHWC) and every
    parameter (geossl layout), float64 numpy, from torch computing in ``dtype``."""
    import torch
    net = torch_resnet(name, x.shape[-1], seed=2, keep_fc=False).train().to(dtype)
    xt = _nchw(x).to(dtype).requires_grad_(True)
    (net(xt) * torch.from_numpy(w).to(dtype)).sum().backward()
    grads = {k: p.grad.float() for k, p in net.named_parameters()}
    state = {k: grads.get(k, v.float()) for k, v in net.state_dict().items()}
    params = convert.from_torch(state, name)["params"]
    return xt.grad.double().numpy().transpose(0, 2, 3, 1), params


@pytest.mark.parametrize("name,shape", [("resnet18", (2, 50, 46, 13)), ("resnet50", (4, 65, 72, 4))])
def test_train_mode_gradients_match_torch(name, shape):
    """Gradients of a train-mode loss w.r.t. the input and every parameter are as close to torch
    in float64 as torch's own float32 gradients are (1×1 convolutions as matmuls, strided ones
    too, and the max pool as nine slices differentiate like torch's layers, at odd sizes)."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    x = rng.normal(size=shape).astype(np.float32)
    w = rng.normal(size=(shape[0], models.create(name).num_features)).astype(np.float32)
    ref_x, ref = _torch_grads(name, x, w, torch.float64)
    f32_x, f32 = _torch_grads(name, x, w, torch.float32)
    variables = convert.from_torch(torch_resnet(name, shape[-1], seed=2, keep_fc=False).state_dict(),
                                   name)
    model = models.create(name, in_chans=shape[-1])

    def loss(params, x):
        out, _ = model.apply({"params": params, "batch_stats": variables["batch_stats"]}, x,
                             train=True, mutable=["batch_stats"])
        return (out["embedding"] * w).sum()

    args = (variables["params"], jnp.asarray(x))  # float accuracy: XLA's default build
    g_params, g_x = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(*args).compile(
        compiler_options=USER_BUILD)(*args)

    def err(a, b, flips=0):
        """Relative error, leaving out the ``flips`` largest deviations: a ReLU whose input is
        within float32 rounding of 0 may open in one implementation and not in the other, which
        moves a few entries by a whole term (one of 2048 bias gradients on an AMX Xeon)."""
        d = np.sort(np.abs(np.asarray(a, np.float64) - b), axis=None)
        return np.linalg.norm(d[:d.size - flips]) / np.linalg.norm(b)

    assert err(g_x, ref_x) <= 3 * err(f32_x, ref_x) + 1e-5
    leaves = zip(jax.tree_util.tree_leaves_with_path(g_params), jax.tree_util.tree_leaves(ref),
                 jax.tree_util.tree_leaves(f32))
    for (path, ours), theirs, torch32 in leaves:
        flips = max(1, np.size(theirs) // 1000)
        assert (err(ours, theirs) <= 3 * err(torch32, theirs) + 1e-5
                or err(ours, theirs, flips) <= 3 * err(torch32, theirs, flips) + 1e-5), \
            jax.tree_util.keystr(path)


def test_batchnorm_unbiased_running_var_and_init():
    x = np.random.default_rng(2).normal(size=(6, 3)).astype(np.float32)
    bn = BatchNorm(momentum=0.9)
    v = bn.init(jax.random.key(0), x, train=True)
    assert float(v["batch_stats"]["var"][0]) == 1.0  # init does not update statistics
    y, state = bn.apply(v, x, train=True, mutable=["batch_stats"])
    np.testing.assert_allclose(state["batch_stats"]["var"], 0.9 + 0.1 * x.var(0, ddof=1), rtol=1e-6)
    np.testing.assert_allclose(state["batch_stats"]["mean"], 0.1 * x.mean(0), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(y, (x - x.mean(0)) / np.sqrt(x.var(0) + 1e-5), atol=1e-5)


def test_global_batch_statistics_under_sharding():
    """jit over a batch sharded on 8 devices normalises with the statistics of the global batch."""
    scale = np.arange(1, 9, dtype=np.float32)[:, None, None, None]  # every shard differs
    x = np.random.default_rng(3).normal(size=(8, 4, 4, 3)).astype(np.float32) * scale
    bn = BatchNorm()
    variables = bn.init(jax.random.key(0), x, train=True)
    mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    sharded = jax.device_put(x, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data")))
    assert len(sharded.addressable_shards) == 8
    step = jax.jit(lambda v, x: bn.apply(v, x, train=True, mutable=["batch_stats"]))
    y, state = step(variables, sharded)
    axes = (0, 1, 2)
    np.testing.assert_allclose(y, (x - x.mean(axes)) / np.sqrt(x.var(axes) + 1e-5), atol=1e-5)
    np.testing.assert_allclose(state["batch_stats"]["var"], 0.9 + 0.1 * x.var(axes, ddof=1), rtol=1e-5)


def test_remat_gradients_and_bf16():
    kw = dict(stage_sizes=(1, 1, 1, 1), block="basic", width=8, in_chans=2)
    x = jnp.asarray(np.random.default_rng(4).normal(size=(2, 32, 32, 2)), jnp.float32)
    plain, remat = ResNet(**kw), ResNet(**kw, remat=True)
    variables = jax.jit(plain.init)(jax.random.key(0), x)

    def loss(model, params):
        out, _ = model.apply({"params": params, "batch_stats": variables["batch_stats"]}, x,
                             train=True, mutable=["batch_stats"])
        return jnp.sum(out["embedding"] ** 2)

    g1 = jax.jit(jax.grad(lambda p: loss(plain, p)))(variables["params"])
    g2 = jax.jit(jax.grad(lambda p: loss(remat, p)))(variables["params"])
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-4)

    half = ResNet(**kw, dtype=jnp.bfloat16)
    out = jax.eval_shape(half.apply, variables, x)
    assert out["features"][0].dtype == jnp.bfloat16 and out["embedding"].dtype == jnp.float32
    shapes = jax.eval_shape(half.init, jax.random.key(0), x)
    assert all(v.dtype == jnp.float32 for v in jax.tree.leaves(shapes))


def test_zero_init_last_bn():
    from geossl.models.resnet import BasicBlock, Bottleneck
    x = jnp.zeros((1, 8, 8, 16))
    for cls, last in [(Bottleneck, "bn3"), (BasicBlock, "bn2")]:
        block = cls(4, 1, True, zero_init_last_bn=True)
        params = jax.jit(block.init, static_argnums=2)(jax.random.key(0), x, False)["params"]
        assert float(jnp.abs(params[last]["scale"]).max()) == 0.0
        assert float(params["bn1"]["scale"].min()) == 1.0
