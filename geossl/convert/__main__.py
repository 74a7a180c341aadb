"""``python -m geossl.convert export|import ...``: the entry point of :mod:`geossl.cli.convert`."""

import sys

from geossl.cli.convert import main

if __name__ == "__main__":
    sys.exit(main())
