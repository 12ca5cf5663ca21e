"""OSQ (optimized scalar quantization, SQUASH): rotation, non-uniform bit allocation, Lloyd cells, segment packing.

Pure numeric code over arrays; the index (``shoal.index.osq``) owns partitions, ids and filters. Pieces:

* :func:`fit_rotation`: PCA/KLT basis (descending variance), applied *without* centring so that inner products and
  L2 distances are preserved exactly (``y = x @ R``, ``R`` orthogonal).
* :func:`allocate_bits`: greedy non-uniform allocation under a budget of bits per vector.
* :func:`quantile_edges` / :func:`lloyd_edges`: per-dimension cells, equi-populated then refined by 1-D Lloyd.
* :class:`OSQCodebook`: a fitted quantizer for ``d`` rotated dimensions: encode, pack MSB-first into segment-major
  byte columns, extract one dimension, per-cell member ranges for lower/upper distance bounds.
* :class:`NumericCells`: the same 1-D cells for a numeric attribute, with each cell's member range; the index maps a
  comparison to per-cell look-up tables over those ranges (*sure* when the whole cell satisfies it, *maybe* when the
  cell straddles a bound).
"""

from __future__ import annotations

import numpy as np

from . import _osq_kernels as K

MAX_BITS = 8
MAX_CELLS = 256
#: attribute code for a missing value (NaN); numeric attributes therefore have at most 255 cells
ATTR_MISSING = 255


# ---------------------------------------------------------------------------------------------------- rotation
def fit_rotation(x: np.ndarray, *, sample: int = 100_000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """PCA/KLT rotation of ``x``.

    Parameters
    ----------
    x : float32 (n, d)
    sample : int
        At most this many rows (a fixed-seed sample) estimate the covariance.

    Returns
    -------
    R : float32 (d, d)
        Orthogonal; column ``j`` is the ``j``-th principal axis (descending variance). Rotate with ``x @ R``.
    variances : float64 (d,)
        Eigenvalues, descending.
    """
    x = np.asarray(x, dtype=np.float32)
    if x.shape[0] > sample:
        x = x[np.sort(np.random.default_rng(seed).choice(x.shape[0], sample, replace=False))]
    xc = x.astype(np.float64) - x.mean(axis=0, dtype=np.float64)
    cov = xc.T @ xc / max(1, x.shape[0] - 1)
    w, v = np.linalg.eigh(cov)
    order = np.argsort(-w, kind="stable")
    w = np.maximum(w[order], 0.0)
    v = v[:, order]
    # fix each axis's sign so the rotation is deterministic across BLAS builds
    signs = np.sign(v[np.argmax(np.abs(v), axis=0), np.arange(v.shape[1])])
    signs[signs == 0] = 1.0
    return np.ascontiguousarray(v * signs, dtype=np.float32), w


# ---------------------------------------------------------------------------------------------------- allocation
def allocate_bits(variances, budget: int, max_bits: int = MAX_BITS) -> np.ndarray:
    """Greedy non-uniform bit allocation.

    Every dimension starts with one cell; ``budget`` times, the dimension with the most remaining energy (ties to the
    lower index) doubles its cells and its energy is divided by 4 (uniform-quantizer distortion falls by 4 per bit).

    Parameters
    ----------
    variances : float (d,)
    budget : int
        Bits per vector; at most ``max_bits * d`` are used.

    Returns
    -------
    int64 (d,)
        Bits per dimension, summing to ``min(budget, max_bits * d)``; non-increasing where ``variances`` is.
    """
    energy = np.asarray(variances, dtype=np.float64).copy()
    d = energy.shape[0]
    bits = np.zeros(d, dtype=np.int64)
    budget = int(min(max(budget, 0), max_bits * d))
    for _ in range(budget):
        j = int(np.argmax(energy))
        bits[j] += 1
        energy[j] = energy[j] / 4.0 if bits[j] < max_bits else -np.inf
    return bits


# ---------------------------------------------------------------------------------------------------- 1-D cells
def quantile_edges(sorted_values: np.ndarray, ncells: int) -> np.ndarray:
    """Inner boundaries (``ncells - 1``, float64) of equi-populated cells over ascending ``sorted_values``.

    With at most ``ncells`` distinct values every distinct value gets its own cell (exact cells).
    """
    v = np.asarray(sorted_values, dtype=np.float64)
    if ncells <= 1 or v.size == 0:
        return np.empty(0, dtype=np.float64)
    uniq = np.unique(v)
    if uniq.size <= ncells:
        inner = uniq[1:]
        return np.concatenate([inner, np.full(ncells - 1 - inner.size, np.inf)])
    idx = (np.arange(1, ncells) * v.size) // ncells
    return v[idx].copy()


def cell_distortion(sorted_values: np.ndarray, inner: np.ndarray) -> float:
    """Sum of squared errors when each value is replaced by the mean of its cell."""
    v = np.asarray(sorted_values, dtype=np.float64)
    if v.size == 0:
        return 0.0
    cuts = np.concatenate([[0], np.searchsorted(v, inner, side="left"), [v.size]])
    s1 = np.concatenate([[0.0], np.cumsum(v)])
    s2 = np.concatenate([[0.0], np.cumsum(v * v)])
    cnt = np.diff(cuts)
    sum1 = s1[cuts[1:]] - s1[cuts[:-1]]
    sum2 = s2[cuts[1:]] - s2[cuts[:-1]]
    with np.errstate(invalid="ignore", divide="ignore"):
        err = np.where(cnt > 0, sum2 - sum1 * sum1 / np.maximum(cnt, 1), 0.0)
    return float(np.maximum(err, 0.0).sum())


def lloyd_edges(sorted_values: np.ndarray, inner: np.ndarray, *, iters: int = 25, tol: float = 1e-4) -> np.ndarray:
    """Refine inner boundaries with 1-D Lloyd iterations until the distortion stops improving.

    Each step puts every boundary at the midpoint of the means of its two neighbouring cells (prefix sums make one
    step ``O(ncells log n)``). The best boundaries seen are returned, so the result never has higher distortion than
    ``inner``.
    """
    v = np.asarray(sorted_values, dtype=np.float64)
    inner = np.asarray(inner, dtype=np.float64)
    finite = np.isfinite(inner)
    if v.size == 0 or inner.size == 0 or np.unique(v).size <= inner.size + 1:
        return inner.copy()  # exact cells (one per distinct value) cannot improve
    inner = inner[finite]
    s1 = np.concatenate([[0.0], np.cumsum(v)])
    best, best_err = inner.copy(), cell_distortion(v, inner)
    cur = inner.copy()
    for _ in range(iters):
        cuts = np.concatenate([[0], np.searchsorted(v, cur, side="left"), [v.size]])
        cnt = np.diff(cuts)
        lo_edge = np.concatenate([[v[0]], cur])
        hi_edge = np.concatenate([cur, [v[-1]]])
        with np.errstate(invalid="ignore", divide="ignore"):
            means = np.where(cnt > 0, (s1[cuts[1:]] - s1[cuts[:-1]]) / np.maximum(cnt, 1), 0.5 * (lo_edge + hi_edge))
        cur = 0.5 * (means[:-1] + means[1:])
        cur = np.maximum.accumulate(cur)
        err = cell_distortion(v, cur)
        if err < best_err * (1.0 - tol):
            best, best_err = cur.copy(), err
        else:
            break
    out = np.full(finite.size, np.inf)
    out[: best.size] = best
    return out


def snap_edges(inner: np.ndarray, frac: float = 0.1) -> np.ndarray:
    """Move each finite boundary to the roundest number within ``frac`` of its narrower neighbouring cell.

    People write round constants (``price < 500``); a boundary at 500 rather than 499.3 makes such a predicate fall
    on a cell edge, so no cell straddles it and its rows are *sure* instead of *maybe*. The order of boundaries is
    kept.
    """
    inner = np.asarray(inner, dtype=np.float64)
    fin = np.isfinite(inner)
    e = inner[fin]
    if e.size == 0:
        return inner.copy()
    gaps = np.diff(e)
    left = np.concatenate([[np.inf], gaps])
    right = np.concatenate([gaps, [np.inf]])
    tol = frac * np.minimum(left, right)
    tol[~np.isfinite(tol)] = frac * max(1.0, float(np.abs(e).max()))
    out = e.copy()
    done = np.zeros(e.size, dtype=bool)
    for p in range(15, -16, -1):
        step = 10.0 ** p
        cand = np.round(e / step) * step
        ok = ~done & (np.abs(cand - e) <= tol)
        out[ok] = cand[ok]
        done |= ok
    out = np.maximum.accumulate(out)
    res = inner.copy()
    res[fin] = out
    return res


def assign_cells(values: np.ndarray, inner: np.ndarray) -> np.ndarray:
    """Cell of each value: the number of inner boundaries ``<= value`` (int64)."""
    return np.searchsorted(inner, values, side="right").astype(np.int64)


# ---------------------------------------------------------------------------------------------------- vectors
class OSQCodebook:
    """A fitted OSQ quantizer for rotated vectors of dimension ``d``.

    Attributes
    ----------
    bits : int64 (d,)
    inner : float64 (d, 255)
        Inner cell boundaries per dimension, ``+inf`` padded.
    cell_lo, cell_hi : float32 (d, 256)
        Smallest / largest value of the rows encoded into each cell (empty cells: ``+inf`` / ``-inf``); dimensions
        with 0 bits have one cell spanning all rows.
    thresholds : float32 (nbin,)
        Per-dimension medians for the binary sign codes of the first ``nbin`` dimensions.
    """

    def __init__(self, bits: np.ndarray, inner: np.ndarray, cell_lo: np.ndarray, cell_hi: np.ndarray,
                 thresholds: np.ndarray):
        self.bits = np.asarray(bits, dtype=np.int64)
        self.inner = np.asarray(inner, dtype=np.float64)
        self.cell_lo = np.ascontiguousarray(cell_lo, dtype=np.float32)
        self.cell_hi = np.ascontiguousarray(cell_hi, dtype=np.float32)
        self.thresholds = np.asarray(thresholds, dtype=np.float32)
        off = np.concatenate([[0], np.cumsum(self.bits)[:-1]]).astype(np.int64)
        self.offsets = off
        self.dim_byte = off // 8
        within = off % 8
        self.dim_two = ((within + self.bits) > 8).astype(np.int64)
        self.dim_shift = np.where(self.dim_two == 1, 16 - within - self.bits, 8 - within - self.bits).astype(np.int64)
        self.dim_shift[self.bits == 0] = 0

    @property
    def d(self) -> int:
        return int(self.bits.shape[0])

    @property
    def total_bits(self) -> int:
        return int(self.bits.sum())

    @property
    def nseg(self) -> int:
        return (self.total_bits + 7) // 8

    @property
    def nwords(self) -> int:
        """uint64 words per binary code."""
        return max(1, (self.thresholds.shape[0] + 63) // 64)

    @classmethod
    def fit(cls, y: np.ndarray, budget: int, *, lloyd_iters: int = 25, nbin: int | None = None,
            variances: np.ndarray | None = None) -> "OSQCodebook":
        """Fit on rotated vectors ``y`` float32 (n, d) with ``budget`` bits per vector.

        ``variances`` (default: those of ``y``) drive the bit allocation; ``nbin`` (default ``min(d, 256)``) is the
        length of the binary sign code.
        """
        y = np.asarray(y, dtype=np.float32)
        n, d = y.shape
        var = y.var(axis=0, dtype=np.float64) if variances is None else np.asarray(variances, np.float64)
        bits = allocate_bits(var, budget)
        inner = np.full((d, MAX_CELLS - 1), np.inf)
        for j in range(d):
            if bits[j] == 0 or n == 0:
                continue
            col = np.sort(y[:, j].astype(np.float64))
            start = quantile_edges(col, 1 << int(bits[j]))
            inner[j, : start.size] = lloyd_edges(col, start, iters=lloyd_iters) if lloyd_iters > 0 else start
        nbin = min(d, 256) if nbin is None else min(d, nbin)
        thresholds = np.median(y[:, :nbin], axis=0).astype(np.float32) if n else np.zeros(nbin, np.float32)
        cell_lo = np.full((d, MAX_CELLS), np.inf, dtype=np.float32)
        cell_hi = np.full((d, MAX_CELLS), -np.inf, dtype=np.float32)
        book = cls(bits, inner, cell_lo, cell_hi, thresholds)
        return book

    def encode(self, y: np.ndarray) -> np.ndarray:
        """Cell codes uint8 (n, d) of rotated vectors; also widens the cells' member ranges to cover ``y``."""
        y = np.asarray(y, dtype=np.float32)
        n, d = y.shape
        codes = np.zeros((n, d), dtype=np.uint8)
        if n == 0:
            return codes
        for j in range(d):
            b = int(self.bits[j])
            if b:
                c = assign_cells(y[:, j], self.inner[j, : (1 << b) - 1])
                codes[:, j] = c
            else:
                c = np.zeros(n, dtype=np.int64)
            lo = np.full(MAX_CELLS, np.inf, dtype=np.float32)
            hi = np.full(MAX_CELLS, -np.inf, dtype=np.float32)
            np.minimum.at(lo, c, y[:, j])
            np.maximum.at(hi, c, y[:, j])
            np.minimum(self.cell_lo[j], lo, out=self.cell_lo[j])
            np.maximum(self.cell_hi[j], hi, out=self.cell_hi[j])
        return codes

    def pack(self, codes: np.ndarray) -> np.ndarray:
        """Segment-major packed codes uint8 (nseg, n) (MSB first)."""
        return pack_codes(codes, self.bits)

    def extract(self, segs: np.ndarray, j: int, rows: np.ndarray | None = None) -> np.ndarray:
        """Codes of dimension ``j`` for ``rows`` (default all) from packed segments (int64)."""
        n = segs.shape[1]
        rows = np.arange(n, dtype=np.int64) if rows is None else np.asarray(rows, dtype=np.int64)
        if self.bits[j] == 0:
            return np.zeros(rows.shape[0], dtype=np.int64)
        return K.extract_dim(segs, rows, int(self.dim_byte[j]), int(self.dim_shift[j]), int(self.dim_two[j]),
                             (1 << int(self.bits[j])) - 1)

    def binary(self, y: np.ndarray) -> np.ndarray:
        """Binary sign codes uint64 (n, nwords) of rotated vectors."""
        return K.sign_codes(np.ascontiguousarray(y, dtype=np.float32), self.thresholds, self.nwords)

    def bounds(self, segs: np.ndarray, rows: np.ndarray, q: np.ndarray, metric: str) -> tuple[np.ndarray, np.ndarray]:
        """Lower and upper bounds (float32 (m,)) of the distance key between rotated query ``q`` and ``rows``."""
        return K.bounds_rows(segs, np.asarray(rows, dtype=np.int64), np.ascontiguousarray(q, dtype=np.float32),
                             self.bits, self.dim_byte, self.dim_shift, self.dim_two, self.cell_lo, self.cell_hi,
                             K.METRIC_L2 if metric == "l2" else K.METRIC_IP)

    def arrays(self) -> dict[str, np.ndarray]:
        """The arrays that define the codebook (for persistence)."""
        return {"bits": self.bits, "inner": self.inner, "cell_lo": self.cell_lo, "cell_hi": self.cell_hi,
                "thresholds": self.thresholds}

    @classmethod
    def from_arrays(cls, a: dict[str, np.ndarray]) -> "OSQCodebook":
        return cls(np.array(a["bits"]), np.array(a["inner"]), np.array(a["cell_lo"]), np.array(a["cell_hi"]),
                   np.array(a["thresholds"]))

    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.arrays().values())


def pack_codes(codes: np.ndarray, bits: np.ndarray) -> np.ndarray:
    """Pack ``codes`` uint8 (n, d) with ``bits`` int (d,) per dimension, MSB first, into segment-major uint8
    ``(ceil(sum(bits)/8), n)``."""
    bits = np.asarray(bits, dtype=np.int64)
    nseg = (int(bits.sum()) + 7) // 8
    return K.pack_codes(np.ascontiguousarray(codes, dtype=np.uint8), bits, nseg)


def unpack_codes(segs: np.ndarray, bits: np.ndarray) -> np.ndarray:
    """Inverse of :func:`pack_codes`, bit by bit (a slow reference for tests): uint8 (n, d)."""
    bits = np.asarray(bits, dtype=np.int64)
    n = segs.shape[1]
    stream = np.unpackbits(np.ascontiguousarray(segs.T), axis=1)  # (n, nseg*8), MSB first per byte
    out = np.zeros((n, bits.shape[0]), dtype=np.uint8)
    pos = 0
    for j, b in enumerate(bits):
        val = np.zeros(n, dtype=np.int64)
        for t in range(int(b)):
            val = (val << 1) | stream[:, pos + t]
        out[:, j] = val
        pos += int(b)
    return out


# ---------------------------------------------------------------------------------------------------- attributes
class NumericCells:
    """Quantized numeric attribute: quantile + Lloyd cells, one byte code per row (``ATTR_MISSING`` = missing).

    Attributes
    ----------
    inner : float64 (ncells - 1,)
    lo, hi : float64 (256,)
        Smallest / largest member value per cell (``+inf`` / ``-inf`` while empty).
    """

    def __init__(self, inner: np.ndarray, lo: np.ndarray | None = None, hi: np.ndarray | None = None):
        self.inner = np.asarray(inner, dtype=np.float64)
        self.lo = np.full(MAX_CELLS, np.inf) if lo is None else np.asarray(lo, dtype=np.float64).copy()
        self.hi = np.full(MAX_CELLS, -np.inf) if hi is None else np.asarray(hi, dtype=np.float64).copy()

    @property
    def ncells(self) -> int:
        return int(self.inner.shape[0]) + 1

    @classmethod
    def fit(cls, values, bits: int = 8, *, missing=None, lloyd_iters: int = 25) -> "NumericCells":
        """Fit cells on ``values`` (float64 or int64 (n,), NaN = missing) with ``2**bits`` cells (at most 255)."""
        v = np.asarray(values, dtype=np.float64)
        keep = ~np.isnan(v) if missing is None else ~(np.isnan(v) | np.asarray(missing, dtype=bool))
        v = np.sort(v[keep])
        ncells = min(1 << int(bits), MAX_CELLS - 1)
        start = quantile_edges(v, ncells)
        inner = lloyd_edges(v, start, iters=lloyd_iters) if lloyd_iters > 0 else start
        return cls(snap_edges(inner))

    def encode(self, values, missing=None) -> np.ndarray:
        """uint8 codes (n,); widens the member ranges of the cells to cover ``values``.

        ``missing`` bool (n,) marks rows without a value (NaN is always missing).
        """
        v = np.asarray(values, dtype=np.float64)
        miss = np.isnan(v) if missing is None else (np.isnan(v) | np.asarray(missing, dtype=bool))
        c = assign_cells(np.where(miss, 0.0, v), self.inner)
        ok = ~miss
        np.minimum.at(self.lo, c[ok], v[ok])
        np.maximum.at(self.hi, c[ok], v[ok])
        c[miss] = ATTR_MISSING
        return c.astype(np.uint8)

    def arrays(self, name: str) -> dict[str, np.ndarray]:
        return {f"{name}.inner": self.inner, f"{name}.lo": self.lo, f"{name}.hi": self.hi}

    @classmethod
    def from_arrays(cls, a: dict[str, np.ndarray], name: str) -> "NumericCells":
        return cls(np.array(a[f"{name}.inner"]), np.array(a[f"{name}.lo"]), np.array(a[f"{name}.hi"]))
