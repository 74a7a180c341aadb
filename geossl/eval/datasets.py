"""Labelled evaluation data: geossl shard folders or TFDS builders, read as (images, labels).

``open_split(dataset, split)``:
- a folder of geossl shards: the records of ``{folder}/{split}-*.tfrecord[.gz]``;
- ``"synthetic"``: the demo data of the trainer (``$GEOSSL_DATA``, generated when missing), its
  Sentinel-2 rendering (``train-*``, ``heldout-*``); ``"synthetic:s1"`` its Sentinel-1 rendering
  of the same locations (``s1-train-*``, ``s1-heldout-*``: VV, VH in dB, for a checkpoint trained
  on S1 bands, e.g. ``configs/softcon_vit_b.py:sar,demo``); ``"synthetic:s2"`` = ``"synthetic"``;
- ``"tfds:NAME"`` (e.g. ``tfds:eurosat/all``, ``tfds:bigearthnet/all``): a TFDS builder, only where
  ``tensorflow_datasets`` is importable and the data are prepared.

``probe_splits`` picks the probe-train and probe-test examples: the labelled train split trains
the probe and the eval split (default ``heldout``) tests it. When the train split is missing,
unlabelled or the same as the eval split (a folder holding only ``heldout-*`` shards; a TFDS builder
with one split, ``--train_split train --eval_split train``), the eval split is divided
deterministically: a permutation of its indices seeded with ``split_seed`` (default 0), the first
``round(holdout_train_fraction · N)`` (default half) train the probe, the rest test it.
A ``label_fraction`` subset of the probe-train indices is then drawn with ``seed``, stratified by
the labels of the acquisition read (:mod:`geossl.eval.sampling`: per class for single-label data,
an iterative stratification for multi-label data; nested across fractions); 10 % by default on
the command line, the lab's BigEarthNet-10% protocol.

Labels of multi-acquisition records are those of the acquisition read (``acq_labels``, T·K
multi-hot, where present; else ``labels``).

Images are prepared on the host as the backbone was trained (``Preprocess``): one acquisition
(``acquisition``, default 0) of (T, H, W, C), the bands named by the training config
(``config.data.bands``) picked by name (B10, absent from L2A products, is a zero band as in
REFERENCE §2), then ``config.data.norm``; resizing to the model's input size happens on the
device (``features.extract_features``). A wavelength-conditioned encoder (DOFA) is not tied to its
training bands: the probes give it the dataset's bands (``LabelledSplit.band_names``, or
``--bands``) and their wavelengths.
"""

from __future__ import annotations

import dataclasses
import glob
import os
import re
from typing import Iterator, Sequence

import numpy as np

from geossl.data import bands as bands_lib
from geossl.data import manifest
from geossl.eval import sampling

#: label_set → (number of classes, multi-label).
LABEL_SETS = {
    "dynamic_world_9": (9, True),
    "bigearthnet_19": (19, True),
    "bigearthnet_43": (43, True),
    "eurosat_10": (10, False),
}

# EuroSAT's 13-band GeoTIFFs (read unchanged by tfds eurosat/all) keep B8A last
# (as in the Copernicus-Bench EuroSAT loader; torchgeo lists B8A after B8).
_EUROSAT_BANDS = ("B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B9", "B10", "B11", "B12", "B8A")
_BIGEARTHNET_BANDS = ("B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B9", "B11", "B12")


def select_bands(image: np.ndarray, have: Sequence[str], want: Sequence[str] | None,
                 where: str = "", zero_fill: Sequence[str] = bands_lib.ZERO_FILL) -> np.ndarray:
    """(..., C_have) → (..., C_want) by band name (``geossl.data.bands.select_bands``: a missing
    band of ``zero_fill`` becomes zeros); ``want=None`` keeps the image as it is."""
    if want is None:
        return image
    return bands_lib.select_bands(image, have, want, where, zero_fill)


@dataclasses.dataclass(frozen=True)
class Preprocess:
    """Host-side preparation of one record image (T, H, W, C) or (H, W, C) → (H, W, C') float32."""

    bands: tuple[str, ...] | None = None  # model input bands in order; None: as stored
    norm: str = "softcon"                 # geossl.data.bands.normalize mode, or "none"
    acquisition: int = 0
    # input bands a dataset may lack, then 0 after normalisation (So2Sat's S2 has no B1, B9, B10:
    # SSL4EO-S12's evaluation feeds a 13-band encoder zeros there)
    absent_bands: tuple[str, ...] = ()
    # no-data pixels (NaN, or equal to ``nodata``) normalise as training's (config.data.nodata,
    # nodata_fill: "zero" or the band's valid mean)
    nodata: float | None = None
    nodata_fill: str = "zero"

    @classmethod
    def from_config(cls, config, **overrides) -> "Preprocess":
        data = config.get("data", None) if hasattr(config, "get") else None
        kw = {}
        if data is not None:
            if data.get("bands", None):
                kw["bands"] = tuple(data.get("bands"))
            if data.get("norm", None):
                kw["norm"] = str(data.get("norm"))
            if data.get("nodata", None) is not None:
                kw["nodata"] = float(data.get("nodata"))
            if data.get("nodata_fill", None):
                kw["nodata_fill"] = str(data.get("nodata_fill"))
        kw.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**kw)

    def __call__(self, image: np.ndarray, bands: Sequence[str], where: str = "") -> np.ndarray:
        image = np.asarray(image)
        if image.ndim == 4:
            if not -image.shape[0] <= self.acquisition < image.shape[0]:
                raise ValueError(f"{where}acquisition {self.acquisition} of an image with "
                                 f"{image.shape[0]} acquisitions")
            image = image[self.acquisition]
        if image.ndim != 3:
            raise ValueError(f"{where}expected an image (T, H, W, C) or (H, W, C), found {image.shape}")
        image = select_bands(image.astype(np.float32), bands, self.bands, where,
                             bands_lib.ZERO_FILL + tuple(self.absent_bands))
        names = list(self.bands) if self.bands is not None else list(bands)
        if self.norm and self.norm != "none":
            image = bands_lib.normalize(image, names, mode=self.norm, nodata=self.nodata,
                                        fill=self.nodata_fill)
        image = np.asarray(image, np.float32)
        if self.absent_bands and self.bands is not None:
            have = {bands_lib.canonical(b) for b in bands}
            absent = {bands_lib.canonical(b) for b in self.absent_bands} - have
            gone = [i for i, b in enumerate(self.bands) if bands_lib.canonical(b) in absent]
            image[..., gone] = 0.0          # a new array: select_bands / normalize made it
        return image


class LabelledSplit:
    """A labelled split: ``len()``, ``num_classes``, ``multilabel`` and ``read(indices)``."""

    name: str
    num_classes: int
    multilabel: bool

    def __len__(self) -> int:
        raise NotImplementedError

    def is_labelled(self) -> bool:
        return True

    def read(self, indices: Sequence[int], preprocess: Preprocess, chunk: int = 64
             ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yields (images (b, H, W, C) float32, labels) in ``indices`` order; labels are multi-hot
        (b, K) float32 for multi-label data, class ids (b,) int32 otherwise."""
        raise NotImplementedError

    def labels(self, indices: Sequence[int], acquisition: int = 0) -> np.ndarray:
        """The encoded labels of ``indices`` (as ``read`` yields them) without reading images."""
        raise NotImplementedError

    def band_names(self) -> tuple[str, ...]:
        """The band names of the split's first example, in stored order (the input bands of a
        wavelength-conditioned encoder that is given no ``--bands``)."""
        raise NotImplementedError

    def encode_labels(self, label_lists: Sequence[np.ndarray]) -> np.ndarray:
        if self.multilabel:
            out = np.zeros((len(label_lists), self.num_classes), np.float32)
            for row, labels in enumerate(label_lists):
                labels = np.asarray(labels, np.int64)
                if labels.size and (labels.min() < 0 or labels.max() >= self.num_classes):
                    raise ValueError(f"{self.name}: label {labels.tolist()} outside "
                                     f"[0, {self.num_classes})")
                out[row, labels] = 1.0
            return out
        out = np.empty((len(label_lists),), np.int32)
        for row, labels in enumerate(label_lists):
            labels = np.asarray(labels).reshape(-1)
            if labels.size != 1:
                raise ValueError(f"{self.name}: single-label data with {labels.size} labels "
                                 f"in example {row}")
            out[row] = int(labels[0])
        return out


class RecordSplit(LabelledSplit):
    """Records in geossl's dict layout: a ``ShardSource`` or any sequence of record dicts."""

    def __init__(self, records, name: str = "records", *, num_classes: int | None = None,
                 multilabel: bool | None = None):
        self.records = records
        self.name = name
        if len(records) == 0:
            raise ValueError(f"{name}: no records")
        first = records[0]
        label_set = first.get("label_set", "") or ""
        if isinstance(label_set, bytes):
            label_set = label_set.decode()
        self.label_set = label_set
        known = LABEL_SETS.get(label_set)
        if num_classes is None and known:
            num_classes = known[0]
        if num_classes is None and "num_classes" in first:
            num_classes = int(np.asarray(first["num_classes"]).reshape(-1)[0])
        if multilabel is None and known:
            multilabel = known[1]
        if num_classes is None or multilabel is None:  # unknown nomenclature: look at all labels
            label_lists = [np.asarray(records[i]["labels"]) for i in range(len(records))]
            if num_classes is None:
                num_classes = 1 + max((int(l.max()) for l in label_lists if l.size), default=0)
            if multilabel is None:
                multilabel = not all(l.size == 1 for l in label_lists)
        self.num_classes = int(num_classes)
        self.multilabel = bool(multilabel)

    def __len__(self) -> int:
        return len(self.records)

    def is_labelled(self) -> bool:
        """True when one of the first 64 records has a label."""
        return any(np.asarray(self.records[i]["labels"]).size
                   for i in range(min(64, len(self.records))))

    def record_labels(self, record, acquisition: int) -> np.ndarray:
        """Class ids of the acquisition that is read: from ``acq_labels`` (T·K multi-hot, one row
        per acquisition) where present, else the record's ``labels``."""
        acq = record.get("acq_labels")
        image = record["image"]
        seasons = np.shape(image)[0] if np.ndim(image) == 4 else 1
        if not -seasons <= acquisition < seasons:
            raise ValueError(f"{record.get('key', 'a record')}: acquisition {acquisition} of an "
                             f"image with {seasons} acquisitions")
        if acq is not None and np.size(acq) == seasons * self.num_classes:
            rows = np.asarray(acq).reshape(seasons, self.num_classes)
            return np.flatnonzero(rows[acquisition]).astype(np.int64)
        return np.asarray(record["labels"])

    def labels(self, indices, acquisition=0):
        return self.encode_labels([self.record_labels(self.records[int(i)], acquisition)
                                   for i in indices])

    def band_names(self):
        return tuple(str(b) for b in self.records[0]["bands"])

    def read(self, indices, preprocess, chunk=64):
        images, labels = [], []
        for i in indices:
            record = self.records[int(i)]
            images.append(preprocess(record["image"], record["bands"],
                                     where=f"{self.name} record {int(i)}: "))
            labels.append(self.record_labels(record, preprocess.acquisition))
            if len(images) == chunk:
                yield np.stack(images), self.encode_labels(labels)
                images, labels = [], []
        if images:
            yield np.stack(images), self.encode_labels(labels)


class TfdsSplit(LabelledSplit):
    """A TFDS split (``eurosat/all``, ``eurosat/rgb``, ``bigearthnet/all``, ``bigearthnet/rgb``,
    or another builder with an ``image`` and a ``label``/``labels`` feature), read in order."""

    def __init__(self, name: str, split: str, data_dir: str | None = None):
        try:
            import tensorflow_datasets as tfds
        except ImportError as e:
            raise ImportError(
                f"dataset 'tfds:{name}' needs tensorflow_datasets (and tensorflow), which are not "
                f"importable here ({e}); pip install tensorflow tensorflow-datasets, or convert the "
                f"data to geossl shards with data_prep and pass the shard folder") from None
        self.tfds = tfds
        self.builder = tfds.builder(name, data_dir=data_dir)
        self.name = f"tfds:{name}[{split}]"
        self.split = split
        info = self.builder.info
        try:  # also accepts sub-splits such as "train[:80%]"
            self.num_examples = int(info.splits[split].num_examples)
        except (KeyError, ValueError) as e:
            raise ValueError(f"{self.name}: no split {split!r} ({e}); the builder has "
                             f"{list(info.splits)} (one split only: pass the same name as "
                             f"--train_split and --eval_split to divide it)") from None
        features = info.features
        self.base = name.split("/")[0].split(":")[0]
        if "labels" in features:
            self.label_key, self.multilabel = "labels", True
            self.num_classes = features["labels"].feature.num_classes
        elif "label" in features:
            self.label_key, self.multilabel = "label", False
            self.num_classes = features["label"].num_classes
        else:
            raise ValueError(f"{self.name}: no 'label' or 'labels' feature in {list(features)}")

    def __len__(self) -> int:
        return int(self.num_examples)

    def _image(self, example) -> tuple[np.ndarray, tuple[str, ...]]:
        if "sentinel2" in example:  # eurosat/all
            return np.asarray(example["sentinel2"]), _EUROSAT_BANDS
        if "B02" in example and "B8A" in example:  # bigearthnet/all: bands at 10/20/60 m
            size = np.asarray(example["B02"]).shape[0]
            bands = []
            for band in _BIGEARTHNET_BANDS:
                key = band if band == "B8A" else f"B{int(band[1:]):02d}"  # tfds: B01 … B12, B8A
                array = np.asarray(example[key])
                factor = size // array.shape[0]
                bands.append(np.repeat(np.repeat(array, factor, 0), factor, 1))
            return np.stack(bands, -1), _BIGEARTHNET_BANDS
        if "image" in example:  # rgb configs: 8-bit pictures (bigearthnet/rgb: DN / 2000 · 255,
            return np.asarray(example["image"]), bands_lib.RGB   # clipped), not raw B4, B3, B2
        raise ValueError(f"{self.name}: no image feature in {sorted(example)}")

    def band_names(self):
        ds = self.tfds.as_numpy(self.builder.as_dataset(split=self.split, shuffle_files=False))
        for example in ds:
            return tuple(self._image(example)[1])
        raise ValueError(f"{self.name}: no examples")

    def labels(self, indices, acquisition=0):
        del acquisition  # one acquisition per TFDS example
        wanted = {int(i) for i in indices}
        found = {}
        ds = self.tfds.as_numpy(self.builder.as_dataset(split=self.split, shuffle_files=False))
        for i, example in enumerate(ds):
            if len(found) == len(wanted):
                break
            if i in wanted:
                found[i] = np.asarray(example[self.label_key])
        if len(found) != len(wanted):
            raise ValueError(f"{self.name}: only {len(found)} of {len(wanted)} wanted examples "
                             f"found")
        return self.encode_labels([found[int(i)] for i in indices])

    def read(self, indices, preprocess, chunk=64):
        wanted = np.asarray(sorted(set(int(i) for i in indices)))
        order = {int(i): k for k, i in enumerate(indices)}
        if len(order) != len(indices):
            raise ValueError(f"{self.name}: repeated indices")
        ds = self.tfds.as_numpy(self.builder.as_dataset(split=self.split, shuffle_files=False))
        images, labels, position, pointer = [], [], [], 0
        for i, example in enumerate(ds):
            if pointer == len(wanted):
                break
            if i != wanted[pointer]:
                continue
            pointer += 1
            image, bands = self._image(example)
            images.append(preprocess(image, bands, where=f"{self.name} example {i}: "))
            labels.append(np.asarray(example[self.label_key]))
            position.append(order[i])
        if pointer != len(wanted):
            raise ValueError(f"{self.name}: only {pointer} of {len(wanted)} wanted examples found")
        # Back to the order of ``indices``.
        perm = np.argsort(position)
        for start in range(0, len(perm), chunk):
            part = perm[start:start + chunk]
            yield (np.stack([images[k] for k in part]),
                   self.encode_labels([labels[k] for k in part]))


def _shard_files(folder: str, split: str) -> list[str]:
    files = glob.glob(os.path.join(folder, f"{split}-*.tfrecord")) + glob.glob(
        os.path.join(folder, f"{split}-*.tfrecord.gz"))
    manifest.check_shard_set(files)
    return sorted(files)


SYNTHETIC = {"synthetic": "s2", "synthetic:s2": "s2", "synthetic:s1": "s1"}


def synthetic_modality(dataset: str) -> str | None:
    """The demo data rendering ("s2" / "s1") that ``dataset`` names, None for other datasets."""
    if dataset.startswith("synthetic:") and dataset not in SYNTHETIC:
        raise ValueError(f"--dataset {dataset!r}: expected one of {sorted(SYNTHETIC)}")
    return SYNTHETIC.get(dataset)


def resolve_dataset(dataset: str) -> str:
    """"synthetic[:s2|:s1]" → the trainer's demo data folder, with that rendering (generated when
    missing); else unchanged."""
    modality = synthetic_modality(dataset)
    if modality is not None:
        from geossl.data.files import demo_files
        return os.path.dirname(demo_files(modality))
    return dataset


def split_prefix(dataset: str, split: str) -> str:
    """The shard-set name of ``split`` in ``dataset``'s folder: ``s1-{split}`` for
    ``synthetic:s1``, else ``split``."""
    from geossl.data.synthetic import set_prefix
    modality = synthetic_modality(dataset)
    return set_prefix(modality, split) if modality else split


def shard_prefixes(folder: str) -> list[str]:
    """The shard-set names in ``folder`` (``NAME-00000-of-00016.tfrecord`` → ``NAME``), sorted."""
    names = glob.glob(os.path.join(glob.escape(folder), "*-of-*.tfrecord")) + glob.glob(
        os.path.join(glob.escape(folder), "*-of-*.tfrecord.gz"))
    return sorted({re.sub(r"-\d{5}-of-\d{5}\.tfrecord(\.gz)?$", "", os.path.basename(n))
                   for n in names})


def open_split(dataset: str, split: str, **kw) -> LabelledSplit | None:
    """The split ``split`` of ``dataset`` (see the module docstring); None when a shard folder has
    no ``{split}-*`` shards."""
    if dataset.startswith("tfds:"):
        return TfdsSplit(dataset[len("tfds:"):], split, **kw)
    folder = resolve_dataset(dataset)
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"--dataset {dataset!r}: not a folder of shards, 'synthetic', "
                                f"'synthetic:s1' or 'tfds:NAME'")
    prefix = split_prefix(dataset, split)
    files = _shard_files(folder, prefix)
    if not files:
        return None
    from geossl.data import ShardSource
    return RecordSplit(ShardSource(files), name=f"{folder}/{prefix}", **kw)


@dataclasses.dataclass
class ProbeData:
    train: LabelledSplit
    train_indices: np.ndarray
    test: LabelledSplit
    test_indices: np.ndarray
    note: str = ""


def subsample(indices: np.ndarray, fraction: float, seed: int, labels=None) -> np.ndarray:
    """A seeded ``fraction`` of ``indices``, sorted: stratified by ``labels`` (rows parallel to
    ``indices``: (N,) class ids or (N, K) multi-hot; :func:`sampling.stratified_subset`), or a
    seeded permutation's first ``max(1, round(fraction · N))`` without labels. Nested across
    fractions for one seed."""
    indices = np.asarray(indices)
    if labels is None:
        return indices[sampling.random_subset(len(indices), fraction, seed)]
    if len(labels) != len(indices):
        raise ValueError(f"subsample: {len(labels)} label rows for {len(indices)} indices")
    return indices[sampling.stratified_subset(labels, fraction, seed)]


def split_indices(n: int, train_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic disjoint (train, test) index sets covering range(n), each sorted."""
    if n < 2:
        raise ValueError(f"cannot split {n} example(s) into probe-train and probe-test")
    perm = np.random.default_rng(seed).permutation(n)
    cut = min(n - 1, max(1, int(round(train_fraction * n))))
    return np.sort(perm[:cut]), np.sort(perm[cut:])


def probe_splits(dataset: str, train_split: str = "train", eval_split: str = "heldout", *,
                 label_fraction: float = 1.0, seed: int = 0, holdout_train_fraction: float = 0.5,
                 split_seed: int = 0, acquisition: int = 0) -> ProbeData:
    """Probe-train / probe-test examples of ``dataset`` (see the module docstring); the label
    subset is stratified by the labels of ``acquisition``."""
    test = open_split(dataset, eval_split)
    if test is None:
        prefixes = shard_prefixes(resolve_dataset(dataset)) if not dataset.startswith("tfds:") else []
        if len(prefixes) != 1:
            raise FileNotFoundError(f"--dataset {dataset}: no labelled split {eval_split!r} "
                                    f"({eval_split}-*.tfrecord); shard sets there: {prefixes}; "
                                    f"pass --eval_split")
        # one shard set (e.g. data_prep.bigearthnet's "bigearthnet-*"): it is the eval split
        eval_split = prefixes[0]
        test = open_split(dataset, eval_split)
    train = open_split(dataset, train_split) if train_split and train_split != eval_split else None
    if train is not None and train.is_labelled():
        note = f"probe-train = {train_split}, probe-test = {eval_split}"
        train_idx, test_idx = np.arange(len(train)), np.arange(len(test))
    else:
        reason = ("has no labels" if train is not None else
                  "is the eval split" if train_split == eval_split else "does not exist")
        train = test
        train_idx, test_idx = split_indices(len(test), holdout_train_fraction, split_seed)
        note = (f"split {train_split!r} {reason}: {eval_split!r} divided by seed {split_seed} into "
                f"{len(train_idx)} probe-train / {len(test_idx)} probe-test examples")
    if not 0 < label_fraction <= 1:
        raise ValueError(f"label_fraction: expected a fraction in (0, 1], found {label_fraction}")
    if label_fraction < 1:
        pool = len(train_idx)
        train_idx = subsample(train_idx, label_fraction, seed,
                              labels=train.labels(train_idx, acquisition))
        note += (f"; label fraction {label_fraction:g}: {len(train_idx)} of {pool} probe-train "
                 f"examples, stratified by {'label' if train.multilabel else 'class'}, seed {seed}")
    if (train.num_classes, train.multilabel) != (test.num_classes, test.multilabel):
        raise ValueError(f"{train.name} ({train.num_classes} classes, multilabel={train.multilabel}) "
                         f"and {test.name} ({test.num_classes}, {test.multilabel}) differ")
    return ProbeData(train, train_idx, test, test_idx, note)


def features_and_labels(model, variables, split: LabelledSplit, indices, preprocess: Preprocess,
                        *, mode: str = "cls", batch_size: int = 256, img_size: int | None = None,
                        devices=None, layers: tuple[int, ...] | None = None, family=None,
                        wavelengths=None):
    """Frozen features (N, F) and labels of ``split[indices]``; with ``layers`` (block / stage
    indices of ``family``'s models, :func:`features.extract_layer_features`) the features are a
    list of (N, F_l) arrays, one per layer, from one forward pass. ``wavelengths`` (C,): those
    of ``preprocess``'s bands for a wavelength-conditioned model (DOFA), else None."""
    from geossl.eval import features
    labels = []

    def images():
        for chunk, chunk_labels in split.read(indices, preprocess, chunk=min(batch_size, 256)):
            labels.append(chunk_labels)
            yield chunk

    kw = dict(mode=mode, batch_size=max(1, min(int(batch_size), len(indices))),  # no padding
              img_size=img_size, devices=devices, wavelengths=wavelengths)
    if layers is None:
        feats = features.extract_features(model, variables, images(), **kw)
    else:
        feats = features.extract_layer_features(model, variables, images(), layers=layers,
                                                family=family, **kw)
    return feats, np.concatenate(labels)
