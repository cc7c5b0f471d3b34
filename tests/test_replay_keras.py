"""Layer replay of Keras ports against their torch references: each layer run on the torch
reference's values (rearranged to channels-last), every porting bug its own root cause."""
import os

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
torch = pytest.importorskip("torch")
pytest.importorskip("tensorflow")

import tracediff as td  # noqa: E402
from test_tensorflow_vs_torch import keras_cnn, keras_loss, keras_mlp  # noqa: E402
from torch_references import cnn_reference, features, images, mlp_reference  # noqa: E402,F401


def nhwc(images):
    return images.transpose(0, 2, 3, 1)


def test_a_correct_channels_last_port_has_no_root_cause(cnn_reference, images):
    reference, path, _ = cnn_reference
    report = td.replay(keras_cnn(reference), path, inputs=nhwc(images), loss_fn=keras_loss)
    assert report.ok and report.root_causes == []
    assert report.replay_summary()["skipped"] == 0
    # backward replayed too: each layer's VJP on the reference's (NHWC-rearranged) dL/d(output)
    # gives its weights' gradients (HWIO kernels, the Dense kernel reordered for the flatten)
    # and dL/d(its input); only what the loss consumes has no layer to give it
    local = {(p.kind, p.a_name): p.local["status"] for p in report.pairs
             if p.kind in ("backward", "param_grad") and p.local is not None}
    assert local == {**{("param_grad", name): "ok" for name in (
        "conv/kernel", "conv/bias", "bn/gamma", "bn/beta", "fc/kernel", "fc/bias")},
        **{("backward", name): "ok" for name in ("conv", "bn", "act", "pool", "flat")}}


def test_two_porting_bugs_are_two_root_causes(cnn_reference, images):
    """A tanh for the ReLU, and the Dense kernel not reordered for the NHWC flatten: the diff
    names the first; replay names both, each at its layer."""
    reference, path, _ = cnn_reference
    port = keras_cnn(reference, reorder_flatten=False, activation="tanh")
    report = td.replay(port, path, inputs=nhwc(images), loss_fn=keras_loss)
    assert report.first_divergence.forward.a_name == "act"
    assert sorted(c["a_name"] for c in report.root_causes) == ["act", "fc"]


def test_a_keras_port_of_an_mlp_replays_clean(mlp_reference, features):
    reference, path, _ = mlp_reference
    assert td.replay(keras_mlp(reference), path).root_causes == []
    causes = td.replay(keras_mlp(reference, activation="sigmoid"), path).root_causes
    assert [c["a_name"] for c in causes] == ["act"]


def test_a_wrong_custom_gradient_in_a_keras_layer_is_its_root_cause(mlp_reference):
    """A ReLU with a hand-written gradient (``tf.custom_gradient``) that forgets the mask: the
    forward is right; replay names dL/d of the activation's input, by the activation."""
    import keras
    import tensorflow as tf

    @tf.custom_gradient
    def leaky_backward_relu(x):
        return tf.nn.relu(x), lambda dy: dy            # the bug: dy passes where x < 0

    class CustomReLU(keras.layers.Layer):
        def call(self, x):
            return leaky_backward_relu(x)

    reference, path, _ = mlp_reference
    port = keras_mlp(reference)
    bad = keras.Sequential([keras.Input((port.input_shape[-1],)), port.get_layer("fc1"),
                            CustomReLU(name="act"), port.get_layer("fc2")], name="mlp")
    report = td.replay(bad, path, loss_fn=keras_loss)
    assert report.first_divergence.forward is None
    assert [(c["kind"], c["a_name"], c["by"]) for c in report.root_causes] == [
        ("backward", "fc1", "act")]


def test_a_residual_fan_out_is_judged_by_the_sum_of_its_consumers(tmp_path):
    """``fc`` feeds the activation and the ``Add`` after it: its dL/d is judged against the sum
    of both layers' VJPs, replayed against the model's own trace."""
    import keras
    import numpy as np
    import tensorflow as tf
    from tracediff.adapters import tensorflow as tdtf

    x = keras.Input((5,))
    h = keras.layers.Dense(6, name="fc")(x)
    s = keras.layers.Add(name="add")([keras.layers.Activation("tanh", name="act")(h), h])
    model = keras.Model(x, keras.layers.Dense(3, name="head")(s))
    labels = np.array([0, 1, 2])

    def loss(out):
        return tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(labels, out,
                                                                          from_logits=True))

    features = np.random.default_rng(0).standard_normal((3, 5)).astype(np.float32)
    tdtf.record(model, features, tmp_path / "ref.h5", loss_fn=loss)
    report = td.replay(model, tmp_path / "ref.h5", loss_fn=loss)
    assert report.root_causes == []
    local = {p.a_name: (p.local["status"], p.local["by"]) for p in report.pairs
             if p.kind == "backward" and p.local is not None}
    assert local == {"fc": ("ok", ["act", "add"]), "act": ("ok", "add"), "add": ("ok", "head")}


def test_ops_between_layers_compute_from_the_reference_values_not_a_wrong_layers(tmp_path):
    """A subclassed model's own tf code between its layers (tanh and a scale, a relu) has no
    record: replay runs it on the reference's output of the layer before, so a wrong first
    layer is the only root cause, not also the two layers its error would flow into."""
    import keras
    import numpy as np
    import tensorflow as tf
    from tracediff.adapters import tensorflow as tdk

    class Model(keras.Model):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c = (keras.layers.Dense(n, name=name)
                                      for n, name in ((11, "a"), (13, "b"), (5, "c")))

        def call(self, x):
            return self.c(tf.nn.relu(self.b(tf.nn.tanh(self.a(x)) * 2.0)))

    keras.utils.set_random_seed(0)
    x = np.random.default_rng(0).standard_normal((3, 7)).astype("float32")
    model, bad = Model(), Model()
    model(x), bad(x)
    bad.set_weights(model.get_weights())
    bad.a.kernel.assign(bad.a.kernel * 1.01)
    tdk.record(model, x, tmp_path / "ref.h5")
    assert td.replay(model, tmp_path / "ref.h5").root_causes == []
    report = td.replay(bad, tmp_path / "ref.h5")
    assert [(c["kind"], c["b_name"]) for c in report.root_causes] == [("forward", "a")]
    assert {p.b_name: p.local["status"] for p in report.pairs if p.kind == "forward"
            and p.b_name in ("a", "b", "c")} == {"a": "diverged", "b": "ok", "c": "ok"}
