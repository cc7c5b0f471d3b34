"""Big traces: listing reads only the index; reading one record reads only that record."""
import subprocess
import sys
import textwrap

import numpy as np

import tracediff as td
from tracediff.cli import main


def test_listing_100k_records_reads_the_index_only(tmp_path, capsys):
    path = tmp_path / "many.h5"
    value = np.arange(3, dtype=np.float32)
    with td.Recorder(path, flush_every=100_000) as rec:
        for i in range(100_000):
            rec.forward(f"layer{i}", value)
    trace = td.open(path)
    assert len(trace) == 100_000
    assert trace[99_999].name == "layer99999" and trace[99_999].stats["max"] == 2.0
    assert main(["show", str(path), "--name", "layer9999?"]) == 0
    assert capsys.readouterr().out.count("layer9999") == 10


PEAK_READ = textwrap.dedent("""
    import sys, tracemalloc
    import tracediff as td
    trace = td.open(sys.argv[1])
    tracemalloc.start()
    value = trace.get("layer7").read()
    print(tracemalloc.get_traced_memory()[1], value.nbytes, float(value[0, 0]))
""")


def test_reading_one_record_does_not_load_the_others(tmp_path):
    path = tmp_path / "large.h5"
    block = np.empty((1024, 2048), dtype=np.float32)  # 8 MiB a record, 96 MiB in all
    with td.Recorder(path) as rec:
        for i in range(12):
            block.fill(i)
            rec.forward(f"layer{i}", block)
    out = subprocess.run([sys.executable, "-c", PEAK_READ, str(path)], capture_output=True,
                         text=True, check=True).stdout.split()
    peak, nbytes, first = int(out[0]), int(out[1]), float(out[2])
    assert first == 7.0 and nbytes == 8 << 20
    assert peak < 1.5 * nbytes, f"reading one 8 MiB record peaked at {peak / 2**20:.1f} MiB"
