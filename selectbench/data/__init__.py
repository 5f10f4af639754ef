"""Pools: loading, formats, validation and fingerprints; the bundled demo corpus lives in ``demo/``."""

from selectbench.data.pool import LoadReport, Pool, load_pool, pool_from_records

__all__ = ["LoadReport", "Pool", "load_pool", "pool_from_records"]
