"""The LiteRT adapter against the Keras original it was converted from (TFLiteConverter):
the float conversion diffs clean, a planted weight change is named at its layer, an int8
conversion is recorded as stored and judged dequantized, and ``tracediff record`` takes a
.tflite with one-line errors."""
from __future__ import annotations

import json

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
pytest.importorskip("ai_edge_litert")
import keras  # noqa: E402

import tracediff as td  # noqa: E402
from tracediff.adapters import litert as tdl  # noqa: E402
from tracediff.adapters import tensorflow as tdtf  # noqa: E402
from tracediff.adapters.base import framework_of  # noqa: E402
from tracediff.cli import main  # noqa: E402
from tracediff.compare import quantized  # noqa: E402
from tracediff.errors import TraceDiffError  # noqa: E402

SHAPE = (1, 9, 7, 2)   # distinct sizes: a swapped axis shows


def _model():
    keras.utils.set_random_seed(0)
    inp = keras.Input(SHAPE[1:], name="image")
    x = keras.layers.Conv2D(5, 3, padding="same", activation="relu", name="conv")(inp)
    x = keras.layers.MaxPooling2D(name="pool")(x)
    x = keras.layers.Flatten(name="flat")(x)
    x = keras.layers.Dense(13, activation="relu", name="hidden")(x)
    # softmax: the graph output, a tensor with no name scope, belongs to fc all the same
    x = keras.layers.Dense(11, activation="softmax", name="fc")(x)
    return keras.Model(inp, x, name="net")


def _convert(model, int8=False):
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if int8:
        rng = np.random.default_rng(0)

        def representative():
            for _ in range(16):
                yield [rng.standard_normal(SHAPE).astype(np.float32)]
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative
    return converter.convert()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    folder = tmp_path_factory.mktemp("litert")
    model = _model()
    x = np.random.default_rng(1).standard_normal(SHAPE).astype(np.float32)
    paths = {"float": folder / "float.tflite", "int8": folder / "int8.tflite",
             "keras": folder / "keras.h5", "x": folder / "x.npy"}
    paths["float"].write_bytes(_convert(model))
    paths["int8"].write_bytes(_convert(model, int8=True))
    np.save(paths["x"], x)
    tdtf.record(model, x, paths["keras"])
    return model, x, paths, folder


def test_float_conversion_diffs_clean_against_keras(setup):
    _, x, paths, folder = setup
    out = folder / "float.h5"
    tdl.record(paths["float"], {"image": x}, out)
    report = td.diff(out, paths["keras"])
    assert report.ok, [(p.b_name, p.status, p.hint) for p in report.pairs if p.diverged]
    forward = {p.b_name: p for p in report.pairs if p.kind == "forward"}
    # each Keras layer pairs with the tensor the converter named after it, without rename rules
    assert {"conv", "pool", "flat", "hidden", "fc", "<root>"} <= set(forward)
    assert forward["conv"].a_name == "net_1/conv_1/Relu"
    assert forward["fc"].a_name == "StatefulPartitionedCall_1:0"
    kernel = next(p for p in report.pairs if p.b_name == "conv/kernel")
    assert kernel.status == "layout" and "OHWI" in kernel.hint and not kernel.diverged


def test_records_carry_op_type_activation_layout_and_dataflow(setup):
    _, x, paths, folder = setup
    out = folder / "meta.h5"
    tdl.record(str(paths["float"]), x, out)
    with td.open(out) as trace:
        records = {(r.kind, r.name): r for r in trace}
        conv = records[("forward", "net_1/conv_1/Relu")]
        assert conv.meta["op_type"] == "CONV_2D"
        assert conv.meta["fused_activation"] == "RELU"
        assert conv.meta["layout"] == "NHWC" and conv.meta["module"] == "conv"
        # the ;-joined tensor name is kept whole in meta
        assert conv.meta["tflite_tensor"].split(";") == ["net_1/conv_1/Relu",
                                                         "net_1/conv_1/convolution"]
        assert conv.meta["inputs"] == [{"kind": "input", "name": "image", "call": 0}]
        pool = records[("forward", "net_1/pool_1/MaxPool2d")]
        assert pool.meta["inputs"] == [{"kind": "forward", "name": conv.name, "call": 0}]
        kernel = records[("param", "net_1/conv_1/convolution")]
        assert kernel.meta["layout"] == "OHWI" and kernel.meta["role"] == "weight"
        assert kernel.shape == (5, 3, 3, 2)
        assert np.array_equal(records[("input", "image")].read(), x)
        run_meta = json.loads(trace.attrs["meta"])
    # the default delegate (XNNPACK) hides intermediates: the recorded run goes without it,
    # and the delegated run's outputs are compared with it
    assert run_meta["resolver"] == "BUILTIN_WITHOUT_DEFAULT_DELEGATES"
    delegated = run_meta["delegate_difference"]
    assert set(delegated["outputs"]) == {"StatefulPartitionedCall_1:0"}
    assert delegated["max_abs"] is not None and delegated["max_abs"] < 1e-4


def test_planted_weight_change_is_named_at_its_layer(setup):
    model, x, paths, folder = setup
    planted = _model()
    weights = planted.get_layer("hidden").get_weights()
    weights[0][3, 4] += 0.5
    planted.get_layer("hidden").set_weights(weights)
    tflite = folder / "planted.tflite"
    tflite.write_bytes(_convert(planted))
    out = folder / "planted.h5"
    tdl.record(tflite, {"image": x}, out)
    report = td.diff(out, paths["keras"])
    assert not report.ok
    assert report.first_divergence.forward.b_name == "hidden"
    kernel = next(p for p in report.pairs if p.b_name == "hidden/kernel")
    assert kernel.diverged
    assert not any(p.diverged for p in report.pairs if p.b_name in ("conv", "pool", "flat"))


def test_int8_conversion_is_stored_quantized_and_judged_dequantized(setup):
    _, x, paths, folder = setup
    out = folder / "int8.h5"
    tdl.record(paths["int8"], {"image": x}, out)
    with td.open(out) as trace:
        conv = next(r for r in trace if r.kind == "forward" and r.meta.get("module") == "conv")
        assert conv.dtype == "int8"
        assert isinstance(conv.meta["scale"], float) and conv.meta["scale"] > 0
        assert isinstance(conv.meta["zero_point"], int)
        kernel = next(r for r in trace if r.name == "net_1/conv_1/convolution")
        assert kernel.dtype == "int8" and len(kernel.meta["scale"]) == 5   # per output channel
        assert kernel.meta["quantized_dimension"] == 0
        step = conv.meta["scale"]
    report = td.diff(out, paths["keras"])
    statuses = {p.status for p in report.pairs}
    assert "dtype_mismatch" not in statuses
    judged = [p for p in report.pairs if p.tolerance.get("rule") == "quantized"]
    conv_pair = next(p for p in judged if p.b_name == "conv")
    assert conv_pair.tolerance["atol"] >= step and conv_pair.tolerance["step"] == step
    # 8-bit quantization: tens of dB, nowhere near float's agreement nor noise
    assert 20 < conv_pair.stats["sqnr_db"] < 60
    forward = [p for p in judged if p.kind == "forward"]
    ranked = [p for p in quantized.ranked(report.pairs) if p.kind == "forward"]
    assert ranked[0].stats["sqnr_db"] == min(p.stats["sqnr_db"] for p in forward)
    assert ranked[0].stats["rel_l2"] == max(p.stats["rel_l2"] for p in forward)
    # against the float conversion the same layers are judged the same way
    float_trace = folder / "float_ref.h5"
    tdl.record(paths["float"], {"image": x}, float_trace)
    against_float = td.diff(out, float_trace)
    assert "dtype_mismatch" not in {p.status for p in against_float.pairs}
    assert any(p.tolerance.get("rule") == "quantized" for p in against_float.pairs)


def test_cli_records_a_tflite_model(setup, capsys):
    _, _, paths, folder = setup
    out = folder / "cli.h5"
    assert framework_of(str(paths["float"])) == "litert"
    code = main(["record", str(paths["float"]), "--input", f"image={paths['x']}", "--out", str(out),
                 "--diff-against", str(paths["keras"])])
    assert code == 0
    assert "op outputs" in capsys.readouterr().err
    with td.open(out) as trace:
        assert trace.framework == "litert"


@pytest.mark.parametrize("args, message", [
    (["missing.tflite", "--input", "image={x}"], "missing.tflite does not exist"),
    (["{float}", "--input", "img={x}"], "has no input named 'img': its inputs are image"),
    (["{float}", "--random"], "--random is an option of ONNX models"),
])
def test_cli_mistakes_get_one_line(setup, capsys, args, message):
    _, _, paths, folder = setup
    args = [a.format(x=paths["x"], float=paths["float"]) for a in args]
    if args[0] == "missing.tflite":
        args[0] = str(folder / "missing.tflite")
    code = main(["record", *args, "--out", str(folder / "never.h5")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0]


def test_api_refuses_wrong_dtype_and_a_non_tflite_file(setup):
    _, x, paths, folder = setup
    with pytest.raises(TraceDiffError, match="is float64 but the model expects float32"):
        tdl.record(paths["float"], {"image": x.astype(np.float64)}, folder / "bad.h5")
    with pytest.raises(TraceDiffError, match="not a TFLite flatbuffer"):
        tdl.record(paths["x"], {"image": x}, folder / "bad2.h5")


def test_replay_ranks_the_layer_that_adds_the_error_first(tmp_path):
    """Quantization debugging: an outlier weight in conv2 widens its output's int8 range, so
    every other channel loses resolution there. The cumulative error is worst further down
    (hidden, fc: they inherit conv2's error and add their own); replaying each int8 op on the
    float model's values ranks conv2 first by the error it adds."""
    keras.utils.set_random_seed(0)
    inp = keras.Input(SHAPE[1:], name="image")
    x = keras.layers.Conv2D(5, 3, padding="same", activation="relu", name="conv")(inp)
    x = keras.layers.Conv2D(6, 3, padding="same", activation="relu", name="conv2")(x)
    x = keras.layers.MaxPooling2D(name="pool")(x)
    x = keras.layers.Flatten(name="flat")(x)
    x = keras.layers.Dense(13, activation="relu", name="hidden")(x)
    x = keras.layers.Dense(11, name="fc")(x)
    model = keras.Model(inp, x, name="net")
    weights = model.get_layer("conv2").get_weights()
    weights[0][0, 0, 0, 0] = 30.0
    model.get_layer("conv2").set_weights(weights)
    tflite = tmp_path / "int8.tflite"
    tflite.write_bytes(_convert(model, int8=True))
    x = np.random.default_rng(1).standard_normal(SHAPE).astype(np.float32)
    tdtf.record(model, x, tmp_path / "keras.h5")
    tdl.record(tflite, x, tmp_path / "int8.h5")
    plain = td.diff(tmp_path / "int8.h5", tmp_path / "keras.h5")
    worst_cumulative = quantized.ranked(plain.pairs)[0]
    assert worst_cumulative.kind == "forward" and worst_cumulative.b_name in ("hidden", "fc", "<root>")
    report = td.replay(str(tflite), tmp_path / "keras.h5")
    assert report.root_causes[0]["b_name"] == "conv2"
    local = {p.b_name: p.local for p in report.pairs if p.kind == "forward" and p.local}
    assert min(local, key=lambda name: local[name]["sqnr_db"]) == "conv2"
    assert local["conv2"]["tolerance"]["atol"] >= next(
        p.tolerance["step"] for p in report.pairs if p.b_name == "conv2")
    out = tmp_path / "replay.json"
    assert main(["replay", str(tflite), str(tmp_path / "keras.h5"), "--json", str(out)]) == 1
    assert json.loads(out.read_text())["root_causes"][0]["b_name"] == "conv2"


def test_golden_recording_takes_a_tflite_path(setup):
    from tracediff.golden.adapters import record as golden_record

    _, x, paths, folder = setup
    assert golden_record(str(paths["float"]), x, folder / "golden.h5") == "litert"
    assert td.diff(folder / "golden.h5", paths["keras"]).ok


def test_a_conv_with_its_batchnorm_folded_pairs_with_the_batchnorm(tmp_path):
    """Conv2D then BatchNormalization (trained statistics), no activation: the converter folds
    the BatchNorm into the convolution and names the output after the BatchNorm's ops
    (bn_1/batchnorm/add_1): the record pairs with the Keras bn, and the folded kernel and bias,
    which are no parameters of the Keras model, get no param record."""
    keras.utils.set_random_seed(0)
    inp = keras.Input(SHAPE[1:], name="image")
    x = keras.layers.Conv2D(5, 3, padding="same", name="conv")(inp)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.Flatten(name="flat")(keras.layers.MaxPooling2D(name="pool")(x))
    model = keras.Model(inp, keras.layers.Dense(11, name="fc")(x), name="net")
    rng = np.random.default_rng(3)
    gamma, beta = rng.uniform(0.5, 1.5, 5), rng.normal(size=5)
    mean, var = rng.normal(size=5), rng.uniform(0.5, 2.0, 5)
    model.get_layer("bn").set_weights([a.astype(np.float32) for a in (gamma, beta, mean, var)])
    tflite = tmp_path / "bn.tflite"
    tflite.write_bytes(_convert(model))
    x = np.random.default_rng(1).standard_normal(SHAPE).astype(np.float32)
    tdtf.record(model, x, tmp_path / "keras.h5")
    tdl.record(tflite, x, tmp_path / "bn.h5")
    report = td.diff(tmp_path / "bn.h5", tmp_path / "keras.h5")
    assert report.ok, [(p.a_name, p.b_name, p.status) for p in report.pairs if p.diverged]
    bn = next(p for p in report.pairs if p.kind == "forward" and p.b_name == "bn")
    assert bn.a_name.startswith("net_1/bn_1/batchnorm/") and bn.status == "ok"
    assert "conv" in report.unmatched["b"] and "conv/kernel" in report.unmatched["b"]
    with td.open(tmp_path / "bn.h5") as trace:
        assert trace.get(bn.a_name).meta["folded"] == "BatchNormalization"
        assert "net_1/conv_1/convolution" in json.loads(trace.attrs["meta"])["folded_constants"]
        assert not any(r.kind == "param" and r.meta.get("module") in ("conv", "bn") for r in trace)
