"""GFM: SimMIM reconstruction plus feature distillation from a frozen teacher (Mendieta et al.,
ICCV 2023; REFERENCE §4).

The student (a Swin, or a ViT as geossl's extension) sees one random crop with 60% of its mask
units replaced by its mask token. A 1×1 conv (a Dense on the final-normed map) to stride²·C values
per location, pixel-shuffled by the encoder stride, reconstructs the masked pixels:
L_MIM = Σ|x − x̂|·M / (ΣM + 1e-5) / C on the normalised input. The frozen teacher sees the unmasked
crop resized to its input size (bilinear, corners aligned), its bands affinely rescaled into its
own normalisation; f = average pool of the last patch-merging output (Swin: stage 3 after its
merging, not normalised) for both networks, P = Linear with bias on the student,
L_feat = −mean cos(P(f_S), sg(f_T)); L = L_MIM + α·L_feat.

Parameters: ``backbone`` (its ``mask_token`` is SimMIM's, trunc-normal 0.02), ``decoder``,
``projector``. The teacher is ``{"params": ...}`` of ``config.teacher.model``, stored in that
model's ``dtype`` (bfloat16 halves its memory), never in the optimiser state.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from geossl import losses, masking
from geossl.data import bands as bands_lib
from geossl.models import is_swin, is_vit
from geossl.models.from_config import create_from_config
from geossl.objectives import gfm_views
from geossl.objectives.base import Objective, Variables, dataclass_from_config, register


#: torch's default Conv2d / Linear kernel init, uniform ±1/√fan_in (GFM's decoder and projector);
#: biases start at zero.
torch_default_kernel = nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform")


# ----- pieces (pure functions, tested against numpy) ---------------------------------------------
def mask_count(ratio: float, units: int) -> int:
    """Masked units: ceil(ratio · units) (SimMIM's MaskGenerator), float noise rounded away."""
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"mask ratio: expected a fraction in [0, 1], found {ratio!r}")
    return int(math.ceil(round(ratio * units, 9)))


def unit_mask(rng, batch: int, grid: tuple[int, int], ratio: float) -> jax.Array:
    """(B, gh, gw) bool over mask units, exactly ``mask_count(ratio, gh·gw)`` True per sample,
    drawn independently per sample."""
    gh, gw = grid
    n = gh * gw
    (idx,) = masking.random_split(rng, batch, n, (mask_count(ratio, n),))
    return masking.indices_to_mask(idx, n).reshape(batch, gh, gw)


def align_corners_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) float32 linear-interpolation weights with corners aligned: output i samples
    input position i·(n_in − 1)/(n_out − 1) (torch ``align_corners=True``)."""
    w = np.zeros((n_out, n_in), np.float64)
    if n_out == 1 or n_in == 1:
        w[:, 0] = 1.0
        return w.astype(np.float32)
    pos = np.arange(n_out) * (n_in - 1) / (n_out - 1)
    lo = np.minimum(np.floor(pos).astype(int), n_in - 2)
    frac = pos - lo
    w[np.arange(n_out), lo] = 1.0 - frac
    w[np.arange(n_out), lo + 1] += frac
    return w.astype(np.float32)


def resize_align_corners(x: jax.Array, size: int) -> jax.Array:
    """(B,H,W,C) → (B,size,size,C), bilinear with corners aligned, separable (exact weights)."""
    wh = jnp.asarray(align_corners_matrix(x.shape[1], size))
    ww = jnp.asarray(align_corners_matrix(x.shape[2], size))
    return jnp.einsum("ih,jw,bhwc->bijc", wh, ww, x.astype(jnp.float32))


def pixel_shuffle(x: jax.Array, s: int, c: int) -> jax.Array:
    """(B,h,w,c·s·s) → (B,h·s,w·s,c); channel index c_·s² + i·s + j (torch ``PixelShuffle``)."""
    b, h, w, _ = x.shape
    x = x.reshape(b, h, w, c, s, s).transpose(0, 1, 4, 2, 5, 3)
    return x.reshape(b, h * s, w * s, c)


# ----- the objective ------------------------------------------------------------------------------
@register("gfm")
class GFM(Objective):
    teacher_mode = "frozen"

    def __init__(self, config):
        super().__init__(config)
        o = config.objective
        name = config.model.name
        self.backbone = create_from_config(config.model)
        self.img_size = int(config.model.img_size)
        self.in_chans = int(config.model.in_chans)
        self.patch = int(self.backbone.patch_size)
        if is_swin(name):
            self.stride = self.patch * 2 ** (len(self.backbone.depths) - 1)
            if len(self.backbone.depths) < 2:
                raise ValueError("config.model.depths: GFM distils a patch-merging output, so the "
                                 f"Swin needs 2+ stages, found {tuple(self.backbone.depths)}")
            self.distill_block = None
        elif is_vit(name):
            self.stride = self.patch
            self.distill_block = int(o.distill_block)
            if not 0 <= self.distill_block < self.backbone.depth:
                raise ValueError(f"config.objective.distill_block: expected 0..{self.backbone.depth - 1}"
                                 f", found {self.distill_block}")
        else:
            raise ValueError(f"config.model.name: GFM needs a Swin or a ViT (mask token), found {name!r}")
        self.mask_unit = int(o.mask_unit)
        self.mask_ratio = float(o.mask_ratio)
        if not 0.0 < self.mask_ratio < 1.0:
            raise ValueError(f"config.objective.mask_ratio: expected a fraction in (0, 1), found "
                             f"{o.mask_ratio!r}")
        if self.mask_unit % self.patch or self.img_size % self.mask_unit:
            raise ValueError(f"config.objective.mask_unit: expected a multiple of the patch size "
                             f"{self.patch} dividing img_size {self.img_size}, found {self.mask_unit}")
        if self.img_size % self.stride:
            raise ValueError(f"config.model.img_size: expected a multiple of the encoder stride "
                             f"{self.stride}, found {self.img_size}")
        self.feat_weight = float(o.feat_weight)
        self.decoder = nn.Dense(self.stride ** 2 * self.in_chans, kernel_init=torch_default_kernel)

        t = config.teacher
        if not is_swin(t.model.name):
            raise ValueError(f"config.teacher.model.name: GFM distils a Swin teacher's patch-merging "
                             f"output, found {t.model.name!r}")
        self.teacher_size = int(t.model.img_size)
        teacher_net = self.teacher_model
        self.teacher_dtype = jnp.dtype(teacher_net.dtype)
        data_bands = tuple(config.data.bands)
        self.teacher_bands = bands_lib.band_indices(data_bands, tuple(t.bands), "config.teacher.bands",
                                                    zero_fill=())
        c_t = len(self.teacher_bands)
        if c_t != int(t.model.in_chans):
            raise ValueError(f"config.teacher.bands: {c_t} bands for a teacher of in_chans "
                             f"{t.model.in_chans}")
        self.teacher_scale = self._per_band("config.teacher.input_scale", t.input_scale, c_t)
        self.teacher_offset = self._per_band("config.teacher.input_offset", t.input_offset, c_t)
        # A Swin's last patch-merging output is as wide as its last stage (num_features).
        self.projector = nn.Dense(int(teacher_net.num_features), kernel_init=torch_default_kernel)
        self.view_config = dataclass_from_config(gfm_views.MaskedCropConfig, config.data,
                                                 img_size=self.img_size, teacher_size=None,
                                                 teacher_bands=None)

    @staticmethod
    def _per_band(path: str, values, c: int) -> np.ndarray:
        v = np.asarray(tuple(values), np.float32)
        if v.shape != (c,):
            raise ValueError(f"{path}: expected {c} values (one per teacher band), found {tuple(values)}")
        return v

    # ----- host ------------------------------------------------------------------------------
    def make_views(self, record, rng: np.random.Generator):
        """image (S, S, C) float32: one random crop, flipped at random, normalised."""
        return gfm_views.masked_crop_sample(record, rng, self.view_config)

    # ----- device ----------------------------------------------------------------------------
    def init(self, rng, batch) -> Variables:
        r_bb, r_dec, r_proj, r_tok, r_t = jax.random.split(rng, 5)
        x = jnp.asarray(batch["image"])[:1]
        backbone = self.backbone.init({"params": r_bb, "dropout": r_bb}, x)["params"]
        if self.distill_block is not None:  # SimMIM's ViT mask token: trunc-normal 0.02
            backbone = dict(backbone, mask_token=0.02 * jax.random.truncated_normal(
                r_tok, -2.0, 2.0, backbone["mask_token"].shape, jnp.float32))
        d = int(self.backbone.num_features)
        params = {
            "backbone": backbone,
            "decoder": self.decoder.init(r_dec, jnp.zeros((1, d)))["params"],
            "projector": self.projector.init(r_proj, jnp.zeros((1, d)))["params"],
        }
        # The teacher's shapes (replaced by the trainer's loaded weights), so it is sharded by
        # the same rules as the student.
        c_t = len(self.teacher_bands)
        t_x = jnp.zeros((1, self.teacher_size, self.teacher_size, c_t), jnp.float32)
        teacher = self.teacher_model.init(r_t, t_x)
        return Variables(params=params, teacher=self._cast_teacher({"params": teacher["params"]}),
                         extra={})

    def with_teacher(self, variables: Variables, teacher: dict) -> Variables:
        return variables.replace(teacher=self._cast_teacher({"params": teacher["params"]}))

    def _cast_teacher(self, teacher):
        """In ``teacher.model.dtype``; host arrays stay on the host (the trainer places them)."""
        return jax.tree_util.tree_map(lambda p: p.astype(self.teacher_dtype), teacher)

    def masks(self, rng, batch: int):
        """(patch mask (B, H/p, W/p) or (B, N) for a ViT, pixel mask (B, H, W)), True = masked."""
        g = self.img_size // self.mask_unit
        units = unit_mask(rng, batch, (g, g), self.mask_ratio)
        patches = masking.upsample_mask(units, self.mask_unit // self.patch)
        if self.distill_block is not None:
            patches = patches.reshape(batch, -1)
        return patches, masking.upsample_mask(units, self.mask_unit)

    def student(self, params, x, patch_mask, rng):
        """Masked student on x (B,S,S,C): (reconstruction (B,S,S,C), distilled feature (B,D_s))."""
        bb = self.backbone
        if self.distill_block is None:
            out = bb.apply({"params": params["backbone"]}, x, mask=patch_mask, stochastic=True,
                           rngs={"dropout": rng})
            fmap = out["feature_map"]
            feature = out["merged"][-1].mean(axis=(1, 2))
        else:
            out = bb.apply({"params": params["backbone"]}, x, mask=patch_mask, stochastic=True,
                           rngs={"dropout": rng}, return_layers=(self.distill_block,))
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

    def teacher_feature(self, teacher, x) -> jax.Array:
        """(B,D_t) float32: average pool of the frozen teacher's last patch-merging output."""
        t_x = self.teacher_input(x).astype(self.teacher_dtype)
        out = self.teacher_model.apply(teacher, t_x, train=False, stochastic=False)
        return jax.lax.stop_gradient(out["merged"][-1].astype(jnp.float32).mean(axis=(1, 2)))

    def loss(self, params, teacher, extra, batch, rng, step):
        x = batch["image"].astype(jnp.float32)
        r_mask, r_drop = jax.random.split(rng)
        patch_mask, pixel_mask = self.masks(r_mask, x.shape[0])
        pred, f_s = self.student(params, x, patch_mask, r_drop)
        loss_mim = losses.masked_l1_loss(pred, x, pixel_mask)
        z_s = self.projector.apply({"params": params["projector"]}, f_s.astype(jnp.float32))
        loss_feat = losses.cosine_distillation_loss(z_s, self.teacher_feature(teacher, x))
        total = loss_mim + self.feat_weight * loss_feat
        return total, {"metrics": {"loss_mim": loss_mim, "loss_feat": loss_feat}, "extra": extra}

    # ----- export ------------------------------------------------------------------------------
    def backbone_variables(self, variables: Variables) -> dict:
        return {"params": variables.params["backbone"]}

    def with_backbone(self, variables: Variables, backbone: dict) -> Variables:
        return variables.replace(params=dict(variables.params, backbone=backbone["params"]))
