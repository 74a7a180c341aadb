"""A checkpoint that cannot be written is one CheckpointWriteError, its reason first."""

import errno
import os

import jax.numpy as jnp
import numpy as np
import pytest
from orbax.checkpoint._src.handlers import json_checkpoint_handler

from geossl.train import checkpoint as ckpt_lib


def test_disk_full_in_the_background_write_is_one_line_reason_first(tmp_path, monkeypatch,
                                                                   capfd, caplog):
    async def disk_full(self, x, directory):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(directory / "meta"))
    monkeypatch.setattr(json_checkpoint_handler.JsonCheckpointHandler, "_save_fn", disk_full)
    checkpointer = ckpt_lib.Checkpointer(str(tmp_path), async_save=True)
    checkpointer.save(2, {"w": jnp.ones((4, 4))}, None, {"model": "m"})  # starts in background
    with pytest.raises(ckpt_lib.CheckpointWriteError) as error:
        checkpointer.wait()
    message = str(error.value)
    assert message.startswith(f"No space left on device: checkpoint {tmp_path}/checkpoints/2 was "
                              f"not written (OSError: [Errno 28] No space left on device: ")
    assert "\n" not in message
    # orbax's own ERROR lines (each with a traceback) are not repeated
    assert not [r for r in caplog.records if r.levelname == "ERROR"], caplog.records
    assert "Traceback" not in capfd.readouterr().err
    assert checkpointer.latest_step() is None  # nothing half-written counts as a checkpoint


def test_tensorstore_error_codes_are_spelled_out():
    error = ValueError("RESOURCE_EXHAUSTED: Failed to write 6365184 bytes to file 11: No space "
                       "left on device [os_error_code='28']")
    assert ckpt_lib._os_reason(error) == "No space left on device"
    wrapped = RuntimeError("save failed")
    wrapped.__cause__ = error
    assert str(ckpt_lib.write_failure("/w/checkpoints/4", wrapped)).startswith(
        "No space left on device: checkpoint /w/checkpoints/4 was not written (ValueError: "
        "RESOURCE_EXHAUSTED: ")


def test_a_damaged_data_position_record_is_said(tmp_path, caplog):
    """The stream position comes from the checkpoint's data record; one that cannot be read is
    a warning naming it (the position is then step × global_batch), not a silent guess."""
    checkpointer = ckpt_lib.Checkpointer(str(tmp_path), async_save=False)
    checkpointer.save(2, {"w": jnp.ones((2,))}, {"position": 88, "global_batch": 8}, {"model": "m"})
    checkpointer.wait()
    assert checkpointer._data_record(2) == {"position": 88, "global_batch": 8}
    data = os.path.join(str(tmp_path), "checkpoints", "2", "data")
    for name in os.listdir(data):
        with open(os.path.join(data, name), "r+b") as f:
            f.truncate(5)
    caplog.set_level("WARNING")
    assert checkpointer._data_record(2) is None
    assert any(f"{data}: the data position record is unreadable" in r.getMessage()
               for r in caplog.records), [r.getMessage() for r in caplog.records]


def test_unfinished_writes_are_removed_only_when_asked(tmp_path):
    checkpointer = ckpt_lib.Checkpointer(str(tmp_path), async_save=False)
    checkpointer.save(2, {"w": jnp.ones((4, 4))}, None, {"model": "m"})
    checkpointer.close()
    folder = tmp_path / "checkpoints"
    # what a run killed while writing steps 4 and 6 leaves: orbax's temporary folders
    for name in ("4.orbax-checkpoint-tmp-1733500000", "6.orbax-checkpoint-tmp-1733500123"):
        (folder / name / "state").mkdir(parents=True)
        (folder / name / "state" / "part").write_bytes(b"\0" * 64)
    (folder / "3.unreadable").mkdir()              # moved aside by a resume: kept
    reader = ckpt_lib.Checkpointer(str(tmp_path), async_save=False)  # a probe's: changes nothing
    assert reader.latest_step() == 2
    reader.close()
    assert sorted(os.listdir(folder)) == ["2", "3.unreadable", "4.orbax-checkpoint-tmp-1733500000",
                                          "6.orbax-checkpoint-tmp-1733500123"]
    removed = ckpt_lib.Checkpointer(str(tmp_path), async_save=False).remove_unfinished_writes()
    assert removed == ["4.orbax-checkpoint-tmp-1733500000", "6.orbax-checkpoint-tmp-1733500123"]
    assert sorted(os.listdir(folder)) == ["2", "3.unreadable"]
    restored = ckpt_lib.Checkpointer(str(tmp_path), async_save=False).restore_raw(2)
    np.testing.assert_array_equal(restored["w"], np.ones((4, 4)))
