"""The grain pipeline: epochs, multi-process batch layout, exact resume (geossl.data.pipeline)."""

import functools
import platform
import sys

import numpy as np
import pytest

from configs import common
from geossl.data import bands as bl
from geossl.data import pipeline
from geossl.objectives import softcon_views


def _records(n, t=2, size=12, bands=bl.S2_L1C):
    rng = np.random.default_rng(0)
    return [{"image": rng.integers(0, 5000, (t, size, size, len(bands))).astype(np.uint16),
             "bands": list(bands), "labels": np.array([i % 9]), "key": f"loc-{i}",
             "index": np.int64(i)} for i in range(n)]


def _index_and_noise(record, rng):
    """A cheap view: which record, plus one draw of the per-row rng."""
    return {"index": np.int64(record["index"]), "noise": rng.random(3)}


_VIEWS = functools.partial(softcon_views.two_view_sample,
                           cfg=softcon_views.ViewConfig(img_size=8))


def _take(it, n):
    return [next(it) for _ in range(n)]


def _assert_batches_equal(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def test_epochs_cover_every_record_once_in_new_orders():
    ds = pipeline.make_dataset(_records(10), _index_and_noise, seed=3, local_batch_size=5,
                               num_epochs=2)
    batches = list(ds)
    assert len(batches) == 4 and batches[0]["noise"].shape == (5, 3)
    epoch1 = np.concatenate([b["index"] for b in batches[:2]])
    epoch2 = np.concatenate([b["index"] for b in batches[2:]])
    assert sorted(epoch1) == sorted(epoch2) == list(range(10))
    assert not np.array_equal(epoch1, epoch2) and not np.array_equal(epoch1, np.arange(10))
    plain = list(pipeline.make_dataset(_records(10), _index_and_noise, seed=3, local_batch_size=4,
                                       shuffle=False, num_epochs=1, drop_remainder=False))
    np.testing.assert_array_equal(np.concatenate([b["index"] for b in plain]), np.arange(10))
    assert len(plain[-1]["index"]) == 2


def test_process_batches_concatenate_to_the_global_batch():
    records = _records(22)
    single = _take(iter(pipeline.make_dataset(records, _index_and_noise, seed=5,
                                              local_batch_size=6)), 6)
    parts = [_take(iter(pipeline.make_dataset(records, _index_and_noise, seed=5,
                                              local_batch_size=3, process_index=p,
                                              process_count=2)), 6) for p in range(2)]
    for step, glob in enumerate(single):
        for k in glob:   # rows [p·3, (p+1)·3) of global batch `step` are process p's batch
            np.testing.assert_array_equal(
                np.concatenate([parts[0][step][k], parts[1][step][k]]), glob[k])
    seen = np.concatenate([b["index"] for b in single])
    assert len(set(seen[:22].tolist())) == 22          # the first epoch covers every record
    with pytest.raises(ValueError, match="process_index 2 outside"):
        pipeline.make_dataset(records, _index_and_noise, seed=0, local_batch_size=2,
                              process_index=2, process_count=2)


def test_resume_from_state_without_workers():
    records = _records(9)
    it = iter(pipeline.make_dataset(records, _VIEWS, seed=1, local_batch_size=2))
    _take(it, 3)
    state = it.get_state()
    want = _take(it, 3)
    fresh = iter(pipeline.make_dataset(records, _VIEWS, seed=1, local_batch_size=2))
    fresh.set_state(state)
    _assert_batches_equal(_take(fresh, 3), want)
    assert want[0]["view1"].shape == (2, 8, 8, 13) and want[0]["labels2"].shape == (2, 9)


def test_resume_with_two_worker_processes_matches_no_workers():
    records = _records(9)
    reference = _take(iter(pipeline.make_dataset(records, _VIEWS, seed=2, local_batch_size=2)), 5)
    # workers build half batches that the main process concatenates: same batches as above
    make = functools.partial(pipeline.make_dataset, records, _VIEWS, seed=2, local_batch_size=2,
                             num_workers=2, worker_batch_size=1)
    it = iter(make())
    try:
        first = _take(it, 3)
        state = it.get_state()
        _take(it, 1)
    finally:
        it.close()
    _assert_batches_equal(first, reference[:3])
    fresh = iter(make())
    try:
        fresh.set_state(state)
        _assert_batches_equal(_take(fresh, 2), reference[3:5])
    finally:
        fresh.close()


def test_shard_source_two_view_batches(tmp_path):
    from geossl.data import ShardWriter
    records = _records(6, t=3, size=10, bands=bl.S2_L2A)
    for r in records:
        del r["index"]
        r.update(sensor="s2_l2a", label_set="dynamic_world_9")
    path = str(tmp_path / "train-00000-of-00001.tfrecord")
    with ShardWriter(path) as w:
        for r in records:
            w.write(r)
    config = common.base()
    config.update(dict(seed=0, global_batch=4))
    config.data.train = str(tmp_path / "train-*.tfrecord")
    it = pipeline.make_train_iterator(config, _VIEWS, process_index=0, process_count=1)
    batch = next(it)
    assert batch["view1"].shape == (4, 8, 8, 13) and batch["view1"].dtype == np.float32
    assert batch["labels1"].shape == (4, 9)
    from_list = pipeline.make_train_iterator(config, _VIEWS, source=records, process_index=0,
                                             process_count=1)
    _assert_batches_equal([batch], [next(from_list)])
    with pytest.raises(FileNotFoundError, match="no training shards"):
        pipeline.train_files(str(tmp_path / "missing-*.tfrecord"))


def test_worker_batch_size_keeps_batches_and_must_divide():
    records = _records(7)
    whole = pipeline.make_dataset(records, _index_and_noise, seed=4, local_batch_size=4,
                                  num_epochs=2)
    parts = pipeline.make_dataset(records, _index_and_noise, seed=4, local_batch_size=4,
                                  num_epochs=2, worker_batch_size=2)
    _assert_batches_equal(list(whole), list(parts))
    with pytest.raises(ValueError, match="worker_batch_size 3 must divide local_batch_size 4"):
        pipeline.make_dataset(records, _index_and_noise, seed=4, local_batch_size=4,
                              worker_batch_size=3)


def test_stack_rejects_mismatched_samples():
    with pytest.raises(ValueError, match="different keys"):
        pipeline.stack([{"a": np.zeros(1)}, {"b": np.zeros(1)}])
    rows = ({"a": np.full(2, i)} for i in range(3))
    with pytest.raises(ValueError, match="3 samples for a batch of 4"):
        pipeline.stack(rows, size=4)
    with pytest.raises(ValueError, match="more than the 2 samples"):
        pipeline.stack(({"a": np.full(2, i)} for i in range(3)), size=2)


@pytest.mark.parametrize("drop_remainder", [True, False])
def test_batches_read_row_by_row_equal_grains_batch(drop_remainder):
    """A partial last batch kept or dropped, indices past the end (grain's next pass), slices:
    the batches of grain's ``MapDataset.batch`` of the same stream, rows made one at a time."""
    import grain
    stream = pipeline.view_stream(_records(8), _index_and_noise, seed=2, num_epochs=3)
    ours = pipeline._Batches(stream, 5, drop_remainder, pipeline._Stack(shared=False))
    grains = grain.MapDataset.source(_records(8)).shuffle(seed=2).repeat(3).random_map(
        pipeline._TunedViews(_index_and_noise), seed=2).batch(5, drop_remainder=drop_remainder)
    assert len(ours) == len(grains) == (4 if drop_remainder else 5)
    indices = list(range(len(ours) + 2))
    _assert_batches_equal([ours[i] for i in indices], [grains[i] for i in indices])
    assert len(ours[4]["index"]) == (5 if drop_remainder else 4)
    _assert_batches_equal(list(ours[1:3]), [grains[1], grains[2]])
    made = []
    rows = (made.append(i) or {"i": np.int64(i)} for i in range(4))
    out = pipeline.stack(rows, size=4)
    assert made == [0, 1, 2, 3] and out["i"].tolist() == [0, 1, 2, 3]


@pytest.mark.parametrize("worker_batch_size", [None, 2])
def test_worker_processes_build_the_batches_of_no_workers(worker_batch_size):
    records = _records(11)
    reference = _take(iter(pipeline.make_dataset(records, _VIEWS, seed=3, local_batch_size=4)), 4)
    it = iter(pipeline.make_dataset(records, _VIEWS, seed=3, local_batch_size=4, num_workers=2,
                                    worker_batch_size=worker_batch_size))
    try:
        _assert_batches_equal(_take(it, 4), reference)
    finally:
        it.close()


def test_malloc_settings_apply_once_per_process():
    from geossl.data import malloc
    first = malloc.reuse_freed_memory()
    assert malloc.reuse_freed_memory() == first
    if sys.platform.startswith("linux") and "glibc" in " ".join(platform.libc_ver()):
        assert first
