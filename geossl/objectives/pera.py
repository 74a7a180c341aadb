"""PerA: perfectly aligned sample pairs with disjoint masks (arXiv 2505.19447; REFERENCE §3).

Each crop comes as a student and a teacher version with one geometry (``pera_views``). One random
permutation per crop splits its patches three ways (``masking.pera_split``): the student sees
[cls + its 20%] for the first ``insert_at_block`` blocks, then PerA's own student mask token plus
the position embedding stands at the learn positions for the remaining blocks; the EMA teacher
(backbone + class head, no drop path) sees [cls + the remaining 60%] of its version. Local crops
have no learn positions. Loss = w_dino·DINO (same-index pairs, centred teacher) + w_koleo·KoLeo
(student class-head outputs, per global crop) + w_mse·MSE (pixel head at the learn positions
against the student crop's normalised pixels).

The student mask token is ``params["mask_token"]`` (1, D), N(0, 0.02), kept beside the backbone;
it is handed to the ViT in place of the backbone's own ``mask_token`` (which ``insert_idx``
reads), so the backbone's own ``mask_token`` stays zero (the timm-layout export leaves it out)
and the teacher never uses one. ``objective.dense_student`` runs the student on every token
instead (no masks, no mask token): the reference of the memory benchmark, not a training mode.
The DINO centre is ``extra["center"]`` (1, K): the loss uses the centre of the previous step and
returns 0.9·c + 0.1·mean(teacher logits over every crop of the global batch).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from geossl import losses, masking, schedules
from geossl.models.from_config import create_from_config
from geossl.models.heads import DINOHead
from geossl.objectives import pera_views
from geossl.objectives.base import (Fields, Objective, TeacherSpec, Variables, check, register,
                                    wavelength_kwargs)
from geossl.patches import patchify


def _flat(x: jax.Array) -> jax.Array:
    """(B, n, ...) crops → (B·n, ...), crop index minor."""
    return x.reshape(x.shape[0] * x.shape[1], *x.shape[2:])


@register("pera")
class PerA(Objective):
    teacher_spec = TeacherSpec("ema", exclude=("pixel_head", "mask_token"))

    def __init__(self, config):
        super().__init__(config)
        o, f = config.objective, Fields(config.objective)
        self.require_backbone("keep_tokens", "insert_tokens", why="PerA's disjoint token masks")
        for name in ("student_ratio", "learn_ratio", "center_momentum"):
            f.number(name, "[0, 1]")
        check(float(o.student_ratio) <= float(o.learn_ratio), "config.objective.learn_ratio",
              f"at least student_ratio {o.student_ratio} (the cumulative student + learn share)",
              o.learn_ratio)
        for name in ("student_temp", "teacher_temp", "teacher_temp_final"):
            f.number(name, "(0, inf)")
        for name in ("dino_weight", "koleo_weight", "mse_weight"):
            f.number(name, "[0, inf)")
        for name in ("num_prototypes", "head_hidden", "head_bottleneck", "head_layers"):
            f.integer(name, "[1, inf)")
        self.backbone = create_from_config(config.model)
        self.patch_size = self.backbone.patch_size
        self.in_chans = self.backbone.in_chans
        head = dict(hidden_dim=int(o.head_hidden), bottleneck_dim=int(o.head_bottleneck),
                    num_layers=int(o.head_layers), norm_last_layer=False)
        self.class_head = DINOHead(out_dim=int(o.num_prototypes), **head)
        self.pixel_head = DINOHead(out_dim=self.patch_size ** 2 * self.in_chans, **head)
        self.insert_at_block = f.integer("insert_at_block", f"[1, {self.backbone.depth - 1}]")
        self.teacher_temp = schedules.make_schedule(dict(
            name="linspace", start=float(o.teacher_temp), end=float(o.teacher_temp_final),
            steps=f.integer("teacher_temp_warmup_steps")))
        self.dense_student = bool(o.dense_student)
        self.view_config = pera_views.view_config(config)

    @property
    def fixed_bands(self) -> tuple[str, ...]:
        """The pixel head predicts ``config.data.bands``, in that order."""
        return tuple(self.config.data.bands)

    # ----- host ------------------------------------------------------------------------------
    def make_views(self, record, rng: np.random.Generator):
        """global_student / global_teacher (G,S,S,C), local_student / local_teacher (L,s,s,C)."""
        return pera_views.multi_crop_sample(record, rng, self.view_config)

    # ----- device ----------------------------------------------------------------------------
    def init(self, rng, batch) -> Variables:
        r_bb, r_cls, r_pix, r_tok = jax.random.split(rng, 4)
        x = jnp.asarray(batch["global_student"])[:1, 0]
        kw = self.init_kwargs(batch)
        backbone = self.backbone.init({"params": r_bb, "dropout": r_bb}, x, **kw)["params"]
        d = self.backbone.num_features
        z = jnp.zeros((1, d), jnp.float32)
        params = {
            "backbone": backbone,
            "class_head": self.class_head.init(r_cls, z)["params"],
            "pixel_head": self.pixel_head.init(r_pix, z)["params"],
            "mask_token": 0.02 * jax.random.normal(r_tok, (1, d), jnp.float32),
        }
        center = jnp.zeros((1, int(self.config.objective.num_prototypes)), jnp.float32)
        return Variables(params=params, extra={"center": center})

    def split(self, rng, n: int, num_tokens: int):
        """(student_idx, learn_idx, teacher_idx) for n crops of num_tokens patches each."""
        o = self.config.objective
        return masking.pera_split(rng, n, num_tokens, float(o.student_ratio), float(o.learn_ratio))

    def _num_tokens(self, x) -> int:
        return (x.shape[1] // self.patch_size) * (x.shape[2] // self.patch_size)

    def student(self, params, x, student_idx, learn_idx, rng, wavelengths=None):
        """Sparse student on crops x (n,H,W,C): returns (class logits (n,K), pixel predictions
        (n,L,p²C) at learn_idx, or None without learn positions). Drop path on. ``wavelengths``
        (C,): for a wavelength-conditioned backbone (``backbone_kwargs``)."""
        if self.dense_student:
            return self._dense_student(params, x, learn_idx, rng, wavelengths)
        bb = dict(params["backbone"], mask_token=params["mask_token"])
        kw = wavelength_kwargs(wavelengths)
        if learn_idx is not None:
            kw.update(insert_idx=learn_idx, insert_at_block=self.insert_at_block)
        out = self.backbone.apply({"params": bb}, x, keep_idx=student_idx, stochastic=True,
                                  rngs={"dropout": rng}, **kw)
        logits = self.class_head.apply({"params": params["class_head"]}, out["embedding"])
        if learn_idx is None:
            return logits, None
        tokens = out["patch_tokens"][:, student_idx.shape[1]:]
        return logits, self.pixel_head.apply({"params": params["pixel_head"]}, tokens)

    def _dense_student(self, params, x, learn_idx, rng, wavelengths=None):
        """``objective.dense_student``: every token visible, no mask token; pixel predictions read
        the learn positions' own tokens (the memory reference of ``benchmarks/memory.py``)."""
        out = self.backbone.apply({"params": params["backbone"]}, x, stochastic=True,
                                  rngs={"dropout": rng}, **wavelength_kwargs(wavelengths))
        logits = self.class_head.apply({"params": params["class_head"]}, out["embedding"])
        if learn_idx is None:
            return logits, None
        tokens = jnp.take_along_axis(out["patch_tokens"], learn_idx[..., None], axis=1)
        return logits, self.pixel_head.apply({"params": params["pixel_head"]}, tokens)

    def teacher(self, teacher, x, teacher_idx, wavelengths=None):
        """Deterministic teacher on [cls + teacher_idx] of crops x: class logits (n,K)."""
        tp = teacher["params"]
        out = self.backbone.apply({"params": tp["backbone"]}, x, keep_idx=teacher_idx,
                                  stochastic=False, **wavelength_kwargs(wavelengths))
        logits = self.class_head.apply({"params": tp["class_head"]}, out["embedding"])
        return jax.lax.stop_gradient(logits)

    def loss(self, params, teacher, extra, batch, rng, step):
        o = self.config.objective
        b, g = batch["global_student"].shape[:2]
        r_gm, r_lm, r_gd, r_ld = jax.random.split(rng, 4)
        xs_g, xt_g = _flat(batch["global_student"]), _flat(batch["global_teacher"])
        xs_l, xt_l = _flat(batch["local_student"]), _flat(batch["local_teacher"])
        w = self.backbone_kwargs(batch).get("wavelengths")  # every crop has the sample's bands

        s_idx, l_idx, t_idx = self.split(r_gm, xs_g.shape[0], self._num_tokens(xs_g))
        s_global, pred = self.student(params, xs_g, s_idx, l_idx, r_gd, w)
        t_global = self.teacher(teacher, xt_g, t_idx, w)
        ls_idx, _, lt_idx = self.split(r_lm, xs_l.shape[0], self._num_tokens(xs_l))
        s_local, _ = self.student(params, xs_l, ls_idx, None, r_ld, w)
        t_local = self.teacher(teacher, xt_l, lt_idx, w)

        # DINO over same-index pairs: every pair has B rows, so the mean over all rows is the
        # mean over the pairs of their batch means.
        tau_t = self.teacher_temp(step)
        center = extra["center"]
        s_all = jnp.concatenate([s_global, s_local], axis=0)
        t_all = jnp.concatenate([t_global, t_local], axis=0)
        loss_dino = losses.dino_loss(s_all, t_all, center, student_temp=float(o.student_temp),
                                     teacher_temp=tau_t)
        m = float(o.center_momentum)
        new_center = m * center + (1 - m) * jnp.mean(t_all, axis=0, keepdims=True)

        per_crop = s_global.reshape(b, g, -1)
        loss_koleo = sum(losses.koleo_loss(per_crop[:, i]) for i in range(g))

        target = jnp.take_along_axis(patchify(xs_g, self.patch_size), l_idx[..., None], axis=1)
        loss_mse = jnp.mean(jnp.sum(jnp.square(pred.astype(jnp.float32) - target), axis=-1))

        total = (float(o.dino_weight) * loss_dino + float(o.koleo_weight) * loss_koleo
                 + float(o.mse_weight) * loss_mse)
        metrics = {"loss_dino": loss_dino, "loss_koleo": loss_koleo, "loss_mse": loss_mse,
                   "teacher_temp": tau_t, "center_norm": jnp.linalg.norm(new_center)}
        return total, {"metrics": metrics, "extra": {"center": new_center}}
