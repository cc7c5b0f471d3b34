"""Golden traces as pytest regression fixtures: ``golden_trace.check(model, inputs)`` records the
model, diffs the run against ``<root>/<test module>/<test name>[-<name>].h5`` and fails the test
with the first diverging layer. ``tracediff/pytest_plugin.py`` wires it into pytest;
``docs/golden.md`` shows it at work."""
from __future__ import annotations

import os
import shutil
import tempfile

from ..errors import TraceDiffError
from . import adapters, environment, message
from .session import NAME, Ledger, golden_path, key_of, obtained_path

__all__ = ["GoldenTrace", "Ledger", "Mode", "key_of"]


class Mode:
    """What to do with golden traces: check (default), ``regen`` (rewrite missing and failing,
    still fail them) or ``regen_all`` (rewrite every one checked, pass)."""

    CHECK, REGEN, REGEN_ALL = "check", "regen", "regen_all"


class GoldenTrace:
    """The ``golden_trace`` fixture of one test."""

    def __init__(self, key, ledger: Ledger, mode=Mode.CHECK, fail=None):
        self.key = key
        self.ledger = ledger
        self.mode = mode
        self._fail = fail or _raise_assertion
        self._names = set()

    def path(self, name=None) -> str:
        """The golden trace ``check(..., name=name)`` compares against."""
        return os.path.abspath(golden_path(self.ledger.root, self.key, _check_name(name)))

    def check(self, model, inputs, loss_fn=None, name=None, rtol=None, atol=None,
              per_layer=None, values=True, **options):
        """Record ``model`` on ``inputs`` and compare with the golden trace; returns the diff
        report when it matches (None when the golden trace was just written).

        ``per_layer``: ``{"glob": {"rtol": .., "atol": ..}}`` (``"backward:fc*"`` limits a glob
        to one record kind) or a TOML file of the same. ``values=False`` keeps statistics and a
        seeded sample only, for big models. ``options`` go to the adapter's ``record``.
        """
        golden = self.path(name)
        if golden in self._names:
            raise TraceDiffError(
                f"golden_trace.check called twice with name={name!r} in one test ({golden}); "
                "give each check its own name=")
        self.ledger.used.add(golden)
        obtained = obtained_path(golden)
        with tempfile.TemporaryDirectory(prefix="tracediff-golden-") as scratch:
            fresh = os.path.join(scratch, os.path.basename(golden))
            adapters.record(model, inputs, fresh, loss_fn=loss_fn, values=values, options=options)
            self._names.add(golden)
            if self.mode == Mode.REGEN_ALL:
                self._write(fresh, golden)
                _remove(obtained)
                return None
            if not os.path.exists(golden):
                self._write(fresh, golden)
                _remove(obtained)
                return self._fail(
                    f"golden trace {golden} did not exist: written now from this run; check it "
                    "in, and the test passes from the next run on")
            try:
                report = _diff(fresh, golden, rtol, atol, per_layer)
            except TraceDiffError as exc:   # unreadable golden trace, or no layer in common
                report, problem = None, str(exc)
            if report is not None and report.ok and not _unmatched(report):
                _remove(obtained)
                return report
            shutil.move(fresh, obtained)
        regenerated = self.mode == Mode.REGEN
        if report is None:
            text = message.uncomparable(golden, obtained, problem, regenerated)
        else:
            text = message.mismatch(report, golden, obtained, _environment(obtained, golden),
                                    regenerated)
        if regenerated:
            self._write(obtained, golden, copy=True)
        return self._fail(text)

    def _write(self, source, golden, copy=False):
        os.makedirs(os.path.dirname(golden), exist_ok=True)
        (shutil.copyfile if copy else shutil.move)(source, golden)
        self.ledger.written.append(golden)


def _check_name(name):
    if name is None:
        return None
    if not isinstance(name, str) or not NAME.match(name):
        raise TraceDiffError(
            f"golden_trace.check: name={name!r} must be a non-empty string of letters, digits and "
            "_ . + = , (it becomes part of a file name)")
    return name


def _diff(obtained, golden, rtol, atol, per_layer):
    from ..compare import diff

    # Same model, same names: pairing by exact name keeps a renamed layer from hiding.
    return diff(obtained, golden, rtol=rtol, atol=atol, align="name", tolerances=per_layer)


def _unmatched(report) -> bool:
    return bool(report.unmatched["a"] or report.unmatched["b"])


def _environment(obtained, golden) -> list:
    from ..trace import open_trace

    with open_trace(golden) as g, open_trace(obtained) as o:
        return environment.differences(g, o)


def _remove(path):
    if os.path.exists(path):
        os.remove(path)


def _raise_assertion(text):
    raise AssertionError(text)
