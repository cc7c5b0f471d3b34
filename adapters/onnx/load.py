"""Load an ONNX model safely: external data must lie inside the model's own folder.

The external data locations are checked before any of it is read, so a model that points at
``../secrets`` or ``/etc/passwd`` is refused without touching those files.
"""
from __future__ import annotations

import mmap
import os

import onnx
from onnx import external_data_helper, serialization

from ...errors import TraceDiffError


def load_model(model):
    """``(ModelProto, source)`` for a path or a ModelProto; ``source`` names it in messages."""
    if isinstance(model, onnx.ModelProto):
        _refuse_unloaded_external_data(model)
        return model, model.graph.name or "<ModelProto>"
    if not isinstance(model, (str, os.PathLike)):
        raise TraceDiffError(
            f"model must be a path to a .onnx file or an onnx.ModelProto, got {type(model).__name__}")
    path = os.fspath(model)
    if not os.path.isfile(path):
        raise TraceDiffError(f"model {path} does not exist: give the path of a .onnx file")
    try:
        proto = _read_model(path)
    except Exception as exc:  # protobuf raises DecodeError, RuntimeWarning, ValueError...
        raise TraceDiffError(f"{path} is not an ONNX model ({type(exc).__name__}): "
                             "give a file written by onnx.save or torch.onnx.export") from None
    if not proto.graph.node and not proto.opset_import:
        raise TraceDiffError(f"{path} is not an ONNX model (no graph or opset found): "
                             "give a file written by onnx.save or torch.onnx.export")
    folder = os.path.dirname(os.path.abspath(path))
    check_external_locations(proto, folder, path)
    if any(True for _ in _external_tensors(proto)):
        try:
            external_data_helper.load_external_data_for_model(proto, folder)
        except (OSError, ValueError) as exc:
            raise TraceDiffError(f"cannot read the external data of {path}: {exc}; "
                                 "keep the data files next to the model") from None
    return proto, path


def _read_model(path):
    """The ModelProto in ``path``. A binary model is parsed straight from the file's mapped
    pages: ``onnx.load`` reads the whole file into a bytes object first, a second copy of the
    model (~0.04 s and 9,000 page faults for 36 MB). Text formats go through ``onnx.load``."""
    extension = os.path.splitext(path)[1]
    if serialization.registry.get_format_from_file_extension(extension) not in (None, "protobuf"):
        return onnx.load(path, load_external_data=False)
    with open(path, "rb") as handle:
        try:
            pages = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
        except (OSError, ValueError):  # an empty file, or one that cannot be mapped
            return onnx.load(path, load_external_data=False)
    with pages, memoryview(pages) as view:   # the parse copies what it keeps
        proto = onnx.ModelProto()
        proto.ParseFromString(view)
    return proto


def check_external_locations(proto, folder: str, source: str):
    """Refuse external data that is absolute or resolves outside ``folder``."""
    root = os.path.realpath(folder)
    for tensor in _external_tensors(proto):
        info = {entry.key: entry.value for entry in tensor.external_data}
        location = info.get("location", "")
        if not location:
            raise TraceDiffError(f"{source}: tensor {tensor.name!r} is stored externally but "
                                 "names no file; re-export the model")
        if os.path.isabs(location) or location.startswith(("/", "\\")) or ":" in location[:3]:
            raise TraceDiffError(
                f"{source}: tensor {tensor.name!r} has external data at the absolute path "
                f"{location!r}; refusing to read outside the model's folder "
                "(move the data next to the model and save it with a relative location)")
        resolved = os.path.realpath(os.path.join(root, location))
        if os.path.commonpath([root, resolved]) != root:
            raise TraceDiffError(
                f"{source}: tensor {tensor.name!r} has external data at {location!r}, outside "
                f"the model's folder {folder}; refusing to read it (move the data next to "
                "the model and save it with a relative location)")


def _refuse_unloaded_external_data(proto):
    for tensor in _external_tensors(proto):
        raise TraceDiffError(
            f"ModelProto tensor {tensor.name!r} has its data in an external file that was not "
            "loaded: pass the model's path instead so its folder is known")


def _external_tensors(proto):
    for tensor in _all_tensors(proto.graph):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            yield tensor


def _all_tensors(graph):
    """Initializers and tensor attributes, subgraphs included."""
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.HasField("t"):
                yield attribute.t
            yield from attribute.tensors
            if attribute.HasField("g"):
                yield from _all_tensors(attribute.g)
            for sub in attribute.graphs:
                yield from _all_tensors(sub)
