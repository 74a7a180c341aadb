"""GFM: SimMIM reconstruction plus feature distillation from a frozen teacher (Mendieta et al.,
ICCV 2023; REFERENCE §4).

The student (a Swin, or a ViT / DOFA as geossl's extension) sees one random crop with 60% of its
mask units replaced by its mask token. A 1×1 conv (a Dense on the final-normed map) to stride²·C
values per location, pixel-shuffled by the encoder stride, reconstructs the masked pixels:
L_MIM = Σ|x − x̂|·M / (ΣM + 1e-5) / C on the normalised input. The frozen teacher sees the unmasked
crop resized to its input size (bilinear, corners aligned), its bands affinely rescaled into its
own normalisation; f = average pool of the last patch-merging output (Swin: stage 3 after its
merging, not normalised) for both networks, P = Linear with bias on the student,
L_feat = −mean cos(P(f_S), sg(f_T)); L = L_MIM + α·L_feat. A teacher without patch merging (a ViT
or DOFA: geossl's extension) gives the average of its final patch tokens. A wavelength-conditioned
network (DOFA) gets the batch's wavelengths; the teacher those of its bands (``teacher_bands``).

Parameters: ``backbone`` (its ``mask_token`` is SimMIM's, trunc-normal 0.02), ``decoder``,
``projector``. The teacher is ``{"params": ...}`` of ``config.teacher.model``, stored in that
model's ``dtype`` (bfloat16 halves its memory), never in the optimiser state.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from geossl import losses, masking, models
from geossl.data import bands as bands_lib
from geossl.models.from_config import create_from_config
from geossl.objectives import gfm_views
from geossl.objectives.base import (Fields, Objective, TeacherSpec, Variables, check, register,
                                    wavelength_kwargs)
from geossl.patches import pixel_shuffle, resize_align_corners

#: torch's default Conv2d / Linear kernel init, uniform ±1/√fan_in (GFM's decoder and projector);
#: biases start at zero.
torch_default_kernel = nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform")


# ----- the objective ------------------------------------------------------------------------------
@register("gfm")
class GFM(Objective):
    teacher_spec = TeacherSpec("frozen")

    def __init__(self, config):
        super().__init__(config)
        f = Fields(config.objective)
        family = self.require_backbone("mask_token", why="GFM's SimMIM masking")
        self.backbone = create_from_config(config.model)
        self.img_size = int(config.model.img_size)
        self.in_chans = int(config.model.in_chans)
        self.patch = int(self.backbone.patch_size)
        self.stride = int(self.backbone.stride)
        self.distill_block = None
        if family.merging:
            check(len(self.backbone.depths) >= 2, "config.model.depths",
                  "2+ stages (GFM distils a patch-merging output)", tuple(self.backbone.depths))
        else:
            self.require_backbone("mask_token", "patch_tokens", why="GFM without patch merging")
            self.distill_block = f.integer("distill_block", f"[0, {self.backbone.depth - 1}]")
        self.mask_unit = f.integer("mask_unit", "[1, inf)")
        self.mask_ratio = f.number("mask_ratio", "(0, 1)")
        check(self.mask_unit % self.patch == 0 and self.img_size % self.mask_unit == 0,
              "config.objective.mask_unit",
              f"a multiple of the patch size {self.patch} dividing img_size {self.img_size}",
              self.mask_unit)
        check(self.img_size % self.stride == 0, "config.model.img_size",
              f"a multiple of the encoder stride {self.stride}", self.img_size)
        self.feat_weight = f.number("feat_weight", "[0, inf)")
        self.decoder = nn.Dense(self.stride ** 2 * self.in_chans, kernel_init=torch_default_kernel)

        t = config.teacher
        if not models.family(t.model.name).merging:
            self.require_backbone("patch_tokens", path="config.teacher.model.name",
                                  why="GFM's distilled feature (the teacher's last patch-merging "
                                      "output, else its final patch tokens)")
        self.teacher_size = int(t.model.img_size)
        data_bands = tuple(config.data.bands)
        self.teacher_bands = bands_lib.band_indices(data_bands, tuple(t.bands), "config.teacher.bands",
                                                    zero_fill=())
        c_t = len(self.teacher_bands)
        check(c_t == int(t.model.in_chans), "config.teacher.bands",
              f"{t.model.in_chans} bands (config.teacher.model.in_chans)", tuple(t.bands))
        self.teacher_scale = self._per_band("config.teacher.input_scale", t.input_scale, c_t)
        self.teacher_offset = self._per_band("config.teacher.input_offset", t.input_offset, c_t)
        # A Swin's last patch-merging output is as wide as its last stage (num_features).
        self.projector = nn.Dense(int(self.teacher_model.num_features),
                                  kernel_init=torch_default_kernel)
        self.view_config = gfm_views.view_config(config)

    @staticmethod
    def _per_band(path: str, values, c: int) -> np.ndarray:
        v = np.asarray(tuple(values), np.float32)
        check(v.shape == (c,), path, f"{c} values (one per teacher band)", tuple(values))
        return v

    @property
    def fixed_bands(self) -> tuple[str, ...]:
        """The decoder predicts ``config.data.bands``, in that order, and the teacher reads some
        of them by position (``teacher_bands``)."""
        return tuple(self.config.data.bands)

    # ----- host ------------------------------------------------------------------------------
    def make_views(self, record, rng: np.random.Generator):
        """image (S, S, C) float32: one random crop, flipped at random, normalised."""
        return gfm_views.masked_crop_sample(record, rng, self.view_config)

    # ----- device ----------------------------------------------------------------------------
    def init(self, rng, batch) -> Variables:
        r_bb, r_dec, r_proj, r_tok = jax.random.split(rng, 4)
        x = jnp.asarray(batch["image"])[:1]
        kw = self.init_kwargs(batch)
        backbone = self.backbone.init({"params": r_bb, "dropout": r_bb}, x, **kw)["params"]
        if self.distill_block is not None:  # SimMIM's ViT mask token: trunc-normal 0.02
            backbone = dict(backbone, mask_token=0.02 * jax.random.truncated_normal(
                r_tok, -2.0, 2.0, backbone["mask_token"].shape, jnp.float32))
        d = int(self.backbone.num_features)
        params = {
            "backbone": backbone,
            "decoder": self.decoder.init(r_dec, jnp.zeros((1, d)))["params"],
            "projector": self.projector.init(r_proj, jnp.zeros((1, d)))["params"],
        }
        return Variables(params=params)

    def masks(self, rng, batch: int):
        """(patch mask (B, H/p, W/p) or (B, N) for a ViT, pixel mask (B, H, W)), True = masked."""
        g = self.img_size // self.mask_unit
        units = masking.unit_mask(rng, batch, (g, g), self.mask_ratio)
        patches = masking.upsample_mask(units, self.mask_unit // self.patch)
        if self.distill_block is not None:
            patches = patches.reshape(batch, -1)
        return patches, masking.upsample_mask(units, self.mask_unit)

    def student(self, params, x, patch_mask, rng, wavelengths=None):
        """Masked student on x (B,S,S,C): (reconstruction (B,S,S,C), distilled feature (B,D_s)).
        ``wavelengths`` (C,): for a wavelength-conditioned backbone (``backbone_kwargs``)."""
        bb = self.backbone
        kw = wavelength_kwargs(wavelengths)
        if self.distill_block is None:
            out = bb.apply({"params": params["backbone"]}, x, mask=patch_mask, stochastic=True,
                           rngs={"dropout": rng}, **kw)
            fmap = out["feature_map"]
            feature = out["merged"][-1].mean(axis=(1, 2))
        else:
            out = bb.apply({"params": params["backbone"]}, x, mask=patch_mask, stochastic=True,
                           rngs={"dropout": rng}, return_layers=(self.distill_block,), **kw)
            g = self.img_size // self.patch
            fmap = out["patch_tokens"].reshape(x.shape[0], g, g, -1)
            feature = out["intermediates"][0][:, bb.num_prefix_tokens:].mean(axis=1)
        pred = self.decoder.apply({"params": params["decoder"]}, fmap.astype(jnp.float32))
        pred = pixel_shuffle(pred, self.stride, self.in_chans)
        return pred, feature

    def teacher_input(self, x) -> jax.Array:
        """(B,S,S,C) normalised student crops → (B,T,T,C_t): teacher bands, resized with corners
        aligned, then x·input_scale + input_offset (into the teacher's normalisation)."""
        x = x[..., np.asarray(self.teacher_bands)]
        x = resize_align_corners(x, self.teacher_size)
        return x * jnp.asarray(self.teacher_scale) + jnp.asarray(self.teacher_offset)

    def teacher_wavelengths(self, batch):
        """(C_t,) wavelengths of the teacher's bands (the batch's at ``teacher_bands``) for a
        wavelength-conditioned teacher; None for the others."""
        w = self.backbone_kwargs(batch, teacher=True).get("wavelengths")
        return None if w is None else w[np.asarray(self.teacher_bands)]

    def teacher_feature(self, teacher, x, wavelengths=None) -> jax.Array:
        """(B,D_t) float32: average pool of the frozen teacher's last patch-merging output, or of
        its final patch tokens (a model without patch merging). ``wavelengths`` (C_t,): its bands'
        (``teacher_wavelengths``), for a wavelength-conditioned teacher."""
        model = self.teacher_model
        t_x = self.teacher_input(x).astype(model.dtype)
        out = model.apply(teacher, t_x, train=False, stochastic=False,
                          **wavelength_kwargs(wavelengths))
        if "merged" in out:
            feature = out["merged"][-1].astype(jnp.float32).mean(axis=(1, 2))
        else:
            feature = out["patch_tokens"].astype(jnp.float32).mean(axis=1)
        return jax.lax.stop_gradient(feature)

    def loss(self, params, teacher, extra, batch, rng, step):
        x = batch["image"].astype(jnp.float32)
        r_mask, r_drop = jax.random.split(rng)
        patch_mask, pixel_mask = self.masks(r_mask, x.shape[0])
        pred, f_s = self.student(params, x, patch_mask, r_drop,
                                 self.backbone_kwargs(batch).get("wavelengths"))
        loss_mim = losses.masked_l1_loss(pred, x, pixel_mask)
        z_s = self.projector.apply({"params": params["projector"]}, f_s.astype(jnp.float32))
        f_t = self.teacher_feature(teacher, x, self.teacher_wavelengths(batch))
        loss_feat = losses.cosine_distillation_loss(z_s, f_t)
        total = loss_mim + self.feat_weight * loss_feat
        return total, {"metrics": {"loss_mim": loss_mim, "loss_feat": loss_feat}, "extra": extra}
