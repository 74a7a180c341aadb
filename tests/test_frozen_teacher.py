"""A frozen teacher of another architecture, described by ``config.teacher`` and built by the trainer:
its weights come from a torch checkpoint (converted by the trainer, not the objective), it is
never updated, and the objective applies it deterministically."""

import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import common
from geossl import convert, losses, objectives
from geossl.parallel import mesh as mesh_lib
from geossl.parallel.multihost import global_batch
from geossl.train import checkpoint as ckpt_lib
from geossl.train import loop
from geossl.train.loop import build_trainer
from tests.torch_refs import torch_resnet


@objectives.register("distill_test")
class _Distill(objectives.Objective):
    """Student: one linear map of the mean pixel to the teacher's width; loss: cosine
    distillation against the frozen ResNet teacher's embedding of the same images."""

    teacher_spec = objectives.TeacherSpec("frozen")

    def make_views(self, record, rng):
        """The first acquisition's first 3 bands scaled to ~[0, 1]: image (S, S, 3)."""
        return {"image": np.asarray(record["image"][0, :, :, :3], np.float32) / 10000}

    def init(self, rng, batch):
        c = batch["image"].shape[-1]
        params = {"w": jax.random.normal(rng, (c, 512)) * 0.1}
        return objectives.Variables(params=params, teacher=None, extra={})

    def loss(self, params, teacher, extra, batch, rng, step):
        x = batch["image"]
        target = self.teacher_model.apply(teacher, x, train=False, stochastic=False)["embedding"]
        student = jnp.mean(x, axis=(1, 2)) @ params["w"]
        loss = losses.cosine_distillation_loss(student, target)
        return loss, {"metrics": {"loss_feat": loss}, "extra": extra}

    def backbone_variables(self, variables):
        return {"params": variables.params}


def _config(checkpoint: str) -> ml_collections.ConfigDict:
    c = common.base()
    c.objective = ml_collections.ConfigDict(dict(name="distill_test"))
    c.model = ml_collections.ConfigDict(dict(name="resnet18", in_chans=3))
    c.teacher = common.teacher(dict(name="resnet18", in_chans=3, img_size=32, dtype="float32"),
                               torch_checkpoint=checkpoint)
    c.optim = common.optim("adamw", weight_decay=0.0)
    c.lr = ml_collections.ConfigDict(dict(name="constant", base=0.1))
    c.total_steps, c.global_batch = 4, 8
    return c


def test_frozen_resnet_teacher_is_loaded_by_the_trainer_and_never_moves(tmp_path):
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file
    net = torch_resnet("resnet18", 3, seed=3, keep_fc=False)
    sd = {k: v.detach().clone().contiguous() for k, v in net.state_dict().items()}
    path = str(tmp_path / "teacher.safetensors")
    save_file(sd, path)

    config = _config(path)
    objective = _Distill(config)
    mesh = mesh_lib.make_mesh(ml_collections.ConfigDict(dict(data=-1, fsdp=1, model=1)))
    images = np.random.default_rng(0).random((8, 32, 32, 3)).astype(np.float32)
    trainer = build_trainer(config, objective, mesh, {"image": images[:2]})
    state = trainer.init_state()

    expected = convert.from_torch(sd, "resnet18")
    for want, got in zip(jax.tree_util.tree_leaves(expected), jax.tree_util.tree_leaves(state.teacher)):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    # the teacher's embedding is torchvision's (eval mode), so the checkpoint really is in use
    with torch.no_grad():
        ref = net.eval()(torch.from_numpy(images.transpose(0, 3, 1, 2))).numpy()
    out = objective.teacher_model.apply(jax.device_get(state.teacher), images)["embedding"]
    np.testing.assert_allclose(np.asarray(out), ref, rtol=1e-4, atol=1e-4)

    teacher0 = jax.device_get(state.teacher)
    w0 = np.asarray(state.params["w"])
    batch = global_batch({"image": images}, mesh)
    for _ in range(2):
        state, metrics = trainer.train_step(state, batch)
    for a, b in zip(jax.tree_util.tree_leaves(teacher0), jax.tree_util.tree_leaves(state.teacher)):
        np.testing.assert_array_equal(np.asarray(b), a)
    assert not np.allclose(np.asarray(state.params["w"]), w0)
    assert "momentum" not in metrics and np.isfinite(float(metrics["loss_feat"]))


def test_teacher_checkpoint_of_the_wrong_architecture_is_refused(tmp_path):
    pytest.importorskip("torch")
    from safetensors.torch import save_file
    sd = {k: v.detach().clone().contiguous()
          for k, v in torch_resnet("resnet34", 3, keep_fc=False).state_dict().items()}
    path = str(tmp_path / "resnet34.safetensors")
    save_file(sd, path)
    config = _config(path)
    objective = _Distill(config)
    mesh = mesh_lib.make_mesh(ml_collections.ConfigDict(dict(data=-1, fsdp=1, model=1)))
    trainer = build_trainer(config, objective, mesh, {"image": np.zeros((2, 32, 32, 3), np.float32)})
    with pytest.raises(convert.ConversionError, match="unexpected"):
        trainer.init_state()


def _teacher_file(tmp_path, seed: int) -> str:
    from safetensors.torch import save_file
    net = torch_resnet("resnet18", 3, seed=seed, keep_fc=False)
    path = str(tmp_path / f"teacher{seed}.safetensors")
    save_file({k: v.detach().clone().contiguous() for k, v in net.state_dict().items()}, path)
    return path


def _dir_bytes(folder: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(folder) for f in files)


def test_frozen_teacher_is_not_checkpointed_and_is_rebuilt_on_resume(tmp_path):
    """Checkpoints hold the student only (each save far below the 45 MB teacher); resuming rebuilds the teacher from config.teacher; another teacher is refused."""
    pytest.importorskip("torch")
    from data_prep import synthetic
    data = str(tmp_path / "data")
    synthetic.generate(data, num_locations=16, heldout=0, size=32, seasons=1, num_shards=1,
                       verbose=False)
    config = _config(_teacher_file(tmp_path, seed=3))
    config.data.train = os.path.join(data, "train-*.tfrecord")
    config.total_steps, config.checkpoint_every, config.log_every = 4, 2, 1
    config.async_checkpoints, config.export.torch = False, False
    workdir = str(tmp_path / "run")
    loop.run(config, workdir)

    teacher_bytes = sum(np.asarray(x).nbytes for x in jax.tree_util.tree_leaves(
        convert.from_torch(convert.load_state_dict(config.teacher.torch_checkpoint), "resnet18")))
    sizes = [_dir_bytes(os.path.join(workdir, "checkpoints", str(s), "state")) for s in (2, 4)]
    assert teacher_bytes > 40e6 and max(sizes) < 0.01 * teacher_bytes, sizes
    raw = ckpt_lib.Checkpointer(workdir, async_save=False).restore_raw()
    assert raw.get("teacher") is None and raw["params"]["w"].shape == (3, 512)

    config.total_steps = 6
    summary = loop.run(config, workdir)  # resumes at 4 with the teacher rebuilt from its file
    assert summary["final_step"] == 6
    assert np.isfinite(summary["last_metrics"]["loss_feat"])
    expected = convert.from_torch(convert.load_state_dict(config.teacher.torch_checkpoint), "resnet18")
    for want, got in zip(jax.tree_util.tree_leaves(expected),
                         jax.tree_util.tree_leaves(summary["state"].teacher)):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))

    before = open(os.path.join(workdir, "config.json")).read()
    config.teacher.torch_checkpoint = _teacher_file(tmp_path, seed=4)
    config.total_steps = 8
    with pytest.raises(ckpt_lib.CheckpointMismatchError, match="frozen teacher"):
        loop.run(config, workdir)
    assert open(os.path.join(workdir, "config.json")).read() == before
