"""The one index protocol every kind implements (batch-first, like faiss and ann-benchmarks).

See ARCHITECTURE.md for the contracts: rows vs user ids, distance keys (smaller is better), ``allowed`` masks,
integer tenants and the factory grammar. Subclasses implement the ``_``-prefixed hooks; the public methods here do the
checking at the edge once, so kernels can trust their input.
"""

from __future__ import annotations

import abc
from typing import Any, ClassVar, Sequence

import numpy as np

from ..errors import FailedPrecondition, InvalidArgument
from .calibration import RECALL_PARAM, Calibration, split_recall
from .topk import empty_result
from .validate import as_allowed, as_ids, as_params, as_vectors, check_k, check_metric, normalize_rows


class Index(abc.ABC):
    """Base class of all index kinds.

    Attributes
    ----------
    d : int
        Dimension.
    metric : {"l2", "ip", "cosine"}
    row_ids : int64 (ntotal,)
        User id of each internal row. Rows are never renumbered by ``remove`` (tombstones), only by a rebuild.
    """

    kind: ClassVar[str] = "?"
    supports_tenants: ClassVar[bool] = False
    supports_filter: ClassVar[bool] = False
    #: names accepted in ``search(params=...)`` (``recall`` is accepted by every kind besides these)
    search_params: ClassVar[Sequence[str]] = ()
    #: what chooses a calibrated band: ``fraction`` of live rows a call may return, or ``tenant_size``
    calibration_axis: ClassVar[str] = "fraction"
    #: search settings every calibration measurement adds (not part of the table), e.g. to measure the
    #: approximate path where the kind could also choose an exact one
    calibration_fixed: ClassVar[dict] = {}

    def __init__(self, d: int, metric: str = "l2"):
        if isinstance(d, bool) or not isinstance(d, (int, np.integer)) or d < 1:
            raise InvalidArgument(f"dimension must be a positive integer, got {d!r}")
        self.d = int(d)
        self.metric = check_metric(metric)
        self.row_ids = np.empty(0, dtype=np.int64)
        self.deleted = np.empty(0, dtype=bool)
        #: calibrated default search settings (:mod:`.calibration`), measured by :func:`.calibrate.calibrate`;
        #: saved with the index
        self.calibration: Calibration | None = None

    # ------------------------------------------------------------------ properties
    @property
    def ntotal(self) -> int:
        """Number of internal rows, removed ones included."""
        return int(self.row_ids.shape[0])

    @property
    def nlive(self) -> int:
        """Number of rows not removed."""
        return int(self.ntotal - np.count_nonzero(self.deleted))

    @property
    def is_trained(self) -> bool:
        return True

    # ------------------------------------------------------------------ helpers for subclasses
    def prepare(self, x, name: str = "vectors") -> np.ndarray:
        """Validate ``x`` as ``(n, d)`` float32 and normalise rows for the cosine metric."""
        x = as_vectors(x, self.d, name=name)
        return normalize_rows(x) if self.metric == "cosine" else x

    def require_trained(self) -> None:
        if not self.is_trained:
            raise FailedPrecondition(f"{self.kind} index is not trained: call train(x) first")

    def rows_of(self, ids) -> np.ndarray:
        """Live internal rows holding any of the user ``ids`` (int64, ascending)."""
        ids = as_ids(ids, allow_duplicates=True)
        return np.flatnonzero(np.isin(self.row_ids, ids) & ~self.deleted).astype(np.int64)

    def _append_rows(self, ids: np.ndarray) -> np.ndarray:
        """Record new rows for ``ids``; returns their row numbers."""
        start = self.ntotal
        self.row_ids = np.concatenate([self.row_ids, ids])
        self.deleted = np.concatenate([self.deleted, np.zeros(ids.shape[0], dtype=bool)])
        return np.arange(start, self.ntotal, dtype=np.int64)

    def check_add(self, x, ids) -> tuple[np.ndarray, np.ndarray]:
        """Validate an ``add`` call: returns prepared vectors and ids; live ids may not be added twice."""
        self.require_trained()
        x = self.prepare(x)
        ids = as_ids(ids, x.shape[0])
        if ids.size and self.ntotal:
            clash = np.isin(ids, self.row_ids[~self.deleted])
            if clash.any():
                raise InvalidArgument(f"id {int(ids[clash][0])} is already in the index; remove it first")
        return x, ids

    def check_search(self, q, k, params, allowed, tenant, filter) -> tuple[np.ndarray, int, dict, Any]:
        """Validate a ``search`` call; returns ``(q, k, params, allowed)``."""
        self.require_trained()
        q = self.prepare(q, name="queries")
        k = check_k(k)
        params = as_params(params, (*self.search_params, RECALL_PARAM))
        if tenant is not None and not self.supports_tenants:
            raise InvalidArgument(f"{self.kind} index has no native tenants; pass an allowed mask instead")
        if filter is not None and not self.supports_filter:
            raise InvalidArgument(f"{self.kind} index has no native filters; pass an allowed mask instead")
        allowed = as_allowed(allowed, self.ntotal, q.shape[0])
        params = self.tuned_params(params, allowed=allowed, tenant=tenant, filter=filter)[0]
        return q, k, params, allowed

    # ------------------------------------------------------------------ calibrated defaults
    def tuned_params(self, params=None, *, allowed=None, tenant=None, filter=None, fraction: float | None = None,
                     target: float | None = None, exact_ok: bool = False) -> tuple[dict, dict]:
        """The search settings a call uses: the calibrated choice for its band and target, explicit ``params`` on
        top (they always override), ``recall`` removed.

        Parameters
        ----------
        params : dict, optional
            Validated per-call settings; ``recall`` (a target in (0, 1]) picks from the calibration table.
        allowed, tenant, filter : as for :meth:`search`
            What the call may return; they choose the band (see :attr:`calibration_axis`).
        fraction : float, optional
            The share of live rows the call may return, when the caller knows it (the engine's planner does), so
            nothing is counted here.
        target : float, optional
            Recall target when ``params`` has no ``recall`` (default: the calibration's own).
        exact_ok : bool
            The caller can answer the call by an exact scan of the rows it may return (the engine's planner): the
            band's exact option is then chosen where it is the cheapest way to the target (``info["exact"]``).

        Returns
        -------
        (params, info) : ``info`` is ``{}`` without a calibration, else its ``band``, ``recall`` (calibrated
        recall of the chosen settings; ``None`` when explicit settings override part of them), ``params``,
        ``reached`` and ``exact``.
        """
        p, want = split_recall(params)
        cal = self.calibration
        if cal is None or (want is None and all(key in p for key in cal.keys)):
            return p, {}
        value = self.band_value(allowed=allowed, tenant=tenant, filter=filter, fraction=fraction)
        if value is None and cal.axis == "tenant_size":  # no tenant: the kind searches exactly
            return p, {}
        return cal.settings(p, value, want if want is not None else target, exact_ok)

    def band_value(self, *, allowed=None, tenant=None, filter=None, fraction: float | None = None) -> float | None:
        """The number that chooses a calibrated band for a call (:attr:`calibration_axis`). Default (``fraction``):
        ``fraction`` if given, else the share of live rows ``allowed`` passes (the mean over per-query masks),
        else 1.0. Kinds with native filters or tenants refine it."""
        if fraction is not None:
            return float(fraction)
        if allowed is None:
            return 1.0
        return float(np.count_nonzero(allowed)) / (max(1, self.nlive) * (allowed.shape[0] if allowed.ndim == 2 else 1))

    def calibration_ladder(self, k: int) -> tuple[list[dict], list[dict]]:
        """Settings to calibrate, cheap to expensive: ``(primary, secondary)`` lists of params dicts (a rung is a
        primary entry merged with a secondary one; the secondary, e.g. a re-rank depth, grows while it gains).
        ``([], [])`` (the default: exact kinds): nothing to calibrate."""
        return [], []

    def calibration_cost(self, params: dict, info: dict, nq: int) -> float:
        """Estimated work per query of the search just run with ``params`` (``info``: what
        :meth:`search_with_stats` reported), in the kind's own units; used to choose the cheapest setting."""
        return float(info.get("ndis", 0)) / max(1, nq) * self.d

    def calibration_filters(self, fraction: float, live: np.ndarray, rng) -> list[tuple[str, dict, np.ndarray]]:
        """Extra query families for a ``fraction`` band, from what the kind holds (OSQ: its attribute columns):
        ``[(family, search kwargs, bool (ntotal,) rows the filter passes)]``. Default: none."""
        return []

    def calibration_meta(self) -> dict:
        """The calibration's entry in ``meta.json`` (empty without one)."""
        return {} if self.calibration is None else {"calibration": self.calibration.to_json()}

    def restore_calibration(self, meta: dict) -> None:
        """Inverse of :meth:`calibration_meta` (indexes saved before calibration existed have none)."""
        self.calibration = Calibration.from_json(meta.get("calibration"))

    def live_mask(self, allowed: np.ndarray | None) -> np.ndarray | None:
        """Combine an ``allowed`` mask (1-d or 2-d) with the tombstones; ``None`` when nothing is excluded."""
        if not self.deleted.any():
            return allowed
        live = ~self.deleted
        return live if allowed is None else allowed & live

    def empty(self, nq: int, k: int) -> tuple[np.ndarray, np.ndarray]:
        return empty_result(nq, k)

    # ------------------------------------------------------------------ protocol
    def train(self, x) -> None:
        """Learn whatever the kind needs from representative vectors ``x`` float32 (n, d). No-op by default."""

    @abc.abstractmethod
    def add(self, x, ids, *, tenants=None, attrs=None) -> None:
        """Add vectors ``x`` float32 (n, d) under user ``ids`` int64 (n,).

        ``tenants`` is ``(indptr int64 (n+1,), tenant_ids int32)`` for kinds with native tenants; ``attrs`` is a
        columnar ``{name: array}`` for kinds with native filters.
        """

    @abc.abstractmethod
    def search(self, q, k: int, *, params=None, allowed=None, tenant=None, filter=None):
        """Return ``(D float32 (nq, k), I int64 (nq, k))``: distance keys ascending and user ids, padded."""

    def search_with_stats(self, q, k: int, *, params=None, allowed=None, tenant=None, filter=None):
        """:meth:`search` plus what this call did, as a dict owned by the caller (never state on the index, which
        concurrent searches share): ``ndis`` (distances computed), ``plan`` (the kind's own plan name) and other
        kind-specific counts, each only where the kind knows it. Default: no counts."""
        D, I = self.search(q, k, params=params, allowed=allowed, tenant=tenant, filter=filter)
        return D, I, {}

    def remove(self, ids) -> int:
        """Tombstone every live row holding one of ``ids``; returns how many rows were removed."""
        rows = self.rows_of(ids)
        self.deleted[rows] = True
        self._on_remove(rows)
        return int(rows.size)

    def _on_remove(self, rows: np.ndarray) -> None:
        """Hook for kinds that keep per-row structures beyond the tombstones."""

    @abc.abstractmethod
    def save(self, store, prefix: str) -> None:
        """Persist to ``store`` under ``prefix`` (``meta.json`` + ``.npy`` arrays)."""

    @classmethod
    @abc.abstractmethod
    def load(cls, store, prefix: str, *, mmap: bool = False) -> "Index":
        """Inverse of :meth:`save`."""

    def reserve(self, n: int) -> None:
        """Make room for ``n`` more rows before adding them in chunks, so the adds need not copy what they already
        added (a caller that knows the final size, such as a build, calls it first). A no-op for kinds that do not
        keep growth buffers; :meth:`compact` gives back what was reserved but not used."""

    def compact(self) -> None:
        """Give back spare capacity held for future adds (growth buffers, pool slack). Called by the engine after
        a build's last add; a no-op for kinds that allocate exactly."""

    def copy(self) -> "Index":
        """An independent index with the same contents (copy-on-write builds extend a copy while the original keeps
        serving). The default copies through the kind's own ``save`` and ``load`` in memory, so whatever a kind
        persists is exactly what a copy holds; kinds may override it with something cheaper."""
        from .factory import load_index
        from ..storage.memory import MemoryStore

        store = MemoryStore()
        self.save(store, "copy")
        return load_index(store, "copy")

    @abc.abstractmethod
    def memory_bytes(self) -> int:
        """Bytes of in-memory arrays (plus an estimate for Python containers); mapped arrays excluded."""

    def mapped_bytes(self) -> int:
        """Bytes of memory-mapped arrays."""
        return 0

    @abc.abstractmethod
    def factory_string(self) -> str:
        """The canonical factory string that rebuilds an index of the same configuration."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.factory_string()!r} d={self.d} metric={self.metric} ntotal={self.ntotal}>"


def array_bytes(*arrays) -> tuple[int, int]:
    """Split the ``nbytes`` of ``arrays`` into ``(in_memory, memory_mapped)``."""
    mem = mapped = 0
    for a in arrays:
        if a is None:
            continue
        base = a
        while isinstance(base, np.ndarray) and base.base is not None and not isinstance(base, np.memmap):
            base = base.base
        if isinstance(a, np.memmap) or isinstance(base, np.memmap) or type(base).__name__ == "mmap":
            mapped += a.nbytes
        else:
            mem += a.nbytes
    return mem, mapped
