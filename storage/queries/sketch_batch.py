"""Merge many serialized latency sketches at once, with numpy.

A history chart asks for p95 over hundreds or thousands of rollup rows; a
compaction step merges tens of thousands.  Decoding each row into a
:class:`~app.core.sketch.LatencySketch` costs 10-200 us, which is seconds for
a month of rows.  The serialized layout (documented in ``app/core/sketch.py``)
is mostly varints, so the whole batch is decoded in a handful of numpy
operations: concatenate the blobs, find the varint bytes, decode every varint
at once, then sum bin counts per (group, key).  The result answers quantiles
exactly as :meth:`LatencySketch.quantile` would on the merged sketch (same
rank rule, same key-to-value mapping, same clamp to min and max), and encodes
each group back to the same byte layout.

The fast path covers what rollups hold: integer counts, the default mapping,
no negative values.  Anything else (a sketch written with another accuracy,
weighted values) falls back to merging ``LatencySketch`` objects, so the
answer is always right and usually fast.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from app.core.sketch import LatencySketch

I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]

_F64 = struct.Struct("<d")
_F64x3 = struct.Struct("<3d")
_VERSION = 1
_HEADER = 10  # version, flags, gamma
_TRAILER = 24  # min, max, sum
_EMPTY_LEN = _HEADER + 3  # zero count 0, no positive bins, no negative bins

_DEFAULT_MAPPING: Any = LatencySketch()._sketch._mapping
_GAMMA_BYTES = _F64.pack(_DEFAULT_MAPPING.gamma)
_HEADER_BYTES = bytes((_VERSION, 0)) + _GAMMA_BYTES


class MergedSketches:
    """``n_groups`` merged sketches: per group the zero count, (key, count) bins, min, max, sum.

    ``bin_group``/``bin_key``/``bin_count`` are sorted by group, then key.
    """

    def __init__(
        self,
        n_groups: int,
        *,
        zero: F64,
        bin_group: I64,
        bin_key: I64,
        bin_count: F64,
        vmin: F64,
        vmax: F64,
        vsum: F64,
    ) -> None:
        self.n_groups = n_groups
        self.zero = zero
        self.bin_group = bin_group
        self.bin_key = bin_key
        self.bin_count = bin_count
        self.min = vmin
        self.max = vmax
        self.sum = vsum
        positive = np.bincount(bin_group, weights=bin_count, minlength=n_groups) if n_groups else np.zeros(0)
        self.count: F64 = zero + positive
        # Where each group's bins start and end in the bin arrays.
        self._bounds = np.searchsorted(bin_group, np.arange(n_groups + 1), side="left")

    def quantiles(self, qs: Sequence[float]) -> F64:
        """``[group, i]`` = the value at quantile ``qs[i]`` of each group; NaN for an empty group."""
        for q in qs:
            if not 0.0 <= q <= 1.0:
                raise ValueError(f"quantile must be within [0, 1], got {q}")
        out = np.full((self.n_groups, len(qs)), np.nan)
        if not self.n_groups or not qs:
            return out
        nonempty = self.count > 0
        if not len(self.bin_key):
            out[nonempty] = 0.0
            return out
        cum = np.cumsum(self.bin_count)
        start = self._bounds[:-1]
        end = self._bounds[1:]
        base = np.where(start > 0, cum[np.maximum(start - 1, 0)], 0.0)
        # The key-to-value mapping of ddsketch itself, once per distinct key.
        keys, key_index = np.unique(self.bin_key, return_inverse=True)
        value_of = _DEFAULT_MAPPING.value
        key_values = np.array([float(value_of(int(k))) for k in keys])
        for j, q in enumerate(qs):
            rank = q * (self.count - 1)
            idx = np.searchsorted(cum, base + rank - self.zero, side="right")
            # ddsketch returns the last key when rounding pushes the rank past the end.
            idx = np.clip(idx, 0, len(cum) - 1)
            idx = np.minimum(idx, np.maximum(end - 1, 0))
            value = key_values[key_index[idx]]
            value = np.where((rank < self.zero) | (end == start), 0.0, value)
            out[:, j] = np.where(nonempty, np.minimum(np.maximum(value, self.min), self.max), np.nan)
        return out

    def to_bytes(self) -> list[bytes | None]:
        """Each group serialized as :meth:`LatencySketch.to_bytes` would; ``None`` for an empty group."""
        n = self.n_groups
        if not n:
            return []
        npos = np.diff(self._bounds)
        # Varint values per group: zero count, n positive bins, (key, count) pairs, n negative bins (0).
        nvals = 3 + 2 * npos
        vstart = np.concatenate(([0], np.cumsum(nvals)[:-1])).astype(np.int64)
        values = np.zeros(int(nvals.sum()), dtype=np.int64)
        values[vstart] = self.zero.astype(np.int64)
        values[vstart + 1] = npos
        if len(self.bin_key):
            keys = self.bin_key
            first = np.zeros(len(keys), dtype=bool)
            first[self._bounds[:-1][npos > 0]] = True
            deltas = np.empty_like(keys)
            deltas[0] = 0
            deltas[1:] = keys[1:] - keys[:-1]
            zz = np.where(keys >= 0, keys << 1, ((-keys) << 1) - 1)
            key_values = np.where(first, zz, deltas)
            within = np.arange(len(keys)) - np.repeat(self._bounds[:-1], npos)
            slot = np.repeat(vstart + 2, npos) + 2 * within
            values[slot] = key_values
            values[slot + 1] = self.bin_count.astype(np.int64)
        data, offsets = _encode_varints(values)
        ends = np.concatenate((offsets, [len(data)]))
        byte_start = ends[vstart]
        byte_end = ends[vstart + nvals]
        raw = data.tobytes()
        out: list[bytes | None] = []
        for g in range(n):
            if self.count[g] <= 0:
                out.append(None)
                continue
            body = raw[int(byte_start[g]) : int(byte_end[g])]
            out.append(
                _HEADER_BYTES + body + _F64x3.pack(float(self.min[g]), float(self.max[g]), float(self.sum[g]))
            )
        return out

    def sketch(self, group: int) -> LatencySketch | None:
        """One group as a :class:`LatencySketch` (tests, and callers that want the object)."""
        blob = self.to_bytes()[group]
        return LatencySketch.from_bytes(blob) if blob is not None else None


def merge_blobs(blobs: Sequence[bytes | None], groups: Sequence[int] | I64, n_groups: int) -> MergedSketches:
    """Merge ``blobs[i]`` into group ``groups[i]`` (0 <= group < n_groups); ``None`` blobs add nothing.

    ``groups`` may also be a 2-D array of shape ``(m, len(blobs))``: blob ``i``
    then goes into each of ``groups[0, i] ... groups[m-1, i]`` (the cells of a
    cube), decoded once.
    """
    gids = np.asarray(groups, dtype=np.int64)
    if gids.ndim == 1:
        gids = gids[None, :]
    if gids.shape[1] != len(blobs):
        raise ValueError("blobs and groups differ in length")
    if gids.size and (int(gids.min()) < 0 or int(gids.max()) >= n_groups):
        raise ValueError("a group index is out of range")
    keep = [i for i, b in enumerate(blobs) if b]
    if not keep:
        return _empty(n_groups)
    chosen: list[bytes] = [blobs[i] for i in keep]  # type: ignore[misc]
    chosen_groups = gids[:, keep]
    decoded = _decode_fast(chosen)
    if decoded is None:
        return _merge_slow(chosen, chosen_groups, n_groups)
    return _merge_decoded(decoded, chosen_groups, n_groups)


def _empty(n: int) -> MergedSketches:
    e = np.zeros(0, np.int64)
    return MergedSketches(
        n,
        zero=np.zeros(n),
        bin_group=e,
        bin_key=e,
        bin_count=np.zeros(0),
        vmin=np.full(n, np.inf),
        vmax=np.full(n, -np.inf),
        vsum=np.zeros(n),
    )


class _Decoded:
    __slots__ = ("bin_blob", "count", "key", "vmax", "vmin", "vsum", "zero")

    def __init__(
        self, *, zero: F64, bin_blob: I64, key: I64, count: F64, vmin: F64, vmax: F64, vsum: F64
    ) -> None:
        self.zero, self.bin_blob, self.key, self.count = zero, bin_blob, key, count
        self.vmin, self.vmax, self.vsum = vmin, vmax, vsum


def _decode_fast(blobs: Sequence[bytes]) -> _Decoded | None:
    """Decode every blob at once, or ``None`` when one needs the general decoder."""
    n = len(blobs)
    lengths = np.fromiter((len(b) for b in blobs), dtype=np.int64, count=n)
    if int(lengths.min()) < _EMPTY_LEN:
        return None
    buf = np.frombuffer(b"".join(blobs), dtype=np.uint8)
    starts = np.concatenate(([0], np.cumsum(lengths)[:-1])).astype(np.int64)
    # Version 1, no flags (integer counts, no mapping offset), the default gamma.
    if not (np.all(buf[starts] == _VERSION) and np.all(buf[starts + 1] == 0)):
        return None
    gamma = buf[starts[:, None] + np.arange(2, _HEADER)]
    if not np.all(gamma == np.frombuffer(_GAMMA_BYTES, dtype=np.uint8)):
        return None
    nonempty = lengths > _EMPTY_LEN
    region_start = starts + _HEADER
    region_end = starts + lengths - np.where(nonempty, _TRAILER, 0)
    region_len = region_end - region_start
    if np.any(region_len < 3):
        return None
    # The varint bytes of every blob, in order.
    mark = np.zeros(len(buf) + 1, dtype=np.int64)
    mark[region_start] += 1  # regions never share a start or an end
    mark[region_end] -= 1
    vb = buf[np.cumsum(mark[:-1]) > 0]
    term = vb < 0x80
    # Each region must end on a varint's last byte.
    region_bound = np.cumsum(region_len)
    if not np.all(term[region_bound - 1]):
        return None
    ends = np.flatnonzero(term)
    vstarts = np.empty_like(ends)
    vstarts[0] = 0
    vstarts[1:] = ends[:-1] + 1
    lens = ends - vstarts + 1
    if int(lens.max()) > 9:  # longer than any count or key we could have written
        return None
    low = (vb & 0x7F).astype(np.int64)
    values = low[vstarts]
    for k in range(1, int(lens.max())):
        sel = lens > k
        values[sel] |= low[vstarts[sel] + k] << (7 * k)
    # Varints per blob (terminators per region), and the index of each blob's first varint.
    terms_before = np.concatenate(([0], np.cumsum(term)[region_bound - 1]))
    nvar = np.diff(terms_before)
    first = terms_before[:-1]
    zero = values[first].astype(np.float64)
    npos = values[first + 1]
    # Layout: zero, npos, npos pairs, nneg (must be 0: latencies are never negative).
    if not np.all(nvar == 3 + 2 * npos) or np.any(values[first + 2 + 2 * npos] != 0):
        return None
    bin_blob = np.repeat(np.arange(n), npos)
    within = np.arange(len(bin_blob)) - np.repeat(np.concatenate(([0], np.cumsum(npos)[:-1])), npos)
    slot = np.repeat(first + 2, npos) + 2 * within
    raw_key = values[slot]
    count = values[slot + 1].astype(np.float64)
    is_first = within == 0
    zz = raw_key
    step = np.where(is_first, np.where(zz & 1, -((zz + 1) >> 1), zz >> 1), raw_key)
    # Keys are the first key plus running deltas within each blob.
    run = np.cumsum(step)
    seg_start = np.flatnonzero(is_first)
    offset = np.repeat(run[seg_start] - step[seg_start], np.diff(np.concatenate((seg_start, [len(run)]))))
    key = run - offset
    trailer = np.zeros((n, 3))
    idx = np.flatnonzero(nonempty)
    if len(idx):
        tb = buf[(starts[idx] + lengths[idx] - _TRAILER)[:, None] + np.arange(_TRAILER)]
        trailer[idx] = np.ascontiguousarray(tb).view("<f8").reshape(-1, 3)
    vmin = np.where(nonempty, trailer[:, 0], np.inf)
    vmax = np.where(nonempty, trailer[:, 1], -np.inf)
    return _Decoded(
        zero=zero, bin_blob=bin_blob, key=key, count=count, vmin=vmin, vmax=vmax, vsum=trailer[:, 2]
    )


def _merge_decoded(d: _Decoded, gids: I64, n_groups: int) -> MergedSketches:
    m = gids.shape[0]
    flat = gids.reshape(-1)
    zero = _fsum_by(flat, np.tile(d.zero, m), n_groups)
    vsum = _fsum_by(flat, np.tile(d.vsum, m), n_groups)
    vmin = np.full(n_groups, np.inf)
    np.minimum.at(vmin, flat, np.tile(d.vmin, m))
    vmax = np.full(n_groups, -np.inf)
    np.maximum.at(vmax, flat, np.tile(d.vmax, m))
    if not len(d.key):
        e = np.zeros(0, np.int64)
        return MergedSketches(
            n_groups,
            zero=zero,
            bin_group=e,
            bin_key=e,
            bin_count=np.zeros(0),
            vmin=vmin,
            vmax=vmax,
            vsum=vsum,
        )
    group = gids[:, d.bin_blob].reshape(-1)
    key = np.tile(d.key, m)
    count = np.tile(d.count, m)
    kmin = int(d.key.min())
    width = int(d.key.max()) - kmin + 1
    composite = group * width + (key - kmin)
    if n_groups * width <= 1 << 22:
        dense = _fsum_by(composite, count, n_groups * width)
        cells = np.flatnonzero(dense)
        counts = dense[cells]
    else:
        cells, inverse = np.unique(composite, return_inverse=True)
        counts = _fsum_by(inverse.astype(np.int64), count, len(cells))
    return MergedSketches(
        n_groups, zero=zero, bin_group=(cells // width).astype(np.int64),
        bin_key=(cells % width + kmin).astype(np.int64), bin_count=counts, vmin=vmin, vmax=vmax, vsum=vsum,
    )  # fmt: skip


def _fsum_by(index: I64, weights: F64, n: int) -> F64:
    """Sum ``weights`` per index (``np.bincount`` with weights, typed as float64)."""
    out: F64 = np.bincount(index, weights=weights, minlength=n).astype(np.float64, copy=False)
    return out


def _merge_slow(blobs: Sequence[bytes], gids: I64, n_groups: int) -> MergedSketches:
    """The general path: merge LatencySketch objects (any mapping, weights, negative values)."""
    merged = [LatencySketch() for _ in range(n_groups)]
    for i, blob in enumerate(blobs):
        sketch = LatencySketch.from_bytes(blob)
        for g in gids[:, i]:
            merged[int(g)].merge(sketch)
    return _ObjectMerged(merged)


class _ObjectMerged(MergedSketches):
    """Merged sketches held as objects: quantiles and bytes come from :class:`LatencySketch` itself."""

    def __init__(self, sketches: Sequence[LatencySketch]) -> None:
        n = len(sketches)
        e = np.zeros(0, np.int64)
        z = np.zeros(n)
        super().__init__(n, zero=z, bin_group=e, bin_key=e, bin_count=np.zeros(0), vmin=z, vmax=z, vsum=z)
        self._sketches = list(sketches)
        self.count = np.array([s.count for s in sketches], dtype=np.float64)
        self.sum = np.array([s.sum for s in sketches], dtype=np.float64)
        self.min = np.array([s.min if s.min is not None else np.inf for s in sketches])
        self.max = np.array([s.max if s.max is not None else -np.inf for s in sketches])

    def quantiles(self, qs: Sequence[float]) -> F64:
        return np.array(
            [
                [np.nan if v is None else v for v in s.quantiles(qs)] if s.count else [np.nan] * len(qs)
                for s in self._sketches
            ],
            dtype=np.float64,
        ).reshape(len(self._sketches), len(qs))

    def to_bytes(self) -> list[bytes | None]:
        return [s.to_bytes() if s.count else None for s in self._sketches]

    def sketch(self, group: int) -> LatencySketch | None:
        s = self._sketches[group]
        return s.copy() if s.count else None


# The default mapping's key of a value: ceil(log(v, 2) * multiplier) + offset (ddsketch's
# LogarithmicMapping.key); values at or below min_possible go to the zero count.
_LN2 = math.log(2)
_MULTIPLIER = float(_DEFAULT_MAPPING._multiplier)
_KEY_OFFSET = float(_DEFAULT_MAPPING._offset)
_MIN_POSSIBLE = float(_DEFAULT_MAPPING.min_possible)


def sketch_keys(values: F64) -> I64:
    """ddsketch's keys of positive ``values`` under the rollups' mapping, as ``LatencySketch.add`` finds them.

    numpy's ``log`` may differ from the C library's by one unit in the last
    place; a value whose scaled logarithm lies that close to a bin edge is
    mapped again by ddsketch itself, so the keys are exactly ddsketch's.
    """
    scaled = np.log(values) / _LN2 * _MULTIPLIER
    keys: I64 = (np.ceil(scaled) + _KEY_OFFSET).astype(np.int64)
    near = np.flatnonzero(np.abs(scaled - np.rint(scaled)) < 1e-9 * np.maximum(np.abs(scaled), 1.0))
    if len(near):
        key_of = _DEFAULT_MAPPING.key
        for i in near.tolist():
            keys[i] = key_of(float(values[i]))
    return keys


class PreparedValues:
    """A batch of values made ready to add into ``n`` groups' sketches (:func:`prepare_values`).

    Everything that depends only on the new values: each group's zero count,
    sum, min and max, and the (group, key) bins with their counts.  It is
    computed apart from the store (the ingest's parser process makes it) and
    added to the stored sketches by :func:`add_prepared`.  The values
    themselves are kept for a stored sketch the fast decoder cannot read.
    """

    __slots__ = ("bin_count", "bin_group", "bin_key", "groups", "n", "values", "vmax", "vmin", "vsum", "zero")

    def __init__(self, n: int, values: F64, groups: I64) -> None:
        self.n, self.values, self.groups = n, values, groups
        positive = values > _MIN_POSSIBLE
        keys = sketch_keys(values[positive])
        self.zero = _fsum_by(groups[~positive], np.ones(int((~positive).sum())), n)
        self.vsum = _fsum_by(groups, values, n)
        self.vmin = np.full(n, np.inf)
        self.vmax = np.full(n, -np.inf)
        np.minimum.at(self.vmin, groups, values)
        np.maximum.at(self.vmax, groups, values)
        self.bin_group, self.bin_key, self.bin_count = _count_bins(groups[positive], keys, np.ones(len(keys)))


def merge_prepared(parts: Sequence[tuple[PreparedValues, I64]], n: int) -> PreparedValues:
    """Several batches' prepared values as one, for ``n`` groups; ``remap`` takes each part's groups there."""
    merged = PreparedValues.__new__(PreparedValues)
    merged.n = n
    merged.values = np.concatenate([p.values for p, _ in parts]) if parts else np.zeros(0)
    merged.groups = (
        np.concatenate([remap[p.groups] for p, remap in parts]).astype(np.int64)
        if parts
        else np.zeros(0, np.int64)
    )
    merged.zero, merged.vsum = np.zeros(n), np.zeros(n)
    merged.vmin, merged.vmax = np.full(n, np.inf), np.full(n, -np.inf)
    for p, remap in parts:
        np.add.at(merged.zero, remap, p.zero)
        np.add.at(merged.vsum, remap, p.vsum)
        np.minimum.at(merged.vmin, remap, p.vmin)
        np.maximum.at(merged.vmax, remap, p.vmax)
    if parts:
        merged.bin_group, merged.bin_key, merged.bin_count = _count_bins(
            np.concatenate([remap[p.bin_group] for p, remap in parts]).astype(np.int64),
            np.concatenate([p.bin_key for p, _ in parts]).astype(np.int64),
            np.concatenate([p.bin_count for p, _ in parts]),
        )
    else:
        e = np.zeros(0, np.int64)
        merged.bin_group, merged.bin_key, merged.bin_count = e, e, np.zeros(0)
    return merged


def _count_bins(group: I64, key: I64, count: F64) -> tuple[I64, I64, F64]:
    """Counts summed per (group, key), sorted by group then key."""
    if not len(key):
        e = np.zeros(0, np.int64)
        return e, e, np.zeros(0)
    kmin = int(key.min())
    width = int(key.max()) - kmin + 1
    cells, inverse = np.unique(group * width + (key - kmin), return_inverse=True)
    counts = _fsum_by(inverse.reshape(-1).astype(np.int64), count, len(cells))
    return (cells // width).astype(np.int64), (cells % width + kmin).astype(np.int64), counts


def prepare_values(values: F64, groups: I64, n: int) -> PreparedValues:
    """``values[i]`` (finite, non-negative) for group ``groups[i]`` of ``n``, ready for :func:`add_prepared`."""
    values = np.asarray(values, dtype=np.float64)
    groups = np.asarray(groups, dtype=np.int64)
    if len(values) != len(groups):
        raise ValueError("values and groups differ in length")
    if len(values) and (not np.all(np.isfinite(values)) or float(values.min()) < 0):
        raise ValueError("sketch values must be finite and non-negative")
    return PreparedValues(n, values, groups)


def add_prepared(stored: Sequence[bytes | None], new: PreparedValues) -> list[bytes | None]:
    """Each stored sketch with its group's prepared values added (see :func:`add_values`)."""
    n = len(stored)
    if n != new.n:
        raise ValueError(f"{n} stored sketches for values prepared for {new.n} groups")
    present = [g for g, b in enumerate(stored) if b]
    decoded = _decode_fast([stored[g] for g in present]) if present else None  # type: ignore[misc]
    if present and decoded is None:
        return _add_values_slow(stored, new.values, new.groups)
    zero, vsum, vmin, vmax = new.zero.copy(), new.vsum.copy(), new.vmin.copy(), new.vmax.copy()
    bin_group, bin_key, bin_count = new.bin_group, new.bin_key, new.bin_count
    if decoded is not None:
        where = np.asarray(present, dtype=np.int64)
        zero[where] += decoded.zero
        vsum[where] = decoded.vsum + vsum[where]
        vmin[where] = np.minimum(vmin[where], decoded.vmin)
        vmax[where] = np.maximum(vmax[where], decoded.vmax)
        bin_group, bin_key, bin_count = _count_bins(
            np.concatenate((where[decoded.bin_blob], bin_group)),
            np.concatenate((decoded.key, bin_key)),
            np.concatenate((decoded.count, bin_count)),
        )
    merged = MergedSketches(
        n,
        zero=zero,
        bin_group=bin_group,
        bin_key=bin_key,
        bin_count=bin_count,
        vmin=vmin,
        vmax=vmax,
        vsum=vsum,
    )
    return merged.to_bytes()


def add_values(stored: Sequence[bytes | None], values: F64, groups: I64) -> list[bytes | None]:
    """Each stored sketch with its group's new values added, serialized as ``LatencySketch.to_bytes``.

    ``stored[g]`` is group ``g``'s serialized sketch (``None``: none yet);
    ``values[i]`` (finite, non-negative) goes into group ``groups[i]``.  The
    result holds one entry per group: ``None`` only when the group had no
    sketch and gets no value.  The bins are exactly what adding the values one
    by one with :meth:`LatencySketch.add` gives; the running sum may differ in
    the last bits (it is summed per group, then added).  This is the ingest
    path: one batch of 20,000 events costs a few numpy passes instead of
    20,000 Python calls into ddsketch.
    """
    return add_prepared(stored, prepare_values(values, groups, len(stored)))


def _add_values_slow(stored: Sequence[bytes | None], values: F64, groups: I64) -> list[bytes | None]:
    """The general path of :func:`add_values`: a stored sketch our fast decoder does not read."""
    out: list[bytes | None] = list(stored)
    order = np.argsort(groups, kind="stable")
    sorted_groups = groups[order]
    bounds = np.searchsorted(sorted_groups, np.arange(len(stored) + 1))
    ordered = values[order].tolist()
    for g, blob in enumerate(stored):
        lo, hi = int(bounds[g]), int(bounds[g + 1])
        if lo == hi:
            continue
        sketch = LatencySketch.from_bytes(blob) if blob else LatencySketch()
        for v in ordered[lo:hi]:
            sketch.add(v)
        out[g] = sketch.to_bytes()
    return out


def _encode_varints(values: I64) -> tuple[npt.NDArray[np.uint8], I64]:
    """LEB128-encode non-negative int64 values; return the bytes and each value's byte offset."""
    if len(values) and int(values.min()) < 0:
        raise ValueError("varints must be non-negative")
    nbytes = np.ones(len(values), dtype=np.int64)
    for k in range(1, 10):
        nbytes += values >= (1 << (7 * k))
    offsets = np.concatenate(([0], np.cumsum(nbytes)[:-1])).astype(np.int64)
    out = np.zeros(int(nbytes.sum()), dtype=np.uint8)
    for k in range(int(nbytes.max()) if len(values) else 0):
        sel = nbytes > k
        chunk = (values[sel] >> (7 * k)) & 0x7F
        more = np.where(nbytes[sel] - 1 > k, 0x80, 0)
        out[offsets[sel] + k] = (chunk | more).astype(np.uint8)
    return out, offsets


__all__ = [
    "MergedSketches",
    "PreparedValues",
    "add_prepared",
    "add_values",
    "merge_blobs",
    "merge_prepared",
    "prepare_values",
    "sketch_keys",
]
