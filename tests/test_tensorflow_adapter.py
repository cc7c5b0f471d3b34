"""The Keras adapter on its own: names, values and gradients checked against Keras itself."""
import os

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

import tracediff as td  # noqa: E402
from tracediff.adapters import tensorflow as tdtf  # noqa: E402

LABELS = np.array([1, 0, 3])


def cross_entropy(output):
    return tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(
        LABELS, output, from_logits=True))


@pytest.fixture(scope="module")
def cnn():
    keras.utils.set_random_seed(0)
    x = keras.Input((6, 6, 2), name="image")
    h = keras.layers.Conv2D(5, 3, name="conv")(x)
    h = keras.layers.ReLU(name="act")(h)
    h = keras.layers.MaxPooling2D(name="pool")(h)
    h = keras.layers.Flatten(name="flat")(h)
    out = keras.layers.Dense(4, name="fc")(h)
    return keras.Model(x, out, name="cnn")


@pytest.fixture(scope="module")
def image():
    return np.random.default_rng(1).standard_normal((3, 6, 6, 2)).astype(np.float32)


@pytest.fixture(scope="module")
def cnn_trace(cnn, image, tmp_path_factory):
    path = tmp_path_factory.mktemp("tf") / "cnn.h5"
    output = tdtf.record(cnn, image, path, loss_fn=cross_entropy)
    return td.open(path), output


def test_forward_records_are_every_layer_in_execution_order(cnn_trace):
    trace, _ = cnn_trace
    assert [r.name for r in trace.records("forward")] == ["conv", "act", "pool", "flat", "fc", "<root>"]
    assert [r.name for r in trace.records("input")] == ["input"]
    assert trace.framework == "tensorflow"
    assert trace.attrs["framework_version"] == f"tf {tf.__version__} / keras {keras.__version__}"
    assert trace.complete


def test_forward_values_equal_keras_probes_of_each_layer(cnn, image, cnn_trace):
    trace, _ = cnn_trace
    for layer in cnn.layers[1:]:
        probe = keras.Model(cnn.input, layer.output)
        np.testing.assert_allclose(trace.get(layer.name).read(), probe(image).numpy(),
                                   rtol=1e-6, atol=1e-6, err_msg=layer.name)
    np.testing.assert_array_equal(trace.get("input", kind="input").read(), image)


def test_recording_does_not_change_the_output(cnn, image, cnn_trace):
    _, output = cnn_trace
    np.testing.assert_array_equal(output.numpy(), cnn(image).numpy())
    for layer in cnn._flatten_layers():
        assert "call" not in vars(layer), f"{layer.name}.call still wrapped"


def test_backward_records_are_the_gradients_of_the_loss(cnn, image, cnn_trace):
    trace, _ = cnn_trace
    logits = trace.get("fc").read()
    softmax = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    expected = (softmax - np.eye(4)[LABELS]) / len(LABELS)   # d mean CE / d logits
    np.testing.assert_allclose(trace.get("fc", kind="backward").read(), expected, atol=1e-6)
    kernel = cnn.get_layer("fc").kernel.numpy()
    np.testing.assert_allclose(trace.get("flat", kind="backward").read(), expected @ kernel.T,
                               atol=1e-6)
    # From the loss towards the input.
    assert [r.name for r in trace.records("backward")] == ["<root>", "fc", "flat", "pool", "act", "conv"]


def test_param_grads_equal_an_independent_tape(cnn, image, cnn_trace):
    trace, _ = cnn_trace
    with tf.GradientTape() as tape:
        loss = cross_entropy(cnn(image))
    grads = tape.gradient(loss, cnn.trainable_variables)
    for variable, grad in zip(cnn.trainable_variables, grads):
        name = variable.path               # "conv/kernel": the layer path at top level
        np.testing.assert_array_equal(trace.get(name, kind="param").read(), variable.numpy())
        np.testing.assert_allclose(trace.get(name, kind="param_grad").read(), grad.numpy(),
                                   rtol=1e-5, atol=1e-7, err_msg=name)
    np.testing.assert_allclose(trace.get("loss", kind="loss").read(), loss.numpy(), rtol=1e-6)


def test_layouts_roles_and_origin_are_stored(cnn_trace):
    trace, _ = cnn_trace
    assert trace.get("input", kind="input").meta["layout"] == "NHWC"
    for name in ("conv", "act", "pool"):
        assert trace.get(name).meta["layout"] == "NHWC", name
    assert trace.get("flat").meta["layout"] == "N(HWC)"
    assert trace.get("flat").meta["unflattened_shape"] == [3, 2, 2, 5]
    assert "layout" not in trace.get("fc").meta
    conv = trace.get("conv")
    assert (conv.meta["op_type"], conv.meta["module"], conv.meta["training"]) == ("Conv2D", "conv", False)
    kernel = trace.get("conv/kernel", kind="param").meta
    assert (kernel["role"], kernel["layout"]) == ("weight", "HWIO")
    dense = trace.get("fc/kernel", kind="param").meta
    assert (dense["role"], dense["layout"]) == ("weight", "IO")
    assert trace.get("fc/bias", kind="param").meta["role"] == "bias"


def test_batch_norm_weights_map_to_canonical_roles(tmp_path):
    x = keras.Input((4, 4, 3))
    model = keras.Model(x, keras.layers.BatchNormalization(name="bn")(x))
    data = np.random.default_rng(2).standard_normal((2, 4, 4, 3)).astype(np.float32)
    tdtf.record(model, data, tmp_path / "bn.h5", loss_fn=tf.reduce_sum, training=True)
    trace = td.open(tmp_path / "bn.h5")
    roles = {r.name: r.meta["role"] for r in trace.records("param")}
    assert roles == {"bn/gamma": "weight", "bn/beta": "bias", "bn/moving_mean": "running_mean",
                     "bn/moving_variance": "running_var"}
    assert trace.get("bn").meta["layout"] == "NHWC"
    assert trace.get("bn").meta["training"] is True
    # Running statistics have no gradient.
    assert {r.name for r in trace.records("param_grad")} == {"bn/gamma", "bn/beta"}


class TwoLayer(keras.Model):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.fc1 = keras.layers.Dense(5, name="fc1")
        self.act = keras.layers.Activation("tanh", name="act")
        self.fc2 = keras.layers.Dense(4, name="fc2")

    def call(self, x):
        return self.fc2(self.act(self.fc1(x)))


class CompiledTwoLayer(TwoLayer):
    @tf.function
    def call(self, x):
        return self.fc2(self.act(self.fc1(x)))


@pytest.mark.parametrize("cls", [TwoLayer, CompiledTwoLayer])
def test_subclassed_model_is_captured_and_restored(cls, tmp_path):
    keras.utils.set_random_seed(3)
    model = cls(name="sub")
    x = np.random.default_rng(3).standard_normal((3, 7)).astype(np.float32)
    model(x)
    output = tdtf.record(model, x, tmp_path / "sub.h5", loss_fn=cross_entropy)
    trace = td.open(tmp_path / "sub.h5")
    assert [r.name for r in trace.records("forward")] == ["fc1", "act", "fc2", "<root>"]
    hidden = x @ model.fc1.kernel.numpy() + model.fc1.bias.numpy()
    np.testing.assert_allclose(trace.get("fc1").read(), hidden, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(trace.get("act").read(), np.tanh(hidden), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(output.numpy(), model(x).numpy())
    assert [r.name for r in trace.records("backward")] == ["<root>", "fc2", "act", "fc1"]
    assert sorted(r.name for r in trace.records("param_grad")) == [
        "fc1/bias", "fc1/kernel", "fc2/bias", "fc2/kernel"]
    assert not any("call" in vars(layer) for layer in model._flatten_layers())
    assert not tf.config.functions_run_eagerly()


def test_wrappers_are_removed_when_the_loss_fails(tmp_path):
    model = TwoLayer(name="sub")
    x = np.ones((3, 7), np.float32)
    model(x)

    def broken_loss(output):
        raise RuntimeError("labels missing")

    with pytest.raises(RuntimeError, match="labels missing"):
        tdtf.record(model, x, tmp_path / "broken.h5", loss_fn=broken_loss)
    assert not any("call" in vars(layer) for layer in model._flatten_layers())
    # The layers that ran are kept, marked incomplete.
    with pytest.warns(td.IncompleteTraceWarning):
        trace = td.open(tmp_path / "broken.h5")
    assert not trace.complete
    assert [r.name for r in trace.records("forward")] == ["fc1", "act", "fc2", "<root>"]


def test_nested_models_are_named_by_path(tmp_path):
    inner = keras.Sequential([keras.Input((5,)), keras.layers.Dense(3, name="dense")], name="inner")
    x = keras.Input((5,))
    outer = keras.Model(x, keras.layers.ReLU(name="relu")(inner(x)), name="outer")
    root_in = keras.Input((4,))
    root = keras.Model(root_in, outer(keras.layers.Dense(5, name="proj")(root_in)), name="root")
    data = np.random.default_rng(4).standard_normal((2, 4)).astype(np.float32)
    tdtf.record(root, data, tmp_path / "nested.h5", loss_fn=tf.reduce_sum)
    trace = td.open(tmp_path / "nested.h5")
    assert [r.name for r in trace.records("forward")] == [
        "proj", "outer/inner/dense", "outer/inner", "outer/relu", "outer", "<root>"]
    assert trace.get("outer/inner/dense").meta["module"] == "outer/inner/dense"
    assert "outer/inner/dense/kernel" in {r.name for r in trace.records("param_grad")}
    np.testing.assert_array_equal(trace.get("outer/inner/dense").read(),
                                  trace.get("outer/inner").read())
    # dL/d(relu output) of a sum is all ones.
    np.testing.assert_array_equal(trace.get("outer/relu", kind="backward").read(), np.ones((2, 3)))


def test_shared_layer_gets_a_call_index_per_use(tmp_path):
    shared = keras.layers.Dense(3, name="shared")
    a, b = keras.Input((3,)), keras.Input((3,))
    out = keras.layers.Multiply(name="mul")([shared(a), shared(b)])
    model = keras.Model([a, b], out, name="siamese")
    rng = np.random.default_rng(5)
    xa, xb = (rng.standard_normal((2, 3)).astype(np.float32) for _ in range(2))
    tdtf.record(model, [xa, xb], tmp_path / "shared.h5", loss_fn=tf.reduce_sum)
    trace = td.open(tmp_path / "shared.h5")
    kernel, bias = shared.kernel.numpy(), shared.bias.numpy()
    first, second = xa @ kernel + bias, xb @ kernel + bias
    assert [(r.name, r.call) for r in trace.records("forward")] == [
        ("shared", 0), ("shared", 1), ("mul", 0), ("<root>", 0)]
    assert [r.name for r in trace.records("input")] == ["input:0", "input:1"]
    np.testing.assert_allclose(trace.get("shared", call=0).read(), first, rtol=1e-6)
    np.testing.assert_allclose(trace.get("shared", call=1).read(), second, rtol=1e-6)
    # d sum(s0 * s1) / d s0 = s1, paired with call 0.
    np.testing.assert_allclose(trace.get("shared", kind="backward", call=0).read(), second, rtol=1e-6)
    np.testing.assert_allclose(trace.get("shared", kind="backward", call=1).read(), first, rtol=1e-6)
    expected = xa.T @ second + xb.T @ first        # both uses add to the kernel's gradient
    np.testing.assert_allclose(trace.get("shared/kernel", kind="param_grad").read(), expected,
                               rtol=1e-5)


def test_rnn_layer_outputs_states_and_weights(tmp_path):
    keras.utils.set_random_seed(6)
    x = keras.Input((4, 3))
    seq, h, c = keras.layers.LSTM(5, return_sequences=True, return_state=True, name="lstm")(x)
    model = keras.Model(x, keras.layers.Dense(2, name="head")(h), name="rnn")
    data = np.random.default_rng(6).standard_normal((2, 4, 3)).astype(np.float32)
    tdtf.record(model, data, tmp_path / "rnn.h5", loss_fn=tf.reduce_sum)
    trace = td.open(tmp_path / "rnn.h5")
    top = [r.name for r in trace.records("forward") if not r.name.startswith("lstm/")]
    assert top == ["lstm:0", "lstm:1", "lstm:2", "head", "<root>"]
    probe = keras.Model(model.input, model.get_layer("lstm").output)(data)
    for i in range(3):
        np.testing.assert_allclose(trace.get(f"lstm:{i}").read(), probe[i].numpy(), rtol=1e-5, atol=1e-6)
    # The cell's own calls (one a time step, and one more that Keras makes to learn the output
    # structure) each get the next call index.
    calls = [r.call for r in trace.records("forward", name="lstm/lstm_cell:0")]
    assert calls == list(range(len(calls))) and len(calls) >= 4
    roles = {r.name: (r.meta["role"], r.meta.get("layout")) for r in trace.records("param")}
    assert roles["lstm/lstm_cell/kernel"] == ("weight", "IO")
    assert roles["lstm/lstm_cell/recurrent_kernel"] == ("recurrent_weight", "IO")
    # Only the final states feed the loss (h = o * tanh(c)): the sequence output gets no gradient.
    assert {r.name for r in trace.records("backward", name="lstm:*")} == {"lstm:1", "lstm:2"}


def test_include_exclude_and_stats_only(cnn, image, tmp_path):
    tdtf.record(cnn, image, tmp_path / "some.h5", loss_fn=cross_entropy,
                include=["conv", "fc"], values=False)
    trace = td.open(tmp_path / "some.h5")
    assert {r.name for r in trace.records(("forward", "backward"))} == {"conv", "fc"}
    assert {r.name for r in trace.records("param")} == {"conv/kernel", "conv/bias", "fc/kernel", "fc/bias"}
    assert not any(r.stored for r in trace)
    tdtf.record(cnn, image, tmp_path / "rest.h5", exclude="conv*")
    names = {r.name for r in td.open(tmp_path / "rest.h5")}
    assert names == {"input", "act", "pool", "flat", "fc", "<root>", "fc/kernel", "fc/bias"}


def test_model_never_built_is_one_line(tmp_path):
    model = keras.Sequential([keras.layers.Dense(3)], name="unbuilt")
    with pytest.raises(td.TraceDiffError) as err:
        tdtf.record(model, np.ones((2, 4), np.float32), tmp_path / "x.h5")
    assert str(err.value) == (
        "Keras model 'unbuilt' has never been built, so its weights do not exist yet: call "
        "model.build(input_shape) or run it once on sample inputs, load its weights, then record")
    assert not (tmp_path / "x.h5").exists()


def test_subclassed_model_built_without_its_weights_is_one_line(tmp_path):
    model = TwoLayer(name="sub")
    with pytest.warns(UserWarning, match="does not have a `build\\(\\)` method"):
        model.build((None, 7))          # marks the model built; its Dense layers are not
    with pytest.raises(td.TraceDiffError) as err:
        tdtf.record(model, np.ones((3, 7), np.float32), tmp_path / "x.h5")
    assert str(err.value) == (
        "Keras model 'sub' created 4 weight(s) while being recorded (fc1/kernel, ...): it was "
        "never fully built, so they hold fresh random values; run it once on sample inputs, "
        "load its weights, then record")
    assert not (tmp_path / "x.h5").exists()


def test_inputs_of_the_wrong_shape_are_one_line(cnn, tmp_path):
    with pytest.raises(td.TraceDiffError) as err:
        tdtf.record(cnn, np.ones((3, 2, 6, 6), np.float32), tmp_path / "x.h5")
    assert str(err.value) == (
        "input 'input' has shape (3, 2, 6, 6) but Keras model 'cnn' expects (None, 6, 6, 2) "
        "(None: any size): pass inputs of that shape")
    with pytest.raises(td.TraceDiffError, match=r"^Keras model 'cnn' takes 1 input\(s\), got 2"):
        tdtf.record(cnn, [np.ones((3, 6, 6, 2))] * 2, tmp_path / "x.h5")
    assert not (tmp_path / "x.h5").exists()


def test_subclassed_model_with_wrong_input_is_one_line(tmp_path):
    model = TwoLayer(name="sub")
    model(np.ones((3, 7), np.float32))
    with pytest.raises(td.TraceDiffError) as err:
        tdtf.record(model, np.ones((3, 5), np.float32), tmp_path / "x.h5")
    message = str(err.value)
    assert message.startswith("running Keras model 'sub' on inputs of shape (3, 5) failed: ")
    assert "fc1" in message and "\n" not in message
    assert message.endswith("pass inputs of the shape and dtype the model was built for")
    assert not (tmp_path / "x.h5").exists()
    assert not any("call" in vars(layer) for layer in model._flatten_layers())


def test_not_a_keras_model_and_non_scalar_loss(cnn, image, tmp_path):
    with pytest.raises(td.TraceDiffError, match="^tensorflow.record needs a Keras model or layer, got function"):
        tdtf.record(lambda x: x, image, tmp_path / "x.h5")
    with pytest.raises(td.TraceDiffError, match=r"^loss_fn returned a tensor of shape \(3, 4\), not a scalar"):
        tdtf.record(cnn, image, tmp_path / "x.h5", loss_fn=lambda out: out)
    with pytest.raises(td.TraceDiffError, match="^loss_fn returned float, not a tensor"):
        tdtf.record(cnn, image, tmp_path / "y.h5", loss_fn=lambda out: 1.0)

    def wrong_labels(output):
        raise ValueError("labels and logits differ in size")

    # The user's own errors in loss_fn are theirs, not blamed on the inputs.
    with pytest.raises(ValueError, match="^labels and logits differ in size$"):
        tdtf.record(cnn, image, tmp_path / "z.h5", loss_fn=wrong_labels)


def test_named_inputs_and_tf_keras_models(tmp_path):
    a, b = tf.keras.Input((3,), name="a"), tf.keras.Input((2,), name="b")
    joined = tf.keras.layers.Concatenate(name="cat")([a, b])
    model = tf.keras.Model({"a": a, "b": b}, tf.keras.layers.Dense(2, name="d")(joined), name="two")
    inputs = {"a": np.ones((4, 3), np.float32), "b": np.zeros((4, 2), np.float32)}
    tdtf.record(model, inputs, tmp_path / "two.h5")
    trace = td.open(tmp_path / "two.h5")
    assert [(r.kind, r.name) for r in trace.records(("input", "forward"))] == [
        ("input", "input:a"), ("input", "input:b"), ("forward", "cat"), ("forward", "d"),
        ("forward", "<root>")]
    np.testing.assert_array_equal(trace.get("cat").read(), np.hstack([inputs["a"], inputs["b"]]))
    with pytest.raises(td.TraceDiffError) as err:
        tdtf.record(model, {"a": inputs["a"], "c": inputs["b"]}, tmp_path / "x.h5")
    assert str(err.value) == "input 'c' is not an input of Keras model 'two': its inputs are 'a', 'b'"
    with pytest.raises(td.TraceDiffError, match=r"^input 'b' has shape \(4, 5\) but Keras model 'two' expects \(None, 2\)"):
        tdtf.record(model, {"a": inputs["a"], "b": np.zeros((4, 5), np.float32)}, tmp_path / "x.h5")


class Chatty(keras.layers.Layer):
    """Logs through TensorFlow's logger on each call, as retracing warnings do."""

    def call(self, x):
        tf.get_logger().warning("chatty layer called")
        return x * 2.0


def test_tensorflow_log_noise_is_silenced_while_recording_only(tmp_path, caplog):
    x = keras.Input((3,))
    model = keras.Model(x, Chatty(name="chatty")(x))
    level = tf.get_logger().level
    caplog.clear()
    tdtf.record(model, np.ones((2, 3), np.float32), tmp_path / "quiet.h5")
    assert "chatty layer called" not in caplog.text
    assert tf.get_logger().level == level
    model(np.ones((2, 3), np.float32))
    assert "chatty layer called" in caplog.text
