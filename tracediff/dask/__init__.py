"""The diff's pair comparisons on a Dask cluster: ``td.diff(a, b, dask=...)``, ``tracediff diff
--dask``. ``cluster.py`` runs on the caller's side (connect, hand out pairs, collect), ``worker.py``
on the workers (read the pair's tensors through HDF5 and compare them)."""
from .cluster import Cluster, connect

__all__ = ["Cluster", "connect"]
