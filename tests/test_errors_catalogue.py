"""docs/errors.md is the catalogue of bad inputs: each entry's documented answer (an error line,
or the result where the input deserves one) is checked here, exactly, against what tracediff
says. Paths are written ``<dir>/...`` in the catalogue."""
import contextlib
import errno
import io
import json
import os
import pathlib
import re
import warnings

import h5py
import numpy as np
import pytest

import tracediff as td
from tracediff import recorder as recorder_module
from tracediff.cli import main

CATALOGUE = pathlib.Path(__file__).resolve().parents[1] / "docs" / "errors.md"
ENTRY = re.compile(r"^### (E\d\d) (.+?)\n(.*?)^```\n(.*?)\n```", re.M | re.S)


def documented() -> dict:
    return {m.group(1): m.group(4) for m in ENTRY.finditer(CATALOGUE.read_text(encoding="utf-8"))}


# -- helpers ------------------------------------------------------------------------------------

X = np.arange(6, dtype=np.float32).reshape(2, 3)


def write(path, records, **options):
    with td.Recorder(path, **options) as rec:
        for kind, name, value in records:
            rec.record(kind, name, value)
    return str(path)


def edit_record(path, index, **fields):
    """Forge fields of record ``index`` in the index of a v2 trace: numbers in its row, text
    fields (name, dtype, shape, hash, meta) rewritten at the end of the strings blob."""
    from tracediff.format import TEXT_FIELDS

    with h5py.File(path, "r+") as f:
        row, strings = f["records"][index], f["strings"]
        start, texts = int(row["strings_offset"]), {}
        for field in TEXT_FIELDS:
            end = start + int(row[f"{field}_len"])
            texts[field] = fields.pop(field, bytes(strings[start:end]).decode())
            start = end
        block = np.frombuffer("".join(texts[field] for field in TEXT_FIELDS).encode(), np.uint8)
        row["strings_offset"] = strings.shape[0]
        strings.resize((strings.shape[0] + block.size,))
        strings[row["strings_offset"]:] = block
        for field in TEXT_FIELDS:
            row[f"{field}_len"] = len(texts[field].encode())
        for field, value in fields.items():
            row[field] = value
        f["records"][index] = row


def reference(tmp):
    return write(tmp / "ref.h5", [("forward", "fc1", X), ("forward", "fc2", X * 2)])


def cli(*argv) -> str:
    """``exit N: LINE``: the error line on stderr, else the first line on stdout."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    errors = [line for line in err.getvalue().splitlines() if line.strip()]
    assert len(errors) <= 1, errors
    lines = errors or out.getvalue().splitlines()[:1]
    return f"exit {code}: {lines[0] if lines else ''}"


def raised(call, *args, **kwargs) -> str:
    with pytest.raises(td.TraceDiffError) as err:
        call(*args, **kwargs)
    return str(err.value)


def pair(tmp, a, b) -> str:
    """status and hint of the first pair of a diff, through the JSON report."""
    out = tmp / "report.json"
    code = main(["diff", str(a), str(b), "--json", str(out), "--quiet"])
    first = json.loads(out.read_text())["pairs"][0]
    return f"exit {code}: {first['kind']} {first['b_name']} {first['status']}: {first['hint']}"


# -- the entries ----------------------------------------------------------------------------------

def e01_empty_trace(tmp, monkeypatch):
    return cli("diff", write(tmp / "empty.h5", []), reference(tmp))


def e02_trace_of_another_tool(tmp, monkeypatch):
    with h5py.File(tmp / "weights.h5", "w") as f:
        f["dense/kernel"] = np.ones((3, 3))
    return cli("show", tmp / "weights.h5")


def e03_not_an_hdf5_file(tmp, monkeypatch):
    (tmp / "notes.txt").write_text("not a trace")
    return cli("check", tmp / "notes.txt")


def e04_truncated_trace(tmp, monkeypatch):
    path = reference(tmp)
    with open(path, "r+b") as handle:
        handle.truncate(os.path.getsize(path) // 2)
    return cli("show", path)


def e05_two_traces_of_different_models(tmp, monkeypatch):
    other = write(tmp / "cnn.h5", [("forward", "conv", np.ones((4, 5))), ("forward", "pool", np.ones(7))])
    return cli("diff", other, reference(tmp))


def e06_nan_and_inf_everywhere(tmp, monkeypatch):
    bad = write(tmp / "nan.h5", [("forward", "fc1", np.full((2, 3), np.nan, np.float32)),
                                 ("forward", "fc2", np.full((2, 3), np.inf, np.float32))])
    return pair(tmp, bad, reference(tmp))


def e07_nan_and_inf_against_themselves(tmp, monkeypatch):
    bad = write(tmp / "nan.h5", [("forward", "fc1", np.full((2, 3), np.nan, np.float32)),
                                 ("forward", "fc2", np.full((2, 3), np.inf, np.float32))])
    return cli("diff", bad, bad, "--quiet")


def e08_health_check_of_nan_everywhere(tmp, monkeypatch):
    bad = write(tmp / "nan.h5", [("forward", "fc1", np.full((2, 3), np.nan, np.float32))])
    result = next(r for r in td.check(bad).to_dict()["checks"] if r["id"] == "nonfinite")
    return f"{result['status']}: {result['message']}"


def e09_zero_size_tensors(tmp, monkeypatch):
    empty = write(tmp / "zero.h5", [("forward", "fc1", np.zeros((0, 3), np.float32))])
    return cli("diff", empty, empty, "--quiet")


def e10_int_against_float(tmp, monkeypatch):
    ints = write(tmp / "int.h5", [("forward", "fc1", X.astype(np.int64)), ("forward", "fc2", X * 2)])
    return pair(tmp, ints, reference(tmp))


def e11_bfloat16_against_float32(tmp, monkeypatch):
    import ml_dtypes
    half = write(tmp / "bf16.h5", [("forward", "fc1", (X / 3).astype(ml_dtypes.bfloat16))])
    full = write(tmp / "f32.h5", [("forward", "fc1", X / 3)])
    out = tmp / "report.json"
    code = main(["diff", half, full, "--json", str(out), "--quiet"])
    first = json.loads(out.read_text())["pairs"][0]
    tol = first["tolerance"]
    return f"exit {code}: {first['status']} (rtol {tol['rtol']}, atol {tol['atol']})"


def e12_complex_against_float(tmp, monkeypatch):
    cplx = write(tmp / "complex.h5", [("forward", "fc1", X.astype(np.complex64)), ("forward", "fc2", X * 2)])
    return pair(tmp, cplx, reference(tmp))


def e13_zero_dimensional_tensors(tmp, monkeypatch):
    a = write(tmp / "a.h5", [("loss", "loss", np.float32(3.0))])
    b = write(tmp / "b.h5", [("loss", "loss", np.float32(3.5))])
    return cli("diff", a, b, "--quiet")


def e14_mismatched_record_counts(tmp, monkeypatch):
    longer = write(tmp / "more.h5", [("forward", "fc1", X), ("forward", "fc2", X * 2), ("forward", "fc3", X)])
    return cli("diff", longer, reference(tmp), "--quiet")


def e15_duplicate_names(tmp, monkeypatch):
    path = tmp / "dup.h5"
    with td.Recorder(path) as rec:
        rec.forward("fc1", X)
        rec.forward("fc1", X, call=0)   # the same (kind, name, call) twice
        rec.forward("fc2", X * 2)
    return cli("diff", path, reference(tmp), "--quiet")


def e16_names_with_slash_and_control_characters(tmp, monkeypatch):
    name = "enc/layer.0:attn\x07\n<b>"
    path = write(tmp / "names.h5", [("forward", name, X)])
    assert td.open(path)[0].name == name          # stored exactly
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["show", path]) == 0
    row = next(line for line in out.getvalue().splitlines() if "enc/layer" in line)
    return re.search(r"enc/\S+", row).group(0)     # and shown escaped, on one line


def e17_declared_4gb_tensor_not_in_the_file(tmp, monkeypatch):
    path = write(tmp / "big.h5", [("forward", "big", X)])
    # the index declares 4 GiB; the data blob holds 24 bytes
    edit_record(path, 0, shape="[1073741824]", numel=1 << 30, nbytes=4 << 30)
    return cli("diff", path, path)


def e18_declared_shape_of_2_60_elements(tmp, monkeypatch):
    path = write(tmp / "huge.h5", [("forward", "huge", X)])
    edit_record(path, 0, shape=json.dumps([2 ** 60]))
    return cli("show", path)


def e19_diff_of_a_trace_with_itself(tmp, monkeypatch):
    path = reference(tmp)
    return cli("diff", path, path, "--quiet")


def e20_trace_being_written_while_read(tmp, monkeypatch):
    with td.Recorder(tmp / "live.h5") as rec:
        rec.forward("fc1", X)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            td.open(tmp / "live.h5").close()
    return f"{caught[0].category.__name__}: {caught[0].message}"


def e21_two_writers_on_one_path(tmp, monkeypatch):
    with td.Recorder(tmp / "t.h5") as rec:
        rec.forward("fc1", X)
        return raised(td.Recorder, tmp / "t.h5", overwrite=True)


def e22_read_only_folder(tmp, monkeypatch):
    def refuse(path, *args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", path)
    # root ignores permissions: simulate the refusal where the recorder opens the file
    monkeypatch.setattr(recorder_module.os, "open", refuse)
    return raised(td.Recorder, tmp / "t.h5")


def e23_full_disk(tmp, monkeypatch):
    rec = td.Recorder(tmp / "t.h5")

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(recorder_module, "_write_at", no_space)
    try:
        return raised(rec.forward, "fc1", X)
    finally:
        monkeypatch.undo()
        rec.close(complete=False)


def e24_onnx_external_data_outside_its_folder(tmp, monkeypatch):
    onnx = pytest.importorskip("onnx")
    from onnx import helper, numpy_helper
    (tmp / "secret.bin").write_bytes(np.ones(9, np.float32).tobytes())
    weight = numpy_helper.from_array(np.ones((3, 3), np.float32), "W")
    weight.ClearField("raw_data")
    weight.data_location = onnx.TensorProto.EXTERNAL
    for key, value in (("location", "../secret.bin"), ("offset", "0"), ("length", "36")):
        weight.external_data.add(key=key, value=value)
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"], name="mm")], "g",
                              [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 3])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 3])],
                              initializer=[weight])
    (tmp / "model").mkdir()
    with open(tmp / "model" / "model.onnx", "wb") as handle:
        handle.write(helper.make_model(graph).SerializeToString())
    return cli("record", tmp / "model" / "model.onnx", "--random", "--out", tmp / "o.h5")


def e25_model_file_that_is_not_a_model(tmp, monkeypatch):
    pytest.importorskip("onnx")
    (tmp / "model.onnx").write_text("hello, I am a text file")
    return cli("record", tmp / "model.onnx", "--random", "--out", tmp / "o.h5")


def e26_npy_with_pickled_objects(tmp, monkeypatch):
    np.save(tmp / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    (tmp / "model.onnx").write_bytes(b"")
    return cli("record", tmp / "model.onnx", "--input", f"x={tmp / 'objects.npy'}", "--out", tmp / "o.h5")


def e27_trace_that_already_exists(tmp, monkeypatch):
    path = reference(tmp)
    return raised(td.Recorder, path)


def e28_missing_trace(tmp, monkeypatch):
    return cli("diff", tmp / "missing.h5", reference(tmp))


def e29_folder_instead_of_a_trace(tmp, monkeypatch):
    return cli("show", tmp)


def e30_trace_of_a_newer_format(tmp, monkeypatch):
    path = reference(tmp)
    with h5py.File(path, "r+") as f:
        f.attrs["format_version"] = 4
    return cli("show", path)


def e31_reading_a_stats_only_record(tmp, monkeypatch):
    path = write(tmp / "stats.h5", [("forward", "fc1", X)], values=False)
    return raised(td.open(path).get("fc1").read)


def e32_object_array_recorded(tmp, monkeypatch):
    with td.Recorder(tmp / "t.h5") as rec:
        return raised(rec.forward, "fc1", np.array([1, "a", None], dtype=object))


def e33_statistics_that_contradict_the_shape(tmp, monkeypatch):
    path = reference(tmp)
    edit_record(path, 1, numel=2 ** 60)
    return cli("check", path)


def e34_negative_tolerance(tmp, monkeypatch):
    path = reference(tmp)
    return cli("diff", path, path, "--rtol", "-1")


def e35_unknown_check_id(tmp, monkeypatch):
    return cli("check", reference(tmp), "--only", "gradients")


def e36_index_strings_out_of_range(tmp, monkeypatch):
    path = reference(tmp)
    with h5py.File(path, "r+") as f:
        row = f["records"][1]
        row["strings_offset"] = f["strings"].shape[0]     # its text starts past the blob's end
        f["records"][1] = row
    return cli("diff", path, path)


def e37_name_that_is_not_utf8(tmp, monkeypatch):
    path = reference(tmp)
    with h5py.File(path, "r+") as f:
        f["strings"][int(f["records"][1]["strings_offset"])] = 0xFF   # first byte of "fc2"
    return cli("check", path)


def e38_trace_of_format_v1(tmp, monkeypatch):
    path = tmp / "v1.h5"
    path.write_bytes((pathlib.Path(__file__).parent / "data" / "v1_trace.h5").read_bytes())
    return cli("show", path)


CASES = {name.split("_")[0].upper(): fn for name, fn in sorted(globals().items())
         if re.match(r"e\d\d_", name) and callable(fn)}


def test_catalogue_and_tests_name_the_same_entries():
    assert sorted(documented()) == sorted(CASES)
    assert len(CASES) >= 25


@pytest.mark.parametrize("entry", sorted(CASES))
def test_documented_answer(entry, tmp_path, monkeypatch):
    expected = documented()[entry]
    actual = CASES[entry](tmp_path, monkeypatch).replace(str(tmp_path), "<dir>")
    assert actual == expected
