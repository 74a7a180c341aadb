"""PyTorch state dicts ↔ geossl variables (public face of :mod:`geossl.convert.lib`).

The library lives in ``geossl.convert.lib`` (layer "objectives | convert": it imports models only).
The command line, which reads and writes workdirs through ``geossl.train``, is
:mod:`geossl.cli.convert` (top layer); ``geossl/convert/__main__.py`` only hands
``python -m geossl.convert`` to it.
"""

from geossl.convert.lib import (
    FIRST_LAYER_MODES,
    ConversionError,
    ConversionReport,
    UnreadableFileError,
    entries,
    from_torch,
    layouts,
    load_state_dict,
    read_metadata,
    resolve_model_kwargs,
    save_state_dict,
    timm_model,
    to_torch,
)
from geossl.convert.lib.export import export_backbone

__all__ = ["FIRST_LAYER_MODES", "ConversionError", "ConversionReport", "UnreadableFileError", "entries",
           "export_backbone", "from_torch", "layouts", "load_state_dict", "read_metadata",
           "resolve_model_kwargs", "save_state_dict", "timm_model", "to_torch"]
