"""``--config.model.remat=True`` (README: a compute option of every config) is a field of every
shipped config and variant, off by default, and reaches the built backbone."""

import importlib

import pytest

from geossl.models.from_config import create_from_config

CONFIGS = [("softcon_vit_s", None), ("softcon_vit_b", "sar"), ("softcon_rn50", "demo"),
           ("dense_rn50", None), ("dense_vit_s", "demo"), ("gfm_swin_b", "ms"),
           ("gfm_swin_b", "demo"), ("gfm_vit_b", None), ("mae_vit_b", "demo"),
           ("pera_vit_b", None), ("pera_vit_b", "demo"), ("anysensor_vit_b", "demo")]


@pytest.mark.parametrize("module,variant", CONFIGS)
def test_every_config_takes_model_remat(module, variant):
    c = importlib.import_module(f"configs.{module}").get_config(variant)
    assert c.model.remat is False
    c.model.remat = True                     # what the command-line override sets
    assert create_from_config(c.model).remat is True
