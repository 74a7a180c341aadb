"""geossl exports of random networks for the torchgeo / TerraTorch tests, and geossl's own features
of them: embeddings, ResNet / Swin stage maps and the raw (un-normed) outputs of ViT / DOFA blocks."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from geossl import convert, models


def random_variables(model, image_shape: tuple[int, ...], seed: int = 0):
    """Every variable of ``model`` random at a scale that keeps activations O(1): kernels
    N(0, 1/fan_in), LayerNorm / BatchNorm scales 1 ± 0.2, BatchNorm variances U(0.5, 2), all else
    N(0, 0.2²) (tokens, position tables, biases, LayerScale, BatchNorm means, hypernetwork tokens):
    zero tokens or 1e-5 LayerScale would hide a misplaced tensor."""
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros(image_shape))
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        name, noise = path[-1].key, rng.normal(size=leaf.shape)
        if name == "var":
            value = rng.uniform(0.5, 2.0, leaf.shape)
        elif name == "kernel":
            value = noise / np.sqrt(np.prod(leaf.shape[:-1]))
        elif name == "scale":
            value = 1.0 + 0.2 * noise
        else:
            value = 0.2 * noise
        return value.astype(np.float32)

    return jax.tree_util.tree_map_with_path(draw, shapes)


def export(arch: str, model_kw: dict, path: str, bands, seed: int = 0):
    """A random ``arch`` written as a geossl export at ``path`` (header: ``bands``); returns
    (model, variables)."""
    model = models.create(arch, **model_kw)
    size = model_kw.get("img_size", 32)
    variables = random_variables(model, (1, size, size, len(bands)), seed)
    config = ml_collections.ConfigDict({"data": {"bands": list(bands), "norm": "softcon"}})
    convert.export_backbone(variables, arch, model_kw, str(path), config)
    return model, variables


def features(model, variables, images: np.ndarray, **call_kw) -> dict[str, list[np.ndarray]]:
    """geossl's outputs of ``images`` (B,H,W,C): ``embedding`` [(B,D)], ``stages`` (ResNet /
    Swin stage maps (B,h,w,c)) and ``blocks`` (ViT / DOFA block outputs before any norm,
    (B,1+R+N,D), through flax's captured intermediates)."""
    def top_level_block(module, method_name):
        return method_name == "__call__" and module.scope.path[:1] == (module.name,) and \
            module.name.startswith("blocks_")

    out, state = model.apply(variables, images, capture_intermediates=top_level_block, **call_kw)
    blocks = state.get("intermediates", {})
    order = sorted(blocks, key=lambda name: int(name.split("_")[1]))
    return {"embedding": [np.asarray(out["embedding"])],
            "stages": [np.asarray(f) for f in out.get("features", [])],
            "blocks": [np.asarray(blocks[name]["__call__"][0]) for name in order]}


def max_difference(ours: np.ndarray, theirs: np.ndarray) -> tuple[float, float]:
    """(max |ours − theirs|, max |ours|): the tests ask the first to stay within 1e-5 ×
    max(1, the second)."""
    assert ours.shape == theirs.shape, (ours.shape, theirs.shape)
    return float(np.abs(ours - theirs).max()), float(np.abs(ours).max())
