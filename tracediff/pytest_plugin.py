"""pytest plugin (entry point ``pytest11``): the ``golden_trace`` fixture and its flags.

pytest imports this module in every session of anyone who installs tracediff, so at import it
touches only pytest and the standard library; tracediff's machinery loads when a test asks for
the fixture. ``docs/golden.md`` describes the fixture.
"""
from __future__ import annotations

import os

import pytest

ROOT_INI = "tracediff_root"
_LEDGER = pytest.StashKey()


def pytest_addoption(parser):
    group = parser.getgroup("tracediff", "golden traces (tracediff)")
    group.addoption("--tracediff-regen", action="store_true",
                    help="rewrite missing and failing golden traces (those tests still fail)")
    group.addoption("--tracediff-regen-all", action="store_true",
                    help="rewrite every golden trace checked; those tests pass")
    group.addoption("--tracediff-strict", action="store_true",
                    help="fail the session when golden traces under the root go unused")
    parser.addini(ROOT_INI, "folder of golden traces, relative to the rootdir", default="traces")


def _ledger(config):
    if _LEDGER not in config.stash:
        from tracediff.golden import Ledger
        root = config.getini(ROOT_INI) or "traces"
        config.stash[_LEDGER] = Ledger(os.path.abspath(os.path.join(str(config.rootpath), root)))
    return config.stash[_LEDGER]


def _active(config) -> bool:
    return _LEDGER in config.stash


def _unused(config) -> list:
    # An xdist worker sees only the tests it ran and its summary is never shown: the unused
    # check needs the whole session in one process.
    if hasattr(config, "workerinput"):
        return []
    return _ledger(config).unused(whole_suite=_whole_suite(config),
                                  test_files=tuple(config.getini("python_files")))


def _whole_suite(config) -> bool:
    """No test paths on the command line: pytest collected testpaths, or all of the rootdir."""
    sources = getattr(pytest.Config, "ArgsSource", None)     # pytest >= 7.2
    source = getattr(config, "args_source", None)
    if sources is None or source is None:
        return False
    if any(config.getoption(name, None) for name in ("lf", "ignore", "ignore_glob")):
        return False                # test files were left out of the collection
    if source == sources.TESTPATHS:
        return True
    return (source == sources.INVOCATION_DIR
            and os.path.samefile(str(config.invocation_params.dir), str(config.rootpath)))


@pytest.fixture
def golden_trace(request):
    """``golden_trace.check(model, inputs, loss_fn=None, name=None, rtol=None, atol=None,
    per_layer=None, values=True)``: diff this run against the test's golden trace."""
    from tracediff.golden import GoldenTrace, Mode, key_of

    config = request.config
    mode = (Mode.REGEN_ALL if config.getoption("tracediff_regen_all")
            else Mode.REGEN if config.getoption("tracediff_regen") else Mode.CHECK)
    return GoldenTrace(key_of(request.node), _ledger(config), mode,
                       fail=lambda text: pytest.fail(text, pytrace=False))


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(session, config, items):
    # Every collected test, before -k/-m deselect any: a golden trace no collected test owns is
    # stale. Only sessions that use the fixture somewhere pay for the bookkeeping.
    if not any("golden_trace" in getattr(item, "fixturenames", ()) for item in items):
        return
    from tracediff.golden import key_of

    _ledger(config).collected.update(key_of(item) for item in items)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    # A test that ran (passed or failed, not skipped) and checked no golden trace owns none.
    outcome = yield
    error = outcome.excinfo[1] if outcome.excinfo else None
    if not isinstance(error, pytest.skip.Exception):
        _mark_ran(item)


def _mark_ran(item):
    if _active(item.config):
        from tracediff.golden import key_of
        _ledger(item.config).ran.add(key_of(item))


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if not _active(config):
        return
    ledger = _ledger(config)
    unused = _unused(config)
    if ledger.written:
        terminalreporter.write_sep("-", "tracediff: golden traces written")
        for path in ledger.written:
            terminalreporter.write_line(_shown(path, config))
    if unused:
        strict = config.getoption("tracediff_strict")
        terminalreporter.write_sep("-", f"tracediff: {len(unused)} unused golden trace(s)")
        for path in unused:
            terminalreporter.write_line(_shown(path, config))
        terminalreporter.write_line(
            "delete them, or run with --tracediff-strict to fail the session on them"
            if not strict else "failing the session (--tracediff-strict): delete them")


def pytest_sessionfinish(session, exitstatus):
    config = session.config
    if _active(config) and config.getoption("tracediff_strict") and exitstatus == 0 \
            and _unused(config):
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def _shown(path, config) -> str:
    try:
        return os.path.relpath(path, str(config.rootpath))
    except ValueError:
        return path
