"""``malloc.keep_step_memory``, and ``malloc.keep_main_heap`` with
``cpu_options.run_steps_on_calling_thread``: an XLA:CPU program's temporary buffer, allocated at
each execution, reuses its pages from the second execution on (glibc's default maps fresh ones,
which fault in again every time)."""

import functools
import os
import subprocess
import sys

import jax
import pytest

from geossl.data import malloc
from xla_env import xla_flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
JOB = """
import resource, sys
from geossl.data import malloc
if sys.argv[1] == "keep":
    assert malloc.keep_step_memory() and malloc.keep_step_memory()
    assert malloc.reuse_freed_memory()   # the pipeline's settings then change nothing
if sys.argv[1] == "reuse":
    from geossl.parallel import cpu_options
    assert malloc.keep_main_heap() and malloc.keep_main_heap()
    assert malloc.reuse_freed_memory()
    assert cpu_options.run_steps_on_calling_thread()
import jax
import jax.numpy as jnp

def f(x):
    y = x @ x.T                     # (n, n) temporaries: the product and its reversed copy
    return (y[::-1] + y.T).sum(0)

x = jnp.ones((4096, 8), jnp.float32)
compiled = jax.jit(f).lower(x).compile()
compiled(x).block_until_ready()
faults = []
for _ in range(10):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    compiled(x).block_until_ready()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(compiled.memory_analysis().temp_size_in_bytes, *faults)
"""


@functools.lru_cache(maxsize=None)
def _temp_bytes_and_faults(mode: str) -> tuple[int, tuple[int, ...]]:
    """(temporary bytes, minor faults of each of 10 executions after the first); "huge": glibc's
    huge-page tunable, otherwise without it. Once per mode and test process (both fault tests
    compare with "default")."""
    tunables = [t for t in os.environ.get("GLIBC_TUNABLES", "").split(":")
                if t and not t.startswith("glibc.malloc.hugetlb=")]
    if mode == "huge":
        tunables.append(malloc.HUGE_PAGE_TUNABLE)
    env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu", XLA_FLAGS=xla_flags(1),
               GLIBC_TUNABLES=":".join(tunables))
    done = subprocess.run([sys.executable, "-c", JOB, mode], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    temp, *faults = (int(v) for v in done.stdout.split())
    return temp, tuple(faults)


@pytest.mark.skipif(malloc.thp_mode() != "madvise" or (malloc.glibc_version() or (0,)) < (2, 35),
                    reason="needs the kernel's THP in madvise mode and glibc >= 2.35")
def test_step_buffers_fault_in_huge_pages_with_the_tunable():
    """The buffer is still mapped afresh at every execution, but mostly in 2 MB pages: 100–2,700
    faults for 192 MB where 4 kB pages take one per page, 49k (a ViT-S/14 step: 700k → 11k)."""
    temp, faults = _temp_bytes_and_faults("default")
    pages = temp // 4096
    assert min(faults) >= pages // 2, (faults, pages)
    temp_huge, huge = _temp_bytes_and_faults("huge")
    assert temp_huge == temp and sorted(huge)[3] < pages // 8, (huge, pages)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_step_buffers_reuse_their_pages_with_keep_step_memory():
    """glibc's default maps the buffer afresh at every execution; kept, executions reuse it, not
    every one: a small allocation left where the freed buffer was makes the heap grow again (here
    every other execution; ViT-S/14 steps 1 in 4)."""
    temp, faults = _temp_bytes_and_faults("default")
    pages = temp // 4096
    assert temp >= 64 << 20, temp   # the premise: beyond glibc's largest mmap threshold (32 MB)
    assert min(faults) >= pages // 2, (faults, pages)
    temp_kept, kept = _temp_bytes_and_faults("keep")
    assert temp_kept == temp and min(kept) < pages // 20, (kept, pages)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_step_buffers_reuse_their_pages_on_the_calling_thread():
    """Run on the calling (main) thread, the step's buffer comes from the main heap, which keeps
    it: once the heap has settled (1–4 executions, while the freed pieces it started with merge),
    no faults, or ~4% of the pages where the heap's top grows by a few MB (glibc's default: one
    per page, every execution). A clean clone's CI saw one settled execution fault the buffer in
    again (session 25: 47k of 49k pages once in ten): 5 of the last 6 are counted."""
    temp, faults = _temp_bytes_and_faults("default")
    pages = temp // 4096
    temp_reused, reused = _temp_bytes_and_faults("reuse")
    assert temp_reused == temp and sorted(reused[-6:])[4] < pages // 10, (reused, pages)
    assert min(faults) >= pages // 2, (faults, pages)


def test_steps_stay_asynchronous_once_jax_has_started():
    from geossl.parallel import cpu_options
    jax.devices()
    before = jax.config.values["jax_cpu_enable_async_dispatch"]
    assert cpu_options.run_steps_on_calling_thread() is (not before)
    assert jax.config.values["jax_cpu_enable_async_dispatch"] == before


def test_thp_mode_reads_the_bracketed_word(tmp_path):
    path = tmp_path / "enabled"
    for text, mode in (("always [madvise] never\n", "madvise"), ("[always] madvise never", "always"),
                       ("always madvise [never]", "never"), ("", "")):
        path.write_text(text)
        assert malloc.thp_mode(str(path)) == mode
    assert malloc.thp_mode(str(tmp_path / "missing")) == ""


def test_huge_page_environ_adds_the_tunable_only_where_it_helps():
    env = {"PATH": "/bin"}
    assert malloc.huge_page_environ(env, "madvise", (2, 36)) == dict(
        env, GLIBC_TUNABLES="glibc.malloc.hugetlb=1")
    assert malloc.huge_page_environ(dict(env, GLIBC_TUNABLES="glibc.malloc.arena_max=2"),
                                    "madvise", (2, 35))["GLIBC_TUNABLES"] == \
        "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"
    assert env == {"PATH": "/bin"}                                  # the argument is not changed
    for tunables in ("glibc.malloc.hugetlb=1", "glibc.malloc.hugetlb=0",   # the user's own choice
                     "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=2"):
        assert malloc.huge_page_environ(dict(env, GLIBC_TUNABLES=tunables), "madvise",
                                        (2, 36)) is None
    for mode, libc in (("always", (2, 36)), ("never", (2, 36)), ("", (2, 36)),
                       ("madvise", (2, 34)), ("madvise", None)):
        assert malloc.huge_page_environ(env, mode, libc) is None, (mode, libc)


RESTART = """
import os, sys
from geossl.data import malloc
malloc.thp_mode = lambda path=None: "madvise"      # any host: the decision is tested above
malloc.glibc_version = lambda: (2, 36)
print(os.getpid(), os.environ.get("GLIBC_TUNABLES", "-"), sys.flags.utf8_mode, sys.argv[1:],
      flush=True)
again = malloc.exec_with_huge_pages()
print(again, os.environ.get("GLIBC_TUNABLES", "-"), "GEOSSL_GLIBC_TUNABLES_BEFORE" in os.environ,
      malloc.huge_pages_state())
print(malloc.exec_with_huge_pages(), os.environ.get("GLIBC_TUNABLES", "-"))
"""


@pytest.mark.skipif(not hasattr(os, "execve") or not hasattr(sys, "orig_argv"),
                    reason="POSIX exec, Python >= 3.10")
def test_exec_with_huge_pages_starts_again_with_the_same_pid_and_arguments():
    env = dict(os.environ, PYTHONPATH=ROOT, GLIBC_TUNABLES="glibc.malloc.arena_max=4")
    done = subprocess.run([sys.executable, "-X", "utf8", "-c", RESTART, "a", "b c"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    first, second, restored, last = done.stdout.splitlines()
    pid = first.split()[0]
    assert first == f"{pid} glibc.malloc.arena_max=4 1 ['a', 'b c']"
    assert second == f"{pid} glibc.malloc.arena_max=4:glibc.malloc.hugetlb=1 1 ['a', 'b c']"
    # the new start keeps its huge pages, and its children get the user's tunables back
    assert restored == "False glibc.malloc.arena_max=4 False huge pages (GLIBC_TUNABLES)"
    assert last == "False glibc.malloc.arena_max=4"                # started once, not twice


def test_main_reads_huge_pages_from_the_command_line_before_parsing(monkeypatch, tmp_path):
    """main.py starts again before absl parses the config (whose imports, jax among them, would
    run twice): the flag as absl reads it, the last one winning, flag files included; a value
    that is not a boolean is None (the full parse refuses it)."""
    monkeypatch.syspath_prepend(ROOT)
    import main
    read = main.huge_pages_in_argv
    flagfile = tmp_path / "run.flags"
    flagfile.write_text("--workdir=w\n--nohuge_pages\n")
    for argv, expected in [
            (["main.py", "--config=c.py", "--workdir=w"], True),
            (["main.py", "--nohuge_pages"], False),
            (["main.py", "--nohuge_pages", "--huge_pages"], True),
            (["main.py", "--huge_pages=false"], False),
            (["main.py", "-huge_pages=0"], False),
            (["main.py", "--huge_pages=T"], True),
            (["main.py", "--", "--nohuge_pages"], True),
            (["main.py", f"--flagfile={flagfile}"], False),
            (["main.py", "--config.seed=3", "--workdir", "w", "--huge_pages=f"], False),
            (["main.py", "--huge_pages=maybe"], None)]:
        assert read(argv) is expected, argv
