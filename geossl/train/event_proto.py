"""TensorBoard's Event messages (the part geossl writes), built at import time without TensorFlow.

Field numbers and types equal tensorflow/core/util/event.proto and
tensorflow/core/framework/summary.proto, so the bytes parse as ``tensorflow.Event``:
Event {wall_time = 1 double, step = 2 int64, oneof what {file_version = 3 string, summary = 5,
session_log = 7}}; SessionLog {status = 1 SessionStatus (START = 1)}; Summary {value = 1 repeated
Summary.Value}; Summary.Value {tag = 1 string, oneof value {simple_value = 2 float}}.
The descriptors live in a private pool under package "geossl_tb" (no clash with TensorFlow's).
"""

from google.protobuf import descriptor_pb2

from geossl.data.proto_schema import FieldProto as _F
from geossl.data.proto_schema import field, message_classes


def _file_descriptor_proto() -> descriptor_pb2.FileDescriptorProto:
    fdp = descriptor_pb2.FileDescriptorProto(
        name="geossl/train/event.proto", package="geossl_tb", syntax="proto3")

    summary = fdp.message_type.add(name="Summary")
    value = summary.nested_type.add(name="Value")
    value.oneof_decl.add(name="value")
    value.field.append(field("tag", 1, _F.TYPE_STRING))
    value.field.append(field("simple_value", 2, _F.TYPE_FLOAT, oneof=0))
    summary.field.append(field("value", 1, _F.TYPE_MESSAGE, label=_F.LABEL_REPEATED,
                               type_name=".geossl_tb.Summary.Value"))

    session_log = fdp.message_type.add(name="SessionLog")
    status = session_log.enum_type.add(name="SessionStatus")
    for number, name in enumerate(("STATUS_UNSPECIFIED", "START", "STOP", "CHECKPOINT")):
        status.value.add(name=name, number=number)
    session_log.field.append(field("status", 1, _F.TYPE_ENUM,
                                   type_name=".geossl_tb.SessionLog.SessionStatus"))

    event = fdp.message_type.add(name="Event")
    event.oneof_decl.add(name="what")
    event.field.append(field("wall_time", 1, _F.TYPE_DOUBLE))
    event.field.append(field("step", 2, _F.TYPE_INT64))
    event.field.append(field("file_version", 3, _F.TYPE_STRING, oneof=0))
    event.field.append(field("summary", 5, _F.TYPE_MESSAGE, type_name=".geossl_tb.Summary",
                             oneof=0))
    event.field.append(field("session_log", 7, _F.TYPE_MESSAGE,
                             type_name=".geossl_tb.SessionLog", oneof=0))
    return fdp


Event, Summary, SessionLog = message_classes(_file_descriptor_proto(), "Event", "Summary",
                                             "SessionLog")

__all__ = ["Event", "Summary", "SessionLog"]
