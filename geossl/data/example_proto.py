"""tf.train.Example message classes built at import time, without protoc or TensorFlow.

The schema is example.proto beside this file: Example{Features{map<string, Feature>}} with
Feature = oneof {BytesList = 1, FloatList = 2 (packed), Int64List = 3 (packed)}. Field numbers and
wire types equal tensorflow/core/example/feature.proto, so bytes serialised here parse as
tf.train.Example and the reverse. The descriptors live in a private pool under package "geossl",
so importing TensorFlow in the same process does not clash.
"""

from google.protobuf import descriptor_pb2

from geossl.data.proto_schema import FieldProto as _F
from geossl.data.proto_schema import field as _field
from geossl.data.proto_schema import message_classes


def _file_descriptor_proto() -> descriptor_pb2.FileDescriptorProto:
    fdp = descriptor_pb2.FileDescriptorProto(
        name="geossl/data/example.proto", package="geossl", syntax="proto3")
    rep = _F.LABEL_REPEATED

    fdp.message_type.add(name="BytesList").field.append(
        _field("value", 1, _F.TYPE_BYTES, label=rep))
    fdp.message_type.add(name="FloatList").field.append(
        _field("value", 1, _F.TYPE_FLOAT, label=rep, packed=True))
    fdp.message_type.add(name="Int64List").field.append(
        _field("value", 1, _F.TYPE_INT64, label=rep, packed=True))

    feature = fdp.message_type.add(name="Feature")
    feature.oneof_decl.add(name="kind")
    for number, name, kind in ((1, "bytes_list", "BytesList"), (2, "float_list", "FloatList"),
                               (3, "int64_list", "Int64List")):
        feature.field.append(
            _field(name, number, _F.TYPE_MESSAGE, type_name=f".geossl.{kind}", oneof=0))

    features = fdp.message_type.add(name="Features")
    entry = features.nested_type.add(name="FeatureEntry")
    entry.options.map_entry = True
    entry.field.append(_field("key", 1, _F.TYPE_STRING))
    entry.field.append(_field("value", 2, _F.TYPE_MESSAGE, type_name=".geossl.Feature"))
    features.field.append(_field("feature", 1, _F.TYPE_MESSAGE, label=rep,
                                 type_name=".geossl.Features.FeatureEntry"))

    fdp.message_type.add(name="Example").field.append(
        _field("features", 1, _F.TYPE_MESSAGE, type_name=".geossl.Features"))
    return fdp


BytesList, FloatList, Int64List, Feature, Features, Example = message_classes(
    _file_descriptor_proto(), "BytesList", "FloatList", "Int64List", "Feature", "Features",
    "Example")

__all__ = ["BytesList", "FloatList", "Int64List", "Feature", "Features", "Example"]
