"""Shared config pieces. A config file's ``get_config(arg)`` starts from ``base()`` and parses
``arg`` ("demo", "sar", "demo,sar", ...) with ``parse_arg``."""

from __future__ import annotations

import ml_collections

from geossl.data import bands
from geossl.errors import ConfigError

S2_L1C_BANDS = bands.S2_L1C
S1_BANDS = bands.S1
RGB_BANDS = bands.RGB

#: SSL4EO-S12: 250k locations (REFERENCE §2).
SSL4EO_LOCATIONS = 250_000


def parse_arg(arg: str | None, known: tuple[str, ...]) -> set[str]:
    words = {w.strip() for w in (arg or "").split(",") if w.strip()}
    unknown = words - set(known)
    if unknown:
        raise ValueError(f"unknown config variant(s) {sorted(unknown)}; known: {list(known)}")
    return words


def steps_for(epochs: float, num_examples: int, batch: int) -> int:
    return max(1, int(round(epochs * num_examples / batch)))


def epoch_schedule(c, epochs: float, num_examples: int) -> int:
    """Sets ``c.epochs``, ``c.num_examples`` and ``c.total_steps`` (at ``c.global_batch``); returns
    the steps of one epoch. Computed once here: a later ``--config.global_batch`` does not rescale."""
    c.epochs, c.num_examples = epochs, num_examples
    c.total_steps = steps_for(epochs, num_examples, c.global_batch)
    return steps_for(1, num_examples, c.global_batch)


def warmup_cosine(base: float, warmup_steps: int, final: float,
                  warmup_init: float | None = None, **shape) -> ml_collections.ConfigDict:
    """A ``config.lr`` section: linear warmup (from ``warmup_init``, default 0) then cosine;
    ``shape``: ``warmup_shape`` / ``cosine_from`` of ``schedules.warmup_cosine``."""
    lr = dict(name="warmup_cosine", base=base, warmup_steps=warmup_steps, final=final, **shape)
    if warmup_init is not None:
        lr["warmup_init"] = warmup_init
    return ml_collections.ConfigDict(lr)


def demo_run(c, *, batch: int, steps: int | None = None, lr: float | None = None,
             warmup_steps: int = 0, final_lr: float = 1e-5, adamw: bool = True,
             ema_base: float | None = 0.98, checkpoint_every: int = 100, log_every: int = 10,
             probe_every: int = 0) -> None:
    """The CPU-sized tail of a ``:demo`` variant on the 32 px synthetic scenes: batch, steps, a
    warmup-cosine lr (when ``lr`` is given), AdamW (β2 0.95, weight decay 0.05 on matrices, clip 1:
    a short run adapts faster than with 0.999) unless ``adamw=False``, the EMA base
    and the checkpoint / log / probe cadences."""
    c.global_batch = batch
    if steps is not None:
        c.total_steps = steps
    if adamw:
        c.optim = optim("adamw", weight_decay=0.05, b1=0.9, b2=0.95, clip_norm=1.0)
    if lr is not None:
        c.lr = warmup_cosine(lr, warmup_steps, final_lr)
    if ema_base is not None:
        c.ema.base = ema_base
    c.checkpoint_every, c.log_every = checkpoint_every, log_every
    c.probe.every = probe_every


#: Each optimiser's own fields and their defaults (the trainer reads them without defaults).
OPTIMIZER_FIELDS = {
    "adamw": dict(b1=0.9, b2=0.999, eps=1e-8),
    "lars": dict(momentum=0.9, trust_coefficient=0.001),
    "sgd": dict(momentum=0.9),
}


def optim(name: str, *, weight_decay, decay: str = "matrices", clip_norm: float = 0.0,
          **fields) -> ml_collections.ConfigDict:
    """A ``config.optim`` section. weight_decay: a number or a schedule dict (name, base, final);
    decay: which parameters decay ("matrices": 2+-D and not token tables; "all";
    "regex:PATTERN": those whose path does not match); clip_norm 0 = no clipping."""
    if name not in OPTIMIZER_FIELDS:
        raise ValueError(f"optimiser: expected one of {sorted(OPTIMIZER_FIELDS)}, found {name!r}")
    unknown = set(fields) - set(OPTIMIZER_FIELDS[name])
    if unknown:
        raise ValueError(f"optimiser {name!r}: unknown fields {sorted(unknown)}; it takes "
                         f"{sorted(OPTIMIZER_FIELDS[name])}")
    if isinstance(weight_decay, dict):
        weight_decay = ml_collections.ConfigDict(weight_decay)
    return ml_collections.ConfigDict(dict(name=name, weight_decay=weight_decay, decay=decay,
                                          clip_norm=clip_norm, **{**OPTIMIZER_FIELDS[name], **fields}))


def switch_optim(section: ml_collections.ConfigDict, name: str) -> ml_collections.ConfigDict:
    """``section`` (a ``config.optim``) made for the optimiser ``name``: weight_decay, decay and
    clip_norm kept, the previous optimiser's own fields replaced by ``name``'s defaults. The same
    section when ``name`` is already its optimiser or unknown (the trainer's check names it)."""
    if name == section.name or name not in OPTIMIZER_FIELDS:
        return section
    switched = optim(name, weight_decay=section.weight_decay, decay=section.decay,
                     clip_norm=section.clip_norm)
    if section.is_locked:
        switched.lock()
    return switched


def _override_values(argv, path: str) -> list[str]:
    """The values given to ``--path`` in ``argv`` (``--path=v`` or ``--path v``), in order."""
    values = []
    for i, arg in enumerate(argv):
        flag = arg.lstrip("-")
        if not arg.startswith("-") or not flag.startswith(path):
            continue
        if flag.startswith(path + "="):
            values.append(flag[len(path) + 1:])
        elif flag == path and i + 1 < len(argv):
            values.append(argv[i + 1])
    return values


def switch_optim_from_argv(config, argv, flag: str = "config") -> ml_collections.ConfigDict:
    """A command-line pre-pass (main.py), before the ``--config.*`` overrides apply: with
    ``--config.optim.name=NAME`` the section becomes NAME's (:func:`switch_optim`), so that NAME's
    own fields (``--config.optim.momentum=0.9``) can be overridden. An override of another
    optimiser's field is a ConfigError naming the fields the section's optimiser takes."""
    if "optim" not in config:
        return config
    names = _override_values(argv, f"{flag}.optim.name")
    if names:
        config.optim = switch_optim(config.optim, names[-1])
    name = config.optim.name
    if name not in OPTIMIZER_FIELDS:
        return config
    own = set(OPTIMIZER_FIELDS[name])
    foreign = sorted({f for fields in OPTIMIZER_FIELDS.values() for f in fields} - own)
    for field in foreign:
        if _override_values(argv, f"{flag}.optim.{field}"):
            owners = ", ".join(o for o, fields in OPTIMIZER_FIELDS.items() if field in fields)
            raise ConfigError(f"config.optim.{field}: a field of {owners}, not of "
                              f"optim.name={name!r}, which takes {sorted(own)}")
    return config


def s2_backbone(model: str) -> ml_collections.ConfigDict:
    """``config.model`` of a 13-band S2 L1C backbone at 224 px, float32 (ViTs: no drop path)."""
    c = ml_collections.ConfigDict(dict(name=model, img_size=224, in_chans=13, dtype="float32",
                                        remat=False))
    if model.startswith("vit"):
        c.drop_path_rate = 0.0
    return c


def ssl4eo_recipe(c, *, optim_name: str, lr: float) -> None:
    """SSL4EO-S12's MoCo-v3 schedule on ``c.global_batch``: 100 epochs of its locations, 10 of
    linear warmup to ``lr`` then cosine to 0; LARS (ResNet: wd 1e-6, momentum 0.9; MoCo v3's LARS
    neither decays nor adapts 1-D parameters) or AdamW (ViT: wd 0.1, betas (0.9, 0.999), on every
    parameter its forward uses, as MoCo v3's and SSL4EO-S12's ``AdamW(model.parameters())``: torch
    leaves a parameter without a gradient alone, and the Siamese-masked sparse forward never uses a
    DINOv2 mask token). ``lr`` is the peak itself: a config states its batch rule. Sets
    ``epochs``, ``total_steps``, ``optim``, ``lr``."""
    epoch_schedule(c, 100, SSL4EO_LOCATIONS)
    if optim_name == "lars":
        c.optim = optim("lars", weight_decay=1e-6, momentum=0.9)
    else:
        c.optim = optim("adamw", weight_decay=0.1, decay="regex:mask_token$", b1=0.9, b2=0.999)
    c.lr = warmup_cosine(lr, steps_for(10, SSL4EO_LOCATIONS, c.global_batch), 0.0)


def teacher(model: dict | None = None, **kw) -> ml_collections.ConfigDict:
    """A ``config.teacher`` section describing a frozen teacher network (GFM): ``model`` = a
    ``config.model``-like section (name, img_size, in_chans, dtype, ...); ``torch_checkpoint`` its
    weights: a .pth / .safetensors path converted by geossl.convert; ``random:seed=N``, a random
    network (tests); or ``pretrained:METHOD``, the network pretrained by geossl with the run in
    ``pretrain`` (a whole run config less ``model``, whose ``objective.name`` is METHOD; the
    teacher's ``model`` is what it trains; configs/gfm_swin_b.py ``demo_teacher_run``). The last
    two are written once, when the trainer first builds the teacher, into $GEOSSL_DEMO_TEACHERS
    (default ~/.cache/geossl/demo-teachers) under a name hashed from their settings, and imported
    like a real checkpoint. ``bands`` the input bands it sees. Empty (no model name) for
    objectives without a frozen teacher."""
    c = ml_collections.ConfigDict(dict(model=ml_collections.ConfigDict(dict(model or {})),
                                       torch_checkpoint="", bands=()))
    c.update(kw)
    return c


def base() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.global_batch = 4096
    c.total_steps = 1000
    c.checkpoint_every = 1000
    c.keep_checkpoints = 3
    c.async_checkpoints = True
    c.log_every = 50
    c.grad_accum_steps = 1
    # Mesh ("data", "fsdp", "model"); -1 = all remaining devices. The batch is split over data×fsdp.
    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, model=1))
    # (regex over parameter paths, partition spec or "fsdp" = largest divisible dim over fsdp).
    c.sharding_rules = [(".*", "fsdp")]
    c.data = ml_collections.ConfigDict(dict(
        train="",            # glob of TFRecord shards; "" = synthetic demo data (generated once)
        num_workers=0,       # grain worker processes
        worker_batch_size=0,  # samples a worker hands over at once; 0 = the local batch
        read_threads=1,      # threads reading records (no workers)
        prefetch_batches=2,  # batches built ahead of the step
        tune_malloc=True,    # glibc keeps freed memory for the view builders (data/malloc.py)
        bands=S2_L1C_BANDS,  # model input bands, by name, in this order
        norm="softcon",      # per-band (x - (mu - 2 sigma)) / (4 sigma) clipped to [0, 1]
        num_classes=9,       # Dynamic World
        views="auto",        # render augmented views on the "host" (grain workers) or "device"
                             # (inside the step); auto: device on GPU/TPU, host on the CPU
        raw_size=0,          # device views: pad acquisitions to raw_size² (mixed-size datasets)
        # Mixed-sensor pretraining (geossl.data.band_sets): name -> dict(train=GLOB, bands=(...),
        # weight=w), or a cross-sensor pair dict(pair=(SET_A, SET_B), weight=w); empty = one set
        # (train, bands above). Batches come whole from one set, drawn by weight.
        sets=ml_collections.ConfigDict(),
        # Band -> central wavelength (µm) overriding geossl.data.bands.WAVELENGTHS for a
        # wavelength-conditioned model (DOFA); empty = the table (DOFA v1's convention).
        wavelengths=ml_collections.ConfigDict(),
    ))
    c.init = ml_collections.ConfigDict(dict(torch_checkpoint="", workdir="", first_layer="reinit"))
    c.ema = ml_collections.ConfigDict()      # EMA teacher momentum schedule (name, base, final)
    c.teacher = teacher()                   # frozen teacher network (objectives that have one)
    c.export = ml_collections.ConfigDict(dict(torch=True, teacher=False))
    # Online probe (geossl.eval.online), handed to the loop by main.py; every 0 = off.
    c.probe = ml_collections.ConfigDict(dict(
        every=0,              # steps between probes
        data="",              # glob of labelled shards; "" = heldout-* beside the training shards
        num_examples=256,     # held-out records used (split in half: probe-train / probe-test)
        mode="cls",           # feature: "cls" token / pooled embedding
        knn_k=20, knn_temperature=0.07,
        linear_epochs=30, linear_lr=0.1, batch_size=256, seed=0))
    # Collapse monitor (geossl.eval.monitor), handed to the loop by main.py: embedding std,
    # RankMe and mean cosine of one fixed batch in metrics.jsonl.
    c.monitor = ml_collections.ConfigDict(dict(
        every=-1,             # steps between figures; -1 = every log_every steps, 0 = off
        data="",              # glob of shards; "" = heldout-* beside the training shards (else
                              # training records drawn with a fixed seed)
        num_examples=256,     # images of the fixed batch (one forward)
        std_ratio_threshold=0.02,  # warn when embedding_std·sqrt(D) falls under it (1: spread
                                   # evenly; healthy demos 0.05-0.6, lr 10 about 0.001-0.02)
    ))
    return c
