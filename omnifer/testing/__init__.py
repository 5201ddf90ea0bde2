"""Helpers that the reliability tests and ``benchmarks/reliability.py`` share.

Nothing in the pipeline imports this package: it makes hostile inputs (a corpus of broken and
awkward images, written by code, never committed) and hostile infrastructure (an HTTP proxy
that makes S3 fail or stall), and compares a catalog's rows with those of a clean run.
"""
