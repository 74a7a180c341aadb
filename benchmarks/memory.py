"""Memory of the compiled train step (XLA memory analysis), side by side for several configs.

    python benchmarks/memory.py --config=configs/softcon_vit_b.py --batch=8 \
        --set objective.mask_ratio=0.0 --set objective.mask_ratio=0.5

Each ``--set`` (comma-separated assignments) is one column; the first is the reference of the
ratios. Compiles only (nothing runs), on one device of the default backend.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402


def load_config(spec: str):
    path, _, arg = spec.partition(":")
    module_spec = importlib.util.spec_from_file_location("bench_config", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(arg or None)


def apply(config, assignments: str):
    import ast
    for item in filter(None, assignments.split(",")):
        key, _, value = item.partition("=")
        try:
            value = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            pass
        node = config
        *parents, leaf = key.strip().split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return config


def fake_record(config, seasons: int = 2) -> dict:
    """A record of the configured bands (random uint16) so the objective can make views."""
    size = int(config.model.img_size * 1.15)
    bands = list(config.data.bands)
    rng = np.random.default_rng(0)
    k = int(config.data.num_classes)
    return {"image": rng.integers(0, 4000, (seasons, size, size, len(bands)), dtype=np.uint16),
            "labels": np.array([0, 1], np.int64), "bands": bands, "sensor": "s2_l1c",
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


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--set", action="append", default=None, help="assignments for one column")
    args = p.parse_args()
    columns = args.set or [""]
    results = []
    for assignments in columns:
        config = apply(load_config(args.config), assignments)
        results.append(step_memory(config, args.batch))
    ref = results[0]["temp"]
    print(f"config {args.config}, batch {args.batch}, backend {jax.default_backend()}")
    print(f"{'setting':40s} {'temp MiB':>10s} {'args MiB':>10s} {'temp ratio':>10s}")
    for assignments, r in zip(columns, results):
        print(f"{assignments or '(config)':40s} {r['temp'] / 2**20:10.1f} {r['arguments'] / 2**20:10.1f} "
              f"{r['temp'] / ref:10.3f}")


if __name__ == "__main__":
    main()
