"""TensorBoard event files written by geossl.train.events, parsed by tensorboardX's copy of
TensorFlow's Event protobuf (TensorFlow's own reader: tests/test_tfrecord.py's interop job)."""

import glob
import json
import math
import os

import numpy as np
import pytest

from geossl.data.reader import read_records
from geossl.train import events
from geossl.train.metrics import MetricsWriter

event_pb2 = pytest.importorskip("tensorboardX.proto.event_pb2")


def _events(path):
    return [event_pb2.Event.FromString(raw) for raw in read_records(path)]


def _scalars(parsed):
    return {(e.step, v.tag): v.simple_value for e in parsed if e.HasField("summary")
            for v in e.summary.value}


def test_event_file_is_a_version_header_a_session_start_and_one_summary_per_step(tmp_path):
    writer = events.EventWriter(str(tmp_path / "tb"), start_step=7)
    writer.scalars(7, {"loss": 1.25, "lr": 3e-4, "images_per_s": 12, "grad_norm": float("nan")})
    writer.scalars(8.0, {"loss": -2.5})   # a row's step read back from JSON or a device
    writer.scalars(2**40, {"big/step": float("inf"), "diverged": 1e39, "down": -1e300})
    writer.scalars(9, {})   # nothing to write: no event
    writer.close()
    (path,) = glob.glob(str(tmp_path / "tb" / "events.out.tfevents.*"))
    assert os.path.basename(path).split(".")[-2] == str(os.getpid())
    parsed = _events(path)
    assert len(parsed) == 5
    assert parsed[0].file_version == "brain.Event:2" and parsed[0].step == 7
    assert parsed[1].session_log.status == event_pb2.SessionLog.START and parsed[1].step == 7
    assert not parsed[1].HasField("summary") and not parsed[0].HasField("session_log")
    assert all(abs(e.wall_time - parsed[0].wall_time) < 60 for e in parsed)
    values = _scalars(parsed)
    assert values[(7, "loss")] == 1.25 and values[(7, "images_per_s")] == 12.0
    assert values[(7, "lr")] == np.float32(3e-4)          # simple_value is a float32
    assert math.isnan(values[(7, "grad_norm")]) and values[(8, "loss")] == -2.5
    assert values[(2**40, "big/step")] == values[(2**40, "diverged")] == math.inf
    assert values[(2**40, "down")] == -math.inf   # beyond float32: ±inf, as a cast gives
    assert [e.step for e in parsed[2:]] == [7, 8, 2**40]


@pytest.mark.parametrize("step", [0, 1, 127, 128, 300, 2**31, 2**63 - 1, -1, -(2**63)])
def test_steps_round_trip_as_int64(step):
    parsed = event_pb2.Event.FromString(events.event(step, wall_time=1.5, scalars={"a": 1.0}))
    assert parsed.step == step and parsed.wall_time == 1.5
    assert [(v.tag, v.simple_value) for v in parsed.summary.value] == [("a", 1.0)]


def test_a_resumed_run_writes_a_new_file_starting_after_its_checkpoint(tmp_path):
    """The second file's session START at the resumed step + 1 is what makes TensorBoard drop the
    first file's events of the steps that are computed again (as metrics.jsonl's rows are)."""
    workdir = str(tmp_path / "run")
    first = MetricsWriter(workdir, total_steps=4)
    first.truncate_after(0)
    first.write([{"step": s, "loss": float(s), "flag": True, "note": "x"} for s in (1, 2, 3)])
    first.close()
    resumed = MetricsWriter(workdir, total_steps=4)
    resumed.truncate_after(2)    # step 3 dropped: the new file starts now, rows or not
    assert not resumed.enabled or len(glob.glob(os.path.join(workdir, "tensorboard", "*"))) == 2
    resumed.write([{"step": 3, "loss": 30.0}, {"step": 4, "loss": 40.0}])
    resumed.close()
    files = sorted(glob.glob(os.path.join(workdir, "tensorboard", "events.out.tfevents.*")),
                   key=lambda f: int(f.split(".")[-1]))   # within one second: the file number
    assert len(files) == 2
    a, b = (_events(f) for f in files)
    assert [(e.step, e.session_log.status) for e in a if e.HasField("session_log")] == [(1, 1)]
    assert [(e.step, e.session_log.status) for e in b if e.HasField("session_log")] == [(3, 1)]
    assert _scalars(a) == {(1, "loss"): 1.0, (2, "loss"): 2.0, (3, "loss"): 3.0,
                           (1, "flag"): 1.0, (2, "flag"): 1.0, (3, "flag"): 1.0}
    assert _scalars(b) == {(3, "loss"): 30.0, (4, "loss"): 40.0}


def test_a_resume_that_writes_no_row_still_supersedes_the_dropped_steps(tmp_path):
    """Steps 3 and 4 dropped from metrics.jsonl (a resume from step 2 that then stops before its
    first row): a new event file starts at step 3, so TensorBoard drops them too."""
    workdir = str(tmp_path / "run")
    first = MetricsWriter(workdir, total_steps=4)
    first.truncate_after(0)
    first.write([{"step": s, "loss": float(s)} for s in (1, 2, 3, 4)])
    first.close()
    resumed = MetricsWriter(workdir, total_steps=4)
    resumed.truncate_after(2)
    resumed.close()
    files = sorted(glob.glob(os.path.join(workdir, "tensorboard", "events.out.tfevents.*")),
                   key=lambda f: int(f.split(".")[-1]))
    assert len(files) == 2
    assert [(e.step, e.session_log.status) for e in _events(files[1])
            if e.HasField("session_log")] == [(3, 1)]
    again = MetricsWriter(workdir, total_steps=4)   # nothing dropped: no new file
    again.truncate_after(2)
    again.close()
    assert len(glob.glob(os.path.join(workdir, "tensorboard", "events.out.tfevents.*"))) == 2


def test_a_row_cut_short_does_not_stop_a_resume(tmp_path):
    """A line of metrics.jsonl cut short (a full disk, a lost machine) is dropped on resume, not
    a JSONDecodeError on every later attempt; the rows before the checkpoint stay."""
    workdir = tmp_path / "run"
    workdir.mkdir()
    rows = "".join(json.dumps({"step": s, "loss": float(s)}) + "\n" for s in (1, 2, 3))
    (workdir / "metrics.jsonl").write_text(rows + '{"step": 4, "loss": 6.7\n' + "\0\0\0")
    MetricsWriter(str(workdir), total_steps=8).truncate_after(3)
    assert (workdir / "metrics.jsonl").read_text() == rows


def test_event_schema_matches_tensorflows_field_numbers_and_types():
    """Every field geossl declares has TensorFlow's number, type and repetition (tensorboardX's
    copy of event.proto / summary.proto), and the status enum its values."""
    from geossl.train import event_proto
    summary_pb2 = pytest.importorskip("tensorboardX.proto.summary_pb2")
    pairs = [(event_proto.Event, event_pb2.Event), (event_proto.SessionLog, event_pb2.SessionLog),
             (event_proto.Summary, summary_pb2.Summary),
             (event_proto.Summary.Value, summary_pb2.Summary.Value)]
    for ours, theirs in pairs:
        for f in ours.DESCRIPTOR.fields:
            ref = theirs.DESCRIPTOR.fields_by_name[f.name]
            assert (f.number, f.type, f.is_repeated) == (ref.number, ref.type, ref.is_repeated), \
                f.full_name
            assert (f.containing_oneof is None) == (ref.containing_oneof is None), f.full_name
    ours = event_proto.SessionLog.DESCRIPTOR.enum_types_by_name["SessionStatus"].values_by_name
    theirs = event_pb2.SessionLog.DESCRIPTOR.enum_types_by_name["SessionStatus"].values_by_name
    assert {k: v.number for k, v in ours.items()} == {k: v.number for k, v in theirs.items()}
