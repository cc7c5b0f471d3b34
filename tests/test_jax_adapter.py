"""tracediff.adapters.jax on its own: recording changes no numerics (bitwise, jitted or not),
names structured outputs and repeated calls, records the dataflow, the x64 and matmul-precision
settings, and refuses bad input in one line."""
import json

import numpy as np
import pytest

jax = pytest.importorskip("jax")
pytest.importorskip("flax")

import flax.linen as nn  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402

import tracediff as td  # noqa: E402
from tracediff.adapters import jax as tdj  # noqa: E402
from tracediff.adapters.base import framework_of  # noqa: E402
from tracediff.errors import TraceDiffError  # noqa: E402

X = np.random.default_rng(0).standard_normal((3, 7)).astype(np.float32)


class Block(nn.Module):
    @nn.compact
    def __call__(self, x):
        h = nn.Dense(5, name="proj")(x)
        return {"hidden": nn.gelu(h), "pair": (h, jnp.tanh(h))}


class Encoder(nn.Module):
    @nn.compact
    def __call__(self, x):
        shared = nn.Dense(7, name="shared")
        out = Block(name="layers_0")(shared(shared(x)))
        return nn.LayerNorm(epsilon=1e-6, name="norm")(out["hidden"])


class Net(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(11, name="head")(Encoder(name="encoder")(x))


@pytest.fixture(scope="module")
def linen():
    model = Net()
    return model, model.init(jax.random.key(0), X)


def mean_square(out):
    return (out ** 2).mean()


def trace_meta(path):
    return json.loads(td.open(path).attrs["meta"])


def records(path):
    return {(r.kind, r.name, r.call): r for r in td.open(path)}


def test_linen_records_every_submodule_by_path_with_structured_outputs(linen, tmp_path):
    model, variables = linen
    tdj.record(model, X, tmp_path / "t.h5", params=variables, loss_fn=mean_square)
    found = records(tmp_path / "t.h5")
    forward = [(r.name, r.call) for r in td.open(tmp_path / "t.h5") if r.kind == "forward"]
    assert forward == [("encoder.shared", 0), ("encoder.shared", 1), ("encoder.layers_0.proj", 0),
                       ("encoder.layers_0:hidden", 0), ("encoder.layers_0:pair:0", 0),
                       ("encoder.layers_0:pair:1", 0), ("encoder.norm", 0), ("encoder", 0),
                       ("head", 0), ("<root>", 0)]
    # the shared Dense: its second call consumed its first call's output
    assert found[("forward", "encoder.shared", 1)].meta["inputs"] == [
        {"kind": "forward", "name": "encoder.shared", "call": 0}]
    assert found[("forward", "encoder.shared", 0)].meta["inputs"] == [
        {"kind": "input", "name": "input", "call": 0}]
    assert found[("forward", "head", 0)].meta["inputs"] == [
        {"kind": "forward", "name": "encoder", "call": 0}]
    assert found[("forward", "encoder.norm", 0)].meta["eps"] == 1e-6
    # dL/d(output) for every float output, both calls of the shared layer included
    assert {(n, c) for k, n, c in found if k == "backward"} == set(forward)
    assert found[("param", "encoder.shared.kernel", 0)].meta["role"] == "weight"
    assert found[("param", "encoder.norm.scale", 0)].meta["role"] == "weight"


def test_backward_records_are_the_gradients_of_each_output(linen, tmp_path):
    """dL/d(head output) by hand: the loss is mean(out**2), so 2*out/size; and dL/d(encoder)
    is that times the head's kernel transposed."""
    model, variables = linen
    out = tdj.record(model, X, tmp_path / "t.h5", params=variables, loss_fn=mean_square)
    found = records(tmp_path / "t.h5")
    expected = 2 * np.asarray(out) / out.size
    np.testing.assert_allclose(found[("backward", "head", 0)].read(), expected, rtol=1e-6)
    kernel = np.asarray(variables["params"]["head"]["kernel"])
    np.testing.assert_allclose(found[("backward", "encoder", 0)].read(), expected @ kernel.T,
                               rtol=1e-5, atol=1e-7)
    grads = jax.grad(lambda p: mean_square(model.apply({"params": p}, X)))(variables["params"])
    np.testing.assert_array_equal(found[("param_grad", "head.kernel", 0)].read(),
                                  np.asarray(grads["head"]["kernel"]))


def test_recording_leaves_the_outputs_bitwise_equal(linen, tmp_path):
    model, variables = linen
    out = tdj.record(model, X, tmp_path / "linen.h5", params=variables, loss_fn=mean_square)
    plain = model.apply(variables, X)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(plain))
    np.testing.assert_array_equal(records(tmp_path / "linen.h5")[("forward", "<root>", 0)].read(),
                                  np.asarray(plain))

    # jitted: both passes compiled; the recorded values are the compiled function's
    jitted = jax.jit(model.apply)
    out = tdj.record(model, X, tmp_path / "jit.h5", params=variables, loss_fn=mean_square, jit=True)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(jitted(variables, X)))
    assert trace_meta(tmp_path / "jit.h5")["jit"] is True

    @jax.jit
    def f(params, x):
        h = tdj.tap("hidden", jnp.tanh(x @ params["w"]))
        return jnp.sin(h) @ params["v"]

    params = {"w": jnp.asarray(np.random.default_rng(1).standard_normal((7, 5)), jnp.float32),
              "v": jnp.asarray(np.random.default_rng(2).standard_normal((5, 2)), jnp.float32)}
    out = tdj.record(f, X, tmp_path / "f.h5", params=params, loss_fn=lambda o: o.sum())
    np.testing.assert_array_equal(np.asarray(out), np.asarray(f(params, X)))
    found = records(tmp_path / "f.h5")
    assert [n for k, n, _ in found if k == "forward"] == ["hidden", "<root>"]
    np.testing.assert_array_equal(found[("forward", "hidden", 0)].read(),
                                  np.asarray(jax.jit(lambda x: jnp.tanh(x @ params["w"]))(X)))
    # dL/d hidden = d sum(sin(h) @ v) / dh = cos(h) * (v summed over outputs)
    h = found[("forward", "hidden", 0)].read()
    np.testing.assert_allclose(found[("backward", "hidden", 0)].read(),
                               np.cos(h) * np.asarray(params["v"]).sum(axis=1), rtol=1e-5)
    assert trace_meta(tmp_path / "f.h5")["jit"] is True


def test_nnx_module_is_recorded_without_touching_it(tmp_path):
    class Model(nnx.Module):
        def __init__(self):
            rngs = nnx.Rngs(0)
            self.conv = nnx.Conv(2, 11, (3, 5), rngs=rngs)
            self.norm = nnx.BatchNorm(11, use_running_average=True, rngs=rngs)
            self.out = nnx.Linear(11, 13, rngs=rngs)

        def __call__(self, x):
            return self.out(self.norm(self.conv(x)).mean(axis=(1, 2)))

    model = Model()
    images = np.random.default_rng(3).standard_normal((3, 5, 7, 2)).astype(np.float32)
    out = tdj.record(model, images, tmp_path / "n.h5", loss_fn=mean_square)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(model(images)))
    assert type(model.conv) is nnx.Conv     # the copy was tapped, not the user's module
    found = records(tmp_path / "n.h5")
    assert found[("forward", "conv", 0)].meta["layout"] == "NHWC"
    assert found[("forward", "norm", 0)].meta["inputs"] == [{"kind": "forward", "name": "conv", "call": 0}]
    assert found[("param", "conv.kernel", 0)].meta["layout"] == "HWIO"
    assert found[("param", "out.kernel", 0)].meta["layout"] == "IO"
    assert found[("param", "norm.mean", 0)].meta["role"] == "running_mean"
    assert ("param_grad", "norm.mean", 0) not in found and ("param_grad", "norm.scale", 0) in found

    # jitted: the plain compiled module's output, bitwise
    out = tdj.record(model, images, tmp_path / "jit.h5", loss_fn=mean_square, jit=True,
                     include=["conv", "norm*"])
    graphdef, state = nnx.split(model)
    plain = jax.jit(lambda state, x: nnx.merge(graphdef, state)(x))(state, images)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(plain))
    assert {(k, n) for k, n, _ in records(tmp_path / "jit.h5") if k in ("forward", "param")} == {
        ("forward", "conv"), ("forward", "norm"), ("param", "norm.scale"), ("param", "norm.bias"),
        ("param", "norm.mean"), ("param", "norm.var"),
        ("param", "conv.kernel"), ("param", "conv.bias")}   # kept by their module path "conv"


def test_trace_meta_says_whether_x64_is_on_and_the_matmul_precision(tmp_path):
    def f(params, x):
        return x @ params

    params = np.ones((7, 2))
    tdj.record(f, X.astype(np.float64), tmp_path / "32.h5", params=params)
    meta = trace_meta(tmp_path / "32.h5")
    assert (meta["x64"], meta["default_matmul_precision"]) == (False, "default")
    # without x64, JAX made the float64 input float32: the trace says so
    assert records(tmp_path / "32.h5")[("input", "input", 0)].dtype == "float32"
    with jax.enable_x64(True), jax.default_matmul_precision("highest"):
        tdj.record(f, X.astype(np.float64), tmp_path / "64.h5", params=params)
    meta = trace_meta(tmp_path / "64.h5")
    assert (meta["x64"], meta["default_matmul_precision"]) == (True, "highest")
    assert records(tmp_path / "64.h5")[("forward", "<root>", 0)].dtype == "float64"


def test_framework_of_recognises_flax_modules_and_jitted_functions(linen):
    assert framework_of(linen[0]) == "jax"
    assert framework_of(nnx.Linear(2, 3, rngs=nnx.Rngs(0))) == "jax"
    assert framework_of(jax.jit(lambda p, x: x)) == "jax"
    assert framework_of(lambda rec, inputs: None) == "numpy"


@pytest.mark.parametrize("call, message", [
    (lambda m, v, p: tdj.record(m, X, p), "needs its variables: pass params=module.init(key, x)"),
    (lambda m, v, p: tdj.record(m, X, p, params=v, loss_fn=lambda o: o),
     "loss_fn returned an array of shape (3, 11): it must be a scalar"),
    (lambda m, v, p: tdj.record(m, X[:, :4], p, params=v),
     "running linen Net on inputs of shape (3, 4) failed:"),
    (lambda m, v, p: tdj.record(42, X, p), "jax.record needs a Flax module or a JAX function, got int"),
    (lambda m, v, p: tdj.record(lambda params, x: x, X, p),
     "needs its parameters: pass params=<pytree>"),
])
def test_bad_input_is_one_line(linen, tmp_path, call, message):
    model, variables = linen
    with pytest.raises(TraceDiffError) as info:
        call(model, variables, tmp_path / "bad.h5")
    assert message in str(info.value)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "bad.h5").exists()
