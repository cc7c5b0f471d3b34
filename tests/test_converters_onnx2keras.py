"""A PyTorch->Keras port made by a real converter: ResNet-18 (built from torch.nn) exported to
ONNX and converted by onnx2keras into a channels-last Keras 3 model (outputs equal to ~1e-7).

The issue asks for nobuco; nobuco 0.17 imports torchvision and Keras 2 under the name ``keras``
(``keras.src.engine``), neither of which exists here, so onnx2keras stands in: the same kind of
port (NHWC activations, HWIO kernels, ZeroPadding2D layers, residual Add layers torch has no
module for).
"""
import importlib.util

import numpy as np
import pytest

from converter_models import resnet18

pytest.importorskip("tensorflow")
torch = pytest.importorskip("torch")
if importlib.util.find_spec("onnx2keras") is None:
    pytest.skip("onnx2keras not installed (pip install --no-deps onnx2keras, see constraints-dev.txt)",
                allow_module_level=True)

import tracediff as td  # noqa: E402
from tracediff.adapters import tensorflow as tdtf  # noqa: E402
from tracediff.adapters import torch as tdt  # noqa: E402

PARAMS = 20 + 20 * 4 + 2      # conv kernels, BatchNorm weight/bias/mean/var, fc weight and bias


@pytest.fixture(scope="module")
def port(tmp_path_factory):
    import onnx
    from onnx2keras import onnx_to_keras

    out = tmp_path_factory.mktemp("onnx2keras")
    model = resnet18()
    x = torch.from_numpy(np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32))
    # no constant folding: the legacy exporter would fuse each BatchNorm into its conv
    torch.onnx.export(model, (x,), str(out / "r18.onnx"), input_names=["x"], dynamo=False,
                      do_constant_folding=False)
    keras_model = onnx_to_keras(onnx.load(str(out / "r18.onnx")), ["x"], verbose=False,
                                change_ordering=True)
    x_nhwc = x.numpy().transpose(0, 2, 3, 1)
    assert np.abs(np.asarray(keras_model(x_nhwc)) - model(x).detach().numpy()).max() < 1e-5
    tdt.record(model, x, str(out / "torch.h5"))
    tdtf.record(keras_model, x_nhwc, str(out / "keras.h5"))
    return out


LAYOUT_PART = ("issue 19 items 1-3, the layout/alignment part: sizes that repeat (32x32 images, 3x3 "
               "kernels, a batch of 2 against 2x2 maps), size-1 axes and residual Add layers with no "
               "torch module give false shape_mismatch pairs and shift the structural alignment (and "
               "the parameters that follow it) until compare/layout.py and align/structure decide by values")


@pytest.mark.xfail(strict=True, reason=LAYOUT_PART)
def test_onnx2keras_resnet18_parameters_pair_with_torch(port):
    report = td.diff(str(port / "keras.h5"), str(port / "torch.h5"))
    params = {p.b_name: p.a_name for p in report.pairs if p.kind == "param"}
    assert len(params) == PARAMS
    assert params["layer2.0.downsample.0.weight"].startswith("_layer2_layer2.0_downsample_downsample.0_Conv")
    assert params["fc.weight"].endswith("/kernel")


@pytest.mark.xfail(strict=True, reason=LAYOUT_PART)
def test_onnx2keras_resnet18_is_clean(port):
    report = td.diff(str(port / "keras.h5"), str(port / "torch.h5"))
    assert report.ok, report.first_divergence
