"""Loading models: external data inside the model's folder works (also through the >2 GB
file path), anything pointing outside it, and files that are not ONNX models, are refused in
one line before anything is read or written."""
from __future__ import annotations

import os

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import tracediff as td  # noqa: E402
from tracediff.adapters import onnx as tdo  # noqa: E402
from tracediff.adapters.onnx import capture as onnx_run  # noqa: E402
from tracediff.errors import TraceDiffError  # noqa: E402


def linear_model():
    rng = np.random.default_rng(1)
    weight = numpy_helper.from_array(rng.standard_normal((6, 4)).astype(np.float32), "fc.weight")
    bias = numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "fc.bias")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "fc.weight"], ["mm"], name="/fc/MatMul"),
         helper.make_node("Add", ["mm", "fc.bias"], ["y"], name="/fc/Add"),
         helper.make_node("Tanh", ["y"], ["out"], name="/act/Tanh")],
        "linear", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 6])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [2, 4])], [weight, bias])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


X = np.linspace(-2, 2, 12, dtype=np.float32).reshape(2, 6)


def save_external(folder, location="weights.bin"):
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model.onnx"
    onnx.save_model(linear_model(), path, save_as_external_data=True,
                    all_tensors_to_one_file=True, location=location, size_threshold=0)
    return path


def relocate(path, location):
    """Point every external tensor of the saved model at ``location`` (data left unread)."""
    proto = onnx.load(path, load_external_data=False)
    for tensor in proto.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = location
    path.write_bytes(proto.SerializeToString())


def test_external_data_in_the_model_folder_is_loaded(tmp_path):
    path = save_external(tmp_path / "model")
    tdo.record(path, {"x": X}, tmp_path / "ext.h5")
    tdo.record(linear_model(), {"x": X}, tmp_path / "inline.h5")
    ext, inline = td.open(tmp_path / "ext.h5"), td.open(tmp_path / "inline.h5")
    assert [r.name for r in ext] == [r.name for r in inline]
    for a, b in zip(ext, inline):
        np.testing.assert_array_equal(a.read(), b.read())
    assert ext.attrs["model"] == str(path)


def test_groups_too_large_for_protobuf_run_from_a_file(tmp_path, monkeypatch):
    # models over 2 GB cannot be serialized in memory: the group goes to onnxruntime as a
    # file with external data (the limit is lowered so a small model takes that path)
    monkeypatch.setattr(onnx_run, "INLINE_LIMIT", 0)
    path = save_external(tmp_path / "model")
    tdo.record(path, {"x": X}, tmp_path / "big.h5", max_memory=1)
    tdo.record(linear_model(), {"x": X}, tmp_path / "inline.h5")
    for a, b in zip(td.open(tmp_path / "big.h5"), td.open(tmp_path / "inline.h5")):
        np.testing.assert_array_equal(a.read(), b.read())


@pytest.mark.parametrize("location,kind", [("../weights.bin", "outside"),
                                           ("sub/../../weights.bin", "outside"),
                                           ("/etc/passwd", "absolute")])
def test_external_data_outside_the_model_folder_is_refused(tmp_path, location, kind):
    path = save_external(tmp_path / "model")
    relocate(path, location)
    with pytest.raises(TraceDiffError) as error:
        tdo.record(path, {"x": X}, tmp_path / "t.h5")
    if kind == "absolute":
        expected = (f"{path}: tensor 'fc.weight' has external data at the absolute path "
                    f"'{location}'; refusing to read outside the model's folder (move the data "
                    "next to the model and save it with a relative location)")
    else:
        expected = (f"{path}: tensor 'fc.weight' has external data at '{location}', outside "
                    f"the model's folder {path.parent}; refusing to read it (move the data next "
                    "to the model and save it with a relative location)")
    assert str(error.value) == expected
    assert not (tmp_path / "t.h5").exists()


def test_symlinked_external_data_escaping_the_folder_is_refused(tmp_path):
    path = save_external(tmp_path / "model")
    (tmp_path / "elsewhere.bin").write_bytes((tmp_path / "model" / "weights.bin").read_bytes())
    os.symlink(tmp_path / "elsewhere.bin", tmp_path / "model" / "link.bin")
    relocate(path, "link.bin")
    with pytest.raises(TraceDiffError, match="outside the model's folder"):
        tdo.record(path, {"x": X}, tmp_path / "t.h5")


@pytest.mark.parametrize("content", [b"", b"not a model at all\n", bytes(range(256)) * 4])
def test_a_file_that_is_not_an_onnx_model_is_refused(tmp_path, content):
    path = tmp_path / "model.onnx"
    path.write_bytes(content)
    with pytest.raises(TraceDiffError) as error:
        tdo.record(path, {"x": X}, tmp_path / "t.h5")
    assert str(error.value).startswith(f"{path} is not an ONNX model (")
    assert str(error.value).endswith("): give a file written by onnx.save or torch.onnx.export")


def test_missing_model_and_unloaded_external_proto_are_refused(tmp_path):
    with pytest.raises(TraceDiffError) as error:
        tdo.record(tmp_path / "nope.onnx", {"x": X}, tmp_path / "t.h5")
    assert str(error.value) == f"model {tmp_path / 'nope.onnx'} does not exist: give the path of a .onnx file"
    proto = onnx.load(save_external(tmp_path / "model"), load_external_data=False)
    with pytest.raises(TraceDiffError) as error:
        tdo.record(proto, {"x": X}, tmp_path / "t.h5")
    assert str(error.value) == ("ModelProto tensor 'fc.weight' has its data in an external file "
                                "that was not loaded: pass the model's path instead so its "
                                "folder is known")


@pytest.mark.filterwarnings("ignore:The onnxtxt format is experimental")
@pytest.mark.parametrize("extension", [".onnx", ".pb", "", ".onnxtxt", ".txtpb", ".json"])
def test_binary_and_text_models_load_as_onnx_load_reads_them(tmp_path, extension):
    """Binary models are parsed from the file's mapped pages, text formats by onnx.load: the
    same ModelProto either way, and the mapping is closed after the parse."""
    from tracediff.adapters.onnx.load import load_model

    path = str(tmp_path / f"model{extension}")
    onnx.save(linear_model(), path)
    proto, source = load_model(path)
    assert source == path
    assert proto == onnx.load(path, load_external_data=False)
    if extension != ".onnxtxt":   # onnx's own text format rounds the weights
        assert proto == linear_model()
    os.remove(path)   # nothing of the file is still held
    assert numpy_helper.to_array(proto.graph.initializer[0]).shape == (6, 4)
