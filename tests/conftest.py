"""Test setup: 8 simulated CPU devices so every run exercises sharding (set before jax imports)."""

import os
import sys

from xla_env import xla_flags

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + xla_flags(8)).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# Hosts that set PYTHONDONTWRITEBYTECODE made each of the suite's ~115 subprocesses compile
# geossl's sources again (0.2–0.3 s a process) and each pytest worker rewrite every test module's
# asserts (4.5 s): the suite writes its bytecode (docs/DESIGN.md "Test suite", session 27).
sys.dont_write_bytecode = False
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
# The persistent compilation cache (main.py's default) of the tests' own, outside the user's home.
# With 8 simulated devices it stays off (compile_cache.supported); one-device test processes use it.
os.environ.setdefault("GEOSSL_CACHE", os.path.join("/tmp", f"geossl-test-cache-{os.getuid()}"))
# main.py and the benchmarks start again with glibc's huge-page tunable where the kernel has THP in
# madvise mode (data/malloc.py); the tests' subprocesses start with it, as they end up, at once.
from geossl.data import malloc  # noqa: E402

_huge = malloc.huge_page_environ(dict(os.environ), malloc.thp_mode(), malloc.glibc_version())
if _huge is not None:
    os.environ["GLIBC_TUNABLES"] = _huge["GLIBC_TUNABLES"]

import absl.flags  # noqa: E402

# grain worker processes read absl flags; under pytest nobody parses them.
absl.flags.FLAGS.mark_as_parsed()

import pytest  # noqa: E402


def pytest_configure(config):
    from geossl.train import compile_cache
    compile_cache.enable()
    config.addinivalue_line("markers", "slow: long-running (real-size models); run with -m slow")
    config.addinivalue_line("markers", "multiprocess: spawns several jax processes")


@pytest.fixture
def tf_python():
    """An interpreter with TensorFlow: $GEOSSL_TF_PYTHON (``make test`` points it at .venv-tf),
    else this one if it imports tensorflow; the test is skipped otherwise."""
    import sys
    explicit = os.environ.get("GEOSSL_TF_PYTHON")
    if explicit:
        return explicit
    try:
        import tensorflow  # noqa: F401
    except ImportError:
        pytest.skip("TensorFlow interop: set GEOSSL_TF_PYTHON to a python with tensorflow")
    return sys.executable


@pytest.fixture(params=["opencv", "numpy"])
def resize_path(request, monkeypatch):
    """Runs a test with OpenCV's resize and blur (geossl.data.blur.cv2), then with the numpy
    kernels."""
    from geossl.data import blur
    if request.param == "opencv" and blur.cv2 is None:
        pytest.skip("OpenCV not installed")
    if request.param == "numpy":
        monkeypatch.setattr(blur, "cv2", None)
    return request.param


#: Modules whose tests start whole training runs, interpreters or notebooks (10–40 s each): run
#: first, so that the two workers end on short tests instead of one idling while the other finishes
#: a long one (docs/DESIGN.md "Test suite", session 27).
LONG_FIRST = ("test_readme", "test_notebook", "test_elastic", "test_terratorch", "test_preemption",
              "test_anysensor", "test_softcon", "test_engine_run", "test_frozen_teacher")


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONG_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.stem, len(rank)))  # stable: file order kept
