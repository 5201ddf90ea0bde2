"""The catalog: its datasets (Parquet + DuckDB), their schemas and provenance, and the
bookkeeping beside them (run records, ingest plans and shard markers, compaction).

``omnifer.catalog.connect()`` and ``omnifer.catalog.DataCatalog`` are the documented entry
points; the rest lives in the submodules.
"""

from omnifer.catalog.catalog import DataCatalog, DatasetInfo, connect, run_sql, to_arrow

__all__ = ["DataCatalog", "DatasetInfo", "connect", "run_sql", "to_arrow"]
