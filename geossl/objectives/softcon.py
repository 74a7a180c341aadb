"""SoftCon: multi-label guided soft contrastive continual pretraining (Wang et al., TGRS 2024).

Student (backbone → projector → predictor) sees a Siamese-masked view of one season; the EMA
teacher (backbone → projector) sees the unmasked view of another season. The loss is
``losses.soft_contrastive_loss`` (instance contrast + λ · label-similarity soft target) over the
global batch, symmetrised over the two views. Config: ``config.objective`` (see configs/softcon_*.py).
"""

from __future__ import annotations


import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from geossl import losses, masking, patches
from geossl.data import device_views
from geossl.models import family
from geossl.models.from_config import create_from_config
from geossl.models.heads import MLPHead
from geossl.objectives import softcon_views
from geossl.objectives.base import (Fields, Objective, TeacherSpec, Variables, check, register,
                                    wavelength_kwargs)


class SoftConNet(nn.Module):
    """Backbone + MoCo-v3 projector (+ predictor on the student path)."""

    backbone: nn.Module
    keep_tokens: bool
    proj_hidden: int = 4096
    proj_dim: int = 256
    proj_layers: int = 3
    pred_hidden: int = 4096
    pred_layers: int = 2

    def setup(self):
        self.projector = MLPHead(self.proj_hidden, self.proj_dim, self.proj_layers, use_bn=True,
                                 last_bn=True)
        self.predictor = MLPHead(self.pred_hidden, self.proj_dim, self.pred_layers, use_bn=True,
                                 last_bn=False)

    def __call__(self, x, *, keep_idx=None, train: bool = True, stochastic: bool = False,
                 predict: bool = True, wavelengths=None):
        """x (B,H,W,C) → (B, proj_dim); keep_idx (B,K) patch subset for a ViT student.
        train: BatchNorm on batch statistics; stochastic: the backbone's drop path on.
        wavelengths (C,): handed to the backbone when given (a wavelength-conditioned family)."""
        kw = {"keep_idx": keep_idx} if (self.keep_tokens and keep_idx is not None) else {}
        kw.update(wavelength_kwargs(wavelengths))
        out = self.backbone(x, train=train, stochastic=stochastic, **kw)
        z = self.projector(out["embedding"], train=train)
        return self.predictor(z, train=train) if predict else z


@register("softcon")
class SoftCon(Objective):
    teacher_spec = TeacherSpec("ema", exclude=("predictor",), batch_stats=True)
    cross_sensor_pairs = True  # the two views may come from two sensors (wavelengths1 / 2)

    def __init__(self, config):
        super().__init__(config)
        o, f = config.objective, Fields(config.objective)
        self.mask_ratio = f.number("mask_ratio", "[0, 1)")
        self.temperature = f.number("temperature", "(0, inf)")
        self.soft_weight = f.number("soft_weight", "[0, inf)")
        self.soft_loss = f.choice("soft_loss", ("ce", "mse"))
        self.keep_tokens = family(config.model.name).keep_tokens
        self.backbone = create_from_config(config.model)
        self.net = SoftConNet(
            backbone=self.backbone, keep_tokens=self.keep_tokens, proj_hidden=o.proj_hidden,
            proj_dim=o.proj_dim, proj_layers=o.proj_layers, pred_hidden=o.pred_hidden,
            pred_layers=o.pred_layers)
        self.view_config = softcon_views.view_config(config)
        # device views render config.data.bands; band sets (config.data.sets) render on the host
        band_sets = bool(config.data.get("sets", None))
        check(not (band_sets and config.data.views == "device"), "config.data.views",
              "'host' or 'auto' with config.data.sets (the step renders one band list, "
              "config.data.bands)", config.data.views)
        self.views_on_device = not band_sets and device_views.views_on_device(config.data.views)

    # ----- host ------------------------------------------------------------------------------
    def make_views(self, record, rng: np.random.Generator):
        """Rendered views (config.data.views "host"), or the raw acquisitions and view parameters
        that ``_view`` renders inside the step ("device"; "auto" picks by backend)."""
        if self.views_on_device:
            return softcon_views.raw_two_view_sample(record, rng, self.view_config)
        return softcon_views.two_view_sample(record, rng, self.view_config)

    def _view(self, batch, v: int) -> jax.Array:
        """View v (1 or 2) as (B,S,S,C) float32, rendered here from raw acquisitions if needed."""
        if f"raw{v}" not in batch:
            return batch[f"view{v}"]
        return device_views.render_views(batch[f"raw{v}"], batch[f"view_params{v}"],
                                         self.view_config.render_spec())

    # ----- device ----------------------------------------------------------------------------
    def init(self, rng, batch) -> Variables:
        view1 = jnp.asarray(self._view(batch, 1))
        kw = self.init_kwargs(batch, 1)
        variables = self.net.init({"params": rng, "dropout": rng}, view1, train=False, **kw)
        return Variables(params=variables["params"],
                         extra={"batch_stats": variables.get("batch_stats", {})})

    def _student(self, params, batch_stats, x, rng, wavelengths=None):
        """Masked student forward: (B,H,W,C) → (B,proj_dim), new batch stats. Token models drop the
        masked patches; others see them filled with ``objective.mask_fill``. ``wavelengths`` (C,):
        the view's, for a wavelength-conditioned backbone."""
        o = self.config.objective
        ratio = self.mask_ratio
        mask_rng, drop_rng = jax.random.split(rng)
        keep_idx = None
        if ratio > 0:
            if self.keep_tokens:
                n = (x.shape[1] // self.backbone.patch_size) * (x.shape[2] // self.backbone.patch_size)
                keep_idx, _ = masking.keep_mask_indices(mask_rng, x.shape[0], n, ratio)
            else:
                p = int(o.mask_patch_size)
                grid = (x.shape[1] // p, x.shape[2] // p)
                keep, _ = masking.keep_mask_indices(mask_rng, x.shape[0], grid[0] * grid[1], ratio)
                kept = masking.indices_to_mask(keep, grid[0] * grid[1]).reshape(-1, *grid)
                x = patches.fill_masked_patches(x, ~kept, float(o.mask_fill))
        out, state = self.net.apply({"params": params, "batch_stats": batch_stats}, x,
                                    keep_idx=keep_idx, train=True, stochastic=True, predict=True,
                                    rngs={"dropout": drop_rng}, mutable=["batch_stats"],
                                    wavelengths=wavelengths)
        return out, state["batch_stats"]

    def _teacher(self, teacher, x, wavelengths=None):
        """Unmasked, deterministic (no drop path) teacher forward; BatchNorm on batch statistics.
        Returns the teacher with its new statistics."""
        out, state = self.net.apply(teacher, x, train=True, stochastic=False, predict=False,
                                    mutable=["batch_stats"], wavelengths=wavelengths)
        return jax.lax.stop_gradient(out), dict(teacher, batch_stats=state["batch_stats"])

    def loss(self, params, teacher, extra, batch, rng, step):
        r1, r2 = jax.random.split(rng)
        x1, x2 = self._view(batch, 1), self._view(batch, 2)
        y1, y2 = batch["labels1"], batch["labels2"]
        w1 = self.backbone_kwargs(batch, 1).get("wavelengths")  # None: a fixed-band backbone
        w2 = self.backbone_kwargs(batch, 2).get("wavelengths")
        bs = extra["batch_stats"]
        q1, bs = self._student(params, bs, x1, r1, w1)
        q2, bs = self._student(params, bs, x2, r2, w2)
        k1, teacher = self._teacher(teacher, x1, w1)
        k2, teacher = self._teacher(teacher, x2, w2)
        kw = dict(temperature=self.temperature, soft_loss=self.soft_loss)
        lam = self.soft_weight

        def sym(weight):
            return 0.5 * (losses.soft_contrastive_loss(q1, k2, y1, y2, soft_weight=weight, **kw)
                          + losses.soft_contrastive_loss(q2, k1, y2, y1, soft_weight=weight, **kw))

        total = sym(lam)
        instance = jax.lax.stop_gradient(sym(0.0))
        soft = (jax.lax.stop_gradient(total) - instance) / lam if lam else jnp.zeros(())
        metrics = {"loss_instance": instance, "loss_soft": soft}
        return total, {"metrics": metrics, "extra": {"batch_stats": bs},
                       "teacher_batch_stats": teacher["batch_stats"]}
