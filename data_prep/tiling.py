"""Tile windows over a scene, for the data_prep readers that cut scenes into ``--tile`` px records.

A scene of H x W px gives windows of ``tile`` x ``tile`` px every ``tile`` px, row by row; where
``tile`` does not divide a side, the last window of that row / column is moved back to end at the
edge (it overlaps its neighbour: no padding, no pixel left out). ``tile`` 0 is one window over
the whole scene.
"""

from __future__ import annotations

import os

from data_prep.common import BadInputError


def image_size(path: str) -> tuple[int, int]:
    """(H, W) of an image file from its header, as ``images.read_array`` reads it (TIFF:
    ``images.tiff_shape`` of tifffile's first series; others: Pillow)."""
    if not os.path.isfile(path):
        raise BadInputError(f"{path}: missing image file")
    try:
        if path.lower().endswith((".tif", ".tiff")):
            import tifffile
            from data_prep.images import tiff_shape
            with tifffile.TiffFile(path) as tif:
                height, width = tiff_shape(tif.series[0].shape, tif.series[0].axes)[:2]
                return int(height), int(width)
        from PIL import Image
        with Image.open(path) as img:
            return img.height, img.width
    except Exception as e:  # noqa: BLE001 - image libraries raise many types for broken files
        raise BadInputError(f"{path}: unreadable image ({type(e).__name__}: {e})") from None


def tile_starts(size: int, tile: int) -> list[int]:
    """Offsets of the windows along one side of ``size`` px (``0 < tile <= size``)."""
    starts = list(range(0, size - tile + 1, tile))
    if starts[-1] + tile < size:
        starts.append(size - tile)
    return starts


def windows(height: int, width: int, tile: int, where: str) -> list[tuple[int, int, int, int]]:
    """(top, left, rows, cols) windows over a ``height`` x ``width`` scene; a scene smaller than
    ``tile`` raises BadInputError naming ``where``."""
    if tile <= 0:
        return [(0, 0, height, width)]
    if height < tile or width < tile:
        raise BadInputError(f"{where}: scene of {height}x{width} px is smaller than the "
                            f"{tile}x{tile} px tile (--tile)")
    return [(top, left, tile, tile) for top in tile_starts(height, tile)
            for left in tile_starts(width, tile)]


def window_key(key: str, window: tuple[int, int, int, int], tile: int) -> str:
    """``key`` for a whole scene, ``key/r{top}_c{left}`` for a tile of it."""
    return key if tile <= 0 else f"{key}/r{window[0]}_c{window[1]}"


def list_windows(scenes, size_of, tile: int) -> list[tuple]:
    """``(scene, window, error)`` items for write_shards: the windows of each scene (``size_of``
    (scene) -> (H, W)), or one ``(scene, None, message)`` item for a scene whose size cannot be
    read or that is smaller than the tile (its record then raises, so ``--skip_bad`` counts it)."""
    items = []
    for scene in scenes:
        try:
            height, width = size_of(scene)
            items.extend((scene, w, None) for w in windows(height, width, tile, str(scene)))
        except BadInputError as e:
            items.append((scene, None, str(e)))
    return items
