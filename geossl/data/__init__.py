"""Data: TFRecord shards of tf.train.Example (format, index, random-access source, writer)."""

from geossl.data.tfrecord import (
    CorruptRecordError,
    ExampleDecodeError,
    ShardSource,
    ShardWriter,
    decode_example,
    encode_example,
    read_records,
    shard_name,
)

__all__ = [
    "CorruptRecordError",
    "ExampleDecodeError",
    "ShardSource",
    "ShardWriter",
    "decode_example",
    "encode_example",
    "read_records",
    "shard_name",
]
