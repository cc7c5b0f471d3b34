"""The golden_trace fixture in real pytest sessions (pytester), on NumPy models: the first run
writes and fails, the next passes, a bug fails naming its layer; the regen flags; per-layer
tolerances; unused golden traces."""
import hashlib
import re
import textwrap

# In-process pytester sessions drop the modules they import when they end, and NumPy and h5py
# cannot be imported twice in one process: import them (and what the fixture uses) here first.
import numpy  # noqa: F401
import tracediff.adapters.numpy  # noqa: F401
import tracediff.compare  # noqa: F401
import tracediff.golden  # noqa: F401
import tracediff as td

pytest_plugins = ["pytester"]

MODEL = '''
import os
import numpy as np

def mlp(rec, x):
    rng = np.random.default_rng(0)
    w1, w2 = rng.standard_normal((4, 6)), rng.standard_normal((6, 3))
    h = x @ w1
    rec.forward("fc1", h)
    a = np.maximum(h, 0)
    rec.forward("act1", a)
    out = a @ w2 + float(os.environ.get("GOLDEN_BIAS", "0"))
    rec.forward("fc2", out)
    rec.loss(float((out ** 2).sum()))
    dout = 2 * out
    rec.backward("fc2", dout)
    da = dout @ w2.T
    rec.backward("act1", da)
    rec.backward("fc1", da * (h > 0))
    rec.param("fc1.weight", w1, grad=x.T @ (da * (h > 0)))

def wide(rec, x):
    big = np.outer(np.arange(256.0), np.arange(256.0)) + float(os.environ.get("GOLDEN_BIAS", "0"))
    rec.forward("outer", big)

X = np.random.default_rng(1).standard_normal((2, 4))
'''


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _same_values(path_a, path_b):
    with td.open(path_a) as a, td.open(path_b) as b:
        return [(r.key, r.read().tobytes()) for r in a] == [(r.key, r.read().tobytes()) for r in b]


def test_write_then_pass_then_bug_named_then_regen(pytester, monkeypatch):
    pytester.makepyfile(test_model=MODEL + textwrap.dedent('''
        def test_mlp(golden_trace):
            golden_trace.check(mlp, X)

        def test_wide(golden_trace):
            golden_trace.check(wide, X, name="stats", values=False)
    '''))
    golden = pytester.path / "traces" / "test_model" / "test_mlp.h5"
    stats_only = pytester.path / "traces" / "test_model" / "test_wide-stats.h5"
    obtained = golden.with_name("test_mlp.obtained.h5")

    first = pytester.runpytest()
    first.assert_outcomes(failed=2)
    first.stdout.fnmatch_lines([
        f"golden trace {golden} did not exist: written now from this run; check it in, and the "
        "test passes from the next run on",
        "*tracediff: golden traces written*", "traces/test_model/test_mlp.h5",
        "traces/test_model/test_wide-stats.h5"])
    assert golden.exists() and stats_only.exists() and not obtained.exists()
    # A 256x256 float64 tensor is 512 KiB; stats-only keeps its statistics and 64 samples.
    assert stats_only.stat().st_size < 256 * 1024

    pytester.runpytest().assert_outcomes(passed=2)

    before = _digest(golden)
    original = pytester.path / "original.h5"
    original.write_bytes(golden.read_bytes())
    monkeypatch.setenv("GOLDEN_BIAS", "0.1")
    broken = pytester.runpytest()
    broken.assert_outcomes(failed=2)
    text = broken.stdout.str()
    broken.stdout.fnmatch_lines([
        f"golden trace {golden} does not match this run (6 records diverged)",
        "first diverging forward: fc2 diverged, introduced here — float64 [[]2, 3]",
        "  max_abs 0.1  max_rel * mismatched 6 of 6 elements",
        "  hint: a = b + 0.1: a constant offset*",
        "  tolerance: rtol * atol * (dtype default, grown with depth 3); an element passes when "
        "|obtained - expected| <= atol + rtol * max(|expected|, 1*rms(expected))",
        "  worst elements (6 shown):",
        "    index   obtained *expected *difference",
        "first diverging backward: fc2 diverged, inherited — float64 [[]2, 3]",
        "  hint: a = b + 0.2: a constant offset*",
        "also diverged: loss loss, backward act1, backward fc1, param_grad fc1.weight",
        f"obtained trace kept at {obtained}; whole report: tracediff diff {obtained} {golden}",
        "if the change is intended, rewrite it with pytest --tracediff-regen",
    ])
    assert re.search(r"\(1, 0\)  1\.7\d+ +1\.6\d+ +0\.1\n", text)      # obtained = expected + 0.1
    assert "first diverging forward: outer diverged" in text
    assert "(sampled: stats-only trace)" in text
    assert "environment differs" not in text                          # same NumPy, same machine
    assert obtained.exists() and _digest(golden) == before

    regen = pytester.runpytest("--tracediff-regen")
    regen.assert_outcomes(failed=2)
    regen.stdout.fnmatch_lines([f"golden trace rewritten from this run (--tracediff-regen): review "
                                f"and commit {golden}"])
    assert _digest(golden) != before
    pytester.runpytest().assert_outcomes(passed=2)                   # the bug is golden now
    assert not obtained.exists()                                      # a pass clears the leftover

    monkeypatch.delenv("GOLDEN_BIAS")
    pytester.runpytest("--tracediff-regen-all").assert_outcomes(passed=2)
    assert _same_values(golden, original)                             # the bug is gone again
    pytester.runpytest().assert_outcomes(passed=2)


def test_per_layer_tolerances_and_root_option(pytester, monkeypatch):
    pytester.makeini("[pytest]\ntracediff_root = golden/traces\n")
    pytester.path.joinpath("loose.toml").write_text('"fc2" = {atol = 1e-2}\n')
    pytester.makepyfile(test_tol=MODEL + textwrap.dedent('''
        def test_default(golden_trace):
            golden_trace.check(mlp, X)

        def test_layer(golden_trace):
            golden_trace.check(mlp, X, per_layer={"fc2": {"atol": 1e-2}, "loss": {"rtol": 1e-2},
                                                  "backward:*": {"atol": 1e-2},
                                                  "param_grad:*": {"atol": 1e-2}})

        def test_kinds(golden_trace):
            golden_trace.check(mlp, X, per_layer={"backward:fc2": {"atol": 1e-2},
                                                  "forward:fc2": {"atol": 1e-4}})

        def test_global(golden_trace):
            golden_trace.check(mlp, X, rtol=1e-2, atol=1e-2)

        def test_toml(golden_trace):
            golden_trace.check(mlp, X, per_layer="loose.toml")
    '''))
    pytester.runpytest().assert_outcomes(failed=5)
    assert (pytester.path / "golden" / "traces" / "test_tol" / "test_layer.h5").exists()

    monkeypatch.setenv("GOLDEN_BIAS", "0.001")
    result = pytester.runpytest("-rf")
    result.assert_outcomes(passed=2, failed=3)
    result.stdout.fnmatch_lines([
        "FAILED test_tol.py::test_default - Failed: golden trace*",
        "FAILED test_tol.py::test_kinds - Failed: golden trace*",
        "FAILED test_tol.py::test_toml - Failed: golden trace*"])
    text = result.stdout.str()
    assert "tolerance: rtol 6.928e-07 atol 1e-07 (dtype default, grown with depth 3)" in \
        _section(text, "test_default")
    kinds = _section(text, "test_kinds")
    assert "first diverging forward: fc2 diverged" in kinds
    assert "  tolerance: rtol 1e-07 atol 0.0001 (per_layer); an element passes" in kinds
    assert "first diverging backward: act1 diverged" in kinds      # backward fc2 was loosened
    toml = _section(text, "test_toml")                              # fc2 loosened, both kinds
    assert "first diverging forward" not in toml
    assert "first diverging backward: act1 diverged" in toml
    assert "also diverged: loss loss, backward fc1, param_grad fc1.weight" in toml


def _section(text, test):
    """The failure text pytest printed for ``test``."""
    match = re.search(rf"_+ {test} _+\n(.*?)(?=\n_+ test_|\n=+ short test summary)", text, re.S)
    assert match, f"no failure section for {test}"
    return match.group(1)


def test_unused_golden_traces_listed_and_strict_fails(pytester):
    pytester.makepyfile(test_unused=MODEL + textwrap.dedent('''
        import pytest

        def test_uses(golden_trace):
            golden_trace.check(mlp, X)

        def test_deselected(golden_trace):
            golden_trace.check(mlp, X)

        def test_skipped(golden_trace):
            pytest.skip("not on this machine")

        @pytest.mark.parametrize("n", [1, 2])
        def test_param(golden_trace, n):
            if n == 1:
                golden_trace.check(mlp, X)
    '''))
    folder = pytester.path / "traces" / "test_unused"
    pytester.runpytest("--tracediff-regen-all", "-k", "not deselected").assert_outcomes(
        passed=3, skipped=1)
    for stale in ("test_gone.h5", "test_uses-extra.h5", "test_deselected.h5", "test_skipped.h5",
                  "test_param[2].h5", "test_uses.obtained.h5"):
        folder.joinpath(stale).write_bytes(b"")
    for folder_name in ("test_elsewhere", "fixtures"):           # a deleted module; not a module
        pytester.path.joinpath("traces", folder_name).mkdir()
        pytester.path.joinpath("traces", folder_name, "test_other.h5").write_bytes(b"")

    listed = pytester.runpytest("-k", "not deselected")
    listed.assert_outcomes(passed=3, skipped=1)
    assert listed.ret == 0
    listed.stdout.fnmatch_lines([
        "*tracediff: 4 unused golden trace(s)*",
        "traces/test_elsewhere/test_other.h5",          # the whole suite ran: module is gone
        "traces/test_unused/test_gone.h5",
        "traces/test_unused/test_param[[]2[]].h5",
        "traces/test_unused/test_uses-extra.h5",
        "delete them, or run with --tracediff-strict to fail the session on them"])
    for quiet in ("test_deselected.h5", "test_skipped.h5", "obtained", "test_param[1].h5",
                  "fixtures"):
        assert quiet not in listed.stdout.str()

    strict = pytester.runpytest("test_unused.py", "-k", "not deselected", "--tracediff-strict")
    assert strict.ret == 1
    strict.stdout.fnmatch_lines([
        "*tracediff: 3 unused golden trace(s)*",        # one module asked for: others unknown
        "traces/test_unused/test_gone.h5",
        "traces/test_unused/test_param[[]2[]].h5",
        "traces/test_unused/test_uses-extra.h5",
        "failing the session (--tracediff-strict): delete them"])
    assert "test_other.h5" not in strict.stdout.str()
