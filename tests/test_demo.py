"""``tracediff demo``: records the planted-bug ports and their references, finds the bugs
(exit status 1), prints the report and writes self-contained HTML."""
import importlib.util
import json

import pytest

from tracediff.cli import main
from tracediff.demo.run import CASES, run_demo

HAS_TORCH = importlib.util.find_spec("torch") is not None


def _check_outputs(out):
    assert (out / "index.html").exists()
    for case in CASES:
        page = (out / case.name / "report.html").read_text(encoding="utf-8")
        assert '<svg id="error-plot"' in page and "<script src" not in page
        report = json.loads((out / case.name / "report.json").read_text(encoding="utf-8"))
        assert report["ok"] is (not case.bugs), case.name
        assert (out / case.name / "report.md").read_text(encoding="utf-8").startswith("## tracediff: ")
    missing_bias = json.loads((out / "mlp-missing-bias" / "report.json").read_text(encoding="utf-8"))
    assert missing_bias["first_divergence"]["forward"]["b_name"] == "fc2"
    flatten = json.loads((out / "cnn-flatten-order" / "report.json").read_text(encoding="utf-8"))
    assert flatten["first_divergence"]["forward"]["b_name"] == "flatten"


@pytest.mark.skipif(not HAS_TORCH, reason="torch not installed: the demo's torch references cannot be recorded")
def test_demo_cli_finds_the_bugs_against_torch(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out)]) == 1
    text = capsys.readouterr().out
    assert "against PyTorch float32 references" in text
    assert "mlp-correct ok" in text
    assert "forward: fc2 diverged" in text                      # the missing bias
    assert "forward: relu0 ↔ act1" not in text                  # the derivative bug is backward only
    assert "backward: dense0 ↔ fc1 diverged" in text
    assert "param_grad: fc2.weight diverged" in text
    assert f"HTML reports: {out / 'index.html'}" in text
    port, ref = out / "mlp-missing-bias" / "port.h5", out / "mlp-missing-bias" / "reference.h5"
    assert f"whole report: tracediff diff {port} {ref}" in text
    _check_outputs(out)
    assert json.loads((out / "mlp-correct" / "report.json").read_text())["b"]["framework"] == "torch"


def test_demo_falls_back_to_numpy_references(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("tracediff.demo.run.torch_available", lambda: False)  # as if not installed
    out = tmp_path / "demo"
    assert run_demo(out) == 1
    assert "against NumPy float64 (torch is not installed) references" in capsys.readouterr().out
    _check_outputs(out)
    assert json.loads((out / "mlp-correct" / "report.json").read_text())["b"]["framework"] == "numpy"


def _console(buffer):
    from rich.console import Console
    return Console(file=buffer, highlight=False, soft_wrap=True, width=100)


def test_demo_full_prints_each_whole_report(tmp_path):
    import io

    import tracediff as td
    from tracediff.demo.run import Case

    out, printed, engine_text = tmp_path / "demo", io.StringIO(), io.StringIO()
    cases = (Case("mlp-missing-bias", "mlp", ("missing_bias",)),)
    assert run_demo(out, use_torch=False, cases=cases, full=True, console=_console(printed)) == 1
    text = printed.getvalue()
    folder = out / "mlp-missing-bias"
    td.diff(folder / "port.h5", folder / "reference.h5").render(console=_console(engine_text))
    assert engine_text.getvalue().strip() and engine_text.getvalue() in text
    assert "whole report:" not in text


def test_demo_out_that_is_a_file_is_one_line_error(tmp_path, capsys):
    target = tmp_path / "taken"
    target.write_text("x")
    assert main(["demo", "--out", str(target), "--numpy-reference"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"tracediff demo: error: cannot create the demo folder {target}: ")
    assert err.endswith("; choose another --out\n") and err.count("\n") == 1


@pytest.mark.skipif(not HAS_TORCH, reason="the Flax and LiteRT ports are diffed against torch")
def test_demo_ports_in_other_runtimes_are_named_at_their_bug(tmp_path, capsys):
    """--ports jax,litert: a Flax CNN port whose Dense kernel was not reordered for the
    channels-last flatten, and a LiteRT conversion of the MLP without fc2's bias."""
    pytest.importorskip("flax")
    pytest.importorskip("ai_edge_litert")
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--ports", "jax,litert"]) == 1
    text = capsys.readouterr().out
    assert "Flax, LiteRT ports with planted bugs against PyTorch float32 references" in text
    assert "mlp-correct" not in text
    flax = json.loads((out / "cnn-jax-flatten-kernel" / "report.json").read_text())
    # the NHWC activations and the flatten pair through their layouts: only fc is wrong
    assert flax["first_divergence"]["forward"]["b_name"] == "fc"
    assert flax["a"]["framework"] == "jax" and flax["b"]["framework"] == "torch"
    litert = json.loads((out / "mlp-litert-missing-bias" / "report.json").read_text())
    forward = litert["first_divergence"]["forward"]
    # fc2 and the ReLU layer after it are one fused TFLite op, named after the ReLU it ends in
    assert (forward["a_name"], forward["b_name"]) == ("mlp_1/act2_1/Relu", "act2")
    assert main(["demo", "--out", str(out), "--ports", "numpy,tpu"]) == 2
    assert "unknown port 'tpu': --ports takes numpy, jax, litert" in capsys.readouterr().err
