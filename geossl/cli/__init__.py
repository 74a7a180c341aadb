"""The command lines of geossl's library packages (top layer: may import any package).

Each module holds one command's argparse parser and ``main(argv=None)``; the packages below hold
library code only. The documented ``python -m`` names (ARCHITECTURE.md, "Command lines") stay the
entry points: shims of two lines that delegate here:

- ``convert``: ``python -m geossl.convert export|import ...`` (``geossl/convert/__main__.py``);
- ``linear_probe``, ``knn``, ``segmentation``: ``python -m geossl.eval.linear_probe|knn|segmentation
  ...`` (the ``if __name__ == "__main__"`` block of each probe module);
- ``probe_flags``: the flags the probes share, their features and their reports.

``main.py`` (pretraining) and ``data_prep/`` (shard writers) are the other command lines.
"""
