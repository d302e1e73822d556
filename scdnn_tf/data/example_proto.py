"""The `tf.train.Example` message classes, without importing TensorFlow.

The converters only build and serialize Examples; importing TensorFlow for that costs
seconds of start-up per run. These classes are made by the protobuf runtime from the
schema of TensorFlow's `example.proto` / `feature.proto` (same field numbers and types,
hence the same bytes on the wire), in a descriptor pool of their own so they never clash
with TensorFlow's classes in a process that imports both. They have the same API:
`Example(features=Features(feature={...}))`, `SerializeToString()`, `FromString()`.
"""

from __future__ import annotations

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

_F = descriptor_pb2.FieldDescriptorProto
_PACKAGE = "scdnn_tf.example"


def _message(file_proto, name, fields, nested=()):
    """Adds message `name` with fields (name, number, type, label, type_name, oneof)."""
    message = file_proto.message_type.add(name=name)
    for sub in nested:
        message.nested_type.add().CopyFrom(sub)
    oneofs = []
    for field_name, number, ftype, label, type_name, oneof in fields:
        field = message.field.add(name=field_name, number=number, type=ftype, label=label)
        if type_name:
            field.type_name = type_name
        if oneof is not None:
            if oneof not in oneofs:
                oneofs.append(oneof)
                message.oneof_decl.add(name=oneof)
            field.oneof_index = oneofs.index(oneof)
        if ftype in (_F.TYPE_FLOAT, _F.TYPE_INT64) and label == _F.LABEL_REPEATED:
            field.options.packed = True
    return message


def _build_classes():
    f = descriptor_pb2.FileDescriptorProto(name="scdnn_tf/example.proto", package=_PACKAGE,
                                           syntax="proto3")
    rep, opt = _F.LABEL_REPEATED, _F.LABEL_OPTIONAL
    _message(f, "BytesList", [("value", 1, _F.TYPE_BYTES, rep, None, None)])
    _message(f, "FloatList", [("value", 1, _F.TYPE_FLOAT, rep, None, None)])
    _message(f, "Int64List", [("value", 1, _F.TYPE_INT64, rep, None, None)])
    _message(f, "Feature", [
        ("bytes_list", 1, _F.TYPE_MESSAGE, opt, f".{_PACKAGE}.BytesList", "kind"),
        ("float_list", 2, _F.TYPE_MESSAGE, opt, f".{_PACKAGE}.FloatList", "kind"),
        ("int64_list", 3, _F.TYPE_MESSAGE, opt, f".{_PACKAGE}.Int64List", "kind")])
    entry = descriptor_pb2.DescriptorProto(name="FeatureEntry")
    entry.field.add(name="key", number=1, type=_F.TYPE_STRING, label=opt)
    entry.field.add(name="value", number=2, type=_F.TYPE_MESSAGE, label=opt,
                    type_name=f".{_PACKAGE}.Feature")
    entry.options.map_entry = True
    _message(f, "Features", [("feature", 1, _F.TYPE_MESSAGE, rep,
                              f".{_PACKAGE}.Features.FeatureEntry", None)], nested=[entry])
    _message(f, "Example", [("features", 1, _F.TYPE_MESSAGE, opt, f".{_PACKAGE}.Features",
                             None)])
    pool = descriptor_pool.DescriptorPool()
    pool.Add(f)
    return tuple(message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{_PACKAGE}.{n}"))
                 for n in ("BytesList", "FloatList", "Int64List", "Feature", "Features",
                           "Example"))


BytesList, FloatList, Int64List, Feature, Features, Example = _build_classes()
