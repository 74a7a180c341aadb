"""notebooks/quickstart.ipynb: committed clean, and runs end to end (a shortened pretraining)."""

import json
import os
import re
import sys

import pytest

from xla_env import xla_flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(ROOT, "notebooks", "quickstart.ipynb")
STEPS = 10
PROBE_EVERY = 5


def test_notebook_is_committed_without_outputs():
    nbformat = pytest.importorskip("nbformat")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, cell.source[:80]


def _kernel_spec(tmp_path) -> str:
    """A kernelspec running this interpreter, found first through JUPYTER_PATH (a user-level
    ``python3`` spec could point at another Python)."""
    name = "geossl-test-python"
    folder = tmp_path / "jupyter" / "kernels" / name
    folder.mkdir(parents=True)
    (folder / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "geossl tests", "language": "python"}))
    return name


def _text(nb) -> str:
    out = []
    for cell in nb.cells:
        for o in cell.get("outputs", []):
            if o.get("output_type") == "stream" and o.get("name") == "stdout":
                out.append(o.get("text", ""))
            elif "text/plain" in o.get("data", {}):
                out.append(o["data"]["text/plain"])
    return "\n".join(out)


def test_quickstart_notebook_runs(tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    pytest.importorskip("matplotlib")
    from data_prep import synthetic

    data = str(tmp_path / "data")  # a small demo data set instead of the 270 MB default
    synthetic.generate(data, num_locations=128, heldout=64, num_shards=2, verbose=False)
    workdir = str(tmp_path / "run")
    # The kernel inherits this environment: one CPU device, as a user's notebook would have.
    monkeypatch.setenv("XLA_FLAGS", xla_flags())
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    monkeypatch.setenv("GEOSSL_DATA", data)
    monkeypatch.setenv("GEOSSL_NB_STEPS", str(STEPS))
    monkeypatch.setenv("GEOSSL_NB_PROBE_EVERY", str(PROBE_EVERY))
    monkeypatch.setenv("GEOSSL_NB_WORKDIR", workdir)
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")

    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(
        nb, timeout=600, kernel_name=_kernel_spec(tmp_path),
        resources={"metadata": {"path": os.path.dirname(NOTEBOOK)}})
    client.execute()
    text = _text(nb)

    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    assert [r["step"] for r in rows if "probe/linear_map_micro" in r] == [PROBE_EVERY, STEPS]
    assert os.path.isfile(os.path.join(workdir, "export", "vit_tiny_patch16.safetensors"))
    assert os.path.isfile(os.path.join(workdir, "linear_probe.json"))
    assert os.path.isfile(os.path.join(workdir, "linear_probe_random_init.json"))

    assert re.search(rf"training: 100%.*{STEPS}/{STEPS}", text), text[-3000:]  # the progress bar
    found = re.search(r"probe micro mAP: pretrained ([0-9.]+) random ([0-9.]+)", text)
    assert found, text[-3000:]
    assert all(0 < float(v) <= 1 for v in found.groups())

    images = [o for c in nb.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(images) >= 2  # loss/probe curves and the band composites

    try:
        import timm  # noqa: F401
        import torch  # noqa: F401
    except ImportError:
        assert "skipped:" in text
    else:
        found = re.search(r"timm embedding: \((\d+), (\d+)\), max \|timm - JAX\| = ([0-9.e+-]+)", text)
        assert found, text[-3000:]
        assert found.group(2) == "192" and float(found.group(3)) < 1e-3
