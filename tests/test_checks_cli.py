"""``tracediff check TRACE [--json OUT] [--classes N]``: exit 0 pass/warn, 1 a check failed,
2 an error, one line on stderr."""
from __future__ import annotations

import json

import pytest

from checks_nets import mlp_trace
from tracediff.cli import main


def test_healthy_trace_exits_0_and_prints_every_check(tmp_path, capsys):
    path = mlp_trace(str(tmp_path / "ok.h5"), steps=2)
    assert main(["check", path, "--classes", "10"]) == 0
    out = capsys.readouterr().out
    for check_id in ("nonfinite", "gradient_flow", "update_ratio", "train_mode"):
        assert check_id in out
    assert "ok: 0 fail, 0 warn" in out


def test_failed_check_exits_1_and_writes_the_json_report(tmp_path, capsys):
    path = mlp_trace(str(tmp_path / "dead.h5"), bias={1: -10.0})
    out_json = tmp_path / "report.json"
    assert main(["check", path, "--json", str(out_json)]) == 1
    payload = json.loads(out_json.read_text())
    assert payload["schema"] == "tracediff.check/1" and payload["ok"] is False
    dead = next(c for c in payload["checks"] if c["id"] == "dead_units")
    assert (dead["status"], dead["layers"]) == ("fail", ["act1"])
    assert "FAILED" in capsys.readouterr().out


def test_json_to_stdout_is_the_report_alone(tmp_path, capsys):
    path = mlp_trace(str(tmp_path / "ok.h5"))
    assert main(["check", path, "--json", "-", "--only", "nonfinite"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert [c["id"] for c in payload["checks"]] == ["nonfinite"]


def test_warnings_alone_exit_0(tmp_path):
    path = mlp_trace(str(tmp_path / "w.h5"), scale=0.01)   # activations collapse: a warning
    assert main(["check", path, "--only", "activation_spread"]) == 0


@pytest.mark.parametrize("argv, text", [
    (["check", "{tmp}/absent.h5"], "tracediff check: error: cannot open trace"),
    (["check", "{tmp}/ok.h5", "--classes", "one"], "--classes takes an integer >= 2, got 'one'"),
    (["check", "{tmp}/ok.h5", "--classes", "1"], "--classes takes an integer >= 2, got 1"),
    (["check", "{tmp}/ok.h5", "--only", "bogus"], "unknown check id(s) 'bogus'"),
    (["check", "{tmp}/ok.h5", "--json", "{tmp}/no/such/dir/r.json"], "cannot write the JSON report"),
])
def test_errors_exit_2_with_one_line(tmp_path, capsys, argv, text):
    mlp_trace(str(tmp_path / "ok.h5"))
    assert main([a.format(tmp=tmp_path) for a in argv]) == 2
    err = capsys.readouterr().err
    assert text in err and err.count("\n") == 1

