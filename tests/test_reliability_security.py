"""Nothing tracediff reads can run code, and no name can break out of a report.

The sources of tracediff/ and adapters/ are parsed (not grepped: `model.eval()` and an error
message that says "no pickle" are fine) for the ways a file can execute code when loaded.
"""
import ast
import pathlib
import re

import numpy as np
import pytest

import tracediff as td

ROOT = pathlib.Path(__file__).resolve().parents[1]
UNSAFE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "shelve", "marshal"}


def unsafe_calls(source: str, filename: str = "<src>") -> list:
    """'file:line: what' for each way ``source`` could execute code from data."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        where = f"{filename}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.Import):
            found += [f"{where}: import {a.name}" for a in node.names
                      if a.name.split(".")[0] in UNSAFE_MODULES]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in UNSAFE_MODULES:
            found.append(f"{where}: from {node.module} import")
        elif isinstance(node, ast.Call):
            func = node.func
            keywords = {k.arg: k.value for k in node.keywords}
            if isinstance(func, ast.Name) and func.id in ("eval", "exec"):
                found.append(f"{where}: {func.id}()")
            if isinstance(func, ast.Attribute) and func.attr in ("load", "loads") and \
                    isinstance(func.value, ast.Name) and func.value.id in UNSAFE_MODULES:
                found.append(f"{where}: {func.value.id}.{func.attr}()")
            allow = keywords.get("allow_pickle")
            if allow is not None and not (isinstance(allow, ast.Constant) and allow.value is False):
                found.append(f"{where}: allow_pickle={ast.unparse(allow)}")
            if isinstance(func, ast.Attribute) and func.attr == "load" and \
                    isinstance(func.value, ast.Name) and func.value.id == "torch":
                weights_only = keywords.get("weights_only")
                if not (isinstance(weights_only, ast.Constant) and weights_only.value is True):
                    found.append(f"{where}: torch.load() without weights_only=True")
    return found


def package_sources():
    for folder in ("tracediff", "adapters"):
        yield from sorted((ROOT / folder).rglob("*.py"))


def test_no_source_can_execute_code_from_a_file():
    sources = list(package_sources())
    assert len(sources) > 20
    found = []
    for path in sources:
        found += unsafe_calls(path.read_text(encoding="utf-8"), str(path.relative_to(ROOT)))
    assert found == []


@pytest.mark.parametrize("snippet, expected", [
    ("import pickle\n", "import pickle"),
    ("from joblib import load\n", "from joblib import"),
    ("x = pickle.loads(b)\n", "pickle.loads()"),
    ("a = np.load(p, allow_pickle=True)\n", "allow_pickle=True"),
    ("m = torch.load(p)\n", "torch.load() without weights_only=True"),
    ("m = torch.load(p, weights_only=False)\n", "torch.load() without weights_only=True"),
    ("eval(text)\n", "eval()"),
    ("exec(code)\n", "exec()"),
])
def test_the_scan_finds_each_unsafe_pattern(snippet, expected):
    assert unsafe_calls(snippet) == [f"<src>:1: {expected}"]


def test_the_scan_accepts_the_safe_forms():
    safe = ("a = np.load(p, allow_pickle=False)\nm = torch.load(p, weights_only=True)\n"
            "model.eval()\nast.literal_eval(s)\nraise E('holds objects (no pickle)')\n")
    assert unsafe_calls(safe) == []


# -- names in reports ---------------------------------------------------------------------------

HOSTILE = ["<script>alert(1)</script>", "a|b", "tick`s``", "two\nlines", "<img src=x onerror=alert(2)>"]


@pytest.fixture(scope="module")
def hostile_report(tmp_path_factory):
    """A diff in which every hostile name is a diverging layer, and a hostile attribute."""
    folder = tmp_path_factory.mktemp("hostile")
    paths = []
    for variant, shift in (("a", 1.0), ("b", 0.0)):
        path = folder / f"{variant}.h5"
        with td.Recorder(path, framework="<script>fw</script>") as rec:
            for i, name in enumerate(HOSTILE):
                rec.forward(name, np.arange(6.0).reshape(2, 3) * (i + 1) + shift * (i > 0))
        paths.append(path)
    return td.diff(*paths)


def test_html_report_keeps_hostile_names_as_text(hostile_report, tmp_path):
    out = tmp_path / "report.html"
    hostile_report.to_html(out)
    page = out.read_text(encoding="utf-8")
    assert "<script>alert" not in page and "<img src=x" not in page and "<script>fw" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page          # shown, as text
    assert "&lt;img src=x onerror=alert(2)&gt;" in page
    # the only script elements are the report's own two: its data and its code
    assert len(re.findall(r"<script\b", page)) == 2
    assert len(re.findall(r"</script>", page, re.I)) == 2


def test_markdown_table_rows_cannot_be_broken_by_names(hostile_report, tmp_path):
    out = tmp_path / "report.md"
    hostile_report.to_markdown(out)
    text = out.read_text(encoding="utf-8")
    # raw HTML only inside code spans, where Markdown shows it as text
    outside_code = re.sub(r"(?<!`)(`+)(?!`).*?(?<!`)\1(?!`)", "", text)
    assert "<script" not in outside_code and "<img" not in outside_code
    assert "`<script>alert(1)</script>`" in text
    lines = text.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("| kind |"))
    columns = _cells(lines[header])
    rows = []
    for line in lines[header + 2:]:
        if not line.startswith("|"):
            break
        rows.append(line)
    assert len(rows) == len(HOSTILE)          # one line per pair: the newline did not split one
    for row in rows:
        assert len(_cells(row)) == len(columns), row
    assert any("two lines" in row for row in rows)


def _cells(row: str) -> list:
    """Table cells as GitHub splits them: on '|' that is not escaped as '\\|'."""
    return re.split(r"(?<!\\)\|", row.strip().strip("|"))
