"""Memory of the compiled train step (XLA memory analysis), side by side for several settings:
how much Siamese masking saves.

    python benchmarks/memory.py                    # ViT-S/14 SoftCon, batch 8, mask ratio 0 vs 0.5
    python benchmarks/memory.py --config=configs/softcon_vit_b.py --batch=8 \
        --set objective.mask_ratio=0.0 --set objective.mask_ratio=0.5,model.dtype=bfloat16
    python benchmarks/memory.py --config=configs/softcon_vit_s.py:demo --batch=4   # smallest

``--config`` is main.py's flag (ml_collections config_flags): a config file with an optional
``:variant``, and ``--config.a.b=value`` overrides apply to every row. Each ``--set`` (a.b=value
assignments separated by commas) is one row on top of that; the first row is the reference of the
ratios. Compiles only (nothing runs), on one device of the default backend.
"""

from __future__ import annotations

import ast
import copy
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import jax  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

config_flags.DEFINE_config_file("config", os.path.join(ROOT, "configs/softcon_vit_s.py"),
                                "Config file[:variant], as main.py takes it.")
flags.DEFINE_integer("batch", 8, "Global batch of the compiled step.")
flags.DEFINE_multi_string("set", ["objective.mask_ratio=0.0", "objective.mask_ratio=0.5"],
                          "One row: comma-separated a.b=value assignments (Python literals or "
                          "bare strings).")
FLAGS = flags.FLAGS

#: Splits "a.b=1,c=(0.5, 1.0)" at the commas that start a new assignment.
_ASSIGNMENT_SPLIT = re.compile(r",\s*(?=[A-Za-z_][\w.]*\s*=)")


def apply(config, assignments: str):
    """A copy of ``config`` with the row's assignments; ConfigDict checks each value's type."""
    config = copy.deepcopy(config)
    updates = {}
    for item in filter(None, (s.strip() for s in _ASSIGNMENT_SPLIT.split(assignments))):
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--set {assignments!r}: expected a.b=value, found {item!r}")
        try:
            updates[key.strip()] = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            updates[key.strip()] = value.strip()
    config.update_from_flattened_dict(updates)
    return config


def fake_record(config, seasons: int = 2) -> dict:
    """A record of the configured bands (random uint16) so the objective can make views."""
    size = int(config.model.img_size * 1.15)
    bands = list(config.data.bands)
    rng = np.random.default_rng(0)
    k = int(config.data.num_classes)
    return {"image": rng.integers(0, 4000, (seasons, size, size, len(bands)), dtype=np.uint16),
            "labels": np.array([0, 1], np.int64), "bands": bands,
            "sensor": "s1_grd" if bands[0] == "VV" else "s2_l1c",
            "key": "bench", "label_set": "dynamic_world_9",
            "acq_labels": np.eye(seasons, k, dtype=np.int64).reshape(-1),
            "num_classes": np.array([k], np.int64)}


def step_memory(config, batch: int) -> dict:
    from geossl import objectives
    from geossl.parallel import mesh as mesh_lib
    from geossl.train.loop import build_trainer
    config.global_batch = batch
    config.mesh.data, config.mesh.fsdp, config.mesh.model = 1, 1, 1
    mesh = mesh_lib.make_mesh(config.mesh, jax.devices()[:1])
    objective = objectives.create(config)
    sample = objective.make_views(fake_record(config), np.random.default_rng(0))
    batch0 = {k: np.stack([v] * 2) for k, v in sample.items()}
    trainer = build_trainer(config, objective, mesh, batch0)
    abstract_batch = {k: jax.ShapeDtypeStruct((batch, *v.shape), v.dtype,
                                              sharding=mesh_lib.batch_sharding(mesh, v.ndim + 1))
                      for k, v in sample.items()}
    compiled = trainer.train_step.lower(trainer.abstract_state, abstract_batch).compile()
    m = compiled.memory_analysis()
    return {"temp": m.temp_size_in_bytes, "arguments": m.argument_size_in_bytes,
            "output": m.output_size_in_bytes}


def main(argv):
    del argv
    rows = FLAGS.set or [""]
    results = [step_memory(apply(FLAGS.config, assignments), FLAGS.batch) for assignments in rows]
    ref = results[0]["temp"]
    overrides = config_flags.get_override_values(FLAGS["config"])
    name = os.path.relpath(config_flags.get_config_filename(FLAGS["config"]), ROOT)
    print(f"config {name}{' ' + str(overrides) if overrides else ''}, batch {FLAGS.batch}, "
          f"backend {jax.default_backend()}")
    print(f"{'setting':40s} {'temp MiB':>10s} {'args MiB':>10s} {'temp ratio':>10s}")
    for assignments, r in zip(rows, results):
        print(f"{assignments or '(config)':40s} {r['temp'] / 2**20:10.1f} {r['arguments'] / 2**20:10.1f} "
              f"{r['temp'] / ref:10.3f}")


if __name__ == "__main__":
    app.run(main)
