"""The catalog as code: read, write and query the datasets named in ``data_catalog.yaml``.

``DataCatalog`` is the one place that knows where a dataset's files go (hive folders by ingest
date, deterministic file names) and how DuckDB sees them (one view per dataset). Local
datasets become ``read_parquet`` views over their committed files; S3 datasets are opened with
``pyarrow.dataset`` and registered as Arrow scans, because DuckDB's httpfs extension cannot be
installed offline (docs/architecture.md, "Environment facts").

Besides the datasets, the catalog root holds bookkeeping folders; their names live here, as
methods, and nowhere else: ``_plans/`` and ``_shards/`` (ingest plans and shard commit
markers), ``_runs/`` (run records), ``_reports/`` (run reports), ``_distilled_grids/`` (PNG
grids of distilled sets) and ``model_store/`` (registered checkpoints).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.dataset as ds

from omnifer import storage
from omnifer.catalog.schemas import SCHEMAS
from omnifer.config import Catalog, Settings, is_remote, join_uri, load_settings
from omnifer.errors import DatasetError
from omnifer.params import check_date, check_name, check_segment

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    uri: str
    schema_version: int
    partitioning: list[str]
    files: int
    rows: int


class DataCatalog:
    """Reads and commits the catalog's datasets; see the module docstring."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog

    @classmethod
    def from_settings(cls, settings: Settings | None = None) -> DataCatalog:
        return cls((settings or load_settings()).catalog)

    # -- locations -------------------------------------------------------------------------
    def uri(self, name: str) -> str:
        return self.catalog.uri(name)

    def aux_uri(self, *parts: str) -> str:
        """A URI under the catalog root (prefer the named locations below); each part must be
        one path segment (:func:`omnifer.params.check_segment`: a run id of ``../x`` must not
        leave the root)."""
        for part in parts:
            check_segment(part, "catalog path part")
        return self.catalog.aux_uri(*parts)

    # -- bookkeeping beside the datasets ------------------------------------------------------
    def plans_uri(self, ingest_date: str) -> str:
        """Folder of a night's ingest plans (``plan-NNN.json``)."""
        return self.aux_uri("_plans", f"ingest_date={ingest_date}")

    def shard_markers_uri(self, ingest_date: str) -> str:
        """Folder of a night's shard commit markers (``<shard_id>.json``)."""
        return self.aux_uri("_shards", f"ingest_date={ingest_date}")

    def shard_marker_uri(self, ingest_date: str, shard_id: str) -> str:
        """The commit marker of one shard: its existence means the shard is committed."""
        return join_uri(self.shard_markers_uri(ingest_date),
                        f"{check_segment(shard_id, 'shard id')}.json")

    def runs_uri(self) -> str:
        """Folder of run records (``<run_id>.json``)."""
        return self.aux_uri("_runs")

    def run_record_uri(self, run_id: str) -> str:
        return join_uri(self.runs_uri(), f"{check_segment(run_id, 'run id')}.json")

    def reports_uri(self) -> str:
        """Folder of the run reports (``ingest_date=D/<run_id>.html``)."""
        return self.aux_uri("_reports")

    def report_uri(self, ingest_date: str, run_id: str) -> str:
        """Where a run's HTML report lives beside the catalog."""
        return join_uri(self.reports_uri(), f"ingest_date={ingest_date}", f"{run_id}.html")

    def distilled_grids_uri(self, distilled_version: str) -> str:
        """Folder of a distilled version's PNG grids (``<class>.png``)."""
        return self.aux_uri("_distilled_grids", distilled_version)

    def model_store_uri(self, model_version: str) -> str:
        """Folder of a registered model version's checkpoint files."""
        return self.aux_uri("model_store", model_version)

    def partition_cols(self, name: str) -> tuple[str, ...]:
        return tuple(self.catalog.datasets[name].partitioning)

    def file_uri(self, name: str, filename: str, **partition: str) -> str:
        """Where a committed file of ``name`` goes: ``<uri>/<key>=<value>/…/<filename>``."""
        cols = self.partition_cols(name)
        if set(partition) != set(cols):
            raise DatasetError(f"dataset {name} is partitioned by {cols}, got {sorted(partition)}")
        # The values become folders: a date of 2026/12/01 must not become three of them.
        for col in cols:
            if col.endswith("date"):
                check_date(partition[col], col)
            else:
                check_name(partition[col], col)
        check_name(filename, f"{name} file name")
        parts = [f"{c}={partition[c]}" for c in cols]
        return join_uri(self.uri(name), *parts, filename)

    # -- reading and writing ---------------------------------------------------------------
    def write(self, name: str, filename: str, table: pa.Table, **partition: str) -> str:
        """Commit ``table`` as one file (atomic; same name = same rows on a rerun)."""
        schema = SCHEMAS[name]
        table = table.select(schema.names).cast(schema)
        uri = self.file_uri(name, filename, **partition)
        storage.write_table_atomic(uri, table)
        return uri

    def dataset(self, name: str, files: list[str] | None = None) -> ds.Dataset:
        """``files``: what ``storage.dataset_files`` gave, when the caller listed already."""
        return storage.dataset(self.uri(name), SCHEMAS[name], self.partition_cols(name), files)

    def read(
        self, name: str, columns: list[str] | None = None, filter: ds.Expression | None = None
    ) -> pa.Table:
        return storage.read_table(
            self.uri(name), columns, filter, SCHEMAS[name], self.partition_cols(name)
        )

    def partition_files(self, name: str, **partition: str) -> list[str]:
        """The visible files of one partition (after compaction: usually one)."""
        folder = self.file_uri(name, "x", **partition).rsplit("/", 1)[0]
        base = storage.resolve(folder)[1].rstrip("/") + "/"
        return [f for f in storage.dataset_files(self.uri(name))
                if f.removeprefix("s3://").startswith(base)]

    def info(self) -> list[DatasetInfo]:
        out = []
        for name, spec in self.catalog.datasets.items():
            files = storage.dataset_files(self.uri(name))
            rows = self.dataset(name, files).count_rows() if files else 0
            out.append(
                DatasetInfo(name, self.uri(name), spec.schema_version, spec.partitioning,
                            len(files), rows)
            )
        return out

    # -- DuckDB ----------------------------------------------------------------------------
    def connect(self, database: str = ":memory:") -> duckdb.DuckDBPyConnection:
        """A DuckDB connection with one view per dataset (``images``, ``faces``, …)."""
        con = duckdb.connect(database)
        for name in self.catalog.datasets:
            self._register(con, name)
        return con

    def _register(self, con: duckdb.DuckDBPyConnection, name: str) -> None:
        uri = self.uri(name)
        files = storage.dataset_files(uri)
        if not files or is_remote(uri):
            # S3 (or empty): an Arrow scan that DuckDB pulls from lazily.
            con.register(f"_arrow_{name}", self.dataset(name, files))
            con.execute(f'CREATE OR REPLACE VIEW "{name}" AS SELECT * FROM "_arrow_{name}"')
            return
        cols = self.partition_cols(name)
        if cols:
            types = ", ".join(f"'{c}': 'VARCHAR'" for c in cols)
            hive = f", hive_partitioning = true, hive_types = {{{types}}}"
        else:
            hive = ", hive_partitioning = false"
        file_list = "[" + ", ".join("'" + f.replace("'", "''") + "'" for f in files) + "]"
        con.execute(
            f'CREATE OR REPLACE VIEW "{name}" AS SELECT * FROM read_parquet({file_list}'
            f", union_by_name = true{hive})"
        )


def connect(settings: Settings | None = None) -> duckdb.DuckDBPyConnection:
    """DuckDB over the catalog; what ``omnifer sql`` uses. Views: one per dataset."""
    return DataCatalog.from_settings(settings).connect()


def run_sql(query: str, settings: Settings | None = None) -> Any:
    """Run ``query`` against the catalog views and return a pyarrow Table."""
    con = connect(settings)
    try:
        relation = con.sql(query)
        return to_arrow(relation) if relation is not None else pa.table({})
    except duckdb.Error as exc:
        raise DatasetError(f"query failed: {str(exc).splitlines()[0]}") from None


def to_arrow(result: Any) -> pa.Table:
    """The result as an Arrow table (the method was renamed in DuckDB 2)."""
    method = getattr(result, "to_arrow_table", None) or result.arrow
    return method()
