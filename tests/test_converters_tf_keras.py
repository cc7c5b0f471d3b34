"""tf-keras (Keras 2, what converters such as nobuco still produce) records the same weight names,
roles, layouts and settings as Keras 3. Keras 2 is selected by TF_USE_LEGACY_KERAS=1 before
TensorFlow is imported, so each side runs in its own subprocess."""
import importlib.util
import json
import os
import subprocess
import sys

import pytest

import tracediff as td

pytest.importorskip("tensorflow")
SIDE = os.path.join(os.path.dirname(__file__), "converters", "keras_side.py")


def _record_keras2(path):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", TF_USE_LEGACY_KERAS="1")
    proc = subprocess.run([sys.executable, SIDE, str(path)], capture_output=True, text=True,
                          timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])["keras"]


def _described(path):
    keys = ("role", "layout", "module", "op_type", "eps", "momentum", "pad")
    return [(r.kind, r.name, r.shape, {k: r.meta.get(k) for k in keys})
            for r in td.open(str(path)) if r.kind in ("param", "forward")]


@pytest.mark.skipif(importlib.util.find_spec("tf_keras") is None,
                    reason="tf-keras not installed (pip install --no-deps tf-keras, see constraints-dev.txt)")
def test_tf_keras_records_weights_as_keras3_does(tmp_path):
    assert _record_keras2(tmp_path / "keras2.h5").startswith("tf_keras")
    spec = importlib.util.spec_from_file_location("keras_side", SIDE)
    side = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(side)
    side.main(str(tmp_path / "keras3.h5"))      # this process runs Keras 3
    keras2, keras3 = _described(tmp_path / "keras2.h5"), _described(tmp_path / "keras3.h5")
    assert keras2 == keras3
    params = {name: meta for kind, name, _, meta in keras2 if kind == "param"}
    assert params["conv/kernel"]["layout"] == "HWIO" and params["conv/kernel"]["module"] == "conv"
    assert params["fc/kernel"]["layout"] == "IO" and params["fc/kernel"]["role"] == "weight"
    assert params["bn/moving_variance"]["role"] == "running_var"
    forward = {name: meta for kind, name, _, meta in keras2 if kind == "forward"}
    # Keras' defaults, in the units torch uses: eps 1e-3, momentum 0.99 -> 0.01
    assert forward["bn"]["eps"] == pytest.approx(1e-3) and forward["bn"]["momentum"] == pytest.approx(0.01)
    # "same" with stride 2 and kernel 3 on 8 pixels pads one pixel, after: not torch's padding=1
    assert forward["conv"]["pad"] == [[0, 1], [0, 1]]
