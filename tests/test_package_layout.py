"""The package as it ships: every subpackage is in the wheel, and no module imports in a circle."""
import ast
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Where each top-level package's sources live (pyproject's package-dir).
SOURCES = {"tracediff": ROOT / "tracediff", "tracediff.adapters": ROOT / "adapters"}


def packages():
    """Every package in the source tree, as the dotted name it is installed under."""
    found = []
    for name, folder in SOURCES.items():
        for init in sorted(folder.rglob("__init__.py")):
            relative = init.parent.relative_to(folder).parts
            if name == "tracediff" and relative[:1] == ("adapters",):
                continue
            found.append(".".join((name, *relative)))
    return found


def modules():
    """``{dotted module name: (path, is_package)}`` for every module of tracediff."""
    found = {}
    for name, folder in SOURCES.items():
        for path in sorted(folder.rglob("*.py")):
            relative = path.relative_to(folder).with_suffix("").parts
            if name == "tracediff" and relative[:1] == ("adapters",):
                continue
            is_package = relative[-1] == "__init__"
            found[".".join((name, *(relative[:-1] if is_package else relative)))] = (path, is_package)
    return found


def imports(module, path, is_package, known):
    """The tracediff modules ``module`` imports, at the top or inside a function."""
    package = module if is_package else module.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names if alias.name in known)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            submodules = [f"{base}.{alias.name}" for alias in node.names
                          if f"{base}.{alias.name}" in known]
            out.update(submodules)
            if len(submodules) < len(node.names) and base in known:
                out.add(base)
    out.discard(module)
    return out


def cycles(graph):
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


@pytest.fixture(scope="module")
def import_graph():
    known = modules()
    return {m: imports(m, path, is_package, known) for m, (path, is_package) in known.items()}


def test_no_module_imports_in_a_circle(import_graph):
    assert cycles(import_graph) == []


@pytest.mark.parametrize("lower, higher", [
    ("tracediff.report", ("tracediff.compare", "tracediff.checks", "tracediff.golden",
                          "tracediff.cli", "tracediff.adapters")),
    ("tracediff.compare", ("tracediff.checks", "tracediff.golden", "tracediff.cli",
                           "tracediff.adapters")),
    ("tracediff.adapters", ("tracediff.compare", "tracediff.golden", "tracediff.cli")),
])
def test_lower_layers_never_import_higher_ones(import_graph, lower, higher):
    """docs/architecture.md: renderers take a report and import nothing that makes one; the
    diff engine knows no adapter; adapters write traces and know nothing of diffing."""
    offending = sorted(f"{m} -> {t}" for m, targets in import_graph.items()
                       if m == lower or m.startswith(lower + ".")
                       for t in targets if t.startswith(higher))
    assert offending == []


def test_the_wheel_ships_every_package(tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for folder in ("tracediff", "adapters"):
        shutil.copytree(ROOT / folder, source / folder,
                        ignore=shutil.ignore_patterns("__pycache__", "*.so", "*.pyc"))
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(tmp_path / "dist"), str(source)],
                   check=True, capture_output=True, env=env)
    wheel, = (tmp_path / "dist").glob("tracediff-*.whl")
    shipped = {name for name in zipfile.ZipFile(wheel).namelist()
               if name.endswith("/__init__.py")}
    expected = {name.replace(".", "/") + "/__init__.py" for name in packages()}
    assert {"tracediff/adapters/torch/__init__.py",
            "tracediff/adapters/onnx/grad/__init__.py"} <= expected
    assert sorted(expected - shipped) == []
