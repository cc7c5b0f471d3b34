"""``tracediff show TRACE``: the records of a trace, their shapes and statistics."""
from __future__ import annotations

import json
import math
import sys

from ..primes import collisions, render_shape
from ..ranks import open_any
from ..report.common import position_text

RICH_ROW_LIMIT = 2000  # beyond this, plain lines: rich tables of 100k rows take minutes


def add_arguments(parser):
    parser.add_argument("trace", metavar="TRACE")
    parser.add_argument("--kind", action="append", help="only records of this kind (repeatable)")
    parser.add_argument("--name", help="only records whose name matches this glob")
    parser.add_argument("--json", dest="json_out", metavar="OUT", nargs="?", const="-",
                        help="write the listing as JSON (to OUT, or stdout)")


def run(args) -> int:
    trace = open_any(args.trace)
    with trace:
        records = trace.records(kind=args.kind, name=args.name)
        dims = trace.dims
        if args.json_out:
            payload = {"schema": "tracediff.show/1", "path": trace.path, "attrs": trace.attrs,
                       "complete": trace.complete, "dims": dims,
                       "records": [_record_json(r) for r in records]}
            text = json.dumps(payload, indent=1, default=_json_default)
            if args.json_out == "-":
                print(text)
            else:
                with open(args.json_out, "w", encoding="utf-8") as handle:
                    handle.write(text)
            return 0
        for group in collisions(dims):
            print(f"tracediff: warning: dims {', '.join(group)} have the same size "
                  f"({dims[group[0]]}): a swap between them cannot be detected; "
                  "use distinct primes (td.primes.dims)", file=sys.stderr)
        _print_table(trace, records, dims)
    return 0


def _record_json(r):
    return {"index": r.index, "name": r.name, "kind": r.kind, "call": r.call, "step": r.step,
            "rank": r.rank, "decode_step": r.decode_step, "batch_index": r.batch_index,
            "shape": list(r.shape), "dtype": r.dtype, "stored": r.stored,
            "stats": {k: _finite_or_str(v) for k, v in r.stats.items()}, "meta": r.meta}


def _finite_or_str(value):
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def _json_default(value):
    return str(value)


def _header(trace) -> str:
    a = trace.attrs
    parts = [f"{trace.path}", f"framework {a.get('framework', '?')} {a.get('framework_version', '')}".rstrip(),
             f"{len(trace)} records", f"created {a.get('created', '?')}", f"tracediff {a.get('tracediff_version', '?')}"]
    if a.get("model"):
        parts.insert(1, f"model {a['model']}")
    if isinstance(a.get("world_size"), int) and a["world_size"] > 1:
        rank = a.get("rank")
        parts.insert(1, f"{a['world_size']} ranks" if rank is None else f"rank {rank} of {a['world_size']}")
    if trace.dims:
        parts.append("dims " + ", ".join(f"{k}={v}" for k, v in trace.dims.items()))
    if not trace.complete:
        parts.append("INCOMPLETE")
    return " | ".join(parts)


def _fmt(value) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4g}"
    return str(value)


def _row(r, dims):
    name = r.name + (f"#{r.call}" if r.call else "")
    flags = []
    if r.stats["nan"]:
        flags.append(f"NaN x{r.stats['nan']}")
    if r.stats["inf"]:
        flags.append(f"Inf x{r.stats['inf']}")
    if not r.stored:
        flags.append("stats only")
    return [str(r.index), _printable(name), r.kind, render_shape(r.shape, dims), r.dtype,
            _fmt(r.stats["min"]), _fmt(r.stats["max"]), _fmt(r.stats["mean"]), _fmt(r.stats["std"]),
            " ".join(flags)]


def _printable(text: str) -> str:
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


COLUMNS = ["#", "name", "kind", "shape", "dtype", "min", "max", "mean", "std", "flags"]


def _print_table(trace, records, dims):
    rows = [_row(r, dims) for r in records]
    columns = COLUMNS
    if any(r.position != (-1, -1, -1) for r in records):   # steps, decode steps or batches
        columns = COLUMNS[:3] + ["at"] + COLUMNS[3:]
        rows = [row[:3] + [position_text(r)] + row[3:] for row, r in zip(rows, records)]
    try:
        from rich.console import Console
        from rich.table import Table
        from rich.text import Text
    except ImportError:  # pragma: no cover - rich is a dependency
        Console = None
    if Console is None or len(rows) > RICH_ROW_LIMIT:
        print(_header(trace))
        widths = [max([len(c)] + [len(row[i]) for row in rows]) for i, c in enumerate(columns)]
        print("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
        out = sys.stdout
        for row in rows:
            out.write("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() + "\n")
        return
    console = Console(highlight=False, soft_wrap=False)
    if not console.is_terminal:
        console.width = 200  # pipes and files get whole rows, not 80-column wrapping
    console.print(Text(_header(trace)), soft_wrap=True)
    table = Table(show_lines=False)
    for column in columns:
        table.add_column(column, justify="right" if column in ("#", "min", "max", "mean", "std") else "left",
                         overflow="fold")
    for row in rows:
        style = "bold red" if row[-1].startswith(("NaN", "Inf")) else None
        table.add_row(*[Text(v) for v in row], style=style)
    console.print(table)
