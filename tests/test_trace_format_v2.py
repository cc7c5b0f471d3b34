"""Format v2: no variable-length data anywhere in the file (HDF5 keeps it in global heaps, where
one flipped bit hangs libhdf5), text fields as byte spans of the `strings` blob, checked on read;
format v1 traces still open."""
import importlib.util
import json
import pathlib
import shutil

import h5py
import ml_dtypes
import numpy as np
import pytest

import tracediff as td
from tracediff import format as fmt
from tracediff.cli import main

DATA = pathlib.Path(__file__).resolve().parent / "data"
V1_TRACE = DATA / "v1_trace.h5"
GLOBAL_HEAP = b"GCOL"   # the signature that starts every HDF5 global heap collection


def _load_v1_maker():
    spec = importlib.util.spec_from_file_location("make_v1_trace", DATA / "make_v1_trace.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_every_kind(path):
    """Every kind, meta, a stats-only record, non-ASCII names and attributes, two steps."""
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    with td.Recorder(path, framework="numpy", dims={"batch": 2, "größe": 3}, model="modèle σ",
                     seed=3, meta={"note": "naïve"}) as rec:
        for step in range(2):
            rec.step(step)
            rec.input("x", x)
            rec.param("fc1.weight", np.eye(3), grad=np.ones((3, 3)), role="weight")
            rec.forward("größe/σ", x @ np.eye(3), op_type="Linear", module="enc.größe")
            rec.forward("half", x.astype(ml_dtypes.bfloat16))
            rec.forward("stats only", np.tanh(x), values=False)
            rec.loss(np.float32(step + 0.5), loss_fn="cross_entropy")
            rec.backward("größe/σ", np.full((2, 3), 0.25))
    return path


@pytest.fixture
def trace_path(tmp_path):
    return write_every_kind(tmp_path / "v2.h5")


def _edit(path, **fields):
    """Set fields of row 1 of the index."""
    with h5py.File(path, "r+") as f:
        row = f["records"][1]
        for field, value in fields.items():
            row[field] = value
        f["records"][1] = row


def _span(path, index, field) -> tuple:
    """Byte range of text field ``field`` of record ``index`` in the strings blob."""
    with h5py.File(path, "r") as f:
        row = f["records"][index]
    start = int(row["strings_offset"])
    for name in fmt.TEXT_FIELDS:
        if name == field:
            return start, start + int(row[f"{name}_len"])
        start += int(row[f"{name}_len"])
    raise KeyError(field)


def _refusal(path) -> str:
    with pytest.raises(td.TraceDiffError) as err:
        td.open(path)
    return str(err.value)


# -- no global heap ------------------------------------------------------------------------------

def test_a_v2_trace_holds_no_global_heap(trace_path):
    assert GLOBAL_HEAP not in trace_path.read_bytes()
    with h5py.File(trace_path, "r") as f:
        for key in f.attrs:          # text attributes are fixed-length UTF-8
            kind = f.attrs.get_id(key).get_type()
            assert not (isinstance(kind, h5py.h5t.TypeStringID) and kind.is_variable_str()), key
        for name, dataset in f.items():
            assert not any(dataset.dtype[field].kind == "O" for field in (dataset.dtype.names or ())), name
            assert dataset.dtype.kind != "O", name
    trace = td.open(trace_path)
    assert [r.name for r in trace][:7] == ["x", "fc1.weight", "fc1.weight", "größe/σ", "half",
                                           "stats only", "loss"]
    # the dataflow default (issue 19): a forward record consumed the previous input/forward
    assert trace.get("größe/σ", step=1).meta == {"op_type": "Linear", "module": "enc.größe",
                                                 "inputs": [{"kind": "input", "name": "x", "call": 0}]}
    expected = np.tanh(np.arange(6, dtype=np.float32).reshape(2, 3))
    assert trace.get("stats only", step=0).hash == fmt.tensor_hash(expected)


def test_the_global_heap_check_finds_one_in_a_v1_trace():
    """The check above can fail: v1 kept the index's text in a global heap."""
    assert GLOBAL_HEAP in V1_TRACE.read_bytes()


def test_root_attributes_keep_their_python_values(trace_path):
    attrs = td.open(trace_path).attrs
    assert attrs["format_version"] == fmt.FORMAT_VERSION == 3
    assert (attrs["model"], attrs["seed"], attrs["values"], attrs["complete"]) == ("modèle σ", 3, True, True)
    assert json.loads(attrs["dims"]) == {"batch": 2, "größe": 3}
    assert json.loads(attrs["meta"]) == {"note": "naïve"}
    assert all(isinstance(attrs[key], str) for key in ("format", "framework", "created", "host"))


def test_index_rows_hold_numbers_and_spans_of_the_strings_blob(trace_path):
    with h5py.File(trace_path, "r") as f:
        assert f["records"].dtype == fmt.record_dtype()
        assert all(f["records"].dtype[n].kind in "iuf" for n in f["records"].dtype.names)
        assert f["strings"].dtype == np.uint8 and f["strings"].ndim == 1
        row = f["records"][3]
        start = int(row["strings_offset"])
        total = sum(int(row[f"{field}_len"]) for field in fmt.TEXT_FIELDS)
        text = bytes(f["strings"][start:start + total]).decode("utf-8")
    assert fmt.KINDS[row["kind"]] == "forward"
    digest = fmt.tensor_hash(np.arange(6, dtype=np.float32).reshape(2, 3) @ np.eye(3))
    assert text == 'größe/σfloat64[2, 3]' + digest + \
        '{"inputs": [{"kind": "input", "name": "x", "call": 0}], ' \
        '"op_type": "Linear", "module": "enc.gr\\u00f6\\u00dfe"}'


# -- format v1 is still read ---------------------------------------------------------------------

def test_a_v1_trace_still_opens_and_reads(tmp_path):
    path = tmp_path / "old.h5"
    shutil.copyfile(V1_TRACE, path)
    trace = td.open(path)
    assert trace.attrs["format_version"] == 1 and trace.complete
    assert (trace.attrs["model"], trace.attrs["seed"], trace.dims) == ("tiny v1", 5, {"batch": 2, "features": 3})
    assert [(r.kind, r.name, r.dtype, r.shape) for r in trace] == [
        ("input", "x", "float32", (2, 3)), ("param", "fc1.weight", "float64", (3, 4)),
        ("param_grad", "fc1.weight", "float64", (3, 4)), ("forward", "größe/σ", "float64", (2, 4)),
        ("forward", "half", "bfloat16", (2, 3)), ("forward", "stats only", "float64", (2, 4)),
        ("loss", "loss", "float32", ()), ("backward", "größe/σ", "float64", (2, 4))]
    assert trace.get("größe/σ").meta == {"op_type": "Linear"}
    assert trace.get("x", kind="input").read().tolist() == [[0, 1, 2], [3, 4, 5]]
    assert trace.get("half").read().dtype == ml_dtypes.bfloat16
    assert not trace.get("stats only").stored and len(trace.get("stats only").sample()[1]) == 8


def test_a_v1_trace_and_its_v2_rerecording_hold_the_same_records(tmp_path):
    path = tmp_path / "new.h5"
    _load_v1_maker().record(path)
    new, old = td.open(path), td.open(V1_TRACE)
    assert (new.attrs["format_version"], old.attrs["format_version"]) == (3, 1)
    assert len(new) == len(old) == 8
    for a, b in zip(new, old):
        # v1 traces predate the dataflow meta ``inputs`` (issue 19), which the v2 writer adds
        new_meta = {k: v for k, v in a.meta.items() if k != "inputs"}
        assert (a.key, a.step, a.dtype, a.shape, a.stored, new_meta) == \
            (b.key, b.step, b.dtype, b.shape, b.stored, b.meta)
        assert a.stats == pytest.approx(b.stats, rel=1e-12, nan_ok=True)
        got, expected = (a.read(), b.read()) if a.stored else (a.sample()[1], b.sample()[1])
        assert got.tobytes() == expected.tobytes()
        # v2 hashes every record with XXH3; v1 hashed stats-only records with SHA-256
        assert fmt.hash_algorithm(a.hash) == "xxh3"
        if a.stored:
            assert a.hash == fmt.tensor_hash(a.read()) and b.hash == ""
        else:
            assert fmt.hash_algorithm(b.hash) == "sha256" and len(b.hash) == 32
    assert main(["diff", str(path), str(V1_TRACE), "--quiet"]) == 0


# -- damaged strings: one line naming the trace and the record ----------------------------------

def _text_bytes(path, index) -> int:
    with h5py.File(path, "r") as f:
        row = f["records"][index]
    return sum(int(row[f"{field}_len"]) for field in fmt.TEXT_FIELDS)


def _strings_size(path) -> int:
    with h5py.File(path, "r") as f:
        return f["strings"].shape[0]


def test_a_span_past_the_strings_blob_is_refused(trace_path):
    size, total = _strings_size(trace_path), _text_bytes(trace_path, 1)
    _edit(trace_path, strings_offset=size - 3)
    assert _refusal(trace_path) == (
        f"{trace_path} is damaged: record 1 points outside the index strings "
        f"(bytes {size - 3}..{size - 3 + total} of {size}); record it again")


def test_a_negative_length_is_refused(trace_path):
    start, _ = _span(trace_path, 1, "name")
    _edit(trace_path, dtype_len=-4)
    end = start + _text_bytes(trace_path, 1)
    assert _refusal(trace_path) == (
        f"{trace_path} is damaged: record 1 points outside the index strings "
        f"(bytes {start}..{end} of {_strings_size(trace_path)}); record it again")


def test_an_extent_claimed_beyond_the_file_is_not_trusted(trace_path):
    """A damaged extent of 1 TiB: spans into it are refused against the file's size, and
    nothing is allocated for it when every span is in range."""
    with h5py.File(trace_path, "r+") as f:
        f["strings"].resize((1 << 40,))
    with td.open(trace_path) as trace:
        assert len(trace) == 16          # every span lies in the written part
    _edit(trace_path, strings_offset=1 << 39)
    message = _refusal(trace_path)
    size = trace_path.stat().st_size
    assert message.startswith(f"{trace_path} is damaged: record 1 points outside the index strings "
                              f"(bytes {1 << 39}..")
    assert message.endswith(f" of {size}); record it again")


@pytest.mark.parametrize("field, byte, what", [("name", 0xFF, "a name"), ("meta", 0xC3, "metadata"),
                                               ("dtype", 0x80, "a dtype")])
def test_invalid_utf8_is_refused(trace_path, field, byte, what):
    start, _ = _span(trace_path, 1, field)
    with h5py.File(trace_path, "r+") as f:
        f["strings"][start] = byte
    assert _refusal(trace_path) == (
        f"{trace_path} is damaged: record 1 has {what} that is not valid UTF-8; record it again")


def test_an_unknown_kind_code_is_refused(trace_path):
    _edit(trace_path, kind=len(fmt.KINDS))
    assert _refusal(trace_path) == (
        f"{trace_path} is damaged: record 1 has unknown kind code 6; record it again")


def test_a_missing_or_misshapen_strings_blob_is_refused(trace_path, tmp_path):
    other = shutil.copyfile(trace_path, tmp_path / "other.h5")
    with h5py.File(trace_path, "r+") as f:
        del f["strings"]
    assert _refusal(trace_path) == (
        f"{trace_path} is a damaged tracediff trace: dataset 'strings' is missing")
    with h5py.File(other, "r+") as f:
        del f["strings"]
        f["strings"] = np.array([b"abc", b"def"])
    assert _refusal(other) == (
        f"{other} is a damaged tracediff trace: dataset 'strings' has the wrong layout")


@pytest.mark.parametrize("field", ["name_len", "strings_offset", "kind", "nbytes", "sample_count"])
def test_an_integer_field_stored_as_float_is_refused(trace_path, field):
    """Byte counts, offsets and codes are used as integers (a float nbytes reached HDF5's
    hyperslab selection as a TypeError before the fuzzer found it)."""
    with h5py.File(trace_path, "r+") as f:
        rows = f["records"][()]
        layout = [(n, "<f8" if n == field else rows.dtype[n]) for n in rows.dtype.names]
        retyped = np.zeros(rows.shape, layout)
        for name in rows.dtype.names:
            retyped[name] = rows[name]
        del f["records"]
        f["records"] = retyped
    assert _refusal(trace_path) == (
        f"{trace_path} is damaged: index field {field!r} has type float64; record it again")


def test_the_command_line_answers_damaged_strings_with_one_line(trace_path, capsys):
    _edit(trace_path, kind=200)
    assert main(["show", str(trace_path)]) == 2
    assert capsys.readouterr().err == (
        f"tracediff show: error: {trace_path} is damaged: record 1 has unknown kind code 200; "
        "record it again\n")


def test_records_batched_between_flushes_keep_their_text(tmp_path):
    path = tmp_path / "batched.h5"
    with td.Recorder(path, flush_every=7) as rec:
        for i in range(20):
            rec.forward(f"层{i}", np.full(3, i, np.float32), index=i)
    trace = td.open(path)
    assert [r.name for r in trace] == [f"层{i}" for i in range(20)]
    assert [r.meta["index"] for r in trace] == list(range(20))
    assert GLOBAL_HEAP not in path.read_bytes()


@pytest.mark.parametrize("expected_bytes, chunk", [(0, fmt.DATA_CHUNK),
                                                   (fmt.LARGE_TRACE - 1, fmt.DATA_CHUNK),
                                                   (fmt.LARGE_TRACE, fmt.LARGE_DATA_CHUNK)])
def test_an_expected_large_trace_gets_large_data_chunks(tmp_path, expected_bytes, chunk):
    """The chunk size is storage only: what is read back is the same either way."""
    values = np.arange(300_001, dtype=np.float32)
    with td.Recorder(tmp_path / "t.h5", expected_bytes=expected_bytes) as rec:
        rec.forward("big", values)
        rec.forward("small", np.float64(3.5))
    with h5py.File(tmp_path / "t.h5", "r", locking=False) as f:
        assert f[fmt.DATA].chunks == (chunk,)
    trace = td.open(tmp_path / "t.h5")
    np.testing.assert_array_equal(trace.get("big").read(), values)
    assert trace.get("small").read() == 3.5
