"""`tracediff extract` for ONNX, Keras and NumPy candidates: the one-layer repro it writes is run
as a user runs it (`python -m pytest` on the written folder) and passes on the reference layer,
fails on a bugged one naming the same local error that replay finds."""
import importlib
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import tracediff as td  # noqa: E402
from tracediff.adapters import torch as tdt  # noqa: E402
from tracediff.cli import main  # noqa: E402
from tracediff.trace import open_trace  # noqa: E402

PYTEST = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--import-mode=importlib"]


def run_repros(folder, *tests):
    """The written pytest files run in a fresh interpreter, as a user would; (exit status,
    output)."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}
    done = subprocess.run(PYTEST + list(tests), capture_output=True, text=True, cwd=folder,
                          env=env, timeout=120)
    return done.returncode, done.stdout + done.stderr


def local_of(report, a_name):
    return next(p.local for p in report.pairs if p.kind == "forward" and p.a_name == a_name)


def import_ports(tmp_path, monkeypatch, name, source):
    """The candidates' module ``name`` written in ``tmp_path`` (the working folder from here on,
    as a user's project would be) and imported, so ``--candidate name:object`` finds it."""
    (tmp_path / f"{name}.py").write_text(source)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    return importlib.import_module(name)


def mlp_reference(tmp_path, dtype):
    """The torch MLP the Keras and NumPy ports copy, its parameters saved (as ``dtype``) where
    the ports load them, and its trace ``ref.h5`` on the input it returns."""
    torch.manual_seed(0)
    reference = torch.nn.Sequential(torch.nn.Linear(7, 11), torch.nn.Tanh(), torch.nn.Linear(11, 5))
    np.savez(tmp_path / "weights.npz", **{key: p.detach().numpy().astype(dtype) for key, p in
                                          zip(("w1", "b1", "w2", "b2"), reference.parameters())})
    x = torch.randn(3, 7, generator=torch.Generator().manual_seed(7))
    tdt.record(reference, x, tmp_path / "ref.h5")
    return x


ONNX_PORTS = '''import copy, torch
torch.manual_seed(0)
model = torch.nn.Sequential(
    torch.nn.Conv2d(3, 5, 3, padding=1), torch.nn.ReLU(),
    torch.nn.Sequential(torch.nn.Conv2d(5, 7, 3, padding=1), torch.nn.Tanh()),
    torch.nn.Flatten(), torch.nn.Linear(7 * 6 * 6, 11)).eval()
bad = copy.deepcopy(model)
with torch.no_grad():
    bad[2][0].weight.mul_(1.02)
'''


def test_an_onnx_repro_is_a_one_node_model_that_fails_on_the_bug_only(tmp_path, monkeypatch):
    """The export of a torch CNN with one conv weight scaled by 2%: the repro of that node (and
    of the module holding it, two nodes) fails with replay's local error; the clean export's
    passes. The written .onnx runs alone: inputs named as the case's records."""
    pytest.importorskip("onnxruntime")
    from tracediff.adapters import onnx as tdo
    ports = import_ports(tmp_path, monkeypatch, "onnx_ports", ONNX_PORTS)
    x = torch.randn(2, 3, 6, 6, generator=torch.Generator().manual_seed(1))
    tdt.record(ports.model, x, "ref.h5")
    for name in ("model", "bad"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(getattr(ports, name), (x,), f"{name}.onnx", dynamo=False)
        tdo.record(f"{name}.onnx", {"input.1": x.numpy()}, f"{name}.h5")
        for layer in ("/2/2.0/Conv", "2"):
            assert main(["extract", f"{name}.h5", "ref.h5", "--layer", layer, "--candidate",
                         f"{name}.onnx", "--out", f"repro_{name}"]) == 0
    assert sorted(p.name for p in (tmp_path / "repro_bad").iterdir()) == [
        "2.h5", "2.onnx", "2_2_0_Conv.h5", "2_2_0_Conv.onnx", "test_2.py", "test_2_2_0_Conv.py"]

    import onnx
    one = onnx.load(tmp_path / "repro_bad" / "2_2_0_Conv.onnx")
    onnx.checker.check_model(one)
    assert [n.op_type for n in one.graph.node] == ["Conv"]
    assert [i.name for i in one.graph.input] == ["arg:0"]
    assert [n.op_type for n in onnx.load(tmp_path / "repro_bad" / "2.onnx").graph.node] \
        == ["Conv", "Tanh"]
    with open_trace(tmp_path / "repro_bad" / "2_2_0_Conv.h5") as case:
        assert [r.name for r in case if r.kind == "input"] == ["arg:0"]
        assert sorted(r.name for r in case if r.kind == "param") == ["2.0.bias", "2.0.weight"]

    replayed = local_of(td.replay(str(tmp_path / "bad.onnx"), "ref.h5"), "/2/2.0/Conv")
    status, out = run_repros(tmp_path, "repro_bad/test_2_2_0_Conv.py", "repro_model/test_2_2_0_Conv.py",
                             "repro_bad/test_2.py", "repro_model/test_2.py")
    assert status == 1, out
    assert ("AssertionError: /2/2.0/Conv of bad.onnx on the reference's inputs differs from the "
            f"reference: local rel_l2 {replayed['rel_l2']:.3g}, ") in out
    assert "AssertionError: 2 of bad.onnx on the reference's inputs differs" in out
    assert "2 failed, 2 passed" in out
    assert "FAILED repro_bad/test_2.py" in out and "FAILED repro_bad/test_2_2_0_Conv.py" in out


KERAS_PORTS = '''import os
import numpy as np
import keras

WEIGHTS = np.load(os.path.join(os.path.dirname(__file__), "weights.npz"))


def build(kernel_scale=1.0):
    model = keras.Sequential([keras.Input((7,)), keras.layers.Dense(11, name="fc1"),
                              keras.layers.Activation("tanh", name="act"),
                              keras.layers.Dense(5, name="fc2")], name="mlp")
    model.get_layer("fc1").set_weights([WEIGHTS["w1"].T, WEIGHTS["b1"]])
    model.get_layer("fc2").set_weights([WEIGHTS["w2"].T * kernel_scale, WEIGHTS["b2"]])
    return model


model = build()
bad = build(kernel_scale=1.01)
'''


def test_a_keras_repro_fails_on_the_bug_only(tmp_path, monkeypatch):
    """A Keras port of a torch MLP whose last Dense kernel is 1% off: its repro fails with
    replay's local error; the correct port's passes."""
    pytest.importorskip("tensorflow")
    from tracediff.adapters import tensorflow as tdtf
    x = mlp_reference(tmp_path, np.float32)
    ports = import_ports(tmp_path, monkeypatch, "keras_ports", KERAS_PORTS)
    for name in ("model", "bad"):
        tdtf.record(getattr(ports, name), x.numpy(), f"{name}.h5")
        assert main(["extract", f"{name}.h5", "ref.h5", "--layer", "fc2", "--candidate",
                     f"keras_ports:{name}", "--out", f"repro_{name}"]) == 0
    with open_trace(tmp_path / "repro_bad" / "fc2.h5") as case:
        assert [r.name for r in case if r.kind == "input"] == ["arg:0", "kwarg:training"]
        assert [r.meta["variable"] for r in case if r.kind == "param"] == ["mlp/fc2/kernel", "mlp/fc2/bias"]
    replayed = local_of(td.replay(ports.bad, "ref.h5"), "fc2")
    status, out = run_repros(tmp_path, "repro_bad/test_fc2.py", "repro_model/test_fc2.py")
    assert status == 1, out
    assert ("AssertionError: fc2 of keras_ports:bad on the reference's inputs differs from the "
            f"reference: local rel_l2 {replayed['rel_l2']:.3g}, ") in out
    assert "1 failed, 1 passed" in out and "FAILED repro_bad/test_fc2.py" in out


NUMPY_PORTS = '''import os
import numpy as np

W = np.load(os.path.join(os.path.dirname(__file__), "weights.npz"))


def dense(w, b):
    return lambda h: h @ w.T + b


layers = {"0": dense(W["w1"], W["b1"]), "1": np.tanh, "2": dense(W["w2"], W["b2"])}
bad_layers = {**layers, "2": lambda h: h @ W["w2"].T}        # the bug: no bias


def port(rec, x):
    h = x
    for name in ("0", "1", "2"):
        h = layers[name](h)
        rec.forward(name, h)
    return h
'''


def test_a_numpy_repro_runs_the_ports_layer_named_as_in_layers(tmp_path, monkeypatch, capsys):
    """A NumPy port's layers are named as td.replay's ``layers=`` (the record names): the
    repro of the layer missing its bias fails with the bias hint's local error."""
    from tracediff.replays.case import check_case
    x = mlp_reference(tmp_path, np.float64)
    ports = import_ports(tmp_path, monkeypatch, "numpy_ports", NUMPY_PORTS)
    from tracediff.adapters import numpy as tdn
    tdn.record(ports.port, x.double().numpy(), "port.h5")
    for spec in ("numpy_ports:layers", "numpy_ports:bad_layers"):
        assert main(["extract", "port.h5", "ref.h5", "--layer", "2", "--candidate", spec,
                     "--out", spec.replace(":", "_")]) == 0
    check_case(tmp_path / "numpy_ports_layers" / "2.h5")
    replayed = local_of(td.replay(ports.port, "ref.h5", layers=ports.bad_layers), "2")
    with pytest.raises(AssertionError, match=f"2 of numpy_ports:bad_layers on the reference's inputs "
                       f"differs from the reference: local rel_l2 {replayed['rel_l2']:.3g}, "):
        check_case(tmp_path / "numpy_ports_bad_layers" / "2.h5")
    assert main(["extract", "port.h5", "ref.h5", "--layer", "2", "--candidate", "numpy_ports:port",
                 "--out", "x"]) == 2
    assert capsys.readouterr().err.strip() == (
        "tracediff extract: error: --candidate 'numpy_ports:port' is a function of (rec, x), not "
        "a model: name the model, a function of no arguments that returns it, or for a NumPy "
        "port its layers dict {record name: fn(*inputs)}")


CNN_PORTS = '''from torch_references import torch_cnn
from test_tensorflow_vs_torch import keras_cnn
reference = torch_cnn()
port = keras_cnn(reference)
bad = keras_cnn(reference, reorder_flatten=False)
'''


def test_a_channels_last_keras_repro_gets_the_references_values_in_its_own_layout(
        tmp_path, monkeypatch):
    """A channels-last Keras port of a torch CNN: the repro of its Dense layer is fed the
    reference's NCHW activations flattened in the port's H, W, C order, and expects the
    reference's output; it passes for the port and fails for the one whose kernel was not
    reordered for that flatten (run in this process: the Keras test above runs one in a fresh
    interpreter)."""
    pytest.importorskip("tensorflow")
    from tracediff.adapters import tensorflow as tdtf
    from tracediff.replays.case import check_case
    from torch_references import DIMS
    cnn_ports = import_ports(tmp_path, monkeypatch, "cnn_ports", CNN_PORTS)
    x = np.random.default_rng(2).standard_normal((3, 2, 5, 7)).astype(np.float32)
    tdt.record(cnn_ports.reference, torch.from_numpy(x), "ref.h5", dims=DIMS)
    for name in ("port", "bad"):
        tdtf.record(getattr(cnn_ports, name), x.transpose(0, 2, 3, 1), f"{name}.h5", dims=DIMS)
        assert main(["extract", f"{name}.h5", "ref.h5", "--layer", "fc", "--candidate",
                     f"cnn_ports:{name}", "--out", name]) == 0
    with open_trace(tmp_path / "port" / "fc.h5") as case:
        assert tuple(case.get("arg:0", kind="input").shape) == (3, 5 * 7 * 11)
    check_case(tmp_path / "port" / "fc.h5")
    with pytest.raises(AssertionError, match="fc of cnn_ports:bad on the reference's inputs "
                                             "differs from the reference: local rel_l2 "):
        check_case(tmp_path / "bad" / "fc.h5")
