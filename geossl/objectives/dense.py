"""Dense contrastive pretraining for land-cover segmentation (Embedding Earth, REFERENCE §5).

The paper's loss is not public; geossl's definition: two overlapping augmented views of one
location (``dense_views``, crop geometry kept as numbers) → per-location features (ViT: final
patch tokens; ResNet: the map of stage ``feature_stage``) → a dense projection head (a per-location
MLP, i.e. 1×1 convolutions) → per-location InfoNCE (``losses.dense_info_nce_loss``). Per image and
direction, K = ``num_locations`` cells of the query view's grid are drawn; the positive of a cell is
the other view's projection at the same ground point, bilinearly sampled from its grid (cell
centres at ((i + ½)·S/h, (j + ½)·S/w) in view pixels); cells whose ground point falls outside the
other crop are left out; the negatives are the other sampled cells of the global batch, so the
logits are (B·K)². Symmetrised over the two directions, plus ``image_weight`` × an image-level
InfoNCE on the pooled embedding's projection. The key encoder is an EMA of the query encoder
(``teacher_mode`` "ema", momentum from ``config.ema``, BatchNorm in train mode as MoCo v3) or the
query encoder itself with gradients through both sides ("none").
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from geossl import losses, masking
from geossl.errors import ConfigError
from geossl.models import family
from geossl.models.from_config import create_from_config
from geossl.models.heads import MLPHead
from geossl.objectives import dense_views
from geossl.objectives.base import (Fields, Objective, TeacherSpec, Variables, register,
                                    wavelength_kwargs)

TEACHER_MODES = ("ema", "none")


# ----- correspondences --------------------------------------------------------------------------
def view_to_ground(uv: jax.Array, geometry: jax.Array, size: tuple[int, int]) -> jax.Array:
    """View pixel coordinates uv (B, K, 2) (row, column; pixel edges 0..S) → ground coordinates
    (B, K, 2) in the acquisition's pixels, through each view's geometry (B, 6)
    (``dense_views.GEOMETRY_FIELDS``)."""
    g = geometry[:, None, :]
    extent = jnp.asarray(size, jnp.float32)
    flips = jnp.stack([g[..., 4], g[..., 5]], axis=-1) > 0.5
    unflipped = jnp.where(flips, extent - uv, uv)
    return g[..., 0:2] + unflipped * g[..., 2:4] / extent


def ground_to_view(yx: jax.Array, geometry: jax.Array,
                   size: tuple[int, int]) -> tuple[jax.Array, jax.Array]:
    """Ground coordinates (B, K, 2) → (view pixel coordinates (B, K, 2), inside (B, K) bool: the
    point lies in the view's crop, edges included)."""
    g = geometry[:, None, :]
    extent = jnp.asarray(size, jnp.float32)
    unflipped = (yx - g[..., 0:2]) * extent / g[..., 2:4]
    inside = jnp.all((unflipped >= 0) & (unflipped <= extent), axis=-1)
    flips = jnp.stack([g[..., 4], g[..., 5]], axis=-1) > 0.5
    return jnp.where(flips, extent - unflipped, unflipped), inside


def cell_centers(idx: jax.Array, grid: tuple[int, int], origin: float,
                 pitch: float) -> jax.Array:
    """Flat cell indices (B, K) of a (h, w) feature grid → their centres in view pixels (B, K, 2):
    origin + pitch·(row, column) (the backbone's :func:`feature_grid`)."""
    w = grid[1]
    cells = jnp.stack([idx // w, idx % w], axis=-1).astype(jnp.float32)
    return origin + pitch * cells


def correspondences(idx, geometry_a, geometry_b, grid, size, origin: float,
                    pitch: float) -> tuple[jax.Array, jax.Array]:
    """Where view b sees the ground of cells ``idx`` (B, K) of view a: (continuous cell coordinates
    (B, K, 2) in b's grid, cell centres at integers; valid (B, K) bool, the point inside b's crop).
    Both views are ``size`` pixels with a ``grid`` feature map centred as ``origin`` + ``pitch``·j."""
    ground = view_to_ground(cell_centers(idx, grid, origin, pitch), geometry_a, size)
    uv, valid = ground_to_view(ground, geometry_b, size)
    return (uv - origin) / pitch, valid


def feature_grid(backbone, tokens: bool, stage: int) -> tuple[float, float]:
    """(origin, pitch) in input pixels of the dense feature map: patch tokens (p / 2, p) (a patch
    centred on its pixels), else the backbone's ``stage_grid`` (a ResNet's cell j is centred on
    pixel pitch·j by its paddings: origin 0.5)."""
    if tokens:
        p = float(backbone.patch_size)
        return p / 2, p
    return backbone.stage_grid(stage)


def gather_cells(fmap: jax.Array, idx: jax.Array) -> jax.Array:
    """fmap (B, h, w, D), flat cell indices (B, K) → (B, K, D)."""
    b, h, w, d = fmap.shape
    return jnp.take_along_axis(fmap.reshape(b, h * w, d), idx[..., None], axis=1)


def bilinear_sample(fmap: jax.Array, coords: jax.Array) -> jax.Array:
    """fmap (B, h, w, D) at continuous cell coordinates (B, K, 2) (row, column; cell centres at
    integers) → (B, K, D); coordinates beyond the outer centres take the border value."""
    _, h, w, _ = fmap.shape
    r = jnp.clip(coords[..., 0], 0.0, h - 1.0)
    c = jnp.clip(coords[..., 1], 0.0, w - 1.0)
    r0 = jnp.floor(r).astype(jnp.int32)
    c0 = jnp.floor(c).astype(jnp.int32)
    r1, c1 = jnp.minimum(r0 + 1, h - 1), jnp.minimum(c0 + 1, w - 1)
    fr, fc = (r - r0)[..., None], (c - c0)[..., None]

    def at(ri, ci):
        return gather_cells(fmap, ri * w + ci).astype(jnp.float32)

    top = at(r0, c0) * (1 - fc) + at(r0, c1) * fc
    bottom = at(r1, c0) * (1 - fc) + at(r1, c1) * fc
    return top * (1 - fr) + bottom * fr


# ----- network ----------------------------------------------------------------------------------
class DenseNet(nn.Module):
    """Backbone → per-location feature map (B, h, w, F) → dense head (B, h, w, proj_dim), and
    with ``with_image`` the pooled embedding → image head (B, proj_dim)."""

    backbone: nn.Module
    tokens: bool               # per-location features are the patch tokens (else a stage map)
    feature_stage: int = 4
    proj_hidden: int = 2048
    proj_dim: int = 128
    proj_layers: int = 2
    head_bn: bool = True
    with_image: bool = False

    def setup(self):
        head = dict(hidden_dim=self.proj_hidden, out_dim=self.proj_dim,
                    num_layers=self.proj_layers, use_bn=self.head_bn)
        self.dense_head = MLPHead(last_bn=False, **head)
        if self.with_image:
            self.image_head = MLPHead(last_bn=True, **head)

    def feature_map(self, out: dict, x: jax.Array) -> jax.Array:
        """The backbone output's per-location features (B, h, w, F)."""
        if self.tokens:
            p = self.backbone.patch_size
            tokens = out["patch_tokens"]
            return tokens.reshape(x.shape[0], x.shape[1] // p, x.shape[2] // p, tokens.shape[-1])
        maps = out["features"]
        if self.feature_stage > len(maps):
            raise ConfigError(f"config.objective.feature_stage: expected a stage in 1..{len(maps)}, "
                              f"found {self.feature_stage}")
        return maps[self.feature_stage - 1]

    def __call__(self, x, *, train: bool = True, stochastic: bool = False,
                 wavelengths=None) -> dict:
        """x (B,H,W,C) → {"dense" (B,h,w,proj_dim), "image" (B,proj_dim) or None}.
        wavelengths (C,): handed to the backbone when given (a wavelength-conditioned family)."""
        out = self.backbone(x, train=train, stochastic=stochastic,
                            **wavelength_kwargs(wavelengths))
        dense = self.dense_head(self.feature_map(out, x), train=train)
        image = self.image_head(out["embedding"], train=train) if self.with_image else None
        return {"dense": dense, "image": image}


# ----- objective --------------------------------------------------------------------------------
@register("dense")
class Dense(Objective):
    """Dense per-location InfoNCE between two overlapping views (config: configs/dense_*.py)."""

    def __init__(self, config):
        super().__init__(config)
        o, f = config.objective, Fields(config.objective)
        fam = family(config.model.name)
        if not fam.patch_tokens:
            self.require_backbone("feature_maps", why="dense features without patch tokens")
        self.tokens = fam.patch_tokens
        mode = f.choice("teacher_mode", TEACHER_MODES)
        self.teacher_spec = TeacherSpec(mode, batch_stats=True) if mode == "ema" else TeacherSpec()
        self.temperature = f.number("temperature", "(0, inf)")
        self.image_weight = f.number("image_weight", "[0, inf)")
        for name in ("num_locations", "proj_hidden", "proj_dim", "proj_layers"):
            f.integer(name, "[1, inf)")
        stage = 4 if self.tokens else f.integer("feature_stage", "[1, 4]")
        self.backbone = create_from_config(config.model)
        self.net = DenseNet(
            backbone=self.backbone, tokens=self.tokens, feature_stage=stage,
            proj_hidden=int(o.proj_hidden), proj_dim=int(o.proj_dim),
            proj_layers=int(o.proj_layers), head_bn=bool(o.head_bn),
            with_image=self.image_weight > 0)
        self.view_config = dense_views.view_config(config)
        self.grid_origin, self.grid_pitch = feature_grid(self.backbone, self.tokens, stage)

    # ----- host ------------------------------------------------------------------------------
    def make_views(self, record, rng: np.random.Generator):
        """view1, view2 (S,S,C), geometry1, geometry2 (6,) [, mask1, mask2 (S,S) uint8]."""
        return dense_views.two_view_sample(record, rng, self.view_config)

    # ----- device ----------------------------------------------------------------------------
    def init(self, rng, batch) -> Variables:
        x = jnp.asarray(batch["view1"])
        kw = self.init_kwargs(batch, 1)
        variables = self.net.init({"params": rng, "dropout": rng}, x, train=False, **kw)
        return Variables(params=variables["params"],
                         extra={"batch_stats": variables.get("batch_stats", {})})

    def forward(self, variables, x, rng=None, wavelengths=None):
        """Train-mode forward of ``{"params", "batch_stats"}`` (BatchNorm on batch statistics; drop
        path when ``rng`` is given; ``wavelengths`` (C,) for a wavelength-conditioned backbone):
        ({"dense" (B,h,w,P), "image"}, new batch statistics)."""
        kw = dict(stochastic=True, rngs={"dropout": rng}) if rng is not None else {}
        out, state = self.net.apply(variables, x, train=True, mutable=["batch_stats"],
                                    wavelengths=wavelengths, **kw)
        return out, state["batch_stats"]

    def sample_cells(self, rng, batch: int, grid: tuple[int, int]) -> jax.Array:
        """(B, K) distinct random flat cells of a (h, w) grid per image, K = num_locations."""
        k, cells = int(self.config.objective.num_locations), grid[0] * grid[1]
        if k > cells:
            raise ConfigError(f"config.objective.num_locations: expected at most the {cells} "
                              f"cells of the {grid[0]}×{grid[1]} feature grid, found {k}")
        return masking.random_split(rng, batch, cells, (k,))[0]

    def pair_features(self, query, key, idx, geometry_q, geometry_k, size):
        """q (B,K,P) = query map at cells idx; k (B,K,P) = key map bilinearly sampled where the
        key view sees the same ground; valid (B,K)."""
        grid = query.shape[1:3]
        coords, valid = correspondences(idx, geometry_q, geometry_k, grid, size,
                                        self.grid_origin, self.grid_pitch)
        return gather_cells(query, idx), bilinear_sample(key, coords), valid

    def loss(self, params, teacher, extra, batch, rng, step):
        r_cells1, r_cells2, r_drop1, r_drop2 = jax.random.split(rng, 4)
        x1, x2 = batch["view1"], batch["view2"]
        g1 = batch["geometry1"].astype(jnp.float32)
        g2 = batch["geometry2"].astype(jnp.float32)
        w1 = self.backbone_kwargs(batch, 1).get("wavelengths")  # None: a fixed-band backbone
        w2 = self.backbone_kwargs(batch, 2).get("wavelengths")
        s1, bs = self.forward({"params": params, "batch_stats": extra["batch_stats"]}, x1, r_drop1,
                              w1)
        s2, bs = self.forward({"params": params, "batch_stats": bs}, x2, r_drop2, w2)
        aux = {"extra": {"batch_stats": bs}}
        if self.teacher_spec.kind == "ema":
            t1, tbs = self.forward(teacher, x1, wavelengths=w1)
            t2, tbs = self.forward(dict(teacher, batch_stats=tbs), x2, wavelengths=w2)
            t1, t2 = jax.lax.stop_gradient((t1, t2))
            aux["teacher_batch_stats"] = tbs
        else:
            t1, t2 = s1, s2

        size = x1.shape[1:3]
        b, grid = x1.shape[0], s1["dense"].shape[1:3]
        tau = self.temperature
        q1, k2, v12 = self.pair_features(s1["dense"], t2["dense"],
                                         self.sample_cells(r_cells1, b, grid), g1, g2, size)
        q2, k1, v21 = self.pair_features(s2["dense"], t1["dense"],
                                         self.sample_cells(r_cells2, b, grid), g2, g1, size)
        loss_dense = 0.5 * (losses.dense_info_nce_loss(q1, k2, v12, temperature=tau)
                            + losses.dense_info_nce_loss(q2, k1, v21, temperature=tau))
        total = loss_dense
        valid = jnp.concatenate([v12, v21], axis=1).astype(jnp.float32)
        metrics = {"loss_dense": loss_dense, "overlap_fraction": jnp.mean(valid)}
        if self.net.with_image:
            loss_image = 0.5 * (losses.info_nce_loss(s1["image"], t2["image"], temperature=tau)
                                + losses.info_nce_loss(s2["image"], t1["image"], temperature=tau))
            total = total + self.image_weight * loss_image
            metrics["loss_image"] = loss_image
        return total, dict(aux, metrics=metrics)
