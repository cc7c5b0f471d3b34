"""The terminal report of a diff without divergences, printed where stdout is not a terminal
(a script, a CI log): written directly, without importing rich, and exactly what rich prints."""
from __future__ import annotations

import io
import sys

import pytest
from rich.console import Console

import tracediff as td
from tracediff.report import terminal

from diff_helpers import rng, write


def _ok_report(folder, name="a.h5", extra=0):
    """Paths relative to ``folder`` (the working directory): short enough for one line."""
    x = rng(1).standard_normal((3, 7)).astype("float32")
    a = write(name, [("forward", "fc1", x)] + [("forward", f"u{i}", x) for i in range(extra)])
    b = write("b.h5", [("forward", "fc1", x), ("forward", "only_b", x)])
    return td.diff(a, b, align="name")


def _rich_text(report):
    buffer = io.StringIO()
    report.render(console=Console(file=buffer, highlight=False, soft_wrap=False))
    return buffer.getvalue()


@pytest.mark.parametrize("extra", [0, 25], ids=["few-unmatched", "unmatched-list-capped"])
def test_plain_ok_report_is_what_rich_prints(tmp_path, capsys, monkeypatch, extra):
    monkeypatch.chdir(tmp_path)
    report = _ok_report(tmp_path, extra=extra)
    assert report.ok and report.unmatched["b"] == ["only_b"]
    imported = "rich.table" in sys.modules
    sys.modules.pop("rich.table", None)
    try:
        report.render()
        assert "rich.table" not in sys.modules   # the plain path did not reach for rich
    finally:
        if imported:
            import rich.table  # noqa: F401
    printed = capsys.readouterr().out
    assert printed == _rich_text(report)
    assert printed.splitlines()[0] == (f"OK: 1 aligned pairs match within tolerance; {extra} "
                                       "record(s) of a and 1 of b unmatched")
    assert printed.splitlines()[-1] == "unmatched in b: only_b"
    if extra:
        assert printed.splitlines()[-2].endswith(", u19, ... (25 in all)")


def test_a_line_rich_would_wrap_goes_through_rich(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    report = _ok_report(tmp_path, name="a" * 170 + ".h5")
    assert max(map(len, terminal.plain_ok_lines(report))) > terminal.PLAIN_WIDTH
    report.render()
    assert capsys.readouterr().out == _rich_text(report)
