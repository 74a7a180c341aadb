"""Runs in an interpreter with tensorflow + tensorflow-datasets (GEOSSL_TF_PYTHON): prepares three
tiny TFDS datasets laid out like eurosat/all, bigearthnet/all and the rgb configs, reads them with
geossl's TfdsSplit and checks band order, resampling, labels and example order. Prints a JSON
summary."""

import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import tensorflow_datasets as tfds  # noqa: E402

from geossl.data import bands as B  # noqa: E402
from geossl.eval.datasets import Preprocess, TfdsSplit  # noqa: E402

N = 6
SIZES = {"B02": 12, "B03": 12, "B04": 12, "B08": 12, "B05": 6, "B06": 6, "B07": 6, "B8A": 6,
         "B11": 6, "B12": 6, "B01": 2, "B09": 2}


def eurosat_image(i):
    return (np.random.default_rng(i).random((8, 8, 13)) * 1000).astype(np.float32)


def ben_band(i, key):
    rng = np.random.default_rng([i, sorted(SIZES).index(key)])
    return rng.integers(0, 4000, (SIZES[key], SIZES[key])).astype(np.int64)


class GeosslFakeEurosat(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
            "sentinel2": tfds.features.Tensor(shape=(8, 8, 13), dtype=np.float32),
            "label": tfds.features.ClassLabel(num_classes=10),
            "index": tfds.features.Scalar(dtype=np.int64)}))

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples()}

    def _generate_examples(self):
        for i in range(N):
            yield i, {"sentinel2": eurosat_image(i), "label": i % 10, "index": i}


class GeosslFakeBigearthnet(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        feats = {k: tfds.features.Tensor(shape=(s, s), dtype=np.int64) for k, s in SIZES.items()}
        feats["labels"] = tfds.features.Sequence(tfds.features.ClassLabel(num_classes=19))
        feats["index"] = tfds.features.Scalar(dtype=np.int64)
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(feats))

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples()}

    def _generate_examples(self):
        for i in range(N):
            example = {k: ben_band(i, k) for k in SIZES}
            example["labels"] = [i % 19, (i + 3) % 19]
            example["index"] = i
            yield i, example


class GeosslFakeRgb(tfds.core.GeneratorBasedBuilder):
    """Laid out like eurosat/rgb and bigearthnet/rgb: an 8-bit picture under "image"."""
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(8, 8, 3)),
            "label": tfds.features.ClassLabel(num_classes=10)}))

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples()}

    def _generate_examples(self):
        for i in range(N):
            pixels = np.random.default_rng(i).integers(0, 256, (8, 8, 3)).astype(np.uint8)
            yield i, {"image": pixels, "label": i % 10}


def stored(split) -> list:
    """The prepared examples in dataset order (TFDS shuffles them when preparing)."""
    ds = split.builder.as_dataset(split="train", shuffle_files=False)
    return list(tfds.as_numpy(ds))


def main(data_dir):
    for cls in (GeosslFakeEurosat, GeosslFakeBigearthnet, GeosslFakeRgb):
        cls(data_dir=data_dir).download_and_prepare()
    pre = Preprocess(bands=B.S2_L1C, norm="none")
    out = {}

    split = TfdsSplit("geossl_fake_eurosat", "train", data_dir=data_dir)
    assert (len(split), split.num_classes, split.multilabel) == (N, 10, False)
    order = [int(e["index"]) for e in stored(split)]
    images, labels = next(split.read([4, 1], pre))
    for row, position in enumerate((4, 1)):
        i = order[position]
        raw = eurosat_image(i)              # EuroSAT order: B1..B8, B9, B10, B11, B12, B8A
        assert np.array_equal(images[row][..., 8], raw[..., 12]), "B8A"
        assert np.array_equal(images[row][..., 9], raw[..., 8]), "B9"
        assert np.array_equal(images[row][..., :8], raw[..., :8])
        assert int(labels[row]) == i % 10
    out["eurosat_order"] = order

    split = TfdsSplit("geossl_fake_bigearthnet", "train", data_dir=data_dir)
    assert (len(split), split.num_classes, split.multilabel) == (N, 19, True)
    order = [int(e["index"]) for e in stored(split)]
    images, labels = next(split.read([2, 5, 0], pre))
    for row, position in enumerate((2, 5, 0)):
        i, img = order[position], images[row]
        assert img.shape == (12, 12, 13), img.shape
        assert np.array_equal(img[..., 1], ben_band(i, "B02"))
        assert np.array_equal(img[::2, ::2, 4], ben_band(i, "B05"))
        assert np.array_equal(img[1::2, 1::2, 8], ben_band(i, "B8A"))
        assert np.array_equal(img[5::6, 5::6, 0], ben_band(i, "B01"))
        assert not img[..., 10].any(), "B10 zero-filled"
        assert np.flatnonzero(labels[row]).tolist() == sorted({i % 19, (i + 3) % 19})
    out["bigearthnet_order"] = order

    # an rgb config's pictures are 8-bit R, G, B, not raw B4, B3, B2: an RGB model reads them, a
    # raw-band model is told what the data holds
    split = TfdsSplit("geossl_fake_rgb", "train", data_dir=data_dir)
    assert split.band_names() == B.RGB, split.band_names()
    images, _ = next(split.read([0, 3], Preprocess(bands=B.RGB, norm="none")))
    assert images.shape == (2, 8, 8, 3) and images.max() <= 255
    try:
        next(split.read([0], Preprocess(bands=("B4", "B3", "B2"), norm="softcon")))
    except ValueError as e:
        assert "B4" in str(e) and "'R'" in str(e), e
    else:
        raise AssertionError("raw S2 bands read from an 8-bit picture")
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1])
