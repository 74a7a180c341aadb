"""Probes of a wavelength-conditioned encoder (DOFA): every evaluation path hands the wavelengths
of the evaluated bands to the model call, so the probe takes the sensor as a flag
(``--dataset synthetic`` for S2, ``synthetic:s1`` for S1); fixed-band encoders refuse them."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import common
from geossl import models
from geossl.cli import linear_probe as linear_probe_cli
from geossl.cli import probe_flags
from geossl.data import bands, synthetic
from geossl.eval import datasets, dense_probe, features, finetune, health, monitor, online
from geossl.train.checkpoint import save_backbone

ARCH = "dofa_small_patch16_224"
TINY = dict(depth=1, img_size=16, patch_size=8, embed_dim=32, num_heads=2)
DATA = dict(num_locations=12, heldout=8, size=16, seasons=2, num_shards=1, heldout_shards=1,
            num_workers=1, verbose=False)
S2 = bands.wavelengths(bands.S2_L1C)


@pytest.fixture(scope="module")
def dofa():
    model = models.create(ARCH, **TINY)
    variables = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 16, 16, 13)))
    return model, jax.device_get(variables)


@pytest.fixture(scope="module")
def demo_data(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("synthetic-s2-s1"))
    synthetic.generate(out, modality="both", **DATA)
    return out


def _direct(model, variables, x, w, **kw):
    return model.apply(variables, jnp.asarray(x), wavelengths=jnp.asarray(w), **kw)


def test_features_are_the_models_under_the_given_wavelengths(dofa):
    """extract_features / extract_layer_features / the collapse monitor give the embeddings of
    model.apply(..., wavelengths=w), other wavelengths other numbers, one program per band count."""
    model, variables = dofa
    x = np.random.default_rng(0).normal(size=(11, 16, 16, 13)).astype(np.float32)
    before = features._jitted_forward()._cache_size()
    got = features.extract_features(model, variables, x, batch_size=8, wavelengths=S2)
    compiled = features._jitted_forward()._cache_size()
    want = np.asarray(_direct(model, variables, x, S2)["embedding"])
    np.testing.assert_allclose(got, want, atol=2e-5, rtol=1e-5)
    shifted = S2 + 0.3  # same band count: the same program, other numbers
    got_shifted = features.extract_features(model, variables, x, batch_size=8,
                                            wavelengths=shifted)
    assert features._jitted_forward()._cache_size() == compiled <= before + 1
    np.testing.assert_allclose(got_shifted,
                               np.asarray(_direct(model, variables, x, shifted)["embedding"]),
                               atol=2e-5, rtol=1e-5)
    assert np.abs(got_shifted - got).max() > 1e-2
    with pytest.raises(ValueError, match="DOFA: wavelengths= expected"):
        features.extract_features(model, variables, x, batch_size=8)

    layer = features.extract_layer_features(model, variables, x, layers=(0,),
                                            family=models.family(ARCH), mode="avgpool",
                                            batch_size=8, wavelengths=S2)[0]
    tokens = _direct(model, variables, x, S2, return_layers=(0,))["intermediates"][0]
    np.testing.assert_allclose(layer, np.asarray(tokens[:, 1:].mean(axis=1)), atol=2e-5,
                               rtol=1e-5)

    hook = monitor.CollapseMonitor(model, x[:8], every=1, std_ratio_threshold=0.0,
                                   wavelengths=S2)
    figures = hook(1, variables)
    expected = health.collapse_figures(want[:8])
    for name, value in expected.items():
        assert figures[name] == pytest.approx(value, rel=1e-4, abs=1e-6), name


def test_dense_probe_and_finetune_forwards_take_the_wavelengths(dofa):
    """The per-pixel probes' encoder levels and the fine-tuned classifier's logits are the
    model's outputs under the wavelengths they hold."""
    model, variables = dofa
    x = np.random.default_rng(1).normal(size=(3, 16, 16, 2)).astype(np.float32)
    s1 = bands.wavelengths(bands.S1)
    out = _direct(model, variables, x, s1)
    encoder = dense_probe.Encoder(dense_probe.Features(model, 16), 2, wavelengths=s1)
    (level,) = encoder.levels(variables, x)
    np.testing.assert_allclose(level, np.asarray(out["patch_tokens"]).reshape(3, 2, 2, -1),
                               atol=2e-5, rtol=1e-5)
    head = {"kernel": jnp.eye(TINY["embed_dim"]), "bias": jnp.zeros(TINY["embed_dim"])}
    classifier = finetune.Classifier(model, variables, head, 16, batch=2, wavelengths=s1)
    np.testing.assert_allclose(classifier.logits(x), np.asarray(out["embedding"]), atol=2e-5,
                               rtol=1e-5)


def test_online_probe_and_monitor_take_the_config_bands_wavelengths(dofa):
    from test_eval_probe import TinyViT, _records
    model, _ = dofa
    config = ml_collections.ConfigDict({
        "model": {"name": ARCH, **TINY}, "data": {"bands": ("B4", "B3"), "norm": "none"},
        "probe": dict(common.base().probe, every=10)})
    probe = online.OnlineProbe(config, _records(8, 0))
    np.testing.assert_array_equal(probe.wavelengths_for(model),
                                  np.float32([0.6646, 0.5598]))
    assert probe.wavelengths_for(TinyViT()) is None  # no wavelengths for other models
    explicit = online.OnlineProbe(config, _records(8, 0), wavelengths=np.array([1.0, 2.0]))
    np.testing.assert_array_equal(explicit.wavelengths_for(model), [1.0, 2.0])
    del config.data["bands"]  # without config bands: the records' own
    assert monitor.input_bands(config, _records(2, 0)) == ("B2", "B3", "B4", "B8")


def test_linear_probe_takes_the_sensor_as_a_flag(dofa, demo_data, tmp_path, monkeypatch):
    """An S2-trained DOFA workdir probed on the S2 and on the S1 rendering of the same
    locations: the bands and wavelengths follow --dataset, and the features are the model's."""
    monkeypatch.setenv("GEOSSL_DATA", demo_data)
    model, variables = dofa
    workdir = str(tmp_path / "dofa")
    save_backbone(variables, ARCH, workdir, in_chans=13, **TINY)  # records the S2 bands
    parser = linear_probe_cli.build_parser()
    probed = {}
    for dataset in ("synthetic", "synthetic:s1"):
        args = parser.parse_args(["--workdir", workdir, "--dataset", dataset,
                                  "--label_fraction", "1", "--feature_batch", "8"])
        probe_flags.check_layers(parser, args)
        probed[dataset] = probe_flags.probe_features_from_args(args)
    s2, s1 = probed["synthetic"], probed["synthetic:s1"]
    assert s2.info["bands"] == list(bands.S2_L1C) and s1.info["bands"] == ["VV", "VH"]
    assert s1.info["wavelengths"] == [3.75, 3.75]
    assert s2.info["wavelengths"] == [float(f"{w:.6g}") for w in S2]
    np.testing.assert_array_equal(s1.test_labels, s2.test_labels)  # the same locations
    assert s1.test_features.shape == s2.test_features.shape == (8, TINY["embed_dim"])
    assert np.abs(s1.test_features - s2.test_features).max() > 1e-2

    data = probe_flags.splits_from_args(args)  # the S1 splits
    first = data.test.records[int(data.test_indices[0])]
    image = datasets.Preprocess(bands=("VV", "VH"))(first["image"], first["bands"])
    want = _direct(model, variables, image[None], [3.75, 3.75])["embedding"]
    np.testing.assert_allclose(s1.test_features[0], np.asarray(want)[0], atol=2e-5, rtol=1e-5)

    report = linear_probe_cli.main(["--workdir", workdir, "--dataset", "synthetic:s1",
                                    "--label_fraction", "1", "--epochs", "3", "--bootstrap", "0",
                                    "--feature_batch", "8", "--output", str(tmp_path / "p.json")])
    assert report["bands"] == ["VV", "VH"] and report["wavelengths"] == [3.75, 3.75]
    assert 0 < report["metrics"]["map_micro"] <= 1


def test_fixed_band_encoders_refuse_wavelengths(demo_data, tmp_path, monkeypatch):
    """A ViT given wavelengths: the Family's ValueError at every entry, before any compile; its
    workdir keeps its training bands, so S1 data without them is refused as before."""
    kw = dict(depth=1, img_size=16, patch_size=8, in_chans=13)
    vit = models.create("vit_tiny_patch16", **kw)
    variables = jax.device_get(jax.jit(vit.init)(jax.random.key(0), jnp.zeros((1, 16, 16, 13))))
    x = np.zeros((2, 16, 16, 13), np.float32)
    refusal = "the vit family takes no wavelengths"
    assert features.wavelength_kwargs(vit, None) == {}
    assert features.input_wavelengths(vit, bands.S2_L1C) is None
    with pytest.raises(ValueError, match=refusal):
        features.extract_features(vit, variables, x, wavelengths=S2)
    with pytest.raises(ValueError, match=refusal):
        features.apply_features(vit, variables, jnp.asarray(x), wavelengths=S2)
    with pytest.raises(ValueError, match=refusal):
        dense_probe.Encoder(dense_probe.Features(vit, 16), 2, wavelengths=S2)
    with pytest.raises(ValueError, match=refusal):
        finetune.Classifier(vit, variables, {}, 16, wavelengths=S2)
    with pytest.raises(ValueError, match=refusal):
        monitor.CollapseMonitor(vit, x, every=1, std_ratio_threshold=0.1, wavelengths=S2)

    monkeypatch.setenv("GEOSSL_DATA", demo_data)
    workdir = str(tmp_path / "vit")
    save_backbone(variables, "vit_tiny_patch16", workdir, **kw)
    parser = linear_probe_cli.build_parser()
    args = parser.parse_args(["--workdir", workdir, "--dataset", "synthetic:s1",
                              "--label_fraction", "1"])
    probe_flags.check_layers(parser, args)
    with pytest.raises(ValueError, match=r"band 'B1' requested but the data has bands \['VV'"):
        probe_flags.probe_features_from_args(args)
