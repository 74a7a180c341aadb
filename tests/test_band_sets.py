"""Mixed-sensor streams (geossl.data.band_sets): the seeded set schedule, whole batches per set,
each set's own stream consumed in order, resume and process splits, wavelengths, pairs, errors."""

import ml_collections
import numpy as np
import pytest

from geossl.data import band_sets, bands, pipeline, views
from geossl.errors import ConfigError
from geossl.objectives import softcon_views

G = 6  # global batch


def _records(prefix: str, n: int, band_names, t: int = 2, size: int = 8, seed: int = 0):
    rng = np.random.default_rng(seed)
    return [{"key": f"loc{i}", "bands": list(band_names), "tag": prefix,
             "image": rng.uniform(0, 3000, (t, size, size, len(band_names))).astype(np.float32),
             "acq_labels": rng.integers(0, 2, t * 9).astype(np.int64),
             "num_classes": np.array([9])} for i in range(n)]


def _ids(record, rng):
    """A toy view: which record of which set, its bands and one rng draw (row identity)."""
    return {"tag": np.array(record["tag"]), "key": np.array(int(record["key"][3:])),
            "bands": np.array("/".join(record[views.RECORD_BANDS])),
            "draw": np.array(rng.integers(1 << 30))}


SETS = [band_sets.BandSet("s2", bands=bands.S2_L1C, weight=3.0),
        band_sets.BandSet("s1", bands=bands.S1, weight=1.0)]
SOURCES = {"s2": _records("s2", 11, bands.S2_L1C), "s1": _records("s1", 7, bands.S1)}


def _batches(n: int, *, start: int = 0, process_count: int = 1, wavelengths=False):
    stream = band_sets.mixed_stream(SETS, SOURCES, _ids, seed=5, global_batch=G,
                                    wavelengths=wavelengths, tune_malloc=False)
    out = []
    for p in range(process_count):
        it = iter(pipeline.batch_stream(stream, local_batch_size=G // process_count,
                                        process_index=p, process_count=process_count,
                                        start_position=start))
        out.append([next(it) for _ in range(n)])
    return [pipeline.concat(parts) for parts in zip(*out)]


def test_schedule_follows_the_weights_and_counts_each_sets_batches():
    schedule = band_sets.SetSchedule([3.0, 1.0, 4.0], seed=1, block=64)
    drawn = np.array([schedule(k) for k in range(4000)])
    np.testing.assert_allclose(np.bincount(drawn[:, 0]) / 4000, [3 / 8, 1 / 8, 4 / 8], atol=0.03)
    for s in range(3):  # rank = number of earlier batches of the same set
        np.testing.assert_array_equal(drawn[drawn[:, 0] == s, 1], np.arange((drawn[:, 0] == s).sum()))
    late = band_sets.SetSchedule([3.0, 1.0, 4.0], seed=1, block=64)
    assert late(3999) == tuple(drawn[3999])  # random access equals the sequential walk
    other = band_sets.SetSchedule([3.0, 1.0, 4.0], seed=2, block=64)
    assert [other(k)[0] for k in range(200)] != list(drawn[:200, 0])


def test_each_batch_is_one_set_and_each_set_stream_is_read_in_order():
    got = _batches(12)
    schedule = band_sets.SetSchedule([3.0, 1.0], seed=5)
    own = {s.name: band_sets.BandSetViews(_ids, s.bands, False) for s in SETS}
    streams = {s.name: pipeline.view_stream(SOURCES[s.name], own[s.name],
                                            seed=band_sets.set_seed(5, i), tune_malloc=False)
               for i, s in enumerate(SETS)}
    for k, batch in enumerate(got):
        s, n = schedule(k)
        name = SETS[s].name
        assert set(batch["tag"]) == {name}
        assert set(batch["bands"]) == {"/".join(SETS[s].bands)}
        want = [streams[name][n * G + r] for r in range(G)]
        np.testing.assert_array_equal(batch["key"], [w["key"] for w in want])
        np.testing.assert_array_equal(batch["draw"], [w["draw"] for w in want])
    assert {b["tag"][0] for b in got} == {"s2", "s1"}


def test_resume_and_process_split_continue_the_same_stream():
    full = _batches(9)
    resumed = _batches(5, start=4 * G)
    split = _batches(9, process_count=2)
    for a, b in zip(full[4:], resumed):
        np.testing.assert_array_equal(a["draw"], b["draw"])
    for a, b in zip(full, split):
        np.testing.assert_array_equal(a["draw"], b["draw"])
        np.testing.assert_array_equal(a["key"], b["key"])


def test_wavelengths_follow_each_batch_bands():
    for batch in _batches(6, wavelengths=True):
        names = batch["bands"][0].split("/")
        np.testing.assert_array_equal(batch["wavelengths"],
                                      np.tile(bands.wavelengths(names), (G, 1)))


def test_pair_set_zips_two_sensors_of_one_location_into_softcon_views():
    cfg = softcon_views.ViewConfig(img_size=8, crop_scale=(0.6, 1.0))
    s2, s1 = _records("s2", 3, bands.S2_L1C, seed=1), _records("s1", 3, bands.S1, seed=2)
    views_fn = band_sets.BandSetViews(lambda r, g: softcon_views.two_view_sample(r, g, cfg),
                                      bands.S2_L1C, True, bands.S1)
    pair = band_sets.PairedSource(s2, s1, ("s2", "s1"))[2]
    sample = views_fn(pair, np.random.default_rng(3))
    assert sample["view1"].shape == (8, 8, 13) and sample["view2"].shape == (8, 8, 2)
    np.testing.assert_array_equal(sample["wavelengths1"], bands.wavelengths(bands.S2_L1C))
    np.testing.assert_array_equal(sample["wavelengths2"], bands.wavelengths(bands.S1))
    # view 2 is the S1 record's acquisition, rendered with its own bands and the drawn params
    record = dict(s2[2], **{views.RECORD_BANDS: bands.S2_L1C, views.PAIRED_RECORD:
                            dict(s1[2], **{views.RECORD_BANDS: bands.S1})})
    drawn = softcon_views.two_view_draws(record, np.random.default_rng(3), cfg)
    t2, image2, plan2, params2, labels2 = drawn[1]
    np.testing.assert_array_equal(image2, s1[2]["image"][t2])
    np.testing.assert_array_equal(sample["view2"], views.render(cfg, image2, plan2, params2, 8))
    np.testing.assert_array_equal(sample["labels2"], labels2)


def test_pairs_refuse_sets_of_other_locations():
    s2, s1 = _records("s2", 3, bands.S2_L1C), _records("s1", 3, bands.S1)
    s1[1]["key"] = "elsewhere"
    with pytest.raises(ValueError, match=r"record 1 is location 'loc1' in s2 and 'elsewhere' in s1"):
        band_sets.PairedSource(s2, s1, ("s2", "s1"))[1]
    with pytest.raises(ValueError, match=r"found 3 and 2 records"):
        band_sets.PairedSource(s2, s1[:2], ("s2", "s1"))


def _config(sets):
    c = ml_collections.ConfigDict({"data": {"train": "", "bands": bands.S2_L1C, "sets": sets}})
    return c


def test_config_sets_and_their_errors():
    sets = band_sets.from_config(_config({
        "s2": {"bands": bands.S2_L1C, "weight": 2}, "s1": {"bands": bands.S1, "train": "x*"},
        "both": {"pair": ("s2", "s1"), "weight": 0.5}}))
    assert [(s.name, s.bands, s.weight, s.pair) for s in sets] == [   # in name order
        ("both", bands.S2_L1C, 0.5, ("s2", "s1")), ("s1", bands.S1, 1.0, None),
        ("s2", bands.S2_L1C, 2.0, None)]
    assert band_sets.from_config(_config({}))[0].bands == bands.S2_L1C
    bad = [({"a": {"bands": bands.S1, "weight": 0}}, r"sets.a.weight: expected a number > 0, found 0"),
           ({"a": {"bands": "VV"}}, r"sets.a.bands: expected a tuple of band names, found 'VV'"),
           ({"a": {"bands": bands.S1, "lr": 1}}, r"sets.a: unknown field\(s\) \['lr'\]"),
           ({"a": {"bands": bands.S1}, "p": {"pair": ("a", "b")}},
            r"sets.p.pair: 'b' is not a set with bands; expected one of \['a'\]")]
    for raw, message in bad:
        with pytest.raises(ConfigError, match=message):
            band_sets.from_config(_config(raw))


def test_model_and_objective_checks():
    mixed = SETS + [band_sets.BandSet("p", bands=bands.S2_L1C, pair=("s2", "s1"))]
    band_sets.check_for_model(mixed, "dofa_small_patch16_224", True, None, True, "softcon")
    with pytest.raises(ConfigError, match=r"sets with different bands \(s2: 13, s1: 2\) need a "
                                          r"wavelength-conditioned model .* 'vit_small_patch14'"):
        band_sets.check_for_model(SETS, "vit_small_patch14", False, None, False, "softcon")
    with pytest.raises(ConfigError, match=r"sets.s1.bands: mae's heads are built for"):
        band_sets.check_for_model(SETS, "dofa_small_patch16_224", True, bands.S2_L1C, False, "mae")
    with pytest.raises(ConfigError, match=r"sets.p.pair: dense takes one record per sample"):
        band_sets.check_for_model(mixed, "dofa_small_patch16_224", True, None, False, "dense")


def test_a_config_wavelength_table_overrides_the_default_one():
    table = bands.check_wavelength_table({"VH": 3.85})
    fn = band_sets.BandSetViews(_ids, bands.S1, True, table=table)
    sample = fn(SOURCES["s1"][0], np.random.default_rng(0))
    np.testing.assert_array_equal(sample["wavelengths"], np.float32([3.75, 3.85]))
    np.testing.assert_array_equal(bands.wavelengths(["B02", "VH"], {"vh": 4.0}),
                                  np.float32([0.4927, 4.0]))
    with pytest.raises(ConfigError, match=r"config.data.wavelengths.VH: expected a wavelength in "
                                          r"µm > 0, found -1"):
        bands.check_wavelength_table({"VH": -1})
