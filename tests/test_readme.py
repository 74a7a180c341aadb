"""README.md's command blocks: every command names flags its CLI has (config overrides: fields the
config has), `make demo`'s block is the Makefile's, and the commands that need no outside data run
at tiny scale, in the README's order, each on the previous one's output."""

import functools
import json
import os
import re
import shlex
import subprocess
import sys

import numpy as np
import pytest

from xla_env import xla_flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def readme_commands() -> list[str]:
    """Every command line of README.md's bash blocks: continuations joined, comments and the
    optional ``[...]`` parts dropped."""
    with open(os.path.join(ROOT, "README.md")) as f:
        text = f.read()
    out = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in re.sub(r"\\\n\s*", " ", block).splitlines():
            line = re.sub(r"\s#.*$", "", line).strip()
            line = re.sub(r"\s*\[[^\]]*\]", "", line)
            if line and not line.startswith("#"):
                out.append(line)
    return out


def _cli(words: list[str]) -> tuple[list[str], list[str]]:
    """("python -m geossl.convert export ..." words) → (the CLI's prefix, its arguments)."""
    if words[1] == "-m":
        prefix = words[2:3] + ([words[3]] if words[2] == "geossl.convert" else [])
        return ["-m"] + prefix, words[2 + len(prefix):]
    return words[1:2], words[2:]


def _flag_names(args: list[str]) -> list[str]:
    return [a[2:].split("=", 1)[0] for a in args if a.startswith("--")]


PYTHON_COMMANDS = [c for c in readme_commands() if c.startswith("python ") and "..." not in c]


def test_readme_opens_with_the_two_make_commands_and_demo_block_is_the_makefiles():
    commands = readme_commands()
    assert commands[:2] == ["make demo", "make test"]
    with open(os.path.join(ROOT, "Makefile")) as f:
        make = f.read()
    values = dict(re.findall(r"^(\w+) \?= (\S+)$", make, re.M))
    recipe = re.search(r"^demo:.*\n((?:\t.*\n)+)", make, re.M).group(1)
    expanded = [re.sub(r"\$\((\w+)\)", lambda m: "python" if m.group(1) == "PY" else values[m.group(1)],
                       line.strip()) for line in recipe.splitlines()]
    assert commands[2:5] == expanded


@pytest.mark.parametrize("command", PYTHON_COMMANDS)
def test_readme_command_flags_exist(command):
    """A renamed or removed flag in a CLI, or a config field that moved, fails here."""
    words = shlex.split(command)
    prefix, args = _cli(words)
    overrides = [n for n in _flag_names(args) if n.startswith("config.")]
    if overrides:
        from ml_collections import config_flags  # noqa: F401  (the loader main.py uses)
        import importlib.util
        path, _, variant = next(a for a in args if a.startswith("--config=")).split("=", 1)[1] \
            .partition(":")
        spec = importlib.util.spec_from_file_location("readme_config", os.path.join(ROOT, path))
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        config = module.get_config(variant or None)
        for name in overrides:
            node = config
            for part in name.split(".")[1:]:
                assert part in node, f"{command}: --{name}: the config has no field {part!r}"
                node = node[part]
    plain = [n for n in _flag_names(args) if not n.startswith("config.")]
    text = _help(tuple(prefix))
    for name in plain:
        assert re.search(rf"--(\[no\])?{re.escape(name)}\b", text), \
            f"{command}: --{name} is not a flag of {' '.join(prefix)}"


@functools.lru_cache(maxsize=None)
def _help_texts() -> dict[tuple, tuple]:
    """{prefix: (exit code, stdout, stderr)} of ``python PREFIX --help`` for every README command
    line's prefix (36 commands share 26), from one process (``tests/help_texts.py``: the shared
    imports load once, each command runs in a fork); once per test process."""
    prefixes = sorted({tuple(_cli(shlex.split(c))[0]) for c in PYTHON_COMMANDS})
    env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
    done = subprocess.run([sys.executable, os.path.join(ROOT, "tests", "help_texts.py")],
                          input=json.dumps(prefixes), cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return {p: tuple(t) for p, t in zip(prefixes, json.loads(done.stdout))}


def _help(prefix: tuple) -> str:
    """The ``--help`` text of one command line prefix."""
    code, out, err = _help_texts()[prefix]
    assert code in (0, 1) and out, f"python {' '.join(prefix)} --help: exit {code}\n{err[-2000:]}"
    return out  # absl exits 1 after its help, argparse 0


def _png_folders(root: str) -> tuple[str, str]:
    """Two RESISC45-like folders of class sub-folders, 3 small PNGs each."""
    from PIL import Image
    rng = np.random.default_rng(0)
    folders = []
    for name, classes in (("RESISC45", ("forest", "river")), ("PatternNet", ("beach",))):
        for cls in classes:
            os.makedirs(os.path.join(root, name, cls))
            for i in range(3):
                Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(
                    os.path.join(root, name, cls, f"{i}.png"))
        folders.append(os.path.join(root, name))
    return folders[0], folders[1]


#: Appended to a README command of that CLI so it runs in seconds; the README's own flags stay.
TINY = {
    "main.py": ["--config.total_steps=2", "--config.checkpoint_every=2", "--config.global_batch=8",
                "--config.probe.every=0", "--config.log_every=1"],
    "geossl.eval.linear_probe": ["--feature_batch=16"],
    "geossl.eval.segmentation": ["--steps=3", "--batch_size=4"],
    "geossl.eval.suite": ["--tasks=synthetic_multilabel_linear_10pct", "--budget=smoke"],
    "data_prep.synthetic": ["--num_locations=8", "--heldout=4", "--num_shards=2", "--size=16",
                            "--seasons=2", "--num_workers=1"],
}


def _place(arg: str, places: dict) -> str:
    """README placeholders → this test's paths: whole words (DIR, model.safetensors), paths
    anywhere in an argument (workdirs/..., /data/...)."""
    if arg in places:
        return places[arg]
    for key, value in places.items():
        if "/" in key:
            arg = re.sub(rf"(?<![\w/]){re.escape(key)}(?![\w])", value, arg)
    return arg


def test_readme_commands_run_at_tiny_scale(tmp_path):
    """The demo block, then the data_prep, convert and probe commands on its outputs: README's
    placeholders (DIR, /data/..., model.safetensors) become folders of this test."""
    from data_prep import synthetic
    data = str(tmp_path / "demo-data")
    synthetic.generate(data, num_locations=64, heldout=32, num_shards=2, verbose=False)
    resisc, pattern = _png_folders(str(tmp_path / "images"))
    workdir = str(tmp_path / "workdirs" / "softcon_demo")
    places = {"workdirs/softcon_demo": workdir, "model.safetensors": str(tmp_path / "model.safetensors"),
              "DIR": workdir, "/data/RESISC45": resisc, "/data/PatternNet": pattern,
              "/data/synthetic": str(tmp_path / "synthetic"), "/data/geopile": str(tmp_path / "geopile")}
    ran = []
    for command in PYTHON_COMMANDS:
        words = shlex.split(command)
        prefix, args = _cli(words)
        if any(("/data/" in a and a.split("=")[-1].split(",")[0] not in places) or "gs://" in a
               or a.endswith(".pth") for a in args) or prefix[0].startswith("benchmarks/"):
            continue  # outside data, weights or a cloud bucket; benchmarks: tests of their own
        args = [_place(a, places) for a in args]
        if prefix[-1] == "import":  # into a folder of its own (DIR is the demo's workdir here)
            args[args.index("--output") + 1] = str(tmp_path / "imported")
        args += TINY.get(prefix[-1], [])
        env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu", GEOSSL_DATA=data,
                   XLA_FLAGS=xla_flags())
        done = subprocess.run([sys.executable] + prefix + args, cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, f"{command}\n{done.stderr[-3000:]}"
        ran.append(" ".join(prefix))
    assert ran[:3] == ["main.py", "-m geossl.eval.linear_probe", "-m geossl.eval.linear_probe"]
    assert {"-m data_prep.synthetic", "-m data_prep.images", "-m geossl.convert export",
            "-m geossl.convert import", "-m geossl.eval.segmentation"} <= set(ran), ran
    assert os.path.isfile(os.path.join(workdir, "segmentation_frozen_0.1.json"))
    assert os.listdir(str(tmp_path / "imported")) and os.listdir(str(tmp_path / "geopile"))


def test_own_training_loop_snippet_runs_and_sets_the_step_options(tmp_path):
    """README's "Your own training loop" block, at a tiny size: it trains (the loss falls over its
    three steps on one batch) and its first call put the trainer's XLA:CPU options in XLA_FLAGS."""
    with open(os.path.join(ROOT, "README.md")) as f:
        text = f.read()
    block = re.search(r"## Your own training loop\n.*?```python\n(.*?)```", text, re.S).group(1)
    sizes = 'ARCH, BANDS, SIZE, BATCH = "resnet50", 13, 224, 8'
    assert sizes in block
    script = tmp_path / "loop.py"
    script.write_text(block.replace(sizes, 'ARCH, BANDS, SIZE, BATCH = "resnet18", 13, 32, 4')
                      + "\nimport os\nprint(os.environ['XLA_FLAGS'])\n")
    done = subprocess.run([sys.executable, str(script)], cwd=ROOT, capture_output=True, text=True,
                          env=dict(os.environ, XLA_FLAGS=xla_flags()), timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    *steps, flags = done.stdout.splitlines()
    loss = [float(line.rsplit(" ", 1)[1]) for line in steps]
    assert len(loss) == 3 and np.isfinite(loss).all() and loss[2] < loss[0], steps
    from geossl.parallel import cpu_options
    assert all(f"--{name}={value}" in flags for name, value in cpu_options.CPU_STEP_OPTIONS), flags
