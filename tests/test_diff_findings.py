"""Findings a porter needs before any layer (report field ``findings``): inputs that differ and
settings the traces show differing, each on a real model."""
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import tracediff as td  # noqa: E402
from tracediff.adapters import torch as tdt  # noqa: E402

MEAN = np.array([0.485, 0.456, 0.406], np.float32).reshape(1, 3, 1, 1)
STD = np.array([0.229, 0.224, 0.225], np.float32).reshape(1, 3, 1, 1)


@pytest.fixture(scope="module")
def cnn(tmp_path_factory):
    out = tmp_path_factory.mktemp("findings")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 5, 3, padding=1), torch.nn.BatchNorm2d(5),
                                torch.nn.ReLU(), torch.nn.Dropout(0.3)).eval()
    image = np.random.default_rng(0).uniform(0, 1, (2, 3, 6, 6)).astype(np.float32)
    x = (image - MEAN) / STD
    tdt.record(model, torch.from_numpy(x), str(out / "ref.h5"))
    return out, model, image, x


@pytest.mark.parametrize("case, expected", [
    ("bgr", "reverse order along axis 1 (RGB against BGR)"),
    ("raw", "a = b * 255: a holds raw pixel values"),
    ("unnormalised", "a = (b - mean) / std per index along axis 1 (per channel) with mean [-2.118, -2.036, -1.804]"),
    ("transposed", "axes 2 and 3 swapped (a transposed image"),
])
def test_inputs_that_differ_are_named_before_any_layer(cnn, case, expected):
    out, model, image, x = cnn
    given = {"bgr": x[:, ::-1], "raw": x * 255, "unnormalised": image,
             "transposed": x.transpose(0, 1, 3, 2)}[case]
    path = str(out / f"{case}.h5")
    tdt.record(model, torch.from_numpy(np.ascontiguousarray(given)), path)
    report = td.diff(path, str(out / "ref.h5"))
    assert not report.ok
    assert report.findings[0]["kind"] == "inputs"
    assert expected in report.findings[0]["message"]
    document = json.loads(report.to_json())
    assert document["findings"][0]["message"] == report.findings[0]["message"]
    assert list(document).index("findings") < list(document).index("pairs")
    page = report.to_html()
    assert page.index('id="findings"') < page.index('id="first-divergence"')
    markdown = report.to_markdown()
    assert markdown.index("**finding** (inputs)") < markdown.index("### First divergence")


def test_training_mode_and_eps_are_named(cnn):
    out, model, _, x = cnn
    port = torch.nn.Sequential(*[type(m)(**_args(m)) for m in model])
    port.load_state_dict(model.state_dict())
    port[1].eps = 1e-3                      # Keras' default
    port.train()                            # forgot model.eval()
    path = str(out / "port.h5")
    tdt.record(port, torch.from_numpy(x), path)
    report = td.diff(path, str(out / "ref.h5"))
    kinds = {f["kind"]: f for f in report.findings}
    assert kinds["eps"]["b_name"] == "1" and "a 0.001, b 1e-05" in kinds["eps"]["message"]
    assert kinds["training"]["b_name"] == "1" and kinds["training"]["layers"] == 2   # BatchNorm, Dropout
    assert "a runs in training mode" in kinds["training"]["message"]


def _args(module):
    if isinstance(module, torch.nn.Conv2d):
        return {"in_channels": 3, "out_channels": 5, "kernel_size": 3, "padding": 1}
    if isinstance(module, torch.nn.BatchNorm2d):
        return {"num_features": 5}
    if isinstance(module, torch.nn.Dropout):
        return {"p": module.p}
    return {}


def test_tanh_gelu_against_exact_is_named(tmp_path):
    torch.manual_seed(0)
    exact = torch.nn.Sequential(torch.nn.Linear(7, 11), torch.nn.GELU())
    tanh = torch.nn.Sequential(torch.nn.Linear(7, 11), torch.nn.GELU(approximate="tanh"))
    tanh.load_state_dict(exact.state_dict())
    x = torch.randn(3, 7) * 3
    tdt.record(exact, x, str(tmp_path / "exact.h5"))
    tdt.record(tanh, x, str(tmp_path / "tanh.h5"))
    report = td.diff(str(tmp_path / "tanh.h5"), str(tmp_path / "exact.h5"))
    (finding,) = report.findings
    assert finding["kind"] == "gelu" and finding["b_name"] == "1"
    assert "a uses the tanh approximation of GELU, b exact (erf) GELU" in finding["message"]


def test_keras_same_padding_and_batchnorm_defaults_against_torch_are_named(tmp_path):
    """A Keras port of Conv2d(stride=2, padding=1) + BatchNorm2d at Keras' defaults:
    Conv2D(strides=2, padding="same") on an even size pads one pixel, after, where torch pads
    one on each side (the outputs are shifted); BatchNormalization's epsilon 1e-3 and momentum
    0.99 are not torch's 1e-5 and 0.1. Each is a finding naming its layer."""
    keras = pytest.importorskip("keras")
    from tracediff.adapters import tensorflow as tdtf

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 5, 3, stride=2, padding=1), torch.nn.BatchNorm2d(5)).eval()
    x = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)
    tdt.record(model, torch.from_numpy(x), str(tmp_path / "torch.h5"))
    inputs = keras.Input((8, 8, 3))
    conv = keras.layers.Conv2D(5, 3, strides=2, padding="same", name="conv")
    bn = keras.layers.BatchNormalization(name="bn")
    kmodel = keras.Model(inputs, bn(conv(inputs)))
    conv.set_weights([model[0].weight.detach().numpy().transpose(2, 3, 1, 0), model[0].bias.detach().numpy()])
    bn.set_weights([t.detach().numpy() for t in (model[1].weight, model[1].bias, model[1].running_mean,
                                                  model[1].running_var)])
    tdtf.record(kmodel, x.transpose(0, 2, 3, 1), str(tmp_path / "keras.h5"))
    report = td.diff(str(tmp_path / "keras.h5"), str(tmp_path / "torch.h5"))
    found = {f["kind"]: f for f in report.findings}
    assert (found["padding"]["a_name"], found["padding"]["b_name"]) == ("conv", "0")
    assert "a pads [[0, 1], [0, 1]], b [[1, 1], [1, 1]]" in found["padding"]["message"]
    assert (found["eps"]["a_name"], found["eps"]["b_name"]) == ("bn", "1")
    assert "eps differs: a 0.001, b 1e-05" in found["eps"]["message"]
    assert "momentum differs: a 0.01, b 0.1" in found["momentum"]["message"]
