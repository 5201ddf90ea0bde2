"""Give freed native heap memory back to the operating system between shards.

Why: the detector, the model and the decoders allocate and free large native buffers from
several threads, and glibc keeps freed chunks in per-thread arenas, so a long night's RSS
crept up although nothing stayed alive (measured over 20 000 images: RSS +340 MiB while the
Python-level allocations stayed flat). Two glibc knobs stop it: fewer arenas
(:func:`limit_arenas`, what ``MALLOC_ARENA_MAX`` does, set before the worker threads start) and
``malloc_trim(0)`` after each shard (:func:`trim`). With both, RSS stayed flat from the 40th
to the 240th second of a 20 000-image night (933 → 937 MiB; without: 1 039 → 1 383). Where
there is no glibc (macOS, musl) both are no-ops.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from functools import lru_cache


@lru_cache(maxsize=1)
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    return libc if libc is not None and hasattr(libc, "malloc_trim") else None


M_ARENA_MAX = -8  # glibc's mallopt parameter number


def limit_arenas(arenas: int) -> bool:
    """Let at most ``arenas`` malloc arenas serve all threads created from now on."""
    libc = _libc()
    return bool(libc.mallopt(M_ARENA_MAX, max(1, int(arenas)))) if libc is not None else False


def trim() -> bool:
    """Return freed heap pages to the OS; True when glibc did release some."""
    libc = _libc()
    return bool(libc.malloc_trim(0)) if libc is not None else False


M_TRIM_THRESHOLD = -1  # glibc's mallopt parameter numbers
M_MMAP_THRESHOLD = -3


def keep_large_blocks(mmap_mib: int = 8, trim_mib: int = 16) -> bool:
    """Serve blocks up to ``mmap_mib`` MiB from the heap instead of fresh ``mmap`` s.

    Why: Dask's nanny starts every worker with ``MALLOC_TRIM_THRESHOLD_=65536``, and setting
    any of glibc's thresholds freezes its dynamic mmap threshold at 128 KiB, so every decoded
    image was mapped and zero-filled afresh. Measured with ``benchmarks/ingest_dask.py
    --malloc`` (the shard work on 80 scenes x 3, one thread): a plain process 1 372-1 513 page
    faults and 2.3-3.7 ms system CPU per image, under Dask's setting 3 009-3 188 and 5.9-6.1
    ms, with this at 8 MiB 1 757-1 787 and 3.7 ms (peak RSS +14-28 MiB; at 32 MiB 2.7 ms,
    +44-80 MiB). :func:`trim` after each shard still hands freed memory back.
    """
    libc = _libc()
    if libc is None:
        return False
    return bool(libc.mallopt(M_MMAP_THRESHOLD, int(mmap_mib) << 20)
                and libc.mallopt(M_TRIM_THRESHOLD, int(trim_mib) << 20))
