"""Data: TFRecord shards of tf.train.Example (codec, framing, offset index, reader, writer) and
the training files (the synthetic demo data when none are configured)."""

from geossl.data.codec import ExampleDecodeError, decode_example, encode_example
from geossl.data.files import default_data_dir, resolve_train_files
from geossl.data.framing import CorruptRecordError
from geossl.data.reader import ShardSource, read_records
from geossl.data.writer import ShardWriter, shard_name, write_shard

__all__ = [
    "CorruptRecordError",
    "ExampleDecodeError",
    "ShardSource",
    "ShardWriter",
    "decode_example",
    "default_data_dir",
    "encode_example",
    "read_records",
    "resolve_train_files",
    "shard_name",
    "write_shard",
]
