"""The command's exit: the same status as main(), with the interpreter's last garbage search
skipped (the objects left are frozen), for the console script and ``python -m tracediff``."""
import gc
import importlib
import sys
from importlib.metadata import entry_points

import numpy as np
import pytest

import tracediff as td
from tracediff.cli import console_main


@pytest.fixture
def unfrozen():
    gc.unfreeze()
    yield
    gc.unfreeze()  # the test process goes on: its objects must be collectable again


@pytest.fixture
def trace(tmp_path):
    path = tmp_path / "t.h5"
    with td.Recorder(path) as rec:
        rec.forward("fc1", np.arange(6, dtype=np.float32))
    return str(path)


@pytest.mark.parametrize("argv, status", [
    (["show", "{trace}"], 0),
    (["show", "{trace}.missing"], 2),
])
def test_console_main_returns_mains_status_and_freezes(monkeypatch, capsys, unfrozen, trace,
                                                       argv, status):
    monkeypatch.setattr(sys, "argv", ["tracediff", *(a.format(trace=trace) for a in argv)])
    assert gc.get_freeze_count() == 0
    assert console_main() == status
    assert gc.get_freeze_count() > 0


def test_python_dash_m_goes_through_console_main(monkeypatch, capsys, unfrozen, trace):
    monkeypatch.setattr(sys, "argv", ["tracediff", "show", trace])
    with pytest.raises(SystemExit) as exit_:
        importlib.import_module("tracediff.__main__")  # what python -m tracediff runs
    assert exit_.value.code == 0
    assert "fc1" in capsys.readouterr().out
    assert gc.get_freeze_count() > 0


def test_the_installed_command_is_console_main():
    (script,) = entry_points(group="console_scripts", name="tracediff")
    assert script.value == "tracediff.cli:console_main"
