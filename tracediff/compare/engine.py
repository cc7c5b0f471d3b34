"""``td.diff``: align two traces, compare each pair (one pair of tensors in memory at a time),
name the first divergences and explain them."""
from __future__ import annotations

import functools
import math
import os
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ..dataflow import declared_inputs
from ..dtypes import EPSILON, as_float
from ..errors import TraceDiffError
from ..format import hash_algorithm
from ..ranks import diagnose as ranks_diagnose
from ..ranks import open_any
from ..trace import Record, Trace
from . import fp64 as fp64_rule
from . import hints, kinks, layout, quantized, step_summary, steps
from .align import ALIGN_MODES
from .align import align as align_records
from .decide import Decision, decide
from .findings import findings
from .graph import dataflow_graph
from .metrics import compare, identical, rms_of, same_bytes
from .precision import flowed_dtypes
from .rematch import rematch
from .report import FirstDivergence, Pair, Report
from .rules import Rules, load_tolerances, parse_tolerances
from .rules import load as load_rules
from .rules import parse as parse_rules
from .tolerances import TolerancePolicy

COMPUTED = ("forward", "backward", "param_grad", "loss")
PARAM_KINDS = ("param", "param_grad")
STAT_KEYS = ("max_abs", "max_rel", "mean_abs", "rmse", "rel_l2", "cosine", "mismatch_fraction",
             "argmax_abs", "nan_a", "nan_b", "inf_a", "inf_b", "p99", "sqnr_db", "min_rtol", "min_atol")
LAYOUT_SEARCH_LIMIT = 1 << 26     # elements: larger same-shape pairs skip the flatten-order search
MAX_COMPARE_THREADS = 4           # pairs compared at once (their mapped pages are held meanwhile)
THREADED_PAIR_BYTES = 1 << 19     # smaller pairs are compared faster than a thread hand-off
                                  # (a diff of 128 KiB pairs: 0.19 s inline, 0.28 s on threads)
HIST_BIN = 0.25                   # decades per histogram bin
HIST_CHUNK = 1 << 18
MARGIN_OVER_IDENTITY = 4.0      # a flatten order shown only where it explains the values this much better
INTRODUCED_GROWTH = 10.0          # error growing less than this across a layer was inherited


def diff(a, b, *, rtol=None, atol=None, align="auto", rename=None, tolerances=None,
         progress=None, fp64=None, dask=None) -> Report:
    """Compare trace ``a`` (candidate) with trace ``b`` (reference); paths or opened traces.

    ``rename``: a rules file path, a dict (parsed TOML) or Rules; ``tolerances``: a TOML path,
    a dict ``{"glob": {"rtol":..,"atol":..}}`` or a list of LayerTolerance. ``progress(done,
    total)`` is called after each pair. ``fp64``: a float64 run of the reference (path or
    opened trace); each pair is then judged by how close a is to it against how close b is
    (``compare/fp64.py``). ``dask``: ``"local:N"``, a scheduler address or a
    ``distributed.Client``; the pairs are then compared on that cluster (``tracediff/dask``).
    """
    if align not in ALIGN_MODES:
        raise TraceDiffError(f"unknown alignment {align!r}: use one of {', '.join(ALIGN_MODES)}")
    for label, value in (("rtol", rtol), ("atol", atol)):
        if value is not None and (not isinstance(value, (int, float)) or isinstance(value, bool)
                                  or not math.isfinite(value) or value < 0):
            raise TraceDiffError(f"{label} must be a finite number >= 0, got {value!r}")
    rules = _rules(rename)
    policy = TolerancePolicy(rtol, atol, list(rules.tolerances) + _tolerances(tolerances))
    started = time.perf_counter()
    opened = []
    try:
        trace_a, trace_b = _open(a, opened), _open(b, opened)
        trace_g = None
        if fp64 is not None:
            trace_g = _open(fp64, opened)
            fp64_rule.check_float64(trace_g)
        rank_findings = ranks_diagnose.prepare(trace_a, trace_b)   # multi-rank traces only
        cluster = None
        if dask is not None:   # after the traces: a bad path is refused before a cluster starts
            from ..dask import connect
            cluster = connect(dask)
            opened.append(cluster)
        report = _diff(trace_a, trace_b, align, rules, policy, progress, started, trace_g, cluster)
        if rank_findings:
            ranks_diagnose.annotate(report, rank_findings)
        return report
    finally:
        for trace in reversed(opened):
            trace.close()


def _open(value, opened):
    """An opened trace; the ones opened here are appended to ``opened`` (to close)."""
    if isinstance(value, Trace):
        return value
    if isinstance(value, (str, os.PathLike)):
        trace = open_any(value)   # a trace file, or a multi-rank trace folder
        opened.append(trace)
        return trace
    raise TraceDiffError(f"diff takes trace paths or opened traces, got {type(value).__name__}")


def _rules(rename) -> Rules:
    if rename is None:
        return Rules()
    if isinstance(rename, Rules):
        return rename
    if isinstance(rename, dict):
        return parse_rules(rename, "rename rules")
    return load_rules(rename)


def _tolerances(tolerances) -> list:
    if tolerances is None:
        return []
    if isinstance(tolerances, dict):
        return parse_tolerances({"tolerances": tolerances}, "tolerances")
    if isinstance(tolerances, (list, tuple)):
        return list(tolerances)
    return load_tolerances(tolerances)


def depths(trace) -> dict:
    """Record index -> depth: one plus the computed records before it in its step."""
    out, count, step = {}, 0, None
    for r in trace:
        if r.position != step:
            step, count = r.position, 0
        if r.kind in COMPUTED:
            count += 1
            out[r.index] = count
        else:
            out[r.index] = 1
    return out


def _diff(ta, tb, mode, rules, policy, progress, started, tg=None, cluster=None) -> Report:
    for trace in (ta, tb):
        if len(trace) == 0:  # "0 pairs match" would pass a run that recorded nothing
            raise TraceDiffError(f"{trace.path} holds no records, so there is nothing to compare: "
                                 "record the run again (was the recorder closed before the model ran?)")
    aligned, unmatched_a, unmatched_b = align_records(ta, tb, mode, rules)
    fwd_a = any(r.kind == "forward" for r in ta)
    fwd_b = any(r.kind == "forward" for r in tb)
    if fwd_a and fwd_b and not any(p.b.kind == "forward" for p in aligned):
        raise TraceDiffError(
            f"no forward record of {ta.path} could be aligned with {tb.path}: give rename rules "
            "(--rename RULES) or pair records by position (--align order)")
    named = tb.dims or ta.dims
    dims = layout.Dims(named or {}, factorisations=_declared_flattens(ta, tb))
    depth = depths(tb)
    pairs = []
    total = len(aligned)
    flowed_a, flowed_b = flowed_dtypes(ta), flowed_dtypes(tb)   # the lowest precision on the way
    tols = [policy.resolve(item.b.kind, item.a.name, item.b.name,
                           flowed_a.get(item.a.index, item.a.dtype),
                           flowed_b.get(item.b.index, item.b.dtype),
                           depth.get(item.b.index, 1)) for item in aligned]
    jobs = [(*steps.windowed(item.a, item.b, item.window), tol) for item, tol in zip(aligned, tols)]
    compared = (cluster.compare(jobs, dims, ta, tb, compare_pair) if cluster is not None
                else _compare_all(jobs, dims))
    missing = []
    for done, (item, pair, tol) in enumerate(zip(aligned, compared, tols), 1):
        if not isinstance(pair, Pair):   # a pair the cluster lost (dask/cluster.py Missing)
            missing.append(pair.to_dict())
            continue
        pair.match, pair.confidence, pair.window = item.match, item.confidence, item.window
        _limit_rel_l2(pair, tol)
        pairs.append(pair)
        if progress is not None:
            progress(done, total)

    def compare_one(ra, rb):
        tol = policy.resolve(rb.kind, ra.name, rb.name, flowed_a.get(ra.index, ra.dtype),
                             flowed_b.get(rb.index, rb.dtype), depth.get(rb.index, 1))
        pair = compare_pair(ra, rb, tol, dims)
        _limit_rel_l2(pair, tol)
        return pair

    if mode == "auto":
        pairs, unmatched_a, unmatched_b = rematch(pairs, unmatched_a, unmatched_b, ta, tb,
                                                  compare_one)
    _break_ties_by_producer(pairs, ta, tb, dims)
    _follow_producer_layouts(pairs, ta, tb, dims)
    if tg is not None:
        fp64_rule.judge(pairs, ta, tb, tg)
    _follow_declared_layouts(pairs, ta, tb)
    kinks.excuse(pairs, ta, tb)
    first = FirstDivergence(
        forward=next((p for p in pairs if p.kind == "forward" and p.diverged), None),
        backward=next((p for p in pairs if p.kind == "backward" and p.diverged), None),
        param_grad=next((p for p in pairs if p.kind == "param_grad" and p.diverged), None),
        first=next((p for p in pairs if p.diverged), None))
    histogram = {"forward": None, "backward": None}
    explained = set()
    for which in ("forward", "backward", "param_grad"):
        pair = getattr(first, which)
        if pair is None:
            continue
        pair.introduced = _introduced(pair, pairs, first)
        histogram_out = _explain(pair, ta, tb, pairs, dims, explained)
        if which in histogram:
            histogram[which] = histogram_out
    for pair in pairs:
        if pair.diverged and pair.kind in ("param", "param_grad") and pair.b_index not in explained:
            _explain(pair, ta, tb, pairs, dims, explained)
    return Report(
        a={"path": ta.path, "framework": ta.framework},
        b={"path": tb.path, "framework": tb.framework},
        pairs=pairs, first_divergence=first,
        unmatched={"a": [r.name for r in unmatched_a], "b": [r.name for r in unmatched_b]},
        unmatched_records={"a": [_brief(r) for r in unmatched_a], "b": [_brief(r) for r in unmatched_b]},
        histogram=histogram, dims=named, elapsed_s=time.perf_counter() - started,
        findings=findings(aligned, pairs, ta, tb), steps=step_summary.summarize(pairs),
        graph=dataflow_graph(ta, tb), missing=missing)


def _declared_flattens(*traces) -> tuple:
    """The merged axes that flatten records declare (meta ``unflattened_shape``): a Keras
    Flatten's (H, W, C), which the Dense kernel after it merges into one axis too."""
    out = []
    for trace in traces:
        for r in trace:
            if r.kind == "forward" and "unflattened_shape" in r._meta_text:
                for group in layout.declared_factorisations(r.shape, r.meta.get("unflattened_shape")):
                    if group not in out:
                        out.append(group)
    return tuple(out)


def _compare_all(jobs, dims):
    """``compare_pair`` of each ``(a, b, tolerance)``, in order. Pairs whose values are read at
    size go through the compiled kernel, which releases the GIL and is bound by memory and page
    faults, so a few threads compare several such pairs at once; the others (settled from the
    index, stats-only samples, small tensors) are Python work, done in this thread. Each
    pair's result depends on that pair alone."""
    heavy = [i for i, (a, b, _) in enumerate(jobs) if _reads_values(a, b)]
    workers = min(MAX_COMPARE_THREADS, os.cpu_count() or 1, len(heavy))
    if workers < 2:
        yield from (compare_pair(a, b, tol, dims) for a, b, tol in jobs)
        return
    pool = ThreadPoolExecutor(workers, thread_name_prefix="tracediff-compare")
    try:
        futures = {i: pool.submit(compare_pair, *jobs[i], dims) for i in heavy}
        for i, (a, b, tol) in enumerate(jobs):
            yield futures[i].result() if i in futures else compare_pair(a, b, tol, dims)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)   # an error stops the pairs not yet begun


def _reads_values(a: Record, b: Record) -> bool:
    """Whether ``compare_pair`` will read both tensors and compare them at size."""
    return (a.stored and b.stored and b.nbytes >= THREADED_PAIR_BYTES
            and not (a.hash and a.hash == b.hash))


def _break_ties_by_producer(pairs, ta, tb, dims):
    """A layout pair whose values several rearrangements reproduce equally (a constant or
    symmetric tensor) and that neither identity nor declared layouts settle takes the
    rearrangement its producing pair established: the record meta ``inputs`` names, else the
    forward pair before it."""
    by_b, forward = _producer_index(pairs)
    for pair in pairs:
        if not pair.tied or pair.status != "layout" or "chosen)" in (pair.hint or ""):
            continue
        producer = _producer(pair, tb, by_b, forward)
        options = [pair.rearrangement, *pair.tied]
        pick = None
        if producer is not None and producer.rearrangement is not None:
            want = layout.signature(producer.rearrangement)
            pick = next((c for c in options if layout.signature(c) == want), None) or \
                next((c for c in options if layout.consistent(c, want)), None)
        meta_a, meta_b = ta[pair.a_index].meta, tb[pair.b_index].meta
        if pick is not None:
            pair.rearrangement = pick
            pair.hint = layout.describe_match(pick, pair.shape_a, dims, meta_a.get("layout"),
                                              meta_b.get("layout"))
            pair.hint += (f" ({len(options)} layouts reproduce these values; the one of "
                          f"{producer.kind} {producer.label()}, which produced it, chosen)")
        else:
            pair.hint += (f" ({len(options)} layouts reproduce these values: constant or symmetric "
                          "values cannot tell them apart)")


def _follow_producer_layouts(pairs, ta, tb, dims):
    """A same-shape pair whose values differ is tried with the rearrangement its producing pair
    established: a channels-last port of a net with C = H = W (8 channels of 8x8 maps) has NHWC
    and NCHW activations of one shape, which a ReLU without a declared layout shows only through
    the BatchNorm before it. Taken where it reproduces the values, with the producer's verdict
    (a declared NHWC<->NCHW is no divergence)."""
    by_b, forward = _producer_index(pairs)
    for pair in sorted(pairs, key=lambda p: (p.kind != "forward", p.b_index)):
        if pair.status != "diverged" or pair.rearrangement is not None \
                or pair.shape_a != pair.shape_b or len(pair.shape_a) < 2:
            continue
        producer = _producer(pair, tb, by_b, forward)
        found = producer.rearrangement if producer is not None else None
        if found is None or producer.status != "layout" or tuple(found.b_shape) != tuple(pair.shape_b) \
                or found.is_identity(math.prod(pair.shape_b)):
            continue
        ra, rb = steps.records(pair, ta, tb)
        if not (ra.stored and rb.stored):
            continue
        a, b = ra.view(), rb.view()
        tol = pair.tolerance
        cmp = compare(found.apply(a), b, tol["rtol"], tol["atol"], b_rms=rms_of(b))
        if not cmp.passed:
            continue
        pair.status, pair.rearrangement = "layout", found
        pair.stats, pair.worst = cmp.stats(), cmp.worst()
        pair.diverged = producer.diverged
        pair.hint = (layout.describe_match(found, a.shape, dims, ra.meta.get("layout"),
                                           rb.meta.get("layout"))
                     + f" (the layout of {producer.kind} {producer.label()}, which produced it"
                     + (")" if producer.diverged else ": not a divergence)"))


def _producer_index(pairs):
    """What ``_producer`` looks pairs up in: the first pair of each b record, and the forward
    pairs."""
    by_b = {}
    for p in pairs:
        by_b.setdefault(p.b_index, p)
    return by_b, [p for p in pairs if p.kind == "forward"]


def _producer(pair, tb, by_b, forward):
    if pair.kind != "forward":   # a gradient is laid out as its forward record
        return next((p for p in forward if (p.a_name, p.a_call, p.b_name, p.b_call)
                     == (pair.a_name, pair.a_call, pair.b_name, pair.b_call)), None)
    for source in declared_inputs(tb[pair.b_index]) or []:
        for p in by_b.values():
            if (p.kind, p.b_name, p.b_call) == source:
                return p
    before = [p for p in forward if p.b_index < pair.b_index and p.position == pair.position
              and p.rearrangement is not None]
    return before[-1] if before else None


def _follow_declared_layouts(pairs, ta, tb):
    """A layout pair is no divergence when it rearranges axes as a pair with declared, matching
    layouts does: a channels-last port's activations, its flatten, its Dense kernel."""
    accepted = [(layout.signature(p.rearrangement), p) for p in pairs
                if p.status == "layout" and not p.diverged and p.rearrangement is not None]
    if not accepted:
        return
    for pair in pairs:
        if pair.status != "layout" or not pair.diverged or pair.rearrangement is None \
                or pair.contradicts_declared:
            continue
        meta_a, meta_b = ta[pair.a_index].meta, tb[pair.b_index].meta
        for signature, source in accepted:
            if source.kind in PARAM_KINDS and pair.kind not in PARAM_KINDS:
                continue     # a kernel's IO/OI must not excuse a transposed activation
            if layout.consistent(pair.rearrangement, signature, meta_a.get("layout"), meta_b.get("layout")):
                pair.diverged = False
                pair.hint += (f" (as the declared layouts of {source.kind} {source.label()}: "
                              "not a divergence)")
                break


def _limit_rel_l2(pair: Pair, tol):
    """16-bit defaults also bound the whole tensor's relative error (tolerances.py)."""
    rel = pair.stats.get("rel_l2")
    if tol.rel_l2 is None or pair.status != "ok" or rel is None or rel <= tol.rel_l2:
        return
    pair.status, pair.diverged = "diverged", True
    pair.hint = (f"every element is within rtol {tol.rtol:.3g}, but the tensor's relative error "
                 f"rel_l2 {rel:.3g} exceeds {tol.rel_l2:.3g} ({tol.precision}'s limit)")


def _brief(r: Record) -> dict:
    out = {"name": r.name, "kind": r.kind, "call": r.call, "step": r.step, "shape": list(r.shape)}
    for key in ("decode_step", "batch_index"):   # only in traces that have them
        if getattr(r, key) >= 0:
            out[key] = getattr(r, key)
    return out


@functools.lru_cache(maxsize=64)
def category(dtype: str) -> str:
    """bool, int, float or complex: pairs of different categories are a dtype_mismatch."""
    if dtype == "bool":
        return "bool"
    if dtype.startswith(("int", "uint")):
        return "int"
    if dtype.startswith("complex"):
        return "complex"
    return "float"


def rms_from_stats(r: Record) -> float | None:
    s = r.stats
    try:
        finite = int(s["numel"]) - int(s["nan"]) - int(s["inf"])
        l2 = float(s["l2"])
    except (KeyError, TypeError, ValueError):
        return None
    if finite <= 0 or not math.isfinite(l2):
        return 0.0
    return l2 / math.sqrt(finite)


def _empty_stats(ra, rb) -> dict:
    out = {k: None for k in STAT_KEYS}
    out.update({"argmax_abs": [], "nan_a": int(ra.stats.get("nan") or 0), "nan_b": int(rb.stats.get("nan") or 0),
                "inf_a": int(ra.stats.get("inf") or 0), "inf_b": int(rb.stats.get("inf") or 0),
                "sampled": False})
    return out


def _identical_stats(r: Record) -> dict:
    out = {"max_abs": 0.0, "max_rel": 0.0, "mean_abs": 0.0, "rmse": 0.0, "rel_l2": 0.0, "cosine": 1.0,
           "mismatch_fraction": 0.0, "argmax_abs": [0] * len(r.shape) if r.numel else [],
           "nan_a": int(r.stats["nan"]), "nan_b": int(r.stats["nan"]), "inf_a": int(r.stats["inf"]),
           "inf_b": int(r.stats["inf"]), "p99": 0.0, "sqnr_db": math.inf, "min_rtol": 0.0,
           "min_atol": 0.0, "numel": r.numel, "sampled": False, "identical_hash": True}
    return out


def compare_pair(ra: Record, rb: Record, tol, dims) -> Pair:
    """Compare one aligned pair; reads at most the two tensors. A quantized record against a
    float one is compared dequantized (``quantized.pairing``)."""
    dequantized = quantized.pairing(ra, rb, tol)
    if dequantized is None:
        return _compare_pair(ra, rb, tol, dims)
    a, b, tolerance, rule, note = dequantized
    pair = _compare_pair(a, b, tolerance, dims)
    pair.dtype_a, pair.dtype_b = ra.dtype, rb.dtype
    pair.tolerance.update(rule)
    pair.hint = note if pair.hint is None else f"{note}; {pair.hint}"
    return pair


def _compare_pair(ra: Record, rb: Record, tol, dims) -> Pair:
    """Compare one aligned pair; reads at most the two tensors. ``dims``: the named dims, a
    ``layout.Dims`` where the traces' flattens declare how they merged axes."""
    factorisations = getattr(dims, "factorisations", ())
    pair = Pair(a_name=ra.name, b_name=rb.name, kind=rb.kind, status="ok", shape_a=list(ra.shape),
                shape_b=list(rb.shape), stats={}, tolerance=tol.to_dict(), a_call=ra.call,
                b_call=rb.call, a_index=ra.index, b_index=rb.index, step=rb.step,
                decode_step=max(ra.decode_step, rb.decode_step),
                batch_index=max(ra.batch_index, rb.batch_index),
                dtype_a=ra.dtype, dtype_b=rb.dtype)
    b_rms = rms_from_stats(rb)
    dtype_clash = category(ra.dtype) != category(rb.dtype)
    cmp = None
    if (not ra.stored and not rb.stored and ra.hash and ra.hash == rb.hash
            and ra.dtype == rb.dtype and ra.shape == rb.shape):
        pair.stats = _identical_stats(rb)
        return _finish(pair, None, dtype_clash)
    if not (ra.stored and rb.stored):
        if ra.shape != rb.shape:
            pair.status = "shape_mismatch"
            pair.stats = _empty_stats(ra, rb)
            pair.hint = layout.describe_mismatch(ra.shape, rb.shape, dims) + \
                " (stats-only records: the layout cannot be searched)"
            return _finish(pair, None, dtype_clash)
        _, va = ra.sample()
        ib, vb = rb.sample()
        cmp = compare(va, vb, tol.rtol, tol.atol, b_rms=b_rms, flat_index=ib, logical_shape=rb.shape)
        return _finish(pair, cmp, dtype_clash)
    norms = _norms(ra, rb)
    if norms and ra.hash and ra.hash == rb.hash and ra.dtype == rb.dtype and ra.shape == rb.shape:
        ra.check_span()
        rb.check_span()
        return _finish(pair, identical(rb.shape, **norms), dtype_clash)  # same bytes: not even read
    a, b = ra.view(), rb.view()
    # a rerun of the same model: no arithmetic to do. Equal bytes hash alike, so this can only
    # find what the hashes could not tell (records hashed by different algorithms, or not at all)
    if norms and not _hashed_alike(ra, rb) and same_bytes(a, b):
        return _finish(pair, identical(a.shape, **norms), dtype_clash)
    if b_rms is None:
        b_rms = rms_of(b)

    def close(x, y):
        return compare(x, y, tol.rtol, tol.atol, b_rms=b_rms).passed

    layout_a, layout_b = ra.meta.get("layout"), rb.meta.get("layout")
    if a.shape == b.shape:
        cmp = compare(a, b, tol.rtol, tol.atol, b_rms=b_rms, **norms)
        if not cmp.passed and cmp.nonfinite_mismatches == 0 and a.ndim >= 2 and a.size <= LAYOUT_SEARCH_LIMIT \
                and not dtype_clash:
            declared = _declared_rearrangement(a, b, close, layout_a, layout_b)
            if declared is not None:     # a square weight: IO against OI, equal sizes
                cmp = compare(declared.apply(a), b, tol.rtol, tol.atol, b_rms=b_rms, **norms)
                pair.status, pair.rearrangement = "layout", declared
                pair.hint = (layout.describe_match(declared, a.shape, dims, layout_a, layout_b)
                             + f" (declared layouts {layout_a} and {layout_b})")
                return _finish(pair, cmp, dtype_clash, declared_layout=True)
            search = _search(ra, rb, dims, factorisations)
            # equal shapes: only a flatten in another axis order is a layout; equal-sized axes
            # swapped keep the transpose hint of a plain divergence
            others = [c for c in search.candidates if c.flatten and not c.is_identity(b.size)]
            decision = decide(a, b, others, close, layout_a, layout_b)
            if decision.passed:
                cmp = compare(decision.apply(a), b, tol.rtol, tol.atol, b_rms=b_rms, **norms)
                _set_layout(pair, decision, a.shape, dims, layout_a, layout_b)
            elif decision.chosen is not None and decision.clear:
                closer = compare(decision.chosen.apply(a), b, tol.rtol, tol.atol, b_rms=b_rms, **norms)
                if closer.rel_l2 is not None and cmp.rel_l2 is not None and closer.rel_l2 * MARGIN_OVER_IDENTITY < cmp.rel_l2:
                    cmp = closer      # a flatten in another order, and values that differ too
                    pair.rearrangement = decision.chosen
                    pair.hint = (f"a is {layout.shape_text(a.shape, dims)}, b is {layout.shape_text(b.shape, dims)}: "
                                 f"values differ even after {_how(decision.chosen)} (rel_l2 {_fmt(cmp.rel_l2)}, "
                                 f"the closest of {len(others)} candidate layouts)")
        return _finish(pair, cmp, dtype_clash)
    if a.size != b.size:
        pair.status = "shape_mismatch"
        pair.stats = _empty_stats(ra, rb)
        pair.hint = layout.describe_mismatch(a.shape, b.shape, dims)
        return _finish(pair, None, dtype_clash)
    if layout.squeezed(a.shape) == layout.squeezed(b.shape):
        cmp = compare(a.reshape(b.shape), b, tol.rtol, tol.atol, b_rms=b_rms, **norms)
        if cmp.passed or cmp.nonfinite_mismatches or dtype_clash:
            pair.hint = (f"a is {layout.shape_text(a.shape, dims)}, b is {layout.shape_text(b.shape, dims)}: "
                         "the same values in the same order (they differ in size-1 axes only)")
            return _finish(pair, cmp, dtype_clash)
    search = _search(ra, rb, dims, factorisations)
    decision = decide(a, b, search.candidates, close, layout_a, layout_b) if not dtype_clash else Decision()
    if decision.passed:
        cmp = compare(decision.apply(a), b, tol.rtol, tol.atol, b_rms=b_rms, **norms)
        declared = _set_layout(pair, decision, a.shape, dims, layout_a, layout_b)
        return _finish(pair, cmp, dtype_clash, declared_layout=declared)
    pair.status = "shape_mismatch"
    pair.hint = layout.describe_mismatch(a.shape, b.shape, dims)
    if decision.chosen is not None and not decision.clear:
        cmp = compare(decision.chosen.apply(a), b, tol.rtol, tol.atol, b_rms=b_rms)
        pair.hint += (f"; no candidate layout of {len(search.candidates)} reproduces the values (through "
                      f"{_how(decision.chosen)}: rel_l2 {_fmt(cmp.rel_l2)})")
    elif decision.chosen is not None:
        cmp = compare(decision.chosen.apply(a), b, tol.rtol, tol.atol, b_rms=b_rms)
        if decision.chosen.flatten or len(search.candidates) > 1:
            pair.hint += (f"; values differ even after {_how(decision.chosen)} "
                          f"(rel_l2 {_fmt(cmp.rel_l2)}, the closest of {len(search.candidates)} candidate layouts)")
        else:
            pair.hint += f"; values differ even after permuting (rel_l2 {_fmt(cmp.rel_l2)})"
    if search.bounded:
        pair.hint += (f"; the layout search stopped at {layout.MAX_CANDIDATES} candidates: declare the "
                      "layouts (meta layout, unflattened_shape) or give the axes distinct sizes")
    if decision.chosen is not None:
        pair.stats = cmp.stats()
        pair.worst = cmp.worst()
        pair.rearrangement = decision.chosen
        return _finish(pair, None, dtype_clash)
    pair.stats = _empty_stats(ra, rb)
    return _finish(pair, None, dtype_clash)


def _search(ra: Record, rb: Record, dims, factorisations) -> layout.Search:
    return layout.candidates(ra.shape, rb.shape, dims, declared_a=ra.meta.get("unflattened_shape"),
                             declared_b=rb.meta.get("unflattened_shape"), factorisations=factorisations)


def _how(r) -> str:
    verb = "un-flattening a and permuting axes" if r.flatten else "permuting axes"
    return f"{verb} {layout.whole_axis_perm(r)}"


def _set_layout(pair: Pair, decision, shape_a, dims, layout_a, layout_b) -> bool:
    """Mark a pair whose values match after the chosen rearrangement; whether the records'
    declared layouts map onto each other by it."""
    found = decision.chosen
    pair.status = "layout"
    pair.rearrangement = found
    pair.hint = layout.describe_match(found, shape_a, dims, layout_a, layout_b)
    declared = layout.declared_equivalent(found, layout_a, layout_b)
    if declared:
        pair.hint += f" (declared layouts {layout_a} and {layout_b})"
    elif layout.both_declared(found, layout_a, layout_b):
        pair.contradicts_declared = True
        pair.hint += (f"; this contradicts the declared layouts {layout_a} and {layout_b}: "
                      "an axis is not what its record declares (a transposed image, H and W swapped)")
    if decision.tied:
        pair.tied = list(decision.tied)
        if decision.reason:
            pair.hint += (f" ({len(decision.tied) + 1} layouts reproduce these values; "
                          f"{'identity' if decision.reason == 'identity' else 'the declared layout'} chosen)")
    return declared


def _hashed_alike(ra: Record, rb: Record) -> bool:
    return bool(ra.hash and rb.hash) and hash_algorithm(ra.hash) == hash_algorithm(rb.hash)


def _norms(ra: Record, rb: Record) -> dict:
    """The L2 norms the records' statistics hold, when they cover every element."""
    try:
        if any(int(r.stats["nan"]) or int(r.stats["inf"]) for r in (ra, rb)):
            return {}
        if any(category(r.dtype) == "complex" for r in (ra, rb)):
            return {}
        a_l2, b_l2 = float(ra.stats["l2"]), float(rb.stats["l2"])
    except (KeyError, TypeError, ValueError):
        return {}
    if not (abs(a_l2) < 1e150 and abs(b_l2) < 1e150):  # squared by the kernel: must stay finite
        return {}
    return {"a_l2": a_l2, "b_l2": b_l2}


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.3g}"


def _declared_rearrangement(a, b, close, layout_a, layout_b):
    """The permutation two declared layouts imply (a square weight: ``IO`` against ``OI``), when
    it reproduces b's values; None otherwise. Equal sizes cannot show it, the declarations can."""
    perm = _declared_permutation(a.shape, b.shape, layout_a, layout_b)
    if perm is None:
        return None
    found = layout.plain(a.shape, b.shape, perm)
    return found if close(found.apply(a), b) else None


def _declared_permutation(shape_a, shape_b, layout_a, layout_b):
    """The axis permutation from layout_a's letters to layout_b's, where it maps shape_a onto
    shape_b; None otherwise."""
    if not isinstance(layout_a, str) or not isinstance(layout_b, str) or layout_a == layout_b:
        return None
    if len(layout_a) != len(shape_a) or sorted(layout_a) != sorted(layout_b) \
            or len(set(layout_a)) != len(shape_a):
        return None
    perm = tuple(layout_a.index(c) for c in layout_b)
    return perm if tuple(shape_a[p] for p in perm) == tuple(shape_b) else None


def _finish(pair: Pair, cmp, dtype_clash, declared_layout=False) -> Pair:
    if cmp is not None:
        pair.stats = cmp.stats()
        pair.worst = cmp.worst()
        if cmp.nonfinite_mismatches:
            pair.status = "nonfinite"
            where = list(map(int, np.unravel_index(cmp.first_nonfinite, cmp.shape))) if cmp.shape else []
            s = pair.stats
            pair.hint = (f"non-finite values differ: a has {s['nan_a']} NaN / {s['inf_a']} Inf, "
                         f"b has {s['nan_b']} NaN / {s['inf_b']} Inf; first at {where}")
            pair.stats["first_nonfinite"] = where
        elif pair.status == "ok" and not cmp.passed:
            pair.status = "diverged"
        elif pair.status == "layout" and not cmp.passed:
            pair.status = "shape_mismatch" if pair.shape_a != pair.shape_b else "diverged"
    if dtype_clash and pair.status in ("ok", "diverged"):
        pair.status = "dtype_mismatch"
        note = f"a is {pair.dtype_a}, b is {pair.dtype_b}: different kinds of number"
        pair.hint = note if pair.hint is None else f"{note}; {pair.hint}"
    pair.diverged = pair.status != "ok" and not (pair.status == "layout" and declared_layout)
    return pair


# -- explanations of the first divergences (a second read of those pairs only) -------------

def _introduced(pair: Pair, pairs: list, first: FirstDivergence) -> dict:
    """Was the error introduced at this record, or inherited from the record before it?"""
    before = [p for p in pairs if p.b_index < pair.b_index and p.position == pair.position]
    if pair.kind == "forward":
        previous = [p for p in before if p.kind == "forward"] or [p for p in before if p.kind == "input"]
    elif pair.kind == "backward":
        previous = [p for p in before if p.kind == "backward"] or [p for p in before if p.kind == "loss"]
    else:
        previous = [p for p in before if p.kind == "backward"]
    rel = pair.rel_l2
    if not previous:
        return {"verdict": "introduced here", "previous": None, "previous_rel_l2": None,
                "rel_l2": rel, "growth": None,
                "reason": "no aligned record precedes it"}
    prev = previous[-1]
    prev_rel = prev.rel_l2
    growth = None
    if rel is not None and prev_rel is not None:
        growth = math.inf if prev_rel == 0 else rel / prev_rel
    if prev.diverged:
        verdict, reason = "inherited", f"{prev.kind} {prev.label()} already diverges"
    elif growth is None or growth >= INTRODUCED_GROWTH:
        verdict, reason = "introduced here", "the error grows across this record"
    else:
        verdict, reason = "inherited", (f"the error was already {prev_rel:.3g} at {prev.label()} and grew only "
                                        f"x{growth:.3g}: look upstream or loosen the tolerance")
    if pair.kind != "forward" and first.forward is not None and first.forward.b_index < pair.b_index:
        reason += f"; the forward pass already diverges at {first.forward.label()}"
    return {"verdict": verdict, "previous": prev.label(), "previous_kind": prev.kind,
            "previous_rel_l2": prev_rel, "rel_l2": rel, "growth": growth, "reason": reason}


def _explain(pair: Pair, ta, tb, pairs, dims, explained) -> dict | None:
    """Hint and error histogram of one diverged pair, reading its two tensors again. Hints look
    at the leading HINT_LIMIT elements; the histogram covers every element, chunk by chunk."""
    explained.add(pair.b_index)
    ra, rb = steps.records(pair, ta, tb)
    if not (ra.stored and rb.stored) or pair.status in ("shape_mismatch", "nonfinite"):
        return None
    if pair.status == "layout" or ra.shape != rb.shape:
        return _histogram_of(pair, None, None)
    a, b = ra.view(), rb.view()
    if category(ra.dtype) == "complex" or category(rb.dtype) == "complex":
        return _histogram_of(pair, a, b)
    lead_a = np.asarray(as_float(hints.leading(a)), np.float64)
    lead_b = np.asarray(as_float(hints.leading(b)), np.float64)
    tol = pair.tolerance
    scale = np.maximum(np.abs(lead_b), rms_from_stats(rb) or 0.0)
    bad = np.abs(lead_a - lead_b) > tol["atol"] + tol["rtol"] * scale
    del scale
    previous = None
    if pair.kind == "forward":
        before = [p for p in pairs if p.kind == "forward" and p.b_index < pair.b_index and p.position == pair.position]
        if before and before[-1].shape_b == pair.shape_b and rb.numel <= hints.HINT_LIMIT:
            prev_record = steps.records(before[-1], ta, tb)[1]
            if prev_record.stored:
                previous = prev_record.view()
    eps = max(EPSILON.get(pair.dtype_a, 0.0), EPSILON.get(pair.dtype_b, 0.0)) or None
    if pair.hint is None:
        pair.hint = hints.explain(lead_a, lead_b, bad_mask=bad, dims=dims, eps=eps, kind=pair.kind,
                                  min_rtol=pair.stats.get("min_rtol"), previous=previous)
    del lead_a, lead_b, bad, previous
    return _histogram_of(pair, a, b)


def _log_errors(a, b):
    """log10|a-b| of the nonzero finite differences, chunk by chunk; and the exact-match count."""
    fa, fb = a.reshape(-1), b.reshape(-1)
    wide = np.complex128 if np.iscomplexobj(fa) or np.iscomplexobj(fb) else np.float64
    for start in range(0, fb.size, HIST_CHUNK):
        ac = as_float(fa[start:start + HIST_CHUNK]).astype(wide)
        bc = as_float(fb[start:start + HIST_CHUNK]).astype(wide)
        d = np.abs(ac - bc)
        d = d[np.isfinite(d)]
        nonzero = d[d > 0]
        yield np.log10(nonzero), int(d.size - nonzero.size)


def _histogram_of(pair, a, b):
    """Histogram of log10|a-b| over every element (two passes: range, then counts)."""
    if a is None:
        return {"name": pair.label(), "edges": [], "counts": [], "exact": None}
    # one chunk: its logs are kept for the counting pass instead of being taken again
    kept = list(_log_errors(a, b)) if b.size <= HIST_CHUNK else None
    lo, hi, exact = math.inf, -math.inf, 0
    for logs, zeros in kept or _log_errors(a, b):
        exact += zeros
        if logs.size:
            lo, hi = min(lo, float(logs.min())), max(hi, float(logs.max()))
    if not math.isfinite(lo):
        return {"name": pair.label(), "edges": [], "counts": [], "exact": exact}
    lo = math.floor(lo / HIST_BIN) * HIST_BIN
    hi = math.ceil(hi / HIST_BIN) * HIST_BIN
    if hi <= lo:
        hi = lo + HIST_BIN
    bins = max(1, min(80, int(round((hi - lo) / HIST_BIN))))
    counts = np.zeros(bins, np.int64)
    edges = None
    for logs, _ in kept or _log_errors(a, b):
        part, edges = np.histogram(logs, bins=bins, range=(lo, hi))
        counts += part
    return {"name": pair.label(), "kind": pair.kind, "edges": [round(float(e), 6) for e in edges],
            "counts": [int(c) for c in counts], "exact": exact, "scale": "log10|a-b|"}
