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
    # the same port with one conv kernel copied wrongly at 20%, 50% and 80% depth
    convs = [layer for layer in keras_model.layers if type(layer).__name__ == "Conv2D"]
    rng = np.random.default_rng(1)
    for depth in (0.2, 0.5, 0.8):
        layer = convs[int(depth * len(convs))]
        saved = [w.copy() for w in layer.get_weights()]
        kernel = saved[0] * (1 + 0.01 * rng.standard_normal(saved[0].shape)).astype(np.float32)
        layer.set_weights([kernel, *saved[1:]])
        tdtf.record(keras_model, x_nhwc, str(out / f"keras-{depth}.h5"))
        layer.set_weights(saved)
        (out / f"keras-{depth}.layer").write_text(layer.name)
    return out


def test_onnx2keras_resnet18_parameters_pair_with_torch(port):
    report = td.diff(str(port / "keras.h5"), str(port / "torch.h5"))
    params = {p.b_name: p.a_name for p in report.pairs if p.kind == "param"}
    assert len(params) == PARAMS
    assert params["layer2.0.downsample.0.weight"].startswith("_layer2_layer2.0_downsample_downsample.0_Conv")
    assert params["fc.weight"].endswith("/kernel")


def test_onnx2keras_resnet18_is_clean(port):
    """Its NHWC maps of 8 channels of 8x8 (one shape in either layout), 3x3 kernels, residual Add
    layers torch has no module for, and the downsample conv emitted before the block's second
    conv (an order the structural alignment crosses, values re-pair): clean."""
    report = td.diff(str(port / "keras.h5"), str(port / "torch.h5"))
    assert report.ok, report.first_divergence
    assert report.summary_counts()["statuses"]["shape_mismatch"] == 0
    assert len(report.pairs) == 164


@pytest.mark.parametrize("depth", [0.2, 0.5, 0.8])
def test_a_wrongly_copied_kernel_is_named_at_its_layer(port, depth):
    report = td.diff(str(port / f"keras-{depth}.h5"), str(port / "torch.h5"))
    layer = (port / f"keras-{depth}.layer").read_text()
    first = report.first_divergence.forward
    assert first.a_name == layer, (first.a_name, layer)
    wrong = [p.a_name for p in report.pairs if p.kind == "param" and p.diverged]
    assert wrong == [f"{layer}/kernel"]
