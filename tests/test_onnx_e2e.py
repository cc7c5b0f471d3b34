"""torch -> ONNX (both exporters, with and without constant folding) -> ONNX trace, diffed
against the torch adapter's trace of the same model: no divergence when the export is right,
and a perturbed initializer in the ONNX file is named at its module."""
from __future__ import annotations

import os

import numpy as np
import pytest

pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
from onnx import numpy_helper  # noqa: E402
from test_onnx_models import (EXPORT_IDS, EXPORTS, MODELS, exported, onnx_trace,  # noqa: E402
                              torch_model)

import tracediff as td  # noqa: E402
from tracediff.adapters import onnx as tdo  # noqa: E402
from tracediff.adapters import torch as tdt  # noqa: E402

_TORCH_TRACES = {}


def torch_trace(kind, folder):
    if kind not in _TORCH_TRACES:
        model, x = torch_model(kind)
        path = os.path.join(folder, f"torch-{kind}.h5")
        tdt.record(model, x, path)
        _TORCH_TRACES[kind] = path
    return _TORCH_TRACES[kind]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return str(tmp_path_factory.mktemp("onnx-e2e"))


@pytest.mark.parametrize("kind", list(MODELS))
@pytest.mark.parametrize("dynamo,folding", EXPORTS, ids=EXPORT_IDS)
def test_exported_model_does_not_diverge_from_torch(folder, kind, dynamo, folding):
    report = td.diff(onnx_trace(kind, dynamo, folding), torch_trace(kind, folder))
    assert report.first_divergence.forward is None, report.first_divergence.forward
    assert report.ok
    paired = {p.b_name for p in report.pairs if p.kind == "forward"}
    assert {"<root>", LAST_MODULE[kind]} <= paired


LAST_MODULE = {"mlp": "fc2", "cnn": "head", "transformer": "head", "residual": "relu"}


PERTURBED = [("mlp", "fc2"), ("cnn", "head"), ("transformer", "layers.1.mlp.0")]


@pytest.mark.parametrize("kind,module", PERTURBED)
@pytest.mark.parametrize("dynamo,folding", EXPORTS, ids=EXPORT_IDS)
def test_perturbed_initializer_is_named_at_its_module(folder, kind, module, dynamo, folding):
    proto = onnx.load(exported(kind, dynamo, folding))
    weight = _weight_of(proto, kind, dynamo, folding, module)
    values = numpy_helper.to_array(weight).copy()
    values.flat[0] += 0.5
    weight.CopyFrom(numpy_helper.from_array(values, weight.name))
    _, x = torch_model(kind)
    path = os.path.join(folder, f"bad-{kind}-{dynamo}-{folding}.h5")
    tdo.record(proto, {"x": x.numpy()}, path)
    first = td.diff(path, torch_trace(kind, folder)).first_divergence.forward
    assert first is not None and first.b_name == module
    assert td.open(path).get(first.a_name).meta["module"] == module


def _weight_of(proto, kind, dynamo, folding, module):
    """The weight of ``module``: ``<module>.weight``, or the initializer its MatMul/Gemm
    multiplies by where constant folding pre-transposed and renamed it."""
    initializers = {t.name: t for t in proto.graph.initializer}
    if f"{module}.weight" in initializers:
        return initializers[f"{module}.weight"]
    trace = td.open(onnx_trace(kind, dynamo, folding))
    tensors = {r.meta["onnx_output"] for r in trace.records("forward")
               if r.meta.get("scope") == module and r.meta["op_type"] in ("MatMul", "Gemm")}
    node = next(n for n in proto.graph.node if set(n.output) & tensors)
    return next(initializers[t] for t in node.input if t in initializers)


def test_model_with_external_data_does_not_diverge(folder, tmp_path):
    model_folder = tmp_path / "model"
    model_folder.mkdir()
    path = model_folder / "transformer.onnx"
    onnx.save_model(onnx.load(exported("transformer", True, False)), path,
                    save_as_external_data=True, location="transformer.data", size_threshold=0)
    stored = onnx.load(path, load_external_data=False).graph.initializer
    assert all(t.data_location == onnx.TensorProto.EXTERNAL for t in stored)
    _, x = torch_model("transformer")
    tdo.record(path, {"x": x.numpy()}, tmp_path / "ext.h5", max_memory="1KB")
    report = td.diff(tmp_path / "ext.h5", torch_trace("transformer", folder))
    assert report.ok and report.first_divergence.forward is None
    inline = td.open(onnx_trace("transformer", True, False))
    for a, b in zip(td.open(tmp_path / "ext.h5").records("forward"), inline.records("forward")):
        np.testing.assert_array_equal(a.read(), b.read())
