"""Pretrained-weight adapters: small pure numpy functions (no torch needed)."""

from __future__ import annotations

from typing import Iterable, Mapping

import numpy as np

from geossl.models.layers import resize_grid

FIRST_LAYER_ADAPT_MODES = ("repeat", "reinit")


def resample_pos_embed(pos_embed: np.ndarray, new_grid: tuple[int, int], num_prefix_tokens: int = 1,
                       antialias: bool = True) -> np.ndarray:
    """(1, P+G0*G0, D) → (1, P+gh*gw, D): the P prefix rows kept, the square patch table resized.

    Equals timm's ``resample_abs_pos_embed`` (bicubic, align_corners=False, ``antialias=True`` as
    timm uses when loading DINOv2 weights); computed in float64, returned in the input dtype.
    """
    pos_embed = np.asarray(pos_embed)
    if pos_embed.ndim != 3 or pos_embed.shape[0] != 1:
        raise ValueError(f"pos_embed: expected (1, tokens, D), found {pos_embed.shape}")
    prefix, patch = pos_embed[:, :num_prefix_tokens], pos_embed[0, num_prefix_tokens:]
    g0 = int(round(np.sqrt(patch.shape[0])))
    if g0 * g0 != patch.shape[0]:
        raise ValueError(f"pos_embed: expected {num_prefix_tokens} prefix rows + a square grid, "
                         f"found {patch.shape[0]} patch rows")
    gh, gw = int(new_grid[0]), int(new_grid[1])
    if (g0, g0) == (gh, gw):
        return pos_embed
    table = resize_grid(patch.astype(np.float32).reshape(g0, g0, -1), (gh, gw), antialias)
    table = table.reshape(1, gh * gw, -1).astype(pos_embed.dtype)
    return np.concatenate([prefix, table], axis=1)


def resample_rel_pos_bias_table(table: np.ndarray, new_window) -> np.ndarray:
    """Swin bias table ((2W-1)², heads) → ((2h-1)(2w-1), heads) for window ``new_window`` (h, w)
    (an int: square).

    As SimMIM's ``load_pretrained`` (22k window-7 weights into window 6): each head's
    (2W-1)×(2W-1) table resized by ``F.interpolate(mode="bicubic")`` (align_corners=False, no
    antialiasing), to a non-square window's (2h-1)×(2w-1) alike; computed in float64, returned
    in the input dtype.
    """
    table = np.asarray(table)
    side = int(round(np.sqrt(table.shape[0]))) if table.ndim == 2 else 0
    if side * side != (table.shape[0] if table.ndim == 2 else -1) or side % 2 == 0:
        raise ValueError(f"relative_position_bias_table: expected ((2W-1)², heads), found {table.shape}")
    wh, ww = (new_window, new_window) if np.ndim(new_window) == 0 else new_window
    new_h, new_w = 2 * int(wh) - 1, 2 * int(ww) - 1
    if (new_h, new_w) == (side, side):
        return table
    grid = table.astype(np.float64).reshape(side, side, -1)
    out = resize_grid(grid, (new_h, new_w), antialias=False)
    return out.reshape(new_h * new_w, -1).astype(table.dtype)


def adapt_input_channels(weight: np.ndarray, in_chans: int, mode: str = "repeat",
                         rng: np.random.Generator | None = None) -> np.ndarray | None:
    """First-layer weight in the torch layout (O, I, kh, kw) → (O, in_chans, kh, kw).

    "repeat" (timm ``adapt_input_conv``): one channel sums the I input channels; otherwise the I
    channels are tiled up to ``in_chans`` (truncated where in_chans < I) and scaled by
    I / in_chans, so a constant image gives the same response where in_chans >= I (not where
    channels are dropped). "reinit": returns None, meaning "keep the target model's fresh
    initialisation" (``rng`` is accepted for symmetry and unused).
    """
    if mode not in FIRST_LAYER_ADAPT_MODES:
        raise ValueError(f"adapt_input_channels: expected mode in {FIRST_LAYER_ADAPT_MODES}, found {mode!r}")
    if mode == "reinit":
        return None
    weight = np.asarray(weight)
    if weight.ndim != 4 or in_chans < 1:
        raise ValueError(f"adapt_input_channels: expected a (O, I, kh, kw) weight and in_chans >= 1, "
                         f"found shape {weight.shape} and in_chans={in_chans}")
    src = weight.shape[1]
    if in_chans == src:
        return weight
    w = weight.astype(np.float32)
    if in_chans == 1:
        w = w.sum(axis=1, keepdims=True)
    else:
        w = np.tile(w, (1, -(-in_chans // src), 1, 1))[:, :in_chans] * np.float32(src / in_chans)
    return w.astype(weight.dtype)


def drop_keys(state_dict: Mapping, prefixes: Iterable[str]) -> dict:
    """``state_dict`` without the keys that start with any of ``prefixes`` (e.g. "head.", "fc.")."""
    prefixes = tuple(prefixes)
    return {k: v for k, v in state_dict.items() if not k.startswith(prefixes)}
