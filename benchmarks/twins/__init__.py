"""PyTorch twins of geossl's train steps, one module per method (benchmarks/train_step.py --method).

A twin module defines:
    ARCHS: {arch: config file main.py would load (with its ``:variant`` if any)}
    configure(config, arch, args) -> None: the method's overrides after the common ones (img size,
        bands, batch, host views), e.g. the backbone swapped for ``arch``.
    torch_side(torch, args, config, host_batch) -> dict(lib=str, step=callable running one
        optimiser step, loss=callable returning the last step's loss as a float).
The twin computes what the geossl step computes (same backbone, heads, teacher handling, masks,
loss and optimiser family; where geossl drops tokens, the twin drops the same ones) from the same
numpy batch, so the two step times compare the same math.
"""
