"""Protobuf message classes from descriptors built in Python: no protoc, no generated modules.

Each schema lives in its own private descriptor pool, so importing TensorFlow (or TensorBoard,
which register the same message names) in the same process does not clash. Users:
``geossl.data.example_proto`` (tf.train.Example) and ``geossl.train.event_proto``
(tensorflow.Event).
"""

from __future__ import annotations

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

FieldProto = descriptor_pb2.FieldDescriptorProto


def field(name: str, number: int, ftype: int, *, label: int = FieldProto.LABEL_OPTIONAL,
          type_name: str | None = None, oneof: int | None = None,
          packed: bool = False) -> FieldProto:
    """One field declaration; ``type_name``: a message or enum's full name (".package.Name")."""
    out = FieldProto(name=name, number=number, type=ftype, label=label, json_name=name)
    if type_name:
        out.type_name = type_name
    if oneof is not None:
        out.oneof_index = oneof
    if packed:
        out.options.packed = True
    return out


def message_classes(file_proto: descriptor_pb2.FileDescriptorProto, *names: str) -> tuple:
    """The message classes ``names`` (relative to the file's package, "Outer.Inner" for nested
    ones) of ``file_proto``, added to a pool of its own."""
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file_proto)
    return tuple(message_factory.GetMessageClass(
        pool.FindMessageTypeByName(f"{file_proto.package}.{name}")) for name in names)
