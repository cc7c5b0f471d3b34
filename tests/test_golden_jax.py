"""A golden trace of Flax models through the pytest plugin: a Linen module (its variables as
``params=``) and an NNX module write their golden traces, match them on the next run, and fail
naming the layer whose bias was perturbed (pytester sessions, in process)."""
import os
import re

import pytest

pytest.importorskip("jax")
pytest.importorskip("flax")

# In-process pytester sessions drop the modules they import when they end; jax cannot be
# imported twice in one process, so everything the fixture loads is imported here first.
import flax.linen  # noqa: E402,F401
import flax.nnx  # noqa: E402,F401
import jax  # noqa: E402,F401
import tracediff.adapters.jax  # noqa: E402,F401
import tracediff.compare  # noqa: E402,F401
import tracediff.golden  # noqa: E402,F401

pytest_plugins = ["pytester"]

MODELS = '''
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

PERTURB = float(os.environ.get("GOLDEN_PERTURB", "0"))
X = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)


class Act(nn.Module):
    def __call__(self, x):
        return nn.relu(x)


class LinenMLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(2, name="fc2")(Act(name="act")(nn.Dense(6, name="fc1")(x)))


class NnxMLP(nnx.Module):
    def __init__(self):
        rngs = nnx.Rngs(0)
        self.fc1, self.fc2 = nnx.Linear(4, 6, rngs=rngs), nnx.Linear(6, 2, rngs=rngs)
        self.fc2.bias[...] = self.fc2.bias[...] + PERTURB

    def __call__(self, x):
        return self.fc2(jax.nn.relu(self.fc1(x)))


def test_linen(golden_trace):
    model = LinenMLP()
    variables = model.init(jax.random.key(0), X)
    variables["params"]["fc2"]["bias"] = variables["params"]["fc2"]["bias"] + PERTURB
    golden_trace.check(model, X, loss_fn=lambda out: jnp.mean(out ** 2), params=variables)


def test_nnx(golden_trace):
    golden_trace.check(NnxMLP(), X, loss_fn=lambda out: jnp.mean(out ** 2))
'''


def test_flax_linen_and_nnx_through_the_golden_fixture(pytester, monkeypatch):
    import tracediff as td

    pytester.makepyfile(test_models=MODELS)
    monkeypatch.delenv("GOLDEN_PERTURB", raising=False)
    first = pytester.runpytest()
    first.assert_outcomes(failed=2)
    first.stdout.fnmatch_lines_random([f"traces/test_models/test_{name}.h5" for name in ("linen", "nnx")])
    for name in ("linen", "nnx"):
        with td.open(os.path.join(pytester.path, "traces", "test_models", f"test_{name}.h5")) as t:
            assert t.framework == "jax"
            assert {"fc1", "fc2", "<root>"} <= {r.name for r in t.records("backward")}

    pytester.runpytest().assert_outcomes(passed=2)

    monkeypatch.setenv("GOLDEN_PERTURB", "0.5")
    broken = pytester.runpytest()
    broken.assert_outcomes(failed=2)
    text = broken.stdout.str()
    for name in ("linen", "nnx"):
        section = _section(text, f"test_{name}")
        assert re.search(r"^first diverging forward: fc2 diverged, introduced here", section, re.M), name


def _section(text, test):
    match = re.search(rf"_+ {test} _+\n(.*?)(?=\n_+ test_|\n=+ short test summary)", text, re.S)
    assert match, f"no failure section for {test}"
    return match.group(1)
