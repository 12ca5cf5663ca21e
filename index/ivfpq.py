"""``IVF``: inverted file over product codes (faiss's IVFPQ, with RepCONC's balanced training and JPQ-style tuning).

Factory strings (ARCHITECTURE.md grammar)::

    IVF1024,PQ16x8                                   plain k-means lists, residual 8-bit PQ (faiss's default)
    IVF1024(balanced),PQ16x8(balanced,residual=0)    Sinkhorn-balanced lists and codebooks, codes of the vectors
    OPQ16,IVF1024,PQ16x4(balanced),Refine            OPQ rotation, 4-bit codes, exact re-rank from stored vectors
    IVF256,PQ16x8(precomputed),Refine                residual L2 look-up terms of every list kept in memory

Storage: codes are kept in row order and every ``add`` batch (a segment) is sorted by list before its rows are
numbered, so each list of each segment is a contiguous row range (``offsets[segment, list]``): the scan reads codes
sequentially and needs no slot -> row array. Rows are never renumbered by ``remove`` (tombstones). The per-row arrays
(``vectors``, codes or blocks, ``row_ids``, ``deleted``) are views of growth buffers (``index/growth.py``): an add
copies its own rows, not the rows held before it; ``reserve`` pre-sizes them, ``compact`` shrinks them. 4-bit codes are
kept only in the fast-scan layout (``quantization/fastscan.py``: blocks of 32 rows, sub-quantizer major; each
(segment, list) range starts a block) and searched with 8-bit quantized tables and 16-bit sums
(``quantization/_fastscan_kernels.py``); 8-bit codes are row-major bytes scanned with float tables.

Search settings (``params``): ``nprobe`` (lists probed per query) and ``rerank`` (ADC candidates re-ranked exactly from
the stored vectors; needs ``Refine``; 0 disables). ``residual=0`` codes vectors rather than residuals, the form
RepCONC uses so tuned centroids score as ``sum_m <q_m, C[m, code_m]>``. ``precomputed`` (residual L2 only) keeps
the query-independent list terms ``2 <coarse[l]_m, C[m, k]>`` of every list, float32 (nlist, M, K), in memory like
faiss's precomputed tables; it is rebuilt on load, never stored, and counted by ``memory_bytes()``.
"""

from __future__ import annotations

import sys
import time
from typing import Callable

import numpy as np

from ..errors import FailedPrecondition, InvalidArgument
from ..quantization import fastscan
from ..quantization._fastscan_kernels import BLOCK, ivf_fastscan_search
from ..quantization._ivf_kernels import ivf_pq_search
from ..quantization.kmeans import assign, balanced_kmeans, kmeans, usage_entropy
from ..quantization.pq import ProductQuantizer, check_pq_shape, pack_codes, train_opq, unpack_codes
from ..quantization.tuning import TuneReport, tune_centroids
from . import growth
from .base import Index, array_bytes
from .calibration import ladder_values
from .factory import Stage, format_stage, take_settings
from .flat import exact_search
from .persist import load_arrays, save_arrays
from .validate import as_ids

# queries per BLAS block: larger blocks share the per-call residual list terms among more queries (Fashion-MNIST,
# nprobe 8, rerank 40, without precomputed tables: 80 / 67 / 61 us per query at 128 / 512 / 2000; with them about
# 60 at every size)
_QUERY_BLOCK = 512


def _fastscan_query_block(nlist: int) -> int:
    """Queries per fast-scan kernel call: the kernel scans list by list, so every query of a block that probes a list
    reuses its blocks from cache; more queries per call, more reuse (bounded so the (block, nlist) float32
    query-centroid products stay within 32 MiB)."""
    return int(min(2048, max(256, 2**23 // max(1, nlist))))
_STAGE_ORDER = ("OPQ", "IVF", "PQ", "Refine")
_MAX_FASTSCAN_ROWS = 2**32 - 1


def _as_int(name: str, value, low: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise InvalidArgument(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


class IVFPQIndex(Index):
    """Inverted file with product-quantized codes, optional OPQ rotation and exact re-ranking.

    Parameters
    ----------
    d : int
    nlist : int
        Inverted lists (coarse centroids); training needs at least ``nlist`` vectors.
    M : int
        PQ sub-spaces (must divide ``d``); bytes per vector are ``M`` (8-bit) or ``ceil(M / 2)`` (4-bit).
    nbits : {4, 8}
    metric : {"l2", "ip", "cosine"}
    opq : int
        Sub-spaces of an OPQ rotation learned before the coarse stage; 0 = none.
    ivf_balanced, pq_balanced : bool
        Sinkhorn-balanced (RepCONC) training of the coarse centroids / the PQ codebooks.
    residual : bool
        Encode residuals to the list centroid (True, faiss's default) or the vectors themselves.
    refine : bool
        Keep the float32 vectors for exact re-ranking (memory-mapped when loaded with ``mmap=True``).
    max_train : int
        Training vectors are subsampled (seeded) to at most this many.
    niter, eps, rounds : k-means iterations and Sinkhorn settings.
    seed : int
    gpu : bool
        k-means on the GPU where faiss sees one (CPU otherwise).
    precomputed : bool
        Residual L2 only: keep the list terms of every list (``nlist * M * K`` float32) instead of computing the
        probed lists' terms in every search call. Faster searches for ``nlist * M * K * 4`` bytes of memory.
    """

    kind = "IVFPQ"
    search_params = ("nprobe", "rerank")

    def __init__(self, d: int, nlist: int, M: int, nbits: int = 8, metric: str = "l2", *, opq: int = 0,
                 ivf_balanced: bool = False, pq_balanced: bool = False, residual: bool = True, refine: bool = False,
                 max_train: int = 100_000, niter: int = 20, eps: float = 0.2, rounds: int = 4, seed: int = 0,
                 gpu: bool = False, precomputed: bool = False):
        super().__init__(d, metric)
        self.nlist = _as_int("nlist", nlist)
        check_pq_shape(self.d, M, nbits)
        if opq:
            _as_int("OPQ sub-spaces", opq)
            if self.d % opq:
                raise InvalidArgument(f"OPQ{opq}: {opq} sub-spaces do not divide the dimension d={self.d}")
        self.opq = int(opq)
        self.ivf_balanced, self.residual, self.refine = bool(ivf_balanced), bool(residual), bool(refine)
        # (score centroids, coarse centroids, terms float32 (nlist, M, K)) of the precomputed tables, or None
        self._table: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        self.precomputed = False
        self.max_train, self.seed, self.gpu = int(max_train), int(seed), bool(gpu)
        self.pq = ProductQuantizer(self.d, M, nbits, mode="balanced" if pq_balanced else "kmeans", eps=eps,
                                   rounds=rounds, niter=niter, max_train=max_train, seed=seed, gpu=gpu)
        self.niter, self.eps, self.rounds = int(niter), float(eps), int(rounds)
        self.rotation: np.ndarray | None = None
        self.coarse: np.ndarray | None = None
        self.coarse_bias = np.zeros(self.nlist, dtype=np.float32)
        # 8-bit codes: row-major bytes (ntotal, M); 4-bit codes: the fast-scan blocks (nblocks, 16 Mp), see
        # quantization/fastscan.py, with the first block of each (segment, list) in block_offsets
        self.fastscan = self.pq.nbits == 4
        self._codes = np.empty((0, self.pq.code_size), dtype=np.uint8)
        self.blocks = np.empty((0, fastscan.block_bytes(self.pq.M)), dtype=np.uint8)
        self.offsets = np.empty((0, self.nlist + 1), dtype=np.int64)
        self.block_offsets = np.empty((0, self.nlist + 1), dtype=np.int64)
        self.vectors = np.empty((0, self.d), dtype=np.float32) if self.refine else None
        # growth buffer behind each per-row attribute (see index/growth.py); the attribute is the view ``buf[:n]``
        self._bufs: dict[str, np.ndarray] = {}
        self.default_nprobe = min(8, self.nlist)
        self.tune_report: TuneReport | None = None
        self.set_precomputed(precomputed)

    # ------------------------------------------------------------------ factory
    @classmethod
    def from_stages(cls, d: int, stages: list[Stage], metric: str = "l2") -> "IVFPQIndex":
        seen: dict[str, Stage] = {}
        for st in stages:
            if st.name not in _STAGE_ORDER:
                raise InvalidArgument(f"stage {st.name} cannot be combined with IVF; valid stages: "
                                      f"{', '.join(_STAGE_ORDER)} (e.g. 'OPQ16,IVF1024,PQ16x8,Refine')")
            if st.name in seen:
                raise InvalidArgument(f"stage {st.name} appears twice")
            seen[st.name] = st
        names = [s.name for s in stages]
        if names != [n for n in _STAGE_ORDER if n in seen]:
            raise InvalidArgument(f"stages must come in the order {', '.join(_STAGE_ORDER)}; got {', '.join(names)}")
        if "PQ" not in seen:
            raise InvalidArgument("IVF needs a code stage, e.g. 'IVF1024,PQ16x8' (PQ<M>x<nbits>, nbits 4 or 8)")
        ivf = seen["IVF"]
        if not ivf.arg or "x" in ivf.arg:
            raise InvalidArgument(f"IVF needs the number of lists, e.g. 'IVF1024', got 'IVF{ivf.arg}'")
        ivf_set = take_settings(ivf, {"balanced": False, "niter": 20, "seed": 0, "max_train": 100_000})
        pq = seen["PQ"]
        m_str, _, b_str = pq.arg.partition("x")
        if not m_str or (pq.arg.count("x") > 1) or (_ and not b_str):
            raise InvalidArgument(f"PQ needs <M> or <M>x<nbits>, e.g. 'PQ16x8', got 'PQ{pq.arg}'")
        pq_set = take_settings(pq, {"balanced": False, "residual": True, "eps": 0.2, "rounds": 4,
                                    "precomputed": False})
        opq = 0
        if "OPQ" in seen:
            o = seen["OPQ"]
            if not o.arg or "x" in o.arg:
                raise InvalidArgument(f"OPQ needs its number of sub-spaces, e.g. 'OPQ16', got 'OPQ{o.arg}'")
            take_settings(o, {})
            opq = int(o.arg)
        if "Refine" in seen:
            if seen["Refine"].arg:
                raise InvalidArgument("Refine takes no numeric argument (re-ranking depth is the search param 'rerank')")
            take_settings(seen["Refine"], {})
        return cls(d, int(ivf.arg), int(m_str), int(b_str) if b_str else 8, metric, opq=opq,
                   ivf_balanced=ivf_set["balanced"], pq_balanced=pq_set["balanced"], residual=pq_set["residual"],
                   refine="Refine" in seen, max_train=ivf_set["max_train"], niter=ivf_set["niter"],
                   eps=pq_set["eps"], rounds=pq_set["rounds"], seed=ivf_set["seed"],
                   precomputed=pq_set["precomputed"])

    def factory_string(self) -> str:
        parts = []
        if self.opq:
            parts.append(f"OPQ{self.opq}")
        ivf: dict = {}
        if self.ivf_balanced:
            ivf["balanced"] = True
        if self.niter != 20:
            ivf["niter"] = self.niter
        if self.seed != 0:
            ivf["seed"] = self.seed
        if self.max_train != 100_000:
            ivf["max_train"] = self.max_train
        parts.append(format_stage("IVF", str(self.nlist), ivf))
        pq: dict = {}
        if self.pq.mode == "balanced":
            pq["balanced"] = True
        if not self.residual:
            pq["residual"] = False
        if self.eps != 0.2:
            pq["eps"] = repr(self.eps)
        if self.rounds != 4:
            pq["rounds"] = self.rounds
        if self.precomputed:
            pq["precomputed"] = True
        parts.append(format_stage("PQ", f"{self.pq.M}x{self.pq.nbits}", pq))
        if self.refine:
            parts.append("Refine")
        return ",".join(parts)

    def __getstate__(self) -> dict:
        # copies (copy.copy, deepcopy) and pickles take the views, never the growth buffers: a shallow copy's add
        # then copies rather than writing into spare rows the original may write into too, and a deep copy or a
        # pickle holds only the rows in use
        state = dict(self.__dict__)
        state["_bufs"] = {}
        return state

    # ------------------------------------------------------------------ growth buffers
    def _row_arrays(self) -> list[str]:
        return ["row_ids", "deleted", "blocks" if self.fastscan else "_codes"] + (["vectors"] if self.refine else [])

    def _append(self, name: str, rows: np.ndarray) -> None:
        buf, view = growth.append_rows(self._bufs.get(name), getattr(self, name), rows)
        self._bufs[name] = buf
        setattr(self, name, view)  # the view follows every reallocation

    def _append_rows(self, ids: np.ndarray) -> np.ndarray:
        start = self.ntotal
        self._append("row_ids", ids)
        self._append("deleted", np.zeros(ids.shape[0], dtype=bool))
        return np.arange(start, self.ntotal, dtype=np.int64)

    def reserve(self, n: int) -> None:
        """Make room for ``n`` more rows, so that adds up to that many copy nothing already held (4-bit: blocks
        for ``n`` rows in one add; each further add's list padding may still grow them once)."""
        n = _as_int("reserve", n, low=0)
        for name in self._row_arrays():
            more = -(-n // BLOCK) + min(n, self.nlist) if name == "blocks" else n
            buf, view = growth.reserve_rows(self._bufs.get(name), getattr(self, name), more)
            if buf is not None:
                self._bufs[name] = buf
            setattr(self, name, view)

    def compact(self) -> None:
        """Shrink the growth buffers to the rows held (memory-mapped vectors stay mapped)."""
        for name in self._row_arrays():
            buf, view = growth.fit_rows(self._bufs.get(name), getattr(self, name))
            if buf is not None:
                self._bufs[name] = buf
            setattr(self, name, view)

    # ------------------------------------------------------------------ state
    @property
    def is_trained(self) -> bool:
        return self.coarse is not None and self.pq.is_trained

    @property
    def codes(self) -> np.ndarray:
        """Stored codes uint8 (ntotal, code_size) in row order (4-bit: packed two per byte, see ``pq.pack_codes``).

        With 4-bit codes the index keeps only the fast-scan blocks, so this is a copy unpacked from them.
        """
        if not self.fastscan:
            return self._codes
        return pack_codes(self.sub_codes(), self.pq.nbits)

    def sub_codes(self, rows=None) -> np.ndarray:
        """Sub-quantizer codes uint8 (n, M) of internal ``rows`` (all rows when ``None``)."""
        if not self.fastscan:
            codes = self._codes if rows is None else self._codes[np.asarray(rows, dtype=np.int64)]
            return unpack_codes(codes, self.pq.M, self.pq.nbits)
        if rows is None:
            return fastscan.unpack_all(self.blocks, self.offsets, self.pq.M)
        return fastscan.unpack_rows(self.blocks, self.offsets, self.block_offsets, self.pq.M, rows)

    def codes_nbytes(self) -> int:
        """Bytes of the stored codes (4-bit: the blocks, padding included)."""
        return int(self.blocks.nbytes if self.fastscan else self._codes.nbytes)

    def _rotate(self, x: np.ndarray) -> np.ndarray:
        if self.rotation is None:
            return x
        return np.ascontiguousarray(x @ self.rotation.T, dtype=np.float32)

    def _lists_of(self, y: np.ndarray) -> np.ndarray:
        return assign(y, self.coarse, self.coarse_bias if self.ivf_balanced else None)

    def _pq_input(self, y: np.ndarray, lists: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(y - self.coarse[lists]) if self.residual else y

    # ------------------------------------------------------------------ training
    def train(self, x, *, train_queries=None, train_positives=None, tune: bool | dict | None = None,
              gpu: bool | None = None, progress: bool | Callable[[str], None] = False) -> None:
        """Learn the rotation, coarse centroids and codebooks from float32 (n, d) vectors ``x``.

        Parameters
        ----------
        train_queries : float32 (nq, d), optional
            Queries for supervised centroid tuning (JPQ-style); ``train_positives`` are their relevant rows of ``x``
            (an int array (nq, p) with -1 padding, or a list of lists).
        tune : bool or dict, optional
            ``True`` (or a dict of :meth:`tune` settings) tunes the centroids; without ``train_queries`` it holds out
            vectors of ``x`` as queries and uses their exact 10 nearest neighbours among the rest as positives.
            Defaults to tuning exactly when ``train_queries`` are given.
        gpu : bool, optional
            Override the ``gpu`` setting for this call.
        progress : bool or callable
            Report stages on stderr (``True``) or to a callable taking a string.
        """
        log = _logger(progress)
        x = self.prepare(x, name="training vectors")
        n = x.shape[0]
        if n < self.nlist:
            raise InvalidArgument(f"IVF{self.nlist}: {self.nlist} lists need at least {self.nlist} training vectors, "
                                  f"got {n}")
        if n < self.pq.K:
            raise InvalidArgument(f"PQ{self.pq.M}x{self.pq.nbits}: {self.pq.K} centroids per sub-space need at least "
                                  f"{self.pq.K} training vectors, got {n}")
        if gpu is not None:
            self.gpu = self.pq.gpu = bool(gpu)
        t0 = time.perf_counter()
        xs = x if n <= self.max_train else x[np.sort(np.random.default_rng(self.seed).choice(n, self.max_train,
                                                                                           replace=False))]
        if self.opq:
            log(f"OPQ{self.opq} rotation on {xs.shape[0]} vectors")
            self.rotation = train_opq(xs, self.opq, seed=self.seed)
        y = self._rotate(xs)
        log(f"coarse quantizer: {self.nlist} lists ({'balanced' if self.ivf_balanced else 'k-means'})")
        if self.ivf_balanced:
            self.coarse, self.coarse_bias = balanced_kmeans(y, self.nlist, niter=self.niter, eps=self.eps,
                                                            rounds=self.rounds, seed=self.seed, gpu=self.gpu)
        else:
            self.coarse = kmeans(y, self.nlist, niter=self.niter, seed=self.seed, gpu=self.gpu)
            self.coarse_bias = np.zeros(self.nlist, dtype=np.float32)
        log(f"PQ{self.pq.M}x{self.pq.nbits} codebooks ({self.pq.mode}, residual={int(self.residual)})")
        self.pq.train(self._pq_input(y, self._lists_of(y)), rotated=True)
        self._table = None
        self.list_table()  # precomputed only: built now so the first search does not pay for it
        log(f"trained in {time.perf_counter() - t0:.1f} s")
        settings = tune if isinstance(tune, dict) else {}
        if tune is None:
            tune = train_queries is not None
        if tune:
            self._tune_on_training(x, train_queries, train_positives, settings, log)
        elif train_queries is not None:
            raise InvalidArgument("train_queries were given with tune=False")

    def _tune_on_training(self, x, queries, positives, settings: dict, log) -> None:
        rng = np.random.default_rng(self.seed + 7)
        if queries is None:
            if positives is not None:
                raise InvalidArgument("train_positives need train_queries")
            nh = min(2000, max(10, x.shape[0] // 5))
            held = rng.choice(x.shape[0], nh, replace=False)
            rest = np.setdiff1d(np.arange(x.shape[0]), held)
            queries, docs = x[held], x[rest]
            positives = exact_search(queries, docs, 10, self.metric)[1]
        else:
            if positives is None:
                raise InvalidArgument("train_queries need train_positives (relevant rows of x for each query)")
            queries, docs = self.prepare(queries, name="train_queries"), x
        y = self._rotate(docs)
        lists = self._lists_of(y)
        sub = unpack_codes(self.pq.encode(self._pq_input(y, lists), rotated=True), self.pq.M, self.pq.nbits)
        self._run_tuning(queries, positives, sub, lists, None, settings, log)

    def tune(self, queries, positives=None, *, progress: bool | Callable[[str], None] = False,
             **settings) -> TuneReport:
        """Tune the PQ centroids on the indexed codes (codes stay fixed; JPQ stage 2).

        Parameters
        ----------
        queries : float32 (nq, d)
        positives : (nq, p) int array of user ids with -1 padding, or a list of id lists, optional
            Relevant ids of each query; without them, the exact 10 nearest indexed vectors (needs ``Refine``).
        **settings
            ``epochs``, ``n_negatives``, ``lr``, ``batch_size``, ``val_fraction``, ``min_gain``, ``nprobe`` (lists scanned to find
            negatives; default 4 x the default nprobe), ``seed``.

        Returns
        -------
        TuneReport
            Validation recall@10 of the codes before and after; centroids change only if it rose.
        """
        self.require_trained()
        log = _logger(progress)
        q = self.prepare(queries, name="queries")
        if self.nlive == 0:
            raise FailedPrecondition("tune needs indexed vectors: add some first")
        live = ~self.deleted
        if positives is None:
            if self.vectors is None:
                raise FailedPrecondition("tune without positives needs stored vectors (a 'Refine' stage)")
            pos_rows = exact_search(q, np.asarray(self.vectors), 10, self.metric, allowed=live)[1]
        else:
            id_to_row = {int(i): r for r, i in enumerate(self.row_ids) if live[r]}
            pos_list = positives if not isinstance(positives, np.ndarray) or positives.ndim > 1 else positives[:, None]
            if len(pos_list) != q.shape[0]:
                raise InvalidArgument(f"tune: got positives for {len(pos_list)} queries, expected {q.shape[0]}")
            pos_rows = []
            for p in pos_list:
                ids = as_ids([v for v in np.asarray(p, dtype=np.int64).ravel() if v >= 0], allow_duplicates=True)
                pos_rows.append(np.array([id_to_row[i] for i in ids.tolist() if i in id_to_row], dtype=np.int64))
        lists = self._row_lists()
        sub = self.sub_codes()
        return self._run_tuning(q, pos_rows, sub, lists, live, settings, log)

    def _run_tuning(self, q, positives, sub, lists, live, settings: dict, log) -> TuneReport:
        settings = dict(settings)
        nprobe = min(self.nlist, int(settings.pop("nprobe", 4 * self.default_nprobe)))
        valid = {"epochs", "n_negatives", "lr", "batch_size", "val_fraction", "min_gain", "seed"}
        bad = sorted(set(settings) - valid)
        if bad:
            raise InvalidArgument(f"unknown tuning setting(s) {', '.join(bad)}; valid: nprobe, {', '.join(sorted(valid))}")
        y = self._rotate(q)
        order = np.argsort(lists, kind="stable")
        counts = np.bincount(lists, minlength=self.nlist)
        offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)[None, :]
        codes_sorted = np.ascontiguousarray(np.asarray(sub)[order])
        packed = pack_codes(codes_sorted, self.pq.nbits)
        mask = None if live is None else live[order][None, :]

        def retrieve(C, qs, n):
            D, R, _ = self._kernel(qs, C, n, nprobe, 0, offsets, packed, mask, 1 if mask is not None else 0,
                                   rotated=True)
            return np.where(R >= 0, order[np.maximum(R, 0)], -1)

        offs = None
        if self.residual:
            coarse = self.coarse

            def offs(rows):
                return coarse[lists[rows]]

        C, report = tune_centroids(self.pq.score_centroids(), sub, y, positives, retrieve=retrieve,
                                   metric=self.metric, doc_offsets=offs, log=log, **settings)
        if report.best_epoch:
            self.pq.tuned = C
            self.list_table()  # precomputed only: the kept terms follow the new scoring centroids
        log(f"tuning: validation recall@10 of the codes {report.recall_before:.4f} -> {report.recall_after:.4f}")
        self.tune_report = report
        return report

    # ------------------------------------------------------------------ add / search
    def add(self, x, ids, *, tenants=None, attrs=None) -> None:
        x, ids = self.check_add(x, ids)
        if x.shape[0] == 0:
            return
        y = self._rotate(x)
        lists = self._lists_of(y)
        order = np.argsort(lists, kind="stable")
        lists, x, y, ids = lists[order], x[order], y[order], ids[order]
        start = self.ntotal
        if self.fastscan and start + x.shape[0] > _MAX_FASTSCAN_ROWS:
            raise InvalidArgument(f"a 4-bit IVF index holds at most {_MAX_FASTSCAN_ROWS} rows (the fast scan packs row "
                                  f"numbers into 32 bits); it has {start}, adding {x.shape[0]}: split it into segments")
        sub = self.pq.encode_sub(self._pq_input(y, lists))
        rel = np.concatenate([[0], np.cumsum(np.bincount(lists, minlength=self.nlist))]).astype(np.int64)
        if self.fastscan:
            self._append("blocks", fastscan.pack_segment(sub, rel, self.pq.M))
        else:
            self._append("_codes", pack_codes(sub, self.pq.nbits))
        self._append_rows(ids)
        self.offsets = np.concatenate([self.offsets, (start + rel)[None, :]])
        if self.fastscan:
            self.block_offsets = fastscan.block_offsets(self.offsets)
        if self.refine:
            self._append("vectors", x)  # a memory-mapped (loaded) array is copied into memory once, here

    def _kernel(self, q, C, k, nprobe, rerank, offsets, codes, mask, mask_mode, *, rotated=False,
                q_orig=None, blocked=False):
        """Run the compiled search over query blocks: ``(D float32 (nq, k), R int64 (nq, k) internal rows or -1,
        nscanned int64 (nq,) codes scored per query)``. ``q`` is prepared (rotated when ``rotated``).

        ``codes`` are row-major code bytes scanned with float byte tables; ``blocked=True`` scans the index's own
        fast-scan blocks instead (4-bit codes: quantized tables, 16-bit sums; ``codes`` is then unused).
        """
        y = q if rotated else self._rotate(q)
        nq = y.shape[0]
        M, K, dsub = C.shape
        cn = np.ascontiguousarray(np.einsum("mkj,mkj->mk", C, C), dtype=np.float32)
        Ct = np.ascontiguousarray(C.transpose(0, 2, 1), dtype=np.float32)
        l2 = self.metric == "l2"
        kk = max(k, rerank)
        vectors = np.asarray(self.vectors) if rerank and not isinstance(self.vectors, np.memmap) else self.vectors
        if not rerank:
            vectors = np.empty((0, self.d), dtype=np.float32)
        mask_arr = mask if mask is not None else np.zeros((1, 0), dtype=np.bool_)
        # the kept tables hold the terms of the scoring centroids only (tuning scores with centroids in training)
        table = self.list_table() if self.precomputed and C is self.pq.score_centroids() else None
        all_slots = np.arange(self.nlist, dtype=np.int64)
        coarse_norms = np.ascontiguousarray(np.einsum("ij,ij->i", self.coarse, self.coarse), dtype=np.float32)
        Ds, Rs, scanned = [], [], []
        qblock = _fastscan_query_block(self.nlist) if blocked else _QUERY_BLOCK
        for s in range(0, nq, qblock):
            yb = y[s:s + qblock]
            # one product with the coarse centroids serves both the probe keys (squared L2, the arithmetic of
            # sq_distances) and, for inner product, the per-list base keys; the fast-scan kernel derives both itself
            ipc = np.ascontiguousarray(yb @ self.coarse.T, dtype=np.float32)
            qn = np.einsum("ij,ij->i", yb, yb)
            probe = cl2 = None
            if not blocked or (l2 and self.residual and table is None):
                cl2 = ipc * np.float32(-2.0)
                cl2 += qn[:, None]
                cl2 += coarse_norms[None, :]
                np.maximum(cl2, 0.0, out=cl2)
                probe = cl2 - self.coarse_bias[None, :] if self.ivf_balanced else cl2
            qs = yb.reshape(yb.shape[0], M, dsub)
            terms, slots = np.zeros((0, M, K), np.float32), np.zeros(0, np.int64)
            # one BLAS product per sub-space straight into the (nb, M, K) layout the kernel reads (einsum returned
            # it sub-space-major, and making that contiguous cost more than the products)
            dots = np.empty((yb.shape[0], M, K), dtype=np.float32)
            for m in range(M):
                np.matmul(yb[:, m * dsub:(m + 1) * dsub], Ct[m], out=dots[:, m, :])
            qsub = np.zeros((0, M), np.float32)
            if l2:
                if self.residual:
                    table_mode = 2
                    if table is not None:
                        terms, slots = table, all_slots
                    else:
                        terms, slots = self._list_terms(probe, nprobe, C)
                else:
                    table_mode = 1
                    qsub = np.ascontiguousarray(np.einsum("qmj,qmj->qm", qs, qs), dtype=np.float32)
                base = cl2
            else:
                table_mode = 0
                base = None if blocked else -ipc
            qb = (q_orig if q_orig is not None else q)[s:s + qblock]
            mb = mask_arr[s:s + qblock] if mask_mode == 2 else mask_arr
            qb = np.ascontiguousarray(qb, dtype=np.float32)
            if blocked:
                D, R, ns = ivf_fastscan_search(ipc, np.ascontiguousarray(qn, dtype=np.float32), coarse_norms,
                                               self.coarse_bias, self.ivf_balanced, int(nprobe), self.residual,
                                               dots, cn, qsub, table_mode, self.coarse, C, terms, slots, offsets,
                                               self.block_offsets, self.blocks.reshape(-1),
                                               self.blocks.shape[1] // 64, mb, mask_mode, kk, k, bool(rerank),
                                               vectors, qb, l2)
            else:
                probe = np.ascontiguousarray(probe, dtype=np.float32)
                base = np.ascontiguousarray(base, dtype=np.float32)
                D, R, ns = ivf_pq_search(probe, int(nprobe), base, self.residual, dots, cn, qsub, table_mode,
                                         self.pq.nbits, self.coarse, C, terms, slots, offsets, codes, mb, mask_mode,
                                         kk, k, bool(rerank), vectors, qb, l2)
            Ds.append(D)
            Rs.append(R)
            scanned.append(ns)
        if not Ds:
            return np.empty((0, k), np.float32), np.empty((0, k), np.int64), np.empty(0, np.int64)
        return np.concatenate(Ds), np.concatenate(Rs), np.concatenate(scanned)

    def _list_terms(self, probe: np.ndarray | None, nprobe: int, C: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Residual L2 list terms ``2 <coarse[l]_m, C[m, k]>`` float32 (nu, M, K) for the lists a block of queries
        probes (``probe`` float32 (nb, nlist) keys; ``None``: every list), and each list's slot in them (int64
        (nlist,), -1 = not computed; the kernel computes those itself).

        Without ``precomputed`` this runs per block of queries, one BLAS product over the lists actually probed, so
        the index holds nothing extra; with it, once for every list (:meth:`list_table`).
        """
        M, K, dsub = C.shape
        p = min(nprobe, self.nlist)
        if probe is None or p >= self.nlist:
            lists = np.arange(self.nlist)
        else:
            lists = np.unique(np.argpartition(probe, p - 1, axis=1)[:, :p])
        terms = np.empty((lists.size, M, K), dtype=np.float32)
        # per list, one product per sub-space: each (list, m) row is the same BLAS call whichever other lists are
        # probed, so the kept table and the per-call terms agree bit for bit
        for m in range(M):
            cs = np.ascontiguousarray(self.coarse[lists, m * dsub:(m + 1) * dsub])
            np.multiply(cs @ C[m].T, 2.0, out=terms[:, m, :])
        slots = np.full(self.nlist, -1, dtype=np.int64)
        slots[lists] = np.arange(lists.size)
        return terms, slots

    def set_precomputed(self, on: bool) -> None:
        """Keep (``True``) or drop (``False``) the residual-L2 list table of every list, e.g. on a loaded index.

        The table costs ``nlist * M * K * 4`` bytes (Fashion-MNIST IVF256,PQ16x8: 4 MiB, more than the codes); results
        are bit-identical either way. The setting is part of :meth:`factory_string` and is saved.
        """
        if on and (not self.residual or self.metric != "l2"):
            raise InvalidArgument("precomputed list tables apply to residual codes with the l2 metric only "
                                  f"(got residual={int(self.residual)}, metric={self.metric!r}); other forms need none")
        self.precomputed = bool(on)
        self._table = None
        if on:
            self.list_table()

    def list_table(self) -> np.ndarray | None:
        """The precomputed residual-L2 list terms float32 (nlist, M, K) (``precomputed`` only, else ``None``).

        Built on first use after training, tuning or loading (never saved: it derives from the centroids) and kept
        until the scoring or coarse centroids change.
        """
        if not self.precomputed or not self.is_trained:
            return None
        C = self.pq.score_centroids()
        if self._table is None or self._table[0] is not C or self._table[1] is not self.coarse:
            self._table = (C, self.coarse, self._list_terms(None, self.nlist, C)[0])
        return self._table[2]

    def search(self, q, k, *, params=None, allowed=None, tenant=None, filter=None):
        """Top-``k`` ``(D float32 (nq, k), I int64 (nq, k))``; ``params``: ``nprobe``, ``rerank``.

        Without re-ranking ``D`` holds ADC keys (approximate distances); with it, exact keys.
        """
        D, I, _ = self.search_with_stats(q, k, params=params, allowed=allowed, tenant=tenant, filter=filter)
        return D, I

    def search_with_stats(self, q, k, *, params=None, allowed=None, tenant=None, filter=None):
        """:meth:`search` plus this call's counts, owned by the caller: ``ndis`` (codes scored, all queries) and
        ``nscanned`` int64 (nq,) (codes scored per query: rows of the probed lists; the 4-bit fast path leaves a
        list early once none of its remaining rows can enter the candidates, so it can score fewer)."""
        q, k, params, allowed = self.check_search(q, k, params, allowed, tenant, filter)
        nprobe = _as_int("nprobe", params.get("nprobe", self.default_nprobe))
        rerank = params.get("rerank", max(4 * k, 40) if self.refine else 0)
        rerank = _as_int("rerank", rerank, low=0)
        if rerank and not self.refine:
            raise InvalidArgument("rerank needs stored vectors: add a 'Refine' stage to the factory string")
        if rerank:
            rerank = max(rerank, k)
        nq = q.shape[0]
        if self.ntotal == 0 or nq == 0:
            return (*self.empty(nq, k), {"ndis": 0, "nscanned": np.zeros(nq, np.int64)})
        mask = self.live_mask(allowed)
        mode = 0 if mask is None else (1 if mask.ndim == 1 else 2)
        if mask is not None and mask.ndim == 1:
            mask = mask[None, :]
        y = self._rotate(q)
        D, R, ns = self._kernel(y, self.pq.score_centroids(), k, min(nprobe, self.nlist), rerank, self.offsets,
                                self._codes, mask, mode, rotated=True, q_orig=q, blocked=self.fastscan)
        I = np.where(R >= 0, self.row_ids[np.maximum(R, 0)], -1)
        return D, I, {"ndis": int(ns.sum()), "nscanned": ns}

    # ------------------------------------------------------------------ calibration (index/calibrate.py)
    def calibration_ladder(self, k: int) -> tuple[list[dict], list[dict]]:
        """``nprobe`` from 1 to ``nlist`` in steps of about 1.5x; re-rank depths (``Refine``) from ``2k``."""
        return ([{"nprobe": p} for p in ladder_values(1, self.nlist)],
                [{"rerank": r} for r in (2 * k, 5 * k, 10 * k, 20 * k, 50 * k)] if self.refine else [{"rerank": 0}])

    def calibration_cost(self, params: dict, info: dict, nq: int) -> float:
        """Per query: byte-table look-ups of the codes scanned (the call's ``nscanned`` from
        :meth:`search_with_stats`), coarse distances and exact re-rank distances, in multiply-adds."""
        ns = info.get("nscanned")
        scanned = float(np.mean(ns)) if ns is not None and np.size(ns) else 0.0
        return scanned * self.pq.code_size + self.nlist * self.d + params.get("rerank", 0) * self.d

    # ------------------------------------------------------------------ inspection
    def reconstruct(self, rows) -> np.ndarray:
        """Vectors of internal ``rows`` float32 (n, d): stored ones with ``Refine``, else decoded from the codes."""
        rows = np.asarray(rows, dtype=np.int64)
        if self.vectors is not None:
            return np.asarray(self.vectors[rows])
        y = self.pq.decode_sub(self.sub_codes(rows))
        if self.residual:
            y = y + self.coarse[self._row_lists()[rows]]
        return y if self.rotation is None else np.ascontiguousarray(y @ self.rotation, dtype=np.float32)

    def _row_lists(self) -> np.ndarray:
        lists = np.empty(self.ntotal, dtype=np.int64)
        for seg in self.offsets:
            lists[seg[0]:seg[-1]] = np.repeat(np.arange(self.nlist), np.diff(seg))
        return lists

    def code_entropy(self) -> np.ndarray:
        """Codeword-usage entropy (bits) of each PQ sub-space over the live rows; the maximum is ``nbits``."""
        sub = self.sub_codes(np.flatnonzero(~self.deleted))
        return usage_entropy(sub, self.pq.K)

    def list_sizes(self) -> np.ndarray:
        """Rows (live or not) per inverted list, int64 (nlist,)."""
        return np.diff(self.offsets, axis=1).sum(axis=0) if self.offsets.shape[0] else np.zeros(self.nlist, np.int64)

    # ------------------------------------------------------------------ persistence
    def save(self, store, prefix: str) -> None:
        self.require_trained()
        meta = {"kind": self.kind, "d": self.d, "metric": self.metric, "factory": self.factory_string(),
                "nlist": self.nlist, "opq": self.opq, "ivf_balanced": self.ivf_balanced, "residual": self.residual,
                "precomputed": self.precomputed,
                "refine": self.refine, "max_train": self.max_train, "niter": self.niter, "eps": self.eps,
                "rounds": self.rounds, "seed": self.seed, "pq": self.pq.settings(), **self.calibration_meta()}
        # 4-bit: the blocks as searched, so a load maps straight back to the same layout
        codes = {"blocks": self.blocks} if self.fastscan else {"codes": self._codes}
        arrays = {**codes, "offsets": self.offsets, "row_ids": self.row_ids, "deleted": self.deleted,
                  "coarse": self.coarse, "coarse_bias": self.coarse_bias, **self.pq.arrays()}
        if self.rotation is not None:
            arrays["rotation"] = self.rotation
        if self.refine:
            arrays["vectors"] = np.asarray(self.vectors)
        save_arrays(store, prefix, meta, arrays)

    @classmethod
    def load(cls, store, prefix: str, *, mmap: bool = False) -> "IVFPQIndex":
        """Load a saved index; with ``mmap=True`` the re-ranking vectors are memory-mapped (codes stay in memory)."""
        meta, arrays = load_arrays(store, prefix, kind=cls.kind, mmap=mmap)
        p = meta["pq"]
        index = cls(meta["d"], meta["nlist"], p["M"], p["nbits"], meta["metric"], opq=meta["opq"],
                    ivf_balanced=meta["ivf_balanced"], pq_balanced=p["mode"] == "balanced",
                    residual=meta["residual"], refine=meta["refine"], max_train=meta["max_train"],
                    niter=meta["niter"], eps=meta["eps"], rounds=meta["rounds"], seed=meta["seed"],
                    precomputed=meta.get("precomputed", False))
        index.pq = ProductQuantizer.restore(p, arrays)
        index.offsets = np.array(arrays["offsets"])
        if index.fastscan:
            index.block_offsets = fastscan.block_offsets(index.offsets)
            if "blocks" in arrays:
                index.blocks = np.ascontiguousarray(np.array(arrays["blocks"]))
            else:  # saved before the fast-scan layout: row-major packed codes
                sub = unpack_codes(np.asarray(arrays["codes"]), index.pq.M, 4)
                index.blocks = np.concatenate(
                    [fastscan.pack_segment(sub[seg[0]:seg[-1]], seg - seg[0], index.pq.M) for seg in index.offsets]
                    or [index.blocks])
        else:
            index._codes = np.ascontiguousarray(np.array(arrays["codes"]))
        index.row_ids = np.array(arrays["row_ids"])
        index.deleted = np.array(arrays["deleted"])
        index.coarse = np.array(arrays["coarse"])
        index.coarse_bias = np.array(arrays["coarse_bias"])
        index.rotation = np.array(arrays["rotation"]) if "rotation" in arrays else None
        if meta["refine"]:
            v = arrays["vectors"]
            index.vectors = v if isinstance(v, np.memmap) else np.ascontiguousarray(v)
        index.list_table()  # rebuilt from the loaded centroids (not stored), so memory_bytes() counts it from here
        index.restore_calibration(meta)
        return index

    def memory_bytes(self) -> int:
        """In-memory bytes, the growth buffers' spare rows included (see :meth:`compact`); with ``precomputed`` it
        includes the list table (``nlist * M * K * 4``) once trained, whether or not a search has built it yet."""
        grown = [growth.held(self._bufs.get(name), getattr(self, name)) for name in ("_codes", "blocks", "row_ids",
                                                                                     "deleted", "vectors")]
        mem = array_bytes(*grown, self.block_offsets, self.offsets, self.coarse, self.coarse_bias, self.rotation)[0]
        table = self.nlist * self.pq.M * self.pq.K * 4 if self.precomputed and self.is_trained else 0
        return int(mem + self.pq.nbytes() + table)

    def mapped_bytes(self) -> int:
        return array_bytes(self.vectors)[1] if self.vectors is not None else 0


def _logger(progress) -> Callable[[str], None]:
    if callable(progress):
        return progress
    if progress:
        return lambda msg: print(f"[ivfpq] {msg}", file=sys.stderr, flush=True)
    return lambda msg: None
