"""Keras ports of PyTorch models, diffed against the torch trace: the porting bugs that cost days
(flatten order after a channels-last conv, a wrong activation) are named at their layer, and a
correct port reports no divergence through NHWC activations and the flatten."""
import os

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
torch = pytest.importorskip("torch")
tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

import tracediff as td  # noqa: E402
from tracediff.adapters import tensorflow as tdtf  # noqa: E402
from torch_references import (C, C_IN, DIMS, H, K, LABELS, W, cnn_reference,  # noqa: E402,F401
                              diverging, features, images, mlp_reference, numpy_of, values_differ)


def keras_loss(output):
    return tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(LABELS, output, from_logits=True))


# -- Keras ports of the torch references (torch_references.py), weights copied ---------------
def keras_mlp(reference, activation="relu"):
    model = keras.Sequential([
        keras.Input((W,)), keras.layers.Dense(H, name="fc1"),
        keras.layers.Activation(activation, name="act"), keras.layers.Dense(K, name="fc2")],
        name="mlp")
    for name in ("fc1", "fc2"):
        linear = getattr(reference, name)
        # torch Linear weight is (out, in); a Keras Dense kernel is (in, out).
        model.get_layer(name).set_weights([numpy_of(linear.weight).T, numpy_of(linear.bias)])
    return model


def keras_cnn(reference, *, reorder_flatten=True, activation="relu"):
    x = keras.Input((H, W, C_IN))
    h = keras.layers.Conv2D(C, (3, 5), padding="same", name="conv")(x)
    h = keras.layers.BatchNormalization(epsilon=reference.bn.eps, name="bn")(h)
    h = keras.layers.Activation(activation, name="act")(h)
    h = keras.layers.MaxPooling2D(3, strides=1, padding="same", name="pool")(h)
    h = keras.layers.Flatten(name="flat")(h)
    model = keras.Model(x, keras.layers.Dense(K, name="fc")(h), name="cnn")
    conv, bn, fc = reference.conv, reference.bn, reference.fc
    model.get_layer("conv").set_weights([numpy_of(conv.weight).transpose(2, 3, 1, 0),  # OIHW->HWIO
                                         numpy_of(conv.bias)])
    model.get_layer("bn").set_weights([numpy_of(bn.weight), numpy_of(bn.bias),
                                       numpy_of(bn.running_mean), numpy_of(bn.running_var)])
    weight = numpy_of(fc.weight)                     # (K, C*H*W): inputs in C, H, W order
    if reorder_flatten:
        # Keras flattens NHWC activations in H, W, C order: reorder the kernel's rows to match.
        kernel = weight.reshape(K, C, H, W).transpose(2, 3, 1, 0).reshape(H * W * C, K)
    else:
        kernel = weight.T                            # the classic porting bug
    model.get_layer("fc").set_weights([kernel, numpy_of(fc.bias)])
    return model


def record_port(model, inputs, tmp_path, name):
    path = tmp_path / f"{name}.h5"
    output = tdtf.record(model, inputs, path, loss_fn=keras_loss, dims=DIMS)
    return path, output.numpy()


def test_correct_mlp_port_reports_no_divergence(mlp_reference, features, tmp_path):
    reference, torch_path, torch_output = mlp_reference
    path, output = record_port(keras_mlp(reference), features, tmp_path, "mlp")
    np.testing.assert_allclose(output, torch_output, rtol=1e-5, atol=1e-6)
    report = td.diff(path, torch_path)
    pairs = report.to_dict()["pairs"]
    assert diverging(report) == []
    assert report.ok
    assert report.first_divergence.forward is None and report.first_divergence.backward is None
    forward = {p["a_name"]: p["b_name"] for p in pairs if p["kind"] == "forward"}
    assert forward == {"fc1": "fc1", "act": "act", "fc2": "fc2", "<root>": "<root>"}
    params = {(p["a_name"], p["kind"]): p for p in pairs if p["kind"] in ("param", "param_grad")}
    # dense/kernel pairs with fc.weight (transposed) and dense/bias with fc.bias.
    assert params[("fc1/kernel", "param")]["b_name"] == "fc1.weight"
    assert (params[("fc1/kernel", "param")]["status"], params[("fc1/kernel", "param")]["diverged"]) \
        == ("layout", False)
    assert params[("fc2/bias", "param_grad")]["b_name"] == "fc2.bias"


def test_mlp_port_with_the_wrong_activation_is_named(mlp_reference, features, tmp_path):
    reference, torch_path, _ = mlp_reference
    path, _ = record_port(keras_mlp(reference, activation="sigmoid"), features, tmp_path, "mlp_bad")
    report = td.diff(path, torch_path)
    assert not report.ok
    assert report.first_divergence.forward.a_name == "act"
    assert report.first_divergence.forward.b_name == "act"


def port_of_cnn(reference, images, tmp_path, name, **options):
    path, output = record_port(keras_cnn(reference, **options), images.transpose(0, 2, 3, 1),
                               tmp_path, name)
    return path, output


def test_correct_cnn_port_matches_every_record_up_to_layout(cnn_reference, images, tmp_path):
    reference, torch_path, torch_output = cnn_reference
    path, output = port_of_cnn(reference, images, tmp_path, "cnn")
    np.testing.assert_allclose(output, torch_output, rtol=1e-4, atol=1e-5)
    report = td.diff(path, torch_path)
    assert [(p.a_name, p.kind, p.status) for p in report.pairs
            if p.status not in ("ok", "layout")] == []
    assert report.unmatched == {"a": [], "b": ["bn.num_batches_tracked"]}
    forward = {p.a_name: p for p in report.pairs if p.kind == "forward"}
    assert {name: p.b_name for name, p in forward.items()} == {
        n: n for n in ("conv", "bn", "act", "pool", "flat", "fc", "<root>")}
    # NHWC against NCHW, declared on both sides: a layout, not a divergence.
    for name in ("conv", "bn", "pool"):
        assert (forward[name].status, forward[name].diverged) == ("layout", False), name
    # The flatten's H, W, C order against C, H, W: the same values, permuted.
    assert forward["flat"].status == "layout"
    assert "flattened from [batch, height, width, channels]" in forward["flat"].hint
    assert (forward["fc"].status, forward["<root>"].status) == ("ok", "ok")
    params = {(p.a_name, p.kind): p for p in report.pairs if p.kind in ("param", "param_grad")}
    kernel = params[("conv/kernel", "param")]
    assert (kernel.b_name, kernel.status, kernel.diverged) == ("conv.weight", "layout", False)
    assert params[("bn/moving_variance", "param")].b_name == "bn.running_var"
    assert params[("fc/kernel", "param_grad")].status == "layout"


def test_correct_cnn_port_reports_no_divergence_through_the_flatten(cnn_reference, images, tmp_path):
    reference, torch_path, _ = cnn_reference
    path, _ = port_of_cnn(reference, images, tmp_path, "cnn")
    report = td.diff(path, torch_path)
    assert diverging(report) == []
    assert report.ok and report.first_divergence.forward is None


def test_cnn_port_that_forgot_to_reorder_the_dense_rows_diverges_at_the_dense(
        cnn_reference, images, tmp_path):
    reference, torch_path, _ = cnn_reference
    path, _ = port_of_cnn(reference, images, tmp_path, "cnn_unordered", reorder_flatten=False)
    report = td.diff(path, torch_path)
    assert not report.ok
    assert values_differ(report)[0] == "fc"
    # The kernel alone looks right: a faithful transpose of fc.weight (declared IO vs OI).
    kernel = next(p for p in report.pairs if p.a_name == "fc/kernel" and p.kind == "param")
    assert (kernel.status, kernel.diverged) == ("layout", False)


def test_cnn_port_that_forgot_to_reorder_the_dense_rows_is_named(cnn_reference, images, tmp_path):
    reference, torch_path, _ = cnn_reference
    path, _ = port_of_cnn(reference, images, tmp_path, "cnn_unordered", reorder_flatten=False)
    first = td.diff(path, torch_path).first_divergence.forward
    assert (first.a_name, first.b_name, first.status) == ("fc", "fc", "diverged")


def test_cnn_port_with_the_wrong_activation_is_named(cnn_reference, images, tmp_path):
    reference, torch_path, _ = cnn_reference
    path, _ = port_of_cnn(reference, images, tmp_path, "cnn_elu", activation="elu")
    report = td.diff(path, torch_path)
    assert not report.ok
    assert values_differ(report)[0] == "act"
    first = report.first_divergence.forward
    assert first.a_name == "act"
    assert "values differ even after permuting" in first.hint   # not just NHWC vs NCHW
