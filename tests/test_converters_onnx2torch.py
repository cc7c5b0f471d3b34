"""An ONNX->PyTorch converter's output against onnxruntime on the same ONNX model.

onnx2torch converts onnx's own ResNet-50 (a Caffe2 export: initializers named
``gpu_0/res2_0_branch2a_w_0``, nothing of the module that reads them) given random weights. The
converted model must come out clean with every parameter paired through the node reading it,
and a weight perturbed by (1 + 0.01 N(0, 1)) at 20%, 50% and 80% of the depth must be named at its
layer (the forward record and the parameter itself).
"""
import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from converter_models import resnet50_path, resnet50_with_weights

pytest.importorskip("onnxruntime")
pytest.importorskip("torch")
if importlib.util.find_spec("onnx2torch") is None:
    pytest.skip("onnx2torch not installed (pip install --no-deps onnx2torch, see constraints-dev.txt)",
                allow_module_level=True)
if resnet50_path() is None:
    pytest.skip("the installed onnx ships no backend test ResNet-50", allow_module_level=True)

import tracediff as td  # noqa: E402
from tracediff.adapters import onnx as tdo  # noqa: E402

FRACTIONS = ("0.2", "0.5", "0.8")
SIDE = os.path.join(os.path.dirname(__file__), "converters", "onnx2torch_side.py")
PARAMS = 161 + 2 * 53        # conv, BatchNorm and fc weights and biases, BatchNorm statistics


@pytest.fixture(scope="module")
def traces(tmp_path_factory):
    import onnx

    out = tmp_path_factory.mktemp("onnx2torch")
    model_path = str(out / "resnet50.onnx")
    onnx.save(resnet50_with_weights(seed=0, image=32, batch=2), model_path)
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    np.save(out / "x.npy", x)
    proc = subprocess.run([sys.executable, SIDE, model_path, str(out / "x.npy"), str(out), *FRACTIONS],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    planted = json.loads(proc.stdout.strip().splitlines()[-1])
    tdo.record(model_path, {"gpu_0/data_0": x}, str(out / "ort.h5"))
    return out, planted


def test_onnx2torch_resnet50_is_clean_with_its_parameters_paired(traces):
    out, _ = traces
    report = td.diff(str(out / "clean.h5"), str(out / "ort.h5"))
    assert report.ok, report.first_divergence
    # onnx2torch copies each node's epsilon, momentum and pads: no setting differs
    assert report.findings == []
    params = [p for p in report.pairs if p.kind == "param"]
    assert len(params) == PARAMS
    assert all(p.status == "ok" for p in params)
    # each pairs through its reader: conv n0 reads gpu_0/conv1_w_0
    by_a = {p.a_name: p.b_name for p in params}
    assert by_a["n0.weight"] == "gpu_0/conv1_w_0"
    assert by_a["n1.running_var"] == "gpu_0/res_conv1_bn_riv_0"
    assert by_a["n174.weight"] == "gpu_0/pred_w_0"
    # what stays unmatched: torch's BatchNorm counters and the Reshape's integer shape, which
    # onnx2torch keeps as a buffer (no float initializer, so no parameter on the ONNX side)
    assert report.unmatched["b"] == []
    leftover = [n for n in report.unmatched["a"] if not n.endswith("num_batches_tracked")]
    assert leftover == ["initializers.onnx_initializer_0"]


@pytest.mark.parametrize("fraction", FRACTIONS)
def test_onnx2torch_perturbed_weight_is_named_at_its_layer(traces, fraction):
    out, planted = traces
    layer = planted[fraction]
    report = td.diff(str(out / f"perturbed_{fraction}.h5"), str(out / "ort.h5"))
    assert not report.ok
    assert report.first_divergence.forward.a_name == layer
    diverged = [p.a_name for p in report.pairs if p.kind == "param" and p.status != "ok"]
    assert diverged == [f"{layer}.weight"]


def test_onnx2torch_model_left_in_training_mode_is_a_finding(traces):
    """onnx2torch returns its module in training mode: every BatchNorm normalises with the
    batch's statistics. The finding names that before the first layer that diverges."""
    out, _ = traces
    report = td.diff(str(out / "training.h5"), str(out / "ort.h5"))
    assert not report.ok
    (finding,) = [f for f in report.findings if f["kind"] == "training"]
    assert (finding["a_name"], finding["layers"]) == ("n1", 53)      # the first of 53 BatchNorms
    assert finding["message"].startswith("n1 (and 52 more layer(s)): a runs in training mode")
