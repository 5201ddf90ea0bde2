"""The nightly pipeline as library functions: the ingest stage (:mod:`~omnifer.pipeline.ingest`:
plan, shards, summary; warm per-worker state in :mod:`~omnifer.pipeline.workers`) and
retrying failed rows (:mod:`~omnifer.pipeline.retry`)."""
