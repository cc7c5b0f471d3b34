"""Layer replay of Flax ports against their torch references: each submodule run on the torch
reference's values (rearranged to channels-last), every porting bug its own root cause."""
import pytest

torch = pytest.importorskip("torch")
jax = pytest.importorskip("jax")
pytest.importorskip("flax")

import jax.numpy as jnp  # noqa: E402

import tracediff as td  # noqa: E402
from test_jax_vs_torch import (LinenCNN, LinenMLP, NnxMLP, cnn_reference, features,  # noqa: E402,F401
                               images, jax_loss, linen_cnn_variables, linen_mlp_variables,
                               mlp_reference)


def test_a_correct_channels_last_port_has_no_root_cause(cnn_reference, images):
    reference, path, _ = cnn_reference
    port = LinenCNN().bind(linen_cnn_variables(reference))   # a bound module carries its variables
    report = td.replay(port, path, inputs=images.transpose(0, 2, 3, 1), loss_fn=jax_loss)
    assert report.ok and report.root_causes == []
    local = {p.a_name: p.local["status"] for p in report.pairs if p.kind == "forward"}
    assert local == {"conv": "ok", "bn": "ok", "act": "ok", "pool": "ok", "flat": "ok", "fc": "ok",
                     "<root>": "ok"}


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
