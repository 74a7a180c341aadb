"""What ``geossl.convert`` needs to know about one model family: detect → adapt → map.

Each ``<family>_keys.py`` declares an ``ADAPTER``; :mod:`geossl.convert.lib.families` finds it
under the family's name (``models.family(arch).name``). The converter itself has no per-family
branches: a family differs only by the functions below.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Mapping

import flax.linen as nn
import numpy as np

from geossl.convert.lib.keymap import Entry

StateDict = dict[str, np.ndarray]


def _same(state_dict, *_):
    return state_dict


def _no_resampling(state_dict, torch_shape, model, adapted) -> None:
    del state_dict, torch_shape, model, adapted


def _no_hints(mismatched, state_dict, model) -> list[str]:
    del mismatched, state_dict, model
    return []


@dataclasses.dataclass(frozen=True)
class FamilyAdapter:
    """The conversion rules of one model family.

    layouts: the PyTorch layouts it reads and writes, the default first.
    entries(model, layout) -> [Entry]: the key table (map).
    detect(state_dict) -> layout: the layout of a checkpoint's keys (detect).
    structure(state_dict, arch, kw, img_size) -> kw: ``kw`` (``models.create`` keywords) completed
        with what the checkpoint fixes (registers, depths, window, input size).
    timm_model(model, arch) -> (name, kwargs) or None: the timm model that loads the
        ``timm_layout`` export (None: timm builds no such model).
    timm_layout: the layout timm reads.
    buffer_suffixes: torch buffers recomputed by geossl: dropped on import, after ``structure``
        has read them (a Swin's ``attn_mask`` tells its input size).
    allow_missing: keys that may be absent on import (start at zero) unless the caller says.
    from_reference(state_dict) -> state_dict: first step of an import (adapt: e.g. timm's
        register-token position table back to geossl's).
    to_reference(state_dict, model, layout) -> state_dict: last step of an export.
    resample(state_dict, torch_shape, model, adapted): resizes position tables in place to the
        model's ``torch_shape`` where they differ, appending a line per table to ``adapted``.
    hints(mismatched, state_dict, model) -> [str]: causes of wrong shapes (``{key: (expected,
        found)}``) this family can name.
    """

    layouts: tuple[str, ...]
    entries: Callable[[nn.Module, str], list[Entry]]
    detect: Callable[[Mapping], str]
    structure: Callable[[Mapping, str, dict, int | None], dict]
    timm_model: Callable[[nn.Module, str], tuple[str, dict]]
    timm_layout: str = "timm"
    buffer_suffixes: tuple[str, ...] = ()
    allow_missing: tuple[str, ...] = ()
    from_reference: Callable[[StateDict], StateDict] = _same
    to_reference: Callable[[StateDict, nn.Module, str], StateDict] = _same
    resample: Callable[[StateDict, dict, nn.Module, list], None] = _no_resampling
    hints: Callable[[dict, Mapping, nn.Module], list[str]] = _no_hints

    def layout(self, layout: str | None, arch: str) -> str:
        """``layout``, or the default for None; one the family lacks raises."""
        if layout is None:
            return self.layouts[0]
        if layout not in self.layouts:
            raise ValueError(f"layout={layout!r}: {arch} is written in one of {self.layouts}")
        return layout
