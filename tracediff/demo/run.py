"""The demo: NumPy ports with planted bugs against their references, diffed and reported.

For each case the port and its reference are recorded into ``<out>/<case>/``, diffed with
``td.diff`` (a = the port, b = the reference), summarised on the terminal and written as
``report.html``, ``report.md`` and ``report.json``; ``<out>/index.html`` links the cases.
The references are the PyTorch nets (``torch_nets``); without torch, the correct NumPy ports.
"""
from __future__ import annotations

import html
import importlib.util
import json
import os
import time
from dataclasses import dataclass

from ..errors import TraceDiffError
from ..report import render_html, render_markdown
from ..report.common import pair_label, summary
from . import bugs as catalogue
from . import numpy_nets


@dataclass(frozen=True)
class Case:
    name: str
    net: str
    bugs: tuple
    naming: str = "torch"
    port: str = "numpy"        # numpy, or another runtime's port (framework_ports.py)


CASES = (
    Case("mlp-correct", "mlp", ()),
    Case("mlp-missing-bias", "mlp", ("missing_bias",)),
    Case("mlp-activation-derivative", "mlp", ("wrong_activation_derivative",), naming="port"),
    Case("mlp-weight-gradient", "mlp", ("weight_grad_double_mean",)),
    Case("cnn-flatten-order", "cnn", ("wrong_flatten_order",)),
    Case("cnn-padding", "cnn", ("wrong_padding",), naming="port"),
    Case("transformer-gelu-tanh", "transformer", ("gelu_tanh",)),
)
# the ports in other runtimes (``--ports jax,litert``): their imports take seconds
PORT_CASES = (
    Case("cnn-jax-flatten-kernel", "cnn", ("flatten_kernel_not_reordered",), port="jax"),
    Case("mlp-litert-missing-bias", "mlp", ("converted_without_bias",), port="litert"),
)
PORTS = ("numpy", "jax", "litert")


def cases_for(ports) -> tuple:
    """The cases of the ``ports`` asked for (``numpy``, ``jax``, ``litert``), in that order."""
    unknown = [p for p in ports if p not in PORTS]
    if unknown:
        raise TraceDiffError(f"unknown port {unknown[0]!r}: --ports takes "
                             f"{', '.join(PORTS)} (comma-separated)")
    return tuple(c for c in CASES + PORT_CASES if c.port in ports)


def torch_available() -> bool:
    return importlib.util.find_spec("torch") is not None


def run_demo(out_dir, *, use_torch=None, cases=CASES, console=None, full=False) -> int:
    """Record, diff and report every case (``cases_for(ports)`` picks them by port); 1 when a
    divergence was found (the planted bugs), 0 when every port matched its reference. ``full``
    also prints the engine's whole terminal report for each case. A case whose runtime is not
    installed is skipped with one line."""
    import tracediff as td
    from rich.console import Console
    from rich.markup import escape

    console = console or Console(highlight=False, soft_wrap=True)
    has_torch = torch_available()
    use_torch = has_torch if use_torch is None else use_torch
    out_dir = os.fspath(out_dir)
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as exc:
        raise TraceDiffError(f"cannot create the demo folder {out_dir}: {exc.strerror}; "
                             "choose another --out") from None
    started = time.perf_counter()
    reference_kind = ("PyTorch float32" if use_torch else
                      "NumPy float64" + ("" if has_torch else " (torch is not installed)"))
    ports = sorted({c.port for c in cases}, key=PORTS.index)
    described = {"numpy": "NumPy float64", "jax": "Flax", "litert": "LiteRT"}
    console.print(f"[bold]tracediff demo[/bold]: {', '.join(described[p] for p in ports)} ports "
                  f"with planted bugs against {reference_kind} references -> {escape(out_dir)}")
    found, index = False, []
    for case in cases:
        if case.port != "numpy" and not (use_torch and _port_available(case.port)):
            why = (f"the {case.port} extra is not installed (pip install 'tracediff[{case.port}]')"
                   if use_torch else "it is diffed against the torch reference only")
            console.print(f"\n[bold]{escape(case.name)}[/bold] skipped: {why}")
            continue
        folder = os.path.join(out_dir, case.name)
        os.makedirs(folder, exist_ok=True)
        port_path, ref_path = _record_case(case, folder, use_torch)
        result = td.diff(port_path, ref_path)
        report = result.to_dict()
        _write_reports(report, folder, case)
        _print_case(console, case, report)
        if full:
            result.render(console=console)
        else:
            command = f"tracediff diff {port_path} {ref_path}"
            console.print(f"  [dim]whole report: {escape(command)}[/dim]")
        found = found or not report.get("ok")
        index.append((case, report))
    index_path = os.path.join(out_dir, "index.html")
    with open(index_path, "w", encoding="utf-8") as handle:
        handle.write(_index_html(index))
    console.print(f"\nHTML reports: {escape(index_path)} ({time.perf_counter() - started:.1f} s)")
    return 1 if found else 0


def _record_case(case: Case, folder: str, use_torch: bool):
    x, y = numpy_nets.make_inputs(case.net)
    ref_path = os.path.join(folder, "reference.h5")
    port_path = os.path.join(folder, "port.h5")
    if use_torch and case.port != "numpy":
        from . import framework_ports, torch_nets
        model = torch_nets.build(case.net)
        framework_ports.record_reference(model, case.net, x, y, ref_path)
        state = torch_nets.state_dict_float64(model)
    elif use_torch:
        from . import torch_nets
        model = torch_nets.build(case.net)
        torch_nets.record(model, case.net, x, y, ref_path)
        state = torch_nets.state_dict_float64(model)
    else:
        state = numpy_nets.init_params(case.net)
        numpy_nets.build(case.net, state).record_to(ref_path, x, y, model=f"{case.net} reference")
    if case.port != "numpy":
        from . import framework_ports
        framework_ports.record(case.port, state, x, y, port_path, planted=bool(case.bugs))
        return port_path, ref_path
    port = numpy_nets.build(case.net, state, bugs=case.bugs, naming=case.naming)
    port.record_to(port_path, x, y, model=f"{case.net} port")
    return port_path, ref_path


def _port_available(port: str) -> bool:
    from . import framework_ports
    return framework_ports.available(port)


def _write_reports(report: dict, folder: str, case: Case):
    title = f"tracediff demo: {case.name}"
    with open(os.path.join(folder, "report.html"), "w", encoding="utf-8") as handle:
        handle.write(render_html(report, title=title))
    with open(os.path.join(folder, "report.md"), "w", encoding="utf-8") as handle:
        handle.write(render_markdown(report))
    with open(os.path.join(folder, "report.json"), "w", encoding="utf-8") as handle:
        json.dump(report, handle, indent=1, default=str)


def _planted(case: Case) -> str:
    if not case.bugs:
        return "none (a correct port)"
    if case.port != "numpy":
        from .framework_ports import BUGS
        return f"{BUGS[case.port][2]} [{case.port} port]"
    names = "; ".join(catalogue.get(b).summary for b in case.bugs)
    return names + (" [port renames every layer]" if case.naming == "port" else "")


def _print_case(console, case: Case, report: dict):
    from rich.markup import escape

    verdict = "[green]ok[/green]" if report.get("ok") else "[red]diverged[/red]"
    console.print(f"\n[bold]{escape(case.name)}[/bold] {verdict}  planted: {escape(_planted(case))}")
    console.print(f"  {escape(summary(report))}")
    first = report.get("first_divergence") or {}
    for direction in ("forward", "backward"):
        pair = first.get(direction)
        if pair:
            stats = pair.get("stats") or {}
            console.print(f"  {direction}: [bold]{escape(pair_label(pair))}[/bold] "
                          f"{escape(str(pair.get('status')))}"
                          f"  max_abs {_g(stats.get('max_abs'))}  rel_l2 {_g(stats.get('rel_l2'))}")
            if pair.get("hint"):
                console.print(f"    hint: {escape(str(pair['hint']))}")
    bad_params = [p for p in report.get("pairs") or []
                  if p.get("kind") in ("param", "param_grad")
                  and p.get("diverged", p.get("status") != "ok")]
    for pair in bad_params[:3]:
        hint = f"  hint: {pair['hint']}" if pair.get("hint") else ""
        console.print(f"  {pair.get('kind')}: [bold]{escape(pair_label(pair))}[/bold] "
                      f"{escape(str(pair.get('status')))}{escape(hint)}")


def _g(value):
    return f"{value:.3g}" if isinstance(value, (int, float)) else "-"


def _index_html(entries) -> str:
    rows = "".join(
        f'<tr><td><a href="{html.escape(case.name)}/report.html">{html.escape(case.name)}</a></td>'
        f"<td>{'ok' if report.get('ok') else 'diverged'}</td><td>{html.escape(_planted(case))}</td>"
        f"<td>{html.escape(summary(report))}</td></tr>" for case, report in entries)
    return ("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>tracediff demo"
            "</title><style>body{font-family:system-ui,sans-serif;margin:24px}td,th{border:1px solid #ccc;"
            "padding:4px 8px}table{border-collapse:collapse}</style></head><body><h1>tracediff demo</h1>"
            "<table><tr><th>case</th><th>verdict</th><th>planted bug</th><th>report</th></tr>"
            f"{rows}</table></body></html>\n")
