"""Quantization debugging for ONNX QDQ models: a torch CNN exported to ONNX, quantized by
onnxruntime.quantization (quantize_static, QDQ format, a calibration reader), recorded as the
float model it quantizes and replayed against the float model so each layer's local error
(the error it adds) ranks the layers."""
import json
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")
from onnxruntime import quantization as ortq  # noqa: E402

import tracediff as td  # noqa: E402
from tracediff.adapters import onnx as tdo  # noqa: E402
from tracediff.adapters import torch as tdt  # noqa: E402
from tracediff.cli import main  # noqa: E402
from tracediff.compare import quantized  # noqa: E402

SHAPE = (2, 3, 8, 8)


def cnn(outlier=None):
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
        torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.ReLU(),
        torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(), torch.nn.Linear(8, 6), torch.nn.ReLU(), torch.nn.Linear(6, 5)).eval()
    if outlier is not None:
        with torch.no_grad():
            model[outlier].weight[0, 0, 1, 1] = 12.0     # one weight far outside the others' range
    return model


class Calibration(ortq.CalibrationDataReader):
    def __init__(self, samples=4):
        rng = np.random.default_rng(7)
        self._feeds = iter([{"input": rng.standard_normal(SHAPE).astype(np.float32)}
                            for _ in range(samples)])

    def get_next(self):
        return next(self._feeds, None)


def export_and_quantize(model, folder, tag):
    x = torch.zeros(SHAPE)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), folder / f"{tag}.onnx", dynamo=False,
                          input_names=["input"])
        ortq.quantize_static(folder / f"{tag}.onnx", folder / f"{tag}_qdq.onnx", Calibration(),
                             quant_format=ortq.QuantFormat.QDQ,
                             activation_type=ortq.QuantType.QInt8,
                             weight_type=ortq.QuantType.QInt8)
    return folder / f"{tag}.onnx", folder / f"{tag}_qdq.onnx"


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """conv 5 with one outlier weight: its per-tensor weight scale and its output range widen,
    so every other weight and activation of that layer loses resolution."""
    folder = tmp_path_factory.mktemp("qdq")
    model = cnn(outlier=5)
    x = np.random.default_rng(1).standard_normal(SHAPE).astype(np.float32)
    float_model, qdq_model = export_and_quantize(model, folder, "planted")
    tdt.record(model, torch.from_numpy(x), folder / "torch.h5")
    tdo.record(float_model, {"input": x}, folder / "float.h5")
    tdo.record(qdq_model, {"input": x}, folder / "qdq.h5")
    return folder, qdq_model


def test_a_qdq_model_is_recorded_under_the_float_models_names(planted):
    folder, _ = planted
    with td.open(folder / "qdq.h5") as trace:
        records = {(r.kind, r.name): r for r in trace}
    forward = [name for kind, name in records if kind == "forward"]
    # the Q/DQ nodes are folded away; the Relu the quantizer removed after each conv keeps its
    # float-model name, holding the conv+relu output as the int8 kernel writes it
    assert forward == ["/2/Relu", "/4/Relu", "/6/Relu", "/7/GlobalAveragePool", "/8/Flatten",
                       "/10/Relu", "/11/Gemm"]
    relu = records[("forward", "/4/Relu")]
    assert relu.dtype == "int8" and relu.meta["module"] == "4"
    assert relu.meta["scale"] > 0 and isinstance(relu.meta["zero_point"], int)
    assert relu.meta["inputs"] == [{"kind": "forward", "name": "/2/Relu", "call": 0}]
    assert records[("forward", "/11/Gemm")].meta["graph_output"] is True
    weight = records[("param", "5.weight")]
    assert weight.dtype == "int8" and weight.meta["layout"] == "OIHW"
    assert weight.meta["role"] == "weight" and weight.meta["module"] == "5"
    # quantization parameters are not the model's; the BatchNorm folded into conv 0 is neither
    params = {name for kind, name in records if kind == "param"}
    assert params == {f"{m}.{leaf}" for m in (3, 5, 9, 11) for leaf in ("weight", "bias")}


def test_the_float_export_diffs_clean_and_the_qdq_model_is_judged_dequantized(planted):
    folder, _ = planted
    assert td.diff(folder / "float.h5", folder / "torch.h5").ok
    report = td.diff(folder / "qdq.h5", folder / "float.h5")
    assert "dtype_mismatch" not in {p.status for p in report.pairs}
    judged = {p.b_name: p for p in report.pairs if p.tolerance.get("rule") == "quantized"}
    assert {"/2/Relu", "/6/Relu", "/11/Gemm", "5.weight"} <= set(judged)
    # the layers the quantizer fused with their Relu have no record of their own
    assert report.unmatched["a"] == []
    assert set(report.unmatched["b"]) == {"/0/Conv", "/3/Conv", "/5/Conv", "/9/Gemm"}


@pytest.mark.parametrize("reference", ["float.h5", "torch.h5"])
def test_replay_ranks_the_layer_with_the_outlier_weight_first(planted, reference):
    folder, qdq_model = planted
    plain = td.diff(folder / "qdq.h5", folder / reference)
    cumulative = {p.a_name: p.stats["sqnr_db"] for p in quantized.ranked(plain.pairs)
                  if p.kind == "forward"}
    report = td.replay(str(qdq_model), folder / reference)
    local = {p.a_name: p.local for p in report.pairs if p.kind == "forward" and p.local
             and p.local.get("sqnr_db") is not None}
    assert report.root_causes[0]["a_name"] == "/6/Relu"
    assert min(local, key=lambda name: local[name]["sqnr_db"]) == "/6/Relu"
    assert local["/6/Relu"]["sqnr_db"] < local["/4/Relu"]["sqnr_db"] - 6
    # the pooling after it is as far off cumulatively, but adds little error of its own
    pool = "/7/GlobalAveragePool"
    assert cumulative[pool] < cumulative["/6/Relu"] + 3
    assert local[pool]["sqnr_db"] > local["/6/Relu"]["sqnr_db"] + 15


def test_the_cli_replays_a_qdq_model(planted, tmp_path):
    folder, qdq_model = planted
    out = tmp_path / "replay.json"
    assert main(["replay", str(qdq_model), str(folder / "float.h5"), "--json", str(out),
                 "--quiet"]) == 1
    assert json.loads(out.read_text())["root_causes"][0]["a_name"] == "/6/Relu"
