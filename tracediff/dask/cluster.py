"""The caller's side of a diff on Dask: join or start a cluster, hand the pairs out in batches,
take the results back in the engine's order. The engine decides everything else (alignment,
tolerances, layouts, explanations); only ``compare_pair`` runs on the workers."""
from __future__ import annotations

import logging
import os
import uuid
from dataclasses import dataclass

from ..errors import TraceDiffError

INSTALL = "pip install 'tracediff[dask]'"
BATCH_PAIRS = 64            # pairs in one task at most (a task costs ~1 ms of scheduling)
BATCH_BYTES = 64 << 20      # tensor bytes in one task at most
PAIR_SHARE = 0.25           # a pair larger than this share of a worker's memory limit stays here
CONNECT_TIMEOUT_S = 10
WORKERS_TIMEOUT_S = 30


@dataclass
class Missing:
    """A pair the cluster did not compare (its worker died more often than Dask retries)."""
    a_name: str
    b_name: str
    kind: str
    a_call: int
    b_call: int
    step: int
    reason: str

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def distributed():
    """The ``distributed`` package, or the one-line error saying how to install it."""
    try:
        import distributed as module
    except ImportError:
        raise TraceDiffError(f"--dask needs Dask's distributed scheduler, which is not installed: "
                             f"{INSTALL}") from None
    return module


def connect(spec) -> "Cluster":
    """``spec``: ``"local:N"`` (a LocalCluster of N one-thread workers, closed afterwards), a
    scheduler address (``tcp://host:8786``), or a ``distributed.Client`` (used as it is)."""
    dd = distributed()
    if isinstance(spec, dd.Client):
        return Cluster(spec, owned=())
    if not isinstance(spec, str) or not spec.strip():
        raise TraceDiffError(f"dask takes 'local:N', a scheduler address or a distributed.Client, "
                             f"got {spec!r}")
    spec = spec.strip()
    if spec.startswith("local:") or spec == "local":
        count = spec.partition(":")[2]
        if not count.isdigit() or int(count) < 1:
            raise TraceDiffError(f"--dask {spec}: give the number of local workers, e.g. local:4")
        cluster = dd.LocalCluster(n_workers=int(count), threads_per_worker=1, processes=True,
                                  dashboard_address=None, silence_logs=logging.ERROR)
        return Cluster(dd.Client(cluster), owned=(cluster,))
    try:
        client = dd.Client(spec, timeout=CONNECT_TIMEOUT_S)
    except (OSError, TimeoutError, ValueError) as exc:
        raise TraceDiffError(f"cannot reach the Dask scheduler at {spec} ({type(exc).__name__}: "
                             f"{str(exc).splitlines()[0] if str(exc) else 'no answer'}); start one "
                             "with `dask scheduler` or use --dask local:N") from None
    try:
        client.wait_for_workers(1, timeout=WORKERS_TIMEOUT_S)
    except (OSError, TimeoutError):
        client.close()
        raise TraceDiffError(f"the Dask scheduler at {spec} has no workers after "
                             f"{WORKERS_TIMEOUT_S} s: start some with `dask worker {spec} "
                             "--nthreads 1`") from None
    return Cluster(client, owned=())


class Cluster:
    """A connected client; closes what ``connect`` started."""

    def __init__(self, client, owned):
        self.client = client
        self._owned = owned

    def close(self):
        if self._owned:
            self.client.close()
            for cluster in self._owned:
                cluster.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def pair_limit(self) -> int | None:
        """Bytes of a pair above which it is compared here: a share of the smallest worker
        memory limit (None: the workers have none)."""
        limits = [w.get("memory_limit") or 0 for w in self.client.scheduler_info()["workers"].values()]
        limits = [m for m in limits if m > 0]
        return int(min(limits) * PAIR_SHARE) if limits else None

    def compare(self, jobs, dims, ta, tb, compare_here):
        """Each ``(a, b, tolerance)`` job's Pair (or a ``Missing``), in order. Pairs of records
        the files hold whole go to the workers; a pair too large for a worker's memory, or of
        records not read from one file, is compared here by ``compare_here``."""
        from .worker import compare_batch

        limit = self.pair_limit()
        path_a, path_b = os.path.abspath(ta.path), os.path.abspath(tb.path)
        # A worker opens one file a side; a multi-rank folder's records are reassembled here.
        files = not (os.path.isdir(path_a) or os.path.isdir(path_b))
        batches, where = [], {}
        batch, size = [], 0
        for i, (a, b, tol) in enumerate(jobs):
            nbytes = _pair_bytes(a, b)
            if (not files or (limit is not None and nbytes > limit)
                    or not (_in_file(a, ta) and _in_file(b, tb))):
                continue
            if batch and (len(batch) >= BATCH_PAIRS or size + nbytes > BATCH_BYTES):
                batches.append(batch)
                batch, size = [], 0
            where[i] = (len(batches), len(batch))
            batch.append(i)
            size += nbytes
        if batch:
            batches.append(batch)
        run = uuid.uuid4().hex
        futures = [self.client.submit(compare_batch, path_a, path_b,
                                      [(jobs[i][0].index, jobs[i][1].index, jobs[i][2]) for i in indices],
                                      dims, compare_here, key=f"tracediff-compare-{run}-{k}",
                                      pure=False, priority=-k)
                   for k, indices in enumerate(batches)]
        results = {}
        try:
            for i, (a, b, tol) in enumerate(jobs):
                if i not in where:
                    yield compare_here(a, b, tol, dims)
                    continue
                k, position = where[i]
                if k not in results:
                    results[k] = self._result(futures[k])
                    futures[k] = None   # released on the cluster once taken
                    results.pop(k - 1, None)
                got = results[k]
                yield got[position] if isinstance(got, list) else _missing(a, b, got)
        finally:
            live = [f for f in futures if f is not None]
            if live:
                self.client.cancel(live)

    def _result(self, future):
        """The batch's pairs, or the reason it was lost. An error the engine raised on the
        worker (a damaged trace) is raised here, as the in-process diff raises it."""
        try:
            return future.result()
        except TraceDiffError:
            raise
        except Exception as exc:   # KilledWorker, a lost scheduler, a cancelled task
            text = str(exc).splitlines()[0] if str(exc) else ""
            return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _pair_bytes(a, b) -> int:
    return (a.nbytes if a.stored else 0) + (b.nbytes if b.stored else 0)


def _in_file(record, trace) -> bool:
    """Whether the record is the file's own (a worker finds it by index)."""
    try:
        return trace[record.index] is record
    except (IndexError, TypeError):
        return False


def _missing(a, b, reason) -> Missing:
    return Missing(a_name=a.name, b_name=b.name, kind=b.kind, a_call=a.call, b_call=b.call,
                   step=b.step, reason=reason)
