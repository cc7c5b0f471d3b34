"""Small helpers on ONNX protos shared by the adapter's modules."""
from __future__ import annotations


def copied(proto):
    """A deep copy of an ONNX proto (a node, a graph...) that may be changed freely."""
    copy = type(proto)()
    copy.CopyFrom(proto)
    return copy
