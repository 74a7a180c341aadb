"""tf.train.Example codec: record dict <-> serialized Example (docs/DESIGN.md "Data records").

    image (T,H,W,C) ndarray  -> "image" raw little-endian C-order bytes, "shape" int64 [T,H,W,C],
                                "dtype" bytes (uint8, uint16, int16 or float32)
    bands list[str], sensor/key/label_set str, labels int (k,)  -> bytes list / bytes / int64 list
    extra features: str/bytes (or lists of them) -> bytes list; ints -> int64 list; floats ->
    float list; arrays with ndim >= 2 -> raw bytes plus "<name>_shape" and "<name>_dtype", decoded
    back to arrays. Decoding gives int64 arrays, float32 arrays, bytes (a 1-value bytes list) or
    list[bytes].
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
from google.protobuf import message as _pb_message

from geossl.data import wire
from geossl.data.example_proto import Example, Feature

IMAGE_DTYPES = ("uint8", "uint16", "int16", "float32")
REQUIRED = ("image", "bands", "sensor", "key")
_CORE = ("image", "shape", "dtype", "bands", "sensor", "key", "labels", "label_set")


class ExampleDecodeError(ValueError):
    """A record is not a tf.train.Example in the geossl record layout."""


def _as_text(value) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    raise TypeError(f"expected str or bytes, found {type(value).__name__}")


def _le_bytes(array: np.ndarray) -> bytes:
    return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()


def _put_extra(features, name: str, value, where: str) -> None:
    if name in features:   # an array feature's companion, written before it
        stem = name.rsplit("_", 1)[0]
        raise ValueError(f"{where}: feature {name!r} collides with the array feature {stem!r}")
    if isinstance(value, (str, bytes)):
        features[name].bytes_list.value.append(_as_text(value))
        return
    if (isinstance(value, (list, tuple)) and value
            and all(isinstance(v, (str, bytes)) for v in value)):
        features[name].bytes_list.value.extend(_as_text(v) for v in value)
        return
    array = np.asarray(value)
    if array.ndim >= 2:
        if array.dtype.name not in IMAGE_DTYPES:
            raise ValueError(f"{where}: array feature {name!r} has dtype {array.dtype.name}, "
                             f"expected one of {IMAGE_DTYPES}")
        for suffix in ("_shape", "_dtype"):
            if name + suffix in features:
                raise ValueError(f"{where}: feature {name + suffix!r} collides with the array "
                                 f"feature {name!r}")
        features[name].bytes_list.value.append(_le_bytes(array))
        features[name + "_shape"].int64_list.value.extend(array.shape)
        features[name + "_dtype"].bytes_list.value.append(array.dtype.name.encode())
    elif array.dtype.kind in "biu" or (array.size == 0 and not isinstance(value, np.ndarray)):
        features[name].int64_list.value.extend(array.astype(np.int64).ravel().tolist())
    elif array.dtype.kind == "f":
        features[name].float_list.value.extend(array.astype(np.float32).ravel().tolist())
    else:
        raise ValueError(f"{where}: feature {name!r} of type {type(value).__name__} "
                         f"(dtype {array.dtype}) has no tf.train.Example encoding")


def encode_example(record: Mapping) -> bytes:
    """Serialises a record dict (see the module docstring) to tf.train.Example bytes."""
    where = f"record {record.get('key')!r}"
    missing = [name for name in REQUIRED if name not in record]
    if missing:
        raise ValueError(f"{where}: missing required field(s) {missing}; found {sorted(record)}")
    image = np.asarray(record["image"])
    if image.ndim != 4:
        raise ValueError(f"{where}: 'image' must be (T, H, W, C), found shape {image.shape}")
    if image.dtype.name not in IMAGE_DTYPES:
        raise ValueError(f"{where}: 'image' dtype must be one of {IMAGE_DTYPES}, "
                         f"found {image.dtype.name}")
    bands = [str(b) for b in record["bands"]]
    if len(bands) != image.shape[-1]:
        raise ValueError(f"{where}: {len(bands)} band names {bands} for an image with "
                         f"{image.shape[-1]} channels")
    for name in ("shape", "dtype"):
        if name in record:
            raise ValueError(f"{where}: {name!r} is derived from 'image'; do not pass it")
    labels = np.asarray(record.get("labels", ()))
    if labels.size and labels.dtype.kind not in "iu":
        raise ValueError(f"{where}: 'labels' must be integer class indices, found {labels.dtype}")

    example = Example()
    features = example.features.feature
    features["image"].bytes_list.value.append(_le_bytes(image))
    features["shape"].int64_list.value.extend(image.shape)
    features["dtype"].bytes_list.value.append(image.dtype.name.encode())
    features["bands"].bytes_list.value.extend(b.encode() for b in bands)
    features["sensor"].bytes_list.value.append(_as_text(record["sensor"]))
    features["key"].bytes_list.value.append(_as_text(record["key"]))
    features["labels"].int64_list.value.extend(labels.astype(np.int64).ravel().tolist())
    features["label_set"].bytes_list.value.append(_as_text(record.get("label_set", "none")))
    for name, value in record.items():
        if name not in _CORE:
            _put_extra(features, name, value, where)
    return example.SerializeToString(deterministic=True)


def _feature_values(feature):
    kind = feature.WhichOneof("kind")
    if kind == "bytes_list":
        return list(feature.bytes_list.value)
    if kind == "int64_list":
        return np.asarray(feature.int64_list.value, dtype=np.int64)
    if kind == "float_list":
        return np.asarray(feature.float_list.value, dtype=np.float32)
    return None


def _decode_array(values: dict, name: str) -> np.ndarray:
    shape_name, dtype_name = name + "_shape", name + "_dtype"
    if name == "image":
        shape_name, dtype_name = "shape", "dtype"
    for needed in (name, shape_name, dtype_name):
        if needed not in values:
            raise ExampleDecodeError(f"missing feature {needed!r}; found {sorted(values)}")
    buf, shape, dtype = values[name], values[shape_name], values[dtype_name]
    if not (isinstance(buf, list) and len(buf) == 1):
        raise ExampleDecodeError(f"feature {name!r} must be a bytes list with one value")
    if not (isinstance(dtype, list) and len(dtype) == 1):
        raise ExampleDecodeError(f"feature {dtype_name!r} must be a bytes list with one value")
    if not isinstance(shape, np.ndarray) or shape.dtype != np.int64 or (shape < 0).any():
        raise ExampleDecodeError(f"feature {shape_name!r} must be a non-negative int64 list, "
                                 f"found {shape!r}")
    dtype_str = dtype[0].decode("utf-8", "replace")
    if dtype_str not in IMAGE_DTYPES:
        raise ExampleDecodeError(f"feature {dtype_name!r}: expected one of {IMAGE_DTYPES}, "
                                 f"found {dtype_str!r}")
    if name == "image" and shape.size != 4:
        raise ExampleDecodeError(f"feature 'shape': expected 4 values [T, H, W, C], found "
                                 f"{shape.tolist()}")
    native = np.dtype(dtype_str)
    expected = math.prod(shape.tolist()) * native.itemsize   # Python ints: no int64 overflow
    if len(buf[0]) != expected:
        raise ExampleDecodeError(
            f"feature {name!r}: expected {expected} bytes for shape {shape.tolist()} dtype "
            f"{dtype_str}, found {len(buf[0])}")
    little = np.frombuffer(buf[0], dtype=native.newbyteorder("<")).reshape(tuple(shape.tolist()))
    if little.dtype == native and little.flags.writeable:   # a view of the record's buffer
        return little
    return little.astype(native)   # writable native-order copy


def _text(values: dict, name: str, default=None) -> str:
    value = values.get(name)
    if value is None:
        if default is not None:
            return default
        raise ExampleDecodeError(f"missing feature {name!r}; found {sorted(values)}")
    if not (isinstance(value, list) and len(value) == 1):
        raise ExampleDecodeError(f"feature {name!r} must be a bytes list with one value")
    return _utf8(value[0], name)


def _utf8(value: bytes, name: str) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ExampleDecodeError(f"feature {name!r}: expected UTF-8 text, found {value[:32]!r} "
                                 f"({e.reason} at byte {e.start})") from None


_LARGE = 4096  # features above this many bytes are viewed in place when they are one bytes value


def _feature_dict(data) -> dict:
    """{name: values} of serialized Example bytes. Large single-value bytes features (the image)
    are memoryviews into ``data``; every other feature is parsed by the protobuf runtime, and the
    whole message is when the zero-copy walk meets anything unusual."""
    try:
        views = wire.example_features(data)
        values = {}
        for name, view in views.items():
            if len(view) > _LARGE:
                try:
                    values[name] = [wire.single_bytes_value(view)]
                    continue
                except wire.WireFormatError:
                    pass
            values[name] = _feature_values(Feature.FromString(bytes(view)))
        return values
    except (wire.WireFormatError, UnicodeDecodeError, _pb_message.DecodeError):
        pass
    try:
        example = Example.FromString(bytes(data))
    except _pb_message.DecodeError as e:
        raise ExampleDecodeError(f"not a tf.train.Example protobuf ({e})") from None
    return {name: _feature_values(f) for name, f in example.features.feature.items()}


def decode_example(data) -> dict:
    """Parses tf.train.Example bytes (any buffer) into the record dict of docs/DESIGN.md. On
    little-endian hosts the image (and other array features) is a view of ``data`` when ``data``
    is a writable buffer (ShardSource reads into one), else a copy; arrays are always writable."""
    values = _feature_dict(data)
    bands = values.get("bands")
    if not isinstance(bands, list):
        raise ExampleDecodeError(f"missing bytes feature 'bands'; found {sorted(values)}")
    labels = values.get("labels")
    if labels is None:
        labels = np.zeros((0,), np.int64)
    elif not (isinstance(labels, np.ndarray) and labels.dtype == np.int64):
        raise ExampleDecodeError("feature 'labels' must be an int64 list")
    record = {
        "image": _decode_array(values, "image"),
        "labels": labels,
        "key": _text(values, "key"),
        "bands": [_utf8(b, "bands") for b in bands],
        "sensor": _text(values, "sensor"),
        "label_set": _text(values, "label_set", default=""),
    }
    if len(record["bands"]) != record["image"].shape[-1]:
        raise ExampleDecodeError(f"{len(record['bands'])} band names for an image of shape "
                                 f"{record['image'].shape}")
    arrays = {n for n in values if n + "_shape" in values and n + "_dtype" in values}
    consumed = set(_CORE) | {a + s for a in arrays for s in ("_shape", "_dtype")}
    for name, value in values.items():
        if name in consumed:
            continue
        if name in arrays:
            record[name] = _decode_array(values, name)
        elif isinstance(value, list):
            value = [bytes(v) for v in value]
            record[name] = value[0] if len(value) == 1 else value
        else:
            record[name] = value
    return record
