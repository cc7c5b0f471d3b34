"""Wall time of ``tracediff demo`` (target: under 20 s) and of diffing every planted bug.

Run: .venv/bin/python bench/bench_demo.py   (a minute at most)
"""
from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path



def demo_wall(extra=()) -> float:
    """The whole command, interpreter start and imports included, as a user runs it."""
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "tracediff", "demo", "--out", out, *extra],
                              capture_output=True, text=True)
        elapsed = time.perf_counter() - start
    assert done.returncode == 1, done.stderr
    return elapsed


def planted_sweep() -> tuple:
    """Record and diff every catalogued bug under both namings against torch references."""
    import tracediff as td
    from tracediff.demo import bugs, numpy_nets, torch_nets

    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        refs = {}
        for net in bugs.NETS:
            x, y = numpy_nets.make_inputs(net)
            model = torch_nets.build(net)
            torch_nets.record(model, net, x, y, folder / f"{net}.h5")
            refs[net] = (torch_nets.state_dict_float64(model), x, y)
        diffs, start = 0, time.perf_counter()
        for bug in bugs.CATALOGUE:
            for naming in ("torch", "port"):
                state, x, y = refs[bug.net]
                path = folder / f"{bug.id}-{naming}.h5"
                numpy_nets.build(bug.net, state, bugs={bug.id}, naming=naming).record_to(path, x, y)
                td.diff(path, folder / f"{bug.net}.h5")
                diffs += 1
        return diffs, time.perf_counter() - start


def main():
    torch_runs = [demo_wall() for _ in range(3)]
    numpy_runs = [demo_wall(("--numpy-reference",)) for _ in range(3)]
    diffs, sweep = planted_sweep()
    print(f"tracediff demo (torch references), median of 3: {statistics.median(torch_runs):.2f} s "
          f"(runs {', '.join(f'{t:.2f}' for t in torch_runs)})")
    print(f"tracediff demo --numpy-reference, median of 3: {statistics.median(numpy_runs):.2f} s")
    print(f"planted-bug sweep: {diffs} port recordings + diffs in {sweep:.2f} s "
          f"({sweep / diffs * 1000:.0f} ms each)")


if __name__ == "__main__":
    main()
