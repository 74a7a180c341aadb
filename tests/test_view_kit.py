"""The view kit (geossl.data.views): shared specs, per-view values, and each method's config.data
filled from its view dataclass (every field settable from the command line, defaults written
once)."""

import ast
import dataclasses
import os

import numpy as np
import pytest
from absl import flags
from ml_collections import config_flags

from configs import dense_vit_s, gfm_swin_b, pera_vit_b, softcon_vit_s
from geossl.data import augment, views
from geossl.data import bands as bl
from geossl.errors import ConfigError
from geossl.objectives import dense_views, gfm_views, pera_views, softcon_views

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: (config module, its views module, the dataclass fields taken from config.model, the config.data
#: fields the config file sets to other values than the dataclass defaults).
METHODS = {
    "softcon_vit_s": (softcon_vit_s, softcon_views, {"img_size"}, set()),
    "dense_vit_s": (dense_vit_s, dense_views, {"img_size"}, set()),
    "pera_vit_b": (pera_vit_b, pera_views, {"global_size"}, {"bands", "norm", "rgb_jitter"}),
    "gfm_swin_b": (gfm_swin_b, gfm_views, {"img_size"}, {"bands", "norm"}),
}


def _parsed(name: str, *overrides: str):
    """The config of configs/NAME.py after main.py's flag parsing of ``overrides``."""
    argv = ["main.py", f"--config={os.path.join(ROOT, 'configs', name + '.py')}", *overrides]
    values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "config file", flag_values=values,
                                    sys_argv=argv)
    values(argv)
    return values.config


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_view_field_is_in_config_data_at_its_default_unless_the_config_differs(name):
    config_module, views_module, fixed, differs = METHODS[name]
    c = config_module.get_config()
    cfg = views_module.view_config(c)
    fields = {f.name: f.default for f in dataclasses.fields(cfg)}
    assert set(fields) - fixed <= set(c.data)
    for field in fixed:
        assert getattr(cfg, field) == c.model.img_size
    changed = {k for k, default in fields.items() if k not in fixed and c.data[k] != default}
    assert changed == differs
    for k in set(fields) - fixed:       # the dataclass built back holds the config's values
        value = c.data[k]
        assert getattr(cfg, k) == (tuple(value) if isinstance(value, list) else value), k


@pytest.mark.parametrize("name,override,check", [
    ("softcon_vit_s", "--config.data.blur_p=0.3",
     lambda v: v.photometric(0).blur_p == v.photometric(1).blur_p == 0.3),
    ("dense_vit_s", "--config.data.blur_p=0.3",
     lambda v: v.photometric(0).blur_p == v.photometric(1).blur_p == 0.3),
    ("dense_vit_s", "--config.data.solarize_p=(0.2, 0.4)",
     lambda v: (v.photometric(0).solarize_p, v.photometric(1).solarize_p) == (0.2, 0.4)),
    ("pera_vit_b", "--config.data.blur_p=0.3",
     lambda v: v.student.blur_p == v.teacher.blur_p == 0.3),
    ("pera_vit_b", "--config.data.jitter_p=0.5",
     lambda v: v.student.jitter_p == v.teacher.jitter_p == 0.5),
    ("pera_vit_b", "--config.data.flip=false", lambda v: not any(
        crop.flip for _, _, crop in v.crops())),
    ("gfm_swin_b", "--config.data.vflip=true", lambda v: v.vflip),
    ("gfm_swin_b", "--config.data.nodata=0", lambda v: v.nodata == 0.0),
])
def test_command_line_override_reaches_the_view_config(name, override, check):
    config_module, views_module, _, _ = METHODS[name]
    default = views_module.view_config(config_module.get_config())
    got = views_module.view_config(_parsed(name, override))
    assert check(got) and not check(default)


def test_blur_override_changes_the_softcon_views():
    """--config.data.blur_p=0.3: both views blurred about 30% of the time (default: 100% / 10%)."""
    record = {"image": np.zeros((2, 12, 12, 13), np.uint16), "bands": list(bl.S2_L1C),
              "labels": np.array([1])}
    counts = {}
    for key, overrides in (("default", ()), ("override", ("--config.data.blur_p=0.3",))):
        cfg = softcon_views.view_config(_parsed("softcon_vit_s", *overrides))
        blurred = np.zeros(2)
        for seed in range(600):
            drawn = softcon_views.two_view_draws(record, np.random.default_rng(seed), cfg)
            blurred += [v[3].blur_sigma is not None for v in drawn]
        counts[key] = blurred / 600
    np.testing.assert_allclose(counts["default"], [1.0, 0.1], atol=0.04)
    np.testing.assert_allclose(counts["override"], [0.3, 0.3], atol=0.06)


def test_a_default_changed_in_the_dataclass_shows_up_in_the_config(monkeypatch):
    @dataclasses.dataclass(frozen=True, kw_only=True)
    class Changed(softcon_views.ViewConfig):
        blur_p: views.PerView = (0.5, 0.25)
        crop_ratio: tuple[float, float] = (0.5, 2.0)

    monkeypatch.setattr(softcon_views, "ViewConfig", Changed)
    c = softcon_vit_s.get_config("demo")
    assert c.data.blur_p == (0.5, 0.25) and c.data.crop_ratio == (0.5, 2.0)
    assert c.data.crop_scale == (0.5, 1.0)      # what the demo variant sets still wins
    cfg = softcon_views.view_config(c)
    assert isinstance(cfg, Changed) and cfg.photometric(1).blur_p == 0.25


def test_config_fields_and_from_config_round_trip():
    fields = views.config_fields(dense_views.DenseViewConfig, fixed=("img_size",))
    assert "img_size" not in fields and fields["crop_scale"] == (0.2, 1.0)
    assert isinstance(fields["blur_p"], tuple) and fields["keep_masks"] is False
    assert fields["nodata"].get() is None                   # a typed placeholder (float)
    section = {**{k: v for k, v in fields.items() if k != "nodata"}, "blur_p": [0.4, 0.6],
               "nodata": 5.0, "unrelated": 1}
    cfg = views.from_config(dense_views.DenseViewConfig, section, img_size=32)
    assert cfg.blur_p == (0.4, 0.6) and cfg.nodata == 5.0 and cfg.img_size == 32
    # fields the section lacks keep the dataclass defaults
    assert views.from_config(gfm_views.MaskedCropConfig, {}, img_size=8) == \
        gfm_views.MaskedCropConfig(img_size=8)


def test_per_view_values_and_their_errors():
    spec = views.PhotometricSpec(blur_p=(0.3,), jitter_p=(0.9, 0.2), gray_p=0.4)
    assert [spec.photometric(v).blur_p for v in (0, 1)] == [0.3, 0.3]
    assert [spec.photometric(v).jitter_p for v in (0, 1)] == [0.9, 0.2]
    assert [spec.photometric(v).gray_p for v in (0, 1)] == [0.4, 0.4]
    assert spec.photometric(0) == augment.Photometric(jitter_p=0.9, gray_p=0.4, blur_p=0.3)
    with pytest.raises(ConfigError, match=r"config.data.blur_p: expected a probability .* "
                                          r"found \(0.1, 0.2, 0.3\)"):
        views.PhotometricSpec(blur_p=(0.1, 0.2, 0.3))
    with pytest.raises(ConfigError, match=r"config.data.solarize_p: .* found 1.5"):
        views.PhotometricSpec(solarize_p=1.5)
    with pytest.raises(ConfigError, match=r"config.data.gray_replaces_jitter: expected True"):
        views.PhotometricSpec(gray_replaces_jitter=("yes",))
    with pytest.raises(ValueError, match=r"jitter_per_band\) False, found True"):
        views.PhotometricSpec(rgb_jitter=True, jitter_per_band=True)


def test_spec_errors_name_the_config_field():
    with pytest.raises(ConfigError, match=r"config.data.norm: expected one of .* found 'minmax'"):
        views.BandSpec(norm="minmax")
    with pytest.raises(ConfigError, match=r"config.data.nodata_fill: expected one of"):
        views.BandSpec(nodata_fill="nearest")
    with pytest.raises(ConfigError, match=r"config.data.crop_scale: expected a range .* "
                                          r"found \(0.0, 1.0\)"):
        views.CropSpec(crop_scale=(0.0, 1.0))
    with pytest.raises(ConfigError, match=r"config.data.local_scale: expected a range"):
        pera_views.MultiCropConfig(local_scale=(0.4, 0.05))
    with pytest.raises(ConfigError, match=r"config.data.seasons: expected one of"):
        views.pick_acquisitions(np.random.default_rng(0), 3, "both")


def test_crop_spec_draw_is_torchvision_random_resized_crop_with_flips():
    spec = views.CropSpec(crop_scale=(0.3, 0.6), crop_ratio=(0.5, 2.0), flip=False, vflip=True)
    vflips = 0
    for seed in range(200):
        geo = spec.draw(np.random.default_rng(seed), 30, 40)
        rng = np.random.default_rng(seed)
        assert geo["box"] == augment.random_resized_crop_box(rng, 30, 40, (0.3, 0.6), (0.5, 2.0))
        assert geo["vflip"] == (rng.random() < 0.5) and not geo["hflip"]
        vflips += geo["vflip"]
    assert 70 < vflips < 130


def test_pick_acquisitions_policies():
    rng = np.random.default_rng(0)
    same = [views.pick_acquisitions(rng, 4, "same") for _ in range(400)]
    assert all(a == b for a, b in same) and {a for a, _ in same} == {0, 1, 2, 3}
    distinct = [views.pick_acquisitions(rng, 4, "distinct") for _ in range(400)]
    assert all(a != b for a, b in distinct)
    independent = [views.pick_acquisitions(rng, 4, "independent") for _ in range(2000)]
    assert abs(np.mean([a == b for a, b in independent]) - 0.25) < 0.04


def test_no_views_module_imports_another_method():
    folder = os.path.join(ROOT, "geossl", "objectives")
    for name in sorted(os.listdir(folder)):
        if not name.endswith("_views.py"):
            continue
        tree = ast.parse(open(os.path.join(folder, name)).read())
        imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import)
                    for alias in node.names}
        imported |= {f"{node.module}.{alias.name}" for node in ast.walk(tree)
                     if isinstance(node, ast.ImportFrom) for alias in node.names}
        assert not [m for m in imported if m.startswith("geossl.objectives")], name
