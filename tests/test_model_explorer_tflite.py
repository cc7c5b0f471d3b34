"""Model Explorer node-data keys for TFLite graphs: a LiteRT trace's overlays are keyed by what
Model Explorer's built-in TFLite adapter builds for the .tflite: its op node ids with the model,
the output tensor names it lists (``tensor_name``) without; a planted Dense shows as the first
divergence on its op node."""
import json

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
pytest.importorskip("ai_edge_litert")
pytest.importorskip("model_explorer")
pytest.importorskip("ai_edge_model_explorer_adapter")
import keras  # noqa: E402
from model_explorer.builtin_tflite_flatbuffer_adapter import (  # noqa: E402
    BuiltinTfliteFlatbufferAdapter)

import tracediff as td  # noqa: E402
from tracediff.adapters import litert as tdl  # noqa: E402
from tracediff.adapters import tensorflow as tdtf  # noqa: E402


def _model():
    keras.utils.set_random_seed(0)
    inp = keras.Input((6,), name="features")
    x = keras.layers.Dense(7, activation="relu", name="hidden")(inp)
    x = keras.layers.Dense(5, activation="tanh", name="middle")(x)
    x = keras.layers.Dense(3, name="out")(x)
    return keras.Model(inp, x, name="net")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tflite-explorer")
    model = _model()
    x = np.random.default_rng(0).standard_normal((2, 6)).astype(np.float32)
    tdtf.record(model, x, folder / "keras.h5")
    kernel, bias = model.get_layer("middle").get_weights()
    model.get_layer("middle").set_weights([kernel * 1.05, bias])     # the planted bug
    tflite = folder / "bad.tflite"
    tflite.write_bytes(tf.lite.TFLiteConverter.from_keras_model(model).convert())
    tdl.record(tflite, {"features": x}, folder / "bad.h5")
    graph = BuiltinTfliteFlatbufferAdapter().convert(str(tflite), {})["graphCollections"][0]
    nodes = [node for node in graph.graphs[0]["nodes"]]
    tensors = {attr["value"]: node["id"] for node in nodes for item in node["outputsMetadata"]
               for attr in item["attrs"] if attr["key"] == "tensor_name"}
    report = td.diff(folder / "bad.h5", folder / "keras.h5")
    return report, tflite, {node["id"] for node in nodes}, tensors, folder


def _status(folder):
    return {k: v["value"] for k, v in
            json.loads((folder / "a.status.json").read_text())["results"].items()}


def test_keys_are_the_tflite_adapters_op_node_ids(setup, tmp_path):
    report, tflite, node_ids, tensors, _ = setup
    report.to_model_explorer(tmp_path, model_a=tflite)
    status = _status(tmp_path)
    # op outputs are keyed by op node id, inputs and weights by the tensor names the adapter lists
    assert status and set(status) <= node_ids | set(tensors)
    assert {tensors[name] for name in ("net_1/middle_1/Tanh", "StatefulPartitionedCall_1:0")} \
        <= set(status) & node_ids
    assert status["serving_default_features:0"] == "ok"
    # the planted layer's output (Tanh), and the fused MatMul+Relu before it
    assert report.first_divergence.forward.a_name == "net_1/middle_1/Tanh"
    assert status[tensors["net_1/middle_1/Tanh"]] == "first divergence"
    assert status[tensors["net_1/hidden_1/MatMul;net_1/hidden_1/Relu"]] == "ok"
    assert status[tensors["StatefulPartitionedCall_1:0"]] == "diverged"


def test_without_the_model_keys_are_its_tensor_names(setup, tmp_path):
    report, _, _, tensors, _ = setup
    report.to_model_explorer(tmp_path)
    status = _status(tmp_path)
    assert status and set(status) <= set(tensors)
    assert [name for name, value in status.items() if value == "first divergence"] == [
        "net_1/middle_1/Tanh"]
