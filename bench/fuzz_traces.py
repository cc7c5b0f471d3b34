"""Fuzz the trace reader and the CLI with damaged traces (hypothesis).

    python bench/fuzz_traces.py [--cases 10000] [--jobs 2] [--seed 0]

Each case copies a valid trace (format v2) and damages it: bit flips anywhere in the file,
truncation, root attributes deleted or given the wrong type, index fields set to hostile values
(declared shapes of 2**60 elements, negative sizes, offsets out of range, unknown dtypes and kind
codes, broken JSON) or rebuilt with the wrong type, the index strings damaged (spans out of
range, bytes overwritten, invalid UTF-8, the blob cut short), datasets removed or replaced. Then
``td.open``, iteration and ``read()``/``sample()`` of every record must either work or raise
``TraceDiffError``, and ``tracediff show``, ``show --json``, ``diff`` (with JSON, HTML and
Markdown reports) and ``check``, run in-process through ``tracediff.cli.main``, must exit 0/1
with a result or 2 with ONE error line on stderr (warning lines aside) that is not the
catch-all "run again with --debug" line. Every case runs under a time limit and a cap on address space, so a hang or an
allocation sized by a declared shape is reported instead of taking the machine down; cases run
in worker processes (``--jobs``), and a worker silent for HANG_S (stuck in HDF5's C code, which
no alarm interrupts) is killed, its case reported as a hang, and a fresh worker carries on.

tests/test_reliability_fuzz.py runs a few hundred cases of the same strategies.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import resource
import shutil
import signal
import sys
import tempfile
import time
import warnings

import h5py
import numpy as np
from hypothesis import strategies as st

from tracediff.format import TEXT_FIELDS, record_dtype, text_attribute

CASE_TIMEOUT_S = 20
MEMORY_CAP = 1 << 30            # extra address space a case may take beyond what is mapped
HUGE = 2 ** 60
ROOT_ATTRS = ("format", "format_version", "tracediff_version", "framework", "framework_version",
              "python", "host", "platform", "created", "model", "seed", "dims", "values",
              "complete", "meta", "n_records")
INDEX_FIELDS = record_dtype().names          # v2: numbers only; text lies in the strings blob
SPAN_FIELDS = ("strings_offset",) + tuple(f"{field}_len" for field in TEXT_FIELDS)
N_ROWS = 12                      # records of the base trace (see build_base)
TALLY = {}                       # (what, outcome) -> count, over every case probed


class CaseTimeout(BaseException):
    """Raised in the case when it runs past CASE_TIMEOUT_S (BaseException: no ``except
    Exception`` in the code under test may swallow it)."""


# -- the valid traces every case starts from --------------------------------------------------

def build_base(folder: str) -> tuple[str, str]:
    """A trace with every kind, several dtypes, a stats-only record, a 0-d, an empty and a
    complex tensor (a), and a reference that differs from it in one layer (b)."""
    import ml_dtypes
    import tracediff as td

    paths = []
    for variant in ("a", "b"):
        path = os.path.join(folder, f"base_{variant}.h5")
        rng = np.random.default_rng(0)
        x = rng.standard_normal((3, 5)).astype(np.float32)
        w = rng.standard_normal((5, 7)).astype(np.float32)
        h = x @ w
        if variant == "b":
            h = h.copy()
            h[1, 2] += 1.0
        with td.Recorder(path, framework="numpy", dims={"batch": 3, "features": 5, "hidden": 7},
                         model="fuzz base") as rec:
            rec.input("x", x)
            rec.param("fc1.weight", w, grad=np.ones_like(w), op_type="Linear", role="weight")
            rec.forward("fc1", h, op_type="Linear")
            rec.forward("relu <script>|`x`", np.maximum(h, 0), op_type="ReLU")
            rec.forward("half", h.astype(ml_dtypes.bfloat16))
            rec.forward("scalar", np.float64(2.5))
            rec.forward("empty", np.zeros((0, 4), np.float32))
            rec.forward("complex", (h[:, :2] + 1j).astype(np.complex64))
            rec.forward("stats only", np.tanh(h), values=False)
            rec.loss(np.float32(h.mean()))
            rec.backward("fc1", np.full_like(h, 1 / h.size))
        paths.append(path)
    return paths[0], paths[1]


# -- mutations --------------------------------------------------------------------------------

def _text_values():
    return st.sampled_from([
        "", "x", "\x00", "a\nb", "<script>alert(1)</script>", "|`|", "é" * 300, "null", "{",
        "[]", "[1", "[2, 3.5]", f"[{HUGE}]", f"[{HUGE}, {HUGE}]", "[-1]", "[[1]]", "{}", '"x"',
        "[1e400]", "[" + ",".join(["1"] * 70) + "]", "[4294967296]", "[1073741824]",
        "float128", "object", "bfloat16", "int64", "complex128", "float8_e4m3fn", "bool",
        "forward", "backward", "weights", '{"a": [1, {"b": null}]}', "[1, 2]",
        "9" * 400, "[0]", "[3, 0, 5]",
    ])


def _int_values():
    return st.one_of(
        st.sampled_from([-1, -2 ** 63, 2 ** 63 - 1, 0, 1, HUGE, 2 ** 32, -7]),
        st.integers(-10 ** 6, 10 ** 6))


def _float_values():
    return st.sampled_from([float("nan"), float("inf"), -float("inf"), -1.0, 0.0, 1e308, 5e-324])


def _raw_texts():
    """Byte strings that are not valid UTF-8 (a stray continuation byte, a truncated sequence,
    an encoded surrogate, an overlong encoding), and one that is."""
    return st.sampled_from([b"\xff", b"ab\x80", b"gr\xc3", b"\xed\xa0\x80", b"\xc0\xaf",
                            "σ".encode()])


def _attr_values():
    return st.one_of(
        _text_values(), _int_values(), _float_values(), st.booleans(),
        st.sampled_from(["list", "bytes", "array2d"]))


def mutation():
    """One damage to a trace, as plain data (so that a failing case prints readably)."""
    row = st.integers(0, N_ROWS - 1)
    return st.one_of(
        st.tuples(st.just("bitflip"), st.lists(st.tuples(st.floats(0, 1), st.integers(0, 7)),
                                               min_size=1, max_size=8)),
        st.tuples(st.just("truncate"), st.floats(0, 1)),
        st.tuples(st.just("attr_delete"), st.sampled_from(ROOT_ATTRS)),
        st.tuples(st.just("attr_set"), st.sampled_from(ROOT_ATTRS), _attr_values()),
        st.tuples(st.just("field_text"), row, st.sampled_from(TEXT_FIELDS),
                  st.one_of(_text_values(), _raw_texts())),
        st.tuples(st.just("field_int"), row, st.sampled_from(("call", "step", "stored", "offset",
                                                              "nbytes", "sample_offset",
                                                              "sample_count", "numel", "nan",
                                                              "inf", "kind") + SPAN_FIELDS),
                  st.one_of(_int_values(), st.sampled_from([6, 255, 2 ** 31 - 1, -2 ** 31]))),
        st.tuples(st.just("strings_byte"), st.floats(0, 1), st.integers(0, 255)),
        st.tuples(st.just("strings_cut"), st.floats(0, 1)),
        st.tuples(st.just("field_float"), row, st.sampled_from(("min", "max", "mean", "std", "l2",
                                                                "zero_frac")), _float_values()),
        st.tuples(st.just("huge_shape"), row, st.sampled_from([HUGE, 2 ** 30, 2 ** 62, 2 ** 40])),
        st.tuples(st.just("field_retype"), st.sampled_from(INDEX_FIELDS),
                  st.sampled_from(["<i8", "<f8", "u1", "S4", "S16"])),
        st.tuples(st.just("field_drop"), st.sampled_from(INDEX_FIELDS)),
        st.tuples(st.just("dataset"), st.sampled_from(["records", "data", "strings", "state"]),
                  st.sampled_from(["delete", "group", "scalar", "strings", "2d", "empty"])),
        st.tuples(st.just("state"), st.sampled_from([-1, 0, 1, 5, HUGE, -HUGE]),
                  st.booleans()),
        st.tuples(st.just("rows"), st.sampled_from(["none", "one", "shuffle", "duplicate",
                                                    "extra_5000"])),
    )


def mutations():
    return st.lists(mutation(), min_size=1, max_size=3)


def apply(damages, source: str, target: str):
    """Copy ``source`` to ``target`` and damage the copy."""
    shutil.copyfile(source, target)
    for damage in damages:
        kind, args = damage[0], damage[1:]
        if kind == "bitflip":
            _bitflip(target, args[0])
        elif kind == "truncate":
            size = os.path.getsize(target)
            with open(target, "r+b") as handle:
                handle.truncate(int(size * args[0]))
        else:
            try:
                with h5py.File(target, "r+") as f, warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    _EDITS[kind](f, *args)
            except Exception:  # noqa: BLE001
                pass  # an earlier damage made this one impossible: the file stays as it is


def _bitflip(path, flips):
    size = os.path.getsize(path)
    if not size:
        return
    with open(path, "r+b") as handle:
        for where, bit in flips:
            position = min(size - 1, int(where * size))
            handle.seek(position)
            byte = handle.read(1)[0]
            handle.seek(position)
            handle.write(bytes([byte ^ (1 << bit)]))


def _attr_value(value):
    if value == "list":
        return np.array([1, 2, 3])
    if value == "bytes":
        return np.void(b"\x00\xff")
    if value == "array2d":
        return np.ones((2, 2))
    return value


def _attr_delete(f, key):
    if key in f.attrs:
        del f.attrs[key]


def _attr_set(f, key, value):
    # text as the writer stores it: fixed-length (h5py would write a str variable-length, giving
    # the file a global heap that no v2 trace has)
    value = _attr_value(value)
    f.attrs[key] = text_attribute(value) if isinstance(value, str) else value


def _rows(f):
    return f["records"][()]


def _write_rows(f, rows):
    del f["records"]
    f.create_dataset("records", data=rows, maxshape=(None,), chunks=True)


def _field(f, row, field, value):
    if field in TEXT_FIELDS:
        set_text(f, row, field, value)
        return
    rows = _rows(f)
    row = row % max(1, rows.size)
    rows[field][row] = value
    f["records"][row] = rows[row]


def set_text(f, row, field, value):
    """Give record ``row`` a new text ``field`` (str, or raw bytes): its text fields, rewritten,
    are appended to the strings blob and the row points at them."""
    rows = _rows(f)
    row = row % max(1, rows.size)
    strings = f["strings"]
    start = int(rows["strings_offset"][row])
    texts = []
    for name in TEXT_FIELDS:
        length = int(rows[f"{name}_len"][row])
        texts.append(bytes(strings[start:start + length]))
        start += length
    texts[TEXT_FIELDS.index(field)] = value if isinstance(value, bytes) else value.encode()
    block = np.frombuffer(b"".join(texts), np.uint8)
    end = strings.shape[0]
    strings.resize((end + block.size,))
    strings[end:] = block
    rows["strings_offset"][row] = end
    for name, text in zip(TEXT_FIELDS, texts):
        rows[f"{name}_len"][row] = len(text)
    f["records"][row] = rows[row]


def _huge_shape(f, row, numel):
    set_text(f, row, "shape", json.dumps([numel]))
    rows = _rows(f)
    row = row % max(1, rows.size)
    rows["numel"][row] = numel
    f["records"][row] = rows[row]


def _strings_byte(f, where, value):
    strings = f["strings"]
    if strings.shape[0]:
        strings[min(strings.shape[0] - 1, int(where * strings.shape[0]))] = value


def _strings_cut(f, fraction):
    strings = f["strings"]
    strings.resize((int(strings.shape[0] * fraction),))


def _field_retype(f, field, new_type):
    rows = _rows(f)
    descr = []
    for name in rows.dtype.names:
        dtype = rows.dtype[name]
        if name == field:
            dtype = np.dtype(new_type)
        descr.append((name, dtype))
    out = np.zeros(rows.shape, np.dtype(descr))
    for name in rows.dtype.names:
        try:
            out[name] = rows[name]
        except (ValueError, TypeError):
            out[name] = 0
    _write_rows(f, out)


def _field_drop(f, field):
    rows = _rows(f)
    keep = [n for n in rows.dtype.names if n != field]
    out = np.zeros(rows.shape, np.dtype([(n, rows.dtype[n]) for n in keep]))
    for name in keep:
        out[name] = rows[name]
    _write_rows(f, out)


def _dataset(f, name, how):
    if name in f:
        del f[name]
    if how == "group":
        f.create_group(name)
    elif how == "scalar":
        f[name] = 7
    elif how == "strings":
        f[name] = np.array([b"abc", b"def"])
    elif how == "2d":
        f[name] = np.zeros((3, 3), np.uint8)
    elif how == "empty":
        f.create_dataset(name, shape=(0,), dtype="u1")


def _state(f, committed, complete):
    if "state" in f:
        del f["state"]
    f["state"] = np.array([committed, 0], "<i8")
    f.attrs["complete"] = complete


def _row_edit(f, how):
    rows = _rows(f)
    if how == "none":
        rows = rows[:0]
    elif how == "one":
        rows = rows[:1]
    elif how == "shuffle":
        rows = rows[::-1]
    elif how == "duplicate":
        rows = np.concatenate([rows, rows])
    elif how == "extra_5000":
        rows = np.concatenate([rows, np.repeat(rows[-1:], 5000)])   # > show's rich-table limit
    _write_rows(f, rows)


_EDITS = {
    "attr_delete": _attr_delete, "attr_set": _attr_set,
    "field_text": _field, "field_int": _field, "field_float": _field,
    "huge_shape": _huge_shape, "field_retype": _field_retype, "field_drop": _field_drop,
    "strings_byte": _strings_byte, "strings_cut": _strings_cut,
    "dataset": _dataset, "state": _state, "rows": _row_edit,
}


# -- the probe --------------------------------------------------------------------------------

def probe_api(path: str) -> list:
    """td.open, iterate and read every record: each either works or raises TraceDiffError."""
    import tracediff as td

    problems = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            trace = td.open(path)
        except td.TraceDiffError as exc:
            _tally("td.open", "refused")
            return _one_line("td.open", str(exc))
        except Exception as exc:
            return [f"td.open raised {type(exc).__name__}: {_first_line(exc)}"]
    _tally("td.open", "opened")
    with trace:
        try:
            _ = (trace.framework, trace.dims, trace.steps, trace.complete, repr(trace), len(trace))
        except Exception as exc:
            problems.append(f"trace metadata raised {type(exc).__name__}: {_first_line(exc)}")
        for record in trace:
            for what in ("read", "sample"):
                try:
                    _ = (record.name, record.kind, record.shape, record.dtype, record.stats, str(record))
                    if what == "read" and not record.stored:
                        continue
                    value = getattr(record, what)()
                    if what == "read" and (tuple(value.shape) != record.shape):
                        problems.append(f"record {record.index} read() gave shape {value.shape}, "
                                        f"declared {record.shape}")
                except td.TraceDiffError as exc:
                    problems += _one_line(f"record {record.index} {what}()", str(exc))
                except Exception as exc:
                    problems.append(f"record {record.index} {what}() raised {type(exc).__name__}: "
                                    f"{_first_line(exc)}")
    return problems


def cli_commands(path: str, other: str, out: str, mutated_is_a: bool = True, full: bool = True) -> list:
    """The verbs a case runs; ``full`` adds the rendered tables and the HTML/Markdown reports
    (rich rendering is most of a case's time, so the bench renders one case in ten)."""
    a, b = (path, other) if mutated_is_a else (other, path)
    commands = [
        ["show", path, "--json", os.path.join(out, "show.json")],
        ["diff", a, b, "--json", os.path.join(out, "diff.json"), "--quiet"],
        ["check", path, "--json", os.path.join(out, "check.json")],
    ]
    if full:
        commands += [
            ["show", path],
            ["diff", a, b, "--html", os.path.join(out, "d.html"), "--markdown", os.path.join(out, "d.md")],
            ["check", path],
        ]
    return commands


def probe_cli(argv: list) -> list:
    """``tracediff.cli.main(argv)`` in-process: exit 0/1 with a result, or 2 with one line."""
    from tracediff.cli import main

    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            code = main(argv)
        except SystemExit as exc:
            code = exc.code
    _tally(argv[0] + (" --json" if argv[0] == "show" and "--json" in argv else ""), f"exit {code}")
    return judge(argv, code, stderr.getvalue())


def judge(argv, code, err: str) -> list:
    """What is wrong with a CLI answer (empty when it is a result or one clear error line)."""
    verb = argv[0]
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if not line.startswith("tracediff: warning")]
    allowed = (0,) if verb == "show" else (0, 1)
    if code in allowed:
        return [f"{verb} exited {code} but wrote {errors[0]!r}"] if errors else []
    if code != 2:
        return [f"{verb} exited {code!r}: {errors[:1]}"]
    if len(errors) != 1:
        return [f"{verb} exited 2 with {len(errors)} error lines: {errors[:3]}"]
    line = errors[0]
    if "Traceback" in err or "(run again with --debug" in line:
        return [f"{verb}: unexpected exception: {line}"]
    if not line.startswith(f"tracediff {verb}: error: "):
        return [f"{verb}: error line does not say which verb failed: {line!r}"]
    return []


def _tally(what, outcome):
    TALLY[(what, outcome)] = TALLY.get((what, outcome), 0) + 1


def _one_line(where, message) -> list:
    if "\n" in message.strip() or not message.strip():
        return [f"{where}: error message is not one line: {message!r}"]
    return []


def _first_line(exc) -> str:
    text = str(exc)
    return text.splitlines()[0] if text else ""


@contextlib.contextmanager
def guarded(timeout_s=CASE_TIMEOUT_S, memory=MEMORY_CAP):
    """Run a case under a time limit (CaseTimeout) and an address-space cap (MemoryError)."""
    def on_alarm(signum, frame):
        raise CaseTimeout(f"case ran past {timeout_s} s")

    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    mapped = _mapped_bytes()
    cap = mapped + memory if mapped else resource.RLIM_INFINITY
    if hard != resource.RLIM_INFINITY:
        cap = min(cap, hard)
    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, timeout_s)
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _mapped_bytes() -> int:
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return 0


def run_case(damages, base_a: str, base_b: str, folder: str, mutated_is_a=True, full=True) -> list:
    """Damage a copy of base_a, then probe the API and the CLI; the problems found."""
    path = os.path.join(folder, "case.h5")
    out = os.path.join(folder, "out")
    os.makedirs(out, exist_ok=True)
    apply(damages, base_a, path)
    problems = []
    try:
        with guarded():
            problems += probe_api(path)
            for argv in cli_commands(path, base_b, out, mutated_is_a, full):
                problems += probe_cli(argv)
    except CaseTimeout as exc:
        problems.append(str(exc))
    except MemoryError:
        problems.append("MemoryError: the case tried to allocate past the memory cap")
    return problems


def signature(problem: str) -> str:
    """A problem without its paths and numbers, to count distinct failures."""
    import re
    return re.sub(r"\d+", "N", re.sub(r"/\S+", "PATH", problem))[:160]


HANG_S = 120   # a worker silent this long is stuck in C code (HDF5), which no alarm interrupts


def fuzz_cases(cases: int, seed: int, emit=None) -> tuple[dict, int]:
    """Run ``cases`` hypothesis cases; (signature -> (problem, damages), cases run).
    ``emit(kind, payload)`` hears of each case before it runs and after."""
    from hypothesis import HealthCheck, given, seed as hseed, settings

    failures, count = {}, [0]
    with tempfile.TemporaryDirectory() as folder:
        base_a, base_b = build_base(folder)

        @hseed(seed)
        @settings(max_examples=cases, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(damages=mutations(), mutated_is_a=st.booleans())
        def fuzz(damages, mutated_is_a):
            count[0] += 1
            full = count[0] % 10 == 0
            if emit:
                emit("case", repr(damages))
            problems = run_case(damages, base_a, base_b, folder, mutated_is_a, full)
            for problem in problems:
                failures.setdefault(signature(problem), (problem, damages))
            if emit:
                emit("done", {"problems": problems, "damages": repr(damages)})
                if count[0] % 100 == 0:
                    emit("tally", [[w, o, n] for (w, o), n in TALLY.items()])

        fuzz()
    return failures, count[0]


def worker(cases: int, seed: int):
    """One process of the bench: every case announced on stdout, as JSON lines."""
    def emit(kind, payload):
        print(json.dumps([kind, payload]), flush=True)

    _, done = fuzz_cases(cases, seed, emit)
    emit("tally", [[w, o, n] for (w, o), n in TALLY.items()])
    emit("end", done)


def _pump(stream, lines):
    for line in stream:
        lines.put(line)
    lines.put("")


def run_job(cases: int, seed: int, log) -> dict:
    """Run ``cases`` cases in worker processes; a worker stuck on a case past HANG_S is killed,
    the case reported as a hang, and a fresh worker (next seed) runs the cases left."""
    import queue
    import subprocess
    import threading

    job = {"cases": 0, "failures": [], "tally": {}, "hangs": 0}
    while job["cases"] < cases:
        proc = subprocess.Popen([sys.executable, __file__, "--worker", "--cases",
                                 str(cases - job["cases"]), "--seed", str(seed)],
                                stdout=subprocess.PIPE, text=True)
        lines = queue.Queue()
        # a thread, not select(): lines already in the pipe reader's buffer never wake select
        threading.Thread(target=_pump, args=(proc.stdout, lines), daemon=True).start()
        current, tally, ended, hung = None, {}, False, False
        while True:
            try:
                line = lines.get(timeout=HANG_S)
            except queue.Empty:
                proc.kill()
                hung = True
                job["hangs"] += 1
                job["cases"] += 1
                job["failures"].append([f"hang: no answer in {HANG_S} s", current])
                log(f"[seed {seed}] HANG on {current}")
                break
            if not line:
                break
            kind, payload = json.loads(line)
            if kind == "case":
                current = payload
            elif kind == "done":
                job["cases"] += 1
                current = None
                job["failures"] += [[p, payload["damages"]] for p in payload["problems"]]
                if job["cases"] % 500 == 0:
                    log(f"[seed {seed}] {job['cases']} cases")
            elif kind == "tally":
                tally = {(w, o): n for w, o, n in payload}
            elif kind == "end":
                ended = True
        proc.wait()
        for key, n in tally.items():
            job["tally"][key] = job["tally"].get(key, 0) + n
        if not (ended or hung) and job["cases"] < cases:
            job["failures"].append([f"worker exited with status {proc.returncode}", None])
            job["cases"] += 1
        seed += 7919
    return job


def main(argv=None):
    import argparse
    import threading

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=1, help="parallel worker processes")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.cases, args.seed)
        return 0
    started = time.perf_counter()

    def log(text):
        print(f"{text} ({time.perf_counter() - started:.0f} s)", file=sys.stderr, flush=True)

    share = [args.cases // args.jobs + (i < args.cases % args.jobs) for i in range(args.jobs)]
    jobs = [None] * args.jobs

    def run(i):
        jobs[i] = run_job(share[i], args.seed * 1000 + i, log)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(args.jobs)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    failures, tally = {}, {}
    for job in jobs:
        for problem, damages in job["failures"]:
            failures.setdefault(signature(problem), (problem, damages, 0))
            first, example, n = failures[signature(problem)]
            failures[signature(problem)] = (first, example, n + 1)
        for key, n in job["tally"].items():
            tally[key] = tally.get(key, 0) + n
    for problem, damages, n in failures.values():
        print(f"FAIL x{n} {problem}\n     damages: {damages}")
    for (what, outcome), count in sorted(tally.items()):
        print(f"  {what:12s} {outcome:8s} {count}")
    print(f"{sum(j['cases'] for j in jobs)} cases in {time.perf_counter() - started:.0f} s "
          f"({args.jobs} job(s), {sum(j['hangs'] for j in jobs)} hang(s)): "
          f"{len(failures)} distinct failure(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
