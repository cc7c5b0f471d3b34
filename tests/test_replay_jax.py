"""Layer replay of Flax ports against their torch references: each submodule run on the torch
reference's values (rearranged to channels-last), every porting bug its own root cause."""
import json

import pytest

torch = pytest.importorskip("torch")
jax = pytest.importorskip("jax")
pytest.importorskip("flax")

import jax.numpy as jnp  # noqa: E402

import tracediff as td  # noqa: E402
from test_jax_vs_torch import (LinenCNN, LinenMLP, NnxMLP, cnn_reference, features,  # noqa: E402,F401
                               images, jax_loss, linen_cnn_variables, linen_mlp_variables,
                               mlp_reference, relu_wrong_grad)


def test_a_correct_channels_last_port_has_no_root_cause(cnn_reference, images):
    reference, path, _ = cnn_reference
    port = LinenCNN().bind(linen_cnn_variables(reference))   # a bound module carries its variables
    report = td.replay(port, path, inputs=images.transpose(0, 2, 3, 1), loss_fn=jax_loss)
    assert report.ok and report.root_causes == []
    local = {p.a_name: p.local["status"] for p in report.pairs if p.kind == "forward"}
    assert local == {"conv": "ok", "bn": "ok", "act": "ok", "pool": "ok", "flat": "ok", "fc": "ok",
                     "<root>": "ok"}
    # backward too, by one jax.vjp of the substituted run: every parameter gradient (HWIO
    # kernels, the Dense kernel reordered for the NHWC flatten) and dL/d(input) of each module
    # but what the loss consumes
    backward = {(p.kind, p.a_name): p.local["status"] for p in report.pairs
                if p.kind in ("backward", "param_grad") and p.local is not None}
    assert backward == {**{("param_grad", name): "ok" for name in (
        "conv.kernel", "conv.bias", "bn.scale", "bn.bias", "fc.kernel", "fc.bias")},
        **{("backward", name): "ok" for name in ("conv", "bn", "act", "pool", "flat")}}


def test_a_wrong_custom_vjp_is_named_at_its_module(mlp_reference):
    """An activation whose ``jax.custom_vjp`` halves the gradient: the forward is right, replay
    names dL/d of the activation's input, by the activation, and nothing else."""
    reference, path, _ = mlp_reference
    port = LinenMLP(activation=relu_wrong_grad).bind(linen_mlp_variables(reference))
    report = td.replay(port, path, loss_fn=jax_loss)
    assert report.first_divergence.forward is None
    assert [(c["kind"], c["a_name"], c["by"]) for c in report.root_causes] == [
        ("backward", "fc1", "act")]
    assert report.root_causes[0]["hint"].startswith("a = 0.5 x b")


def test_two_porting_bugs_are_two_root_causes(cnn_reference, images):
    """A sigmoid for the ReLU, and the Dense kernel not reordered for the NHWC flatten: the diff
    names the first; replay names both, each at its layer."""
    reference, path, _ = cnn_reference
    port = LinenCNN(activation=jax.nn.sigmoid).bind(
        linen_cnn_variables(reference, reorder_flatten=False))
    report = td.replay(port, path, inputs=images.transpose(0, 2, 3, 1), loss_fn=jax_loss)
    assert report.first_divergence.forward.a_name == "act"
    assert sorted(c["a_name"] for c in report.root_causes) == ["act", "fc"]


def test_nnx_and_linen_mlp_ports_replay(mlp_reference):
    reference, path, _ = mlp_reference
    assert td.replay(NnxMLP(reference), path).root_causes == []
    port = LinenMLP(activation=jnp.tanh).bind(linen_mlp_variables(reference))
    assert [c["a_name"] for c in td.replay(port, path).root_causes] == ["act"]


PORTS = '''
import jax.numpy as jnp
import numpy as np
from flax import nnx


class MLP(nnx.Module):
    def __init__(self, activation):
        rngs = nnx.Rngs(0)
        self.fc1, self.fc2 = nnx.Linear(7, 5, rngs=rngs), nnx.Linear(5, 13, rngs=rngs)
        self.activation = activation

    def __call__(self, x):
        return self.fc2(self.activation(self.fc1(x)))


model = MLP(nnx.relu)
bad = MLP(jnp.tanh)
'''


def test_tracediff_replay_takes_a_flax_module_from_the_command_line(tmp_path, monkeypatch, capsys):
    """The CLI records the NNX module itself (not called as a factory) and names the root cause;
    the reference is the correct port's own trace."""
    from tracediff.adapters import jax as tdj
    from tracediff.cli import main

    (tmp_path / "flax_ports.py").write_text(PORTS)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    import flax_ports
    x = jnp.asarray(flax_ports.np.random.default_rng(0).standard_normal((3, 7)), jnp.float32)
    tdj.record(flax_ports.model, x, tmp_path / "ref.h5")
    assert main(["replay", "flax_ports:model", "ref.h5"]) == 0
    assert main(["replay", "flax_ports:bad", "ref.h5", "--json", "bad.json"]) == 1
    assert "1 root cause(s), worst first:" in capsys.readouterr().out
    # the activation is plain code in the parent, no module: the first module it feeds is named
    causes = json.loads((tmp_path / "bad.json").read_text())["root_causes"]
    assert [c["a_name"] for c in causes] == ["fc2"]
    assert main(["replay", "flax_ports:nothing", "ref.h5"]) == 2
    assert "CANDIDATE: flax_ports has no 'nothing'" in capsys.readouterr().err


# -- plain JAX functions: the values marked with tap are the layers ----------------------------
def mlp_function(params, x, activation=jax.nn.relu, fc2_bias=True):
    from tracediff.adapters import jax as tdj
    h = tdj.tap("fc1", x @ params["fc1"]["kernel"] + params["fc1"]["bias"])
    h = tdj.tap("act", activation(h))
    out = h @ params["fc2"]["kernel"]
    return tdj.tap("fc2", out + params["fc2"]["bias"] if fc2_bias else out)


def mlp_params(reference):
    return linen_mlp_variables(reference)["params"]


def test_a_plain_function_replays_between_its_taps(mlp_reference):
    """Two planted bugs in a plain-function port: tanh for the ReLU and the output bias left out.
    The diff names the first; replay runs each span of code ending in a tap on the reference's
    value of the tap before it, and names both at their taps."""
    from tracediff.adapters import jax as tdj
    reference, path, _ = mlp_reference
    params = mlp_params(reference)
    assert td.replay(tdj.bind(mlp_function, params), path, loss_fn=jax_loss).root_causes == []

    def bad(params, x):
        return mlp_function(params, x, activation=jnp.tanh, fc2_bias=False)

    report = td.replay(tdj.bind(bad, params), path, loss_fn=jax_loss)
    assert report.first_divergence.forward.a_name == "act"
    assert sorted(c["a_name"] for c in report.root_causes) == ["act", "fc2"]
    local = {p.a_name: p.local["status"] for p in report.pairs if p.kind == "forward"}
    # <root> returns what the last tap gave it: the reference's fc2
    assert local == {"fc1": "ok", "act": "diverged", "fc2": "diverged", "<root>": "ok"}
    assert "bias" in next(c["hint"] for c in report.root_causes if c["a_name"] == "fc2")
    # bind also records, and a jitted function replays eagerly all the same
    assert td.replay(tdj.bind(jax.jit(bad), params), path).root_causes == report.root_causes


def test_jnp_code_between_modules_computes_from_the_reference_values(tmp_path):
    """Plain jnp code between a Linen model's Dense layers (tanh and a scale, a relu) has no
    record: replay runs it on the reference's output of the layer before, so a wrong first
    layer is the only root cause, forward and backward, not also the layers after it."""
    import flax.linen as nn
    import numpy as np
    from tracediff.adapters import jax as tdj

    class Model(nn.Module):
        @nn.compact
        def __call__(self, x):
            h = jnp.tanh(nn.Dense(11, name="a")(x)) * 2.0
            return nn.Dense(5, name="c")(jax.nn.relu(nn.Dense(13, name="b")(h)))

    x = np.random.default_rng(0).standard_normal((3, 7)).astype("float32")
    variables = Model().init(jax.random.PRNGKey(0), x)
    bad = jax.tree_util.tree_map(lambda v: v, variables)
    bad["params"]["a"]["kernel"] = variables["params"]["a"]["kernel"] * 1.01

    def loss(output):
        return jnp.mean(output ** 2)

    tdj.record(Model().bind(variables), x, tmp_path / "ref.h5", loss_fn=loss)
    assert td.replay(Model().bind(variables), tmp_path / "ref.h5", loss_fn=loss).root_causes == []
    report = td.replay(Model().bind(bad), tmp_path / "ref.h5", loss_fn=loss)
    assert [(c["kind"], c["b_name"]) for c in report.root_causes] == [("forward", "a")]
    assert {p.b_name: p.local["status"] for p in report.pairs if p.kind == "forward"
            and p.b_name in ("a", "b", "c")} == {"a": "diverged", "b": "ok", "c": "ok"}
