"""Face hashes, multi-index hashing, and the pixel check that settles a near-duplicate.

* :func:`face_hash` – a 256-bit wavelet hash (``imagehash.whash``, Haar, 16×16) of an aligned
  crop, as 32 bytes. Measured on the demo world it separates copies of a face from other faces
  better than pHash, dHash or the 64-bit variants (docs/closed_loop.md).
* :class:`BandIndex` – multi-index hashing (Norouzi, Punjani & Fleet, "Fast search in Hamming
  space with multi-index hashing", CVPR 2012): each hash is cut into ``bands`` substrings; two
  hashes are candidates when one substring is equal. Each band is one sort, and a hash is
  compared with a bounded window of its bucket (sorted-neighbourhood, Hernández & Stolfo
  1995), so finding the near pairs of N hashes costs O(N log N), never N²; :func:`nearest`
  then keeps each face's k nearest candidates for the checks that cost milliseconds.
* :func:`pixel_difference` – registers one crop onto the other (ECC, Evangelidis & Psarakis,
  PAMI 2008: ``cv2.findTransformECC``, affine) and returns the largest mean absolute difference
  of z-scored grey levels over 8×8 blocks of the face. A copy (re-encoded, resized, cropped,
  brightened: the crops differ by a few pixels of alignment and by brightness) stays small
  everywhere; another expression of the same person differs strongly in some block (mouth,
  eyes, brows), even where hash and embedding are close.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np
import pyarrow as pa

HASH_BITS = 256
HASH_BYTES = HASH_BITS // 8
_WORDS = HASH_BITS // 64
_REG_SIZE = 48
_BLOCK = 8
# ECC stops after 20 iterations or a step under 1e-3: 3× faster than 60 / 1e-5, with the same
# separation of copies from other faces on the demo world (benchmarks/closed_loop.py)
_ECC_ITERATIONS = 20
_ECC_EPS = 1e-3
_SECOND_TRY_BELOW = 1.0  # a first registration this far off: the pair is not a copy


def face_hash(crop: np.ndarray) -> bytes:
    """The 256-bit wavelet hash of an aligned face crop (H×W×3 uint8 BGR) as 32 bytes."""
    import imagehash
    from PIL import Image

    grey = cv2.cvtColor(np.asarray(crop), cv2.COLOR_BGR2GRAY)
    bits = imagehash.whash(Image.fromarray(grey), hash_size=16).hash.ravel()
    return np.packbits(bits.astype(np.uint8)).tobytes()


def to_words(hashes: Iterable[bytes | None]) -> tuple[np.ndarray, np.ndarray]:
    """Hashes → ((N, 4) uint64 words, (N,) bool valid); a missing hash gives zeros, invalid."""
    items = list(hashes)
    valid = np.array([h is not None and len(h) == HASH_BYTES for h in items], bool)
    raw = b"".join(h if ok else bytes(HASH_BYTES) for h, ok in zip(items, valid, strict=True))
    words = np.frombuffer(raw, dtype=">u8").astype(np.uint64).reshape(len(items), _WORDS)
    return words, valid


def column_words(column: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """:func:`to_words` of a stored ``face_hash`` column (``binary(32)``, nulls allowed), read
    from its Arrow buffer instead of a million Python bytes objects (~1 s per million faces);
    any other binary type goes through :func:`to_words`."""
    if isinstance(column, pa.ChunkedArray):
        array = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    else:
        array = column
    if not pa.types.is_fixed_size_binary(array.type) or array.type.byte_width != HASH_BYTES:
        return to_words(array.to_pylist())
    n = len(array)
    valid = (np.ones(n, bool) if array.null_count == 0 else
             np.asarray(array.is_valid().to_numpy(zero_copy_only=False), bool))
    data = array.buffers()[1]
    if data is None:  # no value at all (a column older files lack)
        return np.zeros((n, _WORDS), np.uint64), valid
    raw = np.frombuffer(data, np.uint8, count=(array.offset + n) * HASH_BYTES)
    raw = raw[array.offset * HASH_BYTES:].reshape(n, HASH_BYTES)
    words = raw.view(">u8").astype(np.uint64)  # big-endian words, as to_words
    words[~valid] = 0
    return words, valid


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise Hamming distances of (N, 4) and (N, 4) uint64 words → (N,) int."""
    return np.bitwise_count(np.bitwise_xor(a, b)).sum(axis=1).astype(np.int64)


def hamming_matrix(a: np.ndarray, b: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """All Hamming distances between (N, 4) and (M, 4) words → (N, M) int16 (for small M)."""
    out = np.empty((len(a), len(b)), np.int16)
    for s in range(0, len(a), chunk):
        x = np.bitwise_xor(a[s:s + chunk, None, :], b[None, :, :])
        out[s:s + chunk] = np.bitwise_count(x).sum(axis=2)
    return out


class BandIndex:
    """Multi-index hashing over (N, 4) uint64 hash words; see the module docstring.

    ``bands`` in 8, 16, 32 (substrings of 32, 16, 8 bits). Within a band, hashes are sorted by
    the band's substring and then by the following 128 bits, and each is compared with the
    next ``window`` hashes of its bucket only (the sorted-neighbourhood method): a bucket of
    look-alikes (aligned faces share much of their hash) costs ``window`` comparisons per
    hash, never its size squared, so a search is O(N · bands · window).

    With ``involving`` (a night's few new hashes against all history), only the buckets that
    hold an involved hash are sorted: the pairs are the same (see :meth:`pairs`), and one new
    face against a million earlier ones costs ~0.3 s instead of ~13 s (docs/performance.md,
    "Fixed cost of a run").
    """

    _only_involved_buckets = True  # False: sort every bucket (the reference, for tests)

    def __init__(self, words: np.ndarray, bands: int = 16, window: int = 64) -> None:
        if bands not in (8, 16, 32):
            raise ValueError(f"bands must be 8, 16 or 32, not {bands}")
        self.words = np.ascontiguousarray(words, np.uint64).reshape(-1, _WORDS)
        self.bands = bands
        self.window = max(1, window)
        self.compared = 0

    def _keys(self, band: int) -> tuple[np.ndarray, int]:
        per_word = self.bands // _WORDS
        width = 64 // per_word
        word, part = divmod(band, per_word)
        mask = np.uint64((1 << width) - 1)
        return (self.words[:, word] >> np.uint64(part * width)) & mask, word

    def pairs(self, max_distance: int, involving: np.ndarray | None = None,
              valid: np.ndarray | None = None, neighbours: int | None = None,
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Pairs (i < j) at Hamming distance <= ``max_distance`` that share a band.

        ``involving``: (N,) bool; only pairs with at least one such item (tonight's faces
        against everything). ``valid``: (N,) bool; others take part in no pair.
        ``neighbours``: keep only pairs among the ``neighbours`` nearest of one of their items
        (:func:`nearest`), applied after every band so that memory stays O(N · neighbours)
        even among millions of look-alikes. Returns (i, j, distance) arrays. In buckets of at
        most ``window`` + 1 hashes every pair within ``bands - 1`` bits is found (pigeonhole),
        and most pairs further apart (a band is equal with probability about
        (1 - d/256)^(256/bands)); larger buckets are searched in sorted windows.
        """
        n = len(self.words)
        found: list[np.ndarray] = []
        usable = np.ones(n, bool) if valid is None else np.asarray(valid, bool)
        base = np.flatnonzero(usable)
        mine = None  # the involved usable hashes, when only their buckets need sorting
        if involving is not None and self._only_involved_buckets:
            mine = np.flatnonzero(np.asarray(involving, bool) & usable)
        for band in range(self.bands):
            keys, word = self._keys(band)
            nxt, after = (word + 1) % _WORDS, (word + 2) % _WORDS
            members = base
            if mine is not None:
                # A pair lies within one bucket (equal keys) and must hold an involved hash,
                # so only those buckets matter. Sorted alone they keep their order in the
                # whole sort (same keys; lexsort is stable and ``base`` ascending), so every
                # window below pairs the same hashes as in the whole sort.
                members = base[np.isin(keys[base], np.unique(keys[mine]))]
            order = members[np.lexsort((self.words[members, after],
                                        self.words[members, nxt], keys[members]))]
            k = keys[order]
            for offset in range(1, min(self.window + 1, len(order))):
                same = np.flatnonzero(k[offset:] == k[:-offset])
                if not len(same):
                    break
                a, b = order[same], order[same + offset]
                if involving is not None:
                    keep = involving[a] | involving[b]
                    a, b = a[keep], b[keep]
                self.compared += len(a)
                close = hamming(self.words[a], self.words[b]) <= max_distance
                a, b = a[close], b[close]
                found.append(np.minimum(a, b).astype(np.int64) * n + np.maximum(a, b))
            if neighbours is not None and found:
                found = [self._nearest_codes(np.concatenate(found), neighbours)]
        if not found:
            empty = np.zeros(0, np.int64)
            return empty, empty, empty
        codes = np.unique(np.concatenate(found))
        i, j = codes // n, codes % n
        return i, j, hamming(self.words[i], self.words[j])

    def _nearest_codes(self, codes: np.ndarray, k: int) -> np.ndarray:
        n = len(self.words)
        codes = np.unique(codes)
        i, j = codes // n, codes % n
        return codes[nearest(i, j, hamming(self.words[i], self.words[j]), k)]


def nearest(i: np.ndarray, j: np.ndarray, d: np.ndarray, k: int) -> np.ndarray:
    """(M,) bool: the pairs (i, j, distance) among the ``k`` nearest of i's or of j's pairs.

    Bounds the expensive checks to about 2k per face however many look-alikes a face has;
    ties go to the smaller partner index.
    """
    m = len(i)
    if m == 0:
        return np.zeros(0, bool)
    ends = np.concatenate([i, j])
    other = np.concatenate([j, i])
    dist = np.concatenate([d, d])
    pair = np.concatenate([np.arange(m), np.arange(m)])
    order = np.lexsort((other, dist, ends))
    e = ends[order]
    start = np.r_[0, np.flatnonzero(e[1:] != e[:-1]) + 1]
    rank = np.arange(len(e)) - np.repeat(start, np.diff(np.r_[start, len(e)]))
    keep = np.zeros(m, bool)
    keep[pair[order][rank < k]] = True
    return keep


def _grey(crop: np.ndarray) -> np.ndarray:
    g = cv2.cvtColor(np.asarray(crop), cv2.COLOR_BGR2GRAY)
    g = cv2.resize(g, (_REG_SIZE, _REG_SIZE), interpolation=cv2.INTER_AREA).astype(np.float32)
    return cv2.GaussianBlur(g, (0, 0), 0.8)


def _face_mask() -> np.ndarray:
    yy, xx = np.mgrid[0:_REG_SIZE, 0:_REG_SIZE]
    s = _REG_SIZE
    return ((((xx - s / 2 + 0.5) / (s * 0.36)) ** 2 + ((yy - s * 0.55) / (s * 0.42)) ** 2)
            <= 1).astype(np.uint8)


_MASK = _face_mask()
_MASK_BOOL = _MASK.astype(bool)
_NB = _REG_SIZE // _BLOCK
# Per 8x8 block: how many of its pixels lie on the face ellipse, and whether that is >= 75 %.
_BLOCK_COUNT = _MASK.reshape(_NB, _BLOCK, _NB, _BLOCK).sum(axis=(1, 3)).astype(np.float64)
_BLOCK_USED = _BLOCK_COUNT / (_BLOCK * _BLOCK) >= 0.75


def pixel_difference(a: np.ndarray, b: np.ndarray) -> float:
    """How different two aligned crops are once registered (see the module docstring).

    ``a``, ``b``: H×W×3 uint8 BGR aligned crops (any size; compared at 48×48 grey). Each is
    registered onto the other (ECC converges from either side, not always from both) and the
    better registration counts: the largest block mean of |z(a) - z(warped b)| over the
    face's 8×8 blocks (z: zero mean, unit deviation over the face ellipse). On the demo world:
    copies 0.15 (median; 95 % below 0.37), other expressions of the same person above 0.31,
    other people above 0.40. Where ECC does not converge, the crops are compared as they are.
    """
    ga, gb = _grey(a), _grey(b)
    first = _registered_difference(ga, gb)
    if first > _SECOND_TRY_BELOW:  # as far apart as other people: no second registration
        return first
    return min(first, _registered_difference(gb, ga))


def pixel_differences(pairs: Sequence[tuple[np.ndarray, np.ndarray]],
                      workers: int | None = None) -> list[float]:
    """:func:`pixel_difference` of each ``(a, b)`` pair, in order, on ``workers`` threads
    (default: one per core; OpenCV's registration releases the GIL, so threads scale)."""
    workers = workers or os.cpu_count() or 1
    if workers == 1 or len(pairs) < 64:
        return [pixel_difference(a, b) for a, b in pairs]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda ab: pixel_difference(*ab), pairs, chunksize=32))


def _registered_difference(ga: np.ndarray, gb: np.ndarray) -> float:
    warp = np.eye(2, 3, dtype=np.float32)
    criteria = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, _ECC_ITERATIONS, _ECC_EPS)
    try:
        _, warp = cv2.findTransformECC(ga, gb, warp, cv2.MOTION_AFFINE, criteria, _MASK, 3)
        gb = cv2.warpAffine(gb, warp, (_REG_SIZE, _REG_SIZE),
                            flags=cv2.INTER_LINEAR + cv2.WARP_INVERSE_MAP,
                            borderMode=cv2.BORDER_REPLICATE)
    except cv2.error:
        pass
    m = _MASK_BOOL

    def z(x: np.ndarray) -> np.ndarray:
        x = x - x[m].mean()
        return x / (x[m].std() + 1e-6)

    diff = np.abs(z(ga) - z(gb)).astype(np.float64) * _MASK
    # Mean |difference| over each block's face pixels, the worst block that is mostly face.
    sums = diff.reshape(_NB, _BLOCK, _NB, _BLOCK).sum(axis=(1, 3))
    return float((sums[_BLOCK_USED] / _BLOCK_COUNT[_BLOCK_USED]).max(initial=0.0))


def union_find(n: int, edges: Sequence[tuple[int, int]]) -> np.ndarray:
    """Connected components of ``n`` items under ``edges`` → (n,) root index per item."""
    parent = np.arange(n)

    def root(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in edges:
        ra, rb = root(a), root(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    return np.array([root(x) for x in range(n)])
