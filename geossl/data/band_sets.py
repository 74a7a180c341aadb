"""Mixed-sensor pretraining: several shard sets, each with its own bands and a weight, in one stream.

``config.data.sets`` (empty: one set, ``data.train`` read with ``data.bands``) names the sets::

    sets = {"s2": dict(train=GLOB, bands=S2_L1C, weight=0.4),
            "s1": dict(train=GLOB, bands=("VV", "VH"), weight=0.4),
            "s2_s1": dict(pair=("s2", "s1"), weight=0.2)}   # cross-sensor positives (SoftCon)

``train`` "" reads the synthetic demo rendering of the set's bands. A ``pair`` set zips two sets'
records by position: they hold the same locations in the same order (the demo's S2 and S1 shards
do; a key mismatch is an error naming both), and the objective gets the first set's record with
the second's under ``views.PAIRED_RECORD``.

The stream: global batch k comes whole from one set, drawn with the sets' weights by
:class:`SetSchedule` (a function of (seed, k) alone). It holds rows [n·G, (n+1)·G) of that set's own
sample stream (``pipeline.view_stream``, seeded per set), n the number of earlier batches drawn from
the set. The global position k·G thus fixes where every set resumes; the draw is per batch of G
rows, so a run resumes with the global batch it started with. Each record carries its set's band
names (``views.RECORD_BANDS``, which ``BandSpec.band_plan`` renders) and, for a
wavelength-conditioned model, each sample its bands' central wavelengths (``wavelengths`` (C,);
a pair: ``wavelengths1``, ``wavelengths2``). The train step compiles once per batch signature:
once per set whose band count (or pairing) differs from every other set's.
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Callable, Sequence

import grain
import numpy as np

from geossl.data import bands as bands_lib
from geossl.data import views
from geossl.errors import ConfigError

#: The sample key of the bands' central wavelengths (µm), as ``objectives.base.WAVELENGTHS``.
WAVELENGTHS = "wavelengths"


@dataclasses.dataclass(frozen=True)
class BandSet:
    """One set of ``config.data.sets``: its name, shard pattern, bands, weight, and for a
    cross-sensor pair the two sets it zips (``pair``; ``bands`` are then the first set's)."""

    name: str
    train: object = ""
    bands: tuple[str, ...] = ()
    weight: float = 1.0
    pair: tuple[str, str] | None = None


def from_config(config) -> list[BandSet]:
    """The sets of ``config.data.sets`` in name order (a ConfigDict's key order); one set of
    ``data.train`` and ``data.bands`` when it is empty. ConfigError naming the field for a bad
    set."""
    sets_cfg = config.data.get("sets", None) or {}
    if not sets_cfg:
        return [BandSet("train", config.data.get("train", ""), tuple(config.data.bands), 1.0)]
    out = []
    for name, raw in sorted(sets_cfg.items()):
        path = f"config.data.sets.{name}"
        raw = dict(raw)
        unknown = sorted(set(raw) - {"train", "bands", "weight", "pair"})
        if unknown:
            raise ConfigError(f"{path}: unknown field(s) {unknown}; a set has train, bands, "
                              "weight (or pair, weight)")
        weight = raw.get("weight", 1.0)
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not weight > 0:
            raise ConfigError(f"{path}.weight: expected a number > 0, found {weight!r}")
        if raw.get("pair"):
            pair = tuple(raw["pair"])
            if len(pair) != 2 or pair[0] == pair[1]:
                raise ConfigError(f"{path}.pair: expected two different set names, found {pair!r}")
            out.append(BandSet(name, weight=float(weight), pair=pair))
            continue
        bands = tuple(raw.get("bands", ()))
        if not bands or isinstance(raw.get("bands"), str):
            raise ConfigError(f"{path}.bands: expected a tuple of band names, found "
                              f"{raw.get('bands')!r}")
        out.append(BandSet(name, raw.get("train", ""), bands, float(weight)))
    plain = {s.name: s for s in out if s.pair is None}
    for s in out:
        for member in s.pair or ():
            if member not in plain:
                raise ConfigError(f"config.data.sets.{s.name}.pair: {member!r} is not a set with "
                                  f"bands; expected one of {sorted(plain)}")
    return [dataclasses.replace(s, bands=plain[s.pair[0]].bands) if s.pair else s for s in out]


def is_mixed(sets: Sequence[BandSet]) -> bool:
    return len(sets) > 1


def check_for_model(sets: Sequence[BandSet], model_name: str, takes_wavelengths: bool,
                    fixed_bands: tuple[str, ...] | None, pairs_ok: bool, objective: str) -> None:
    """ConfigError unless the model and objective can train on ``sets``: a fixed-band model
    needs one band list in every set; an objective whose heads are built for one band list
    (``fixed_bands``: a pixel decoder) needs it in every set; pairs need an objective that takes
    them."""
    plain = [s for s in sets if s.pair is None]
    if not takes_wavelengths and len({s.bands for s in plain}) > 1:
        raise ConfigError(f"config.data.sets: sets with different bands "
                          f"({', '.join(f'{s.name}: {len(s.bands)}' for s in plain)}) need a "
                          f"wavelength-conditioned model (dofa_*); config.model.name is "
                          f"{model_name!r}, whose first layer has one band order")
    if fixed_bands is not None:
        for s in plain:
            if tuple(s.bands) != tuple(fixed_bands):
                raise ConfigError(f"config.data.sets.{s.name}.bands: {objective}'s heads are "
                                  f"built for config.data.bands {tuple(fixed_bands)}; found "
                                  f"{s.bands}")
    for s in sets:
        if s.pair and not pairs_ok:
            raise ConfigError(f"config.data.sets.{s.name}.pair: {objective} takes one record "
                              "per sample; cross-sensor pairs are a softcon option")


class BandSetViews:
    """``view_fn`` for one set (picklable): the record gets the set's bands (and its paired
    record the second set's); the sample gets their wavelengths when ``wavelengths`` (``table``:
    band → µm over ``bands.WAVELENGTHS``)."""

    def __init__(self, view_fn: Callable, bands: Sequence[str], wavelengths: bool,
                 second_bands: Sequence[str] | None = None, table: dict | None = None):
        self.view_fn, self.bands, self.second_bands = view_fn, tuple(bands), second_bands
        self.wavelengths = wavelengths
        if wavelengths:  # table: the config's data.wavelengths over bands.WAVELENGTHS
            self._w = bands_lib.wavelengths(self.bands, table)
            self._w2 = bands_lib.wavelengths(second_bands, table) if second_bands else None

    def __call__(self, record, rng):
        if self.second_bands is not None:
            first, second = record
            record = dict(first, **{views.RECORD_BANDS: self.bands, views.PAIRED_RECORD:
                                    dict(second, **{views.RECORD_BANDS: tuple(self.second_bands)})})
        else:
            record = dict(record, **{views.RECORD_BANDS: self.bands})
        sample = self.view_fn(record, rng)
        if self.wavelengths:
            if self._w2 is not None:
                sample.setdefault(f"{WAVELENGTHS}1", self._w.copy())
                sample.setdefault(f"{WAVELENGTHS}2", self._w2.copy())
            else:
                sample.setdefault(WAVELENGTHS, self._w.copy())
        return sample


class PairedSource:
    """Records i of two sources as one (first, second) pair; the two must hold the same
    locations in the same order (same length, same ``key`` at every index read)."""

    def __init__(self, first, second, names: tuple[str, str]):
        if len(first) != len(second):
            raise ValueError(f"cross-sensor pair {names[0]} + {names[1]}: expected the same "
                             f"locations in both sets, found {len(first)} and {len(second)} records")
        self.first, self.second, self.names = first, second, names

    def __len__(self) -> int:
        return len(self.first)

    def __getitem__(self, i):
        a, b = self.first[i], self.second[i]
        if a.get("key") != b.get("key"):
            raise ValueError(f"cross-sensor pair {self.names[0]} + {self.names[1]}: record {i} is "
                             f"location {a.get('key')!r} in {self.names[0]} and {b.get('key')!r} in "
                             f"{self.names[1]}; both sets must list the same locations in one order")
        return a, b


class SetSchedule:
    """Which set global batch k comes from, and how many earlier batches came from that set.

    The draws come in blocks of ``block`` batches, block j drawn by ``default_rng([seed, j])``
    with the sets' weights, so the schedule is a function of (seed, weights, k) alone."""

    def __init__(self, weights: Sequence[float], seed: int, block: int = 4096):
        w = np.asarray(weights, np.float64)
        self.p, self.seed, self.block = w / w.sum(), int(seed), int(block)
        self._sets = np.zeros(0, np.int32)
        self._ranks = np.zeros(0, np.int64)
        self._counts = np.zeros(len(w), np.int64)

    def __call__(self, k: int) -> tuple[int, int]:
        while k >= len(self._sets):
            self._extend()
        return int(self._sets[k]), int(self._ranks[k])

    def _extend(self) -> None:
        j = len(self._sets) // self.block
        drawn = np.random.default_rng([self.seed, j]).choice(len(self.p), self.block, p=self.p)
        ranks = np.empty(self.block, np.int64)
        for s in range(len(self.p)):
            where = np.flatnonzero(drawn == s)
            ranks[where] = self._counts[s] + np.arange(len(where))
            self._counts[s] += len(where)
        self._sets = np.concatenate([self._sets, drawn.astype(np.int32)])
        self._ranks = np.concatenate([self._ranks, ranks])


class MixedRows(grain.MapDataset):
    """Row i of the mixed stream: batch k = i // G of set s_k, row n_k·G + i % G of its stream."""

    def __init__(self, streams: Sequence[grain.MapDataset], schedule: SetSchedule,
                 global_batch: int):
        super().__init__(list(streams))
        self._streams, self._schedule, self._g = list(streams), schedule, int(global_batch)

    def __len__(self) -> int:
        return sys.maxsize // self._g * self._g

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self.slice(index)
        k, row = divmod(index, self._g)
        s, n = self._schedule(k)
        return self._streams[s][n * self._g + row]

    def __str__(self) -> str:
        return f"MixedRows(sets={len(self._streams)}, global_batch={self._g})"


def set_seed(seed: int, index: int) -> int:
    """The seed of set ``index``'s own stream (shuffle and views)."""
    return int(np.random.SeedSequence([int(seed), index]).generate_state(1)[0])


def mixed_stream(sets: Sequence[BandSet], sources: dict, view_fn: Callable, *, seed: int,
                 global_batch: int, wavelengths: bool, tune_malloc: bool = True,
                 table: dict | None = None):
    """The global sample stream of ``sets`` (``sources``: set name → random-access records of a
    plain set), ready for ``pipeline.batch_stream``; ``table``: as :class:`BandSetViews`."""
    from geossl.data import pipeline

    by_name = {s.name: s for s in sets}
    streams = []
    for i, s in enumerate(sets):
        if s.pair:
            a, b = s.pair
            source = PairedSource(sources[a], sources[b], s.pair)
            fn = BandSetViews(view_fn, by_name[a].bands, wavelengths, by_name[b].bands, table)
        else:
            source, fn = sources[s.name], BandSetViews(view_fn, s.bands, wavelengths, table=table)
        streams.append(pipeline.view_stream(source, fn, seed=set_seed(seed, i),
                                            tune_malloc=tune_malloc))
    schedule = SetSchedule([s.weight for s in sets], seed)
    return MixedRows(streams, schedule, global_batch)
