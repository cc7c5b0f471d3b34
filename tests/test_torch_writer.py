"""The ordered host writer behind the adapter: in-order records, snapshots taken at write time,
writer errors raised in the caller, and bit-exact dtype conversion."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")

import tracediff as td  # noqa: E402
from tracediff.adapters.torch.convert import STAGING, HostWriter, release_staging, to_numpy  # noqa: E402
from tracediff.errors import TraceDiffError  # noqa: E402


@pytest.mark.parametrize("background", [False, True])
@pytest.mark.parametrize("values", [True, False])
def test_records_keep_order_and_the_value_at_write_time(tmp_path, background, values):
    """Full tensors are copied in the hook for the thread; stats-only records are summarised
    in the hook and only appended by the thread. Either way an in-place op after the hook
    changes nothing that was recorded."""
    with td.Recorder(tmp_path / "t.h5", framework="torch", values=values) as rec:
        writer = HostWriter(rec, background=background)
        tensors = [torch.full((3, 5), float(i)) for i in range(20)]
        for i, t in enumerate(tensors):
            writer.write("forward", f"layer{i}", t, call=0, op_type="Test")
            t.add_(100)          # an in-place op after the hook: not what was recorded
        writer.close()
    trace = td.open(tmp_path / "t.h5")
    assert [r.name for r in trace] == [f"layer{i}" for i in range(20)]
    for i, r in enumerate(trace):
        expected = np.full((3, 5), float(i), np.float32)
        if values:
            np.testing.assert_array_equal(r.read(), expected)
        else:
            assert (r.stats["min"], r.stats["max"], r.stats["mean"]) == (i, i, i)
            assert r.hash == td.format.tensor_hash(expected)
            np.testing.assert_array_equal(r.sample()[1], expected.reshape(-1))
        assert r.meta == {"op_type": "Test"}


@pytest.mark.parametrize("values, threads_left, expected", [
    (True, True, True), (True, False, False), (False, True, False), (False, False, False)])
def test_default_writer_thread_only_for_full_tensors_with_a_cpu_free(
        tmp_path, monkeypatch, values, threads_left, expected):
    """background=None: full tensors go through the writer thread when torch leaves a CPU
    free; stats-only records are summarised and appended in the hook."""
    from tracediff.adapters.torch import session as torch_session

    monkeypatch.setattr(torch_session, "spare_cpu", lambda: threads_left)
    recorder, writer = torch_session.open_recorder(
        torch.nn.Linear(2, 2), tmp_path / "t.h5", values=values, level="module", compiled=False)
    recorder.close()
    assert writer.background is expected


def test_a_small_budget_makes_the_model_thread_wait_not_fail(tmp_path):
    with td.Recorder(tmp_path / "t.h5", framework="torch") as rec:
        writer = HostWriter(rec, budget=100, background=True)
        for i in range(10):
            writer.write("forward", "x", torch.full((7,), float(i)))
        writer.drain()
        assert rec.count == 10
        writer.close()
    assert [r.call for r in td.open(tmp_path / "t.h5")] == list(range(10))


def test_writer_error_is_raised_in_the_caller(tmp_path):
    rec = td.Recorder(tmp_path / "t.h5", framework="torch")
    writer = HostWriter(rec, background=True)
    rec.close()
    writer.write("forward", "x", torch.ones(3))
    with pytest.raises(TraceDiffError, match="is closed"):
        writer.drain()
    with pytest.raises(TraceDiffError, match="is closed"):
        writer.write("forward", "y", torch.ones(3))
    writer.close(raise_errors=False)


@pytest.mark.filterwarnings("ignore:ComplexHalf support is experimental")
def test_unstorable_dtype_is_skipped_with_a_warning(tmp_path):
    with td.Recorder(tmp_path / "t.h5", framework="torch") as rec:
        writer = HostWriter(rec)
        with pytest.warns(RuntimeWarning, match="skipped forward 'half_complex'"):
            writer.write("forward", "half_complex", torch.ones(3, dtype=torch.complex32))
        writer.write("forward", "fine", torch.ones(3))
        writer.close()
    assert [r.name for r in td.open(tmp_path / "t.h5")] == ["fine"]


@pytest.mark.parametrize("dtype,name", [
    (torch.bfloat16, "bfloat16"), (torch.float16, "float16"), (torch.float8_e4m3fn, "float8_e4m3fn"),
    (torch.float8_e5m2, "float8_e5m2"), (torch.float64, "float64"), (torch.int64, "int64"),
    (torch.bool, "bool"), (torch.complex64, "complex64")])
def test_to_numpy_keeps_dtype_and_bits(dtype, name):
    t = (torch.randn(5, 7) * 3).to(dtype)
    array = to_numpy(t.t())          # non-contiguous too
    assert array.dtype.name == name
    assert array.shape == (7, 5)
    assert array.tobytes() == t.t().contiguous().view(torch.uint8).numpy().tobytes()


def test_to_numpy_resolves_conjugate_and_negative_views():
    z = torch.randn(3, dtype=torch.complex64)
    np.testing.assert_array_equal(to_numpy(z.conj()), np.conj(z.numpy()))


def test_background_writes_reuse_staging_buffers_and_keep_bits(tmp_path):
    """CPU tensors sent through the writer thread are copied into staging buffers that are reused
    once written: non-contiguous and bfloat16 tensors keep their exact bits, and a buffer is
    never handed out again while its copy waits to be written."""
    release_staging()
    with td.Recorder(tmp_path / "t.h5", framework="torch") as rec:
        writer = HostWriter(rec, background=True)
        sources = []
        for step in range(3):
            for dtype in (torch.float32, torch.bfloat16):
                t = (torch.randn(7, 11) * 3).to(dtype)
                sources.append(t.t().contiguous())
                writer.write("forward", f"{dtype}", t.t(), call=step)
                t.mul_(-1)   # changes the source after the write: the staged copy must not see it
            writer.drain()
        assert STAGING.kept_bytes == 7 * 11 * (4 + 2)   # one buffer per size, reused each step
        writer.close()
    assert STAGING.kept_bytes == 7 * 11 * (4 + 2)     # kept for the next recording
    release_staging()
    assert STAGING.kept_bytes == 0
    trace = td.open(tmp_path / "t.h5")
    for r, source in zip(trace, sources):
        assert r.read().tobytes() == source.view(torch.uint8).numpy().tobytes()
