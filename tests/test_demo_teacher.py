"""A frozen teacher pretrained by geossl (``teacher.torch_checkpoint = "pretrained:METHOD"``,
``train/pretrained.py``): the source parsed strictly, the checkpoint's name keyed by the whole
pretraining run, written once and atomically, and the real chain (SoftCon run → Microsoft-layout
export → GFM's frozen teacher) at tiny scale."""

import json
import os

import jax
import ml_collections
import numpy as np
import pytest

from configs import gfm_swin_b
from geossl import convert, objectives
from geossl.errors import ConfigError
from geossl.models.from_config import create_from_config
from geossl.train import pretrained
from geossl.train import teacher as teacher_lib

TINY = dict(name="swin_tiny_patch4_window7_224", embed_dim=16, depths=(1, 1), num_heads=(2, 2))


def demo_teacher() -> ml_collections.ConfigDict:
    """The demo's ``config.teacher`` with a 24 px Swin of 16 channels (window 6), 13 bands."""
    c = gfm_swin_b.get_config("demo")
    c.teacher.model.update(dict(TINY, img_size=24, window_size=6))
    return c.teacher


def stand_in(calls: list):
    """A ``pretrain_backbone`` that records its run and returns normal noise (seeded by the run's
    seed plus its step count: other steps, other weights) in the shapes of the run's model."""
    def pretrain(run, workdir):
        calls.append((run, workdir))
        size, chans = int(run.model.img_size), int(run.model.in_chans)
        shapes = jax.eval_shape(create_from_config(run.model).init, jax.random.PRNGKey(0),
                                np.zeros((1, size, size, chans), np.float32))
        rng = np.random.default_rng(run.seed + run.total_steps)
        return jax.tree_util.tree_map(lambda s: rng.standard_normal(s.shape).astype(s.dtype),
                                      dict(shapes)), 1.5
    return pretrain


def assert_same_weights(got, want) -> None:
    """Equal parameter trees, but for ``mask_token``: the Microsoft layout has none (the import
    fills it), and GFM's teacher never masks."""
    def leaves(tree):
        return {jax.tree_util.keystr(p): np.asarray(x)
                for p, x in jax.tree_util.tree_leaves_with_path(tree)}
    got, want = leaves(got), leaves(want)
    assert sorted(got) == sorted(want)
    for key in want:
        if key != "['mask_token']":
            np.testing.assert_array_equal(got[key], want[key], err_msg=key)


@pytest.fixture
def teachers(tmp_path, monkeypatch):
    monkeypatch.setenv("GEOSSL_DEMO_TEACHERS", str(tmp_path / "teachers"))
    return tmp_path / "teachers"


def test_demo_config_asks_for_a_softcon_teacher_and_writes_nothing(teachers):
    c = gfm_swin_b.get_config("demo")
    assert c.teacher.torch_checkpoint == "pretrained:softcon"
    run = pretrained.teacher_pretraining_run(c.teacher.model, c.teacher.pretrain)
    assert run.objective.name == "softcon" and run.objective.mask_patch_size == 8
    assert tuple(run.data.bands) == tuple(c.teacher.bands) == tuple(c.data.bands)
    assert len(c.teacher.bands) == c.teacher.model.in_chans == 13
    assert run.data.norm == c.data.norm                      # the student's normalisation ...
    assert tuple(c.teacher.input_scale) == (1.0,) * 13       # ... so the input map is the identity
    assert tuple(c.teacher.input_offset) == (0.0,) * 13
    assert run.data.gray_p == 0.0 and run.lr.base == 3e-3 and run.total_steps == 800
    assert dict(run.model) == dict(c.teacher.model) and run.model.img_size == 48
    assert "model" not in c.teacher.pretrain
    assert not teachers.exists()


@pytest.mark.parametrize("source, message", [
    ("random:7", "expected a path, 'random:seed=N' or 'pretrained:METHOD', found 'random:7'"),
    ("random:seed=", "found 'random:seed='"),
    ("random:seed=1,steps=2", "found 'random:seed=1,steps=2'"),
    ("pretrained:", "expected a path, 'random:seed=N' or 'pretrained:METHOD', found 'pretrained:'"),
    ("pretrained:soft con", "found 'pretrained:soft con'"),
    ("pretrained:mae", "expected 'pretrained:softcon' (the objective of config.teacher.pretrain), "
                       "found 'pretrained:mae'"),
    ("pretrained:softcon:steps=4", "found 'pretrained:softcon:steps=4'"),
])
def test_a_bad_source_is_one_config_error_and_writes_nothing(teachers, monkeypatch, source, message):
    monkeypatch.setattr(pretrained, "pretrain_backbone", stand_in(calls := []))
    t = demo_teacher()
    with pytest.raises(ConfigError, match="config.teacher.torch_checkpoint: ") as e:
        pretrained.resolve_checkpoint(source, t.model, t.pretrain)
    assert message in str(e.value) and "\n" not in str(e.value)
    assert not calls and not teachers.exists()


def test_good_sources_parse_to_their_kind_without_writing(teachers):
    t = demo_teacher()
    assert pretrained.parse_source("random:seed=12") == ("random", 12)
    assert pretrained.parse_source("pretrained:softcon", t.pretrain) == ("pretrained", "softcon")
    assert pretrained.parse_source("/w/teacher.pth") == ("path", "/w/teacher.pth")
    assert pretrained.resolve_checkpoint("/w/teacher.pth", t.model, t.pretrain) == "/w/teacher.pth"
    assert not teachers.exists()


def test_pretrained_source_needs_a_run_without_model(teachers):
    t = demo_teacher()
    del t.pretrain.objective.name
    with pytest.raises(ConfigError, match=r"^config.teacher.pretrain.objective.name: expected"):
        pretrained.resolve_checkpoint("pretrained:softcon", t.model, t.pretrain)
    t = demo_teacher()
    with pytest.raises(ConfigError, match=r"^config.teacher.pretrain: expected the run config"):
        pretrained.resolve_checkpoint("pretrained:softcon", t.model, None)
    t.pretrain.model = ml_collections.ConfigDict(dict(name="resnet18"))
    with pytest.raises(ConfigError, match=r"^config.teacher.pretrain.model: expected none .* "
                                          r"found \{'name': 'resnet18'\}"):
        pretrained.resolve_checkpoint("pretrained:softcon", t.model, t.pretrain)
    assert not teachers.exists()


def test_the_name_changes_with_every_setting_of_the_run(teachers, monkeypatch):
    monkeypatch.setattr(pretrained, "pretrain_backbone", stand_in(calls := []))
    t = demo_teacher()

    def resolve(**changes):
        teacher = ml_collections.ConfigDict(t.to_dict())
        for path, value in changes.items():
            *parents, last = path.split(".")
            section = teacher
            for p in parents:
                section = section[p]
            section[last] = value
        return pretrained.resolve_checkpoint("pretrained:softcon", teacher.model, teacher.pretrain)

    base = resolve()
    assert os.path.basename(base).startswith("pretrained-softcon-swin_tiny_patch4_window7_224-")
    variants = [resolve(**{"pretrain.total_steps": 801}), resolve(**{"pretrain.seed": 1}),
                resolve(**{"pretrain.objective.temperature": 0.1}),
                resolve(**{"pretrain.data.bands": tuple(reversed(t.bands))}),
                resolve(**{"pretrain.lr.base": 2e-3}), resolve(**{"model.embed_dim": 8})]
    assert len({base, *variants}) == 7
    # Settings that leave the weights unchanged (the resolver sets them) name the same file.
    assert resolve(**{"pretrain.log_every": 3, "pretrain.probe.every": 7}) == base
    assert len(calls) == 7
    assert [int(run.total_steps) for run, _ in calls[:2]] == [800, 801]
    assert calls[-1][0].model.embed_dim == 8           # the run pretrains the teacher's model


def test_written_once_atomically_in_the_microsoft_layout(teachers, monkeypatch):
    """The pretrained network appears through ``os.replace`` of a complete temporary file (a
    reader never sees a partial one); its workdir is removed; a second resolution reuses it."""
    monkeypatch.setattr(pretrained, "pretrain_backbone", stand_in(calls := []))
    t = demo_teacher()
    replaced, real_replace = [], os.replace

    def replace(src, dst):
        if str(dst).endswith(".safetensors"):
            assert not os.path.exists(dst)                        # nothing there before
            replaced.append((sorted(convert.load_state_dict(src)), dst))  # the complete file
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    path = pretrained.resolve_checkpoint("pretrained:softcon", t.model, t.pretrain)
    assert [dst for _, dst in replaced] == [path]
    sd = convert.load_state_dict(path)
    assert replaced[0][0] == sorted(sd)
    assert "layers.0.downsample.reduction.weight" in sd   # Microsoft layout (timm: layers.1.downsample)
    assert json.loads(convert.read_metadata(path)["geossl.bands"]) == list(t.bands)
    assert os.listdir(teachers) == [os.path.basename(path)]   # no workdir, no temporary file
    assert calls[0][1] == path.replace(".safetensors", ".run")

    run, _ = calls[0]
    want, _ = stand_in([])(run, "")
    got = convert.from_torch(sd, t.model.name, img_size=24, window_size=6, in_chans=13,
                             embed_dim=16, depths=(1, 1), num_heads=(2, 2))
    assert_same_weights(got["params"], want["params"])

    stamp = os.stat(path).st_mtime_ns
    assert pretrained.resolve_checkpoint("pretrained:softcon", t.model, t.pretrain) == path
    assert len(calls) == 1 and os.stat(path).st_mtime_ns == stamp and len(replaced) == 1


def test_real_chain_softcon_run_then_gfm_teacher(tmp_path, monkeypatch):
    """Two SoftCon steps of a 24 px Swin on tiny synthetic shards, exported in the Microsoft layout,
    loaded strictly as GFM's frozen teacher: the teacher holds exactly the trained backbone."""
    from data_prep import synthetic
    monkeypatch.setenv("GEOSSL_DEMO_TEACHERS", str(tmp_path / "teachers"))
    synthetic.generate(str(tmp_path / "data"), num_locations=16, heldout=0, size=16, seasons=2,
                       num_shards=1, num_workers=1, verbose=False)
    c = gfm_swin_b.get_config("demo")
    c.model.update(dict(TINY, img_size=16, window_size=4))
    c.teacher.model.update(dict(TINY, img_size=24, window_size=6))
    c.teacher.pretrain.update(dict(total_steps=2, global_batch=8))
    c.teacher.pretrain.data.train = str(tmp_path / "data" / "train-*.tfrecord")
    c.teacher.pretrain.objective.update(dict(proj_hidden=32, proj_dim=16, pred_hidden=32))
    c.teacher.pretrain.lr.warmup_steps = 0

    trained, real = [], pretrained.pretrain_backbone

    def spy(run, workdir):
        variables, loss = real(run, workdir)
        assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["2"]  # 2 steps run
        trained.append(variables)
        return variables, loss

    monkeypatch.setattr(pretrained, "pretrain_backbone", spy)
    obj = objectives.create(c)
    teacher = teacher_lib.build_frozen(c, obj, jax.random.PRNGKey(0))   # strict: same tree
    (variables,) = trained
    assert not jax.tree_util.tree_leaves(variables.get("batch_stats", {}))
    assert_same_weights(jax.device_get(teacher["params"]), variables["params"])
    path = pretrained.resolve_checkpoint(c.teacher.torch_checkpoint, c.teacher.model,
                                         c.teacher.pretrain)
    assert len(trained) == 1 and os.listdir(tmp_path / "teachers") == [os.path.basename(path)]
