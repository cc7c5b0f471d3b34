"""``tracediff diff``: exit codes 0 / 1 / 2, JSON output, one-line errors."""
import json
import os
import subprocess
import sys


from tracediff.cli import main

from diff_helpers import chain, rng


def traces(tmp_path, scale):
    g = rng(0)
    ref = {"fc1": g.standard_normal((3, 11)), "act": g.standard_normal((3, 11))}
    return chain(tmp_path, ref, {"act": ref["act"] * scale})


def test_exit_0_when_nothing_diverges(tmp_path, capsys):
    a, b = traces(tmp_path, 1.0)
    assert main(["diff", a, b]) == 0
    out = capsys.readouterr().out
    assert out.startswith("OK: 2 aligned pairs match within tolerance")


def test_exit_1_on_divergence_with_report(tmp_path, capsys):
    a, b = traces(tmp_path, 3.0)
    assert main(["diff", a, b]) == 1
    out = capsys.readouterr().out
    assert out.startswith("DIVERGED: first divergence forward at act (diverged) (1 of 2 pairs diverge)")
    assert ">>" in out and "hint: a = 3 x b: a constant scale factor" in out


def test_quiet_prints_the_summary_line_only(tmp_path, capsys):
    a, b = traces(tmp_path, 3.0)
    assert main(["diff", a, b, "--quiet"]) == 1
    assert capsys.readouterr().out == "DIVERGED: first divergence forward at act (diverged) (1 of 2 pairs diverge)\n"


def test_json_output_file_and_stdout(tmp_path, capsys):
    a, b = traces(tmp_path, 3.0)
    out = tmp_path / "r.json"
    assert main(["diff", a, b, "--json", str(out), "--quiet"]) == 1
    assert json.loads(out.read_text())["first_divergence"]["forward"]["b_name"] == "act"
    capsys.readouterr()
    assert main(["diff", a, b, "--json", "-"]) == 1
    assert json.loads(capsys.readouterr().out)["ok"] is False


def test_rtol_flag_changes_the_verdict(tmp_path):
    a, b = traces(tmp_path, 1.001)
    assert main(["diff", a, b, "--quiet"]) == 1
    assert main(["diff", a, b, "--rtol", "0.01", "--atol", "0", "--quiet"]) == 0


def test_exit_2_on_missing_file(tmp_path, capsys):
    a, _ = traces(tmp_path, 1.0)
    missing = str(tmp_path / "nope.h5")
    assert main(["diff", a, missing]) == 2
    assert capsys.readouterr().err == f"tracediff diff: error: cannot open trace {missing}: no such file\n"


def test_exit_2_on_bad_tolerance_file(tmp_path, capsys):
    a, b = traces(tmp_path, 1.0)
    toml = tmp_path / "tol.toml"
    toml.write_text('[tolerances]\n"fc*" = {rtol = -1}\n')
    assert main(["diff", a, b, "--tolerances", str(toml)]) == 2
    assert capsys.readouterr().err == (f"tracediff diff: error: {toml}: tolerance 'fc*' rtol must be a "
                                       "number >= 0, got -1\n")


def test_exit_2_on_bad_arguments(tmp_path, capsys):
    a, b = traces(tmp_path, 1.0)
    assert main(["diff", a, b, "--align", "sideways"]) == 2
    assert capsys.readouterr().err == (
        "tracediff diff: error: argument --align: invalid choice: 'sideways' (choose from 'auto', "
        "'name', 'order') (see tracediff diff --help)\n")


def test_subprocess_exit_code_and_summary(tmp_path):
    a, b = traces(tmp_path, 3.0)
    env = dict(os.environ, COLUMNS="200")
    done = subprocess.run([sys.executable, "-m", "tracediff", "diff", a, b, "--quiet"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 1, done.stderr
    assert done.stdout.startswith("DIVERGED: first divergence forward at act")
    assert done.stderr == ""


class _Terminal:
    """A stderr that says it is a terminal and keeps what is written."""

    def __init__(self):
        import io
        self.buffer = io.StringIO()

    def isatty(self):
        return True

    def write(self, text):
        return self.buffer.write(text)

    def flush(self):
        pass

    fileno = None


def test_progress_bar_on_a_terminal_after_the_delay(tmp_path, monkeypatch, capsys):
    from tracediff.cli import diff as diff_cli

    a, b = traces(tmp_path, 1.0)
    terminal = _Terminal()
    monkeypatch.setattr(diff_cli, "PROGRESS_AFTER_S", 0.0)
    monkeypatch.setattr(sys, "stderr", terminal)
    assert main(["diff", a, b, "--quiet"]) == 0
    assert "comparing" in terminal.buffer.getvalue()


def test_no_progress_bar_when_stderr_is_not_a_terminal(tmp_path, monkeypatch, capsys):
    from tracediff.cli import diff as diff_cli

    a, b = traces(tmp_path, 1.0)
    monkeypatch.setattr(diff_cli, "PROGRESS_AFTER_S", 0.0)
    assert main(["diff", a, b, "--quiet"]) == 0
    assert capsys.readouterr().err == ""
