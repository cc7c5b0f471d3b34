"""Prime-sized dims make every axis identifiable; shapes render symbolically."""
import pytest

import tracediff as td
from tracediff.errors import TraceDiffError
from tracediff.primes import collisions, render_shape, symbol


def test_dims_are_distinct_primes_in_order():
    assert td.primes.dims("batch", "seq", "hidden") == {"batch": 3, "seq": 5, "hidden": 7}


def test_dims_minimums_and_exclusions():
    assert td.primes.dims("batch", "hidden", minimums={"hidden": 32}) == {"batch": 3, "hidden": 37}
    assert td.primes.dims("batch", "seq", exclude=[3, 5]) == {"batch": 7, "seq": 11}
    assert td.primes.dims("a", "b", minimum=10) == {"a": 11, "b": 13}


def test_repeated_names_are_refused():
    with pytest.raises(TraceDiffError, match=r"dimension names repeat in \['a', 'a'\]"):
        td.primes.dims("a", "a")


def test_symbols_name_axes_and_products():
    dims = {"batch": 3, "seq": 5, "hidden": 7}
    assert render_shape((3, 5, 7), dims) == "[batch, seq, hidden]"
    assert symbol(21, dims) == "batch*hidden"
    assert symbol(35, dims) == "seq*hidden"
    assert symbol(14, dims) == "hidden*2"
    assert symbol(105, dims) == "batch*seq*hidden"
    assert symbol(1, dims) == "1" and symbol(997, dims) == "997"
    assert render_shape((3, 5), None) == "[3, 5]"


def test_collisions_name_dims_sharing_a_size():
    assert collisions({"batch": 3, "heads": 3, "hidden": 7, "x": 7, "one": 1, "two": 1}) == \
        [["batch", "heads"], ["hidden", "x"]]
    assert collisions({"batch": 3, "seq": 5}) == []
