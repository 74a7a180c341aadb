"""MoCo-v3 MLP head and DINO head: structure, BatchNorm behaviour, torch parity, weight norm."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from geossl.models.heads import DINOHead, MLPHead


def _x(b=16, d=12, seed=0):
    return jnp.asarray(np.random.default_rng(seed).normal(size=(b, d)), jnp.float32)


def test_mlp_head_structure():
    x = _x()
    proj = MLPHead(hidden_dim=32, out_dim=8, num_layers=3, use_bn=True, last_bn=True)
    v = proj.init(jax.random.key(0), x, train=False)
    p, s = v["params"], v["batch_stats"]
    assert set(p) == {"linear_0", "linear_1", "linear_2", "bn_0", "bn_1"}
    assert all(set(p[f"linear_{i}"]) == {"kernel"} for i in range(3))  # no bias before BN
    assert p["linear_0"]["kernel"].shape == (12, 32) and p["linear_2"]["kernel"].shape == (32, 8)
    assert set(s) == {"bn_0", "bn_1", "bn_2"} and s["bn_2"]["var"].shape == (8,)  # affine-free last BN
    y, state = proj.apply(v, x, train=True, mutable=["batch_stats"])
    assert y.shape == (16, 8)
    np.testing.assert_allclose(y.mean(0), 0.0, atol=1e-5)  # last BN without affine: whitened
    np.testing.assert_allclose(y.var(0), 1.0, atol=1e-3)
    assert not np.allclose(state["batch_stats"]["bn_2"]["mean"], 0.0)

    pred = MLPHead(hidden_dim=32, out_dim=8, num_layers=2, last_bn=False)
    v = pred.init(jax.random.key(0), x, train=False)
    assert set(v["batch_stats"]) == {"bn_0"} and pred.apply(v, x, train=False).shape == (16, 8)

    plain = MLPHead(hidden_dim=32, out_dim=8, num_layers=2, use_bn=False, act="gelu")
    v = plain.init(jax.random.key(0), x, train=False)
    assert "batch_stats" not in v and set(v["params"]["linear_1"]) == {"kernel", "bias"}
    with pytest.raises(ValueError, match="expected one of"):
        MLPHead(32, 8, act="tanh").init(jax.random.key(0), x, train=False)


def test_mlp_head_matches_moco_v3_torch_train_mode():
    """Same weights in MoCo-v3's torch MLP: train-mode outputs and running statistics agree."""
    torch = pytest.importorskip("torch")
    x = _x()
    head = MLPHead(hidden_dim=32, out_dim=8, num_layers=2, use_bn=True, last_bn=True)
    v = head.init(jax.random.key(1), x, train=False)
    ref = torch.nn.Sequential(
        torch.nn.Linear(12, 32, bias=False), torch.nn.BatchNorm1d(32), torch.nn.ReLU(),
        torch.nn.Linear(32, 8, bias=False), torch.nn.BatchNorm1d(8, affine=False))
    with torch.no_grad():
        ref[0].weight.copy_(torch.from_numpy(np.asarray(v["params"]["linear_0"]["kernel"]).T.copy()))
        ref[3].weight.copy_(torch.from_numpy(np.asarray(v["params"]["linear_1"]["kernel"]).T.copy()))
        ref.train()
        expected = ref(torch.from_numpy(np.array(x))).numpy()
    y, state = head.apply(v, x, train=True, mutable=["batch_stats"])
    np.testing.assert_allclose(y, expected, atol=1e-5)
    for ours, bn in [(state["batch_stats"]["bn_0"], ref[1]), (state["batch_stats"]["bn_1"], ref[4])]:
        np.testing.assert_allclose(ours["mean"], bn.running_mean.numpy(), atol=1e-6)
        np.testing.assert_allclose(ours["var"], bn.running_var.numpy(), atol=1e-6)


def test_dino_head_weight_norm():
    x = _x(d=20)
    head = DINOHead(out_dim=64, hidden_dim=32, bottleneck_dim=16, num_layers=3)
    v = head.init(jax.random.key(0), x)
    p = v["params"]
    assert set(p) == {"mlp_0", "mlp_1", "mlp_2", "last_layer"}
    assert p["mlp_2"]["kernel"].shape == (32, 16) and set(p["last_layer"]) == {"kernel"}
    y = head.apply(v, x)
    assert y.shape == (16, 64) and float(jnp.abs(y).max()) <= 1.0 + 1e-6  # cosine similarities
    scaled = dict(p, last_layer={"kernel": p["last_layer"]["kernel"] * 7.0})  # only directions count
    np.testing.assert_allclose(head.apply({"params": scaled}, x), y, atol=1e-6)

    free = DINOHead(out_dim=64, hidden_dim=32, bottleneck_dim=384, num_layers=2, norm_last_layer=False)
    vf = free.init(jax.random.key(0), x)
    assert vf["params"]["last_layer"]["weight_g"].shape == (64,)
    assert vf["params"]["mlp_1"]["kernel"].shape == (32, 384)
    doubled = dict(vf["params"], last_layer={**vf["params"]["last_layer"],
                                            "weight_g": 2.0 * vf["params"]["last_layer"]["weight_g"]})
    np.testing.assert_allclose(free.apply({"params": doubled}, x), 2.0 * free.apply(vf, x), atol=1e-6)


def test_dino_head_matches_torch_and_bn_train_mode():
    torch = pytest.importorskip("torch")
    x = _x(d=20)
    head = DINOHead(out_dim=10, hidden_dim=24, bottleneck_dim=6, num_layers=2, use_bn=True)
    v = head.init(jax.random.key(2), x)
    p = {k: {n: torch.from_numpy(np.asarray(a).T.copy()) for n, a in d.items()}
         for k, d in v["params"].items()}
    fc1, bn, fc2 = torch.nn.Linear(20, 24), torch.nn.BatchNorm1d(24), torch.nn.Linear(24, 6)
    last = torch.nn.utils.parametrizations.weight_norm(torch.nn.Linear(6, 10, bias=False))
    with torch.no_grad():
        fc1.weight.copy_(p["mlp_0"]["kernel"]), fc1.bias.copy_(p["mlp_0"]["bias"])
        fc2.weight.copy_(p["mlp_1"]["kernel"]), fc2.bias.copy_(p["mlp_1"]["bias"])
        last.parametrizations.weight.original1.copy_(p["last_layer"]["kernel"])
        last.parametrizations.weight.original0.fill_(1.0)
        h = fc2(torch.nn.functional.gelu(bn.train()(fc1(torch.from_numpy(np.array(x))))))
        expected = last(torch.nn.functional.normalize(h, dim=-1)).numpy()
    y, state = head.apply(v, x, train=True, mutable=["batch_stats"])
    np.testing.assert_allclose(y, expected, atol=1e-5)
    np.testing.assert_allclose(state["batch_stats"]["bn_0"]["var"], bn.running_var.numpy(), atol=1e-6)
